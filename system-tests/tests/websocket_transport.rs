//! The tunnel inside a WebSocket, through the middleboxes it is for: a TLS-terminating
//! reverse proxy (nginx, as a load balancer would be) and an HTTP proxy (tinyproxy, in
//! websocket_and_interop.rs, on both transports). Every end-to-end test in e2e.rs and
//! websocket_and_interop.rs also runs over the WebSocket transport (`<test>::websocket`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::{Carrier, Tunnel, curl, free_port, http_origin, throwaway_server_certificate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// nginx terminating TLS on 127.0.0.1:`port` with a throwaway certificate and forwarding
/// WebSocket upgrades on `/fluidity` to `upstream` from the address 127.0.0.4, adding
/// `X-Forwarded-For`. Returns the child and the CA file the agent must trust.
async fn nginx(
    dir: &std::path::Path,
    port: u16,
    upstream: std::net::SocketAddr,
) -> (tokio::process::Child, std::path::PathBuf) {
    let (ca, cert, key) = throwaway_server_certificate(dir, "balancer");
    let config = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &config,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/nginx-error.log info;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log {d}/nginx-access.log;\n  client_body_temp_path {d}/nb;\n  \
             proxy_temp_path {d}/np;\n  fastcgi_temp_path {d}/nf;\n  uwsgi_temp_path {d}/nu;\n  \
             scgi_temp_path {d}/ns;\n  server {{\n    listen 127.0.0.1:{port} ssl;\n    \
             ssl_certificate {};\n    ssl_certificate_key {};\n    location /fluidity {{\n      \
             proxy_pass http://{upstream};\n      proxy_bind 127.0.0.4;\n      \
             proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n      \
             proxy_set_header Connection \"upgrade\";\n      proxy_set_header Host $host;\n      \
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      \
             proxy_read_timeout 1h;\n    }}\n  }}\n}}\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new("nginx")
        .arg("-c")
        .arg(&config)
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .kill_on_drop(true)
        .spawn()
        .expect("nginx must be installed (.ci/run installs nginx-light)");
    support::wait_for_port(port, &mut child, "nginx").await;
    (child, ca)
}

/// The file's text once it is not empty (up to 10 s).
async fn wait_for_log(path: &std::path::Path) -> String {
    for _ in 0..100 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if !text.is_empty() {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    String::new()
}

/// An agent reaches the server through nginx terminating `wss://`: the tunnel's own mutual TLS
/// runs inside, so nginx sees only ciphertext, and the server checks the agent's certificate
/// against the address nginx reports in `X-Forwarded-For` (the TCP peer is nginx's 127.0.0.4,
/// which the agent's certificate does not list).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_tls_terminating_reverse_proxy() {
    let origin = http_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let balancer = free_port();
    let ca_file = dir.path().join("balancer-ca.pem");
    let tunnel = Tunnel::start_on_with(
        Carrier::WebSocket,
        |server| server.trusted_proxies = vec!["127.0.0.4/32".into()],
        |agent| {
            agent.websocket_url = Some(format!("wss://127.0.0.1:{balancer}/fluidity"));
            agent.websocket_ca_file = Some(ca_file.clone());
        },
    )
    .await;
    let (_nginx, written_ca) = nginx(dir.path(), balancer, tunnel.server).await;
    assert_eq!(written_ca, ca_file);
    let (ok, body, err) =
        curl(&["-x", &tunnel.proxy_url(), &format!("http://{origin}/hello")]).await;
    assert!(ok, "{err}");
    assert_eq!(body, b"hello from origin");
    // nginx logs an upgraded request when it ends: close the tunnel, then read the log.
    drop(tunnel);
    let access = wait_for_log(&dir.path().join("nginx-access.log")).await;
    assert!(
        access.contains("GET /fluidity HTTP/1.1\" 101"),
        "the tunnel went through nginx as a WebSocket: {access}"
    );
}

/// Without trusting the proxy, the server sees nginx's address, which the agent's
/// certificate does not list: the agent is rejected (its certificate is bound to its own IP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_proxy_does_not_vouch_for_the_agent() {
    let origin = http_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let balancer = free_port();
    let ca_file = dir.path().join("balancer-ca.pem");
    let tunnel = Tunnel::start_on_with(
        Carrier::WebSocket,
        |_| {},
        |agent| {
            agent.websocket_url = Some(format!("wss://127.0.0.1:{balancer}/fluidity"));
            agent.websocket_ca_file = Some(ca_file.clone());
            agent.reconnect_wait = Duration::from_secs(2);
        },
    )
    .await;
    let (_nginx, _) = nginx(dir.path(), balancer, tunnel.server).await;
    let (code, body) = support::curl_status(
        &["-x", &tunnel.proxy_url()],
        &format!("http://{origin}/hello"),
    )
    .await;
    assert_eq!(code, 502, "{body}");
    // nginx did carry the attempts; the server refused each after the handshake.
    drop(tunnel);
    let access = wait_for_log(&dir.path().join("nginx-access.log")).await;
    assert!(access.contains("GET /fluidity HTTP/1.1\" 101"), "{access}");
}

/// One port takes both: a direct TLS tunnel and WebSocket upgrades; other paths get 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_takes_tls_and_websocket_on_one_port() {
    let origin = http_origin().await;
    let tunnel = Tunnel::start_on(Carrier::WebSocket).await;
    let (ok, _, err) = curl(&["-x", &tunnel.proxy_url(), &format!("http://{origin}/hello")]).await;
    assert!(ok, "{err}");
    // A second agent, on plain TLS, to the same server port.
    let mut config = support::agent_config(tunnel.dir.path(), tunnel.server);
    config.certificates.cache_dir = Some(tunnel.dir.path().join("tls-agent"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    tokio::spawn(fluidity_agent::run(
        config,
        listener,
        std::future::pending(),
    ));
    let (ok, body, err) = curl(&[
        "-x",
        &format!("http://{proxy}"),
        &format!("http://{origin}/hello"),
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(body, b"hello from origin");
    // An upgrade on another path is refused.
    let mut raw = TcpStream::connect(tunnel.server).await.unwrap();
    raw.write_all(
        b"GET /other HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 64];
    let n = raw.read(&mut answer).await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 404"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
}
