//! Plain `http://` requests through a Rust server, relayed: the agent speaks HTTP/1.1 to the
//! origin itself, over a CONNECT stream through the tunnel, and keeps that stream for the
//! client connection's next request to the same origin (keep-alive). The server then only
//! moves bytes, with no HTTP client of its own in the path, which takes most of the server's
//! work per request away; its egress policy still decides when the stream opens.
//!
//! Go servers (no extensions), and `https://` absolute-form requests (the server makes the
//! TLS connection), take one HTTP stream per request instead (`forward`).

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use fluidity_core::headers::{connection_listed, is_hop_by_hop};
use http::header::{CONNECTION, HOST, HeaderMap, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;

use super::{Body, Proxy, bad_gateway, open_connect};

/// What the agent sends the origin.
type Outgoing = BoxBody<Bytes, hyper::Error>;

/// A kept origin connection unused this long is closed, freeing its stream (a slot of
/// `max_streams`) and the server's socket while the client idles on its connection.
const KEEP_IDLE: Duration = Duration::from_secs(30);

/// The origin connection one client connection is using, if any: at most one per client
/// connection, kept while the client keeps its connection (so `max_clients` bounds them) and
/// uses it within [`KEEP_IDLE`], and replaced when the client asks another origin.
pub(crate) struct OriginConnection {
    kept: Mutex<Option<Kept>>,
    reaper: std::sync::atomic::AtomicBool,
    idle: Duration,
    /// Told when the client connection (and this) goes, so the reaper ends at once.
    gone: Arc<tokio::sync::Notify>,
}

impl Drop for OriginConnection {
    fn drop(&mut self) {
        self.gone.notify_one();
    }
}

impl Default for OriginConnection {
    fn default() -> Self {
        OriginConnection::with_idle(KEEP_IDLE)
    }
}

struct Kept {
    authority: String,
    sender: SendRequest<Outgoing>,
    since: Instant,
}

impl OriginConnection {
    fn with_idle(idle: Duration) -> Self {
        OriginConnection {
            kept: Mutex::default(),
            reaper: std::sync::atomic::AtomicBool::default(),
            idle,
            gone: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Kept>> {
        self.kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take(&self, authority: &str) -> Option<SendRequest<Outgoing>> {
        match self.lock().take() {
            Some(k) if k.authority == authority && !k.sender.is_closed() => Some(k.sender),
            // Another origin's connection goes (the client moved on), closing its stream.
            _ => None,
        }
    }

    /// Keeps `sender` for the next request. (Dropping a sender lets a response in flight on
    /// it finish: hyper closes the connection after.)
    fn keep(self: &Arc<Self>, authority: String, sender: SendRequest<Outgoing>) {
        *self.lock() = Some(Kept {
            authority,
            sender,
            since: Instant::now(),
        });
        if !self.reaper.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(self), self.gone.clone()));
        }
    }
}

/// Closes the kept connection of a client connection once it idled [`KEEP_IDLE`]; ends when
/// the client connection is gone.
async fn reap(origin: Weak<OriginConnection>, gone: Arc<tokio::sync::Notify>) {
    loop {
        let due = match origin.upgrade() {
            Some(origin) => {
                let since = origin.lock().as_ref().map_or(Instant::now(), |k| k.since);
                since + origin.idle
            }
            None => return,
        };
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            () = gone.notified() => return,
        }
        let Some(origin) = origin.upgrade() else {
            return;
        };
        let mut kept = origin.lock();
        if kept
            .as_ref()
            .is_some_and(|k| k.since.elapsed() >= origin.idle)
        {
            *kept = None;
        }
    }
}

/// The `host:port` a plain HTTP request goes to.
pub(crate) fn authority(uri: &Uri) -> Option<String> {
    let host = uri.host()?;
    Some(format!("{host}:{}", uri.port_u16().unwrap_or(80)))
}

/// Sends `request` (absolute-form, `http://`) to its origin over the client connection's kept
/// origin connection, or a new one.
pub(crate) async fn handle(
    proxy: &Proxy,
    origin: &Arc<OriginConnection>,
    request: Request<Incoming>,
    host: &str,
    authority: String,
) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let origin_form = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    // A proxy sends the request target's host, whatever `Host` the client sent (RFC 9112
    // 3.2.2), and never the target's user information.
    let host_header = match parts.uri.port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    match HeaderValue::from_str(&host_header) {
        Ok(value) => {
            parts.headers.insert(HOST, value);
        }
        Err(_) => return bad_gateway(host, "the request's host is not a valid Host header"),
    }
    parts.uri = Uri::from(origin_form);
    strip_hop_by_hop(&mut parts.headers);
    let mut kept = origin.take(&authority);
    // Only a request without a body that changes nothing may be sent again, when the origin
    // turns out to have closed a kept connection as the request went out.
    let repeatable = kept.is_some()
        && hyper::body::Body::is_end_stream(&body)
        && matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let head = repeatable.then(|| {
        (
            parts.method.clone(),
            parts.uri.clone(),
            parts.headers.clone(),
        )
    });
    let mut request = Request::from_parts(parts, body.boxed());

    loop {
        let reused = kept.is_some();
        let mut sender = match kept.take() {
            Some(sender) => sender,
            None => match connect(proxy, host, &authority).await {
                Ok(sender) => sender,
                Err(response) => return response,
            },
        };
        if let Err(e) = sender.ready().await {
            // The request has not gone out: a kept connection the origin closed meanwhile
            // is simply replaced.
            if reused {
                continue;
            }
            return bad_gateway(host, &format!("the origin closed the connection: {e}"));
        }
        match sender.send_request(request).await {
            Ok(response) => {
                origin.keep(authority, sender);
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                return Response::from_parts(parts, body.map_err(std::io::Error::other).boxed());
            }
            // The origin closed a kept connection before taking the request: once more, on
            // a new one.
            Err(e) if reused && (e.is_canceled() || e.is_incomplete_message() || e.is_closed()) => {
                let Some((method, uri, headers)) = &head else {
                    return bad_gateway(host, &format!("the origin closed the connection: {e}"));
                };
                tracing::debug!(%authority, error = %e, "kept origin connection closed; retrying");
                let mut again = Request::new(Empty::new().map_err(|never| match never {}).boxed());
                *again.method_mut() = method.clone();
                *again.uri_mut() = uri.clone();
                *again.headers_mut() = headers.clone();
                request = again;
            }
            Err(e) => return bad_gateway(host, &format!("the origin failed: {e}")),
        }
    }
}

/// A new origin connection: a CONNECT stream through the tunnel (the server's egress policy
/// applies), with an HTTP/1.1 client on it.
async fn connect(
    proxy: &Proxy,
    host: &str,
    authority: &str,
) -> Result<SendRequest<Outgoing>, Response<Body>> {
    let stream = open_connect(proxy, host, authority)
        .await
        .map_err(|e| e.response(host))?;
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| bad_gateway(host, &e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "origin connection ended");
        }
    });
    Ok(sender)
}

/// Removes hop-by-hop headers, the standard ones and those the `Connection` header lists.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed = connection_listed(
        headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    for name in listed {
        headers.remove(name.as_str());
    }
    let hop: Vec<_> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name.as_str()))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender on an in-memory connection nobody answers.
    async fn sender() -> (SendRequest<Outgoing>, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(ours))
            .await
            .unwrap();
        tokio::spawn(connection);
        (sender, theirs)
    }

    #[tokio::test]
    async fn a_kept_connection_is_closed_after_idling_and_reused_before() {
        let idle = Duration::from_millis(300);
        let origin = Arc::new(OriginConnection::with_idle(idle));
        let (first, _peer) = sender().await;
        origin.keep("a:80".into(), first);
        tokio::time::sleep(idle / 2).await;
        let reused = origin.take("a:80").expect("kept within the idle time");
        origin.keep("a:80".into(), reused);
        tokio::time::sleep(idle / 2).await;
        assert!(origin.lock().is_some(), "used again within the idle time");
        // Idle for longer than that since the last use: gone.
        tokio::time::sleep(idle * 2).await;
        assert!(origin.lock().is_none());
        assert!(origin.take("a:80").is_none());
    }

    #[tokio::test]
    async fn the_reaper_ends_with_the_client_connection() {
        let origin = Arc::new(OriginConnection::default());
        let (first, _peer) = sender().await;
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = tasks();
        origin.keep("a:80".into(), first);
        assert_eq!(tasks(), before + 1, "the reaper");
        drop(origin);
        let started = std::time::Instant::now();
        while tasks() > before {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the reaper outlived its client connection"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn another_origin_replaces_the_kept_connection() {
        let origin = Arc::new(OriginConnection::default());
        let (first, _peer) = sender().await;
        origin.keep("a:80".into(), first);
        assert!(origin.take("b:80").is_none());
        assert!(
            origin.take("a:80").is_none(),
            "asking for b dropped a's connection"
        );
    }

    #[test]
    fn the_authority_defaults_to_port_80() {
        let uri: Uri = "http://example.com/x".parse().unwrap();
        assert_eq!(authority(&uri).as_deref(), Some("example.com:80"));
        let uri: Uri = "http://[::1]:8080/".parse().unwrap();
        assert_eq!(authority(&uri).as_deref(), Some("[::1]:8080"));
    }
}
