//! What ECS and EC2 say about the service's tasks: ARN, status, start time and public IP.
//!
//! A Fargate task's public IP is not in ECS's answer: ECS names the task's elastic network
//! interface (attachment `ElasticNetworkInterface`, detail `networkInterfaceId`) and EC2's
//! `DescribeNetworkInterfaces` gives that interface's public IP (`Association.PublicIp`).
//! Only the control-plane functions ask: the server learns its public IP from the certificate
//! the CA function signs for it (the CA verified that address), so neither the server nor the
//! agent needs the ECS or EC2 SDK.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::SystemTime;

use crate::Error;

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
                .map_err(|e| Error::backend(format!("ecs:ListTasks for {service}"), e))?;
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
                .map_err(|e| Error::backend("ecs:DescribeTasks", e))?;
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
            .map_err(|e| Error::backend("ec2:DescribeNetworkInterfaces", e))?;
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
}
