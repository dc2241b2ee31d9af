//! How tunnel connections are made: the [`Transport`] seam.
//!
//! Accepting and handshaking are separate steps (as in rathole): the accept loop only
//! accepts, and each handshake (TLS, certificate checks) runs in the connection's own task
//! with its own timeout, so a slow or hostile client never blocks other clients.
//!
//! This module ships two simple transports: [`MemoryTransport`] (in-process, for tests and
//! embedding) and [`TcpTransport`] (plain TCP, **no encryption**, for tests and trusted
//! loopback only). The real ones, mutual TLS over TCP ([`crate::TlsTransport`]) and inside a
//! WebSocket ([`crate::tls::WebSocketTransport`]), live in [`crate::tls`]. A client's TCP
//! connections leave along a [`Route`]: directly or through an HTTP proxy.

mod cidr;
mod route;

pub use cidr::Cidr;
pub use route::{HttpProxy, Route};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc};

use crate::codec::CodecKind;
use crate::error::{Error, Result};
use crate::locate::ServerInfo;

/// Which built-in transport carries the tunnel (the `transport` setting of both binaries).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// Mutual TLS 1.3 straight over TCP ([`crate::TlsTransport`]).
    #[default]
    Tls,
    /// Mutual TLS 1.3 inside a WebSocket ([`crate::tls::WebSocketTransport`]): through
    /// HTTP-only proxies and TLS-terminating load balancers. A server with this setting takes
    /// direct TLS tunnels on the same port too.
    #[serde(alias = "ws")]
    WebSocket,
}

/// A connection that finished its handshake, with what the session needs to know.
#[derive(Debug)]
pub struct Established<S> {
    /// The authenticated byte stream.
    pub stream: S,
    /// The wire format agreed on (by ALPN for TLS).
    pub codec: CodecKind,
    /// The peer's address (behind a trusted proxy, the address the proxy reported).
    pub peer: SocketAddr,
}

impl<S> Established<S> {
    /// The same connection with its stream wrapped by `wrap`.
    pub fn map<T>(self, wrap: impl FnOnce(S) -> T) -> Established<T> {
        Established {
            stream: wrap(self.stream),
            codec: self.codec,
            peer: self.peer,
        }
    }
}

/// A way to reach and accept tunnel peers.
pub trait Transport: Send + Sync + 'static {
    /// A connection accepted but not yet authenticated.
    type Raw: Send + 'static;
    /// A connection ready for the session.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Waits for the next incoming connection. Must return quickly: no handshake here.
    fn accept(&self) -> impl Future<Output = Result<(Self::Raw, SocketAddr)>> + Send;

    /// Authenticates an accepted connection (run it in the connection's own task).
    fn handshake(
        &self,
        raw: Self::Raw,
        peer: SocketAddr,
    ) -> impl Future<Output = Result<Established<Self::Stream>>> + Send;

    /// Reaches `server` (dialling its address, or whatever carries the tunnel to it) and
    /// completes the handshake, checking that the peer is that server.
    fn connect(
        &self,
        server: &ServerInfo,
    ) -> impl Future<Output = Result<Established<Self::Stream>>> + Send;
}

/// Listen backlog for [`listen`]: bursts of connections (a browser opening dozens, a
/// thousand agents reconnecting) must queue, not be dropped. (`TcpListener::bind` uses 128;
/// the kernel caps this at `net.core.somaxconn`.)
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener with address reuse and a large backlog (see [`LISTEN_BACKLOG`]).
pub fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// TCP keepalive on tunnel sockets: the first probe after this much silence...
const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(30);
/// ...then one probe this often...
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// ...and the connection is dead after this many unanswered probes (about 60 s in all).
const KEEPALIVE_RETRIES: u32 = 3;

/// Prepares a tunnel's TCP socket: no Nagle delay (acks and credit are small frames that
/// must not wait), and TCP keepalive, so a peer that vanished (a NAT that dropped the
/// mapping, a Go peer, which never answers heartbeats) is noticed in about a minute instead
/// of the kernel's two hours.
pub fn tune_tunnel_socket(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_vendor = "apple",
        target_os = "freebsd",
        target_os = "windows"
    ))]
    let keepalive = keepalive
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "could not enable TCP keepalive");
    }
}

/// Plain TCP with a fixed codec. **No encryption or authentication**: tests, benchmarks and
/// trusted loopback only.
#[derive(Debug)]
pub struct TcpTransport {
    listener: Option<TcpListener>,
    codec: CodecKind,
}

impl TcpTransport {
    /// A transport that accepts on `listener` (if any) and speaks `codec`.
    pub fn new(listener: Option<TcpListener>, codec: CodecKind) -> Self {
        TcpTransport { listener, codec }
    }
}

impl Transport for TcpTransport {
    type Raw = TcpStream;
    type Stream = TcpStream;

    async fn accept(&self) -> Result<(TcpStream, SocketAddr)> {
        let listener = self.listener.as_ref().ok_or_else(|| {
            Error::io(
                "accepting",
                std::io::Error::other("this transport has no listener"),
            )
        })?;
        listener
            .accept()
            .await
            .map_err(|e| Error::io("accepting a tunnel connection", e))
    }

    async fn handshake(&self, raw: TcpStream, peer: SocketAddr) -> Result<Established<TcpStream>> {
        tune_tunnel_socket(&raw);
        Ok(Established {
            stream: raw,
            codec: self.codec,
            peer,
        })
    }

    async fn connect(&self, server: &ServerInfo) -> Result<Established<TcpStream>> {
        let address = server.address;
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| Error::io(format!("connecting to {address}"), e))?;
        tune_tunnel_socket(&stream);
        Ok(Established {
            stream,
            codec: self.codec,
            peer: address,
        })
    }
}

/// In-process transport: `connect` hands one end of a `tokio::io::duplex` pipe to `accept`.
/// Clones share the same "network".
#[derive(Debug, Clone)]
pub struct MemoryTransport {
    sender: mpsc::Sender<DuplexStream>,
    receiver: Arc<Mutex<mpsc::Receiver<DuplexStream>>>,
    codec: CodecKind,
    buffer: usize,
}

/// The address memory connections report.
const MEMORY_PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

impl MemoryTransport {
    /// A new in-process network speaking `codec`, with pipes buffering `buffer` bytes.
    pub fn new(codec: CodecKind, buffer: usize) -> Self {
        let (sender, receiver) = mpsc::channel(16);
        MemoryTransport {
            sender,
            receiver: Arc::new(Mutex::new(receiver)),
            codec,
            buffer,
        }
    }
}

impl Transport for MemoryTransport {
    type Raw = DuplexStream;
    type Stream = DuplexStream;

    async fn accept(&self) -> Result<(DuplexStream, SocketAddr)> {
        match self.receiver.lock().await.recv().await {
            Some(stream) => Ok((stream, MEMORY_PEER)),
            None => Err(Error::io(
                "accepting",
                std::io::Error::other("the memory transport was dropped"),
            )),
        }
    }

    async fn handshake(
        &self,
        raw: DuplexStream,
        peer: SocketAddr,
    ) -> Result<Established<DuplexStream>> {
        Ok(Established {
            stream: raw,
            codec: self.codec,
            peer,
        })
    }

    async fn connect(&self, server: &ServerInfo) -> Result<Established<DuplexStream>> {
        let address = server.address;
        let (ours, theirs) = tokio::io::duplex(self.buffer);
        self.sender.send(theirs).await.map_err(|_| {
            Error::io(
                format!("connecting to {address}"),
                std::io::Error::other("no memory listener"),
            )
        })?;
        Ok(Established {
            stream: ours,
            codec: self.codec,
            peer: address,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn tunnel_sockets_get_nodelay_and_a_one_minute_keepalive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        tune_tunnel_socket(&stream);
        assert!(stream.nodelay().unwrap());
        let socket = socket2::SockRef::from(&stream);
        assert!(socket.keepalive().unwrap());
        #[cfg(target_os = "linux")]
        {
            assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
            assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
            assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
        }
    }
}
