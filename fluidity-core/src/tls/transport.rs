//! Mutual TLS 1.3 straight over TCP: the default transport.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

use super::{ReadAhead, TlsAcceptor, TlsClient, TlsTcpStream};
use crate::error::{Error, Result};
use crate::locate::ServerInfo;
use crate::transport::{Established, Route, Transport};

/// Mutual TLS over TCP behind the [`Transport`] seam: a server (a listener and an acceptor)
/// or a client (its identity and how its TCP connections leave, [`Route`]).
#[derive(Debug)]
pub struct TlsTransport {
    listener: Option<TcpListener>,
    acceptor: Option<TlsAcceptor>,
    client: Option<(TlsClient, Route)>,
}

impl TlsTransport {
    /// A server transport accepting on `listener`.
    pub fn server(listener: TcpListener, acceptor: TlsAcceptor) -> Self {
        TlsTransport {
            listener: Some(listener),
            acceptor: Some(acceptor),
            client: None,
        }
    }

    /// A client transport.
    pub fn client(client: TlsClient, route: Route) -> Self {
        TlsTransport {
            listener: None,
            acceptor: None,
            client: Some((client, route)),
        }
    }

    /// The listener's address, for a server transport.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }
}

pub(super) fn not_configured(what: &str) -> Error {
    Error::io(
        what.to_owned(),
        std::io::Error::other("this transport has no such side"),
    )
}

/// The next connection on `listener`, its socket tuned for a tunnel.
pub(super) async fn accept_tcp(listener: Option<&TcpListener>) -> Result<(TcpStream, SocketAddr)> {
    let listener = listener.ok_or_else(|| not_configured("accepting"))?;
    let (stream, peer) = listener
        .accept()
        .await
        .map_err(|e| Error::io("accepting a tunnel connection", e))?;
    crate::transport::tune_tunnel_socket(&stream);
    Ok((stream, peer))
}

impl Transport for TlsTransport {
    type Raw = TcpStream;
    type Stream = TlsTcpStream;

    async fn accept(&self) -> Result<(TcpStream, SocketAddr)> {
        accept_tcp(self.listener.as_ref()).await
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
        acceptor.accept(ReadAhead::new(raw), peer).await
    }

    async fn connect(&self, server: &ServerInfo) -> Result<Established<Self::Stream>> {
        let (client, route) = self
            .client
            .as_ref()
            .ok_or_else(|| not_configured("connecting"))?;
        let connector = client.connector_for(server).await?;
        let address = server.address;
        let tcp = route
            .connect(
                &address.ip().to_string(),
                address.port(),
                client.connect_timeout(),
            )
            .await?;
        connector.handshake(ReadAhead::new(tcp), address).await
    }
}
