//! Presence: who is in a room, summed over nodes.
//!
//! Every `presence_interval` each node builds one [`NodePresence`] per room
//! it has anyone in (WHIP publishers, WHEP viewers, chat members by role),
//! writes it to KV `presence` as `<room>/<node>` and publishes it on
//! `room.<room>.presence`. A room that empties gets one empty report and its
//! key deleted. Readers sum the reports: chat rooms from the subject (a
//! node silent for [`STALE_INTERVALS`] intervals is dropped), `/v1/rooms/{room}`
//! from KV (the bucket's TTL is the same). Reports are counts and publisher
//! names, never one event per viewer, so a join storm costs one report per
//! node per second.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::{ChatHub, room_token};
use crate::auth::Role;
use crate::bus::{BusError, Kv};
use crate::media::{MediaNode, RoomId, RoomInfo};

/// A node's report is dropped after this many silent intervals.
pub const STALE_INTERVALS: u32 = 3;

/// Chat members by role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleCounts {
    pub streamer: u32,
    pub moderator: u32,
    pub viewer: u32,
    pub anonymous: u32,
}

impl RoleCounts {
    pub fn add(&mut self, role: Role) {
        let n = match role {
            Role::Streamer => &mut self.streamer,
            Role::Moderator => &mut self.moderator,
            Role::Viewer => &mut self.viewer,
            Role::Anonymous => &mut self.anonymous,
        };
        *n = n.saturating_add(1);
    }

    pub fn total(&self) -> u32 {
        self.streamer
            .saturating_add(self.moderator)
            .saturating_add(self.viewer)
            .saturating_add(self.anonymous)
    }

    fn merge(&mut self, other: &RoleCounts) {
        self.streamer = self.streamer.saturating_add(other.streamer);
        self.moderator = self.moderator.saturating_add(other.moderator);
        self.viewer = self.viewer.saturating_add(other.viewer);
        self.anonymous = self.anonymous.saturating_add(other.anonymous);
    }
}

/// One node's share of a room.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePresence {
    pub node: String,
    pub room: String,
    /// WHIP publishers: their identities (or session ids on an open node).
    pub publishers: Vec<String>,
    /// WHEP viewers.
    pub viewers: u32,
    pub chat: RoleCounts,
}

impl NodePresence {
    pub fn is_empty(&self) -> bool {
        self.publishers.is_empty() && self.viewers == 0 && self.chat.total() == 0
    }
}

/// A room's totals, as chat clients receive them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceCounts {
    /// Every publisher, sorted.
    pub publishers: Vec<String>,
    /// WHEP viewers.
    pub viewers: u32,
    /// Chat members.
    pub chat: u32,
    pub chat_roles: RoleCounts,
}

/// A room's presence for `/v1/rooms/{room}`: the totals and each node's share.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomPresence {
    #[serde(flatten)]
    pub total: PresenceCounts,
    pub nodes: BTreeMap<String, NodePresence>,
}

impl RoomPresence {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Sums node reports.
pub fn total<'a>(reports: impl Iterator<Item = &'a NodePresence>) -> PresenceCounts {
    let mut out = PresenceCounts::default();
    for p in reports {
        out.publishers.extend(p.publishers.iter().cloned());
        out.viewers = out.viewers.saturating_add(p.viewers);
        out.chat_roles.merge(&p.chat);
    }
    out.publishers.sort();
    out.chat = out.chat_roles.total();
    out
}

/// This node's reports: one per room with anyone in it.
pub fn snapshots(
    node: &str,
    media: &[RoomInfo],
    chat: &BTreeMap<RoomId, RoleCounts>,
) -> BTreeMap<RoomId, NodePresence> {
    let mut out: BTreeMap<RoomId, NodePresence> = BTreeMap::new();
    let entry = |out: &mut BTreeMap<RoomId, NodePresence>, room: &RoomId| {
        out.entry(room.clone())
            .or_insert_with(|| NodePresence {
                node: node.to_owned(),
                room: room.as_str().to_owned(),
                ..NodePresence::default()
            })
            .clone()
    };
    for r in media {
        let mut p = entry(&mut out, &r.room);
        p.publishers = r
            .publishers
            .iter()
            .map(|p| p.identity.clone().unwrap_or_else(|| p.session.to_string()))
            .collect();
        p.viewers = u32::try_from(r.viewers.len()).unwrap_or(u32::MAX);
        out.insert(r.room.clone(), p);
    }
    for (room, counts) in chat {
        let mut p = entry(&mut out, room);
        p.chat = *counts;
        out.insert(room.clone(), p);
    }
    out.retain(|_, p| !p.is_empty());
    out
}

/// What KV holds for `room`.
pub async fn stored(kv: &Kv, room: &RoomId) -> Result<Vec<NodePresence>, BusError> {
    let prefix = format!("{}/", room_token(room));
    Ok(kv
        .entries()
        .await?
        .into_iter()
        .filter(|e| e.key.starts_with(&prefix))
        .filter_map(|e| serde_json::from_slice::<NodePresence>(&e.value).ok())
        .filter(|p| !p.is_empty())
        .collect())
}

/// `room`'s presence summed over every node, from KV.
pub async fn room(hub: &ChatHub, room: &RoomId) -> Result<RoomPresence, BusError> {
    let reports = stored(hub.presence_kv(), room).await?;
    Ok(RoomPresence {
        total: total(reports.iter()),
        nodes: reports.into_iter().map(|p| (p.node.clone(), p)).collect(),
    })
}

/// Publishes this node's presence every interval, forever.
pub async fn run<M: MediaNode>(hub: ChatHub, node: Arc<M>) {
    let mut tick = tokio::time::interval(hub.config().presence_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported: BTreeSet<RoomId> = BTreeSet::new();
    loop {
        tick.tick().await;
        let media = node.rooms().await;
        let chat = hub.local_members().await;
        let now = snapshots(hub.node().as_str(), &media, &chat);
        let mut still = BTreeSet::new();
        for (room, p) in &now {
            if let Err(e) = report(&hub, room, p).await {
                debug!(%room, error = %e, "presence not published");
            }
            still.insert(room.clone());
        }
        let gone: Vec<RoomId> = reported.difference(&still).cloned().collect();
        for room in &gone {
            let empty = NodePresence {
                node: hub.node().as_str().to_owned(),
                room: room.as_str().to_owned(),
                ..NodePresence::default()
            };
            if let Err(e) = report(&hub, room, &empty).await {
                debug!(%room, error = %e, "presence removal not published; retrying");
                still.insert(room.clone());
            }
        }
        reported = still;
    }
}

/// Writes and publishes one report; an empty one deletes the key.
async fn report(hub: &ChatHub, room: &RoomId, p: &NodePresence) -> Result<(), BusError> {
    let token = room_token(room);
    let key = format!("{token}/{}", p.node);
    let payload = Bytes::from(serde_json::to_vec(p).unwrap_or_default());
    if p.is_empty() {
        hub.presence_kv().delete(&key, None).await?;
    } else {
        hub.presence_kv().put(&key, payload.clone()).await?;
    }
    hub.bus()
        .publish(&format!("room.{token}.presence"), payload)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{PublisherInfo, SessionId, ViewerInfo};

    fn room(s: &str) -> RoomId {
        RoomId::parse(s).unwrap()
    }

    #[test]
    fn snapshots_merge_media_and_chat_and_skip_empty_rooms() {
        let session = SessionId::parse("0123456789abcdef0123456789abcdef").unwrap();
        let media = vec![
            RoomInfo {
                room: room("live"),
                publishers: vec![PublisherInfo {
                    session: session.clone(),
                    identity: Some("alice".into()),
                    tracks: Vec::new(),
                }],
                viewers: vec![
                    ViewerInfo {
                        session: session.clone(),
                        identity: None,
                        layer: None,
                        bitrate_bps: 0,
                    };
                    3
                ],
            },
            RoomInfo {
                room: room("idle"),
                publishers: Vec::new(),
                viewers: Vec::new(),
            },
        ];
        let mut counts = RoleCounts::default();
        counts.add(Role::Viewer);
        counts.add(Role::Anonymous);
        let chat = BTreeMap::from([(room("live"), counts), (room("talk"), counts)]);
        let s = snapshots("a", &media, &chat);
        assert_eq!(s.keys().map(RoomId::as_str).collect::<Vec<_>>(), ["live", "talk"]);
        assert_eq!(s[&room("live")].publishers, ["alice"]);
        assert_eq!(s[&room("live")].viewers, 3);
        assert_eq!(s[&room("live")].chat.total(), 2);
        assert_eq!(s[&room("talk")].viewers, 0);
    }

    #[test]
    fn totals_sum_nodes() {
        let mut a = NodePresence {
            node: "a".into(),
            room: "r".into(),
            publishers: vec!["zed".into()],
            viewers: 2,
            ..Default::default()
        };
        a.chat.add(Role::Viewer);
        let mut b = NodePresence {
            node: "b".into(),
            room: "r".into(),
            publishers: vec!["amy".into()],
            viewers: 5,
            ..Default::default()
        };
        b.chat.add(Role::Streamer);
        b.chat.add(Role::Viewer);
        let t = total([a, b].iter());
        assert_eq!(t.publishers, ["amy", "zed"]);
        assert_eq!(t.viewers, 7);
        assert_eq!(t.chat, 3);
        assert_eq!(t.chat_roles.viewer, 2);
    }
}
