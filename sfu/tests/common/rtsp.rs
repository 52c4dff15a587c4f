//! RTSP sources for the pull tests: GStreamer's gst-rtsp-server (through
//! Debian's python3-gi) as a camera, and TCP servers that misbehave.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use str0m::media::MediaKind;

use super::node::{Http, Node};
use super::viewer::LiveViewer;

/// A free TCP port on loopback (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `sfu/tests/rtsp/camera.py` serving H.264 + `audio` ("aac" or "pcmu")
/// at `rtsp://127.0.0.1:{port}/cam`; killed on drop.
pub struct Camera {
    child: Child,
    pub port: u16,
}

impl Camera {
    pub fn start(port: u16, audio: &str, size: &str) -> Camera {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rtsp/camera.py");
        // Debian's interpreter: gst-rtsp-server's bindings are Debian packages.
        let mut child = Command::new("/usr/bin/python3")
            .args([script, &port.to_string(), audio, size, "30"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs (scripts/setup.sh --test installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "the RTSP camera did not start (see its stderr)"
        );
        Camera { child, port }
    }

    pub fn url(&self, userinfo: &str) -> String {
        format!("rtsp://{userinfo}127.0.0.1:{}/cam", self.port)
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP server on loopback that answers every connection with `reply`
/// once it has read a request (`None`: reads and never answers).
pub fn bad_camera(reply: Option<&'static [u8]>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    if let Some(reply) = reply {
                        let _ = stream.write_all(reply);
                    }
                }
            });
        }
    });
    port
}

/// A pull at `location`, read with `token`.
pub struct Pull<'a> {
    pub http: &'a Http,
    pub node: &'a Node,
    pub location: String,
    pub token: String,
}

/// The pull at `location`, read with `token`.
pub fn pull<'a>(http: &'a Http, node: &'a Node, location: &str, token: &str) -> Pull<'a> {
    Pull {
        http,
        node,
        location: location.to_owned(),
        token: token.to_owned(),
    }
}

impl Pull<'_> {
    /// Polls the pull's `GET` until its state is one of `states` (or
    /// `secs` pass: panics with the last state).
    pub async fn until(&self, secs: u64, states: &[&str]) -> Value {
        let until = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let (status, state) = self
                .http
                .get_json(&self.node.url(&self.location), &self.token)
                .await;
            if states.contains(&state["state"].as_str().unwrap_or("")) {
                return state;
            }
            assert!(
                std::time::Instant::now() < until,
                "pull at {}: {status} {state}",
                self.location
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Asserts that `viewer` gets `n` more packets of `kind` than `after`
/// within `wait`.
pub async fn assert_receives(viewer: &LiveViewer, kind: MediaKind, after: usize, n: usize, wait: Duration) {
    assert!(
        viewer.wait_for(kind, after, n, wait).await,
        "{kind:?}: {} packets, {after} + {n} wanted",
        viewer.packets(kind).len()
    );
}
