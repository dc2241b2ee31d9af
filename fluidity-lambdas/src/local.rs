//! Backends for self-hosting without CloudWatch or Secrets Manager: a CA directory, and the
//! server's own `/health` endpoint as the activity source.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use fluidity_core::pki::local_ca::LocalCa;
use fluidity_core::pki::{CertificateAuthority, SigningOptions};

use crate::Error;
use crate::backend::{Activity, ActivityMetrics, CaKeySource};

/// The CA in a directory (`ca.crt`, `ca.key`), created there if missing.
#[derive(Debug, Clone)]
pub struct DirectoryCa {
    directory: PathBuf,
    options: SigningOptions,
}

impl DirectoryCa {
    /// The CA in `directory`.
    pub fn new(directory: PathBuf, options: SigningOptions) -> Self {
        DirectoryCa { directory, options }
    }
}

#[async_trait]
impl CaKeySource for DirectoryCa {
    async fn load(&self) -> Result<CertificateAuthority, Error> {
        let (directory, options) = (self.directory.clone(), self.options.clone());
        let ca = tokio::task::spawn_blocking(move || LocalCa::open_or_create(&directory, options))
            .await
            .map_err(|e| Error::backend("opening the CA directory", e))??;
        Ok(ca.into_authority())
    }
}

/// Activity read from a server's `/health` document (`tunnels`, `last_activity_unix`).
#[derive(Debug, Clone)]
pub struct HealthEndpointActivity {
    http: reqwest::Client,
    url: String,
}

impl HealthEndpointActivity {
    /// Reads `url` (e.g. `http://10.0.0.5:9090/health`).
    pub fn new(http: reqwest::Client, url: String) -> Self {
        HealthEndpointActivity { http, url }
    }
}

#[async_trait]
impl ActivityMetrics for HealthEndpointActivity {
    fn live(&self) -> bool {
        true
    }

    /// The server's live count, as one datapoint now.
    async fn tunnel_counts(&self, lookback: Duration) -> Result<Vec<(SystemTime, f64)>, Error> {
        let activity = self.activity(lookback).await?;
        Ok(activity
            .active_tunnels
            .map(|n| (SystemTime::now(), n))
            .into_iter()
            .collect())
    }

    async fn activity(&self, _lookback: Duration) -> Result<Activity, Error> {
        let failed = |e: String| Error::backend("reading the server's /health", e);
        let response = self
            .http
            .get(&self.url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| failed(e.to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!("HTTP {}", response.status())));
        }
        let body = response.bytes().await.map_err(|e| failed(e.to_string()))?;
        let health: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| failed(format!("not JSON: {e}")))?;
        Ok(Activity {
            active_tunnels: health.get("tunnels").and_then(serde_json::Value::as_f64),
            last_activity: health
                .get("last_activity_unix")
                .and_then(serde_json::Value::as_u64)
                .filter(|secs| *secs > 0)
                .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
        })
    }
}
