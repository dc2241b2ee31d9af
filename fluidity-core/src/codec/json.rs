//! The Go upstream's wire format: `{"type":…,"payload":{…}}` + `\n`, bytes as padded base64.
//!
//! Encoding is hand-written so the output matches Go's `json.Encoder` byte for byte (struct
//! field order, `omitempty`, sorted header keys, Go's escaping of `<`, `>`, `&`, U+2028/2029).
//! Decoding is tolerant like Go's: unknown keys are ignored, absent keys and `null` take zero
//! values, unknown types and ill-typed payloads are skipped without closing the connection.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer};
use serde_json::value::RawValue;

use super::{Codec, CodecKind, DataFrame, Decoded, FrameError};
use crate::envelope::*;
use crate::error::Result;

/// Go-compatible JSON lines.
#[derive(Debug)]
pub struct JsonCodec {
    max_frame_size: usize,
    /// How far into `src` the newline search already looked (avoids rescanning a long partial line).
    scanned: usize,
}

impl JsonCodec {
    /// A codec that refuses lines longer than `max_frame_size` bytes (newline included).
    pub fn new(max_frame_size: usize) -> Self {
        JsonCodec {
            max_frame_size,
            scanned: 0,
        }
    }
}

impl Codec for JsonCodec {
    fn encode(&mut self, envelope: &Envelope, dst: &mut BytesMut) -> Result<()> {
        encode_envelope(envelope, dst);
        Ok(())
    }

    fn encode_data(&mut self, frame: DataFrame<'_>, dst: &mut BytesMut) -> Result<()> {
        let (name, id, field, ws_type, data) = match frame {
            DataFrame::Connect(id, data) => ("connect_data", id, "chunk", None, data),
            DataFrame::Body(id, data) => ("body_chunk", id, "data", None, data),
            DataFrame::WebSocket(id, t, data) => ("ws_message", id, "data", Some(t), data),
        };
        dst.reserve(64 + data.len() / 3 * 4 + 4);
        dst.extend_from_slice(b"{\"type\":\"");
        dst.extend_from_slice(name.as_bytes());
        dst.extend_from_slice(b"\",\"payload\":{");
        let mut o = Obj::new(dst);
        o.id(id);
        if let Some(t) = ws_type {
            o.num("message_type", t.into());
        }
        o.bytes(field, data);
        dst.extend_from_slice(b"}}\n");
        Ok(())
    }

    fn decode(&mut self, src: &mut BytesMut) -> std::result::Result<Option<Decoded>, FrameError> {
        loop {
            let start = self.scanned.min(src.len());
            let Some(pos) = memchr::memchr(b'\n', &src[start..]).map(|p| p + start) else {
                self.scanned = src.len();
                if src.len() > self.max_frame_size {
                    return Err(FrameError::TooLarge {
                        size: src.len(),
                        limit: self.max_frame_size,
                    });
                }
                return Ok(None);
            };
            self.scanned = 0;
            if pos + 1 > self.max_frame_size {
                return Err(FrameError::TooLarge {
                    size: pos + 1,
                    limit: self.max_frame_size,
                });
            }
            let line = src.split_to(pos + 1);
            // Go's decoder skips whitespace between values; blank lines carry nothing.
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            return decode_line(&line).map(Some);
        }
    }

    fn kind(&self) -> CodecKind {
        CodecKind::Json
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Writes the members of one JSON object in order, with commas.
struct Obj<'a> {
    dst: &'a mut BytesMut,
    first: bool,
}

impl<'a> Obj<'a> {
    fn new(dst: &'a mut BytesMut) -> Self {
        Obj { dst, first: true }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.dst.put_u8(b',');
        }
        self.first = false;
        self.dst.put_u8(b'"');
        self.dst.extend_from_slice(key.as_bytes());
        self.dst.extend_from_slice(b"\":");
    }

    fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        write_str(self.dst, value);
    }

    fn opt_str(&mut self, key: &str, value: &Option<String>) {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            self.str(key, v);
        }
    }

    fn id(&mut self, id: StreamId) {
        self.key("id");
        self.dst.put_u8(b'"');
        let mut hex = [0u8; 16];
        for (i, slot) in hex.iter_mut().enumerate() {
            let nibble = (id.0 >> (60 - 4 * i)) & 0xf;
            *slot = b"0123456789abcdef"[nibble as usize];
        }
        self.dst.extend_from_slice(&hex);
        self.dst.put_u8(b'"');
    }

    fn num(&mut self, key: &str, value: u64) {
        self.key(key);
        // Writing into a BytesMut cannot fail.
        let _ = write!(self.dst, "{value}");
    }

    fn bool(&mut self, key: &str, value: bool) {
        self.key(key);
        self.dst
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn bytes(&mut self, key: &str, value: &[u8]) {
        self.key(key);
        self.dst.put_u8(b'"');
        let start = self.dst.len();
        let len = base64::encoded_len(value.len(), true).unwrap_or(0);
        self.dst.resize(start + len, 0);
        // The slice is exactly the encoded length, so encoding cannot fail.
        let written = BASE64
            .encode_slice(value, &mut self.dst[start..])
            .unwrap_or(0);
        self.dst.truncate(start + written);
        self.dst.put_u8(b'"');
    }

    fn headers(&mut self, key: &str, headers: &Headers) {
        self.key(key);
        self.dst.put_u8(b'{');
        for (i, (name, values)) in headers.iter().enumerate() {
            if i > 0 {
                self.dst.put_u8(b',');
            }
            write_str(self.dst, name);
            self.dst.extend_from_slice(b":[");
            for (j, value) in values.iter().enumerate() {
                if j > 0 {
                    self.dst.put_u8(b',');
                }
                write_str(self.dst, value);
            }
            self.dst.put_u8(b']');
        }
        self.dst.put_u8(b'}');
    }
}

/// Writes a JSON string escaped exactly as Go's `encoding/json` does (HTML-safe escaping on).
fn write_str(dst: &mut BytesMut, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    dst.put_u8(b'"');
    let bytes = value.as_bytes();
    let mut plain_from = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0x08 => Some(b"\\b"),
            0x0c => Some(b"\\f"),
            0x00..=0x1f | b'<' | b'>' | b'&' => None,
            0xe2 if bytes.get(i + 1) == Some(&0x80)
                && matches!(bytes.get(i + 2), Some(0xa8 | 0xa9)) =>
            {
                dst.extend_from_slice(&bytes[plain_from..i]);
                dst.extend_from_slice(if bytes[i + 2] == 0xa8 {
                    b"\\u2028"
                } else {
                    b"\\u2029"
                });
                i += 3;
                plain_from = i;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        };
        dst.extend_from_slice(&bytes[plain_from..i]);
        match escape {
            Some(seq) => dst.extend_from_slice(seq),
            None => dst.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]),
        }
        i += 1;
        plain_from = i;
    }
    dst.extend_from_slice(&bytes[plain_from..]);
    dst.put_u8(b'"');
}

/// Appends `{"type":…,"payload":{…}}\n`.
pub(crate) fn encode_envelope(envelope: &Envelope, dst: &mut BytesMut) {
    dst.extend_from_slice(b"{\"type\":\"");
    dst.extend_from_slice(envelope.type_name().as_bytes());
    dst.extend_from_slice(b"\",\"payload\":");
    encode_payload(envelope, dst);
    dst.extend_from_slice(b"}\n");
}

/// Appends the payload object alone (the binary codec reuses it for control frames).
pub(crate) fn encode_payload(envelope: &Envelope, dst: &mut BytesMut) {
    dst.put_u8(b'{');
    let mut o = Obj::new(dst);
    match envelope {
        Envelope::HttpRequest(p) => {
            o.id(p.id);
            o.str("method", &p.method);
            o.str("url", &p.url);
            o.headers("headers", &p.headers);
            if !p.body.is_empty() {
                o.bytes("body", &p.body);
            }
        }
        Envelope::HttpResponse(p) => {
            o.id(p.id);
            o.num("status_code", p.status_code.into());
            o.headers("headers", &p.headers);
            if !p.body.is_empty() {
                o.bytes("body", &p.body);
            }
            o.opt_str("error", &p.error);
        }
        Envelope::ConnectOpen(p) => {
            o.id(p.id);
            o.str("address", &p.address);
        }
        Envelope::ConnectAck(p) | Envelope::WsAck(p) => {
            o.id(p.id);
            o.bool("ok", p.ok);
            o.opt_str("error", &p.error);
        }
        Envelope::ConnectData(p) => {
            o.id(p.id);
            o.bytes("chunk", &p.data);
        }
        Envelope::BodyChunk(p) => {
            o.id(p.id);
            o.bytes("data", &p.data);
        }
        Envelope::ConnectClose(p) | Envelope::BodyEnd(p) | Envelope::ConnectFin(p) => {
            o.id(p.id);
            o.opt_str("error", &p.error);
        }
        Envelope::WsOpen(p) => {
            o.id(p.id);
            o.str("url", &p.url);
            o.headers("headers", &p.headers);
        }
        Envelope::WsMessage(p) => {
            o.id(p.id);
            o.num("message_type", p.message_type.into());
            o.bytes("data", &p.data);
        }
        Envelope::WsClose(p) => {
            o.id(p.id);
            if p.code != 0 {
                o.num("code", p.code.into());
            }
            o.opt_str("error", &p.error);
        }
        Envelope::IamAuthRequest(p) => {
            o.str("id", &p.id);
            o.str("timestamp", &p.timestamp);
            o.str("service", &p.service);
            o.str("region", &p.region);
            o.str("access_key_id", &p.access_key_id);
            o.str("signature", &p.signature);
            o.str("signed_headers", &p.signed_headers);
        }
        Envelope::IamAuthResponse(p) => {
            o.str("id", &p.id);
            o.bool("ok", p.ok);
            o.opt_str("error", &p.error);
            o.opt_str("session_token", &p.session_token);
        }
        Envelope::Hello(p) => {
            o.num("version", p.version.into());
            o.key("capabilities");
            o.dst.put_u8(b'[');
            for (i, c) in p.capabilities.iter().enumerate() {
                if i > 0 {
                    o.dst.put_u8(b',');
                }
                write_str(o.dst, c);
            }
            o.dst.put_u8(b']');
            o.num("initial_window", p.initial_window.into());
            o.num("connection_window", p.connection_window.into());
            o.num("max_frame_size", p.max_frame_size.into());
        }
        Envelope::WindowUpdate(p) => {
            if let Some(id) = p.id {
                o.id(id);
            }
            o.num("increment", p.increment.into());
        }
        Envelope::Ping(p) | Envelope::Pong(p) => o.num("nonce", p.nonce),
        Envelope::HttpRequestHead(p) => {
            o.id(p.id);
            o.str("method", &p.method);
            o.str("url", &p.url);
            o.headers("headers", &p.headers);
        }
        Envelope::HttpResponseHead(p) => {
            o.id(p.id);
            o.num("status_code", p.status_code.into());
            o.headers("headers", &p.headers);
        }
        Envelope::StreamReset(p) => {
            o.id(p.id);
            o.str("error", &p.error);
        }
    }
    dst.put_u8(b'}');
}

// ---------------------------------------------------------------------------------------------
// Decoding

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

fn decode_line(line: &[u8]) -> std::result::Result<Decoded, FrameError> {
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
fn decode_data_fast(line: &[u8]) -> Option<Decoded> {
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
    let data = Bytes::from(BASE64.decode(&rest[..end]).ok()?);
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
        Some(t) => BASE64
            .decode(t.as_bytes())
            .map(Bytes::from)
            .map_err(|e| format!("bad base64: {e}")),
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
                }),
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(envelope))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(text: &str) -> Vec<Decoded> {
        let mut codec = JsonCodec::new(1 << 20);
        let mut buf = BytesMut::from(text.as_bytes());
        let mut out = Vec::new();
        while let Some(d) = codec.decode(&mut buf).unwrap() {
            out.push(d);
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn go_escaping_is_reproduced() {
        let mut dst = BytesMut::new();
        write_str(&mut dst, "a<b>&\"\\\n\r\t\u{8}\u{c}\u{1}\u{2028}\u{2029}é");
        assert_eq!(
            &dst[..],
            br#""a\u003cb\u003e\u0026\"\\\n\r\t\b\f\u0001\u2028\u2029"#
                .iter()
                .chain("é\"".as_bytes())
                .copied()
                .collect::<Vec<u8>>()
                .as_slice()
        );
    }

    #[test]
    fn partial_lines_wait_and_blank_lines_are_skipped() {
        let mut codec = JsonCodec::new(1 << 20);
        let mut buf = BytesMut::from(&b"\n  \n{\"type\":\"ping\",\"payload\":{\"nonce\":7}"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"}\n");
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Decoded::Envelope(Envelope::Ping(Heartbeat { nonce: 7 })))
        );
    }

    #[test]
    fn unknown_types_and_ill_typed_payloads_are_skipped() {
        let out = decode_all(concat!(
            "{\"type\":\"health_check\",\"payload\":{}}\n",
            "{\"type\":\"connect_ack\",\"payload\":{\"id\":\"0000000000000001\",\"ok\":\"yes\"}}\n",
            "{\"type\":\"connect_open\",\"payload\":{\"id\":\"short\",\"address\":\"a:1\"}}\n",
            "{\"type\":\"connect_data\",\"payload\":{\"id\":\"0000000000000001\",\"chunk\":\"***\"}}\n",
            "{\"type\":\"connect_close\",\"payload\":{\"id\":\"0000000000000001\",\"extra\":[1,2]},\"more\":1}\n",
        ));
        assert_eq!(out.len(), 5);
        for d in &out[..4] {
            assert!(matches!(d, Decoded::Skipped { .. }), "{d:?}");
        }
        assert_eq!(
            out[4],
            Decoded::Envelope(Envelope::ConnectClose(Close {
                id: StreamId(1),
                error: None
            }))
        );
    }

    #[test]
    fn corrupt_envelopes_are_errors() {
        for bad in [
            "nonsense\n",
            "{\"payload\":{}}\n",
            "{\"type\":3,\"payload\":{}}\n",
            "[1]\n",
        ] {
            let mut codec = JsonCodec::new(1 << 20);
            let mut buf = BytesMut::from(bad.as_bytes());
            assert!(
                matches!(codec.decode(&mut buf), Err(FrameError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_endless_line_is_refused_at_the_limit() {
        let mut codec = JsonCodec::new(1000);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[b'a'; 600]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[b'a'; 600]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge { limit: 1000, .. })
        ));
    }

    #[test]
    fn fast_and_general_data_paths_agree() {
        let env = Envelope::ConnectData(Data {
            id: StreamId(0xdead_beef),
            data: Bytes::from_static(b"\x00\x01hello\xff"),
        });
        let mut dst = BytesMut::new();
        encode_envelope(&env, &mut dst);
        assert!(decode_data_fast(&dst).is_some());
        let general = {
            let raw: RawEnvelope<'_> = serde_json::from_slice(&dst).unwrap();
            decode_payload(&raw.kind, raw.payload.unwrap().get().as_bytes())
        };
        assert_eq!(decode_data_fast(&dst).unwrap(), general);
        assert_eq!(general, Decoded::Envelope(env));
    }
}
