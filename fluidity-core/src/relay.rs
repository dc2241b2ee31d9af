//! Relaying a tunnel stream to a byte stream (a CONNECT target, a proxy client), each
//! direction on its own so that one side's end or error does not cut the other short.

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::driver::StreamHandle;

/// Most bytes read from a socket at once.
const SOCKET_READ: usize = 64 * 1024;

/// Buffer per direction.
const BUFFER: usize = 64 * 1024;

/// Bytes moved by [`relay`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relayed {
    /// From the tunnel stream to the local side.
    pub from_tunnel: u64,
    /// From the local side into the tunnel stream.
    pub to_tunnel: u64,
}

/// Copies `stream` ⇄ (`reader`, `writer`) until both directions end.
///
/// - The end of one direction is passed on as a half-close (`shutdown`), the other direction
///   keeps going: a target that answers after its client finished sending still gets through.
/// - A failing local read resets the tunnel stream (the peer must not take a truncated
///   stream for a complete one); a failing local write only stops that direction.
pub async fn relay<R, W>(stream: StreamHandle, reader: R, mut writer: W) -> Relayed
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (stream_reader, mut stream_writer) = stream.into_split();
    let into_local = async {
        let mut source = BufReader::with_capacity(BUFFER, stream_reader);
        let moved = copy(&mut source, &mut writer).await;
        let _ = writer.shutdown().await;
        moved.unwrap_or_else(|(n, _)| n)
    };
    let into_tunnel = async {
        let mut source = BufReader::with_capacity(BUFFER, reader);
        match copy(&mut source, &mut stream_writer).await {
            Ok(n) => {
                let _ = stream_writer.shutdown().await;
                n
            }
            Err((n, e)) => {
                stream_writer.reset(&e.to_string());
                n
            }
        }
    };
    let (from_tunnel, to_tunnel) = tokio::join!(into_local, into_tunnel);
    Relayed {
        from_tunnel,
        to_tunnel,
    }
}

/// Bytes moved so far by a running [`relay_tcp`], readable while it runs (for activity
/// tracking).
#[derive(Debug, Default)]
pub struct Progress {
    from_tunnel: std::sync::atomic::AtomicU64,
    to_tunnel: std::sync::atomic::AtomicU64,
}

impl Progress {
    /// Bytes moved in both directions so far.
    pub fn total(&self) -> u64 {
        self.from_tunnel.load(std::sync::atomic::Ordering::Relaxed)
            + self.to_tunnel.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// [`relay`] specialised for a TCP socket, the common case (CONNECT on both ends), built so
/// that an idle relay holds no buffers: tunnel data is written to the socket straight from
/// the session's receive buffer, and a read buffer exists only while the socket has data.
/// `already_read` is data the caller read from the socket before (e.g. bytes a proxy client
/// pipelined after its CONNECT head); it goes into the tunnel first.
pub async fn relay_tcp(
    stream: StreamHandle,
    socket: TcpStream,
    already_read: Bytes,
    progress: &Progress,
) -> Relayed {
    use std::sync::atomic::Ordering::Relaxed;
    let (stream_reader, mut stream_writer) = stream.into_split();
    let (socket_reader, mut socket_writer) = socket.into_split();
    let into_local = async {
        let mut moved = 0u64;
        while let Ok(Some(chunk)) = stream_reader.recv_chunk().await {
            if socket_writer.write_all(&chunk.data).await.is_err() {
                break;
            }
            moved += chunk.data.len() as u64;
            progress
                .from_tunnel
                .fetch_add(chunk.data.len() as u64, Relaxed);
        }
        let _ = socket_writer.shutdown().await;
        moved
    };
    let into_tunnel = async {
        let mut moved = 0u64;
        if !already_read.is_empty() {
            if stream_writer.write_all(&already_read).await.is_err() {
                return moved;
            }
            moved += already_read.len() as u64;
        }
        // It may be a slice of a larger buffer (hyper's read buffer): do not keep that alive.
        drop(already_read);
        let mut buffer: Vec<u8> = Vec::new();
        loop {
            if let Err(e) = socket_reader.readable().await {
                stream_writer.reset(&e.to_string());
                return moved;
            }
            if buffer.capacity() == 0 {
                buffer.reserve_exact(SOCKET_READ);
            }
            match socket_reader.try_read_buf(&mut buffer) {
                Ok(0) => {
                    let _ = stream_writer.shutdown().await;
                    return moved;
                }
                Ok(n) => {
                    if stream_writer.write_all(&buffer).await.is_err() {
                        return moved;
                    }
                    moved += n as u64;
                    progress.to_tunnel.fetch_add(n as u64, Relaxed);
                    buffer.clear();
                }
                // Drained: give the buffer back while the socket is quiet.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => buffer = Vec::new(),
                Err(e) => {
                    stream_writer.reset(&e.to_string());
                    return moved;
                }
            }
        }
    };
    let (from_tunnel, to_tunnel) = tokio::join!(into_local, into_tunnel);
    Relayed {
        from_tunnel,
        to_tunnel,
    }
}

/// `copy_buf` that reports how much moved even when it fails.
async fn copy<R, W>(reader: &mut R, writer: &mut W) -> Result<u64, (u64, std::io::Error)>
where
    R: tokio::io::AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut moved = 0u64;
    loop {
        let chunk = match reader.fill_buf().await {
            Ok(chunk) => chunk,
            Err(e) => return Err((moved, e)),
        };
        if chunk.is_empty() {
            let _ = writer.flush().await;
            return Ok(moved);
        }
        let n = chunk.len();
        if let Err(e) = writer.write_all(chunk).await {
            return Err((moved, e));
        }
        reader.consume(n);
        moved += n as u64;
        // Each chunk is what one read returned: pass it on now (interactive traffic must not
        // wait; for sockets and tunnel streams flushing costs nothing).
        if let Err(e) = writer.flush().await {
            return Err((moved, e));
        }
    }
}
