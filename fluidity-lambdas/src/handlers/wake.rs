//! Wake: make sure one server runs, and say where it is when it already does.
//!
//! Idempotent (the Go version added a task per call): a stopped service is scaled to one task;
//! a starting or running one is left alone. When a task is running with a public IP, its ARN
//! and IP come back at once, so the agent can skip polling.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use fluidity_core::control::{WakeResponse, status};

use super::rfc3339;
use crate::Error;
use crate::backend::{EcsService, choose};

/// How long a Fargate task usually takes to start.
pub const ESTIMATED_START: Duration = Duration::from_secs(75);

/// Handles Wake. `caller_ip` is the request's source IP as the Lambda saw it.
pub async fn wake(
    ecs: &dyn EcsService,
    caller_ip: Option<IpAddr>,
    now: SystemTime,
) -> Result<WakeResponse, Error> {
    let (cluster, service) = ecs.names();
    let instance_id = format!(
        "{cluster}-{service}-{}",
        now.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    );
    let state = ecs.state().await?.ok_or_else(|| Error::ServiceNotFound {
        cluster: cluster.to_owned(),
        service: service.to_owned(),
    })?;
    let mut response = WakeResponse {
        instance_id,
        desired_count: state.desired,
        running_count: state.running,
        pending_count: state.pending,
        agent_public_ip_as_seen: caller_ip.map(|ip| ip.to_string()),
        ..WakeResponse::default()
    };
    if state.kill_requested.is_some() {
        // An agent wants the server: an earlier Kill request no longer stands.
        ecs.set_kill_requested(None).await?;
        tracing::info!(cluster, service, "a wake cancelled a kill request");
    }
    // Tasks are listed whenever one is wanted: ECS's running count lags behind its tasks.
    if state.desired > 0 {
        let tasks = ecs.running_tasks().await?;
        if let Some(task) = choose(&tasks) {
            response.status = status::READY.into();
            response.message = "a server is running".into();
            response.server_arn = Some(task.arn.clone());
            response.server_public_ip = task.public_ip.map(|ip| ip.to_string());
            return Ok(response);
        }
    }
    if state.desired < 1 {
        ecs.set_desired(1).await?;
        response.desired_count = 1;
        response.status = status::WAKING.into();
        response.estimated_start_time = Some(rfc3339(now + ESTIMATED_START));
        response.message = "starting a server".into();
        tracing::info!(cluster, service, "woke the service");
    } else {
        response.status = status::STARTING.into();
        response.message = "a server is starting".into();
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::handlers::fake::{FakeEcs, task};

    #[tokio::test]
    async fn a_stopped_service_is_scaled_to_one_and_only_one() {
        let ecs = FakeEcs::new(0, 0, 0, vec![]);
        let now = SystemTime::now();
        let first = wake(&ecs, Some("198.51.100.7".parse().unwrap()), now)
            .await
            .unwrap();
        assert_eq!(first.status, status::WAKING);
        assert_eq!(first.desired_count, 1);
        assert!(first.estimated_start_time.is_some());
        assert_eq!(
            first.agent_public_ip_as_seen.as_deref(),
            Some("198.51.100.7")
        );
        // Several agents waking at once: still one task.
        for _ in 0..5 {
            let again = wake(&ecs, None, now).await.unwrap();
            assert_eq!(again.status, status::STARTING);
        }
        assert_eq!(ecs.desired(), 1);
        assert_eq!(ecs.scale_calls(), 1);
    }

    #[tokio::test]
    async fn a_running_server_is_reported_at_once() {
        let ecs = FakeEcs::new(
            2,
            2,
            0,
            vec![
                task("arn:b", Some("203.0.113.2"), 20),
                task("arn:a", Some("203.0.113.1"), 10),
            ],
        );
        let response = wake(&ecs, None, SystemTime::now()).await.unwrap();
        assert_eq!(response.status, status::READY);
        assert_eq!(
            response.server_arn.as_deref(),
            Some("arn:a"),
            "the oldest task"
        );
        assert_eq!(response.server_public_ip.as_deref(), Some("203.0.113.1"));
        assert_eq!(ecs.scale_calls(), 0);
    }

    #[tokio::test]
    async fn a_missing_service_is_an_error() {
        let ecs = FakeEcs::missing();
        let err = wake(&ecs, None, SystemTime::now()).await.unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
    }
}
