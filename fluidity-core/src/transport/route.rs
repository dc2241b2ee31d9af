//! How a client's TCP connection reaches the server (or the load balancer in front of it):
//! directly, or through an HTTP proxy with `CONNECT` (a corporate proxy that is the only way
//! out). The TLS checks that follow are unchanged: the agent still verifies the server's own
//! identity, never the proxy's.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// Longest proxy response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// Where a client's TCP connections go first.
#[derive(Debug, Clone, Default)]
pub enum Route {
    /// Straight to the target.
    #[default]
    Direct,
    /// Through an HTTP proxy (`CONNECT host:port`).
    HttpProxy(HttpProxy),
}

impl Route {
    /// A TCP connection to `host:port` (an IP or a name) along this route, within `timeout`.
    pub async fn connect(&self, host: &str, port: u16, timeout: Duration) -> Result<TcpStream> {
        let what = format!("connecting to {host}:{port}");
        let connect = async {
            match self {
                Route::Direct => TcpStream::connect((host.trim_matches(['[', ']']), port))
                    .await
                    .map_err(|e| Error::io(what.clone(), e)),
                Route::HttpProxy(proxy) => proxy.connect(host, port).await,
            }
        };
        let stream = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| Error::Timeout("connecting to the server", timeout))??;
        super::tune_tunnel_socket(&stream);
        Ok(stream)
    }
}

/// An `http://[user:password@]host:port` proxy. Its credentials are never printed.
#[derive(Clone)]
pub struct HttpProxy {
    address: String,
    authorization: Option<String>,
}

impl fmt::Debug for HttpProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpProxy")
            .field("address", &self.address)
            .field("authenticated", &self.authorization.is_some())
            .finish()
    }
}

impl HttpProxy {
    /// Parses `http://[user:password@]host:port`. Errors never repeat the credentials.
    pub fn parse(url: &str) -> std::result::Result<Self, String> {
        let (credentials, address) = match url.rsplit_once('@') {
            Some((credentials, address)) => (Some(credentials), address),
            None => (None, url),
        };
        let shown = match credentials {
            Some(_) => format!("(credentials hidden)@{address}"),
            None => url.to_owned(),
        };
        let unsupported = || format!("{shown:?}: only http:// proxies are supported");
        let (credentials, address) = match credentials {
            Some(with_scheme) => (
                Some(
                    with_scheme
                        .strip_prefix("http://")
                        .ok_or_else(unsupported)?,
                ),
                address,
            ),
            None => (
                None,
                address.strip_prefix("http://").ok_or_else(unsupported)?,
            ),
        };
        let address = address.trim_end_matches('/');
        if !address.contains(':') {
            return Err(format!("{shown:?}: expected host:port"));
        }
        Ok(HttpProxy {
            address: address.to_owned(),
            authorization: credentials.map(|c| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(c)
                )
            }),
        })
    }

    /// Opens a tunnel to `host:port` through the proxy.
    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream> {
        let failed = |reason: String| {
            Error::io(
                format!("upstream proxy {}", self.address),
                std::io::Error::other(reason),
            )
        };
        let mut stream = TcpStream::connect(&self.address)
            .await
            .map_err(|e| Error::io(format!("connecting to upstream proxy {}", self.address), e))?;
        let target = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(authorization) = &self.authorization {
            request.push_str(&format!("Proxy-Authorization: {authorization}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| failed(format!("writing the CONNECT request: {e}")))?;
        // Read the response head byte by byte: nothing after it may be consumed, it belongs
        // to the next protocol (TLS).
        let mut head = Vec::with_capacity(256);
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_HEAD {
                return Err(failed("oversized response to CONNECT".into()));
            }
            let byte = stream
                .read_u8()
                .await
                .map_err(|e| failed(format!("reading the answer to CONNECT: {e}")))?;
            head.push(byte);
        }
        let head = String::from_utf8_lossy(&head);
        let status_line = head.lines().next().unwrap_or_default();
        let status = status_line.split_whitespace().nth(1).unwrap_or_default();
        if status != "200" {
            return Err(failed(format!("refused CONNECT {target}: {status_line}")));
        }
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn errors_never_repeat_the_credentials() {
        for url in [
            "https://alice:hunter2@proxy.example:3128",
            "http://alice:hunter2@proxy.example",
            "socks5://alice:hunter2@proxy.example:1080",
        ] {
            let err = HttpProxy::parse(url).unwrap_err();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(err.contains("proxy.example"), "{err}");
        }
        let proxy = HttpProxy::parse("http://alice:hunter2@proxy.example:3128").unwrap();
        assert!(!format!("{proxy:?}").contains("hunter2"));
        assert!(HttpProxy::parse("http://proxy.example:3128/").is_ok());
        assert!(HttpProxy::parse("proxy.example:3128").is_err());
    }
}
