//! The real `sfu` binary on loopback, and a small HTTP client.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// What `sfu token --secret s3cret ARGS` prints: a token for a node
/// started with `--auth-secret s3cret`.
pub fn cli_token(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sfu"))
        .args(["token", "--secret", "s3cret"])
        .args(args)
        .output()
        .expect("sfu token runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A running `sfu serve`, killed on drop.
pub struct Node {
    pub child: Child,
    pub http: SocketAddr,
    pub media: Vec<SocketAddr>,
    /// The RTMP listener, with `--rtmp-listen`.
    pub rtmp: Option<SocketAddr>,
}

impl Node {
    /// Starts the binary with `args` after `serve --http 127.0.0.1:0`.
    pub fn start(args: &[&str]) -> Node {
        Node::start_at("127.0.0.1:0", args)
    }

    /// A cluster member on `ip` (HTTP port 0, media on `ip`) joined to the
    /// NATS server at `nats_url` as `id`, with `extra` flags after those.
    pub fn start_in_cluster(nats_url: &str, id: &str, ip: &str, extra: &[&str]) -> Node {
        Node::start_bin_in_cluster(env!("CARGO_BIN_EXE_sfu").as_ref(), nats_url, id, ip, extra)
    }

    /// [`Node::start_in_cluster`] with another `sfu` binary (a benchmark
    /// comparing builds).
    pub fn start_bin_in_cluster(
        bin: &std::path::Path,
        nats_url: &str,
        id: &str,
        ip: &str,
        extra: &[&str],
    ) -> Node {
        let mut args = vec!["--nats", nats_url, "--node-id", id, "--media-ip", ip];
        args.extend_from_slice(extra);
        Node::start_bin(bin, &format!("{ip}:0"), &args)
    }

    /// Starts the binary with `args` after `serve --http <http>`.
    pub fn start_at(http: &str, args: &[&str]) -> Node {
        Node::start_bin(env!("CARGO_BIN_EXE_sfu").as_ref(), http, args)
    }

    fn start_bin(bin: &std::path::Path, http: &str, args: &[&str]) -> Node {
        Node::start_bin_env(bin, http, args, &[])
    }

    /// [`Node::start`] with more environment variables (test-only hooks).
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Node {
        Node::start_bin_env(env!("CARGO_BIN_EXE_sfu").as_ref(), "127.0.0.1:0", args, env)
    }

    fn start_bin_env(bin: &std::path::Path, http: &str, args: &[&str], env: &[(&str, &str)]) -> Node {
        let mut child = Command::new(bin)
            .args(["serve", "--http", http, "--workers", "2"])
            .args(args)
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("WAVE_TEST_LOG").unwrap_or("warn".into()),
            )
            // SIGTERM stops at once unless a test asks for a drain (`--drain-timeout`).
            .env("SFU_DRAIN_TIMEOUT", "0s")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sfu binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        reader.read_line(&mut line).expect("listening line");
        // Keep draining so the node never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let at: sfu::Bound =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("no ready line ({e}): {line:?}"));
        Node {
            child,
            http: at.http,
            media: at.media,
            rtmp: at.rtmp,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// Sends SIGTERM and returns how long the process took to exit.
    pub fn terminate(&mut self) -> Duration {
        let t0 = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return t0.elapsed();
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                return t0.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response, fully read.
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl Http {
    pub async fn send(&self, method: Method, url: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let res = self.client.request(req).await.expect("request");
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// GET with the body as bytes (images, media files).
    pub async fn get_bytes(&self, url: &str) -> (StatusCode, HeaderMap, Bytes) {
        let req = Request::builder()
            .method(Method::GET)
            .uri(url)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = self.client.request(req).await.expect("request");
        let (status, headers) = (res.status(), res.headers().clone());
        (
            status,
            headers,
            res.into_body().collect().await.unwrap().to_bytes(),
        )
    }

    pub async fn post_sdp(&self, url: &str, sdp: &str, token: Option<&str>) -> Resp {
        self.post_typed(url, "application/sdp", sdp, token).await
    }

    pub async fn post_json(&self, url: &str, json: &str, token: Option<&str>) -> Resp {
        self.post_typed(url, "application/json", json, token).await
    }

    async fn post_typed(&self, url: &str, content_type: &str, body: &str, token: Option<&str>) -> Resp {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut h = vec![("content-type", content_type)];
        if let Some(a) = auth.as_deref() {
            h.push(("authorization", a));
        }
        self.send(Method::POST, url, &h, body).await
    }

    /// GET with a bearer token: the status and the body as JSON (`Null`
    /// when it is not).
    pub async fn get_json(&self, url: &str, token: &str) -> (StatusCode, serde_json::Value) {
        let auth = format!("Bearer {token}");
        let r = self.send(Method::GET, url, &[("authorization", &auth)], "").await;
        (r.status, serde_json::from_str(&r.body).unwrap_or_default())
    }
}

/// A browser-like WHIP offer (audio + 3-layer simulcast video) made by str0m.
pub fn publish_offer() -> String {
    use str0m::media::{Direction, MediaKind, Simulcast, SimulcastLayer};
    let mut rtc = str0m::RtcConfig::new().build(Instant::now());
    rtc.add_local_candidate(str0m::Candidate::host("127.0.0.1:40000".parse().unwrap(), "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(
        MediaKind::Audio,
        Direction::SendOnly,
        Some("s".into()),
        Some("a".into()),
        None,
    );
    let mut sim = Simulcast::new();
    for rid in ["q", "h", "f"] {
        sim.add_send_layer(SimulcastLayer::new(rid));
    }
    api.add_media(
        MediaKind::Video,
        Direction::SendOnly,
        Some("s".into()),
        Some("v".into()),
        Some(sim),
    );
    api.apply().unwrap().0.to_sdp_string()
}

/// A WHEP offer (recvonly audio + video) made by str0m.
pub fn play_offer() -> String {
    play_offer_from(str0m::RtcConfig::new())
}

/// [`play_offer`] with Opus and these video codecs only.
pub fn play_offer_with(video: &[str0m::format::Codec]) -> String {
    use str0m::format::Codec;
    let config = str0m::RtcConfig::new().clear_codecs().enable_opus(true, false);
    play_offer_from(video.iter().fold(config, |config, codec| match codec {
        Codec::H264 => config.enable_h264(true),
        Codec::Vp8 => config.enable_vp8(true),
        Codec::Vp9 => config.enable_vp9(true),
        Codec::Av1 => config.enable_av1(true),
        other => panic!("no test offer for {other}"),
    }))
}

fn play_offer_from(config: str0m::RtcConfig) -> String {
    use str0m::media::{Direction, MediaKind};
    let mut rtc = config.build(Instant::now());
    rtc.add_local_candidate(str0m::Candidate::host("127.0.0.1:40001".parse().unwrap(), "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    api.apply().unwrap().0.to_sdp_string()
}
