//! The CA's signing logic, shared by the CA Lambda, the local CA and tests.
//!
//! [`CertificateAuthority::sign`] is a pure function of the CA, the CSR and the time: it checks
//! the request (signature, an ECS task ARN as identity, at least one IP SAN, no CA rights) and
//! issues a short-lived leaf for TLS client and server use. Deployment-specific authorisation
//! (is this ARN a running task of my cluster? is this the caller's IP?) plugs in through
//! [`CsrPolicy`].

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls_pki_types::CertificateDer;

use super::csr::SigningRequest;
use super::info::CertificateInfo;
use super::{KeyAlgorithm, keys, offset_date_time, pem_encode};
use crate::error::{Error, Result};
use crate::issue::IssuedCertificate;

/// The legacy CommonNames of the Go version's non-ARN mode.
pub const LEGACY_NAMES: [&str; 2] = ["fluidity-server", "fluidity-client"];

/// How leaves are issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningOptions {
    /// Lifetime of an issued leaf. Default 24 h: short enough that no revocation list is
    /// needed, long enough that a running tunnel renews rarely.
    pub validity: Duration,
    /// Start validity this long before the signing time, so a peer whose clock is a little
    /// behind does not see a "not yet valid" certificate. Default 5 min.
    pub backdate: Duration,
    /// Also sign the Go version's legacy CNs `fluidity-server` / `fluidity-client`. Off by
    /// default: those certificates bind no server identity.
    pub allow_legacy_names: bool,
}

impl Default for SigningOptions {
    fn default() -> Self {
        SigningOptions {
            validity: Duration::from_secs(24 * 3600),
            backdate: Duration::from_secs(5 * 60),
            allow_legacy_names: false,
        }
    }
}

/// Why the CA refused to sign a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrRefusal {
    /// The request is not a parseable PKCS#10 CSR.
    #[error("unparseable CSR: {0}")]
    Unparseable(String),
    /// The request's self-signature does not verify (tampered, or not made with its key).
    #[error("the CSR's signature does not verify against its own public key")]
    InvalidSignature,
    /// The request names no identity (no CommonName, no ARN `URI` SAN).
    #[error("the CSR has no CommonName and no ARN URI SAN")]
    NoIdentity,
    /// The identity is not an ECS task ARN (nor an allowed legacy name).
    #[error(
        "identity {found:?} is not an ECS task ARN (arn:<aws|aws-cn|aws-us-gov>:ecs:<region>:<account>:task/...)"
    )]
    NotATaskArn {
        /// The CommonName or URI found.
        found: String,
    },
    /// The CommonName and the ARN `URI` SAN name different ARNs.
    #[error("CommonName {common_name:?} differs from the ARN URI SAN {uri:?}")]
    IdentityMismatch {
        /// The CommonName.
        common_name: String,
        /// The URI SAN.
        uri: String,
    },
    /// The request has no IP address SAN; Fluidity identities are bound to IPs.
    #[error("the CSR has no IP address SAN")]
    NoIpAddress,
    /// The request asks for CA rights (basicConstraints CA or certificate/CRL signing usage).
    #[error("the CSR requests CA rights")]
    RequestsCaRights,
    /// The requester's public key type is not supported.
    #[error("unsupported public key: {0}")]
    UnsupportedKey(String),
    /// The deployment's [`CsrPolicy`] refused the request.
    #[error("not authorised: {0}")]
    NotAuthorised(String),
}

/// Who asked for a signature, as the CA's front end saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SigningRequestContext {
    /// The caller's source IP (the Lambda's `sourceIp`), when known.
    pub source_ip: Option<IpAddr>,
}

/// Which IP SANs a signed certificate lists, as a policy decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpSans {
    /// The ones the request lists.
    AsRequested,
    /// These, whatever the request lists (the CA verified them itself, e.g. the caller's
    /// source address).
    Exactly(Vec<IpAddr>),
}

/// Deployment-specific authorisation of a request that passed the CA's own checks.
#[async_trait]
pub trait CsrPolicy: Send + Sync {
    /// Allows `request` for identity `arn` (saying which IP SANs the certificate gets) or
    /// refuses it; the error is the reason.
    async fn authorise(
        &self,
        request: &SigningRequest,
        arn: &str,
        context: &SigningRequestContext,
    ) -> std::result::Result<IpSans, String>;
}

/// A policy that adds no restriction beyond the CA's own checks (local CA, tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

#[async_trait]
impl CsrPolicy for AllowAll {
    async fn authorise(
        &self,
        _request: &SigningRequest,
        _arn: &str,
        _context: &SigningRequestContext,
    ) -> std::result::Result<IpSans, String> {
        Ok(IpSans::AsRequested)
    }
}

/// Whether `s` is an ECS task ARN: `arn:<aws|aws-cn|aws-us-gov>:ecs:<region>:<12 digits>:task/<id>`.
pub fn is_task_arn(s: &str) -> bool {
    let mut parts = s.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("ecs"), Some(region), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    matches!(partition, "aws" | "aws-cn" | "aws-us-gov")
        && !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && resource
            .strip_prefix("task/")
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_graphic()))
}

/// A certificate authority: its certificate and signing key.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    certificate_der: CertificateDer<'static>,
    certificate_pem: String,
    options: SigningOptions,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("CertificateAuthority")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads a CA from its PEM certificate and PEM key (PKCS#1, PKCS#8 or SEC1; RSA or EC),
    /// checking that they belong together.
    pub fn from_pem(certificate_pem: &str, key_pem: &str, options: SigningOptions) -> Result<Self> {
        let certificate_der =
            super::parse_certificates_pem("CA certificate", certificate_pem.as_bytes())?
                .swap_remove(0);
        let key_der = keys::parse_private_key_pem("CA key", key_pem.as_bytes())?;
        let key = keys::key_pair("CA key", &key_der)?;
        let info = CertificateInfo::parse(&certificate_der)?;
        if info.public_key_info != key.subject_public_key_info() {
            return Err(Error::certificate(
                "CA key",
                "does not belong to the CA certificate (public keys differ)",
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&certificate_der, key)
            .map_err(|e| Error::certificate("CA certificate", e))?;
        Ok(CertificateAuthority {
            issuer,
            certificate_pem: pem_encode("CERTIFICATE", &certificate_der),
            certificate_der,
            options,
        })
    }

    /// Creates a new self-signed CA (`CN = common_name`, valid for `validity`). Returns the CA
    /// and its key as PEM (PKCS#8), to be stored by the caller.
    pub fn generate(
        common_name: &str,
        validity: Duration,
        algorithm: KeyAlgorithm,
        options: SigningOptions,
    ) -> Result<(Self, String)> {
        let key = keys::generate(algorithm)?;
        let key_pem = key.serialize_pem();
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Fluidity");
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        params.not_before = offset_date_time(now - options.backdate)?;
        params.not_after = offset_date_time(now + validity)?;
        let certificate = params
            .self_signed(&key)
            .map_err(|e| Error::certificate("generating the CA certificate", e))?;
        let certificate_der = certificate.der().clone();
        Ok((
            CertificateAuthority {
                issuer: Issuer::new(params, key),
                certificate_pem: certificate.pem(),
                certificate_der,
                options,
            },
            key_pem,
        ))
    }

    /// The CA certificate, PEM (what agents and servers trust).
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The CA certificate, DER.
    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.certificate_der
    }

    /// The signing options in force.
    pub fn options(&self) -> &SigningOptions {
        &self.options
    }

    /// Parses and checks a CSR against the CA's own rules, returning it and the identity
    /// (ARN or allowed legacy name) the leaf will carry.
    pub fn check(
        &self,
        csr_pem: &str,
    ) -> std::result::Result<(SigningRequest, String), CsrRefusal> {
        let request = SigningRequest::parse_pem(csr_pem)?;
        if request.requests_ca {
            return Err(CsrRefusal::RequestsCaRights);
        }
        let arn_uri = request.uris.iter().find(|uri| uri.starts_with("arn:"));
        let identity = match (&request.common_name, arn_uri) {
            (Some(cn), Some(uri)) if cn != uri => {
                return Err(CsrRefusal::IdentityMismatch {
                    common_name: cn.clone(),
                    uri: uri.clone(),
                });
            }
            (_, Some(uri)) => uri.clone(),
            (Some(cn), None) => cn.clone(),
            (None, None) => return Err(CsrRefusal::NoIdentity),
        };
        let legacy = self.options.allow_legacy_names && LEGACY_NAMES.contains(&identity.as_str());
        if !legacy && !is_task_arn(&identity) {
            return Err(CsrRefusal::NotATaskArn { found: identity });
        }
        Ok((request, identity))
    }

    /// Checks and signs a CSR at time `now` with no authorisation beyond the CA's own rules.
    /// The CSR must list at least one IP.
    pub fn sign(&self, csr_pem: &str, now: SystemTime) -> Result<IssuedCertificate> {
        let (request, identity) = self.check(csr_pem).map_err(Error::CsrRefused)?;
        self.issue(&request, &identity, &request.ip_addresses, now)
    }

    /// Checks a CSR, asks `policy` (which may decide the IP SANs itself: a CSR may then list
    /// none), and signs it at time `now`.
    pub async fn sign_with_policy(
        &self,
        csr_pem: &str,
        policy: &dyn CsrPolicy,
        context: &SigningRequestContext,
        now: SystemTime,
    ) -> Result<IssuedCertificate> {
        let (request, identity) = self.check(csr_pem).map_err(Error::CsrRefused)?;
        let decided = policy
            .authorise(&request, &identity, context)
            .await
            .map_err(|reason| Error::CsrRefused(CsrRefusal::NotAuthorised(reason)))?;
        let ips = match decided {
            IpSans::AsRequested => request.ip_addresses.clone(),
            IpSans::Exactly(ips) => ips,
        };
        self.issue(&request, &identity, &ips, now)
    }

    /// Issues the leaf for a checked request.
    fn issue(
        &self,
        request: &SigningRequest,
        identity: &str,
        ips: &[IpAddr],
        now: SystemTime,
    ) -> Result<IssuedCertificate> {
        if ips.is_empty() {
            return Err(Error::CsrRefused(CsrRefusal::NoIpAddress));
        }
        let public_key = SubjectPublicKeyInfo::from_der(&request.public_key_info)
            .map_err(|e| Error::CsrRefused(CsrRefusal::UnsupportedKey(e.to_string())))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, identity);
        params.distinguished_name = name;
        if identity.starts_with("arn:") {
            let uri = identity
                .to_owned()
                .try_into()
                .map_err(|e| Error::CsrRefused(CsrRefusal::Unparseable(format!("ARN: {e}"))))?;
            params.subject_alt_names.push(SanType::URI(uri));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(ip.to_canonical())));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = offset_date_time(now - self.options.backdate)?;
        params.not_after = offset_date_time(now + self.options.validity)?;
        let leaf = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|e| Error::certificate("signing the certificate", e))?;
        tracing::info!(
            identity,
            ips = ?ips,
            valid_for = ?self.options.validity,
            "issued certificate"
        );
        Ok(IssuedCertificate {
            certificate_pem: leaf.pem(),
            chain_pem: vec![self.certificate_pem.clone()],
        })
    }
}

/// A random 128-bit serial number (top bit cleared so the DER integer stays positive).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}
