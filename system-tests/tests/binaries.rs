//! The built binaries as a user runs them: `fluidity-agent --dev` alone, and
//! `fluidity-server --dev` + `fluidity-agent --dev --server` as two processes sharing the CA
//! directory, with a 1 GiB download under a memory bound.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{
    free_port, http_origin, pattern_slice, peak_rss_kib, start_pair, start_server_process,
    wait_for_port,
};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

fn agent_binary() -> PathBuf {
    support::binary("fluidity-agent")
}

async fn get_through(proxy_port: u16, url: &str) -> (bool, Vec<u8>, String) {
    support::curl(&["-x", &format!("http://127.0.0.1:{proxy_port}"), url]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_dev_mode_is_a_working_proxy_in_one_command() {
    let origin = http_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = Command::new(agent_binary())
        .args([
            "--dev",
            "--local-proxy-port",
            &port.to_string(),
            "--cache-dir",
        ])
        .arg(dir.path())
        // Let the embedded server reach this test's loopback origin.
        .env("FLUIDITY_EGRESS_DENY", "[]")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_port(port, &mut agent, "fluidity-agent").await;
    let (ok, body, err) = get_through(port, &format!("http://{origin}/hello")).await;
    assert!(ok, "{err}");
    assert_eq!(body, b"hello from origin");
    // The local CA was made in the cache directory, its key private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let mut stdout = String::new();
    agent.kill().await.unwrap();
    agent
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .await
        .unwrap();
    assert!(
        stdout.contains(&format!("curl -x http://127.0.0.1:{port}")),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_stream_a_gibibyte_in_bounded_memory() {
    let origin = http_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, server_port) = start_server_process(dir.path(), &[]).await;
    let proxy_port = free_port();
    // A Go-style agent.yaml (flat keys, empty values for what is unused).
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "server_ip: \"127.0.0.1\"\nserver_port: {server_port}\nlocal_proxy_port: {proxy_port}\n\
             cert_cache_dir: \"{}\"\nca_cert_file: \"\"\nwake_endpoint: \"\"\nquery_endpoint: \"\"\n\
             kill_endpoint: \"\"\nca_service_url: \"\"\nlog_level: \"info\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut agent = Command::new(agent_binary())
        .arg("--config")
        .arg(&config)
        .arg("--dev")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_port(proxy_port, &mut agent, "fluidity-agent").await;

    let size: u64 = 1 << 30;
    let started = Instant::now();
    let mut curl = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "-x",
            &format!("http://127.0.0.1:{proxy_port}"),
        ])
        .arg(format!("http://{origin}/bytes/{size}"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut body = curl.stdout.take().unwrap();
    let mut buffer = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = body.read(&mut buffer).await.unwrap();
        if n == 0 {
            break;
        }
        assert!(
            buffer[..n] == *pattern_slice(offset, n),
            "corrupt bytes near offset {offset}"
        );
        offset += n as u64;
    }
    assert!(curl.wait().await.unwrap().success());
    assert_eq!(offset, size);
    let took = started.elapsed();
    let server_peak = peak_rss_kib(server.id().unwrap());
    let agent_peak = peak_rss_kib(agent.id().unwrap());
    println!(
        "1 GiB in {took:?} ({:.0} MiB/s); peak RSS server {} MiB, agent {} MiB",
        1024.0 / took.as_secs_f64(),
        server_peak / 1024,
        agent_peak / 1024
    );
    assert!(server_peak < 64 * 1024, "server peak RSS {server_peak} KiB");
    assert!(agent_peak < 64 * 1024, "agent peak RSS {agent_peak} KiB");
}

/// SIGTERM to the server: it stops accepting, lets the in-flight download finish, and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_streams_then_exits_cleanly() {
    let origin = http_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut server, _agent, server_port, proxy_port) =
        start_pair(dir.path(), &[("FLUIDITY_SHUTDOWN_GRACE", "60s")], &[]).await;

    // The tunnel is up before the download starts (so SIGTERM finds the stream open).
    let (ok, _, err) = get_through(proxy_port, &format!("http://{origin}/hello")).await;
    assert!(ok, "{err}");
    let size: u64 = 200 << 20;
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let url = format!("http://{origin}/bytes/{size}");
    let download = tokio::spawn(async move {
        support::curl(&[
            "-x",
            &proxy,
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            "--limit-rate",
            "40M",
            &url,
        ])
        .await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = server.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No new tunnels once shutting down.
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", server_port))
            .await
            .is_err(),
        "the server still accepts after SIGTERM"
    );
    let (ok, downloaded, err) = download.await.unwrap();
    assert!(ok, "{err}");
    assert_eq!(String::from_utf8(downloaded).unwrap(), size.to_string());
    let status = tokio::time::timeout(Duration::from_secs(20), server.wait())
        .await
        .expect("the server did not exit after draining")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// A frozen server (SIGSTOP: its sockets stay open, nothing answers) is detected by
/// heartbeats within `dead_server_timeout`; requests then fail clearly, and the agent
/// recovers once the server runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_detect_a_frozen_server_and_the_agent_recovers() {
    let origin = http_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, _agent, _, proxy_port) = start_pair(
        dir.path(),
        &[],
        &[
            ("FLUIDITY_DEAD_SERVER_TIMEOUT", "2s"),
            ("FLUIDITY_RECONNECT_WAIT", "1s"),
        ],
    )
    .await;
    let url = format!("http://{origin}/hello");
    let (ok, _, err) = get_through(proxy_port, &url).await;
    assert!(ok, "{err}");

    let pid = server.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .await
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, body, _) = support::curl(&[
        "-x",
        &format!("http://127.0.0.1:{proxy_port}"),
        "--max-time",
        "10",
        &url,
    ])
    .await;
    let body = String::from_utf8_lossy(&body).into_owned();
    assert!(
        body.contains("heartbeat"),
        "the agent should report the dead server: {body}"
    );

    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .await
            .unwrap()
            .success()
    );
    let started = Instant::now();
    loop {
        let (ok, body, _) = get_through(proxy_port, &url).await;
        if ok && body == b"hello from origin" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the agent did not recover"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
