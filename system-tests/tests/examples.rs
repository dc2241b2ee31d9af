//! The programs in `examples/` run and succeed: each checks its own outcome and exits non-zero
//! when something does not work. They use loopback only.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

fn run_example(name: &str) -> String {
    let output = Command::new(support::binary(&format!("example:{name}")))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{name} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// An embedder's own `Transport` (a knock before mutual TLS), `CertIssuer` (an in-process CA
/// with its own rule) and `ServerLocator` (a registry file) carry a real agent and server.
#[test]
fn an_agent_and_a_server_run_on_an_embedders_own_transport_issuer_and_locator() {
    let out = run_example("custom_parts");
    assert!(out.contains("through the tunnel: 200"), "{out}");
    assert!(out.contains("without the knock was dropped"), "{out}");
    assert!(out.contains("signed 2 certificates"), "{out}");
}

/// Two sessions joined by the in-process transport relay a CONNECT stream.
#[test]
fn the_in_process_tunnel_example_relays_a_stream() {
    let out = run_example("in_process_tunnel");
    assert_eq!(out.trim(), "hello through the tunnel");
}
