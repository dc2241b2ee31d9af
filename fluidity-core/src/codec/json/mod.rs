//! The Go upstream's wire format: `{"type":…,"payload":{…}}` + `\n`, bytes as padded base64.
//!
//! Encoding is hand-written so the output matches Go's `json.Encoder` byte for byte (struct
//! field order, `omitempty`, sorted header keys, Go's escaping of `<`, `>`, `&`, U+2028/2029).
//! Decoding is tolerant like Go's: unknown keys are ignored, absent keys and `null` take zero
//! values, unknown types and ill-typed payloads are skipped without closing the connection.

mod b64;
mod decode;
mod encode;
mod line;

use bytes::BytesMut;

use decode::decode_line;
pub(crate) use decode::decode_payload;
use encode::Obj;
pub(crate) use encode::{encode_envelope, encode_payload};

use super::{Codec, CodecKind, DataFrame, Decoded, FrameError};
use crate::envelope::*;
use crate::error::Result;

/// Go-compatible JSON lines.
#[derive(Debug)]
pub struct JsonCodec {
    max_frame_size: usize,
    /// How far into `src` the newline search already looked (avoids rescanning a long partial line).
    scanned: usize,
    /// Where the decoder is in a streamed HTTP line.
    line_in: line::LineIn,
    /// The encoder's state in a streamed HTTP line.
    line_out: line::LineOut,
}

impl JsonCodec {
    /// A codec that refuses lines longer than `max_frame_size` bytes (newline included).
    pub fn new(max_frame_size: usize) -> Self {
        JsonCodec {
            max_frame_size,
            scanned: 0,
            line_in: line::LineIn::Idle,
            line_out: line::LineOut::default(),
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

    fn encode_line_start(&mut self, envelope: &Envelope, dst: &mut BytesMut) -> Result<()> {
        if line::start(envelope, dst) {
            Ok(())
        } else {
            Err(crate::Error::Encode {
                kind: envelope.type_name(),
                reason: "only HTTP requests and responses stream as lines".into(),
            })
        }
    }

    fn encode_line_body(&mut self, data: &[u8], dst: &mut BytesMut) {
        self.line_out.body(data, dst);
    }

    fn encode_line_end(&mut self, aborted: Option<&str>, dst: &mut BytesMut) {
        self.line_out.end(aborted, dst);
    }

    fn decode(&mut self, src: &mut BytesMut) -> std::result::Result<Option<Decoded>, FrameError> {
        loop {
            if !matches!(self.line_in, line::LineIn::Idle) {
                return self.line_in.decode(src);
            }
            let start = self.scanned.min(src.len());
            let Some(pos) = memchr::memchr(b'\n', &src[start..]).map(|p| p + start) else {
                self.scanned = src.len();
                if src.len() >= line::STREAM_AFTER
                    && let Some(head) = line::try_start(src)
                {
                    self.scanned = 0;
                    self.line_in = line::LineIn::Body {
                        carry: [0; 4],
                        carried: 0,
                        padded: false,
                    };
                    return Ok(Some(head));
                }
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::decode::{RawEnvelope, decode_data_fast};
    use super::encode::write_str;
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
