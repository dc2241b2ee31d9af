//! The server side of the tunnel's mutual TLS: ARN mode (the certificate the server's
//! manager keeps; agents bound to the server's ARN and their IP) or static mode.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{LazyConfigAcceptor, TlsStream};

use super::{DEFAULT_CLIENT_HELLO_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, handshake_error};
use crate::codec::{ALPN_BINARY, CodecKind};
use crate::error::{Error, Result};
use crate::pki::server_certs::ServerCertManager;
use crate::pki::verify::{ClientVerifier, check_peer_ip};
use crate::pki::{TLS_VERSIONS, TlsIdentity, crypto_provider};
use crate::transport::Established;

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

    /// The deadline for a connection's first bytes (the complete ClientHello, or a WebSocket
    /// upgrade).
    pub fn client_hello_timeout(&self) -> Duration {
        self.client_hello_timeout
    }

    /// Sets the deadline for the complete ClientHello (default 5 s; capped by the handshake
    /// deadline).
    pub fn with_client_hello_timeout(mut self, timeout: Duration) -> Self {
        self.client_hello_timeout = timeout;
        self
    }

    /// Runs the server handshake on an accepted stream from `peer`, within the deadline.
    /// Failures are returned, not logged: on an open port most are strangers' (silence,
    /// garbage), and only the caller knows how loudly to report them.
    pub async fn accept<S>(&self, stream: S, peer: SocketAddr) -> Result<Established<TlsStream<S>>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        tokio::time::timeout(self.handshake_timeout, self.accept_inner(stream, peer))
            .await
            .unwrap_or(Err(Error::Timeout("TLS handshake", self.handshake_timeout)))
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
        let mut stream = start
            .into_stream(config)
            .await
            .map_err(|e| handshake_error(context(), e))?;
        super::limit_send_buffer(stream.get_mut().1);
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
