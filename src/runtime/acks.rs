//! Acks after commit, batched into `multiple` acks where that is safe.
//!
//! A `multiple` ack for tag N acks *every* unacked delivery up to N on the channel, and the workers of a
//! tenant share one channel: a worker that committed tags 40–60 must not ack 1–39 that another worker is
//! still writing. So the coordinator knows every delivery in flight (registered in delivery order, before a
//! worker can see it) and acks, in one frame, every committed tag below the oldest one still in flight.
//! Committed deliveries above it wait for it, and go with the next ack. Deliveries settled one by one
//! (moved to the retry queue or the DLQ, requeued) stop holding the others back once settled. One whose
//! settling may take long (its copy for the retry queue or the DLQ waits for the broker) is set aside: no
//! `multiple` ack may reach it, so each committed tag above it is acked alone meanwhile, as above a skipped
//! tag (below).
//!
//! A delivery that was never registered (a handover that timed out left it in the old consumer's stream)
//! has no row and never will: no `multiple` ack may reach it. Tags on a channel are consecutive, so a jump
//! in the registered tags shows where one was skipped; from there on each committed tag is acked alone, and
//! the skipped one waits, unacked, for the channel to close and the broker to redeliver it.

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
    /// The last tag registered.
    last_received: u64,
    /// The lowest tag skipped in registration (never delivered to the pool), if any.
    first_skipped: Option<u64>,
    /// Out of the workers' hands, to be settled alone later.
    set_aside: BTreeSet<u64>,
}

/// One `basic.ack` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ack {
    tag: u64,
    multiple: bool,
}

impl InFlight {
    fn received(&mut self, tag: u64) {
        if tag > self.last_received.saturating_add(1) && self.first_skipped.is_none() {
            self.first_skipped = Some(self.last_received + 1);
        }
        self.last_received = self.last_received.max(tag);
        self.outstanding.insert(tag);
    }

    fn commit(&mut self, tag: u64) {
        self.outstanding.remove(&tag);
        self.committed.insert(tag);
    }

    /// The acks that are safe now, and forgets what they cover: one `multiple` ack for the committed tags
    /// below the oldest delivery in flight, the first skipped tag and the first set aside, and a single ack
    /// for each committed tag above a skipped or set-aside one.
    fn take_acks(&mut self) -> Vec<Ack> {
        let alone_from = self.first_skipped.into_iter().chain(self.set_aside.first().copied()).min();
        let oldest = self.outstanding.first().copied().unwrap_or(u64::MAX);
        let barrier = oldest.min(alone_from.unwrap_or(u64::MAX));
        let held = self.committed.split_off(&barrier);
        let covered = std::mem::replace(&mut self.committed, held);
        let mut acks: Vec<Ack> = covered.last().map(|&tag| Ack { tag, multiple: true }).into_iter().collect();
        if let Some(from) = alone_from {
            let alone = self.committed.split_off(&from);
            acks.extend(alone.into_iter().map(|tag| Ack { tag, multiple: false }));
        }
        acks
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
        self.state().received(tag);
    }

    /// Their rows are committed: ack them, now or with a later ack.
    pub async fn committed(&self, tags: impl IntoIterator<Item = u64>) -> Result<(), lapin::Error> {
        self.update(|state| {
            for tag in tags {
                state.commit(tag);
            }
        })
        .await
    }

    /// Acked, rejected or requeued on its own: it no longer holds back the acks of later deliveries.
    pub async fn settled_alone(&self, tag: u64) -> Result<(), lapin::Error> {
        self.update(|state| {
            state.outstanding.remove(&tag);
            state.set_aside.remove(&tag);
        })
        .await
    }

    /// To be settled alone, later: the acks of later deliveries no longer wait for it.
    pub async fn set_aside(&self, tag: u64) -> Result<(), lapin::Error> {
        self.update(|state| {
            if state.outstanding.remove(&tag) {
                state.set_aside.insert(tag);
            }
        })
        .await
    }

    async fn update(&self, change: impl FnOnce(&mut InFlight)) -> Result<(), lapin::Error> {
        let _sending = self.sending.lock().await;
        let acks = {
            let mut state = self.state();
            change(&mut state);
            state.take_acks()
        };
        self.send(acks).await
    }

    async fn send(&self, acks: Vec<Ack>) -> Result<(), lapin::Error> {
        for Ack { tag, multiple } in acks {
            self.channel.basic_ack(tag, BasicAckOptions { multiple }).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(tags: impl IntoIterator<Item = u64>) -> InFlight {
        let mut state = InFlight::default();
        for tag in tags {
            state.received(tag);
        }
        state
    }

    fn commit(state: &mut InFlight, tags: &[u64]) -> Vec<Ack> {
        for tag in tags {
            state.commit(*tag);
        }
        state.take_acks()
    }

    fn multiple(tag: u64) -> Vec<Ack> {
        vec![Ack { tag, multiple: true }]
    }

    #[test]
    fn a_multiple_ack_never_covers_a_delivery_still_in_flight() {
        let mut state = received(1..=6);
        // A later batch commits first: nothing may be acked while 1–3 are being written.
        assert_eq!(commit(&mut state, &[4, 5]), []);
        assert_eq!(commit(&mut state, &[1, 2, 3]), multiple(5), "1–5 in one ack");
        assert_eq!(commit(&mut state, &[6]), multiple(6));
        assert!(state.outstanding.is_empty() && state.committed.is_empty());
    }

    #[test]
    fn deliveries_settled_alone_release_the_acks_behind_them() {
        let mut state = received(1..=3);
        assert_eq!(commit(&mut state, &[2, 3]), []);
        // 1 went to the retry queue (acked on its own): 2–3 can go now.
        state.outstanding.remove(&1);
        assert_eq!(state.take_acks(), multiple(3));
        // A requeued delivery in the middle: only what is below it is acked.
        for tag in 4..=6 {
            state.received(tag);
        }
        assert_eq!(commit(&mut state, &[4, 6]), multiple(4));
        state.outstanding.remove(&5);
        assert_eq!(state.take_acks(), multiple(6));
    }

    #[test]
    fn deliveries_above_one_set_aside_are_acked_alone_until_it_is_settled() {
        let mut state = received(1..=4);
        assert_eq!(commit(&mut state, &[2]), []);
        // 1 failed; its copy waits for the broker.
        state.outstanding.remove(&1);
        state.set_aside.insert(1);
        assert_eq!(state.take_acks(), [Ack { tag: 2, multiple: false }]);
        assert_eq!(commit(&mut state, &[3]), [Ack { tag: 3, multiple: false }]);
        // Its copy confirmed, 1 is acked alone: `multiple` acks come back.
        state.set_aside.remove(&1);
        assert_eq!(commit(&mut state, &[4]), multiple(4));
        assert!(state.committed.is_empty());
    }

    /// A resize's handover timed out with tags 4 and 5 still in the old consumer's stream: they were never
    /// registered, and the new subscription's deliveries (6, 7) come after them on the same channel.
    #[test]
    fn a_multiple_ack_never_covers_a_delivery_that_was_never_registered() {
        let mut state = received([1, 2, 3, 6, 7]);
        assert_eq!(commit(&mut state, &[6, 7]), [Ack { tag: 6, multiple: false }, Ack { tag: 7, multiple: false }]);
        assert_eq!(commit(&mut state, &[1, 2]), multiple(2));
        state.received(8);
        assert_eq!(commit(&mut state, &[3, 8]), [Ack { tag: 3, multiple: true }, Ack { tag: 8, multiple: false }]);
        assert!(state.committed.is_empty(), "4 and 5 stay unacked, for the broker to redeliver");
    }
}
