//! The agent's certificate: cached in `cache_dir/agent.crt` + `agent.key` (0600) and reused
//! only while it still fits, i.e. its ARN is the current server's, its IP SANs hold the
//! agent's current IP and more than [`AgentCertConfig::renew_fraction`] of its lifetime is
//! left. Anything else gets a new key and CSR. (The Go version reused a certificate for an old
//! server ARN and was then rejected forever after a server restart.)

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::info::CertificateInfo;
use super::{KeyAlgorithm, TlsIdentity, csr, files, identity_from_issued, issued_chain_pem, keys};
use crate::error::{Error, Result};
use crate::issue::CertIssuer;

const KEY_FILE: &str = "agent.key";
const CERT_FILE: &str = "agent.crt";

/// Settings of the agent's certificate cache.
#[derive(Debug, Clone)]
pub struct AgentCertConfig {
    /// Where `agent.crt` and `agent.key` persist, if anywhere (created 0700).
    pub cache_dir: Option<PathBuf>,
    /// Key type for new keys.
    pub key_algorithm: KeyAlgorithm,
    /// Renew when no more than this fraction of the lifetime is left. Default 0.1.
    pub renew_fraction: f64,
    /// Longest wait for the issuer. Default 30 s (a CA Lambda may cold-start).
    pub issue_timeout: Duration,
}

impl Default for AgentCertConfig {
    fn default() -> Self {
        AgentCertConfig {
            cache_dir: None,
            key_algorithm: KeyAlgorithm::default(),
            renew_fraction: 0.1,
            issue_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a cached certificate cannot be reused (for the log).
fn unfit_reason(
    info: &CertificateInfo,
    server_arn: &str,
    agent_ip: IpAddr,
    renew_fraction: f64,
) -> Option<String> {
    if info.arn() != Some(server_arn) {
        return Some(format!(
            "it is bound to {:?}, the server is now {server_arn:?}",
            info.arn()
        ));
    }
    if !info.has_ip(agent_ip) {
        return Some(format!(
            "it lists {:?}, the agent's IP is now {agent_ip}",
            info.ip_addresses
        ));
    }
    if !info.is_fresh(SystemTime::now(), renew_fraction) {
        return Some("it expires soon (or has expired)".into());
    }
    None
}

/// The agent's certificate cache.
pub struct AgentCertManager {
    config: AgentCertConfig,
    issuer: Arc<dyn CertIssuer>,
    cached: tokio::sync::Mutex<Option<(TlsIdentity, CertificateInfo)>>,
    issued: AtomicU64,
}

impl std::fmt::Debug for AgentCertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCertManager")
            .field("config", &self.config)
            .field("issued", &self.issued())
            .finish_non_exhaustive()
    }
}

impl AgentCertManager {
    /// A cache that asks `issuer` for new certificates.
    pub fn new(config: AgentCertConfig, issuer: Arc<dyn CertIssuer>) -> Self {
        AgentCertManager {
            config,
            issuer,
            cached: tokio::sync::Mutex::new(None),
            issued: AtomicU64::new(0),
        }
    }

    /// How many certificates this cache has requested from the issuer.
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    /// The identity to present to the server `server_arn` from `agent_ip`: the cached one if
    /// it fits, else a freshly issued one (which replaces the cache).
    pub async fn identity_for(&self, server_arn: &str, agent_ip: IpAddr) -> Result<TlsIdentity> {
        let mut cached = self.cached.lock().await;
        if cached.is_none() {
            *cached = self.load_from_disk();
        }
        if let Some((identity, info)) = cached.as_ref() {
            match unfit_reason(info, server_arn, agent_ip, self.config.renew_fraction) {
                None => return Ok(identity.clone()),
                Some(reason) => tracing::info!("renewing the agent certificate: {reason}"),
            }
        }
        let fresh = self.request(server_arn, agent_ip).await?;
        *cached = Some(fresh.clone());
        Ok(fresh.0)
    }

    async fn request(
        &self,
        server_arn: &str,
        agent_ip: IpAddr,
    ) -> Result<(TlsIdentity, CertificateInfo)> {
        let key = keys::generate(self.config.key_algorithm)?;
        let csr = csr::build(&key, server_arn, &[agent_ip])?;
        let issued = tokio::time::timeout(self.config.issue_timeout, self.issuer.issue(&csr))
            .await
            .map_err(|_| {
                Error::Timeout("agent certificate signing", self.config.issue_timeout)
            })??;
        self.issued.fetch_add(1, Ordering::Relaxed);
        let identity = identity_from_issued(&issued, keys::generated_key_der(&key))?;
        // Refuse what the issuer got wrong now, rather than at every handshake.
        identity.certified_key()?;
        let info = identity.leaf_info()?;
        if let Some(reason) = unfit_reason(&info, server_arn, agent_ip, self.config.renew_fraction)
        {
            return Err(Error::issuer(format!(
                "the issued certificate does not fit: {reason}"
            )));
        }
        tracing::info!(server_arn, %agent_ip, serial = %info.serial, "new agent certificate");
        if let Some(dir) = &self.config.cache_dir {
            let saved = files::ensure_private_dir(dir)
                .and_then(|()| {
                    files::write_private(&dir.join(KEY_FILE), key.serialize_pem().as_bytes())
                })
                .and_then(|()| {
                    files::write_public(&dir.join(CERT_FILE), issued_chain_pem(&issued).as_bytes())
                });
            if let Err(e) = saved {
                tracing::warn!(error = %e, "could not cache the agent certificate");
            }
        }
        Ok((identity, info))
    }

    fn load_from_disk(&self) -> Option<(TlsIdentity, CertificateInfo)> {
        let dir = self.config.cache_dir.as_ref()?;
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let loaded = (|| {
            let (Some(chain), Some(key)) = (
                files::read_if_exists(&cert_path)?,
                files::read_if_exists(&key_path)?,
            ) else {
                return Ok(None);
            };
            let identity = TlsIdentity {
                chain: super::parse_certificates_pem(cert_path.display().to_string(), &chain)?,
                key: keys::parse_private_key_pem(key_path.display().to_string(), &key)?,
            };
            identity.certified_key()?;
            let info = identity.leaf_info()?;
            Ok::<_, Error>(Some((identity, info)))
        })();
        loaded.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring the cached agent certificate");
            None
        })
    }
}
