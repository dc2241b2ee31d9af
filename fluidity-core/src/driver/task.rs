//! The driver task: socket I/O and timers for one session, in steps that each do one thing
//! (`drive_transmit`, `drive_receive`, `drive_timers`, `drive_close`).

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Sleep;

use super::{CLOSE_FLUSH_TIMEOUT, MAX_ROUNDS, READ_CHUNK, Shared};
use crate::error::{Error, Result};
use crate::session::CloseReason;

/// The future that performs a connection's I/O; spawn it (or use [`Connection::spawn`](crate::Connection::spawn)).
/// It completes when the tunnel closes.
#[derive(Debug)]
pub struct Driver<T> {
    pub(super) shared: Arc<Shared>,
    io: T,
    read_buf: BytesMut,
    /// Output taken from the session and not yet written, oldest first (at most
    /// [`WRITE_SLICES`] buffers).
    pending_write: VecDeque<Bytes>,
    needs_flush: bool,
    timer: Pin<Box<Sleep>>,
    /// Why the session failed (reported when the driver ends).
    failure: Option<Error>,
    /// Since when queued output has waited for the socket without any byte going out.
    write_stalled_since: Option<tokio::time::Instant>,
    /// Longest such stall before the tunnel is closed (the session's idle timeout).
    write_stall_timeout: std::time::Duration,
    /// Set once the session is closed: when the driver gives up flushing.
    close_deadline: Option<tokio::time::Instant>,
    /// `read_buf` may hold whole frames the session did not take because input paused: they
    /// must be fed when it resumes, before (and whether or not) the socket has more.
    unfed: bool,
}

impl<T> Driver<T> {
    pub(super) fn new(
        shared: Arc<Shared>,
        io: T,
        write_stall_timeout: std::time::Duration,
    ) -> Self {
        Driver {
            shared,
            io,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            pending_write: VecDeque::new(),
            needs_flush: false,
            timer: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            failure: None,
            write_stalled_since: None,
            write_stall_timeout,
            close_deadline: None,
            unfed: false,
        }
    }
}

/// Most output buffers handed to one vectored write.
const WRITE_SLICES: usize = 8;

/// Drops the first `n` bytes of `pending`.
fn consume(pending: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = pending.front_mut() else {
            return;
        };
        if front.len() > n {
            front.advance(n);
            return;
        }
        n -= front.len();
        pending.pop_front();
    }
}

/// What one step of the driver did.
enum Step {
    /// Something moved: run another round.
    Progress,
    /// Nothing to do until a waker fires.
    Idle,
    /// The driver is done (the tunnel is gone).
    Finished(Result<()>),
}

impl<T: AsyncRead + AsyncWrite + Unpin> Driver<T> {
    /// Ends the driver at once (a socket error, or a peer that reads nothing): the session is
    /// closed with `reason` and the socket dropped without a flush.
    fn fail(&mut self, reason: CloseReason) -> Step {
        let mut state = self.shared.lock();
        state.session.close(reason.clone());
        state.dispatch_events();
        Step::Finished(Err(Error::Closed(reason)))
    }

    /// Writes queued output to the socket, then flushes it.
    fn drive_transmit(&mut self, cx: &mut Context<'_>) -> Step {
        let mut progress = false;
        loop {
            if self.pending_write.is_empty() {
                let mut state = self.shared.lock();
                while self.pending_write.len() < WRITE_SLICES {
                    match state.session.poll_transmit() {
                        Some(bytes) => self.pending_write.push_back(bytes),
                        None => break,
                    }
                }
                state.dispatch_events();
            }
            if self.pending_write.is_empty() {
                self.write_stalled_since = None;
                break;
            }
            // All of it in one call: the session's output comes in several buffers, and TLS
            // encrypts up to its buffer limit (64 KiB) per write to the socket.
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            for (slice, bytes) in slices.iter_mut().zip(&self.pending_write) {
                *slice = IoSlice::new(bytes);
            }
            let count = self.pending_write.len();
            match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]) {
                Poll::Ready(Ok(0)) => {
                    let zero = io::Error::from(io::ErrorKind::WriteZero);
                    return self.fail(CloseReason::io("writing to the tunnel", &zero));
                }
                Poll::Ready(Ok(n)) => {
                    consume(&mut self.pending_write, n);
                    self.needs_flush = true;
                    self.write_stalled_since = None;
                    progress = true;
                }
                Poll::Ready(Err(e)) => {
                    return self.fail(CloseReason::io("writing to the tunnel", &e));
                }
                Poll::Pending => {
                    self.write_stalled_since
                        .get_or_insert_with(tokio::time::Instant::now);
                    break;
                }
            }
        }
        if self.needs_flush && self.pending_write.is_empty() {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => {
                    return self.fail(CloseReason::io("flushing the tunnel", &e));
                }
                Poll::Pending => {}
            }
        }
        if progress { Step::Progress } else { Step::Idle }
    }

    /// Reads from the socket into the session, unless the session holds off (backpressure).
    fn drive_receive(&mut self, cx: &mut Context<'_>) -> Step {
        {
            let mut state = self.shared.lock();
            state.input_paused = !state.session.wants_input();
            if state.input_paused {
                return Step::Idle;
            }
        }
        if self.unfed {
            // What was read before input paused comes first; the socket may have nothing
            // more to say (a peer's last frames, read together with what filled the window).
            return self.feed_session();
        }
        // Read what the socket has, up to READ_CHUNK, before handing it over: over TLS each
        // read returns at most one record (16 KiB), and one hand-over per record would take
        // the session lock and wake the streams' readers four times as often.
        let mut read = 0;
        loop {
            if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
                if read > 0 {
                    break;
                }
                self.read_buf.reserve(READ_CHUNK);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read_buf) {
                // The end: what came before it goes in first (the end is seen again next round).
                Poll::Ready(Ok(0)) if read > 0 => break,
                Poll::Ready(Ok(0)) => {
                    let mut state = self.shared.lock();
                    state.session.receive_eof();
                    state.dispatch_events();
                    return Step::Finished(Ok(()));
                }
                Poll::Ready(Ok(n)) => {
                    read += n;
                    if read >= READ_CHUNK {
                        break;
                    }
                }
                Poll::Ready(Err(e)) => {
                    return self.fail(CloseReason::io("reading from the tunnel", &e));
                }
                Poll::Pending if read > 0 => break,
                Poll::Pending => return Step::Idle,
            }
        }
        self.feed_session()
    }

    /// Hands `read_buf` to the session, which takes whole frames while it wants input.
    fn feed_session(&mut self) -> Step {
        let now = tokio::time::Instant::now().into_std();
        let mut state = self.shared.lock();
        let heard_before = state.session.peer_heard();
        let result = state.session.receive(&mut self.read_buf, now);
        // Stopped by backpressure with bytes left: they may be whole frames.
        self.unfed = !self.read_buf.is_empty() && !state.session.wants_input();
        if !heard_before && state.session.peer_heard() {
            state.closed_wakers.drain(..).for_each(Waker::wake);
        }
        state.dispatch_events();
        if let Err(err) = result {
            tracing::warn!(%err, "closing a corrupt tunnel");
            self.failure = Some(err);
        }
        Step::Progress
    }

    /// Heartbeats and the session's deadlines, and the write-stall deadline: output that has
    /// waited for the socket for the session's idle timeout means the peer reads nothing.
    fn drive_timers(&mut self, cx: &mut Context<'_>) -> Step {
        let now = tokio::time::Instant::now();
        if let Some(since) = self.write_stalled_since
            && now.saturating_duration_since(since) >= self.write_stall_timeout
        {
            return self.fail(CloseReason::WriteStalled(self.write_stall_timeout));
        }
        let session_deadline = self
            .shared
            .lock()
            .session
            .poll_timeout()
            .map(tokio::time::Instant::from_std);
        if let Some(deadline) = session_deadline
            && deadline <= now
        {
            let mut state = self.shared.lock();
            state.session.handle_timeout(now.into_std());
            state.dispatch_events();
            return Step::Progress;
        }
        let stall_deadline = self
            .write_stalled_since
            .map(|since| since + self.write_stall_timeout);
        let next = match (session_deadline, stall_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match next {
            Some(deadline) if self.arm_timer(cx, deadline) => Step::Progress,
            _ => Step::Idle,
        }
    }

    /// Sets the timer to `deadline`; whether it already fired.
    fn arm_timer(&mut self, cx: &mut Context<'_>, deadline: tokio::time::Instant) -> bool {
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }

    /// The session is closed: flush what is queued (for at most [`CLOSE_FLUSH_TIMEOUT`]),
    /// shut the socket down and finish.
    fn drive_close(&mut self, cx: &mut Context<'_>) -> Step {
        let now = tokio::time::Instant::now();
        let deadline = *self.close_deadline.get_or_insert(now + CLOSE_FLUSH_TIMEOUT);
        if now >= deadline {
            tracing::debug!("giving up flushing a closed tunnel: the peer reads nothing");
            return Step::Finished(self.failure.take().map_or(Ok(()), Err));
        }
        if !self.pending_write.is_empty() || self.needs_flush {
            return if self.arm_timer(cx, deadline) {
                Step::Progress
            } else {
                Step::Idle
            };
        }
        match Pin::new(&mut self.io).poll_shutdown(cx) {
            Poll::Pending => {
                if self.arm_timer(cx, deadline) {
                    Step::Progress
                } else {
                    Step::Idle
                }
            }
            Poll::Ready(_) => Step::Finished(self.failure.take().map_or(Ok(()), Err)),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Future for Driver<T> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        {
            let mut state = this.shared.lock();
            if !state
                .driver
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.driver = Some(cx.waker().clone());
            }
        }
        // The session lock is held only to move bytes and events in and out of the session,
        // never across socket I/O: with TLS, reading and writing include decryption and
        // encryption, and stream tasks must not wait for those.
        for _ in 0..MAX_ROUNDS {
            // Output first: it frees buffer space for writers and returns credit to the peer.
            let mut progress = false;
            let mut run = |step: Step| match step {
                Step::Finished(result) => Some(result),
                Step::Progress => {
                    progress = true;
                    None
                }
                Step::Idle => None,
            };
            if let Some(result) = run(this.drive_transmit(cx)) {
                return Poll::Ready(result);
            }
            if this.shared.lock().session.closed_reason().is_some() {
                if let Some(result) = run(this.drive_close(cx)) {
                    return Poll::Ready(result);
                }
            } else {
                if let Some(result) = run(this.drive_receive(cx)) {
                    return Poll::Ready(result);
                }
                if let Some(result) = run(this.drive_timers(cx)) {
                    return Poll::Ready(result);
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // Plenty done: let other tasks run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
