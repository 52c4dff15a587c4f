//! HTTPS on the node's own listener (browsers grant a camera only to a
//! secure context): a certificate chain and key from PEM files, presented
//! through a resolver whose certificate is swapped in place when either file
//! changes, so a renewed certificate needs no restart. ALPN offers h2 and
//! http/1.1, both served by the same listener.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

/// The PEM files of the listener's certificate chain (leaf first) and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The listener's certificate, reloaded from its files when they change.
#[derive(Debug)]
pub struct ReloadingCert {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' modification times at the last load.
    stamp: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl ReloadingCert {
    /// Loads the files; an unreadable file, a chain without a certificate or
    /// a key that does not match the leaf is an error naming the file.
    pub fn load(files: TlsFiles) -> Result<Arc<ReloadingCert>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let stamp = (modified(&files.cert), modified(&files.key));
        let key = read(&files, &provider)?;
        Ok(Arc::new(ReloadingCert {
            files,
            provider,
            current: RwLock::new(Arc::new(key)),
            stamp: Mutex::new(stamp),
        }))
    }

    /// Reloads when either file's modification time changed: `Ok(true)` when
    /// the new certificate is in use; on an error the old one stays.
    pub fn refresh(&self) -> Result<bool, String> {
        let now = (modified(&self.files.cert), modified(&self.files.key));
        let mut stamp = self.stamp.lock().map_err(|_| "poisoned")?;
        if *stamp == now {
            return Ok(false);
        }
        *stamp = now;
        let key = read(&self.files, &self.provider)?;
        *self.current.write().map_err(|_| "poisoned")? = Arc::new(key);
        Ok(true)
    }

    /// The rustls configuration of the listener: TLS 1.2 and 1.3, no client
    /// certificates, ALPN h2 then http/1.1.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, String> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Checks the files every `every`, logging each reload and each failed one.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.refresh() {
                Ok(true) => info!(cert = %self.files.cert.display(), "TLS certificate reloaded"),
                Ok(false) => {}
                Err(e) => warn!(error = %e, "TLS certificate not reloaded, the previous one stays"),
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|k| k.clone())
    }
}

fn read(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let cert = std::fs::read(&files.cert).map_err(|e| format!("--tls-cert {}: {e}", files.cert.display()))?;
    let key = std::fs::read(&files.key).map_err(|e| format!("--tls-key {}: {e}", files.key.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate in the file",
            files.cert.display()
        ));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&key).map_err(|e| format!("--tls-key {}: {e}", files.key.display()))?;
    CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("--tls-key {} does not fit --tls-cert: {e}", files.key.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &std::path::Path, name: &str) -> (TlsFiles, Vec<u8>) {
        let made = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&files.cert, made.cert.pem()).unwrap();
        std::fs::write(&files.key, made.signing_key.serialize_pem()).unwrap();
        (files, made.cert.der().to_vec())
    }

    fn leaf(c: &ReloadingCert) -> Vec<u8> {
        c.current.read().unwrap().cert[0].to_vec()
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_old_certificate() {
        let dir = std::env::temp_dir().join(format!("wave-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (files, first) = write(&dir, "one.test");
        let c = ReloadingCert::load(files.clone()).unwrap();
        assert_eq!(leaf(&c), first);
        assert!(c.server_config().is_ok());
        assert_eq!(c.refresh(), Ok(false), "nothing changed");

        std::thread::sleep(Duration::from_millis(20));
        let (_, second) = write(&dir, "two.test");
        // Make sure the modification time moves even on a coarse clock.
        let later = SystemTime::now() + Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(&files.cert)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(c.refresh(), Ok(true));
        assert_eq!(leaf(&c), second);

        // A key that does not fit: refused, the second certificate stays.
        let other = rcgen::generate_simple_self_signed(vec!["three.test".to_owned()]).unwrap();
        std::fs::write(&files.key, other.signing_key.serialize_pem()).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&files.key)
            .unwrap()
            .set_modified(later + Duration::from_secs(2))
            .unwrap();
        let e = c.refresh().unwrap_err();
        assert!(e.contains("does not fit"), "{e}");
        assert_eq!(leaf(&c), second);

        // Files that are not PEM at all are refused at load.
        std::fs::write(&files.cert, "not a certificate").unwrap();
        let e = ReloadingCert::load(files).unwrap_err();
        assert!(e.contains("no certificate"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
