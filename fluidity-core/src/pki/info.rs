//! What a certificate says about itself: the ARN it is bound to, its IP SANs and validity.

use std::net::IpAddr;
use std::time::SystemTime;

use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use crate::error::{Error, Result};

/// The facts Fluidity's checks use, read from one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Subject CommonName, if any.
    pub common_name: Option<String>,
    /// `URI` SANs that are ARNs (`arn:...`).
    pub arn_uris: Vec<String>,
    /// IP address SANs.
    pub ip_addresses: Vec<IpAddr>,
    /// `DNS` SANs.
    pub dns_names: Vec<String>,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// Serial number, hex.
    pub serial: String,
    /// Issuer distinguished name, as text.
    pub issuer: String,
    /// Subject public key info, DER (to match a certificate with its key).
    pub public_key_info: Vec<u8>,
}

impl CertificateInfo {
    /// Parses a DER certificate.
    pub fn parse(der: &[u8]) -> Result<Self> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| Error::certificate("certificate", format!("not valid X.509: {e}")))?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let mut info = CertificateInfo {
            common_name,
            arn_uris: Vec::new(),
            ip_addresses: Vec::new(),
            dns_names: Vec::new(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            serial: cert.raw_serial_as_string().replace(':', ""),
            issuer: cert.issuer().to_string(),
            public_key_info: cert.public_key().raw.to_vec(),
        };
        for extension in cert.extensions() {
            if let ParsedExtension::SubjectAlternativeName(san) = extension.parsed_extension() {
                for name in &san.general_names {
                    info.add_name(name);
                }
            }
        }
        Ok(info)
    }

    /// Records one SAN entry.
    pub(crate) fn add_name(&mut self, name: &GeneralName<'_>) {
        match name {
            GeneralName::URI(uri) if uri.starts_with("arn:") => {
                self.arn_uris.push((*uri).to_owned());
            }
            GeneralName::IPAddress(bytes) => {
                if let Some(ip) = ip_from_san(bytes) {
                    self.ip_addresses.push(ip);
                }
            }
            GeneralName::DNSName(name) => self.dns_names.push((*name).to_owned()),
            _ => {}
        }
    }

    /// The ARN this certificate is bound to: the `URI` SAN when present (it has no length
    /// limit), else the CommonName (Go peers only set that).
    pub fn arn(&self) -> Option<&str> {
        self.arn_uris
            .first()
            .map(String::as_str)
            .or(self.common_name.as_deref())
    }

    /// Whether `ip` is one of the IP SANs (IPv4-mapped IPv6 counts as IPv4).
    pub fn has_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.ip_addresses.iter().any(|san| san.to_canonical() == ip)
    }

    /// Whether the certificate is valid at `now` and more than `min_remaining` (a fraction of
    /// its whole lifetime, e.g. 0.1) of that lifetime is left.
    pub fn is_fresh(&self, now: SystemTime, min_remaining: f64) -> bool {
        let now = super::unix_seconds(now);
        if now < self.not_before || now >= self.not_after {
            return false;
        }
        let lifetime = (self.not_after - self.not_before) as f64;
        let remaining = (self.not_after - now) as f64;
        remaining > lifetime * min_remaining
    }
}

/// An IP SAN's 4 or 16 bytes as an address.
pub(crate) fn ip_from_san(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}
