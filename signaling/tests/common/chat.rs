//! Chat members over real WebSocket framing on in-memory streams.

use std::time::Duration;

use futures_util::StreamExt;
use signaling::auth::Role;
use signaling::chat::ChatHub;
use signaling::media::RoomId;
use tokio::io::DuplexStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message, protocol};

pub type Ws = WebSocketStream<DuplexStream>;

/// Admits `identity` and runs its connection over an in-memory stream of
/// `buffer` bytes each way; returns the client's end.
pub async fn join(hub: &ChatHub, room: &RoomId, identity: &str, buffer: usize) -> Ws {
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
pub async fn next(ws: &mut Ws) -> Result<serde_json::Value, Option<u16>> {
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
