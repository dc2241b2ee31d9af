//! The session's output: encoded frames waiting for the driver to write them.
//!
//! Frames are appended to a buffer; when the next one does not fit and the buffer already
//! holds frames, that buffer is sealed and a new one started, instead of growing it. Growing
//! a contiguous buffer copies everything already in it, and while the driver is busy
//! encrypting, writers queue up to `transmit_high_water` (1 MiB): the sending agent copied
//! over half of its upload a second time that way (docs/performance.md).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Capacity of a new output buffer, unless a frame needs more: room for two full data frames
/// (32 KiB each by default) and some control frames, so that the driver hands rustls 64 KiB at
/// a time (its buffer limit, and one `writev` each), and under glibc's default 128 KiB mmap
/// threshold, so that a buffer is not an `mmap` and `munmap` each time.
const BUFFER: usize = 96 * 1024;

#[derive(Debug)]
pub(super) struct Output {
    /// Full buffers, oldest first.
    sealed: VecDeque<Bytes>,
    sealed_len: usize,
    /// The buffer frames are appended to.
    open: BytesMut,
}

impl Output {
    pub(super) fn new() -> Self {
        Output {
            sealed: VecDeque::new(),
            sealed_len: 0,
            // Allocated when the first frame is queued, so a session that never sends holds
            // none. Afterwards it keeps what is left of its last buffer (at most BUFFER), so
            // that a burst does not start with an allocation.
            open: BytesMut::new(),
        }
    }

    /// Bytes waiting.
    pub(super) fn len(&self) -> usize {
        self.sealed_len + self.open.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.sealed.is_empty() && self.open.is_empty()
    }

    /// The buffer to append a frame of about `size` bytes to (a larger frame is still
    /// appended whole: the buffer grows).
    pub(super) fn room_for(&mut self, size: usize) -> &mut BytesMut {
        if self.open.capacity() - self.open.len() < size && !self.open.is_empty() {
            self.seal();
        }
        if self.open.capacity() < size {
            // Empty (just sealed or taken): nothing is copied.
            self.open.reserve(size.max(BUFFER));
        }
        &mut self.open
    }

    /// Queues already encoded bytes without copying them.
    pub(super) fn push(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.seal();
        self.sealed_len += bytes.len();
        self.sealed.push_back(bytes);
    }

    /// The oldest waiting bytes, if any.
    pub(super) fn take(&mut self) -> Option<Bytes> {
        if let Some(bytes) = self.sealed.pop_front() {
            self.sealed_len -= bytes.len();
            return Some(bytes);
        }
        (!self.open.is_empty()).then(|| self.open.split().freeze())
    }

    fn seal(&mut self) {
        if !self.open.is_empty() {
            let full = self.open.split().freeze();
            self.sealed_len += full.len();
            self.sealed.push_back(full);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_out_in_order_and_full_buffers_are_not_moved() {
        let mut out = Output::new();
        out.room_for(60_000).extend_from_slice(&[1; 60_000]);
        let first = out.open.as_ptr();
        // Does not fit beside the first: a new buffer, the first one stays where it is.
        out.room_for(60_000).extend_from_slice(&[2; 60_000]);
        out.push(Bytes::from_static(&[3; 10]));
        out.room_for(10).extend_from_slice(&[4; 10]);
        assert_eq!(out.len(), 120_020);
        let a = out.take().expect("first buffer");
        assert_eq!((a.len(), a.as_ptr(), a[0]), (60_000, first, 1));
        assert_eq!(out.take().expect("second").as_ref(), &[2; 60_000][..]);
        assert_eq!(out.take().expect("pushed").as_ref(), &[3; 10]);
        assert_eq!(out.take().expect("last").as_ref(), &[4; 10]);
        assert!(out.take().is_none() && out.is_empty());
        assert_eq!(out.len(), 0);
    }

    #[test]
    fn two_full_data_frames_share_a_buffer() {
        let mut out = Output::new();
        assert_eq!(
            out.open.capacity(),
            0,
            "nothing allocated before the first frame"
        );
        out.room_for(32 * 1024 + 14)
            .extend_from_slice(&[1; 32 * 1024 + 14]);
        out.room_for(32 * 1024 + 14)
            .extend_from_slice(&[2; 32 * 1024 + 14]);
        assert_eq!(out.take().expect("both").len(), 2 * (32 * 1024 + 14));
        assert!(out.take().is_none());
    }

    #[test]
    fn a_frame_larger_than_a_buffer_gets_one_of_its_own() {
        let mut out = Output::new();
        out.room_for(5).extend_from_slice(b"small");
        out.room_for(100_000).extend_from_slice(&[7; 100_000]);
        assert_eq!(out.take().expect("small").as_ref(), b"small");
        assert_eq!(out.take().expect("large").len(), 100_000);
    }
}
