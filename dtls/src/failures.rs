//! Failed DTLS handshakes, counted by reason and logged once per session.
//!
//! Each DTLS instance (either provider) owns an [`Outcome`]: it tells the
//! outcome what it saw, and the outcome counts the session's failure once
//! (in `wave_dtls_failures_total{reason=..}`) with one `warn!` naming the
//! reason. A session that is dropped while its handshake is still under
//! way after the peer spoke counts as `incomplete`.

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::warn;
use wave_metrics::{Kind, family, sample};

/// Why a DTLS handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The peer sent no certificate (or an empty one) where one is required.
    NoCertificate,
    /// No cipher suite, signature algorithm, group or SRTP profile in common.
    NoSharedCipher,
    /// The peer's certificate does not match the `a=fingerprint` of its SDP
    /// (str0m checks it; the session ends right after).
    BadFingerprint,
    /// The peer ended the handshake with a fatal alert.
    PeerAlert,
    /// The handshake ran out of retransmissions.
    Timeout,
    /// The session ended while its handshake was still under way.
    Incomplete,
    /// Anything else the DTLS stack rejected (malformed or unexpected messages).
    Protocol,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::NoCertificate,
        Reason::NoSharedCipher,
        Reason::BadFingerprint,
        Reason::PeerAlert,
        Reason::Timeout,
        Reason::Incomplete,
        Reason::Protocol,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoCertificate => "no_certificate",
            Reason::NoSharedCipher => "no_shared_cipher",
            Reason::BadFingerprint => "bad_fingerprint",
            Reason::PeerAlert => "peer_alert",
            Reason::Timeout => "timeout",
            Reason::Incomplete => "incomplete",
            Reason::Protocol => "protocol",
        }
    }

    fn index(self) -> usize {
        Reason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// The reason behind a dimpl error, `None` for errors that do not end
    /// the handshake (a full queue drops one datagram).
    pub fn of_dimpl(e: &dimpl::Error) -> Option<Reason> {
        use dimpl::{CertificateError as C, Error as E, SecurityError as S};
        Some(match e {
            E::ReceiveQueueFull | E::TransmitQueueFull | E::TransmitHistoryFull => return None,
            E::CertificateError(C::NoClientCertificateReceived | C::NoServerCertificateReceived) => {
                Reason::NoCertificate
            }
            E::SecurityError(
                S::NoMutuallyAcceptableCipherSuite
                | S::NoCommonCipherSuite
                | S::NoCommonKeyExchangeGroup
                | S::UnsupportedKeyExchangeAlgorithm,
            )
            | E::CryptoError(
                dimpl::CryptoError::SignatureAlgorithmNotOfferedByClient
                | dimpl::CryptoError::NoSupportedKeyExchangeGroups
                | dimpl::CryptoError::UnsupportedSignatureAlgorithm(_)
                | dimpl::CryptoError::UnsupportedSignaturePair { .. }
                | dimpl::CryptoError::UnsupportedSignatureVerification { .. }
                | dimpl::CryptoError::UnsupportedPublicKeyAlgorithm
                | dimpl::CryptoError::UnsupportedEcCurve,
            ) => Reason::NoSharedCipher,
            E::SecurityError(S::FatalAlert { .. }) => Reason::PeerAlert,
            E::Timeout(_) => Reason::Timeout,
            _ => Reason::Protocol,
        })
    }
}

static FAILURES: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];

/// Failures counted so far for `reason` (every provider, this process).
pub fn failures(reason: Reason) -> u64 {
    FAILURES[reason.index()].load(Ordering::Relaxed)
}

/// Appends `wave_dtls_failures_total`, one sample per reason (zeros
/// included, so a dashboard sees every series from the start).
pub fn render_metrics(out: &mut String) {
    const NAME: &str = "wave_dtls_failures_total";
    family(
        out,
        NAME,
        Kind::Counter,
        "DTLS handshakes that failed, by reason; each ended its session.",
    );
    for r in Reason::ALL {
        sample(out, NAME, &format!("reason=\"{}\"", r.as_str()), failures(r));
    }
}

/// What one DTLS instance has seen, so that its failure counts once.
#[derive(Debug)]
pub(crate) struct Outcome {
    provider: &'static str,
    active: Option<bool>,
    /// The peer sent at least one DTLS datagram.
    spoke: bool,
    connected: bool,
    failed: bool,
    /// `PeerCert` was handed to str0m and str0m has not polled since:
    /// str0m stops polling right there only when the certificate does not
    /// match the SDP fingerprint (it then closes the session).
    cert_unconfirmed: bool,
}

impl Outcome {
    pub(crate) fn new(provider: &'static str) -> Outcome {
        Outcome {
            provider,
            active: None,
            spoke: false,
            connected: false,
            failed: false,
            cert_unconfirmed: false,
        }
    }

    pub(crate) fn set_active(&mut self, active: bool) {
        self.active = Some(active);
    }

    pub(crate) fn received(&mut self, packet: &[u8]) {
        self.spoke |= !packet.is_empty();
    }

    pub(crate) fn connected(&mut self) {
        self.connected = true;
    }

    /// str0m polled again: whatever it was given before passed its checks.
    pub(crate) fn polled(&mut self) {
        self.cert_unconfirmed = false;
    }

    pub(crate) fn peer_cert_given(&mut self) {
        self.cert_unconfirmed = true;
    }

    /// Counts and logs this session's failure, the first time only.
    pub(crate) fn fail(&mut self, reason: Reason, detail: &dyn Display) {
        if self.failed || self.connected {
            return;
        }
        self.failed = true;
        FAILURES[reason.index()].fetch_add(1, Ordering::Relaxed);
        let role = match self.active {
            Some(true) => "client",
            Some(false) => "server",
            None => "unset",
        };
        warn!(
            reason = reason.as_str(),
            role,
            provider = self.provider,
            %detail,
            "DTLS handshake failed"
        );
    }

    /// The session is closing or dropped: a pending certificate check or an
    /// unfinished handshake is its failure.
    pub(crate) fn end(&mut self) {
        if self.cert_unconfirmed {
            self.cert_unconfirmed = false;
            self.connected = false;
            self.fail(
                Reason::BadFingerprint,
                &"the peer's certificate does not match its SDP a=fingerprint",
            );
        } else if self.spoke && !self.connected {
            self.fail(Reason::Incomplete, &"the session ended during the handshake");
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        self.end();
    }
}
