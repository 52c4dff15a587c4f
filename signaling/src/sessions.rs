//! The WHIP/WHEP resources this front door has created: control plane only,
//! so a mutex around a map is enough (held for a lookup, never across `.await`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::media::{RoomId, SessionId};

/// Which protocol created a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Whip,
    Whep,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Whip => "whip",
            Kind::Whep => "whep",
        }
    }
}

/// What the HTTP layer remembers about a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub room: RoomId,
    pub kind: Kind,
    /// The current strong entity tag, quotes included (RFC 9110 §8.8.3).
    pub etag: String,
    pub identity: Option<String>,
    /// The client's ICE credentials, from its offer or its last restart.
    pub remote_ufrag: Option<String>,
    pub remote_pwd: Option<String>,
    /// The node's `a=ice-options`, repeated in restart answers.
    pub ice_options: Option<String>,
}

/// A shared handle on the session table. The node calls [`Sessions::ended`]
/// when it ends a session on its own (consent timeout, DTLS close), so the
/// resource URL answers 404 from then on.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<SessionId, Session>>>,
}

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets a session the node has ended.
    pub fn ended(&self, id: &SessionId) {
        self.lock().remove(id);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn insert(&self, id: SessionId, session: Session) {
        self.lock().insert(id, session);
    }

    pub(crate) fn get(&self, id: &SessionId) -> Option<Session> {
        self.lock().get(id).cloned()
    }

    /// Runs `f` on the entry if it still exists.
    pub(crate) fn update(&self, id: &SessionId, f: impl FnOnce(&mut Session)) -> bool {
        self.lock().get_mut(id).map(f).is_some()
    }

    pub(crate) fn remove(&self, id: &SessionId) -> Option<Session> {
        self.lock().remove(id)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, Session>> {
        // A panic while holding this lock cannot leave the map half-updated
        // (every critical section is a single map operation), so a poisoned
        // lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}
