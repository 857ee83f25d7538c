//! The bounds on pending handshakes: sockets accepted whose `Hello` is not
//! handled yet. A peer that connects and stays silent costs a Connection
//! until the handshake timeout; these bounds cap what silent peers can hold,
//! in total and per source.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::metrics::gauge::Gauge;

/// The places for pending handshakes, shared by the listener (which takes
/// one per socket) and the connections (which give it back when their
/// `Hello` is handled or they stop).
#[derive(Debug, Clone)]
pub(crate) struct PendingHandshakes {
    counts: Arc<Mutex<Counts>>,
    max_total: usize,
    max_per_source: usize,
    gauge: Gauge,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Only sources with a pending handshake: the map shrinks as they end.
    per_source: HashMap<IpAddr, usize>,
}

/// Why a socket got no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// `max_pending_handshakes` are pending.
    #[error("{0} handshakes are pending, the bound")]
    Total(usize),
    /// `max_pending_handshakes_per_source` are pending from this source.
    #[error("{0} handshakes are pending from this source, the bound")]
    PerSource(usize),
}

impl Refusal {
    /// The `reason` label of `herd_hub_sockets_refused_total`.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::Total(_) => "pending_handshakes",
            Self::PerSource(_) => "per_source",
        }
    }
}

/// One pending handshake's place; dropping it gives the place back, so a
/// Connection that stops in any way (or is never started) cannot leak one.
#[derive(Debug)]
pub(crate) struct HandshakePermit {
    places: PendingHandshakes,
    source: IpAddr,
}

impl PendingHandshakes {
    /// Places for `max_total` pending handshakes, `max_per_source` of them
    /// from one source; `gauge` shows how many are taken.
    pub(crate) fn new(max_total: usize, max_per_source: usize, gauge: Gauge) -> Self {
        Self {
            counts: Arc::default(),
            max_total,
            max_per_source,
            gauge,
        }
    }

    /// A place for a socket from `peer`, unless a bound is reached. The
    /// per-source bound is checked first: a flood from one source is named
    /// as such even when it also filled the total.
    pub(crate) fn try_acquire(&self, peer: IpAddr) -> Result<HandshakePermit, Refusal> {
        let source = source_of(peer);
        let mut counts = self.lock();
        let from_source = counts.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.max_per_source {
            return Err(Refusal::PerSource(self.max_per_source));
        }
        if counts.total >= self.max_total {
            return Err(Refusal::Total(self.max_total));
        }
        counts.total += 1;
        *counts.per_source.entry(source).or_default() += 1;
        self.gauge.inc();
        Ok(HandshakePermit {
            places: self.clone(),
            source,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counts stay consistent across a panic: every update is one
        // step with no early exit between its parts.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        let mut counts = self.places.lock();
        counts.total -= 1;
        if let Some(from_source) = counts.per_source.get_mut(&self.source) {
            *from_source -= 1;
            if *from_source == 0 {
                counts.per_source.remove(&self.source);
            }
        }
        self.places.gauge.dec();
    }
}

/// The source a peer's handshakes count against: its IPv4 address, or the
/// /64 of an IPv6 one (one host is routinely given a whole /64, so a single
/// address would be no bound at all). The accept rate counts by it too.
pub(crate) fn source_of(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = v6.to_bits() & !(u128::from(u64::MAX));
            IpAddr::V6(Ipv6Addr::from_bits(prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_hold_per_source_and_in_total_and_dropped_permits_give_places_back() {
        let gauge = Gauge::default();
        let places = PendingHandshakes::new(3, 2, gauge.clone());
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let c: IpAddr = "10.0.0.3".parse().expect("ip");
        let first = places.try_acquire(a).expect("room");
        let _second = places.try_acquire(a).expect("room");
        assert_eq!(places.try_acquire(a).unwrap_err(), Refusal::PerSource(2));
        let _third = places.try_acquire(b).expect("room");
        assert_eq!(places.try_acquire(c).unwrap_err(), Refusal::Total(3));
        assert_eq!(gauge.get(), 3);
        drop(first);
        assert_eq!(gauge.get(), 2);
        let _fourth = places.try_acquire(c).expect("a place was given back");
        assert_eq!(places.try_acquire(a).unwrap_err(), Refusal::Total(3));
    }

    #[test]
    fn an_ipv6_64_is_one_source_and_mapped_ipv4_is_ipv4() {
        let places = PendingHandshakes::new(10, 1, Gauge::default());
        let _one = places
            .try_acquire("2001:db8::1".parse().expect("ip"))
            .expect("room");
        let other_host = places.try_acquire("2001:db8::ffff:1".parse().expect("ip"));
        assert_eq!(other_host.unwrap_err(), Refusal::PerSource(1));
        let _v4 = places
            .try_acquire("192.0.2.1".parse().expect("ip"))
            .expect("room");
        let mapped = places.try_acquire("::ffff:192.0.2.1".parse().expect("ip"));
        assert_eq!(mapped.unwrap_err(), Refusal::PerSource(1));
        let _next_64 = places
            .try_acquire("2001:db8:0:1::1".parse().expect("ip"))
            .expect("another /64 is another source");
    }
}
