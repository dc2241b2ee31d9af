//! The control plane's wire format: the JSON bodies of Wake, Query, Kill and CA, shared by the
//! Lambdas (and their local HTTP form) and the agent's lifecycle client.
//!
//! Field names follow the Go functions (reference §6) so either side interoperates with the
//! Go version, with the corrections: Query returns the chosen task's ARN, Wake reports a
//! running task at once, and the CA returns the chain.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Status strings of Query (and of Wake when a server is already up).
pub mod status {
    /// A task is running and has a public IP.
    pub const READY: &str = "ready";
    /// A task is starting.
    pub const PENDING: &str = "pending";
    /// No task runs and none is starting.
    pub const NEGATIVE: &str = "negative";
    /// Wake asked ECS for a task.
    pub const WAKING: &str = "waking";
    /// Wake found a task starting.
    pub const STARTING: &str = "starting";
    /// Kill stopped (or will stop) the server.
    pub const KILLED: &str = "killed";
    /// Kill left the server running for other agents.
    pub const KEPT: &str = "kept";
    /// Kill recorded the request: the server stops once no agent has used it for a few
    /// minutes (a Wake meanwhile cancels it).
    pub const SCHEDULED: &str = "scheduled";
}

/// Wake's request. Go agents send `{}` (or camel-case names the Go Lambda ignored); cluster
/// and service always come from the Lambda's environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeRequest {}

/// Wake's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeResponse {
    /// `ready`, `starting` or `waking`.
    pub status: String,
    /// What to pass to Query.
    pub instance_id: String,
    /// The service's desired count after the call.
    #[serde(rename = "desiredCount", default)]
    pub desired_count: i32,
    /// Running tasks.
    #[serde(rename = "runningCount", default)]
    pub running_count: i32,
    /// Pending tasks.
    #[serde(rename = "pendingCount", default)]
    pub pending_count: i32,
    /// When a new task should be up (RFC 3339), if one was requested.
    #[serde(
        rename = "estimatedStartTime",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub estimated_start_time: Option<String>,
    /// For people.
    #[serde(default)]
    pub message: String,
    /// The running task's ARN, when one is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_arn: Option<String>,
    /// The running task's public IP, when one is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_public_ip: Option<String>,
    /// The caller's IP as the Lambda saw it (goes into the agent's certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_public_ip_as_seen: Option<String>,
}

/// Query's request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryRequest {
    /// From Wake.
    pub instance_id: String,
}

/// Query's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryResponse {
    /// `ready`, `pending` or `negative`.
    pub status: String,
    /// The chosen running task's public IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    /// For people.
    #[serde(default)]
    pub message: String,
    /// The chosen running task's ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_arn: Option<String>,
}

/// Kill's request: which server this agent used, so Kill can leave others' alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillRequest {
    /// From Wake, when the agent has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

/// Kill's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillResponse {
    /// `killed` or `kept`.
    pub status: String,
    /// For people.
    #[serde(default)]
    pub message: String,
}

/// The CA's request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignRequest {
    /// PEM `CERTIFICATE REQUEST`.
    pub csr: String,
}

/// The CA's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignResponse {
    /// The leaf, PEM.
    pub certificate: String,
    /// The CA chain, PEM, issuer first (absent from the Go CA).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
}

/// Any endpoint's error body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: String,
}

/// A response body as the endpoint sent it: Function URLs deliver the function's body, but
/// a Lambda invoked otherwise returns the proxy wrapper `{statusCode, headers, body: "<json>"}`
/// (reference §3.2); both are accepted.
pub fn unwrap_proxy_response(value: Value) -> Result<Value, String> {
    match value {
        Value::Object(map) if map.contains_key("statusCode") => match map.get("body") {
            Some(Value::String(body)) => {
                serde_json::from_str(body).map_err(|e| format!("the wrapped body is not JSON: {e}"))
            }
            Some(other) => Ok(other.clone()),
            None => Ok(Value::Null),
        },
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_shaped_bodies_decode() {
        let wake: WakeResponse = serde_json::from_str(
            r#"{"status":"waking","instance_id":"c-s-1","desiredCount":1,"runningCount":0,"pendingCount":0,"estimatedStartTime":"2025-12-10T10:01:15Z","message":"m"}"#,
        )
        .unwrap_or_default();
        assert_eq!(wake.desired_count, 1);
        assert_eq!(
            wake.estimated_start_time.as_deref(),
            Some("2025-12-10T10:01:15Z")
        );
        let wrapped = serde_json::json!({"statusCode": 200, "headers": {}, "body": "{\"status\":\"ready\",\"public_ip\":\"203.0.113.9\",\"message\":\"\"}"});
        let query: QueryResponse =
            serde_json::from_value(unwrap_proxy_response(wrapped).unwrap_or_default())
                .unwrap_or_default();
        assert_eq!(query.status, status::READY);
        assert_eq!(query.public_ip.as_deref(), Some("203.0.113.9"));
        // Go agents send camel-case fields to Wake; they are ignored, not errors.
        assert!(serde_json::from_str::<WakeRequest>(r#"{"clusterName":"x"}"#).is_ok());
    }
}
