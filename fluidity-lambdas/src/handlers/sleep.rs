//! Sleep (on a schedule): stop the server when nothing has moved through it for
//! `IDLE_THRESHOLD_MINUTES` (default 15).
//!
//! Activity is the last time any stream moved bytes (HTTP, CONNECT and WebSocket alike), not
//! the number of open tunnels: an agent left connected but unused must not keep the server up
//! (the Go version's bug). Missing metrics do not keep it up forever either: without a
//! datapoint, idleness counts from the oldest task's start.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::Error;
use crate::backend::{ActivityMetrics, EcsService};

/// Sleep's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SleepConfig {
    /// Idle this long ⇒ stop (default 15 min).
    pub idle_threshold: Duration,
}

impl Default for SleepConfig {
    fn default() -> Self {
        SleepConfig {
            idle_threshold: Duration::from_secs(15 * 60),
        }
    }
}

/// Sleep's answer (Go-compatible field names).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SleepResponse {
    /// `no_change` or `scaled_down`.
    pub action: String,
    /// Desired count after the call.
    #[serde(rename = "desiredCount")]
    pub desired_count: i32,
    /// Running tasks.
    #[serde(rename = "runningCount")]
    pub running_count: i32,
    /// Seconds since the last activity, when known.
    #[serde(
        rename = "idleDurationSeconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_seconds: Option<u64>,
    /// For people.
    pub message: String,
}

/// Handles a Sleep check at `now`.
pub async fn sleep(
    ecs: &dyn EcsService,
    metrics: &dyn ActivityMetrics,
    config: SleepConfig,
    now: SystemTime,
) -> Result<SleepResponse, Error> {
    let (cluster, service) = ecs.names();
    let state = ecs.state().await?.ok_or_else(|| Error::ServiceNotFound {
        cluster: cluster.to_owned(),
        service: service.to_owned(),
    })?;
    let mut response = SleepResponse {
        action: "no_change".into(),
        desired_count: state.desired,
        running_count: state.running,
        ..SleepResponse::default()
    };
    if state.desired == 0 {
        response.message = "the service is already stopped".into();
        return Ok(response);
    }
    let activity = match metrics.activity(config.idle_threshold).await {
        Ok(activity) => activity,
        Err(e) => {
            tracing::warn!(error = %e, "activity metrics unavailable; judging by task age");
            Default::default()
        }
    };
    let oldest_start = ecs
        .running_tasks()
        .await?
        .iter()
        .filter_map(|t| t.started_at)
        .min();
    let Some(last) = activity.last_activity.or(oldest_start) else {
        response.message = "no task has started yet".into();
        return Ok(response);
    };
    let idle = now.duration_since(last).unwrap_or_default();
    response.idle_seconds = Some(idle.as_secs());
    if idle < config.idle_threshold {
        response.message = format!("active {}s ago", idle.as_secs());
        return Ok(response);
    }
    ecs.set_desired(0).await?;
    response.action = "scaled_down".into();
    response.desired_count = 0;
    response.message = format!(
        "idle for {}s (threshold {}s): stopped",
        idle.as_secs(),
        config.idle_threshold.as_secs()
    );
    tracing::info!(
        cluster,
        service,
        idle_seconds = idle.as_secs(),
        "scaled the service to zero"
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::backend::Activity;
    use crate::handlers::fake::{FakeEcs, FakeMetrics, task};

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[tokio::test]
    async fn sleeps_only_when_idle_long_enough() {
        let now = at(10_000);
        let config = SleepConfig::default();
        let busy = FakeMetrics(Ok(Activity {
            active_tunnels: Some(1.0),
            last_activity: Some(at(10_000 - 60)),
        }));
        let ecs = FakeEcs::new(1, 1, 0, vec![task("arn:a", Some("203.0.113.1"), 1_000)]);
        assert_eq!(
            sleep(&ecs, &busy, config, now).await.unwrap().action,
            "no_change"
        );
        assert_eq!(ecs.desired(), 1);

        // Connected but unused (CONNECT and WebSocket bytes count; open tunnels do not).
        let idle = FakeMetrics(Ok(Activity {
            active_tunnels: Some(3.0),
            last_activity: Some(at(10_000 - 16 * 60)),
        }));
        let response = sleep(&ecs, &idle, config, now).await.unwrap();
        assert_eq!(response.action, "scaled_down");
        assert_eq!(response.idle_seconds, Some(16 * 60));
        assert_eq!(ecs.desired(), 0);

        // Already stopped: nothing to do.
        assert_eq!(
            sleep(&ecs, &idle, config, now).await.unwrap().action,
            "no_change"
        );
    }

    #[tokio::test]
    async fn missing_metrics_do_not_keep_a_server_up_forever() {
        let config = SleepConfig::default();
        for metrics in [
            FakeMetrics(Ok(Activity::default())),
            FakeMetrics(Err("throttled".into())),
        ] {
            // Started 20 min ago, never a datapoint: stopped.
            let ecs = FakeEcs::new(1, 1, 0, vec![task("arn:a", Some("203.0.113.1"), 0)]);
            let response = sleep(&ecs, &metrics, config, at(20 * 60)).await.unwrap();
            assert_eq!(response.action, "scaled_down", "{response:?}");
            // Started 5 min ago: kept.
            let ecs = FakeEcs::new(1, 1, 0, vec![task("arn:a", Some("203.0.113.1"), 15 * 60)]);
            assert_eq!(
                sleep(&ecs, &metrics, config, at(20 * 60))
                    .await
                    .unwrap()
                    .action,
                "no_change"
            );
            // Still starting: kept.
            let ecs = FakeEcs::new(1, 0, 1, vec![]);
            assert_eq!(
                sleep(&ecs, &metrics, config, at(20 * 60))
                    .await
                    .unwrap()
                    .action,
                "no_change"
            );
        }
    }
}
