//! RTSP pulls as cluster room state, the Sans-IO parts: the record each
//! pull has in the bus's `pulls` bucket (key = pull id), the camera
//! credentials it carries so that another node can restart it, and
//! [`Orphans`], which decides which records this node adopts.
//!
//! The node running a pull writes its record on every state change and
//! rewrites it every heartbeat (compare-and-swap on the revision: a write
//! that finds the record gone or naming another node stops the pull
//! here). `GET`, `DELETE` and `/v1/rooms/{room}` read the record on any
//! node; deleting it is the stop.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;
use std::time::Instant;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use signaling::cluster::NodeId;
use signaling::cluster::placement;

/// The KV bucket of pull records.
pub const BUCKET: &str = "pulls";
/// A record nobody rewrites for this long (its node gone and no live
/// node able to adopt it, or a finished pull of a departed node) expires.
pub const RECORD_TTL: Duration = Duration::from_secs(600);

/// One record of the `pulls` bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullRecord {
    pub room: String,
    pub id: String,
    /// The node running the pull.
    pub node: NodeId,
    /// Without credentials (`rtsp://***@host/…` when it had some).
    pub url: String,
    /// `tcp` or `udp`.
    pub transport: String,
    /// The pull's state as the API reports it (`{"state": "playing"}`…).
    pub state: serde_json::Value,
    /// Unix time of the last write, in ms.
    pub updated: u64,
    /// The token's identity (the room's publisher), `None` on an open node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The token's `exp` (Unix seconds): the pull ends then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
    /// The URL's credentials, which a restart needs. Never answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Secret>,
    /// Its node stopped (SIGTERM) and no longer runs it: adopt it now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
}

impl PullRecord {
    /// Whether the pull still runs or retries (not `failed` nor `ended`):
    /// only those are adopted.
    pub fn active(&self) -> bool {
        !matches!(self.state["state"].as_str(), Some("failed" | "ended"))
    }

    /// The record as `GET /v1/ingest/{room}/{id}` answers it: its state's
    /// fields, `id`, `room`, `url`, `transport`, `node`, `updated`; never
    /// the credentials nor the identity.
    pub fn describe(&self) -> serde_json::Value {
        let mut v = match &self.state {
            serde_json::Value::Object(_) => self.state.clone(),
            _ => serde_json::json!({}),
        };
        v["id"] = self.id.clone().into();
        v["room"] = self.room.clone().into();
        v["url"] = self.url.clone().into();
        v["transport"] = self.transport.clone().into();
        v["node"] = self.node.to_string().into();
        v["updated"] = self.updated.into();
        v
    }
}

/// A URL's username and password as the record keeps them: sealed
/// (AES-256-GCM under a key derived from `--auth-secret`, bound to the
/// pull's id) when the node has a secret, else as they are.
///
/// Why seal when NATS is already private to the cluster: JetStream keeps
/// the bucket on the NATS server's disk and in its backups, and whoever
/// may read subjects there (monitoring, an operator's `nats kv get`) is
/// not necessarily who may run the cameras. Sealed, the credentials open
/// only where `--auth-secret` is, which can mint publish tokens anyway.
/// An open node has no key: its cluster's NATS is the only fence.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Secret {
    Plain {
        username: String,
        password: String,
    },
    /// Hex of nonce ‖ ciphertext ‖ tag.
    Sealed(String),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain { .. } => f.write_str("Plain(***)"),
            Secret::Sealed(_) => f.write_str("Sealed(***)"),
        }
    }
}

/// Seals and opens [`Secret`]s; every node of a cluster shares
/// `--auth-secret` (tokens are checked everywhere), so a record sealed on
/// one opens on the others.
pub struct Sealer(Option<LessSafeKey>);

impl Sealer {
    /// The key is HMAC-SHA256(`auth_secret`, a label of this use); without
    /// a secret credentials are kept as they are.
    pub fn new(auth_secret: Option<&[u8]>) -> Sealer {
        Sealer(auth_secret.map(|s| {
            let mac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s);
            let derived = ring::hmac::sign(&mac, b"wave rtsp pull credentials v1");
            // 32 bytes, the AES-256 key length: cannot fail.
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, derived.as_ref()).expect("a 32-byte key"))
        }))
    }

    pub fn seal(&self, id: &str, username: &str, password: &str) -> Secret {
        let Some(key) = &self.0 else {
            return Secret::Plain {
                username: username.to_owned(),
                password: password.to_owned(),
            };
        };
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut data = serde_json::to_vec(&(username, password)).unwrap_or_default();
        // Sealing in place fails only for inputs of gigabytes.
        if key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(id.as_bytes()),
                &mut data,
            )
            .is_err()
        {
            data.clear();
        }
        let mut out = hex(&nonce);
        out.push_str(&hex(&data));
        Secret::Sealed(out)
    }

    /// The username and password; `None` when sealed under another key
    /// (or for another pull), or sealed while this node has no key.
    pub fn open(&self, id: &str, secret: &Secret) -> Option<(String, String)> {
        match (secret, &self.0) {
            (Secret::Plain { username, password }, _) => Some((username.clone(), password.clone())),
            (Secret::Sealed(_), None) => None,
            (Secret::Sealed(text), Some(key)) => {
                let bytes = unhex(text)?;
                if bytes.len() < NONCE_LEN {
                    return None;
                }
                let (nonce, sealed) = bytes.split_at(NONCE_LEN);
                let mut sealed = sealed.to_vec();
                let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
                let plain = key
                    .open_in_place(nonce, Aad::from(id.as_bytes()), &mut sealed)
                    .ok()?;
                serde_json::from_slice(plain).ok()
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// One record as [`Orphans::poll`] sees it.
#[derive(Debug, Clone)]
pub struct Listed<'a> {
    pub key: &'a str,
    pub revision: u64,
    pub node: &'a NodeId,
    pub active: bool,
    /// Its node let it go ([`PullRecord::released`]).
    pub released: bool,
}

/// Which records this node adopts (Sans-IO: the time, the live nodes and
/// the bucket's records in, keys and revisions to compare-and-swap out).
///
/// An active record not running here is an orphan when it names this
/// node (a previous run of it), when its node released it (stopping),
/// when its node is not in the registry and
/// its revision has not moved for `quiet` (a node that just joined, not
/// yet in this node's view, rewrites its records every heartbeat), or
/// when its revision has not moved for `stale_after` (its node, still
/// registered, no longer rewrites it). The orphan's rendezvous owner among the live nodes
/// adopts it at once, any other live node after `grace` (the owner may
/// be at its limit); the compare-and-swap on the revision lets one win.
/// The record's own node is no candidate.
#[derive(Debug)]
pub struct Orphans {
    stale_after: Duration,
    grace: Duration,
    quiet: Duration,
    /// Each record's revision, and since when this node has seen it there.
    seen: BTreeMap<String, (u64, Instant)>,
    /// Orphans, and since when.
    orphaned: BTreeMap<String, Instant>,
}

impl Orphans {
    pub fn new(stale_after: Duration, grace: Duration, quiet: Duration) -> Orphans {
        Orphans {
            stale_after,
            grace,
            quiet,
            seen: BTreeMap::new(),
            orphaned: BTreeMap::new(),
        }
    }

    /// One scan: the records to adopt (at most `room_for`, by key), each
    /// with the revision to compare-and-swap against.
    pub fn poll(
        &mut self,
        now: Instant,
        me: &NodeId,
        live: &BTreeSet<NodeId>,
        records: &[Listed<'_>],
        running_here: &BTreeSet<String>,
        room_for: usize,
    ) -> Vec<(String, u64)> {
        let listed: BTreeSet<&str> = records.iter().map(|r| r.key).collect();
        self.seen.retain(|k, _| listed.contains(k.as_str()));
        self.orphaned.retain(|k, _| listed.contains(k.as_str()));
        let mut adopt = Vec::new();
        for r in records {
            let seen = self.seen.entry(r.key.to_owned()).or_insert((r.revision, now));
            if seen.0 != r.revision {
                *seen = (r.revision, now);
            }
            let still = now.saturating_duration_since(seen.1);
            let left = !live.contains(r.node) && still >= self.quiet;
            let orphan = r.active
                && !running_here.contains(r.key)
                && (r.node == me || r.released || left || still >= self.stale_after);
            if !orphan {
                self.orphaned.remove(r.key);
                continue;
            }
            let since = *self.orphaned.entry(r.key.to_owned()).or_insert(now);
            let electors = live.iter().chain([me]).filter(|n| *n != r.node);
            let first = r.node == me || placement::owner(r.key, electors).as_ref() == Some(me);
            let wait = if first { Duration::ZERO } else { self.grace };
            if now.saturating_duration_since(since) >= wait && adopt.len() < room_for {
                adopt.push((r.key.to_owned(), r.revision));
            }
        }
        adopt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }

    fn listed<'a>(key: &'a str, revision: u64, node: &'a NodeId) -> Listed<'a> {
        Listed {
            key,
            revision,
            node,
            active: true,
            released: false,
        }
    }

    #[test]
    fn the_rendezvous_owner_adopts_a_departed_nodes_pull_at_once_others_after_grace() {
        let t0 = Instant::now();
        let (a, b, c) = (node("a"), node("b"), node("c"));
        // Two survivors; find a key whose owner among {b, c} is b.
        let key = (0..100)
            .map(|i| format!("{i:032x}"))
            .find(|k| placement::owner(k, [&b, &c]) == Some(b.clone()))
            .unwrap();
        let live_all: BTreeSet<NodeId> = [a.clone(), b.clone(), c.clone()].into();
        let survivors: BTreeSet<NodeId> = [b.clone(), c.clone()].into();
        let none = BTreeSet::new();
        let grace = Duration::from_secs(3);
        let mut at_b = Orphans::new(Duration::from_secs(10), grace, Duration::from_secs(1));
        let mut at_c = Orphans::new(Duration::from_secs(10), grace, Duration::from_secs(1));

        // While a is live and rewrites its record, nobody adopts it.
        for (i, t) in [0u64, 1, 2].iter().enumerate() {
            let now = t0 + Duration::from_secs(*t);
            let rec = [listed(&key, 10 + i as u64, &a)];
            assert!(at_b.poll(now, &b, &live_all, &rec, &none, 16).is_empty());
            assert!(at_c.poll(now, &c, &live_all, &rec, &none, 16).is_empty());
        }

        // a leaves the registry: b (the owner) adopts on its next scan; c
        // waits for the grace period, then would try too (and lose the CAS
        // if b got there).
        let now = t0 + Duration::from_secs(3);
        let rec = [listed(&key, 12, &a)];
        assert_eq!(
            at_b.poll(now, &b, &survivors, &rec, &none, 16),
            [(key.clone(), 12)]
        );
        assert!(at_c.poll(now, &c, &survivors, &rec, &none, 16).is_empty());
        let later = now + grace;
        assert_eq!(
            at_c.poll(later, &c, &survivors, &rec, &none, 16),
            [(key.clone(), 12)]
        );

        // A node that just joined (not in c's view yet) rewrites its
        // records: they are not orphans while their revision moves.
        let d = node("d");
        for (i, t) in [0u64, 1, 2].iter().enumerate() {
            let now = later + Duration::from_secs(*t);
            let rec = [listed("fedcba9876543210fedcba9876543210", 20 + i as u64, &d)];
            assert!(at_c.poll(now, &c, &survivors, &rec, &none, 16).is_empty());
        }

        // A stopping node releases its pulls: adopted at once although it
        // is still registered, by the owner among the others.
        let e = node("e");
        let all: BTreeSet<NodeId> = [b.clone(), c.clone(), e.clone()].into();
        let k2 = (0..100)
            .map(|i| format!("{i:032x}"))
            .find(|k| placement::owner(k, [&b, &c]) == Some(c.clone()))
            .unwrap();
        let mut released = listed(&k2, 30, &e);
        released.released = true;
        let mut fresh = Orphans::new(Duration::from_secs(10), grace, Duration::from_secs(1));
        assert_eq!(
            fresh.poll(later, &c, &all, &[released.clone()], &none, 16),
            [(k2.clone(), 30)]
        );
        let mut fresh = Orphans::new(Duration::from_secs(10), grace, Duration::from_secs(1));
        assert!(fresh.poll(later, &b, &all, &[released], &none, 16).is_empty());

        // Once b runs it (its record names b and moves), c leaves it alone.
        let rec = [listed(&key, 13, &b)];
        assert!(at_c.poll(later, &c, &survivors, &rec, &none, 16).is_empty());
        let running: BTreeSet<String> = [key.clone()].into();
        assert!(at_b.poll(later, &b, &survivors, &rec, &running, 16).is_empty());
    }

    #[test]
    fn a_node_at_its_limit_adopts_only_what_fits_and_finished_pulls_are_left() {
        let t0 = Instant::now();
        let (a, b) = (node("a"), node("b"));
        let live: BTreeSet<NodeId> = [b.clone()].into();
        let none = BTreeSet::new();
        let keys: Vec<String> = (0..4).map(|i| format!("{i:032x}")).collect();
        let mut recs: Vec<Listed<'_>> = keys.iter().map(|k| listed(k, 1, &a)).collect();
        recs[3].active = false;
        let mut o = Orphans::new(
            Duration::from_secs(10),
            Duration::from_secs(3),
            Duration::from_secs(1),
        );
        // Not yet: a's records must stay still for `quiet` first.
        assert_eq!(o.poll(t0, &b, &live, &recs, &none, 16), []);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(o.poll(t1, &b, &live, &recs, &none, 0), []);
        let got = o.poll(t1, &b, &live, &recs, &none, 2);
        assert_eq!(got, [(keys[0].clone(), 1), (keys[1].clone(), 1)]);
        let got = o.poll(t1, &b, &live, &recs, &none, 16);
        assert_eq!(got.len(), 3, "the failed or ended pull is not restarted: {got:?}");
    }

    #[test]
    fn a_record_whose_revision_stops_moving_is_stale_and_one_naming_this_node_resumes() {
        let t0 = Instant::now();
        let (a, b) = (node("a"), node("b"));
        let live: BTreeSet<NodeId> = [a.clone(), b.clone()].into();
        let none = BTreeSet::new();
        let key = "0123456789abcdef0123456789abcdef";
        let mut o = Orphans::new(
            Duration::from_secs(10),
            Duration::from_secs(3),
            Duration::from_secs(1),
        );
        // a is live but stops rewriting the record at revision 7.
        assert!(o.poll(t0, &b, &live, &[listed(key, 7, &a)], &none, 16).is_empty());
        let t9 = t0 + Duration::from_secs(9);
        assert!(o.poll(t9, &b, &live, &[listed(key, 7, &a)], &none, 16).is_empty());
        // A write resets the clock.
        let t9 = t9 + Duration::from_millis(500);
        assert!(o.poll(t9, &b, &live, &[listed(key, 8, &a)], &none, 16).is_empty());
        let t19 = t9 + Duration::from_secs(10);
        let first = placement::owner(key, [&a, &b]) == Some(b.clone());
        let got = o.poll(t19, &b, &live, &[listed(key, 8, &a)], &none, 16);
        let after_grace = o.poll(
            t19 + Duration::from_secs(3),
            &b,
            &live,
            &[listed(key, 8, &a)],
            &none,
            16,
        );
        if first {
            assert_eq!(got, [(key.to_owned(), 8)]);
        } else {
            assert!(got.is_empty());
        }
        assert_eq!(after_grace, [(key.to_owned(), 8)]);

        // A record naming this node that it does not run (it restarted
        // under the same id) is resumed at once.
        let mut o = Orphans::new(
            Duration::from_secs(10),
            Duration::from_secs(3),
            Duration::from_secs(1),
        );
        assert_eq!(
            o.poll(t0, &b, &live, &[listed(key, 3, &b)], &none, 16),
            [(key.to_owned(), 3)]
        );
        let running: BTreeSet<String> = [key.to_owned()].into();
        assert!(
            o.poll(t0, &b, &live, &[listed(key, 3, &b)], &running, 16)
                .is_empty()
        );
    }

    #[test]
    fn credentials_are_sealed_with_the_secret_and_open_only_with_it_for_that_pull() {
        let sealer = Sealer::new(Some(b"s3cret"));
        let sealed = sealer.seal("pull1", "admin", "p@ss");
        let Secret::Sealed(text) = &sealed else {
            panic!("{sealed:?}")
        };
        assert!(!text.contains("admin") && !text.contains("p@ss"));
        assert_eq!(
            sealer.open("pull1", &sealed),
            Some(("admin".into(), "p@ss".into()))
        );
        assert_eq!(sealer.open("pull2", &sealed), None, "bound to its pull");
        assert_eq!(Sealer::new(Some(b"other")).open("pull1", &sealed), None);
        assert_eq!(Sealer::new(None).open("pull1", &sealed), None);
        // No secret: kept as they are (the bus must be private).
        let plain = Sealer::new(None).seal("pull1", "admin", "p@ss");
        assert_eq!(
            Sealer::new(None).open("pull1", &plain),
            Some(("admin".into(), "p@ss".into()))
        );
        assert_eq!(format!("{plain:?} {sealed:?}"), "Plain(***) Sealed(***)");
    }

    #[test]
    fn a_record_describes_itself_without_credentials_or_identity() {
        let r = PullRecord {
            room: "cam".into(),
            id: "p".into(),
            node: node("a"),
            url: "rtsp://***@h/x".into(),
            transport: "tcp".into(),
            state: serde_json::json!({"state": "playing"}),
            updated: 5,
            identity: Some("op".into()),
            until: Some(9),
            credentials: Some(Secret::Plain {
                username: "u".into(),
                password: "hunter2".into(),
            }),
            released: false,
        };
        assert!(r.active());
        let v = r.describe();
        assert_eq!(
            v,
            serde_json::json!({"state": "playing", "id": "p", "room": "cam", "url": "rtsp://***@h/x",
                "transport": "tcp", "node": "a", "updated": 5})
        );
        let back: PullRecord = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
