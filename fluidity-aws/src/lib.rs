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

pub use fluidity_core::BoxError;

/// Why a control-plane call could not be made or failed. Each variant keeps its cause as the
/// error's `source()`; the message includes the causes too, because the SDK's and reqwest's
/// own messages omit theirs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The HTTPS client for control-plane calls could not be built.
    #[error("building the HTTPS client for the control plane: {}", error_chain(.0.as_ref()))]
    HttpClient(#[source] BoxError),
    /// No AWS credentials could be found to sign a call.
    #[error("no AWS credentials to sign the call to {url}: {}", error_chain(.source.as_ref()))]
    NoCredentials {
        /// The endpoint.
        url: String,
        /// Why the default credential chain found none.
        #[source]
        source: BoxError,
    },
    /// SigV4 signing failed.
    #[error("cannot sign the call to {url}: {}", error_chain(.source.as_ref()))]
    Signing {
        /// The endpoint.
        url: String,
        /// The signer's error.
        #[source]
        source: BoxError,
    },
    /// A control-plane endpoint answered with an error or could not be reached.
    #[error("{what} ({url}): {source}")]
    Call {
        /// Which call (Wake, Query, Kill, CA).
        what: String,
        /// The endpoint.
        url: String,
        /// What went wrong.
        #[source]
        source: CallError,
    },
}

/// How one control-plane call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The request could not be encoded as JSON.
    #[error("encoding the request: {0}")]
    Encode(#[source] serde_json::Error),
    /// The endpoint could not be reached, or the connection failed mid-answer.
    #[error("{}", error_chain(.0))]
    Unreachable(#[source] reqwest::Error),
    /// The endpoint answered with an error (an HTTP error status, a proxy-wrapped error, or
    /// an `error` field in a 200 answer, the Go functions' habit).
    #[error("HTTP {status}: {message}")]
    Answered {
        /// The HTTP status.
        status: u16,
        /// The endpoint's message (at most 512 bytes of an unstructured answer).
        message: String,
    },
    /// The answer was larger than the client reads.
    #[error("HTTP {status}: answer larger than {limit} bytes")]
    TooLarge {
        /// The HTTP status.
        status: u16,
        /// The limit in bytes.
        limit: usize,
    },
    /// The answer is JSON but not the expected shape.
    #[error("unexpected answer: {0}")]
    UnexpectedAnswer(#[source] serde_json::Error),
}

impl CallError {
    /// The HTTP status the endpoint answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Answered { status, .. } | CallError::TooLarge { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

/// An error with its causes, `: `-separated (the AWS SDK's and reqwest's `Display` omit them).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their source in their own message; print each cause once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
