//! Private keys: generation (ECDSA P-256 by default, RSA 2048 for Go-style peers) and PEM
//! loading in the three common encodings (PKCS#1, PKCS#8, SEC1).

use std::fmt;
use std::str::FromStr;

use rcgen::KeyPair;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::error::{Error, Result};

/// Which kind of key to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256: small, fast handshakes. The default.
    #[default]
    EcdsaP256,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256 signatures: what the Go version generates.
    Rsa2048,
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
        })
    }
}

impl FromStr for KeyAlgorithm {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "ecdsa-p256" | "ecdsa" | "p256" | "ec" => Ok(KeyAlgorithm::EcdsaP256),
            "rsa-2048" | "rsa" | "rsa2048" => Ok(KeyAlgorithm::Rsa2048),
            other => Err(Error::certificate(
                "key algorithm",
                format!("unknown algorithm {other:?} (expected ecdsa-p256 or rsa-2048)"),
            )),
        }
    }
}

/// Generates a new key pair.
pub fn generate(algorithm: KeyAlgorithm) -> Result<KeyPair> {
    let generated = match algorithm {
        KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyAlgorithm::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        }
    };
    generated.map_err(|e| Error::certificate(format!("generating a {algorithm} key"), e))
}

/// Parses the first private key of a PEM document (`PRIVATE KEY`, `RSA PRIVATE KEY` or
/// `EC PRIVATE KEY`). `what` names the source in errors.
pub fn parse_private_key_pem(
    what: impl Into<String>,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        Error::certificate(
            what,
            format!("no usable PEM private key (PKCS#1, PKCS#8 or SEC1): {e}"),
        )
    })
}

/// An rcgen key pair (for signing CSRs and certificates) from a parsed private key.
pub fn key_pair(what: impl Into<String>, key: &PrivateKeyDer<'_>) -> Result<KeyPair> {
    KeyPair::try_from(key).map_err(|e| Error::certificate(what, format!("unsupported key: {e}")))
}

/// The rustls form of a key pair made by [`generate`] (rcgen serialises those as PKCS#8;
/// a loaded key keeps its own encoding, so keep its `PrivateKeyDer` instead).
pub fn generated_key_der(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(key.serialize_der().into())
}
