//! Where the server is: the [`ServerLocator`] seam.
//!
//! In the cloud the locator wakes the sleeping Fargate task through the Wake Lambda and polls
//! Query until it runs; self-hosted setups use [`StaticLocator`].

use std::net::{IpAddr, SocketAddr};

use async_trait::async_trait;

use crate::error::Result;

/// A server ready to be dialled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Where to dial.
    pub address: SocketAddr,
    /// The server's identity (its ECS task ARN) when certificates are ARN-bound.
    pub server_arn: Option<String>,
    /// This agent's public IP as the control plane saw it (goes into the agent certificate).
    pub agent_ip: Option<IpAddr>,
}

/// Finds (and if needed wakes) the server, and lets it go when the agent stops.
///
/// ```
/// use fluidity_core::{ServerLocator, StaticLocator, ServerInfo};
/// # async fn demo() -> fluidity_core::Result<()> {
/// let locator = StaticLocator::new(ServerInfo {
///     address: "127.0.0.1:8443".parse().unwrap(),
///     server_arn: None,
///     agent_ip: None,
/// });
/// assert_eq!(locator.locate().await?.address.port(), 8443);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[async_trait]
pub trait ServerLocator: Send + Sync {
    /// Returns a running server, waking one if necessary (may take minutes on a cold start).
    async fn locate(&self) -> Result<ServerInfo>;

    /// Called when the tunnel dropped: the server may have been replaced, so look again.
    async fn relocate(&self) -> Result<ServerInfo> {
        self.locate().await
    }

    /// The agent is stopping: let the server go (kill or allow it to sleep). Called once.
    async fn release(&self) -> Result<()>;
}

/// A server at a fixed address (self-hosting, static-certificate mode, tests).
#[derive(Debug, Clone)]
pub struct StaticLocator {
    info: ServerInfo,
}

impl StaticLocator {
    /// Always answers `info`.
    pub fn new(info: ServerInfo) -> Self {
        StaticLocator { info }
    }
}

#[async_trait]
impl ServerLocator for StaticLocator {
    async fn locate(&self) -> Result<ServerInfo> {
        Ok(self.info.clone())
    }

    async fn release(&self) -> Result<()> {
        Ok(())
    }
}
