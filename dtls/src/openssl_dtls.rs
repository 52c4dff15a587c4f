//! str0m's DTLS over OpenSSL's libssl: the DTLS 1.2 stack most WebRTC
//! clients outside browsers are built on (GStreamer, libdatachannel, many
//! encoders) and the one they are tested against.
//!
//! It takes RSA and ECDSA peer certificates in either role, offers the
//! ECDHE-ECDSA and ECDHE-RSA AEAD suites (plus the CBC ones older stacks
//! need) over X25519, P-256 and P-384, and negotiates the SRTP profiles
//! AEAD-AES-128-GCM, AEAD-AES-256-GCM and AES128-CM-HMAC-SHA1-80 (RFC 5764
//! §4.1.2, RFC 7714 §14.2). OpenSSL accepts any peer certificate here:
//! str0m checks it against the SDP fingerprint (RFC 8122 §5) when the
//! instance hands it over, before the keying material.
//!
//! Sans-IO: datagrams go in and out through an in-memory stream; the
//! instance's timeouts come from the `now` it is given. OpenSSL keeps its
//! own retransmission clock (1 s, doubling; RFC 6347 §4.2.4.1), which the
//! instance lets act by re-entering the handshake every
//! [`HANDSHAKE_TICK`] while one is under way.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::srtp::SrtpProfileId;
use openssl::ssl::{
    ErrorCode, ShutdownState, Ssl, SslContext, SslContextBuilder, SslMethod, SslOptions, SslSessionCacheMode,
    SslStream, SslVerifyMode, SslVersion,
};
use openssl::x509::{X509, X509NameBuilder};
use str0m::config::{DtlsCert, DtlsVersion};
use str0m::crypto::CryptoError;
use str0m::crypto::dtls::{
    DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, KeyingMaterial, ProtocolVersion, SrtpProfile,
};
use tracing::debug;

use crate::failures::{Outcome, Reason};

/// How often an instance re-enters a handshake in progress so OpenSSL can
/// retransmit a lost flight once its own timer has run out.
pub const HANDSHAKE_TICK: Duration = Duration::from_millis(100);

/// RFC 5764 §4.2: the exporter label for DTLS-SRTP keys.
const SRTP_EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";

/// AEAD first (cheapest per packet with AES-NI), the mandatory
/// AES128-CM-HMAC-SHA1-80 (RFC 8827 §6.5) last. As a server OpenSSL picks
/// its own first choice among those the client offers.
const SRTP_PROFILES: [SrtpProfile; 3] = [
    SrtpProfile::AEAD_AES_128_GCM,
    SrtpProfile::AEAD_AES_256_GCM,
    SrtpProfile::AES128_CM_SHA1_80,
];

/// ECDHE with either certificate type, AEAD first; the CBC suites last for
/// stacks that offer nothing else.
const CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:\
ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA";

/// Key-exchange groups, preferred first. In DTLS 1.2 an ECDSA peer's
/// certificate curve must be one of them too (RFC 8422 §5.1.1): FFmpeg's
/// WHIP muxer (GnuTLS builds) signs with a P-224 key, hence the tail.
const GROUPS: &str = "X25519:P-256:P-384:P-521:P-224";

/// The record size when str0m gives none (str0m's own target).
const DEFAULT_MTU: usize = 1150;

/// Datagrams queued for OpenSSL before it has read them; more means the
/// peer floods a handshake, and the oldest are dropped.
const MAX_QUEUED: usize = 64;

/// How long an idle (connected or not started) instance asks to sleep.
const IDLE: Duration = Duration::from_secs(3600);

/// What an [`OpensslDtls`] offers and accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpensslSettings {
    /// SRTP protection profiles, preferred first.
    pub srtp_profiles: Vec<SrtpProfile>,
    /// OpenSSL cipher list (DTLS 1.2 suites).
    pub ciphers: String,
}

impl Default for OpensslSettings {
    fn default() -> Self {
        OpensslSettings {
            srtp_profiles: SRTP_PROFILES.to_vec(),
            ciphers: CIPHERS.to_owned(),
        }
    }
}

/// The OpenSSL DTLS provider: one `SslContext` per local certificate,
/// shared by every session that uses it.
#[derive(Default)]
pub struct OpensslDtls {
    settings: OpensslSettings,
    contexts: Mutex<Vec<(Vec<u8>, SslContext)>>,
}

impl fmt::Debug for OpensslDtls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OpensslDtls")
    }
}

impl OpensslDtls {
    pub fn new(settings: OpensslSettings) -> OpensslDtls {
        OpensslDtls {
            settings,
            contexts: Mutex::default(),
        }
    }

    /// The context for `cert`, built on first use. A node has one
    /// certificate; a few are kept for processes that rotate them.
    fn context(&self, cert: &DtlsCert) -> Result<SslContext, CryptoError> {
        let mut contexts = self.contexts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, ctx)) = contexts.iter().find(|(c, _)| *c == cert.certificate) {
            return Ok(ctx.clone());
        }
        let ctx = build_context(cert, &self.settings)
            .map_err(|e| CryptoError::Other(format!("OpenSSL DTLS context: {e}")))?;
        if contexts.len() >= 8 {
            contexts.remove(0);
        }
        contexts.push((cert.certificate.clone(), ctx.clone()));
        Ok(ctx)
    }

    /// How many contexts were built so far (one per certificate).
    pub fn contexts_built(&self) -> usize {
        self.contexts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl DtlsProvider for OpensslDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        match generate_certificate(KeyType::EcdsaP256) {
            Ok(cert) => Some(cert),
            Err(e) => {
                debug!(error = %e, "OpenSSL certificate generation failed");
                None
            }
        }
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        // Auto: "the first ClientHello decides"; DTLS 1.2 is what this
        // stack answers (and what it offers as a client).
        if !matches!(dtls_version, DtlsVersion::Dtls12 | DtlsVersion::Auto) {
            return Err(CryptoError::Other(format!(
                "the OpenSSL DTLS provider speaks DTLS 1.2, not {dtls_version}"
            )));
        }
        let ctx = self.context(cert)?;
        let ssl_error = |e: ErrorStack| CryptoError::Other(format!("OpenSSL DTLS session: {e}"));
        let mut ssl = Ssl::new(&ctx).map_err(ssl_error)?;
        let mtu = u32::try_from(mtu.unwrap_or(DEFAULT_MTU)).unwrap_or(u32::MAX);
        ssl.set_mtu(mtu).map_err(ssl_error)?;
        let stream = SslStream::new(ssl, Datagrams::default()).map_err(ssl_error)?;
        Ok(Box::new(Instance {
            stream,
            active: None,
            phase: Phase::Idle,
            now,
            events: VecDeque::new(),
            error: None,
            close_sent: false,
            close_received: false,
            outcome: Outcome::new("openssl"),
        }))
    }
}

/// The key of a generated certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA over P-256 (what browsers and the node generate).
    EcdsaP256,
    /// RSA 2048 (what GStreamer and other OpenSSL-based stacks generate).
    Rsa2048,
}

/// A self-signed certificate (SHA-256 signature, valid 30 days) with a
/// new key of `key` type, in the DER form str0m uses.
pub fn generate_certificate(key: KeyType) -> Result<DtlsCert, ErrorStack> {
    let pkey: PKey<Private> = match key {
        KeyType::EcdsaP256 => {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
            PKey::from_ec_key(EcKey::generate(&group)?)?
        }
        KeyType::Rsa2048 => PKey::from_rsa(Rsa::generate(2048)?)?,
    };
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", "WAVE")?;
    let name = name.build();
    let mut serial = BigNum::new()?;
    serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
    let mut x509 = X509::builder()?;
    x509.set_version(2)?;
    let serial = serial.to_asn1_integer()?;
    x509.set_serial_number(&serial)?;
    x509.set_subject_name(&name)?;
    x509.set_issuer_name(&name)?;
    x509.set_pubkey(&pkey)?;
    let (from, until) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(30)?);
    x509.set_not_before(&from)?;
    x509.set_not_after(&until)?;
    x509.sign(&pkey, MessageDigest::sha256())?;
    Ok(DtlsCert {
        certificate: x509.build().to_der()?,
        private_key: pkey.private_key_to_der()?,
    })
}

fn build_context(cert: &DtlsCert, settings: &OpensslSettings) -> Result<SslContext, ErrorStack> {
    let mut ctx = SslContextBuilder::new(SslMethod::dtls())?;
    ctx.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
    ctx.set_max_proto_version(Some(SslVersion::DTLS1_2))?;
    // Level 1 (80-bit): the peer is authenticated by its SDP fingerprint,
    // not by a chain, and some encoders still make 1024-bit RSA keys or
    // SHA-1 signatures that the distribution default (level 2) refuses.
    ctx.set_security_level(1);
    ctx.set_cipher_list(&settings.ciphers)?;
    ctx.set_groups_list(GROUPS)?;
    let profiles: Vec<&str> = settings
        .srtp_profiles
        .iter()
        .filter_map(|p| profile_name(*p))
        .collect();
    ctx.set_tlsext_use_srtp(&profiles.join(":"))?;
    // RFC 8827 §6.5: both sides present a certificate; any is accepted
    // here, str0m pins it to the fingerprint.
    ctx.set_verify_callback(
        SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        |_, store| {
            if let Some(key) = store.current_cert().and_then(|c| c.public_key().ok()) {
                let curve = key.ec_key().ok().and_then(|k| k.group().curve_name());
                debug!(key = ?key.id(), bits = key.bits(), ?curve, "DTLS peer certificate");
            }
            true
        },
    );
    let (x509, key) = (
        X509::from_der(&cert.certificate)?,
        PKey::private_key_from_der(&cert.private_key)?,
    );
    ctx.set_certificate(&x509)?;
    ctx.set_private_key(&key)?;
    ctx.check_private_key()?;
    // One handshake per session: no resumption, no tickets. The MTU is
    // set per session (no path-MTU queries on a memory stream).
    ctx.set_session_cache_mode(SslSessionCacheMode::OFF);
    ctx.set_options(SslOptions::NO_TICKET | SslOptions::NO_QUERY_MTU | SslOptions::SINGLE_ECDH_USE);
    Ok(ctx.build())
}

/// The datagrams between OpenSSL and str0m: OpenSSL reads one datagram
/// per read and writes one record per write.
#[derive(Default)]
struct Datagrams {
    incoming: VecDeque<Vec<u8>>,
    outgoing: VecDeque<Vec<u8>>,
}

impl io::Read for Datagrams {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(d) = self.incoming.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        // OpenSSL reads with a buffer of the largest record; a longer
        // datagram is not DTLS and its tail is dropped, as a UDP socket would.
        let n = d.len().min(buf.len());
        buf[..n].copy_from_slice(&d[..n]);
        Ok(n)
    }
}

impl io::Write for Datagrams {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.push_back(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Role not set, or set as server and no ClientHello yet.
    Idle,
    Handshaking,
    Connected,
    Failed,
}

enum Event {
    PeerCert(Vec<u8>),
    Keys(Vec<u8>, SrtpProfile),
    Connected,
    Data(Vec<u8>),
    CloseNotify,
}

/// One session's DTLS over OpenSSL.
struct Instance {
    stream: SslStream<Datagrams>,
    active: Option<bool>,
    phase: Phase,
    now: Instant,
    /// In the order str0m must see them: the peer certificate (checked
    /// against the fingerprint) before the keys and `Connected`.
    events: VecDeque<Event>,
    /// The handshake's failure, returned for every later datagram.
    error: Option<DtlsImplError>,
    close_sent: bool,
    close_received: bool,
    outcome: Outcome,
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpensslDtlsInstance")
            .field("active", &self.active)
            .field("phase", &self.phase)
            .finish()
    }
}

impl Instance {
    /// Lets OpenSSL act on what was queued: handshake, then records.
    fn drive(&mut self) {
        if self.phase == Phase::Handshaking {
            let step = if self.active == Some(true) {
                self.stream.connect()
            } else {
                self.stream.accept()
            };
            match step {
                Ok(()) => self.handshake_done(),
                Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {}
                Err(e) => {
                    let detail = e.ssl_error().map_or_else(|| e.to_string(), ErrorStack::to_string);
                    let reason = classify(&detail);
                    self.fail(reason, &detail);
                }
            }
        }
        if self.phase == Phase::Connected {
            self.read_records();
        }
    }

    fn handshake_done(&mut self) {
        let ssl = self.stream.ssl();
        let Some(cert) = ssl.peer_certificate() else {
            return self.fail(Reason::NoCertificate, &"the peer sent no certificate");
        };
        let cert = match cert.to_der() {
            Ok(der) => der,
            Err(e) => return self.fail(Reason::Protocol, &e),
        };
        let profile = match ssl.selected_srtp_profile().map(|p| p.id()) {
            Some(SrtpProfileId::SRTP_AES128_CM_SHA1_80) => SrtpProfile::AES128_CM_SHA1_80,
            Some(SrtpProfileId::SRTP_AEAD_AES_128_GCM) => SrtpProfile::AEAD_AES_128_GCM,
            Some(SrtpProfileId::SRTP_AEAD_AES_256_GCM) => SrtpProfile::AEAD_AES_256_GCM,
            _ => return self.fail(Reason::NoSharedCipher, &"no SRTP protection profile in common"),
        };
        let mut keys = vec![0u8; profile.keying_material_len()];
        if let Err(e) = ssl.export_keying_material(&mut keys, SRTP_EXPORTER_LABEL, None) {
            return self.fail(Reason::Protocol, &e);
        }
        debug!(
            version = ssl.version_str(),
            cipher = ssl.current_cipher().map(|c| c.name()),
            ?profile,
            "DTLS connected"
        );
        self.phase = Phase::Connected;
        self.outcome.connected();
        self.events.push_back(Event::PeerCert(cert));
        self.events.push_back(Event::Keys(keys, profile));
        self.events.push_back(Event::Connected);
    }

    fn read_records(&mut self) {
        let mut buf = [0u8; 2048];
        loop {
            match self.stream.ssl_read(&mut buf) {
                Ok(n) => self.events.push_back(Event::Data(buf[..n].to_vec())),
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                    self.peer_closed();
                    return;
                }
                Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => return,
                Err(e) => {
                    // A record that does not decrypt is dropped (RFC 6347
                    // §4.1.2.7); the session goes on.
                    debug!(error = %e, "DTLS record dropped");
                    if self.stream.get_shutdown().contains(ShutdownState::RECEIVED) {
                        self.peer_closed();
                    }
                    return;
                }
            }
        }
    }

    fn peer_closed(&mut self) {
        if self.close_received {
            return;
        }
        self.close_received = true;
        self.events.push_back(Event::CloseNotify);
        if !self.close_sent {
            // RFC 5246 §7.2.1: answer close_notify with close_notify.
            let _ = self.stream.shutdown();
            self.close_sent = true;
        }
    }

    fn fail(&mut self, reason: Reason, detail: &dyn fmt::Display) {
        debug!(reason = reason.as_str(), %detail, "OpenSSL DTLS handshake failed");
        self.outcome.fail(reason, detail);
        self.phase = Phase::Failed;
        self.error = Some(impl_error(reason, self.active == Some(true)));
    }
}

impl DtlsInstance for Instance {
    fn set_active(&mut self, active: bool) {
        self.active = Some(active);
        self.outcome.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        self.outcome.received(packet);
        if !packet.is_empty() {
            let queue = &mut self.stream.get_mut().incoming;
            if queue.len() >= MAX_QUEUED {
                debug!("DTLS receive queue full, oldest datagram dropped");
                queue.pop_front();
            }
            queue.push_back(packet.to_vec());
        }
        // str0m starts a client with an empty datagram; a server starts
        // with the first ClientHello.
        if self.phase == Phase::Idle && (self.active == Some(true) || !packet.is_empty()) {
            self.phase = Phase::Handshaking;
        }
        self.drive();
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        self.outcome.polled();
        if let Some(p) = self.stream.get_mut().outgoing.pop_front() {
            if p.len() > buf.len() {
                let needed = p.len();
                self.stream.get_mut().outgoing.push_front(p);
                return DtlsOutput::BufferTooSmall { needed };
            }
            buf[..p.len()].copy_from_slice(&p);
            return DtlsOutput::Packet(&buf[..p.len()]);
        }
        if let Some(event) = self.events.pop_front() {
            let bytes = match &event {
                Event::PeerCert(b) | Event::Keys(b, _) | Event::Data(b) => b.len(),
                Event::Connected | Event::CloseNotify => 0,
            };
            if bytes > buf.len() {
                self.events.push_front(event);
                return DtlsOutput::BufferTooSmall { needed: bytes };
            }
            return match event {
                Event::PeerCert(b) => {
                    self.outcome.peer_cert_given();
                    buf[..b.len()].copy_from_slice(&b);
                    DtlsOutput::PeerCert(&buf[..b.len()])
                }
                Event::Keys(b, profile) => DtlsOutput::KeyingMaterial(KeyingMaterial::new(&b), profile),
                Event::Connected => DtlsOutput::Connected,
                Event::Data(b) => {
                    buf[..b.len()].copy_from_slice(&b);
                    DtlsOutput::ApplicationData(&buf[..b.len()])
                }
                Event::CloseNotify => DtlsOutput::CloseNotify,
            };
        }
        let wait = if self.phase == Phase::Handshaking {
            HANDSHAKE_TICK
        } else {
            IDLE
        };
        DtlsOutput::Timeout(self.now + wait)
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.now = now;
        if self.phase == Phase::Handshaking {
            self.drive();
        }
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        if self.phase != Phase::Connected || data.is_empty() || self.close_sent {
            return Ok(0);
        }
        match self.stream.ssl_write(data) {
            Ok(n) => Ok(n),
            Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => Ok(0),
            Err(e) => {
                debug!(error = %e, "DTLS write failed");
                Err(DtlsImplError::ConnectionClosed)
            }
        }
    }

    fn is_active(&self) -> bool {
        self.active.unwrap_or(false)
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        (self.phase == Phase::Connected).then_some(ProtocolVersion::DTLS1_2)
    }

    fn is_closing(&self) -> bool {
        self.close_sent || self.close_received
    }

    fn is_closed(&self) -> bool {
        self.close_sent && self.stream.get_ref().outgoing.is_empty()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.outcome.end();
        if self.phase == Phase::Connected && !self.close_sent {
            let _ = self.stream.shutdown();
        }
        self.close_sent = true;
        Ok(())
    }
}

/// OpenSSL's name of an SRTP profile (RFC 5764 §4.1.2, RFC 7714 §14.2).
fn profile_name(p: SrtpProfile) -> Option<&'static str> {
    match p {
        SrtpProfile::AES128_CM_SHA1_80 => Some("SRTP_AES128_CM_SHA1_80"),
        SrtpProfile::AEAD_AES_128_GCM => Some("SRTP_AEAD_AES_128_GCM"),
        SrtpProfile::AEAD_AES_256_GCM => Some("SRTP_AEAD_AES_256_GCM"),
        _ => None,
    }
}

/// The reason behind an OpenSSL handshake error, from its reason strings.
fn classify(detail: &str) -> Reason {
    let d = detail.to_ascii_lowercase();
    if d.contains("no shared cipher")
        || d.contains("no shared signature")
        || d.contains("no suitable signature")
        || d.contains("no suitable key share")
        || d.contains("no shared group")
        || d.contains("no common srtp")
        || d.contains("no srtp profiles")
        || d.contains("wrong curve")
    {
        Reason::NoSharedCipher
    } else if d.contains("did not return a certificate") || d.contains("no certificate") {
        Reason::NoCertificate
    } else if d.contains("timeout") {
        Reason::Timeout
    } else if d.contains("alert") {
        Reason::PeerAlert
    } else {
        Reason::Protocol
    }
}

/// The dimpl error str0m's interface carries for `reason`.
fn impl_error(reason: Reason, client: bool) -> DtlsImplError {
    use dimpl::{CertificateError, SecurityError, TimeoutError};
    match reason {
        Reason::NoCertificate if client => {
            DtlsImplError::CertificateError(CertificateError::NoServerCertificateReceived)
        }
        Reason::NoCertificate => {
            DtlsImplError::CertificateError(CertificateError::NoClientCertificateReceived)
        }
        Reason::NoSharedCipher => {
            DtlsImplError::SecurityError(SecurityError::NoMutuallyAcceptableCipherSuite)
        }
        Reason::Timeout => DtlsImplError::Timeout(TimeoutError::Handshake),
        // RFC 5246 §7.2.2: handshake_failure (40).
        _ => DtlsImplError::SecurityError(SecurityError::FatalAlert { description: 40 }),
    }
}
