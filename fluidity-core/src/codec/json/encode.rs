//! Encoding, byte for byte as Go's `json.Encoder` writes it.

use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};

use crate::envelope::*;

/// Writes the members of one JSON object in order, with commas.
pub(super) struct Obj<'a> {
    dst: &'a mut BytesMut,
    first: bool,
}

impl<'a> Obj<'a> {
    pub(super) fn new(dst: &'a mut BytesMut) -> Self {
        Obj { dst, first: true }
    }

    pub(super) fn key(&mut self, key: &str) {
        if !self.first {
            self.dst.put_u8(b',');
        }
        self.first = false;
        self.dst.put_u8(b'"');
        self.dst.extend_from_slice(key.as_bytes());
        self.dst.extend_from_slice(b"\":");
    }

    pub(super) fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        write_str(self.dst, value);
    }

    fn opt_str(&mut self, key: &str, value: &Option<String>) {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            self.str(key, v);
        }
    }

    pub(super) fn id(&mut self, id: StreamId) {
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

    pub(super) fn num(&mut self, key: &str, value: u64) {
        self.key(key);
        // Writing into a BytesMut cannot fail.
        let _ = write!(self.dst, "{value}");
    }

    fn bool(&mut self, key: &str, value: bool) {
        self.key(key);
        self.dst
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    pub(super) fn bytes(&mut self, key: &str, value: &[u8]) {
        self.key(key);
        self.dst.put_u8(b'"');
        super::b64::encode_into(value, self.dst);
        self.dst.put_u8(b'"');
    }

    pub(super) fn headers(&mut self, key: &str, headers: &Headers) {
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
pub(super) fn write_str(dst: &mut BytesMut, value: &str) {
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
            if let Some(code) = p.refusal {
                o.str("refusal", code.as_str());
            }
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
            if let Some(code) = p.refusal {
                o.str("refusal", code.as_str());
            }
        }
    }
    dst.put_u8(b'}');
}
