//! The agent's side of the control plane: a [`ServerLocator`] that wakes the server and
//! polls Query until a task is ready (a Fargate cold start takes 60–90 s), and a
//! [`CertIssuer`] that asks the CA endpoint to sign. Kill is called exactly once, on release.
//!
//! Calls go through [`fluidity_aws::ControlPlaneClient`]: JSON over HTTP(S) POST, retried on
//! transient failures, SigV4-signed with the default AWS credential chain when the endpoint
//! is a Function URL or API Gateway, unsigned otherwise (a local `fluidity-lambdas serve`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fluidity_aws::ControlPlaneClient;
use fluidity_core::control::{
    KillRequest, KillResponse, QueryRequest, QueryResponse, WakeRequest, WakeResponse, status,
};
use fluidity_core::{Backoff, ServerInfo, ServerLocator};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

/// The longest pause between Query polls while a server starts.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// The control-plane endpoints and how to call them.
#[derive(Debug)]
pub struct ControlPlane {
    client: ControlPlaneClient,
    wake: String,
    query: String,
    kill: Option<String>,
    /// The tunnel port on the server (the control plane reports only IPs).
    server_port: u16,
    /// How long to wait for a task to become ready.
    startup_timeout: Duration,
    /// First pause between Query polls (doubles up to [`MAX_POLL_INTERVAL`], jittered).
    poll_interval: Duration,
}

impl ControlPlane {
    /// Endpoints from the config, called through `client`.
    pub fn new(
        client: ControlPlaneClient,
        wake: String,
        query: String,
        kill: Option<String>,
        server_port: u16,
        startup_timeout: Duration,
    ) -> Self {
        ControlPlane {
            client,
            wake,
            query,
            kill,
            server_port,
            startup_timeout,
            poll_interval: Duration::from_millis(500),
        }
    }

    /// POSTs `request` to `url` and decodes the answer.
    async fn call<Q: Serialize, R: DeserializeOwned>(
        &self,
        what: &str,
        url: &str,
        request: &Q,
    ) -> Result<R, LocateError> {
        Ok(self.client.call(what, url, request).await?)
    }

    fn server(
        &self,
        arn: &Option<String>,
        ip: &Option<String>,
        agent_ip: Option<IpAddr>,
    ) -> Option<ServerInfo> {
        let arn = arn.as_ref().filter(|a| !a.is_empty())?;
        let ip: IpAddr = ip.as_deref()?.parse().ok()?;
        Some(ServerInfo {
            address: SocketAddr::new(ip, self.server_port),
            server_arn: Some(arn.clone()),
            agent_ip,
        })
    }
}

/// Why the control plane could not produce a server.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// A call to Wake, Query or Kill failed.
    #[error(transparent)]
    Call(#[from] fluidity_aws::Error),
    /// Query answered that no server will come (the service is gone or scaled to zero by
    /// someone else).
    #[error("the control plane reports no server: {0}")]
    NoServer(String),
    /// No task became ready in time.
    #[error("the server did not become ready within {timeout:?} (last: {last})")]
    NotReady {
        /// The agent's `startup_timeout`.
        timeout: Duration,
        /// The last status Query reported (or the last call's error).
        last: String,
    },
}

impl From<LocateError> for fluidity_core::Error {
    fn from(error: LocateError) -> Self {
        fluidity_core::Error::Locate(error.into())
    }
}

/// Finds (waking if needed) the server through the control plane.
#[derive(Debug)]
pub struct LambdaLocator {
    plane: Arc<ControlPlane>,
    /// Wake's instance id and the agent IP it saw.
    woken: Mutex<Option<(String, Option<IpAddr>)>>,
    released: AtomicBool,
}

impl LambdaLocator {
    /// A locator over `plane`.
    pub fn new(plane: Arc<ControlPlane>) -> Self {
        LambdaLocator {
            plane,
            woken: Mutex::new(None),
            released: AtomicBool::new(false),
        }
    }

    async fn wake(&self) -> Result<(String, Option<IpAddr>, Option<ServerInfo>), LocateError> {
        let answer: WakeResponse = self
            .plane
            .call("Wake", &self.plane.wake, &WakeRequest {})
            .await?;
        let agent_ip = answer
            .agent_public_ip_as_seen
            .as_deref()
            .and_then(|ip| ip.parse().ok());
        tracing::info!(status = %answer.status, message = %answer.message, "woke the server");
        let ready = self
            .plane
            .server(&answer.server_arn, &answer.server_public_ip, agent_ip);
        *self.woken.lock().await = Some((answer.instance_id.clone(), agent_ip));
        Ok((answer.instance_id, agent_ip, ready))
    }

    /// Polls Query until a task is ready, the control plane says none will come, or the
    /// startup timeout passes.
    async fn wait_ready(
        &self,
        instance_id: &str,
        agent_ip: Option<IpAddr>,
    ) -> Result<ServerInfo, LocateError> {
        let started = Instant::now();
        let mut pause = Backoff::new(self.plane.poll_interval, MAX_POLL_INTERVAL);
        loop {
            let request = QueryRequest {
                instance_id: instance_id.to_owned(),
            };
            let last = match self
                .plane
                .call::<_, QueryResponse>("Query", &self.plane.query, &request)
                .await
            {
                Ok(answer) if answer.status == status::READY => {
                    if let Some(server) =
                        self.plane
                            .server(&answer.server_arn, &answer.public_ip, agent_ip)
                    {
                        return Ok(server);
                    }
                    "ready, but without a task ARN and IP".to_owned()
                }
                Ok(answer) if answer.status == status::NEGATIVE => {
                    return Err(LocateError::NoServer(answer.message));
                }
                Ok(answer) => format!("{}: {}", answer.status, answer.message),
                // Query's own retries are spent; keep polling until the startup timeout.
                Err(e) => e.to_string(),
            };
            let waited = started.elapsed();
            if waited >= self.plane.startup_timeout {
                return Err(LocateError::NotReady {
                    timeout: self.plane.startup_timeout,
                    last,
                });
            }
            tracing::info!(waited = ?Duration::from_secs(waited.as_secs()), status = %last, "waiting for the server to start");
            let pause = pause.next_delay();
            tokio::time::sleep(pause.min(self.plane.startup_timeout - waited)).await;
        }
    }
}

#[async_trait]
impl ServerLocator for LambdaLocator {
    /// Wake, then (unless Wake named a running task) Query until one is ready. After a lost
    /// tunnel the agent locates again the same way (the default `relocate`): Wake is
    /// idempotent and cheap, restarts a server that was stopped, finds a replaced task (new
    /// ARN), and cancels a pending Kill request, since an agent wants the server.
    async fn locate(&self) -> fluidity_core::Result<ServerInfo> {
        let (instance_id, agent_ip, ready) = self.wake().await?;
        match ready {
            Some(server) => Ok(server),
            None => Ok(self.wait_ready(&instance_id, agent_ip).await?),
        }
    }

    /// Calls Kill once (later calls do nothing).
    async fn release(&self) -> fluidity_core::Result<()> {
        if self.released.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let Some(url) = &self.plane.kill else {
            return Ok(());
        };
        let instance_id = self.woken.lock().await.as_ref().map(|(id, _)| id.clone());
        let answer: KillResponse = self
            .plane
            .call("Kill", url, &KillRequest { instance_id })
            .await?;
        tracing::info!(status = %answer.status, message = %answer.message, "released the server");
        Ok(())
    }
}
