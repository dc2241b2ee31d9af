//! What the handlers need from AWS, as small traits: the ECS service and its tasks, and the
//! server's activity, the CA's key. `aws.rs` implements them with the AWS SDK, `local.rs`
//! with files for self-hosting; tests use fakes.

use std::time::SystemTime;

use async_trait::async_trait;

use crate::Error;

/// The service's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceState {
    /// Desired tasks.
    pub desired: i32,
    /// Running tasks.
    pub running: i32,
    /// Pending tasks.
    pub pending: i32,
    /// When an agent last asked Kill to stop the server (Sleep does the stopping once no
    /// one else uses it; Wake cancels the request).
    pub kill_requested: Option<SystemTime>,
}

pub use crate::tasks::Task;

/// The ECS service the control plane manages (cluster and service fixed by the environment).
#[async_trait]
pub trait EcsService: Send + Sync {
    /// The cluster and service names, for ids and messages.
    fn names(&self) -> (&str, &str);
    /// The service's counts, or `None` if it does not exist.
    async fn state(&self) -> Result<Option<ServiceState>, Error>;
    /// Sets the desired count.
    async fn set_desired(&self, count: i32) -> Result<(), Error>;
    /// Records (or with `None` clears) a Kill request on the service.
    async fn set_kill_requested(&self, at: Option<SystemTime>) -> Result<(), Error>;
    /// The service's RUNNING tasks.
    async fn running_tasks(&self) -> Result<Vec<Task>, Error>;
}

/// The server's activity as its metrics report it over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Activity {
    /// The most recent count of open tunnels, if any datapoint exists.
    pub active_tunnels: Option<f64>,
    /// The last moment any stream moved bytes (HTTP, CONNECT, WebSocket), if known.
    pub last_activity: Option<SystemTime>,
}

/// Where the CA's certificate and key come from.
#[async_trait]
pub trait CaKeySource: Send + Sync {
    /// Loads the CA (called once, at the first signing request).
    async fn load(&self) -> Result<fluidity_core::pki::CertificateAuthority, Error>;
}

/// Reads the server's activity metrics.
#[async_trait]
pub trait ActivityMetrics: Send + Sync {
    /// Activity over the last `lookback`.
    async fn activity(&self, lookback: std::time::Duration) -> Result<Activity, Error>;
    /// Whether readings are the server's live state (its own `/health`), not datapoints that
    /// arrive minutes late: one reading is then enough evidence.
    fn live(&self) -> bool {
        false
    }
    /// The open-tunnel counts reported over the last `lookback`: (time, the most open in
    /// that minute), any order.
    async fn tunnel_counts(
        &self,
        lookback: std::time::Duration,
    ) -> Result<Vec<(SystemTime, f64)>, Error>;
}

/// The task the control plane hands out when several run: the oldest one (ties by ARN), so
/// every agent is sent to the same server.
pub fn choose(tasks: &[Task]) -> Option<&Task> {
    tasks
        .iter()
        .filter(|t| t.is_running() && t.public_ip.is_some())
        .min_by(|a, b| {
            a.started_at
                .unwrap_or(SystemTime::UNIX_EPOCH)
                .cmp(&b.started_at.unwrap_or(SystemTime::UNIX_EPOCH))
                .then_with(|| a.arn.cmp(&b.arn))
        })
}
