//! The AWS control plane end to end on loopback, against a real local AWS endpoint (moto):
//!
//! moto holds an ECS cluster, a Fargate service scaled to zero and the CA in Secrets Manager.
//! `fluidity-lambdas serve` runs the five functions against it. Wake scales the service up;
//! the test plays ECS by starting the task (moto starts none) and giving its network
//! interface the Elastic IP 127.0.0.1. Query then reports that task. A `fluidity-server`
//! finds its ARN at a fixture metadata endpoint and gets its certificate from the CA function,
//! which lists the public IP it verified (the server calls no AWS API itself, and has no AWS
//! credentials here); `fluidity-agent`, given only the control-plane
//! URLs and the CA certificate, wakes, waits, gets its own certificate and carries curl's
//! requests. Then Sleep keeps the busy server; the first of two agents leaves and its Kill
//! request is cancelled by the other's tunnel; the last agent leaves and Sleep acts on its
//! Kill request.
//!
//! Needs `python3` with `moto[server]` (`pip install 'moto[server]'`; `.ci/run` installs it) and the workspace's binaries (`cargo test --workspace` builds them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{binary, free_port, wait_for_port};

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fluidity_core::pki::{CertificateAuthority, KeyAlgorithm, SigningOptions};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

const CLUSTER: &str = "fluidity";
const SERVICE: &str = "fluidity-server";
const SECRET: &str = "fluidity/ca-certificate";
/// How long after a Kill request Sleep acts on it (5 minutes in production, where it waits for
/// CloudWatch; here the activity is the server's live /health).
const KILL_SETTLE: Duration = Duration::from_secs(3);

/// The AWS environment every process gets: moto's endpoint and dummy credentials, and
/// nothing from the developer's own AWS setup.
fn aws_env(command: &mut Command, endpoint: &str) {
    for key in ["AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"] {
        command.env_remove(key);
    }
    command
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("ECS_CLUSTER_NAME", CLUSTER)
        .env("ECS_SERVICE_NAME", SERVICE)
        .env("RUST_LOG", "info");
}

/// moto on a free loopback port (with the fix in `tests/moto/server.py`); returns the process
/// and its endpoint.
async fn start_moto() -> (Child, String) {
    let port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/moto/server.py");
    let mut moto = Command::new("python3")
        .arg(script)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 must be installed");
    wait_for_port(port, &mut moto, "moto (pip install 'moto[server]')").await;
    (moto, format!("http://127.0.0.1:{port}"))
}

/// moto holding the cluster, the stopped service and a new CA in Secrets Manager (also
/// written to `dir/ca.crt` and `dir/ca.key`); returns moto, its endpoint and the CA.
async fn local_aws(dir: &Path) -> (Child, String, CertificateAuthority) {
    let (ca, key_pem) = CertificateAuthority::generate(
        "Fluidity Test CA",
        Duration::from_secs(86400),
        KeyAlgorithm::EcdsaP256,
        SigningOptions::default(),
    )
    .unwrap();
    let (cert_file, key_file) = (dir.join("ca.crt"), dir.join("ca.key"));
    std::fs::write(&cert_file, ca.certificate_pem()).unwrap();
    std::fs::write(&key_file, &key_pem).unwrap();
    let (moto, endpoint) = start_moto().await;
    fixture(
        &endpoint,
        &[
            "setup",
            CLUSTER,
            SERVICE,
            SECRET,
            cert_file.to_str().unwrap(),
            key_file.to_str().unwrap(),
        ],
    );
    (moto, endpoint, ca)
}

/// Runs the moto fixture script; returns its JSON answer.
fn fixture(endpoint: &str, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/moto/fixture.py");
    let output = std::process::Command::new("python3")
        .arg(script)
        .arg(endpoint)
        .args(args)
        .output()
        .expect("python3 must be installed");
    assert!(
        output.status.success(),
        "fixture {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// POSTs `body` to the local control plane; returns the status and the JSON answer.
async fn call(plane: u16, function: &str, body: Value) -> (u16, Value) {
    let (code, answer) = support::curl_status(
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            &body.to_string(),
        ],
        &format!("http://127.0.0.1:{plane}/{function}"),
    )
    .await;
    assert_ne!(code, 0, "curl to /{function}: {answer}");
    (code, serde_json::from_str(&answer).unwrap())
}

/// An ECS task metadata endpoint (v4) describing one task.
async fn metadata_endpoint(task_arn: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let body =
                json!({"Cluster": CLUSTER, "TaskARN": task_arn, "Family": SERVICE}).to_string();
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let _ = stream.read(&mut request).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://{address}/v4/fixture")
}

fn desired(endpoint: &str) -> i64 {
    fixture(endpoint, &["desired", CLUSTER, SERVICE])["desired"]
        .as_i64()
        .unwrap()
}

/// Starts an agent configured with the control plane only; returns it and its proxy port.
async fn start_agent(
    dir: &Path,
    name: &str,
    plane: u16,
    server_port: u16,
    endpoint: &str,
) -> (Child, u16) {
    let port = free_port();
    let url = |function: &str| format!("http://127.0.0.1:{plane}/{function}");
    let mut command = Command::new(binary("fluidity-agent"));
    command
        .args(["--local-proxy-port", &port.to_string(), "--cache-dir"])
        .arg(dir.join(name))
        .env("FLUIDITY_WAKE_ENDPOINT", url("wake"))
        .env("FLUIDITY_QUERY_ENDPOINT", url("query"))
        .env("FLUIDITY_KILL_ENDPOINT", url("kill"))
        .env("FLUIDITY_CA_SERVICE_URL", url("ca"))
        .env("FLUIDITY_CA_CERT_FILE", dir.join("ca.crt"))
        .env("FLUIDITY_SERVER_PORT", server_port.to_string());
    aws_env(&mut command, endpoint);
    let mut agent = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_port(port, &mut agent, name).await;
    (agent, port)
}

async fn sigterm(child: &mut Child) {
    let pid = child.id().unwrap().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_query_connect_sleep_and_kill_against_a_local_aws() {
    let dir = tempfile::tempdir().unwrap();
    // moto, with the cluster, the stopped service and the CA secret.
    let (_moto, endpoint, ca) = local_aws(dir.path()).await;

    // The control plane, signing with the CA from Secrets Manager and reading activity from
    // the server's /health.
    let plane = free_port();
    let health = free_port();
    let mut command = Command::new(binary("fluidity-lambdas"));
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{plane}")])
        .args([
            "--activity-url",
            &format!("http://127.0.0.1:{health}/health"),
        ])
        .env("CA_SECRET_NAME", SECRET)
        .env("KILL_SETTLE_SECONDS", KILL_SETTLE.as_secs().to_string());
    aws_env(&mut command, &endpoint);
    let mut control = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_port(plane, &mut control, "fluidity-lambdas serve").await;

    // Wake is idempotent; Query waits for the task.
    let (code, answer) = call(plane, "query", json!({"instance_id": "x"})).await;
    assert_eq!(
        (code, answer["status"].as_str()),
        (200, Some("negative")),
        "{answer}"
    );
    let (code, answer) = call(plane, "wake", json!({})).await;
    assert_eq!(
        (code, answer["status"].as_str()),
        (200, Some("waking")),
        "{answer}"
    );
    assert_eq!(answer["agent_public_ip_as_seen"], "127.0.0.1");
    for _ in 0..3 {
        let (_, again) = call(plane, "wake", json!({})).await;
        assert_eq!(again["status"], "starting", "{again}");
    }
    assert_eq!(desired(&endpoint), 1, "several Wakes, one task wanted");
    let (_, answer) = call(plane, "query", json!({})).await;
    assert_eq!(answer["status"], "pending", "{answer}");

    // ECS starts the task; its interface gets the public IP 127.0.0.1.
    let task = fixture(&endpoint, &["start-task", CLUSTER, SERVICE, "127.0.0.1"]);
    let task_arn = task["task_arn"].as_str().unwrap().to_owned();
    let (_, answer) = call(plane, "query", json!({})).await;
    assert_eq!(answer["status"], "ready", "{answer}");
    assert_eq!(answer["server_arn"], task_arn.as_str());
    assert_eq!(answer["public_ip"], "127.0.0.1");

    // The CA refuses a certificate for a task that is not running.
    let stranger = fluidity_core::pki::keys::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = fluidity_core::pki::csr::build(
        &stranger,
        "arn:aws:ecs:us-east-1:123456789012:task/fluidity/not-running",
        &["127.0.0.1".parse().unwrap()],
    )
    .unwrap();
    let (code, answer) = call(plane, "ca", json!({"csr": csr})).await;
    assert_eq!(code, 403, "{answer}");

    // The server, as ECS would start it: the ARN from task metadata, the CA certificate from
    // the environment, its own certificate from the CA, which decides its IP. No AWS
    // endpoint or credentials: the server needs none.
    let server_port = free_port();
    let mut command = Command::new(binary("fluidity-server"));
    command
        .args(["--listen-port", &server_port.to_string()])
        .env(
            "ECS_CONTAINER_METADATA_URI_V4",
            metadata_endpoint(task_arn.clone()).await,
        )
        .env("FLUIDITY_LISTEN_ADDR", "127.0.0.1")
        .env(
            "FLUIDITY_CA_SERVICE_URL",
            format!("http://127.0.0.1:{plane}/ca"),
        )
        .env("FLUIDITY_CA_CERT", ca.certificate_pem())
        .env("FLUIDITY_CACHE_DIR", dir.path().join("server"))
        .env("FLUIDITY_HEALTH_ADDR", format!("127.0.0.1:{health}"))
        .env("FLUIDITY_EGRESS_DENY", "[]");
    for key in [
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        command.env_remove(key);
    }
    let mut server = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_port(server_port, &mut server, "fluidity-server").await;
    // Its certificate names the task and the public IP the CA verified, nothing else.
    let cert_file = dir.path().join("server/server/server.crt");
    let started = Instant::now();
    while !cert_file.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no server certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let server_cert = std::fs::read(&cert_file).unwrap();
    let der = CertificateDer::from_pem_slice(&server_cert).unwrap();
    let info = fluidity_core::pki::CertificateInfo::parse(&der).unwrap();
    assert_eq!(info.arn(), Some(task_arn.as_str()));
    assert_eq!(
        info.ip_addresses,
        vec!["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );

    // An agent that knows only the control plane carries curl's request.
    let origin = support::http_origin().await;
    let (mut first, first_port) =
        start_agent(dir.path(), "agent-1", plane, server_port, &endpoint).await;
    let (ok, body, err) = support::curl(&[
        "-x",
        &format!("http://127.0.0.1:{first_port}"),
        &format!("http://{origin}/hello"),
    ])
    .await;
    assert!(ok, "curl through the agent: {err}");
    assert_eq!(body, b"hello from origin");
    let agent_cert = std::fs::read(dir.path().join("agent-1/agent.crt")).unwrap();
    let der = CertificateDer::from_pem_slice(&agent_cert).unwrap();
    let info = fluidity_core::pki::CertificateInfo::parse(&der).unwrap();
    assert_eq!(
        info.arn(),
        Some(task_arn.as_str()),
        "certificate bound to the task"
    );

    // Sleep keeps a server that just moved bytes.
    let (_, answer) = call(plane, "sleep", json!({})).await;
    assert_eq!(answer["action"], "no_change", "{answer}");
    assert!(
        answer["idleDurationSeconds"].as_u64().unwrap() < 60,
        "{answer}"
    );

    // A second agent. The first one leaves: its Kill only records a request, and Sleep,
    // seeing the second agent's tunnel after it, cancels it. Nobody is cut off.
    let (mut second, second_port) =
        start_agent(dir.path(), "agent-2", plane, server_port, &endpoint).await;
    let second_proxy = format!("http://127.0.0.1:{second_port}");
    let hello = format!("http://{origin}/hello");
    let through_second = ["-x", second_proxy.as_str(), hello.as_str()];
    let (ok, _, err) = support::curl(&through_second).await;
    assert!(ok, "curl through the second agent: {err}");
    let (_, answer) = call(plane, "kill", json!({})).await;
    assert_eq!(answer["status"], "scheduled", "{answer}");
    sigterm(&mut first).await;
    wait_for_tunnels(health, 1).await;
    tokio::time::sleep(KILL_SETTLE + Duration::from_millis(500)).await;
    let (_, answer) = call(plane, "sleep", json!({})).await;
    assert_eq!(answer["action"], "no_change", "{answer}");
    assert_eq!(
        desired(&endpoint),
        1,
        "the first agent's Kill keeps the second's server"
    );
    let (ok, _, err) = support::curl(&through_second).await;
    assert!(ok, "the second agent still works: {err}");

    // The last agent leaves: once its tunnel is gone, Sleep acts on its Kill.
    sigterm(&mut second).await;
    assert_eq!(desired(&endpoint), 1, "Kill itself stops nothing");
    wait_for_tunnels(health, 0).await;
    tokio::time::sleep(KILL_SETTLE + Duration::from_millis(500)).await;
    let (_, answer) = call(plane, "sleep", json!({})).await;
    assert_eq!(answer["action"], "scaled_down", "{answer}");
    assert_eq!(
        desired(&endpoint),
        0,
        "the last agent's Kill stopped the server"
    );
    let (_, answer) = call(plane, "query", json!({})).await;
    assert_eq!(answer["status"], "negative", "{answer}");
    let (_, answer) = call(plane, "sleep", json!({})).await;
    assert_eq!(answer["action"], "no_change", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("already stopped")
    );
}

/// Waits (up to 10 s) until the server's `/health` reports `tunnels` open.
async fn wait_for_tunnels(port: u16, tunnels: u64) {
    let started = Instant::now();
    loop {
        let (_, health) = call_health(port).await;
        if health["tunnels"] == tunnels {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn call_health(port: u16) -> (bool, Value) {
    let (ok, out, _) = support::curl(&[&format!("http://127.0.0.1:{port}/health")]).await;
    (ok, serde_json::from_slice(&out).unwrap_or(Value::Null))
}

/// A Lambda Runtime API on loopback: hands out `events` one by one and collects the answers
/// (what Lambda does around a custom runtime's `bootstrap`).
async fn runtime_api(events: Vec<Value>) -> (u16, tokio::sync::mpsc::Receiver<(String, Value)>) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let events = std::sync::Arc::new(tokio::sync::Mutex::new(events.into_iter().enumerate()));
    let (answers, received) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (events, answers) = (events.clone(), answers.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let (events, answers) = (events.clone(), answers.clone());
                        async move {
                            let path = request.uri().path().to_owned();
                            if path.ends_with("/invocation/next") {
                                let next = events.lock().await.next();
                                let Some((index, event)) = next else {
                                    // No more work: hold the call as Lambda does between invocations.
                                    std::future::pending::<()>().await;
                                    unreachable!()
                                };
                                let deadline = std::time::SystemTime::now()
                                    .duration_since(std::time::UNIX_EPOCH)
                                    .unwrap()
                                    .as_millis()
                                    + 30_000;
                                return Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .header("lambda-runtime-aws-request-id", format!("request-{index}"))
                                    .header("lambda-runtime-deadline-ms", deadline.to_string())
                                    .header(
                                        "lambda-runtime-invoked-function-arn",
                                        "arn:aws:lambda:us-east-1:123456789012:function:fluidity-wake",
                                    )
                                    .header("lambda-runtime-trace-id", "Root=1-00000000-000000000000000000000000")
                                    .body(Full::new(Bytes::from(event.to_string())))
                                    .unwrap(),
                            );
                            }
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            answers.send((path, value)).await.unwrap();
                            Ok(hyper::Response::builder()
                                .status(202)
                                .body(Full::new(Bytes::new()))
                                .unwrap())
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (port, received)
}

/// The Lambda entry point: the same binary, in a Lambda environment, runs the function its
/// handler setting names, and answers Function URL, API Gateway and malformed events the way
/// the Go functions did (the proxy wrapper).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_as_a_lambda_function() {
    let dir = tempfile::tempdir().unwrap();
    let (_moto, endpoint, _) = local_aws(dir.path()).await;

    let function_url_event = json!({
        "version": "2.0",
        "rawPath": "/",
        "requestContext": {"http": {"method": "POST", "sourceIp": "198.51.100.7"}},
        "body": "{}",
        "isBase64Encoded": false
    });
    let api_gateway_event = json!({
        "resource": "/wake",
        "requestContext": {"identity": {"sourceIp": "203.0.113.9"}},
        "body": "e30=",
        "isBase64Encoded": true
    });
    let broken_event = json!({"requestContext": {}, "body": "{not json"});
    let (api, mut answers) =
        runtime_api(vec![function_url_event, api_gateway_event, broken_event]).await;

    let mut command = Command::new(binary("fluidity-lambdas"));
    command
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{api}"))
        .env("_HANDLER", "wake")
        .env("AWS_LAMBDA_FUNCTION_NAME", "fluidity-wake")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/fluidity-wake")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "test");
    aws_env(&mut command, &endpoint);
    let _lambda = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(30), answers.recv())
            .await
            .expect("the function answers")
            .unwrap()
    };
    let (path, answer) = next().await;
    assert_eq!(path, "/2018-06-01/runtime/invocation/request-0/response");
    assert_eq!(answer["statusCode"], 200, "{answer}");
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["status"], "waking", "{body}");
    assert_eq!(body["agent_public_ip_as_seen"], "198.51.100.7");
    assert_eq!(desired(&endpoint), 1);

    let (path, answer) = next().await;
    assert_eq!(path, "/2018-06-01/runtime/invocation/request-1/response");
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["status"], "starting", "Wake is idempotent: {body}");
    assert_eq!(body["agent_public_ip_as_seen"], "203.0.113.9");

    let (_, answer) = next().await;
    assert_eq!(answer["statusCode"], 400, "{answer}");
    assert!(
        answer["body"].as_str().unwrap().contains("Invalid JSON"),
        "{answer}"
    );
    assert_eq!(desired(&endpoint), 1);
}
