//! A test media node that records calls, a real `serve` on 127.0.0.1:0, and a
//! small HTTP client over hyper.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use signaling::{
    Drain, HttpConfig, IcePatch, IceRestartAnswer, LayerPref, MediaError, MediaNode, PlayRequest,
    PublishRequest, PublisherInfo, RoomId, RoomInfo, Server, SessionId, Sessions, ViewerInfo,
};
use tokio::sync::oneshot;

pub const SECRET: &[u8] = b"test-secret";

/// A Chrome-like offer, trimmed: one audio and one simulcast video section.
pub const OFFER: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
a=msid-semantic: WMS stream\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:cUfr\r\n\
a=ice-pwd:clientpasswordclientpw1\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=sendonly\r\n\
a=msid:stream audio\r\n\
a=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:cUfr\r\n\
a=ice-pwd:clientpasswordclientpw1\r\n\
a=mid:1\r\n\
a=sendonly\r\n\
a=msid:stream video\r\n\
a=rtcp-mux\r\n\
a=rtpmap:96 VP8/90000\r\n\
a=rid:q send\r\n\
a=rid:h send\r\n\
a=rid:f send\r\n\
a=simulcast:send q;h;f\r\n";

/// What the test node answers: ICE-lite with fixed credentials.
pub const ANSWER: &str = "v=0\r\n\
o=- 1 1 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=ice-lite\r\n\
a=group:BUNDLE 0 1\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
a=ice-ufrag:sUfr\r\n\
a=ice-pwd:serverpasswordserverpw1\r\n\
a=mid:0\r\n\
a=recvonly\r\n\
a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n\
a=end-of-candidates\r\n";

/// The client credentials in [`OFFER`].
pub const CLIENT_UFRAG: &str = "cUfr";
pub const CLIENT_PWD: &str = "clientpasswordclientpw1";

#[derive(Debug, Clone)]
pub enum Call {
    Publish(PublishRequest),
    Play(PlayRequest),
    Patch(SessionId, IcePatch),
    SetLayer(SessionId, Option<LayerPref>),
    Delete(SessionId),
}

/// Records every call; answers [`ANSWER`] unless told to fail.
#[derive(Default)]
pub struct FakeNode {
    pub calls: Mutex<Vec<Call>>,
    /// The next operation (of any kind) fails with this.
    pub fail_next: Mutex<Option<MediaError>>,
    /// Publish and play take this long (for graceful-shutdown tests).
    pub delay: Mutex<Duration>,
}

impl FakeNode {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn fail_next(&self, e: MediaError) {
        *self.fail_next.lock().unwrap() = Some(e);
    }

    fn record(&self, call: Call) -> Result<(), MediaError> {
        self.calls.lock().unwrap().push(call);
        match self.fail_next.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn wait(&self) {
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

impl MediaNode for FakeNode {
    async fn publish(&self, req: PublishRequest) -> Result<String, MediaError> {
        self.wait().await;
        self.record(Call::Publish(req))?;
        Ok(ANSWER.to_owned())
    }

    async fn play(&self, req: PlayRequest) -> Result<String, MediaError> {
        self.wait().await;
        self.record(Call::Play(req))?;
        Ok(ANSWER.replace("a=recvonly", "a=sendonly"))
    }

    async fn patch(
        &self,
        session: &SessionId,
        patch: IcePatch,
    ) -> Result<Option<IceRestartAnswer>, MediaError> {
        let restart = matches!(patch, IcePatch::Restart { .. });
        self.record(Call::Patch(session.clone(), patch))?;
        Ok(restart.then(|| IceRestartAnswer {
            ufrag: "sNew".into(),
            pwd: "servernewpasswordservernew".into(),
            candidates: vec!["candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host".into()],
            ice_lite: true,
        }))
    }

    async fn set_layer(&self, session: &SessionId, layer: Option<LayerPref>) -> Result<(), MediaError> {
        self.record(Call::SetLayer(session.clone(), layer))
    }

    async fn delete(&self, session: &SessionId) -> Result<(), MediaError> {
        self.record(Call::Delete(session.clone()))
    }

    async fn rooms(&self) -> Vec<RoomInfo> {
        let mut rooms: Vec<RoomInfo> = Vec::new();
        for call in self.calls() {
            let (room, publisher, viewer) = match call {
                Call::Publish(r) => (r.room, Some((r.session, r.identity)), None),
                Call::Play(r) => (r.room, None, Some((r.session, r.identity))),
                _ => continue,
            };
            let idx = match rooms.iter().position(|r| r.room == room) {
                Some(i) => i,
                None => {
                    rooms.push(RoomInfo {
                        room,
                        publishers: vec![],
                        viewers: vec![],
                    });
                    rooms.len() - 1
                }
            };
            if let Some((session, identity)) = publisher {
                rooms[idx].publishers.push(PublisherInfo {
                    session,
                    identity,
                    tracks: vec![],
                });
            }
            if let Some((session, identity)) = viewer {
                rooms[idx].viewers.push(ViewerInfo {
                    session,
                    identity,
                    layer: None,
                    bitrate_bps: 0,
                });
            }
        }
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        rooms
    }

    async fn metrics(&self, out: &mut String) {
        out.push_str("# TYPE wave_test_node_calls counter\n");
        out.push_str(&format!("wave_test_node_calls {}\n", self.calls().len()));
    }
}

/// A running `serve` on an ephemeral port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub node: Arc<FakeNode>,
    pub sessions: Sessions,
    pub drain: Drain,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    pub task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The defaults tests run with: open node, no rate limit.
pub fn config() -> HttpConfig {
    HttpConfig {
        post_rate_limit: None,
        ..HttpConfig::default()
    }
}

pub fn secured() -> HttpConfig {
    HttpConfig {
        auth_secret: Some(SECRET.to_vec()),
        ..config()
    }
}

pub async fn start(config: HttpConfig) -> TestServer {
    start_with(config, Arc::new(FakeNode::default())).await
}

pub async fn start_with(config: HttpConfig, node: Arc<FakeNode>) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(node.clone(), config);
    let sessions = server.sessions();
    let drain = server.drain();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async move {
        let _ = rx.await;
    }));
    let client = Client::builder(TokioExecutor::new()).build_http();
    TestServer {
        addr,
        node,
        sessions,
        drain,
        shutdown: Mutex::new(Some(tx)),
        task: Some(task),
        client,
    }
}

/// What a test asserts on.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    pub fn problem(&self) -> serde_json::Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&self.body).unwrap();
        assert_eq!(v["status"], self.status.as_u16(), "{v}");
        assert!(v["title"].is_string() && v["type"].is_string(), "{v}");
        assert!(!v["detail"].as_str().unwrap().is_empty(), "{v}");
        v
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(self.url(path));
        for (k, v) in headers {
            req = req.header(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let req = req.body(Full::new(body.into())).unwrap();
        let resp = self.client.request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, &[], Bytes::new()).await
    }

    /// POSTs [`OFFER`] as application/sdp, with an optional token.
    pub async fn post_offer(&self, path: &str, token: Option<&str>) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/sdp")];
        if let Some(a) = &auth {
            headers.push(("authorization", a));
        }
        self.send("POST", path, &headers, OFFER).await
    }

    /// Creates a session and returns (location, etag).
    pub async fn create(&self, kind: &str, room: &str, token: Option<&str>) -> (String, String) {
        let r = self.post_offer(&format!("/{kind}/{room}"), token).await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        (
            r.header("location").unwrap().to_owned(),
            r.header("etag").unwrap().to_owned(),
        )
    }

    pub async fn patch(&self, location: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut all = vec![("content-type", "application/trickle-ice-sdpfrag")];
        all.extend_from_slice(headers);
        self.send("PATCH", location, &all, body.to_owned()).await
    }

    /// Signals shutdown without waiting.
    pub fn stop_signal(&self) {
        if let Some(tx) = self.shutdown.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn stop(&mut self) -> std::io::Result<()> {
        self.stop_signal();
        let task = self.task.take().expect("stopped once");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("serve returned")
            .unwrap()
    }
}

/// A token for `room` valid for an hour.
pub fn token(room: &str, identity: &str, publish: bool, subscribe: bool) -> String {
    signaling::auth::issue(
        SECRET,
        room,
        identity,
        publish,
        subscribe,
        Duration::from_secs(3600),
        SystemTime::now(),
    )
}

/// The session id at the end of a Location.
pub fn session_of(location: &str) -> SessionId {
    SessionId::parse(location.rsplit('/').next().unwrap()).unwrap()
}

pub fn room(s: &str) -> RoomId {
    RoomId::parse(s).unwrap()
}

/// A trickle fragment with the offer's credentials and the given candidate lines.
pub fn trickle(candidates: &[&str]) -> String {
    let mut s = format!(
        "a=ice-ufrag:{CLIENT_UFRAG}\r\na=ice-pwd:{CLIENT_PWD}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
    );
    for c in candidates {
        s.push_str(&format!("a={c}\r\n"));
    }
    s
}

pub const HOST_CANDIDATE: &str = "candidate:1 1 udp 2122260223 192.0.2.10 50001 typ host";
pub mod chat;
pub mod nats;
