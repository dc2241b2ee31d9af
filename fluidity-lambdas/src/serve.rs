//! The local control plane: the five functions over plain HTTP (`POST /wake`, `/query`,
//! `/kill`, `/sleep`, `/ca`; `/sign` is the Go API's name for `/ca`), for self-hosting and
//! tests. The caller's IP is the TCP peer's: put it behind nothing that hides it, since the CA
//! authorises agents by that IP.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fluidity_core::http_server::HttpLimits;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::app::{ControlPlane, Function};

/// The largest request body (a CSR is about 1 KiB).
const MAX_BODY: usize = 64 * 1024;
/// How long one request may take to arrive.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `plane` on `listener` until `shutdown`; requests in flight finish.
pub async fn run(
    listener: TcpListener,
    plane: Arc<ControlPlane>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "local control plane listening");
    let limits = HttpLimits {
        max_connections: 256,
        header_read_timeout: READ_TIMEOUT,
        max_header_size: 16 * 1024,
        drain_timeout: Some(READ_TIMEOUT),
    };
    let service_for = |peer| {
        let plane = plane.clone();
        hyper::service::service_fn(move |request| {
            let plane = plane.clone();
            async move { Ok::<_, Infallible>(route(&plane, request, peer).await) }
        })
    };
    fluidity_core::http_server::serve(listener, limits, service_for, shutdown).await;
    Ok(())
}

async fn route(
    plane: &ControlPlane,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = request
        .uri()
        .path()
        .trim_end_matches('/')
        .trim_start_matches('/');
    let function = match path.parse::<Function>() {
        Ok(function) => function,
        Err(_) if path == "health" => return reply(StatusCode::OK, &json!({"status": "ok"})),
        Err(_) => {
            return reply(
                StatusCode::NOT_FOUND,
                &json!({"error": format!("no such function /{path}: use /wake, /query, /kill, /sleep or /ca")}),
            );
        }
    };
    if request.method() != Method::POST {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "use POST"}),
        );
    }
    let body = match tokio::time::timeout(
        READ_TIMEOUT,
        Limited::new(request.into_body(), MAX_BODY).collect(),
    )
    .await
    {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => {
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({"error": format!("request body over {MAX_BODY} bytes or broken")}),
            );
        }
        Err(_) => {
            return reply(
                StatusCode::REQUEST_TIMEOUT,
                &json!({"error": "request body too slow"}),
            );
        }
    };
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(value) => value,
            Err(_) => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "Invalid JSON in request body"}),
                );
            }
        }
    };
    let (status, answer) = plane
        .handle(function, body, Some(peer.ip().to_canonical()))
        .await;
    reply(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &answer,
    )
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
