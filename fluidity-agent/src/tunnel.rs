//! The agent's one tunnel: established in the background through any [`Transport`],
//! re-established with jittered exponential backoff whenever it drops; requests wait for it up
//! to `reconnect_wait`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fluidity_core::{
    Backoff, CloseReason, Connection, ServerInfo, ServerLocator, Session, SessionConfig, Transport,
};
use tokio::sync::watch;

/// First and longest pause between reconnection attempts.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// See [`BACKOFF_MIN`].
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A tunnel that stayed up this long proved the path works: the backoff starts over. One that
/// dropped sooner (a server that rejects our certificate after TLS 1.3 completed on our side,
/// a proxy that cuts connections) counts as a failed attempt.
const STABLE_TUNNEL: Duration = Duration::from_secs(30);

/// How long a new tunnel may take to deliver the server's first frame.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an attempt to bring the tunnel up failed, or why it went down.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DialError {
    /// The locator found no server (the control plane failed, the server did not start).
    #[error("locating the server: {0}")]
    Locate(Arc<fluidity_core::Error>),
    /// The transport could not reach or authenticate the server.
    #[error(transparent)]
    Connect(Arc<fluidity_core::Error>),
    /// TLS completed on our side, then the server closed before its first frame: over
    /// TLS 1.3 that is how a server rejects a client certificate.
    #[error(
        "the server closed the tunnel before its first frame (did it reject our certificate? \
         its log says why): {0}"
    )]
    Rejected(CloseReason),
    /// The server sent nothing after the handshake.
    #[error("the server sent nothing within {0:?} of the handshake")]
    Silent(Duration),
    /// A tunnel that was up closed.
    #[error("tunnel lost after {after:?}: {reason}")]
    Lost {
        /// How long it had been up.
        after: Duration,
        /// Why it closed.
        reason: CloseReason,
    },
}

/// Why a request got no tunnel.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TunnelError {
    /// The tunnel is down and did not come back in time.
    #[error(
        "the tunnel to the server is down and did not come back within {waited:?}{}",
        last.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
    )]
    Down {
        /// How long the request waited.
        waited: Duration,
        /// The last failure, if any.
        last: Option<DialError>,
    },
    /// The tunnel task is gone (the agent is stopping).
    #[error("the tunnel task stopped")]
    Stopped,
}

/// The tunnel's state as requests see it.
#[derive(Debug, Clone)]
enum State {
    /// Not connected (yet, or again); the last failure if any.
    Down(Option<DialError>),
    /// Connected.
    Up(Connection),
}

/// The reconnecting tunnel client.
#[derive(Debug)]
pub struct Tunnel {
    state: watch::Receiver<State>,
    reconnect_wait: Duration,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tunnel {
    /// Starts maintaining a tunnel through `transport` to the server `locator` finds, each
    /// connection with the `session` settings.
    pub fn start<T: Transport>(
        locator: Arc<dyn ServerLocator>,
        transport: T,
        reconnect_wait: Duration,
        session: SessionConfig,
    ) -> Self {
        let (sender, state) = watch::channel(State::Down(None));
        let dialer = Dialer {
            locator,
            transport,
            session,
        };
        let task = tokio::spawn(maintain(dialer, sender));
        Tunnel {
            state,
            reconnect_wait,
            task,
        }
    }

    /// The current tunnel, waiting up to `reconnect_wait` for one.
    pub async fn connection(&self) -> Result<Connection, TunnelError> {
        let mut state = self.state.clone();
        let wait = state.wait_for(|s| matches!(s, State::Up(c) if c.closed_reason().is_none()));
        match tokio::time::timeout(self.reconnect_wait, wait).await {
            Ok(Ok(state)) => match &*state {
                State::Up(connection) => Ok(connection.clone()),
                State::Down(last) => Err(TunnelError::Down {
                    waited: self.reconnect_wait,
                    last: last.clone(),
                }),
            },
            Ok(Err(_)) => Err(TunnelError::Stopped),
            Err(_) => {
                let last = match &*self.state.borrow() {
                    State::Down(last) => last.clone(),
                    State::Up(_) => None,
                };
                Err(TunnelError::Down {
                    waited: self.reconnect_wait,
                    last,
                })
            }
        }
    }

    /// Whether the tunnel is up right now.
    pub fn is_up(&self) -> bool {
        matches!(&*self.state.borrow(), State::Up(c) if c.closed_reason().is_none())
    }

    /// Streams open on the tunnel now (0 while it is down).
    pub fn stream_count(&self) -> usize {
        match &*self.state.borrow() {
            State::Up(connection) => connection.stream_count(),
            State::Down(_) => 0,
        }
    }

    /// Why the tunnel is down, if it is and a reason is known.
    pub fn last_failure(&self) -> Option<String> {
        match &*self.state.borrow() {
            State::Down(Some(reason)) => Some(reason.to_string()),
            _ => None,
        }
    }
}

struct Dialer<T> {
    locator: Arc<dyn ServerLocator>,
    transport: T,
    session: SessionConfig,
}

async fn maintain<T: Transport>(dialer: Dialer<T>, state: watch::Sender<State>) {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let mut first = true;
    loop {
        let started = Instant::now();
        let outcome = dialer.connect(first).await;
        first = false;
        let failure = match outcome {
            Ok((connection, info)) => {
                tracing::info!(server = %info.address, took = ?started.elapsed(), "tunnel up");
                let up_since = Instant::now();
                let _ = state.send(State::Up(connection.clone()));
                let reason = connection.closed().await;
                let lost = DialError::Lost {
                    after: up_since.elapsed(),
                    reason,
                };
                let _ = state.send(State::Down(Some(lost.clone())));
                if up_since.elapsed() >= STABLE_TUNNEL {
                    tracing::warn!(reason = %lost, "tunnel lost; reconnecting");
                    backoff.reset();
                    None
                } else {
                    Some(lost)
                }
            }
            Err(error) => {
                let _ = state.send(State::Down(Some(error.clone())));
                Some(error)
            }
        };
        if let Some(reason) = failure {
            let pause = backoff.next_delay();
            tracing::warn!(%reason, retry_in = ?pause, "tunnel connection failed");
            tokio::time::sleep(pause).await;
        }
        if state.is_closed() {
            return;
        }
    }
}

impl<T: Transport> Dialer<T> {
    async fn connect(&self, first: bool) -> Result<(Connection, ServerInfo), DialError> {
        let info = if first {
            self.locator.locate().await
        } else {
            self.locator.relocate().await
        }
        .map_err(|e| DialError::Locate(Arc::new(e)))?;
        let established = self
            .transport
            .connect(&info)
            .await
            .map_err(|e| DialError::Connect(Arc::new(e)))?;
        let session = Session::client(established.codec, self.session.clone(), Instant::now());
        let connection = Connection::spawn(established.stream, session);
        // Over TLS 1.3 our handshake completes before the server has checked our certificate:
        // only its first frame says it accepted us.
        match tokio::time::timeout(FIRST_FRAME_TIMEOUT, connection.ready()).await {
            Ok(Ok(())) => Ok((connection, info)),
            Ok(Err(reason)) => Err(DialError::Rejected(reason)),
            Err(_) => {
                connection.close("no first frame from the server");
                Err(DialError::Silent(FIRST_FRAME_TIMEOUT))
            }
        }
    }
}
