//! A session's limits and timings.

use std::time::Duration;

use crate::codec::{CodecKind, DEFAULT_MAX_FRAME_SIZE};

/// The decoder's frame limit: `max_frame_size`, except that over JSON a Go peer puts a whole
/// WebSocket message in one line (HTTP lines stream whatever their length).
pub(super) fn decode_limit(codec: CodecKind, config: &SessionConfig) -> usize {
    match codec {
        CodecKind::Binary => config.max_frame_size,
        CodecKind::Json => config.max_frame_size.max(config.max_json_line),
    }
}

/// Limits and timings of a session. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest frame the decoder accepts (default 1 MiB; over JSON, see `max_json_line`).
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
    /// Largest HTTP body held for a Go peer and sent as one envelope (default 1 MiB). A
    /// larger body is written as it comes, inside the one envelope the Go format wants (a
    /// streamed line), while the other streams' output waits for the line to end.
    pub legacy_line_threshold: usize,
    /// Most bytes of bodies held for a Go peer across all streams (default 16 MiB). Beyond it
    /// writers wait, except the stream that started first, which may always complete its
    /// body, so the streams never wait on each other forever.
    pub max_legacy_buffered: usize,
    /// A streamed line whose body makes no progress for this long, while the output has room,
    /// is abandoned (the peer sees the stream fail), so the other streams do not wait on it
    /// forever (default 10 s; the check runs every interval, so the bound is twice this).
    pub legacy_line_stall: Duration,
    /// Longest JSON line decoded whole: what a Go peer's WebSocket message may take
    /// (default 16 MiB). HTTP lines stream whatever their length.
    pub max_json_line: usize,
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
            legacy_line_threshold: 1024 * 1024,
            max_legacy_buffered: 16 * 1024 * 1024,
            legacy_line_stall: Duration::from_secs(10),
            max_json_line: 16 * 1024 * 1024,
            heartbeat_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            first_stream_id: None,
        }
    }
}
