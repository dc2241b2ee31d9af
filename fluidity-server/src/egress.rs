//! Egress policy: which addresses the server may connect to on an agent's behalf.
//!
//! By default the server refuses loopback, link-local and the cloud metadata endpoints, so a
//! tunnel cannot reach the server's own host or its IAM credentials (SSRF). Names are resolved
//! here and the connection goes to a checked address, so DNS cannot swap in a denied one
//! between check and connect.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::Error;

/// The default deny list.
pub const DEFAULT_DENY: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "0.0.0.0/8",
    "::/128",
    "169.254.0.0/16",
    "fe80::/10",
    "169.254.169.254/32",
    "169.254.170.2/32",
    "fd00:ec2::254/128",
];

/// An IP network, `address/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address (a host route).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP network (e.g. 10.0.0.0/8)"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: prefix must be 0..={max}"))?,
            None => max,
        };
        Ok(Cidr { network, prefix })
    }

    /// Whether `ip` is inside this network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The deny list in force.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    deny: Vec<Cidr>,
}

impl EgressPolicy {
    /// From the `egress_deny` config value: `None` gives [`DEFAULT_DENY`].
    pub fn from_config(deny: Option<&[String]>) -> Result<Self, Error> {
        let deny: Result<Vec<Cidr>, String> = match deny {
            None => DEFAULT_DENY.iter().map(|c| Cidr::parse(c)).collect(),
            Some(list) => list.iter().map(|c| Cidr::parse(c)).collect(),
        };
        deny.map(|deny| EgressPolicy { deny })
            .map_err(|reason| Error::Config(format!("egress_deny: {reason}")))
    }

    /// A policy that allows everything (`egress_deny: []`).
    pub fn allow_all() -> Self {
        EgressPolicy { deny: Vec::new() }
    }

    /// The network that denies `ip`, if any.
    pub fn denies(&self, ip: IpAddr) -> Option<Cidr> {
        self.deny.iter().find(|net| net.contains(ip)).copied()
    }

    /// Resolves `host:port` and keeps the allowed addresses; errors say why nothing is left.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let candidates: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
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
            (true, Some((ip, net))) => Err(format!(
                "egress to {host} ({ip}) is denied by the server's policy ({net} in egress_deny)"
            )),
            (true, None) => Err(format!("{host} resolves to no address")),
        }
    }
}

/// Splits a CONNECT authority `host:port` (`[v6]:port` too).
pub fn split_authority(authority: &str) -> Result<(String, u16), String> {
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("{authority:?} is not host:port"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{authority:?}: bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{authority:?}: empty host"));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_default_policy_denies_loopback_link_local_and_metadata() {
        let policy = EgressPolicy::from_config(None).unwrap();
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "169.254.169.254",
            "169.254.170.2",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert!(policy.denies(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "10.0.0.1",
            "2606:4700::1111",
            "fd00:ec2::253",
        ] {
            assert!(policy.denies(ip.parse().unwrap()).is_none(), "{ip}");
        }
        assert!(
            EgressPolicy::from_config(Some(&[]))
                .unwrap()
                .denies("127.0.0.1".parse().unwrap())
                .is_none()
        );
        assert!(EgressPolicy::from_config(Some(&["10.0.0.0/33".into()])).is_err());
        assert!(EgressPolicy::from_config(Some(&["nonsense".into()])).is_err());
        let custom =
            EgressPolicy::from_config(Some(&["10.0.0.0/8".into(), "192.0.2.7".into()])).unwrap();
        assert!(custom.denies("10.200.0.1".parse().unwrap()).is_some());
        assert!(custom.denies("192.0.2.7".parse().unwrap()).is_some());
        assert!(custom.denies("192.0.2.8".parse().unwrap()).is_none());
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
    }

    #[tokio::test]
    async fn resolution_keeps_only_allowed_addresses() {
        let policy = EgressPolicy::from_config(None).unwrap();
        let err = policy.resolve("localhost", 80).await.unwrap_err();
        assert!(err.contains("denied"), "{err}");
        let err = policy.resolve("127.0.0.1", 80).await.unwrap_err();
        assert!(err.contains("127.0.0.0/8"), "{err}");
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
        assert!(split_authority("example.com").is_err());
        assert!(split_authority(":80").is_err());
    }
}
