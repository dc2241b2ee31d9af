//! The server's certificate, made lazily.
//!
//! The server starts with a key and no certificate. The first TLS ClientHello from an agent IP
//! the current certificate does not list makes it request one through [`CertIssuer`]: CN and
//! URI SAN = its own task ARN, IP SANs = its own IP plus the agent IPs it currently serves
//! (most recently seen first, at most [`ServerCertConfig::max_agent_ips`]). Known agents reuse
//! the cached certificate.
//!
//! Unlike the Go version, signing runs inside one connection's handshake (never in the accept
//! loop), concurrent first connections share one signing, a given IP can trigger at most one
//! signing per [`ServerCertConfig::new_ip_interval`], a failed signing backs off, and the SAN
//! list is bounded. An agent does not need its own IP in the server's SANs (it checks the IP
//! it dialled), so when a new IP is rate-limited the current certificate is served as is.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use rcgen::KeyPair;
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;

use super::info::CertificateInfo;
use super::{KeyAlgorithm, TlsIdentity, csr, files, identity_from_issued, issued_chain_pem, keys};
use crate::error::{Error, Result};
use crate::issue::CertIssuer;

/// File names inside `cache_dir`.
const KEY_FILE: &str = "server.key";
const CERT_FILE: &str = "server.crt";

/// Most IPs remembered for rate limiting at once; beyond it the oldest are forgotten.
const MAX_TRACKED_ATTEMPTS: usize = 4096;

/// Settings of the server's certificate manager.
#[derive(Debug, Clone)]
pub struct ServerCertConfig {
    /// The server's own ECS task ARN (CN and URI SAN).
    pub server_arn: String,
    /// The server's reachable IP (the one agents dial), always the first IP SAN.
    pub server_ip: IpAddr,
    /// Where `server.key` (0600) and `server.crt` persist across restarts, if anywhere.
    pub cache_dir: Option<PathBuf>,
    /// Key type generated when there is no cached key.
    pub key_algorithm: KeyAlgorithm,
    /// Most agent IPs listed in the certificate (least recently seen dropped). Default 32.
    pub max_agent_ips: usize,
    /// Renew when no more than this fraction of the lifetime is left. Default 0.1.
    pub renew_fraction: f64,
    /// One IP may trigger at most one signing per this interval. Default 60 s.
    pub new_ip_interval: Duration,
    /// After a failed signing, no new one for this long. Default 5 s.
    pub failure_backoff: Duration,
    /// Longest wait for the issuer. Default 10 s.
    pub issue_timeout: Duration,
}

impl ServerCertConfig {
    /// Defaults for a server with this ARN and IP.
    pub fn new(server_arn: impl Into<String>, server_ip: IpAddr) -> Self {
        ServerCertConfig {
            server_arn: server_arn.into(),
            server_ip: server_ip.to_canonical(),
            cache_dir: None,
            key_algorithm: KeyAlgorithm::default(),
            max_agent_ips: 32,
            renew_fraction: 0.1,
            new_ip_interval: Duration::from_secs(60),
            failure_backoff: Duration::from_secs(5),
            issue_timeout: Duration::from_secs(10),
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
    /// Agent IPs served, most recently seen first, bounded by `max_agent_ips`.
    agents: VecDeque<IpAddr>,
    /// When each IP last triggered a signing.
    attempts: HashMap<IpAddr, Instant>,
    /// A failed signing: no retry before the instant; the reason is reported meanwhile.
    failed: Option<(Instant, String)>,
}

/// Makes and caches the server's certificate. Share it (`Arc`) between connections.
pub struct ServerCertManager {
    config: ServerCertConfig,
    issuer: Arc<dyn CertIssuer>,
    key: KeyPair,
    key_der: PrivateKeyDer<'static>,
    state: Mutex<State>,
    /// Held while a signing is in flight, so concurrent first connections share it.
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
    /// certificate that still fits (own ARN, own IP, fresh, matching key).
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
    pub fn current(&self) -> Option<CertificateInfo> {
        self.lock().current.as_ref().map(|c| c.info.clone())
    }

    /// The certificate to present to a connection from `agent_ip`, signing a new one when the
    /// current one does not list that IP (rate limits permitting) or is due for renewal.
    pub async fn certificate_for(&self, agent_ip: IpAddr) -> Result<Arc<CertifiedKey>> {
        let agent_ip = agent_ip.to_canonical();
        if let Some(certified) = self.covering(agent_ip) {
            return Ok(certified);
        }
        let _signing = self.signing.lock().await;
        // Another connection may have signed for this IP while we waited.
        if let Some(certified) = self.covering(agent_ip) {
            return Ok(certified);
        }
        let sans = match self.plan_signing(agent_ip)? {
            Plan::Serve(certified) => return Ok(certified),
            Plan::Sign(sans) => sans,
        };
        match self.sign(&sans).await {
            Ok(certified) => Ok(certified),
            Err(e) => {
                tracing::warn!(error = %e, agent_ip = %agent_ip, "server certificate signing failed");
                self.lock().failed =
                    Some((Instant::now() + self.config.failure_backoff, e.to_string()));
                Err(e)
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state inconsistent (every update
        // is a single assignment), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current certificate if it is fresh and lists `agent_ip` (which is then marked as
    /// recently seen).
    fn covering(&self, agent_ip: IpAddr) -> Option<Arc<CertifiedKey>> {
        let mut state = self.lock();
        let current = state.current.as_ref()?;
        if !current
            .info
            .is_fresh(SystemTime::now(), self.config.renew_fraction)
            || !current.info.has_ip(agent_ip)
        {
            return None;
        }
        let certified = current.certified.clone();
        if agent_ip != self.config.server_ip
            && let Some(position) = state.agents.iter().position(|ip| *ip == agent_ip)
        {
            state.agents.remove(position);
            state.agents.push_front(agent_ip);
        }
        Some(certified)
    }

    /// Decides, under the state lock, whether to sign and with which SANs.
    fn plan_signing(&self, agent_ip: IpAddr) -> Result<Plan> {
        let now = Instant::now();
        let mut state = self.lock();
        let fresh_current = state
            .current
            .as_ref()
            .filter(|c| {
                c.info
                    .is_fresh(SystemTime::now(), self.config.renew_fraction)
            })
            .map(|c| c.certified.clone());
        if let Some((until, reason)) = &state.failed {
            if now < *until {
                return match fresh_current {
                    Some(certified) => Ok(Plan::Serve(certified)),
                    None => Err(Error::Issuer(format!(
                        "no server certificate: the last signing failed ({reason}); retrying in {:?}",
                        until.saturating_duration_since(now)
                    ))),
                };
            }
            state.failed = None;
        }
        let interval = self.config.new_ip_interval;
        let recently_tried = state
            .attempts
            .get(&agent_ip)
            .is_some_and(|at| now.duration_since(*at) < interval);
        if recently_tried && let Some(certified) = fresh_current {
            tracing::debug!(%agent_ip, "not re-signing for this IP yet; serving the current certificate");
            return Ok(Plan::Serve(certified));
        }
        state
            .attempts
            .retain(|_, at| now.duration_since(*at) < interval);
        if state.attempts.len() >= MAX_TRACKED_ATTEMPTS
            && let Some(oldest) = state
                .attempts
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(ip, _)| *ip)
        {
            state.attempts.remove(&oldest);
        }
        state.attempts.insert(agent_ip, now);
        if agent_ip != self.config.server_ip {
            state.agents.retain(|ip| *ip != agent_ip);
            state.agents.push_front(agent_ip);
            state.agents.truncate(self.config.max_agent_ips);
        }
        let mut sans = Vec::with_capacity(state.agents.len() + 1);
        sans.push(self.config.server_ip);
        sans.extend(state.agents.iter().copied());
        Ok(Plan::Sign(sans))
    }

    /// Requests, checks, installs and caches a certificate for `sans`.
    async fn sign(&self, sans: &[IpAddr]) -> Result<Arc<CertifiedKey>> {
        let csr = csr::build(&self.key, &self.config.server_arn, sans)?;
        let issued = tokio::time::timeout(self.config.issue_timeout, self.issuer.issue(&csr))
            .await
            .map_err(|_| {
                Error::Timeout("server certificate signing", self.config.issue_timeout)
            })??;
        self.signings.fetch_add(1, Ordering::Relaxed);
        let identity = identity_from_issued(&issued, self.key_der.clone_key())?;
        let info = identity.leaf_info()?;
        if info.arn() != Some(self.config.server_arn.as_str())
            || !info.has_ip(self.config.server_ip)
        {
            return Err(Error::Issuer(format!(
                "the issuer returned a certificate for {:?} / {:?}, not for {} / {}",
                info.arn(),
                info.ip_addresses,
                self.config.server_arn,
                self.config.server_ip
            )));
        }
        let certified = identity.certified_key()?;
        tracing::info!(ips = ?info.ip_addresses, serial = %info.serial, "new server certificate");
        if let Some(dir) = &self.config.cache_dir {
            let pem = issued_chain_pem(&issued);
            if let Err(e) = files::write_public(&dir.join(CERT_FILE), pem.as_bytes()) {
                tracing::warn!(error = %e, "could not cache the server certificate");
            }
        }
        self.lock().current = Some(Current {
            certified: certified.clone(),
            info,
        });
        Ok(certified)
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
            Ok((certified, info))
                if info.arn() == Some(self.config.server_arn.as_str())
                    && info.has_ip(self.config.server_ip)
                    && info.is_fresh(SystemTime::now(), self.config.renew_fraction) =>
            {
                let mut state = self.lock();
                state.agents = info
                    .ip_addresses
                    .iter()
                    .map(|ip| ip.to_canonical())
                    .filter(|ip| *ip != self.config.server_ip)
                    .take(self.config.max_agent_ips)
                    .collect();
                tracing::info!(ips = ?info.ip_addresses, "reusing the cached server certificate");
                state.current = Some(Current { certified, info });
            }
            Ok(_) => tracing::info!(
                "the cached server certificate does not fit this server; a new one will be made"
            ),
            Err(e) => tracing::warn!(error = %e, "ignoring the cached server certificate"),
        }
    }
}

enum Plan {
    /// Serve this certificate without signing.
    Serve(Arc<CertifiedKey>),
    /// Sign a certificate listing these IPs.
    Sign(Vec<IpAddr>),
}

fn load_or_generate_key(config: &ServerCertConfig) -> Result<(KeyPair, PrivateKeyDer<'static>)> {
    if let Some(dir) = &config.cache_dir {
        let path = dir.join(KEY_FILE);
        if let Some(pem) = files::read_if_exists(&path)? {
            let what = path.display().to_string();
            let der = keys::parse_private_key_pem(&what, &pem)?;
            return Ok((keys::key_pair(what, &der)?, der));
        }
        files::ensure_private_dir(dir)?;
        let key = keys::generate(config.key_algorithm)?;
        files::write_private(&path, key.serialize_pem().as_bytes())?;
        let der = keys::generated_key_der(&key);
        return Ok((key, der));
    }
    let key = keys::generate(config.key_algorithm)?;
    let der = keys::generated_key_der(&key);
    Ok((key, der))
}
