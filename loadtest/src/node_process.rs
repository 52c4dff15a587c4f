//! The node under test: an `sfu` process started on port 0 (where it
//! listens comes from its JSON ready line), killed on drop; and the
//! marked sections of BENCHMARKS.md the benchmarks rewrite.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::error::Error;

/// The JSON line a WAVE node prints on stdout once it listens
/// (`{"http":"127.0.0.1:8080","media":[...],...}`; fields not named here
/// are ignored): where a node started on port 0 can be reached.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Ready {
    pub http: std::net::SocketAddr,
    #[serde(default)]
    pub media: Vec<std::net::SocketAddr>,
    /// The RTMP listener (`--rtmp-listen`), if any.
    #[serde(default)]
    pub rtmp: Option<std::net::SocketAddr>,
}

/// A node under test, killed on drop.
pub(crate) struct NodeProcess {
    pub(crate) child: Child,
    pub(crate) url: String,
}

impl NodeProcess {
    pub(crate) fn start(binary: &Path, workers: usize) -> Result<NodeProcess, Error> {
        NodeProcess::start_with(binary, workers, &[])
    }

    /// [`NodeProcess::start`] with more `serve` flags.
    pub(crate) fn start_with(binary: &Path, workers: usize, extra: &[String]) -> Result<NodeProcess, Error> {
        let mut child = Command::new(binary)
            .args([
                "serve",
                "--http",
                "127.0.0.1:0",
                "--workers",
                &workers.to_string(),
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::Config(format!("{}: {e}", binary.display())))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Config("node stdout".into()))?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let at: Ready = serde_json::from_str(&line)
            .map_err(|e| Error::Config(format!("node did not say where it listens ({e}): {line:?}")))?;
        Ok(NodeProcess {
            url: format!("http://{}", at.http),
            child,
        })
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces the section of `doc` between the `begin` and `end` markers, or appends it.
pub fn replace_marked(doc: &str, section: &str, begin: &str, end: &str) -> String {
    match (doc.find(begin), doc.find(end)) {
        (Some(a), Some(b)) if b > a => {
            let tail = &doc[b + end.len()..];
            format!("{}{}{}", &doc[..a], section.trim_end(), tail)
        }
        _ => {
            let sep = if doc.is_empty() || doc.ends_with("\n\n") {
                ""
            } else if doc.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            format!("{doc}{sep}{section}")
        }
    }
}
