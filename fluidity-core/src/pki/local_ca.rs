//! A CA kept in a directory (`ca.crt`, `ca.key`), for development, tests and self-hosting
//! without AWS. It signs with the same rules as the CA Lambda.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::ca::{CertificateAuthority, SigningOptions};
use super::{KeyAlgorithm, files};
use crate::error::{Error, Result};
use crate::issue::{CertIssuer, IssuedCertificate};

/// File name of the CA certificate inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA key inside the CA directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// Lifetime of a CA this module creates: ten years.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A local certificate authority implementing [`CertIssuer`].
#[derive(Debug)]
pub struct LocalCa {
    authority: CertificateAuthority,
    directory: Option<PathBuf>,
}

impl LocalCa {
    /// Opens the CA in `directory`, creating the directory (0700) and a new CA (key 0600) if
    /// neither file exists. Exactly one of the two files existing is an error (a lost key must
    /// not be silently replaced: every issued certificate would stop verifying).
    pub fn open_or_create(directory: &Path, options: SigningOptions) -> Result<Self> {
        let cert_path = directory.join(CA_CERT_FILE);
        let key_path = directory.join(CA_KEY_FILE);
        // Another process (or task) may be creating the CA right now: a lone file is given a
        // moment to get its partner before it counts as broken.
        let mut attempts = 0;
        let authority = loop {
            let cert = files::read_if_exists(&cert_path)?;
            let key = files::read_if_exists(&key_path)?;
            match (cert, key) {
                (Some(cert), Some(key)) => {
                    let cert = String::from_utf8_lossy(&cert);
                    let key = String::from_utf8_lossy(&key);
                    break CertificateAuthority::from_pem(&cert, &key, options).map_err(|e| {
                        Error::certificate(format!("CA in {}", directory.display()), e)
                    })?;
                }
                (None, None) => {
                    if let Some(created) = Self::create(directory, &cert_path, &key_path, &options)?
                    {
                        break created;
                    }
                    // Someone else created it first: load theirs.
                }
                _ if attempts < 50 => {
                    attempts += 1;
                    // Startup only, and only while a concurrent creator finishes (≤ 1 s).
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                (Some(_), None) => {
                    return Err(Error::certificate(
                        key_path.display().to_string(),
                        "is missing while the CA certificate exists",
                    ));
                }
                (None, Some(_)) => {
                    return Err(Error::certificate(
                        cert_path.display().to_string(),
                        "is missing while the CA key exists",
                    ));
                }
            }
        };
        Ok(LocalCa {
            authority,
            directory: Some(directory.to_owned()),
        })
    }

    /// Creates a new CA unless another creator wins the race (then `None`). The certificate is
    /// claimed first (an exclusive link), so exactly one CA ever exists in a directory.
    fn create(
        directory: &Path,
        cert_path: &Path,
        key_path: &Path,
        options: &SigningOptions,
    ) -> Result<Option<CertificateAuthority>> {
        files::ensure_private_dir(directory)?;
        let (authority, key_pem) = CertificateAuthority::generate(
            "Fluidity Local CA",
            CA_VALIDITY,
            KeyAlgorithm::EcdsaP256,
            options.clone(),
        )?;
        if !files::create_exclusive(cert_path, authority.certificate_pem().as_bytes(), false)? {
            return Ok(None);
        }
        if !files::create_exclusive(key_path, key_pem.as_bytes(), true)? {
            return Err(Error::certificate(
                key_path.display().to_string(),
                "appeared while this process was creating the CA",
            ));
        }
        tracing::info!(directory = %directory.display(), "created a new local CA");
        Ok(Some(authority))
    }

    /// A CA that lives only in memory (tests, embedders).
    pub fn in_memory(options: SigningOptions) -> Result<Self> {
        let (authority, _key) = CertificateAuthority::generate(
            "Fluidity In-Memory CA",
            CA_VALIDITY,
            KeyAlgorithm::EcdsaP256,
            options,
        )?;
        Ok(LocalCa {
            authority,
            directory: None,
        })
    }

    /// The CA certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        self.authority.certificate_pem()
    }

    /// Path of `ca.crt`, when the CA lives in a directory.
    pub fn certificate_path(&self) -> Option<PathBuf> {
        self.directory.as_ref().map(|dir| dir.join(CA_CERT_FILE))
    }

    /// The signing logic.
    pub fn authority(&self) -> &CertificateAuthority {
        &self.authority
    }

    /// The signing logic, owned (a control plane that applies its own policy).
    pub fn into_authority(self) -> CertificateAuthority {
        self.authority
    }
}

#[async_trait]
impl CertIssuer for LocalCa {
    async fn issue(&self, csr_pem: &str) -> Result<IssuedCertificate> {
        self.authority.sign(csr_pem, SystemTime::now())
    }
}
