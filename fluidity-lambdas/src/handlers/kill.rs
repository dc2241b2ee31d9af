//! Kill (an agent leaving, or the nightly schedule): ask for the server to stop, without ever
//! cutting off another agent.
//!
//! Kill cannot decide that on its own: the tunnel count it could read is a CloudWatch
//! datapoint up to minutes old, and another agent may be waking the server or connecting at
//! this very moment. So Kill only records the request on the service; [`super::sleep`], which
//! runs every few minutes, stops the server once the metrics *after* the request show no open
//! tunnel, and any Wake in between cancels the request. The Go version stopped every task at
//! once, whoever was using it.

use std::time::SystemTime;

use fluidity_core::control::{KillResponse, status};

use crate::Error;
use crate::backend::EcsService;

/// Handles Kill at `now`.
pub async fn kill(ecs: &dyn EcsService, now: SystemTime) -> Result<KillResponse, Error> {
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
    ecs.set_kill_requested(Some(now)).await?;
    Ok(KillResponse {
        status: status::SCHEDULED.into(),
        message: "the server stops once the metrics show that no other agent uses it \
                  (Sleep decides; a Wake meanwhile cancels the request)"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::handlers::fake::FakeEcs;

    #[tokio::test]
    async fn kill_records_the_request_and_stops_nothing_itself() {
        let ecs = FakeEcs::new(1, 1, 0, vec![]);
        let now = SystemTime::now();
        let answer = kill(&ecs, now).await.unwrap();
        assert_eq!(answer.status, status::SCHEDULED);
        assert_eq!(ecs.desired(), 1);
        assert_eq!(ecs.kill_requested(), Some(now));
        let stopped = FakeEcs::new(0, 0, 0, vec![]);
        assert_eq!(kill(&stopped, now).await.unwrap().status, status::KILLED);
        assert!(kill(&FakeEcs::missing(), now).await.is_err());
    }
}
