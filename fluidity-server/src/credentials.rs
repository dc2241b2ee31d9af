//! How the server authenticates: static certificates, or ARN-bound lazy certificates signed
//! by a local CA (self-hosting, development) or, on AWS, by the CA service.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fluidity_aws::{CaClient, ControlPlaneClient, RequestSigner};
use fluidity_core::issue::CertIssuer;
use fluidity_core::pki::local_ca::LocalCa;
use fluidity_core::pki::server_certs::{ServerCertConfig, ServerCertManager};
use fluidity_core::pki::{SigningOptions, TlsIdentity, root_store, root_store_file};
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
    let dir = config.cache_dir.get_or_insert_with(default_dev_dir).clone();
    config.ca_dir.get_or_insert_with(|| dir.join("ca"));
    config.server_arn.get_or_insert_with(|| DEV_ARN.to_owned());
    config.server_ip.get_or_insert(IpAddr::from([127, 0, 0, 1]));
}

/// Builds the TLS acceptor the config describes, and in ARN mode the manager of the server's
/// certificate (run its `maintain` beside the accept loop).
pub fn acceptor(
    config: &ServerConfig,
) -> Result<(TlsAcceptor, Option<Arc<ServerCertManager>>), Error> {
    let (acceptor, manager) = match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => {
            let ca = config.ca_cert_file.as_ref().ok_or_else(|| {
                Error::Config("static mode (cert_file, key_file) also needs ca_cert_file".into())
            })?;
            let identity = TlsIdentity::from_files(cert, key)?;
            let roots = root_store_file(ca)?;
            tracing::info!(cert = %cert.display(), "static certificate mode");
            (TlsAcceptor::static_identity(&identity, roots)?, None)
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::Config("cert_file and key_file go together".into()));
        }
        (None, None) => {
            let (acceptor, manager) = arn_acceptor(config)?;
            (acceptor, Some(manager))
        }
    };
    let acceptor = acceptor
        .with_handshake_timeout(config.handshake_timeout)
        .with_client_hello_timeout(config.client_hello_timeout);
    Ok((acceptor, manager))
}

fn arn_acceptor(config: &ServerConfig) -> Result<(TlsAcceptor, Arc<ServerCertManager>), Error> {
    let server_arn = config.server_arn.clone().ok_or_else(|| {
        Error::Config(
            "no certificates configured: set cert_file/key_file/ca_cert_file (static mode), \
                 or server_arn and ca_dir (ARN mode), or run with --dev"
                .into(),
        )
    })?;
    // With the CA service, the CA decides the IP (the public IP it saw the request come from);
    // a local CA signs what it is asked, so it must be told.
    let server_ip = config.server_ip;
    if server_ip.is_none() && config.ca_service_url.is_none() {
        return Err(Error::Config(
            "ARN mode with a local CA needs server_ip (or SERVER_PUBLIC_IP): the IP agents dial"
                .into(),
        ));
    }
    // The CA that agents' certificates must chain to: configured, or the local CA's own.
    let configured_roots = match (&config.ca_cert_file, &config.ca_cert) {
        (Some(file), _) => Some(root_store_file(file)?),
        (None, Some(pem)) => Some(root_store("ca_cert", pem.as_bytes())?),
        (None, None) => None,
    };
    let (issuer, roots, source): (Arc<dyn CertIssuer>, _, String) =
        match (&config.ca_dir, &config.ca_service_url) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "set either ca_dir (a local CA) or ca_service_url (the CA service), not both"
                        .into(),
                ));
            }
            (Some(ca_dir), None) => {
                let ca = Arc::new(LocalCa::open_or_create(ca_dir, SigningOptions::default())?);
                let roots = match configured_roots {
                    Some(roots) => roots,
                    None => root_store("local CA", ca.certificate_pem().as_bytes())?,
                };
                (ca, roots, format!("local CA in {}", ca_dir.display()))
            }
            (None, Some(url)) => {
                let roots = configured_roots.ok_or_else(|| {
                    Error::Config(
                        "ca_service_url also needs the CA certificate: ca_cert_file, or ca_cert \
                         (PEM text, e.g. FLUIDITY_CA_CERT from the CA secret's ca_cert field)"
                            .into(),
                    )
                })?;
                let client = ControlPlaneClient::new(
                    fluidity_aws::http_client().map_err(|e| Error::Config(e.to_string()))?,
                    Arc::new(RequestSigner::new()),
                );
                (
                    Arc::new(CaClient::new(client, url.clone())),
                    roots,
                    format!("CA service {url}"),
                )
            }
            (None, None) => {
                return Err(Error::Config(
                "ARN mode needs ca_dir (a local CA directory) or ca_service_url (the CA service)"
                    .into(),
            ));
            }
        };
    let mut cert_config = ServerCertConfig::new(server_arn.clone(), server_ip);
    cert_config.cache_dir = config.cache_dir.as_ref().map(|d| d.join("server"));
    let manager = Arc::new(ServerCertManager::new(cert_config, issuer)?);
    tracing::info!(%server_arn, server_ip = ?server_ip, ca = %source, "ARN certificate mode");
    Ok((TlsAcceptor::arn(manager.clone(), roots)?, manager))
}
