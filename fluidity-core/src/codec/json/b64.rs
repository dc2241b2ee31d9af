//! Base64 for the JSON codec's bytes, SIMD-accelerated (`base64-simd`: AVX2 or SSE4.1 chosen
//! at run time, a scalar fallback elsewhere). Padded standard alphabet, as Go's `[]byte`
//! fields use; decoding is strict (padding required, canonical trailing bits), as Go's
//! encoder always writes.

use base64_simd::{Out, STANDARD};
use bytes::{Bytes, BytesMut};

/// Appends the base64 of `data` to `dst`.
pub(super) fn encode_into(data: &[u8], dst: &mut BytesMut) {
    if data.is_empty() {
        return;
    }
    let start = dst.len();
    let len = STANDARD.encoded_length(data.len());
    // Zeroed first (safe code only); a memset costs a fraction of the encoding.
    dst.resize(start + len, 0);
    // The slice is exactly the encoded length, all of it written.
    let _ = STANDARD.encode(data, Out::from_slice(&mut dst[start..]));
}

/// Decodes base64 `text` to new bytes.
pub(super) fn decode(text: &[u8]) -> Result<Bytes, base64_simd::Error> {
    let mut out = Vec::new();
    STANDARD.decode_append(text, &mut out)?;
    Ok(Bytes::from(out))
}

/// Decodes whole 4-character groups of base64 `text`, appending to `out`.
pub(super) fn decode_into(text: &[u8], out: &mut BytesMut) -> Result<(), base64_simd::Error> {
    if text.is_empty() {
        return Ok(());
    }
    let start = out.len();
    out.resize(start + text.len() / 4 * 3, 0);
    let written = STANDARD
        .decode(text, Out::from_slice(&mut out[start..]))?
        .len();
    out.truncate(start + written);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_every_length_and_refuses_what_go_would_not_write() {
        for len in 0..100usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let mut text = BytesMut::new();
            encode_into(&data, &mut text);
            assert_eq!(text.len(), len.div_ceil(3) * 4);
            assert_eq!(decode(&text).unwrap(), data);
            let mut out = BytesMut::from(&b"kept"[..]);
            decode_into(&text, &mut out).unwrap();
            assert_eq!(&out[..4], b"kept");
            assert_eq!(&out[4..], &data[..]);
        }
        assert_eq!(&decode(b"aGVsbG8=").unwrap()[..], b"hello");
        assert!(decode(b"aGVsbG8").is_err(), "padding is required");
        assert!(decode(b"aGVs*G8=").is_err());
        assert!(decode(b"aGVsbG9=").is_err(), "non-canonical trailing bits");
    }
}
