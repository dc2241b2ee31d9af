//! The agent's side of the control plane: a [`ServerLocator`] that wakes the server and
//! polls Query until a task is ready (a Fargate cold start takes 60–90 s), and a
//! [`CertIssuer`] that asks the CA endpoint to sign. Kill is called exactly once, on release.
//!
//! Requests are JSON over HTTP(S) POST; transient failures (network, 5xx) are retried with
//! backoff. They are not SigV4-signed yet: that comes with the AWS control plane, and the
//! local control plane (`fluidity-lambdas serve`) takes them unsigned.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fluidity_core::control::{
    KillRequest, KillResponse, QueryRequest, QueryResponse, SignRequest, SignResponse, WakeRequest,
    WakeResponse, status, unwrap_proxy_response,
};
use fluidity_core::issue::{CertIssuer, IssuedCertificate};
use fluidity_core::locate::{ServerInfo, ServerLocator};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

/// Attempts per request (transient failures only).
const ATTEMPTS: u32 = 3;

/// The control-plane endpoints and how to call them.
#[derive(Debug)]
pub struct ControlPlane {
    http: reqwest::Client,
    wake: String,
    query: String,
    kill: Option<String>,
    ca: Option<String>,
    /// The tunnel port on the server (the control plane reports only IPs).
    server_port: u16,
    /// How long to wait for a task to become ready.
    startup_timeout: Duration,
    /// First pause between Query polls (doubles up to 5 s).
    poll_interval: Duration,
}

impl ControlPlane {
    /// Endpoints from the config; `http` should verify TLS (Function URLs are HTTPS).
    pub fn new(
        http: reqwest::Client,
        wake: String,
        query: String,
        kill: Option<String>,
        ca: Option<String>,
        server_port: u16,
        startup_timeout: Duration,
    ) -> Self {
        ControlPlane {
            http,
            wake,
            query,
            kill,
            ca,
            server_port,
            startup_timeout,
            poll_interval: Duration::from_millis(500),
        }
    }

    /// POSTs `request` to `url` and decodes the answer, retrying transient failures.
    async fn call<Q: Serialize, R: DeserializeOwned>(
        &self,
        what: &str,
        url: &str,
        request: &Q,
    ) -> Result<R, String> {
        let mut pause = Duration::from_millis(300);
        let mut attempt = 1;
        loop {
            match self.call_once(url, request).await {
                Ok(answer) => return Ok(answer),
                Err((retry, e)) if retry && attempt < ATTEMPTS => {
                    tracing::debug!(what, attempt, error = %e, "control-plane call failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                Err((_, e)) => return Err(format!("{what} ({url}): {e}")),
            }
        }
    }

    /// One call; the error says whether retrying makes sense.
    async fn call_once<Q: Serialize, R: DeserializeOwned>(
        &self,
        url: &str,
        request: &Q,
    ) -> Result<R, (bool, String)> {
        let response = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(request).map_err(|e| (false, e.to_string()))?)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| (true, e.to_string()))?;
        let code = response.status();
        let body = response.bytes().await.map_err(|e| (true, e.to_string()))?;
        let value: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
            (
                code.is_server_error(),
                format!("HTTP {code}: {}", String::from_utf8_lossy(&body)),
            )
        })?;
        let value = unwrap_proxy_response(value).map_err(|e| (false, e))?;
        if !code.is_success() || value.get("error").is_some_and(|e| !e.is_null()) {
            let error = value
                .get("error")
                .and_then(|e| e.as_str())
                .map_or_else(|| value.to_string(), str::to_owned);
            return Err((code.is_server_error(), format!("HTTP {code}: {error}")));
        }
        serde_json::from_value(value).map_err(|e| (false, format!("unexpected answer: {e}")))
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

    async fn wake(&self) -> Result<(String, Option<IpAddr>, Option<ServerInfo>), String> {
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
    ) -> Result<ServerInfo, String> {
        let started = Instant::now();
        let mut pause = self.plane.poll_interval;
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
                    return Err(format!(
                        "the control plane reports no server: {}",
                        answer.message
                    ));
                }
                Ok(answer) => format!("{}: {}", answer.status, answer.message),
                Err(e) => e,
            };
            let waited = started.elapsed();
            if waited >= self.plane.startup_timeout {
                return Err(format!(
                    "the server did not become ready within {:?} (last: {last})",
                    self.plane.startup_timeout
                ));
            }
            tracing::info!(waited = ?Duration::from_secs(waited.as_secs()), status = %last, "waiting for the server to start");
            tokio::time::sleep(pause.min(self.plane.startup_timeout - waited)).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}

fn core_error(reason: String) -> fluidity_core::Error {
    fluidity_core::Error::io("control plane", std::io::Error::other(reason))
}

#[async_trait]
impl ServerLocator for LambdaLocator {
    async fn locate(&self) -> fluidity_core::Result<ServerInfo> {
        let (instance_id, agent_ip, ready) = self.wake().await.map_err(core_error)?;
        match ready {
            Some(server) => Ok(server),
            None => self
                .wait_ready(&instance_id, agent_ip)
                .await
                .map_err(core_error),
        }
    }

    /// After a lost tunnel: ask Query which task serves now (it may be a new one with a new
    /// ARN); wake again if none does.
    async fn relocate(&self) -> fluidity_core::Result<ServerInfo> {
        let woken = self.woken.lock().await.clone();
        let Some((instance_id, agent_ip)) = woken else {
            return self.locate().await;
        };
        let request = QueryRequest {
            instance_id: instance_id.clone(),
        };
        let answer: Result<QueryResponse, String> =
            self.plane.call("Query", &self.plane.query, &request).await;
        match answer {
            Ok(answer) if answer.status == status::NEGATIVE => self.locate().await,
            _ => self
                .wait_ready(&instance_id, agent_ip)
                .await
                .map_err(core_error),
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
            .await
            .map_err(core_error)?;
        tracing::info!(status = %answer.status, message = %answer.message, "released the server");
        Ok(())
    }
}

/// Gets certificates signed by the control plane's CA endpoint.
#[derive(Debug)]
pub struct ControlPlaneIssuer {
    plane: Arc<ControlPlane>,
}

impl ControlPlaneIssuer {
    /// An issuer over `plane` (which must have a CA endpoint).
    pub fn new(plane: Arc<ControlPlane>) -> Self {
        ControlPlaneIssuer { plane }
    }
}

#[async_trait]
impl CertIssuer for ControlPlaneIssuer {
    async fn issue(&self, csr_pem: &str) -> fluidity_core::Result<IssuedCertificate> {
        let url = self.plane.ca.as_deref().ok_or_else(|| {
            fluidity_core::Error::Issuer("no CA endpoint (ca_service_url) configured".into())
        })?;
        let answer: SignResponse = self
            .plane
            .call(
                "CA",
                url,
                &SignRequest {
                    csr: csr_pem.to_owned(),
                },
            )
            .await
            .map_err(fluidity_core::Error::Issuer)?;
        Ok(IssuedCertificate {
            certificate_pem: answer.certificate,
            chain_pem: answer.chain,
        })
    }
}
