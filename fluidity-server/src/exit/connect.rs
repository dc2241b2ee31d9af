//! CONNECT: dial the target (egress policy, deadline), answer the agent, relay bytes both ways
//! with flow control and half-close.

use fluidity_core::driver::IncomingStream;
use fluidity_core::relay::relay_tcp;
use fluidity_core::session::Reply;

use super::{Exits, dial};
use crate::egress::split_authority;
use crate::metrics::{Failure, StreamKind};

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
            .inspect_err(|_| exits.metrics.failed(Failure::EgressDenied))?;
        dial(&addresses, exits.connect_timeout)
            .await
            .inspect_err(|_| exits.metrics.failed(Failure::TargetUnreachable))
    };
    let target = match target.await {
        Ok(target) => target,
        Err(reason) => {
            tracing::info!(%id, address, %reason, "CONNECT refused");
            let _ = incoming.refuse(&reason);
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
    let moved = relay_tcp(stream, target, bytes::Bytes::new()).await;
    exits.metrics.add_bytes(moved.from_tunnel, moved.to_tunnel);
    tracing::debug!(%id, to_target = moved.from_tunnel, from_target = moved.to_tunnel, "CONNECT closed");
}
