//! A thin tokio driver for [`Session`]: one task does the socket I/O and the timers; streams
//! are [`StreamHandle`]s implementing `AsyncRead + AsyncWrite`.
//!
//! Backpressure runs end to end: a stream's `poll_write` waits while its credit (or the
//! session's output buffer) is exhausted; the driver stops reading the socket while a peer
//! without flow control has filled the connection window; a reader that does not read keeps
//! its credit, so only its own stream stops.
//!
//! ```
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use fluidity_core::codec::CodecKind;
//! use fluidity_core::driver::Connection;
//! use fluidity_core::session::{Reply, Role, Session, SessionConfig, Target};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let (a, b) = tokio::io::duplex(64 * 1024);
//! let now = std::time::Instant::now();
//! let client = Connection::spawn(a, Session::new(Role::Client, CodecKind::Binary, SessionConfig::default(), now));
//! let server = Connection::spawn(b, Session::new(Role::Server, CodecKind::Binary, SessionConfig::default(), now));
//! tokio::spawn(async move {
//!     while let Some(incoming) = server.accept().await {
//!         let mut stream = incoming.accept(Reply::Connect).unwrap();
//!         let mut buf = Vec::new();
//!         stream.read_to_end(&mut buf).await.unwrap();
//!         stream.write_all(&buf).await.unwrap(); // echo
//!         stream.shutdown().await.unwrap();
//!     }
//! });
//! let mut stream = client.connect("example.com:443").await?;
//! stream.write_all(b"ping").await?;
//! stream.shutdown().await?;
//! let mut echoed = Vec::new();
//! stream.read_to_end(&mut echoed).await?;
//! assert_eq!(echoed, b"ping");
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

use std::collections::{HashMap, VecDeque};
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::envelope::StreamId;
use crate::error::{Error, Result};
use crate::session::{Chunk, Event, Recv, Reply, Session, Target};

/// Bytes the driver asks the socket for per read.
const READ_CHUNK: usize = 64 * 1024;
/// Rounds of I/O the driver does before yielding to other tasks.
const MAX_ROUNDS: usize = 64;

/// After the session closed, the driver tries this long to flush what is queued (a final
/// reset, a goodbye) before it drops the socket: a peer that reads nothing must not keep the
/// driver alive.
const CLOSE_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Default)]
struct Wakers {
    read: Option<Waker>,
    write: Option<Waker>,
}

#[derive(Debug)]
enum ReplyState {
    Waiting(Option<Waker>),
    Done(std::result::Result<Reply, String>),
}

#[derive(Debug)]
struct State {
    session: Session,
    driver: Option<Waker>,
    streams: HashMap<StreamId, Wakers>,
    replies: HashMap<StreamId, ReplyState>,
    incoming: VecDeque<(StreamId, Target)>,
    incoming_waker: Option<Waker>,
    /// Woken when the tunnel closes, and when the peer's first frame arrives.
    closed_wakers: Vec<Waker>,
    /// The driver stopped reading because the session refused input.
    input_paused: bool,
}

impl State {
    fn wake_driver(&mut self) {
        if let Some(w) = &self.driver {
            w.wake_by_ref();
        }
    }

    /// After an application call: the driver has work if output is queued or input resumes.
    fn after_app_call(&mut self) {
        if self.session.has_transmit() || (self.input_paused && self.session.wants_input()) {
            self.wake_driver();
        }
    }

    fn dispatch_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Incoming { id, target } => {
                    self.incoming.push_back((id, target));
                    if let Some(w) = self.incoming_waker.take() {
                        w.wake();
                    }
                }
                Event::Accepted { id, reply } => self.set_reply(id, Ok(reply)),
                Event::Refused { id, reason } => self.set_reply(id, Err(reason)),
                Event::Readable(id) => self.wake_stream(id, true, false),
                Event::Writable(id) => self.wake_stream(id, false, true),
                Event::Reset { id, reason } => {
                    tracing::debug!(%id, %reason, "stream reset");
                    self.set_reply(id, Err(reason));
                    self.wake_stream(id, true, true);
                }
                Event::PeerHello(hello) => tracing::debug!(?hello, "peer hello"),
                Event::IamAuth(request) => {
                    tracing::debug!(region = %request.region, "Go agent IAM envelope answered ok")
                }
                Event::IamAuthResponse(response) => {
                    if !response.ok {
                        tracing::warn!(error = ?response.error, "server refused our IAM envelope");
                    }
                }
                Event::Closed { reason } => {
                    tracing::debug!(%reason, "tunnel closed");
                    let ids: Vec<StreamId> = self.replies.keys().copied().collect();
                    for id in ids {
                        self.set_reply(id, Err(format!("tunnel closed: {reason}")));
                    }
                    for (_, w) in self.streams.drain() {
                        w.read.into_iter().chain(w.write).for_each(Waker::wake);
                    }
                    self.incoming_waker
                        .take()
                        .into_iter()
                        .chain(self.closed_wakers.drain(..))
                        .for_each(Waker::wake);
                }
            }
        }
    }

    fn set_reply(&mut self, id: StreamId, result: std::result::Result<Reply, String>) {
        if let Some(slot) = self.replies.get_mut(&id)
            && let ReplyState::Waiting(waker) = std::mem::replace(slot, ReplyState::Done(result))
        {
            waker.into_iter().for_each(Waker::wake);
        }
    }

    fn wake_stream(&mut self, id: StreamId, read: bool, write: bool) {
        if let Some(w) = self.streams.get_mut(&id) {
            if read {
                w.read.take().into_iter().for_each(Waker::wake);
            }
            if write {
                w.write.take().into_iter().for_each(Waker::wake);
            }
        }
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the session half-updated in a way that
        // matters more than losing the tunnel, so a poisoned lock is simply taken over.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running tunnel: open (client) or accept (server) streams on it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

/// The future that performs a connection's I/O; spawn it (or use [`Connection::spawn`]).
/// It completes when the tunnel closes.
#[derive(Debug)]
pub struct Driver<T> {
    shared: Arc<Shared>,
    io: T,
    read_buf: BytesMut,
    pending_write: Option<Bytes>,
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
}

impl Connection {
    /// Wraps a session (configured as the caller likes, e.g. after
    /// [`Session::send_iam_auth`]) and a socket; returns the handle and the driver future.
    pub fn new<T>(io: T, session: Session) -> (Connection, Driver<T>)
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let write_stall_timeout = session.idle_timeout();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                session,
                driver: None,
                streams: HashMap::new(),
                replies: HashMap::new(),
                incoming: VecDeque::new(),
                incoming_waker: None,
                closed_wakers: Vec::new(),
                input_paused: false,
            }),
        });
        let driver = Driver {
            shared: shared.clone(),
            io,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            pending_write: None,
            needs_flush: false,
            timer: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            failure: None,
            write_stalled_since: None,
            write_stall_timeout,
            close_deadline: None,
        };
        (Connection { shared }, driver)
    }

    /// [`Connection::new`] and `tokio::spawn` of the driver.
    pub fn spawn<T>(io: T, session: Session) -> Connection
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (connection, driver) = Connection::new(io, session);
        tokio::spawn(async move {
            if let Err(err) = driver.await {
                tracing::debug!(%err, "tunnel driver ended with an error");
            }
        });
        connection
    }

    /// (Client) opens a stream; the handle is usable at once (e.g. for an HTTP request body)
    /// and [`StreamHandle::reply`] waits for the peer's answer.
    pub fn open(&self, target: Target) -> Result<StreamHandle> {
        let mut state = self.shared.lock();
        let id = state.session.open(target)?;
        state.streams.insert(id, Wakers::default());
        state.replies.insert(id, ReplyState::Waiting(None));
        state.wake_driver();
        Ok(StreamHandle {
            id,
            shared: self.shared.clone(),
        })
    }

    /// (Client) opens a CONNECT stream to `address` and waits until the peer accepts it.
    pub async fn connect(&self, address: &str) -> Result<StreamHandle> {
        let stream = self.open(Target::Connect {
            address: address.to_owned(),
        })?;
        stream.reply().await?;
        Ok(stream)
    }

    /// (Server) the next stream the peer opened, or `None` once the tunnel is closed.
    pub async fn accept(&self) -> Option<IncomingStream> {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if let Some((id, target)) = state.incoming.pop_front() {
                return Poll::Ready(Some(IncomingStream {
                    id,
                    target,
                    connection: self.clone(),
                    answered: false,
                }));
            }
            if state.session.closed_reason().is_some() {
                return Poll::Ready(None);
            }
            state.incoming_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Closes the tunnel: every stream fails with `reason`; the driver flushes and ends.
    pub fn close(&self, reason: &str) {
        let mut state = self.shared.lock();
        state.session.close(reason.to_owned());
        state.dispatch_events();
        state.wake_driver();
    }

    /// Waits until the peer's first frame arrived, which proves the tunnel is really up (over
    /// TLS 1.3 a client's handshake completes before the server has checked the client's
    /// certificate); `Err` with the reason if the tunnel closed first.
    pub async fn ready(&self) -> std::result::Result<(), String> {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if let Some(reason) = state.session.closed_reason() {
                return Poll::Ready(Err(reason.to_owned()));
            }
            if state.session.peer_heard() {
                return Poll::Ready(Ok(()));
            }
            state.closed_wakers.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Waits until the tunnel is closed; returns why.
    pub async fn closed(&self) -> String {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            match state.session.closed_reason() {
                Some(reason) => Poll::Ready(reason.to_owned()),
                None => {
                    state.closed_wakers.push(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Why the tunnel closed, if it did.
    pub fn closed_reason(&self) -> Option<String> {
        self.shared
            .lock()
            .session
            .closed_reason()
            .map(str::to_owned)
    }

    /// Streams currently held (open, or dead but not yet dropped).
    pub fn stream_count(&self) -> usize {
        self.shared.lock().session.stream_count()
    }

    /// Whether the peer announced the extensions (a Rust peer) so far.
    pub fn peer_speaks_extensions(&self) -> bool {
        self.shared.lock().session.peer_hello().is_some()
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
    /// closed with `err` and the socket dropped without a flush.
    fn fail(&mut self, err: Error) -> Step {
        let mut state = self.shared.lock();
        state.session.close(err.to_string());
        state.dispatch_events();
        Step::Finished(Err(err))
    }

    /// Writes queued output to the socket, then flushes it.
    fn drive_transmit(&mut self, cx: &mut Context<'_>) -> Step {
        let mut progress = false;
        loop {
            if self.pending_write.is_none() {
                let mut state = self.shared.lock();
                self.pending_write = state.session.poll_transmit();
                state.dispatch_events();
            }
            let Some(buf) = self.pending_write.as_mut() else {
                self.write_stalled_since = None;
                break;
            };
            match Pin::new(&mut self.io).poll_write(cx, buf) {
                Poll::Ready(Ok(0)) => {
                    return self.fail(Error::io(
                        "writing to the tunnel",
                        io::ErrorKind::WriteZero.into(),
                    ));
                }
                Poll::Ready(Ok(n)) => {
                    buf.advance(n);
                    if buf.is_empty() {
                        self.pending_write = None;
                    }
                    self.needs_flush = true;
                    self.write_stalled_since = None;
                    progress = true;
                }
                Poll::Ready(Err(e)) => return self.fail(Error::io("writing to the tunnel", e)),
                Poll::Pending => {
                    self.write_stalled_since
                        .get_or_insert_with(tokio::time::Instant::now);
                    break;
                }
            }
        }
        if self.needs_flush && self.pending_write.is_none() {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return self.fail(Error::io("flushing the tunnel", e)),
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
        if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
            self.read_buf.reserve(READ_CHUNK);
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read_buf) {
            Poll::Ready(Ok(0)) => {
                let mut state = self.shared.lock();
                state.session.receive_eof();
                state.dispatch_events();
                Step::Finished(Ok(()))
            }
            Poll::Ready(Ok(_)) => {
                let now = tokio::time::Instant::now().into_std();
                let mut state = self.shared.lock();
                let heard_before = state.session.peer_heard();
                let result = state.session.receive(&mut self.read_buf, now);
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
            Poll::Ready(Err(e)) => self.fail(Error::io("reading from the tunnel", e)),
            Poll::Pending => Step::Idle,
        }
    }

    /// Heartbeats and the session's deadlines, and the write-stall deadline: output that has
    /// waited for the socket for the session's idle timeout means the peer reads nothing.
    fn drive_timers(&mut self, cx: &mut Context<'_>) -> Step {
        let now = tokio::time::Instant::now();
        if let Some(since) = self.write_stalled_since
            && now.saturating_duration_since(since) >= self.write_stall_timeout
        {
            return self.fail(Error::Timeout(
                "writing to the tunnel (the peer reads nothing)",
                self.write_stall_timeout,
            ));
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
        if self.pending_write.is_some() || self.needs_flush {
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

/// A stream the peer opened, waiting for an answer. Dropping it unanswered refuses it.
#[derive(Debug)]
pub struct IncomingStream {
    id: StreamId,
    target: Target,
    connection: Connection,
    answered: bool,
}

impl IncomingStream {
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
        Ok(StreamHandle {
            id: self.id,
            shared: shared.clone(),
        })
    }

    /// Takes the stream without answering yet, so the request (an HTTP body) can be read
    /// before the reply is known; answer later with [`StreamHandle::respond`] (or
    /// [`StreamHandle::refuse`]). Dropping the handle unanswered resets the stream.
    pub fn defer(mut self) -> StreamHandle {
        self.answered = true;
        let shared = self.connection.shared.clone();
        shared.lock().streams.insert(self.id, Wakers::default());
        StreamHandle {
            id: self.id,
            shared,
        }
    }

    /// Refuses the stream; the client sees `reason`.
    pub fn refuse(mut self, reason: &str) -> Result<()> {
        self.answered = true;
        let mut state = self.connection.shared.lock();
        let result = state.session.refuse(self.id, reason);
        state.session.release(self.id);
        state.after_app_call();
        result
    }
}

impl Drop for IncomingStream {
    fn drop(&mut self) {
        if !self.answered {
            let mut state = self.connection.shared.lock();
            let _ = state.session.refuse(self.id, "not accepted by the server");
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
    /// `reason` (for HTTP, a Go client sees a 502 with it).
    pub fn refuse(&self, reason: &str) -> Result<()> {
        let mut state = self.shared.lock();
        let result = state.session.refuse(self.id, reason);
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
                Some(ReplyState::Done(Err(reason))) => Poll::Ready(Err(Error::Refused {
                    id: self.id,
                    reason: reason.clone(),
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
    pub fn refuse(&self, reason: &str) -> Result<()> {
        self.0.refuse(reason)
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
    pub fn refuse(&self, reason: &str) -> Result<()> {
        self.0.refuse(reason)
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
