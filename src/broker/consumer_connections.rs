//! The connections the tenants' consumers run on. A consumer holds one channel, and a connection carries at
//! most `rabbitmq.channels_per_connection` of them, well below the broker's `channel_max`: a consumer takes a
//! [`Slot`] on the first connection with room (opening another connection when all are full) and gives it
//! back when it ends, so no consumer ever opens a channel on a full connection. Each connection is supervised
//! on its own, so when one drops only the consumers on it stop and start again.

use std::sync::{Arc, Mutex};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::Broker;

/// Channel slots per connection: which connection has room.
#[derive(Debug)]
struct Slots {
    per_connection: usize,
    /// Slots taken, per connection.
    taken: Vec<usize>,
}

impl Slots {
    fn new(per_connection: usize) -> Self {
        Self { per_connection: per_connection.max(1), taken: Vec::new() }
    }

    /// The first connection with a free slot; `taken.len()` (a connection to open) when all are full. Filling
    /// the lowest connections first keeps the number of connections at what the consumers need.
    fn take(&mut self) -> usize {
        let index = self.taken.iter().position(|&taken| taken < self.per_connection).unwrap_or(self.taken.len());
        if index == self.taken.len() {
            self.taken.push(0);
        }
        self.taken[index] += 1;
        index
    }

    fn release(&mut self, index: usize) {
        if let Some(taken) = self.taken.get_mut(index) {
            *taken = taken.saturating_sub(1);
        }
    }
}

struct State {
    slots: Slots,
    connections: Vec<Broker>,
}

struct Shared {
    url: String,
    /// Names the connections, so that an operator can tell them apart on the broker.
    instance: String,
    state: Mutex<State>,
    supervisors: TaskTracker,
    stop: CancellationToken,
}

/// The consumer connections of this instance, opened as the consumers need them.
#[derive(Clone)]
pub struct ConsumerConnections {
    shared: Arc<Shared>,
}

impl ConsumerConnections {
    /// Connections are supervised until `stop` (or [`close`](Self::close)).
    pub fn new(url: String, instance: String, channels_per_connection: u16, stop: CancellationToken) -> Self {
        let state = State { slots: Slots::new(channels_per_connection.into()), connections: Vec::new() };
        Self {
            shared: Arc::new(Shared { url, instance, state: Mutex::new(state), supervisors: TaskTracker::new(), stop }),
        }
    }

    /// A channel slot on a connection with room, opening (and supervising) a new connection when every one is
    /// full. Must be called on the runtime.
    pub fn take_slot(&self) -> Slot {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let index = state.slots.take();
        if index == state.connections.len() {
            let name = format!("tenantmq consumers #{} ({})", index + 1, self.shared.instance);
            let broker = Broker::new(self.shared.url.clone(), name);
            let (supervisor, stop) = (broker.clone(), self.shared.stop.clone());
            self.shared.supervisors.spawn(supervisor.supervise(stop));
            state.connections.push(broker);
        }
        Slot { connections: self.clone(), index, broker: state.connections[index].clone() }
    }

    /// Per connection: its number (from 1) and whether it is up.
    pub fn status(&self) -> Vec<(usize, bool)> {
        let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.connections.iter().enumerate().map(|(index, broker)| (index + 1, broker.is_connected())).collect()
    }

    /// Stops the supervisors and closes every connection (after the consumers have stopped).
    pub async fn close(&self) {
        self.shared.stop.cancel();
        self.shared.supervisors.close();
        self.shared.supervisors.wait().await;
        let connections = self.shared.state.lock().unwrap_or_else(|e| e.into_inner()).connections.clone();
        for broker in connections {
            broker.close().await;
        }
    }

    fn release(&self, index: usize) {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner()).slots.release(index);
    }
}

/// One consumer's place on a consumer connection, given back when dropped.
pub struct Slot {
    connections: ConsumerConnections,
    index: usize,
    broker: Broker,
}

impl Slot {
    /// The connection this slot is on.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.release(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_fill_the_lowest_connection_with_room_and_never_exceed_the_limit() {
        let mut slots = Slots::new(2);
        let taken: Vec<usize> = (0..5).map(|_| slots.take()).collect();
        assert_eq!(taken, [0, 0, 1, 1, 2]);
        slots.release(0);
        // The freed slot is used before the half-empty last connection.
        assert_eq!(slots.take(), 0);
        assert_eq!(slots.take(), 2);
        assert_eq!(slots.take(), 3);
        assert!(slots.taken.iter().all(|&taken| taken <= 2), "{:?}", slots.taken);
    }

    #[test]
    fn a_released_connection_is_reused_and_no_connection_is_added_while_one_has_room() {
        let mut slots = Slots::new(3);
        let first: Vec<usize> = (0..6).map(|_| slots.take()).collect();
        assert_eq!(first, [0, 0, 0, 1, 1, 1]);
        for _ in 0..3 {
            slots.release(1);
        }
        assert_eq!((0..3).map(|_| slots.take()).collect::<Vec<_>>(), [1, 1, 1]);
        assert_eq!(slots.taken, [3, 3]);
        // Releasing what was never taken (or a connection that does not exist) changes nothing.
        slots.release(7);
        assert_eq!(slots.taken, [3, 3]);
    }

    #[tokio::test]
    async fn dropping_a_slot_gives_it_back() {
        let connections =
            ConsumerConnections::new("amqp://127.0.0.1:1/%2f".into(), "test".into(), 1, CancellationToken::new());
        let first = connections.take_slot();
        let second = connections.take_slot();
        assert_eq!((first.index, second.index), (0, 1));
        drop(first);
        let third = connections.take_slot();
        assert_eq!(third.index, 0);
        assert_eq!(connections.status().len(), 2, "no third connection while one has room");
        connections.close().await;
    }
}
