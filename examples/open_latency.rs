//! Measures how long opening a stream takes (open → peer accepts → ack), over plain TCP
//! loopback and over mutual TLS, one at a time: `cargo run --release -p fluidity-examples --example open_latency`.

use std::time::Instant;

use fluidity_core::Connection;
use fluidity_core::codec::CodecKind;
use fluidity_core::{Reply, Session, SessionConfig};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let server = Connection::spawn(
            socket,
            Session::server(CodecKind::Binary, SessionConfig::default(), Instant::now()),
        );
        while let Some(incoming) = server.accept().await {
            let stream = incoming.accept(Reply::Connect)?;
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                drop(stream);
            });
        }
        Ok::<(), anyhow::Error>(())
    });
    let socket = TcpStream::connect(address).await?;
    socket.set_nodelay(true)?;
    let session = Session::client(CodecKind::Binary, SessionConfig::default(), Instant::now());
    let client = Connection::spawn(socket, session);
    let mut streams = Vec::new();
    for _ in 0..10 {
        streams.push(client.connect("warm.up:1").await?);
    }
    let started = Instant::now();
    for _ in 0..1000 {
        streams.push(client.connect("x.invalid:1").await?);
    }
    println!(
        "sequential open over TCP: {:?} each",
        started.elapsed() / 1000
    );
    let started = Instant::now();
    let opens = (0..1000).map(|_| client.connect("x.invalid:1"));
    let opened = futures::future::join_all(opens).await;
    println!("1000 concurrent opens over TCP: {:?}", started.elapsed());
    drop(opened);
    Ok(())
}
