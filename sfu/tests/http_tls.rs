//! HTTPS on the node's own listener: `--tls-cert`/`--tls-key` serve HTTP/2
//! and HTTP/1.1 (by ALPN) on the `--http` port, a renewed certificate is
//! presented without a restart, plain HTTP gets no answer there, and a key
//! that does not fit its certificate stops the node at start with a reason.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::node::Node;
use common::pki::Pki;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET `path` over TLS offering `alpn`: status, the protocol agreed, the
/// server's leaf certificate.
async fn fetch(addr: SocketAddr, ca: &[u8], alpn: &[u8], path: &str) -> (u16, Vec<u8>, Vec<u8>) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca.to_vec()))
        .unwrap();
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the node");
    let (_, conn) = tls.get_ref();
    let agreed = conn.alpn_protocol().unwrap_or_default().to_vec();
    let leaf = conn.peer_certificates().unwrap()[0].to_vec();
    let req = hyper::Request::get(format!("https://localhost:{}{path}", addr.port()))
        .header("host", format!("localhost:{}", addr.port()))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let io = TokioIo::new(tls);
    let status = if agreed == b"h2" {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap().status()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap().status()
    };
    (status.as_u16(), agreed, leaf)
}

#[tokio::test]
async fn the_node_serves_https_with_h2_and_http1_and_picks_up_a_renewed_certificate() {
    let pki = Pki::new("https");
    let (cert, key, first) = pki.leaf_der("localhost", "node");
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let node = Node::start(&["--tls-cert", &path(&cert), "--tls-key", &path(&key)]);

    let (status, agreed, leaf) = fetch(node.http, &pki.ca_der, b"h2", "/healthz").await;
    assert_eq!((status, agreed.as_slice()), (200, &b"h2"[..]));
    assert_eq!(leaf, first);
    let (status, agreed, _) = fetch(node.http, &pki.ca_der, b"http/1.1", "/").await;
    assert_eq!(
        (status, agreed.as_slice()),
        (200, &b"http/1.1"[..]),
        "the page over HTTP/1.1"
    );

    // Plain HTTP on the TLS port: no HTTP answer.
    let mut tcp = tokio::net::TcpStream::connect(node.http).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got)).await;
    assert!(!got.starts_with(b"HTTP/1.1 200"), "plain HTTP was answered");

    // The certificate renewed in place: new connections get it, no restart.
    let (_, _, second) = pki.leaf_der("localhost", "node");
    let started = std::time::Instant::now();
    loop {
        let (status, _, leaf) = fetch(node.http, &pki.ca_der, b"h2", "/healthz").await;
        assert_eq!(status, 200);
        if leaf == second {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the renewed certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn a_key_that_does_not_fit_its_certificate_stops_the_node_with_a_reason() {
    let pki = Pki::new("https-bad");
    let (cert, _) = pki.leaf("localhost");
    let (_, other_key) = pki.leaf("elsewhere");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sfu"))
        .args(["serve", "--http", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&other_key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not fit"), "{err}");
    // One of the pair alone is a configuration error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sfu"))
        .args(["serve", "--http", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-cert and --tls-key go together"));
}
