//! The agent's lifecycle client against a control plane on loopback (the Wake/Query/Kill/CA
//! contract of `fluidity_core::control`, served by a scripted fake) and a real server in ARN
//! mode: waiting out a slow start, a clear startup timeout, rediscovering a replaced task,
//! and Kill exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use fluidity_core::config::CertificateSettings;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fluidity_core::control::{
    KillResponse, QueryResponse, SignRequest, SignResponse, WakeResponse, status,
};
use fluidity_core::pki::SigningOptions;
use fluidity_core::pki::local_ca::LocalCa;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::{curl, curl_status, http_origin, server_config, start_server};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const OTHER_TASK: &str =
    "arn:aws:ecs:eu-west-1:123456789012:task/fluidity-test/fedcba9876543210fedcba9876543210";

/// What the fake control plane reports, and what it was asked.
struct Plane {
    arn: String,
    ready_at: Option<Instant>,
    wakes: usize,
    queries: usize,
    kills: usize,
    signings: usize,
    ca: Arc<LocalCa>,
}

async fn control_plane(plane: Arc<Mutex<Plane>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let plane = plane.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let plane = plane.clone();
                        async move {
                            let path = request.uri().path().to_owned();
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let answer = answer(&plane, &path, &body);
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(
                                answer,
                            ))))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

fn answer(plane: &Mutex<Plane>, path: &str, body: &[u8]) -> String {
    let mut plane = plane.lock().unwrap();
    let ready = plane.ready_at.is_some_and(|at| Instant::now() >= at);
    match path {
        "/wake" => {
            plane.wakes += 1;
            serde_json::to_string(&WakeResponse {
                status: if ready { status::READY } else { status::WAKING }.into(),
                instance_id: "fluidity-test-1".into(),
                desired_count: 1,
                message: "woken".into(),
                agent_public_ip_as_seen: Some("127.0.0.1".into()),
                ..Default::default()
            })
            .unwrap()
        }
        "/query" => {
            plane.queries += 1;
            let response = if ready {
                QueryResponse {
                    status: status::READY.into(),
                    public_ip: Some("127.0.0.1".into()),
                    message: "Service is running and ready".into(),
                    server_arn: Some(plane.arn.clone()),
                }
            } else {
                QueryResponse {
                    status: status::PENDING.into(),
                    message: "task is starting".into(),
                    ..Default::default()
                }
            };
            serde_json::to_string(&response).unwrap()
        }
        "/kill" => {
            plane.kills += 1;
            serde_json::to_string(&KillResponse {
                status: status::KILLED.into(),
                message: "bye".into(),
            })
            .unwrap()
        }
        "/ca" => {
            plane.signings += 1;
            let request: SignRequest = serde_json::from_slice(body).unwrap();
            match plane
                .ca
                .authority()
                .sign(&request.csr, std::time::SystemTime::now())
            {
                Ok(issued) => serde_json::to_string(&SignResponse {
                    certificate: issued.certificate_pem,
                    chain: issued.chain_pem,
                })
                .unwrap(),
                Err(e) => serde_json::json!({ "error": e.to_string() }).to_string(),
            }
        }
        _ => serde_json::json!({ "error": "not found" }).to_string(),
    }
}

struct Setup {
    dir: tempfile::TempDir,
    plane: Arc<Mutex<Plane>>,
    server: SocketAddr,
    stop_server: Option<oneshot::Sender<()>>,
    server_task: Option<tokio::task::JoinHandle<()>>,
    proxy: SocketAddr,
    stop_agent: Option<oneshot::Sender<()>>,
    agent_task: tokio::task::JoinHandle<()>,
}

async fn setup(
    ready_in: Option<Duration>,
    startup_timeout: Duration,
    reconnect_wait: Duration,
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(
        LocalCa::open_or_create(&dir.path().join("ca"), SigningOptions::default()).unwrap(),
    );
    let plane = Arc::new(Mutex::new(Plane {
        arn: support::ARN.into(),
        ready_at: ready_in.map(|d| Instant::now() + d),
        wakes: 0,
        queries: 0,
        kills: 0,
        signings: 0,
        ca,
    }));
    let plane_address = control_plane(plane.clone()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    let (stop_server, server_task) = start_server(server_config(dir.path()), listener);

    let config = fluidity_agent::AgentConfig {
        wake_endpoint: Some(format!("http://{plane_address}/wake")),
        query_endpoint: Some(format!("http://{plane_address}/query")),
        kill_endpoint: Some(format!("http://{plane_address}/kill")),
        certificates: CertificateSettings {
            ca_service_url: Some(format!("http://{plane_address}/ca")),
            ca_cert_file: Some(dir.path().join("ca").join("ca.crt")),
            cache_dir: Some(dir.path().join("agent-cache")),
            ..Default::default()
        },
        server_port: server.port(),
        startup_timeout,
        reconnect_wait,
        ..Default::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let (stop_agent, stopped) = oneshot::channel::<()>();
    let agent_task = tokio::spawn(async move {
        fluidity_agent::run(config, listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Setup {
        dir,
        plane,
        server,
        stop_server: Some(stop_server),
        server_task: Some(server_task),
        proxy,
        stop_agent: Some(stop_agent),
        agent_task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_start_is_waited_out_and_kill_is_called_once() {
    let origin = http_origin().await;
    let mut setup = setup(
        Some(Duration::from_secs(2)),
        Duration::from_secs(60),
        Duration::from_secs(15),
    )
    .await;
    let started = Instant::now();
    let (ok, body, err) = curl(&[
        "-x",
        &format!("http://{}", setup.proxy),
        &format!("http://{origin}/hello"),
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(body, b"hello from origin");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "served before the task was ready?"
    );
    {
        let plane = setup.plane.lock().unwrap();
        assert_eq!(plane.wakes, 1);
        assert!(plane.queries >= 2, "Query was polled: {}", plane.queries);
        assert_eq!(
            plane.signings, 1,
            "one agent certificate for the task's ARN"
        );
    }
    // Shutting the agent down releases the server exactly once.
    setup.stop_agent.take().unwrap().send(()).unwrap();
    (&mut setup.agent_task).await.unwrap();
    assert_eq!(setup.plane.lock().unwrap().kills, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_starts_gives_a_clear_error() {
    let origin = http_origin().await;
    let setup = setup(None, Duration::from_secs(1), Duration::from_secs(3)).await;
    let (code, body) = curl_status(
        &["-x", &format!("http://{}", setup.proxy)],
        &format!("http://{origin}/hello"),
    )
    .await;
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("did not become ready within"), "{body}");
    assert!(
        body.contains("pending"),
        "the last status is reported: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_task_is_rediscovered_with_a_new_certificate() {
    let origin = http_origin().await;
    let mut setup = setup(
        Some(Duration::ZERO),
        Duration::from_secs(60),
        Duration::from_secs(15),
    )
    .await;
    let proxy = format!("http://{}", setup.proxy);
    let url = format!("http://{origin}/hello");
    let (ok, _, err) = curl(&["-x", &proxy, &url]).await;
    assert!(ok, "{err}");

    // The task is replaced: a new ARN behind the same address.
    setup.stop_server.take().unwrap().send(()).unwrap();
    setup.server_task.take().unwrap().await.unwrap();
    setup.plane.lock().unwrap().arn = OTHER_TASK.into();
    let mut config = server_config(setup.dir.path());
    config.server_arn = Some(OTHER_TASK.into());
    let listener = TcpListener::bind(setup.server).await.unwrap();
    let (stop, task) = start_server(config, listener);
    setup.stop_server = Some(stop);
    setup.server_task = Some(task);

    let (ok, body, err) = curl(&["-x", &proxy, &url]).await;
    assert!(ok, "{err}");
    assert_eq!(body, b"hello from origin");
    assert_eq!(
        setup.plane.lock().unwrap().signings,
        2,
        "a new certificate for the new ARN"
    );
}
