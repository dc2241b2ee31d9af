//! The local proxy: HTTP (absolute-form requests, CONNECT, WebSocket upgrades, `/proxy.pac`,
//! optional Basic proxy authentication) and SOCKS5 on the same port, told apart by the first
//! byte. Everything goes through the one tunnel.

mod connect;
mod forward;
mod pac;
mod relay;
mod socks;
mod websocket;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};

use fluidity_core::http_server::{Http1, HttpLimits, accept_loop};
use fluidity_core::{Connection, Refusal, RefusalCode, StreamHandle};

use crate::breaker::Breakers;
use crate::config::PacProtocol;
use crate::tunnel::{Tunnel, TunnelError};

/// Response bodies the proxy produces.
pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

/// What every request handler shares.
#[derive(Debug)]
pub(crate) struct Proxy {
    pub tunnel: Tunnel,
    pub breakers: Breakers,
    /// Expected `Proxy-Authorization` value, if authentication is on.
    pub authorization: Option<String>,
    /// The same credentials as SOCKS5 username and password.
    pub credentials: Option<(Vec<u8>, Vec<u8>)>,
    /// What the PAC file offers.
    pub pac: PacProtocol,
    /// The proxy's own address (for the PAC file).
    pub address: SocketAddr,
}

impl Proxy {
    pub fn new(
        tunnel: Tunnel,
        proxy_auth: Option<&str>,
        address: SocketAddr,
        pac: PacProtocol,
    ) -> Self {
        Proxy {
            tunnel,
            breakers: Breakers::default(),
            authorization: proxy_auth.map(|credentials| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(credentials)
                )
            }),
            // `user:password`, split at the first colon as HTTP Basic does.
            credentials: proxy_auth.map(|credentials| {
                let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
                (user.as_bytes().to_vec(), password.as_bytes().to_vec())
            }),
            address,
            pac,
        }
    }
}

/// Serves proxy clients on `listener` until `shutdown` completes: SOCKS5 when a connection's
/// first byte is 5 (no HTTP method starts with it), HTTP otherwise.
pub(crate) async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let http = Http1::new(&limits);
    let deadline = limits.header_read_timeout;
    let handle = |stream: TcpStream, peer| {
        let (proxy, http) = (proxy.clone(), http.clone());
        async move {
            match first_byte(&stream, deadline).await {
                Some(socks::VERSION) => socks::serve(&proxy, stream, peer, deadline).await,
                Some(_) => {
                    // Plain HTTP requests on this connection share one origin connection.
                    let origin = Arc::new(relay::OriginConnection::default());
                    let service = hyper::service::service_fn(move |request| {
                        handle(proxy.clone(), origin.clone(), request)
                    });
                    http.serve(stream, peer, service).await;
                }
                None => tracing::debug!(%peer, "proxy client sent nothing"),
            }
        }
    };
    accept_loop(listener, limits, handle, shutdown).await;
}

/// Serves SOCKS5 only on `listener` (the `socks_port`) until `shutdown` completes.
pub(crate) async fn serve_socks(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let deadline = limits.header_read_timeout;
    let handle = |stream, peer| {
        let proxy = proxy.clone();
        async move { socks::serve(&proxy, stream, peer, deadline).await }
    };
    accept_loop(listener, limits, handle, shutdown).await;
}

/// The connection's first byte, without taking it; `None` if the client closes or sends
/// nothing within `deadline`.
async fn first_byte(stream: &TcpStream, deadline: Duration) -> Option<u8> {
    let mut byte = [0];
    match tokio::time::timeout(deadline, stream.peek(&mut byte)).await {
        Ok(Ok(1)) => Some(byte[0]),
        _ => None,
    }
}

async fn handle(
    proxy: Arc<Proxy>,
    origin: Arc<relay::OriginConnection>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    // Origin-form requests are for the proxy itself. Browsers fetch the PAC file without
    // credentials; everything else needs them, `/status` included.
    let for_the_proxy =
        request.method() != hyper::Method::CONNECT && request.uri().scheme().is_none();
    if for_the_proxy && request.uri().path() == "/proxy.pac" {
        return Ok(local(&proxy, &request));
    }
    if let Some(expected) = &proxy.authorization {
        // A request to the proxy itself authenticates as to any server (`Authorization`,
        // 401); a proxied one as to a proxy (`Proxy-Authorization`, 407).
        let (header, status, challenge) = if for_the_proxy {
            (
                hyper::header::AUTHORIZATION,
                StatusCode::UNAUTHORIZED,
                hyper::header::WWW_AUTHENTICATE,
            )
        } else {
            (
                hyper::header::PROXY_AUTHORIZATION,
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                hyper::header::PROXY_AUTHENTICATE,
            )
        };
        let given = request.headers().get(header).map(|v| v.as_bytes());
        if !given.is_some_and(|given| constant_time_eq(given, expected.as_bytes())) {
            let mut response = text(status, "authentication required\n");
            response.headers_mut().insert(
                challenge,
                http::HeaderValue::from_static("Basic realm=\"fluidity\""),
            );
            return Ok(response);
        }
    }
    if for_the_proxy {
        return Ok(local(&proxy, &request));
    }
    if request.method() == hyper::Method::CONNECT {
        return Ok(connect::handle(&proxy, request).await);
    }
    if websocket::is_upgrade(&request) {
        return Ok(websocket::handle(&proxy, request).await);
    }
    Ok(forward::handle(&proxy, &origin, request).await)
}

/// Requests addressed to the proxy itself: the PAC file, and a hint otherwise.
fn local(proxy: &Proxy, request: &Request<Incoming>) -> Response<Body> {
    match (request.method().as_str(), request.uri().path()) {
        ("GET" | "HEAD", "/proxy.pac") => {
            let host = request
                .headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok());
            pac::response(&pac::advertised(proxy.address, host), proxy.pac)
        }
        ("GET", "/status") => status(proxy),
        _ => text(
            StatusCode::BAD_REQUEST,
            "this is the Fluidity proxy: configure it as your HTTP proxy, or fetch /proxy.pac \
             (or /status)\n",
        ),
    }
}

/// `GET /status`: whether the tunnel is up (or why it is down), its open streams, and the
/// agent's tokio tasks (a leak shows as a count that keeps growing).
fn status(proxy: &Proxy) -> Response<Body> {
    let up = proxy.tunnel.is_up();
    let document = serde_json::json!({
        "tunnel": if up { "up" } else { "down" },
        "last_failure": proxy.tunnel.last_failure(),
        "streams": proxy.tunnel.stream_count(),
        "tasks": tokio::runtime::Handle::current().metrics().num_alive_tasks(),
    });
    let mut response = text(StatusCode::OK, document.to_string());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Why a stream through the tunnel could not be opened. The HTTP front end answers it with a
/// status ([`OpenError::response`]), the SOCKS5 one with a reply code.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The host keeps failing: its breaker holds requests for this long.
    Breaker(Duration),
    /// The tunnel is down and did not come back within `reconnect_wait`.
    Tunnel(TunnelError),
    /// The server refused the stream.
    Refused(Refusal),
    /// The stream failed otherwise (the tunnel closed under it).
    Failed(fluidity_core::Error),
}

impl OpenError {
    /// The HTTP answer: 403, 504 or 502 with the reason (see [`refused`]).
    pub(crate) fn response(&self, host: &str) -> Response<Body> {
        match self {
            OpenError::Breaker(wait) => bad_gateway(
                host,
                &format!("failing repeatedly; retrying in {}s", wait.as_secs().max(1)),
            ),
            OpenError::Tunnel(e) => bad_gateway(host, &e.to_string()),
            OpenError::Refused(refusal) => refused(host, refusal),
            OpenError::Failed(e @ fluidity_core::Error::TooManyStreams(_)) => {
                tracing::info!(target_host = host, reason = %e, "503");
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("fluidity: {host}: {e}\n"),
                )
            }
            OpenError::Failed(e) => bad_gateway(host, &e.to_string()),
        }
    }
}

/// Records a refusal in `host`'s breaker, unless it says nothing about the host (the server
/// was too busy to try it).
pub(crate) fn record_refusal(proxy: &Proxy, host: &str, refusal: &Refusal) {
    if refusal.code != RefusalCode::Unavailable {
        proxy.breakers.record(host, false);
    }
}

/// The tunnel for a request to `host`, unless the host keeps failing or the tunnel is down
/// and did not come back within `reconnect_wait`.
pub(crate) async fn tunnel_for(proxy: &Proxy, host: &str) -> Result<Connection, OpenError> {
    if let Err(wait) = proxy.breakers.check(host) {
        return Err(OpenError::Breaker(wait));
    }
    proxy.tunnel.connection().await.map_err(OpenError::Tunnel)
}

/// A CONNECT stream to `authority` (on `host`), once the server reached it; the outcome
/// feeds `host`'s breaker.
pub(crate) async fn open_connect(
    proxy: &Proxy,
    host: &str,
    authority: &str,
) -> Result<StreamHandle, OpenError> {
    let connection = tunnel_for(proxy, host).await?;
    match connection.connect(authority).await {
        Ok(stream) => {
            proxy.breakers.record(host, true);
            Ok(stream)
        }
        Err(ref e) if let Some(refusal) = e.refusal() => {
            record_refusal(proxy, host, refusal);
            Err(OpenError::Refused(refusal.clone()))
        }
        Err(e) => Err(OpenError::Failed(e)),
    }
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(full(message.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The answer to a stream the server refused: 403 when its egress policy forbids the target
/// (as a filtering proxy answers), 504 when the target did not answer in time, 503 when the
/// server could take no more streams, else 502; always with the server's reason.
pub(crate) fn refused(host: &str, refusal: &Refusal) -> Response<Body> {
    let status = match refusal.code {
        RefusalCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        RefusalCode::Denied => StatusCode::FORBIDDEN,
        RefusalCode::TimedOut => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    tracing::info!(target_host = host, reason = %refusal.reason, status = status.as_u16(), "refused");
    text(status, format!("fluidity: {host}: {}\n", refusal.reason))
}

/// 502 with the reason, logged.
pub(crate) fn bad_gateway(what: &str, reason: &str) -> Response<Body> {
    tracing::info!(target_host = what, %reason, "502");
    text(
        StatusCode::BAD_GATEWAY,
        format!("fluidity: {what}: {reason}\n"),
    )
}

pub(crate) fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

pub(crate) fn empty() -> Body {
    full(Bytes::new())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
