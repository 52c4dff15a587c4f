//! Chat fan-out on the in-process bus, over real WebSocket framing on
//! in-memory streams: a member that stops reading is disconnected with
//! 1013 and counted on `/metrics`, while the room keeps delivering every
//! message, in order, to the member that reads; messages within the
//! fan-out window go out together, and each hop is counted.

use crate::common;

use std::time::{Duration, Instant};

use common::chat::{Ws, join, next};
use signaling::auth::Role;
use signaling::bus::Bus;
use signaling::chat::{ChatConfig, ChatHub, ChatMessage, HOP_METRIC, Sender, ServerFrame};
use signaling::cluster::NodeId;
use signaling::media::RoomId;
use wave_metrics::BucketCounts;

/// An in-process bus, a hub on it with `config`, and room `r`.
async fn hub(config: ChatConfig) -> (Bus, ChatHub, RoomId) {
    let bus = Bus::in_process();
    let hub = ChatHub::new(bus.clone(), NodeId::parse("n").unwrap(), config)
        .await
        .unwrap();
    (bus, hub, RoomId::parse("r").unwrap())
}

fn message(i: usize) -> bytes::Bytes {
    let m = ChatMessage {
        id: format!("{i:016x}"),
        ts: 1,
        room: "r".into(),
        sender: Sender {
            identity: "streamer".into(),
            role: Role::Streamer,
        },
        text: format!("m{i}"),
        client_id: None,
    };
    serde_json::to_vec(&ServerFrame::Message(m)).unwrap().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_reading_is_dropped_and_the_room_keeps_going() {
    const QUEUE: usize = 64;
    const CHUNK: usize = 32;
    const CHUNKS: usize = 16;
    let (bus, hub, room) = hub(ChatConfig {
        client_queue: QUEUE,
        ..ChatConfig::default()
    })
    .await;
    let mut good = join(&hub, &room, "good", 64 * 1024).await;
    // 1 KiB of buffer: a few frames fill it, then its writer blocks.
    let mut slow = join(&hub, &room, "slow", 1024).await;

    // Published in chunks the good member reads before the next one: it is
    // never behind by more than a chunk, the slow one falls behind by all.
    let mut seen = 0;
    for chunk in 0..CHUNKS {
        for i in chunk * CHUNK..(chunk + 1) * CHUNK {
            bus.publish("room.r.chat", message(i)).await.unwrap();
        }
        while seen < (chunk + 1) * CHUNK {
            let f = next(&mut good).await.expect("the good member stays connected");
            if f["type"] == "message" {
                assert_eq!(f["text"], format!("m{seen}"), "in order, none lost");
                seen += 1;
            }
        }
    }

    // The slow member gets what was queued before it fell QUEUE frames
    // behind, then close 1013; nothing past that.
    let mut got = 0;
    let code = loop {
        match next(&mut slow).await {
            Ok(f) if f["type"] == "message" => {
                assert_eq!(f["text"], format!("m{got}"));
                got += 1;
            }
            Ok(_) => {}
            Err(code) => break code,
        }
    };
    assert_eq!(code, Some(1013));
    assert!(got < CHUNKS * CHUNK, "the slow member got all {got} messages");

    let mut metrics = String::new();
    hub.render_metrics(&mut metrics);
    assert!(metrics.contains("wave_chat_slow_clients_total 1\n"), "{metrics}");
}

/// The `hop` series' observation count on a `/metrics` page.
fn hop_count(page: &str, hop: &str) -> u64 {
    BucketCounts::parse(page, HOP_METRIC, &format!("hop=\"{hop}\"")).count()
}

/// Messages closer together than the fan-out window reach a member
/// together at the window's end (one fan-out, one write); a message after
/// a quiet window goes out at once. The hop histograms count each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_within_the_fanout_window_go_out_together() {
    const WINDOW: Duration = Duration::from_millis(600);
    let (bus, hub, room) = hub(ChatConfig {
        fanout_window: WINDOW,
        ..ChatConfig::default()
    })
    .await;
    let mut ws = join(&hub, &room, "member", 64 * 1024).await;
    let next_message = async |ws: &mut Ws| loop {
        let f = next(ws).await.expect("connected");
        if f["type"] == "message" {
            return (f["text"].as_str().unwrap_or_default().to_owned(), Instant::now());
        }
    };

    // The first goes out at once (no fan-out before it); the next two come
    // within its window and wait for its end, together.
    bus.publish("room.r.chat", message(0)).await.unwrap();
    let (m0, t0) = next_message(&mut ws).await;
    for i in 1..3 {
        bus.publish("room.r.chat", message(i)).await.unwrap();
    }
    let (m1, t1) = next_message(&mut ws).await;
    let (m2, t2) = next_message(&mut ws).await;
    assert_eq!([m0.as_str(), &m1, &m2], ["m0", "m1", "m2"]);
    assert!(
        t1.duration_since(t0) >= WINDOW - Duration::from_millis(100),
        "m1 {:?} after m0: not held for the window",
        t1.duration_since(t0)
    );
    assert!(
        t2.duration_since(t1) < Duration::from_millis(100),
        "m1 and m2 apart"
    );

    // A window later the room is quiet again: the next one is not held.
    tokio::time::sleep(WINDOW + Duration::from_millis(100)).await;
    let sent = Instant::now();
    bus.publish("room.r.chat", message(3)).await.unwrap();
    let (m3, t3) = next_message(&mut ws).await;
    assert_eq!(m3, "m3");
    assert!(
        t3.duration_since(sent) < WINDOW - Duration::from_millis(100),
        "m3 held {:?} after a quiet window",
        t3.duration_since(sent)
    );

    // Three fan-outs (m0, m1+m2, m3), each one write to the one member;
    // every message seen coming off the bus. Nothing was read from a client.
    // A write is counted just after its flush, so the client may read m3
    // before it is: wait for it (briefly) rather than race it.
    let deadline = Instant::now() + Duration::from_secs(1);
    let page = loop {
        let mut page = String::new();
        hub.render_metrics(&mut page);
        if hop_count(&page, "origin_to_write") >= 3 || Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(hop_count(&page, "origin_to_room"), 4, "{page}");
    assert_eq!(hop_count(&page, "fanout"), 3, "{page}");
    assert_eq!(hop_count(&page, "queue_to_write"), 3, "{page}");
    assert_eq!(hop_count(&page, "origin_to_write"), 3, "{page}");
    assert_eq!(hop_count(&page, "read_to_publish"), 0, "{page}");
}
