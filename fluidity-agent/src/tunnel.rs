//! The agent's one tunnel: established in the background, re-established with jittered
//! exponential backoff whenever it drops; requests wait for it up to `reconnect_wait`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fluidity_core::backoff::Backoff;
use fluidity_core::codec::CodecKind;
use fluidity_core::driver::Connection;
use fluidity_core::envelope::IamAuthRequest;
use fluidity_core::locate::{ServerInfo, ServerLocator};
use fluidity_core::pki::TlsIdentity;
use fluidity_core::pki::agent_certs::AgentCertManager;
use fluidity_core::session::{Role, Session, SessionConfig};
use fluidity_core::tls::{DEFAULT_CONNECT_TIMEOUT, TlsConnector};
use rustls::RootCertStore;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::upstream::UpstreamProxy;

/// First and longest pause between reconnection attempts.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// See [`BACKOFF_MIN`].
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A tunnel that stayed up this long proved the path works: the backoff starts over. One that
/// dropped sooner (a server that rejects our certificate after TLS 1.3 completed on our side,
/// a proxy that cuts connections) counts as a failed attempt.
const STABLE_TUNNEL: Duration = Duration::from_secs(30);

/// How long a new tunnel may take to deliver the server's first frame.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// How the agent proves who it is and checks the server.
#[derive(Debug)]
pub enum Credentials {
    /// Fixed certificate; standard name verification of the server.
    Static {
        /// Our chain and key.
        identity: TlsIdentity,
        /// The CA.
        roots: Arc<RootCertStore>,
        /// Name to verify (default: the dialled IP).
        server_name: Option<String>,
    },
    /// Certificates bound to the server's task ARN, from a `CertIssuer`.
    Arn {
        /// The certificate cache.
        certificates: Arc<AgentCertManager>,
        /// The CA.
        roots: Arc<RootCertStore>,
    },
}

/// The tunnel's state as requests see it.
#[derive(Debug, Clone)]
enum State {
    /// Not connected (yet, or again); the last failure if any.
    Down(Option<String>),
    /// Connected.
    Up(Connection),
}

/// The reconnecting tunnel client.
#[derive(Debug)]
pub struct Tunnel {
    state: watch::Receiver<State>,
    reconnect_wait: Duration,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tunnel {
    /// Starts maintaining a tunnel to the server `locator` finds.
    pub fn start(
        locator: Arc<dyn ServerLocator>,
        credentials: Credentials,
        upstream: Option<UpstreamProxy>,
        reconnect_wait: Duration,
        dead_server_timeout: Duration,
    ) -> Self {
        let (sender, state) = watch::channel(State::Down(None));
        let dialer = Dialer {
            locator,
            credentials,
            upstream,
            session: SessionConfig {
                idle_timeout: dead_server_timeout,
                heartbeat_interval: dead_server_timeout / 3,
                ..SessionConfig::default()
            },
        };
        let task = tokio::spawn(maintain(dialer, sender));
        Tunnel {
            state,
            reconnect_wait,
            task,
        }
    }

    /// The current tunnel, waiting up to `reconnect_wait` for one.
    pub async fn connection(&self) -> Result<Connection, String> {
        let mut state = self.state.clone();
        let wait = state.wait_for(|s| matches!(s, State::Up(c) if c.closed_reason().is_none()));
        match tokio::time::timeout(self.reconnect_wait, wait).await {
            Ok(Ok(state)) => match &*state {
                State::Up(connection) => Ok(connection.clone()),
                State::Down(_) => Err("tunnel unavailable".into()),
            },
            Ok(Err(_)) => Err("the tunnel task stopped".into()),
            Err(_) => {
                let last = match &*self.state.borrow() {
                    State::Down(Some(reason)) => format!(": {reason}"),
                    _ => String::new(),
                };
                Err(format!(
                    "the tunnel to the server is down and did not come back within {:?}{last}",
                    self.reconnect_wait
                ))
            }
        }
    }

    /// Whether the tunnel is up right now.
    pub fn is_up(&self) -> bool {
        matches!(&*self.state.borrow(), State::Up(c) if c.closed_reason().is_none())
    }
}

struct Dialer {
    locator: Arc<dyn ServerLocator>,
    credentials: Credentials,
    upstream: Option<UpstreamProxy>,
    session: SessionConfig,
}

async fn maintain(dialer: Dialer, state: watch::Sender<State>) {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let mut first = true;
    loop {
        let started = Instant::now();
        let outcome = dialer.connect(first).await;
        first = false;
        let failure = match outcome {
            Ok((connection, info)) => {
                tracing::info!(server = %info.address, took = ?started.elapsed(), "tunnel up");
                let up_since = Instant::now();
                let _ = state.send(State::Up(connection.clone()));
                let reason = connection.closed().await;
                let _ = state.send(State::Down(Some(format!("tunnel lost: {reason}"))));
                if up_since.elapsed() >= STABLE_TUNNEL {
                    tracing::warn!(%reason, "tunnel lost; reconnecting");
                    backoff.reset();
                    None
                } else {
                    Some(format!(
                        "tunnel lost after {:?}: {reason}",
                        up_since.elapsed()
                    ))
                }
            }
            Err(reason) => {
                let _ = state.send(State::Down(Some(reason.clone())));
                Some(reason)
            }
        };
        if let Some(reason) = failure {
            let pause = backoff.next_delay();
            tracing::warn!(%reason, retry_in = ?pause, "tunnel connection failed");
            tokio::time::sleep(pause).await;
        }
        if state.is_closed() {
            return;
        }
    }
}

impl Dialer {
    async fn connect(&self, first: bool) -> Result<(Connection, ServerInfo), String> {
        let info = if first {
            self.locator.locate().await
        } else {
            self.locator.relocate().await
        }
        .map_err(|e| format!("locating the server: {e}"))?;
        let connector = match &self.credentials {
            Credentials::Static {
                identity,
                roots,
                server_name,
            } => TlsConnector::static_identity(identity, roots.clone(), server_name.as_deref()),
            Credentials::Arn {
                certificates,
                roots,
            } => {
                let arn = info
                    .server_arn
                    .as_deref()
                    .ok_or("the locator gave no server ARN")?;
                let agent_ip = match info.agent_ip {
                    Some(ip) => ip,
                    None => route_source(info.address).await?,
                };
                let identity = certificates
                    .identity_for(arn, agent_ip)
                    .await
                    .map_err(|e| format!("getting the agent certificate: {e}"))?;
                TlsConnector::arn(&identity, roots.clone(), arn)
            }
        }
        .map_err(|e| e.to_string())?;
        let tcp = match &self.upstream {
            None => tokio::time::timeout(DEFAULT_CONNECT_TIMEOUT, TcpStream::connect(info.address))
                .await
                .map_err(|_| format!("connecting to {} timed out", info.address))?
                .map_err(|e| format!("connecting to {}: {e}", info.address))?,
            Some(proxy) => proxy.connect(info.address, DEFAULT_CONNECT_TIMEOUT).await?,
        };
        fluidity_core::transport::tune_tunnel_socket(&tcp);
        let established = connector
            .handshake(tcp, info.address)
            .await
            .map_err(|e| e.to_string())?;
        let mut session = Session::new(
            Role::Client,
            established.codec,
            self.session.clone(),
            Instant::now(),
        );
        if established.codec == CodecKind::Json {
            // A server without ALPN is the Go server: it requires this envelope first.
            session.send_iam_auth(iam_auth_request());
        } else {
            session.send_hello();
        }
        let connection = Connection::spawn(established.stream, session);
        // Over TLS 1.3 our handshake completes before the server has checked our certificate:
        // only its first frame says it accepted us.
        match tokio::time::timeout(FIRST_FRAME_TIMEOUT, connection.ready()).await {
            Ok(Ok(())) => Ok((connection, info)),
            Ok(Err(reason)) => Err(format!(
                "the server closed the tunnel before its first frame (did it reject our \
                 certificate? its log says why): {reason}"
            )),
            Err(_) => {
                connection.close("no first frame from the server");
                Err(format!(
                    "the server sent nothing within {FIRST_FRAME_TIMEOUT:?} of the handshake"
                ))
            }
        }
    }
}

/// The local address the route to `server` uses: what the server will see as our IP when no
/// NAT is in between. (A UDP "connect" sends nothing; it only consults the routing table.)
async fn route_source(server: SocketAddr) -> Result<IpAddr, String> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().map_err(|_| "bad bind address")?
    } else {
        "[::]:0".parse().map_err(|_| "bad bind address")?
    };
    let socket = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("finding the agent's IP: {e}"))?;
    socket
        .connect(server)
        .await
        .map_err(|e| format!("finding the agent's IP (route to {server}): {e}"))?;
    socket
        .local_addr()
        .map(|a| a.ip())
        .map_err(|e| format!("finding the agent's IP: {e}"))
}

/// The Go server's mandatory first envelope. Its server checks only that `id`,
/// `access_key_id` and `signature` are non-empty (reference §2.6); mutual TLS is the real
/// authentication, so placeholders are sent.
fn iam_auth_request() -> IamAuthRequest {
    IamAuthRequest {
        id: format!("{:032x}", rand::random::<u128>()),
        timestamp: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        service: "tunnel".into(),
        region: std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
        access_key_id: "fluidity-agent".into(),
        signature: "mutual-tls".into(),
        signed_headers: String::new(),
    }
}
