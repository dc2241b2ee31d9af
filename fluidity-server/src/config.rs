//! The server's configuration: the Go version's keys (reference §7.3) plus Fluidity's.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use fluidity_core::config::{CertificateSettings, ConfigKeys, duration, optional};
use fluidity_core::transport::TransportKind;
use serde::Deserialize;

/// Everything `fluidity-server` can be told. Every field has a working default.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServerConfig {
    /// Address to listen on for tunnels (default `0.0.0.0`).
    pub listen_addr: IpAddr,
    /// `tls` (default): mutual TLS on the tunnel port; `websocket`: also accept tunnels inside
    /// WebSocket upgrades on `websocket_path`, on the same port (behind a load balancer).
    pub transport: TransportKind,
    /// Where WebSocket upgrades are accepted (default `/fluidity`).
    pub websocket_path: String,
    /// CIDRs of proxies (load balancers) whose `X-Forwarded-For` names the agent; from
    /// anyone else the TCP peer is the agent (default none).
    pub trusted_proxies: Vec<String>,
    /// Port to listen on for tunnels (default 8443).
    pub listen_port: u16,
    /// Most concurrent tunnels; the next one is refused and logged (default 100). A slot is
    /// taken only after mutual authentication.
    pub max_connections: usize,
    /// Most TLS handshakes in flight (unauthenticated connections); when full, a new
    /// connection evicts the oldest handshake (default 256).
    pub max_handshakes: usize,
    /// Most handshakes in flight from one source address (an IPv6 /64 counts as one);
    /// further connections from it are closed at once (default 8).
    pub max_handshakes_per_ip: usize,
    /// Most streams open at once on one tunnel; the agent's next open is refused (default
    /// 1024). Each open stream holds an upstream connection and a file descriptor.
    pub max_streams: usize,
    /// `error`, `warn`, `info` (default), `debug` or `trace`.
    pub log_level: String,

    /// Where certificates come from (`cert_file`/`key_file`/`ca_cert_file`, `ca_dir`, or
    /// `ca_service_url` with `ca_cert_file` or `ca_cert`), and where the server's own is cached
    /// (`cache_dir`).
    #[serde(flatten)]
    pub certificates: CertificateSettings,
    /// The server's task ARN (else `SERVER_ARN` or ECS metadata).
    #[serde(deserialize_with = "optional::deserialize")]
    pub server_arn: Option<String>,
    /// The IP agents dial (alias `server_public_ip`; else `SERVER_PUBLIC_IP`).
    #[serde(deserialize_with = "optional::deserialize")]
    pub server_ip: Option<IpAddr>,

    /// Extra CA certificates (PEM) to trust for HTTPS and `wss://` targets, besides the
    /// Mozilla roots: for private or corporate CAs.
    #[serde(deserialize_with = "optional::deserialize")]
    pub target_ca_file: Option<PathBuf>,
    /// Address of the health and metrics endpoint (`GET /health`, `GET /metrics`); off when
    /// unset.
    #[serde(deserialize_with = "optional::deserialize")]
    pub health_addr: Option<std::net::SocketAddr>,
    /// Print activity metrics (CloudWatch Embedded Metric Format) to stdout this often; off
    /// when unset. On ECS, 60 s feeds the Sleep function. Dimensions come from
    /// `ECS_CLUSTER_NAME` / `ECS_SERVICE_NAME`.
    #[serde(default, deserialize_with = "duration::deserialize_optional")]
    pub metrics_interval: Option<Duration>,
    /// CIDRs the server never connects to. Unset: the server's own addresses and everything
    /// that is not the public internet (loopback, private, shared, link-local and metadata,
    /// multicast, broadcast, reserved and documentation ranges; `docs/configuration.md` lists
    /// them). A list replaces the default; `[]` allows everything.
    pub egress_deny: Option<Vec<String>>,
    /// CIDRs allowed even though `egress_deny` covers them (e.g. one internal service).
    pub egress_allow: Vec<String>,
    /// How long to wait for in-flight streams on SIGTERM/SIGINT (default 10 s).
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Deadline of each whole TLS handshake (default 10 s).
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// Deadline for a connection's complete TLS ClientHello (default 5 s).
    #[serde(with = "duration")]
    pub client_hello_timeout: Duration,
    /// Close a tunnel whose agent is silent (no heartbeat answer, no bytes) or reads nothing
    /// we send for this long (default 30 s).
    #[serde(with = "duration")]
    pub dead_agent_timeout: Duration,
    /// Deadline for connecting to a target (default 10 s).
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Development mode: a local CA under `cache_dir`, a fixed development ARN, 127.0.0.1.
    pub dev: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen_addr: IpAddr::from([0, 0, 0, 0]),
            transport: TransportKind::Tls,
            websocket_path: "/fluidity".into(),
            trusted_proxies: Vec::new(),
            listen_port: 8443,
            max_connections: 100,
            max_handshakes: 256,
            max_handshakes_per_ip: 8,
            max_streams: 1024,
            log_level: "info".into(),
            certificates: CertificateSettings::default(),
            server_arn: None,
            server_ip: None,
            target_ca_file: None,
            health_addr: None,
            metrics_interval: None,
            egress_deny: None,
            egress_allow: Vec::new(),
            shutdown_grace: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            client_hello_timeout: Duration::from_secs(5),
            dead_agent_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            dev: false,
        }
    }
}

impl ConfigKeys for ServerConfig {
    const KEYS: &'static [&'static str] = &[
        "listen_addr",
        "transport",
        "websocket_path",
        "trusted_proxies",
        "listen_port",
        "max_connections",
        "max_handshakes",
        "max_handshakes_per_ip",
        "max_streams",
        "log_level",
        "server_arn",
        "server_ip",
        "target_ca_file",
        "health_addr",
        "metrics_interval",
        "egress_deny",
        "egress_allow",
        "shutdown_grace",
        "handshake_timeout",
        "client_hello_timeout",
        "dead_agent_timeout",
        "connect_timeout",
        "dev",
    ];
    const BASE: &'static [&'static str] = CertificateSettings::KEYS;
    const ALIASES: &'static [(&'static str, &'static str)] = &[
        ("cert_cache_dir", "cache_dir"),
        ("ca_lambda_url", "ca_service_url"),
        ("server_public_ip", "server_ip"),
    ];
}
