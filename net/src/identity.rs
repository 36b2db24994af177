//! A process's certificate and key, made on first start and kept.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// A self-signed certificate, its key, and its SHA-256 fingerprint.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    pub fingerprint: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a DER certificate, lower-case hex.
pub fn fingerprint(cert: &[u8]) -> String {
    hex::encode(Sha256::digest(cert))
}

impl Identity {
    /// Load `cert.der`/`key.der` from `dir`, or make and store a new pair.
    pub fn load_or_create(dir: &Path, name: &str) -> Result<Identity> {
        let cert_path = dir.join("cert.der");
        let key_path = dir.join("key.der");
        if cert_path.exists() && key_path.exists() {
            let cert =
                fs::read(&cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
            let key =
                fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
            return Ok(Identity::from_der(cert, key));
        }
        let id = Identity::generate(name)?;
        write_private(&key_path, id.key.secret_pkcs8_der())?;
        write_private(&cert_path, id.cert.as_ref())?;
        Ok(id)
    }

    /// A fresh identity that lives only in memory.
    pub fn generate(name: &str) -> Result<Identity> {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_string(), "keyline".into()])
            .context("generating a self-signed certificate")?;
        Ok(Identity::from_der(
            ck.cert.der().to_vec(),
            ck.signing_key.serialize_der(),
        ))
    }

    fn from_der(cert: Vec<u8>, key: Vec<u8>) -> Identity {
        let fingerprint = fingerprint(&cert);
        Identity {
            cert: CertificateDer::from(cert),
            key: PrivatePkcs8KeyDer::from(key),
            fingerprint,
        }
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// A secret derived from the private key for the use named by
    /// `label`: the same after a restart, so that a restarted process's
    /// QUIC stateless resets are ones its peers accept (see
    /// `endpoint::make_endpoint`). Different labels give unrelated secrets.
    pub(crate) fn derived_secret(&self, label: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"keyline derived secret v1\0");
        h.update(label.as_bytes());
        h.update(b"\0");
        h.update(self.key.secret_pkcs8_der());
        h.finalize().into()
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// The six-digit code a new station shows and the admin approves. It
/// binds both certificates: a machine in the middle would present other
/// fingerprints to each side, so the two sides would show different codes.
pub fn pairing_code(agent_fp: &str, gateway_fp: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"keyline pairing v1\0");
    h.update(agent_fp.as_bytes());
    h.update(b"\0");
    h.update(gateway_fp.as_bytes());
    let d = h.finalize();
    let n = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % 1_000_000;
    format!("{n:06}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_kept_across_loads() {
        let dir = std::env::temp_dir().join(format!("kl-id-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("dir");
        let a = Identity::load_or_create(&dir, "t").expect("create");
        let b = Identity::load_or_create(&dir, "t").expect("load");
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 64);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn pairing_code_depends_on_both_sides() {
        let c = pairing_code("aa", "bb");
        assert_eq!(c.len(), 6);
        assert!(c.chars().all(|ch| ch.is_ascii_digit()));
        assert_ne!(c, pairing_code("aa", "bc"));
        assert_ne!(c, pairing_code("ab", "bb"));
        assert_eq!(c, pairing_code("aa", "bb"));
    }
}
