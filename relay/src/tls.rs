//! Who may join the relay mesh: mutual TLS 1.3 on every QUIC link, with no
//! configuration by default. Each node makes a self-signed certificate at
//! start and publishes its SHA-256 fingerprint in the node registry; a node
//! dialling another accepts only the certificate whose fingerprint the
//! registry holds for that node, and a node accepting a link accepts only a
//! client certificate whose fingerprint the registry holds for some live
//! node ([`Trust`]). Trust thus rests on the credentials of the registry's
//! bus. Signatures are checked as usual: a peer must hold the key.
//!
//! Operators with a PKI give each node a certificate and key and the
//! cluster's CA instead ([`Authority::Ca`]): then a peer is accepted when its
//! chain leads to that CA (both ways; the certificates need the serverAuth
//! and clientAuth uses), whatever the registry says.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{DistinguishedName, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// The ALPN protocol of relay links.
pub const ALPN: &[u8] = b"wave-relay/1";
/// The name every relay certificate carries (identity is the fingerprint).
pub const SERVER_NAME: &str = "wave-relay";

/// A certificate's SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(cert: &CertificateDer<'_>) -> Fingerprint {
        Fingerprint(Sha256::digest(cert.as_ref()).into())
    }

    /// The node's tag in relay hop lists: the fingerprint's first 8 bytes.
    pub fn tag(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(b)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = String;
    fn from_str(s: &str) -> Result<Fingerprint, String> {
        let bad = || format!("not a SHA-256 fingerprint: {s:?}");
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

/// This node's relay certificate (with its chain) and key.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pub fingerprint: Fingerprint,
}

/// Whom a node accepts on its relay links.
#[derive(Clone, Debug)]
pub enum Authority {
    /// The certificates the registry lists for live nodes.
    Registry(Trust),
    /// Certificates signed by the cluster's CA.
    Ca(Arc<RootCertStore>),
}

/// The roots of a PEM bundle of CA certificates.
pub fn ca_roots(pem: &[u8]) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("CA bundle: {e}"))?;
        roots.add(cert).map_err(|e| format!("CA bundle: {e}"))?;
    }
    if roots.is_empty() {
        return Err("CA bundle holds no certificate".into());
    }
    Ok(Arc::new(roots))
}

impl Identity {
    /// A fresh self-signed certificate (ECDSA P-256).
    pub fn generate() -> Result<Identity, rcgen::Error> {
        let made = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])?;
        let cert = made.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
        let fingerprint = Fingerprint::of(&cert);
        Ok(Identity {
            chain: vec![cert.clone()],
            cert,
            key,
            fingerprint,
        })
    }

    /// An operator's certificate chain (leaf first) and private key, PEM.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Identity, String> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("relay certificate: {e}"))?;
        let leaf = chain
            .first()
            .cloned()
            .ok_or("relay certificate: no certificate in the file")?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("relay key: {e}"))?;
        Ok(Identity {
            fingerprint: Fingerprint::of(&leaf),
            cert: leaf,
            chain,
            key,
        })
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

/// The fingerprints of the live nodes, as the registry last listed them.
/// Cheap to clone; shared by the accepting side's verifier.
#[derive(Clone, Default, Debug)]
pub struct Trust(Arc<RwLock<HashSet<Fingerprint>>>);

impl Trust {
    /// Replaces the set (each registry refresh).
    pub fn set(&self, fingerprints: impl IntoIterator<Item = Fingerprint>) {
        if let Ok(mut s) = self.0.write() {
            *s = fingerprints.into_iter().collect();
        }
    }

    pub fn contains(&self, fp: &Fingerprint) -> bool {
        self.0.read().map(|s| s.contains(fp)).unwrap_or(false)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS for dialling the node whose registry fingerprint is `expected`.
pub fn client_config(me: &Identity, expected: Fingerprint) -> Result<rustls::ClientConfig, rustls::Error> {
    client_config_with(me, expected, None)
}

/// [`client_config`], or with `ca` any node whose chain leads to it.
pub fn client_config_with(
    me: &Identity,
    expected: Fingerprint,
    ca: Option<Arc<RootCertStore>>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(PinnedServer {
        expected,
        ca,
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(me.chain.clone(), me.key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// TLS for accepting links from the nodes `authority` accepts.
pub fn server_config(me: &Identity, authority: Authority) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = provider();
    let verifier: Arc<dyn ClientCertVerifier> = match authority {
        Authority::Registry(trust) => Arc::new(TrustedClient {
            trust,
            provider: provider.clone(),
        }),
        Authority::Ca(roots) => WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(format!("relay CA: {e}")))?,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(me.chain.clone(), me.key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Both verifiers: relay links speak TLS 1.3 only.
fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("relay links are TLS 1.3 only".into()))
}

/// Both verifiers: the peer's handshake signature by the provider's algorithms.
fn verify_tls13(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &provider.signature_verification_algorithms)
}

/// Accepts exactly one certificate, the dialled node's; or, with a CA, any
/// certificate whose chain leads to it.
#[derive(Debug)]
struct PinnedServer {
    expected: Fingerprint,
    ca: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.ca {
            // The chain, not the name: nodes are found through the registry.
            let parsed = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &parsed,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
            return Ok(ServerCertVerified::assertion());
        }
        if Fingerprint::of(end_entity) == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "relay peer's certificate is not the one the registry holds for it".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Accepts a client certificate the registry lists.
#[derive(Debug)]
struct TrustedClient {
    trust: Trust,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for TrustedClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.trust.contains(&Fingerprint::of(end_entity)) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "relay client's certificate is not in the node registry".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_print_and_parse_back() {
        let id = Identity::generate().unwrap();
        let text = id.fingerprint.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<Fingerprint>().unwrap(), id.fingerprint);
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
        assert!("ab".parse::<Fingerprint>().is_err());
        assert!("é".repeat(32).parse::<Fingerprint>().is_err());
    }
}
