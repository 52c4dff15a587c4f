//! Third-party WebRTC clients (GStreamer webrtcbin, aiortc, FFmpeg's WHIP
//! muxer, libdatachannel) against the real `sfu` binary, all inside a
//! private network namespace (libnice gathers no loopback candidates).
//!
//! The clients are `tests/interop/wave_interop.py`, run with the venv that
//! `scripts/setup.sh` creates (`.venv/`, with the system's GStreamer
//! bindings visible), and `tests/interop/ldc/ldc.mjs` (commands `ldc-*`),
//! run with Node.js and the npm packages `setup.sh --test` installs there.
//! A missing venv or package fails the test.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;

use super::netns::{NODE_IP, Netns};

const SECRET: &str = "interop-secret";

/// What one client printed when it finished.
#[derive(Debug, Deserialize)]
pub struct Report {
    pub client: String,
    pub role: String,
    pub ice: Option<String>,
    pub dtls: Option<String>,
    pub frames: u64,
    pub width: u32,
    pub height: u32,
    pub luma_stddev: f64,
    pub error: Option<String>,
    /// Decoded audio frames (the aiortc and GStreamer viewers).
    #[serde(default)]
    pub audio_frames: u64,
    /// From the viewer's offer to its first decoded video frame (the aiortc viewer).
    #[serde(default)]
    pub first_frame_ms: Option<u64>,
}

impl Report {
    /// A publisher that connected and sent media for its whole run.
    pub fn assert_published(&self) {
        assert!(self.error.is_none(), "{} publisher failed: {self:?}", self.client);
        if let Some(dtls) = &self.dtls {
            assert_eq!(dtls, "connected", "{} publisher DTLS: {self:?}", self.client);
        }
        assert!(
            self.frames > 60,
            "{} publisher sent {} frames",
            self.client,
            self.frames
        );
    }

    /// A viewer that decoded the 320x240 colour bars: frames of the right
    /// size whose picture varies (not a blank or grey frame).
    pub fn assert_decoded(&self) {
        assert!(self.error.is_none(), "{} viewer failed: {self:?}", self.client);
        assert!(
            self.frames >= 30,
            "{} viewer decoded {} frames: {self:?}",
            self.client,
            self.frames
        );
        assert_eq!(
            (self.width, self.height),
            (320, 240),
            "{} viewer frame size",
            self.client
        );
        assert!(
            self.luma_stddev > 20.0,
            "{} viewer decoded a flat picture (luma stddev {}): {self:?}",
            self.client,
            self.luma_stddev
        );
    }
}

/// A node serving inside its own namespace on [`NODE_IP`], with a secret
/// (an open node binds loopback only).
pub struct InteropNode {
    node: Child,
    pub ns: Netns,
    /// One interop test at a time: two cores do not encode and decode
    /// three clients' video for several tests at once.
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl InteropNode {
    /// Starts `sfu serve` in a new namespace tagged `tag`, with `extra`
    /// flags and LL-HLS off.
    pub fn start(tag: &str, extra: &[&str]) -> InteropNode {
        InteropNode::start_with(tag, &[&["--no-hls"], extra].concat())
    }

    /// [`InteropNode::start`] with LL-HLS on.
    pub fn start_with_hls(tag: &str, extra: &[&str]) -> InteropNode {
        InteropNode::start_with(tag, extra)
    }

    fn start_with(tag: &str, extra: &[&str]) -> InteropNode {
        static ONE: Mutex<()> = Mutex::new(());
        let guard = ONE.lock().unwrap_or_else(|p| p.into_inner());
        let ns = Netns::create(tag);
        let mut node = ns
            .command(env!("CARGO_BIN_EXE_sfu"))
            .args([
                "serve",
                "--http",
                &format!("{NODE_IP}:8080"),
                "--media-ip",
                NODE_IP,
            ])
            .args(["--auth-secret", SECRET, "--workers", "1"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sfu binary starts");
        let stdout = node.stdout.take().expect("piped stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("the node's ready line");
        assert!(!line.is_empty(), "the node exited before listening");
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        InteropNode {
            node,
            ns,
            _one_at_a_time: guard,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{NODE_IP}:8080{path}")
    }

    /// `GET /v1/rooms` with a token for every room.
    pub fn rooms(&self) -> String {
        self.ns.get(
            &self.url("/v1/rooms"),
            Some(&token("*", "operator", "--subscribe")),
        )
    }

    /// `GET /metrics`, the value of the sample `name{labels}` (0 if absent).
    pub fn metric(&self, name_and_labels: &str) -> f64 {
        let page = self.ns.get(&self.url("/metrics"), None);
        page.lines()
            .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Starts `command` of the client tool on `path` for `seconds`, with a
    /// token granting `grant` (`--publish` or `--subscribe`) in `room`.
    pub fn client(&self, command: &str, room: &str, seconds: u32, extra: &[&str]) -> Client {
        let (path, grant) = if command.ends_with("publish") {
            (format!("/whip/{room}"), "--publish")
        } else {
            (format!("/whep/{room}"), "--subscribe")
        };
        let token = token(room, command, grant);
        let (program, script) = if command.starts_with("ldc-") {
            (PathBuf::from("node"), ldc_script())
        } else {
            (python(), script())
        };
        let child = self
            .ns
            .command(program)
            .arg(script)
            .arg(command)
            .args(["--url", &self.url(&path), "--token", &token])
            .args(["--seconds", &seconds.to_string()])
            .args(extra)
            .env("GST_DEBUG", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the interop client starts");
        Client {
            child: Some(child),
            what: command.to_owned(),
        }
    }
}

impl Drop for InteropNode {
    fn drop(&mut self) {
        let _ = self.node.kill();
        let _ = self.node.wait();
    }
}

/// A running client; [`Client::report`] waits for its JSON line.
pub struct Client {
    child: Option<Child>,
    what: String,
}

impl Client {
    pub fn report(mut self) -> Report {
        let child = self.child.take().expect("report once");
        let out = child.wait_with_output().expect("client output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(line) = stdout.lines().rev().find(|l| l.starts_with('{')) else {
            panic!(
                "{} printed no report (exit {:?}): {stdout}",
                self.what,
                out.status.code()
            );
        };
        eprintln!("{}: {line}", self.what);
        let report: Report =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: bad report {line:?}: {e}", self.what));
        assert!(
            out.status.code() != Some(3),
            "{}: a package is missing (run scripts/setup.sh): {report:?}",
            self.what
        );
        report
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Lets a publisher connect before viewers join.
pub fn settle() {
    std::thread::sleep(Duration::from_secs(4));
}

/// A token from `sfu token` for the node's secret, granting `grant` in `room`.
pub fn token(room: &str, identity: &str, grant: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sfu"))
        .args([
            "token",
            "--secret",
            SECRET,
            "--room",
            room,
            "--identity",
            identity,
            grant,
        ])
        .output()
        .expect("sfu token runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .expect("utf-8 token")
        .trim()
        .to_owned()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's interpreter; its absence fails the test (no silent skip).
fn python() -> PathBuf {
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (it creates the interop venv)",
        python.display()
    );
    python
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/wave_interop.py")
}

/// The libdatachannel client; its npm packages' absence fails the test.
fn ldc_script() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/ldc");
    assert!(
        dir.join("node_modules/node-datachannel").exists(),
        "{}/node_modules is missing: run scripts/setup.sh --test (it installs node-datachannel)",
        dir.display()
    );
    dir.join("ldc.mjs")
}
