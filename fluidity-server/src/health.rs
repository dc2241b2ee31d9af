//! `GET /health` (JSON) and `GET /metrics` (Prometheus) for ECS health checks and scraping.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use fluidity_core::http_server::HttpLimits;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// Serves the endpoints on `listener` until `shutdown` completes. Scrapers make short
/// requests: few connections, short deadlines.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = HttpLimits {
        max_connections: 64,
        header_read_timeout: std::time::Duration::from_secs(5),
        max_header_size: 16 * 1024,
        drain_timeout: None,
    };
    let service_for = |_peer| {
        let metrics = metrics.clone();
        hyper::service::service_fn(move |request| respond(request, metrics.clone()))
    };
    fluidity_core::http_server::serve(listener, limits, service_for, shutdown).await;
}

async fn respond(
    request: Request<hyper::body::Incoming>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match (request.method().as_str(), request.uri().path()) {
        ("GET", "/health") => (StatusCode::OK, "application/json", metrics.health_json()),
        ("GET", "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.prometheus(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /health or /metrics\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    Ok(response)
}
