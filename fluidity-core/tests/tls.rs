//! Mutual TLS through real rustls handshakes on loopback: the rejection matrix in both
//! directions, ALPN codec selection, and the handshake deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fluidity_core::Error;
use fluidity_core::codec::CodecKind;
use fluidity_core::pki::server_certs::{ServerCertConfig, ServerCertManager};
use fluidity_core::pki::{KeyAlgorithm, Rejection, TlsIdentity};
use fluidity_core::tls::{TlsAcceptor, TlsConnector};
use support::{ARN, OTHER_ARN, identity, identity_at, ip, new_ca, roots};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A named bad certificate and the rejection it must produce.
type Case = (&'static str, TlsIdentity, Box<dyn Fn(&Rejection) -> bool>);

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Runs one server handshake and one client attempt; returns the server's and the client's
/// outcome. On success both sides exchange a byte to prove the channel works.
async fn handshake(
    acceptor: TlsAcceptor,
    client: impl AsyncFnOnce(SocketAddr) -> fluidity_core::Result<CodecKind>,
) -> (
    fluidity_core::Result<CodecKind>,
    fluidity_core::Result<CodecKind>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, peer) = listener.accept().await.unwrap();
        let mut established = acceptor.accept(tcp, peer).await?;
        established.stream.write_all(b"s").await.unwrap();
        established.stream.flush().await.unwrap();
        let mut byte = [0u8; 1];
        established.stream.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"c");
        Ok(established.codec)
    });
    let client_result = client(address).await;
    (server.await.unwrap(), client_result)
}

/// A client that connects with `connector` and exchanges a byte.
async fn connect(
    connector: &TlsConnector,
    address: SocketAddr,
) -> fluidity_core::Result<CodecKind> {
    let mut established = connector.connect(address).await?;
    let mut byte = [0u8; 1];
    established
        .stream
        .read_exact(&mut byte)
        .await
        .map_err(|e| Error::io("reading the server's byte", e))?;
    established.stream.write_all(b"c").await.unwrap();
    established.stream.flush().await.unwrap();
    Ok(established.codec)
}

fn static_server(
    identity: &TlsIdentity,
    ca: &fluidity_core::pki::local_ca::LocalCa,
) -> TlsAcceptor {
    TlsAcceptor::static_identity(identity, roots(ca)).unwrap()
}

/// An ARN-mode acceptor whose certificate is already signed (as a server's start does).
async fn arn_server(
    ca: &Arc<fluidity_core::pki::local_ca::LocalCa>,
) -> (TlsAcceptor, Arc<ServerCertManager>) {
    let manager = Arc::new(
        ServerCertManager::new(ServerCertConfig::new(ARN, ip("127.0.0.1")), ca.clone()).unwrap(),
    );
    manager.refresh().await.unwrap();
    (
        TlsAcceptor::arn(manager.clone(), roots(ca)).unwrap(),
        manager,
    )
}

fn rejected(result: &fluidity_core::Result<CodecKind>) -> &Rejection {
    match result {
        Err(Error::CertificateRejected(rejection)) => rejection,
        other => panic!("expected a certificate rejection, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The agent judging the server.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn agent_accepts_the_right_server_and_rejects_each_wrong_one() {
    let ca = new_ca();
    let agent = identity(&ca, ARN, &[ip("127.0.0.1")]);
    let connector = TlsConnector::arn(&agent, roots(&ca), ARN).unwrap();
    let now = SystemTime::now();

    // The correct server: binary codec by ALPN, bytes flow both ways.
    let good = identity(&ca, ARN, &[ip("127.0.0.1")]);
    let (server, client) = handshake(static_server(&good, &ca), async |a| {
        connect(&connector, a).await
    })
    .await;
    assert_eq!(client.unwrap(), CodecKind::Binary);
    assert_eq!(server.unwrap(), CodecKind::Binary);

    // RSA server certificates (what Go peers use) work too.
    let rsa = identity_at(&ca, KeyAlgorithm::Rsa2048, ARN, &[ip("127.0.0.1")], now);
    let (_, client) = handshake(static_server(&rsa, &ca), async |a| {
        connect(&connector, a).await
    })
    .await;
    assert_eq!(client.unwrap(), CodecKind::Binary);

    let other_ca = new_ca();
    let cases: Vec<Case> = vec![
        (
            "unknown CA",
            identity(&other_ca, ARN, &[ip("127.0.0.1")]),
            Box::new(|r| matches!(r, Rejection::UnknownCa { .. })),
        ),
        (
            "CN != ARN",
            identity(&ca, OTHER_ARN, &[ip("127.0.0.1")]),
            Box::new(
                |r| matches!(r, Rejection::ArnMismatch { expected, found } if expected == ARN && found.as_deref() == Some(OTHER_ARN)),
            ),
        ),
        (
            "dialled IP not in SAN",
            identity(&ca, ARN, &[ip("10.9.8.7")]),
            Box::new(
                |r| matches!(r, Rejection::IpNotInSan { expected, found } if *expected == ip("127.0.0.1") && found == &["10.9.8.7".to_owned()]),
            ),
        ),
        (
            "expired",
            identity_at(
                &ca,
                KeyAlgorithm::EcdsaP256,
                ARN,
                &[ip("127.0.0.1")],
                now - 3 * DAY,
            ),
            Box::new(|r| matches!(r, Rejection::Expired { not_after, now } if not_after < now)),
        ),
        (
            "not yet valid",
            identity_at(
                &ca,
                KeyAlgorithm::EcdsaP256,
                ARN,
                &[ip("127.0.0.1")],
                now + 2 * DAY,
            ),
            Box::new(
                |r| matches!(r, Rejection::NotYetValid { not_before, now } if not_before > now),
            ),
        ),
    ];
    for (name, server_identity, expected) in cases {
        let (_, client) = handshake(static_server(&server_identity, &ca), async |a| {
            connect(&connector, a).await
        })
        .await;
        let rejection = rejected(&client);
        assert!(expected(rejection), "{name}: got {rejection:?}");
        // The message names what was expected and found.
        println!("{name}: {rejection}");
    }
}

#[tokio::test]
async fn agent_refuses_a_server_that_only_speaks_tls_1_2() {
    let ca = new_ca();
    let agent = identity(&ca, ARN, &[ip("127.0.0.1")]);
    let connector = TlsConnector::arn(&agent, roots(&ca), ARN).unwrap();
    let server_identity = identity(&ca, ARN, &[ip("127.0.0.1")]);
    let config = rustls::ServerConfig::builder_with_provider(fluidity_core::pki::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            server_identity.chain.clone(),
            server_identity.key.clone_key(),
        )
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = tokio_rustls::TlsAcceptor::from(Arc::new(config))
            .accept(tcp)
            .await;
    });
    let result = connector.connect(address).await.map(|e| e.codec);
    // rustls reports the server's TLS 1.2 ServerHello as a protocol error or an
    // incompatibility, depending on where it notices; either way the agent refuses.
    match result {
        Err(Error::CertificateRejected(Rejection::Incompatible(_))) | Err(Error::Tls { .. }) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The server judging the agent.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn server_accepts_the_right_agent_and_rejects_each_wrong_one() {
    let ca = new_ca();
    let now = SystemTime::now();

    let good = identity(&ca, ARN, &[ip("127.0.0.1")]);
    let (acceptor, _) = arn_server(&ca).await;
    let connector = TlsConnector::arn(&good, roots(&ca), ARN).unwrap();
    let (server, client) = handshake(acceptor, async |a| connect(&connector, a).await).await;
    assert_eq!(server.unwrap(), CodecKind::Binary);
    assert_eq!(client.unwrap(), CodecKind::Binary);

    let other_ca = new_ca();
    let cases: Vec<Case> = vec![
        (
            "unknown CA",
            identity(&other_ca, ARN, &[ip("127.0.0.1")]),
            Box::new(|r| matches!(r, Rejection::UnknownCa { .. })),
        ),
        (
            "CN != server ARN",
            identity(&ca, OTHER_ARN, &[ip("127.0.0.1")]),
            Box::new(
                |r| matches!(r, Rejection::ArnMismatch { expected, found } if expected == ARN && found.as_deref() == Some(OTHER_ARN)),
            ),
        ),
        (
            "peer IP not in SAN",
            identity(&ca, ARN, &[ip("127.0.0.2")]),
            Box::new(
                |r| matches!(r, Rejection::IpNotInSan { expected, found } if *expected == ip("127.0.0.1") && found == &["127.0.0.2".to_owned()]),
            ),
        ),
        (
            "expired",
            identity_at(
                &ca,
                KeyAlgorithm::EcdsaP256,
                ARN,
                &[ip("127.0.0.1")],
                now - 3 * DAY,
            ),
            Box::new(|r| matches!(r, Rejection::Expired { .. })),
        ),
        (
            "not yet valid",
            identity_at(
                &ca,
                KeyAlgorithm::EcdsaP256,
                ARN,
                &[ip("127.0.0.1")],
                now + 2 * DAY,
            ),
            Box::new(|r| matches!(r, Rejection::NotYetValid { .. })),
        ),
    ];
    for (name, agent_identity, expected) in cases {
        let (acceptor, _) = arn_server(&ca).await;
        // The agent trusts the server; only the server's judgement is under test.
        let connector = TlsConnector::arn(&agent_identity, roots(&ca), ARN).unwrap();
        let (server, _) = handshake(acceptor, async |a| connect(&connector, a).await).await;
        let rejection = rejected(&server);
        assert!(expected(rejection), "{name}: got {rejection:?}");
        println!("{name}: {rejection}");
    }
}

#[tokio::test]
async fn server_rejects_an_agent_without_a_certificate() {
    let ca = new_ca();
    let (acceptor, _) = arn_server(&ca).await;
    let config = rustls::ClientConfig::builder_with_provider(fluidity_core::pki::crypto_provider())
        .with_protocol_versions(fluidity_core::pki::TLS_VERSIONS)
        .unwrap()
        .with_root_certificates(roots(&ca))
        .with_no_client_auth();
    let (server, _) = handshake(acceptor, async |address| {
        let tcp = TcpStream::connect(address).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::IpAddress(address.ip().into());
        let mut stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| Error::io("client", e))?;
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .await
            .map_err(|e| Error::io("client read", e))?;
        Ok(CodecKind::Binary)
    })
    .await;
    assert_eq!(rejected(&server), &Rejection::NoCertificate);
}

#[tokio::test]
async fn server_rejects_a_tls_1_2_only_agent() {
    let ca = new_ca();
    let agent = identity(&ca, ARN, &[ip("127.0.0.1")]);
    let (acceptor, _) = arn_server(&ca).await;
    let config = rustls::ClientConfig::builder_with_provider(fluidity_core::pki::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots(&ca))
        .with_client_auth_cert(agent.chain.clone(), agent.key.clone_key())
        .unwrap();
    let (server, client) = handshake(acceptor, async |address| {
        let tcp = TcpStream::connect(address).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::IpAddress(address.ip().into());
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| Error::io("client", e))?;
        Ok(CodecKind::Json)
    })
    .await;
    assert!(
        matches!(rejected(&server), Rejection::Incompatible(_)),
        "{server:?}"
    );
    assert!(client.is_err());
}

#[tokio::test]
async fn a_go_style_agent_without_alpn_gets_the_json_codec() {
    let ca = new_ca();
    let agent = identity(&ca, ARN, &[ip("127.0.0.1")]);
    let (acceptor, _) = arn_server(&ca).await;
    let connector = TlsConnector::arn(&agent, roots(&ca), ARN)
        .unwrap()
        .without_alpn();
    let (server, client) = handshake(acceptor, async |a| connect(&connector, a).await).await;
    assert_eq!(server.unwrap(), CodecKind::Json);
    assert_eq!(client.unwrap(), CodecKind::Json);
}

#[tokio::test]
async fn static_mode_verifies_chains_and_names_without_arns() {
    let ca = new_ca();
    // Static certificates in the Go `main` style: legacy CN, DNS and IP names.
    let server_identity = identity(&ca, ARN, &[ip("127.0.0.1")]);
    let agent = identity(&ca, OTHER_ARN, &[ip("10.0.0.1")]);
    let acceptor = TlsAcceptor::static_identity(&server_identity, roots(&ca)).unwrap();
    let connector = TlsConnector::static_identity(&agent, roots(&ca), Some("127.0.0.1")).unwrap();
    let (server, client) = handshake(acceptor, async |a| connect(&connector, a).await).await;
    server.unwrap();
    client.unwrap();

    let acceptor = TlsAcceptor::static_identity(&server_identity, roots(&ca)).unwrap();
    let connector =
        TlsConnector::static_identity(&agent, roots(&ca), Some("tunnel.example.com")).unwrap();
    let (_, client) = handshake(acceptor, async |a| connect(&connector, a).await).await;
    assert!(
        matches!(rejected(&client), Rejection::NameMismatch { expected, .. } if expected == "tunnel.example.com")
    );
}

#[tokio::test]
async fn a_silent_client_is_dropped_at_the_handshake_deadline() {
    let ca = new_ca();
    let (acceptor, manager) = arn_server(&ca).await;
    let acceptor = acceptor.with_handshake_timeout(Duration::from_millis(200));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let _silent = TcpStream::connect(address).await.unwrap();
    let (tcp, peer) = listener.accept().await.unwrap();
    let result = acceptor.accept(tcp, peer).await;
    assert!(
        matches!(result, Err(Error::Timeout("TLS handshake", _))),
        "{result:?}"
    );
    // A TCP connection that never sent a ClientHello caused no signing.
    assert_eq!(manager.signings(), 1);
}

#[tokio::test]
async fn a_client_dribbling_its_hello_is_dropped_at_the_hello_deadline() {
    let ca = new_ca();
    let (acceptor, _) = arn_server(&ca).await;
    let acceptor = acceptor.with_client_hello_timeout(Duration::from_millis(300));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut slow = TcpStream::connect(address).await.unwrap();
    let (tcp, peer) = listener.accept().await.unwrap();
    // A TLS record header announcing a 512-byte handshake message, then a byte at a time.
    let dribble = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = slow.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if slow.write_all(&[0x01]).await.is_err() {
                return;
            }
        }
    });
    let started = std::time::Instant::now();
    let result = acceptor.accept(tcp, peer).await;
    assert!(
        matches!(
            result,
            Err(Error::Timeout("waiting for the TLS ClientHello", _))
        ),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    dribble.abort();
}

/// The whole stack: a session multiplexed over the mutual-TLS transport, both sides built
/// through the `Transport` seam, one stream echoing through it.
#[tokio::test]
async fn a_session_runs_over_the_tls_transport() {
    use fluidity_core::Connection;
    use fluidity_core::tls::TlsTransport;
    use fluidity_core::transport::Transport;
    use fluidity_core::{Reply, Session, SessionConfig, Target};
    use std::time::Instant;

    let ca = new_ca();
    let (acceptor, _) = arn_server(&ca).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = Arc::new(TlsTransport::server(listener, acceptor));
    tokio::spawn({
        let server = server.clone();
        async move {
            let (raw, peer) = server.accept().await.unwrap();
            let established = server.handshake(raw, peer).await.unwrap();
            let session =
                Session::server(established.codec, SessionConfig::default(), Instant::now());
            let connection = Connection::spawn(established.stream, session);
            while let Some(incoming) = connection.accept().await {
                assert!(matches!(incoming.target(), Target::Connect { .. }));
                let mut stream = incoming.accept(Reply::Connect).unwrap();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 5];
                    stream.read_exact(&mut buffer).await.unwrap();
                    stream.write_all(&buffer).await.unwrap();
                    // A clean end (dropping without it would reset the stream).
                    stream.shutdown().await.unwrap();
                });
            }
        }
    });

    let agent = fluidity_core::tls::ClientIdentity::Static {
        identity: identity(&ca, ARN, &[ip("127.0.0.1")]),
        roots: roots(&ca),
        server_name: None,
    };
    let client = TlsTransport::client(
        fluidity_core::tls::TlsClient::new(agent),
        fluidity_core::transport::Route::Direct,
    );
    let server_info = fluidity_core::ServerInfo {
        address,
        server_arn: Some(ARN.into()),
        agent_ip: Some(ip("127.0.0.1")),
    };
    let established = client.connect(&server_info).await.unwrap();
    assert_eq!(established.codec, CodecKind::Binary);
    let session = Session::client(established.codec, SessionConfig::default(), Instant::now());
    let connection = Connection::spawn(established.stream, session);
    let mut stream = connection.connect("echo.invalid:7").await.unwrap();
    stream.write_all(b"hello").await.unwrap();
    stream.flush().await.unwrap();
    let mut echoed = [0u8; 5];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"hello");
}
