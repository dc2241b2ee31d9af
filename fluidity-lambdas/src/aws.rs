//! The backend traits over the AWS SDK: ECS (+ EC2 for public IPs), CloudWatch and Secrets
//! Manager.

use std::time::{Duration, SystemTime};

use crate::tasks::TaskDirectory;
use async_trait::async_trait;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
use fluidity_core::pki::{CertificateAuthority, SigningOptions};

use crate::Error;
use crate::backend::{Activity, ActivityMetrics, CaKeySource, EcsService, ServiceState, Task};

/// An AWS SDK error (its message is the whole cause chain), as a backend error.
fn failed(action: &'static str, error: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::backend(action, error)
}

/// The ECS service named by the environment.
#[derive(Debug, Clone)]
pub struct AwsEcs {
    tasks: TaskDirectory,
    cluster: String,
    service: String,
}

/// The service tag that records a Kill request (Unix seconds).
const KILL_TAG: &str = "fluidity:kill-requested";

impl AwsEcs {
    /// The service as DescribeServices reports it, with its tags; `None` if it does not
    /// exist (a deleted service stays listed for a while as INACTIVE).
    async fn describe(&self) -> Result<Option<aws_sdk_ecs::types::Service>, Error> {
        let answer = self
            .tasks
            .ecs()
            .describe_services()
            .cluster(&self.cluster)
            .services(&self.service)
            .include(aws_sdk_ecs::types::ServiceField::Tags)
            .send()
            .await
            .map_err(|e| failed("ecs:DescribeServices", e))?;
        Ok(answer
            .services()
            .iter()
            .find(|s| s.status() != Some("INACTIVE"))
            .cloned())
    }

    /// The service `service` in `cluster`.
    pub fn new(tasks: TaskDirectory, cluster: String, service: String) -> Self {
        AwsEcs {
            tasks,
            cluster,
            service,
        }
    }
}

#[async_trait]
impl EcsService for AwsEcs {
    fn names(&self) -> (&str, &str) {
        (&self.cluster, &self.service)
    }

    async fn state(&self) -> Result<Option<ServiceState>, Error> {
        Ok(self.describe().await?.map(|service| {
            let kill_requested = service
                .tags()
                .iter()
                .find(|tag| tag.key() == Some(KILL_TAG))
                .and_then(|tag| tag.value())
                .and_then(|value| value.parse::<u64>().ok())
                .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
            ServiceState {
                desired: service.desired_count(),
                running: service.running_count(),
                pending: service.pending_count(),
                kill_requested,
            }
        }))
    }

    async fn set_kill_requested(&self, at: Option<SystemTime>) -> Result<(), Error> {
        let arn = self
            .describe()
            .await?
            .and_then(|service| service.service_arn().map(str::to_owned))
            .ok_or_else(|| Error::ServiceNotFound {
                cluster: self.cluster.clone(),
                service: self.service.clone(),
            })?;
        let ecs = self.tasks.ecs();
        match at {
            Some(at) => {
                let secs = at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let tag = aws_sdk_ecs::types::Tag::builder()
                    .key(KILL_TAG)
                    .value(secs.to_string())
                    .build();
                ecs.tag_resource()
                    .resource_arn(arn)
                    .tags(tag)
                    .send()
                    .await
                    .map_err(|e| failed("ecs:TagResource", e))?;
            }
            None => {
                ecs.untag_resource()
                    .resource_arn(arn)
                    .tag_keys(KILL_TAG)
                    .send()
                    .await
                    .map_err(|e| failed("ecs:UntagResource", e))?;
            }
        }
        Ok(())
    }

    async fn set_desired(&self, count: i32) -> Result<(), Error> {
        self.tasks
            .ecs()
            .update_service()
            .cluster(&self.cluster)
            .service(&self.service)
            .desired_count(count)
            .send()
            .await
            .map_err(|e| failed("ecs:UpdateService", e))?;
        Ok(())
    }

    async fn running_tasks(&self) -> Result<Vec<Task>, Error> {
        let (cluster, service) = (&self.cluster, &self.service);
        let arns = self.tasks.service_task_arns(cluster, service).await?;
        let mut tasks = self.tasks.describe(cluster, &arns).await?;
        tasks.retain(Task::is_running);
        Ok(tasks)
    }
}

/// The server's activity from CloudWatch: the metrics its EMF log lines create
/// (`ActiveTunnels`, `LastActivityEpochSeconds`, dimensions `ClusterName`, `ServiceName`).
#[derive(Debug, Clone)]
pub struct CloudWatchActivity {
    client: aws_sdk_cloudwatch::Client,
    namespace: String,
    cluster: String,
    service: String,
}

impl CloudWatchActivity {
    /// Metrics in `namespace` for the service.
    pub fn new(
        client: aws_sdk_cloudwatch::Client,
        namespace: String,
        cluster: String,
        service: String,
    ) -> Self {
        CloudWatchActivity {
            client,
            namespace,
            cluster,
            service,
        }
    }

    fn query(&self, id: &str, metric: &str) -> MetricDataQuery {
        let dimension =
            |name: &str, value: &str| Dimension::builder().name(name).value(value).build();
        let stat = MetricStat::builder()
            .metric(
                Metric::builder()
                    .namespace(&self.namespace)
                    .metric_name(metric)
                    .dimensions(dimension("ClusterName", &self.cluster))
                    .dimensions(dimension("ServiceName", &self.service))
                    .build(),
            )
            .period(60)
            .stat("Maximum")
            .build();
        MetricDataQuery::builder()
            .id(id)
            .metric_stat(stat)
            .return_data(true)
            .build()
    }
}

#[async_trait]
impl ActivityMetrics for CloudWatchActivity {
    async fn tunnel_counts(&self, lookback: Duration) -> Result<Vec<(SystemTime, f64)>, Error> {
        let now = SystemTime::now();
        let answer = self
            .client
            .get_metric_data()
            .metric_data_queries(self.query("tunnels", "ActiveTunnels"))
            .start_time((now - lookback).into())
            .end_time(now.into())
            .send()
            .await
            .map_err(|e| failed("cloudwatch:GetMetricData", e))?;
        let mut counts = Vec::new();
        for result in answer.metric_data_results() {
            for (at, value) in result.timestamps().iter().zip(result.values()) {
                if let Ok(at) = SystemTime::try_from(*at) {
                    counts.push((at, *value));
                }
            }
        }
        Ok(counts)
    }

    async fn activity(&self, lookback: Duration) -> Result<Activity, Error> {
        let now = SystemTime::now();
        let answer = self
            .client
            .get_metric_data()
            .metric_data_queries(self.query("tunnels", "ActiveTunnels"))
            .metric_data_queries(self.query("last_activity", "LastActivityEpochSeconds"))
            .start_time((now - lookback).into())
            .end_time(now.into())
            .scan_by(aws_sdk_cloudwatch::types::ScanBy::TimestampDescending)
            .send()
            .await
            .map_err(|e| failed("cloudwatch:GetMetricData", e))?;
        let mut activity = Activity::default();
        for result in answer.metric_data_results() {
            // Newest first (TimestampDescending).
            let values = result.values();
            match result.id() {
                Some("tunnels") => activity.active_tunnels = values.first().copied(),
                Some("last_activity") => {
                    activity.last_activity = values
                        .iter()
                        .copied()
                        .filter(|v| v.is_finite() && *v > 0.0)
                        .reduce(f64::max)
                        .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64));
                }
                _ => {}
            }
        }
        Ok(activity)
    }
}

/// The CA from a Secrets Manager secret holding `{"ca_cert": PEM, "ca_key": PEM}` (the Go
/// deployment's format; the key may be PKCS#1, PKCS#8 or SEC1).
#[derive(Debug, Clone)]
pub struct SecretsManagerCa {
    client: aws_sdk_secretsmanager::Client,
    secret: String,
    options: SigningOptions,
}

impl SecretsManagerCa {
    /// The CA in `secret` (a name or ARN).
    pub fn new(
        client: aws_sdk_secretsmanager::Client,
        secret: String,
        options: SigningOptions,
    ) -> Self {
        SecretsManagerCa {
            client,
            secret,
            options,
        }
    }
}

/// The secret's JSON.
#[derive(serde::Deserialize)]
struct CaSecret {
    ca_cert: String,
    ca_key: String,
}

#[async_trait]
impl CaKeySource for SecretsManagerCa {
    async fn load(&self) -> Result<CertificateAuthority, Error> {
        let answer = self
            .client
            .get_secret_value()
            .secret_id(&self.secret)
            .send()
            .await
            .map_err(|e| failed("secretsmanager:GetSecretValue", e))?;
        let text = answer.secret_string().ok_or_else(|| {
            Error::backend(
                "reading the CA secret",
                format!("{} has no SecretString", self.secret),
            )
        })?;
        // The secret's text is never logged or echoed: it holds the CA key.
        let secret: CaSecret = serde_json::from_str(text).map_err(|_| {
            Error::backend(
                "reading the CA secret",
                format!(
                    "{} is not JSON with string fields ca_cert and ca_key",
                    self.secret
                ),
            )
        })?;
        Ok(CertificateAuthority::from_pem(
            &secret.ca_cert,
            &secret.ca_key,
            self.options.clone(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    //! CloudWatch and Secrets Manager through aws-smithy-mocks (moto cannot serve CloudWatch
    //! to the Rust SDK); ECS and EC2 run against moto in `fluidity-agent/tests`.
    #![allow(clippy::unwrap_used)]

    use aws_sdk_cloudwatch::operation::get_metric_data::{GetMetricDataError, GetMetricDataOutput};
    use aws_sdk_cloudwatch::types::MetricDataResult;
    use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueOutput;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use fluidity_core::pki::KeyAlgorithm;

    use super::*;

    fn activity_over(client: aws_sdk_cloudwatch::Client) -> CloudWatchActivity {
        CloudWatchActivity::new(client, "Fluidity".into(), "prod".into(), "tunnel".into())
    }

    #[tokio::test]
    async fn activity_is_the_newest_tunnel_count_and_the_latest_activity() {
        let rule = mock!(aws_sdk_cloudwatch::Client::get_metric_data)
            .match_requests(|request| {
                let queries = request.metric_data_queries();
                queries.len() == 2
                    && queries.iter().all(|q| {
                        let metric = q.metric_stat().and_then(|s| s.metric()).unwrap();
                        let dimensions: Vec<_> = metric
                            .dimensions()
                            .iter()
                            .map(|d| (d.name().unwrap(), d.value().unwrap()))
                            .collect();
                        metric.namespace() == Some("Fluidity")
                            && dimensions == [("ClusterName", "prod"), ("ServiceName", "tunnel")]
                    })
                    && request.start_time().is_some()
            })
            .then_output(|| {
                GetMetricDataOutput::builder()
                    .metric_data_results(
                        MetricDataResult::builder()
                            .id("tunnels")
                            .values(2.0)
                            .values(5.0)
                            .build(),
                    )
                    .metric_data_results(
                        MetricDataResult::builder()
                            .id("last_activity")
                            .values(1_700_000_100.0)
                            .values(1_700_000_200.0)
                            .values(1_700_000_000.0)
                            .build(),
                    )
                    .build()
            });
        let client = mock_client!(aws_sdk_cloudwatch, [&rule]);
        let activity = activity_over(client)
            .activity(Duration::from_secs(900))
            .await
            .unwrap();
        assert_eq!(activity.active_tunnels, Some(2.0), "the newest datapoint");
        assert_eq!(
            activity.last_activity,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_200))
        );
        assert_eq!(rule.num_calls(), 1);
    }

    #[tokio::test]
    async fn no_datapoints_and_errors_are_reported_as_such() {
        let empty = mock!(aws_sdk_cloudwatch::Client::get_metric_data)
            .then_output(|| GetMetricDataOutput::builder().build());
        let failing = mock!(aws_sdk_cloudwatch::Client::get_metric_data)
            .then_error(|| GetMetricDataError::unhandled("throttled by the test"));
        let client = mock_client!(aws_sdk_cloudwatch, RuleMode::Sequential, [&empty, &failing]);
        let metrics = activity_over(client);
        assert_eq!(
            metrics.activity(Duration::from_secs(900)).await.unwrap(),
            Activity::default()
        );
        let err = metrics
            .activity(Duration::from_secs(900))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("cloudwatch:GetMetricData"), "{err}");
    }

    #[tokio::test]
    async fn the_ca_loads_from_its_secret_and_a_bad_secret_is_named_not_printed() {
        let (ca, key_pem) = CertificateAuthority::generate(
            "Secret CA",
            Duration::from_secs(3600),
            KeyAlgorithm::EcdsaP256,
            SigningOptions::default(),
        )
        .unwrap();
        let secret =
            serde_json::json!({"ca_cert": ca.certificate_pem(), "ca_key": key_pem}).to_string();
        let good = mock!(aws_sdk_secretsmanager::Client::get_secret_value)
            .match_requests(|request| request.secret_id() == Some("fluidity/ca"))
            .then_output(move || {
                GetSecretValueOutput::builder()
                    .secret_string(secret.clone())
                    .build()
            });
        let bad = mock!(aws_sdk_secretsmanager::Client::get_secret_value).then_output(|| {
            GetSecretValueOutput::builder()
                .secret_string("{\"ca_key\": \"SECRET-KEY-MATERIAL\"}")
                .build()
        });
        let client = mock_client!(aws_sdk_secretsmanager, RuleMode::Sequential, [&good, &bad]);
        let source = SecretsManagerCa::new(client, "fluidity/ca".into(), SigningOptions::default());
        let loaded = source.load().await.unwrap();
        assert_eq!(loaded.certificate_pem(), ca.certificate_pem());
        let err = source.load().await.unwrap_err().to_string();
        assert!(
            err.contains("fluidity/ca") && err.contains("ca_cert"),
            "{err}"
        );
        assert!(!err.contains("SECRET-KEY-MATERIAL"), "{err}");
    }
}
