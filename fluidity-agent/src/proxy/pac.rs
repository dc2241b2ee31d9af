//! `GET /proxy.pac`: a proxy auto-configuration file pointing browsers at this agent.

use std::net::SocketAddr;

use hyper::{Response, StatusCode};

use super::{Body, full};

/// The PAC file for a proxy at `address`: local names go direct, everything else through us.
pub(crate) fn script(address: SocketAddr) -> String {
    format!(
        "function FindProxyForURL(url, host) {{\n  \
           if (isPlainHostName(host) || host === \"localhost\" || shExpMatch(host, \"127.*\") || host === \"[::1]\")\n    \
             return \"DIRECT\";\n  \
           return \"PROXY {address}\";\n\
         }}\n"
    )
}

pub(crate) fn response(address: SocketAddr) -> Response<Body> {
    let mut response = Response::new(full(script(address)));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ns-proxy-autoconfig"),
    );
    response
}
