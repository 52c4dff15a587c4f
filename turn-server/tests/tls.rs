//! TURN over TLS when a certificate is configured.

use crate::common;

use std::sync::Arc;

use common::*;
use tokio_rustls::rustls;

#[tokio::test]
async fn tls_client_allocates_and_relays() {
    let dir = std::env::temp_dir().join(format!("turn-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

    let mut cfg = config_allowing_loopback();
    cfg.tls = Some(turn_server::config::TlsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        cert: cert_path,
        key: key_path,
    });
    let server = start(cfg).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let tcp = tokio::net::TcpStream::connect(server.addrs.tls.unwrap())
        .await
        .unwrap();
    let stream = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (username, password) = rest_user("tls");
    let mut c = Client::new(
        Conn::Tcp(Box::new(stream)),
        server.addrs.tls.unwrap(),
        username,
        password,
    );
    let relay = c.allocate().await;
    let peer = Peer::bind("127.0.0.2").await;
    assert!(is_success(&c.channel_bind(0x4002, peer.addr()).await));
    c.send_channel_data(0x4002, b"secure").await;
    assert_eq!(peer.recv().await.0, b"secure");
    peer.send(relay, b"back").await;
    assert_eq!(
        c.recv().await,
        Incoming::ChannelData {
            channel: 0x4002,
            data: b"back".to_vec()
        }
    );
    server.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
