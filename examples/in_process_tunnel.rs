//! Embedding Fluidity: an agent-side and a server-side session in one process, joined by the
//! in-process transport, relaying a CONNECT stream to a local TCP echo server.
//!
//! `cargo run -p fluidity-examples --example in_process_tunnel`

use std::time::Instant;

use anyhow::Context as _;
use fluidity_core::Connection;
use fluidity_core::codec::CodecKind;
use fluidity_core::transport::{MemoryTransport, Transport};
use fluidity_core::{RefusalCode, Reply, Session, SessionConfig, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // An origin to reach through the tunnel: a TCP echo server on an ephemeral loopback port.
    let origin = TcpListener::bind("127.0.0.1:0").await?;
    let origin_addr = origin.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = origin.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });

    let transport = MemoryTransport::new(CodecKind::Binary, 256 * 1024);

    // Server side: accept tunnels, and for each CONNECT stream dial the target and relay.
    let server_transport = transport.clone();
    tokio::spawn(async move {
        while let Ok((raw, peer)) = server_transport.accept().await {
            let Ok(established) = server_transport.handshake(raw, peer).await else {
                continue;
            };
            let session =
                Session::server(established.codec, SessionConfig::default(), Instant::now());
            let tunnel = Connection::spawn(established.stream, session);
            tokio::spawn(async move {
                while let Some(incoming) = tunnel.accept().await {
                    tokio::spawn(async move {
                        let Target::Connect { address } = incoming.target().clone() else {
                            let _ = incoming
                                .refuse(RefusalCode::Other, "this example only relays CONNECT");
                            return;
                        };
                        match TcpStream::connect(&address).await {
                            Ok(mut target) => {
                                if let Ok(mut stream) = incoming.accept(Reply::Connect) {
                                    let _ = tokio::io::copy_bidirectional(&mut stream, &mut target)
                                        .await;
                                }
                            }
                            Err(e) => {
                                let _ = incoming.refuse(RefusalCode::Other, &e.to_string());
                            }
                        }
                    });
                }
            });
        }
    });

    // Agent side: one tunnel, one CONNECT stream through it.
    let server = fluidity_core::ServerInfo {
        address: "127.0.0.1:8443".parse()?,
        server_arn: None,
        agent_ip: None,
    };
    let established = transport.connect(&server).await?;
    let session = Session::client(established.codec, SessionConfig::default(), Instant::now());
    let tunnel = Connection::spawn(established.stream, session);
    let mut stream = tunnel
        .connect(&origin_addr.to_string())
        .await
        .context("CONNECT through the tunnel")?;
    stream.write_all(b"hello through the tunnel").await?;
    let mut echoed = [0u8; 24];
    stream.read_exact(&mut echoed).await?;
    anyhow::ensure!(&echoed == b"hello through the tunnel", "echoed {echoed:?}");
    println!("{}", String::from_utf8_lossy(&echoed));
    Ok(())
}
