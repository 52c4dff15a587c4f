//! Plain STUN Binding over UDP and TCP: no credentials, XOR-MAPPED-ADDRESS.

use crate::common;

use common::*;
use stun_types::message::BINDING;

#[tokio::test]
async fn binding_reports_the_mapped_address_over_udp_and_tcp() {
    let server = start(config()).await;

    let mut udp = Client::udp(server.addrs.udp, "u").await;
    let resp = udp.request(BINDING, false, |_, _| {}).await;
    assert!(is_success(&resp));
    assert_eq!(mapped_addr(&resp), udp.local_addr());

    let stream = tokio::net::TcpStream::connect(server.addrs.tcp).await.unwrap();
    let local = stream.local_addr().unwrap();
    let (username, password) = rest_user("u");
    let mut tcp = Client::new(Conn::Tcp(Box::new(stream)), server.addrs.tcp, username, password);
    let resp = tcp.request(BINDING, false, |_, _| {}).await;
    assert!(is_success(&resp));
    assert_eq!(mapped_addr(&resp), local);

    server.stop().await;
}
