//! CA: sign CSRs with `fluidity-core`'s rules plus this deployment's authorisation:
//!
//! - the ARN must be a RUNNING task of the configured service;
//! - a caller whose source IP is that task's public IP is the server itself: its certificate
//!   lists exactly that IP, whatever the request lists (the server need not know its own
//!   public IP; TLS shows its certificate to anyone, so it names no one else), and a request
//!   listing another address is refused;
//! - any other caller is an agent: its certificate must list exactly the caller's source IP.

use std::net::IpAddr;
use std::time::SystemTime;

use async_trait::async_trait;
use fluidity_core::control::{SignRequest, SignResponse};
use fluidity_core::pki::csr::SigningRequest;
use fluidity_core::pki::{CertificateAuthority, CsrPolicy, IpSans, SigningRequestContext};

use crate::Error;
use crate::backend::EcsService;

/// The authorisation described in the module documentation.
pub struct RunningTaskPolicy<'a> {
    ecs: &'a dyn EcsService,
}

impl std::fmt::Debug for RunningTaskPolicy<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningTaskPolicy")
            .field("service", &self.ecs.names())
            .finish()
    }
}

impl<'a> RunningTaskPolicy<'a> {
    /// A policy over the service's running tasks.
    pub fn new(ecs: &'a dyn EcsService) -> Self {
        RunningTaskPolicy { ecs }
    }
}

#[async_trait]
impl CsrPolicy for RunningTaskPolicy<'_> {
    async fn authorise(
        &self,
        request: &SigningRequest,
        arn: &str,
        context: &SigningRequestContext,
    ) -> Result<IpSans, String> {
        let tasks = self
            .ecs
            .running_tasks()
            .await
            .map_err(|e| format!("cannot list the service's tasks: {e}"))?;
        let task = tasks
            .iter()
            .find(|t| t.arn == arn)
            .ok_or_else(|| format!("{arn} is not a running task of this service"))?;
        let caller = context
            .source_ip
            .ok_or("the caller's source IP is unknown")?
            .to_canonical();
        let ips: Vec<IpAddr> = request
            .ip_addresses
            .iter()
            .map(|ip| ip.to_canonical())
            .collect();
        if task.public_ip.map(|ip| ip.to_canonical()) == Some(caller) {
            if ips.is_empty() || ips == [caller] {
                return Ok(IpSans::Exactly(vec![caller]));
            }
            return Err(format!(
                "the server's certificate must list exactly its own IP {caller}, not {ips:?}"
            ));
        }
        if ips == [caller] {
            Ok(IpSans::AsRequested)
        } else {
            Err(format!(
                "an agent certificate must list exactly the caller's IP {caller}, not {ips:?}"
            ))
        }
    }
}

/// Handles a CA request from `caller_ip` at `now`.
pub async fn sign(
    authority: &CertificateAuthority,
    ecs: &dyn EcsService,
    request: &SignRequest,
    caller_ip: Option<IpAddr>,
    now: SystemTime,
) -> Result<SignResponse, Error> {
    if request.csr.trim().is_empty() {
        return Err(Error::BadRequest("CSR not provided".into()));
    }
    let context = SigningRequestContext {
        source_ip: caller_ip,
    };
    let issued = authority
        .sign_with_policy(&request.csr, &RunningTaskPolicy::new(ecs), &context, now)
        .await?;
    Ok(SignResponse {
        certificate: issued.certificate_pem,
        chain: issued.chain_pem,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use fluidity_core::pki::{KeyAlgorithm, SigningOptions, csr, keys};

    use super::*;
    use crate::handlers::fake::{FakeEcs, task};

    const TASK: &str = "arn:aws:ecs:eu-west-1:123456789012:task/fluidity/0123456789abcdef";
    const STOPPED: &str = "arn:aws:ecs:eu-west-1:123456789012:task/fluidity/fedcba9876543210";

    fn request(arn: &str, ips: &[&str]) -> SignRequest {
        let key = keys::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let ips: Vec<IpAddr> = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        SignRequest {
            csr: csr::build(&key, arn, &ips).unwrap(),
        }
    }

    #[tokio::test]
    async fn only_running_tasks_and_the_callers_own_ip_are_signed() {
        let (ca, _) = CertificateAuthority::generate(
            "CA",
            Duration::from_secs(86400),
            KeyAlgorithm::EcdsaP256,
            SigningOptions::default(),
        )
        .unwrap();
        let ecs = FakeEcs::new(1, 1, 0, vec![task(TASK, Some("203.0.113.10"), 1)]);
        let now = SystemTime::now();
        let agent: IpAddr = "198.51.100.7".parse().unwrap();
        let server: IpAddr = "203.0.113.10".parse().unwrap();

        // An agent, for the running task, with its own IP.
        let signed = sign(
            &ca,
            &ecs,
            &request(TASK, &["198.51.100.7"]),
            Some(agent),
            now,
        )
        .await
        .unwrap();
        assert!(signed.certificate.contains("BEGIN CERTIFICATE"));
        assert_eq!(signed.chain, vec![ca.certificate_pem().to_owned()]);
        // The server itself, listing its own IP, or none: the CA puts in the address it
        // verified either way.
        sign(
            &ca,
            &ecs,
            &request(TASK, &["203.0.113.10"]),
            Some(server),
            now,
        )
        .await
        .unwrap();
        let signed = sign(&ca, &ecs, &request(TASK, &[]), Some(server), now)
            .await
            .unwrap();
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(signed.certificate.as_bytes())
            .unwrap();
        let info = fluidity_core::pki::CertificateInfo::parse(&der).unwrap();
        assert_eq!(info.ip_addresses, vec![server]);
        assert_eq!(info.arn(), Some(TASK));

        let refused = |result: Result<SignResponse, Error>| match result {
            Err(e) => (e.status(), e.to_string()),
            Ok(_) => panic!("signed"),
        };
        let (code, why) = refused(
            sign(
                &ca,
                &ecs,
                &request(STOPPED, &["198.51.100.7"]),
                Some(agent),
                now,
            )
            .await,
        );
        assert_eq!(code, 403);
        assert!(why.contains("not a running task"), "{why}");
        let (code, why) = refused(
            sign(
                &ca,
                &ecs,
                &request(TASK, &["198.51.100.9"]),
                Some(agent),
                now,
            )
            .await,
        );
        assert_eq!(code, 403);
        assert!(why.contains("caller's IP"), "{why}");
        let (_, why) = refused(
            sign(
                &ca,
                &ecs,
                &request(TASK, &["198.51.100.7", "10.0.0.1"]),
                Some(agent),
                now,
            )
            .await,
        );
        assert!(why.contains("exactly"), "{why}");
        let (_, why) = refused(sign(&ca, &ecs, &request(TASK, &["198.51.100.7"]), None, now).await);
        assert!(why.contains("source IP is unknown"), "{why}");
        let (_, why) = refused(
            sign(
                &ca,
                &ecs,
                &request(TASK, &["198.51.100.7"]),
                Some(server),
                now,
            )
            .await,
        );
        assert!(why.contains("its own IP"), "{why}");
        // Nor may the server's certificate name anyone else (TLS shows it to everyone).
        let (_, why) = refused(
            sign(
                &ca,
                &ecs,
                &request(TASK, &["203.0.113.10", "198.51.100.7"]),
                Some(server),
                now,
            )
            .await,
        );
        assert!(why.contains("exactly its own IP"), "{why}");
        // An agent must name its address (only the server's is decided by the CA).
        let (_, why) = refused(sign(&ca, &ecs, &request(TASK, &[]), Some(agent), now).await);
        assert!(why.contains("exactly the caller's IP"), "{why}");
        // The CA's own rules still apply first.
        let (code, _) = refused(
            sign(
                &ca,
                &ecs,
                &SignRequest { csr: "junk".into() },
                Some(agent),
                now,
            )
            .await,
        );
        assert_eq!(code, 400);
        let (code, _) = refused(
            sign(
                &ca,
                &ecs,
                &SignRequest { csr: String::new() },
                Some(agent),
                now,
            )
            .await,
        );
        assert_eq!(code, 400);
    }
}
