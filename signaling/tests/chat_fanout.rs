//! Chat fan-out on the in-process bus, over real WebSocket framing on
//! in-memory streams: a member that stops reading is disconnected with
//! 1013 and counted on `/metrics`, while the room keeps delivering every
//! message, in order, to the member that reads.

use std::time::Duration;

use futures_util::StreamExt;
use signaling::auth::Role;
use signaling::bus::Bus;
use signaling::chat::{ChatConfig, ChatHub, ChatMessage, Sender, ServerFrame};
use signaling::cluster::NodeId;
use signaling::media::RoomId;
use tokio::io::DuplexStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message, protocol};

type Ws = WebSocketStream<DuplexStream>;

/// Admits `identity` and runs its connection over an in-memory stream of
/// `buffer` bytes each way; returns the client's end.
async fn join(hub: &ChatHub, room: &RoomId, identity: &str, buffer: usize) -> Ws {
    let admission = hub
        .admit(room, identity.to_owned(), Role::Viewer)
        .await
        .expect("admitted");
    let (client, server) = tokio::io::duplex(buffer);
    let hub = hub.clone();
    tokio::spawn(async move { hub.serve(admission, server).await });
    WebSocketStream::from_raw_socket(client, protocol::Role::Client, None).await
}

/// The next frame's JSON within 5 s; `None` once closed (with its code).
async fn next(ws: &mut Ws) -> Result<serde_json::Value, Option<u16>> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s");
        match m {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str()).expect("JSON")),
            Some(Ok(Message::Close(f))) => return Err(f.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(None),
        }
    }
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
    let bus = Bus::in_process();
    let config = ChatConfig {
        client_queue: QUEUE,
        ..ChatConfig::default()
    };
    let hub = ChatHub::new(bus.clone(), NodeId::parse("n").unwrap(), config)
        .await
        .unwrap();
    let room = RoomId::parse("r").unwrap();
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
