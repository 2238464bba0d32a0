//! Which of this host's addresses the SFU advertises when the operator names none.
//!
//! Browsers reach the SFU at its ICE host candidate. A loopback candidate works for
//! Chromium on the same machine, but Firefox gathers no loopback candidates (and pairs
//! none), so a demo served on 127.0.0.1 gives a Firefox user no media. The address the
//! default route leaves from is reachable from a browser on this host and from the
//! network it is on, so that is the default; loopback is the fallback on a host with no
//! route at all.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};

/// Where the destination of the route lookup points. A documentation prefix (RFC 5737):
/// `connect` on a UDP socket only asks the kernel for a route, it sends nothing.
const ROUTE_PROBE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// The IPv4 address this host's default route leaves from, if it has one.
pub fn default_route_ipv4() -> Option<Ipv4Addr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect((ROUTE_PROBE, 9)).ok()?;
    match socket.local_addr().ok()?.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

/// What the SFU binds to and advertises by default, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaAddress {
    /// The default route's source address: every browser on this host (Firefox
    /// included) and on its network can reach it.
    DefaultRoute(Ipv4Addr),
    /// No usable route: loopback, which Chromium on this host reaches and Firefox does not.
    LoopbackOnly,
}

impl MediaAddress {
    /// Pick the default from what the kernel's routing table says.
    pub fn detect() -> MediaAddress {
        Self::choose(default_route_ipv4())
    }

    fn choose(route: Option<Ipv4Addr>) -> MediaAddress {
        match route {
            Some(ip) if !ip.is_loopback() => MediaAddress::DefaultRoute(ip),
            _ => MediaAddress::LoopbackOnly,
        }
    }

    pub fn ip(self) -> IpAddr {
        match self {
            MediaAddress::DefaultRoute(ip) => IpAddr::V4(ip),
            MediaAddress::LoopbackOnly => IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routable_address_is_preferred_to_loopback() {
        let lan = Ipv4Addr::new(10, 1, 2, 3);
        assert_eq!(MediaAddress::choose(Some(lan)).ip(), IpAddr::V4(lan));
        assert_eq!(
            MediaAddress::choose(None).ip(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        // A route through loopback only is no better than none.
        assert_eq!(
            MediaAddress::choose(Some(Ipv4Addr::new(127, 0, 0, 2))),
            MediaAddress::LoopbackOnly
        );
    }

    #[test]
    fn detection_never_yields_an_unspecified_address() {
        // Whatever this host's routes are, the result is bindable and advertisable.
        let ip = MediaAddress::detect().ip();
        assert!(!ip.is_unspecified());
        if let Some(route) = default_route_ipv4() {
            assert!(!route.is_unspecified());
        }
    }
}
