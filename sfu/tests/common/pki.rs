//! A test CA writing certificate and key files: relay PKIs (serverAuth and
//! clientAuth) and HTTPS listeners.

use std::path::PathBuf;

pub struct Pki {
    dir: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA certificate, DER.
    pub ca_der: Vec<u8>,
}

impl Pki {
    /// A fresh CA in a temporary directory named after `tag`.
    pub fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("wave-pki-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki {
            dir,
            ca_der: ca.der().to_vec(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// The CA certificate's PEM file.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `name` (a DNS name or an IP address) signed by the
    /// CA, for servers and clients: its PEM certificate and key files.
    pub fn leaf(&self, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key, _) = self.leaf_der(name, name);
        (cert, key)
    }

    /// [`Pki::leaf`] written under `file`, with the certificate's DER.
    pub fn leaf_der(&self, name: &str, file: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k, cert.der().to_vec())
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
