//! The client side of Fluidity's AWS control plane, shared by the agent and the server:
//! [`client`] makes JSON calls to Wake, Query, Kill and the CA, retried on transient failures
//! and SigV4-signed ([`sign`]) when they go to a Lambda Function URL or API Gateway, with
//! credentials from the standard AWS chain.
//!
//! Only signing and the credential chain live here (`aws-sigv4`, `aws-config`): no AWS
//! service SDK, so the agent and the server stay quick to build. The service SDKs (ECS, EC2,
//! CloudWatch, Secrets Manager) are used only by `fluidity-lambdas`.
#![forbid(unsafe_code)]

pub mod client;
pub mod sign;

pub use client::{CaClient, ControlPlaneClient, http_client, http_client_builder};
pub use sign::RequestSigner;

/// Why a control-plane call or an AWS lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An AWS API call failed.
    #[error("{context}: {reason}")]
    Aws {
        /// What was being done.
        context: String,
        /// The SDK's error, with its causes.
        reason: String,
    },
    /// No AWS credentials could be found to sign a call.
    #[error("no AWS credentials to sign the call to {url}: {reason}")]
    NoCredentials {
        /// The endpoint.
        url: String,
        /// Why the default credential chain found none.
        reason: String,
    },
    /// SigV4 signing failed.
    #[error("cannot sign the call to {url}: {reason}")]
    Signing {
        /// The endpoint.
        url: String,
        /// The signer's error.
        reason: String,
    },
    /// A control-plane endpoint answered with an error or could not be reached.
    #[error("{what} ({url}): {reason}")]
    Call {
        /// Which call (Wake, Query, Kill, CA).
        what: String,
        /// The endpoint.
        url: String,
        /// The answer or the transport error.
        reason: String,
    },
    /// What AWS answered does not make sense (no such task, no network interface, ...).
    #[error("{0}")]
    Unexpected(String),
}

impl Error {
    /// An SDK error with its whole cause chain (the SDK's `Display` says only "service error").
    pub fn aws(context: impl Into<String>, error: &(dyn std::error::Error + 'static)) -> Self {
        Error::Aws {
            context: context.into(),
            reason: client::error_chain(error),
        }
    }
}
