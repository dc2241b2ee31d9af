//! How the server authenticates: static certificates, or ARN-bound certificates signed
//! by a local CA (self-hosting, development) or, on AWS, by the CA service.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fluidity_aws::{CaClient, ControlPlaneClient, RequestSigner};
use fluidity_core::CertIssuer;
use fluidity_core::pki::CredentialSource;
use fluidity_core::pki::server_certs::{ServerCertConfig, ServerCertManager};
use fluidity_core::tls::TlsAcceptor;

use crate::{Error, ServerConfig};

/// The ARN a development server (and a development agent) uses.
pub const DEV_ARN: &str = "arn:aws:ecs:local:000000000000:task/fluidity-dev/development";

/// Where development state lives when `cache_dir` is not set.
pub fn default_dev_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("fluidity")
        .join("dev")
}

/// Applies `--dev` defaults to what the config leaves open.
pub fn apply_dev_defaults(config: &mut ServerConfig) {
    let _ = dev_identity_defaults(&mut config.certificates, &mut config.server_arn);
    config.server_ip.get_or_insert(IpAddr::from([127, 0, 0, 1]));
}

/// What development mode means on both sides, where the config leaves it open: the cache
/// directory, the local CA inside it, and the development ARN. Returns the cache directory.
pub fn dev_identity_defaults(
    certificates: &mut fluidity_core::config::CertificateSettings,
    server_arn: &mut Option<String>,
) -> PathBuf {
    let dir = certificates
        .cache_dir
        .get_or_insert_with(default_dev_dir)
        .clone();
    certificates.ca_dir.get_or_insert_with(|| dir.join("ca"));
    server_arn.get_or_insert_with(|| DEV_ARN.to_owned());
    dir
}

/// The CA service as a `CertIssuer`: SigV4-signed calls (with the task role on ECS).
pub fn ca_service(url: &str) -> Result<Arc<dyn CertIssuer>, Error> {
    let client = ControlPlaneClient::new(
        fluidity_aws::http_client().map_err(|e| Error::Config(e.to_string()))?,
        Arc::new(RequestSigner::new()),
    );
    Ok(Arc::new(CaClient::new(client, url.to_owned())))
}

/// Builds the TLS acceptor the config describes, and in ARN mode the manager of the server's
/// certificate (run its `maintain` beside the accept loop).
pub fn acceptor(
    config: &ServerConfig,
) -> Result<(TlsAcceptor, Option<Arc<ServerCertManager>>), Error> {
    let source = CredentialSource::resolve(&config.certificates)?;
    tracing::info!(certificates = %source.describe(), "certificate source");
    let (acceptor, manager) = match source {
        CredentialSource::Static { identity, roots } => {
            (TlsAcceptor::static_identity(&identity, roots)?, None)
        }
        CredentialSource::LocalCa { ca, roots } => {
            let (acceptor, manager) = arn_acceptor(config, ca, roots)?;
            (acceptor, Some(manager))
        }
        CredentialSource::CaService { url, roots } => {
            let (acceptor, manager) = arn_acceptor(config, ca_service(&url)?, roots)?;
            (acceptor, Some(manager))
        }
    };
    let acceptor = acceptor
        .with_handshake_timeout(config.handshake_timeout)
        .with_client_hello_timeout(config.client_hello_timeout);
    Ok((acceptor, manager))
}

fn arn_acceptor(
    config: &ServerConfig,
    issuer: Arc<dyn CertIssuer>,
    roots: Arc<rustls::RootCertStore>,
) -> Result<(TlsAcceptor, Arc<ServerCertManager>), Error> {
    let server_arn = config.server_arn.clone().ok_or_else(|| {
        Error::Config(
            "ARN mode needs the server's task ARN: server_arn (or SERVER_ARN, or the ECS task \
             metadata)"
                .into(),
        )
    })?;
    // With the CA service, the CA decides the IP (the public IP it saw the request come from);
    // a local CA signs what it is asked, so it must be told.
    let server_ip = config.server_ip;
    if server_ip.is_none() && config.certificates.ca_service_url.is_none() {
        return Err(Error::Config(
            "ARN mode with a local CA needs server_ip (or SERVER_PUBLIC_IP): the IP agents dial"
                .into(),
        ));
    }
    let mut cert_config = ServerCertConfig::new(server_arn.clone(), server_ip);
    cert_config.cache_dir = config
        .certificates
        .cache_dir
        .as_ref()
        .map(|d| d.join("server"));
    let manager = Arc::new(ServerCertManager::new(cert_config, issuer)?);
    tracing::info!(%server_arn, server_ip = ?server_ip, "ARN certificate mode");
    Ok((TlsAcceptor::arn(manager.clone(), roots)?, manager))
}
