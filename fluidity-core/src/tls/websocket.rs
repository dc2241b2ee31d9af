//! The tunnel inside a WebSocket, for networks that let only HTTP(S) out, through proxies
//! that inspect the first bytes, and for servers behind a TLS-terminating load balancer (AWS
//! ALB, nginx, a CDN).
//!
//! The agent opens `ws://` or `wss://host/path` (through an HTTP proxy when its [`Route`]
//! says so), and the mutual-TLS 1.3 session with every ARN and IP check runs *inside* the
//! WebSocket: whatever terminates the outer TLS or the WebSocket sees only ciphertext, and
//! authentication stays end to end.
//!
//! The server takes both on one port: a connection whose first byte starts a TLS record is a
//! direct tunnel, anything else must be an HTTP WebSocket upgrade on the configured path. Behind
//! a proxy, the agent's address comes from `X-Forwarded-For`, trusted only from the proxies'
//! own addresses (`trusted_proxies`), so the server's peer-IP check still applies to the agent.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Response, StatusCode};
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request};

use super::transport::{accept_tcp, not_configured};
use super::{
    DEFAULT_HANDSHAKE_TIMEOUT, ReadAhead, TlsAcceptor, TlsClient, TlsTcpStream, WsBytes, ws_bytes,
};
use crate::error::{Error, Result};
use crate::locate::ServerInfo;
use crate::pki::crypto_provider;
use crate::transport::{Cidr, Established, Route, Transport};

/// The first byte of a TLS record carrying a handshake message (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The byte stream under a WebSocket: plain TCP, or TLS to a load balancer.
#[derive(Debug)]
pub enum Outer {
    /// `ws://`, or the server's side of any WebSocket.
    Plain(TcpStream),
    /// `wss://`: TLS to whatever terminates it.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A tunnel's byte stream: mutual TLS straight over TCP, or inside a WebSocket.
#[derive(Debug)]
pub enum TunnelStream {
    /// Mutual TLS over TCP.
    Tls(Box<TlsTcpStream>),
    /// Mutual TLS inside a WebSocket.
    WebSocket(Box<TlsStream<WsBytes<Outer>>>),
}

macro_rules! delegate {
    ($self:ident, $inner:ident => $call:expr) => {
        match $self.get_mut() {
            Self::Plain($inner) => {
                let $inner = Pin::new($inner);
                $call
            }
            Self::Tls($inner) => {
                let $inner = Pin::new($inner.as_mut());
                $call
            }
        }
    };
}

impl AsyncRead for Outer {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Outer {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, b))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

macro_rules! delegate_tunnel {
    ($self:ident, $inner:ident => $call:expr) => {
        match $self.get_mut() {
            TunnelStream::Tls($inner) => {
                let $inner = Pin::new($inner.as_mut());
                $call
            }
            TunnelStream::WebSocket($inner) => {
                let $inner = Pin::new($inner.as_mut());
                $call
            }
        }
    };
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate_tunnel!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        delegate_tunnel!(self, s => s.poll_write(cx, b))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate_tunnel!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate_tunnel!(self, s => s.poll_shutdown(cx))
    }
}

/// The server's side: where WebSocket upgrades are accepted and whom to believe about the
/// agent's address.
#[derive(Debug, Clone)]
pub struct WebSocketServer {
    /// The upgrade path (e.g. `/fluidity`); other paths get 404.
    pub path: String,
    /// Proxies whose `X-Forwarded-For` is believed (a load balancer's addresses). From any
    /// other peer the TCP address is the agent's.
    pub trusted_proxies: Vec<Cidr>,
}

/// The agent's side: the WebSocket URL, and the roots its `wss://` TLS trusts.
#[derive(Debug, Clone)]
pub struct WebSocketClient {
    host: String,
    port: u16,
    path: String,
    /// `wss://`: the TLS config for the load balancer (server authentication only).
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl WebSocketClient {
    /// `url` is `ws://host[:port]/path` or `wss://host[:port]/path`; a `wss://` endpoint's
    /// certificate is verified against the Mozilla roots plus `extra_roots`.
    pub fn new(url: &str, extra_roots: Option<&RootCertStore>) -> Result<Self> {
        let bad = |why: &str| Error::Config {
            origin: "websocket_url".into(),
            reason: format!("{url:?}: {why}"),
        };
        let (secure, rest) = if let Some(rest) = url.strip_prefix("wss://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("ws://") {
            (false, rest)
        } else {
            return Err(bad("expected ws:// or wss://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                (host, port.parse::<u16>().map_err(|_| bad("bad port"))?)
            }
            _ => (authority, if secure { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let tls = secure
            .then(|| {
                let mut roots = RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                if let Some(extra) = extra_roots {
                    roots.roots.extend(extra.roots.iter().cloned());
                }
                rustls::ClientConfig::builder_with_provider(crypto_provider())
                    .with_safe_default_protocol_versions()
                    .map(|builder| {
                        let mut config =
                            builder.with_root_certificates(roots).with_no_client_auth();
                        config.alpn_protocols = vec![b"http/1.1".to_vec()];
                        Arc::new(config)
                    })
                    .map_err(|e| Error::Tls {
                        context: "building the wss:// TLS config".into(),
                        source: e,
                    })
            })
            .transpose()?;
        Ok(WebSocketClient {
            host: host.trim_matches(['[', ']']).to_owned(),
            port,
            path: path.to_owned(),
            tls,
        })
    }

    fn uri(&self) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}{}", self.port, self.path)
    }
}

/// Mutual TLS inside a WebSocket, behind the [`Transport`] seam. A server transport also
/// accepts direct TLS tunnels on the same port.
#[derive(Debug)]
pub struct WebSocketTransport {
    listener: Option<TcpListener>,
    acceptor: Option<(TlsAcceptor, WebSocketServer)>,
    client: Option<(TlsClient, Route, WebSocketClient)>,
}

impl WebSocketTransport {
    /// A server transport accepting on `listener`.
    pub fn server(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        websocket: WebSocketServer,
    ) -> Self {
        WebSocketTransport {
            listener: Some(listener),
            acceptor: Some((acceptor, websocket)),
            client: None,
        }
    }

    /// A client transport.
    pub fn client(client: TlsClient, route: Route, websocket: WebSocketClient) -> Self {
        WebSocketTransport {
            listener: None,
            acceptor: None,
            client: Some((client, route, websocket)),
        }
    }

    /// The listener's address, for a server transport.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// The agent's address behind trusted proxies: the rightmost `X-Forwarded-For` entry that is
/// not a trusted proxy itself.
fn forwarded_client(header: Option<&str>, trusted: &[Cidr]) -> Option<IpAddr> {
    header?
        .rsplit(',')
        .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
        .find(|ip| !trusted.iter().any(|net| net.contains(*ip)))
}

/// Completes a WebSocket upgrade on `path`; returns the socket and the agent's address.
async fn upgrade(
    tcp: TcpStream,
    peer: SocketAddr,
    websocket: &WebSocketServer,
) -> Result<(tokio_tungstenite::WebSocketStream<Outer>, SocketAddr)> {
    let proxied = websocket
        .trusted_proxies
        .iter()
        .any(|net| net.contains(peer.ip()));
    let forwarded = Arc::new(Mutex::new(None));
    let seen = forwarded.clone();
    // tungstenite's callback type fixes the (large) error type.
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, response| {
        if request.uri().path() != websocket.path {
            let mut refusal = ErrorResponse::new(Some("not found".into()));
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            return Err(refusal);
        }
        if proxied {
            let header = request
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok());
            let client = forwarded_client(header, &websocket.trusted_proxies);
            *seen.lock().unwrap_or_else(|p| p.into_inner()) = client;
        }
        Ok::<Response<()>, ErrorResponse>(response)
    };
    let socket = tokio_tungstenite::accept_hdr_async_with_config(
        Outer::Plain(tcp),
        check,
        Some(ws_bytes::config()),
    )
    .await
    .map_err(|e| {
        Error::io(
            format!("WebSocket upgrade from {peer}"),
            io::Error::other(e),
        )
    })?;
    let client = *forwarded.lock().unwrap_or_else(|p| p.into_inner());
    let agent = match (proxied, client) {
        (true, Some(ip)) => SocketAddr::new(ip, 0),
        (true, None) => {
            return Err(Error::io(
                format!("WebSocket upgrade from {peer}"),
                io::Error::other(
                    "a trusted proxy sent no X-Forwarded-For with the agent's address",
                ),
            ));
        }
        (false, _) => peer,
    };
    Ok((socket, agent))
}

impl Transport for WebSocketTransport {
    type Raw = TcpStream;
    type Stream = TunnelStream;

    async fn accept(&self) -> Result<(TcpStream, SocketAddr)> {
        accept_tcp(self.listener.as_ref()).await
    }

    async fn handshake(
        &self,
        raw: TcpStream,
        peer: SocketAddr,
    ) -> Result<Established<TunnelStream>> {
        let (acceptor, websocket) = self
            .acceptor
            .as_ref()
            .ok_or_else(|| not_configured("handshaking"))?;
        // What arrives first says which carrier the agent uses: a TLS record is a direct
        // tunnel, anything else an HTTP request (the WebSocket upgrade).
        let deadline = acceptor.client_hello_timeout();
        let mut first = [0u8; 1];
        let peeked = tokio::time::timeout(deadline, raw.peek(&mut first))
            .await
            .map_err(|_| Error::Timeout("waiting for the first bytes", deadline))?
            .map_err(|e| Error::io(format!("reading from {peer}"), e))?;
        if peeked == 0 {
            return Err(Error::io(
                format!("reading from {peer}"),
                io::ErrorKind::UnexpectedEof.into(),
            ));
        }
        if first[0] == TLS_HANDSHAKE_RECORD {
            let established = acceptor.accept(ReadAhead::new(raw), peer).await?;
            return Ok(established.map(|stream| TunnelStream::Tls(Box::new(stream))));
        }
        let (socket, agent) = tokio::time::timeout(deadline, upgrade(raw, peer, websocket))
            .await
            .map_err(|_| Error::Timeout("WebSocket upgrade", deadline))??;
        let established = acceptor.accept(WsBytes::new(socket), agent).await?;
        Ok(established.map(|stream| TunnelStream::WebSocket(Box::new(stream))))
    }

    async fn connect(&self, server: &ServerInfo) -> Result<Established<TunnelStream>> {
        let (client, route, websocket) = self
            .client
            .as_ref()
            .ok_or_else(|| not_configured("connecting"))?;
        let connector = client.connector_for(server).await?;
        let tcp = route
            .connect(&websocket.host, websocket.port, client.connect_timeout())
            .await?;
        let uri = websocket.uri();
        let open = async {
            let outer = match &websocket.tls {
                None => Outer::Plain(tcp),
                Some(config) => {
                    let name = ServerName::try_from(websocket.host.clone()).map_err(|e| {
                        Error::certificate("websocket_url host", format!("{}: {e}", websocket.host))
                    })?;
                    let tls = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(|e| Error::io(format!("TLS to {uri}"), e))?;
                    Outer::Tls(Box::new(tls))
                }
            };
            let (socket, _) = tokio_tungstenite::client_async_with_config(
                uri.as_str(),
                outer,
                Some(ws_bytes::config()),
            )
            .await
            .map_err(|e| {
                Error::io(
                    format!("WebSocket handshake with {uri}"),
                    io::Error::other(e),
                )
            })?;
            Ok::<_, Error>(socket)
        };
        let socket = tokio::time::timeout(DEFAULT_HANDSHAKE_TIMEOUT, open)
            .await
            .map_err(|_| Error::Timeout("WebSocket handshake", DEFAULT_HANDSHAKE_TIMEOUT))??;
        // The inner TLS checks the server itself: its ARN and the address it was located at.
        let established = connector
            .handshake(WsBytes::new(socket), server.address)
            .await?;
        Ok(established.map(|stream| TunnelStream::WebSocket(Box::new(stream))))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_and_forwarded_addresses() {
        let plain = WebSocketClient::new("ws://127.0.0.1:8080/fluidity", None).unwrap();
        assert_eq!(plain.uri(), "ws://127.0.0.1:8080/fluidity");
        let secure = WebSocketClient::new("wss://tunnel.example.com/t", None).unwrap();
        assert_eq!(secure.uri(), "wss://tunnel.example.com:443/t");
        let v6 = WebSocketClient::new("ws://[::1]:9/", None).unwrap();
        assert_eq!(v6.uri(), "ws://[::1]:9/");
        for bad in ["http://x/", "ws://:80/", "ws://host:nope/"] {
            assert!(WebSocketClient::new(bad, None).is_err(), "{bad}");
        }
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        assert_eq!(
            forwarded_client(Some("198.51.100.7, 10.0.0.5"), &trusted),
            Some("198.51.100.7".parse().unwrap())
        );
        assert_eq!(
            forwarded_client(Some("203.0.113.1, 198.51.100.7"), &trusted),
            Some("198.51.100.7".parse().unwrap()),
            "only the hops added by trusted proxies are skipped"
        );
        assert_eq!(forwarded_client(Some("10.1.1.1"), &trusted), None);
        assert_eq!(forwarded_client(None, &trusted), None);
    }
}
