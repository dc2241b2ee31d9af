//! SOCKS5 (RFC 1928) on the proxy port, or on a port of its own: CONNECT only, with the name
//! resolved by the server under its egress policy (`socks5h` semantics, whatever address type
//! the client sends), and username/password authentication (RFC 1929) when `proxy_auth` is set.
//!
//! The reply comes only once the server has reached the target, with a code that says why
//! not ([`reply_code`]): a client sees "connection not allowed by ruleset" for an egress denial,
//! "connection refused", "host unreachable" and so on, not a generic failure. BIND and UDP
//! ASSOCIATE get "command not supported".

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use fluidity_core::RefusalCode;
use fluidity_core::relay::{Progress, relay_tcp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{OpenError, Proxy, constant_time_eq, open_connect};

/// The protocol version byte, also the first byte of every SOCKS5 connection.
pub(crate) const VERSION: u8 = 5;

/// Authentication methods.
const NO_AUTHENTICATION: u8 = 0x00;
const USERNAME_PASSWORD: u8 = 0x02;
const NO_ACCEPTABLE_METHOD: u8 = 0xff;

/// Commands.
const CONNECT: u8 = 0x01;

/// Address types.
const IPV4: u8 = 0x01;
const DOMAIN: u8 = 0x03;
const IPV6: u8 = 0x04;

/// Reply codes (RFC 1928 §6).
mod reply {
    pub const SUCCEEDED: u8 = 0x00;
    pub const GENERAL_FAILURE: u8 = 0x01;
    pub const NOT_ALLOWED: u8 = 0x02;
    pub const NETWORK_UNREACHABLE: u8 = 0x03;
    pub const HOST_UNREACHABLE: u8 = 0x04;
    pub const CONNECTION_REFUSED: u8 = 0x05;
    pub const TTL_EXPIRED: u8 = 0x06;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x07;
    pub const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;
}

/// Why a SOCKS5 negotiation ended without a stream (logged at debug).
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("the client sent {what} {found:#04x}")]
    Malformed { what: &'static str, found: u8 },
    #[error("the client offers no acceptable authentication method")]
    NoAcceptableMethod,
    #[error("wrong username or password")]
    BadCredentials,
    #[error("command {0:#04x} is not supported (CONNECT only)")]
    UnsupportedCommand(u8),
    #[error("address type {0:#04x} is not supported")]
    UnsupportedAddress(u8),
    #[error("the domain name is not UTF-8 or is empty")]
    BadDomain,
    #[error("the negotiation did not finish within {0:?}")]
    TimedOut(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Serves one SOCKS5 client: negotiation (within `deadline`), then the relay.
pub(crate) async fn serve(
    proxy: &Proxy,
    mut client: TcpStream,
    peer: SocketAddr,
    deadline: Duration,
) {
    let target = match tokio::time::timeout(deadline, negotiate(proxy, &mut client)).await {
        Ok(Ok(target)) => target,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "SOCKS5 negotiation failed");
            linger(client).await;
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, error = %Failure::TimedOut(deadline), "SOCKS5 negotiation failed");
            return;
        }
    };
    let stream = match open_connect(proxy, &target.host, &target.authority()).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::info!(target = %target.authority(), error = ?e, "SOCKS5 CONNECT refused");
            let _ = client.write_all(&reply_bytes(reply_code(&e))).await;
            return;
        }
    };
    if client
        .write_all(&reply_bytes(reply::SUCCEEDED))
        .await
        .is_err()
    {
        return;
    }
    let progress = Progress::default();
    let moved = relay_tcp(stream, client, bytes::Bytes::new(), &progress).await;
    tracing::debug!(target = %target.authority(), up = moved.to_tunnel, down = moved.from_tunnel, "SOCKS5 CONNECT closed");
}

/// Closes after a refusal so that the client reads it: unread request bytes (an address of
/// an unknown type) would make the kernel answer our close with a reset, which may destroy
/// the reply in flight. Sends our end, then discards what the client still sends, briefly.
async fn linger(mut client: TcpStream) {
    let _ = client.shutdown().await;
    let drain = async {
        let mut sink = [0; 512];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// Where the client wants to go.
struct Target {
    /// A name, or an IP address without brackets.
    host: String,
    port: u16,
}

impl Target {
    /// `host:port`, with an IPv6 address in brackets.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Method selection, authentication, and the request. Refusals the client must hear about
/// (no acceptable method, bad credentials, unsupported command or address type) are answered
/// here; the connection is then closed.
async fn negotiate(proxy: &Proxy, client: &mut TcpStream) -> Result<Target, Failure> {
    let [version, count] = read_array(client).await?;
    expect(version, VERSION, "version")?;
    let mut methods = vec![0; usize::from(count)];
    client.read_exact(&mut methods).await?;
    let wanted = if proxy.credentials.is_some() {
        USERNAME_PASSWORD
    } else {
        NO_AUTHENTICATION
    };
    if !methods.contains(&wanted) {
        client.write_all(&[VERSION, NO_ACCEPTABLE_METHOD]).await?;
        return Err(Failure::NoAcceptableMethod);
    }
    client.write_all(&[VERSION, wanted]).await?;
    if let Some((user, password)) = &proxy.credentials {
        authenticate(client, user, password).await?;
    }

    let [version, command, _reserved, address_type] = read_array(client).await?;
    expect(version, VERSION, "version")?;
    let host = match address_type {
        IPV4 => Ipv4Addr::from(read_array::<4>(client).await?).to_string(),
        IPV6 => Ipv6Addr::from(read_array::<16>(client).await?).to_string(),
        DOMAIN => {
            let [length] = read_array(client).await?;
            let mut name = vec![0; usize::from(length)];
            client.read_exact(&mut name).await?;
            match String::from_utf8(name) {
                Ok(name) if !name.is_empty() => name,
                _ => {
                    client
                        .write_all(&reply_bytes(reply::GENERAL_FAILURE))
                        .await?;
                    return Err(Failure::BadDomain);
                }
            }
        }
        other => {
            client
                .write_all(&reply_bytes(reply::ADDRESS_TYPE_NOT_SUPPORTED))
                .await?;
            return Err(Failure::UnsupportedAddress(other));
        }
    };
    let port = u16::from_be_bytes(read_array(client).await?);
    if command != CONNECT {
        client
            .write_all(&reply_bytes(reply::COMMAND_NOT_SUPPORTED))
            .await?;
        return Err(Failure::UnsupportedCommand(command));
    }
    Ok(Target { host, port })
}

/// RFC 1929: `[1, ulen, user, plen, password]`, answered `[1, 0]` or `[1, 1]`.
async fn authenticate(client: &mut TcpStream, user: &[u8], password: &[u8]) -> Result<(), Failure> {
    let [version, length] = read_array(client).await?;
    expect(version, 1, "authentication version")?;
    let mut given_user = vec![0; usize::from(length)];
    client.read_exact(&mut given_user).await?;
    let [length] = read_array(client).await?;
    let mut given_password = vec![0; usize::from(length)];
    client.read_exact(&mut given_password).await?;
    // Both compared in full, whichever differs, so timing says nothing about which.
    let user_ok = constant_time_eq(&given_user, user);
    let password_ok = constant_time_eq(&given_password, password);
    if user_ok & password_ok {
        client.write_all(&[1, 0]).await?;
        Ok(())
    } else {
        client.write_all(&[1, 1]).await?;
        Err(Failure::BadCredentials)
    }
}

async fn read_array<const N: usize>(client: &mut TcpStream) -> std::io::Result<[u8; N]> {
    let mut bytes = [0; N];
    client.read_exact(&mut bytes).await?;
    Ok(bytes)
}

fn expect(found: u8, wanted: u8, what: &'static str) -> Result<(), Failure> {
    if found == wanted {
        Ok(())
    } else {
        Err(Failure::Malformed { what, found })
    }
}

/// A reply with `code`. The bound address is reported as 0.0.0.0:0: the connection to the
/// target is made by the server, whose address means nothing to the client.
fn reply_bytes(code: u8) -> [u8; 10] {
    [VERSION, code, 0, IPV4, 0, 0, 0, 0, 0, 0]
}

/// The reply code for a stream that could not be opened.
fn reply_code(error: &OpenError) -> u8 {
    match error {
        OpenError::Refused(refusal) => match refusal.code {
            RefusalCode::Denied => reply::NOT_ALLOWED,
            RefusalCode::NetworkUnreachable => reply::NETWORK_UNREACHABLE,
            RefusalCode::HostUnreachable => reply::HOST_UNREACHABLE,
            RefusalCode::ConnectionRefused => reply::CONNECTION_REFUSED,
            // RFC 1928 has no "timed out"; "TTL expired" is what SOCKS servers answer.
            RefusalCode::TimedOut => reply::TTL_EXPIRED,
            _ => reply::GENERAL_FAILURE,
        },
        OpenError::Breaker(_) | OpenError::Tunnel(_) | OpenError::Failed(_) => {
            reply::GENERAL_FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_targets_are_bracketed() {
        let v6 = Target {
            host: "::1".into(),
            port: 443,
        };
        assert_eq!(v6.authority(), "[::1]:443");
        let name = Target {
            host: "example.com".into(),
            port: 80,
        };
        assert_eq!(name.authority(), "example.com:80");
    }
}
