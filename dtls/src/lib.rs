//! str0m's DTLS for WAVE: two providers behind one switch, and the count
//! of handshakes that failed.
//!
//! - [`openssl_dtls`] ([`Backend::Openssl`]): OpenSSL's libssl, DTLS 1.2, RSA
//!   and ECDSA peer certificates in either role. The node's default: it is
//!   the stack GStreamer, libdatachannel and most encoders outside browsers
//!   use, and it speaks to every client of the interop matrix.
//! - [`dimpl_dtls`] ([`Backend::Dimpl`]): str0m's own stack (dimpl over
//!   AWS-LC, DTLS 1.2 and 1.3) with one configuration per process. It
//!   completes handshakes with browsers and aiortc but not with clients
//!   that sign with RSA (GStreamer); the load tester uses it.
//!
//! A process picks one with [`select`] before its first session;
//! [`crypto_provider`] is str0m's AWS-LC crypto (SRTP, hashes) with the
//! selected DTLS (dimpl when nothing was selected). Either way a failed
//! handshake is counted by reason ([`failures`]) and logged once.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use str0m::config::CryptoProvider;

pub mod dimpl_dtls;
pub mod failures;
pub mod openssl_dtls;

pub use crate::dimpl_dtls::SharedConfigDtls;
pub use crate::failures::render_metrics;
pub use crate::openssl_dtls::OpensslDtls;

/// Which DTLS stack a process uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Openssl,
    Dimpl,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Openssl => "openssl",
            Backend::Dimpl => "dimpl",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Backend, String> {
        match s {
            "openssl" => Ok(Backend::Openssl),
            "dimpl" => Ok(Backend::Dimpl),
            other => Err(format!("unknown DTLS provider {other:?} (openssl or dimpl)")),
        }
    }
}

static SELECTED: OnceLock<Backend> = OnceLock::new();

/// Makes `backend` this process's DTLS. The first selection wins (str0m
/// holds the provider for the life of every session made with it);
/// returns the backend in force.
pub fn select(backend: Backend) -> Backend {
    *SELECTED.get_or_init(|| backend)
}

/// The DTLS this process uses: the selected one, else dimpl.
pub fn selected() -> Backend {
    SELECTED.get().copied().unwrap_or(Backend::Dimpl)
}

/// The shared dimpl provider (str0m wants a `'static` one).
pub fn shared_dtls() -> &'static SharedConfigDtls {
    static DTLS: OnceLock<SharedConfigDtls> = OnceLock::new();
    DTLS.get_or_init(SharedConfigDtls::default)
}

/// The shared OpenSSL provider.
pub fn openssl_dtls() -> &'static OpensslDtls {
    static DTLS: OnceLock<OpensslDtls> = OnceLock::new();
    DTLS.get_or_init(OpensslDtls::default)
}

/// str0m's AWS-LC crypto with `backend`'s DTLS.
pub fn crypto_provider_for(backend: Backend) -> Arc<CryptoProvider> {
    static DIMPL: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    static OPENSSL: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    let (cell, dtls): (_, &'static dyn str0m::crypto::dtls::DtlsProvider) = match backend {
        Backend::Dimpl => (&DIMPL, shared_dtls()),
        Backend::Openssl => (&OPENSSL, openssl_dtls()),
    };
    cell.get_or_init(|| {
        let mut p = str0m::crypto::from_feature_flags();
        p.dtls_provider = dtls;
        Arc::new(p)
    })
    .clone()
}

/// str0m's AWS-LC crypto with this process's DTLS ([`selected`]).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    crypto_provider_for(selected())
}
