//! What ECS and EC2 say about tasks: ARN, status, start time and public IP.
//!
//! A Fargate task's public IP is not in ECS's answer: ECS names the task's elastic network
//! interface (attachment `ElasticNetworkInterface`, detail `networkInterfaceId`) and EC2's
//! `DescribeNetworkInterfaces` gives that interface's public IP (`Association.PublicIp`).
//! The control-plane functions use this for every task of the service; a server uses it for
//! its own task to learn the IP agents dial.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;

use crate::Error;

/// The region in an ARN (`arn:aws:ecs:<region>:...`).
pub fn arn_region(arn: &str) -> Option<&str> {
    arn.split(':').nth(3).filter(|region| !region.is_empty())
}

/// One ECS task as the control plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The task ARN (the server's identity).
    pub arn: String,
    /// ECS's `lastStatus` (`PROVISIONING`, `PENDING`, `RUNNING`, `STOPPED`, ...).
    pub last_status: String,
    /// Its public IP, once its network interface has one.
    pub public_ip: Option<IpAddr>,
    /// When it started.
    pub started_at: Option<SystemTime>,
}

impl Task {
    /// Whether ECS reports it RUNNING.
    pub fn is_running(&self) -> bool {
        self.last_status == "RUNNING"
    }
}

/// ECS and EC2 clients for one region.
#[derive(Debug, Clone)]
pub struct TaskDirectory {
    ecs: aws_sdk_ecs::Client,
    ec2: aws_sdk_ec2::Client,
}

impl TaskDirectory {
    /// Clients from the default AWS configuration (region, credentials and
    /// `AWS_ENDPOINT_URL` from the environment), in `fallback_region` when the environment
    /// names none (a task knows its region from its own ARN).
    pub async fn from_env(fallback_region: Option<&str>) -> Self {
        let mut config = aws_config::defaults(BehaviorVersion::latest()).load().await;
        if config.region().is_none()
            && let Some(region) = fallback_region
        {
            config = aws_config::defaults(BehaviorVersion::latest())
                .region(aws_config::Region::new(region.to_owned()))
                .load()
                .await;
        }
        TaskDirectory::new(
            aws_sdk_ecs::Client::new(&config),
            aws_sdk_ec2::Client::new(&config),
        )
    }

    /// Over existing clients.
    pub fn new(ecs: aws_sdk_ecs::Client, ec2: aws_sdk_ec2::Client) -> Self {
        TaskDirectory { ecs, ec2 }
    }

    /// The ECS client.
    pub fn ecs(&self) -> &aws_sdk_ecs::Client {
        &self.ecs
    }

    /// The ARNs of the service's tasks whose desired status is RUNNING.
    pub async fn service_task_arns(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<Vec<String>, Error> {
        let mut arns = Vec::new();
        let mut next_token = None;
        loop {
            let page = self
                .ecs
                .list_tasks()
                .cluster(cluster)
                .service_name(service)
                .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
                .set_next_token(next_token)
                .send()
                .await
                .map_err(|e| Error::aws(format!("ecs:ListTasks for {service}"), &e))?;
            arns.extend(page.task_arns().iter().cloned());
            next_token = page.next_token().map(str::to_owned);
            if next_token.is_none() {
                return Ok(arns);
            }
        }
    }

    /// The tasks named by `arns`, with their public IPs.
    pub async fn describe(&self, cluster: &str, arns: &[String]) -> Result<Vec<Task>, Error> {
        let mut tasks = Vec::new();
        let mut interfaces = Vec::new();
        // DescribeTasks takes at most 100 tasks per call.
        for batch in arns.chunks(100) {
            let answer = self
                .ecs
                .describe_tasks()
                .cluster(cluster)
                .set_tasks(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|e| Error::aws("ecs:DescribeTasks", &e))?;
            for task in answer.tasks() {
                let Some(arn) = task.task_arn() else { continue };
                let eni = task
                    .attachments()
                    .iter()
                    .filter(|a| a.r#type() == Some("ElasticNetworkInterface"))
                    .flat_map(|a| a.details())
                    .find(|d| d.name() == Some("networkInterfaceId"))
                    .and_then(|d| d.value())
                    .map(str::to_owned);
                tasks.push(Task {
                    arn: arn.to_owned(),
                    last_status: task.last_status().unwrap_or_default().to_owned(),
                    public_ip: None,
                    started_at: task
                        .started_at()
                        .and_then(|at| SystemTime::try_from(*at).ok()),
                });
                interfaces.push(eni);
            }
        }
        let ids: Vec<String> = interfaces.iter().flatten().cloned().collect();
        let public_ips = self.public_ips(&ids).await?;
        for (task, eni) in tasks.iter_mut().zip(&interfaces) {
            task.public_ip = eni.as_ref().and_then(|id| public_ips.get(id)).copied();
        }
        Ok(tasks)
    }

    /// The public IP of each interface that has one.
    async fn public_ips(&self, interfaces: &[String]) -> Result<HashMap<String, IpAddr>, Error> {
        let mut ips = HashMap::new();
        if interfaces.is_empty() {
            return Ok(ips);
        }
        let answer = self
            .ec2
            .describe_network_interfaces()
            .set_network_interface_ids(Some(interfaces.to_vec()))
            .send()
            .await
            .map_err(|e| Error::aws("ec2:DescribeNetworkInterfaces", &e))?;
        for interface in answer.network_interfaces() {
            let ip = interface
                .association()
                .and_then(|a| a.public_ip())
                .and_then(|ip| ip.parse().ok());
            if let (Some(id), Some(ip)) = (interface.network_interface_id(), ip) {
                ips.insert(id.to_owned(), ip);
            }
        }
        Ok(ips)
    }

    /// The public IP of one task, waiting up to `patience` for its interface to get one
    /// (a server asking about itself right after start).
    pub async fn wait_for_public_ip(
        &self,
        cluster: &str,
        task_arn: &str,
        patience: Duration,
    ) -> Result<IpAddr, Error> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut pause = Duration::from_millis(500);
        loop {
            let last = match self.describe(cluster, &[task_arn.to_owned()]).await {
                Ok(tasks) => match tasks.first() {
                    Some(Task {
                        public_ip: Some(ip),
                        ..
                    }) => return Ok(*ip),
                    Some(_) => format!("task {task_arn} has no public IP yet"),
                    None => format!("ECS does not know task {task_arn} in cluster {cluster}"),
                },
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() + pause > deadline {
                return Err(Error::Unexpected(format!(
                    "no public IP for this task after {patience:?}: {last}"
                )));
            }
            tracing::info!(reason = %last, "waiting for the task's public IP");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_comes_from_the_arn() {
        assert_eq!(
            arn_region("arn:aws:ecs:eu-west-1:123456789012:task/fluidity/abc"),
            Some("eu-west-1")
        );
        assert_eq!(arn_region("arn:aws:ecs::123456789012:task/x"), None);
        assert_eq!(arn_region("not an arn"), None);
    }
}
