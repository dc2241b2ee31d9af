//! `fluidity-agent`: the command line around [`fluidity_agent::run`].

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use fluidity_agent::AgentConfig;
use fluidity_core::cli::{Flags, load_config};

/// Fluidity's local agent: an HTTP proxy that carries everything over one mutual-TLS tunnel.
/// Settings come from the YAML file, then FLUIDITY_<KEY> environment variables, then these
/// flags.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// YAML configuration file (the Go version's agent.yaml works as is).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Development mode: certificates from a local CA in the cache directory; without
    /// --server, a server runs inside this process.
    #[arg(long)]
    dev: bool,
    /// The server as host:port.
    #[arg(long)]
    server: Option<String>,
    /// Proxy listen address.
    #[arg(long)]
    local_proxy_addr: Option<String>,
    /// Proxy listen port (HTTP and SOCKS5).
    #[arg(long)]
    local_proxy_port: Option<u16>,
    /// An extra port that speaks only SOCKS5.
    #[arg(long)]
    socks_port: Option<u16>,
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
        .set("server", args.server)
        .set("local_proxy_addr", args.local_proxy_addr)
        .set("local_proxy_port", args.local_proxy_port)
        .set("socks_port", args.socks_port)
        .set(
            "cache_dir",
            args.cache_dir.map(|dir| dir.display().to_string()),
        )
        .set("log_level", args.log_level);
    let config: AgentConfig = load_config(args.config.as_deref(), &flags, |c: &AgentConfig| {
        &c.log_level
    })?;
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let address = std::net::SocketAddr::new(config.local_proxy_addr, config.local_proxy_port);
        let listener = fluidity_core::transport::listen(address).with_context(|| {
            format!("listening on {address} (is another proxy running? set local_proxy_port)")
        })?;
        let bound = listener.local_addr()?;
        let agent = fluidity_agent::Agent::start(config, bound)
            .await
            .context("starting the agent")?;
        println!(
            "Fluidity agent: HTTP and SOCKS5 proxy on {bound}\n  \
             try: curl -x http://{bound} https://example.com\n  \
             or:  curl --socks5-hostname {bound} https://example.com\n  \
             browsers: proxy {bound}, or the PAC file http://{bound}/proxy.pac"
        );
        agent
            .serve(listener, fluidity_core::shutdown::signal())
            .await?;
        tracing::info!("stopped");
        Ok(())
    })
}
