//! The floor a forwarded packet cannot go below on this machine: sealing
//! 1,200 bytes with AES-128-GCM (SRTP's AEAD, through aws-lc-rs as str0m
//! uses it) plus its share of a batched (GSO) loopback UDP send; and the
//! fan-out floor, what a minimal forwarder spends per datagram when one
//! packet goes to N viewers at N addresses (GSO cannot merge those).

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use quinn_udp::{Transmit, UdpSocketState};
use serde::Serialize;

use crate::error::Error;

const PACKET: usize = 1200;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Floor {
    /// Nanoseconds to seal one 1,200-byte packet.
    pub seal_ns: f64,
    /// Nanoseconds per packet of a batched loopback send.
    pub send_ns: f64,
}

impl Floor {
    pub fn total_us(&self) -> f64 {
        (self.seal_ns + self.send_ns) / 1000.0
    }
}

/// Measures for about `budget` (split between the two parts).
pub fn measure(budget: Duration) -> Result<Floor, Error> {
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_128_GCM, &[7u8; 16]).map_err(|_| Error::Media("AES key".into()))?,
    );
    let header = [0x80u8; 12];
    let mut buf = vec![0xabu8; PACKET - 12];
    let mut n: u64 = 0;
    let t = Instant::now();
    while t.elapsed() < budget / 2 {
        for _ in 0..1000 {
            let mut iv = [0u8; 12];
            iv[4..].copy_from_slice(&n.to_be_bytes());
            let nonce = Nonce::assume_unique_for_key(iv);
            let tag = key
                .seal_in_place_separate_tag(nonce, Aad::from(&header), &mut buf)
                .map_err(|_| Error::Media("AES-GCM seal".into()))?;
            std::hint::black_box(tag.as_ref());
            n += 1;
        }
    }
    let seal_ns = t.elapsed().as_nanos() as f64 / n as f64;

    let rx = UdpSocket::bind("127.0.0.1:0")?;
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    let state = UdpSocketState::new((&tx).into())?;
    let _ = state.set_send_buffer_size((&tx).into(), 8 << 20);
    let dest = rx.local_addr()?;
    let segments = state.max_gso_segments().clamp(1, 32);
    let batch = vec![0x5au8; PACKET * segments];
    let mut sent: u64 = 0;
    let t = Instant::now();
    while t.elapsed() < budget / 2 {
        let transmit = Transmit {
            destination: dest,
            ecn: None,
            contents: &batch,
            segment_size: (segments > 1).then_some(PACKET),
            src_ip: None,
        };
        // A full receive buffer drops on the receiver side; the send cost is what counts.
        if state.try_send((&tx).into(), &transmit).is_err() {
            std::thread::yield_now();
        }
        sent += segments as u64;
    }
    let send_ns = t.elapsed().as_nanos() as f64 / sent as f64;
    Ok(Floor { seal_ns, send_ns })
}

/// What [`fanout`] measured.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FanoutFloor {
    /// Distinct receiving sockets (viewers).
    pub viewers: usize,
    /// CPU time of the sending thread per datagram, nanoseconds.
    pub ns_per_datagram: f64,
    /// Datagrams the sender handed to the kernel.
    pub sent: u64,
    /// Datagrams the receivers read (the rest found a full socket buffer).
    pub received: u64,
}

impl FanoutFloor {
    pub fn us(&self) -> f64 {
        self.ns_per_datagram / 1000.0
    }
}

/// Messages per `sendmmsg(2)` (the node's worker batches as many).
const FANOUT_BATCH: usize = 64;

/// The fan-out floor for `viewers` distinct loopback sockets, measured for
/// about `budget`: per datagram, the header rewritten for that viewer
/// (sequence, timestamp, SSRC), the shared payload copied and sealed with
/// that viewer's own AES-128-GCM key, and a slot in a `sendmmsg` batch
/// ([`FANOUT_BATCH`] messages to distinct addresses). On loopback the send
/// call also runs the receiving socket's path, as the node's does. A
/// second thread drains the receivers and is not counted: the figure is
/// the sending thread's CPU time (`/proc/thread-self/schedstat`).
pub fn fanout(viewers: usize, budget: Duration) -> Result<FanoutFloor, Error> {
    use std::io::IoSlice;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use rustix::net::addr::SocketAddrArg;
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};

    let viewers = viewers.max(1);
    let mut receivers = Vec::with_capacity(viewers);
    for _ in 0..viewers {
        let rx = UdpSocket::bind("127.0.0.1:0").map_err(|e| {
            Error::Media(format!(
                "fan-out floor: cannot bind {viewers} receiving sockets (raise `ulimit -n`): {e}"
            ))
        })?;
        rx.set_nonblocking(true)?;
        receivers.push(rx);
    }
    let addrs: Vec<SocketAddrAny> = receivers
        .iter()
        .map(|r| r.local_addr().map(|a| a.as_any()))
        .collect::<Result<_, _>>()?;
    let keys: Vec<LessSafeKey> = (0..viewers)
        .map(|i| {
            let mut k = [0u8; 16];
            k[..8].copy_from_slice(&(i as u64).to_be_bytes());
            UnboundKey::new(&AES_128_GCM, &k)
                .map(LessSafeKey::new)
                .map_err(|_| Error::Media("AES key".into()))
        })
        .collect::<Result<_, _>>()?;
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    let state = UdpSocketState::new((&tx).into())?;
    let _ = state.set_send_buffer_size((&tx).into(), 8 << 20);

    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let drain = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                let mut got = 0;
                for r in &receivers {
                    while r.recv(&mut buf).is_ok() {
                        got += 1;
                    }
                }
                received.fetch_add(got, Ordering::Relaxed);
                if got == 0 {
                    std::thread::yield_now();
                }
            }
        })
    };

    const TAG: usize = 16;
    let payload = vec![0xabu8; PACKET - 12 - TAG];
    let mut slots = vec![0u8; FANOUT_BATCH * PACKET];
    let mut sent: u64 = 0;
    let mut seq: u16 = 0;
    let mut batch_to: Vec<usize> = Vec::with_capacity(FANOUT_BATCH);
    let cpu0 = thread_cpu_ns();
    let t = Instant::now();
    'run: loop {
        // One packet of the layer, to every viewer.
        seq = seq.wrapping_add(1);
        let ts = u32::from(seq).wrapping_mul(3000);
        for (i, key) in keys.iter().enumerate() {
            let slot = &mut slots[batch_to.len() * PACKET..(batch_to.len() + 1) * PACKET];
            let (header, rest) = slot.split_at_mut(12);
            header[0] = 0x80;
            header[1] = 96;
            header[2..4].copy_from_slice(&seq.to_be_bytes());
            header[4..8].copy_from_slice(&ts.to_be_bytes());
            header[8..12].copy_from_slice(&(i as u32).to_be_bytes());
            let (body, tag_out) = rest.split_at_mut(payload.len());
            body.copy_from_slice(&payload);
            let mut iv = [0u8; 12];
            iv[2..6].copy_from_slice(&header[8..12]);
            iv[8..10].copy_from_slice(&seq.to_be_bytes());
            let tag = key
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::from(&*header), body)
                .map_err(|_| Error::Media("AES-GCM seal".into()))?;
            tag_out[..TAG].copy_from_slice(tag.as_ref());
            batch_to.push(i);
            if batch_to.len() == FANOUT_BATCH || i + 1 == viewers {
                let iovs: Vec<[IoSlice<'_>; 1]> = (0..batch_to.len())
                    .map(|k| [IoSlice::new(&slots[k * PACKET..(k + 1) * PACKET])])
                    .collect();
                let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> =
                    batch_to.iter().map(|_| SendAncillaryBuffer::default()).collect();
                let mut headers: Vec<MMsgHdr<'_>> = batch_to
                    .iter()
                    .zip(&iovs)
                    .zip(controls.iter_mut())
                    .map(|((&v, iov), control)| MMsgHdr::new_with_addr(&addrs[v], iov, control))
                    .collect();
                let mut offset = 0;
                while offset < headers.len() {
                    match rustix::net::sendmmsg(&tx, &mut headers[offset..], SendFlags::empty()) {
                        Ok(n) => offset += n.max(1),
                        Err(rustix::io::Errno::INTR) => {}
                        // The send buffer is full: the socket is blocking, so
                        // this is an error worth stopping for.
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            let _ = drain.join();
                            return Err(Error::Media(format!("fan-out floor: sendmmsg: {e}")));
                        }
                    }
                }
                sent += batch_to.len() as u64;
                batch_to.clear();
                if t.elapsed() >= budget {
                    break 'run;
                }
            }
        }
    }
    let cpu = thread_cpu_ns().saturating_sub(cpu0);
    // Let the drain catch the last datagrams before it stops.
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    let _ = drain.join();
    Ok(FanoutFloor {
        viewers,
        ns_per_datagram: cpu as f64 / sent.max(1) as f64,
        sent,
        received: received.load(Ordering::Relaxed),
    })
}

/// This thread's CPU time so far, nanoseconds (user and system).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fanout_reaches_every_viewer_and_counts_its_cpu() {
        let f = super::fanout(50, std::time::Duration::from_millis(200)).unwrap();
        assert_eq!(f.viewers, 50);
        assert!(
            f.sent >= 50 && f.sent.is_multiple_of(50),
            "whole packets to all viewers: {f:?}"
        );
        assert!(f.received > 0 && f.received <= f.sent, "{f:?}");
        assert!(f.ns_per_datagram > 0.0 && f.us() < 1000.0, "{f:?}");
    }

    #[test]
    fn measures_both_parts() {
        let f = super::measure(std::time::Duration::from_millis(40)).unwrap();
        assert!(f.seal_ns > 0.0 && f.send_ns > 0.0, "{f:?}");
        assert!(f.total_us() < 1000.0, "{f:?}");
    }
}
