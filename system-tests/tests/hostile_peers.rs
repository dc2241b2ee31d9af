//! Strangers and misbehaving peers against the real `fluidity-server` binary and the real
//! agent: what a port scanner learns, what silent and slow connections cost, how an agent
//! behaves against a server that rejects it, and what a peer that never reads can hold.
//! Each test states the bound it proves (`docs/security.md` lists them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fluidity_core::pki::local_ca::LocalCa;
use fluidity_core::pki::{CertificateInfo, SigningOptions, TlsIdentity, csr, keys};
use fluidity_core::tls::TlsConnector;
use fluidity_server::credentials::DEV_ARN;
use support::{free_port, proc_memory_kib, start_server_process};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

fn loopback(n: u8) -> IpAddr {
    Ipv4Addr::new(127, 0, 0, n).into()
}

/// A TCP connection to `server` from the loopback address `source`.
async fn connect_from(source: IpAddr, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(server).await.unwrap()
}

fn dev_ca(dir: &std::path::Path) -> LocalCa {
    LocalCa::open_or_create(&dir.join("ca"), SigningOptions::default()).unwrap()
}

/// An agent certificate for `source`, from the development CA the server keeps in `dir`.
fn agent_identity(ca: &LocalCa, source: IpAddr) -> TlsIdentity {
    let key = keys::generate(fluidity_core::pki::KeyAlgorithm::EcdsaP256).unwrap();
    let request = csr::build(&key, DEV_ARN, &[source]).unwrap();
    let issued = ca
        .authority()
        .sign(&request, std::time::SystemTime::now())
        .unwrap();
    let chain = format!("{}{}", issued.certificate_pem, issued.chain_pem.concat());
    TlsIdentity::from_pem(chain.as_bytes(), key.serialize_pem().as_bytes()).unwrap()
}

fn agent_connector(ca: &LocalCa, source: IpAddr) -> TlsConnector {
    let roots = fluidity_core::pki::root_store("dev CA", ca.certificate_pem().as_bytes()).unwrap();
    TlsConnector::arn(&agent_identity(ca, source), roots, DEV_ARN).unwrap()
}

/// `GET path` on a local HTTP port; the body.
async fn http_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// One value of the server's `/metrics`.
async fn metric(health: u16, name: &str) -> f64 {
    let text = http_get(health, "/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// The certificate the server shows a client that presents none: what a scanner sees.
async fn presented_certificate(source: IpAddr, server: SocketAddr) -> CertificateInfo {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified};
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    #[derive(Debug, Default)]
    struct Capture(std::sync::Mutex<Option<Vec<u8>>>);
    impl rustls::client::danger::ServerCertVerifier for Capture {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            *self.0.lock().unwrap() = Some(end_entity.to_vec());
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            fluidity_core::pki::crypto_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let capture = Arc::new(Capture::default());
    let config = rustls::ClientConfig::builder_with_provider(fluidity_core::pki::crypto_provider())
        .with_protocol_versions(fluidity_core::pki::TLS_VERSIONS)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let tcp = connect_from(source, server).await;
    let name = ServerName::IpAddress(server.ip().into());
    // The server rejects us (no client certificate) after its certificate went out.
    let _ = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await;
    let der = capture
        .0
        .lock()
        .unwrap()
        .take()
        .expect("no certificate shown");
    CertificateInfo::parse(&der).unwrap()
}

/// Item 1: the server's certificate names the server alone, and nothing an unauthenticated
/// peer sends causes a CA signing. Scanners from 40 addresses and agents from 10 new
/// addresses: one signing (at start), and every client is shown `IP:127.0.0.1` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_learn_no_agent_address_and_cause_no_signing() {
    let dir = tempfile::tempdir().unwrap();
    let health = free_port();
    let health_addr = format!("127.0.0.1:{health}");
    let (_server, port) =
        start_server_process(dir.path(), &[("FLUIDITY_HEALTH_ADDR", &health_addr)]).await;
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    let ca = dev_ca(dir.path());

    for last in 2..=11 {
        // A real agent from a new address: accepted, and its hello arrives.
        let source = loopback(last);
        let tcp = connect_from(source, server).await;
        let mut established = agent_connector(&ca, source)
            .handshake(tcp, server)
            .await
            .unwrap();
        let mut first = [0u8; 1];
        established.stream.read_exact(&mut first).await.unwrap();
    }
    for last in 2..=41 {
        let shown = presented_certificate(loopback(last), server).await;
        assert_eq!(
            shown.ip_addresses,
            vec![loopback(1)],
            "seen from 127.0.0.{last}"
        );
        assert_eq!(shown.arn(), Some(DEV_ARN));
    }
    // What `openssl s_client` shows anyone: the server's address, nothing else.
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -tls1_3 </dev/null 2>/dev/null \
             | openssl x509 -noout -ext subjectAltName"
        ))
        .output()
        .await
        .expect("openssl must be installed (.ci/run installs it)");
    let sans = String::from_utf8_lossy(&output.stdout);
    assert!(sans.contains("IP Address:127.0.0.1"), "{sans}");
    assert_eq!(sans.matches("IP Address").count(), 1, "{sans}");

    assert_eq!(
        metric(health, "fluidity_certificate_signings_total").await,
        1.0
    );
}

/// Item 2: 300 silent TCP connections and 50 slow-loris TLS clients from 100 addresses are
/// held open against the server, and a real agent still gets its tunnel within 2 s: the
/// handshakes in flight are bounded (256, 8 per address; the oldest is evicted) apart from
/// the tunnel slots, which only authenticated agents take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_connections_do_not_lock_agents_out() {
    let dir = tempfile::tempdir().unwrap();
    let health = free_port();
    let health_addr = format!("127.0.0.1:{health}");
    let (_server, port) =
        start_server_process(dir.path(), &[("FLUIDITY_HEALTH_ADDR", &health_addr)]).await;
    let server: SocketAddr = ([127, 0, 0, 1], port).into();

    let mut held = Vec::new();
    for i in 0..300 {
        held.push(connect_from(loopback(2 + (i % 50) as u8), server).await);
    }
    let mut loris = Vec::new();
    for i in 0..50u8 {
        let mut tcp = connect_from(loopback(52 + i), server).await;
        loris.push(tokio::spawn(async move {
            // A TLS record header announcing a 512-byte ClientHello, then a byte at a time.
            let _ = tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if tcp.write_all(&[0x01]).await.is_err() {
                    return;
                }
            }
        }));
    }

    let origin = support::http_origin().await;
    let mut config = support::agent_config(dir.path(), server);
    config.server_arn = Some(DEV_ARN.to_owned());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let started = Instant::now();
    tokio::spawn(fluidity_agent::run(
        config,
        listener,
        std::future::pending(),
    ));
    loop {
        let (code, _) = support::curl_status(
            &["-x", &format!("http://{proxy}"), "--max-time", "1"],
            &format!("http://{origin}/hello"),
        )
        .await;
        if code == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "no tunnel within 2 s (last status {code})"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        metric(health, "fluidity_errors_total{cause=\"handshake_evicted\"}").await > 0.0,
        "the budget was full and evicted the oldest"
    );
    for task in loris {
        task.abort();
    }
    drop(held);
}

/// Item 3: a server that completes TLS 1.3 and then rejects the agent's certificate (as a
/// server does for a wrong ARN, IP or CA) sees no more connections in 10 s than the
/// agent's backoff schedule allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_rejected_after_the_handshake_backs_off() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dev_ca(dir.path());
    // The server presents a certificate the agent accepts, and trusts another CA only.
    let server_identity = agent_identity(&ca, loopback(1));
    let stranger_ca = LocalCa::in_memory(SigningOptions::default()).unwrap();
    let stranger_roots =
        fluidity_core::pki::root_store("other CA", stranger_ca.certificate_pem().as_bytes())
            .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        stranger_roots,
        fluidity_core::pki::crypto_provider(),
    )
    .build()
    .unwrap();
    let mut config =
        rustls::ServerConfig::builder_with_provider(fluidity_core::pki::crypto_provider())
            .with_protocol_versions(fluidity_core::pki::TLS_VERSIONS)
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                server_identity.chain.clone(),
                server_identity.key.clone_key(),
            )
            .unwrap();
    config.alpn_protocols = vec![fluidity_core::codec::ALPN_BINARY.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });

    let mut config = support::agent_config(dir.path(), server);
    config.server_arn = Some(DEV_ARN.to_owned());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent = tokio::spawn(fluidity_agent::run(
        config,
        listener,
        std::future::pending(),
    ));
    tokio::time::sleep(Duration::from_secs(10)).await;
    agent.abort();
    let made = connections.load(Ordering::SeqCst);
    let allowed = fluidity_core::Backoff::max_attempts_within(
        fluidity_agent::tunnel::BACKOFF_MIN,
        fluidity_agent::tunnel::BACKOFF_MAX,
        Duration::from_secs(10),
    );
    assert!(
        (2..=allowed).contains(&made),
        "{made} connections in 10 s (the schedule allows {allowed})"
    );
}

/// The binary frames of a client that says hello and then floods pings.
fn ping_flood(pings: usize) -> Vec<u8> {
    use fluidity_core::envelope::{Envelope, Heartbeat, Hello, PROTOCOL_VERSION, capability};
    let mut codec = fluidity_core::codec::CodecKind::Binary.new_codec(1 << 20);
    let mut out = bytes::BytesMut::new();
    let hello = Hello {
        version: PROTOCOL_VERSION,
        capabilities: vec![capability::HEARTBEAT.into()],
        initial_window: 1 << 18,
        connection_window: 1 << 24,
        max_frame_size: 1 << 20,
    };
    codec.encode(&Envelope::Hello(hello), &mut out).unwrap();
    for nonce in 0..pings {
        let ping = Envelope::Ping(Heartbeat {
            nonce: nonce as u64,
        });
        codec.encode(&ping, &mut out).unwrap();
    }
    out.to_vec()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Item 4: an authenticated agent that floods pings and never reads. The server stops
/// reading it once its replies back up (so its memory stays within a few MiB of output per
/// tunnel), closes the tunnel when nothing it writes is read for `dead_agent_timeout`, and
/// afterwards holds no task or descriptor for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_floods_and_never_reads_is_cut_off_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let health = free_port();
    let health_addr = format!("127.0.0.1:{health}");
    let (server_process, port) = start_server_process(
        dir.path(),
        &[
            ("FLUIDITY_HEALTH_ADDR", &health_addr),
            ("FLUIDITY_DEAD_AGENT_TIMEOUT", "4s"),
        ],
    )
    .await;
    let pid = server_process.id().unwrap();
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    let ca = dev_ca(dir.path());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss_before, fds_before) = (proc_memory_kib(pid, "VmRSS"), open_fds(pid));
    let tasks_before = metric(health, "fluidity_runtime_tasks").await;

    let tcp = TcpStream::connect(server).await.unwrap();
    let mut established = agent_connector(&ca, loopback(1))
        .handshake(tcp, server)
        .await
        .unwrap();
    let flood = ping_flood(200_000); // 2.6 MB per round
    let flooder = tokio::spawn(async move {
        loop {
            if established.stream.write_all(&flood).await.is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut peak = 0;
    loop {
        peak = peak.max(proc_memory_kib(pid, "VmRSS").saturating_sub(rss_before));
        if started.elapsed() > Duration::from_secs(1)
            && metric(health, "fluidity_tunnels").await == 0.0
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the tunnel was not closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(peak < 32 * 1024, "the server grew by {peak} KiB");
    flooder.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(open_fds(pid) <= fds_before, "descriptors left behind");
    assert!(
        metric(health, "fluidity_runtime_tasks").await <= tasks_before,
        "tasks left behind"
    );
}

/// Item 7: slow-loris clients on the agent's proxy port are closed at the header deadline
/// and never hold up other clients; a request head over the size limit gets 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_on_the_proxy_port_do_not_stop_others() {
    let origin = support::http_origin().await;
    let tunnel = support::Tunnel::start_with(
        |_| {},
        |agent| agent.header_read_timeout = Duration::from_secs(2),
    )
    .await;
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut tcp = TcpStream::connect(tunnel.proxy).await.unwrap();
        tcp.write_all(b"GET http://example.com/ HTTP/1.1\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(tcp);
    }
    let dribble = tokio::spawn(async move {
        // A byte every 300 ms per connection, never the end of the head.
        let started = Instant::now();
        let mut closed_at = vec![None; slow.len()];
        while started.elapsed() < Duration::from_secs(6) {
            for (tcp, closed) in slow.iter_mut().zip(closed_at.iter_mut()) {
                if closed.is_none() && tcp.write_all(b"a").await.is_err() {
                    *closed = Some(started.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        closed_at
    });
    // Meanwhile, other clients are served at once.
    for _ in 0..5 {
        let started = Instant::now();
        let (code, body) = support::curl_status(
            &["-x", &tunnel.proxy_url()],
            &format!("http://{origin}/hello"),
        )
        .await;
        assert_eq!((code, body.as_str()), (200, "hello from origin"));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    let closed_at = dribble.await.unwrap();
    assert!(
        closed_at
            .iter()
            .all(|at| at.is_some_and(|at| at < Duration::from_secs(5))),
        "every slow client was closed at the 2 s header deadline: {closed_at:?}"
    );

    let huge = "x".repeat(100 * 1024);
    let (code, _) = support::curl_status(
        &["-x", &tunnel.proxy_url(), "-H", &format!("X-Huge: {huge}")],
        &format!("http://{origin}/hello"),
    )
    .await;
    assert_eq!(code, 431);
}
