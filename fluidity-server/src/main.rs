//! `fluidity-server`: the command line around [`fluidity_server::run`].

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use fluidity_core::cli::{Flags, load_config};
use fluidity_server::ServerConfig;

/// Fluidity's tunnel server: accepts mutual-TLS tunnels from agents and makes the real
/// requests. Settings come from the YAML file, then FLUIDITY_<KEY> environment variables,
/// then these flags.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// YAML configuration file (the Go version's server.yaml works as is).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Development mode: a local CA and certificates under the cache directory, listening on
    /// 127.0.0.1:8443 unless told otherwise.
    #[arg(long)]
    dev: bool,
    /// Address to listen on.
    #[arg(long)]
    listen_addr: Option<String>,
    /// Port to listen on.
    #[arg(long)]
    listen_port: Option<u16>,
    /// Health and metrics endpoint, e.g. 127.0.0.1:9090.
    #[arg(long)]
    health_addr: Option<String>,
    /// Certificate cache (and, with --dev, CA) directory.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long)]
    log_level: Option<String>,
}

fn main() -> anyhow::Result<()> {
    fluidity_core::cli::keep_freed_buffers();
    let args = Args::parse();
    let mut flags = Flags::new();
    flags
        .switch("dev", args.dev)
        .set("listen_addr", args.listen_addr.as_ref())
        .set("listen_port", args.listen_port)
        .set("health_addr", args.health_addr)
        .set(
            "cache_dir",
            args.cache_dir.map(|dir| dir.display().to_string()),
        )
        .set("log_level", args.log_level);
    let mut config: ServerConfig =
        load_config(args.config.as_deref(), &flags, |c: &ServerConfig| {
            &c.log_level
        })?;
    if config.dev
        && config.listen_addr == ServerConfig::default().listen_addr
        && args.listen_addr.is_none()
    {
        config.listen_addr = [127, 0, 0, 1].into();
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let address = std::net::SocketAddr::new(config.listen_addr, config.listen_port);
        let listener = fluidity_core::transport::listen(address)
            .with_context(|| format!("listening on {address}"))?;
        let mut config = config;
        fluidity_server::ecs::discover(&mut config, |k| std::env::var(k).ok())
            .await
            .context("finding the server's identity")?;
        let server = fluidity_server::Server::new(config).context("starting the server")?;
        if server.config().dev {
            let dir = server
                .config()
                .certificates
                .cache_dir
                .clone()
                .unwrap_or_default();
            println!(
                "fluidity-server (development) listening on {}; CA and certificates in {}\n\
                 connect an agent with: fluidity-agent --dev --server {}",
                listener.local_addr()?,
                dir.display(),
                listener.local_addr()?
            );
        }
        server
            .serve(listener, fluidity_core::shutdown::signal())
            .await?;
        tracing::info!("stopped");
        Ok(())
    })
}
