//! CONNECT: dial the target (egress policy, deadline), answer the agent, relay bytes both ways
//! with flow control and half-close.

use fluidity_core::IncomingStream;
use fluidity_core::Reply;
use fluidity_core::relay::{Progress, relay_tcp};

use super::{Exits, dial};
use crate::egress::split_authority;
use crate::metrics::{Failure, StreamKind};

/// How often a running relay's progress is checked for activity.
const ACTIVITY_TICK: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves a CONNECT stream to `address` (`host:port`).
pub async fn serve(exits: &Exits, incoming: IncomingStream, address: &str) {
    let _open = exits.metrics.stream_opened(StreamKind::Connect);
    let id = incoming.id();
    let target = async {
        let (host, port) = split_authority(address)?;
        let addresses = exits
            .egress
            .resolve(&host, port)
            .await
            .inspect_err(|e| exits.metrics.failed(Failure::of(e)))?;
        dial(&addresses, exits.connect_timeout)
            .await
            .inspect_err(|_| exits.metrics.failed(Failure::TargetUnreachable))
    };
    let target = match target.await {
        Ok(target) => target,
        Err(error) => {
            tracing::info!(%id, address, %error, "CONNECT refused");
            let _ = incoming.refuse(error.code(), &error.to_string());
            return;
        }
    };
    let stream = match incoming.accept(Reply::Connect) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(%id, error = %e, "CONNECT stream gone before the answer");
            return;
        }
    };
    tracing::debug!(%id, address, "CONNECT open");
    // Long transfers count as activity while they run, not only when they end (Sleep must not
    // stop a server in the middle of a download).
    let progress = Progress::default();
    let relay = relay_tcp(stream, target, bytes::Bytes::new(), &progress);
    tokio::pin!(relay);
    let mut seen = 0;
    let mut ticker = tokio::time::interval(ACTIVITY_TICK);
    let moved = loop {
        tokio::select! {
            moved = &mut relay => break moved,
            _ = ticker.tick() => {
                let total = progress.total();
                if total != seen {
                    seen = total;
                    exits.metrics.touch();
                }
            }
        }
    };
    exits.metrics.add_bytes(moved.from_tunnel, moved.to_tunnel);
    tracing::debug!(%id, to_target = moved.from_tunnel, from_target = moved.to_tunnel, "CONNECT closed");
}
