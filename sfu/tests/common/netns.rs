//! A private network namespace with a veth pair, for clients that will not
//! use loopback (libnice skips loopback interfaces when it gathers
//! candidates). Both ends of the pair live inside the namespace, so no
//! packet leaves it; dropping the value deletes the namespace.

use std::process::{Command, Output};

/// The node's address inside the namespace (one end of the veth pair).
pub const NODE_IP: &str = "198.18.0.1";
/// The clients' address inside the namespace (the other end).
pub const CLIENT_IP: &str = "198.18.0.2";

/// A network namespace this process created; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `wave-<tag>-<pid>` with `lo` up and a veth pair carrying
    /// [`NODE_IP`] and [`CLIENT_IP`] (198.18.0.0/15 is the range RFC 2544
    /// sets aside for benchmark networks). Panics with the `ip` error when
    /// namespaces cannot be created (the interop tests need root).
    pub fn create(tag: &str) -> Netns {
        let name = format!("wave-{tag}-{}", std::process::id());
        // A namespace left by a killed run of the same pid is stale.
        let _ = Command::new("ip").args(["netns", "delete", &name]).output();
        run(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["link", "add", "wv0", "type", "veth", "peer", "name", "wv1"]);
        ns.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "wv0"]);
        ns.ip(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "wv1"]);
        ns.ip(&["link", "set", "wv0", "up"]);
        ns.ip(&["link", "set", "wv1", "up"]);
        ns
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// GET `url` from inside the namespace (curl), with `bearer` if given;
    /// the body as text.
    pub fn get(&self, url: &str, bearer: Option<&str>) -> String {
        let mut curl = self.command("curl");
        curl.args(["-sS", "--max-time", "5", url]);
        if let Some(token) = bearer {
            curl.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        let out = curl.output().expect("curl runs");
        assert!(
            out.status.success(),
            "GET {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run(&full);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).output();
    }
}

fn run(args: &[&str]) -> Output {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2) runs");
    assert!(
        out.status.success(),
        "ip {}: {} (the interop tests create network namespaces: run them as root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}
