//! `ws://` through the plain-HTTP proxy path: the upgrade request goes to the origin over a
//! CONNECT stream (HTTP/1.1 spoken by the agent itself), and after `101 Switching Protocols`
//! both upgraded connections are relayed byte for byte, so every frame, ping, close code and
//! extension passes untouched. (`wss://` clients use CONNECT, which needs nothing special.)

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::{Body, Proxy, bad_gateway, empty, open_connect, text};

/// Whether the request asks for a WebSocket upgrade.
pub(crate) fn is_upgrade(request: &Request<Incoming>) -> bool {
    let has = |name: http::HeaderName, token: &str| {
        request.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(hyper::header::UPGRADE, "websocket") && has(hyper::header::CONNECTION, "upgrade")
}

pub(crate) async fn handle(proxy: &Proxy, mut request: Request<Incoming>) -> Response<Body> {
    let uri = request.uri().clone();
    match uri.scheme_str() {
        Some("http" | "ws") => {}
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                "use CONNECT for wss:// and https:// WebSockets\n",
            );
        }
    }
    let Some(host) = uri.host().map(str::to_owned) else {
        return text(StatusCode::BAD_REQUEST, "the request URL has no host\n");
    };
    let authority = format!("{host}:{}", uri.port_u16().unwrap_or(80));
    let stream = match open_connect(proxy, &host, &authority).await {
        Ok(stream) => stream,
        Err(e) => return e.response(&host),
    };
    let (mut sender, origin_connection) = match hyper::client::conn::http1::handshake::<
        _,
        Empty<Bytes>,
    >(TokioIo::new(stream))
    .await
    {
        Ok(parts) => parts,
        Err(e) => return bad_gateway(&host, &e.to_string()),
    };
    tokio::spawn(async move {
        if let Err(e) = origin_connection.with_upgrades().await {
            tracing::debug!(error = %e, "WebSocket origin connection ended");
        }
    });

    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let mut upstream = Request::builder()
        .method(request.method().clone())
        .uri(path);
    for (name, value) in request.headers() {
        let lower = name.as_str();
        if lower.starts_with("proxy-") {
            continue;
        }
        upstream = upstream.header(name, value);
    }
    if !request.headers().contains_key(hyper::header::HOST)
        && let Some(authority) = uri.authority()
    {
        upstream = upstream.header(hyper::header::HOST, authority.as_str());
    }
    let upstream = match upstream.body(Empty::new()) {
        Ok(upstream) => upstream,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let client_upgrade = hyper::upgrade::on(&mut request);
    let mut response = match sender.send_request(upstream).await {
        Ok(response) => response,
        Err(e) => return bad_gateway(&host, &e.to_string()),
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The origin declined: pass its answer on as is.
        return response.map(|body| body.map_err(std::io::Error::other).boxed());
    }
    let origin_upgrade = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        match tokio::try_join!(client_upgrade, origin_upgrade) {
            Ok((client, origin)) => {
                let mut client = TokioIo::new(client);
                let mut origin = TokioIo::new(origin);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut origin).await {
                    tracing::debug!(error = %e, "WebSocket relay ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut answer = Response::new(empty());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *answer.headers_mut() = response.headers().clone();
    answer
}
