//! Allocate: success attributes, retransmission, 437, 400, 442, 440.

use crate::common;

use common::*;
use stun_types::AddressFamily;
use stun_types::message::TransactionId;
use stun_types::prelude::*;
use turn_types::attribute::{RequestedAddressFamily, RequestedTransport};
use turn_types::message::ALLOCATE;

#[tokio::test]
async fn allocate_returns_relay_mapped_and_lifetime() {
    let server = start(config()).await;
    let mut c = Client::udp(server.addrs.udp, "alice").await;

    let first = c
        .request(ALLOCATE, false, |w, _| {
            w.add_attribute(&RequestedTransport::new(RequestedTransport::UDP))
                .unwrap();
        })
        .await;
    assert_eq!(
        error_code(&first),
        Some(401),
        "unauthenticated Allocate is challenged"
    );
    assert!(c.take_nonce(&first));

    let resp = c.try_allocate().await;
    assert!(is_success(&resp));
    let relay = relayed_addr(&resp);
    assert_eq!(relay.ip().to_string(), "127.0.0.1");
    assert!((20000..=29999).contains(&relay.port()));
    assert_eq!(mapped_addr(&resp), c.local_addr());
    assert_eq!(lifetime(&resp), 600);
    server.stop().await;
}

#[tokio::test]
async fn retransmitted_allocate_gets_the_same_answer_and_a_new_one_gets_437() {
    let server = start(config()).await;
    let mut c = Client::udp(server.addrs.udp, "alice").await;
    let _ = c.try_allocate().await; // learns the nonce, allocates
    // A new transaction on the same 5-tuple: mismatch.
    let again = c.try_allocate().await;
    assert_eq!(error_code(&again), Some(437));

    // Same transaction id twice from a fresh client: the second is a
    // retransmission and is answered with the same relayed address.
    let mut d = Client::udp(server.addrs.udp, "bob").await;
    let challenge = d
        .request(ALLOCATE, false, |w, _| {
            w.add_attribute(&RequestedTransport::new(RequestedTransport::UDP))
                .unwrap();
        })
        .await;
    d.take_nonce(&challenge);
    let txid = TransactionId::generate();
    let req = d.build(ALLOCATE, txid, true, |w, _| {
        w.add_attribute(&RequestedTransport::new(RequestedTransport::UDP))
            .unwrap();
    });
    d.send_raw(&req).await;
    let a = d.response(txid).await;
    d.send_raw(&req).await;
    let b = d.response(txid).await;
    assert!(is_success(&a) && is_success(&b));
    assert_eq!(relayed_addr(&a), relayed_addr(&b));
    server.stop().await;
}

#[tokio::test]
async fn allocate_rejects_missing_or_unsupported_transport_and_family() {
    let server = start(config()).await;
    let mut c = Client::udp(server.addrs.udp, "alice").await;

    let missing = c.authed(ALLOCATE, |_, _| {}).await;
    assert_eq!(error_code(&missing), Some(400));

    let tcp = c
        .authed(ALLOCATE, |w, _| {
            w.add_attribute(&RequestedTransport::new(RequestedTransport::TCP))
                .unwrap();
        })
        .await;
    assert_eq!(error_code(&tcp), Some(442));

    let v6 = c
        .authed(ALLOCATE, |w, _| {
            w.add_attribute(&RequestedTransport::new(RequestedTransport::UDP))
                .unwrap();
            w.add_attribute(&RequestedAddressFamily::new(AddressFamily::IPV6))
                .unwrap();
        })
        .await;
    assert_eq!(error_code(&v6), Some(440));

    // None of these allocated: a normal Allocate still succeeds.
    c.allocate().await;
    server.stop().await;
}
