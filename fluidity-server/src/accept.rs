//! The accept loop, generic over the [`Transport`]: unauthenticated connections get a bounded
//! handshake budget, authenticated ones a tunnel slot, and each tunnel serves its streams until
//! the agent leaves or the server drains.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fluidity_core::{CloseReason, Connection, RefusalCode, Session, SessionConfig, Transport};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::admission::{Admitted, HandshakeBudget, HandshakeTicket};
use crate::exit::Exits;
use crate::metrics::Failure;
use crate::{Error, Server};

/// Pause after a failed accept (out of descriptors and the like) instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What every tunnel task shares.
#[derive(Debug)]
struct TunnelSettings {
    session: SessionConfig,
    /// Tunnel slots (`max_connections`), taken only after mutual authentication.
    slots: Arc<Semaphore>,
    max_connections: usize,
}

impl Server {
    /// Accepts tunnels through `transport` (which owns its listener) until `shutdown`
    /// completes, then stops accepting and lets open streams finish for up to
    /// `shutdown_grace`. [`Server::serve`] calls this with the transport the configuration
    /// names; embedders pass their own.
    pub async fn serve_transport<T: Transport>(
        self,
        transport: T,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let (drain_tx, drain_rx) = watch::channel(false);
        self.start_side_tasks(&drain_rx).await?;
        // The certificate is signed (and renewed) here, never because a peer connected. The
        // first signing is tried before accepting, so agents find a certificate at once; if
        // it fails, the server accepts anyway (handshakes fail with the reason) and retries.
        if let Some(manager) = &self.certificates
            && let Err(e) = manager.refresh().await
        {
            tracing::warn!(error = %e, "no server certificate yet; retrying in the background");
        }
        let renewal = self
            .certificates
            .clone()
            .map(|manager| tokio::spawn(manager.maintain()));
        tracing::info!(
            max_connections = self.config.max_connections,
            max_handshakes = self.config.max_handshakes,
            "accepting tunnels"
        );
        let budget = HandshakeBudget::new(
            self.config.max_handshakes,
            self.config.max_handshakes_per_ip,
        );
        let settings = Arc::new(TunnelSettings {
            session: SessionConfig {
                idle_timeout: self.config.dead_agent_timeout,
                heartbeat_interval: self.config.dead_agent_timeout / 3,
                max_streams: self.config.max_streams,
                ..SessionConfig::default()
            },
            slots: Arc::new(Semaphore::new(self.config.max_connections)),
            max_connections: self.config.max_connections,
        });
        let transport = Arc::new(transport);
        let mut tunnels = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = tunnels.join_next(), if !tunnels.is_empty() => {}
                accepted = transport.accept() => {
                    let (raw, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                            continue;
                        }
                    };
                    let ticket = match budget.admit(peer.ip()) {
                        Ok((ticket, admitted)) => {
                            if admitted == Admitted::EvictedOldest {
                                self.metrics.failed(Failure::HandshakeEvicted);
                            }
                            ticket
                        }
                        Err(refusal) => {
                            tracing::debug!(%peer, %refusal, "closing a connection: no handshake slot");
                            self.metrics.failed(Failure::HandshakeRefused);
                            continue;
                        }
                    };
                    tunnels.spawn(tunnel(
                        transport.clone(),
                        raw,
                        peer,
                        ticket,
                        settings.clone(),
                        self.exits.clone(),
                        drain_rx.clone(),
                    ));
                }
            }
        }
        if let Some(renewal) = renewal {
            renewal.abort();
        }
        // Close the listening socket now (tunnel tasks hold the transport only while they
        // handshake): the kernel would otherwise keep completing connections into the
        // backlog while we drain.
        drop(transport);
        let open = tunnels.len();
        tracing::info!(open, grace = ?self.config.shutdown_grace, "shutting down: draining tunnels");
        let _ = drain_tx.send(true);
        let drained = tokio::time::timeout(self.config.shutdown_grace, async {
            while tunnels.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = tunnels.len(),
                "grace period over: closing the remaining tunnels"
            );
            tunnels.abort_all();
        }
        Ok(())
    }
}

/// One tunnel: handshake (with its deadlines, evictable while unauthenticated), a tunnel
/// slot, then streams until the agent leaves or the server drains.
async fn tunnel<T: Transport>(
    transport: Arc<T>,
    raw: T::Raw,
    peer: SocketAddr,
    mut ticket: HandshakeTicket,
    settings: Arc<TunnelSettings>,
    exits: Arc<Exits>,
    mut drain: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let established = tokio::select! {
        result = transport.handshake(raw, peer) => match result {
            Ok(established) => established,
            Err(e) => {
                // Strangers' failures (silence, garbage) are routine on an open port; a
                // rejected certificate or TLS error is worth an operator's attention.
                if matches!(e, fluidity_core::Error::Io { .. } | fluidity_core::Error::Timeout(..)) {
                    tracing::debug!(%peer, error = %e, "tunnel handshake failed");
                } else {
                    tracing::warn!(%peer, error = %e, "tunnel handshake failed");
                }
                exits.metrics.failed(Failure::Handshake);
                return;
            }
        },
        () = ticket.evicted() => {
            tracing::debug!(%peer, "handshake evicted by a newer connection (handshake budget full)");
            return;
        }
    };
    drop(ticket);
    drop(transport);
    let peer = established.peer;
    exits.metrics.handshake(started.elapsed());
    let Ok(_slot) = settings.slots.clone().try_acquire_owned() else {
        tracing::warn!(%peer, limit = settings.max_connections, "refusing tunnel: max_connections reached");
        exits.metrics.failed(Failure::ConnectionLimit);
        return;
    };
    let _open = exits.metrics.tunnel_opened();
    let codec = established.codec;
    let session = Session::server(codec, settings.session.clone(), Instant::now());
    let connection = Connection::spawn(established.stream, session);
    tracing::info!(%peer, ?codec, "tunnel open");
    let draining = loop {
        tokio::select! {
            incoming = connection.accept() => match incoming {
                Some(incoming) => exits.spawn(incoming),
                None => break false,
            },
            _ = drain.wait_for(|draining| *draining) => break true,
        }
    };
    if draining {
        // No new streams; close once the open ones are done (the server aborts us after the
        // grace period otherwise).
        loop {
            if connection.stream_count() == 0 {
                connection.close("server shutting down");
                break;
            }
            tokio::select! {
                incoming = connection.accept() => match incoming {
                    Some(incoming) => { let _ = incoming.refuse(RefusalCode::Unavailable, "server shutting down"); }
                    None => break,
                },
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
    let reason: CloseReason = connection.closed().await;
    if reason.is_failure() {
        exits.metrics.failed(Failure::TunnelError);
    }
    tracing::info!(%peer, %reason, "tunnel closed");
}
