//! Both providers, both roles, RSA and ECDSA certificates, every SRTP
//! profile: each pair either completes a DTLS-SRTP handshake with the same
//! keys on both sides, or fails with the reason a user sees in
//! `wave_dtls_failures_total`.

use std::time::Instant;

use str0m::config::{DtlsCert, DtlsVersion};
use str0m::crypto::dtls::{DtlsInstance, DtlsOutput, DtlsProvider, SrtpProfile};
use wave_dtls::failures::{self, Reason};
use wave_dtls::openssl_dtls::{KeyType, OpensslSettings, generate_certificate};
use wave_dtls::{OpensslDtls, SharedConfigDtls};

/// What one side saw.
#[derive(Debug, Default)]
struct Seen {
    connected: bool,
    peer_cert: Option<Vec<u8>>,
    keys: Option<(Vec<u8>, SrtpProfile)>,
    error: Option<String>,
}

fn drain(from: &mut dyn DtlsInstance, seen: &mut Seen, buf: &mut [u8]) -> Vec<Vec<u8>> {
    let mut packets = Vec::new();
    loop {
        match from.poll_output(buf) {
            DtlsOutput::Packet(p) => packets.push(p.to_vec()),
            DtlsOutput::Connected => seen.connected = true,
            DtlsOutput::PeerCert(c) => seen.peer_cert = Some(c.to_vec()),
            DtlsOutput::KeyingMaterial(k, p) => seen.keys = Some((k.to_vec(), p)),
            DtlsOutput::Timeout(_) => break,
            _ => {}
        }
    }
    packets
}

/// Runs a handshake between `client` and `server` (client active) and
/// returns what each side saw.
fn handshake(client: (&dyn DtlsProvider, &DtlsCert), server: (&dyn DtlsProvider, &DtlsCert)) -> (Seen, Seen) {
    let now = Instant::now();
    let mut c = client
        .0
        .new_dtls(client.1, now, DtlsVersion::Dtls12, None)
        .unwrap();
    let mut s = server
        .0
        .new_dtls(server.1, now, DtlsVersion::Dtls12, None)
        .unwrap();
    c.set_active(true);
    s.set_active(false);
    c.handle_timeout(now).unwrap();
    s.handle_timeout(now).unwrap();
    // str0m starts a client with an empty datagram.
    let _ = c.handle_packet(&[]);
    let (mut cs, mut ss) = (Seen::default(), Seen::default());
    let mut buf = vec![0u8; 4096];
    for _ in 0..20 {
        for p in drain(&mut *c, &mut cs, &mut buf) {
            if let Err(e) = s.handle_packet(&p) {
                ss.error.get_or_insert(e.to_string());
            }
        }
        for p in drain(&mut *s, &mut ss, &mut buf) {
            if let Err(e) = c.handle_packet(&p) {
                cs.error.get_or_insert(e.to_string());
            }
        }
        if cs.connected && ss.connected {
            break;
        }
    }
    (cs, ss)
}

fn assert_connected(what: &str, (c, s): (Seen, Seen), certs: (&DtlsCert, &DtlsCert)) -> SrtpProfile {
    assert!(c.connected && s.connected, "{what}: client {c:?}, server {s:?}");
    assert_eq!(
        c.peer_cert.as_deref(),
        Some(&certs.1.certificate[..]),
        "{what}: client sees the server's certificate"
    );
    assert_eq!(
        s.peer_cert.as_deref(),
        Some(&certs.0.certificate[..]),
        "{what}: server sees the client's certificate"
    );
    let (ck, cp) = c.keys.expect("client keys");
    let (sk, sp) = s.keys.expect("server keys");
    assert_eq!(cp, sp, "{what}: one SRTP profile");
    assert_eq!(ck, sk, "{what}: both sides export the same SRTP keys");
    assert_eq!(ck.len(), cp.keying_material_len());
    cp
}

#[test]
fn openssl_speaks_to_rsa_and_ecdsa_peers_in_both_roles() {
    let ossl = OpensslDtls::default();
    let rsa = generate_certificate(KeyType::Rsa2048).unwrap();
    let ecdsa = generate_certificate(KeyType::EcdsaP256).unwrap();
    for (name, local, peer) in [
        ("ecdsa/ecdsa", &ecdsa, &ecdsa),
        ("ecdsa/rsa", &ecdsa, &rsa),
        ("rsa/ecdsa", &rsa, &ecdsa),
        ("rsa/rsa", &rsa, &rsa),
    ] {
        let profile = assert_connected(
            &format!("openssl client {name}"),
            handshake((&ossl, local), (&ossl, peer)),
            (local, peer),
        );
        assert_eq!(
            profile,
            SrtpProfile::AEAD_AES_128_GCM,
            "AEAD-AES-128-GCM is preferred"
        );
    }
}

#[test]
fn openssl_and_dimpl_complete_with_ecdsa_both_ways() {
    let ossl = OpensslDtls::default();
    let dimpl = SharedConfigDtls::default();
    let a = generate_certificate(KeyType::EcdsaP256).unwrap();
    let b = dimpl.generate_certificate().unwrap();
    assert_connected(
        "openssl client, dimpl server",
        handshake((&ossl, &a), (&dimpl, &b)),
        (&a, &b),
    );
    assert_connected(
        "dimpl client, openssl server",
        handshake((&dimpl, &b), (&ossl, &a)),
        (&b, &a),
    );
}

#[test]
fn every_srtp_profile_is_negotiated() {
    let cert = generate_certificate(KeyType::EcdsaP256).unwrap();
    let server = OpensslDtls::default();
    for profile in [
        SrtpProfile::AES128_CM_SHA1_80,
        SrtpProfile::AEAD_AES_128_GCM,
        SrtpProfile::AEAD_AES_256_GCM,
    ] {
        let client = OpensslDtls::new(OpensslSettings {
            srtp_profiles: vec![profile],
            ..OpensslSettings::default()
        });
        let got = assert_connected(
            &format!("{profile:?}"),
            handshake((&client, &cert), (&server, &cert)),
            (&cert, &cert),
        );
        assert_eq!(got, profile);
    }
}

#[test]
fn an_rsa_client_fails_against_dimpl_and_the_reason_is_counted() {
    // GStreamer's case: webrtcbin signs with an RSA certificate, which
    // dimpl cannot verify as a server.
    let dimpl = SharedConfigDtls::default();
    let ossl = OpensslDtls::default();
    let server_cert = dimpl.generate_certificate().unwrap();
    let rsa = generate_certificate(KeyType::Rsa2048).unwrap();
    let before: u64 = Reason::ALL.iter().map(|r| failures::failures(*r)).sum();
    let (c, s) = handshake((&ossl, &rsa), (&dimpl, &server_cert));
    assert!(
        !(c.connected && s.connected),
        "dimpl accepted an RSA client: {c:?} {s:?}"
    );
    assert!(
        c.error.is_some() || s.error.is_some(),
        "a side reports the failure: {c:?} {s:?}"
    );
    let after: u64 = Reason::ALL.iter().map(|r| failures::failures(*r)).sum();
    assert!(after > before, "the failure is counted");
}

#[test]
fn no_shared_cipher_is_counted_as_such() {
    // An ECDSA server cannot use an RSA-only suite list.
    let client = OpensslDtls::new(OpensslSettings {
        ciphers: "ECDHE-RSA-AES128-GCM-SHA256".into(),
        ..OpensslSettings::default()
    });
    let server = OpensslDtls::default();
    let ecdsa = generate_certificate(KeyType::EcdsaP256).unwrap();
    let before = failures::failures(Reason::NoSharedCipher);
    let (c, s) = handshake((&client, &ecdsa), (&server, &ecdsa));
    assert!(!c.connected && !s.connected);
    assert!(s.error.is_some(), "the server rejects the handshake: {s:?}");
    assert!(failures::failures(Reason::NoSharedCipher) > before);
}

#[test]
fn a_certificate_str0m_rejects_counts_as_a_bad_fingerprint() {
    let ossl = OpensslDtls::default();
    let cert = generate_certificate(KeyType::EcdsaP256).unwrap();
    let now = Instant::now();
    let mut c = ossl.new_dtls(&cert, now, DtlsVersion::Dtls12, None).unwrap();
    let mut s = ossl.new_dtls(&cert, now, DtlsVersion::Dtls12, None).unwrap();
    c.set_active(true);
    s.set_active(false);
    let _ = c.handle_packet(&[]);
    let mut buf = vec![0u8; 4096];
    let before = failures::failures(Reason::BadFingerprint);
    // Pump until the server hands over the client's certificate, then do
    // what str0m does when it does not match the SDP: stop and close.
    'outer: for _ in 0..20 {
        while let DtlsOutput::Packet(p) = c.poll_output(&mut buf) {
            let p = p.to_vec();
            s.handle_packet(&p).unwrap();
        }
        loop {
            match s.poll_output(&mut buf) {
                DtlsOutput::Packet(p) => {
                    let p = p.to_vec();
                    c.handle_packet(&p).unwrap();
                }
                DtlsOutput::PeerCert(_) => break 'outer,
                _ => break,
            }
        }
    }
    s.close().unwrap();
    assert_eq!(failures::failures(Reason::BadFingerprint), before + 1);
}

#[test]
fn the_metrics_page_lists_every_reason() {
    let mut out = String::new();
    wave_dtls::render_metrics(&mut out);
    assert!(out.contains("# TYPE wave_dtls_failures_total counter"));
    for r in Reason::ALL {
        assert!(
            out.contains(&format!("wave_dtls_failures_total{{reason=\"{}\"}}", r.as_str())),
            "{out}"
        );
    }
}
