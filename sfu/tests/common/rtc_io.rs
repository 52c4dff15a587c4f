//! Driving a test client's str0m `Rtc` over a real UDP socket: drain its
//! outputs (sending datagrams) and feed it the next datagram or timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;

/// A test client's `Rtc` (RTP mode, Opus and H.264) with a host candidate
/// on a fresh loopback UDP socket: the socket, its address, the `Rtc`.
pub async fn client() -> (UdpSocket, SocketAddr, Rtc) {
    client_with(&[Codec::H264]).await
}

/// [`client`] offering these video codecs (H.264, VP8, VP9 or AV1), in order.
pub async fn client_with(video: &[Codec]) -> (UdpSocket, SocketAddr, Rtc) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = socket.local_addr().unwrap();
    let config = RtcConfig::new()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false);
    let mut rtc = video
        .iter()
        .fold(config, |config, codec| match codec {
            Codec::H264 => config.enable_h264(true),
            Codec::Vp8 => config.enable_vp8(true),
            Codec::Vp9 => config.enable_vp9(true),
            Codec::Av1 => config.enable_av1(true),
            other => panic!("no test client for {other}"),
        })
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
    (socket, local, rtc)
}

/// Drains `rtc` to its next timeout, sending its datagrams and handing its
/// events to `on_event`; `None` when the `Rtc` failed or is closed.
pub async fn drain(
    rtc: &mut Rtc,
    socket: &UdpSocket,
    mut on_event: impl FnMut(&Rtc, Event),
) -> Option<Instant> {
    let timeout = loop {
        match rtc.poll_output() {
            Ok(Output::Timeout(t)) => break t,
            Ok(Output::Transmit(t)) => {
                let _ = socket.send_to(&t.contents, t.destination).await;
            }
            Ok(Output::Event(e)) => on_event(rtc, e),
            Err(_) => return None,
        }
    };
    rtc.is_alive().then_some(timeout)
}

/// Waits for a datagram (handed to `rtc`) or until `wake` (a timeout handed to it).
pub async fn input(rtc: &mut Rtc, socket: &UdpSocket, local: SocketAddr, buf: &mut [u8], wake: Instant) {
    let wait = wake
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    tokio::select! {
        r = socket.recv_from(buf) => {
            if let Ok((n, from)) = r
                && let Ok(rx) = Receive::new(Protocol::Udp, from, local, &buf[..n])
            {
                let _ = rtc.handle_input(Input::Receive(Instant::now(), rx));
            }
        }
        _ = tokio::time::sleep(wait) => {
            let _ = rtc.handle_input(Input::Timeout(Instant::now()));
        }
    }
}
