//! Node and room registries, on the in-process bus and on a real nats-server:
//! heartbeats, dead-node removal, exclusive room claims, expiry, release.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::nats::on_both;
use signaling::RoomId;
use signaling::bus::Bus;
use signaling::cluster::{Claim, Cluster, ClusterConfig, Load, NodeId};

on_both!(
    nodes_see_each_other_and_a_silent_node_is_dropped,
    one_claim_per_room_and_it_outlives_no_owner,
    claims_of_emptied_rooms_are_released,
    racing_claims_have_one_winner,
);

const TTL: Duration = Duration::from_secs(1);

async fn node(bus: &Bus, id: &str) -> Cluster {
    let mut config = ClusterConfig::new(NodeId::parse(id).unwrap(), format!("http://{id}.test"));
    config.ttl = TTL;
    config.heartbeat = Duration::from_millis(200);
    Cluster::new(bus.clone(), config).await.unwrap()
}

fn room(s: &str) -> RoomId {
    RoomId::parse(s).unwrap()
}

fn ids(c: &Cluster) -> Vec<String> {
    c.live_nodes().into_iter().map(|n| n.id.to_string()).collect()
}

fn load(cpu: f64) -> Load {
    Load {
        cpu,
        ..Load::default()
    }
}

async fn nodes_see_each_other_and_a_silent_node_is_dropped(bus: &Bus) {
    let a = node(bus, "a").await;
    let b = node(bus, "b").await;
    let none = BTreeSet::new();
    a.heartbeat(load(0.3), &none).await.unwrap();
    b.heartbeat(load(0.1), &none).await.unwrap();
    a.heartbeat(load(0.3), &none).await.unwrap();
    assert_eq!(ids(&a), ["a", "b"]);
    assert_eq!(ids(&b), ["a", "b"]);
    let seen_by_b = b.live_nodes();
    assert_eq!(seen_by_b[0].http_url, "http://a.test");
    assert!((seen_by_b[0].load.cpu - 0.3).abs() < 1e-9);

    // a stops heartbeating; b keeps going and sees it vanish within TTL + slack.
    let started = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        b.heartbeat(load(0.1), &none).await.unwrap();
        if ids(&b) == ["b"] {
            break;
        }
        assert!(
            started.elapsed() < TTL * 3,
            "a still listed after {:?}",
            started.elapsed()
        );
    }
}

async fn one_claim_per_room_and_it_outlives_no_owner(bus: &Bus) {
    let a = node(bus, "a").await;
    let b = node(bus, "b").await;
    let none = BTreeSet::new();
    a.heartbeat(load(0.0), &none).await.unwrap();
    b.heartbeat(load(0.0), &none).await.unwrap();

    let live = room("live");
    assert_eq!(a.claim(&live).await.unwrap(), Claim::Local);
    assert_eq!(
        a.claim(&live).await.unwrap(),
        Claim::Local,
        "the owner may claim again"
    );
    let Claim::Elsewhere(owner) = b.claim(&live).await.unwrap() else {
        panic!("b took a room a owns");
    };
    assert_eq!(owner.node.as_str(), "a");
    assert_eq!(owner.http_url, "http://a.test");
    assert!(a.owns(&live) && !b.owns(&live));

    // While a heartbeats with the room active, the claim outlives the TTL.
    let active: BTreeSet<RoomId> = [live.clone()].into();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        a.heartbeat(load(0.0), &active).await.unwrap();
        b.heartbeat(load(0.0), &none).await.unwrap();
    }
    assert!(matches!(b.claim(&live).await.unwrap(), Claim::Elsewhere(_)));

    // a dies (stops heartbeating): b can take the room within a few seconds.
    let started = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        b.heartbeat(load(0.0), &none).await.unwrap();
        if b.claim(&live).await.unwrap() == Claim::Local {
            break;
        }
        assert!(
            started.elapsed() < TTL * 3,
            "claim of a dead node held for {:?}",
            started.elapsed()
        );
    }
    assert_eq!(b.owner(&live).await.unwrap().unwrap().node.as_str(), "b");
}

async fn claims_of_emptied_rooms_are_released(bus: &Bus) {
    let a = node(bus, "a").await;
    let none = BTreeSet::new();
    a.heartbeat(load(0.0), &none).await.unwrap();
    let r = room("brief");
    assert_eq!(a.claim(&r).await.unwrap(), Claim::Local);
    // Within the grace period a fresh claim survives an empty room (the
    // publisher is still being answered).
    a.heartbeat(load(0.0), &none).await.unwrap();
    assert!(a.owner(&r).await.unwrap().is_some());
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    a.heartbeat(load(0.0), &none).await.unwrap();
    assert!(!a.owns(&r));
    assert_eq!(a.owner(&r).await.unwrap(), None);
}

async fn racing_claims_have_one_winner(bus: &Bus) {
    let mut nodes = Vec::new();
    for i in 0..5 {
        let n = node(bus, &format!("n{i}")).await;
        n.heartbeat(load(0.0), &BTreeSet::new()).await.unwrap();
        nodes.push(n);
    }
    let r = room("contested");
    let claims = nodes.iter().map(|n| {
        let r = r.clone();
        let n = n.clone();
        tokio::spawn(async move { n.claim(&r).await.unwrap() })
    });
    let mut winners = 0;
    for c in claims.collect::<Vec<_>>() {
        if c.await.unwrap() == Claim::Local {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(nodes.iter().filter(|n| n.owns(&r)).count(), 1);
}
