//! Where certificates come from: the [`CertIssuer`] seam (a CA that signs CSRs).
//!
//! The CA Lambda client, a local file CA and test fixtures implement it; the server's lazy
//! certificate manager and the agent's certificate cache call it.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;

/// A signed certificate: the leaf first, then the chain up to (and including) the CA, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The leaf certificate, PEM.
    pub certificate_pem: String,
    /// Intermediate and CA certificates, PEM, leaf's issuer first.
    pub chain_pem: Vec<String>,
}

/// Signs certificate signing requests.
///
/// ```
/// use fluidity_core::{CertIssuer, FnIssuer, IssuedCertificate};
/// # async fn demo() -> fluidity_core::Result<()> {
/// let issuer = FnIssuer::new(|csr: &str| Ok(IssuedCertificate {
///     certificate_pem: format!("signed {} bytes", csr.len()),
///     chain_pem: vec![],
/// }));
/// let cert = issuer.issue("-----BEGIN CERTIFICATE REQUEST-----...").await?;
/// assert!(cert.certificate_pem.starts_with("signed"));
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[async_trait]
pub trait CertIssuer: Send + Sync {
    /// Signs `csr_pem` (a PEM `CERTIFICATE REQUEST`) or says why not.
    async fn issue(&self, csr_pem: &str) -> Result<IssuedCertificate>;
}

/// The signing function behind a [`FnIssuer`].
type SignFn = dyn Fn(&str) -> Result<IssuedCertificate> + Send + Sync;

/// An issuer backed by a closure: for tests and embedders with their own CA.
pub struct FnIssuer {
    sign: Arc<SignFn>,
}

impl FnIssuer {
    /// Wraps `sign`.
    pub fn new(sign: impl Fn(&str) -> Result<IssuedCertificate> + Send + Sync + 'static) -> Self {
        FnIssuer {
            sign: Arc::new(sign),
        }
    }
}

impl fmt::Debug for FnIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnIssuer")
    }
}

#[async_trait]
impl CertIssuer for FnIssuer {
    async fn issue(&self, csr_pem: &str) -> Result<IssuedCertificate> {
        (self.sign)(csr_pem)
    }
}
