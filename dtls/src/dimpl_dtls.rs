//! str0m's DTLS through dimpl (AWS-LC), with one dimpl configuration per
//! process instead of one per peer: the load tester's peers use it, and the
//! node with `--dtls dimpl`.
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

use std::sync::{Arc, Mutex};
use std::time::Instant;

use str0m::config::{DtlsCert, DtlsVersion};
use str0m::crypto::CryptoError;
use str0m::crypto::dtls::{DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, ProtocolVersion};

use crate::failures::{Outcome, Reason};

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
        Ok(Box::new(Instance {
            dtls,
            outcome: Outcome::new("dimpl"),
        }))
    }
}

/// One peer's DTLS state: dimpl's, with its failure counted.
struct Instance {
    dtls: dimpl::Dtls,
    outcome: Outcome,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dimpl DTLS instance")
    }
}

impl Instance {
    fn count(&mut self, e: &DtlsImplError) {
        if let Some(reason) = Reason::of_dimpl(e) {
            self.outcome.fail(reason, e);
        }
    }
}

impl DtlsInstance for Instance {
    fn set_active(&mut self, active: bool) {
        self.outcome.set_active(active);
        self.dtls.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.outcome.received(packet);
        let r = self.dtls.handle_packet(packet);
        if let Err(e) = &r {
            self.count(e);
        }
        r
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        self.outcome.polled();
        let out = self.dtls.poll_output(buf);
        match &out {
            DtlsOutput::PeerCert(_) => self.outcome.peer_cert_given(),
            DtlsOutput::Connected => self.outcome.connected(),
            _ => {}
        }
        out
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        let r = self.dtls.handle_timeout(now);
        if let Err(e) = &r {
            self.count(e);
        }
        r
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.dtls.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.dtls.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.dtls.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.dtls.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.dtls.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.outcome.end();
        self.dtls.close()
    }
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
