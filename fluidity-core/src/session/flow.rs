//! Credit-based flow control: how many bytes a sender may still send, and when a receiver
//! returns credit.

/// The receiving half of a window: bytes the peer may still send us, and consumed bytes not
/// yet returned as credit.
#[derive(Debug, Clone)]
pub(crate) struct RecvWindow {
    /// The window size we announced.
    size: u32,
    /// Credit the peer still holds.
    available: u32,
    /// Bytes the application consumed since our last `window_update`.
    unreturned: u32,
}

impl RecvWindow {
    pub(crate) fn new(size: u32) -> Self {
        RecvWindow {
            size,
            available: size,
            unreturned: 0,
        }
    }

    /// Accounts for `n` received bytes; `false` if the peer overran its credit.
    pub(crate) fn on_receive(&mut self, n: usize) -> bool {
        match u32::try_from(n)
            .ok()
            .and_then(|n| self.available.checked_sub(n))
        {
            Some(left) => {
                self.available = left;
                true
            }
            None => false,
        }
    }

    /// Accounts for `n` consumed (or discarded) bytes; returns the credit to send back, once
    /// enough has built up that a `window_update` is worth its frame.
    pub(crate) fn on_consume(&mut self, n: usize) -> Option<u32> {
        self.unreturned = self
            .unreturned
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        // A quarter window keeps three quarters in flight: enough to keep one stream streaming
        // without a window update per frame.
        if self.unreturned >= (self.size / 4).max(1) {
            let grant = self.unreturned;
            self.unreturned = 0;
            self.available = self.available.saturating_add(grant);
            Some(grant)
        } else {
            None
        }
    }
}

/// The sending half: credit granted by the peer.
#[derive(Debug, Clone)]
pub(crate) struct SendWindow {
    /// `None` when the peer does no flow control (Go peers): unlimited.
    available: Option<u64>,
}

impl SendWindow {
    pub(crate) fn new(initial: Option<u32>) -> Self {
        SendWindow {
            available: initial.map(u64::from),
        }
    }

    pub(crate) fn available(&self) -> usize {
        match self.available {
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => usize::MAX,
        }
    }

    pub(crate) fn consume(&mut self, n: usize) {
        if let Some(a) = &mut self.available {
            *a = a.saturating_sub(n as u64);
        }
    }

    /// Adds credit; `false` if it would exceed 2^31 − 1 outstanding (a peer bug, as in HTTP/2).
    pub(crate) fn grant(&mut self, n: u32) -> bool {
        match &mut self.available {
            Some(a) => {
                *a += u64::from(n);
                *a <= i32::MAX as u64
            }
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_detects_overrun_and_returns_credit_in_quarters() {
        let mut w = RecvWindow::new(100);
        assert!(w.on_receive(60));
        assert!(w.on_receive(40));
        assert!(!w.on_receive(1), "window exhausted");
        assert_eq!(w.on_consume(10), None);
        assert_eq!(w.on_consume(15), Some(25));
        assert!(w.on_receive(25));
        assert!(!w.on_receive(1));
    }

    #[test]
    fn sender_without_peer_flow_control_is_unlimited() {
        let mut w = SendWindow::new(None);
        w.consume(1 << 40);
        assert_eq!(w.available(), usize::MAX);
        let mut w = SendWindow::new(Some(10));
        w.consume(4);
        assert_eq!(w.available(), 6);
        assert!(w.grant(4));
        assert_eq!(w.available(), 10);
        assert!(!w.grant(u32::MAX));
    }
}
