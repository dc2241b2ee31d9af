//! Query: is a server ready, and which one (its task ARN and public IP)?

use fluidity_core::control::{QueryResponse, status};

use crate::Error;
use crate::backend::{EcsService, choose};

/// Handles Query. The instance id is opaque (cluster and service come from the environment).
pub async fn query(ecs: &dyn EcsService) -> Result<QueryResponse, Error> {
    let answer = |status_text: &str, message: &str| QueryResponse {
        status: status_text.into(),
        message: message.into(),
        ..QueryResponse::default()
    };
    let Some(state) = ecs.state().await? else {
        return Ok(answer(status::NEGATIVE, "ECS service not found"));
    };
    if state.desired == 0 {
        return Ok(answer(
            status::NEGATIVE,
            "the service is stopped: call Wake",
        ));
    }
    // Tasks are listed whenever one is wanted: ECS's running count lags behind its tasks.
    {
        let tasks = ecs.running_tasks().await?;
        if let Some(task) = choose(&tasks) {
            return Ok(QueryResponse {
                status: status::READY.into(),
                public_ip: task.public_ip.map(|ip| ip.to_string()),
                message: "Service is running and ready".into(),
                server_arn: Some(task.arn.clone()),
            });
        }
        if !tasks.is_empty() {
            return Ok(answer(
                status::PENDING,
                "a task runs but has no public IP yet",
            ));
        }
    }
    if state.pending > 0 {
        return Ok(answer(status::PENDING, "a task is starting"));
    }
    // Desired > 0 with nothing running or pending: ECS is about to start one (or failing to).
    Ok(answer(status::PENDING, "waiting for ECS to start a task"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::handlers::fake::{FakeEcs, task};

    #[tokio::test]
    async fn every_state_maps_to_a_status() {
        let cases = [
            (FakeEcs::missing(), status::NEGATIVE, None),
            (FakeEcs::new(0, 0, 0, vec![]), status::NEGATIVE, None),
            (FakeEcs::new(1, 0, 1, vec![]), status::PENDING, None),
            (FakeEcs::new(1, 0, 0, vec![]), status::PENDING, None),
            (
                FakeEcs::new(1, 1, 0, vec![task("arn:x", None, 1)]),
                status::PENDING,
                None,
            ),
            (
                FakeEcs::new(
                    2,
                    2,
                    0,
                    vec![
                        task("arn:new", Some("203.0.113.9"), 50),
                        task("arn:old", Some("203.0.113.8"), 5),
                    ],
                ),
                status::READY,
                Some(("arn:old", "203.0.113.8")),
            ),
        ];
        for (ecs, expected, server) in cases {
            let response = query(&ecs).await.unwrap();
            assert_eq!(response.status, expected, "{response:?}");
            assert_eq!(
                response
                    .server_arn
                    .as_deref()
                    .zip(response.public_ip.as_deref()),
                server
            );
        }
    }
}
