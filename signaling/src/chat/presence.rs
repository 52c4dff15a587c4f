//! Presence: who is in a room, summed over nodes.
//!
//! Every `presence_interval` each node builds one [`NodePresence`] per room
//! it has anyone in (WHIP publishers, WHEP viewers, chat members by role),
//! writes it to KV `presence` as `<room>/<node>` and publishes it on
//! `room.<room>.presence`. A room that empties gets one empty report and its
//! key deleted. Readers sum the reports: chat rooms from the subject (a
//! node silent for [`STALE_INTERVALS`] intervals is dropped), `/v1/rooms/{room}`
//! from KV (the bucket's TTL is the same).
//!
//! A report also carries who joined and left on that node since its last
//! report ([`Changes`], at most [`MAX_CHANGES`], else counts only with
//! `truncated`) and up to [`MAX_LISTED`] of the node's participants. Room
//! tasks fold the changes of every node's reports into one pending batch
//! per room and push it with the totals at most once per interval, so a
//! join storm costs one report per node per second and one frame per
//! client per second, never one event per viewer.

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

/// At most this many joins plus leaves in one report or one pushed batch;
/// above it the batch carries the totals only, with `truncated: true`.
pub const MAX_CHANGES: usize = 100;
/// At most this many participants listed per node report, and in a room's
/// listing (`/v1/rooms/{room}`, the presence frame on join).
pub const MAX_LISTED: usize = 200;

/// How someone takes part in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A WHIP publisher.
    Publisher,
    /// A WHEP viewer.
    Viewer,
    /// A chat member (every connection of one identity counts once).
    Chat,
}

/// One participant: a WHIP publisher or WHEP viewer (by token identity,
/// else session id) or a chat member (by identity), on one node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Participant {
    pub kind: Kind,
    pub id: String,
    /// Chat role; publishers count as streamers and WHEP viewers as viewers.
    pub role: Role,
    pub node: String,
}

/// Who joined and left since the last report or push.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joined: Vec<Participant>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<Participant>,
    /// More than [`MAX_CHANGES`] changes: the lists were dropped; the counts
    /// are right, `/v1/rooms/{room}` lists who is there.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.left.is_empty() && !self.truncated
    }

    /// What changed from `before` to `now`, capped at [`MAX_CHANGES`].
    pub fn between(before: &BTreeSet<Participant>, now: &BTreeSet<Participant>) -> Changes {
        let joined: Vec<Participant> = now.difference(before).take(MAX_CHANGES + 1).cloned().collect();
        let left: Vec<Participant> = before.difference(now).take(MAX_CHANGES + 1).cloned().collect();
        let mut c = Changes {
            joined,
            left,
            truncated: false,
        };
        c.cap();
        c
    }

    /// Folds a later batch into this one: a join then a leave of the same
    /// participant cancel out (and the reverse).
    pub fn absorb(&mut self, later: &Changes) {
        if self.truncated || later.truncated {
            self.truncate();
            return;
        }
        for p in &later.joined {
            match self.left.iter().position(|q| q == p) {
                Some(i) => {
                    self.left.remove(i);
                }
                None => self.joined.push(p.clone()),
            }
        }
        for p in &later.left {
            match self.joined.iter().position(|q| q == p) {
                Some(i) => {
                    self.joined.remove(i);
                }
                None => self.left.push(p.clone()),
            }
        }
        self.cap();
    }

    fn cap(&mut self) {
        if self.joined.len() + self.left.len() > MAX_CHANGES {
            self.truncate();
        }
    }

    fn truncate(&mut self) {
        self.joined.clear();
        self.left.clear();
        self.truncated = true;
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
    /// Up to [`MAX_LISTED`] of this node's participants, sorted.
    #[serde(default)]
    pub participants: Vec<Participant>,
    /// This node has more participants than it listed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub participants_truncated: bool,
    /// Who joined and left here since this node's previous report.
    #[serde(default, skip_serializing_if = "Changes::is_empty")]
    pub changes: Changes,
}

impl NodePresence {
    pub fn is_empty(&self) -> bool {
        self.publishers.is_empty() && self.viewers == 0 && self.chat.total() == 0
    }
}

/// What a chat client is pushed: the room's totals, who joined and left
/// since the previous push, and on join the room's participants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceUpdate {
    /// Server time of the push (or of the join), Unix milliseconds.
    pub ts: u64,
    #[serde(flatten)]
    pub counts: PresenceCounts,
    #[serde(flatten)]
    pub changes: Changes,
    /// Everyone present (up to [`MAX_LISTED`]); only in the frame sent on join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participants: Option<Vec<Participant>>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub participants_truncated: bool,
}

/// Up to [`MAX_LISTED`] participants over `reports`, sorted, and whether
/// some were left out.
pub fn listed<'a>(reports: impl Iterator<Item = &'a NodePresence>) -> (Vec<Participant>, bool) {
    let mut all = BTreeSet::new();
    let mut truncated = false;
    for p in reports {
        truncated |= p.participants_truncated;
        all.extend(p.participants.iter().cloned());
    }
    truncated |= all.len() > MAX_LISTED;
    (all.into_iter().take(MAX_LISTED).collect(), truncated)
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

/// A room's presence for `/v1/rooms/{room}`: the totals, up to
/// [`MAX_LISTED`] participants, and each node's share.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomPresence {
    #[serde(flatten)]
    pub total: PresenceCounts,
    pub participants: Vec<Participant>,
    /// More participants than listed: the counts are complete, the list is not.
    pub participants_truncated: bool,
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

/// One local chat member: identity and role (one entry per connection).
pub type LocalMember = (String, Role);

/// This node's participants per room: media sessions and chat members.
pub fn participants(
    node: &str,
    media: &[RoomInfo],
    chat: &BTreeMap<RoomId, Vec<LocalMember>>,
) -> BTreeMap<RoomId, BTreeSet<Participant>> {
    let mut out: BTreeMap<RoomId, BTreeSet<Participant>> = BTreeMap::new();
    let one = |kind, id: String, role| Participant {
        kind,
        id,
        role,
        node: node.to_owned(),
    };
    for r in media {
        let set = out.entry(r.room.clone()).or_default();
        for p in &r.publishers {
            let id = p.identity.clone().unwrap_or_else(|| p.session.to_string());
            set.insert(one(Kind::Publisher, id, Role::Streamer));
        }
        for v in &r.viewers {
            let id = v.identity.clone().unwrap_or_else(|| v.session.to_string());
            set.insert(one(Kind::Viewer, id, Role::Viewer));
        }
    }
    for (room, members) in chat {
        let set = out.entry(room.clone()).or_default();
        for (identity, role) in members {
            set.insert(one(Kind::Chat, identity.clone(), *role));
        }
    }
    out.retain(|_, s| !s.is_empty());
    out
}

/// This node's reports: one per room with anyone in it (no changes yet).
pub fn snapshots(
    node: &str,
    media: &[RoomInfo],
    chat: &BTreeMap<RoomId, Vec<LocalMember>>,
) -> BTreeMap<RoomId, NodePresence> {
    let mut listed = participants(node, media, chat);
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
    for (room, members) in chat {
        let mut p = entry(&mut out, room);
        let mut counts = RoleCounts::default();
        for (_, role) in members {
            counts.add(*role);
        }
        p.chat = counts;
        out.insert(room.clone(), p);
    }
    out.retain(|_, p| !p.is_empty());
    for (room, p) in &mut out {
        let set = listed.remove(room).unwrap_or_default();
        p.participants_truncated = set.len() > MAX_LISTED;
        p.participants = set.into_iter().take(MAX_LISTED).collect();
    }
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
    let (participants, participants_truncated) = listed(reports.iter());
    Ok(RoomPresence {
        total: total(reports.iter()),
        participants,
        participants_truncated,
        nodes: reports.into_iter().map(|p| (p.node.clone(), p)).collect(),
    })
}

/// Publishes this node's presence every interval, forever.
pub async fn run<M: MediaNode>(hub: ChatHub, node: Arc<M>) {
    let mut tick = tokio::time::interval(hub.config().presence_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported: BTreeSet<RoomId> = BTreeSet::new();
    // Who was here at the previous report, per room: what changes are
    // computed against (a report that fails to go out loses its changes).
    let mut before: BTreeMap<RoomId, BTreeSet<Participant>> = BTreeMap::new();
    loop {
        tick.tick().await;
        let media = node.rooms().await;
        let chat = hub.local_members().await;
        let node_id = hub.node().as_str();
        let mut now = snapshots(node_id, &media, &chat);
        let mut present = participants(node_id, &media, &chat);
        let empty_set = BTreeSet::new();
        for (room, p) in &mut now {
            let was = before.get(room).unwrap_or(&empty_set);
            let is = present.get(room).unwrap_or(&empty_set);
            p.changes = Changes::between(was, is);
        }
        let mut still = BTreeSet::new();
        for (room, p) in &now {
            if let Err(e) = report(&hub, room, p).await {
                debug!(%room, error = %e, "presence not published");
            }
            still.insert(room.clone());
        }
        let gone: Vec<RoomId> = reported.difference(&still).cloned().collect();
        for room in &gone {
            let was = before.get(room).unwrap_or(&empty_set);
            let empty = NodePresence {
                node: node_id.to_owned(),
                room: room.as_str().to_owned(),
                changes: Changes::between(was, &empty_set),
                ..NodePresence::default()
            };
            if let Err(e) = report(&hub, room, &empty).await {
                debug!(%room, error = %e, "presence removal not published; retrying");
                still.insert(room.clone());
            }
        }
        reported = still;
        present.retain(|room, _| reported.contains(room));
        before = present;
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
        let members = vec![
            ("bob".to_owned(), Role::Viewer),
            ("bob".to_owned(), Role::Viewer),
            ("anon-1".to_owned(), Role::Anonymous),
        ];
        let chat = BTreeMap::from([(room("live"), members.clone()), (room("talk"), members)]);
        let s = snapshots("a", &media, &chat);
        assert_eq!(s.keys().map(RoomId::as_str).collect::<Vec<_>>(), ["live", "talk"]);
        assert_eq!(s[&room("live")].publishers, ["alice"]);
        assert_eq!(s[&room("live")].viewers, 3);
        assert_eq!(s[&room("live")].chat.total(), 3, "connections");
        assert_eq!(s[&room("talk")].viewers, 0);
        // Participants: one publisher, the viewers' shared session id once,
        // and each chat identity once however many connections it has.
        let listed: Vec<(Kind, &str, Role)> = s[&room("live")]
            .participants
            .iter()
            .map(|p| (p.kind, p.id.as_str(), p.role))
            .collect();
        assert_eq!(
            listed,
            [
                (Kind::Publisher, "alice", Role::Streamer),
                (Kind::Viewer, "0123456789abcdef0123456789abcdef", Role::Viewer),
                (Kind::Chat, "anon-1", Role::Anonymous),
                (Kind::Chat, "bob", Role::Viewer),
            ]
        );
        assert!(s[&room("live")].participants.iter().all(|p| p.node == "a"));
    }

    fn chat(id: &str) -> Participant {
        Participant {
            kind: Kind::Chat,
            id: id.into(),
            role: Role::Viewer,
            node: "a".into(),
        }
    }

    #[test]
    fn changes_diff_fold_and_truncate() {
        let before: BTreeSet<Participant> = [chat("a"), chat("b")].into();
        let now: BTreeSet<Participant> = [chat("b"), chat("c")].into();
        let c = Changes::between(&before, &now);
        assert_eq!(c.joined, [chat("c")]);
        assert_eq!(c.left, [chat("a")]);
        assert!(!c.truncated);

        // A join in one report and a leave in the next cancel out.
        let mut pending = c.clone();
        pending.absorb(&Changes {
            joined: vec![chat("d")],
            left: vec![chat("c")],
            truncated: false,
        });
        assert_eq!(pending.joined, [chat("d")]);
        assert_eq!(pending.left, [chat("a")]);

        // A storm above the cap: counts only.
        let storm: BTreeSet<Participant> = (0..=MAX_CHANGES).map(|i| chat(&format!("v{i}"))).collect();
        let c = Changes::between(&BTreeSet::new(), &storm);
        assert!(c.truncated && c.joined.is_empty() && !c.is_empty());
        let mut folded = Changes::default();
        for p in &storm {
            folded.absorb(&Changes {
                joined: vec![p.clone()],
                ..Changes::default()
            });
        }
        assert!(folded.truncated && folded.joined.is_empty());
        // Once truncated, a batch stays truncated until pushed.
        folded.absorb(&Changes::default());
        assert!(folded.truncated);
    }

    #[test]
    fn update_frames_flatten_counts_and_changes() {
        let u = PresenceUpdate {
            counts: PresenceCounts {
                viewers: 2,
                ..PresenceCounts::default()
            },
            changes: Changes {
                joined: vec![chat("a")],
                ..Changes::default()
            },
            ..PresenceUpdate::default()
        };
        let v = serde_json::to_value(&u).unwrap();
        assert_eq!(v["viewers"], 2);
        assert_eq!(v["joined"][0]["kind"], "chat");
        assert_eq!(v["joined"][0]["node"], "a");
        assert!(v.get("left").is_none() && v.get("truncated").is_none());
        assert_eq!(serde_json::from_value::<PresenceUpdate>(v).unwrap(), u);
        // As the tagged frame clients get.
        let frame = super::super::ServerFrame::Presence(u);
        let text = serde_json::to_string(&frame).unwrap();
        assert!(text.starts_with(r#"{"type":"presence","ts":0,"#), "{text}");
        assert_eq!(
            serde_json::from_str::<super::super::ServerFrame>(&text).unwrap(),
            frame
        );
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
