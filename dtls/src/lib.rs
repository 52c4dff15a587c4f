//! `wave-dtls`: str0m's DTLS through dimpl (AWS-LC), with one dimpl configuration per
//! process instead of one per peer; the node's engine and the load tester's
//! peers both use it.
//!
//! str0m's own AWS-LC provider builds a fresh `dimpl::Config` for every
//! `Rtc`, and building one validates the crypto provider: a test ECDH
//! exchange on every key-exchange group (P-256, P-384, X25519) and a test
//! signature verification. In the load tester's profile that was ~40 % of
//! the CPU a join costs its single signalling thread (`perf`, 300 viewers
//! joining at 50/s): pure overhead, the same answer every time, and on the
//! node it runs on the media worker that accepts the session. This
//! provider builds the configuration once per MTU setting and shares it;
//! the handshake itself (dimpl, AWS-LC) is unchanged, so peers see the same
//! handshake as before.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use str0m::config::{CryptoProvider, DtlsCert, DtlsVersion};
use str0m::crypto::CryptoError;
use str0m::crypto::dtls::{DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, ProtocolVersion};

/// Shared dimpl configurations, one per MTU setting.
#[derive(Debug, Default)]
pub struct SharedConfigDtls {
    configs: Mutex<Vec<(Option<usize>, Arc<dimpl::Config>)>>,
}

impl SharedConfigDtls {
    /// The configuration for `mtu`, built (and validated) on first use.
    fn config(&self, mtu: Option<usize>) -> Result<Arc<dimpl::Config>, CryptoError> {
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = configs.iter().find(|(m, _)| *m == mtu) {
            return Ok(c.clone());
        }
        // ICE checks return routability before DTLS: no server cookie (as str0m's own provider).
        let mut builder = dimpl::Config::builder().use_server_cookie(false);
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        let config = Arc::new(
            builder
                .build()
                .map_err(|e| CryptoError::Other(format!("dimpl config: {e}")))?,
        );
        configs.push((mtu, config.clone()));
        Ok(config)
    }

    /// How many configurations were built so far (one per MTU setting).
    pub fn configs_built(&self) -> usize {
        self.configs.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl DtlsProvider for SharedConfigDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let config = self.config(mtu)?;
        let cert = cert.clone();
        let dtls = match dtls_version {
            DtlsVersion::Dtls12 => dimpl::Dtls::new_12(config, cert, now),
            DtlsVersion::Dtls13 => dimpl::Dtls::new_13(config, cert, now),
            DtlsVersion::Auto => dimpl::Dtls::new_auto(config, cert, now),
            other => {
                return Err(CryptoError::Other(format!(
                    "DTLS version {other:?} not supported"
                )));
            }
        };
        Ok(Box::new(Instance(dtls)))
    }
}

/// One peer's DTLS state: dimpl's, as is.
struct Instance(dimpl::Dtls);

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dimpl DTLS instance")
    }
}

impl DtlsInstance for Instance {
    fn set_active(&mut self, active: bool) {
        self.0.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.0.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        self.0.poll_output(buf)
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.0.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.0.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.0.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.0.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.0.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.0.close()
    }
}

/// The process's DTLS provider (str0m wants a `'static` one).
pub fn shared_dtls() -> &'static SharedConfigDtls {
    static DTLS: OnceLock<SharedConfigDtls> = OnceLock::new();
    DTLS.get_or_init(SharedConfigDtls::default)
}

/// str0m's AWS-LC crypto with the shared-configuration DTLS provider.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut p = str0m::crypto::from_feature_flags();
            p.dtls_provider = shared_dtls();
            Arc::new(p)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drains `from`'s datagrams into `to`; true once `from` said Connected.
    fn pump(from: &mut dyn DtlsInstance, to: &mut dyn DtlsInstance, buf: &mut [u8]) -> bool {
        let mut connected = false;
        let mut packets = Vec::new();
        loop {
            match from.poll_output(buf) {
                DtlsOutput::Packet(p) => packets.push(p.to_vec()),
                DtlsOutput::Connected => connected = true,
                DtlsOutput::Timeout(_) => break,
                _ => {}
            }
        }
        for p in packets {
            to.handle_packet(&p).expect("handshake packet accepted");
        }
        connected
    }

    #[test]
    fn one_config_per_mtu_and_the_handshake_completes() {
        let provider = SharedConfigDtls::default();
        let cert = provider.generate_certificate().expect("certificate");
        let now = Instant::now();
        let mut client = provider.new_dtls(&cert, now, DtlsVersion::Auto, None).unwrap();
        let mut server = provider.new_dtls(&cert, now, DtlsVersion::Auto, None).unwrap();
        assert_eq!(provider.configs_built(), 1, "peers share the configuration");
        provider
            .new_dtls(&cert, now, DtlsVersion::Dtls12, Some(1200))
            .unwrap();
        provider
            .new_dtls(&cert, now, DtlsVersion::Dtls12, Some(1200))
            .unwrap();
        assert_eq!(provider.configs_built(), 2, "one per MTU setting");

        client.set_active(true);
        server.set_active(false);
        // dimpl wants a timeout before the first packet (str0m gives one).
        client.handle_timeout(now).unwrap();
        server.handle_timeout(now).unwrap();
        let mut buf = vec![0u8; 4096];
        let (mut client_up, mut server_up) = (false, false);
        for _ in 0..20 {
            client_up |= pump(&mut *client, &mut *server, &mut buf);
            server_up |= pump(&mut *server, &mut *client, &mut buf);
            if client_up && server_up {
                break;
            }
        }
        assert!(client_up && server_up, "client {client_up}, server {server_up}");
        assert!(client.protocol_version().is_some());
    }
}
