//! The server's certificate manager (signed at start, renewed in the background, never
//! because of a connection) and the agent's certificate cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fluidity_core::pki::agent_certs::{AgentCertConfig, AgentCertManager};
use fluidity_core::pki::server_certs::{ServerCertConfig, ServerCertManager};
use fluidity_core::tls::{TlsAcceptor, TlsConnector};
use support::{ARN, CountingIssuer, OTHER_ARN, identity, ip, new_ca, roots};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

/// A server accepting tunnel handshakes on loopback until dropped; each accepted connection
/// sends one byte.
async fn serve(acceptor: TlsAcceptor) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = Arc::new(acceptor);
    let task = tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            // Handshakes run in their own tasks: a signing never blocks the accept loop.
            tokio::spawn(async move {
                if let Ok(mut established) = acceptor.accept(tcp, peer).await {
                    let _ = established.stream.write_all(b"!").await;
                    let _ = established.stream.flush().await;
                    let mut rest = Vec::new();
                    let _ = established.stream.read_to_end(&mut rest).await;
                }
            });
        }
    });
    (address, task)
}

/// Connects from `source` (a loopback address) and waits for the server's byte.
async fn connect_from(connector: &TlsConnector, source: IpAddr, server: SocketAddr) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let tcp = socket.connect(server).await.unwrap();
    let mut established = connector.handshake(tcp, server).await.unwrap();
    let mut byte = [0u8; 1];
    established.stream.read_exact(&mut byte).await.unwrap();
    assert_eq!(&byte, b"!");
}

fn manager_with(issuer: Arc<CountingIssuer>, config: ServerCertConfig) -> Arc<ServerCertManager> {
    Arc::new(ServerCertManager::new(config, issuer).unwrap())
}

/// Waits (up to 5 s) until `manager` made `signings` signings.
async fn wait_for_signings(manager: &ServerCertManager, signings: u64) {
    let started = std::time::Instant::now();
    while manager.signings() < signings {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "only {} signings",
            manager.signings()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_certificate_is_signed_at_start_and_clients_never_cause_signings() {
    let ca = new_ca();
    let issuer = CountingIssuer::new(ca.clone());
    let manager = manager_with(issuer.clone(), ServerCertConfig::new(ARN, ip("127.0.0.1")));
    let (address, _server) = serve(TlsAcceptor::arn(manager.clone(), roots(&ca)).unwrap()).await;
    let connector =
        TlsConnector::arn(&identity(&ca, ARN, &[ip("127.0.0.1")]), roots(&ca), ARN).unwrap();

    // Before the first certificate, a handshake fails at once with the reason; it signs
    // nothing itself.
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let started = std::time::Instant::now();
    assert!(connector.handshake(tcp, address).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(2));
    let err = manager.current().unwrap_err();
    assert!(err.to_string().contains("no certificate yet"), "{err}");
    assert_eq!(issuer.calls(), 0);

    let _renewal = tokio::spawn(manager.clone().maintain());
    wait_for_signings(&manager, 1).await;
    connect_from(&connector, ip("127.0.0.1"), address).await;

    // Agents from new addresses: no signing, and the certificate names the server alone
    // (what strangers are shown is tested against the server binary in system-tests).
    for last in 2..=12 {
        let source = ip(&format!("127.0.0.{last}"));
        let agent = TlsConnector::arn(&identity(&ca, ARN, &[source]), roots(&ca), ARN).unwrap();
        connect_from(&agent, source, address).await;
    }
    let info = manager.info().unwrap();
    assert_eq!(info.ip_addresses, vec![ip("127.0.0.1")]);
    assert_eq!(info.arn(), Some(ARN));
    assert_eq!(manager.signings(), 1);
    assert_eq!(issuer.calls(), 1);
}

#[tokio::test]
async fn fifty_concurrent_refreshes_sign_once() {
    let ca = new_ca();
    // A slow CA, so the refreshes really overlap the signing.
    let issuer = CountingIssuer::slow(ca.clone(), Duration::from_millis(300));
    let manager = manager_with(issuer.clone(), ServerCertConfig::new(ARN, ip("127.0.0.1")));
    let mut refreshes = Vec::new();
    for _ in 0..50 {
        let manager = manager.clone();
        refreshes.push(tokio::spawn(async move { manager.refresh().await }));
    }
    for refresh in refreshes {
        refresh.await.unwrap().unwrap();
    }
    assert_eq!(issuer.calls(), 1);
    assert_eq!(manager.signings(), 1);
}

#[tokio::test]
async fn a_failed_signing_is_reported_retried_with_backoff_and_recovers() {
    let ca = new_ca();
    let issuer = CountingIssuer::new(ca.clone());
    issuer.fail.store(true, Ordering::SeqCst);
    let mut config = ServerCertConfig::new(ARN, ip("192.0.2.1"));
    config.retry = (Duration::from_millis(100), Duration::from_millis(200));
    let manager = manager_with(issuer.clone(), config);
    let first = manager.refresh().await.unwrap_err();
    assert!(first.to_string().contains("CA unavailable"), "{first}");
    let shown = manager.current().unwrap_err();
    assert!(shown.to_string().contains("CA unavailable"), "{shown}");

    let _renewal = tokio::spawn(manager.clone().maintain());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failed_calls = issuer.calls();
    assert!(
        (2..=7).contains(&failed_calls),
        "retries follow the backoff, not a loop: {failed_calls} calls"
    );
    issuer.fail.store(false, Ordering::SeqCst);
    wait_for_signings(&manager, 1).await;
    manager.current().unwrap();
}

#[tokio::test]
async fn a_certificate_due_for_renewal_is_renewed_in_the_background() {
    let ca = new_ca();
    let issuer = CountingIssuer::new(ca.clone());
    // The first certificate is signed as if 23 h ago: valid, but past 90 % of its life.
    issuer.shift_next.store(-23 * 3600, Ordering::SeqCst);
    let manager = manager_with(issuer.clone(), ServerCertConfig::new(ARN, ip("192.0.2.1")));
    let _renewal = tokio::spawn(manager.clone().maintain());
    wait_for_signings(&manager, 2).await;
    let info = manager.info().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        info.not_after - now > 23 * 3600,
        "renewed for a full lifetime"
    );
    // And it stays: no renewal loop.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(manager.signings(), 2);
}

#[tokio::test]
async fn the_server_certificate_and_key_persist_in_the_cache_dir() {
    let ca = new_ca();
    let dir = tempfile::tempdir().unwrap();
    let issuer = CountingIssuer::new(ca.clone());
    let mut config = ServerCertConfig::new(ARN, ip("192.0.2.1"));
    config.cache_dir = Some(dir.path().join("server"));
    let manager = manager_with(issuer.clone(), config.clone());
    manager.refresh().await.unwrap();
    assert_eq!(issuer.calls(), 1);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("server/server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    drop(manager);

    // A restarted server (same task) reuses both.
    let restarted = manager_with(issuer.clone(), config.clone());
    restarted.current().unwrap();
    restarted.refresh().await.unwrap();
    assert_eq!(issuer.calls(), 1);

    // A new task (new ARN) does not reuse the old certificate.
    let mut new_task = config.clone();
    new_task.server_arn = OTHER_ARN.to_owned();
    let replaced = manager_with(issuer.clone(), new_task);
    assert!(replaced.current().is_err());
    replaced.refresh().await.unwrap();
    assert_eq!(issuer.calls(), 2);
}

#[tokio::test]
async fn a_cached_certificate_listing_agent_addresses_is_not_reused() {
    let ca = new_ca();
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerCertConfig::new(ARN, ip("192.0.2.1"));
    config.cache_dir = Some(dir.path().join("server"));
    let issuer = CountingIssuer::new(ca.clone());
    drop(manager_with(issuer.clone(), config.clone()));
    // What an earlier version cached: the server's key, with agents' IPs in the SANs.
    let key_pem = std::fs::read_to_string(dir.path().join("server/server.key")).unwrap();
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let request =
        fluidity_core::pki::csr::build(&key, ARN, &[ip("192.0.2.1"), ip("198.51.100.7")]).unwrap();
    let issued = ca
        .authority()
        .sign(&request, std::time::SystemTime::now())
        .unwrap();
    std::fs::write(
        dir.path().join("server/server.crt"),
        format!("{}{}", issued.certificate_pem, issued.chain_pem.concat()),
    )
    .unwrap();

    let manager = manager_with(issuer.clone(), config);
    assert!(
        manager.current().is_err(),
        "an old certificate with agent IPs is dropped"
    );
    manager.refresh().await.unwrap();
    assert_eq!(manager.info().unwrap().ip_addresses, vec![ip("192.0.2.1")]);
}

// ---------------------------------------------------------------------------------------
// The agent's cache.
// ---------------------------------------------------------------------------------------

fn agent_cache(issuer: Arc<CountingIssuer>, dir: &std::path::Path) -> AgentCertManager {
    AgentCertManager::new(
        AgentCertConfig {
            cache_dir: Some(dir.to_owned()),
            ..AgentCertConfig::default()
        },
        issuer,
    )
}

#[tokio::test]
async fn a_valid_cached_agent_certificate_is_reused_without_a_ca_call() {
    let ca = new_ca();
    let dir = tempfile::tempdir().unwrap();
    let issuer = CountingIssuer::new(ca.clone());
    let first = agent_cache(issuer.clone(), dir.path())
        .identity_for(ARN, ip("203.0.113.9"))
        .await
        .unwrap();
    assert_eq!(issuer.calls(), 1);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("agent.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A new process (a new manager) finds it on disk.
    let again = agent_cache(issuer.clone(), dir.path())
        .identity_for(ARN, ip("203.0.113.9"))
        .await
        .unwrap();
    assert_eq!(issuer.calls(), 1);
    assert_eq!(first.chain[0], again.chain[0]);
}

#[tokio::test]
async fn arn_change_ip_change_and_near_expiry_each_force_renewal() {
    let ca = new_ca();
    let dir = tempfile::tempdir().unwrap();
    let issuer = CountingIssuer::new(ca.clone());
    let cache = agent_cache(issuer.clone(), dir.path());
    cache.identity_for(ARN, ip("203.0.113.9")).await.unwrap();
    assert_eq!(issuer.calls(), 1);

    // The server was replaced: new task ARN.
    let renewed = cache
        .identity_for(OTHER_ARN, ip("203.0.113.9"))
        .await
        .unwrap();
    assert_eq!(issuer.calls(), 2);
    assert_eq!(renewed.leaf_info().unwrap().arn(), Some(OTHER_ARN));

    // The agent's public IP changed.
    let renewed = cache
        .identity_for(OTHER_ARN, ip("203.0.113.10"))
        .await
        .unwrap();
    assert_eq!(issuer.calls(), 3);
    assert_eq!(
        renewed.leaf_info().unwrap().ip_addresses,
        vec![ip("203.0.113.10")]
    );

    // Near expiry: a certificate signed 23 h ago has under 10 % of its 24 h left.
    issuer.shift_next.store(-23 * 3600, Ordering::SeqCst);
    cache
        .identity_for(ARN, ip("203.0.113.9"))
        .await
        .unwrap_err();
    assert_eq!(
        issuer.calls(),
        4,
        "an issuer handing out a nearly expired certificate is refused"
    );
    let stale_dir = tempfile::tempdir().unwrap();
    let stale = agent_cache(issuer.clone(), stale_dir.path());
    // Write a nearly expired certificate into a cache by hand, then ask for it.
    let old = support::identity_at(
        &ca,
        fluidity_core::pki::KeyAlgorithm::EcdsaP256,
        ARN,
        &[ip("203.0.113.9")],
        std::time::SystemTime::now() - Duration::from_secs(23 * 3600),
    );
    write_identity(stale_dir.path(), &old);
    let renewed = stale.identity_for(ARN, ip("203.0.113.9")).await.unwrap();
    assert_eq!(issuer.calls(), 5);
    assert_ne!(renewed.chain[0], old.chain[0]);
    // And the renewed one is reused.
    stale.identity_for(ARN, ip("203.0.113.9")).await.unwrap();
    assert_eq!(issuer.calls(), 5);
}

fn write_identity(dir: &std::path::Path, identity: &fluidity_core::pki::TlsIdentity) {
    let chain: String = identity
        .chain
        .iter()
        .map(|c| fluidity_core::pki::pem_encode("CERTIFICATE", c))
        .collect();
    std::fs::write(dir.join("agent.crt"), chain).unwrap();
    let rustls_pki_types::PrivateKeyDer::Pkcs8(key) = &identity.key else {
        panic!("fixture keys are PKCS#8")
    };
    std::fs::write(
        dir.join("agent.key"),
        fluidity_core::pki::pem_encode("PRIVATE KEY", key.secret_pkcs8_der()),
    )
    .unwrap();
}
