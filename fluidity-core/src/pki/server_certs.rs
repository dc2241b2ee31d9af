//! The server's own certificate: signed once per (task ARN, server IP), renewed before it
//! expires, and never because of anything a connecting peer sends.
//!
//! TLS 1.3 sends the server's certificate to anyone who opens a connection, before the client
//! is authenticated, so the certificate must say nothing about other users: its only IP SAN is
//! the server's own address (the one agents dial; an agent checks only that). The Go version
//! (and an earlier Fluidity) added the IPs of recent agents and signed a new certificate when
//! a new IP sent a ClientHello, which let a port scanner read users' home IPs and cost a CA
//! call per prober address.
//!
//! [`ServerCertManager::maintain`] gets the certificate at start and renews it when
//! [`ServerCertConfig::renew_fraction`] of its lifetime is left, retrying failures with the
//! shared [`Backoff`]. Handshakes only read [`ServerCertManager::current`]; a handshake that
//! arrives before the first certificate fails at once with the reason.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rcgen::KeyPair;
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;

use super::info::CertificateInfo;
use super::{KeyAlgorithm, TlsIdentity, csr, files, identity_from_issued, issued_chain_pem, keys};
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::issue::CertIssuer;

/// File names inside `cache_dir`.
const KEY_FILE: &str = "server.key";
const CERT_FILE: &str = "server.crt";

/// Settings of the server's certificate manager.
#[derive(Debug, Clone)]
pub struct ServerCertConfig {
    /// The server's own ECS task ARN (CN and URI SAN).
    pub server_arn: String,
    /// The IP agents dial: the certificate's only IP SAN. `None` lets the CA decide (on AWS the
    /// CA function lists the public IP it verified the request came from).
    pub server_ip: Option<IpAddr>,
    /// Where `server.key` (0600) and `server.crt` persist across restarts, if anywhere.
    pub cache_dir: Option<PathBuf>,
    /// Key type generated when there is no cached key.
    pub key_algorithm: KeyAlgorithm,
    /// Renew when no more than this fraction of the lifetime is left. Default 0.1.
    pub renew_fraction: f64,
    /// Longest wait for the issuer. Default 10 s.
    pub issue_timeout: Duration,
    /// Pauses between failed signings: from the first, doubling up to the second. Default
    /// 1 s to 5 min.
    pub retry: (Duration, Duration),
}

impl ServerCertConfig {
    /// Defaults for a server with this ARN and IP.
    pub fn new(server_arn: impl Into<String>, server_ip: impl Into<Option<IpAddr>>) -> Self {
        ServerCertConfig {
            server_arn: server_arn.into(),
            server_ip: server_ip.into().map(|ip| ip.to_canonical()),
            cache_dir: None,
            key_algorithm: KeyAlgorithm::default(),
            renew_fraction: 0.1,
            issue_timeout: Duration::from_secs(10),
            retry: (Duration::from_secs(1), Duration::from_secs(300)),
        }
    }
}

/// The certificate in use and what it says.
struct Current {
    certified: Arc<CertifiedKey>,
    info: CertificateInfo,
}

#[derive(Default)]
struct State {
    current: Option<Current>,
    /// Why the last signing failed, for handshakes that find no certificate.
    last_failure: Option<String>,
}

/// Makes, renews and caches the server's certificate. Share it (`Arc`) between connections.
pub struct ServerCertManager {
    config: ServerCertConfig,
    issuer: Arc<dyn CertIssuer>,
    key: KeyPair,
    key_der: PrivateKeyDer<'static>,
    state: Mutex<State>,
    /// Held while a signing is in flight, so concurrent refreshes share one.
    signing: tokio::sync::Mutex<()>,
    signings: AtomicU64,
}

impl std::fmt::Debug for ServerCertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertManager")
            .field("server_arn", &self.config.server_arn)
            .field("server_ip", &self.config.server_ip)
            .field("signings", &self.signings())
            .finish_non_exhaustive()
    }
}

impl ServerCertManager {
    /// Loads the key from `cache_dir` or generates it (and saves it, 0600), and reuses a cached
    /// certificate that still fits (own ARN, own IP only, fresh, matching key).
    pub fn new(config: ServerCertConfig, issuer: Arc<dyn CertIssuer>) -> Result<Self> {
        let (key, key_der) = load_or_generate_key(&config)?;
        let manager = ServerCertManager {
            config,
            issuer,
            key,
            key_der,
            state: Mutex::new(State::default()),
            signing: tokio::sync::Mutex::new(()),
            signings: AtomicU64::new(0),
        };
        manager.load_cached_certificate();
        Ok(manager)
    }

    /// The settings.
    pub fn config(&self) -> &ServerCertConfig {
        &self.config
    }

    /// How many certificates this manager has requested from the issuer.
    pub fn signings(&self) -> u64 {
        self.signings.load(Ordering::Relaxed)
    }

    /// What the current certificate says, if there is one.
    pub fn info(&self) -> Option<CertificateInfo> {
        self.lock().current.as_ref().map(|c| c.info.clone())
    }

    /// The certificate to present: the current one while it is valid (renewal runs in
    /// [`ServerCertManager::maintain`]). Never signs: a handshake must not cause a CA call.
    pub fn current(&self) -> Result<Arc<CertifiedKey>> {
        let state = self.lock();
        match &state.current {
            Some(current) if current.info.is_fresh(SystemTime::now(), 0.0) => {
                Ok(current.certified.clone())
            }
            _ => Err(Error::issuer(match &state.last_failure {
                Some(reason) => format!("the server has no valid certificate: {reason}"),
                None => "the server has no certificate yet (signing in progress)".into(),
            })),
        }
    }

    /// Signs a certificate now unless the current one is fresh. Concurrent calls share one
    /// signing.
    pub async fn refresh(&self) -> Result<()> {
        if self.is_fresh() {
            return Ok(());
        }
        let _signing = self.signing.lock().await;
        if self.is_fresh() {
            return Ok(());
        }
        match self.sign().await {
            Ok(()) => {
                self.lock().last_failure = None;
                Ok(())
            }
            Err(e) => {
                self.lock().last_failure = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Keeps a fresh certificate: signs at once if there is none, then renews when
    /// `renew_fraction` of its lifetime is left; failures are logged and retried with backoff.
    /// Runs until dropped (spawn it beside the accept loop).
    pub async fn maintain(self: Arc<Self>) {
        let (min, max) = self.config.retry;
        let mut backoff = Backoff::new(min, max);
        loop {
            let pause = match self.refresh().await {
                Ok(()) => {
                    backoff.reset();
                    self.until_renewal()
                }
                Err(e) => {
                    let pause = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?pause, "server certificate signing failed");
                    pause
                }
            };
            tokio::time::sleep(pause).await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a single assignment, so a poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_fresh(&self) -> bool {
        self.lock().current.as_ref().is_some_and(|c| {
            c.info
                .is_fresh(SystemTime::now(), self.config.renew_fraction)
        })
    }

    /// Time until the current certificate is due for renewal (at least one second).
    fn until_renewal(&self) -> Duration {
        let Some(info) = self.info() else {
            return Duration::from_secs(1);
        };
        let lifetime = (info.not_after - info.not_before).max(0) as f64;
        let due = info.not_before as f64 + lifetime * (1.0 - self.config.renew_fraction);
        let now = super::unix_seconds(SystemTime::now()) as f64;
        Duration::from_secs_f64((due - now).max(1.0))
    }

    /// Whether `info` is a certificate this server may present: its ARN, and only its own
    /// address (exactly `server_ip` when known, else one address chosen by the CA).
    fn fits(&self, info: &CertificateInfo) -> std::result::Result<(), String> {
        if info.arn() != Some(self.config.server_arn.as_str()) {
            return Err(format!(
                "it is bound to {:?}, not to {}",
                info.arn(),
                self.config.server_arn
            ));
        }
        let ips: Vec<IpAddr> = info
            .ip_addresses
            .iter()
            .map(|ip| ip.to_canonical())
            .collect();
        let only_own = match self.config.server_ip {
            Some(own) => ips.iter().all(|ip| *ip == own) && !ips.is_empty(),
            None => ips.len() == 1,
        };
        if !only_own {
            return Err(format!(
                "its IP SANs {ips:?} are not exactly the server's own address ({})",
                self.config
                    .server_ip
                    .map_or("one address chosen by the CA".to_owned(), |ip| ip
                        .to_string())
            ));
        }
        Ok(())
    }

    /// Requests, checks, installs and caches a certificate.
    async fn sign(&self) -> Result<()> {
        let sans: Vec<IpAddr> = self.config.server_ip.into_iter().collect();
        let csr = csr::build(&self.key, &self.config.server_arn, &sans)?;
        let issued = tokio::time::timeout(self.config.issue_timeout, self.issuer.issue(&csr))
            .await
            .map_err(|_| {
                Error::Timeout("server certificate signing", self.config.issue_timeout)
            })??;
        self.signings.fetch_add(1, Ordering::Relaxed);
        let identity = identity_from_issued(&issued, self.key_der.clone_key())?;
        let info = identity.leaf_info()?;
        self.fits(&info).map_err(|reason| {
            Error::issuer(format!(
                "the issuer returned a certificate that does not fit: {reason}"
            ))
        })?;
        let certified = identity.certified_key()?;
        tracing::info!(ips = ?info.ip_addresses, serial = %info.serial, "new server certificate");
        if let Some(dir) = &self.config.cache_dir {
            let pem = issued_chain_pem(&issued);
            if let Err(e) = files::write_public(&dir.join(CERT_FILE), pem.as_bytes()) {
                tracing::warn!(error = %e, "could not cache the server certificate");
            }
        }
        self.lock().current = Some(Current { certified, info });
        Ok(())
    }

    /// Reuses `cache_dir/server.crt` if it still fits this server and key.
    fn load_cached_certificate(&self) {
        let Some(dir) = &self.config.cache_dir else {
            return;
        };
        let path = dir.join(CERT_FILE);
        let pem = match files::read_if_exists(&path) {
            Ok(Some(pem)) => pem,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring the cached server certificate");
                return;
            }
        };
        let loaded =
            super::parse_certificates_pem(path.display().to_string(), &pem).and_then(|chain| {
                let identity = TlsIdentity {
                    chain,
                    key: self.key_der.clone_key(),
                };
                Ok((identity.certified_key()?, identity.leaf_info()?))
            });
        match loaded {
            Ok((certified, info)) => {
                let fits = self.fits(&info).and_then(|()| {
                    if info.is_fresh(SystemTime::now(), self.config.renew_fraction) {
                        Ok(())
                    } else {
                        Err("it is due for renewal".into())
                    }
                });
                match fits {
                    Ok(()) => {
                        tracing::info!(ips = ?info.ip_addresses, "reusing the cached server certificate");
                        self.lock().current = Some(Current { certified, info });
                    }
                    Err(reason) => tracing::info!(
                        %reason,
                        "not reusing the cached server certificate; a new one will be made"
                    ),
                }
            }
            Err(e) => tracing::warn!(error = %e, "ignoring the cached server certificate"),
        }
    }
}

fn load_or_generate_key(config: &ServerCertConfig) -> Result<(KeyPair, PrivateKeyDer<'static>)> {
    if let Some(dir) = &config.cache_dir {
        files::ensure_private_dir(dir)?;
        let path = dir.join(KEY_FILE);
        if let Some(pem) = files::read_if_exists(&path)? {
            let what = path.display().to_string();
            let der = keys::parse_private_key_pem(&what, &pem)?;
            return Ok((keys::key_pair(what, &der)?, der));
        }
        let key = keys::generate(config.key_algorithm)?;
        files::write_private(&path, key.serialize_pem().as_bytes())?;
        let der = keys::generated_key_der(&key);
        return Ok((key, der));
    }
    let key = keys::generate(config.key_algorithm)?;
    let der = keys::generated_key_der(&key);
    Ok((key, der))
}
