//! Acks after commit, batched into `multiple` acks where that is safe.
//!
//! A `multiple` ack for tag N acks *every* unacked delivery up to N on the channel, and the workers of a
//! tenant share one channel: a worker that committed tags 40–60 must not ack 1–39 that another worker is
//! still writing. So the coordinator knows every delivery in flight (registered in delivery order, before a
//! worker can see it) and acks, in one frame, every committed tag below the oldest one still in flight.
//! Committed deliveries above it wait for it, and go with the next ack. Deliveries settled one by one
//! (moved to the retry queue or the DLQ, requeued) stop holding the others back once settled.

use std::{collections::BTreeSet, sync::Mutex};

use lapin::{Channel, options::BasicAckOptions};

pub struct AckCoordinator {
    channel: Channel,
    state: Mutex<InFlight>,
    /// Held while an ack is computed and sent: a later `multiple` ack sent before an earlier one would make
    /// the earlier one name an unknown tag, and the broker would close the channel.
    sending: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct InFlight {
    /// Delivered to the pool and not settled yet.
    outstanding: BTreeSet<u64>,
    /// Committed and not acked yet.
    committed: BTreeSet<u64>,
}

impl InFlight {
    /// The highest committed tag that can be acked with `multiple`, and forgets what that ack covers.
    fn take_ackable(&mut self) -> Option<u64> {
        let limit = self.outstanding.first().map_or(u64::MAX, |oldest| oldest.saturating_sub(1));
        let above = self.committed.split_off(&limit.saturating_add(1));
        let ackable = std::mem::replace(&mut self.committed, above);
        ackable.last().copied()
    }
}

impl AckCoordinator {
    pub fn new(channel: Channel) -> Self {
        Self { channel, state: Mutex::default(), sending: tokio::sync::Mutex::new(()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A delivery is about to reach the pool. Call in delivery order.
    pub fn received(&self, tag: u64) {
        self.state().outstanding.insert(tag);
    }

    /// Their rows are committed: ack them, now or with a later ack.
    pub async fn committed(&self, tags: impl IntoIterator<Item = u64>) -> Result<(), lapin::Error> {
        let _sending = self.sending.lock().await;
        let ackable = {
            let mut state = self.state();
            for tag in tags {
                state.outstanding.remove(&tag);
                state.committed.insert(tag);
            }
            state.take_ackable()
        };
        self.send(ackable).await
    }

    /// Acked, rejected or requeued on its own: it no longer holds back the acks of later deliveries.
    pub async fn settled_alone(&self, tag: u64) -> Result<(), lapin::Error> {
        let _sending = self.sending.lock().await;
        let ackable = {
            let mut state = self.state();
            state.outstanding.remove(&tag);
            state.take_ackable()
        };
        self.send(ackable).await
    }

    async fn send(&self, ackable: Option<u64>) -> Result<(), lapin::Error> {
        match ackable {
            Some(tag) => self.channel.basic_ack(tag, BasicAckOptions { multiple: true }).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_flight(outstanding: &[u64]) -> InFlight {
        InFlight { outstanding: outstanding.iter().copied().collect(), committed: BTreeSet::new() }
    }

    fn commit(state: &mut InFlight, tags: &[u64]) -> Option<u64> {
        for tag in tags {
            state.outstanding.remove(tag);
            state.committed.insert(*tag);
        }
        state.take_ackable()
    }

    #[test]
    fn a_multiple_ack_never_covers_a_delivery_still_in_flight() {
        let mut state = in_flight(&[1, 2, 3, 4, 5, 6]);
        // A later batch commits first: nothing may be acked while 1–3 are being written.
        assert_eq!(commit(&mut state, &[4, 5]), None);
        assert_eq!(commit(&mut state, &[1, 2, 3]), Some(5), "1–5 in one ack");
        assert_eq!(commit(&mut state, &[6]), Some(6));
        assert!(state.outstanding.is_empty() && state.committed.is_empty());
    }

    #[test]
    fn deliveries_settled_alone_release_the_acks_behind_them() {
        let mut state = in_flight(&[1, 2, 3]);
        assert_eq!(commit(&mut state, &[2, 3]), None);
        // 1 went to the retry queue (acked on its own): 2–3 can go now.
        state.outstanding.remove(&1);
        assert_eq!(state.take_ackable(), Some(3));
        // A requeued delivery in the middle: only what is below it is acked.
        let mut state = in_flight(&[7, 8, 9]);
        assert_eq!(commit(&mut state, &[7, 9]), Some(7));
        state.outstanding.remove(&8);
        assert_eq!(state.take_ackable(), Some(9));
    }
}
