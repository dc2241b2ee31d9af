//! Go agents' `ws_open`: the server makes the WebSocket connection (tokio-tungstenite over a
//! socket the egress policy allowed, TLS for `wss://`) and relays whole messages.
//!
//! Fluidity agents do not use this path: they relay WebSocket upgrades as bytes over a CONNECT
//! stream, which keeps every frame (and extension) intact.

use std::sync::Arc;

use fluidity_core::Reply;
use fluidity_core::envelope::{Headers, ws_type};
use fluidity_core::headers::is_hop_by_hop;
use fluidity_core::{IncomingStream, StreamHandle};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::either::Either;

use super::{Exits, dial};
use crate::egress::TargetError;
use crate::metrics::{Failure, StreamKind};

/// Headers tungstenite sets itself.
const HANDSHAKE_HEADERS: [&str; 5] = [
    "host",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "content-length",
];

/// Serves one `ws_open` stream.
pub async fn serve(exits: &Exits, incoming: IncomingStream, url: String, headers: Headers) {
    let _open = exits.metrics.stream_opened(StreamKind::WebSocket);
    let id = incoming.id();
    let socket = match open(exits, &url, &headers).await {
        Ok(socket) => socket,
        Err(error) => {
            tracing::info!(%id, %error, "WebSocket refused");
            let _ = incoming.refuse(error.code(), &error.to_string());
            return;
        }
    };
    let Ok(stream) = incoming.accept(Reply::WebSocket) else {
        return;
    };
    relay(exits, stream, socket).await;
}

type Socket = tokio_tungstenite::WebSocketStream<
    Either<tokio::net::TcpStream, tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
>;

async fn open(exits: &Exits, url: &str, headers: &Headers) -> Result<Socket, TargetError> {
    let failed = TargetError::Protocol;
    let parsed =
        reqwest::Url::parse(url).map_err(|e| failed(format!("invalid URL {url:?}: {e}")))?;
    let secure = match parsed.scheme() {
        "ws" => false,
        "wss" => true,
        other => return Err(failed(format!("unsupported WebSocket scheme {other:?}"))),
    };
    let host = parsed
        .host_str()
        .ok_or_else(|| failed(format!("{url:?} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = parsed.port().unwrap_or(if secure { 443 } else { 80 });
    let addresses = exits
        .egress
        .resolve(&host, port)
        .await
        .inspect_err(|e| exits.metrics.failed(Failure::of(e)))?;
    let tcp = dial(&addresses, exits.connect_timeout)
        .await
        .inspect_err(|_| {
            exits.metrics.failed(Failure::TargetUnreachable);
        })?;
    let transport = if secure {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| failed(format!("invalid TLS name {host:?}: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&exits.tls))
            .connect(name, tcp)
            .await
            .map_err(|e| failed(format!("TLS with {host}: {e}")))?;
        Either::Right(tls)
    } else {
        Either::Left(tcp)
    };
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .map_err(|e| failed(format!("WebSocket request for {url:?}: {e}")))?;
    for (name, values) in headers {
        let lower = name.to_ascii_lowercase();
        if is_hop_by_hop(&lower) || HANDSHAKE_HEADERS.contains(&lower.as_str()) {
            continue;
        }
        let Ok(name) = http::HeaderName::from_bytes(lower.as_bytes()) else {
            continue;
        };
        for value in values {
            if let Ok(value) = http::HeaderValue::from_str(value) {
                request.headers_mut().append(name.clone(), value);
            }
        }
    }
    // A message travels in one envelope, so nothing larger than a frame can be relayed:
    // refuse it at the target instead of buffering tungstenite's default 64 MiB.
    let limits = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_WEBSOCKET_MESSAGE))
        .max_frame_size(Some(MAX_WEBSOCKET_MESSAGE));
    let handshake = tokio_tungstenite::client_async_with_config(request, transport, Some(limits));
    let (socket, _response) = tokio::time::timeout(exits.connect_timeout, handshake)
        .await
        .map_err(|_| TargetError::TimedOut(exits.connect_timeout))?
        .map_err(|e| failed(format!("WebSocket handshake with {url}: {e}")))?;
    Ok(socket)
}

/// The largest WebSocket message (and frame) taken from a target: what fits one envelope
/// of the session's default frame limit once base64-encoded for a Go agent.
const MAX_WEBSOCKET_MESSAGE: usize = 768 * 1024;

/// How long to wait for the target's answer to a close the agent started.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

async fn relay(exits: &Exits, stream: StreamHandle, socket: Socket) {
    let (mut sink, mut source) = socket.split();
    // Set once the agent closed: then only the target's close answer is awaited.
    let mut closing: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            chunk = stream.recv_chunk(), if closing.is_none() => {
                let message = match chunk {
                    Ok(Some(chunk)) => match chunk.ws_type {
                        ws_type::TEXT => match String::from_utf8(chunk.data.to_vec()) {
                            Ok(text) => Message::Text(text.into()),
                            Err(_) => Message::Binary(chunk.data),
                        },
                        ws_type::PING => Message::Ping(chunk.data),
                        ws_type::PONG => Message::Pong(chunk.data),
                        ws_type::CLOSE => Message::Close(close_frame(&chunk.data)),
                        _ => Message::Binary(chunk.data),
                    },
                    Ok(None) | Err(_) => Message::Close(None),
                };
                let close = matches!(message, Message::Close(_));
                exits.metrics.add_bytes(message.len() as u64, 0);
                if sink.send(message).await.is_err() {
                    let _ = stream.close_websocket(1011, "the target connection failed");
                    return;
                }
                if close {
                    // Relay the target's answer (the close handshake) before finishing.
                    closing = Some(tokio::time::Instant::now() + CLOSE_WAIT);
                }
            }
            _ = tokio::time::sleep_until(closing.unwrap_or_else(tokio::time::Instant::now)), if closing.is_some() => {
                let _ = stream.close_websocket(1000, "");
                return;
            }
            message = source.next() => {
                let (kind, data) = match message {
                    Some(Ok(Message::Text(text))) => (ws_type::TEXT, bytes::Bytes::from(text)),
                    Some(Ok(Message::Binary(data))) => (ws_type::BINARY, data),
                    Some(Ok(Message::Ping(data))) => (ws_type::PING, data),
                    Some(Ok(Message::Pong(data))) => (ws_type::PONG, data),
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1000, String::new()));
                        let _ = stream.close_websocket(code, &reason);
                        // Answer the target's close (tungstenite does it on the next poll).
                        let _ = sink.close().await;
                        return;
                    }
                    Some(Ok(Message::Frame(_))) => continue,
                    Some(Err(e)) => {
                        let _ = stream.close_websocket(1011, &e.to_string());
                        return;
                    }
                    None => {
                        let _ = stream.close_websocket(1006, "target closed the connection");
                        return;
                    }
                };
                if closing.is_some() {
                    continue;
                }
                exits.metrics.add_bytes(0, data.len() as u64);
                if stream.send_message(kind, &data).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// An RFC 6455 close payload (code, then reason) as tungstenite's close frame.
fn close_frame(payload: &[u8]) -> Option<CloseFrame> {
    let code = u16::from_be_bytes(payload.get(..2)?.try_into().ok()?);
    let reason = String::from_utf8_lossy(&payload[2..]).into_owned();
    Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    })
}
