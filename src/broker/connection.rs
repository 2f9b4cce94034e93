//! A supervised RabbitMQ connection: it reconnects with backoff when it drops and announces each new
//! connection, so whatever runs on it (publishing, or the consumers of [`ConsumerConnections`](super::ConsumerConnections))
//! can start again.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use lapin::{Channel, Connection, ConnectionProperties, Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

use super::{BrokerError, answered, is_channel_error, is_undecodable};

/// A live connection and its sequence number (each reconnect gets a new one).
#[derive(Clone)]
pub struct Connected {
    pub generation: u64,
    pub connection: Arc<Connection>,
}

/// Called when the connection fails on a message it cannot read ([`is_undecodable`]).
pub type OnUndecodable = Arc<dyn Fn() + Send + Sync>;

#[derive(Clone)]
pub struct Broker {
    url: String,
    /// The connection name the broker shows (`rabbitmqctl list_connections client_properties`).
    name: Arc<str>,
    current: watch::Sender<Option<Connected>>,
    on_undecodable: Option<OnUndecodable>,
}

impl Broker {
    pub fn new(url: String, name: String) -> Self {
        Self { url, name: name.into(), current: watch::Sender::new(None), on_undecodable: None }
    }

    /// A broker whose supervisor calls `hook` each time the connection fails on a message it cannot read.
    pub fn with_undecodable_hook(url: String, name: String, hook: OnUndecodable) -> Self {
        Self { on_undecodable: Some(hook), ..Self::new(url, name) }
    }

    /// Announces every connect and disconnect.
    pub fn subscribe(&self) -> watch::Receiver<Option<Connected>> {
        self.current.subscribe()
    }

    /// The connection if it is up.
    pub fn current(&self) -> Option<Connected> {
        self.current.borrow().clone().filter(|c| c.connection.status().connected())
    }

    pub fn is_connected(&self) -> bool {
        self.current().is_some()
    }

    /// How many channels the current connection may have in use at once, if it is up: the `channel_max` the
    /// broker granted, less the numbers the supervisor lets broker closes take ([`channel_error_budget`]).
    pub fn usable_channels(&self) -> Option<usize> {
        self.current().map(|connected| usable_channels(connected.connection.configuration().channel_max()))
    }

    /// Whether the broker has blocked the connection from publishing (`connection.blocked`, sent while a
    /// memory or disk alarm lasts).
    pub fn is_blocked(&self) -> bool {
        self.current().is_some_and(|connected| connected.connection.status().blocked())
    }

    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        let connected = self.current().ok_or(BrokerError::Unavailable)?;
        Ok(connected.connection.create_channel().await?)
    }

    /// A channel on a connection of its own, for one operation that takes messages out of a queue (a DLQ read
    /// or replay, a retirement's drain): a message the client cannot read fails the connection it is delivered
    /// on ([`is_undecodable`]), so it fails that operation and no other work. The connection closes when it is
    /// dropped.
    pub async fn channel_apart(&self) -> Result<(Connection, Channel), BrokerError> {
        let properties = ConnectionProperties::default().with_connection_name(format!("{} reading", self.name).into());
        let connection = tokio::time::timeout(CONNECT_APART_TIMEOUT, Connection::connect(&self.url, properties))
            .await
            .map_err(|_| BrokerError::Unavailable)??;
        let channel = answered(connection.create_channel()).await??;
        Ok((connection, channel))
    }

    /// Keeps a connection up until `cancel`: connects with backoff, then waits for it to fail. A connection
    /// that has seen [`channel_error_budget`] channels closed by the broker is replaced (see there): its
    /// successor is connected while it still serves, then announced, and the old one closed after
    /// [`REPLACED_CONNECTION_GRACE`] (or at `cancel`), so what runs on it ends first. If the successor cannot
    /// connect, the old connection goes on serving, watched as before, and the replacement is tried again later.
    pub async fn supervise(self, cancel: CancellationToken) {
        let mut backoff = Backoff::new();
        let mut generation = 0;
        let mut successor: Option<Arc<Connection>> = None;
        while !cancel.is_cancelled() {
            let connection = match successor.take() {
                Some(connection) => connection,
                None => {
                    let connected = tokio::select! {
                        _ = cancel.cancelled() => return,
                        connected = Connection::connect(&self.url, self.properties()) => connected,
                    };
                    match connected {
                        Ok(connection) => Arc::new(connection),
                        Err(error) => {
                            let delay = backoff.next_delay();
                            tracing::warn!(%error, ?delay, name = %self.name, "cannot connect to RabbitMQ; retrying");
                            tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(delay) => continue }
                        }
                    }
                }
            };
            backoff.reset();
            generation += 1;
            tracing::info!(generation, name = %self.name, "connected to RabbitMQ");
            let mut events = connection.events_listener();
            let replaced = self.current.send_replace(Some(Connected { generation, connection: connection.clone() }));
            if let Some(old) = replaced.map(|replaced| replaced.connection) {
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    tokio::select! { _ = cancel.cancelled() => {}, _ = tokio::time::sleep(REPLACED_CONNECTION_GRACE) => {} }
                    let _ = old.close(200, "replaced".into()).await;
                });
            }
            let budget = channel_error_budget(connection.configuration().channel_max());
            let mut closed_by_broker = 0;
            let mut check = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    event = events.next() => match event {
                        // A soft error closes one channel only (e.g. a passive declare of a missing queue).
                        Some(Event::Error(error)) if is_channel_error(&error) => {
                            tracing::debug!(%error, "a channel was closed by the broker");
                            closed_by_broker += 1;
                            if closed_by_broker < budget {
                                continue;
                            }
                            match Connection::connect(&self.url, self.properties()).await {
                                Ok(next) => {
                                    tracing::info!(name = %self.name, closed_by_broker, "replacing the RabbitMQ connection");
                                    successor = Some(Arc::new(next));
                                    break;
                                }
                                Err(error) => {
                                    // Half the budget again before the next try: there is room left until all of it.
                                    tracing::warn!(%error, name = %self.name, "cannot connect a replacement; trying again later");
                                    closed_by_broker = budget / 2;
                                }
                            }
                        }
                        Some(Event::Error(error)) => {
                            tracing::warn!(%error, name = %self.name, "RabbitMQ connection failed; reconnecting");
                            if let Some(hook) = self.on_undecodable.as_ref().filter(|_| is_undecodable(&error)) {
                                hook();
                            }
                            break;
                        }
                        Some(Event::ConnectionBlocked(reason)) => {
                            tracing::warn!(%reason, name = %self.name, "RabbitMQ blocks publishing on this connection");
                        }
                        Some(Event::ConnectionUnblocked) => {
                            tracing::info!(name = %self.name, "RabbitMQ unblocked publishing on this connection");
                        }
                        Some(_) => {}
                        None => break,
                    },
                    _ = check.tick() => if !connection.status().connected() {
                        tracing::warn!(name = %self.name, "RabbitMQ connection is no longer connected; reconnecting");
                        break;
                    },
                }
            }
            if successor.is_none() {
                self.current.send_replace(None);
            }
        }
    }

    fn properties(&self) -> ConnectionProperties {
        ConnectionProperties::default().with_connection_name(self.name.as_ref().into())
    }

    /// Closes the connection (after the consumers have stopped).
    pub async fn close(&self) {
        if let Some(connected) = self.current.send_replace(None)
            && let Err(error) = connected.connection.close(200, "shutting down".into()).await
        {
            tracing::debug!(%error, "closing the RabbitMQ connection");
        }
    }
}

/// The longest [`Broker::channel_apart`] waits for its connection.
const CONNECT_APART_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a replaced connection stays open for what still runs on it (a publish waiting for its confirm, a
/// consumer handing over) before it is closed.
const REPLACED_CONNECTION_GRACE: Duration = Duration::from_secs(30);

/// Channels the broker may close on one connection before it is replaced. lapin 4.12 never frees the number
/// of a channel the broker closed (a passive declare of a missing queue, a guarded delete that fails): after
/// `channel_max` of them no channel opens on the connection at all. A quarter of the numbers leaves the rest
/// for the channels in use (publishing, or a consumer connection's `rabbitmq.channels_per_connection`).
fn channel_error_budget(channel_max: u16) -> u32 {
    (u32::from(channel_numbers(channel_max)) / 4).max(1)
}

/// The channels a connection granted `channel_max` may have in use while it is kept: the numbers that
/// [`channel_error_budget`] leaves.
fn usable_channels(channel_max: u16) -> usize {
    let numbers = u32::from(channel_numbers(channel_max));
    usize::try_from(numbers.saturating_sub(channel_error_budget(channel_max))).unwrap_or(usize::MAX).max(1)
}

fn channel_numbers(channel_max: u16) -> u16 {
    // 0 is "no limit" in the protocol's negotiation.
    if channel_max == 0 { u16::MAX } else { channel_max }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarter_of_the_channel_numbers_may_be_lost_to_broker_closes() {
        assert_eq!(channel_error_budget(2047), 511);
        assert_eq!(channel_error_budget(64), 16);
        assert_eq!(usable_channels(2047), 1536);
        assert_eq!(usable_channels(8), 6);
        assert_eq!(usable_channels(1), 1, "a channel the broker allows is used");
        assert_eq!(usable_channels(0), 49152, "0 is no limit: the protocol's numbers");
        assert_eq!(channel_error_budget(2), 1);
        assert_eq!(channel_error_budget(0), 16_383);
    }
}
