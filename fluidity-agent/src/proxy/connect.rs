//! `CONNECT host:port`: open a CONNECT stream through the tunnel, answer 200 only once the
//! server has reached the target (502 with its reason otherwise), then relay bytes. Bytes the
//! client pipelined after the CONNECT head are kept by hyper's upgrade and relayed first.

use fluidity_core::relay::{Progress, relay, relay_tcp};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::{Body, Proxy, empty, open_connect, text};

pub(crate) async fn handle(proxy: &Proxy, request: Request<Incoming>) -> Response<Body> {
    let Some(authority) = request.uri().authority().map(|a| a.as_str().to_owned()) else {
        return text(StatusCode::BAD_REQUEST, "CONNECT needs host:port\n");
    };
    let Some((host, _port)) = authority.rsplit_once(':') else {
        return text(StatusCode::BAD_REQUEST, "CONNECT needs host:port\n");
    };
    let stream = match open_connect(proxy, host, &authority).await {
        Ok(stream) => stream,
        Err(e) => return e.response(host),
    };
    tokio::spawn(async move {
        match hyper::upgrade::on(request).await {
            Ok(upgraded) => {
                // Back to the plain socket (plus what hyper had buffered), so the relay holds
                // no buffers while idle.
                let moved = match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
                    Ok(parts) => {
                        let progress = Progress::default();
                        relay_tcp(stream, parts.io.into_inner(), parts.read_buf, &progress).await
                    }
                    Err(upgraded) => {
                        let (reader, writer) = tokio::io::split(TokioIo::new(upgraded));
                        relay(stream, reader, writer).await
                    }
                };
                tracing::debug!(%authority, up = moved.to_tunnel, down = moved.from_tunnel, "CONNECT closed");
            }
            Err(e) => tracing::debug!(%authority, error = %e, "CONNECT upgrade failed"),
        }
    });
    Response::new(empty())
}
