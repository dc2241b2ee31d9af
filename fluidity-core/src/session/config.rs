//! A session's limits and timings.

use std::time::Duration;

use crate::codec::{CodecKind, DEFAULT_MAX_FRAME_SIZE};

/// The decoder's frame limit: `max_frame_size`, except that over JSON a Go peer puts a whole
/// HTTP body (up to `max_legacy_body`) base64-encoded in one envelope, plus its headers.
pub(super) fn decode_limit(codec: CodecKind, config: &SessionConfig) -> usize {
    match codec {
        CodecKind::Binary => config.max_frame_size,
        CodecKind::Json => config
            .max_frame_size
            .max(config.max_legacy_body.div_ceil(3) * 4 + 256 * 1024),
    }
}

/// Limits and timings of a session. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest frame the decoder accepts (default 1 MiB; over JSON at least what a body of
    /// `max_legacy_body` needs, since Go peers send whole bodies in one envelope).
    pub max_frame_size: usize,
    /// Per-stream receive window (default 256 KiB).
    pub initial_window: u32,
    /// Connection-wide receive window: the most unread data all streams together may hold
    /// (default 16 MiB).
    pub connection_window: u32,
    /// Most data bytes per frame (default 32 KiB, what Go peers expect).
    pub max_chunk: usize,
    /// Most concurrent streams; opens beyond it are refused (default 1024).
    pub max_streams: usize,
    /// Output buffered beyond this makes writers wait for the socket (default 1 MiB).
    pub transmit_high_water: usize,
    /// Largest HTTP body held whole for a Go peer (default 16 MiB).
    pub max_legacy_body: usize,
    /// Most bytes of whole bodies held for a Go peer across all streams (default 64 MiB).
    /// Beyond it writers wait, except the stream that started first, which may always
    /// complete its body, so the streams never wait on each other forever.
    pub max_legacy_buffered: usize,
    /// Ping interval when the peer supports heartbeats (default 10 s).
    pub heartbeat_interval: Duration,
    /// Close the tunnel when a heartbeat-capable peer is silent this long (default 30 s).
    pub idle_timeout: Duration,
    /// Stream ids start here and count up (default: random, so two agents never collide on a
    /// Go server, whose CONNECT table is process-wide).
    pub first_stream_id: Option<u64>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            initial_window: 256 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_chunk: 32 * 1024,
            max_streams: 1024,
            transmit_high_water: 1024 * 1024,
            max_legacy_body: 16 * 1024 * 1024,
            max_legacy_buffered: 64 * 1024 * 1024,
            heartbeat_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            first_stream_id: None,
        }
    }
}
