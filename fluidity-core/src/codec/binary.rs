//! Length-prefixed binary frames for Rust peers (ALPN `fluidity/2`).
//!
//! ```text
//! frame   = length:u32be  type:u8  body          (length counts type + body)
//! body    = data frames:    id:u64be [message_type:u8 for ws_message] raw bytes
//!           window_update:  has_id:u8 id:u64be increment:u32be
//!           ping / pong:    nonce:u64be
//!           everything else: the JSON payload object, exactly as the JSON codec writes it
//! ```
//!
//! Data travels raw (no base64) and is handed out as slices of the receive buffer (zero-copy).
//! Control frames are rare and small, so they reuse the JSON payload encoding rather than
//! growing a second schema.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::json::{decode_payload, encode_payload};
use super::{Codec, CodecKind, DataFrame, Decoded, FrameError};
use crate::envelope::*;
use crate::error::{Error, Result};

const HTTP_REQUEST: u8 = 0x01;
const HTTP_RESPONSE: u8 = 0x02;
const CONNECT_OPEN: u8 = 0x03;
const CONNECT_ACK: u8 = 0x04;
const CONNECT_DATA: u8 = 0x05;
const CONNECT_CLOSE: u8 = 0x06;
const WS_OPEN: u8 = 0x07;
const WS_ACK: u8 = 0x08;
const WS_MESSAGE: u8 = 0x09;
const WS_CLOSE: u8 = 0x0a;
const IAM_AUTH_REQUEST: u8 = 0x0b;
const IAM_AUTH_RESPONSE: u8 = 0x0c;
const HELLO: u8 = 0x10;
const WINDOW_UPDATE: u8 = 0x11;
const PING: u8 = 0x12;
const PONG: u8 = 0x13;
const HTTP_REQUEST_HEAD: u8 = 0x14;
const HTTP_RESPONSE_HEAD: u8 = 0x15;
const BODY_CHUNK: u8 = 0x16;
const BODY_END: u8 = 0x17;
const CONNECT_FIN: u8 = 0x18;
const STREAM_RESET: u8 = 0x19;

/// Length-prefixed binary frames.
#[derive(Debug)]
pub struct BinaryCodec {
    max_frame_size: usize,
}

impl BinaryCodec {
    /// A codec that refuses frames longer than `max_frame_size` bytes (header included).
    pub fn new(max_frame_size: usize) -> Self {
        BinaryCodec { max_frame_size }
    }
}

fn type_code(envelope: &Envelope) -> u8 {
    match envelope {
        Envelope::HttpRequest(_) => HTTP_REQUEST,
        Envelope::HttpResponse(_) => HTTP_RESPONSE,
        Envelope::ConnectOpen(_) => CONNECT_OPEN,
        Envelope::ConnectAck(_) => CONNECT_ACK,
        Envelope::ConnectData(_) => CONNECT_DATA,
        Envelope::ConnectClose(_) => CONNECT_CLOSE,
        Envelope::WsOpen(_) => WS_OPEN,
        Envelope::WsAck(_) => WS_ACK,
        Envelope::WsMessage(_) => WS_MESSAGE,
        Envelope::WsClose(_) => WS_CLOSE,
        Envelope::IamAuthRequest(_) => IAM_AUTH_REQUEST,
        Envelope::IamAuthResponse(_) => IAM_AUTH_RESPONSE,
        Envelope::Hello(_) => HELLO,
        Envelope::WindowUpdate(_) => WINDOW_UPDATE,
        Envelope::Ping(_) => PING,
        Envelope::Pong(_) => PONG,
        Envelope::HttpRequestHead(_) => HTTP_REQUEST_HEAD,
        Envelope::HttpResponseHead(_) => HTTP_RESPONSE_HEAD,
        Envelope::BodyChunk(_) => BODY_CHUNK,
        Envelope::BodyEnd(_) => BODY_END,
        Envelope::ConnectFin(_) => CONNECT_FIN,
        Envelope::StreamReset(_) => STREAM_RESET,
    }
}

fn type_name(code: u8) -> Option<&'static str> {
    Some(match code {
        HTTP_REQUEST => "http_request",
        HTTP_RESPONSE => "http_response",
        CONNECT_OPEN => "connect_open",
        CONNECT_ACK => "connect_ack",
        CONNECT_CLOSE => "connect_close",
        WS_OPEN => "ws_open",
        WS_ACK => "ws_ack",
        WS_CLOSE => "ws_close",
        IAM_AUTH_REQUEST => "iam_auth_request",
        IAM_AUTH_RESPONSE => "iam_auth_response",
        HELLO => "hello",
        HTTP_REQUEST_HEAD => "http_request_head",
        HTTP_RESPONSE_HEAD => "http_response_head",
        BODY_END => "body_end",
        CONNECT_FIN => "connect_fin",
        STREAM_RESET => "stream_reset",
        _ => return None,
    })
}

impl Codec for BinaryCodec {
    fn encode_line_start(&mut self, envelope: &Envelope, _dst: &mut BytesMut) -> Result<()> {
        Err(crate::Error::Encode {
            kind: envelope.type_name(),
            reason: "the binary codec streams bodies as chunks, not as lines".into(),
        })
    }

    fn encode_line_body(&mut self, _data: &[u8], _dst: &mut BytesMut) {}

    fn encode_line_end(&mut self, _aborted: Option<&str>, _dst: &mut BytesMut) {}

    fn encode(&mut self, envelope: &Envelope, dst: &mut BytesMut) -> Result<()> {
        match envelope {
            Envelope::ConnectData(p) => {
                return self.encode_data(DataFrame::Connect(p.id, &p.data), dst);
            }
            Envelope::BodyChunk(p) => return self.encode_data(DataFrame::Body(p.id, &p.data), dst),
            Envelope::WsMessage(p) => {
                return self.encode_data(DataFrame::WebSocket(p.id, p.message_type, &p.data), dst);
            }
            _ => {}
        }
        let start = dst.len();
        dst.put_u32(0); // patched below
        dst.put_u8(type_code(envelope));
        match envelope {
            Envelope::WindowUpdate(p) => {
                dst.put_u8(u8::from(p.id.is_some()));
                dst.put_u64(p.id.map_or(0, |id| id.0));
                dst.put_u32(p.increment);
            }
            Envelope::Ping(p) | Envelope::Pong(p) => dst.put_u64(p.nonce),
            other => encode_payload(other, dst),
        }
        let len = dst.len() - start - 4;
        let len = u32::try_from(len).map_err(|_| Error::Encode {
            kind: envelope.type_name(),
            reason: format!("{len} bytes do not fit a binary frame"),
        })?;
        dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    fn encode_data(&mut self, frame: DataFrame<'_>, dst: &mut BytesMut) -> Result<()> {
        let (code, id, ws_type, data) = match frame {
            DataFrame::Connect(id, data) => (CONNECT_DATA, id, None, data),
            DataFrame::Body(id, data) => (BODY_CHUNK, id, None, data),
            DataFrame::WebSocket(id, t, data) => (WS_MESSAGE, id, Some(t), data),
        };
        let len = 1 + 8 + usize::from(ws_type.is_some()) + data.len();
        let len32 = u32::try_from(len).map_err(|_| Error::Encode {
            kind: "data",
            reason: format!("{len} bytes do not fit a binary frame"),
        })?;
        dst.reserve(4 + len);
        dst.put_u32(len32);
        dst.put_u8(code);
        dst.put_u64(id.0);
        if let Some(t) = ws_type {
            dst.put_u8(t);
        }
        dst.extend_from_slice(data);
        Ok(())
    }

    fn decode(&mut self, src: &mut BytesMut) -> std::result::Result<Option<Decoded>, FrameError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len == 0 {
            return Err(FrameError::Malformed(
                "binary frame of length 0 has no type".into(),
            ));
        }
        if len + 4 > self.max_frame_size {
            return Err(FrameError::TooLarge {
                size: len + 4,
                limit: self.max_frame_size,
            });
        }
        if src.len() < len + 4 {
            // Reserve for the rest of this frame only: bounded by the check above.
            src.reserve(len + 4 - src.len());
            return Ok(None);
        }
        src.advance(4);
        let mut body = src.split_to(len).freeze();
        let code = body.get_u8();
        decode_body(code, body).map(Some)
    }

    fn kind(&self) -> CodecKind {
        CodecKind::Binary
    }
}

fn short(code: u8) -> FrameError {
    FrameError::Malformed(format!("binary frame type {code:#04x} is too short"))
}

fn decode_body(code: u8, mut body: Bytes) -> std::result::Result<Decoded, FrameError> {
    let envelope = match code {
        CONNECT_DATA | BODY_CHUNK => {
            if body.len() < 8 {
                return Err(short(code));
            }
            let id = StreamId(body.get_u64());
            let data = Data { id, data: body };
            if code == CONNECT_DATA {
                Envelope::ConnectData(data)
            } else {
                Envelope::BodyChunk(data)
            }
        }
        WS_MESSAGE => {
            if body.len() < 9 {
                return Err(short(code));
            }
            Envelope::WsMessage(WsMessage {
                id: StreamId(body.get_u64()),
                message_type: body.get_u8(),
                data: body,
            })
        }
        WINDOW_UPDATE => {
            if body.len() < 13 {
                return Err(short(code));
            }
            let has_id = body.get_u8() != 0;
            let id = body.get_u64();
            Envelope::WindowUpdate(WindowUpdate {
                id: has_id.then_some(StreamId(id)),
                increment: body.get_u32(),
            })
        }
        PING | PONG => {
            if body.len() < 8 {
                return Err(short(code));
            }
            let hb = Heartbeat {
                nonce: body.get_u64(),
            };
            if code == PING {
                Envelope::Ping(hb)
            } else {
                Envelope::Pong(hb)
            }
        }
        other => {
            return Ok(match type_name(other) {
                Some(name) => decode_payload(name, &body),
                None => Decoded::Skipped {
                    kind: format!("{other:#04x}"),
                    reason: "unknown binary frame type".into(),
                },
            });
        }
    };
    Ok(Decoded::Envelope(envelope))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_frames_are_raw_and_zero_copy() {
        let mut codec = BinaryCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        let env = Envelope::ConnectData(Data {
            id: StreamId(7),
            data: Bytes::from_static(b"hello"),
        });
        codec.encode(&env, &mut buf).unwrap();
        assert_eq!(
            &buf[..],
            b"\x00\x00\x00\x0e\x05\x00\x00\x00\x00\x00\x00\x00\x07hello"
        );
        let base = buf.as_ptr() as usize;
        let Some(Decoded::Envelope(Envelope::ConnectData(d))) = codec.decode(&mut buf).unwrap()
        else {
            panic!("not data");
        };
        assert_eq!(d.data, Bytes::from_static(b"hello"));
        assert_eq!(
            d.data.as_ptr() as usize,
            base + 13,
            "payload must be a slice of the input"
        );
    }

    #[test]
    fn oversized_announcement_is_refused_before_buffering() {
        let mut codec = BinaryCodec::new(1024);
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0x05][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge { limit: 1024, .. })
        ));
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn truncated_and_unknown_frames() {
        let mut codec = BinaryCodec::new(1024);
        let mut buf = BytesMut::from(&b"\x00\x00\x00\x03\x05ab"[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::Malformed(_))
        ));
        let mut buf = BytesMut::from(&b"\x00\x00\x00\x02\x7fz"[..]);
        assert!(matches!(
            codec.decode(&mut buf).unwrap(),
            Some(Decoded::Skipped { .. })
        ));
        assert!(buf.is_empty());
        let mut buf = BytesMut::from(&b"\x00\x00\x00\x00"[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::Malformed(_))
        ));
    }
}
