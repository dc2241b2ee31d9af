//! Admission of unauthenticated connections: how many TLS handshakes may be in flight, in total
//! and per source.
//!
//! Anyone on the internet can open TCP connections to the tunnel port, so nothing a stranger
//! does may use up what agents need. Handshakes therefore have their own budget, separate
//! from the tunnel slots (`max_connections`), which are taken only after mutual
//! authentication:
//!
//! - **per source** (an IPv4 address, or an IPv6 /64, which one host usually controls): at
//!   most `per_source` handshakes at once; the next connection from that source is closed at
//!   once;
//! - **in total**: at most `total`; when full, a new connection evicts the *oldest* handshake
//!   in flight. Refusing the newest instead would let anyone who holds `total` slow connections
//!   (reopened every deadline) lock every agent out; evicting the oldest means an attacker
//!   must open connections faster than `total` per handshake time to starve a real agent,
//!   whose handshake takes a few round trips.
//!
//! Together with the ClientHello and handshake deadlines this bounds what unauthenticated
//! peers hold: `total` sockets and tasks, each for at most the handshake deadline.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// What one source is: an IPv4 address, or the /64 prefix of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address (IPv4-mapped IPv6 included).
    V4(u32),
    /// The upper 64 bits of an IPv6 address.
    V6Prefix(u64),
}

impl Source {
    /// The source `ip` belongs to.
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => Source::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Why a connection got no handshake slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Its source already has `per_source` handshakes in flight.
    #[error("{limit} handshakes from this source are already in flight")]
    SourceBusy {
        /// The per-source limit.
        limit: usize,
    },
}

struct Entry {
    seq: u64,
    source: Source,
    evict: oneshot::Sender<()>,
}

#[derive(Default)]
struct Inner {
    next_seq: u64,
    per_source: HashMap<Source, usize>,
    /// In flight, oldest first.
    in_flight: VecDeque<Entry>,
}

impl Inner {
    fn release(&mut self, source: Source) {
        if let Some(count) = self.per_source.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&source);
            }
        }
    }
}

/// The handshake budget. Share it (`Arc`) with every connection task.
pub struct HandshakeBudget {
    total: usize,
    per_source: usize,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for HandshakeBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakeBudget")
            .field("total", &self.total)
            .field("per_source", &self.per_source)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// A connection's handshake slot: released when dropped. [`HandshakeTicket::evicted`]
/// completes when a newer connection took the slot; the handshake must then stop.
#[derive(Debug)]
pub struct HandshakeTicket {
    budget: Arc<HandshakeBudget>,
    seq: u64,
    source: Source,
    evicted: oneshot::Receiver<()>,
}

/// What [`HandshakeBudget::admit`] did besides admitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// A free slot was taken.
    Free,
    /// The budget was full: the oldest handshake was evicted for this one.
    EvictedOldest,
}

impl HandshakeBudget {
    /// At most `total` handshakes in flight, `per_source` of them from one source (both at
    /// least 1).
    pub fn new(total: usize, per_source: usize) -> Arc<Self> {
        Arc::new(HandshakeBudget {
            total: total.max(1),
            per_source: per_source.max(1),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update completes under the lock without panicking paths.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Handshakes in flight.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }

    /// Takes a handshake slot for a connection from `ip`.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<(HandshakeTicket, Admitted), Refusal> {
        let source = Source::of(ip);
        let mut inner = self.lock();
        if inner.per_source.get(&source).copied().unwrap_or(0) >= self.per_source {
            return Err(Refusal::SourceBusy {
                limit: self.per_source,
            });
        }
        let mut admitted = Admitted::Free;
        if inner.in_flight.len() >= self.total
            && let Some(oldest) = inner.in_flight.pop_front()
        {
            inner.release(oldest.source);
            // The evicted handshake's task may be gone already; nothing to do then.
            let _ = oldest.evict.send(());
            admitted = Admitted::EvictedOldest;
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let (evict, evicted) = oneshot::channel();
        inner.in_flight.push_back(Entry { seq, source, evict });
        *inner.per_source.entry(source).or_insert(0) += 1;
        Ok((
            HandshakeTicket {
                budget: self.clone(),
                seq,
                source,
                evicted,
            },
            admitted,
        ))
    }
}

impl HandshakeTicket {
    /// Completes when a newer connection evicted this handshake.
    pub async fn evicted(&mut self) {
        // A dropped sender without a send means the budget itself is gone: never evicted.
        if (&mut self.evicted).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for HandshakeTicket {
    fn drop(&mut self) {
        let mut inner = self.budget.lock();
        // Entries are in `seq` order; an evicted entry is no longer there (and its source
        // count was released when it was evicted).
        if let Ok(index) = inner.in_flight.binary_search_by_key(&self.seq, |e| e.seq) {
            inner.in_flight.remove(index);
            inner.release(self.source);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn per_source_limit_and_release() {
        let budget = HandshakeBudget::new(10, 2);
        let a = budget.admit(ip("192.0.2.1")).unwrap();
        let _b = budget.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(
            budget.admit(ip("192.0.2.1")).unwrap_err(),
            Refusal::SourceBusy { limit: 2 }
        );
        // Another source is not affected; IPv4-mapped IPv6 is the same source.
        let _c = budget.admit(ip("192.0.2.2")).unwrap();
        assert!(budget.admit(ip("::ffff:192.0.2.1")).is_err());
        drop(a);
        assert!(budget.admit(ip("::ffff:192.0.2.1")).is_ok());
    }

    #[test]
    fn ipv6_sources_are_slash_64s() {
        let budget = HandshakeBudget::new(10, 1);
        let _a = budget.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(budget.admit(ip("2001:db8:1:2:ffff::9")).is_err());
        assert!(budget.admit(ip("2001:db8:1:3::1")).is_ok());
    }

    #[tokio::test]
    async fn a_full_budget_evicts_the_oldest() {
        let budget = HandshakeBudget::new(2, 2);
        let (mut first, how) = budget.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(how, Admitted::Free);
        let (mut second, _) = budget.admit(ip("192.0.2.2")).unwrap();
        let (third, how) = budget.admit(ip("192.0.2.3")).unwrap();
        assert_eq!(how, Admitted::EvictedOldest);
        tokio::time::timeout(std::time::Duration::from_secs(1), first.evicted())
            .await
            .unwrap();
        assert_eq!(budget.in_flight(), 2);
        // The evicted ticket's drop does not release anyone else's slot.
        drop(first);
        assert_eq!(budget.in_flight(), 2);
        drop(third);
        assert_eq!(budget.in_flight(), 1);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), second.evicted())
                .await
                .is_err(),
            "the second was never evicted"
        );
        // Its source was released when it was evicted: 192.0.2.1 may start two again.
        let _x = budget.admit(ip("192.0.2.1")).unwrap();
        assert!(budget.admit(ip("192.0.2.1")).is_ok());
    }
}
