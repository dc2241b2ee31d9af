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

mod accept;
pub mod admission;
pub mod config;
pub mod credentials;
pub mod ecs;
pub mod egress;
pub mod exit;
pub mod health;
pub mod metrics;

use std::future::Future;
use std::sync::Arc;

use fluidity_core::TlsTransport;
use fluidity_core::pki::server_certs::ServerCertManager;
use fluidity_core::tls::{TlsAcceptor, WebSocketServer, WebSocketTransport};
use fluidity_core::transport::{Cidr, TransportKind};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::ServerConfig;
pub use fluidity_core;

use crate::egress::EgressPolicy;
use crate::exit::Exits;
use crate::metrics::Metrics;

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
    /// Taken by [`Server::serve`] for the configured transport.
    acceptor: Option<TlsAcceptor>,
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
        let mut server = Server::for_custom_transport(config)?;
        if let Some(manager) = &certificates {
            server.metrics.watch_certificates(manager.clone());
        }
        server.acceptor = Some(acceptor);
        server.certificates = certificates;
        Ok(server)
    }

    /// A server for [`Server::serve_transport`] with a transport the caller builds (which
    /// authenticates agents its own way): `config`'s certificate settings are not read, only
    /// the exits (egress policy, target TLS, timeouts) and the limits. [`Server::serve`] on
    /// such a server fails: it has no transport of its own.
    pub fn for_custom_transport(config: ServerConfig) -> Result<Self, Error> {
        let mut own = egress::local_addresses();
        own.extend(config.server_ip);
        own.push(config.listen_addr);
        let egress =
            EgressPolicy::from_config(config.egress_deny.as_deref(), &config.egress_allow, &own)?;
        let tls = target_tls(config.target_ca_file.as_deref())?;
        let metrics = Arc::new(Metrics::default());
        let exits = Arc::new(Exits {
            http: exit::http::client(egress.clone(), tls.clone(), config.connect_timeout)?,
            egress,
            connect_timeout: config.connect_timeout,
            tls: Arc::new(tls),
            metrics: metrics.clone(),
        });
        Ok(Server {
            config,
            acceptor: None,
            certificates: None,
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

    /// Accepts tunnels on `listener` with the transport the configuration names (mutual TLS,
    /// and with `transport: websocket` WebSocket upgrades too) until `shutdown` completes;
    /// see [`Server::serve_transport`].
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        tracing::info!(address = %listener.local_addr()?, transport = ?self.config.transport, "tunnel port");
        let acceptor = self.acceptor.take().ok_or_else(|| {
            Error::Config(
                "this server has no transport of its own (built with for_custom_transport): \
                     use serve_transport"
                    .into(),
            )
        })?;
        match self.config.transport {
            TransportKind::Tls => {
                let transport = TlsTransport::server(listener, acceptor);
                self.serve_transport(transport, shutdown).await
            }
            TransportKind::WebSocket => {
                let websocket = WebSocketServer {
                    path: self.config.websocket_path.clone(),
                    trusted_proxies: self.trusted_proxies()?,
                };
                let transport = WebSocketTransport::server(listener, acceptor, websocket);
                self.serve_transport(transport, shutdown).await
            }
        }
    }

    fn trusted_proxies(&self) -> Result<Vec<Cidr>, Error> {
        self.config
            .trusted_proxies
            .iter()
            .map(|net| Cidr::parse(net).map_err(|e| Error::Config(format!("trusted_proxies: {e}"))))
            .collect()
    }

    /// The health endpoint and the metrics lines, stopped when `drain` turns true.
    async fn start_side_tasks(&self, drain: &watch::Receiver<bool>) -> Result<(), Error> {
        if let Some(address) = self.config.health_addr {
            let health = TcpListener::bind(address).await?;
            tracing::info!(address = %health.local_addr()?, "health endpoint listening");
            let mut stop = drain.clone();
            tokio::spawn(health::serve(health, self.metrics.clone(), async move {
                let _ = stop.wait_for(|draining| *draining).await;
            }));
        }
        if let Some(interval) = self.config.metrics_interval {
            let metrics = self.metrics.clone();
            let cluster = std::env::var("ECS_CLUSTER_NAME").unwrap_or_else(|_| "fluidity".into());
            let service =
                std::env::var("ECS_SERVICE_NAME").unwrap_or_else(|_| "fluidity-server".into());
            let mut stop = drain.clone();
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
