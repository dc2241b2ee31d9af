//! Embedding Fluidity with parts of your own: a server and an agent in one program, built on
//! three implementations of the core's seams that this file supplies.
//!
//! - [`KnockTransport`] (a `Transport`): TCP, then a shared-secret knock line, then Fluidity's
//!   mutual TLS 1.3 with the ARN checks. A connection without the knock is dropped before any
//!   TLS work, so port scanners never see a TLS server.
//! - [`InHouseCa`] (a `CertIssuer`): an in-process CA that signs only for the one server
//!   identity it knows (a company's own PKI, instead of the CA Lambda or a CA directory).
//! - [`RegistryLocator`] (a `ServerLocator`): reads where the server is, and which identity to
//!   expect, from a registry file the server publishes (instead of the Wake/Query Lambdas).
//!
//! The program then fetches a page through the agent's HTTP proxy, checks that a connection
//! without the knock is refused, and prints what happened. It exits non-zero if anything does
//! not work, so the system tests run it.
//!
//! `cargo run -p fluidity-examples --example custom_parts`

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, ensure};
use async_trait::async_trait;
use fluidity_agent::{Agent, AgentConfig};
use fluidity_core::pki::agent_certs::{AgentCertConfig, AgentCertManager};
use fluidity_core::pki::server_certs::{ServerCertConfig, ServerCertManager};
use fluidity_core::pki::{CertificateAuthority, KeyAlgorithm, SigningOptions, root_store};
use fluidity_core::tls::{ClientIdentity, ReadAhead, TlsAcceptor, TlsClient, TlsStream};
use fluidity_core::transport::{Established, Transport, listen, tune_tunnel_socket};
use fluidity_core::{CertIssuer, Error, IssuedCertificate, ServerInfo, ServerLocator};
use fluidity_server::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The identity the server's certificate carries and the agent expects.
const SERVER_ARN: &str = "arn:aws:ecs:eu-west-1:123456789012:task/example/0123456789abcdef";
/// The knock: sent by the agent before TLS, checked by the server.
const KNOCK: &[u8] = b"knock knock: fluidity example\n";
/// How long the server waits for the knock.
const KNOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// A `Transport` that knocks before mutual TLS.
struct KnockTransport {
    /// Server side: where agents connect and how they are authenticated.
    listener: Option<(TcpListener, TlsAcceptor)>,
    /// Agent side: the TLS client (which holds the agent's certificates).
    client: Option<TlsClient>,
}

impl KnockTransport {
    fn server(listener: TcpListener, acceptor: TlsAcceptor) -> Self {
        KnockTransport {
            listener: Some((listener, acceptor)),
            client: None,
        }
    }

    fn client(client: TlsClient) -> Self {
        KnockTransport {
            listener: None,
            client: Some(client),
        }
    }
}

fn refused(what: &str) -> Error {
    Error::io(what.to_owned(), std::io::ErrorKind::PermissionDenied.into())
}

impl Transport for KnockTransport {
    type Raw = TcpStream;
    // `ReadAhead` under rustls: it reads the socket 64 KiB at a time instead of 4 KiB.
    type Stream = TlsStream<ReadAhead<TcpStream>>;

    async fn accept(&self) -> fluidity_core::Result<(TcpStream, SocketAddr)> {
        let (listener, _) = self
            .listener
            .as_ref()
            .ok_or_else(|| refused("no listener"))?;
        let (stream, peer) = listener
            .accept()
            .await
            .map_err(|e| Error::io("accepting", e))?;
        tune_tunnel_socket(&stream);
        Ok((stream, peer))
    }

    // The server runs this in the connection's own task, under its handshake budget.
    async fn handshake(
        &self,
        mut raw: TcpStream,
        peer: SocketAddr,
    ) -> fluidity_core::Result<Established<Self::Stream>> {
        let (_, acceptor) = self
            .listener
            .as_ref()
            .ok_or_else(|| refused("no listener"))?;
        let mut knock = [0; KNOCK.len()];
        tokio::time::timeout(KNOCK_TIMEOUT, raw.read_exact(&mut knock))
            .await
            .map_err(|_| Error::Timeout("the knock", KNOCK_TIMEOUT))?
            .map_err(|e| Error::io(format!("reading the knock from {peer}"), e))?;
        if knock != KNOCK {
            return Err(refused("a connection without the knock"));
        }
        acceptor.accept(ReadAhead::new(raw), peer).await
    }

    async fn connect(
        &self,
        server: &ServerInfo,
    ) -> fluidity_core::Result<Established<Self::Stream>> {
        let client = self.client.as_ref().ok_or_else(|| refused("no client"))?;
        // The connector carries a certificate for this server's ARN (signed now, or cached).
        let connector = client.connector_for(server).await?;
        let mut tcp = TcpStream::connect(server.address)
            .await
            .map_err(|e| Error::io(format!("connecting to {}", server.address), e))?;
        tune_tunnel_socket(&tcp);
        tcp.write_all(KNOCK)
            .await
            .map_err(|e| Error::io("knocking", e))?;
        connector
            .handshake(ReadAhead::new(tcp), server.address)
            .await
    }
}

/// A `CertIssuer` backed by an in-process CA that signs only for [`SERVER_ARN`].
struct InHouseCa {
    authority: CertificateAuthority,
    signed: AtomicU64,
}

impl InHouseCa {
    fn generate() -> anyhow::Result<Self> {
        let (authority, _key_pem) = CertificateAuthority::generate(
            "Example in-house CA",
            Duration::from_secs(30 * 24 * 3600),
            KeyAlgorithm::default(),
            SigningOptions::default(),
        )?;
        Ok(InHouseCa {
            authority,
            signed: AtomicU64::new(0),
        })
    }
}

#[async_trait]
impl CertIssuer for InHouseCa {
    async fn issue(&self, csr_pem: &str) -> fluidity_core::Result<IssuedCertificate> {
        // The CA's own checks first (a parseable, self-signed request for a task ARN)...
        let (_, identity) = self.authority.check(csr_pem).map_err(Error::CsrRefused)?;
        // ...then this deployment's rule: only our one server.
        if identity != SERVER_ARN {
            return Err(Error::issuer(format!("not our server: {identity}")));
        }
        self.signed.fetch_add(1, Ordering::Relaxed);
        self.authority.sign(csr_pem, SystemTime::now())
    }
}

/// A `ServerLocator` that reads `<address> <arn>` from a registry file.
struct RegistryLocator {
    path: PathBuf,
}

#[async_trait]
impl ServerLocator for RegistryLocator {
    // Read afresh on every call, so after a lost tunnel the agent finds a moved server.
    async fn locate(&self) -> fluidity_core::Result<ServerInfo> {
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?;
        let (address, arn) = text
            .trim()
            .split_once(' ')
            .ok_or_else(|| Error::Locate("the registry entry is not `<address> <arn>`".into()))?;
        let address: SocketAddr = address
            .parse()
            .map_err(|e| Error::Locate(format!("registry address {address:?}: {e}").into()))?;
        Ok(ServerInfo {
            address,
            server_arn: Some(arn.to_owned()),
            agent_ip: None, // the agent's address on the route to the server
        })
    }

    async fn release(&self) -> fluidity_core::Result<()> {
        Ok(())
    }
}

/// A web page to fetch through the tunnel: answers every request with `hello through the tunnel`.
async fn origin() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0; 1024];
                while !request.ends_with(b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "hello through the tunnel";
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    Ok(address)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let origin = origin().await?;
    let ca = Arc::new(InHouseCa::generate()?);
    let roots = root_store("the in-house CA", ca.authority.certificate_pem().as_bytes())?;
    let registry = std::env::temp_dir().join(format!("fluidity-registry-{}", std::process::id()));

    // The server: its certificate from the in-house CA, agents through the knock transport.
    let loopback = IpAddr::from([127, 0, 0, 1]);
    let certificates = Arc::new(ServerCertManager::new(
        ServerCertConfig::new(SERVER_ARN, loopback),
        ca.clone(),
    )?);
    let acceptor = TlsAcceptor::arn(certificates.clone(), roots.clone())?;
    let tunnel_listener = listen(SocketAddr::new(loopback, 0))?;
    let tunnel_address = tunnel_listener.local_addr()?;
    let server_config = ServerConfig {
        // Targets on loopback are refused by default; this demo's page is on loopback.
        egress_allow: vec![format!("{}/32", origin.ip())],
        ..ServerConfig::default()
    };
    let server = Server::for_custom_transport(server_config)?;
    certificates.refresh().await?; // sign before accepting; `maintain` renews from then on
    tokio::spawn(certificates.clone().maintain());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server_stopped = wait_for(stopped.clone());
    let server_task = tokio::spawn(server.serve_transport(
        KnockTransport::server(tunnel_listener, acceptor),
        server_stopped,
    ));
    std::fs::write(&registry, format!("{tunnel_address} {SERVER_ARN}\n"))?;

    // The agent: its certificates from the same CA, the server from the registry.
    let agent_certificates = Arc::new(AgentCertManager::new(
        AgentCertConfig::default(),
        ca.clone(),
    ));
    let client = TlsClient::new(ClientIdentity::Arn {
        certificates: agent_certificates,
        roots,
    });
    let proxy_listener = listen(SocketAddr::new(loopback, 0))?;
    let proxy = proxy_listener.local_addr()?;
    let agent = Agent::with_transport(
        AgentConfig::default(),
        proxy,
        Arc::new(RegistryLocator {
            path: registry.clone(),
        }),
        KnockTransport::client(client),
    );
    let agent_task = tokio::spawn(agent.serve(proxy_listener, wait_for(stopped)));

    // A user of the proxy: a plain HTTP request for the page.
    let mut browser = TcpStream::connect(proxy).await?;
    let request =
        format!("GET http://{origin}/page HTTP/1.1\r\nhost: {origin}\r\nconnection: close\r\n\r\n");
    browser.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(30), browser.read_to_string(&mut answer))
        .await
        .context("no answer through the tunnel within 30 s")??;
    ensure!(
        answer.starts_with("HTTP/1.1 200"),
        "unexpected answer: {answer}"
    );
    ensure!(
        answer.ends_with("hello through the tunnel"),
        "unexpected body: {answer}"
    );
    println!(
        "fetched http://{origin}/page through the tunnel: 200, {:?}",
        "hello through the tunnel"
    );

    // Someone without the knock: dropped before any TLS.
    let mut stranger = TcpStream::connect(tunnel_address).await?;
    let mut client_hello = vec![0x16, 0x03, 0x01];
    client_hello.resize(KNOCK.len(), 0);
    stranger.write_all(&client_hello).await?;
    let mut buf = [0; 64];
    let read = tokio::time::timeout(KNOCK_TIMEOUT * 2, stranger.read(&mut buf)).await;
    ensure!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the server answered a connection without the knock"
    );
    println!("a connection without the knock was dropped");

    let signed = ca.signed.load(Ordering::Relaxed);
    ensure!(
        signed == 2,
        "the in-house CA signed {signed} certificates, not 2"
    );
    println!("the in-house CA signed {signed} certificates (the server's and the agent's)");

    stop.send(true)?;
    agent_task.await??;
    server_task.await??;
    let _ = std::fs::remove_file(&registry);
    Ok(())
}

/// A future that completes when `stopped` turns true (or its sender is gone).
async fn wait_for(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stopped| *stopped).await;
}
