//! Sleep (on a schedule): stop the server when nothing has moved through it for
//! `IDLE_THRESHOLD_MINUTES` (default 15), or sooner when an agent asked Kill to stop it and
//! no agent has used it since (see [`super::kill`]).
//!
//! Activity is the last time any stream moved bytes (HTTP, CONNECT and WebSocket alike), not
//! the number of open tunnels: an agent left connected but unused must not keep the server up
//! (the Go version's bug). Missing metrics do not keep it up forever either: without a
//! datapoint, idleness counts from the oldest task's start.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::Error;
use crate::backend::{ActivityMetrics, EcsService, ServiceState};

/// At least this many datapoints after a Kill request must show no tunnel before Sleep acts
/// on it (one, from a live source).
const KILL_EVIDENCE: usize = 2;

/// Sleep's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SleepConfig {
    /// Idle this long ⇒ stop (default 15 min).
    pub idle_threshold: Duration,
    /// How long after a Kill request Sleep first acts on it (default 5 min): the server
    /// reports its tunnels once a minute and CloudWatch needs a few minutes to show a
    /// datapoint, so a tunnel opened right after the request is visible by then. Datapoints
    /// from the first fifth of it are not considered: they may still count the tunnel of the
    /// agent that asked (it calls Kill before it closes).
    pub kill_settle: Duration,
}

impl Default for SleepConfig {
    fn default() -> Self {
        SleepConfig {
            idle_threshold: Duration::from_secs(15 * 60),
            kill_settle: Duration::from_secs(5 * 60),
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
    if let Some(requested) = state.kill_requested {
        let (done, message) = settle_kill(ecs, metrics, config, &state, requested, now).await?;
        if done {
            response.action = "scaled_down".into();
            response.desired_count = 0;
            response.message = message;
            return Ok(response);
        }
        tracing::info!(cluster, service, %message, "kill request");
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
    if state.kill_requested.is_some() {
        ecs.set_kill_requested(None).await?;
    }
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

/// Acts on a Kill request made at `requested`: stops the server when every datapoint since
/// (after the requester's own minute) shows no tunnel, cancels the request when one shows a
/// tunnel (another agent uses the server), and otherwise waits. Returns whether it stopped
/// the server, and what it decided.
async fn settle_kill(
    ecs: &dyn EcsService,
    metrics: &dyn ActivityMetrics,
    config: SleepConfig,
    state: &ServiceState,
    requested: SystemTime,
    now: SystemTime,
) -> Result<(bool, String), Error> {
    let age = now.duration_since(requested).unwrap_or_default();
    let killer_grace = config.kill_settle / 5;
    if age < config.kill_settle {
        return Ok((
            false,
            format!(
                "requested {}s ago; waiting for the metrics to settle",
                age.as_secs()
            ),
        ));
    }
    let counts = match metrics.tunnel_counts(age + killer_grace).await {
        Ok(counts) => counts,
        Err(e) => {
            tracing::warn!(error = %e, "tunnel metrics unavailable; the kill request waits");
            return Ok((false, "tunnel metrics unavailable".into()));
        }
    };
    let since: Vec<f64> = counts
        .iter()
        .filter(|(at, _)| *at >= requested + killer_grace)
        .map(|(_, n)| *n)
        .collect();
    if since.iter().any(|n| *n > 0.0) {
        ecs.set_kill_requested(None).await?;
        return Ok((
            false,
            "another agent used the server after the request: cancelled".into(),
        ));
    }
    let evidence = if metrics.live() { 1 } else { KILL_EVIDENCE };
    if since.len() < evidence {
        return Ok((
            false,
            format!(
                "{} datapoints since the request; waiting for more",
                since.len()
            ),
        ));
    }
    ecs.set_desired(0).await?;
    ecs.set_kill_requested(None).await?;
    tracing::info!(
        desired = state.desired,
        "kill request: no tunnel since; scaled the service to zero"
    );
    Ok((
        true,
        format!(
            "no agent used the server in the {}s since the kill request: stopped",
            age.as_secs()
        ),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::backend::Activity;
    use crate::handlers::fake::{FakeEcs, FakeHistory, FakeMetrics, task};
    use crate::handlers::{kill::kill, wake::wake};

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

    /// Two agents and a Kill: the one who leaves asks Kill to stop the server while the
    /// other is waking it or connecting. The other is never cut off.
    #[tokio::test]
    async fn a_kill_never_strands_another_agent() {
        let config = SleepConfig::default();
        let ecs = FakeEcs::new(1, 1, 0, vec![task("arn:a", Some("203.0.113.1"), 0)]);
        let history = FakeHistory::new(&[(940, 1.0)]);

        // B wakes the server just before A's Kill, and connects just after it.
        wake(&ecs, None, at(990)).await.unwrap();
        kill(&ecs, at(1000)).await.unwrap();
        history.report(1020, 2.0); // A (closing) and B
        // Too early to judge (CloudWatch may not show B's tunnel yet): nothing happens.
        let early = sleep(&ecs, &history, config, at(1200)).await.unwrap();
        assert_eq!(early.action, "no_change", "{early:?}");
        assert!(ecs.kill_requested().is_some());
        history.report(1080, 1.0);
        history.report(1140, 1.0);
        let later = sleep(&ecs, &history, config, at(1300)).await.unwrap();
        assert_eq!(later.action, "no_change", "{later:?}");
        assert_eq!(ecs.desired(), 1);
        assert_eq!(
            ecs.kill_requested(),
            None,
            "B's tunnel cancelled the request"
        );

        // A kills again; B wakes (reconnecting) before its tunnel shows in the metrics,
        // which still say 0: the Wake cancelled the request, so the server stays.
        kill(&ecs, at(2000)).await.unwrap();
        wake(&ecs, None, at(2050)).await.unwrap();
        assert_eq!(ecs.kill_requested(), None);
        for t in [2060, 2120, 2180, 2240] {
            history.report(t, 0.0);
        }
        let kept = sleep(&ecs, &history, config, at(2400)).await.unwrap();
        assert_eq!(kept.action, "no_change", "{kept:?}");
        assert_eq!(ecs.desired(), 1);

        // The last agent leaves: once the metrics show nobody for long enough, it stops.
        kill(&ecs, at(3000)).await.unwrap();
        history.report(3030, 1.0); // the leaving agent's own last minute
        let waiting = sleep(&ecs, &history, config, at(3100)).await.unwrap();
        assert_eq!(waiting.action, "no_change");
        for t in [3060, 3120, 3180] {
            history.report(t, 0.0);
        }
        let stopped = sleep(&ecs, &history, config, at(3300)).await.unwrap();
        assert_eq!(stopped.action, "scaled_down", "{stopped:?}");
        assert_eq!(ecs.desired(), 0);
        assert_eq!(ecs.kill_requested(), None);
    }

    #[tokio::test]
    async fn a_kill_request_waits_while_the_metrics_are_silent() {
        let ecs = FakeEcs::new(1, 1, 0, vec![task("arn:a", Some("203.0.113.1"), 900)]);
        kill(&ecs, at(1000)).await.unwrap();
        // No datapoint since the request: not enough to stop (the idle rule still applies).
        let history = FakeHistory::new(&[(1010, 1.0)]);
        let answer = sleep(&ecs, &history, SleepConfig::default(), at(1400))
            .await
            .unwrap();
        assert_eq!(answer.action, "no_change", "{answer:?}");
        assert!(ecs.kill_requested().is_some());
    }
}
