//! The server's lazy certificate manager and the agent's certificate cache.
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

#[tokio::test]
async fn first_connection_signs_once_and_later_ones_reuse() {
    let ca = new_ca();
    let issuer = CountingIssuer::new(ca.clone());
    let manager = manager_with(issuer.clone(), ServerCertConfig::new(ARN, ip("127.0.0.1")));
    assert!(
        manager.current().is_none(),
        "no certificate before the first agent"
    );
    let (address, _server) = serve(TlsAcceptor::arn(manager.clone(), roots(&ca)).unwrap()).await;
    let connector =
        TlsConnector::arn(&identity(&ca, ARN, &[ip("127.0.0.1")]), roots(&ca), ARN).unwrap();

    connect_from(&connector, ip("127.0.0.1"), address).await;
    assert_eq!(manager.signings(), 1);
    for _ in 0..3 {
        connect_from(&connector, ip("127.0.0.1"), address).await;
    }
    assert_eq!(manager.signings(), 1);
    assert_eq!(issuer.calls(), 1);
    let current = manager.current().unwrap();
    assert_eq!(current.arn(), Some(ARN));
    assert_eq!(current.ip_addresses, vec![ip("127.0.0.1")]);
}

#[tokio::test]
async fn fifty_concurrent_first_connections_from_one_ip_sign_once() {
    let ca = new_ca();
    // A slow CA, so the fifty handshakes really overlap the signing.
    let issuer = CountingIssuer::slow(ca.clone(), Duration::from_millis(300));
    let manager = manager_with(issuer.clone(), ServerCertConfig::new(ARN, ip("127.0.0.1")));
    let (address, _server) = serve(TlsAcceptor::arn(manager.clone(), roots(&ca)).unwrap()).await;
    let connector =
        TlsConnector::arn(&identity(&ca, ARN, &[ip("127.0.0.1")]), roots(&ca), ARN).unwrap();

    let mut clients = Vec::new();
    for _ in 0..50 {
        let connector = connector.clone();
        clients.push(tokio::spawn(async move {
            connect_from(&connector, ip("127.0.0.1"), address).await;
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(issuer.calls(), 1);
    assert_eq!(manager.signings(), 1);
}

#[tokio::test]
async fn a_second_agent_ip_gets_a_certificate_listing_both() {
    let ca = new_ca();
    let issuer = CountingIssuer::new(ca.clone());
    let manager = manager_with(issuer.clone(), ServerCertConfig::new(ARN, ip("127.0.0.1")));
    let (address, _server) = serve(TlsAcceptor::arn(manager.clone(), roots(&ca)).unwrap()).await;
    let agent_one =
        TlsConnector::arn(&identity(&ca, ARN, &[ip("127.0.0.1")]), roots(&ca), ARN).unwrap();
    let agent_two =
        TlsConnector::arn(&identity(&ca, ARN, &[ip("127.0.0.2")]), roots(&ca), ARN).unwrap();

    connect_from(&agent_one, ip("127.0.0.1"), address).await;
    connect_from(&agent_two, ip("127.0.0.2"), address).await;
    assert_eq!(manager.signings(), 2);
    let current = manager.current().unwrap();
    assert_eq!(current.ip_addresses, vec![ip("127.0.0.1"), ip("127.0.0.2")]);
    // Both agents keep working with the new certificate, without more signings.
    connect_from(&agent_one, ip("127.0.0.1"), address).await;
    connect_from(&agent_two, ip("127.0.0.2"), address).await;
    assert_eq!(manager.signings(), 2);
}

#[tokio::test]
async fn the_san_list_is_bounded_and_drops_the_least_recently_seen() {
    let ca = new_ca();
    let issuer = CountingIssuer::new(ca.clone());
    let mut config = ServerCertConfig::new(ARN, ip("192.0.2.1"));
    config.max_agent_ips = 3;
    let manager = manager_with(issuer.clone(), config);
    for last in 1..=3 {
        manager
            .certificate_for(ip(&format!("198.51.100.{last}")))
            .await
            .unwrap();
    }
    // .1 is seen again (no signing), so .2 is now the least recently seen.
    manager.certificate_for(ip("198.51.100.1")).await.unwrap();
    assert_eq!(manager.signings(), 3);
    manager.certificate_for(ip("198.51.100.4")).await.unwrap();
    let ips = manager.current().unwrap().ip_addresses;
    assert_eq!(
        ips,
        vec![
            ip("192.0.2.1"),
            ip("198.51.100.4"),
            ip("198.51.100.1"),
            ip("198.51.100.3")
        ]
    );
    // Many more IPs never grow it past the bound.
    for last in 10..60 {
        manager
            .certificate_for(ip(&format!("198.51.100.{last}")))
            .await
            .unwrap();
    }
    assert_eq!(manager.current().unwrap().ip_addresses.len(), 1 + 3);
}

#[tokio::test]
async fn one_ip_cannot_trigger_signings_faster_than_the_interval() {
    let ca = new_ca();
    let issuer = CountingIssuer::new(ca.clone());
    let mut config = ServerCertConfig::new(ARN, ip("192.0.2.1"));
    config.max_agent_ips = 1;
    let manager = manager_with(issuer.clone(), config);
    manager.certificate_for(ip("198.51.100.1")).await.unwrap();
    manager.certificate_for(ip("198.51.100.2")).await.unwrap(); // evicts .1
    // .1 comes back within the interval: it is served the current certificate, unsigned.
    let served = manager.certificate_for(ip("198.51.100.1")).await.unwrap();
    assert_eq!(issuer.calls(), 2);
    let info = fluidity_core::pki::CertificateInfo::parse(&served.cert[0]).unwrap();
    assert!(
        info.has_ip(ip("192.0.2.1")),
        "the server's own IP is always listed"
    );
}

#[tokio::test]
async fn a_failed_signing_backs_off_and_recovers() {
    let ca = new_ca();
    let issuer = CountingIssuer::new(ca.clone());
    issuer.fail.store(true, Ordering::SeqCst);
    let mut config = ServerCertConfig::new(ARN, ip("192.0.2.1"));
    config.failure_backoff = Duration::from_millis(300);
    let manager = manager_with(issuer.clone(), config);
    let first = manager
        .certificate_for(ip("198.51.100.1"))
        .await
        .unwrap_err();
    assert!(first.to_string().contains("CA unavailable"), "{first}");
    // During the backoff, other connections fail fast without calling the CA.
    let second = manager
        .certificate_for(ip("198.51.100.2"))
        .await
        .unwrap_err();
    assert!(
        second.to_string().contains("last signing failed"),
        "{second}"
    );
    assert_eq!(issuer.calls(), 1);
    issuer.fail.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    manager.certificate_for(ip("198.51.100.2")).await.unwrap();
    assert_eq!(issuer.calls(), 2);
}

#[tokio::test]
async fn the_server_certificate_and_key_persist_in_the_cache_dir() {
    let ca = new_ca();
    let dir = tempfile::tempdir().unwrap();
    let issuer = CountingIssuer::new(ca.clone());
    let mut config = ServerCertConfig::new(ARN, ip("192.0.2.1"));
    config.cache_dir = Some(dir.path().join("server"));
    let manager = manager_with(issuer.clone(), config.clone());
    manager.certificate_for(ip("198.51.100.1")).await.unwrap();
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

    // A restarted server (same task) reuses both for a known agent.
    let restarted = manager_with(issuer.clone(), config.clone());
    assert!(restarted.current().is_some());
    restarted.certificate_for(ip("198.51.100.1")).await.unwrap();
    assert_eq!(issuer.calls(), 1);

    // A new task (new ARN) does not reuse the old certificate.
    let mut new_task = config;
    new_task.server_arn = OTHER_ARN.to_owned();
    let replaced = manager_with(issuer.clone(), new_task);
    assert!(replaced.current().is_none());
    replaced.certificate_for(ip("198.51.100.1")).await.unwrap();
    assert_eq!(issuer.calls(), 2);
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
