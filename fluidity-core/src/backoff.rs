//! The one retry schedule Fluidity uses: exponential backoff with jitter.
//!
//! The agent's reconnects, the server's certificate renewal and the control-plane polls all
//! wait with a [`Backoff`], so "how often does X retry" has one answer: from `min`, doubling
//! up to `max`, each pause drawn from the upper half of the current step (so a crowd of
//! agents that lost the same server does not come back in lockstep, and a pause is never
//! shorter than half the step).

use std::time::Duration;

/// An exponential backoff schedule with jitter. Pure: it never sleeps itself.
///
/// ```
/// use std::time::Duration;
/// use fluidity_core::Backoff;
///
/// let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
/// let first = backoff.next_delay();
/// assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
/// for _ in 0..10 {
///     assert!(backoff.next_delay() <= Duration::from_secs(1));
/// }
/// backoff.reset();
/// assert_eq!(backoff.step(), Duration::from_millis(100));
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Starts at `min` and doubles up to `max` (`max` below `min` is raised to `min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            step: min,
        }
    }

    /// The pause before the next attempt: a random duration in `[step / 2, step]`; the step
    /// then doubles (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.step.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        self.step = self.step.saturating_mul(2).min(self.max);
        delay
    }

    /// The current step (the longest the next pause can be).
    pub fn step(&self) -> Duration {
        self.step
    }

    /// Back to the first step, after a success that proved the other side works.
    pub fn reset(&mut self) {
        self.step = self.min;
    }

    /// The most attempts this schedule allows within `window`, starting with an immediate
    /// one: what a test (or an operator reading logs) can hold a retry loop to.
    pub fn max_attempts_within(min: Duration, max: Duration, window: Duration) -> usize {
        let mut schedule = Backoff::new(min, max);
        let (mut elapsed, mut attempts) = (Duration::ZERO, 1);
        loop {
            // The shortest possible pause is half the step.
            elapsed += schedule.step / 2;
            schedule.step = schedule.step.saturating_mul(2).min(schedule.max);
            if elapsed > window {
                return attempts;
            }
            attempts += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_bounds_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(2));
        let mut steps = Vec::new();
        for _ in 0..6 {
            let step = backoff.step();
            let delay = backoff.next_delay();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} outside {step:?}"
            );
            steps.push(step.as_millis());
        }
        assert_eq!(steps, [250, 500, 1000, 2000, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.step(), Duration::from_millis(250));
    }

    #[test]
    fn attempts_within_a_window() {
        let ms = Duration::from_millis;
        // Shortest pauses 125, 250, 500, 1000, 2000, 4000 ms: cumulative 7875 ms < 10 s, and
        // the next (8 s) ends past it: 7 attempts.
        assert_eq!(
            Backoff::max_attempts_within(ms(250), Duration::from_secs(30), ms(10_000)),
            7
        );
        assert_eq!(Backoff::max_attempts_within(ms(250), ms(250), ms(1000)), 9);
    }
}
