//! One control plane, two front doors: the Lambda runtime (one function per deployment,
//! chosen by the handler name) and `fluidity-lambdas serve` (all five over plain HTTP).
//! Both hand a parsed request to [`ControlPlane::handle`].

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use fluidity_core::control::SignRequest;
use fluidity_core::pki::{CertificateAuthority, SigningOptions};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::Error;
use crate::aws::{AwsEcs, CloudWatchActivity, SecretsManagerCa};
use crate::backend::{ActivityMetrics, CaKeySource, EcsService};
use crate::handlers::{ca, kill, query, sleep, wake};
use crate::local::{DirectoryCa, HealthEndpointActivity};

/// The five functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// Start the server (idempotent).
    Wake,
    /// Report the server.
    Query,
    /// Stop the server unless others use it.
    Kill,
    /// Stop the server when idle.
    Sleep,
    /// Sign a CSR.
    Ca,
}

impl FromStr for Function {
    type Err = Error;

    /// `wake`, `query`, `kill`, `sleep`, `ca` (or `sign`, the Go API's path); a Lambda
    /// handler string such as `bootstrap.wake` works too.
    fn from_str(name: &str) -> Result<Self, Error> {
        let name = name.rsplit('.').next().unwrap_or(name);
        match name.to_ascii_lowercase().as_str() {
            "wake" => Ok(Function::Wake),
            "query" => Ok(Function::Query),
            "kill" => Ok(Function::Kill),
            "sleep" => Ok(Function::Sleep),
            "ca" | "sign" => Ok(Function::Ca),
            other => Err(Error::BadRequest(format!(
                "unknown function {other:?} (expected wake, query, kill, sleep or ca)"
            ))),
        }
    }
}

/// What the functions read from their environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `ECS_CLUSTER_NAME` (required).
    pub cluster: String,
    /// `ECS_SERVICE_NAME` (required).
    pub service: String,
    /// `IDLE_THRESHOLD_MINUTES` (default 15; `IDLE_THRESHOLD_MINS`, the Go template's name,
    /// is accepted too).
    pub idle_threshold: Duration,
    /// `KILL_SETTLE_SECONDS` (default 300): how long after a Kill request Sleep first acts
    /// on it (see the Kill handler).
    pub kill_settle: Duration,
    /// `METRICS_NAMESPACE` (default `Fluidity`).
    pub metrics_namespace: String,
    /// `CA_SECRET_NAME` (default `fluidity/ca-certificate`).
    pub ca_secret: String,
}

impl Settings {
    /// Reads the settings through `env`.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let get = |key: &str| env(key).filter(|v| !v.trim().is_empty());
        let required = |key: &str| {
            get(key).ok_or_else(|| {
                Error::Settings(format!(
                    "{key} is not set (the cluster and service come only from the environment)"
                ))
            })
        };
        let idle_threshold =
            match get("IDLE_THRESHOLD_MINUTES").or_else(|| get("IDLE_THRESHOLD_MINS")) {
                None => Duration::from_secs(15 * 60),
                Some(text) => match text.trim().parse::<u64>() {
                    Ok(minutes) if minutes > 0 => Duration::from_secs(minutes * 60),
                    _ => {
                        return Err(Error::Settings(format!(
                            "IDLE_THRESHOLD_MINUTES={text:?} is not a positive number of minutes"
                        )));
                    }
                },
            };
        let kill_settle = match get("KILL_SETTLE_SECONDS") {
            None => sleep::SleepConfig::default().kill_settle,
            Some(text) => match text.trim().parse::<u64>() {
                Ok(seconds) if seconds > 0 => Duration::from_secs(seconds),
                _ => {
                    return Err(Error::Settings(format!(
                        "KILL_SETTLE_SECONDS={text:?} is not a positive number of seconds"
                    )));
                }
            },
        };
        Ok(Settings {
            cluster: required("ECS_CLUSTER_NAME")?,
            service: required("ECS_SERVICE_NAME")?,
            idle_threshold,
            kill_settle,
            metrics_namespace: get("METRICS_NAMESPACE").unwrap_or_else(|| "Fluidity".into()),
            ca_secret: get("CA_SECRET_NAME").unwrap_or_else(|| "fluidity/ca-certificate".into()),
        })
    }
}

/// The handlers over their backends.
pub struct ControlPlane {
    ecs: Arc<dyn EcsService>,
    metrics: Arc<dyn ActivityMetrics>,
    ca_source: Arc<dyn CaKeySource>,
    /// Loaded at the first CA request; a failed load is retried at the next.
    authority: OnceCell<CertificateAuthority>,
    sleep: sleep::SleepConfig,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("service", &self.ecs.names())
            .field("sleep", &self.sleep)
            .finish_non_exhaustive()
    }
}

/// Where the CA and the activity come from when not from AWS.
#[derive(Debug, Clone, Default)]
pub struct LocalOverrides {
    /// Sign with the CA in this directory instead of Secrets Manager.
    pub ca_dir: Option<std::path::PathBuf>,
    /// Read activity from this `/health` URL instead of CloudWatch.
    pub activity_url: Option<String>,
}

impl ControlPlane {
    /// Over explicit backends.
    pub fn new(
        ecs: Arc<dyn EcsService>,
        metrics: Arc<dyn ActivityMetrics>,
        ca_source: Arc<dyn CaKeySource>,
        sleep: sleep::SleepConfig,
    ) -> Self {
        ControlPlane {
            ecs,
            metrics,
            ca_source,
            authority: OnceCell::new(),
            sleep,
        }
    }

    /// Over the AWS SDK, configured by the standard AWS environment (region, credentials,
    /// `AWS_ENDPOINT_URL`), with optional local replacements.
    pub async fn from_aws(settings: &Settings, local: LocalOverrides) -> Result<Self, Error> {
        let config = aws_config::defaults(BehaviorVersion::latest()).load().await;
        let tasks = crate::tasks::TaskDirectory::new(
            aws_sdk_ecs::Client::new(&config),
            aws_sdk_ec2::Client::new(&config),
        );
        let ecs = AwsEcs::new(tasks, settings.cluster.clone(), settings.service.clone());
        let metrics: Arc<dyn ActivityMetrics> = match local.activity_url {
            Some(url) => Arc::new(HealthEndpointActivity::new(
                fluidity_aws::http_client().map_err(|e| Error::Settings(e.to_string()))?,
                url,
            )),
            None => Arc::new(CloudWatchActivity::new(
                aws_sdk_cloudwatch::Client::new(&config),
                settings.metrics_namespace.clone(),
                settings.cluster.clone(),
                settings.service.clone(),
            )),
        };
        let ca_source: Arc<dyn CaKeySource> = match local.ca_dir {
            Some(dir) => Arc::new(DirectoryCa::new(dir, SigningOptions::default())),
            None => Arc::new(SecretsManagerCa::new(
                aws_sdk_secretsmanager::Client::new(&config),
                settings.ca_secret.clone(),
                SigningOptions::default(),
            )),
        };
        Ok(ControlPlane::new(
            Arc::new(ecs),
            metrics,
            ca_source,
            sleep::SleepConfig {
                idle_threshold: settings.idle_threshold,
                kill_settle: settings.kill_settle,
            },
        ))
    }

    /// Loads the CA now (a server would rather fail at start than at the first request).
    pub async fn load_ca(&self) -> Result<&CertificateAuthority, Error> {
        self.authority
            .get_or_try_init(|| self.ca_source.load())
            .await
    }

    /// Runs `function` on `body` from `caller`: the HTTP status and the JSON answer.
    pub async fn handle(
        &self,
        function: Function,
        body: Value,
        caller: Option<IpAddr>,
    ) -> (u16, Value) {
        let now = SystemTime::now();
        let result = match function {
            Function::Wake => answer(wake::wake(self.ecs.as_ref(), caller, now).await),
            // The instance id is opaque: cluster and service come from the environment.
            Function::Query => answer(query::query(self.ecs.as_ref()).await),
            Function::Kill => answer(kill::kill(self.ecs.as_ref(), SystemTime::now()).await),
            Function::Sleep => answer(
                sleep::sleep(self.ecs.as_ref(), self.metrics.as_ref(), self.sleep, now).await,
            ),
            Function::Ca => match serde_json::from_value::<SignRequest>(body) {
                Err(_) => Err(Error::BadRequest("Invalid request body".into())),
                Ok(request) => match self.load_ca().await {
                    Ok(authority) => {
                        answer(ca::sign(authority, self.ecs.as_ref(), &request, caller, now).await)
                    }
                    Err(e) => Err(e),
                },
            },
        };
        match result {
            Ok(value) => (200, value),
            Err(e) => {
                let status = e.status();
                if status >= 500 {
                    tracing::error!(?function, error = %e, "control-plane call failed");
                } else {
                    tracing::warn!(?function, ?caller, error = %e, "control-plane request refused");
                }
                (status, json!({ "error": e.to_string() }))
            }
        }
    }
}

fn answer<T: Serialize>(result: Result<T, Error>) -> Result<Value, Error> {
    result.and_then(|value| {
        serde_json::to_value(value).map_err(|e| Error::backend("encoding the answer", e))
    })
}
