//! The Fluidity agent: a local HTTP proxy (plain HTTP, CONNECT, WebSocket) that carries all
//! traffic over one mutual-TLS tunnel to a Fluidity server.
//!
//! [`run`] takes a bound listener and a shutdown future, so tests and embedders run an agent
//! in-process:
//!
//! ```no_run
//! # async fn demo() -> Result<(), fluidity_agent::Error> {
//! let mut config = fluidity_agent::AgentConfig::default();
//! config.dev = true; // with an embedded server
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! fluidity_agent::run(config, listener, std::future::pending()).await
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod breaker;
pub mod config;
pub mod dev;
pub mod lifecycle;
mod proxy;
pub mod tunnel;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use fluidity_core::locate::{ServerInfo, ServerLocator, StaticLocator};
use fluidity_core::pki::agent_certs::{AgentCertConfig, AgentCertManager};
use fluidity_core::pki::local_ca::LocalCa;
use fluidity_core::pki::{SigningOptions, TlsIdentity, root_store, root_store_file};
use tokio::net::TcpListener;

pub use config::AgentConfig;
pub use fluidity_core;

use fluidity_aws::{CaClient, ControlPlaneClient, RequestSigner};

use crate::lifecycle::{ControlPlane, LambdaLocator};
use crate::tunnel::{Credentials, Tunnel};
use crate::upstream::UpstreamProxy;

/// Everything that can stop the agent from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// A core operation (certificates, configuration loading) failed.
    #[error(transparent)]
    Core(#[from] fluidity_core::Error),
    /// The embedded development server could not start.
    #[error(transparent)]
    Server(#[from] fluidity_server::Error),
    /// A socket operation failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A running agent: its tunnel and proxy state.
pub struct Agent {
    proxy: Arc<proxy::Proxy>,
    locator: Arc<dyn ServerLocator>,
    config: AgentConfig,
    _embedded: Option<dev::EmbeddedServer>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Prepares the tunnel (it connects in the background) for a proxy listening on
    /// `proxy_address`.
    pub async fn start(mut config: AgentConfig, proxy_address: SocketAddr) -> Result<Self, Error> {
        let embedded = if config.dev {
            dev::prepare(&mut config).await?
        } else {
            None
        };
        let upstream = config
            .upstream_proxy
            .as_ref()
            .map(|url| UpstreamProxy::parse(url.expose()))
            .transpose()
            .map_err(Error::Config)?;
        let (locator, credentials): (Arc<dyn ServerLocator>, Credentials) =
            match (&config.wake_endpoint, &config.query_endpoint) {
                (Some(wake), Some(query)) => {
                    let client = ControlPlaneClient::new(
                        fluidity_aws::http_client().map_err(|e| Error::Config(e.to_string()))?,
                        Arc::new(RequestSigner::new()),
                    );
                    let plane = Arc::new(ControlPlane::new(
                        client.clone(),
                        wake.clone(),
                        query.clone(),
                        config.kill_endpoint.clone(),
                        config.server_port,
                        config.startup_timeout,
                    ));
                    let credentials = if let Some(ca_url) = &config.ca_service_url {
                        let ca = config.ca_cert_file.as_ref().ok_or_else(|| {
                            Error::Config(
                                "ca_service_url also needs ca_cert_file (the CA certificate)"
                                    .into(),
                            )
                        })?;
                        Credentials::Arn {
                            certificates: Arc::new(AgentCertManager::new(
                                AgentCertConfig {
                                    cache_dir: config.cache_dir.clone(),
                                    ..AgentCertConfig::default()
                                },
                                Arc::new(CaClient::new(client, ca_url.clone())),
                            )),
                            roots: root_store_file(ca)?,
                        }
                    } else {
                        credentials(&config)?
                    };
                    (Arc::new(LambdaLocator::new(plane)), credentials)
                }
                (Some(_), None) | (None, Some(_)) => {
                    return Err(Error::Config(
                        "wake_endpoint and query_endpoint go together".into(),
                    ));
                }
                (None, None) => {
                    let address =
                        config
                            .server_address()
                            .map_err(Error::Config)?
                            .ok_or_else(|| {
                                Error::Config(
                            "no server: set server_ip (or server = host:port), wake_endpoint and \
                             query_endpoint, or run with --dev"
                                .into(),
                        )
                            })?;
                    let locator = Arc::new(StaticLocator::new(ServerInfo {
                        address,
                        server_arn: config.server_arn.clone(),
                        agent_ip: config.agent_ip,
                    }));
                    (locator, credentials(&config)?)
                }
            };
        if !proxy_address.ip().is_loopback() && config.proxy_auth.is_none() {
            tracing::warn!(%proxy_address, "the proxy listens beyond loopback without proxy_auth: anyone who reaches it can use the tunnel");
        }
        let tunnel = Tunnel::start(
            locator.clone(),
            credentials,
            upstream,
            config.reconnect_wait,
            config.dead_server_timeout,
        );
        let proxy = Arc::new(proxy::Proxy::new(
            tunnel,
            config.proxy_auth.as_ref().map(|auth| auth.expose()),
            proxy_address,
        ));
        Ok(Agent {
            proxy,
            locator,
            config,
            _embedded: embedded,
        })
    }

    /// The configuration in force (after `--dev` defaults).
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Whether the tunnel is up right now.
    pub fn tunnel_is_up(&self) -> bool {
        self.proxy.tunnel.is_up()
    }

    /// Serves proxy clients on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        tracing::info!(address = %listener.local_addr()?, "proxy listening");
        let limits = fluidity_core::http_server::HttpLimits {
            max_connections: self.config.max_clients,
            header_read_timeout: self.config.header_read_timeout,
            ..Default::default()
        };
        proxy::serve(self.proxy.clone(), listener, limits, shutdown).await;
        // Tell the control plane this agent is done (Kill, exactly once).
        if let Err(e) = self.locator.release().await {
            tracing::warn!(error = %e, "releasing the server failed");
        }
        Ok(())
    }
}

/// Runs an agent from `config`, serving proxy clients on `listener` until `shutdown`.
pub async fn run(
    config: AgentConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let agent = Agent::start(config, listener.local_addr()?).await?;
    agent.serve(listener, shutdown).await
}

fn credentials(config: &AgentConfig) -> Result<Credentials, Error> {
    match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => {
            let ca = config.ca_cert_file.as_ref().ok_or_else(|| {
                Error::Config("static mode (cert_file, key_file) also needs ca_cert_file".into())
            })?;
            Ok(Credentials::Static {
                identity: TlsIdentity::from_files(cert, key)?,
                roots: root_store_file(ca)?,
                server_name: config.server_name.clone(),
            })
        }
        (Some(_), None) | (None, Some(_)) => {
            Err(Error::Config("cert_file and key_file go together".into()))
        }
        (None, None) => {
            let ca_dir = config.ca_dir.as_ref().ok_or_else(|| {
                Error::Config(
                    "no certificates: set cert_file/key_file/ca_cert_file (static mode), or server_arn \
                     and ca_dir (ARN mode with a local CA), or run with --dev"
                        .into(),
                )
            })?;
            if config.server_arn.is_none() {
                return Err(Error::Config("ARN mode (ca_dir) needs server_arn".into()));
            }
            let ca = Arc::new(LocalCa::open_or_create(ca_dir, SigningOptions::default())?);
            let roots = match &config.ca_cert_file {
                Some(file) => root_store_file(file)?,
                None => root_store("local CA", ca.certificate_pem().as_bytes())?,
            };
            let certificates = Arc::new(AgentCertManager::new(
                AgentCertConfig {
                    cache_dir: config.cache_dir.clone(),
                    ..AgentCertConfig::default()
                },
                ca,
            ));
            Ok(Credentials::Arn {
                certificates,
                roots,
            })
        }
    }
}
