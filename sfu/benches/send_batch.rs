//! The worker's UDP send path alone, on loopback: fan-outs of one datagram per
//! viewer, each viewer its own socket, sent the way the worker did before (one
//! quinn-udp `sendmsg` per datagram) and the way it does now (`SendQueue`,
//! `worker::send_queued`: one `sendmmsg` per batch of 64). Prints the sending
//! thread's CPU nanoseconds per datagram (from `/proc/thread-self/schedstat`,
//! so a loaded machine stretches wall time, not this), rounds interleaved.
//!
//! `cargo bench -p sfu --bench send_batch -- [VIEWERS] [FANOUTS] [BYTES]`
//! (defaults 1000, 20, 1000).

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};

use quinn_udp::{Transmit, UdpSocketState};
use sfu::sendq::{MAX_BATCH, SendQueue};
use sfu::worker::{WorkerStats, send_queued};
use tokio::io::Interest;

const ROUNDS: usize = 7;

fn main() -> std::io::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let viewers = args.first().copied().unwrap_or(1000);
    let fanouts = args.get(1).copied().unwrap_or(20);
    let bytes = args.get(2).copied().unwrap_or(1000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(viewers, fanouts, bytes))
}

async fn run(viewers: usize, fanouts: usize, bytes: usize) -> std::io::Result<()> {
    let std_socket = StdUdpSocket::bind("127.0.0.1:0")?;
    std_socket.set_nonblocking(true)?;
    let state = UdpSocketState::new((&std_socket).into())?;
    let _ = state.set_send_buffer_size((&std_socket).into(), 8 << 20);
    let socket = tokio::net::UdpSocket::from_std(std_socket)?;
    let receivers = (0..viewers)
        .map(|_| {
            let r = StdUdpSocket::bind("127.0.0.1:0")?;
            r.set_nonblocking(true)?;
            Ok(r)
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let addrs: Vec<SocketAddr> = receivers
        .iter()
        .map(|r| r.local_addr())
        .collect::<Result<_, _>>()?;
    let payload = vec![0xab_u8; bytes];
    let stats = WorkerStats::default();
    let mut queue = SendQueue::new(state.max_gso_segments(), 8 << 20);
    println!(
        "send path: {viewers} viewers × {fanouts} fan-outs of {bytes}-byte datagrams per round, {ROUNDS} rounds"
    );
    let (mut single, mut batched) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let mut cpu = 0;
        let mut blocked = 0;
        for _ in 0..fanouts {
            let t = thread_cpu_ns();
            for &destination in &addrs {
                let transmit = Transmit {
                    destination,
                    ecn: None,
                    contents: &payload,
                    segment_size: None,
                    src_ip: None,
                };
                loop {
                    match socket.try_io(Interest::WRITABLE, || state.try_send((&socket).into(), &transmit)) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            blocked += 1;
                            socket.writable().await?;
                        }
                        _ => break,
                    }
                }
            }
            cpu += thread_cpu_ns() - t;
            drain(&receivers);
        }
        single.push(cpu as f64 / (viewers * fanouts) as f64);

        let mut cpu = 0;
        for _ in 0..fanouts {
            let t = thread_cpu_ns();
            for &destination in &addrs {
                if queue.push(destination, &payload).is_err() {
                    stats
                        .send_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if queue.pending_messages() >= MAX_BATCH {
                    while send_queued(&mut queue, &socket, &state, &stats) {
                        blocked += 1;
                        socket.writable().await?;
                    }
                }
            }
            while send_queued(&mut queue, &socket, &state, &stats) {
                blocked += 1;
                socket.writable().await?;
            }
            cpu += thread_cpu_ns() - t;
            drain(&receivers);
        }
        batched.push(cpu as f64 / (viewers * fanouts) as f64);
        if blocked > 0 {
            println!("  (the socket would block {blocked} times this round)");
        }
    }
    let errors = stats.send_errors.load(std::sync::atomic::Ordering::Relaxed);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (s, b) = (median(&mut single), median(&mut batched));
    println!("sendmsg per datagram (quinn-udp): {s:>7.0} ns CPU per datagram (median of {ROUNDS})");
    println!("sendmmsg batches of {MAX_BATCH}:        {b:>7.0} ns CPU per datagram (median of {ROUNDS})");
    println!("ratio {:.2}; send errors {errors}", b / s);
    Ok(())
}

/// Empties every receiver so the next fan-out is delivered, not dropped at a
/// full receive queue.
fn drain(receivers: &[StdUdpSocket]) {
    let mut buf = [0u8; 2048];
    for r in receivers {
        while r.recv(&mut buf).is_ok() {}
    }
}

/// This thread's CPU time (ns): the first field of /proc/thread-self/schedstat.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
