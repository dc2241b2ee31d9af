//! Kill (an agent leaving, or the nightly schedule): stop the server unless someone else
//! still uses it.
//!
//! The rule: the service is scaled to zero only when the server reports **at most one** open
//! tunnel, the caller's own, which is closing. With more, or when the metrics cannot say, the
//! server is kept and Sleep stops it once it has been idle. An agent's Kill therefore never
//! cuts off another agent's live tunnel (the Go version stopped every task).

use fluidity_core::control::{KillResponse, status};

use crate::Error;
use crate::backend::{ActivityMetrics, EcsService};

/// How far back the tunnel count is read.
const RECENT: std::time::Duration = std::time::Duration::from_secs(120);

/// Handles Kill.
pub async fn kill(
    ecs: &dyn EcsService,
    metrics: &dyn ActivityMetrics,
) -> Result<KillResponse, Error> {
    let Some(state) = ecs.state().await? else {
        let (cluster, service) = ecs.names();
        return Err(Error::ServiceNotFound {
            cluster: cluster.to_owned(),
            service: service.to_owned(),
        });
    };
    if state.desired == 0 {
        return Ok(KillResponse {
            status: status::KILLED.into(),
            message: "the service is already stopped".into(),
        });
    }
    let tunnels = match metrics.activity(RECENT).await {
        Ok(activity) => activity.active_tunnels,
        Err(e) => {
            tracing::warn!(error = %e, "activity metrics unavailable; keeping the server");
            None
        }
    };
    match tunnels {
        Some(open) if open <= 1.0 => {
            ecs.set_desired(0).await?;
            Ok(KillResponse {
                status: status::KILLED.into(),
                message: "no other agent is connected: the server is stopping".into(),
            })
        }
        Some(open) => Ok(KillResponse {
            status: status::KEPT.into(),
            message: format!("{open:.0} tunnels are open: the server keeps running for the others"),
        }),
        None => Ok(KillResponse {
            status: status::KEPT.into(),
            message:
                "cannot tell whether other agents are connected: Sleep will stop the idle server"
                    .into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::backend::Activity;
    use crate::handlers::fake::{FakeEcs, FakeMetrics};

    #[tokio::test]
    async fn kill_never_cuts_off_another_agent() {
        let tunnels = |n: Option<f64>| {
            FakeMetrics(Ok(Activity {
                active_tunnels: n,
                last_activity: None,
            }))
        };
        let ecs = FakeEcs::new(1, 1, 0, vec![]);
        assert_eq!(
            kill(&ecs, &tunnels(Some(2.0))).await.unwrap().status,
            status::KEPT
        );
        assert_eq!(
            kill(&ecs, &tunnels(None)).await.unwrap().status,
            status::KEPT
        );
        assert_eq!(
            kill(&ecs, &FakeMetrics(Err("down".into())))
                .await
                .unwrap()
                .status,
            status::KEPT
        );
        assert_eq!(ecs.desired(), 1);
        assert_eq!(
            kill(&ecs, &tunnels(Some(1.0))).await.unwrap().status,
            status::KILLED
        );
        assert_eq!(ecs.desired(), 0);
        assert_eq!(
            kill(&ecs, &tunnels(Some(0.0))).await.unwrap().status,
            status::KILLED
        );
    }
}
