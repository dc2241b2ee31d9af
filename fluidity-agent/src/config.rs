//! The agent's configuration: the Go version's keys (reference §7.2) plus Fluidity's.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use fluidity_core::config::{CertificateSettings, ConfigKeys, Secret, duration, optional};
use fluidity_core::transport::TransportKind;
use serde::Deserialize;

/// Everything `fluidity-agent` can be told. Every field has a working default.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct AgentConfig {
    /// Address the proxy listens on (default `127.0.0.1`; anything else needs `proxy_auth`
    /// to be safe, and is warned about without it).
    pub local_proxy_addr: IpAddr,
    /// Port the proxy listens on (default 8080).
    pub local_proxy_port: u16,
    /// `error`, `warn`, `info` (default), `debug` or `trace`.
    pub log_level: String,

    /// The server's address as `host:port` (alternative to `server_ip` + `server_port`).
    #[serde(deserialize_with = "optional::deserialize")]
    pub server: Option<String>,
    /// The server's IP (alias `server_public_ip`).
    #[serde(deserialize_with = "optional::deserialize")]
    pub server_ip: Option<IpAddr>,
    /// The server's tunnel port (default 8443).
    pub server_port: u16,
    /// Static mode: the name to verify in the server's certificate (default: `server_ip`).
    #[serde(deserialize_with = "optional::deserialize")]
    pub server_name: Option<String>,
    /// ARN mode: the server's task ARN.
    #[serde(deserialize_with = "optional::deserialize")]
    pub server_arn: Option<String>,
    /// ARN mode: this agent's IP as the server sees it (alias `agent_public_ip`; default: the
    /// local address the route to the server uses).
    #[serde(deserialize_with = "optional::deserialize")]
    pub agent_ip: Option<IpAddr>,
    /// Where certificates come from (`cert_file`/`key_file`/`ca_cert_file`, `ca_dir`, or
    /// `ca_service_url` with `ca_cert_file`), and where they are cached (`cache_dir`).
    #[serde(flatten)]
    pub certificates: CertificateSettings,

    /// `tls` (default): mutual TLS straight to the server's port; `websocket`: inside a
    /// WebSocket to `websocket_url` (through HTTP-only proxies and load balancers).
    pub transport: TransportKind,
    /// With `transport: websocket`: `ws://` or `wss://host[:port]/path` (the server's or its
    /// load balancer's). The server is still verified as itself (`server`/`server_ip`, ARN).
    #[serde(deserialize_with = "optional::deserialize")]
    pub websocket_url: Option<String>,
    /// Extra CA certificates (PEM) trusted for a `wss://` endpoint, besides the Mozilla roots.
    #[serde(deserialize_with = "optional::deserialize")]
    pub websocket_ca_file: Option<PathBuf>,

    /// Lifecycle endpoints of the AWS control plane (aliases `*_lambda_url`).
    #[serde(deserialize_with = "optional::deserialize")]
    pub wake_endpoint: Option<String>,
    /// See `wake_endpoint`.
    #[serde(deserialize_with = "optional::deserialize")]
    pub query_endpoint: Option<String>,
    /// See `wake_endpoint`.
    #[serde(deserialize_with = "optional::deserialize")]
    pub kill_endpoint: Option<String>,

    /// How long to wait for the control plane to report a ready server (default 180 s; a
    /// Fargate cold start takes 60–90 s).
    #[serde(with = "duration")]
    pub startup_timeout: Duration,
    /// An extra port (on `local_proxy_addr`) that speaks only SOCKS5, for programs that want
    /// one of their own. The main port takes SOCKS5 too.
    #[serde(deserialize_with = "optional::deserialize")]
    pub socks_port: Option<u16>,
    /// What `/proxy.pac` offers browsers: `http` (default) or `socks5` (SOCKS5, with the HTTP
    /// proxy as the fallback).
    pub pac_protocol: PacProtocol,
    /// `user:password`: require HTTP Basic proxy authentication (407 otherwise), and the same
    /// as SOCKS5 username and password.
    #[serde(deserialize_with = "optional::deserialize")]
    pub proxy_auth: Option<Secret>,
    /// `http://[user:password@]host:port`: reach the server through this HTTP proxy
    /// (CONNECT). Never printed: it may hold credentials.
    #[serde(deserialize_with = "optional::deserialize")]
    pub upstream_proxy: Option<Secret>,
    /// Most proxy client connections served at once; beyond it new ones wait in the listen
    /// backlog (default 1024).
    pub max_clients: usize,
    /// Most streams open at once on the tunnel; a client beyond it gets 503 (default 1024).
    /// The server has its own limit.
    pub max_streams: usize,
    /// A client's request head must arrive within this (default 10 s): slow-loris clients
    /// are closed.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// How long a new request waits for the tunnel to come (back) up (default 30 s).
    #[serde(with = "duration")]
    pub reconnect_wait: Duration,
    /// A server silent this long is dead: the tunnel is dropped and re-established (default
    /// 30 s; heartbeats go out every third of it). Rust servers only: Go servers do not
    /// answer heartbeats.
    #[serde(with = "duration")]
    pub dead_server_timeout: Duration,
    /// Development mode: with no server given, run one in this process; certificates from a
    /// local CA under `cache_dir`.
    pub dev: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            local_proxy_addr: IpAddr::from([127, 0, 0, 1]),
            local_proxy_port: 8080,
            log_level: "info".into(),
            server: None,
            server_ip: None,
            server_port: 8443,
            server_name: None,
            server_arn: None,
            agent_ip: None,
            certificates: CertificateSettings::default(),
            transport: TransportKind::Tls,
            websocket_url: None,
            websocket_ca_file: None,
            wake_endpoint: None,
            query_endpoint: None,
            kill_endpoint: None,
            startup_timeout: Duration::from_secs(180),
            socks_port: None,
            pac_protocol: PacProtocol::Http,
            proxy_auth: None,
            upstream_proxy: None,
            max_clients: 1024,
            max_streams: 1024,
            header_read_timeout: Duration::from_secs(10),
            reconnect_wait: Duration::from_secs(30),
            dead_server_timeout: Duration::from_secs(30),
            dev: false,
        }
    }
}

/// What the PAC file tells browsers to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PacProtocol {
    /// `PROXY host:port`.
    #[default]
    Http,
    /// `SOCKS5 host:port; PROXY host:port`.
    Socks5,
}

impl AgentConfig {
    /// The server address from `server` or `server_ip` + `server_port`.
    pub fn server_address(&self) -> Result<Option<SocketAddr>, String> {
        if let Some(server) = &self.server {
            let mut addresses = std::net::ToSocketAddrs::to_socket_addrs(server.as_str())
                .map_err(|e| format!("server {server:?}: {e} (expected host:port)"))?;
            return addresses
                .next()
                .map(Some)
                .ok_or_else(|| format!("server {server:?} resolves to no address"));
        }
        Ok(self
            .server_ip
            .map(|ip| SocketAddr::new(ip, self.server_port)))
    }
}

impl ConfigKeys for AgentConfig {
    const KEYS: &'static [&'static str] = &[
        "local_proxy_addr",
        "local_proxy_port",
        "log_level",
        "server",
        "server_ip",
        "server_port",
        "server_name",
        "server_arn",
        "agent_ip",
        "transport",
        "websocket_url",
        "websocket_ca_file",
        "wake_endpoint",
        "query_endpoint",
        "kill_endpoint",
        "startup_timeout",
        "socks_port",
        "pac_protocol",
        "proxy_auth",
        "upstream_proxy",
        "max_clients",
        "max_streams",
        "header_read_timeout",
        "reconnect_wait",
        "dead_server_timeout",
        "dev",
    ];
    const BASE: &'static [&'static str] = CertificateSettings::KEYS;
    const ALIASES: &'static [(&'static str, &'static str)] = &[
        ("server_public_ip", "server_ip"),
        ("agent_public_ip", "agent_ip"),
        ("cert_cache_dir", "cache_dir"),
        ("wake_lambda_url", "wake_endpoint"),
        ("query_lambda_url", "query_endpoint"),
        ("kill_lambda_url", "kill_endpoint"),
        ("ca_lambda_url", "ca_service_url"),
    ];
}
