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

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use fluidity_core::pki::agent_certs::{AgentCertConfig, AgentCertManager};
use fluidity_core::pki::{CredentialSource, root_store_file};
use fluidity_core::tls::{ClientIdentity, TlsClient, WebSocketClient, WebSocketTransport};
use fluidity_core::transport::{HttpProxy, Route, TransportKind};
use fluidity_core::{
    CertIssuer, ServerInfo, ServerLocator, SessionConfig, StaticLocator, TlsTransport, Transport,
};
use tokio::net::TcpListener;

pub use config::AgentConfig;
pub use fluidity_core;

use fluidity_aws::{CaClient, ControlPlaneClient, RequestSigner};

use crate::lifecycle::{ControlPlane, LambdaLocator};
use crate::tunnel::Tunnel;

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
    /// `proxy_address`: the server, the certificates and the transport all come from
    /// `config`.
    pub async fn start(mut config: AgentConfig, proxy_address: SocketAddr) -> Result<Self, Error> {
        let embedded = if config.dev {
            dev::prepare(&mut config).await?
        } else {
            None
        };
        let route = match &config.upstream_proxy {
            Some(url) => Route::HttpProxy(
                HttpProxy::parse(url.expose())
                    .map_err(|e| Error::Config(format!("upstream_proxy {e}")))?,
            ),
            None => Route::Direct,
        };
        let locator = locator(&config)?;
        let identity = client_identity(&config)?;
        let client = TlsClient::new(identity);
        let mut agent = match config.transport {
            TransportKind::Tls => {
                let transport = TlsTransport::client(client, route);
                Agent::with_transport(config, proxy_address, locator, transport)
            }
            TransportKind::WebSocket => {
                let url = config.websocket_url.clone().ok_or_else(|| {
                    Error::Config("transport: websocket needs websocket_url".into())
                })?;
                let extra_roots = config
                    .websocket_ca_file
                    .as_deref()
                    .map(root_store_file)
                    .transpose()?;
                let websocket = WebSocketClient::new(&url, extra_roots.as_deref())?;
                let transport = WebSocketTransport::client(client, route, websocket);
                Agent::with_transport(config, proxy_address, locator, transport)
            }
        };
        agent._embedded = embedded;
        Ok(agent)
    }

    /// An agent over parts the caller supplies: its own [`Transport`] (which authenticates
    /// the server, with whatever certificates and `CertIssuer` it was built with) and
    /// [`ServerLocator`]. `config` still sets the proxy (`proxy_auth`, limits) and the
    /// tunnel's timings.
    pub fn with_transport<T: Transport>(
        config: AgentConfig,
        proxy_address: SocketAddr,
        locator: Arc<dyn ServerLocator>,
        transport: T,
    ) -> Self {
        if !proxy_address.ip().is_loopback() && config.proxy_auth.is_none() {
            tracing::warn!(%proxy_address, "the proxy listens beyond loopback without proxy_auth: anyone who reaches it can use the tunnel");
        }
        let tunnel = Tunnel::start(
            locator.clone(),
            transport,
            config.reconnect_wait,
            SessionConfig {
                idle_timeout: config.dead_server_timeout,
                heartbeat_interval: config.dead_server_timeout / 3,
                max_streams: config.max_streams,
                ..SessionConfig::default()
            },
        );
        let proxy = Arc::new(proxy::Proxy::new(
            tunnel,
            config.proxy_auth.as_ref().map(|auth| auth.expose()),
            proxy_address,
            config.pac_protocol,
        ));
        Agent {
            proxy,
            locator,
            config,
            _embedded: None,
        }
    }

    /// The configuration in force (after `--dev` defaults).
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Whether the tunnel is up right now.
    pub fn tunnel_is_up(&self) -> bool {
        self.proxy.tunnel.is_up()
    }

    /// Serves proxy clients (HTTP and SOCKS5) on `listener`, and SOCKS5 alone on
    /// `socks_port` if set, until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        tracing::info!(address = %listener.local_addr()?, "proxy listening (HTTP and SOCKS5)");
        let limits = fluidity_core::http_server::HttpLimits {
            max_connections: self.config.max_clients,
            header_read_timeout: self.config.header_read_timeout,
            ..Default::default()
        };
        let socks = match self.config.socks_port {
            Some(port) => {
                let address = SocketAddr::new(self.config.local_proxy_addr, port);
                let listener = fluidity_core::transport::listen(address)?;
                tracing::info!(%address, "SOCKS5 listening");
                Some(listener)
            }
            None => None,
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let main = proxy::serve(self.proxy.clone(), listener, limits, stop.cancelled());
        let socks = async {
            if let Some(listener) = socks {
                proxy::serve_socks(self.proxy.clone(), listener, limits, stop.cancelled()).await;
            }
        };
        let stopper = async {
            shutdown.await;
            stop.cancel();
        };
        tokio::join!(main, socks, stopper);
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

/// Where the server is: the control plane (Wake, Query) or a fixed address.
fn locator(config: &AgentConfig) -> Result<Arc<dyn ServerLocator>, Error> {
    match (&config.wake_endpoint, &config.query_endpoint) {
        (Some(wake), Some(query)) => {
            let plane = Arc::new(ControlPlane::new(
                control_plane_client()?,
                wake.clone(),
                query.clone(),
                config.kill_endpoint.clone(),
                config.server_port,
                config.startup_timeout,
            ));
            Ok(Arc::new(LambdaLocator::new(plane)))
        }
        (Some(_), None) | (None, Some(_)) => Err(Error::Config(
            "wake_endpoint and query_endpoint go together".into(),
        )),
        (None, None) => {
            let address = config
                .server_address()
                .map_err(Error::Config)?
                .ok_or_else(|| {
                    Error::Config(
                        "no server: set server_ip (or server = host:port), wake_endpoint and \
                         query_endpoint, or run with --dev"
                            .into(),
                    )
                })?;
            Ok(Arc::new(StaticLocator::new(ServerInfo {
                address,
                server_arn: config.server_arn.clone(),
                agent_ip: config.agent_ip,
            })))
        }
    }
}

fn control_plane_client() -> Result<ControlPlaneClient, Error> {
    Ok(ControlPlaneClient::new(
        fluidity_aws::http_client().map_err(|e| Error::Config(e.to_string()))?,
        Arc::new(RequestSigner::new()),
    ))
}

/// Who the agent is: the shared credential model, with the CA service reached through the
/// signed control-plane client.
fn client_identity(config: &AgentConfig) -> Result<ClientIdentity, Error> {
    let source = CredentialSource::resolve(&config.certificates)?;
    tracing::info!(certificates = %source.describe(), "certificate source");
    let cache = AgentCertConfig {
        cache_dir: config.certificates.cache_dir.clone(),
        ..AgentCertConfig::default()
    };
    let arn = |issuer: Arc<dyn CertIssuer>, roots| {
        if config.server_arn.is_none() && config.wake_endpoint.is_none() {
            return Err(Error::Config(
                "ARN mode needs the server's task ARN: server_arn, or the control plane \
                 (wake_endpoint, query_endpoint)"
                    .into(),
            ));
        }
        Ok(ClientIdentity::Arn {
            certificates: Arc::new(AgentCertManager::new(cache.clone(), issuer)),
            roots,
        })
    };
    match source {
        CredentialSource::Static { identity, roots } => Ok(ClientIdentity::Static {
            identity,
            roots,
            server_name: config.server_name.clone(),
        }),
        CredentialSource::LocalCa { ca, roots } => arn(ca, roots),
        CredentialSource::CaService { url, roots } => {
            arn(Arc::new(CaClient::new(control_plane_client()?, url)), roots)
        }
    }
}
