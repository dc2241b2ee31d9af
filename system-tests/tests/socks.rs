//! SOCKS5 on the agent, driven by real clients: curl (`--socks5-hostname`), a SOCKS5 client
//! built by hand with Python's `socket` (the reply codes), and Chromium (see `browser.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{Tunnel, curl, curl_status, free_port, http_origin, https_origin};

/// Runs `socks_client.py` against `proxy` and returns its `key=value` lines as pairs.
async fn hand_built(proxy: std::net::SocketAddr, args: &[&str]) -> Vec<(String, String)> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/socks_client.py");
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .arg(proxy.ip().to_string())
        .arg(proxy.port().to_string())
        .args(args)
        .output()
        .await
        .expect("python3 must be installed");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn value<'a>(answer: &'a [(String, String)], key: &str) -> Option<&'a str> {
    answer
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// curl speaks SOCKS5 to the proxy port (the same one that serves HTTP) and to the dedicated
/// `socks_port`, with the name resolved by the server (`--socks5-hostname`), for an HTTP and
/// an HTTPS target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_http_and_https_targets_through_socks5() {
    let origin = http_origin().await;
    let socks_port = free_port();
    let tunnel = Tunnel::start_with(
        |_| {},
        |agent| {
            agent.socks_port = Some(socks_port);
            agent.pac_protocol = fluidity_agent::config::PacProtocol::Socks5;
        },
    )
    .await;
    // The PAC file offers SOCKS5 first, the HTTP proxy as the fallback.
    let (code, pac) = curl_status(&[], &format!("http://{}/proxy.pac", tunnel.proxy)).await;
    assert_eq!(code, 200, "{pac}");
    let route = format!("SOCKS5 {0}; PROXY {0}", tunnel.proxy);
    assert!(pac.contains(&route), "{pac}");
    let dir = tempfile::tempdir().unwrap();
    let (secure, ca) = https_origin(dir.path()).await;
    for proxy in [tunnel.proxy.to_string(), format!("127.0.0.1:{socks_port}")] {
        let (ok, body, err) = curl(&[
            "--socks5-hostname",
            &proxy,
            &format!("http://localhost:{}/hello", origin.port()),
        ])
        .await;
        assert!(ok, "{proxy}: {err}");
        assert_eq!(body, b"hello from origin");
        let (ok, body, err) = curl(&[
            "--socks5-hostname",
            &proxy,
            "--cacert",
            ca.to_str().unwrap(),
            &format!("https://localhost:{}/bytes/300000", secure.port()),
        ])
        .await;
        assert!(ok, "{proxy}: {err}");
        assert_eq!(body.len(), 300_000);
    }
    // The HTTP proxy on the same port still works.
    let (code, body) = curl_status(
        &["-x", &tunnel.proxy_url()],
        &format!("http://{origin}/hello"),
    )
    .await;
    assert_eq!((code, body.as_str()), (200, "hello from origin"));
}

/// With `proxy_auth`, SOCKS5 clients must authenticate with the same user and password
/// (RFC 1929): right credentials pass, wrong ones and unauthenticated clients are refused
/// with the protocol's own answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_requires_the_proxy_credentials_when_set() {
    let origin = http_origin().await;
    let tunnel = Tunnel::start_with(
        |_| {},
        |agent| agent.proxy_auth = Some("alice:s3cret:with:colons".into()),
    )
    .await;
    let url = format!("http://{origin}/hello");
    let proxy = tunnel.proxy.to_string();
    let (ok, body, err) = curl(&[
        "--socks5-hostname",
        &proxy,
        "--proxy-user",
        "alice:s3cret:with:colons",
        &url,
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(body, b"hello from origin");
    let (ok, _, err) = curl(&[
        "--socks5-hostname",
        &proxy,
        "--proxy-user",
        "alice:wrong",
        &url,
    ])
    .await;
    assert!(!ok, "wrong password accepted: {err}");

    let ip = origin.ip().to_string();
    let port = origin.port().to_string();
    // No credentials offered: no acceptable method.
    let answer = hand_built(
        tunnel.proxy,
        &["connect", "ipv4", &ip, &port, "--methods", "0"],
    )
    .await;
    assert_eq!(value(&answer, "method"), Some("255"), "{answer:?}");
    // Wrong password: status 1, no request served.
    let answer = hand_built(
        tunnel.proxy,
        &["connect", "ipv4", &ip, &port, "--auth", "alice:nope"],
    )
    .await;
    assert_eq!(value(&answer, "auth"), Some("1"), "{answer:?}");
    assert_eq!(value(&answer, "reply"), None, "{answer:?}");
    // Right password: status 0, then the stream.
    let answer = hand_built(
        tunnel.proxy,
        &[
            "connect",
            "ipv4",
            &ip,
            &port,
            "--auth",
            "alice:s3cret:with:colons",
            "--send",
            "GET /hello HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n",
        ],
    )
    .await;
    assert_eq!(value(&answer, "auth"), Some("0"), "{answer:?}");
    assert_eq!(value(&answer, "reply"), Some("0"), "{answer:?}");
    assert!(
        value(&answer, "answer").is_some_and(|a| a.ends_with("hello from origin")),
        "{answer:?}"
    );
}

/// Each failure gets its own RFC 1928 reply code: the server's egress policy → 2 ("not
/// allowed by ruleset"), a closed port → 5 ("connection refused"), BIND and UDP ASSOCIATE →
/// 7 ("command not supported"), an unknown address type → 8. IPv4, IPv6 and domain
/// addresses all work, the domain resolved by the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_gets_its_socks5_reply_code() {
    let origin = http_origin().await;
    let tunnel = Tunnel::start_with(
        |server| server.egress_deny = Some(vec!["127.0.0.2/32".into(), "::1/128".into()]),
        |_| {},
    )
    .await;
    let closed = free_port().to_string();
    let port = origin.port().to_string();
    let request = "GET /hello HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n";
    for (case, args, reply) in [
        (
            "ipv4",
            vec!["connect", "ipv4", "127.0.0.1", &port, "--send", request],
            "0",
        ),
        (
            "domain",
            vec!["connect", "domain", "localhost", &port, "--send", request],
            "0",
        ),
        (
            "denied ipv4",
            vec!["connect", "ipv4", "127.0.0.2", &port],
            "2",
        ),
        ("denied ipv6", vec!["connect", "ipv6", "::1", &port], "2"),
        (
            "closed port",
            vec!["connect", "ipv4", "127.0.0.1", &closed],
            "5",
        ),
        ("bind", vec!["bind", "ipv4", "127.0.0.1", &port], "7"),
        (
            "udp associate",
            vec!["udp", "ipv4", "127.0.0.1", &port],
            "7",
        ),
        ("address type 5", vec!["connect", "5", "xxxx", &port], "8"),
    ] {
        let answer = hand_built(tunnel.proxy, &args).await;
        assert_eq!(value(&answer, "method"), Some("0"), "{case}: {answer:?}");
        assert_eq!(value(&answer, "reply"), Some(reply), "{case}: {answer:?}");
        if reply == "0" {
            assert!(
                value(&answer, "answer").is_some_and(|a| a.ends_with("hello from origin")),
                "{case}: {answer:?}"
            );
        }
    }
}
