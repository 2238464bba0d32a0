//! Who a request came from, behind trusted reverse proxies, and how many
//! unauthenticated WebSocket connections each address may hold.
//!
//! `X-Forwarded-For` is honoured only when the connection itself comes from a listed
//! proxy: anyone else could write any address into it and so escape the per-address
//! limits or put a false source into the audit log.

use std::net::IpAddr;

use dashmap::DashMap;
use ipnet::IpNet;

use super::AddrKey;

/// The client address of a request that arrived from `peer` with the
/// `X-Forwarded-For` values `forwarded` (each header's value, in order).
///
/// From an untrusted peer, the peer itself. From a trusted proxy, the right-most
/// address in the chain that is not itself a trusted proxy: the proxies append, so
/// entries to the left of the first untrusted one were written by the client and
/// prove nothing. A malformed entry ends the walk there (the last trusted hop is
/// used), so garbage cannot choose the address either.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded: impl Iterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded.flat_map(|v| v.split(',')).collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// Parses the trusted proxy list: addresses or CIDR networks, comma-separated.
pub fn parse_trusted(list: &str) -> Result<Vec<IpNet>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("not an address or network: {s:?}"))
        })
        .collect()
}

/// Counts the unauthenticated WebSocket connections of each address (IPv6 by /64).
#[derive(Default)]
pub struct UnauthConns {
    // Keys come from peer addresses; DashMap's default hasher is SipHash.
    open: DashMap<AddrKey, usize>,
}

impl UnauthConns {
    /// One more unauthenticated connection for `ip`, if it holds fewer than `max`;
    /// released when the returned slot is dropped.
    pub fn try_open(self: &std::sync::Arc<Self>, ip: IpAddr, max: usize) -> Option<UnauthSlot> {
        let key = AddrKey::of(ip);
        let mut n = self.open.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(UnauthSlot {
            table: self.clone(),
            key,
        })
    }

    /// Unauthenticated connections `ip` holds now.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.open.get(&AddrKey::of(ip)).map_or(0, |n| *n)
    }
}

/// One unauthenticated connection's place; dropping it (on `hello` or on close)
/// gives the place back.
pub struct UnauthSlot {
    table: std::sync::Arc<UnauthConns>,
    key: AddrKey,
}

impl Drop for UnauthSlot {
    fn drop(&mut self) {
        // The entry goes with its last connection, so the table holds only addresses
        // with connections open.
        self.table.open.remove_if_mut(&self.key, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let trusted = parse_trusted("10.0.0.0/8, 192.0.2.7").unwrap();
        let client = client_ip(ip("203.0.113.9"), ["198.51.100.1"].into_iter(), &trusted);
        assert_eq!(client, ip("203.0.113.9"), "an untrusted peer cannot choose");
        let none: [&str; 0] = [];
        assert_eq!(
            client_ip(ip("192.0.2.7"), none.into_iter(), &trusted),
            ip("192.0.2.7")
        );
        assert_eq!(
            client_ip(ip("192.0.2.7"), ["198.51.100.1"].into_iter(), &trusted),
            ip("198.51.100.1")
        );
        // Nothing trusted: the header never counts.
        assert_eq!(
            client_ip(ip("192.0.2.7"), ["198.51.100.1"].into_iter(), &[]),
            ip("192.0.2.7")
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = parse_trusted("10.0.0.0/8").unwrap();
        // The client forged the first entry; two proxies of ours appended.
        let chain = ["1.2.3.4, 198.51.100.1, 10.0.0.2", "10.0.0.3"];
        assert_eq!(
            client_ip(ip("10.0.0.4"), chain.into_iter(), &trusted),
            ip("198.51.100.1")
        );
        // Garbage stops the walk at the last trusted hop.
        let chain = ["198.51.100.1, not-an-ip, 10.0.0.2"];
        assert_eq!(
            client_ip(ip("10.0.0.4"), chain.into_iter(), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_ip(ip("10.0.0.4"), ["2001:db8::1"].into_iter(), &trusted),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn trusted_lists_parse_addresses_and_networks_and_refuse_garbage() {
        let t = parse_trusted(" 10.0.0.0/8 ,::1, 2001:db8::/32").unwrap();
        assert_eq!(t.len(), 3);
        assert!(t[1].contains(&ip("::1")));
        assert!(parse_trusted("").unwrap().is_empty());
        assert!(parse_trusted("10.0.0.0/8, example.com").is_err());
        assert!(parse_trusted("10.0.0.0/33").is_err());
    }

    #[test]
    fn unauthenticated_connections_are_capped_per_address_and_released() {
        let t = Arc::new(UnauthConns::default());
        let a = ip("2001:db8::1");
        let same_64 = ip("2001:db8::2");
        let s1 = t.try_open(a, 2).unwrap();
        let s2 = t.try_open(same_64, 2).unwrap();
        assert!(t.try_open(a, 2).is_none(), "the /64 holds its two");
        assert!(
            t.try_open(ip("192.0.2.1"), 2).is_some(),
            "others are not affected"
        );
        drop(s1);
        let s3 = t.try_open(a, 2).unwrap();
        drop((s2, s3));
        assert_eq!(t.count(a), 0);
        assert!(t.open.is_empty(), "no entry stays behind");
    }
}
