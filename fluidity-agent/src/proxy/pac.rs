//! `GET /proxy.pac`: a proxy auto-configuration file pointing browsers at this agent.

use std::net::SocketAddr;

use hyper::{Response, StatusCode};

use super::{Body, full};
use crate::config::PacProtocol;

/// The PAC file for a proxy at `address`: local names go direct, everything else through us,
/// as an HTTP proxy or as SOCKS5 (with the HTTP proxy on the same port as the fallback).
pub(crate) fn script(address: &str, protocol: PacProtocol) -> String {
    let route = match protocol {
        PacProtocol::Http => format!("PROXY {address}"),
        PacProtocol::Socks5 => format!("SOCKS5 {address}; PROXY {address}"),
    };
    format!(
        "function FindProxyForURL(url, host) {{\n  \
           if (isPlainHostName(host) || host === \"localhost\" || shExpMatch(host, \"127.*\") || host === \"[::1]\")\n    \
             return \"DIRECT\";\n  \
           return \"{route}\";\n\
         }}\n"
    )
}

/// The address to advertise: the one the client reached us at (its `Host` header, when it
/// is a plain `host:port`), else our bound address, with a wildcard bind (`0.0.0.0`, `::`)
/// replaced by loopback, which is at least reachable from this machine.
pub(crate) fn advertised(bound: SocketAddr, host_header: Option<&str>) -> String {
    let safe = |host: &str| {
        !host.is_empty()
            && host.len() <= 255
            && host.contains(':')
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    };
    if let Some(host) = host_header.filter(|h| safe(h)) {
        return host.to_owned();
    }
    let ip = match bound.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port()).to_string()
}

pub(crate) fn response(address: &str, protocol: PacProtocol) -> Response<Body> {
    let mut response = Response::new(full(script(address, protocol)));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ns-proxy-autoconfig"),
    );
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_advertised_address_is_reachable_and_never_script() {
        let wildcard: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(advertised(wildcard, None), "127.0.0.1:8080");
        assert_eq!(advertised("[::]:8080".parse().unwrap(), None), "[::1]:8080");
        assert_eq!(
            advertised(wildcard, Some("192.168.1.5:8080")),
            "192.168.1.5:8080"
        );
        // A Host header that is not a plain host:port never reaches the script.
        assert_eq!(
            advertised(wildcard, Some("x\"); alert(1); //:80")),
            "127.0.0.1:8080"
        );
        assert_eq!(advertised(wildcard, Some("example.com")), "127.0.0.1:8080");
        assert_eq!(
            advertised("127.0.0.1:3128".parse().unwrap(), None),
            "127.0.0.1:3128"
        );
    }
}
