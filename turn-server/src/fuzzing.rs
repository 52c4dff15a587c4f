//! Shared by the fuzz target (`fuzz/`) and the regression tests: drives the
//! Sans-IO core with arbitrary bytes from a state where an allocation with
//! a permission and a channel exists, so the authenticated paths are
//! reachable without forging MESSAGE-INTEGRITY.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun_types::attribute::{Nonce, Realm, Username};
use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageType, MessageWriteVec,
    TransactionId,
};
use stun_types::prelude::*;
use turn_types::attribute::{ChannelNumber, RequestedTransport, XorPeerAddress};
use turn_types::message::{ALLOCATE, CHANNEL_BIND};

use crate::auth::Credentials;
use crate::core::{Destination, Event, FiveTuple, Now, Server, ServerConfig, Transport};
use crate::filter::PeerFilter;

const CLIENT: &str = "198.51.100.7:40000";
const SERVER: &str = "192.0.2.1:3478";
const RELAY: &str = "192.0.2.1:50000";
const PEER: &str = "203.0.113.9:7000";

/// Runs `data` through every input of a server holding one allocation.
pub fn exercise(data: &[u8]) {
    let (mut server, now, udp) = allocated_server();
    let tcp = FiveTuple {
        transport: Transport::Tcp,
        ..udp
    };
    let relay: SocketAddr = RELAY.parse().expect("constant");
    let peer: SocketAddr = PEER.parse().expect("constant");
    // As one datagram, as stream frames, and as a peer datagram.
    server.handle_client(now, udp, data);
    let mut rest = data;
    while rest.len() >= 4 {
        let header = [rest[0], rest[1], rest[2], rest[3]];
        let Ok(len) = crate::core::stream_frame_len(header) else {
            break;
        };
        let Some(frame) = rest.get(..len) else { break };
        server.handle_client(now, tcp, frame);
        rest = &rest[len..];
    }
    server.handle_peer(now, relay, peer, data);
    let later = Now {
        instant: now.instant + Duration::from_secs(700),
        unix_secs: now.unix_secs + 700,
    };
    server.handle_client(later, udp, data);
    server.handle_timeout(later);
    while server.poll_transmit().is_some() {}
    while server.poll_event().is_some() {}
}

fn allocated_server() -> (Server, Now, FiveTuple) {
    let t0 = Instant::now();
    let now = Now {
        instant: t0,
        unix_secs: 1_700_000_000,
    };
    let mut users = std::collections::BTreeMap::new();
    users.insert("fuzz".to_owned(), "pw".to_owned());
    let cfg = ServerConfig {
        realm: "fuzz".to_owned(),
        credentials: Credentials {
            rest_secret: Some("secret".to_owned()),
            users,
        },
        peer_filter: PeerFilter::default(),
        ..ServerConfig::default()
    };
    let mut server = Server::new(cfg, [3; 32], t0);
    let five = FiveTuple {
        client: CLIENT.parse().expect("constant"),
        server: SERVER.parse().expect("constant"),
        transport: Transport::Udp,
    };
    // Challenge, to learn a nonce.
    let req = request(ALLOCATE, None, |w, _| {
        let _ = w.add_attribute(&RequestedTransport::new(RequestedTransport::UDP));
    });
    server.handle_client(now, five, &req);
    let nonce = server
        .poll_transmit()
        .and_then(|t| {
            let msg = Message::from_bytes(&t.payload).ok()?;
            Some(msg.attribute::<Nonce>().ok()?.nonce().to_owned())
        })
        .unwrap_or_default();
    let req = request(ALLOCATE, Some(&nonce), |w, _| {
        let _ = w.add_attribute(&RequestedTransport::new(RequestedTransport::UDP));
    });
    server.handle_client(now, five, &req);
    while let Some(ev) = server.poll_event() {
        if let Event::BindRelay { allocation, .. } = ev {
            server.handle_relay_bound(now, allocation, Ok(RELAY.parse().expect("constant")));
        }
    }
    let peer: SocketAddr = PEER.parse().expect("constant");
    let req = request(CHANNEL_BIND, Some(&nonce), |w, txid| {
        let _ = w.add_attribute(&ChannelNumber::new(0x4000));
        let _ = w.add_attribute(&XorPeerAddress::new(peer, txid));
    });
    server.handle_client(now, five, &req);
    while let Some(t) = server.poll_transmit() {
        debug_assert!(matches!(t.destination, Destination::Client(_)));
    }
    (server, now, five)
}

fn request(
    method: stun_types::message::Method,
    nonce: Option<&str>,
    attrs: impl FnOnce(&mut MessageWriteVec, TransactionId),
) -> Vec<u8> {
    let txid = TransactionId::from(0x1234_5678_u128 + u128::from(method.value()));
    let mut w = Message::builder(
        MessageType::from_class_method(MessageClass::Request, method),
        txid,
        MessageWriteVec::new(),
    );
    attrs(&mut w, txid);
    if let Some(nonce) = nonce {
        let creds = LongTermKeyCredentials::new("fuzz".into(), "pw".into(), "fuzz".into());
        if let (Ok(u), Ok(r), Ok(n)) = (Username::new("fuzz"), Realm::new("fuzz"), Nonce::new(nonce)) {
            let _ = w.add_attribute(&u);
            let _ = w.add_attribute(&r);
            let _ = w.add_attribute(&n);
        }
        let _ = w.add_message_integrity(&creds.into(), IntegrityAlgorithm::Sha1);
    }
    w.finish()
}

/// A valid signed request the regression tests mutate.
pub fn sample_inputs() -> Vec<Vec<u8>> {
    let peer: SocketAddr = PEER.parse().expect("constant");
    vec![
        request(
            ALLOCATE,
            Some("00000000000000000000000000000000000000000"),
            |w, _| {
                let _ = w.add_attribute(&RequestedTransport::new(RequestedTransport::UDP));
            },
        ),
        request(CHANNEL_BIND, None, |w, txid| {
            let _ = w.add_attribute(&ChannelNumber::new(0x4000));
            let _ = w.add_attribute(&XorPeerAddress::new(peer, txid));
        }),
        crate::core::channel_data(0x4000, b"payload", true),
        vec![
            0x00, 0x16, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x00,
            0x12, 0x00, 0x04, 1, 2, 3, 4,
        ],
    ]
}
