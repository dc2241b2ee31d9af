//! Test fixtures: certificates minted at test time with the crate's own CA logic.
#![allow(dead_code)]

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use fluidity_core::pki::local_ca::LocalCa;
use fluidity_core::pki::{KeyAlgorithm, SigningOptions, TlsIdentity, csr, keys};
use fluidity_core::{CertIssuer, IssuedCertificate};

/// A realistic (81-character) ECS task ARN.
pub const ARN: &str =
    "arn:aws:ecs:eu-west-1:123456789012:task/fluidity-cluster/0123456789abcdef0123456789abcdef";
/// Another server's ARN.
pub const OTHER_ARN: &str =
    "arn:aws:ecs:eu-west-1:123456789012:task/fluidity-cluster/fedcba9876543210fedcba9876543210";

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn new_ca() -> Arc<LocalCa> {
    Arc::new(LocalCa::in_memory(SigningOptions::default()).unwrap())
}

pub fn roots(ca: &LocalCa) -> Arc<rustls::RootCertStore> {
    fluidity_core::pki::root_store("test CA", ca.certificate_pem().as_bytes()).unwrap()
}

/// A key and a certificate for `arn` / `ips`, signed by `ca` as if at time `at`.
pub fn identity_at(
    ca: &LocalCa,
    algorithm: KeyAlgorithm,
    arn: &str,
    ips: &[IpAddr],
    at: SystemTime,
) -> TlsIdentity {
    let key = keys::generate(algorithm).unwrap();
    let request = csr::build(&key, arn, ips).unwrap();
    let issued = ca.authority().sign(&request, at).unwrap();
    let mut chain = issued.certificate_pem.clone();
    chain.push_str(&issued.chain_pem.concat());
    TlsIdentity::from_pem(chain.as_bytes(), key.serialize_pem().as_bytes()).unwrap()
}

pub fn identity(ca: &LocalCa, arn: &str, ips: &[IpAddr]) -> TlsIdentity {
    identity_at(ca, KeyAlgorithm::EcdsaP256, arn, ips, SystemTime::now())
}

/// An issuer that counts calls, can be slowed down, made to fail, or to sign as if at
/// another time.
pub struct CountingIssuer {
    pub ca: Arc<LocalCa>,
    pub calls: AtomicUsize,
    pub delay: Duration,
    pub fail: std::sync::atomic::AtomicBool,
    /// Seconds to shift the signing time by (negative: the past), for the next call only.
    pub shift_next: std::sync::atomic::AtomicI64,
}

impl CountingIssuer {
    pub fn new(ca: Arc<LocalCa>) -> Arc<Self> {
        Arc::new(CountingIssuer {
            ca,
            calls: AtomicUsize::new(0),
            delay: Duration::ZERO,
            fail: Default::default(),
            shift_next: Default::default(),
        })
    }

    pub fn slow(ca: Arc<LocalCa>, delay: Duration) -> Arc<Self> {
        Arc::new(CountingIssuer {
            ca,
            calls: AtomicUsize::new(0),
            delay,
            fail: Default::default(),
            shift_next: Default::default(),
        })
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl CertIssuer for CountingIssuer {
    async fn issue(&self, csr_pem: &str) -> fluidity_core::Result<IssuedCertificate> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(fluidity_core::Error::issuer("CA unavailable (test)"));
        }
        let shift = self.shift_next.swap(0, Ordering::SeqCst);
        let now = SystemTime::now();
        let at = if shift < 0 {
            now - Duration::from_secs(shift.unsigned_abs())
        } else {
            now + Duration::from_secs(shift as u64)
        };
        self.ca.authority().sign(csr_pem, at)
    }
}
