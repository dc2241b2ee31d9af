//! Reaching the server through a corporate HTTP proxy: `CONNECT server:port`, then TLS over
//! the proxied connection (the agent still verifies the server's IP, not the proxy's).

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest proxy response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// An `http://[user:password@]host:port` upstream proxy.
#[derive(Clone)]
pub struct UpstreamProxy {
    address: String,
    authorization: Option<String>,
}

impl std::fmt::Debug for UpstreamProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamProxy")
            .field("address", &self.address)
            .field("authenticated", &self.authorization.is_some())
            .finish()
    }
}

impl UpstreamProxy {
    /// Parses `http://[user:password@]host:port`. Errors never repeat the credentials.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (credentials, address) = match url.rsplit_once('@') {
            Some((credentials, address)) => (Some(credentials), address),
            None => (None, url),
        };
        let shown = match credentials {
            Some(_) => format!("(credentials hidden)@{address}"),
            None => url.to_owned(),
        };
        let credentials = match credentials {
            Some(with_scheme) => Some(with_scheme.strip_prefix("http://").ok_or_else(|| {
                format!("upstream_proxy {shown:?}: only http:// proxies are supported")
            })?),
            None => None,
        };
        let address = if credentials.is_some() {
            address
        } else {
            address.strip_prefix("http://").ok_or_else(|| {
                format!("upstream_proxy {shown:?}: only http:// proxies are supported")
            })?
        }
        .trim_end_matches('/');
        if !address.contains(':') {
            return Err(format!("upstream_proxy {shown:?}: expected host:port"));
        }
        Ok(UpstreamProxy {
            address: address.to_owned(),
            authorization: credentials.map(|c| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(c)
                )
            }),
        })
    }

    /// Opens a tunnel to `target` through the proxy.
    pub async fn connect(
        &self,
        target: SocketAddr,
        timeout: Duration,
    ) -> Result<TcpStream, String> {
        tokio::time::timeout(timeout, self.connect_inner(target))
            .await
            .map_err(|_| {
                format!(
                    "upstream proxy {} did not answer within {timeout:?}",
                    self.address
                )
            })?
    }

    async fn connect_inner(&self, target: SocketAddr) -> Result<TcpStream, String> {
        let mut stream = TcpStream::connect(&self.address)
            .await
            .map_err(|e| format!("connecting to upstream proxy {}: {e}", self.address))?;
        let _ = stream.set_nodelay(true);
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(authorization) = &self.authorization {
            request.push_str(&format!("Proxy-Authorization: {authorization}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("writing to upstream proxy: {e}"))?;
        // Read the response head byte by byte: nothing after it may be consumed, it belongs
        // to the TLS handshake.
        let mut head = Vec::with_capacity(256);
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_HEAD {
                return Err("upstream proxy sent an oversized response".into());
            }
            let byte = stream
                .read_u8()
                .await
                .map_err(|e| format!("reading the upstream proxy's answer: {e}"))?;
            head.push(byte);
        }
        let head = String::from_utf8_lossy(&head);
        let status_line = head.lines().next().unwrap_or_default();
        let status = status_line.split_whitespace().nth(1).unwrap_or_default();
        if status != "200" {
            return Err(format!(
                "upstream proxy refused CONNECT {target}: {status_line}"
            ));
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
            let err = UpstreamProxy::parse(url).unwrap_err();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(err.contains("proxy.example"), "{err}");
        }
        assert!(UpstreamProxy::parse("http://alice:hunter2@proxy.example:3128").is_ok());
        assert!(UpstreamProxy::parse("http://proxy.example:3128/").is_ok());
        assert!(UpstreamProxy::parse("proxy.example:3128").is_err());
    }
}
