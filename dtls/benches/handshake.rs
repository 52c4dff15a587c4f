//! Handshake cost per DTLS provider: CPU time of each side of a complete
//! DTLS 1.2 + SRTP handshake, in process (no sockets, no loss), one core.
//! Each side's calls are timed with the thread's CPU clock, so other
//! processes on the machine do not inflate the figures.
//!
//! `cargo bench -p wave-dtls --bench handshake [-- N]` prints one row per
//! (provider, role, peer certificate): µs per handshake and handshakes per
//! second per core. The node is the DTLS server for WHIP/WHEP clients (it
//! answers `a=setup:passive` to their `actpass`), so the server rows are its cost.

use std::time::{Duration, Instant};

use str0m::config::{DtlsCert, DtlsVersion};
use str0m::crypto::dtls::{DtlsInstance, DtlsOutput, DtlsProvider};
use wave_dtls::openssl_dtls::{KeyType, generate_certificate};
use wave_dtls::{OpensslDtls, SharedConfigDtls};

fn main() {
    let n: u32 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(300);
    let ossl = OpensslDtls::default();
    let dimpl = SharedConfigDtls::default();
    let ecdsa = generate_certificate(KeyType::EcdsaP256).expect("ECDSA certificate");
    let rsa = generate_certificate(KeyType::Rsa2048).expect("RSA certificate");
    let dimpl_cert = dimpl.generate_certificate().expect("dimpl certificate");

    println!("DTLS 1.2 handshakes, {n} per row, one thread (CPU µs per handshake per side)");
    println!(
        "| node provider | node role | peer (provider, key) | node µs/handshake | node handshakes/s/core | peer µs/handshake |"
    );
    println!("|---|---|---|---:|---:|---:|");
    let openssl = Side {
        provider: &ossl,
        cert: &ecdsa,
        name: "openssl, ECDSA P-256",
    };
    let openssl_rsa = Side {
        provider: &ossl,
        cert: &rsa,
        name: "openssl, RSA 2048",
    };
    let dimpl = Side {
        provider: &dimpl,
        cert: &dimpl_cert,
        name: "dimpl, ECDSA P-256",
    };
    let rows = [
        ("openssl", &openssl, &openssl),
        ("openssl", &openssl, &openssl_rsa),
        ("openssl", &openssl, &dimpl),
        ("dimpl", &dimpl, &dimpl),
        ("dimpl", &dimpl, &openssl),
    ];
    for (name, node, peer) in rows {
        for node_is_server in [true, false] {
            // Warm up: contexts and configurations are built once per process.
            run(node, peer, node_is_server, 5);
            let (node_t, peer_t) = run(node, peer, node_is_server, n);
            let per = |t: Duration| t.as_secs_f64() * 1e6 / f64::from(n);
            println!(
                "| {name} | {} | {} | {:.0} | {:.0} | {:.0} |",
                if node_is_server { "server" } else { "client" },
                peer.name,
                per(node_t),
                1e6 / per(node_t),
                per(peer_t),
            );
        }
    }
}

/// One end of the handshake.
struct Side<'a> {
    provider: &'a dyn DtlsProvider,
    cert: &'a DtlsCert,
    name: &'a str,
}
/// `n` handshakes; the time spent in the node's and the peer's instance.
fn run(node: &Side<'_>, peer: &Side<'_>, node_is_server: bool, n: u32) -> (Duration, Duration) {
    let mut node_t = Duration::ZERO;
    let mut peer_t = Duration::ZERO;
    let mut buf = vec![0u8; 4096];
    for _ in 0..n {
        let now = Instant::now();
        let t = Cpu::start();
        let mut a = node
            .provider
            .new_dtls(node.cert, now, DtlsVersion::Dtls12, None)
            .expect("node DTLS");
        a.set_active(!node_is_server);
        a.handle_timeout(now).expect("node timeout");
        node_t += t.elapsed();
        let t = Cpu::start();
        let mut b = peer
            .provider
            .new_dtls(peer.cert, now, DtlsVersion::Dtls12, None)
            .expect("peer DTLS");
        b.set_active(node_is_server);
        b.handle_timeout(now).expect("peer timeout");
        peer_t += t.elapsed();
        let (mut up_a, mut up_b) = (false, false);
        // The client starts (str0m gives it an empty datagram).
        let t = Cpu::start();
        if node_is_server {
            let _ = b.handle_packet(&[]);
            peer_t += t.elapsed();
        } else {
            let _ = a.handle_packet(&[]);
            node_t += t.elapsed();
        }
        for _ in 0..20 {
            let t = Cpu::start();
            let to_b = drain(&mut *a, &mut up_a, &mut buf);
            node_t += t.elapsed();
            let t = Cpu::start();
            for p in &to_b {
                b.handle_packet(p).expect("peer accepts");
            }
            let to_a = drain(&mut *b, &mut up_b, &mut buf);
            peer_t += t.elapsed();
            let t = Cpu::start();
            for p in &to_a {
                a.handle_packet(p).expect("node accepts");
            }
            node_t += t.elapsed();
            if up_a && up_b {
                break;
            }
        }
        assert!(up_a && up_b, "handshake did not complete");
    }
    (node_t, peer_t)
}

/// The calling thread's CPU time since `start`.
struct Cpu(Duration);

impl Cpu {
    fn start() -> Cpu {
        Cpu(thread_cpu())
    }

    fn elapsed(&self) -> Duration {
        thread_cpu().saturating_sub(self.0)
    }
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn drain(d: &mut dyn DtlsInstance, up: &mut bool, buf: &mut [u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        match d.poll_output(buf) {
            DtlsOutput::Packet(p) => out.push(p.to_vec()),
            DtlsOutput::Connected => *up = true,
            DtlsOutput::Timeout(_) => return out,
            _ => {}
        }
    }
}
