//! Decoding, as tolerant as Go's: unknown keys ignored, absent keys and `null` as zero values,
//! unknown types and ill-typed payloads skipped.

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer};
use serde_json::value::RawValue;

use super::super::{Decoded, FrameError};
use crate::envelope::*;

#[derive(Deserialize)]
pub(super) struct RawEnvelope<'a> {
    #[serde(rename = "type", borrow)]
    pub(super) kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub(super) payload: Option<&'a RawValue>,
}

pub(super) fn decode_line(line: &[u8]) -> std::result::Result<Decoded, FrameError> {
    if let Some(fast) = decode_data_fast(line) {
        return Ok(fast);
    }
    let raw: RawEnvelope<'_> = serde_json::from_slice(line)
        .map_err(|e| FrameError::Malformed(format!("not a JSON envelope: {e}")))?;
    let payload = raw.payload.map(RawValue::get).unwrap_or("{}");
    Ok(decode_payload(&raw.kind, payload.as_bytes()))
}

/// Decodes the payload object of an envelope of type `kind`.
pub(crate) fn decode_payload(kind: &str, payload: &[u8]) -> Decoded {
    match parse_payload(kind, payload) {
        Ok(Some(envelope)) => Decoded::Envelope(envelope),
        Ok(None) => Decoded::Skipped {
            kind: kind.to_owned(),
            reason: "unknown envelope type".to_owned(),
        },
        Err(reason) => Decoded::Skipped {
            kind: kind.to_owned(),
            reason,
        },
    }
}

/// The Go encoder's exact layout of the hot data envelopes, parsed without serde: `memchr`
/// finds the end of the base64 text (which cannot contain `"` or `\`). Anything that does not
/// match this layout exactly goes through the general (serde) path.
pub(super) fn decode_data_fast(line: &[u8]) -> Option<Decoded> {
    const CONNECT: &[u8] = b"{\"type\":\"connect_data\",\"payload\":{\"id\":\"";
    const BODY: &[u8] = b"{\"type\":\"body_chunk\",\"payload\":{\"id\":\"";
    let (rest, field, is_connect) = if let Some(rest) = line.strip_prefix(CONNECT) {
        (rest, &b"\",\"chunk\":\""[..], true)
    } else if let Some(rest) = line.strip_prefix(BODY) {
        (rest, &b"\",\"data\":\""[..], false)
    } else {
        return None;
    };
    let id = StreamId::parse(std::str::from_utf8(rest.get(..16)?).ok()?)?;
    let rest = rest.get(16..)?.strip_prefix(field)?;
    let end = memchr::memchr(b'"', rest)?;
    let tail = &rest[end..];
    if tail.trim_ascii_end() != b"\"}}" {
        return None;
    }
    let data = super::b64::decode(&rest[..end]).ok()?;
    let data = Data { id, data };
    Some(Decoded::Envelope(if is_connect {
        Envelope::ConnectData(data)
    } else {
        Envelope::BodyChunk(data)
    }))
}

fn de<T: DeserializeOwned>(payload: &[u8]) -> std::result::Result<T, String> {
    serde_json::from_slice(payload).map_err(|e| format!("bad payload: {e}"))
}

fn id(text: &str) -> std::result::Result<StreamId, String> {
    StreamId::parse(text).ok_or_else(|| format!("id {text:?} is not 16 hex digits"))
}

fn b64(text: Option<String>) -> std::result::Result<Bytes, String> {
    match text {
        None => Ok(Bytes::new()),
        Some(t) => super::b64::decode(t.as_bytes()).map_err(|e| format!("bad base64: {e}")),
    }
}

fn non_empty(text: Option<String>) -> Option<String> {
    text.filter(|t| !t.is_empty())
}

/// `null` → empty; a `null` value list → empty list.
fn headers<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Headers, D::Error> {
    let raw: Option<BTreeMap<String, Option<Vec<String>>>> = Option::deserialize(d)?;
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

/// `null` → empty list.
fn strings<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// `null` → 0.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> std::result::Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireRequest {
    #[serde(deserialize_with = "nullable")]
    id: String,
    #[serde(deserialize_with = "nullable")]
    method: String,
    #[serde(deserialize_with = "nullable")]
    url: String,
    #[serde(deserialize_with = "headers")]
    headers: Headers,
    body: Option<String>,
    #[serde(deserialize_with = "nullable")]
    status_code: u16,
    error: Option<String>,
    #[serde(deserialize_with = "nullable")]
    address: String,
    #[serde(deserialize_with = "nullable")]
    ok: bool,
    chunk: Option<String>,
    data: Option<String>,
    #[serde(deserialize_with = "nullable")]
    message_type: u8,
    #[serde(deserialize_with = "nullable")]
    code: u16,
    refusal: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireIam {
    #[serde(deserialize_with = "nullable")]
    id: String,
    #[serde(deserialize_with = "nullable")]
    timestamp: String,
    #[serde(deserialize_with = "nullable")]
    service: String,
    #[serde(deserialize_with = "nullable")]
    region: String,
    #[serde(deserialize_with = "nullable")]
    access_key_id: String,
    #[serde(deserialize_with = "nullable")]
    signature: String,
    #[serde(deserialize_with = "nullable")]
    signed_headers: String,
    #[serde(deserialize_with = "nullable")]
    ok: bool,
    error: Option<String>,
    session_token: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireControl {
    id: Option<String>,
    #[serde(deserialize_with = "nullable")]
    version: u32,
    #[serde(deserialize_with = "strings")]
    capabilities: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    initial_window: u32,
    #[serde(deserialize_with = "nullable")]
    connection_window: u32,
    #[serde(deserialize_with = "nullable")]
    max_frame_size: u32,
    #[serde(deserialize_with = "nullable")]
    increment: u32,
    #[serde(deserialize_with = "nullable")]
    nonce: u64,
}

/// `Ok(None)` for an unknown type; `Err` for a payload that does not fit its type.
fn parse_payload(kind: &str, payload: &[u8]) -> std::result::Result<Option<Envelope>, String> {
    // Go turns a non-object payload into an all-zero struct; we do the same via `{}`.
    let payload: &[u8] = if payload.trim_ascii_start().first() == Some(&b'{') {
        payload
    } else {
        b"{}"
    };
    let envelope = match kind {
        "iam_auth_request" => {
            let w: WireIam = de(payload)?;
            Envelope::IamAuthRequest(IamAuthRequest {
                id: w.id,
                timestamp: w.timestamp,
                service: w.service,
                region: w.region,
                access_key_id: w.access_key_id,
                signature: w.signature,
                signed_headers: w.signed_headers,
            })
        }
        "iam_auth_response" => {
            let w: WireIam = de(payload)?;
            Envelope::IamAuthResponse(IamAuthResponse {
                id: w.id,
                ok: w.ok,
                error: non_empty(w.error),
                session_token: non_empty(w.session_token),
            })
        }
        "hello" | "window_update" | "ping" | "pong" => {
            let w: WireControl = de(payload)?;
            match kind {
                "hello" => Envelope::Hello(Hello {
                    version: w.version,
                    capabilities: w.capabilities,
                    initial_window: w.initial_window,
                    connection_window: w.connection_window,
                    max_frame_size: w.max_frame_size,
                }),
                "window_update" => Envelope::WindowUpdate(WindowUpdate {
                    id: match w.id.as_deref() {
                        None | Some("") => None,
                        Some(text) => Some(id(text)?),
                    },
                    increment: w.increment,
                }),
                "ping" => Envelope::Ping(Heartbeat { nonce: w.nonce }),
                _ => Envelope::Pong(Heartbeat { nonce: w.nonce }),
            }
        }
        "http_request" | "http_response" | "connect_open" | "connect_ack" | "connect_data"
        | "connect_close" | "ws_open" | "ws_ack" | "ws_message" | "ws_close"
        | "http_request_head" | "http_response_head" | "body_chunk" | "body_end"
        | "connect_fin" | "stream_reset" => {
            let w: WireRequest = de(payload)?;
            let id = id(&w.id)?;
            match kind {
                "http_request" => Envelope::HttpRequest(HttpRequest {
                    id,
                    method: w.method,
                    url: w.url,
                    headers: w.headers,
                    body: b64(w.body)?,
                }),
                "http_response" => Envelope::HttpResponse(HttpResponse {
                    id,
                    status_code: w.status_code,
                    headers: w.headers,
                    body: b64(w.body)?,
                    error: non_empty(w.error),
                }),
                "connect_open" => Envelope::ConnectOpen(ConnectOpen {
                    id,
                    address: w.address,
                }),
                "connect_ack" | "ws_ack" => {
                    let ack = Ack {
                        id,
                        ok: w.ok,
                        error: non_empty(w.error),
                        refusal: w.refusal.as_deref().map(RefusalCode::from_wire),
                    };
                    if kind == "connect_ack" {
                        Envelope::ConnectAck(ack)
                    } else {
                        Envelope::WsAck(ack)
                    }
                }
                "connect_data" => Envelope::ConnectData(Data {
                    id,
                    data: b64(w.chunk)?,
                }),
                "body_chunk" => Envelope::BodyChunk(Data {
                    id,
                    data: b64(w.data)?,
                }),
                "connect_close" | "body_end" | "connect_fin" => {
                    let close = Close {
                        id,
                        error: non_empty(w.error),
                    };
                    match kind {
                        "connect_close" => Envelope::ConnectClose(close),
                        "body_end" => Envelope::BodyEnd(close),
                        _ => Envelope::ConnectFin(close),
                    }
                }
                "ws_open" => Envelope::WsOpen(WsOpen {
                    id,
                    url: w.url,
                    headers: w.headers,
                }),
                "ws_message" => Envelope::WsMessage(WsMessage {
                    id,
                    message_type: w.message_type,
                    data: b64(w.data)?,
                }),
                "ws_close" => Envelope::WsClose(WsClose {
                    id,
                    code: w.code,
                    error: non_empty(w.error),
                }),
                "http_request_head" => Envelope::HttpRequestHead(HttpRequestHead {
                    id,
                    method: w.method,
                    url: w.url,
                    headers: w.headers,
                }),
                "http_response_head" => Envelope::HttpResponseHead(HttpResponseHead {
                    id,
                    status_code: w.status_code,
                    headers: w.headers,
                }),
                _ => Envelope::StreamReset(StreamReset {
                    id,
                    error: w.error.unwrap_or_default(),
                    refusal: w.refusal.as_deref().map(RefusalCode::from_wire),
                }),
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(envelope))
}
