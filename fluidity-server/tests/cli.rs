//! The `fluidity-server` binary as an operator runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fluidity-server"))
}

#[test]
fn a_bad_config_names_the_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.yaml");
    std::fs::write(&file, "listen_port: lots\n").unwrap();
    let output = server().arg("--config").arg(&file).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("listen_port") && stderr.contains("server.yaml"),
        "{stderr}"
    );

    let output = server()
        .env("FLUIDITY_MAX_CONNECTIONS", "many")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("FLUIDITY_MAX_CONNECTIONS"), "{stderr}");

    // No certificates configured: a clear hint, not a panic.
    let output = server().args(["--listen-port", "0"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--dev"), "{stderr}");
}

/// The Go version's server.yaml (reference §7.3) loads unchanged: unknown keys are warned
/// about, `${VAR}` placeholders expand, empty values mean "not set".
#[test]
fn the_go_server_yaml_loads_and_sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.yaml");
    std::fs::write(
        &file,
        format!(
            "listen_addr: \"127.0.0.1\"\nlisten_port: 0\nmax_connections: 10\nlog_level: \"info\"\n\
             ca_service_url: \"${{CA_SERVICE_URL}}\"\ncert_cache_dir: \"{}\"\nca_cert_file: \"\"\n\
             metrics_enabled: true\n",
            dir.path().join("cache").display()
        ),
    )
    .unwrap();
    let mut child = server()
        .arg("--config")
        .arg(&file)
        .arg("--dev")
        .env_remove("CA_SERVICE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the server exited early"
    );
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("metrics_enabled"),
        "unknown keys are warned about: {stderr}"
    );
    assert!(
        stderr.contains("CA_SERVICE_URL"),
        "unset placeholders are warned about: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("listening on 127.0.0.1:"), "{stdout}");
}

/// Activity metrics as CloudWatch Embedded Metric Format lines on stdout (what the Sleep
/// function reads once CloudWatch Logs has turned them into metrics).
#[test]
fn activity_metrics_are_logged_in_embedded_metric_format() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = server()
        .args(["--dev", "--listen-port", "0", "--cache-dir"])
        .arg(dir.path())
        .env("FLUIDITY_METRICS_INTERVAL", "200ms")
        .env("ECS_CLUSTER_NAME", "test-cluster")
        .env("ECS_SERVICE_NAME", "test-service")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let record = loop {
        let line = receiver
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("no metrics line within 15 s");
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
            && value.get("_aws").is_some()
        {
            break value;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(record["ClusterName"], "test-cluster");
    assert_eq!(record["ServiceName"], "test-service");
    assert_eq!(record["ActiveTunnels"], 0);
    assert!(record["LastActivityEpochSeconds"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(
        record["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "Fluidity"
    );
}
