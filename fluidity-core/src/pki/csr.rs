//! Certificate signing requests: building Fluidity's (CN and `URI` SAN = server ARN, IP SANs)
//! and parsing/verifying anyone's, Go peers' RSA requests included.

use std::net::IpAddr;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::{FromDer, ParsedExtension};

use super::ca::CsrRefusal;
use super::info::ip_from_san;
use crate::error::{Error, Result};

/// Builds a PEM CSR for `key`: CN = `arn`, a `URI` SAN = `arn` (a real task ARN is longer than
/// X.509's 64-character CommonName bound; strict parsers read the URI), and `ips` as IP SANs.
pub fn build(key: &KeyPair, arn: &str, ips: &[IpAddr]) -> Result<String> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, arn);
    params.distinguished_name = name;
    let uri = arn
        .to_owned()
        .try_into()
        .map_err(|e| Error::certificate("certificate request", format!("ARN {arn:?}: {e}")))?;
    params.subject_alt_names.push(SanType::URI(uri));
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(ip.to_canonical())));
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(|e| Error::certificate("certificate request", e))
}

/// A CSR whose signature checked out, with the fields the CA decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningRequest {
    /// Subject CommonName, if any.
    pub common_name: Option<String>,
    /// `URI` SANs.
    pub uris: Vec<String>,
    /// IP SANs.
    pub ip_addresses: Vec<IpAddr>,
    /// Whether the request asks for CA rights (basicConstraints CA, or keyCertSign/cRLSign).
    pub requests_ca: bool,
    /// The requester's public key, SubjectPublicKeyInfo DER.
    pub public_key_info: Vec<u8>,
}

impl SigningRequest {
    /// Parses a PEM `CERTIFICATE REQUEST` and verifies its self-signature.
    pub fn parse_pem(pem: &str) -> std::result::Result<Self, CsrRefusal> {
        let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| CsrRefusal::Unparseable(format!("not a PEM CERTIFICATE REQUEST: {e}")))?;
        Self::parse_der(der.as_ref())
    }

    /// Parses a DER CSR and verifies its self-signature.
    pub fn parse_der(der: &[u8]) -> std::result::Result<Self, CsrRefusal> {
        let (rest, csr) = X509CertificationRequest::from_der(der)
            .map_err(|e| CsrRefusal::Unparseable(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrRefusal::Unparseable(
                "trailing bytes after the request".into(),
            ));
        }
        csr.verify_signature()
            .map_err(|_| CsrRefusal::InvalidSignature)?;
        let info = &csr.certification_request_info;
        let common_name = info
            .subject
            .iter_common_name()
            .next()
            .map(|cn| {
                cn.as_str()
                    .map(str::to_owned)
                    .map_err(|e| CsrRefusal::Unparseable(format!("CommonName: {e}")))
            })
            .transpose()?;
        let mut request = SigningRequest {
            common_name,
            uris: Vec::new(),
            ip_addresses: Vec::new(),
            requests_ca: false,
            public_key_info: info.subject_pki.raw.to_vec(),
        };
        for extension in csr.requested_extensions().into_iter().flatten() {
            match extension {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            x509_parser::prelude::GeneralName::URI(uri) => {
                                request.uris.push((*uri).to_owned());
                            }
                            x509_parser::prelude::GeneralName::IPAddress(bytes) => {
                                let ip = ip_from_san(bytes).ok_or_else(|| {
                                    CsrRefusal::Unparseable(format!(
                                        "IP SAN of {} bytes",
                                        bytes.len()
                                    ))
                                })?;
                                request.ip_addresses.push(ip);
                            }
                            // DNS and other names are not used by Fluidity and not copied.
                            _ => {}
                        }
                    }
                }
                ParsedExtension::BasicConstraints(constraints) if constraints.ca => {
                    request.requests_ca = true;
                }
                ParsedExtension::KeyUsage(usage) if usage.key_cert_sign() || usage.crl_sign() => {
                    request.requests_ca = true;
                }
                _ => {}
            }
        }
        Ok(request)
    }
}
