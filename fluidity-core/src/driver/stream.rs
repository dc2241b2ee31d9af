//! The application's side of a stream: [`StreamHandle`] (`AsyncRead + AsyncWrite`), its
//! halves, and [`IncomingStream`], a stream the peer opened that waits for an answer.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Connection, ReplyState, Shared, Wakers};
use crate::envelope::{RefusalCode, StreamId};
use crate::error::{Error, Result};
use crate::session::{Chunk, Recv, Reply, StreamError, Target};

/// A stream the peer opened, waiting for an answer. Dropping it unanswered refuses it.
#[derive(Debug)]
pub struct IncomingStream {
    id: StreamId,
    target: Target,
    connection: Connection,
    answered: bool,
}

impl IncomingStream {
    pub(super) fn new(id: StreamId, target: Target, connection: Connection) -> Self {
        IncomingStream {
            id,
            target,
            connection,
            answered: false,
        }
    }

    /// The stream id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// What the peer wants to reach.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Accepts the stream with `reply` and returns its handle.
    pub fn accept(mut self, reply: Reply) -> Result<StreamHandle> {
        self.answered = true;
        let shared = self.connection.shared.clone();
        let mut state = shared.lock();
        state.session.accept(self.id, reply)?;
        state.streams.insert(self.id, Wakers::default());
        state.after_app_call();
        Ok(StreamHandle::new(self.id, shared.clone()))
    }

    /// Takes the stream without answering yet, so the request (an HTTP body) can be read
    /// before the reply is known; answer later with [`StreamHandle::respond`] (or
    /// [`StreamHandle::refuse`]). Dropping the handle unanswered resets the stream.
    pub fn defer(mut self) -> StreamHandle {
        self.answered = true;
        let shared = self.connection.shared.clone();
        shared.lock().streams.insert(self.id, Wakers::default());
        StreamHandle::new(self.id, shared)
    }

    /// Refuses the stream; the client sees `code` and `reason`.
    pub fn refuse(mut self, code: RefusalCode, reason: &str) -> Result<()> {
        self.answered = true;
        let mut state = self.connection.shared.lock();
        let result = state.session.refuse(self.id, code, reason);
        state.session.release(self.id);
        state.after_app_call();
        result
    }
}

impl Drop for IncomingStream {
    fn drop(&mut self) {
        if !self.answered {
            let mut state = self.connection.shared.lock();
            let _ = state
                .session
                .refuse(self.id, RefusalCode::Other, "not accepted by the server");
            state.session.release(self.id);
            state.after_app_call();
        }
    }
}

/// One stream of a tunnel: `AsyncRead + AsyncWrite` over its bytes; `shutdown` half-closes.
/// Dropping it resets the stream unless both directions already ended.
#[derive(Debug)]
pub struct StreamHandle {
    id: StreamId,
    shared: Arc<Shared>,
}

impl StreamHandle {
    pub(super) fn new(id: StreamId, shared: Arc<Shared>) -> Self {
        StreamHandle { id, shared }
    }

    /// The stream id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// (Server) answers a stream taken with [`IncomingStream::defer`].
    pub fn respond(&self, reply: Reply) -> Result<()> {
        let mut state = self.shared.lock();
        let result = state.session.accept(self.id, reply);
        state.after_app_call();
        result
    }

    /// (Server) refuses a stream taken with [`IncomingStream::defer`]; the client sees
    /// `code` and `reason` (for HTTP, a Go client sees a 502 with the reason).
    pub fn refuse(&self, code: RefusalCode, reason: &str) -> Result<()> {
        let mut state = self.shared.lock();
        let result = state.session.refuse(self.id, code, reason);
        state.after_app_call();
        result
    }

    /// Splits the handle into a reader (which also waits for the reply) and a writer, so
    /// each direction can run in its own task. The stream is released when both are dropped.
    pub fn into_split(self) -> (StreamReader, StreamWriter) {
        let handle = Arc::new(self);
        (StreamReader(handle.clone()), StreamWriter(handle))
    }

    /// (Client) waits for the peer's answer to the open: `Ok` with the reply (the response
    /// head for HTTP), `Err(Refused)` with the peer's reason. Returns at once once known.
    pub async fn reply(&self) -> Result<Reply> {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            match state.replies.get_mut(&self.id) {
                None => Poll::Ready(Err(Error::StreamState {
                    id: self.id,
                    reason: "only streams opened here have a reply",
                })),
                Some(ReplyState::Done(Ok(reply))) => Poll::Ready(Ok(reply.clone())),
                Some(ReplyState::Done(Err(error))) => Poll::Ready(Err(Error::Stream {
                    id: self.id,
                    error: error.clone(),
                })),
                Some(ReplyState::Waiting(waker)) => {
                    *waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Receives the next chunk (a whole message on WebSocket streams); `None` at the end.
    pub async fn recv_chunk(&self) -> Result<Option<Chunk>> {
        poll_fn(|cx| self.poll_recv_chunk(cx, usize::MAX)).await
    }

    fn poll_recv_chunk(&self, cx: &mut Context<'_>, max: usize) -> Poll<Result<Option<Chunk>>> {
        let mut state = self.shared.lock();
        let result = state.session.recv(self.id, max);
        let poll = match result {
            Ok(Recv::Data(chunk)) => Poll::Ready(Ok(Some(chunk))),
            Ok(Recv::End) => Poll::Ready(Ok(None)),
            Ok(Recv::Pending) => {
                if let Some(w) = state.streams.get_mut(&self.id) {
                    w.read = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        };
        state.after_app_call();
        poll
    }

    /// Sends one whole WebSocket message, waiting for credit if needed.
    pub async fn send_message(&self, ws_type: u8, data: &[u8]) -> Result<()> {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            match state.session.send_message(self.id, ws_type, data) {
                Ok(true) => {
                    state.after_app_call();
                    Poll::Ready(Ok(()))
                }
                Ok(false) => {
                    if let Some(w) = state.streams.get_mut(&self.id) {
                        w.write = Some(cx.waker().clone());
                    }
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(e)),
            }
        })
        .await
    }

    /// Closes a WebSocket stream with a close code and reason.
    pub fn close_websocket(&self, code: u16, reason: &str) -> Result<()> {
        let mut state = self.shared.lock();
        let result = state.session.close_websocket(self.id, code, reason);
        state.after_app_call();
        result
    }

    /// Aborts the stream in both directions; the peer learns `reason`.
    pub fn reset(&self, reason: &str) {
        let mut state = self.shared.lock();
        let _ = state.session.reset(self.id, reason);
        // Our own reset is the answer for whoever still waits on this stream: the session
        // reports only the peer's resets, and a peer says nothing more about a reset stream.
        // (Found by the front-door campaign: a request body that failed before the server
        // answered left the request waiting forever.)
        state.end_waiters(self.id, StreamError::Reset(reason.to_owned()));
        state.after_app_call();
    }
}

impl StreamHandle {
    fn poll_read_bytes(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        match self.poll_recv_chunk(cx, buf.remaining()) {
            Poll::Ready(Ok(Some(chunk))) => {
                // `recv` never returns more than asked for byte streams; a WebSocket message
                // larger than the buffer is cut (use `recv_chunk` to keep boundaries).
                let n = chunk.data.len().min(buf.remaining());
                buf.put_slice(&chunk.data[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_write_bytes(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut state = self.shared.lock();
        match state.session.send(self.id, data) {
            Ok(0) => {
                if let Some(w) = state.streams.get_mut(&self.id) {
                    w.write = Some(cx.waker().clone());
                }
                // The output buffer may be full: make sure the driver is draining it.
                state.wake_driver();
                Poll::Pending
            }
            Ok(n) => {
                state.after_app_call();
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }

    fn finish(&self) -> io::Result<()> {
        let mut state = self.shared.lock();
        let result = state.session.finish(self.id);
        state.after_app_call();
        result.map_err(Into::into)
    }
}

impl AsyncRead for StreamHandle {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_read_bytes(cx, buf)
    }
}

impl AsyncWrite for StreamHandle {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_bytes(cx, data)
    }

    // Written bytes are already queued in the session; the driver sends them.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.finish())
    }
}

/// The reading half of a [`StreamHandle`] (see [`StreamHandle::into_split`]).
#[derive(Debug)]
pub struct StreamReader(Arc<StreamHandle>);

impl StreamReader {
    /// Receives the next chunk without copying; see [`StreamHandle::recv_chunk`].
    pub async fn recv_chunk(&self) -> Result<Option<Chunk>> {
        self.0.recv_chunk().await
    }

    /// (Client) waits for the peer's answer to the open; see [`StreamHandle::reply`].
    pub async fn reply(&self) -> Result<Reply> {
        self.0.reply().await
    }

    /// (Server) answers a deferred stream; see [`StreamHandle::respond`].
    pub fn respond(&self, reply: Reply) -> Result<()> {
        self.0.respond(reply)
    }

    /// (Server) refuses a deferred stream; see [`StreamHandle::refuse`].
    pub fn refuse(&self, code: RefusalCode, reason: &str) -> Result<()> {
        self.0.refuse(code, reason)
    }

    /// Aborts the stream in both directions.
    pub fn reset(&self, reason: &str) {
        self.0.reset(reason);
    }
}

impl AsyncRead for StreamReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.0.poll_read_bytes(cx, buf)
    }
}

/// The writing half of a [`StreamHandle`] (see [`StreamHandle::into_split`]).
#[derive(Debug)]
pub struct StreamWriter(Arc<StreamHandle>);

impl StreamWriter {
    /// (Server) answers a deferred stream; see [`StreamHandle::respond`].
    pub fn respond(&self, reply: Reply) -> Result<()> {
        self.0.respond(reply)
    }

    /// (Server) refuses a deferred stream; see [`StreamHandle::refuse`].
    pub fn refuse(&self, code: RefusalCode, reason: &str) -> Result<()> {
        self.0.refuse(code, reason)
    }

    /// Aborts the stream in both directions.
    pub fn reset(&self, reason: &str) {
        self.0.reset(reason);
    }
}

impl AsyncWrite for StreamWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_write_bytes(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.0.finish())
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.session.release(self.id);
        state.streams.remove(&self.id);
        state.replies.remove(&self.id);
        state.after_app_call();
    }
}
