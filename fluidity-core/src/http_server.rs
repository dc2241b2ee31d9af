//! The one HTTP/1.1 accept loop every Fluidity endpoint uses (the agent's proxy, the server's
//! health port, the local control plane), so each gets the same protection against slow and
//! greedy clients:
//!
//! - at most [`HttpLimits::max_connections`] connections at once; beyond it the loop stops
//!   accepting (the kernel's backlog holds the rest) instead of running out of descriptors;
//! - a request head must arrive within [`HttpLimits::header_read_timeout`] (slow-loris
//!   clients are closed) and fit in [`HttpLimits::max_header_size`] (else 431);
//! - a failing `accept` (out of descriptors) pauses the loop instead of spinning.
//!
//! [`accept_loop`] is the loop alone, for ports that take more than HTTP; [`Http1`] serves one
//! connection with the limits.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Limits of an HTTP endpoint.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Most connections served at once (default 1024).
    pub max_connections: usize,
    /// Longest time a request head (start line and headers) may take to arrive (default 10 s).
    pub header_read_timeout: Duration,
    /// Largest request head, in bytes (default 64 KiB; hyper answers 431 beyond it).
    pub max_header_size: usize,
    /// After shutdown, how long to wait for open connections to finish (`None`: do not
    /// wait; they end on their own).
    pub drain_timeout: Option<Duration>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            max_header_size: 64 * 1024,
            drain_timeout: None,
        }
    }
}

/// Pause after a failed `accept` (EMFILE and friends).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// HTTP/1.1 for one connection at a time, with [`HttpLimits`]' header deadline and size: for
/// accept loops that look at a connection before deciding it is HTTP (the agent's port also
/// takes SOCKS5).
#[derive(Debug, Clone)]
pub struct Http1 {
    builder: hyper::server::conn::http1::Builder,
}

impl Http1 {
    /// The connection settings for `limits`.
    pub fn new(limits: &HttpLimits) -> Self {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_header_size(limits.max_header_size)
            // The read buffer must hold a whole head; hyper's minimum is 8 KiB.
            .max_buf_size(limits.max_header_size.max(8192) + 8192)
            .preserve_header_case(true);
        Http1 { builder }
    }

    /// Serves `stream` with `service` until the client closes (upgrades allowed: CONNECT,
    /// WebSocket). Errors are logged at debug: a client hanging up is normal.
    pub async fn serve<S, B>(&self, stream: TcpStream, peer: SocketAddr, service: S)
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let connection = self
            .builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        if let Err(e) = connection.await {
            tracing::debug!(%peer, error = %e, "HTTP connection ended");
        }
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown` completes. `service_for` makes the service
/// for each connection from the client's address. Upgrades (CONNECT, WebSocket) are allowed.
pub async fn serve<F, S, B>(
    listener: TcpListener,
    limits: HttpLimits,
    service_for: F,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let http = Http1::new(&limits);
    let handle = |stream, peer| {
        let http = http.clone();
        let service = service_for(peer);
        async move { http.serve(stream, peer, service).await }
    };
    accept_loop(listener, limits, handle, shutdown).await;
}

/// The accept loop under [`serve`], for any protocol: each connection is handled by `handle`
/// in its own task, at most [`HttpLimits::max_connections`] at once, until `shutdown`
/// completes (then, with [`HttpLimits::drain_timeout`], open connections get that long).
pub async fn accept_loop<F, C>(
    listener: TcpListener,
    limits: HttpLimits,
    handle: F,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(TcpStream, SocketAddr) -> C,
    C: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = tokio_util::task::TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let connection = handle(stream, peer);
        connections.spawn(async move {
            connection.await;
            drop(permit);
        });
    }
    connections.close();
    if let Some(timeout) = limits.drain_timeout {
        let _ = tokio::time::timeout(timeout, connections.wait()).await;
    }
}
