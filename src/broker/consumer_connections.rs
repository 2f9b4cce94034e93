//! The connections the tenants' consumers run on. A consumer holds one channel, and a connection carries at
//! most `rabbitmq.channels_per_connection` of them, and never more than the broker lets it use (three
//! quarters of the `channel_max` it grants, see [`Broker::usable_channels`]): a consumer takes a [`Slot`] on
//! the first connection with room (opening another connection when all are full) and gives it back when it
//! ends, so no consumer ever opens a channel on a full connection. Each connection is supervised on its own,
//! so when one drops only the consumers on it stop and start again.
//!
//! A message the client cannot read (a `message-id` or a header name that is not UTF-8) fails
//! the whole connection it arrives on, with every tenant consumer on it, and again each time it is delivered:
//! RabbitMQ passes it on as it was published. So when a connection fails that way, its tenants are moved
//! apart, half of them to one new connection and half to another, which keep to themselves. The half that
//! holds the message fails again and is halved again, until its tenant is alone on a connection: after about
//! log2 of the tenants on the connection failures, the message fails no one else.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::domain::tenant::TenantId;

use super::Broker;

/// Channel slots per connection: which connection has room, and who holds its slots.
#[derive(Debug)]
struct Slots {
    /// `rabbitmq.channels_per_connection`.
    configured: usize,
    /// What a connection takes: the configured number, or fewer if the broker allows fewer ([`Slots::fit`]).
    per_connection: usize,
    /// Per connection: the tenants holding its slots (a tenant may hold two for a moment, while its old
    /// consumer ends and its new one starts).
    holders: Vec<HashMap<TenantId, usize>>,
    /// Per connection: tenants that gave their last slot back, and when. A consumer may end, and give its
    /// slot back, just before its connection's failure is reported: it counts among the connection's tenants
    /// for [`Slots::RECENT`].
    departed: Vec<HashMap<TenantId, Instant>>,
    /// Per connection: whether it is kept for tenants moved apart ([`Slots::move_apart`]).
    kept_apart: Vec<bool>,
    /// Tenants moved apart, and the connection each keeps to.
    apart: HashMap<TenantId, usize>,
}

impl Slots {
    fn new(per_connection: usize) -> Self {
        Self {
            configured: per_connection.max(1),
            per_connection: per_connection.max(1),
            holders: Vec::new(),
            departed: Vec::new(),
            kept_apart: Vec::new(),
            apart: HashMap::new(),
        }
    }

    /// Fits the slots per connection to the channels the broker lets a connection use; the new number if it
    /// changed. Connections already holding more keep their consumers (the broker let them open), and
    /// take no one until they are below it.
    fn fit(&mut self, usable_channels: usize) -> Option<usize> {
        let fitted = self.configured.min(usable_channels).max(1);
        (fitted != self.per_connection).then(|| {
            self.per_connection = fitted;
            fitted
        })
    }

    fn taken(&self, index: usize) -> usize {
        self.holders[index].values().sum()
    }

    /// The tenant's connection if it was moved apart; else the first connection with a free slot that is not
    /// kept apart, or `len` (a connection to open) when all are full. Filling the lowest connections first
    /// keeps the number of connections at what the consumers need.
    fn take(&mut self, tenant: TenantId) -> usize {
        let index = self.apart.get(&tenant).copied().unwrap_or_else(|| {
            (0..self.holders.len())
                .find(|&index| !self.kept_apart[index] && self.taken(index) < self.per_connection)
                .unwrap_or_else(|| self.add(false))
        });
        *self.holders[index].entry(tenant).or_default() += 1;
        self.departed[index].remove(&tenant);
        index
    }

    fn add(&mut self, kept_apart: bool) -> usize {
        self.holders.push(HashMap::new());
        self.departed.push(HashMap::new());
        self.kept_apart.push(kept_apart);
        self.holders.len() - 1
    }

    fn release(&mut self, index: usize, tenant: TenantId) {
        if let Some(holders) = self.holders.get_mut(index)
            && let Some(count) = holders.get_mut(&tenant)
        {
            *count -= 1;
            if *count == 0 {
                holders.remove(&tenant);
                let now = Instant::now();
                self.departed[index].retain(|_, at| now.duration_since(*at) < Self::RECENT);
                self.departed[index].insert(tenant, now);
            }
        }
    }

    /// How long a tenant that gave its slot back still counts among its connection's tenants.
    const RECENT: Duration = Duration::from_secs(5);

    /// The tenants on connection `index`: those holding a slot, and those that gave theirs back recently.
    fn members(&self, index: usize) -> Vec<TenantId> {
        let (Some(holders), Some(departed)) = (self.holders.get(index), self.departed.get(index)) else {
            return Vec::new();
        };
        let now = Instant::now();
        let recent = departed.iter().filter(|(_, at)| now.duration_since(**at) < Self::RECENT).map(|(t, _)| t);
        let mut members: Vec<TenantId> = holders.keys().chain(recent).copied().collect();
        members.sort_unstable();
        members.dedup();
        members
    }

    /// Connection `index` failed on a message it could not read: its tenants ([`Slots::members`]) move, half
    /// to each of two new connections kept apart (their consumers start there when they start again), and the
    /// connection, left empty, takes newcomers again. A tenant alone on its connection stays, and the
    /// connection is kept for it. Returns the tenants it found on the connection.
    fn move_apart(&mut self, index: usize) -> Vec<TenantId> {
        let tenants = self.members(index);
        match tenants[..] {
            [] => {}
            [tenant] => {
                self.kept_apart[index] = true;
                self.apart.insert(tenant, index);
            }
            _ => {
                for part in tenants.chunks(tenants.len().div_ceil(2)) {
                    let to = self.add(true);
                    self.apart.extend(part.iter().map(|&tenant| (tenant, to)));
                }
                self.kept_apart[index] = false;
            }
        }
        tenants
    }

    /// Forgets the tenants moved apart that are not `wanted` (deleted); a connection kept apart for none of
    /// the rest, once empty, takes newcomers again. Else every incident would leave its connections open and
    /// unused for good.
    fn forget_unless(&mut self, wanted: impl Fn(&TenantId) -> bool) {
        self.apart.retain(|tenant, _| wanted(tenant));
        for index in 0..self.holders.len() {
            if self.kept_apart[index] && self.taken(index) == 0 && !self.apart.values().any(|&to| to == index) {
                self.kept_apart[index] = false;
            }
        }
    }
}

struct State {
    slots: Slots,
    connections: Vec<Broker>,
}

struct Shared {
    url: String,
    /// A connection to the same broker that is up before any consumer starts (the service's own): it tells
    /// how many channels the broker grants a connection before a consumer connection is open.
    reference: Broker,
    /// Names the connections, so that an operator can tell them apart on the broker.
    instance: String,
    state: Mutex<State>,
    supervisors: TaskTracker,
    stop: CancellationToken,
}

impl Shared {
    /// Opens (and supervises) the connections slots were added for. Must be called on the runtime.
    fn open_added(self: &Arc<Self>, state: &mut State) {
        while state.connections.len() < state.slots.holders.len() {
            let index = state.connections.len();
            let name = format!("tenantmq consumers #{} ({})", index + 1, self.instance);
            let shared = Arc::downgrade(self);
            let hook = Arc::new(move || Self::failed_undecodable(&shared, index));
            let broker = Broker::with_undecodable_hook(self.url.clone(), name, hook);
            self.supervisors.spawn(broker.clone().supervise(self.stop.clone()));
            state.connections.push(broker);
        }
    }

    fn failed_undecodable(shared: &Weak<Self>, index: usize) {
        let Some(shared) = shared.upgrade() else { return };
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let members = state.slots.move_apart(index);
        let connection = index + 1;
        if let [tenant] = members[..] {
            tracing::error!(connection, %tenant, "a message in this tenant's queue cannot be read: its consumer fails each time it is delivered");
        } else {
            tracing::warn!(
                connection,
                tenants = members.len(),
                "a consumer connection failed on a message it cannot read; moving its tenants apart"
            );
        }
        shared.open_added(&mut state);
    }
}

/// The consumer connections of this instance, opened as the consumers need them.
#[derive(Clone)]
pub struct ConsumerConnections {
    shared: Arc<Shared>,
}

impl ConsumerConnections {
    /// Connections are supervised until `stop` (or [`close`](Self::close)). `reference` is a connection to the
    /// same broker, see [`Shared::reference`].
    pub fn new(
        url: String,
        instance: String,
        channels_per_connection: u16,
        reference: Broker,
        stop: CancellationToken,
    ) -> Self {
        let state = State { slots: Slots::new(channels_per_connection.into()), connections: Vec::new() };
        let supervisors = TaskTracker::new();
        Self { shared: Arc::new(Shared { url, instance, reference, state: Mutex::new(state), supervisors, stop }) }
    }

    /// A channel slot for the tenant's consumer: on the connection its tenants were moved apart to, if they
    /// were; else on a connection with room, opening (and supervising) a new connection when every one is
    /// full. Must be called on the runtime.
    pub fn take_slot(&self, tenant: TenantId) -> Slot {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        // A broker that grants fewer channels (its `channel_max`) would refuse the channels past them, and their
        // tenants would never consume. Every connection to it is granted the same.
        let granted =
            std::iter::once(&self.shared.reference).chain(&state.connections).find_map(Broker::usable_channels);
        if let Some(per_connection) = granted.and_then(|usable| state.slots.fit(usable)) {
            let configured = state.slots.configured;
            if per_connection < configured {
                tracing::warn!(
                    per_connection,
                    configured,
                    "RabbitMQ grants fewer channels per connection than rabbitmq.channels_per_connection: consumer connections take fewer tenants each"
                );
            } else {
                tracing::info!(
                    per_connection,
                    "consumer connections take rabbitmq.channels_per_connection tenants each again"
                );
            }
        }
        let index = state.slots.take(tenant);
        self.shared.open_added(&mut state);
        Slot { connections: self.clone(), index, tenant, broker: state.connections[index].clone() }
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

    fn release(&self, index: usize, tenant: TenantId) {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner()).slots.release(index, tenant);
    }

    /// Forgets what it kept for tenants no longer `wanted` (see [`Slots::forget_unless`]).
    pub fn forget_unless(&self, wanted: impl Fn(&TenantId) -> bool) {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner()).slots.forget_unless(wanted);
    }
}

/// One consumer's place on a consumer connection, given back when dropped.
pub struct Slot {
    connections: ConsumerConnections,
    index: usize,
    tenant: TenantId,
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
        self.connections.release(self.index, self.tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenants(count: usize) -> Vec<TenantId> {
        let mut tenants: Vec<TenantId> = (0..count).map(|_| TenantId::generate()).collect();
        tenants.sort_unstable();
        tenants
    }

    #[test]
    fn slots_fill_the_lowest_connection_with_room_and_never_exceed_the_limit() {
        let mut slots = Slots::new(2);
        let t = tenants(8);
        let taken: Vec<usize> = t[..5].iter().map(|&tenant| slots.take(tenant)).collect();
        assert_eq!(taken, [0, 0, 1, 1, 2]);
        slots.release(0, t[0]);
        // The freed slot is used before the half-empty last connection.
        assert_eq!(slots.take(t[5]), 0);
        assert_eq!(slots.take(t[6]), 2);
        assert_eq!(slots.take(t[7]), 3);
        assert!((0..slots.holders.len()).all(|index| slots.taken(index) <= 2), "{:?}", slots.holders);
    }

    #[test]
    fn a_released_connection_is_reused_and_no_connection_is_added_while_one_has_room() {
        let mut slots = Slots::new(3);
        let t = tenants(9);
        let first: Vec<usize> = t[..6].iter().map(|&tenant| slots.take(tenant)).collect();
        assert_eq!(first, [0, 0, 0, 1, 1, 1]);
        for &tenant in &t[3..6] {
            slots.release(1, tenant);
        }
        assert_eq!(t[6..].iter().map(|&tenant| slots.take(tenant)).collect::<Vec<_>>(), [1, 1, 1]);
        // Releasing what was never taken (or a connection that does not exist) changes nothing.
        slots.release(7, t[0]);
        slots.release(0, t[8]);
        assert_eq!((slots.taken(0), slots.taken(1)), (3, 3));
    }

    /// A message that fails every connection it reaches: halving the failed connection's tenants again and
    /// again leaves its tenant alone in log2 steps, and the others on connections it never reaches.
    #[test]
    fn the_tenants_of_a_connection_failing_on_a_message_are_halved_until_the_message_fails_only_its_own() {
        let mut slots = Slots::new(1000);
        let t = tenants(9);
        let mut on: HashMap<TenantId, usize> = t.iter().map(|&tenant| (tenant, slots.take(tenant))).collect();
        let culprit = t[0];
        let mut failures = 0;
        loop {
            let failed = on[&culprit];
            failures += 1;
            let before = slots.holders.len();
            let found = slots.move_apart(failed);
            let added = slots.holders.len() - before;
            assert_eq!(added, if found.len() > 1 { 2 } else { 0 }, "{found:?}");
            // The consumers of the failed connection end and start again, where they are placed now.
            let moved: Vec<TenantId> = on.iter().filter(|(_, index)| **index == failed).map(|(t, _)| *t).collect();
            for tenant in moved {
                slots.release(failed, tenant);
                on.insert(tenant, slots.take(tenant));
            }
            if added == 0 {
                break;
            }
        }
        // 9 tenants: 5, 3, 2, 1 on the culprit's connection, then the failure that finds it alone.
        assert_eq!(failures, 5);
        let alone = on[&culprit];
        assert_eq!(on.values().filter(|&&index| index == alone).count(), 1, "{on:?}");
        assert!(slots.kept_apart[alone]);
        // No connection is kept apart for no one: one the culprit's half left takes newcomers again.
        for index in 0..slots.holders.len() {
            assert!(!slots.kept_apart[index] || slots.taken(index) > 0, "connection {index} kept apart, empty");
        }
        // A new tenant never joins a connection kept apart, and the culprit keeps to its own.
        let newcomer = TenantId::generate();
        assert_eq!(slots.take(newcomer), 0, "the emptied first connection takes newcomers");
        slots.release(alone, culprit);
        assert_eq!(slots.take(culprit), alone);

        // Once the tenants moved apart are deleted, their connections take newcomers again, rather than stay
        // open and unused for good.
        for (&tenant, &index) in &on {
            slots.release(index, tenant);
        }
        slots.forget_unless(|tenant| *tenant == newcomer);
        assert!(slots.kept_apart.iter().all(|kept| !kept), "{:?}", slots.kept_apart);
        let connections = slots.holders.len();
        for _ in 0..3 * 1000 {
            slots.take(TenantId::generate());
        }
        assert_eq!(slots.holders.len(), connections, "newcomers fill the connections that were kept apart");
    }

    #[test]
    fn slots_per_connection_fit_the_channels_the_broker_grants() {
        let mut slots = Slots::new(1000);
        assert_eq!(slots.fit(1536), None, "the broker grants more than configured");
        assert_eq!(slots.fit(6), Some(6));
        let taken: Vec<usize> = tenants(12).into_iter().map(|tenant| slots.take(tenant)).collect();
        assert_eq!(taken, [[0; 6], [1; 6]].concat());
        assert_eq!(slots.fit(1536), Some(1000), "a broker granting more again");
        assert_eq!(slots.take(tenants(1)[0]), 0);
    }

    #[tokio::test]
    async fn dropping_a_slot_gives_it_back() {
        let nowhere = "amqp://127.0.0.1:1/%2f".to_owned();
        let reference = Broker::new(nowhere.clone(), "test".into());
        let connections = ConsumerConnections::new(nowhere, "test".into(), 1, reference, CancellationToken::new());
        let t = tenants(3);
        let first = connections.take_slot(t[0]);
        let second = connections.take_slot(t[1]);
        assert_eq!((first.index, second.index), (0, 1));
        drop(first);
        let third = connections.take_slot(t[2]);
        assert_eq!(third.index, 0);
        assert_eq!(connections.status().len(), 2, "no third connection while one has room");
        connections.close().await;
    }
}
