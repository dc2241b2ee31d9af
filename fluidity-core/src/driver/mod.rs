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
//! use fluidity_core::Connection;
//! use fluidity_core::{Reply, Role, Session, SessionConfig, Target};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let (a, b) = tokio::io::duplex(64 * 1024);
//! let now = std::time::Instant::now();
//! let client = Connection::spawn(a, Session::client(CodecKind::Binary, SessionConfig::default(), now));
//! let server = Connection::spawn(b, Session::server(CodecKind::Binary, SessionConfig::default(), now));
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
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite};

mod stream;
mod task;

pub use stream::{IncomingStream, StreamHandle, StreamReader, StreamWriter};
pub use task::Driver;

use crate::envelope::StreamId;
use crate::error::Result;
use crate::session::{CloseReason, Event, Reply, Session, StreamError, Target};

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
    Done(std::result::Result<Reply, StreamError>),
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
                Event::Refused { id, refusal } => {
                    self.set_reply(id, Err(StreamError::Refused(refusal)));
                }
                Event::Readable(id) => self.wake_stream(id, true, false),
                Event::Writable(id) => self.wake_stream(id, false, true),
                Event::Reset { id, error } => {
                    tracing::debug!(%id, %error, "stream reset");
                    self.set_reply(id, Err(error));
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
                Event::Closed(reason) => {
                    tracing::debug!(%reason, "tunnel closed");
                    let ids: Vec<StreamId> = self.replies.keys().copied().collect();
                    for id in ids {
                        self.set_reply(id, Err(StreamError::TunnelClosed(reason.clone())));
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

    fn set_reply(&mut self, id: StreamId, result: std::result::Result<Reply, StreamError>) {
        if let Some(slot) = self.replies.get_mut(&id)
            && let ReplyState::Waiting(waker) = std::mem::replace(slot, ReplyState::Done(result))
        {
            waker.into_iter().for_each(Waker::wake);
        }
    }

    /// Ends a reply still awaited for `id` with `error`, and wakes its reader and writer.
    fn end_waiters(&mut self, id: StreamId, error: StreamError) {
        if matches!(self.replies.get(&id), Some(ReplyState::Waiting(_))) {
            self.set_reply(id, Err(error));
        }
        self.wake_stream(id, true, true);
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

impl Connection {
    /// Wraps a session and a socket; returns the handle and the driver future.
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
        let driver = Driver::new(shared.clone(), io, write_stall_timeout);
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
        Ok(StreamHandle::new(id, self.shared.clone()))
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
                return Poll::Ready(Some(IncomingStream::new(id, target, self.clone())));
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
        state.session.close(CloseReason::Local(reason.to_owned()));
        state.dispatch_events();
        state.wake_driver();
    }

    /// Waits until the peer's first frame arrived, which proves the tunnel is really up (over
    /// TLS 1.3 a client's handshake completes before the server has checked the client's
    /// certificate); `Err` with the reason if the tunnel closed first.
    pub async fn ready(&self) -> std::result::Result<(), CloseReason> {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if let Some(reason) = state.session.closed_reason() {
                return Poll::Ready(Err(reason.clone()));
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
    pub async fn closed(&self) -> CloseReason {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            match state.session.closed_reason() {
                Some(reason) => Poll::Ready(reason.clone()),
                None => {
                    state.closed_wakers.push(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Why the tunnel closed, if it did.
    pub fn closed_reason(&self) -> Option<CloseReason> {
        self.shared.lock().session.closed_reason().cloned()
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
