//! A real WebSocket chat client for `/v1/chat/{room}`, and tokens.

use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::nats::NatsServer;
use super::node::{Http, Node};

pub const SECRET: &str = "chat-test-secret";

/// A token for `identity` in `room` with a chat role (`None`: derived from the grants).
pub fn token(room: &str, identity: &str, publish: bool, role: Option<&str>) -> String {
    let mut c = signaling::auth::Claims::new(room, identity, Duration::from_secs(600), SystemTime::now());
    c.publish = publish;
    c.subscribe = true;
    c.role = role.map(|r| signaling::auth::Role::parse(r).expect("a role"));
    signaling::auth::issue_claims(SECRET.as_bytes(), &c)
}

/// A cluster member with tokens ([`SECRET`]) and short heartbeats.
pub fn cluster_node(nats: &NatsServer, id: &str, ip: &str) -> Node {
    let flags = [
        "--auth-secret",
        SECRET,
        "--heartbeat",
        "200ms",
        "--node-ttl",
        "1s",
    ];
    Node::start_in_cluster(&nats.url(), id, ip, &flags)
}

/// Waits (at most 5 s) until every node's `GET /v1/nodes` lists `n` live
/// nodes, so all of them hash rooms and senders alike.
pub async fn wait_for_view(http: &Http, nodes: &[&Node], n: usize) {
    let admin = format!("Bearer {}", token("*", "admin", false, None));
    let started = std::time::Instant::now();
    for node in nodes {
        loop {
            let r = http
                .send(
                    hyper::Method::GET,
                    &node.url("/v1/nodes"),
                    &[("authorization", &admin)],
                    "",
                )
                .await;
            let v: Value = serde_json::from_str(&r.body).unwrap_or_default();
            if v["nodes"].as_array().map_or(0, Vec::len) == n {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{}: {}",
                node.url(""),
                r.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A counter's value on a node's `/metrics` page (0 when absent).
pub async fn metric(http: &Http, node: &Node, name: &str) -> f64 {
    let page = http
        .send(hyper::Method::GET, &node.url("/metrics"), &[], "")
        .await
        .body;
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// `GET /v1/rooms/{room}` with a viewer's token for the room: its JSON, or
/// `None` unless `200`.
pub async fn room_json(http: &Http, node: &Node, room: &str) -> Option<Value> {
    let auth = format!("Bearer {}", token(room, "lister", false, None));
    let r = http
        .send(
            hyper::Method::GET,
            &node.url(&format!("/v1/rooms/{room}")),
            &[("authorization", &auth)],
            "",
        )
        .await;
    if r.status != hyper::StatusCode::OK {
        return None;
    }
    Some(serde_json::from_str(&r.body).expect("room JSON"))
}

pub struct ChatClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The welcome frame.
    pub welcome: Value,
    /// The history frame's messages.
    pub history: Vec<Value>,
}

/// Why a connection was refused: the HTTP status and body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

impl ChatClient {
    /// Connects and reads the welcome and history frames.
    pub async fn connect(node: &Node, room: &str, token: Option<&str>) -> Result<ChatClient, Refused> {
        let mut url = format!("ws://{}/v1/chat/{room}", node.http);
        if let Some(t) = token {
            url.push_str(&format!("?token={t}"));
        }
        Self::connect_url(&url).await
    }

    pub async fn connect_url(url: &str) -> Result<ChatClient, Refused> {
        Self::connect_url_with(url, None).await
    }

    /// [`ChatClient::connect_url`] with a WebSocket configuration (`None`:
    /// tungstenite's defaults).
    pub async fn connect_url_with(
        url: &str,
        config: Option<tungstenite::protocol::WebSocketConfig>,
    ) -> Result<ChatClient, Refused> {
        let (ws, _) = match tokio_tungstenite::connect_async_with_config(url, config, false).await {
            Ok(ok) => ok,
            Err(tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                return Err(Refused {
                    status: resp.status().as_u16(),
                    body,
                });
            }
            Err(e) => panic!("chat connect {url}: {e}"),
        };
        let mut c = ChatClient {
            ws,
            welcome: Value::Null,
            history: Vec::new(),
        };
        c.welcome = c.next_of("welcome").await;
        let h = c.next_of("history").await;
        c.history = h["messages"].as_array().cloned().unwrap_or_default();
        Ok(c)
    }

    /// The WebSocket itself, after the welcome and history frames (for
    /// readers that parse only what they need, like the fan-out bench).
    pub fn into_ws(self) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        self.ws
    }

    pub async fn say(&mut self, text: &str) {
        self.send_raw(&json!({"type": "message", "text": text}).to_string())
            .await;
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("send a chat frame");
    }

    pub async fn send_message(&mut self, m: Message) {
        self.ws.send(m).await.expect("send a frame");
    }

    /// The next JSON frame within 5 s; `None` when the server closed.
    pub async fn next(&mut self) -> Option<Value> {
        self.next_within(Duration::from_secs(5))
            .await
            .expect("a chat frame within 5 s")
    }

    /// `Err(())` on timeout, `Ok(None)` when closed.
    pub async fn next_within(&mut self, wait: Duration) -> Result<Option<Value>, ()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| ())?;
            match m {
                Some(Ok(Message::Text(t))) => {
                    return Ok(Some(serde_json::from_str(t.as_str()).expect("JSON frame")));
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(None),
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next frame of `kind`, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let f = self
                .next()
                .await
                .unwrap_or_else(|| panic!("closed while waiting for {kind}"));
            if f["type"] == kind {
                return f;
            }
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn close_code(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| u16::from(f.code)),
                Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Waits for a presence frame satisfying `pred`.
    pub async fn presence_until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let f = self.next_of("presence").await;
            if pred(&f) {
                return f;
            }
        }
    }
}
