//! Exponential backoff for the loops that retry (projectors, listener, broker connection, reconciler).

use std::time::Duration;

/// Exponential backoff from 100 ms (or another first delay) to 10 s.
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    pub fn new() -> Self {
        Self::starting_at(Self::FIRST)
    }

    /// Delays from `first` on, doubling up to 10 s.
    pub fn starting_at(first: Duration) -> Self {
        Self { first, next: first }
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut backoff = Backoff::new();
        let delays: Vec<u64> = (0..9).map(|_| backoff.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
        let mut sooner = Backoff::starting_at(Duration::from_millis(50));
        let delays: Vec<u64> = (0..4).map(|_| sooner.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, vec![50, 100, 200, 400]);
        sooner.reset();
        assert_eq!(sooner.next_delay(), Duration::from_millis(50));
    }
}
