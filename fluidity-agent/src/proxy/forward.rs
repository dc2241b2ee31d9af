//! Plain HTTP (absolute-form requests): relayed as bytes to a Rust server (`relay`), else one
//! HTTP stream per request through the tunnel, request and response bodies streamed both
//! ways, any size, with backpressure.

use bytes::Bytes;
use fluidity_core::StreamReader;
use fluidity_core::envelope::Headers;
use fluidity_core::headers::{is_hop_by_hop, strip_hop_by_hop};
use fluidity_core::{Reply, Target};
use futures::Stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::io::AsyncWriteExt;

use super::relay::{self, OriginConnection};
use super::{Body, OpenError, Proxy, bad_gateway, record_refusal, refused, tunnel_for};

pub(crate) async fn handle(
    proxy: &Proxy,
    origin: &std::sync::Arc<OriginConnection>,
    request: Request<Incoming>,
) -> Response<Body> {
    let host = request.uri().host().unwrap_or_default().to_owned();
    let connection = match tunnel_for(proxy, &host).await {
        Ok(connection) => connection,
        Err(e) => return e.response(&host),
    };
    // A Rust server relays plain HTTP as bytes (see `relay`).
    if request.uri().scheme() == Some(&http::uri::Scheme::HTTP)
        && connection.peer_speaks_extensions()
        && let Some(authority) = relay::authority(request.uri())
    {
        return relay::handle(proxy, origin, request, &host, authority).await;
    }
    let (parts, mut body) = request.into_parts();
    let mut headers = Headers::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    strip_hop_by_hop(&mut headers);
    let stream = match connection.open(Target::Http {
        method: parts.method.to_string(),
        url: parts.uri.to_string(),
        headers,
    }) {
        Ok(stream) => stream,
        Err(e) => return OpenError::Failed(e).response(&host),
    };
    let (reader, mut writer) = stream.into_split();
    let upload = tokio::spawn(async move {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data()
                        && writer.write_all(&data).await.is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    writer.reset(&format!("the client's request body failed: {e}"));
                    return;
                }
            }
        }
        let _ = writer.shutdown().await;
    });
    let (status_code, response_headers) = match reader.reply().await {
        Ok(Reply::Http {
            status_code,
            headers,
        }) => {
            proxy.breakers.record(&host, true);
            (status_code, headers)
        }
        Ok(other) => return bad_gateway(&host, &format!("unexpected reply {other:?}")),
        Err(ref e) if let Some(refusal) = e.refusal() => {
            upload.abort();
            record_refusal(proxy, &host, refusal);
            return refused(&host, refusal);
        }
        Err(e) => {
            upload.abort();
            return bad_gateway(&host, &e.to_string());
        }
    };
    let body = StreamBody::new(response_body(reader));
    let mut response = Response::new(BodyExt::boxed(body));
    *response.status_mut() = StatusCode::from_u16(status_code).unwrap_or(StatusCode::BAD_GATEWAY);
    for (name, values) in response_headers {
        if is_hop_by_hop(&name) {
            continue;
        }
        let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) else {
            tracing::debug!(%name, "dropping an invalid response header name");
            continue;
        };
        for value in values {
            match http::HeaderValue::from_str(&value) {
                Ok(value) => {
                    response.headers_mut().append(name.clone(), value);
                }
                Err(_) => tracing::debug!(%name, "dropping an invalid response header value"),
            }
        }
    }
    response
}

/// The response body as the tunnel delivers it: each chunk goes to hyper as it is, without a
/// copy or a read buffer per response (a 1 KiB response used to allocate 64 KiB).
fn response_body(reader: StreamReader) -> impl Stream<Item = std::io::Result<Frame<Bytes>>> {
    futures::stream::try_unfold(reader, |reader| async move {
        match reader.recv_chunk().await {
            Ok(Some(chunk)) => Ok(Some((Frame::data(chunk.data), reader))),
            Ok(None) => Ok(None),
            Err(e) => Err(std::io::Error::other(e)),
        }
    })
}
