//! The tunnel end to end, in-process: curl and real clients through the agent's proxy, a
//! Fluidity server over mutual TLS, and origins on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::{
    Carrier, FNV_START, Tunnel, checksum, curl, curl_status, http_origin, https_origin, pattern,
    read_head,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn curl_get_through_the_proxy(carrier: Carrier) {
    let origin = http_origin().await;
    let tunnel = Tunnel::start_on(carrier).await;
    let (ok, body, err) =
        curl(&["-x", &tunnel.proxy_url(), &format!("http://{origin}/hello")]).await;
    assert!(ok, "{err}");
    assert_eq!(body, b"hello from origin");
}

async fn curl_post_of_20_mib_arrives_intact(carrier: Carrier) {
    let origin = http_origin().await;
    let tunnel = Tunnel::start_on(carrier).await;
    let body: Vec<u8> = (0..20u64 << 20).map(|i| (i * 7 % 256) as u8).collect();
    let file = tunnel.dir.path().join("upload.bin");
    std::fs::write(&file, &body).unwrap();
    let (ok, answer, err) = curl(&[
        "-x",
        &tunnel.proxy_url(),
        "--data-binary",
        &format!("@{}", file.display()),
        "-H",
        "Content-Type: application/octet-stream",
        &format!("http://{origin}/checksum"),
    ])
    .await;
    assert!(ok, "{err}");
    let expected = format!("{} {:016x}", body.len(), checksum(&body, FNV_START));
    assert_eq!(String::from_utf8(answer).unwrap(), expected);

    // Chunked upload of unknown length too.
    let (ok, answer, err) = curl(&[
        "-x",
        &tunnel.proxy_url(),
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("http://{origin}/checksum"),
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(String::from_utf8(answer).unwrap(), expected);
}

async fn a_large_download_streams_intact(carrier: Carrier) {
    let origin = http_origin().await;
    let tunnel = Tunnel::start_on(carrier).await;
    let size: u64 = 256 << 20;
    let client = tunnel.client();
    let mut response = client
        .get(format!("http://{origin}/bytes/{size}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut offset = 0u64;
    while let Some(chunk) = response.chunk().await.unwrap() {
        assert!(
            chunk[..] == *support::pattern_slice(offset, chunk.len()),
            "corrupt bytes near offset {offset}"
        );
        offset += chunk.len() as u64;
    }
    assert_eq!(offset, size);
}

async fn connect_to_a_local_https_origin(carrier: Carrier) {
    let tunnel = Tunnel::start_on(carrier).await;
    let (origin, ca) = https_origin(tunnel.dir.path()).await;
    let (ok, body, err) = curl(&[
        "-x",
        &tunnel.proxy_url(),
        "--cacert",
        &ca.display().to_string(),
        &format!("https://{origin}/hello"),
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(body, b"hello from origin");
}

async fn a_hundred_concurrent_requests(carrier: Carrier) {
    let origin = http_origin().await;
    let tunnel = Tunnel::start_on(carrier).await;
    let client = tunnel.client();
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let size = 1000 + i * 997;
            let body = client
                .get(format!("http://{origin}/bytes/{size}"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(body.len() as u64, size);
            assert!(
                body.iter()
                    .enumerate()
                    .all(|(j, b)| *b == pattern(j as u64))
            );
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

async fn headers_cookies_204_and_head_are_preserved(carrier: Carrier) {
    let origin = http_origin().await;
    let tunnel = Tunnel::start_on(carrier).await;
    let (ok, head, err) = curl(&[
        "-x",
        &tunnel.proxy_url(),
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("http://{origin}/cookies"),
    ])
    .await;
    assert!(ok, "{err}");
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.contains("set-cookie: a=1; path=/"), "{head}");
    assert!(head.contains("set-cookie: b=2; path=/"), "{head}");
    assert!(head.contains("x-origin: yes"), "{head}");

    let (ok, status, err) = curl(&[
        "-x",
        &tunnel.proxy_url(),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{origin}/empty"),
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(status, b"204");

    let (ok, head, err) = curl(&[
        "-x",
        &tunnel.proxy_url(),
        "-I",
        &format!("http://{origin}/hello"),
    ])
    .await;
    assert!(ok, "{err}");
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-length: 17"),
        "HEAD keeps the GET length: {head}"
    );

    // End-to-end request headers arrive; hop-by-hop and proxy headers do not.
    let (ok, body, err) = curl(&[
        "-x",
        &tunnel.proxy_url(),
        "-H",
        "X-Custom: kept",
        "-H",
        "Proxy-Authorization: Basic c2VjcmV0",
        "-H",
        "Connection: X-Private",
        "-H",
        "X-Private: dropped",
        &format!("http://{origin}/echo-headers"),
    ])
    .await;
    assert!(ok, "{err}");
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains("x-custom: kept"), "{body}");
    assert!(!body.contains("proxy-authorization"), "{body}");
    assert!(!body.contains("x-private"), "{body}");
    assert!(body.contains(&format!("host: {origin}")), "{body}");
}

async fn an_unreachable_target_is_a_fast_502_with_the_reason(carrier: Carrier) {
    let tunnel = Tunnel::start_on(carrier).await;
    // A port nobody listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    // Warm the tunnel up so the measurement is about the target.
    let origin = http_origin().await;
    curl(&["-x", &tunnel.proxy_url(), &format!("http://{origin}/hello")]).await;

    let started = Instant::now();
    let (code, body) =
        curl_status(&["-x", &tunnel.proxy_url()], &format!("http://{closed}/")).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(code, 502, "{body}");
    assert!(body.to_ascii_lowercase().contains("refused"), "{body}");

    let started = Instant::now();
    let (ok, _, err) = curl(&[
        "-x",
        &tunnel.proxy_url(),
        "-p",
        &format!("http://{closed}/"),
    ])
    .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(!ok);
    assert!(err.contains("502"), "{err}");
}

async fn the_default_egress_policy_refuses_loopback_with_a_clear_error(carrier: Carrier) {
    let origin = http_origin().await;
    let tunnel = Tunnel::start_on_with(carrier, |server| server.egress_deny = None, |_| {}).await;
    let (code, body) = curl_status(
        &["-x", &tunnel.proxy_url()],
        &format!("http://{origin}/hello"),
    )
    .await;
    // 403, as a filtering proxy answers, with the server's reason.
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("denied by the server's policy"), "{body}");
    let (ok, _, err) = curl(&[
        "-x",
        &tunnel.proxy_url(),
        "-p",
        &format!("http://{origin}/hello"),
    ])
    .await;
    assert!(!ok && err.contains("403"), "{err}");
    // The server's own network is closed by default: private, shared and unique-local
    // ranges, and IPv4 hidden in IPv6 (nothing is dialled: the policy decides first).
    for target in [
        "10.0.0.1:80",
        "172.16.0.1:443",
        "192.168.1.1:80",
        "100.64.0.1:80",
        "169.254.169.254:80",
        "[fd00::1]:80",
        "[::ffff:10.0.0.1]:80",
        "224.0.0.1:80",
    ] {
        let (code, body) =
            curl_status(&["-x", &tunnel.proxy_url()], &format!("http://{target}/")).await;
        assert_eq!(code, 403, "{target}: {body}");
        assert!(
            body.contains("denied by the server's policy"),
            "{target}: {body}"
        );
    }
}

async fn egress_allow_opens_one_exception_to_the_default_policy(carrier: Carrier) {
    let origin = http_origin().await;
    let tunnel = Tunnel::start_on_with(
        carrier,
        |server| {
            server.egress_deny = None;
            server.egress_allow = vec![format!("{}/32", origin.ip())];
        },
        |_| {},
    )
    .await;
    let (code, body) = curl_status(
        &["-x", &tunnel.proxy_url()],
        &format!("http://{origin}/hello"),
    )
    .await;
    assert_eq!((code, body.as_str()), (200, "hello from origin"));
    let (code, body) = curl_status(&["-x", &tunnel.proxy_url()], "http://127.0.0.2:9/").await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("denied by the server's policy"), "{body}");
}

async fn proxy_authentication_and_the_pac_file(carrier: Carrier) {
    let origin = http_origin().await;
    let tunnel = Tunnel::start_on_with(
        carrier,
        |_| {},
        |agent| agent.proxy_auth = Some("alice:s3cret".into()),
    )
    .await;
    let url = format!("http://{origin}/hello");
    let (_, status, _) = curl(&[
        "-x",
        &tunnel.proxy_url(),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url,
    ])
    .await;
    assert_eq!(status, b"407");
    let (_, status, _) = curl(&[
        "-x",
        &tunnel.proxy_url(),
        "-U",
        "alice:wrong",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url,
    ])
    .await;
    assert_eq!(status, b"407");
    let (ok, body, err) = curl(&["-x", &tunnel.proxy_url(), "-U", "alice:s3cret", &url]).await;
    assert!(ok, "{err}");
    assert_eq!(body, b"hello from origin");
    let (ok, _, err) = curl(&["-x", &tunnel.proxy_url(), "-p", &url]).await;
    assert!(!ok && err.contains("407"), "CONNECT needs it too: {err}");

    let (ok, pac, err) = curl(&[&format!("{}/proxy.pac", tunnel.proxy_url())]).await;
    assert!(ok, "{err}");
    let pac = String::from_utf8(pac).unwrap();
    assert!(pac.contains("FindProxyForURL"), "{pac}");
    assert!(pac.contains(&format!("PROXY {}", tunnel.proxy)), "{pac}");

    // The status document needs the credentials (the PAC file does not).
    let status_url = format!("{}/status", tunnel.proxy_url());
    let (code, _) = curl_status(&[], &status_url).await;
    assert_eq!(code, 401);
    let (ok, status, err) = curl(&["-u", "alice:s3cret", &status_url]).await;
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(status["tunnel"], "up", "{status}");
    assert!(status["tasks"].as_u64().unwrap() > 0, "{status}");
}

async fn bytes_pipelined_after_the_connect_head_are_not_lost(carrier: Carrier) {
    let origin = http_origin().await;
    let tunnel = Tunnel::start_on(carrier).await;
    let mut client = TcpStream::connect(tunnel.proxy).await.unwrap();
    // CONNECT head and the tunnelled request in one write.
    let request = format!(
        "CONNECT {origin} HTTP/1.1\r\nHost: {origin}\r\n\r\nGET /hello HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n"
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello from origin"), "{answer}");
}

async fn the_agent_reconnects_after_a_server_restart(carrier: Carrier) {
    let origin = http_origin().await;
    let mut tunnel = Tunnel::start_on(carrier).await;
    let url = format!("http://{origin}/hello");
    let (ok, _, err) = curl(&["-x", &tunnel.proxy_url(), &url]).await;
    assert!(ok, "{err}");
    tunnel.stop_server().await;
    // While it is down, a request waits and then fails clearly... (reconnect_wait is 10 s in
    // the fixture; restart well before that.)
    let proxy = tunnel.proxy_url();
    let request = tokio::spawn({
        let url = url.clone();
        async move { curl(&["-x", &proxy, &url]).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    tunnel.restart_server().await;
    let (ok, body, err) = request.await.unwrap();
    assert!(ok, "{err}");
    assert_eq!(body, b"hello from origin");
    let (ok, body, err) = curl(&["-x", &tunnel.proxy_url(), &url]).await;
    assert!(ok, "{err}");
    assert_eq!(body, b"hello from origin");
}

async fn a_stalled_connect_reader_does_not_slow_another_download(carrier: Carrier) {
    let origin = http_origin().await;
    let tunnel = Tunnel::start_on(carrier).await;
    // Stream A: a CONNECT whose client never reads, fed by a large download.
    let mut stalled = TcpStream::connect(tunnel.proxy).await.unwrap();
    stalled
        .write_all(format!("CONNECT {origin} HTTP/1.1\r\nHost: {origin}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut stalled).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stalled
        .write_all(
            format!(
                "GET /bytes/{} HTTP/1.1\r\nHost: {origin}\r\n\r\n",
                1u64 << 30
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Stream B: 64 MiB must still arrive promptly.
    let client = tunnel.client();
    let started = Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(30), async {
        client
            .get(format!("http://{origin}/bytes/{}", 64u64 << 20))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    })
    .await
    .expect("the download was held up by the stalled stream");
    assert_eq!(body.len() as u64, 64 << 20);
    println!("64 MiB beside a stalled stream in {:?}", started.elapsed());
    drop(stalled);
}

async fn random_bytes_to_the_server_do_not_disturb_other_tunnels(carrier: Carrier) {
    let origin = http_origin().await;
    let tunnel = Tunnel::start_on(carrier).await;
    let url = format!("http://{origin}/hello");
    let (ok, _, err) = curl(&["-x", &tunnel.proxy_url(), &url]).await;
    assert!(ok, "{err}");
    // Garbage, a truncated ClientHello and a silent connection.
    let mut junk = Vec::new();
    for seed in 0..20u8 {
        let mut stream = TcpStream::connect(tunnel.server).await.unwrap();
        let bytes: Vec<u8> = (0..4096u32)
            .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
            .collect();
        let _ = stream.write_all(&bytes).await;
        junk.push(stream);
    }
    let mut hello = TcpStream::connect(tunnel.server).await.unwrap();
    let _ = hello.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
    junk.push(hello);
    for _ in 0..5 {
        let (ok, body, err) = curl(&["-x", &tunnel.proxy_url(), &url]).await;
        assert!(ok, "{err}");
        assert_eq!(body, b"hello from origin");
    }
}

async fn the_server_refuses_tunnels_beyond_max_connections(carrier: Carrier) {
    let origin = http_origin().await;
    let tunnel = Tunnel::start_on_with(carrier, |server| server.max_connections = 1, |_| {}).await;
    // The agent's tunnel takes the only slot.
    let (ok, _, err) = curl(&["-x", &tunnel.proxy_url(), &format!("http://{origin}/hello")]).await;
    assert!(ok, "{err}");
    // A second agent is turned away cleanly: its handshake fails, the first keeps working.
    let mut second = support::agent_config(tunnel.dir.path(), tunnel.server);
    second.certificates.cache_dir = Some(tunnel.dir.path().join("second-agent"));
    second.reconnect_wait = Duration::from_millis(1500);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second_proxy = listener.local_addr().unwrap();
    tokio::spawn(fluidity_agent::run(
        second,
        listener,
        std::future::pending(),
    ));
    let (code, body) = curl_status(
        &["-x", &format!("http://{second_proxy}")],
        &format!("http://{origin}/hello"),
    )
    .await;
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("did not come back"), "{body}");
    let (ok, body, err) =
        curl(&["-x", &tunnel.proxy_url(), &format!("http://{origin}/hello")]).await;
    assert!(ok, "{err}");
    assert_eq!(body, b"hello from origin");
}

/// With two streams held open and either side's `max_streams` at 2, further requests get 503
/// with the reason, and those refusals do not trip the host's breaker (5 failures would):
/// once a stream closes, the host works again.
async fn streams_beyond_either_stream_limit_get_503_not_a_broken_host(carrier: Carrier) {
    let origin = http_origin().await;
    let url = format!("http://{origin}/hello");
    for (server_limit, agent_limit, side) in [(2, 1024, "server"), (1024, 2, "agent")] {
        let tunnel = Tunnel::start_on_with(
            carrier,
            move |server| server.max_streams = server_limit,
            move |agent| agent.max_streams = agent_limit,
        )
        .await;
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(support::connect_through(tunnel.proxy, origin).await);
        }
        for _ in 0..6 {
            let (code, body) = curl_status(&["-x", &tunnel.proxy_url()], &url).await;
            assert_eq!(code, 503, "{side} limit: {body}");
            assert!(
                body.contains("too many concurrent streams"),
                "{side} limit: {body}"
            );
        }
        drop(held);
        let started = Instant::now();
        loop {
            let (code, body) = curl_status(&["-x", &tunnel.proxy_url()], &url).await;
            if code == 200 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{side} limit: still {code} after the streams closed: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A raw HTTP/1.1 origin that numbers its connections and the requests on each, answering
/// "request R on connection C"; with `one_per_connection` it closes each connection after its
/// first answer, without saying so (as an origin whose keep-alive timer fired would).
async fn counting_origin(one_per_connection: bool) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut connections = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            connections += 1;
            let connection = connections;
            tokio::spawn(async move {
                for request in 1.. {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read_u8().await {
                            Ok(byte) => head.push(byte),
                            Err(_) => return,
                        }
                    }
                    let body = format!("request {request} on connection {connection}\n");
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err() || one_per_connection {
                        return;
                    }
                }
            });
        }
    });
    address
}

/// Plain HTTP to a Rust server is relayed over CONNECT streams: the requests of one client
/// connection share one origin connection; a kept connection the origin closed is replaced
/// without the client noticing; a client moving between origins is served by each.
async fn plain_http_keeps_one_origin_connection_per_client_connection(carrier: Carrier) {
    let tunnel = Tunnel::start_on(carrier).await;
    let keeping = counting_origin(false).await;
    let closing = counting_origin(true).await;
    let proxy = tunnel.proxy_url();
    let urls = |origin: std::net::SocketAddr| {
        ["/a", "/b", "/c"].map(|path| format!("http://{origin}{path}"))
    };
    let [a, b, c] = urls(keeping);
    let (ok, body, err) = curl(&["-x", &proxy, &a, &b, &c]).await;
    assert!(ok, "{err}");
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "request 1 on connection 1\nrequest 2 on connection 1\nrequest 3 on connection 1\n"
    );
    let [a, b, c] = urls(closing);
    let (ok, body, err) = curl(&["-x", &proxy, &a, &b, &c]).await;
    assert!(ok, "{err}");
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "request 1 on connection 1\nrequest 1 on connection 2\nrequest 1 on connection 3\n"
    );
    // The origin gets the target's host, not whatever Host the client sent, and no
    // hop-by-hop or proxy headers.
    let echo = http_origin().await;
    let (ok, headers, err) = curl(&[
        "-x",
        &proxy,
        "-H",
        "Host: elsewhere.example",
        "-H",
        "Connection: keep-alive, X-Hop",
        "-H",
        "X-Hop: 1",
        "-H",
        "X-Kept: 2",
        &format!("http://{echo}/echo-headers"),
    ])
    .await;
    assert!(ok, "{err}");
    let headers = String::from_utf8(headers).unwrap();
    assert!(headers.contains(&format!("host: {echo}")), "{headers}");
    assert!(headers.contains("x-kept: 2"), "{headers}");
    assert!(!headers.contains("x-hop"), "{headers}");
    assert!(!headers.contains("proxy-"), "{headers}");
    let [a, _, c] = urls(keeping);
    let [_, b, _] = urls(closing);
    let (ok, body, err) = curl(&["-x", &proxy, &a, &b, &c]).await;
    assert!(ok, "{err}");
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "request 1 on connection 2\nrequest 1 on connection 4\nrequest 1 on connection 3\n"
    );
}

on_both_transports!(
    curl_get_through_the_proxy,
    curl_post_of_20_mib_arrives_intact,
    a_large_download_streams_intact,
    connect_to_a_local_https_origin,
    a_hundred_concurrent_requests,
    headers_cookies_204_and_head_are_preserved,
    an_unreachable_target_is_a_fast_502_with_the_reason,
    the_default_egress_policy_refuses_loopback_with_a_clear_error,
    egress_allow_opens_one_exception_to_the_default_policy,
    proxy_authentication_and_the_pac_file,
    bytes_pipelined_after_the_connect_head_are_not_lost,
    the_agent_reconnects_after_a_server_restart,
    a_stalled_connect_reader_does_not_slow_another_download,
    random_bytes_to_the_server_do_not_disturb_other_tunnels,
    the_server_refuses_tunnels_beyond_max_connections,
    streams_beyond_either_stream_limit_get_503_not_a_broken_host,
    plain_http_keeps_one_origin_connection_per_client_connection,
);
