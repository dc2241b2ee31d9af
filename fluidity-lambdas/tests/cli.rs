//! The `fluidity-lambdas` binary as an operator runs it: configuration errors, and the local
//! control plane's HTTP front door (routing, methods, body limits, malformed requests). The
//! AWS side runs against moto in `fluidity-agent/tests/aws_control_plane.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_fluidity-lambdas");

#[tokio::test]
async fn missing_settings_are_named() {
    let output = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("ECS_CLUSTER_NAME")
        .env_remove("ECS_SERVICE_NAME")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ECS_CLUSTER_NAME is not set"), "{stderr}");

    let output = Command::new(BINARY)
        .env("ECS_CLUSTER_NAME", "c")
        .env("ECS_SERVICE_NAME", "s")
        .env("IDLE_THRESHOLD_MINUTES", "soon")
        .args(["lambda", "wake"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("IDLE_THRESHOLD_MINUTES"), "{stderr}");

    let output = Command::new(BINARY)
        .env("ECS_CLUSTER_NAME", "c")
        .env("ECS_SERVICE_NAME", "s")
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("not in Lambda"), "{stderr}");
}

/// One raw HTTP/1.1 exchange; returns the status code and the body.
async fn exchange(port: u16, request: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn the_local_control_plane_refuses_bad_requests_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut serve = Command::new(BINARY)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--ca-dir",
        ])
        .arg(dir.path().join("ca"))
        .env("ECS_CLUSTER_NAME", "fluidity")
        .env("ECS_SERVICE_NAME", "fluidity-server")
        // Nothing here reaches AWS; make sure nothing could.
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Some(status) = serve.try_wait().unwrap() {
            let mut stderr = String::new();
            serve
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .await
                .unwrap();
            panic!("serve exited with {status}: {stderr}");
        }
        assert!(started.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The CA directory was created at start (a bad CA fails the start, not a request).
    assert!(dir.path().join("ca/ca.crt").exists());

    let (code, body) = exchange(
        port,
        b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((code, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (code, body) = exchange(port, &post("/nope", "{}")).await;
    assert_eq!(code, 404);
    assert!(body.contains("/wake"), "{body}");
    let (code, _) = exchange(
        port,
        b"GET /wake HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(code, 405);
    let (code, body) = exchange(port, &post("/query", "{not json")).await;
    assert_eq!(code, 400);
    assert!(body.contains("Invalid JSON"), "{body}");
    let (code, body) = exchange(port, &post("/ca", r#"{"csr": 7}"#)).await;
    assert_eq!(code, 400);
    assert!(body.contains("Invalid request body"), "{body}");
    let (code, body) = exchange(port, &post("/sign", r#"{"csr": ""}"#)).await;
    assert_eq!(code, 400);
    assert!(body.contains("CSR not provided"), "{body}");
    let big = format!(r#"{{"csr": "{}"}}"#, "A".repeat(100 * 1024));
    let (code, _) = exchange(port, &post("/ca", &big)).await;
    assert_eq!(code, 413);
    // The backend being unreachable is a 500 that says what failed, and the next request
    // is still served.
    let (code, body) = exchange(port, &post("/wake", "{}")).await;
    assert_eq!(code, 500);
    assert!(body.contains("ecs:DescribeServices"), "{body}");
    let (code, _) = exchange(
        port,
        b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(code, 200);
}
