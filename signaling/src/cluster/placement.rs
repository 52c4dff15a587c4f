//! Where a new room goes: weighted rendezvous (highest random weight)
//! hashing over live nodes, skipping overloaded ones. Every node computes
//! the same answer from the same view, and removing a node moves only its
//! own rooms.

use super::{NodeId, NodeInfo};
use crate::media::RoomId;

/// Nodes at or above this load take no new rooms (Jicofo's stress threshold).
pub const OVERLOAD: f64 = 0.8;

/// The node that should host `room`, or `None` when every node is overloaded
/// (or there are none). Score = −w / ln(h), h ∈ (0, 1) a hash of
/// (room, node), w the node's capacity weight.
pub fn place<'a>(room: &RoomId, nodes: impl IntoIterator<Item = &'a NodeInfo>) -> Option<NodeId> {
    nodes
        .into_iter()
        .filter(|n| n.load.factor() < OVERLOAD && n.weight > 0.0)
        .map(|n| (score(room, n), n))
        // Ties (practically impossible) break on the id so the order of the
        // input never matters.
        .max_by(|(a, na), (b, nb)| a.total_cmp(b).then_with(|| nb.id.cmp(&na.id)))
        .map(|(_, n)| n.id.clone())
}

/// The node that answers for `key` (a chat sender's `room/identity`):
/// plain rendezvous hashing over `nodes`, unweighted and blind to load, so
/// only a change of the node list moves a key, and then only the keys of
/// the node that came or went. `None` without nodes.
pub fn owner<'a>(key: &str, nodes: impl IntoIterator<Item = &'a NodeId>) -> Option<NodeId> {
    nodes
        .into_iter()
        .map(|n| (hash(key, n.as_str()), n))
        .max_by(|(a, na), (b, nb)| a.cmp(b).then_with(|| nb.cmp(na)))
        .map(|(_, n)| n.clone())
}

/// Where `me` is fed `room` from in the room's relay tree: `origin` (the
/// node with its publishers) is the root; the other `nodes` are ranked by
/// rendezvous hash of (room, node) and laid out as a `fanout`-ary heap
/// under it, so the k-th ranked node's parent is the origin when
/// `k < fanout`, else the node ranked `(k - fanout) / fanout`. Every node
/// computes the same tree from the same view, a parent always ranks before
/// its children (no loops), and a node that goes away moves only the
/// nodes ranked after it. `me` missing from `nodes` is fed by the origin.
pub fn parent<'a>(
    room: &RoomId,
    origin: &NodeId,
    me: &NodeId,
    nodes: impl IntoIterator<Item = &'a NodeId>,
    fanout: usize,
) -> NodeId {
    let fanout = fanout.max(1);
    let mut ranked: Vec<(u64, &NodeId)> = nodes
        .into_iter()
        .filter(|n| *n != origin)
        .map(|n| (hash(room.as_str(), n.as_str()), n))
        .collect();
    ranked.sort_by(|(a, na), (b, nb)| b.cmp(a).then_with(|| na.cmp(nb)));
    match ranked.iter().position(|(_, n)| *n == me) {
        Some(k) if k >= fanout => ranked[(k - fanout) / fanout].1.clone(),
        _ => origin.clone(),
    }
}

fn score(room: &RoomId, node: &NodeInfo) -> f64 {
    let h = hash(room.as_str(), node.id.as_str());
    // 53 random bits to a double strictly inside (0, 1).
    let unit = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -node.weight / unit.ln()
}

/// FNV-1a over both names with a separator, then a splitmix64 finaliser for
/// avalanche; stable across processes and versions (no std `Hasher`).
fn hash(room: &str, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.bytes().chain([0u8]).chain(node.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cluster::Load;

    fn node(id: &str, weight: f64, load: f64) -> NodeInfo {
        NodeInfo {
            id: NodeId::parse(id).unwrap(),
            http_url: format!("http://{id}"),
            media_addr: None,
            weight,
            load: Load {
                cpu: load,
                ..Load::default()
            },
            relay_addr: None,
            relay_fingerprint: None,
            origins: Vec::new(),
        }
    }

    fn rooms(n: usize) -> Vec<RoomId> {
        (0..n)
            .map(|i| RoomId::parse(&format!("room-{i}")).unwrap())
            .collect()
    }

    fn counts(nodes: &[NodeInfo], rooms: &[RoomId]) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for r in rooms {
            *c.entry(place(r, nodes).unwrap().to_string()).or_default() += 1;
        }
        c
    }

    #[test]
    fn same_answer_whatever_the_order() {
        let a = [node("a", 1.0, 0.1), node("b", 1.0, 0.1), node("c", 1.0, 0.1)];
        let b = [a[2].clone(), a[0].clone(), a[1].clone()];
        for r in rooms(200) {
            assert_eq!(place(&r, &a), place(&r, &b));
        }
    }

    #[test]
    fn equal_weights_spread_evenly() {
        let nodes = [node("a", 1.0, 0.0), node("b", 1.0, 0.0), node("c", 1.0, 0.0)];
        let c = counts(&nodes, &rooms(3000));
        for (id, n) in &c {
            assert!((850..=1150).contains(n), "{id}: {n} of 3000");
        }
    }

    #[test]
    fn weights_bias_the_share() {
        let nodes = [node("big", 3.0, 0.0), node("small", 1.0, 0.0)];
        let c = counts(&nodes, &rooms(4000));
        let big = c["big"] as f64 / 4000.0;
        assert!((0.70..=0.80).contains(&big), "big got {big}");
    }

    #[test]
    fn removing_a_node_moves_only_its_rooms() {
        let all = [node("a", 1.0, 0.0), node("b", 1.0, 0.0), node("c", 1.0, 0.0)];
        let without_c = [all[0].clone(), all[1].clone()];
        for r in rooms(500) {
            let before = place(&r, &all).unwrap();
            if before.as_str() != "c" {
                assert_eq!(place(&r, &without_c).unwrap(), before);
            }
        }
    }

    #[test]
    fn overloaded_nodes_are_skipped() {
        let nodes = [node("a", 1.0, 0.85), node("b", 1.0, 0.5), node("c", 1.0, 0.8)];
        for r in rooms(100) {
            assert_eq!(place(&r, &nodes).unwrap().as_str(), "b");
        }
        let all_busy = [node("a", 1.0, 0.9), node("b", 1.0, 0.95)];
        assert_eq!(place(&rooms(1)[0], &all_busy), None);
        assert_eq!(place(&rooms(1)[0], &[]), None);
    }

    #[test]
    fn owners_spread_and_move_only_with_their_node() {
        let ids: Vec<NodeId> = ["a", "b", "c"]
            .iter()
            .map(|s| NodeId::parse(s).unwrap())
            .collect();
        let mut per_node = BTreeMap::new();
        for i in 0..3000 {
            let key = format!("room/user-{i}");
            let all = owner(&key, &ids).unwrap();
            *per_node.entry(all.to_string()).or_insert(0) += 1;
            let reversed: Vec<NodeId> = ids.iter().rev().cloned().collect();
            assert_eq!(owner(&key, &reversed).unwrap(), all);
            if all.as_str() != "c" {
                assert_eq!(owner(&key, &ids[..2]).unwrap(), all);
            }
        }
        for (id, n) in &per_node {
            assert!((850..=1150).contains(n), "{id}: {n} of 3000");
        }
        assert_eq!(owner("k", &[]), None);
    }

    #[test]
    fn load_factor_is_the_busiest_resource() {
        let l = Load {
            cpu: 0.2,
            peers: 90,
            max_peers: 100,
            bandwidth_bps: 10,
            max_bandwidth_bps: 100,
        };
        assert!((l.factor() - 0.9).abs() < 1e-9);
        assert_eq!(Load::default().factor(), 0.0);
    }

    #[test]
    fn relay_trees_reach_the_origin_without_loops_and_respect_the_fanout() {
        let ids: Vec<NodeId> = (0..10)
            .map(|i| NodeId::parse(&format!("n{i}")).unwrap())
            .collect();
        for r in rooms(50) {
            for fanout in [1, 2, 3, 8] {
                let origin = &ids[0];
                let parents: BTreeMap<&NodeId, NodeId> = ids[1..]
                    .iter()
                    .map(|me| (me, parent(&r, origin, me, &ids, fanout)))
                    .collect();
                let mut children: BTreeMap<NodeId, usize> = BTreeMap::new();
                for p in parents.values() {
                    *children.entry(p.clone()).or_default() += 1;
                }
                assert!(children.values().all(|&c| c <= fanout), "{fanout}: {children:?}");
                for me in &ids[1..] {
                    // Up the tree to the origin in fewer hops than nodes.
                    let (mut at, mut hops) = (me.clone(), 0);
                    while at != *origin {
                        at = parents[&at].clone();
                        hops += 1;
                        assert!(hops < ids.len(), "loop from {me} in {r}");
                    }
                    if fanout == 1 {
                        assert!(hops >= 1);
                    }
                }
                let depth = |n: &NodeId| {
                    let (mut at, mut d) = (n.clone(), 0);
                    while at != *origin {
                        at = parents[&at].clone();
                        d += 1;
                    }
                    d
                };
                let deepest = ids[1..].iter().map(depth).max().unwrap();
                let expected = match fanout {
                    1 => 9,
                    2 => 3,
                    3 => 2,
                    _ => 2,
                };
                assert_eq!(deepest, expected, "fanout {fanout}");
            }
        }
        // Without the origin in the list, or `me` unknown: fed by the origin.
        let r = RoomId::parse("stage").unwrap();
        let stranger = NodeId::parse("x").unwrap();
        assert_eq!(parent(&r, &ids[0], &stranger, &ids[1..], 1), ids[0]);
    }
}
