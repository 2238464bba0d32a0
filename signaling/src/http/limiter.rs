//! Per-address request limits on the unauthenticated credential endpoints (login,
//! invite redemption).
//!
//! Two things keep its state bounded: an address is limited as the unit its owner
//! controls ([`AddrKey`]: an IPv4 address, or the /64 of an IPv6 address, since one
//! subscriber usually holds a whole /64 and can rotate through it freely), and
//! [`AddrLimiter::prune`], which the server calls on a timer, forgets every address
//! whose bucket has refilled (its state is then the same as a fresh one's, so
//! nothing is lost).

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

/// What an address is limited (and throttled) as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrKey(IpAddr);

impl AddrKey {
    /// IPv4 as is (also when written as an IPv4-mapped IPv6 address); IPv6 cut to
    /// its /64.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => AddrKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddrKey(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    AddrKey(IpAddr::V6(Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
        }
    }
}

impl std::fmt::Display for AddrKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// A token bucket per [`AddrKey`].
pub struct AddrLimiter<C: Clock = DefaultClock> {
    // Keys are derived from peer addresses, which an attacker chooses; DashMap's
    // default hasher is std's RandomState (SipHash), which resists flooding.
    inner: RateLimiter<AddrKey, DashMapStateStore<AddrKey>, C, NoOpMiddleware<C::Instant>>,
}

impl AddrLimiter {
    /// `per_second` requests per second per address, bursts of `burst`.
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self::with_clock(quota(per_second, burst), DefaultClock::default())
    }
}

fn quota(per_second: u32, burst: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
}

impl<C: Clock> AddrLimiter<C> {
    /// The same on a clock of the caller's (tests).
    pub fn with_clock(quota: Quota, clock: C) -> Self {
        AddrLimiter {
            inner: RateLimiter::dashmap_with_clock(quota, clock),
        }
    }

    /// Whether a request from `ip` may go ahead now (and counts it).
    pub fn check(&self, ip: IpAddr) -> bool {
        self.inner.check_key(&AddrKey::of(ip)).is_ok()
    }

    /// Forgets every address whose bucket is full again.
    pub fn prune(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
    }

    /// Addresses held now.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether no address is held.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limiter() -> (AddrLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (AddrLimiter::with_clock(quota(10, 30), clock.clone()), clock)
    }

    #[test]
    fn ipv6_addresses_in_one_64_share_a_bucket() {
        let (l, _) = limiter();
        let ip = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0xa, 0xb, 0xc, last));
        for i in 0..30 {
            assert!(l.check(ip(i)), "request {i}");
        }
        assert!(
            !l.check(ip(999)),
            "a new address in the same /64 got a fresh bucket"
        );
        let other = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1));
        assert!(l.check(other), "another /64 is another subscriber");
        assert_eq!(l.len(), 2);
        // An IPv4-mapped address is its IPv4 address.
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(AddrKey::of(v4), AddrKey::of(mapped));
        assert_eq!(AddrKey::of(ip(5)).to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn prune_forgets_addresses_whose_bucket_has_refilled() {
        let (l, clock) = limiter();
        for i in 0..1000u32 {
            assert!(l.check(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))));
        }
        let busy = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
        for _ in 0..30 {
            l.check(busy);
        }
        assert_eq!(l.len(), 1001);
        clock.advance(Duration::from_millis(500));
        l.prune();
        // The one-off addresses are gone; the busy one still owes time and stays.
        assert_eq!(l.len(), 1);
        // Half a second refilled 5 of its 30 tokens, no more: pruning gave nothing back.
        for i in 0..5 {
            assert!(l.check(busy), "refilled token {i}");
        }
        assert!(
            !l.check(busy),
            "pruning must not give a draining bucket back"
        );
        clock.advance(Duration::from_secs(4));
        l.prune();
        assert!(l.is_empty());
    }
}
