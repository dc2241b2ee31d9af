//! Fluidity's public-key infrastructure: certificates bound to the server's ECS task ARN.
//!
//! Every certificate names the server's task ARN (as CN, and as a `URI` SAN because a real ARN
//! is longer than the 64 characters X.509 allows in a CommonName) and lists IP addresses as
//! SANs. The agent trusts a server whose chain leads to the private CA, whose ARN is the one it
//! was told and whose SAN holds the IP it dialled; the server trusts an agent whose chain leads
//! to the CA, whose ARN is the server's own and whose SAN holds the TCP peer's IP.
//! `docs/security.md` explains the model.
//!
//! - [`keys`]: key generation and PEM key loading (PKCS#1, PKCS#8, SEC1);
//! - [`csr`]: building certificate signing requests and parsing/verifying them;
//! - [`ca`]: the CA's signing logic (a pure function plus the [`ca::CsrPolicy`] hook);
//! - [`local_ca`]: a CA kept in a directory, implementing [`CertIssuer`](crate::issue::CertIssuer);
//! - [`verify`]: the rustls verifiers and the post-handshake peer-IP check;
//! - [`server_certs`]: the server's lazy certificate manager;
//! - [`agent_certs`]: the agent's certificate cache;
//! - [`info`]: what a certificate says (ARN, IPs, validity), parsed with x509-parser.
//!
//! All cryptography is aws-lc-rs, through rustls' and rcgen's `aws_lc_rs` features.

pub mod agent_certs;
pub mod ca;
mod credentials;
pub mod csr;
mod files;
pub mod info;
pub mod keys;
pub mod local_ca;
pub mod server_certs;
pub mod verify;

use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};
use crate::issue::IssuedCertificate;

pub use ca::{
    CertificateAuthority, CsrPolicy, CsrRefusal, IpSans, SigningOptions, SigningRequestContext,
};
pub use credentials::CredentialSource;
pub use info::CertificateInfo;
pub use keys::KeyAlgorithm;
pub use verify::Rejection;

/// The one crypto provider Fluidity uses: aws-lc-rs.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The TLS versions Fluidity speaks: 1.3 only.
pub static TLS_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// A certificate chain (leaf first) and its private key: what one side presents in TLS.
#[derive(Debug)]
pub struct TlsIdentity {
    /// Leaf first, then intermediates (the CA itself may be included; it is harmless).
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    /// Parses a PEM certificate chain and a PEM private key (PKCS#1, PKCS#8 or SEC1).
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        let chain = parse_certificates_pem("certificate", chain_pem)?;
        let key = keys::parse_private_key_pem("private key", key_pem)?;
        Ok(TlsIdentity { chain, key })
    }

    /// Loads `cert_file` (chain, leaf first) and `key_file`; errors name the file at fault.
    pub fn from_files(cert_file: &std::path::Path, key_file: &std::path::Path) -> Result<Self> {
        let chain_pem = files::read(cert_file)?;
        let key_pem = files::read(key_file)?;
        let chain = parse_certificates_pem(cert_file.display().to_string(), &chain_pem)?;
        let key = keys::parse_private_key_pem(key_file.display().to_string(), &key_pem)?;
        Ok(TlsIdentity { chain, key })
    }

    /// What the leaf certificate says.
    pub fn leaf_info(&self) -> Result<CertificateInfo> {
        let leaf = self
            .chain
            .first()
            .ok_or_else(|| Error::certificate("certificate chain", "is empty"))?;
        CertificateInfo::parse(leaf)
    }

    /// The rustls form, checking that the key matches the leaf.
    pub fn certified_key(&self) -> Result<Arc<rustls::sign::CertifiedKey>> {
        if self.chain.is_empty() {
            return Err(Error::certificate("certificate chain", "is empty"));
        }
        rustls::sign::CertifiedKey::from_der(
            self.chain.clone(),
            self.key.clone_key(),
            &crypto_provider(),
        )
        .map(Arc::new)
        .map_err(|e| Error::certificate("certificate and key", e))
    }
}

/// Parses every `CERTIFICATE` block of a PEM document; at least one is required.
pub fn parse_certificates_pem(
    what: impl Into<String>,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>> {
    let what = what.into();
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::certificate(&what, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::certificate(what, "holds no PEM CERTIFICATE block"));
    }
    Ok(certs)
}

/// A root store holding the CA certificates of a PEM document.
pub fn root_store(what: &str, ca_pem: &[u8]) -> Result<Arc<rustls::RootCertStore>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in parse_certificates_pem(what, ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| Error::certificate(what, format!("unusable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// The leaf and chain of an issued certificate with `key`.
pub(crate) fn identity_from_issued(
    issued: &IssuedCertificate,
    key: PrivateKeyDer<'static>,
) -> Result<TlsIdentity> {
    let chain = parse_certificates_pem("issued certificate", issued_chain_pem(issued).as_bytes())?;
    Ok(TlsIdentity { chain, key })
}

/// Leaf and chain as one PEM document (leaf first).
pub(crate) fn issued_chain_pem(issued: &IssuedCertificate) -> String {
    let mut pem = issued.certificate_pem.trim_end().to_owned();
    pem.push('\n');
    for cert in &issued.chain_pem {
        pem.push_str(cert.trim_end());
        pem.push('\n');
    }
    pem
}

/// A root store holding the CA certificates of a PEM file; errors name the file.
pub fn root_store_file(path: &std::path::Path) -> Result<Arc<rustls::RootCertStore>> {
    root_store(&path.display().to_string(), &files::read(path)?)
}

/// Encodes DER as one PEM block with the given label.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::with_capacity(body.len() + body.len() / 64 + 2 * label.len() + 40);
    pem.push_str("-----BEGIN ");
    pem.push_str(label);
    pem.push_str("-----\n");
    for line in body.as_bytes().chunks(64) {
        // base64 output is ASCII, so each chunk is valid UTF-8.
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END ");
    pem.push_str(label);
    pem.push_str("-----\n");
    pem
}

/// Seconds since the Unix epoch (negative before it), for validity arithmetic.
pub(crate) fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// rcgen's time type from a `SystemTime`.
pub(crate) fn offset_date_time(time: SystemTime) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds(time))
        .map_err(|e| Error::certificate("certificate validity", e))
}
