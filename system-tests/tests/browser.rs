//! A real browser through the agent's SOCKS5 port: headless Chromium loads an HTTPS page whose
//! script opens a `wss://` WebSocket, sends a message, and reports the echo back over HTTPS.
//!
//! Browsers make background requests of their own, so the test runs inside a network
//! namespace with only loopback up (`unshare --net`), re-running this test binary there; a
//! mount namespace gives it its own `/etc/hosts`, which names the origin `origin.test`.
//! Chromium is told it can resolve no name at all (`--host-resolver-rules`), so the page loads
//! only if the agent's SOCKS5 port carried the name to the server, which resolved it: proof
//! that every byte went through the tunnel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use support::{IN_NAMESPACE, Tunnel};

/// The origin's name (only the namespace's `/etc/hosts` knows it).
const ORIGIN: &str = "origin.test";

/// Re-runs [`in_namespace_chromium_loads_https_and_a_websocket_through_socks5`] inside
/// fresh network and mount namespaces with only loopback up.
#[test]
fn chromium_loads_https_and_a_websocket_through_socks5() {
    let chromium = which("chromium").expect("chromium must be installed (.ci/run installs it)");
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost {ORIGIN}\n::1 localhost\n"),
    )
    .unwrap();
    support::run_in_network_namespace(
        "in_namespace_chromium_loads_https_and_a_websocket_through_socks5",
        "mount --bind \"$1\" /etc/hosts",
        &[hosts.as_os_str()],
        chromium.as_ref(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by chromium_loads_https_and_a_websocket_through_socks5, inside a namespace"]
async fn in_namespace_chromium_loads_https_and_a_websocket_through_socks5() {
    let chromium = std::env::var(IN_NAMESPACE).expect("run only inside the test's namespace");
    // Only loopback: nothing the browser tries can leave the machine.
    // (/proc/net/dev follows the reader's network namespace; /sys would need a remount.)
    let devices = std::fs::read_to_string("/proc/self/net/dev").unwrap();
    let links: Vec<&str> = devices
        .lines()
        .skip(2)
        .filter_map(|line| line.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(links, ["lo"], "the namespace must hold loopback alone");

    let dir = tempfile::tempdir().unwrap();
    let (tls, spki_hash) = origin_tls(dir.path());
    let websocket = wss_echo(tls.clone()).await;
    let (page, mut done) = https_page(tls, websocket).await;
    let tunnel = Tunnel::start().await;

    let profile = dir.path().join("profile");
    let mut browser = tokio::process::Command::new(chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--proxy-server=socks5://{}", tunnel.proxy))
        // Chromium sends names to a SOCKS5 proxy; it must not resolve any itself (the proxy's
        // own address excepted: the rules apply to IP literals too).
        .arg("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1")
        .arg(format!("--ignore-certificate-errors-spki-list={spki_hash}"))
        .arg(format!("https://{ORIGIN}:{}/page", page.port()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(60), done.recv()).await;
    let _ = browser.start_kill();
    let report = match report {
        Ok(Some(report)) => report,
        _ => {
            let output = browser.wait_with_output().await.unwrap();
            panic!(
                "the page never reported; chromium said:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    };
    assert_eq!(report, "echo: hello from the browser");
}

fn which(program: &str) -> Option<String> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
        .map(|path| path.display().to_string())
}

/// TLS for `origin.test` from a throwaway CA, and the base64 SHA-256 of the leaf's public key
/// (what `--ignore-certificate-errors-spki-list` pins).
fn origin_tls(dir: &Path) -> (Arc<rustls::ServerConfig>, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec![ORIGIN.to_owned()]).unwrap();
    let certificate = params.self_signed(&key).unwrap();
    let spki = dir.join("origin.spki");
    std::fs::write(&spki, rcgen::PublicKeyData::subject_public_key_info(&key)).unwrap();
    let hash = std::process::Command::new("sh")
        .arg("-c")
        .arg("openssl dgst -sha256 -binary \"$1\" | base64")
        .arg("sh")
        .arg(&spki)
        .output()
        .unwrap();
    let hash = String::from_utf8(hash.stdout).unwrap().trim().to_owned();
    let config = rustls::ServerConfig::builder_with_provider(fluidity_core::pki::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![certificate.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (Arc::new(config), hash)
}

/// A `wss://` echo server.
async fn wss_echo(tls: Arc<rustls::ServerConfig>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_text() && socket.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

/// The HTTPS origin: `/page` (a script that talks to the WebSocket and reports the echo to
/// `/done`), `/done?…` (the report, passed to the returned channel).
async fn https_page(
    tls: Arc<rustls::ServerConfig>,
    websocket: std::net::SocketAddr,
) -> (std::net::SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let (report, reports) = mpsc::channel(4);
    let page = format!(
        "<!doctype html><title>fluidity</title><script>\n\
         const ws = new WebSocket('wss://{ORIGIN}:{}/echo');\n\
         ws.onopen = () => ws.send('hello from the browser');\n\
         ws.onmessage = (m) => fetch('/done?' + encodeURIComponent('echo: ' + m.data));\n\
         </script>",
        websocket.port()
    );
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, page, report) = (acceptor.clone(), page.clone(), report.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let (page, report) = (page.clone(), report.clone());
                    async move {
                        let response = match request.uri().path() {
                            "/page" => Response::builder()
                                .header("content-type", "text/html")
                                .body(Full::new(Bytes::from(page))),
                            "/done" => {
                                let query = request.uri().query().unwrap_or_default();
                                let text = percent_decode(query);
                                let _ = report.send(text).await;
                                Response::builder()
                                    .status(StatusCode::NO_CONTENT)
                                    .body(Full::new(Bytes::new()))
                            }
                            _ => Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::new())),
                        };
                        Ok::<_, Infallible>(response.unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, reports)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}
