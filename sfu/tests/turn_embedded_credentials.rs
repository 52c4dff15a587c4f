//! `sfu serve --turn`: every WHIP/WHEP 201 advertises the embedded TURN
//! server with fresh REST credentials, and those credentials allocate on it
//! and may open permissions to the node's media address (and nothing else
//! on loopback).

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::node::{Http, Node, Resp, play_offer, publish_offer};
use hyper::StatusCode;
use stun_types::attribute::{ErrorCode, Nonce, Realm, Username};
use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageType, MessageWriteVec, Method,
    TransactionId,
};
use stun_types::prelude::*;
use tokio::net::UdpSocket;
use turn_types::attribute::{RequestedTransport, XorPeerAddress};
use turn_types::message::{ALLOCATE, CREATE_PERMISSION};

const REALM: &str = "wave-test";

#[tokio::test]
async fn advertised_turn_credentials_authenticate_against_the_embedded_server() {
    let node = Node::start(&["--turn", "--turn-listen", "127.0.0.1:0", "--turn-realm", REALM]);
    let http = Http::default();

    let whip = http
        .post_sdp(&node.url("/whip/turnroom"), &publish_offer(), None)
        .await;
    assert_eq!(whip.status, StatusCode::CREATED, "{}", whip.body);
    let whep = http
        .post_sdp(&node.url("/whep/turnroom"), &play_offer(), None)
        .await;
    assert_eq!(whep.status, StatusCode::CREATED, "{}", whep.body);

    let (publisher, viewer) = (turn_links(&whip), turn_links(&whep));
    assert_eq!(publisher.len(), 2, "a udp and a tcp TURN URI: {publisher:?}");
    assert!(publisher[0].url.ends_with("?transport=udp"), "{publisher:?}");
    assert!(publisher[1].url.ends_with("?transport=tcp"), "{publisher:?}");
    assert_ne!(
        publisher[0].username, viewer[0].username,
        "credentials are per session"
    );
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let expiry: u64 = publisher[0].username.split(':').next().unwrap().parse().unwrap();
    assert!(expiry > now && expiry <= now + 3600, "expiry {expiry}, now {now}");

    // The advertised server: "turn:127.0.0.1:PORT?transport=udp".
    let server: SocketAddr = publisher[0]
        .url
        .trim_start_matches("turn:")
        .split('?')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut client = TurnClient::new(server, &publisher[0]).await;
    assert_eq!(
        client.allocate().await,
        None,
        "allocate with the advertised credentials"
    );
    let media = node.media[0];
    assert_eq!(
        client.create_permission(media).await,
        None,
        "permission to the node's media address"
    );
    assert_eq!(
        client.create_permission("127.0.0.2:9".parse().unwrap()).await,
        Some(403),
        "other loopback peers stay denied"
    );

    let mut viewer_client = TurnClient::new(server, &viewer[0]).await;
    assert_eq!(
        viewer_client.allocate().await,
        None,
        "the viewer's credentials allocate too"
    );

    // A forged password gets nothing.
    let forged = TurnLink {
        password: "AAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
        ..publisher[0].clone()
    };
    let mut intruder = TurnClient::new(server, &forged).await;
    assert_eq!(intruder.allocate().await, Some(401));
}

#[derive(Debug, Clone)]
struct TurnLink {
    url: String,
    username: String,
    password: String,
}

/// The `rel="ice-server"` links with a turn: URI, in header order.
fn turn_links(resp: &Resp) -> Vec<TurnLink> {
    resp.headers
        .get_all("link")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|l| l.contains("rel=\"ice-server\"") && l.starts_with("<turn:"))
        .map(|l| TurnLink {
            url: l[1..l.find('>').unwrap()].to_owned(),
            username: param(l, "username"),
            password: param(l, "credential"),
        })
        .inspect(|t| assert!(t.username.contains(':') && !t.password.is_empty(), "{t:?}"))
        .collect()
}

/// A quoted Link parameter; the values here need no unescaping.
fn param(link: &str, name: &str) -> String {
    let key = format!("; {name}=\"");
    let start = link.find(&key).unwrap_or_else(|| panic!("no {name} in {link}")) + key.len();
    link[start..start + link[start..].find('"').unwrap()].to_owned()
}

/// Just enough of a TURN client (RFC 8656) to allocate and open permissions
/// with long-term credentials.
struct TurnClient {
    sock: UdpSocket,
    server: SocketAddr,
    username: String,
    password: String,
    nonce: Option<String>,
}

impl TurnClient {
    async fn new(server: SocketAddr, link: &TurnLink) -> TurnClient {
        TurnClient {
            sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
            username: link.username.clone(),
            password: link.password.clone(),
            nonce: None,
        }
    }

    /// The error code of the Allocate response, `None` on success.
    async fn allocate(&mut self) -> Option<u16> {
        self.authed(ALLOCATE, None).await
    }

    async fn create_permission(&mut self, peer: SocketAddr) -> Option<u16> {
        self.authed(CREATE_PERMISSION, Some(peer)).await
    }

    /// Sends a signed request, first learning the nonce from a 401.
    async fn authed(&mut self, method: Method, peer: Option<SocketAddr>) -> Option<u16> {
        for _ in 0..2 {
            let resp = self.request(method, peer).await;
            let msg = Message::from_bytes(&resp).expect("a STUN response");
            let code = msg.attribute::<ErrorCode>().ok().map(|e| e.code());
            let nonce = msg.attribute::<Nonce>().ok().map(|n| n.nonce().to_owned());
            match (code, nonce) {
                (Some(401), Some(n)) if self.nonce.as_ref() != Some(&n) => self.nonce = Some(n),
                _ => {
                    assert!(code.is_some() || msg.class() == MessageClass::Success);
                    return code;
                }
            }
        }
        Some(401)
    }

    async fn request(&mut self, method: Method, peer: Option<SocketAddr>) -> Vec<u8> {
        let txid = TransactionId::generate();
        let mut w = Message::builder(
            MessageType::from_class_method(MessageClass::Request, method),
            txid,
            MessageWriteVec::new(),
        );
        if method == ALLOCATE {
            w.add_attribute(&RequestedTransport::new(RequestedTransport::UDP))
                .unwrap();
        }
        if let Some(p) = peer {
            w.add_attribute(&XorPeerAddress::new(p, txid)).unwrap();
        }
        if let Some(nonce) = &self.nonce {
            w.add_attribute(&Username::new(&self.username).unwrap()).unwrap();
            w.add_attribute(&Realm::new(REALM).unwrap()).unwrap();
            w.add_attribute(&Nonce::new(nonce).unwrap()).unwrap();
            let creds =
                LongTermKeyCredentials::new(self.username.clone(), self.password.clone(), REALM.into());
            w.add_message_integrity(&creds.into(), IntegrityAlgorithm::Sha1)
                .unwrap();
        }
        w.add_fingerprint().unwrap();
        self.sock.send_to(&w.finish(), self.server).await.unwrap();
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), self.sock.recv_from(&mut buf))
                .await
                .expect("a TURN response within 5 s")
                .unwrap();
            if Message::from_bytes(&buf[..n]).is_ok_and(|m| m.transaction_id() == txid) {
                return buf[..n].to_vec();
            }
        }
    }
}
