//! Where the server learns who it is: its task ARN, and (when it knows it) the IP agents dial.
//!
//! The ARN comes from the config (`server_arn`), then `SERVER_ARN`, then, on ECS, the task
//! metadata endpoint (`$ECS_CONTAINER_METADATA_URI_V4/task`, plain HTTP inside the task). The
//! IP comes from the config (`server_ip`) or `SERVER_PUBLIC_IP`; on AWS neither is needed: the
//! CA function puts the public IP it saw the server's request come from (which it checked is
//! the task's) into the server's certificate. So the server needs no AWS service SDK.

use std::time::Duration;

use crate::{Error, ServerConfig};

/// Fills `server_arn` and `server_ip` from the environment (read through `env`) and the ECS
/// task metadata endpoint, where the config leaves them open.
pub async fn discover(
    config: &mut ServerConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(), Error> {
    if config.server_arn.is_none() {
        if let Some(arn) = env("SERVER_ARN").filter(|a| !a.is_empty()) {
            config.server_arn = Some(arn);
        } else if let Some(uri) = env("ECS_CONTAINER_METADATA_URI_V4").filter(|u| !u.is_empty()) {
            let task = task_metadata(&uri).await?;
            tracing::info!(arn = %task.arn, cluster = %task.cluster, "task ARN from the ECS metadata endpoint");
            config.server_arn = Some(task.arn);
        }
    }
    if config.server_ip.is_none()
        && let Some(ip) = env("SERVER_PUBLIC_IP").filter(|ip| !ip.is_empty())
    {
        config.server_ip =
            Some(ip.parse().map_err(|_| {
                Error::Config(format!("SERVER_PUBLIC_IP {ip:?} is not an IP address"))
            })?);
    }
    Ok(())
}

/// This task, as its metadata endpoint describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMetadata {
    /// `TaskARN`.
    pub arn: String,
    /// `Cluster` (a name or an ARN), for the logs.
    pub cluster: String,
}

/// How long the metadata endpoint may take to answer.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// `TaskARN` and `Cluster` from `<metadata>/task`.
pub async fn task_metadata(metadata_uri: &str) -> Result<TaskMetadata, Error> {
    let url = format!("{}/task", metadata_uri.trim_end_matches('/'));
    let failed = |reason: String| Error::Config(format!("ECS task metadata ({url}): {reason}"));
    // reqwest has no crypto provider of its own here: always hand it the aws-lc-rs config.
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(crate::target_tls(None)?)
        .no_proxy()
        .timeout(METADATA_TIMEOUT)
        .build()?;
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !response.status().is_success() {
        return Err(failed(format!("HTTP {}", response.status())));
    }
    let bytes = response.bytes().await.map_err(|e| failed(e.to_string()))?;
    let body: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| failed(format!("not JSON: {e}")))?;
    let field = |name: &str| {
        body.get(name)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| failed(format!("no {name} in the answer")))
    };
    Ok(TaskMetadata {
        arn: field("TaskARN")?,
        cluster: field("Cluster")?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot metadata endpoint answering `body` to whatever it is asked.
    async fn metadata(body: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 4096];
            let _ = stream.read(&mut request).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).await.unwrap();
        });
        format!("http://{address}/v4/abc")
    }

    #[tokio::test]
    async fn the_task_arn_comes_from_the_metadata_endpoint() {
        let uri = metadata(r#"{"Cluster":"fluidity","TaskARN":"arn:aws:ecs:eu-west-1:123456789012:task/fluidity/abc","Family":"fluidity-server"}"#).await;
        let mut config = ServerConfig::default();
        let env = move |k: &str| match k {
            "ECS_CONTAINER_METADATA_URI_V4" => Some(uri.clone()),
            "SERVER_PUBLIC_IP" => Some("203.0.113.10".into()),
            _ => None,
        };
        discover(&mut config, env).await.unwrap();
        assert_eq!(
            config.server_arn.as_deref(),
            Some("arn:aws:ecs:eu-west-1:123456789012:task/fluidity/abc")
        );
        assert_eq!(config.server_ip, Some("203.0.113.10".parse().unwrap()));
    }

    #[tokio::test]
    async fn configured_values_win_and_bad_answers_are_clear_errors() {
        let mut config = ServerConfig {
            server_arn: Some("arn:configured".into()),
            ..ServerConfig::default()
        };
        discover(&mut config, |k| {
            (k == "SERVER_ARN").then(|| "arn:env".to_owned())
        })
        .await
        .unwrap();
        assert_eq!(config.server_arn.as_deref(), Some("arn:configured"));

        let uri = metadata(r#"{"Cluster":"fluidity"}"#).await;
        let mut config = ServerConfig::default();
        let err = discover(&mut config, move |k| {
            (k == "ECS_CONTAINER_METADATA_URI_V4").then(|| uri.clone())
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("no TaskARN"), "{err}");

        let mut config = ServerConfig::default();
        let err = discover(&mut config, |k| {
            (k == "SERVER_PUBLIC_IP").then(|| "nope".to_owned())
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("SERVER_PUBLIC_IP"), "{err}");
    }
}
