//! Mutual TLS 1.3 for tunnel connections: the [`TlsAcceptor`] (server side), the
//! [`TlsConnector`] (agent side) and [`TlsTransport`], which puts them behind the
//! [`Transport`] seam over TCP.
//!
//! Both sides verify each other (see [`crate::pki::verify`]); ALPN `fluidity/2` selects the
//! binary codec, no ALPN (a Go peer) the JSON codec. Every handshake has a deadline, and the
//! server reads the ClientHello before anything else, so a TCP connection that never speaks
//! TLS costs a timer, not a certificate signing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{LazyConfigAcceptor, TlsStream};

use crate::codec::{ALPN_BINARY, CodecKind};
use crate::error::{Error, Result};
use crate::pki::server_certs::ServerCertManager;
use crate::pki::verify::{ClientVerifier, ServerVerifier, check_peer_ip};
use crate::pki::{Rejection, TLS_VERSIONS, TlsIdentity, crypto_provider};
use crate::transport::{Established, Transport};

/// Default deadline for a whole TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default deadline for a client's complete ClientHello, counted from the TCP accept: a
/// connection that says nothing (or dribbles) loses its handshake slot quickly.
pub const DEFAULT_CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Default deadline for the TCP connect to the server.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Turns a failed handshake's I/O error into the most precise [`Error`].
fn handshake_error(context: String, error: std::io::Error) -> Error {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(tls) => match Rejection::from_tls_error(tls) {
            Some(rejection) => Error::CertificateRejected(rejection),
            None => Error::Tls {
                context,
                source: tls.clone(),
            },
        },
        None => Error::io(context, error),
    }
}

/// Always presents one certificate.
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// How the server authenticates itself and its agents.
enum ServerMode {
    /// Lazy ARN-bound certificates; agents must carry the server's ARN and their TCP IP.
    Arn {
        manager: Arc<ServerCertManager>,
        verifier: Arc<ClientVerifier>,
        /// The config built for the manager's latest certificate.
        config: Mutex<Option<(Arc<CertifiedKey>, Arc<ServerConfig>)>>,
    },
    /// A fixed certificate; agents need a certificate chaining to the CA, nothing more.
    Static { config: Arc<ServerConfig> },
}

/// The server side of the tunnel's mutual TLS.
pub struct TlsAcceptor {
    mode: ServerMode,
    handshake_timeout: Duration,
    client_hello_timeout: Duration,
    offer_binary: bool,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match &self.mode {
            ServerMode::Arn { .. } => "arn",
            ServerMode::Static { .. } => "static",
        };
        f.debug_struct("TlsAcceptor")
            .field("mode", &mode)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("client_hello_timeout", &self.client_hello_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// ARN mode: the certificate `manager` keeps (run [`ServerCertManager::maintain`]
    /// beside the acceptor), agents verified against `roots` and bound to the manager's
    /// server ARN and to their TCP peer IP.
    pub fn arn(manager: Arc<ServerCertManager>, roots: Arc<RootCertStore>) -> Result<Self> {
        let own_arn = manager.config().server_arn.clone();
        let verifier = Arc::new(ClientVerifier::new(roots, Some(own_arn))?);
        Ok(TlsAcceptor {
            mode: ServerMode::Arn {
                manager,
                verifier,
                config: Mutex::new(None),
            },
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            client_hello_timeout: DEFAULT_CLIENT_HELLO_TIMEOUT,
            offer_binary: true,
        })
    }

    /// Static mode: present `identity`, accept agents whose chain leads to `roots`.
    pub fn static_identity(identity: &TlsIdentity, roots: Arc<RootCertStore>) -> Result<Self> {
        let verifier = Arc::new(ClientVerifier::new(roots, None)?);
        let config = server_config(verifier, identity.certified_key()?, true)?;
        Ok(TlsAcceptor {
            mode: ServerMode::Static { config },
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            client_hello_timeout: DEFAULT_CLIENT_HELLO_TIMEOUT,
            offer_binary: true,
        })
    }

    /// Sets the handshake deadline (default 10 s).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The handshake deadline.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// Sets the deadline for the complete ClientHello (default 5 s; capped by the handshake
    /// deadline).
    pub fn with_client_hello_timeout(mut self, timeout: Duration) -> Self {
        self.client_hello_timeout = timeout;
        self
    }

    /// Runs the server handshake on an accepted stream from `peer`, within the deadline.
    pub async fn accept<S>(&self, stream: S, peer: SocketAddr) -> Result<Established<TlsStream<S>>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let result = tokio::time::timeout(self.handshake_timeout, self.accept_inner(stream, peer))
            .await
            .unwrap_or(Err(Error::Timeout("TLS handshake", self.handshake_timeout)));
        if let Err(e) = &result {
            tracing::warn!(%peer, error = %e, "tunnel handshake failed");
        }
        result
    }

    async fn accept_inner<S>(
        &self,
        stream: S,
        peer: SocketAddr,
    ) -> Result<Established<TlsStream<S>>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let context = || format!("TLS handshake with {peer}");
        let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
        let start = tokio::time::timeout(self.client_hello_timeout, hello)
            .await
            .map_err(|_| {
                Error::Timeout("waiting for the TLS ClientHello", self.client_hello_timeout)
            })?
            .map_err(|e| handshake_error(context(), e))?;
        let config = match &self.mode {
            ServerMode::Static { config } => config.clone(),
            ServerMode::Arn {
                manager,
                verifier,
                config,
            } => self.config_for(config, verifier, manager.current()?)?,
        };
        let stream = start
            .into_stream(config)
            .await
            .map_err(|e| handshake_error(context(), e))?;
        let (_, connection) = stream.get_ref();
        if let ServerMode::Arn { .. } = &self.mode {
            check_peer_ip(connection.peer_certificates(), peer.ip())
                .map_err(Error::CertificateRejected)?;
        }
        let codec = CodecKind::from_alpn(connection.alpn_protocol());
        tracing::debug!(%peer, ?codec, "tunnel handshake complete");
        Ok(Established {
            stream: TlsStream::Server(stream),
            codec,
            peer,
        })
    }

    /// The server config for `certified`, rebuilt only when the certificate changed.
    fn config_for(
        &self,
        cache: &Mutex<Option<(Arc<CertifiedKey>, Arc<ServerConfig>)>>,
        verifier: &Arc<ClientVerifier>,
        certified: Arc<CertifiedKey>,
    ) -> Result<Arc<ServerConfig>> {
        let mut cache = cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((key, config)) = cache.as_ref()
            && Arc::ptr_eq(key, &certified)
        {
            return Ok(config.clone());
        }
        let config = server_config(verifier.clone(), certified.clone(), self.offer_binary)?;
        *cache = Some((certified, config.clone()));
        Ok(config)
    }
}

fn server_config(
    verifier: Arc<ClientVerifier>,
    certified: Arc<CertifiedKey>,
    offer_binary: bool,
) -> Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(TLS_VERSIONS)
        .map_err(|e| Error::Tls {
            context: "building the server TLS config".into(),
            source: e,
        })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(FixedCert(certified)));
    if offer_binary {
        config.alpn_protocols = vec![ALPN_BINARY.to_vec()];
    }
    Ok(Arc::new(config))
}

/// The agent side of the tunnel's mutual TLS.
#[derive(Debug, Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
    handshake_timeout: Duration,
    connect_timeout: Duration,
}

impl TlsConnector {
    /// ARN mode: present `identity`; accept a server chaining to `roots`, bound to
    /// `expected_arn` and listing the dialled IP.
    pub fn arn(
        identity: &TlsIdentity,
        roots: Arc<RootCertStore>,
        expected_arn: &str,
    ) -> Result<Self> {
        let verifier = ServerVerifier::new(roots, Some(expected_arn.to_owned()))?;
        Ok(TlsConnector {
            config: client_config(identity, verifier, true)?,
            server_name: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        })
    }

    /// Static mode: present `identity`; accept a server chaining to `roots` whose names
    /// include `server_name` (an IP or DNS name), or the dialled IP when `None`.
    pub fn static_identity(
        identity: &TlsIdentity,
        roots: Arc<RootCertStore>,
        server_name: Option<&str>,
    ) -> Result<Self> {
        let verifier = ServerVerifier::new(roots, None)?;
        let server_name = server_name
            .map(|name| {
                ServerName::try_from(name.to_owned())
                    .map_err(|e| Error::certificate("server name", format!("{name:?}: {e}")))
            })
            .transpose()?;
        Ok(TlsConnector {
            config: client_config(identity, verifier, true)?,
            server_name,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        })
    }

    /// Offers no ALPN, as the Go agent does, so the server speaks JSON.
    pub fn without_alpn(mut self) -> Self {
        let mut config = (*self.config).clone();
        config.alpn_protocols.clear();
        self.config = Arc::new(config);
        self
    }

    /// Sets the handshake deadline (default 10 s).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Runs the client handshake over `stream`, which reaches the server at `dialled` (the IP
    /// that must be in the server's SANs, even when `stream` goes through a proxy).
    pub async fn handshake<S>(
        &self,
        stream: S,
        dialled: SocketAddr,
    ) -> Result<Established<TlsStream<S>>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(dialled.ip().into()));
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let stream = tokio::time::timeout(self.handshake_timeout, connector.connect(name, stream))
            .await
            .map_err(|_| Error::Timeout("TLS handshake", self.handshake_timeout))
            .and_then(|r| {
                r.map_err(|e| handshake_error(format!("TLS handshake with {dialled}"), e))
            })
            .inspect_err(
                |e| tracing::warn!(server = %dialled, error = %e, "tunnel handshake failed"),
            )?;
        let codec = CodecKind::from_alpn(stream.get_ref().1.alpn_protocol());
        Ok(Established {
            stream: TlsStream::Client(stream),
            codec,
            peer: dialled,
        })
    }

    /// Dials `address` over TCP and runs the handshake.
    pub async fn connect(&self, address: SocketAddr) -> Result<Established<TlsStream<TcpStream>>> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| Error::Timeout("connecting to the server", self.connect_timeout))?
            .map_err(|e| Error::io(format!("connecting to {address}"), e))?;
        crate::transport::tune_tunnel_socket(&tcp);
        self.handshake(tcp, address).await
    }
}

fn client_config(
    identity: &TlsIdentity,
    verifier: ServerVerifier,
    offer_binary: bool,
) -> Result<Arc<ClientConfig>> {
    let tls_error = |source| Error::Tls {
        context: "building the client TLS config".into(),
        source,
    };
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(TLS_VERSIONS)
        .map_err(tls_error)?
        .dangerous()
        // "dangerous" only in name: ServerVerifier runs webpki's full chain and name checks
        // and then adds the ARN binding.
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| Error::certificate("agent certificate and key", e))?;
    if offer_binary {
        config.alpn_protocols = vec![ALPN_BINARY.to_vec()];
    }
    Ok(Arc::new(config))
}

/// Mutual TLS over TCP behind the [`Transport`] seam: a server (listener + acceptor), a
/// client (connector), or both.
#[derive(Debug)]
pub struct TlsTransport {
    listener: Option<TcpListener>,
    acceptor: Option<TlsAcceptor>,
    connector: Option<TlsConnector>,
}

impl TlsTransport {
    /// A server transport accepting on `listener`.
    pub fn server(listener: TcpListener, acceptor: TlsAcceptor) -> Self {
        TlsTransport {
            listener: Some(listener),
            acceptor: Some(acceptor),
            connector: None,
        }
    }

    /// A client transport.
    pub fn client(connector: TlsConnector) -> Self {
        TlsTransport {
            listener: None,
            acceptor: None,
            connector: Some(connector),
        }
    }

    /// The listener's address, for a server transport.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }
}

fn not_configured(what: &str) -> Error {
    Error::io(
        what.to_owned(),
        std::io::Error::other("this TLS transport has no such side"),
    )
}

impl Transport for TlsTransport {
    type Raw = TcpStream;
    type Stream = TlsStream<TcpStream>;

    async fn accept(&self) -> Result<(TcpStream, SocketAddr)> {
        let listener = self
            .listener
            .as_ref()
            .ok_or_else(|| not_configured("accepting"))?;
        let (stream, peer) = listener
            .accept()
            .await
            .map_err(|e| Error::io("accepting a tunnel connection", e))?;
        crate::transport::tune_tunnel_socket(&stream);
        Ok((stream, peer))
    }

    async fn handshake(
        &self,
        raw: TcpStream,
        peer: SocketAddr,
    ) -> Result<Established<Self::Stream>> {
        let acceptor = self
            .acceptor
            .as_ref()
            .ok_or_else(|| not_configured("handshaking"))?;
        acceptor.accept(raw, peer).await
    }

    async fn connect(&self, address: SocketAddr) -> Result<Established<Self::Stream>> {
        let connector = self
            .connector
            .as_ref()
            .ok_or_else(|| not_configured("connecting"))?;
        connector.connect(address).await
    }
}
