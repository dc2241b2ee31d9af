//! Who the agent is, for each connection: a fixed certificate, or certificates bound to the
//! server it is about to reach (from a [`crate::CertIssuer`], cached).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;

use super::{DEFAULT_CONNECT_TIMEOUT, TlsConnector};
use crate::error::{Error, Result};
use crate::locate::ServerInfo;
use crate::pki::TlsIdentity;
use crate::pki::agent_certs::AgentCertManager;

/// How the agent proves who it is and checks the server.
#[derive(Debug, Clone)]
pub enum ClientIdentity {
    /// A fixed certificate; the server's name is verified the standard way.
    Static {
        /// Our chain and key.
        identity: TlsIdentity,
        /// The CA the server's certificate must chain to.
        roots: Arc<RootCertStore>,
        /// The name to verify (default: the server's IP).
        server_name: Option<String>,
    },
    /// Certificates bound to the server's task ARN and our IP, from a `CertIssuer`.
    Arn {
        /// The certificate cache (and issuer).
        certificates: Arc<AgentCertManager>,
        /// The CA the server's certificate must chain to.
        roots: Arc<RootCertStore>,
    },
}

/// The client side of the tunnel's mutual TLS, for any transport: builds the connector for
/// each server it is about to reach.
#[derive(Debug, Clone)]
pub struct TlsClient {
    identity: ClientIdentity,
    connect_timeout: Duration,
}

impl TlsClient {
    /// A client presenting `identity`.
    pub fn new(identity: ClientIdentity) -> Self {
        TlsClient {
            identity,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The deadline for reaching the server's (or its load balancer's) TCP port.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The connector for `server`: in ARN mode with a certificate for the server's ARN and
    /// our IP (signed now, or reused from the cache).
    pub async fn connector_for(&self, server: &ServerInfo) -> Result<TlsConnector> {
        match &self.identity {
            ClientIdentity::Static {
                identity,
                roots,
                server_name,
            } => TlsConnector::static_identity(identity, roots.clone(), server_name.as_deref()),
            ClientIdentity::Arn {
                certificates,
                roots,
            } => {
                let arn = server.server_arn.as_deref().ok_or_else(|| {
                    Error::certificate("the server", "the locator gave no task ARN to expect")
                })?;
                let agent_ip = match server.agent_ip {
                    Some(ip) => ip,
                    None => route_source(server.address).await?,
                };
                let identity = certificates.identity_for(arn, agent_ip).await?;
                TlsConnector::arn(&identity, roots.clone(), arn)
            }
        }
    }
}

/// The local address the route to `server` uses: what the server sees as our IP when no NAT is
/// in between. (A UDP "connect" sends nothing; it only consults the routing table.)
pub async fn route_source(server: SocketAddr) -> Result<IpAddr> {
    let context = || format!("finding this host's address on the route to {server}");
    let bind = SocketAddr::new(
        if server.is_ipv4() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            IpAddr::from([0u16; 8])
        },
        0,
    );
    let socket = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| Error::io(context(), e))?;
    socket
        .connect(server)
        .await
        .map_err(|e| Error::io(context(), e))?;
    socket
        .local_addr()
        .map(|a| a.ip())
        .map_err(|e| Error::io(context(), e))
}
