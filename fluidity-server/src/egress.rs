//! Egress policy: which addresses the server may connect to on an agent's behalf.
//!
//! The server sits inside someone's network (a VPC, a home LAN, a VPS provider's private
//! network), so by default it refuses everything that is not the public internet: its own
//! addresses, loopback, private and shared ranges, link-local and the cloud metadata
//! endpoints, multicast, broadcast and the reserved and documentation ranges ([`DEFAULT_DENY`]).
//! `egress_allow` opens exceptions; an explicit `egress_deny` replaces the default list
//! (`[]` allows everything). Names are resolved here and the connection goes to a checked
//! address, so DNS cannot swap in a denied one between check and connect.

use std::net::{IpAddr, SocketAddr};

use fluidity_core::RefusalCode;
pub use fluidity_core::transport::Cidr;

use crate::Error;

/// The default deny list (besides the server's own addresses, which are added at start).
pub const DEFAULT_DENY: &[&str] = &[
    // IPv4
    "0.0.0.0/8",       // "this network"
    "10.0.0.0/8",      // private (RFC 1918)
    "100.64.0.0/10",   // carrier-grade NAT (RFC 6598)
    "127.0.0.0/8",     // loopback
    "169.254.0.0/16",  // link-local, the cloud metadata endpoints (169.254.169.254, .170.2)
    "172.16.0.0/12",   // private (RFC 1918)
    "192.0.0.0/24",    // IETF protocol assignments
    "192.0.2.0/24",    // documentation (TEST-NET-1)
    "192.168.0.0/16",  // private (RFC 1918)
    "198.18.0.0/15",   // benchmarking
    "198.51.100.0/24", // documentation (TEST-NET-2)
    "203.0.113.0/24",  // documentation (TEST-NET-3)
    "224.0.0.0/4",     // multicast
    "240.0.0.0/4",     // reserved, and the broadcast address 255.255.255.255
    // IPv6 (IPv4-mapped addresses are checked as IPv4)
    "::/96",          // unspecified, loopback and the deprecated IPv4-compatible addresses
    "64:ff9b::/96",   // NAT64 (reaches IPv4 addresses, private ones too)
    "64:ff9b:1::/48", // local-use NAT64
    "100::/64",       // discard
    "2001::/32",      // Teredo
    "2001:db8::/32",  // documentation
    "2002::/16",      // 6to4 (embeds an IPv4 address)
    "fc00::/7",       // unique local, the AWS metadata endpoint fd00:ec2::254 included
    "fe80::/10",      // link-local
    "fec0::/10",      // site-local (deprecated)
    "ff00::/8",       // multicast
];

/// Why a target could not be reached: sent to the agent as a [`RefusalCode`] (which a SOCKS5
/// client sees as its reply code) and this message.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The target is not a usable address.
    #[error("{target:?}: {problem}")]
    BadTarget {
        /// What the agent asked for.
        target: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The name does not resolve.
    #[error("cannot resolve {host}: {source}")]
    NoSuchHost {
        /// The name.
        host: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// The name resolves to nothing.
    #[error("{host} resolves to no address")]
    NoAddress {
        /// The name.
        host: String,
    },
    /// The egress policy denies every address of the target.
    #[error(
        "egress to {host} ({ip}) is denied by the server's policy ({network}; see egress_deny \
         and egress_allow)"
    )]
    Denied {
        /// The name (or address) asked for.
        host: String,
        /// The denied address.
        ip: IpAddr,
        /// The deny-list entry that covers it.
        network: Cidr,
    },
    /// Connecting failed (the last address tried).
    #[error("connecting to {address}: {source}")]
    Connect {
        /// The address.
        address: SocketAddr,
        /// The connect error.
        #[source]
        source: std::io::Error,
    },
    /// No address answered within the deadline.
    #[error("connecting timed out after {0:?}")]
    TimedOut(std::time::Duration),
    /// The target was reached but the protocol on top failed (TLS, a WebSocket handshake).
    #[error("{0}")]
    Protocol(String),
}

impl TargetError {
    /// The code the agent gets.
    pub fn code(&self) -> RefusalCode {
        match self {
            TargetError::Denied { .. } => RefusalCode::Denied,
            TargetError::NoSuchHost { .. } | TargetError::NoAddress { .. } => {
                RefusalCode::HostUnreachable
            }
            TargetError::TimedOut(_) => RefusalCode::TimedOut,
            TargetError::Connect { source, .. } => connect_code(source.kind()),
            TargetError::BadTarget { .. } | TargetError::Protocol(_) => RefusalCode::Other,
        }
    }

    /// The first `TargetError` in `error`'s source chain (reqwest wraps the resolver's).
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a TargetError> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(found) = error.downcast_ref::<TargetError>() {
                return Some(found);
            }
            next = error.source();
        }
        None
    }
}

/// The code for a failed connect.
pub fn connect_code(kind: std::io::ErrorKind) -> RefusalCode {
    match kind {
        std::io::ErrorKind::ConnectionRefused => RefusalCode::ConnectionRefused,
        std::io::ErrorKind::NetworkUnreachable => RefusalCode::NetworkUnreachable,
        std::io::ErrorKind::HostUnreachable => RefusalCode::HostUnreachable,
        std::io::ErrorKind::TimedOut => RefusalCode::TimedOut,
        _ => RefusalCode::Other,
    }
}

/// The policy in force: a deny list with allowed exceptions.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    deny: Vec<Cidr>,
    allow: Vec<Cidr>,
}

impl EgressPolicy {
    /// From the `egress_deny` and `egress_allow` config values. `deny: None` gives
    /// [`DEFAULT_DENY`] plus `own_addresses` (the server's own IPs, which agents must not
    /// reach either: its health port, anything else listening on it).
    pub fn from_config(
        deny: Option<&[String]>,
        allow: &[String],
        own_addresses: &[IpAddr],
    ) -> Result<Self, Error> {
        let parse = |key: &str, list: &mut dyn Iterator<Item = &str>| {
            list.map(Cidr::parse)
                .collect::<Result<Vec<Cidr>, String>>()
                .map_err(|reason| Error::Config(format!("{key}: {reason}")))
        };
        let deny = match deny {
            None => {
                let mut deny = parse("egress_deny", &mut DEFAULT_DENY.iter().copied())?;
                deny.extend(own_addresses.iter().map(|ip| Cidr::host(*ip)));
                deny
            }
            Some(list) => parse("egress_deny", &mut list.iter().map(String::as_str))?,
        };
        let allow = parse("egress_allow", &mut allow.iter().map(String::as_str))?;
        Ok(EgressPolicy { deny, allow })
    }

    /// A policy that allows everything (`egress_deny: []`).
    pub fn allow_all() -> Self {
        EgressPolicy {
            deny: Vec::new(),
            allow: Vec::new(),
        }
    }

    /// The network that denies `ip`, if any (an `egress_allow` entry overrides).
    pub fn denies(&self, ip: IpAddr) -> Option<Cidr> {
        if self.allow.iter().any(|net| net.contains(ip)) {
            return None;
        }
        self.deny.iter().find(|net| net.contains(ip)).copied()
    }

    /// The error for `host` (`ip`), if the policy denies `ip`.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), TargetError> {
        match self.denies(ip) {
            Some(network) => Err(TargetError::Denied {
                host: host.to_owned(),
                ip,
                network,
            }),
            None => Ok(()),
        }
    }

    /// Resolves `host:port` and keeps the allowed addresses; errors say why nothing is left.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, TargetError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let candidates: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|source| TargetError::NoSuchHost {
                    host: host.to_owned(),
                    source,
                })?
                .collect(),
        };
        let mut denied = None;
        let allowed: Vec<SocketAddr> = candidates
            .into_iter()
            .filter(|address| match self.denies(address.ip()) {
                Some(net) => {
                    denied = Some((address.ip(), net));
                    false
                }
                None => true,
            })
            .collect();
        match (allowed.is_empty(), denied) {
            (false, _) => Ok(allowed),
            (true, Some((ip, network))) => Err(TargetError::Denied {
                host: host.to_owned(),
                ip,
                network,
            }),
            (true, None) => Err(TargetError::NoAddress {
                host: host.to_owned(),
            }),
        }
    }
}

/// This host's own addresses, as far as they can be read without privileges: on Linux the
/// local IPv4 routes (`/proc/net/fib_trie`) and IPv6 addresses (`/proc/net/if_inet6`).
/// Elsewhere, none (the configured `server_ip` and the listen address still count).
pub fn local_addresses() -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    if let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") {
        addresses.extend(parse_fib_trie(&trie));
    }
    if let Ok(inet6) = std::fs::read_to_string("/proc/net/if_inet6") {
        addresses.extend(parse_if_inet6(&inet6));
    }
    addresses.sort();
    addresses.dedup();
    addresses
}

/// The `/32 host LOCAL` entries of `/proc/net/fib_trie`: each follows the line naming it.
fn parse_fib_trie(text: &str) -> Vec<IpAddr> {
    let mut last = None;
    let mut found = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("|-- ") {
            last = rest.trim().parse::<IpAddr>().ok();
        } else if line.contains("/32 host LOCAL")
            && let Some(ip) = last
        {
            found.push(ip);
        }
    }
    found
}

/// The addresses of `/proc/net/if_inet6`: 32 hex digits at the start of each line.
fn parse_if_inet6(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|hex| u128::from_str_radix(hex, 16).ok())
        .map(|bits| IpAddr::from(std::net::Ipv6Addr::from(bits)))
        .collect()
}

/// Splits a CONNECT authority `host:port` (`[v6]:port` too).
pub fn split_authority(authority: &str) -> Result<(String, u16), TargetError> {
    let bad = |problem| TargetError::BadTarget {
        target: authority.to_owned(),
        problem,
    };
    let (host, port) = authority.rsplit_once(':').ok_or(bad("not host:port"))?;
    let port = port.parse::<u16>().map_err(|_| bad("bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn default_policy(own: &[IpAddr]) -> EgressPolicy {
        EgressPolicy::from_config(None, &[], own).unwrap()
    }

    #[test]
    fn the_default_policy_denies_everything_but_the_public_internet() {
        let own: IpAddr = "203.0.114.9".parse().unwrap();
        let policy = default_policy(&[own]);
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "::",
            "169.254.169.254",
            "169.254.170.2",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "0.0.0.0",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "fc00::1",
            "fd12:3456::1",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "ff02::1",
            "192.0.2.7",
            "198.51.100.1",
            "203.0.113.5",
            "198.18.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "2001:db8::1",
            "::10.0.0.1",
            "203.0.114.9",
        ] {
            assert!(policy.denies(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "203.0.114.10",
        ] {
            assert!(policy.denies(ip.parse().unwrap()).is_none(), "{ip}");
        }
    }

    #[test]
    fn explicit_lists_replace_and_allow_opens_exceptions() {
        let all_allowed = EgressPolicy::from_config(Some(&[]), &[], &[]).unwrap();
        assert!(all_allowed.denies("127.0.0.1".parse().unwrap()).is_none());
        assert!(EgressPolicy::from_config(Some(&["10.0.0.0/33".into()]), &[], &[]).is_err());
        assert!(EgressPolicy::from_config(Some(&["nonsense".into()]), &[], &[]).is_err());
        let err = EgressPolicy::from_config(None, &["10.0.0.0/99".into()], &[]).unwrap_err();
        assert!(err.to_string().contains("egress_allow"), "{err}");
        let custom =
            EgressPolicy::from_config(Some(&["10.0.0.0/8".into(), "192.0.2.7".into()]), &[], &[])
                .unwrap();
        assert!(custom.denies("10.200.0.1".parse().unwrap()).is_some());
        assert!(custom.denies("192.0.2.7".parse().unwrap()).is_some());
        assert!(custom.denies("192.0.2.8".parse().unwrap()).is_none());
        // An operator opens one internal service, the rest stays closed.
        let policy =
            EgressPolicy::from_config(None, &["10.1.2.3".into(), "fd00:1::/64".into()], &[])
                .unwrap();
        assert!(policy.denies("10.1.2.3".parse().unwrap()).is_none());
        assert!(policy.denies("10.1.2.4".parse().unwrap()).is_some());
        assert!(policy.denies("fd00:1::5".parse().unwrap()).is_none());
        assert!(policy.denies("fd00:2::5".parse().unwrap()).is_some());
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
    }

    #[test]
    fn own_addresses_are_read_from_proc() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     \
                    +-- 10.0.0.0/24 2 0 2\n        |-- 10.0.0.5\n           /32 host LOCAL\n        \
                    |-- 10.0.0.255\n           /32 link BROADCAST\n     |-- 54.1.2.3\n        \
                    /32 host LOCAL\n";
        assert_eq!(
            parse_fib_trie(trie),
            vec![
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "54.1.2.3".parse().unwrap()
            ]
        );
        let inet6 = "00000000000000000000000000000001 01 80 10 80       lo\n\
                     fe800000000000000000000000000001 02 40 20 80     eth0\n";
        assert_eq!(
            parse_if_inet6(inet6),
            vec!["::1".parse::<IpAddr>().unwrap(), "fe80::1".parse().unwrap()]
        );
        // On this machine: at least loopback.
        #[cfg(target_os = "linux")]
        assert!(local_addresses().contains(&"127.0.0.1".parse().unwrap()));
    }

    #[tokio::test]
    async fn resolution_keeps_only_allowed_addresses() {
        let policy = default_policy(&[]);
        let err = policy.resolve("localhost", 80).await.unwrap_err();
        assert!(matches!(err, TargetError::Denied { .. }), "{err}");
        assert_eq!(err.code(), RefusalCode::Denied);
        let err = policy.resolve("127.0.0.1", 80).await.unwrap_err();
        let TargetError::Denied { network, .. } = err else {
            panic!("{err}")
        };
        assert_eq!(network, Cidr::parse("127.0.0.0/8").unwrap());
        assert_eq!(
            EgressPolicy::allow_all()
                .resolve("127.0.0.1", 80)
                .await
                .unwrap(),
            vec!["127.0.0.1:80".parse().unwrap()]
        );
        assert_eq!(
            split_authority("[::1]:443").unwrap(),
            ("::1".to_owned(), 443)
        );
        for bad in ["example.com", ":80", "host:http"] {
            let err = split_authority(bad).unwrap_err();
            assert!(matches!(err, TargetError::BadTarget { .. }), "{err}");
        }
    }
}
