//! The `fluidity-agent` binary as a user runs it: configuration mistakes get a clear error
//! that names the key and where it came from, and never repeats a secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn agent() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fluidity-agent"));
    // Nothing from the developer's environment.
    command
        .env_remove("FLUIDITY_UPSTREAM_PROXY")
        .env_remove("FLUIDITY_PROXY_AUTH");
    command
}

#[test]
fn a_bad_config_names_the_key_and_its_origin() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.yaml");
    std::fs::write(&file, "local_proxy_port: lots\n").unwrap();
    let output = agent().arg("--config").arg(&file).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("local_proxy_port") && stderr.contains("agent.yaml"),
        "{stderr}"
    );

    let output = agent()
        .env("FLUIDITY_RECONNECT_WAIT", "soon")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("FLUIDITY_RECONNECT_WAIT"), "{stderr}");

    // No server configured: a hint at --dev, not a panic.
    let output = agent().args(["--local-proxy-port", "0"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--dev"), "{stderr}");
}

#[test]
fn upstream_proxy_credentials_never_appear_in_errors() {
    let output = agent()
        .args(["--server", "192.0.2.1:8443", "--local-proxy-port", "0"])
        .env(
            "FLUIDITY_UPSTREAM_PROXY",
            "https://alice:hunter2@proxy.example:3128",
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stderr.contains("upstream_proxy"), "{stderr}");
    assert!(
        !stderr.contains("hunter2") && !stdout.contains("hunter2"),
        "{stderr}{stdout}"
    );
}
