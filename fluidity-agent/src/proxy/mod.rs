//! The local HTTP proxy: absolute-form requests, CONNECT, WebSocket upgrades, `/proxy.pac`,
//! optional Basic proxy authentication. Everything goes through the one tunnel.

mod connect;
mod forward;
mod pac;
mod websocket;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

use fluidity_core::http_server::HttpLimits;
use fluidity_core::{Connection, StreamHandle};

use crate::breaker::Breakers;
use crate::tunnel::Tunnel;

/// Response bodies the proxy produces.
pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

/// What every request handler shares.
#[derive(Debug)]
pub(crate) struct Proxy {
    pub tunnel: Tunnel,
    pub breakers: Breakers,
    /// Expected `Proxy-Authorization` value, if authentication is on.
    pub authorization: Option<String>,
    /// The proxy's own address (for the PAC file).
    pub address: SocketAddr,
}

impl Proxy {
    pub fn new(tunnel: Tunnel, proxy_auth: Option<&str>, address: SocketAddr) -> Self {
        Proxy {
            tunnel,
            breakers: Breakers::default(),
            authorization: proxy_auth.map(|credentials| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(credentials)
                )
            }),
            address,
        }
    }
}

/// Serves proxy clients on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let service_for = |_peer| {
        let proxy = proxy.clone();
        hyper::service::service_fn(move |request| handle(proxy.clone(), request))
    };
    fluidity_core::http_server::serve(listener, limits, service_for, shutdown).await;
}

async fn handle(
    proxy: Arc<Proxy>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    // Origin-form requests are for the proxy itself.
    if request.method() != hyper::Method::CONNECT && request.uri().scheme().is_none() {
        return Ok(local(&proxy, &request));
    }
    if let Some(expected) = &proxy.authorization {
        let given = request
            .headers()
            .get(hyper::header::PROXY_AUTHORIZATION)
            .map(|v| v.as_bytes());
        if !given.is_some_and(|given| constant_time_eq(given, expected.as_bytes())) {
            let mut response = text(
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                "proxy authentication required\n",
            );
            response.headers_mut().insert(
                hyper::header::PROXY_AUTHENTICATE,
                http::HeaderValue::from_static("Basic realm=\"fluidity\""),
            );
            return Ok(response);
        }
    }
    if request.method() == hyper::Method::CONNECT {
        return Ok(connect::handle(&proxy, request).await);
    }
    if websocket::is_upgrade(&request) {
        return Ok(websocket::handle(&proxy, request).await);
    }
    Ok(forward::handle(&proxy, request).await)
}

/// Requests addressed to the proxy itself: the PAC file, and a hint otherwise.
fn local(proxy: &Proxy, request: &Request<Incoming>) -> Response<Body> {
    match (request.method().as_str(), request.uri().path()) {
        ("GET" | "HEAD", "/proxy.pac") => {
            let host = request
                .headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok());
            pac::response(&pac::advertised(proxy.address, host))
        }
        _ => text(
            StatusCode::BAD_REQUEST,
            "this is the Fluidity proxy: configure it as your HTTP proxy, or fetch /proxy.pac\n",
        ),
    }
}

/// The tunnel for a request to `host`, or the 502 to answer instead (the host keeps failing,
/// or the tunnel is down and did not come back within `reconnect_wait`).
pub(crate) async fn tunnel_for(proxy: &Proxy, host: &str) -> Result<Connection, Response<Body>> {
    if let Err(wait) = proxy.breakers.check(host) {
        return Err(bad_gateway(
            host,
            &format!("failing repeatedly; retrying in {}s", wait.as_secs().max(1)),
        ));
    }
    proxy
        .tunnel
        .connection()
        .await
        .map_err(|reason| bad_gateway(host, &reason.to_string()))
}

/// A CONNECT stream to `authority` (on `host`), once the server reached it; the outcome
/// feeds `host`'s breaker.
pub(crate) async fn open_connect(
    proxy: &Proxy,
    host: &str,
    authority: &str,
) -> Result<StreamHandle, Response<Body>> {
    let connection = tunnel_for(proxy, host).await?;
    match connection.connect(authority).await {
        Ok(stream) => {
            proxy.breakers.record(host, true);
            Ok(stream)
        }
        Err(e) if e.refusal().is_some() => {
            proxy.breakers.record(host, false);
            Err(bad_gateway(host, e.refusal().unwrap_or_default()))
        }
        Err(e) => Err(bad_gateway(host, &e.to_string())),
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
