//! The per-source accept rate: how fast one source may open sockets. The
//! pending-handshake bounds cap what a source holds at once, but a source
//! whose sockets each finish their handshake quickly (a reconnect loop, a
//! flood of cheap connections) stays under them while every socket still
//! costs an accept, a Connection and a handshake, TLS included. A token
//! bucket per source (the same source as the pending bounds: an IPv4
//! address or an IPv6 /64) refuses the sockets beyond its rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::pending::source_of;

/// Sources tracked at most. Only sources whose bucket is not full are kept
/// (see [`AcceptRate::sweep`]), so this is reached only when this many
/// sources each opened a socket within one refill window (`burst / rate`,
/// 5.12 s by default): a flood from that many addresses, which no per-source
/// bound can stop. Then a new source is admitted untracked rather than
/// refused, so the flood cannot lock legitimate agents out; the
/// pending-handshake bounds still hold. About 40 bytes an entry: some 5 MB
/// of table at the cap, which it keeps after a sweep.
const MAX_SOURCES: usize = 65_536;
/// Below this many tracked sources no sweep runs: a sweep of a small table
/// frees nothing worth the pass.
const MIN_SWEEP: usize = 1_024;

/// The buckets of every source that opened a socket lately. Owned by the
/// listener, which accepts one socket at a time, so it needs no lock; a
/// restarted listener starts with full buckets, which only forgives.
#[derive(Debug)]
pub(crate) struct AcceptRate {
    /// `None`: the rate is off (`accept_rate_per_source = 0`).
    limit: Option<Limit>,
    /// Per source, when its bucket is full again (the "theoretical arrival
    /// time" of GCRA, the token bucket kept as one instant): each admitted
    /// socket moves it one `interval` later. A source is absent exactly when
    /// its bucket would be full, so removing an entry never changes an answer.
    full_at: HashMap<IpAddr, Instant>,
    /// A table this long is swept before a new source joins it: doubling
    /// after each sweep keeps sweeps O(1) per socket, amortized.
    sweep_at: usize,
    /// At [`MAX_SOURCES`] a sweep may free nothing; the next one waits this
    /// long, one refill window, after which every entry then present is full.
    retry_sweep: Instant,
}

/// The bucket of every source: `burst` sockets at once, one more per `interval`.
#[derive(Debug, Clone, Copy)]
struct Limit {
    rate: u32,
    burst: u32,
    /// The time one token takes to refill: `1 s / rate`.
    interval: Duration,
    /// The time an empty bucket takes to refill: `burst * interval`.
    window: Duration,
}

/// A socket over its source's accept rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this source opened {burst} sockets at once or more than {rate} a second, the bound")]
pub(crate) struct RateExceeded {
    rate: u32,
    burst: u32,
}

impl RateExceeded {
    /// The `reason` label of `herd_hub_sockets_refused_total`.
    pub(crate) fn reason(self) -> &'static str {
        "accept_rate"
    }
}

impl AcceptRate {
    /// Buckets of `burst` tokens refilled at `rate` a second; `rate` 0 turns
    /// the bound off. `burst` 0 with a rate refuses everything, which
    /// `HubConfig::validate` does not let through.
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        let limit = (rate > 0).then(|| {
            let interval = Duration::from_secs(1) / rate;
            Limit {
                rate,
                burst,
                interval,
                window: interval * burst,
            }
        });
        Self {
            limit,
            full_at: HashMap::new(),
            sweep_at: MIN_SWEEP,
            retry_sweep: Instant::now(),
        }
    }

    /// Takes a token of `peer`'s source, unless its bucket is empty. A
    /// refused socket takes none, so a source that keeps flooding still gets
    /// `rate` sockets a second through: the bound is on the rate, not a ban.
    pub(crate) fn try_accept(&mut self, peer: IpAddr) -> Result<(), RateExceeded> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let now = Instant::now();
        let source = source_of(peer);
        let full_at = match self.full_at.get(&source) {
            Some(&full_at) => full_at.max(now),
            None => {
                self.sweep(now, limit.window);
                if self.full_at.len() >= MAX_SOURCES {
                    return Ok(());
                }
                now
            }
        };
        let next = full_at + limit.interval;
        if next.duration_since(now) > limit.window {
            return Err(RateExceeded {
                rate: limit.rate,
                burst: limit.burst,
            });
        }
        self.full_at.insert(source, next);
        Ok(())
    }

    /// Drops the full buckets, when the table has grown enough since the
    /// last sweep (or, at the cap, a window has passed since it).
    fn sweep(&mut self, now: Instant, window: Duration) {
        let len = self.full_at.len();
        if len < self.sweep_at || (len >= MAX_SOURCES && now < self.retry_sweep) {
            return;
        }
        self.full_at.retain(|_, full_at| *full_at > now);
        self.sweep_at = (2 * self.full_at.len()).clamp(MIN_SWEEP, MAX_SOURCES);
        self.retry_sweep = now + window;
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.full_at.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from_bits(n))
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_the_rate_refuses_and_refills_one_token_per_interval() {
        let mut rate = AcceptRate::new(10, 3);
        let peer = ip("10.0.0.1");
        for _ in 0..3 {
            rate.try_accept(peer).expect("within the burst");
        }
        assert_eq!(
            rate.try_accept(peer),
            Err(RateExceeded { rate: 10, burst: 3 })
        );
        // One token takes 100 ms: none a moment before, one exactly then.
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(rate.try_accept(peer).is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        rate.try_accept(peer).expect("one token refilled");
        assert!(rate.try_accept(peer).is_err(), "only one");
        // Refilling stops at the burst, however long the source was quiet.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            rate.try_accept(peer).expect("a full bucket again");
        }
        assert!(rate.try_accept(peer).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_flooding_source_still_gets_the_rate_through() {
        let mut rate = AcceptRate::new(100, 5);
        let peer = ip("10.0.0.1");
        let mut admitted = 0;
        // A socket every millisecond for one second, both ends included: the
        // burst, then one every 10 ms.
        for _ in 0..=1_000 {
            admitted += usize::from(rate.try_accept(peer).is_ok());
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(admitted, 5 + 100);
    }

    #[tokio::test(start_paused = true)]
    async fn sources_are_independent_and_rate_0_is_off() {
        let mut rate = AcceptRate::new(1, 1);
        rate.try_accept(ip("10.0.0.1")).expect("a token");
        assert!(rate.try_accept(ip("10.0.0.1")).is_err());
        rate.try_accept(ip("10.0.0.2"))
            .expect("another source, another bucket");

        let mut off = AcceptRate::new(0, 1);
        for _ in 0..10_000 {
            off.try_accept(ip("10.0.0.1")).expect("no bound");
        }
        assert_eq!(off.tracked(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ipv6_64_is_one_source_and_mapped_ipv4_is_ipv4() {
        let mut rate = AcceptRate::new(1, 1);
        rate.try_accept(ip("2001:db8::1")).expect("a token");
        assert!(rate.try_accept(ip("2001:db8::ffff:1")).is_err());
        rate.try_accept(ip("2001:db8:0:1::1"))
            .expect("another /64 is another source");
        rate.try_accept(ip("192.0.2.1")).expect("a token");
        assert!(rate.try_accept(ip("::ffff:192.0.2.1")).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn full_buckets_are_swept_and_the_table_stays_bounded() {
        let mut rate = AcceptRate::new(100, 512);
        let window = Duration::from_millis(5_120);
        // Quiet sources become full and are swept once the table has grown.
        for n in 0..MIN_SWEEP as u32 {
            rate.try_accept(v4(n)).expect("a token");
        }
        assert_eq!(rate.tracked(), MIN_SWEEP);
        tokio::time::advance(window).await;
        rate.try_accept(v4(u32::MAX)).expect("a token");
        assert_eq!(rate.tracked(), 1, "the full buckets were dropped");

        // A flood from many /64s within one window: the table stops at the
        // cap and the sources beyond it are let through, untracked.
        let flood = |n: u64| IpAddr::V6(Ipv6Addr::from_bits(u128::from(n) << 64));
        for n in 0..(2 * MAX_SOURCES) as u64 {
            rate.try_accept(flood(n)).expect("a first socket");
        }
        assert_eq!(rate.tracked(), MAX_SOURCES);
        // A tracked source keeps its bound at the cap.
        for _ in 0..511 {
            rate.try_accept(flood(0)).expect("within the burst");
        }
        assert!(rate.try_accept(flood(0)).is_err());
        // A window later the table empties on the next new source.
        tokio::time::advance(window).await;
        rate.try_accept(v4(7)).expect("a token");
        assert_eq!(rate.tracked(), 1);
    }
}
