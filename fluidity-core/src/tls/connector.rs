//! The agent side of the tunnel's mutual TLS: present our certificate, check the server's
//! chain, its ARN (ARN mode) or name (static mode), and that it lists the IP we meant to reach.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

use super::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, ReadAhead, TlsTcpStream, handshake_error,
};
use crate::codec::{ALPN_BINARY, CodecKind};
use crate::error::{Error, Result};
use crate::pki::verify::ServerVerifier;
use crate::pki::{TLS_VERSIONS, TlsIdentity, crypto_provider};
use crate::transport::Established;

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
        let mut stream =
            tokio::time::timeout(self.handshake_timeout, connector.connect(name, stream))
                .await
                .map_err(|_| Error::Timeout("TLS handshake", self.handshake_timeout))
                .and_then(|r| {
                    r.map_err(|e| handshake_error(format!("TLS handshake with {dialled}"), e))
                })?;
        super::limit_send_buffer(stream.get_mut().1);
        let codec = CodecKind::from_alpn(stream.get_ref().1.alpn_protocol());
        Ok(Established {
            stream: TlsStream::Client(stream),
            codec,
            peer: dialled,
        })
    }

    /// Dials `address` over TCP and runs the handshake.
    pub async fn connect(&self, address: SocketAddr) -> Result<Established<TlsTcpStream>> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| Error::Timeout("connecting to the server", self.connect_timeout))?
            .map_err(|e| Error::io(format!("connecting to {address}"), e))?;
        crate::transport::tune_tunnel_socket(&tcp);
        self.handshake(ReadAhead::new(tcp), address).await
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
