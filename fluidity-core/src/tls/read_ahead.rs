//! Larger socket reads under rustls.
//!
//! rustls reads TLS records from the socket at most 4 KiB at a time (its deframer asks for
//! no more), so a 16 KiB record costs four or five `recv` calls, and a gigabyte a quarter of a
//! million. [`ReadAhead`] sits between rustls and the socket: it reads up to
//! [`READ_AHEAD`] bytes per call and serves rustls's small reads from memory. The buffer
//! exists only while it holds data, so an idle tunnel costs nothing extra.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes read from the socket at once.
pub const READ_AHEAD: usize = 64 * 1024;

/// A byte stream whose reads are batched (see the module docs); writes pass straight
/// through, vectored writes included.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    buf: BytesMut,
}

impl<S> ReadAhead<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        ReadAhead {
            inner,
            buf: BytesMut::new(),
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Bytes read from the socket but not yet handed out.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            if out.remaining() >= READ_AHEAD {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            // `reserve` reuses the drained allocation when it is ours alone.
            this.buf.reserve(READ_AHEAD);
            let read = tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.buf);
            if !matches!(read, Poll::Ready(Ok(n)) if n > 0) {
                // Waiting (or at the end): hold no buffer while idle.
                this.buf = BytesMut::new();
            }
            ready!(read)?;
        }
        let n = out.remaining().min(this.buf.len());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Small reads are served from one large socket read, in order, to the end; the buffer
    /// is gone once drained and the stream waits.
    #[tokio::test]
    async fn small_reads_come_from_one_large_read_and_idle_holds_nothing() {
        let (a, mut b) = tokio::io::duplex(256 * 1024);
        let mut reader = ReadAhead::new(a);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        b.write_all(&data).await.unwrap();
        let mut got = Vec::new();
        let mut piece = [0u8; 4096];
        while got.len() < data.len() {
            let n = reader.read(&mut piece).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&piece[..n]);
            if got.len() == 4096 {
                // The first read took as much as the pipe held, up to READ_AHEAD.
                assert_eq!(reader.buffered(), READ_AHEAD - 4096);
            }
        }
        assert_eq!(got, data);
        // Nothing more yet: the read waits, and no buffer is held meanwhile.
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            reader.read(&mut piece),
        )
        .await;
        assert!(waiting.is_err());
        assert_eq!(reader.buf.capacity(), 0);
        drop(b);
        assert_eq!(reader.read(&mut piece).await.unwrap(), 0);
    }

    /// Writes pass through unchanged.
    #[tokio::test]
    async fn writes_pass_through() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut stream = ReadAhead::new(a);
        stream.write_all(b"hello").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
    }
}
