//! The bus keeps one behaviour on both implementations: every scenario runs
//! against the in-process bus and against a real nats-server with JetStream.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::nats::{NatsServer, connect, on_both};
use signaling::bus::{Bus, BusError, BusStatus, HistoryLimits, NatsOptions, Subscription};

on_both!(
    publish_reaches_matching_wildcards_in_order,
    request_gets_an_answer_or_a_clear_error,
    kv_create_is_exclusive_and_update_checks_revisions,
    kv_keys_expire_ttl_after_their_last_write,
    kv_entries_lists_every_key_while_the_keys_are_rewritten,
    history_keeps_the_last_messages_per_subject,
    bad_subjects_and_keys_are_refused,
);

async fn next(sub: &mut Subscription) -> String {
    let m = tokio::time::timeout(Duration::from_secs(2), sub.next())
        .await
        .expect("a message within 2 s")
        .expect("subscription open");
    format!("{} {}", m.subject, String::from_utf8_lossy(&m.payload))
}

async fn nothing_more(sub: &mut Subscription) {
    let extra = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
    assert!(
        extra.is_err(),
        "unexpected message: {extra:?}",
        extra = extra.map(|m| m.map(|m| m.subject))
    );
}

async fn publish_reaches_matching_wildcards_in_order(bus: &Bus) {
    let mut one = bus.subscribe("room.*.chat").await.unwrap();
    let mut all = bus.subscribe("room.>").await.unwrap();
    let mut exact = bus.subscribe("room.b.chat").await.unwrap();
    for i in 0..20 {
        bus.publish("room.a.chat", Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    bus.publish("room.a.b.chat", Bytes::from_static(b"deep"))
        .await
        .unwrap();
    bus.publish("other.a.chat", Bytes::from_static(b"no"))
        .await
        .unwrap();

    for i in 0..20 {
        assert_eq!(next(&mut one).await, format!("room.a.chat {i}"));
        assert_eq!(next(&mut all).await, format!("room.a.chat {i}"));
    }
    assert_eq!(next(&mut all).await, "room.a.b.chat deep");
    nothing_more(&mut one).await;
    nothing_more(&mut all).await;
    nothing_more(&mut exact).await;

    // Dropping a subscription unsubscribes; the others keep receiving.
    drop(one);
    bus.publish("room.b.chat", Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(next(&mut exact).await, "room.b.chat x");
    assert_eq!(next(&mut all).await, "room.b.chat x");
}

async fn request_gets_an_answer_or_a_clear_error(bus: &Bus) {
    let no_one = bus
        .request("sfu.node.n1.rpc.ping", Bytes::new(), Duration::from_secs(2))
        .await;
    assert_eq!(no_one, Err(BusError::NoResponders("sfu.node.n1.rpc.ping".into())));

    let mut requests = bus.subscribe("sfu.node.n1.rpc.*").await.unwrap();
    let responder = bus.clone();
    tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            if m.subject.ends_with(".ping") {
                let answer = [b"pong:".as_slice(), &m.payload].concat();
                responder.respond(&m, Bytes::from(answer)).await.unwrap();
            }
        }
    });
    let answer = bus
        .request(
            "sfu.node.n1.rpc.ping",
            Bytes::from_static(b"7"),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert_eq!(answer, Bytes::from_static(b"pong:7"));

    let started = tokio::time::Instant::now();
    let silent = bus
        .request("sfu.node.n1.rpc.drain", Bytes::new(), Duration::from_millis(300))
        .await;
    assert_eq!(silent, Err(BusError::TimedOut("sfu.node.n1.rpc.drain".into())));
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(started.elapsed() < Duration::from_secs(2));
}

async fn kv_create_is_exclusive_and_update_checks_revisions(bus: &Bus) {
    let kv = bus.kv("rooms", Duration::from_secs(60)).await.unwrap();
    assert_eq!(kv.get("live").await.unwrap(), None);

    let r1 = kv.create("live", Bytes::from_static(b"node-a")).await.unwrap();
    let taken = kv.create("live", Bytes::from_static(b"node-b")).await;
    assert_eq!(taken, Err(BusError::KeyExists("live".into())));

    let e = kv.get("live").await.unwrap().unwrap();
    assert_eq!((e.value.as_ref(), e.revision), (b"node-a".as_slice(), r1));

    let r2 = kv
        .update("live", Bytes::from_static(b"node-a2"), r1)
        .await
        .unwrap();
    assert!(r2 > r1);
    let stale = kv.update("live", Bytes::from_static(b"node-b"), r1).await;
    assert_eq!(stale, Err(BusError::WrongRevision("live".into())));
    let stale_delete = kv.delete("live", Some(r1)).await;
    assert_eq!(stale_delete, Err(BusError::WrongRevision("live".into())));

    // A second handle on the same bucket sees the same data.
    let again = bus.kv("rooms", Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        again.get("live").await.unwrap().unwrap().value,
        Bytes::from_static(b"node-a2")
    );

    kv.put("other", Bytes::from_static(b"x")).await.unwrap();
    let keys: Vec<String> = kv.entries().await.unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["live", "other"]);

    kv.delete("live", Some(r2)).await.unwrap();
    assert_eq!(kv.get("live").await.unwrap(), None);
    let keys: Vec<String> = kv.entries().await.unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["other"]);
    // Deleted keys can be created again.
    kv.create("live", Bytes::from_static(b"node-b")).await.unwrap();
    let updating_missing = kv.update("missing", Bytes::new(), 1).await;
    assert_eq!(updating_missing, Err(BusError::WrongRevision("missing".into())));
}

async fn kv_keys_expire_ttl_after_their_last_write(bus: &Bus) {
    let ttl = Duration::from_secs(1);
    let kv = bus.kv("nodes", ttl).await.unwrap();
    let mut r = kv.create("n1", Bytes::from_static(b"1")).await.unwrap();
    kv.create("n2", Bytes::from_static(b"1")).await.unwrap();
    // Driven by n2's expiry, not by a clock margin: n1, written at the same
    // moment, is refreshed until n2 is gone. Then n1 has outlived its
    // first write's TTL, so only the refresh can have kept it.
    let deadline = tokio::time::Instant::now() + ttl * 5;
    loop {
        r = kv.update("n1", Bytes::from_static(b"2"), r).await.unwrap();
        if kv.get("n2").await.unwrap().is_none() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "n2 did not expire");
        tokio::time::sleep(ttl / 10).await;
    }
    assert!(
        kv.get("n1").await.unwrap().is_some(),
        "a key refreshed just now expired with the key written with its first write"
    );
    // An expired key can be claimed again.
    kv.create("n2", Bytes::from_static(b"new owner")).await.unwrap();
}

/// The node registry is read with `entries()` while every node rewrites its
/// own key each heartbeat: a listing taken during those writes must still
/// hold every key (a node missing from one heartbeat's view was answered a
/// 307 instead of being relayed to).
async fn kv_entries_lists_every_key_while_the_keys_are_rewritten(bus: &Bus) {
    let kv = bus.kv("busy", Duration::from_secs(3)).await.unwrap();
    const KEYS: [&str; 4] = ["a", "b", "c", "d"];
    let keys: &'static [&str] = &KEYS;
    for k in keys {
        kv.put(k, Bytes::from_static(b"0")).await.unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = keys
        .iter()
        .map(|k| {
            let (kv, stop) = (kv.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    kv.put(k, Bytes::from(i.to_string())).await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let mut short = Vec::new();
    for round in 0..300 {
        let listed: Vec<String> = kv.entries().await.unwrap().into_iter().map(|e| e.key).collect();
        if listed.len() != keys.len() {
            short.push(format!("round {round}: {listed:?}"));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        short.is_empty(),
        "{} of 300 listings missed a key: {:?}",
        short.len(),
        &short[..short.len().min(5)]
    );
}

async fn history_keeps_the_last_messages_per_subject(bus: &Bus) {
    let limits = HistoryLimits {
        max_per_subject: 3,
        max_age: Duration::from_secs(60),
    };
    let history = bus.history("CHAT", "room.*.chat", limits).await.unwrap();
    let mut live = bus.subscribe("room.a.chat").await.unwrap();
    for i in 0..5 {
        history
            .append("room.a.chat", Bytes::from(format!("a{i}")))
            .await
            .unwrap();
    }
    history
        .append("room.b.chat", Bytes::from_static(b"b0"))
        .await
        .unwrap();

    let texts = |v: Vec<signaling::bus::HistoryEntry>| {
        v.into_iter()
            .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        texts(history.last("room.a.chat", 10).await.unwrap()),
        ["a2", "a3", "a4"]
    );
    assert_eq!(texts(history.last("room.a.chat", 2).await.unwrap()), ["a3", "a4"]);
    assert_eq!(texts(history.last("room.b.chat", 10).await.unwrap()), ["b0"]);
    assert!(history.last("room.c.chat", 10).await.unwrap().is_empty());
    // Appends reach live subscribers too.
    assert_eq!(next(&mut live).await, "room.a.chat a0");

    let outside = history.append("room.a.presence", Bytes::new()).await;
    assert_eq!(outside, Err(BusError::NotInStream("room.a.presence".into())));

    let short = HistoryLimits {
        max_per_subject: 10,
        max_age: Duration::from_secs(1),
    };
    let brief = bus.history("BRIEF", "brief.>", short).await.unwrap();
    brief.append("brief.x", Bytes::from_static(b"old")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while !brief.last("brief.x", 10).await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "history did not age out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn bad_subjects_and_keys_are_refused(bus: &Bus) {
    for s in ["", "room..chat", "room a", "room.*.chat"] {
        let r = bus.publish(s, Bytes::new()).await;
        assert_eq!(r, Err(BusError::InvalidSubject(s.into())), "{s:?}");
    }
    assert!(bus.subscribe("room.>.x").await.is_err());
    let kv = bus.kv("rooms", Duration::from_secs(5)).await.unwrap();
    assert!(matches!(
        kv.create("a b", Bytes::new()).await,
        Err(BusError::InvalidSubject(_))
    ));
    assert!(matches!(
        bus.kv("bad.bucket", Duration::from_secs(5)).await,
        Err(BusError::InvalidSubject(_))
    ));
    assert_eq!(*bus.status().borrow(), BusStatus::Connected);
}

/// NATS only: an outage is visible, calls fail fast instead of queueing, and
/// after a restart the client reconnects and subscriptions resume.
#[tokio::test]
async fn nats_outage_is_observable_and_recovers() {
    let mut server = NatsServer::start();
    let bus = connect(&server).await;
    let mut status = bus.status();
    let mut sub = bus.subscribe("room.a.chat").await.unwrap();

    server.kill();
    tokio::time::timeout(
        Duration::from_secs(5),
        status.wait_for(|s| *s == BusStatus::Disconnected),
    )
    .await
    .expect("disconnect noticed within 5 s")
    .unwrap();
    let refused = bus.publish("room.a.chat", Bytes::from_static(b"lost")).await;
    assert!(matches!(refused, Err(BusError::Unavailable(_))), "{refused:?}");

    server.restart();
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| *s == BusStatus::Connected),
    )
    .await
    .expect("reconnected within 10 s")
    .unwrap();
    // The subscription was re-established by the client.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        bus.publish("room.a.chat", Bytes::from_static(b"back"))
            .await
            .unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            assert_eq!(m.payload, Bytes::from_static(b"back"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscription did not resume"
        );
    }
    // JetStream state survived the restart (file store).
    let kv = bus.kv("rooms", Duration::from_secs(60)).await.unwrap();
    kv.put("k", Bytes::from_static(b"v")).await.unwrap();
}

#[tokio::test]
async fn nats_connect_failure_is_a_clear_error() {
    let server = NatsServer::start();
    let url = server.url();
    drop(server);
    let opts = NatsOptions {
        url: url.clone(),
        ..Default::default()
    };
    let err = Bus::connect(&opts).await.unwrap_err();
    assert!(
        matches!(&err, BusError::Unavailable(m) if m.contains(&url)),
        "{err}"
    );
}

#[tokio::test]
async fn nats_url_list_reaches_a_live_server_of_the_list() {
    let dead = NatsServer::start();
    let dead_url = dead.url();
    drop(dead);
    let live = NatsServer::start();
    let opts = NatsOptions {
        url: format!("{dead_url}, {}", live.url()),
        ..Default::default()
    };
    let bus = Bus::connect(&opts)
        .await
        .expect("a list with one live server connects");
    let kv = bus.kv("rooms", Duration::from_secs(60)).await.unwrap();
    kv.put("k", Bytes::from_static(b"v")).await.unwrap();
}
