//! Two and three real relays on loopback over QUIC: a watch crosses a link,
//! announcements and media come back, a stranger's certificate is refused,
//! and a trusted peer sending a bad frame is disconnected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use relay::tls::{self, Identity};
use relay::{Ext, Inbox, MediaPacket, Message, Relay, SourceId, Topic, WorkerId};
use wave_vocab::{RoomId, SessionId};

/// A relay for a one-worker node, with the worker's inbox.
fn node() -> (Relay, Arc<[Arc<Inbox>]>) {
    let inboxes: Arc<[Arc<Inbox>]> = (0..2).map(|_| Arc::new(Inbox::default())).collect();
    let relay = Relay::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        1,
        Box::new(|_| WorkerId(0)),
        inboxes.clone(),
    )
    .unwrap();
    (relay, inboxes)
}

fn room() -> RoomId {
    RoomId::parse("r1").unwrap()
}

/// Waits for the next message in a worker's inbox.
async fn next(inbox: &Inbox) -> (WorkerId, Message) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    loop {
        if inbox.take(&mut got) {
            assert_eq!(got.len(), 1, "one at a time here: {got:?}");
            return got.remove(0);
        }
        assert!(Instant::now() < deadline, "nothing arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn media(size: usize) -> Message {
    Message::Media {
        source: SourceId(3),
        track: 0,
        layer: 1,
        codec: None,
        packet: MediaPacket {
            pt: 96,
            seq: 7,
            rtp_ts: 90_000,
            arrival: Instant::now(),
            marker: true,
            ext: Ext::default(),
            payload: vec![0xab; size].into(),
        },
    }
}

/// Routes `room()`'s stream from `to` (its origin) at `from`, dialling `to`.
async fn route_to(from: &Relay, to: &Relay) -> Result<(), relay::RelayError> {
    from.route(&Topic::new(room(), to.tag()), to.local_addr(), to.fingerprint())
        .await
}

fn hand(inboxes: &[Arc<Inbox>], from: WorkerId, msg: Message) {
    inboxes[1].push(from, &mut vec![msg]);
}

#[tokio::test]
async fn a_watch_crosses_the_link_and_media_comes_back() {
    let (origin, at_origin) = node();
    let (edge, at_edge) = node();
    origin.trust().set([edge.fingerprint()]);
    edge.trust().set([origin.fingerprint()]);

    route_to(&edge, &origin).await.unwrap();
    assert!(!edge.routed_topics(&room()).is_empty());
    hand(
        &at_edge,
        WorkerId(0),
        Message::Watch {
            room: room(),
            origin: 0,
            watching: true,
        },
    );
    let (from, msg) = next(&at_origin[0]).await;
    assert_eq!(from, WorkerId(1), "the origin's worker sees the gateway");
    assert!(matches!(msg, Message::Watch { watching: true, .. }));

    let session = SessionId::parse(&"cd".repeat(16)).unwrap();
    hand(
        &at_origin,
        WorkerId(0),
        Message::Source {
            room: room(),
            origin: 0,
            source: SourceId(3),
            session: session.clone(),
            identity: Some("alice".into()),
            codecs: Vec::new(),
            tracks: Vec::new(),
        },
    );
    let (_, msg) = next(&at_edge[0]).await;
    let local = match msg {
        Message::Source {
            source,
            session: s,
            identity,
            ..
        } => {
            assert_eq!(s, session);
            assert_eq!(identity.as_deref(), Some("alice"));
            source
        }
        m => panic!("{m:?}"),
    };
    // The edge's viewers need layer 1; small and large packets of it come
    // (a datagram, and one too large for one).
    hand(
        &at_edge,
        WorkerId(0),
        Message::Demand {
            source: local,
            track: 0,
            layer: 1,
            wanted: true,
        },
    );
    for size in [100usize, 3000] {
        let deadline = Instant::now() + Duration::from_secs(5);
        // Earlier sizes may still be arriving: wait for this one.
        let got = loop {
            hand(&at_origin, WorkerId(0), media(size));
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut got = Vec::new();
            at_edge[0].take(&mut got);
            let this = got
                .into_iter()
                .find(|(_, m)| matches!(m, Message::Media { packet, .. } if packet.payload.len() == size));
            if let Some((_, m)) = this {
                break m;
            }
            assert!(Instant::now() < deadline, "no media of {size} bytes arrived");
        };
        match got {
            Message::Media {
                source,
                layer: 1,
                packet,
                ..
            } => {
                assert_eq!(source, local);
                assert_eq!((packet.seq, packet.rtp_ts), (7, 90_000));
            }
            m => panic!("{m:?}"),
        }
    }
    // Let the last packets land before the next exchange.
    tokio::time::sleep(Duration::from_millis(200)).await;
    at_edge[0].take(&mut Vec::new());
    // A keyframe request travels back to the source's worker.
    hand(
        &at_edge,
        WorkerId(0),
        Message::Keyframe {
            source: local,
            layer: 1,
        },
    );
    assert!(matches!(
        next(&at_origin[0]).await.1,
        Message::Keyframe {
            source: SourceId(3),
            layer: 1
        }
    ));
    assert!(origin.stats().frames_out.load(Ordering::Relaxed) >= 3);
}

#[tokio::test]
async fn a_certificate_the_registry_does_not_hold_cannot_join() {
    let (origin, _at_origin) = node();
    let (stranger, _) = node();
    stranger.trust().set([origin.fingerprint()]);
    // The origin trusts nobody: the stranger's handshake fails.
    let err = route_to(&stranger, &origin).await.unwrap_err();
    assert!(err.to_string().contains("cannot reach"), "{err}");
    assert!(origin.stats().refused_peers.load(Ordering::Relaxed) >= 1);
    assert!(stranger.routed_topics(&room()).is_empty());

    // Dialling with the wrong expected fingerprint fails on the client side.
    let (edge, _) = node();
    origin.trust().set([edge.fingerprint()]);
    let wrong = stranger.fingerprint();
    assert!(
        edge.route(&Topic::new(room(), origin.tag()), origin.local_addr(), wrong)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_bad_frame_closes_only_that_link() {
    let (origin, _at_origin) = node();
    let me = Identity::generate().unwrap();
    origin.trust().set([me.fingerprint]);
    let client = tls::client_config(&me, origin.fingerprint()).unwrap();
    let client = quinn::crypto::rustls::QuicClientConfig::try_from(client).unwrap();
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(client)));
    let header = relay::net::STREAM_HEADER;
    let bad_header = [b'W', b'R', b'L', b'Y', 99];
    let bad_frame = [&header[..], &[0, 3, 9, 9, 9]].concat();
    let oversized = [&header[..], &[0xff, 0xff]].concat();
    for frame in [&bad_header[..], &bad_frame, &oversized] {
        let conn = endpoint
            .connect(origin.local_addr(), tls::SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let mut s = conn.open_uni().await.unwrap();
        s.write_all(frame).await.unwrap();
        let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .expect("the origin closes the link");
        assert!(reason.to_string().contains("frame"), "{reason}");
    }
    assert_eq!(origin.stats().bad_frames.load(Ordering::Relaxed), 3);
    // The origin still accepts others.
    let (edge, _) = node();
    origin.trust().set([edge.fingerprint()]);
    route_to(&edge, &origin).await.unwrap();
}

#[tokio::test]
async fn a_peer_that_never_reads_is_disconnected_and_others_keep_their_media() {
    let (origin, at_origin) = node();
    let (edge, at_edge) = node();
    let me = Identity::generate().unwrap();
    origin.trust().set([me.fingerprint, edge.fingerprint()]);
    edge.trust().set([origin.fingerprint()]);

    // A trusted peer that watches the room, then never reads a byte.
    let client = tls::client_config(&me, origin.fingerprint()).unwrap();
    let client = quinn::crypto::rustls::QuicClientConfig::try_from(client).unwrap();
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(client)));
    let stalled = endpoint
        .connect(origin.local_addr(), tls::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let mut s = stalled.open_uni().await.unwrap();
    let mut watch = relay::net::STREAM_HEADER.to_vec();
    let mut frame = Vec::new();
    relay::encode(
        &Message::Watch {
            room: room(),
            origin: origin.tag(),
            watching: true,
        },
        &mut frame,
    );
    watch.extend_from_slice(&(frame.len() as u16).to_be_bytes());
    watch.extend_from_slice(&frame);
    s.write_all(&watch).await.unwrap();
    // A well-behaved edge watches the same room.
    route_to(&edge, &origin).await.unwrap();
    hand(
        &at_edge,
        WorkerId(0),
        Message::Watch {
            room: room(),
            origin: 0,
            watching: true,
        },
    );
    assert!(matches!(
        next(&at_origin[0]).await.1,
        Message::Watch { watching: true, .. }
    ));

    // The origin announces, paced, far more than the stalled peer's flow
    // control window holds: its control queue fills and it is cut off,
    // while the edge that reads keeps up.
    let session = SessionId::parse(&"ef".repeat(16)).unwrap();
    let identity = "x".repeat(200);
    let mut sent = 0u64;
    while origin.stats().slow_peers.load(Ordering::Relaxed) == 0 {
        assert!(sent < 100_000, "the stalled peer was never cut off");
        for _ in 0..250 {
            sent += 1;
            hand(
                &at_origin,
                WorkerId(0),
                Message::Source {
                    room: room(),
                    origin: 0,
                    source: SourceId(sent),
                    session: session.clone(),
                    identity: Some(identity.clone()),
                    codecs: Vec::new(),
                    tracks: Vec::new(),
                },
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // (Its close may be lost among the packets it does not read: then its
    // idle timeout ends it, the origin having stopped answering.)
    tokio::time::timeout(Duration::from_secs(10), stalled.closed())
        .await
        .expect("the origin disconnects a peer that does not read");
    assert_eq!(
        origin.stats().slow_peers.load(Ordering::Relaxed),
        1,
        "cut off once"
    );

    // The edge that reads got the announcements and still gets media.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut announced = 0u64;
    while announced < sent {
        assert!(
            Instant::now() < deadline,
            "the edge got {announced} announcements"
        );
        if at_edge[0].take(&mut got) {
            announced += got
                .drain(..)
                .filter(|(_, m)| matches!(m, Message::Source { .. }))
                .count() as u64;
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A CA and `(cert PEM, key PEM)` of node certificates it signs.
struct Pki {
    ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn node(&self, name: &str) -> Identity {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Identity::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap()
    }

    fn relay(&self, name: &str) -> Relay {
        let inboxes: Arc<[Arc<Inbox>]> = (0..2).map(|_| Arc::new(Inbox::default())).collect();
        let roots = tls::ca_roots(self.ca_pem.as_bytes()).unwrap();
        Relay::start_with(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            1,
            Box::new(|_| WorkerId(0)),
            inboxes,
            Some((self.node(name), roots)),
        )
        .unwrap()
    }
}

#[tokio::test]
async fn with_a_cluster_ca_nodes_it_signed_link_and_others_are_refused() {
    let pki = Pki::new();
    let origin = pki.relay("node-a");
    let edge = pki.relay("node-b");
    // No registry trust at all: the CA decides.
    route_to(&edge, &origin).await.unwrap();
    assert!(!edge.routed_topics(&room()).is_empty());

    // A node with a certificate of another CA cannot join, either way.
    let other = Pki::new().relay("intruder");
    assert!(route_to(&other, &origin).await.is_err());
    assert!(origin.stats().refused_peers.load(Ordering::Relaxed) >= 1);
    assert!(
        edge.route(
            &Topic::new(RoomId::parse("r2").unwrap(), other.tag()),
            other.local_addr(),
            other.fingerprint()
        )
        .await
        .is_err()
    );
    // Nor a node with a registry-pinned self-signed certificate.
    let (stranger, _) = node();
    assert!(route_to(&stranger, &origin).await.is_err());
}
