//! Room names with a known placement, for multi-node tests (included by the
//! sfu and loadtest test suites).

use signaling::cluster::{Load, NodeId, NodeInfo, place};
use signaling::media::RoomId;

/// A room name, `{prefix}-{i}`, that weighted rendezvous hashing puts on
/// `target` among nodes `ids` (all of weight 1, none overloaded).
pub fn room_placed_on(prefix: &str, target: &str, ids: &[&str]) -> String {
    let nodes: Vec<NodeInfo> = ids
        .iter()
        .map(|id| NodeInfo {
            id: NodeId::parse(id).expect("node id"),
            http_url: String::new(),
            media_addr: None,
            weight: 1.0,
            load: Load::default(),
            relay_addr: None,
            relay_fingerprint: None,
            origins: Vec::new(),
        })
        .collect();
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|r| {
            let room = RoomId::parse(r).expect("room name");
            place(&room, &nodes).is_some_and(|n| n.as_str() == target)
        })
        .expect("some room lands on the target")
}
