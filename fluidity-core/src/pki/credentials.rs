//! One credential model for both ends: where this side's certificates come from and which CA
//! the peer's must chain to, validated once from [`CertificateSettings`].

use std::sync::Arc;

use rustls::RootCertStore;

use super::local_ca::LocalCa;
use super::{SigningOptions, TlsIdentity, root_store, root_store_file};
use crate::config::CertificateSettings;
use crate::error::{Error, Result};

/// Where certificates come from.
#[derive(Debug)]
pub enum CredentialSource {
    /// Fixed certificates (`cert_file`, `key_file`, `ca_cert_file`): chains and names are
    /// checked, ARNs and IPs are not.
    Static {
        /// This side's chain and key.
        identity: TlsIdentity,
        /// The CA the peer's certificate must chain to.
        roots: Arc<RootCertStore>,
    },
    /// ARN-bound certificates from a local CA directory (`ca_dir`): self-hosting, `--dev`.
    LocalCa {
        /// The CA (it signs this side's certificates).
        ca: Arc<LocalCa>,
        /// `ca_cert_file` / `ca_cert` if set, else the local CA's own certificate.
        roots: Arc<RootCertStore>,
    },
    /// ARN-bound certificates from the CA service (`ca_service_url`): on AWS.
    CaService {
        /// The service's URL.
        url: String,
        /// `ca_cert_file` / `ca_cert` (required: the service does not hand out its CA).
        roots: Arc<RootCertStore>,
    },
}

fn config_error(reason: &str) -> Error {
    Error::Config {
        origin: "certificate settings".into(),
        reason: reason.into(),
    }
}

impl CredentialSource {
    /// Validates `settings` and loads what they name.
    pub fn resolve(settings: &CertificateSettings) -> Result<Self> {
        let configured_roots = match (&settings.ca_cert_file, &settings.ca_cert) {
            (Some(file), _) => Some(root_store_file(file)?),
            (None, Some(pem)) => Some(root_store("ca_cert", pem.as_bytes())?),
            (None, None) => None,
        };
        match (&settings.cert_file, &settings.key_file) {
            (Some(cert), Some(key)) => {
                let roots = configured_roots.ok_or_else(|| {
                    config_error("static mode (cert_file, key_file) also needs ca_cert_file")
                })?;
                return Ok(CredentialSource::Static {
                    identity: TlsIdentity::from_files(cert, key)?,
                    roots,
                });
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(config_error("cert_file and key_file go together"));
            }
            (None, None) => {}
        }
        match (&settings.ca_dir, &settings.ca_service_url) {
            (Some(_), Some(_)) => Err(config_error(
                "set either ca_dir (a local CA) or ca_service_url (the CA service), not both",
            )),
            (Some(dir), None) => {
                let ca = Arc::new(LocalCa::open_or_create(dir, SigningOptions::default())?);
                let roots = match configured_roots {
                    Some(roots) => roots,
                    None => root_store("local CA", ca.certificate_pem().as_bytes())?,
                };
                Ok(CredentialSource::LocalCa { ca, roots })
            }
            (None, Some(url)) => {
                let roots = configured_roots.ok_or_else(|| {
                    config_error(
                        "ca_service_url also needs the CA certificate: ca_cert_file, or ca_cert \
                         (PEM text, e.g. FLUIDITY_CA_CERT from the CA secret's ca_cert field)",
                    )
                })?;
                Ok(CredentialSource::CaService {
                    url: url.clone(),
                    roots,
                })
            }
            (None, None) => Err(config_error(
                "no certificates: set cert_file/key_file/ca_cert_file (static mode), ca_dir (a \
                 local CA) or ca_service_url (the CA service), or run with --dev",
            )),
        }
    }

    /// Where the certificates come from, for the logs.
    pub fn describe(&self) -> String {
        match self {
            CredentialSource::Static { .. } => "static certificates".into(),
            CredentialSource::LocalCa { ca, .. } => match ca.certificate_path() {
                Some(path) => format!("local CA {}", path.display()),
                None => "in-memory local CA".into(),
            },
            CredentialSource::CaService { url, .. } => format!("CA service {url}"),
        }
    }
}
