//! The real `sfu` binary on loopback, and the real `loadtest` binary.
#![allow(dead_code)]
#[path = "../../../signaling/tests/common/nats.rs"]
pub mod nats;
#[path = "../../../signaling/tests/common/placement.rs"]
pub mod placement;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The `sfu` binary next to `loadtest` in the target dir, checked once per
/// test process: built when it is missing or older than a source it is
/// built from (a stale binary would test old code). `cargo test
/// --workspace` leaves it fresh, so it is not rebuilt then: a build with
/// `sfu`'s own feature set would differ from the workspace's and recompile.
pub fn sfu_binary() -> PathBuf {
    static CHECKED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CHECKED.get_or_init(fresh_sfu).clone()
}

fn fresh_sfu() -> PathBuf {
    let loadtest = PathBuf::from(env!("CARGO_BIN_EXE_loadtest"));
    let dir = loadtest.parent().expect("target dir");
    let sfu = dir.join("sfu");
    let built = std::fs::metadata(&sfu).and_then(|m| m.modified()).ok();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let newest = newest_source(workspace);
    if built.is_some_and(|b| newest.is_none_or(|n| n <= b)) {
        return sfu;
    }
    let target = dir.parent().expect("target dir root");
    let release = dir.file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "sfu", "--bin", "sfu", "--target-dir"])
        .arg(target)
        .current_dir(workspace);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("cargo runs");
    assert!(status.success(), "building the sfu binary failed");
    assert!(sfu.is_file(), "cargo build left no {}", sfu.display());
    sfu
}

/// The newest modification time of the workspace's Rust sources, manifests
/// and lock file, leaving out the load tester (the node does not depend on
/// it), tests and benches (not in the binary) and what is not source.
fn newest_source(workspace: &Path) -> Option<std::time::SystemTime> {
    const SKIP: &[&str] = &[
        "target",
        "loadtest",
        "node_modules",
        "e2e",
        "web",
        "deploy",
        "fuzz",
        "tests",
        "benches",
        "examples",
    ];
    let mut newest = None;
    let mut dirs = vec![workspace.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if !name.starts_with('.') && !SKIP.contains(&name.as_ref()) {
                    dirs.push(path);
                }
                continue;
            }
            let source = name.ends_with(".rs") || name == "Cargo.toml" || name == "Cargo.lock";
            if let (true, Ok(modified)) = (source, meta.modified()) {
                newest = newest.max(Some(modified));
            }
        }
    }
    newest
}

/// A running `sfu serve` on loopback, killed on drop.
pub struct Node {
    pub child: Child,
    pub url: String,
    /// The RTMP listener, with `--rtmp-listen`.
    pub rtmp: Option<std::net::SocketAddr>,
}

impl Node {
    pub fn start() -> Node {
        Node::start_at("127.0.0.1:0", &[])
    }

    /// `sfu serve --http <http> --workers 1 <args>` (`args` may name other `--workers`).
    pub fn start_at(http: &str, args: &[&str]) -> Node {
        let workers: &[&str] = if args.contains(&"--workers") {
            &[]
        } else {
            &["--workers", "1"]
        };
        let mut child = Command::new(sfu_binary())
            .args(["serve", "--http", http])
            .args(workers)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sfu starts");
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("listening line");
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let at: loadtest::node_process::Ready =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("no ready line ({e}): {line:?}"));
        Node {
            child,
            url: format!("http://{}", at.http),
            rtmp: at.rtmp,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET path` on the node with a plain HTTP/1.1 request: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let host = self.url.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(host).expect("connect to the node");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read the answer");
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `loadtest` with `args`; returns its output and the JSON report.
pub fn loadtest(args: &[&str]) -> (Output, serde_json::Value) {
    let json = std::env::temp_dir().join(format!(
        "loadtest-{}-{}.json",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .args(["--quiet", "--json", json.to_str().expect("utf-8 path")])
        .args(["--loop-frames", "30", "--gop", "15"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("loadtest runs");
    let report = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    let _ = std::fs::remove_file(&json);
    (out, report)
}

/// Asserts the run exited 0 (showing both streams if not); returns stdout
/// for the messages of the assertions that follow.
pub fn succeeded(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

/// `loadtest fanout` against `node`: `viewers` viewers, every one a full
/// str0m peer (latency on every packet), on the low layer at 100 packets/s
/// for 2 s. Asserts the run succeeded and every viewer joined and got the
/// layer it asked for with under 1% loss; returns stdout (for the caller's
/// assertion messages) and the JSON report.
pub fn fanout_low_layer(node: &Node, viewers: u32) -> (String, serde_json::Value) {
    let pid = node.pid().to_string();
    let viewers_arg = viewers.to_string();
    let (out, r) = loadtest(&[
        "fanout",
        "--url",
        &node.url,
        "--server-pid",
        &pid,
        "--viewers",
        &viewers_arg,
        "--layer",
        "low",
        "--rate",
        "100",
        "--duration",
        "2",
        "--full-every",
        "1",
        "--expect",
        "loss<1%,joined>=100%",
    ]);
    let stdout = succeeded(&out);
    let all = f64::from(viewers);
    assert_eq!(num(&r, "/viewers_joined"), all, "{stdout}");
    assert_eq!(num(&r, "/viewers_on_asked_layer"), all, "{stdout}");
    assert!(num(&r, "/loss_pct") < 1.0, "{stdout}");
    (stdout, r)
}

/// The number at JSON pointer `path` of a report; panics naming it when absent.
pub fn num(v: &serde_json::Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(|x| x.as_f64())
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}
