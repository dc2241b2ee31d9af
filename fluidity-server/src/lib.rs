//! The Fluidity server: accepts mutual-TLS tunnels from agents and makes the real requests.
//!
//! [`run`] takes a bound listener and a shutdown future (mini-redis style), so tests and
//! embedders start a server in-process on an ephemeral port:
//!
//! ```no_run
//! # async fn demo() -> Result<(), fluidity_server::Error> {
//! let mut config = fluidity_server::ServerConfig::default();
//! config.dev = true;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! fluidity_server::run(config, listener, std::future::pending()).await
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod admission;
pub mod config;
pub mod credentials;
pub mod ecs;
pub mod egress;
pub mod exit;
pub mod health;
pub mod metrics;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fluidity_core::driver::Connection;
use fluidity_core::pki::server_certs::ServerCertManager;
use fluidity_core::session::{Role, Session, SessionConfig};
use fluidity_core::tls::TlsAcceptor;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

pub use config::ServerConfig;
pub use fluidity_core;

use crate::admission::{Admitted, HandshakeBudget, HandshakeTicket};
use crate::egress::EgressPolicy;
use crate::exit::Exits;
use crate::metrics::{Failure, Metrics};

/// Everything that can stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// A core operation (certificates, TLS, configuration loading) failed.
    #[error(transparent)]
    Core(#[from] fluidity_core::Error),
    /// A socket operation failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// A configured server, ready to serve listeners.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    acceptor: Arc<TlsAcceptor>,
    /// ARN mode: the manager that signs and renews the server's certificate.
    certificates: Option<Arc<ServerCertManager>>,
    exits: Arc<Exits>,
    metrics: Arc<Metrics>,
}

impl Server {
    /// Builds the TLS acceptor, the egress policy and the HTTP client from `config`.
    pub fn new(mut config: ServerConfig) -> Result<Self, Error> {
        if config.dev {
            credentials::apply_dev_defaults(&mut config);
        }
        let (acceptor, certificates) = credentials::acceptor(&config)?;
        let acceptor = Arc::new(acceptor);
        let mut own = egress::local_addresses();
        own.extend(config.server_ip);
        own.push(config.listen_addr);
        let egress =
            EgressPolicy::from_config(config.egress_deny.as_deref(), &config.egress_allow, &own)?;
        let tls = target_tls(config.target_ca_file.as_deref())?;
        let metrics = Arc::new(Metrics::default());
        if let Some(manager) = &certificates {
            metrics.watch_certificates(manager.clone());
        }
        let exits = Arc::new(Exits {
            http: exit::http::client(egress.clone(), tls.clone(), config.connect_timeout)?,
            egress,
            connect_timeout: config.connect_timeout,
            tls: Arc::new(tls),
            metrics: metrics.clone(),
        });
        Ok(Server {
            config,
            acceptor,
            certificates,
            exits,
            metrics,
        })
    }

    /// The server's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The configuration in force (after `--dev` defaults).
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Accepts tunnels on `listener` until `shutdown` completes, then stops accepting and
    /// lets open streams finish for up to `shutdown_grace`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let (drain_tx, drain_rx) = watch::channel(false);
        if let Some(address) = self.config.health_addr {
            let health = TcpListener::bind(address).await?;
            tracing::info!(address = %health.local_addr()?, "health endpoint listening");
            let mut stop = drain_rx.clone();
            tokio::spawn(health::serve(health, self.metrics.clone(), async move {
                let _ = stop.wait_for(|draining| *draining).await;
            }));
        }
        if let Some(interval) = self.config.metrics_interval {
            let metrics = self.metrics.clone();
            let cluster = std::env::var("ECS_CLUSTER_NAME").unwrap_or_else(|_| "fluidity".into());
            let service =
                std::env::var("ECS_SERVICE_NAME").unwrap_or_else(|_| "fluidity-server".into());
            let mut stop = drain_rx.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(interval);
                loop {
                    tokio::select! {
                        _ = ticker.tick() => println!("{}", metrics.emf_line(&cluster, &service)),
                        _ = stop.wait_for(|draining| *draining) => return,
                    }
                }
            });
        }
        // The certificate is signed (and renewed) here, never because a peer connected. The
        // first signing is tried before accepting, so agents find a certificate at once; if
        // it fails, the server accepts anyway (handshakes fail with the reason) and retries.
        if let Some(manager) = &self.certificates
            && let Err(e) = manager.refresh().await
        {
            tracing::warn!(error = %e, "no server certificate yet; retrying in the background");
        }
        let renewal = self
            .certificates
            .clone()
            .map(|manager| tokio::spawn(manager.maintain()));
        tracing::info!(
            address = %listener.local_addr()?,
            max_connections = self.config.max_connections,
            max_handshakes = self.config.max_handshakes,
            "accepting tunnels"
        );
        let budget = HandshakeBudget::new(
            self.config.max_handshakes,
            self.config.max_handshakes_per_ip,
        );
        let slots = Arc::new(Semaphore::new(self.config.max_connections));
        let tunnel_config = TunnelSettings {
            session: SessionConfig {
                idle_timeout: self.config.dead_agent_timeout,
                heartbeat_interval: self.config.dead_agent_timeout / 3,
                ..SessionConfig::default()
            },
            slots,
            max_connections: self.config.max_connections,
        };
        let tunnel_config = Arc::new(tunnel_config);
        let mut tunnels = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = tunnels.join_next(), if !tunnels.is_empty() => {}
                accepted = listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Out of file descriptors and similar: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let ticket = match budget.admit(peer.ip()) {
                        Ok((ticket, admitted)) => {
                            if admitted == Admitted::EvictedOldest {
                                self.metrics.failed(Failure::HandshakeEvicted);
                            }
                            ticket
                        }
                        Err(refusal) => {
                            tracing::debug!(%peer, %refusal, "closing a connection: no handshake slot");
                            self.metrics.failed(Failure::HandshakeRefused);
                            continue;
                        }
                    };
                    fluidity_core::transport::tune_tunnel_socket(&tcp);
                    tunnels.spawn(tunnel(
                        tcp,
                        peer,
                        ticket,
                        tunnel_config.clone(),
                        self.acceptor.clone(),
                        self.exits.clone(),
                        drain_rx.clone(),
                    ));
                }
            }
        }
        if let Some(renewal) = renewal {
            renewal.abort();
        }
        // Close the listening socket now: the kernel would otherwise keep completing
        // handshakes into the backlog while we drain.
        drop(listener);
        let open = tunnels.len();
        tracing::info!(open, grace = ?self.config.shutdown_grace, "shutting down: draining tunnels");
        let _ = drain_tx.send(true);
        let drained = tokio::time::timeout(self.config.shutdown_grace, async {
            while tunnels.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = tunnels.len(),
                "grace period over: closing the remaining tunnels"
            );
            tunnels.abort_all();
        }
        Ok(())
    }
}

/// Runs a server from `config` on `listener` until `shutdown` completes.
pub async fn run(
    mut config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    ecs::discover(&mut config, |k| std::env::var(k).ok()).await?;
    Server::new(config)?.serve(listener, shutdown).await
}

/// TLS towards targets: TLS 1.2 and 1.3, verified against the Mozilla roots (plus
/// `target_ca_file`).
pub(crate) fn target_tls(
    extra_roots: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(file) = extra_roots {
        for cert in fluidity_core::pki::root_store_file(file)?.roots.iter() {
            roots.roots.push(cert.clone());
        }
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(fluidity_core::pki::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS to targets: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// What every tunnel task shares.
#[derive(Debug)]
struct TunnelSettings {
    session: SessionConfig,
    /// Tunnel slots (`max_connections`), taken only after mutual authentication.
    slots: Arc<Semaphore>,
    max_connections: usize,
}

/// One tunnel: handshake (with its deadlines, evictable while unauthenticated), a tunnel
/// slot, then streams until the agent leaves or the server drains.
async fn tunnel(
    tcp: TcpStream,
    peer: SocketAddr,
    mut ticket: HandshakeTicket,
    settings: Arc<TunnelSettings>,
    acceptor: Arc<TlsAcceptor>,
    exits: Arc<Exits>,
    mut drain: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let established = tokio::select! {
        result = acceptor.accept(tcp, peer) => match result {
            Ok(established) => established,
            Err(_) => {
                // The acceptor logged why.
                exits.metrics.failed(Failure::Handshake);
                return;
            }
        },
        () = ticket.evicted() => {
            tracing::debug!(%peer, "handshake evicted by a newer connection (handshake budget full)");
            return;
        }
    };
    drop(ticket);
    exits.metrics.handshake(started.elapsed());
    let Ok(_slot) = settings.slots.clone().try_acquire_owned() else {
        tracing::warn!(%peer, limit = settings.max_connections, "refusing tunnel: max_connections reached");
        exits.metrics.failed(Failure::ConnectionLimit);
        return;
    };
    let _open = exits.metrics.tunnel_opened();
    let codec = established.codec;
    let session = Session::new(
        Role::Server,
        codec,
        settings.session.clone(),
        Instant::now(),
    );
    let connection = Connection::spawn(established.stream, session);
    tracing::info!(%peer, ?codec, "tunnel open");
    let draining = loop {
        tokio::select! {
            incoming = connection.accept() => match incoming {
                Some(incoming) => exits.spawn(incoming),
                None => break false,
            },
            _ = drain.wait_for(|draining| *draining) => break true,
        }
    };
    if draining {
        // No new streams; close once the open ones are done (the server aborts us after the
        // grace period otherwise).
        loop {
            if connection.stream_count() == 0 {
                connection.close("server shutting down");
                break;
            }
            tokio::select! {
                incoming = connection.accept() => match incoming {
                    Some(incoming) => { let _ = incoming.refuse("server shutting down"); }
                    None => break,
                },
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
    let reason = connection.closed().await;
    if reason.contains("error") || reason.contains("timeout") || reason.contains("malformed") {
        exits.metrics.failed(Failure::TunnelError);
    }
    tracing::info!(%peer, %reason, "tunnel closed");
}
