//! Long HTTP lines, streamed: a Go peer puts a whole HTTP body in one `http_request` or
//! `http_response` line, base64-encoded, which may be hundreds of MiB. Neither direction holds
//! such a line whole:
//!
//! - **Decoding.** Once a line without its newline passes [`STREAM_AFTER`] bytes and its head
//!   (every field before `body`) has arrived, the head is decoded on its own
//!   ([`Decoded::LineStart`]), the base64 body is decoded as it arrives
//!   ([`Decoded::LineBody`]), and the rest of the line ends it ([`Decoded::LineEnd`]).
//! - **Encoding.** A sender writes the head ([`start`]), the body in pieces ([`LineOut::body`],
//!   base64 continued across pieces), and the end ([`LineOut::end`]). A sender that must
//!   abandon the body midway writes `!` (outside the base64 alphabet) before the closing
//!   quote: a Go peer then fails to decode the payload and skips the envelope (it never sees
//!   a short body as complete), and a Rust peer reports the stream as aborted.
//!
//! Go writes the fields in struct order (`id`, `method`/`status_code`, `url`, `headers`, then
//! `body`, then `error`), so the head always precedes the body; a line in another order is
//! not streamed and stays subject to the whole-line limit.

use bytes::{Buf, BufMut, BytesMut};

use super::super::{Decoded, FrameError};
use super::decode::decode_line;
use super::encode::{Obj, write_str};
use crate::envelope::*;

/// A line without its newline that grows past this is streamed, if it is an HTTP line.
pub(super) const STREAM_AFTER: usize = 64 * 1024;
/// The most base64 text decoded per [`Decoded::LineBody`] (48 KiB of body).
const PART: usize = 64 * 1024;
/// The longest tail after a streamed body (`,"error":"…"}}`).
const MAX_TAIL: usize = 64 * 1024;

/// Where the decoder is in a streamed line.
#[derive(Debug, Default)]
pub(super) enum LineIn {
    /// Not in a streamed line.
    #[default]
    Idle,
    /// In the body's base64 text: `carry` holds the characters of an incomplete group.
    Body {
        carry: [u8; 4],
        carried: usize,
        /// A padded group ended the text: nothing may follow it.
        padded: bool,
    },
    /// The body is not base64 (a sender's abort mark, or garbage): skipped to its end.
    Corrupt(String),
    /// After the body: the rest of the line.
    Tail(Option<String>),
}

/// The offsets of the `"body"` key of the payload and of its string value's first
/// character, once the head has arrived. A small JSON scanner: strings (with escapes) and
/// nesting are tracked, so a header value that looks like the key does not match.
fn find_body(line: &[u8]) -> Option<(usize, usize)> {
    let mut stack: Vec<u8> = Vec::new();
    let mut i = 0;
    let mut expect_key = false;
    let mut body_key = None;
    while i < line.len() {
        match line[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < line.len() && line[i] != b'"' {
                    i += if line[i] == b'\\' { 2 } else { 1 };
                }
                if i >= line.len() {
                    return None;
                }
                if expect_key && stack.len() == 2 && &line[start + 1..i] == b"body" {
                    body_key = Some(start);
                }
                expect_key = false;
            }
            b'{' => {
                stack.push(b'{');
                expect_key = true;
                if stack.len() > 64 {
                    return None;
                }
            }
            b'[' => {
                stack.push(b'[');
                expect_key = false;
                if stack.len() > 64 {
                    return None;
                }
            }
            b'}' | b']' => {
                stack.pop();
            }
            b',' => expect_key = stack.last() == Some(&b'{'),
            b':' => {
                if let Some(key) = body_key {
                    let rest = &line[i + 1..];
                    let skip = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
                    return match rest.get(skip) {
                        Some(b'"') => Some((key, i + 1 + skip + 1)),
                        _ => None,
                    };
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Tries to start streaming the partial line at the front of `src`: its head is decoded on
/// its own, and `src` is left at the body's first base64 character.
pub(super) fn try_start(src: &mut BytesMut) -> Option<Decoded> {
    let (key, value) = find_body(src)?;
    let mut head = Vec::with_capacity(key + 16);
    head.extend_from_slice(&src[..key]);
    head.extend_from_slice(b"\"body\":\"\"}}");
    let Ok(Decoded::Envelope(envelope)) = decode_line(&head) else {
        return None;
    };
    // The head must say what the request or response is: a line with those fields after the
    // body (not Go's order) is not streamed.
    let complete = match &envelope {
        Envelope::HttpRequest(r) => !r.url.is_empty(),
        Envelope::HttpResponse(r) => r.status_code != 0,
        _ => false,
    };
    if !complete {
        return None;
    }
    src.advance(value);
    Some(Decoded::LineStart(envelope))
}

impl LineIn {
    /// Continues the current line with what `src` holds. `Ok(None)`: more input is needed.
    pub(super) fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Decoded>, FrameError> {
        loop {
            match self {
                LineIn::Idle => return Ok(None),
                LineIn::Body {
                    carry,
                    carried,
                    padded,
                } => {
                    if src.is_empty() {
                        return Ok(None);
                    }
                    let window = src.len().min(PART);
                    let end = memchr::memchr(b'"', &src[..window]);
                    let text_len = end.unwrap_or(window);
                    let mut out = BytesMut::with_capacity(text_len / 4 * 3 + 3);
                    let decoded = decode_text(&src[..text_len], carry, carried, padded, &mut out);
                    src.advance(text_len);
                    if let Err(reason) = decoded {
                        *self = LineIn::Corrupt(reason);
                        continue;
                    }
                    if end.is_some() {
                        src.advance(1);
                        *self = if *carried != 0 {
                            LineIn::Tail(Some("the body's base64 ends mid-group".into()))
                        } else {
                            LineIn::Tail(None)
                        };
                    }
                    if !out.is_empty() {
                        return Ok(Some(Decoded::LineBody(out.freeze())));
                    }
                }
                LineIn::Corrupt(reason) => match memchr::memchr(b'"', src) {
                    Some(end) => {
                        src.advance(end + 1);
                        *self = LineIn::Tail(Some(std::mem::take(reason)));
                    }
                    None => {
                        src.clear();
                        return Ok(None);
                    }
                },
                LineIn::Tail(aborted) => {
                    let Some(newline) = memchr::memchr(b'\n', src) else {
                        if src.len() > MAX_TAIL {
                            return Err(FrameError::TooLarge {
                                size: src.len(),
                                limit: MAX_TAIL,
                            });
                        }
                        return Ok(None);
                    };
                    let tail = src.split_to(newline + 1);
                    let error = tail_error(&tail)?;
                    let aborted = aborted.take().map(|corrupt| error.unwrap_or(corrupt));
                    *self = LineIn::Idle;
                    return Ok(Some(Decoded::LineEnd { aborted }));
                }
            }
        }
    }
}

/// Decodes base64 `text` continuing `carry`, appending to `out`.
fn decode_text(
    text: &[u8],
    carry: &mut [u8; 4],
    carried: &mut usize,
    padded: &mut bool,
    out: &mut BytesMut,
) -> Result<(), String> {
    if text.is_empty() {
        return Ok(());
    }
    if *padded {
        return Err("base64 text after its padding".into());
    }
    let mut text = text;
    if *carried > 0 {
        let take = (4 - *carried).min(text.len());
        carry[*carried..*carried + take].copy_from_slice(&text[..take]);
        *carried += take;
        text = &text[take..];
        if *carried < 4 {
            return Ok(());
        }
        decode_groups(&carry[..], padded, out)?;
        *carried = 0;
        if *padded && !text.is_empty() {
            return Err("base64 text after its padding".into());
        }
    }
    let whole = text.len() / 4 * 4;
    decode_groups(&text[..whole], padded, out)?;
    let rest = &text[whole..];
    if *padded && !rest.is_empty() {
        return Err("base64 text after its padding".into());
    }
    carry[..rest.len()].copy_from_slice(rest);
    *carried = rest.len();
    Ok(())
}

/// Decodes whole 4-character groups; a padded last group sets `padded`.
fn decode_groups(groups: &[u8], padded: &mut bool, out: &mut BytesMut) -> Result<(), String> {
    if groups.is_empty() {
        return Ok(());
    }
    super::b64::decode_into(groups, out).map_err(|e| format!("the body is not base64: {e}"))?;
    *padded = groups.last() == Some(&b'=');
    Ok(())
}

/// The `error` field of a streamed line's tail (`,"error":"…"}}` or `}}`), if any.
fn tail_error(tail: &[u8]) -> Result<Option<String>, FrameError> {
    let tail = tail.trim_ascii();
    let Some(members) = tail.strip_suffix(b"}") else {
        return Err(FrameError::Malformed(
            "a streamed line does not end in }".into(),
        ));
    };
    // `members` is the rest of the payload object: `,"error":"…"}` or `}`.
    let mut object = b"{\"_\":0".to_vec();
    object.extend_from_slice(members.trim_ascii());
    #[derive(serde::Deserialize)]
    struct Tail {
        error: Option<String>,
    }
    let tail: Tail = serde_json::from_slice(&object)
        .map_err(|e| FrameError::Malformed(format!("the end of a streamed line: {e}")))?;
    Ok(tail.error.filter(|e| !e.is_empty()))
}

/// Writes the head of a streamed `http_request` or `http_response`: every field before the
/// body, in Go's order, then `"body":"`. Returns false (writing nothing) for other envelopes.
pub(super) fn start(envelope: &Envelope, dst: &mut BytesMut) -> bool {
    let name = envelope.type_name();
    let head = |dst: &mut BytesMut| {
        dst.extend_from_slice(b"{\"type\":\"");
        dst.extend_from_slice(name.as_bytes());
        dst.extend_from_slice(b"\",\"payload\":{");
    };
    match envelope {
        Envelope::HttpRequest(r) => {
            head(dst);
            let mut o = Obj::new(dst);
            o.id(r.id);
            o.str("method", &r.method);
            o.str("url", &r.url);
            o.headers("headers", &r.headers);
            o.key("body");
        }
        Envelope::HttpResponse(r) => {
            head(dst);
            let mut o = Obj::new(dst);
            o.id(r.id);
            o.num("status_code", r.status_code.into());
            o.headers("headers", &r.headers);
            o.key("body");
        }
        _ => return false,
    }
    dst.put_u8(b'"');
    true
}

/// The encoder's side of a streamed line: the bytes of an incomplete base64 group.
#[derive(Debug, Default)]
pub(super) struct LineOut {
    carry: [u8; 2],
    carried: usize,
}

impl LineOut {
    /// Appends `data` to the body.
    pub(super) fn body(&mut self, mut data: &[u8], dst: &mut BytesMut) {
        if self.carried > 0 {
            let take = (3 - self.carried).min(data.len());
            let mut group = [0u8; 3];
            group[..self.carried].copy_from_slice(&self.carry[..self.carried]);
            group[self.carried..self.carried + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            if self.carried + take < 3 {
                self.carry[..self.carried + take].copy_from_slice(&group[..self.carried + take]);
                self.carried += take;
                return;
            }
            super::b64::encode_into(&group, dst);
            self.carried = 0;
        }
        let whole = data.len() / 3 * 3;
        super::b64::encode_into(&data[..whole], dst);
        let rest = &data[whole..];
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carried = rest.len();
    }

    /// Ends the line: the last group (padded) and the closing fields; or, if `aborted`, the
    /// abort mark, the reason as `error`, and the closing braces.
    pub(super) fn end(&mut self, aborted: Option<&str>, dst: &mut BytesMut) {
        match aborted {
            None => {
                super::b64::encode_into(&self.carry[..self.carried], dst);
                dst.extend_from_slice(b"\"}}\n");
            }
            Some(reason) => {
                dst.extend_from_slice(b"!\",\"error\":");
                write_str(dst, reason);
                dst.extend_from_slice(b"}}\n");
            }
        }
        self.carried = 0;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::JsonCodec;
    use super::*;
    use crate::codec::Codec;
    use bytes::Bytes;

    /// Whole bytes of a streamed body already decoded.
    fn collect(parts: &[Decoded]) -> Bytes {
        let mut all = BytesMut::new();
        for part in parts {
            if let Decoded::LineBody(data) = part {
                all.extend_from_slice(data);
            }
        }
        all.freeze()
    }

    fn body(len: usize) -> Bytes {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Feeds `line` in `piece`-byte slices; returns everything decoded.
    fn decode_in_pieces(line: &[u8], piece: usize) -> Vec<Decoded> {
        decode_pieces(line, piece, true)
    }

    fn decode_pieces(line: &[u8], piece: usize, streamed: bool) -> Vec<Decoded> {
        let mut codec = JsonCodec::new(1 << 20);
        let mut src = BytesMut::new();
        let mut out = Vec::new();
        for chunk in line.chunks(piece) {
            src.extend_from_slice(chunk);
            while let Some(decoded) = codec.decode(&mut src).unwrap() {
                out.push(decoded);
            }
            if streamed {
                assert!(
                    src.len() < STREAM_AFTER + piece + 4,
                    "the decoder held the line"
                );
            }
        }
        out
    }

    #[test]
    fn a_go_line_far_over_the_frame_limit_streams_in_pieces() {
        let response = HttpResponse {
            id: StreamId(9),
            status_code: 200,
            headers: Headers::from([("X-A".to_owned(), vec!["\"body\":\"".to_owned()])]),
            body: body(3 << 20),
            error: None,
        };
        let mut line = BytesMut::new();
        super::super::encode_envelope(&Envelope::HttpResponse(response.clone()), &mut line);
        for piece in [1000, 7001, 65536] {
            let out = decode_in_pieces(&line, piece);
            let Decoded::LineStart(Envelope::HttpResponse(head)) = &out[0] else {
                panic!("{:?}", &out[0]);
            };
            assert_eq!(head.status_code, 200);
            assert_eq!(
                head.headers, response.headers,
                "a header value that looks like the key"
            );
            assert!(head.body.is_empty());
            assert_eq!(collect(&out), response.body);
            assert_eq!(out.last(), Some(&Decoded::LineEnd { aborted: None }));
        }
    }

    #[test]
    fn what_the_encoder_streams_decodes_whole_and_streamed() {
        let request = HttpRequest {
            id: StreamId(5),
            method: "POST".into(),
            url: "http://x/up".into(),
            headers: Headers::new(),
            body: Bytes::new(),
        };
        let data = body(200_000);
        let mut codec = JsonCodec::new(1 << 20);
        let mut line = BytesMut::new();
        codec
            .encode_line_start(&Envelope::HttpRequest(request.clone()), &mut line)
            .unwrap();
        for piece in data.chunks(7777) {
            codec.encode_line_body(piece, &mut line);
        }
        codec.encode_line_end(None, &mut line);
        // Byte for byte what the whole encoder writes.
        let mut whole = BytesMut::new();
        let full = HttpRequest {
            body: data.clone(),
            ..request
        };
        super::super::encode_envelope(&Envelope::HttpRequest(full), &mut whole);
        assert_eq!(line, whole);
        let out = decode_in_pieces(&line, 4096);
        assert_eq!(collect(&out), data);
    }

    #[test]
    fn an_abandoned_line_ends_aborted_with_the_reason() {
        let mut codec = JsonCodec::new(1 << 20);
        let mut line = BytesMut::new();
        let response = HttpResponse {
            id: StreamId(1),
            status_code: 200,
            headers: Headers::new(),
            body: Bytes::new(),
            error: None,
        };
        codec
            .encode_line_start(&Envelope::HttpResponse(response), &mut line)
            .unwrap();
        codec.encode_line_body(&body(100_001), &mut line);
        codec.encode_line_end(Some("the target failed"), &mut line);
        // A Go decoder (serde here) refuses the body: the envelope would be skipped.
        assert!(matches!(
            super::super::decode::decode_line(&line).unwrap(),
            Decoded::Skipped { .. }
        ));
        let out = decode_in_pieces(&line, 5000);
        assert!(collect(&out).len() <= 100_001);
        assert_eq!(
            out.last(),
            Some(&Decoded::LineEnd {
                aborted: Some("the target failed".into())
            })
        );
    }

    #[test]
    fn a_line_in_another_order_is_taken_whole() {
        // `status_code` after the body: the head alone would not say what the response is.
        let text = format!(
            "{{\"type\":\"http_response\",\"payload\":{{\"id\":\"0000000000000001\",\"body\":\"{}\",\"status_code\":201}}}}\n",
            base64_simd::STANDARD.encode_to_string(body(150_000))
        );
        let out = decode_pieces(text.as_bytes(), 10_000, false);
        assert_eq!(out.len(), 1);
        let Decoded::Envelope(Envelope::HttpResponse(r)) = &out[0] else {
            panic!("{out:?}");
        };
        assert_eq!((r.status_code, r.body.len()), (201, 150_000));
    }
}
