//! The Fluidity control plane: Wake, Query, CA, Sleep and Kill.
//!
//! Each function is a plain async handler ([`handlers`]) over small traits ([`backend`]):
//! the ECS service, the server's activity metrics, the CA's key. [`aws`] implements them with
//! the AWS SDK and [`local`] with files and the server's `/health`; [`app`] puts them
//! together, and the binary serves them through the Lambda runtime or over plain HTTP
//! ([`serve`]). The handlers are tested with fakes. Cluster and service
//! come from the environment only, never from request bodies.
//!
//! AWS SDK crates belong here, never in `fluidity-core`.
#![forbid(unsafe_code)]

pub mod app;
pub mod aws;
pub mod backend;
pub mod event;
pub mod handlers;
pub mod local;
pub mod serve;
pub mod tasks;

pub use app::{ControlPlane, Function, LocalOverrides, Settings};

pub use fluidity_core;

use std::borrow::Cow;

use fluidity_core::BoxError;

/// Why a handler failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The AWS (or other) backend failed.
    #[error("{context}: {}", fluidity_aws::error_chain(.source.as_ref()))]
    Backend {
        /// What was being done (for AWS calls, the API action).
        context: Cow<'static, str>,
        /// The backend's error (an AWS SDK error keeps its whole cause chain).
        #[source]
        source: BoxError,
    },
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The configured service does not exist.
    #[error("service {service} not found in cluster {cluster}")]
    ServiceNotFound {
        /// The cluster.
        cluster: String,
        /// The service.
        service: String,
    },
    /// The environment or command line is wrong.
    #[error("configuration: {0}")]
    Settings(String),
    /// The CA refused or failed.
    #[error(transparent)]
    Ca(#[from] fluidity_core::Error),
}

impl Error {
    /// Wraps a backend failure; `source` may be an error or a message.
    pub fn backend(context: impl Into<Cow<'static, str>>, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            context: context.into(),
            source: source.into(),
        }
    }

    /// The HTTP status this error maps to.
    pub fn status(&self) -> u16 {
        match self {
            Error::BadRequest(_) => 400,
            Error::Ca(fluidity_core::Error::CsrRefused(
                fluidity_core::pki::CsrRefusal::NotAuthorised(_),
            )) => 403,
            Error::Ca(fluidity_core::Error::CsrRefused(_)) => 400,
            _ => 500,
        }
    }
}
