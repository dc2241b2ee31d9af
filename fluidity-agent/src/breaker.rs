//! Failure protection per target host: after repeated failures to reach one host, requests
//! to it fail fast for a while instead of each waiting for the server's connect timeout.
//! Other hosts are never affected (the Go version had one global breaker).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Consecutive failures that open a host's breaker.
const THRESHOLD: u32 = 5;
/// How long an open breaker fails requests before letting one through to try again.
const COOL_DOWN: Duration = Duration::from_secs(10);
/// Most hosts tracked; beyond it, healthy entries are forgotten first.
const MAX_HOSTS: usize = 4096;

#[derive(Debug, Default)]
struct HostState {
    failures: u32,
    open_until: Option<Instant>,
}

/// The breakers of all hosts.
#[derive(Debug, Default)]
pub struct Breakers {
    hosts: Mutex<HashMap<String, HostState>>,
}

impl Breakers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HostState>> {
        self.hosts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `Err(remaining)` while `host`'s breaker is open.
    pub fn check(&self, host: &str) -> Result<(), Duration> {
        let now = Instant::now();
        match self.lock().get_mut(host) {
            Some(HostState {
                open_until: Some(until),
                ..
            }) if now < *until => Err(*until - now),
            Some(state) if state.open_until.is_some() => {
                // Half-open: let this request probe; one more failure reopens at once.
                state.open_until = None;
                state.failures = THRESHOLD - 1;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Records whether reaching `host` worked.
    pub fn record(&self, host: &str, reached: bool) {
        let mut hosts = self.lock();
        if reached {
            hosts.remove(host);
            return;
        }
        if hosts.len() >= MAX_HOSTS && !hosts.contains_key(host) {
            hosts.retain(|_, state| state.open_until.is_some());
            if hosts.len() >= MAX_HOSTS {
                hosts.clear();
            }
        }
        let state = hosts.entry(host.to_owned()).or_default();
        state.failures += 1;
        if state.failures >= THRESHOLD {
            state.open_until = Some(Instant::now() + COOL_DOWN);
            tracing::warn!(host, cool_down = ?COOL_DOWN, "target keeps failing: failing fast for a while");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failing_host_does_not_affect_another() {
        let breakers = Breakers::default();
        for _ in 0..THRESHOLD {
            assert!(breakers.check("down.example").is_ok());
            breakers.record("down.example", false);
        }
        assert!(breakers.check("down.example").is_err());
        assert!(breakers.check("up.example").is_ok());
        breakers.record("up.example", true);
        assert!(breakers.check("up.example").is_ok());
    }
}
