//! Peer verification: rustls verifiers that add Fluidity's ARN binding to standard chain
//! validation, the server's post-handshake peer-IP check, and [`Rejection`], which says in
//! words what did not match.
//!
//! Chain validation (CA, validity, EKU, and for the agent the dialled IP against the server's
//! SANs) is webpki's, through rustls. The ARN check runs after it, so an untrusted
//! certificate is reported as such, not as a wrong ARN.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};

use super::info::CertificateInfo;
use crate::error::{Error, Result};

/// Why a peer was not accepted. Each variant names what was expected and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The chain does not lead to the trusted CA (or a signature in it is bad).
    #[error("certificate is not issued by the trusted CA ({detail})")]
    UnknownCa {
        /// webpki's finding.
        detail: String,
    },
    /// The certificate is bound to another server ARN.
    #[error("certificate is bound to {found:?}, expected server ARN {expected:?}")]
    ArnMismatch {
        /// The ARN this side requires.
        expected: String,
        /// The ARN (URI SAN, else CN) the certificate carries, if any.
        found: Option<String>,
    },
    /// The IP this side dialled (agent) or sees as the TCP peer (server) is not a SAN.
    #[error("IP {expected} is not among the certificate's IP SANs {found:?}")]
    IpNotInSan {
        /// The IP that must be listed.
        expected: IpAddr,
        /// The names the certificate lists.
        found: Vec<String>,
    },
    /// Static mode: the configured server name is not a SAN.
    #[error("server name {expected:?} is not among the certificate's names {found:?}")]
    NameMismatch {
        /// The configured name.
        expected: String,
        /// The names the certificate lists.
        found: Vec<String>,
    },
    /// The certificate's validity ended.
    #[error("certificate expired at {} (now {})", rfc3339(*not_after), rfc3339(*now))]
    Expired {
        /// End of validity, Unix seconds.
        not_after: i64,
        /// Verification time, Unix seconds.
        now: i64,
    },
    /// The certificate's validity has not started.
    #[error("certificate not valid before {} (now {})", rfc3339(*not_before), rfc3339(*now))]
    NotYetValid {
        /// Start of validity, Unix seconds.
        not_before: i64,
        /// Verification time, Unix seconds.
        now: i64,
    },
    /// The peer presented no certificate (the server requires one from every agent).
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// The peer cannot speak TLS 1.3 with us (e.g. a TLS 1.2-only client).
    #[error("incompatible TLS peer: {0} (Fluidity requires TLS 1.3)")]
    Incompatible(String),
    /// Any other certificate problem (encoding, key usage, unsupported algorithm, ...).
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
}

impl Rejection {
    /// Recognises the rustls errors that mean "this peer was rejected" (ours, raised by the
    /// verifiers below, and webpki's), as opposed to network or protocol failures.
    pub fn from_tls_error(error: &rustls::Error) -> Option<Rejection> {
        match error {
            rustls::Error::InvalidCertificate(certificate) => {
                Some(Self::from_certificate_error(certificate))
            }
            rustls::Error::NoCertificatesPresented => Some(Rejection::NoCertificate),
            rustls::Error::PeerIncompatible(why) => {
                Some(Rejection::Incompatible(format!("{why:?}")))
            }
            _ => None,
        }
    }

    fn from_certificate_error(error: &CertificateError) -> Rejection {
        match error {
            CertificateError::Other(OtherError(inner)) => match inner.downcast_ref::<Rejection>() {
                Some(rejection) => rejection.clone(),
                None => Rejection::InvalidCertificate(inner.to_string()),
            },
            CertificateError::UnknownIssuer => Rejection::UnknownCa {
                detail: "unknown issuer".into(),
            },
            CertificateError::BadSignature => Rejection::UnknownCa {
                detail: "a signature in the chain does not verify against the trusted CA \
                         (another CA with the same name?)"
                    .into(),
            },
            CertificateError::ExpiredContext { time, not_after } => Rejection::Expired {
                not_after: seconds(*not_after),
                now: seconds(*time),
            },
            CertificateError::Expired => Rejection::Expired {
                not_after: 0,
                now: 0,
            },
            CertificateError::NotValidYetContext { time, not_before } => Rejection::NotYetValid {
                not_before: seconds(*not_before),
                now: seconds(*time),
            },
            CertificateError::NotValidYet => Rejection::NotYetValid {
                not_before: 0,
                now: 0,
            },
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => match expected {
                ServerName::IpAddress(ip) => Rejection::IpNotInSan {
                    expected: IpAddr::from(*ip),
                    found: presented.clone(),
                },
                other => Rejection::NameMismatch {
                    expected: other.to_str().into_owned(),
                    found: presented.clone(),
                },
            },
            other => Rejection::InvalidCertificate(format!("{other:?}")),
        }
    }

    /// This rejection as the rustls error a verifier returns.
    fn into_tls_error(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

fn seconds(time: UnixTime) -> i64 {
    i64::try_from(time.as_secs()).unwrap_or(i64::MAX)
}

fn rfc3339(unix_seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("unix {unix_seconds}"))
}

/// Checks that `certificate` is bound to `expected` (URI SAN ARN, else CN).
pub fn check_arn(
    certificate: &CertificateDer<'_>,
    expected: &str,
) -> std::result::Result<(), Rejection> {
    let info = CertificateInfo::parse(certificate)
        .map_err(|e| Rejection::InvalidCertificate(e.to_string()))?;
    match info.arn() {
        Some(found) if found == expected => Ok(()),
        found => Err(Rejection::ArnMismatch {
            expected: expected.to_owned(),
            found: found.map(str::to_owned),
        }),
    }
}

/// The server's check right after the handshake: the TCP peer's IP must be an IP SAN of the
/// agent's certificate.
pub fn check_peer_ip(
    peer_certificates: Option<&[CertificateDer<'_>]>,
    peer_ip: IpAddr,
) -> std::result::Result<(), Rejection> {
    let leaf = peer_certificates
        .and_then(|chain| chain.first())
        .ok_or(Rejection::NoCertificate)?;
    let info =
        CertificateInfo::parse(leaf).map_err(|e| Rejection::InvalidCertificate(e.to_string()))?;
    if info.has_ip(peer_ip) {
        Ok(())
    } else {
        Err(Rejection::IpNotInSan {
            expected: peer_ip.to_canonical(),
            found: info.ip_addresses.iter().map(ToString::to_string).collect(),
        })
    }
}

/// Which names the certificate lists, for a name/IP mismatch report.
fn name_rejection(end_entity: &CertificateDer<'_>, server_name: &ServerName<'_>) -> Rejection {
    let found = CertificateInfo::parse(end_entity)
        .map(|info| {
            let ips = info.ip_addresses.iter().map(ToString::to_string);
            ips.chain(info.dns_names.iter().cloned()).collect()
        })
        .unwrap_or_default();
    match server_name {
        ServerName::IpAddress(ip) => Rejection::IpNotInSan {
            expected: IpAddr::from(*ip),
            found,
        },
        other => Rejection::NameMismatch {
            expected: other.to_str().into_owned(),
            found,
        },
    }
}

/// The agent's view of a server: chain to the CA, the dialled IP (or configured name) among
/// its SANs, and, in ARN mode, bound to the expected server ARN.
#[derive(Debug)]
pub struct ServerVerifier {
    chain: Arc<WebPkiServerVerifier>,
    expected_arn: Option<String>,
}

impl ServerVerifier {
    /// Trusts `roots`; requires `expected_arn` when given (ARN mode), else only the chain and
    /// name (static mode).
    pub fn new(roots: Arc<RootCertStore>, expected_arn: Option<String>) -> Result<Self> {
        let chain = WebPkiServerVerifier::builder_with_provider(roots, super::crypto_provider())
            .build()
            .map_err(|e| Error::certificate("CA certificate", e))?;
        Ok(ServerVerifier {
            chain,
            expected_arn,
        })
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.chain
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                ) => name_rejection(end_entity, server_name).into_tls_error(),
                other => other,
            })?;
        if let Some(expected) = &self.expected_arn {
            check_arn(end_entity, expected).map_err(Rejection::into_tls_error)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// The server's view of an agent during the handshake: a certificate is required, its chain
/// must lead to the CA, and in ARN mode it must be bound to the server's own ARN. (The peer-IP
/// check needs the socket and runs after the handshake: [`check_peer_ip`].)
#[derive(Debug)]
pub struct ClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    expected_arn: Option<String>,
}

impl ClientVerifier {
    /// Trusts `roots`; requires `own_arn` when given (ARN mode).
    pub fn new(roots: Arc<RootCertStore>, own_arn: Option<String>) -> Result<Self> {
        let chain = WebPkiClientVerifier::builder_with_provider(roots, super::crypto_provider())
            .build()
            .map_err(|e| Error::certificate("CA certificate", e))?;
        Ok(ClientVerifier {
            chain,
            expected_arn: own_arn,
        })
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(expected) = &self.expected_arn {
            check_arn(end_entity, expected).map_err(Rejection::into_tls_error)?;
        }
        Ok(ClientCertVerified::assertion())
    }

    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}
