//! `sfu serve --turn`: every WHIP/WHEP 201 advertises the embedded TURN
//! server with fresh REST credentials, and those credentials allocate on it
//! and may open permissions to the node's media address (and nothing else
//! on loopback); data flows only to and from the node's media sockets, not
//! to other ports of the same IP.

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
use turn_types::attribute::{ChannelNumber, Data, RequestedTransport, XorPeerAddress, XorRelayedAddress};
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, SEND};

const REALM: &str = "wave-test";

/// A node with embedded TURN and a publisher's WHIP 201 in `room`.
async fn node_with_a_publisher(room: &str) -> (Node, Http, Resp) {
    let node = Node::start(&["--turn", "--turn-listen", "127.0.0.1:0", "--turn-realm", REALM]);
    let http = Http::default();
    let whip = http
        .post_sdp(&node.url(&format!("/whip/{room}")), &publish_offer(), None)
        .await;
    assert_eq!(whip.status, StatusCode::CREATED, "{}", whip.body);
    (node, http, whip)
}

#[tokio::test]
async fn advertised_turn_credentials_authenticate_against_the_embedded_server() {
    let (node, http, whip) = node_with_a_publisher("turnroom").await;
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

    let server = publisher[0].server();
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

#[tokio::test]
async fn embedded_turn_reaches_only_the_node_media_sockets() {
    let (node, _http, whip) = node_with_a_publisher("turnports").await;
    let link = &turn_links(&whip)[0];
    let mut client = TurnClient::new(link.server(), link).await;
    assert_eq!(client.allocate().await, None);
    let relayed = client
        .relayed
        .expect("XOR-RELAYED-ADDRESS in the Allocate success");

    // A service on the node's media IP that is not a media socket, on a
    // port below the relay range (49152-65535, which the server refuses
    // as its own anyway) as most services are.
    let media = node.media[0];
    let other = service_below_the_relay_range(media).await;
    let other_addr = other.local_addr().unwrap();
    assert_ne!(other_addr, media);

    assert_eq!(
        client.create_permission(media).await,
        None,
        "permission to the media IP"
    );
    assert_eq!(
        client.channel_bind(0x4000, media).await,
        None,
        "a channel to the media socket"
    );
    assert_eq!(
        client.channel_bind(0x4001, other_addr).await,
        Some(403),
        "a channel to another port of the media IP is forbidden"
    );

    // Outward: a Send indication to the other port is not relayed. The
    // server handles a client's datagrams in order, so once the next
    // request is answered the indication has been handled.
    client
        .send_indication(other_addr, b"to a port that is not media")
        .await;
    assert_eq!(client.channel_bind(0x4000, media).await, None);
    let mut buf = [0u8; 1500];
    let got = tokio::time::timeout(Duration::from_millis(300), other.recv_from(&mut buf)).await;
    assert!(got.is_err(), "the relay delivered to {other_addr}: {got:?}");

    // Inward: the other port's datagrams to the relayed address do not
    // reach the client, though it holds a permission for that IP.
    other
        .send_to(b"from a port that is not media", relayed)
        .await
        .unwrap();
    let data = tokio::time::timeout(Duration::from_millis(300), client.recv_data()).await;
    assert!(data.is_err(), "the client received {data:?} from {other_addr}");
}

/// A UDP socket on `media`'s IP at the first free port from 21000.
async fn service_below_the_relay_range(media: SocketAddr) -> UdpSocket {
    for port in 21000..22000 {
        if port != media.port()
            && let Ok(sock) = UdpSocket::bind(SocketAddr::new(media.ip(), port)).await
        {
            return sock;
        }
    }
    panic!("no free UDP port in 21000-21999 on {}", media.ip());
}

#[derive(Debug, Clone)]
struct TurnLink {
    url: String,
    username: String,
    password: String,
}

impl TurnLink {
    /// The advertised server: "turn:127.0.0.1:PORT?transport=udp".
    fn server(&self) -> SocketAddr {
        let host = self.url.trim_start_matches("turn:").split('?').next();
        host.and_then(|h| h.parse().ok())
            .unwrap_or_else(|| panic!("no address in {}", self.url))
    }
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
    relayed: Option<SocketAddr>,
    /// The CHANNEL-NUMBER of the next request, for ChannelBind.
    channel: Option<u16>,
}

impl TurnClient {
    async fn new(server: SocketAddr, link: &TurnLink) -> TurnClient {
        TurnClient {
            sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
            username: link.username.clone(),
            password: link.password.clone(),
            nonce: None,
            relayed: None,
            channel: None,
        }
    }

    /// The error code of the Allocate response, `None` on success.
    async fn allocate(&mut self) -> Option<u16> {
        self.authed(ALLOCATE, None).await
    }

    async fn create_permission(&mut self, peer: SocketAddr) -> Option<u16> {
        self.authed(CREATE_PERMISSION, Some(peer)).await
    }

    /// Binds `channel` to `peer` (RFC 8656 §11).
    async fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Option<u16> {
        self.channel = Some(channel);
        let code = self.authed(CHANNEL_BIND, Some(peer)).await;
        self.channel = None;
        code
    }

    /// A Send indication (RFC 8656 §10.1): no answer comes back.
    async fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        let txid = TransactionId::generate();
        let mut w = Message::builder(
            MessageType::from_class_method(MessageClass::Indication, SEND),
            txid,
            MessageWriteVec::new(),
        );
        w.add_attribute(&XorPeerAddress::new(peer, txid)).unwrap();
        w.add_attribute(&Data::new(data)).unwrap();
        self.sock.send_to(&w.finish(), self.server).await.unwrap();
    }

    /// The next Data indication or ChannelData message: its payload.
    async fn recv_data(&mut self) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, _) = self.sock.recv_from(&mut buf).await.unwrap();
            let bytes = &buf[..n];
            // RFC 8656 §12.4: ChannelData starts with 0b01.
            if bytes.first().is_some_and(|b| b & 0xc0 == 0x40) && n >= 4 {
                return bytes[4..].to_vec();
            }
            if let Ok(msg) = Message::from_bytes(bytes)
                && msg.method() == DATA
                && let Ok(data) = msg.attribute::<Data<'_>>()
            {
                return data.data().to_vec();
            }
        }
    }

    /// Sends a signed request, first learning the nonce from a 401.
    async fn authed(&mut self, method: Method, peer: Option<SocketAddr>) -> Option<u16> {
        for _ in 0..2 {
            let resp = self.request(method, peer).await;
            let msg = Message::from_bytes(&resp).expect("a STUN response");
            if let Ok(relayed) = msg.attribute::<XorRelayedAddress>() {
                self.relayed = Some(relayed.addr(msg.transaction_id()));
            }
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
        if let Some(channel) = self.channel {
            w.add_attribute(&ChannelNumber::new(channel)).unwrap();
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
