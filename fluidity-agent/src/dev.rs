//! `--dev`: everything needed to try Fluidity on one machine. Certificates come from a local
//! CA in the cache directory (shared with `fluidity-server --dev`), the server's ARN is the
//! development ARN, and when no server is given one runs inside this process on loopback,
//! over real mutual TLS in ARN mode.

use std::net::{IpAddr, SocketAddr};

use fluidity_core::config::load;
use fluidity_server::credentials::dev_identity_defaults;
use fluidity_server::{Server, ServerConfig};
use tokio::sync::oneshot;

use crate::{AgentConfig, Error};

/// A server running inside the agent; stopped when dropped.
#[derive(Debug)]
pub struct EmbeddedServer {
    /// Where it listens.
    pub address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Fills in development defaults, starting an embedded server when no server is configured.
/// The embedded server reads its own settings from `FLUIDITY_<KEY>` variables (for example
/// `FLUIDITY_EGRESS_DENY=[]` to let it reach loopback targets).
pub async fn prepare(config: &mut AgentConfig) -> Result<Option<EmbeddedServer>, Error> {
    let dir = dev_identity_defaults(&mut config.certificates, &mut config.server_arn);
    if config.server.is_some() || config.server_ip.is_some() {
        return Ok(None);
    }
    let listener =
        fluidity_core::transport::listen(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 0))?;
    let address = listener.local_addr()?;
    let flags = [
        ("dev", "true".to_owned()),
        ("cache_dir", dir.display().to_string()),
    ];
    let loaded = load::<ServerConfig>(None, |k| std::env::var(k).ok(), &flags)?;
    let server = Server::new(loaded.config)?;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        if let Err(e) = server
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
        {
            tracing::error!(error = %e, "embedded server failed");
        }
    });
    config.server = Some(address.to_string());
    config.agent_ip.get_or_insert(IpAddr::from([127, 0, 0, 1]));
    tracing::info!(%address, cache_dir = %dir.display(), "embedded development server started");
    Ok(Some(EmbeddedServer {
        address,
        stop: Some(stop),
    }))
}
