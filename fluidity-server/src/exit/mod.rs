//! Where streams leave the tunnel: each incoming stream is served by the exit for its kind.

pub mod connect;
pub mod http;
pub mod websocket;

use std::sync::Arc;
use std::time::Duration;

use fluidity_core::IncomingStream;
use fluidity_core::Target;

use crate::egress::{EgressPolicy, TargetError};
use crate::metrics::Metrics;

/// What the exits share.
#[derive(Debug)]
pub struct Exits {
    /// Which targets are allowed.
    pub egress: EgressPolicy,
    /// Deadline for reaching a target.
    pub connect_timeout: Duration,
    /// The HTTP client for `http_request` streams.
    pub http: reqwest::Client,
    /// TLS for `wss://` targets of Go `ws_open` streams.
    pub tls: Arc<rustls::ClientConfig>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl Exits {
    /// Serves one incoming stream in its own task. Each kind gets a task of its own size (an
    /// idle CONNECT must not carry the HTTP client's much larger state).
    pub fn spawn(self: &Arc<Self>, incoming: IncomingStream) {
        let exits = self.clone();
        match incoming.target().clone() {
            Target::Connect { address } => {
                tokio::spawn(async move { connect::serve(&exits, incoming, &address).await });
            }
            Target::Http {
                method,
                url,
                headers,
            } => {
                tokio::spawn(
                    async move { http::serve(&exits, incoming, method, url, headers).await },
                );
            }
            Target::WebSocket { url, headers } => {
                tokio::spawn(async move { websocket::serve(&exits, incoming, url, headers).await });
            }
        }
    }
}

/// Connects to the first reachable of `addresses` (at least one) within `timeout`; the
/// error is the last address's.
pub(crate) async fn dial(
    addresses: &[std::net::SocketAddr],
    timeout: Duration,
) -> Result<tokio::net::TcpStream, TargetError> {
    let attempt = async {
        let mut last = None;
        for &address in addresses {
            match tokio::net::TcpStream::connect(address).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(source) => last = Some(TargetError::Connect { address, source }),
            }
        }
        Err(last.unwrap_or(TargetError::Protocol("no address to connect to".into())))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(TargetError::TimedOut(timeout)))
}
