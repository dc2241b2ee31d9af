//! Plain HTTP: execute the agent's request with reqwest (HTTP/1.1 or HTTP/2 to the target,
//! HTTPS verified against the Mozilla roots), streaming bodies both ways, never following
//! redirects, preserving status and every end-to-end header.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use fluidity_core::envelope::Headers;
use fluidity_core::headers::{connection_listed, is_hop_by_hop, strip_hop_by_hop};
use fluidity_core::{IncomingStream, StreamReader, StreamWriter};
use fluidity_core::{RefusalCode, Reply};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Exits;
use crate::egress::{EgressPolicy, TargetError, connect_code};
use crate::metrics::{Failure, StreamKind};

/// Read size for request bodies.
const CHUNK: usize = 32 * 1024;

/// Idle keep-alive connections kept per target host, and for how long: reuse for busy sites
/// without holding a descriptor per past request (reqwest's defaults: unbounded, 90 s).
pub const IDLE_CONNECTIONS_PER_HOST: usize = 16;
const IDLE_CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Builds the shared HTTP client: no proxy, no redirects, no decompression, egress-checked DNS.
pub fn client(
    egress: EgressPolicy,
    tls: rustls::ClientConfig,
    connect_timeout: std::time::Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_HOST)
        .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
        .dns_resolver(Arc::new(EgressResolver(egress)))
        .build()
}

/// Resolves names for reqwest, keeping only addresses the egress policy allows.
struct EgressResolver(EgressPolicy);

impl reqwest::dns::Resolve for EgressResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            // The typed error travels inside reqwest's; `TargetError::find` gets it back.
            let addresses = policy
                .resolve(name.as_str(), 0)
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Serves one HTTP stream.
pub async fn serve(
    exits: &Exits,
    incoming: IncomingStream,
    method: String,
    url: String,
    headers: Headers,
) {
    let _open = exits.metrics.stream_opened(StreamKind::Http);
    let id = incoming.id();
    let (reader, writer) = incoming.defer().into_split();
    let request = match build_request(exits, &method, &url, headers) {
        Ok(request) => request,
        Err(error) => {
            tracing::info!(%id, %method, %error, "HTTP request refused");
            let _ = writer.refuse(error.code(), &error.to_string());
            return;
        }
    };
    let request = match body(reader).await {
        Ok(Some(body)) => request.body(body),
        Ok(None) => request,
        Err(e) => {
            tracing::debug!(%id, error = %e, "request body failed");
            writer.reset(&e.to_string());
            return;
        }
    };
    let host = reqwest::Url::parse(&url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            let reason = describe(&e);
            let code = refusal_code(&e);
            exits.metrics.failed(match TargetError::find(&e) {
                Some(target) => Failure::of(target),
                None => Failure::HttpFailed,
            });
            tracing::info!(%id, %method, %host, %reason, "HTTP request failed");
            let _ = writer.refuse(code, &reason);
            return;
        }
    };
    let status = response.status().as_u16();
    tracing::info!(%id, %method, %host, status, "HTTP");
    if let Err(e) = writer.respond(Reply::Http {
        status_code: status,
        headers: response_headers(response.headers()),
    }) {
        tracing::debug!(%id, error = %e, "stream gone before the response");
        return;
    }
    relay_response(exits, writer, response).await;
}

fn build_request(
    exits: &Exits,
    method: &str,
    url: &str,
    headers: Headers,
) -> Result<reqwest::RequestBuilder, TargetError> {
    let failed = TargetError::Protocol;
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| failed(format!("invalid method {method:?}")))?;
    let url = reqwest::Url::parse(url).map_err(|e| failed(format!("invalid URL {url:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(failed(format!(
            "unsupported scheme {:?} (http and https only)",
            url.scheme()
        )));
    }
    // IP literals never reach the resolver, so check them here.
    let literal = url.host_str().and_then(|host| {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
    });
    if let Some(ip) = literal {
        exits
            .egress
            .check(&ip.to_string(), ip)
            .inspect_err(|e| exits.metrics.failed(Failure::of(e)))?;
    }
    let mut headers = headers;
    strip_hop_by_hop(&mut headers);
    let mut map = reqwest::header::HeaderMap::new();
    for (name, values) in &headers {
        // The target's Host comes from the URL.
        if name.eq_ignore_ascii_case("host") {
            continue;
        }
        let Ok(name) = reqwest::header::HeaderName::from_bytes(name.as_bytes()) else {
            return Err(failed(format!("invalid header name {name:?}")));
        };
        for value in values {
            let value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| failed(format!("invalid value for header {name}")))?;
            map.append(name.clone(), value);
        }
    }
    Ok(exits.http.request(method, url).headers(map))
}

/// The request body: `None` when the stream ends at once (no body), else a stream that
/// starts with the first chunk already read.
async fn body(mut reader: StreamReader) -> std::io::Result<Option<reqwest::Body>> {
    let mut first = vec![0u8; CHUNK];
    let n = reader.read(&mut first).await?;
    if n == 0 {
        return Ok(None);
    }
    first.truncate(n);
    let rest = futures::stream::unfold(reader, |mut reader| async move {
        let mut buffer = vec![0u8; CHUNK];
        match reader.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok::<Bytes, std::io::Error>(Bytes::from(buffer)), reader))
            }
            Err(e) => Some((Err(e), reader)),
        }
    });
    let stream = futures::stream::once(async move { Ok(Bytes::from(first)) }).chain(rest);
    Ok(Some(reqwest::Body::wrap_stream(stream)))
}

fn response_headers(headers: &reqwest::header::HeaderMap) -> Headers {
    let listed = connection_listed(
        headers
            .get_all("connection")
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let mut out = Headers::new();
    for (name, value) in headers {
        let name = name.as_str();
        if is_hop_by_hop(name) || listed.iter().any(|l| l == name) {
            continue;
        }
        out.entry(name.to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    out
}

async fn relay_response(exits: &Exits, mut writer: StreamWriter, response: reqwest::Response) {
    let mut body = response.bytes_stream();
    let mut sent = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                exits.metrics.failed(Failure::HttpFailed);
                writer.reset(&format!("response body failed: {}", describe(&e)));
                return;
            }
        };
        if writer.write_all(&chunk).await.is_err() {
            // The agent went away; dropping the response closes the target connection.
            return;
        }
        sent += chunk.len() as u64;
        exits.metrics.touch();
    }
    let _ = writer.shutdown().await;
    exits.metrics.add_bytes(0, sent);
}

/// reqwest's error with its causes, which carry the useful part ("connection refused").
/// What kind of failure a request error is: the egress policy's or the resolver's verdict,
/// else the connect error's kind, else a timeout.
fn refusal_code(error: &reqwest::Error) -> RefusalCode {
    if let Some(target) = TargetError::find(error) {
        return target.code();
    }
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = next {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return connect_code(io.kind());
        }
        next = cause.source();
    }
    if error.is_timeout() {
        RefusalCode::TimedOut
    } else {
        RefusalCode::Other
    }
}

fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
