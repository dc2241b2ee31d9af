//! HTTP header rules both ends of the tunnel apply (RFC 9110 §7.6.1): hop-by-hop headers
//! describe one connection and are never forwarded.

use crate::envelope::Headers;

/// Headers that only concern one connection.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` (any case) is a hop-by-hop header or a `Proxy-*` header.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || name
            .get(..6)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case("proxy-"))
}

/// The header names a `Connection` header lists (they are hop-by-hop too).
pub fn connection_listed<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect()
}

/// Removes hop-by-hop headers (fixed ones, `Proxy-*`, and those the `Connection` header
/// names) from an envelope header map.
pub fn strip_hop_by_hop(headers: &mut Headers) {
    let listed = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("connection"))
        .map(|(_, values)| connection_listed(values.iter().map(String::as_str)))
        .unwrap_or_default();
    headers.retain(|name, _| {
        !is_hop_by_hop(name) && !listed.iter().any(|l| name.eq_ignore_ascii_case(l))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_and_end_to_end_ones_kept() {
        let mut headers: Headers = [
            ("Connection", vec!["close, X-Private"]),
            ("X-Private", vec!["1"]),
            ("Proxy-Authorization", vec!["Basic x"]),
            ("Transfer-Encoding", vec!["chunked"]),
            ("Set-Cookie", vec!["a=1", "b=2"]),
            ("Content-Length", vec!["5"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
        .collect();
        strip_hop_by_hop(&mut headers);
        let names: Vec<&str> = headers.keys().map(String::as_str).collect();
        assert_eq!(names, ["Content-Length", "Set-Cookie"]);
        assert_eq!(headers["Set-Cookie"].len(), 2);
    }
}
