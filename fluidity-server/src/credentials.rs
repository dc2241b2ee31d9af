//! How the server authenticates: static certificates, or ARN-bound lazy certificates signed
//! by a local CA (self-hosting, development) or, on AWS, by the CA service.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// Builds the TLS acceptor the config describes.
pub fn acceptor(config: &ServerConfig) -> Result<TlsAcceptor, Error> {
    let acceptor = match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => {
            let ca = config.ca_cert_file.as_ref().ok_or_else(|| {
                Error::Config("static mode (cert_file, key_file) also needs ca_cert_file".into())
            })?;
            let identity = TlsIdentity::from_files(cert, key)?;
            let roots = root_store_file(ca)?;
            tracing::info!(cert = %cert.display(), "static certificate mode");
            TlsAcceptor::static_identity(&identity, roots)?
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::Config("cert_file and key_file go together".into()));
        }
        (None, None) => arn_acceptor(config)?,
    };
    Ok(acceptor.with_handshake_timeout(config.handshake_timeout))
}

fn arn_acceptor(config: &ServerConfig) -> Result<TlsAcceptor, Error> {
    let server_arn = config.server_arn.clone().ok_or_else(|| {
        Error::Config(
            "no certificates configured: set cert_file/key_file/ca_cert_file (static mode), \
                 or server_arn and ca_dir (ARN mode), or run with --dev"
                .into(),
        )
    })?;
    let server_ip = config
        .server_ip
        .ok_or_else(|| Error::Config("ARN mode needs server_ip (or SERVER_PUBLIC_IP)".into()))?;
    let Some(ca_dir) = &config.ca_dir else {
        let hint = if config.ca_service_url.is_some() {
            "ca_service_url is served by the AWS control plane, which this build does not include yet; "
        } else {
            ""
        };
        return Err(Error::Config(format!(
            "{hint}ARN mode needs ca_dir (a local CA directory)"
        )));
    };
    let ca = Arc::new(LocalCa::open_or_create(ca_dir, SigningOptions::default())?);
    let roots = match &config.ca_cert_file {
        Some(file) => root_store_file(file)?,
        None => root_store("local CA", ca.certificate_pem().as_bytes())?,
    };
    let mut cert_config = ServerCertConfig::new(server_arn.clone(), server_ip);
    cert_config.cache_dir = config.cache_dir.as_ref().map(|d| d.join("server"));
    let manager = Arc::new(ServerCertManager::new(cert_config, ca)?);
    tracing::info!(%server_arn, %server_ip, ca_dir = %ca_dir.display(), "ARN certificate mode");
    Ok(TlsAcceptor::arn(manager, roots)?)
}
