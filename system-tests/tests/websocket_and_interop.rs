//! WebSocket through the proxy (both paths), reaching the server through a real corporate
//! proxy (tinyproxy), a Go-format JSON session against the server, and the health endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use support::{ARN, Carrier, Tunnel, curl, http_origin, websocket_origin};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use support::read_head;

/// Text, 1 MiB binary, ping/pong and a close code, against the echo origin.
async fn exercise<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text("hello through fluidity"))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("hello through fluidity")
    );

    let big: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));

    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    // The origin answers the ping on its next read; nudge it with a message.
    ws.send(Message::text("after ping")).await.unwrap();
    let mut saw_pong = false;
    for _ in 0..2 {
        match ws.next().await.unwrap().unwrap() {
            Message::Pong(data) => {
                assert_eq!(&data[..], b"are you there");
                saw_pong = true;
            }
            Message::Text(text) => assert_eq!(text.as_str(), "after ping"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_pong);

    ws.close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    match ws.next().await {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 4001);
            assert_eq!(frame.reason.as_str(), "bye");
        }
        other => panic!("expected the echoed close, got {other:?}"),
    }
}

async fn websocket_through_the_plain_http_proxy_path(carrier: Carrier) {
    let origin = websocket_origin().await;
    let tunnel = Tunnel::start_on(carrier).await;
    let mut stream = TcpStream::connect(tunnel.proxy).await.unwrap();
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let request = format!(
        "GET http://{origin}/echo HTTP/1.1\r\nHost: {origin}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "sec-websocket-accept: {}",
            accept.to_ascii_lowercase()
        )),
        "{head}"
    );
    let ws = WebSocketStream::from_raw_socket(stream, Role::Client, None).await;
    exercise(ws).await;
}

async fn websocket_through_connect(carrier: Carrier) {
    let origin = websocket_origin().await;
    let tunnel = Tunnel::start_on(carrier).await;
    let stream = support::connect_through(tunnel.proxy, origin).await;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{origin}/echo"), stream)
        .await
        .unwrap();
    exercise(ws).await;
}

/// Starts tinyproxy on a free loopback port; returns the port and the child.
async fn tinyproxy(dir: &std::path::Path) -> (u16, tokio::process::Child) {
    let port = support::free_port();
    let config = dir.join("tinyproxy.conf");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 20\nAllow 127.0.0.1\n\
             LogLevel Info\nLogFile \"{}\"\nPidFile \"{}\"\n",
            dir.join("tinyproxy.log").display(),
            dir.join("tinyproxy.pid").display()
        ),
    )
    .unwrap();
    let child = tokio::process::Command::new("tinyproxy")
        .args(["-d", "-c"])
        .arg(&config)
        .kill_on_drop(true)
        .spawn()
        .expect("tinyproxy must be installed (.ci/run installs it)");
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return (port, child);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "tinyproxy did not start: {}",
        std::fs::read_to_string(dir.join("tinyproxy.log")).unwrap_or_default()
    );
}

async fn the_agent_reaches_the_server_through_an_upstream_proxy(carrier: Carrier) {
    let origin = http_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, _tinyproxy) = tinyproxy(dir.path()).await;
    let tunnel = Tunnel::start_on_with(
        carrier,
        |_| {},
        |agent| agent.upstream_proxy = Some(format!("http://127.0.0.1:{port}").into()),
    )
    .await;
    let (ok, body, err) =
        curl(&["-x", &tunnel.proxy_url(), &format!("http://{origin}/hello")]).await;
    assert!(ok, "{err}");
    assert_eq!(body, b"hello from origin");
    // The tunnel really went through tinyproxy.
    let log = std::fs::read_to_string(dir.path().join("tinyproxy.log")).unwrap_or_default();
    assert!(log.contains(&format!("CONNECT {}", tunnel.server)), "{log}");
}

type GoLines = tokio::io::Lines<BufReader<tokio::io::ReadHalf<fluidity_core::tls::TlsTcpStream>>>;
type GoWriter = tokio::io::WriteHalf<fluidity_core::tls::TlsTcpStream>;

/// A client that talks to the server like a Go agent: a CA-issued certificate for the
/// server's ARN (with a key like Go's when RSA), mutual TLS without ALPN, JSON lines.
async fn go_style_client(
    tunnel: &Tunnel,
    algorithm: fluidity_core::pki::KeyAlgorithm,
) -> (GoLines, GoWriter) {
    let stream =
        support::go_agent_tls(&tunnel.dir.path().join("ca"), tunnel.server, ARN, algorithm).await;
    let (read, write) = tokio::io::split(stream);
    (BufReader::new(read).lines(), write)
}

/// A Go agent's session, envelope lines exactly as the Go encoder writes them, over mutual TLS
/// without ALPN: the server answers in kind.
async fn a_go_format_json_session_against_the_server(carrier: Carrier) {
    let origin = http_origin().await;
    let tunnel = Tunnel::start_on(carrier).await;
    let (mut lines, mut write) =
        go_style_client(&tunnel, fluidity_core::pki::KeyAlgorithm::Rsa2048).await;
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    write.write_all(b"{\"type\":\"iam_auth_request\",\"payload\":{\"id\":\"0123456789abcdef0123456789abcdef\",\"timestamp\":\"2025-12-10T12:34:56.123456789+02:00\",\"service\":\"tunnel\",\"region\":\"us-east-1\",\"access_key_id\":\"AKIDEXAMPLE\",\"signature\":\"AWS4-HMAC-SHA256 Credential=x\",\"signed_headers\":\"\"}}\n").await.unwrap();
    write.flush().await.unwrap();
    let line = lines.next_line().await.unwrap().unwrap();
    assert_eq!(
        line,
        "{\"type\":\"iam_auth_response\",\"payload\":{\"id\":\"0123456789abcdef0123456789abcdef\",\"ok\":true}}"
    );

    let request = format!(
        "{{\"type\":\"http_request\",\"payload\":{{\"id\":\"a1b2c3d4e5f60718\",\"method\":\"POST\",\"url\":\"http://{origin}/checksum\",\"headers\":{{\"Content-Type\":[\"application/octet-stream\"]}},\"body\":\"{}\"}}}}\n",
        b64(b"0123456789")
    );
    write.write_all(request.as_bytes()).await.unwrap();
    write.flush().await.unwrap();
    let line = lines.next_line().await.unwrap().unwrap();
    let response: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(response["type"], "http_response", "{line}");
    assert_eq!(response["payload"]["id"], "a1b2c3d4e5f60718");
    assert_eq!(response["payload"]["status_code"], 200);
    let body = base64::engine::general_purpose::STANDARD
        .decode(response["payload"]["body"].as_str().unwrap())
        .unwrap();
    let expected = format!(
        "10 {:016x}",
        support::checksum(b"0123456789", support::FNV_START)
    );
    assert_eq!(String::from_utf8(body).unwrap(), expected);

    write
        .write_all(format!("{{\"type\":\"connect_open\",\"payload\":{{\"id\":\"c0ffee0000000001\",\"address\":\"{origin}\"}}}}\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(
        lines.next_line().await.unwrap().unwrap(),
        "{\"type\":\"connect_ack\",\"payload\":{\"id\":\"c0ffee0000000001\",\"ok\":true}}"
    );
    let get = format!("GET /hello HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n");
    write
        .write_all(format!("{{\"type\":\"connect_data\",\"payload\":{{\"id\":\"c0ffee0000000001\",\"chunk\":\"{}\"}}}}\n", b64(get.as_bytes())).as_bytes())
        .await
        .unwrap();
    let mut relayed = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let envelope: serde_json::Value = serde_json::from_str(&line).unwrap();
        match envelope["type"].as_str().unwrap() {
            "connect_data" => relayed.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(envelope["payload"]["chunk"].as_str().unwrap_or_default())
                    .unwrap(),
            ),
            "connect_close" => break,
            other => panic!("unexpected {other}: {line}"),
        }
    }
    let relayed = String::from_utf8(relayed).unwrap();
    assert!(relayed.starts_with("HTTP/1.1 200"), "{relayed}");
    assert!(relayed.ends_with("hello from origin"), "{relayed}");

    // A refused CONNECT answers ack ok:false with the reason, then connect_close, as Go
    // agents need.
    write
        .write_all(b"{\"type\":\"connect_open\",\"payload\":{\"id\":\"c0ffee0000000002\",\"address\":\"127.0.0.1:1\"}}\n")
        .await
        .unwrap();
    let line = lines.next_line().await.unwrap().unwrap();
    let ack: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(ack["type"], "connect_ack");
    assert_eq!(ack["payload"]["ok"], false);
    assert!(
        ack["payload"]["error"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{line}"
    );
}

async fn go_ws_open_is_served_by_the_server(carrier: Carrier) {
    let origin = websocket_origin().await;
    let tunnel = Tunnel::start_on(carrier).await;
    let (mut lines, mut write) =
        go_style_client(&tunnel, fluidity_core::pki::KeyAlgorithm::EcdsaP256).await;
    write.write_all(b"{\"type\":\"iam_auth_request\",\"payload\":{\"id\":\"0123456789abcdef0123456789abcdef\",\"timestamp\":\"2025-12-10T12:34:56Z\",\"service\":\"tunnel\",\"region\":\"us-east-1\",\"access_key_id\":\"AKIDEXAMPLE\",\"signature\":\"x\",\"signed_headers\":\"\"}}\n").await.unwrap();
    write.flush().await.unwrap();
    next(&mut lines).await;
    write
        .write_all(format!("{{\"type\":\"ws_open\",\"payload\":{{\"id\":\"feed000000000001\",\"url\":\"ws://{origin}/echo\",\"headers\":{{\"Origin\":[\"http://{origin}\"]}}}}}}\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(
        next(&mut lines).await,
        "{\"type\":\"ws_ack\",\"payload\":{\"id\":\"feed000000000001\",\"ok\":true}}"
    );
    write
        .write_all(b"{\"type\":\"ws_message\",\"payload\":{\"id\":\"feed000000000001\",\"message_type\":1,\"data\":\"aGVsbG8g4oCoIHdvcmxk\"}}\n")
        .await
        .unwrap();
    assert_eq!(
        next(&mut lines).await,
        "{\"type\":\"ws_message\",\"payload\":{\"id\":\"feed000000000001\",\"message_type\":1,\"data\":\"aGVsbG8g4oCoIHdvcmxk\"}}"
    );
    write
        .write_all(
            b"{\"type\":\"ws_close\",\"payload\":{\"id\":\"feed000000000001\",\"code\":1000}}\n",
        )
        .await
        .unwrap();
    let line = next(&mut lines).await;
    assert!(
        line.starts_with(
            "{\"type\":\"ws_close\",\"payload\":{\"id\":\"feed000000000001\",\"code\":1000"
        ),
        "{line}"
    );
}

async fn health_and_metrics_endpoints(carrier: Carrier) {
    let origin = http_origin().await;
    let health = std::net::SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let tunnel = Tunnel::start_on_with(
        carrier,
        move |server| server.health_addr = Some(health),
        |_| {},
    )
    .await;
    let (ok, _, err) = curl(&["-x", &tunnel.proxy_url(), &format!("http://{origin}/hello")]).await;
    assert!(ok, "{err}");
    let (ok, body, err) = curl(&[&format!("http://{health}/health")]).await;
    assert!(ok, "{err}");
    let health_doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(health_doc["status"], "ok");
    assert_eq!(health_doc["tunnels"], 1);
    let (ok, body, err) = curl(&[&format!("http://{health}/metrics")]).await;
    assert!(ok, "{err}");
    let metrics = String::from_utf8(body).unwrap();
    assert!(metrics.contains("fluidity_tunnels 1"), "{metrics}");
    // The agent relays plain HTTP to a Rust server over a CONNECT stream.
    assert!(
        metrics.contains("fluidity_streams_total{kind=\"connect\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fluidity_handshake_seconds_count 1"),
        "{metrics}"
    );
}

async fn next<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut tokio::io::Lines<R>) -> String {
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("no envelope from the server within 10 s")
        .unwrap()
        .unwrap();
    eprintln!("<- {line}");
    line
}

/// The server's HTTP exit verifies HTTPS targets: a private CA works once trusted through
/// `target_ca_file`, and is refused (502 with the reason) otherwise.
async fn the_http_exit_verifies_https_targets(carrier: Carrier) {
    let origin_dir = tempfile::tempdir().unwrap();
    let (origin, origin_ca) = support::https_origin(origin_dir.path()).await;
    let request = format!(
        "{{\"type\":\"http_request\",\"payload\":{{\"id\":\"a1b2c3d4e5f60718\",\"method\":\"GET\",\"url\":\"https://{origin}/hello\",\"headers\":{{\"Accept\":[\"*/*\"]}}}}}}\n"
    );
    for trusted in [true, false] {
        let ca = origin_ca.clone();
        let tunnel = Tunnel::start_on_with(
            carrier,
            move |server| {
                if trusted {
                    server.target_ca_file = Some(ca);
                }
            },
            |_| {},
        )
        .await;
        let (mut lines, mut write) =
            go_style_client(&tunnel, fluidity_core::pki::KeyAlgorithm::EcdsaP256).await;
        write.write_all(b"{\"type\":\"iam_auth_request\",\"payload\":{\"id\":\"0123456789abcdef0123456789abcdef\",\"timestamp\":\"2025-12-10T12:34:56Z\",\"service\":\"tunnel\",\"region\":\"us-east-1\",\"access_key_id\":\"AKIDEXAMPLE\",\"signature\":\"x\",\"signed_headers\":\"\"}}\n").await.unwrap();
        write.flush().await.unwrap();
        next(&mut lines).await;
        write.write_all(request.as_bytes()).await.unwrap();
        write.flush().await.unwrap();
        let line = next(&mut lines).await;
        let response: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(response["type"], "http_response", "{line}");
        if trusted {
            assert_eq!(response["payload"]["status_code"], 200, "{line}");
            let body = base64::engine::general_purpose::STANDARD
                .decode(response["payload"]["body"].as_str().unwrap())
                .unwrap();
            assert_eq!(body, b"hello from origin");
        } else {
            assert_eq!(response["payload"]["status_code"], 502, "{line}");
            let error = response["payload"]["error"]
                .as_str()
                .unwrap()
                .to_ascii_lowercase();
            assert!(error.contains("certificate"), "{line}");
        }
    }
}

on_both_transports!(
    websocket_through_the_plain_http_proxy_path,
    websocket_through_connect,
    the_agent_reaches_the_server_through_an_upstream_proxy,
    a_go_format_json_session_against_the_server,
    go_ws_open_is_served_by_the_server,
    health_and_metrics_endpoints,
    the_http_exit_verifies_https_targets,
);
