//! RabbitMQ: the supervised connections (one for publishing, as many as the consumers need), the tenant queues (declaration, deletion, inspection), publishing with
//! confirms, the failure history messages carry in their headers, and dead-letter queue operations. Nothing
//! here decides what to do about a tenant; it only speaks AMQP.

use std::time::Duration;

mod connection;
mod consumer_connections;
pub mod dead_letters;
pub mod failure_headers;
mod per_tenant;
pub mod publish;
pub mod queues;

pub use connection::{Broker, Connected};
pub use consumer_connections::{ConsumerConnections, Slot};
pub use dead_letters::DeadLetters;
pub use per_tenant::PerTenant;
pub use publish::{OutgoingMessage, Publisher};
pub use queues::{Inspector, QueueCounts, TenantQueues};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("the broker is not connected")]
    Unavailable,
    #[error("broker error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused the message or could not route it to its queue")]
    Refused,
    /// The broker has blocked the connection from publishing (a memory or disk alarm). Nothing was sent: a
    /// publish started now would wait in the client's buffer and reach the queue whenever the alarm ends,
    /// long after its caller was told it failed.
    #[error("the broker is blocking publishers (a resource alarm)")]
    Blocked,
}

/// The longest a request's question to the broker (a channel to ask on, a queue's counts, a `basic.get`, a
/// channel's close) waits for the answer: a broker that stopped answering (its connection open, silent) would
/// otherwise hold the request until the heartbeats give up on the connection, or forever. Consumers are not
/// bounded this way: thousands starting at once may wait longer for their channels, and heartbeats end them.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// `request`'s answer, or [`BrokerError::Unavailable`] when none comes within [`ANSWER_TIMEOUT`].
pub async fn answered<T, E>(request: impl Future<Output = Result<T, E>>) -> Result<Result<T, E>, BrokerError> {
    tokio::time::timeout(ANSWER_TIMEOUT, request).await.map_err(|_| BrokerError::Unavailable)
}

/// Closes `channel` if it is still open. A channel the broker already closed, or a close that fails or is not
/// answered ([`answered`]), leaves nothing to do: the broker requeues whatever the channel held unacked either
/// way.
pub async fn close_channel(channel: &lapin::Channel, reason: &str) {
    if channel.status().connected() {
        let _ = answered(channel.close(200, reason.into())).await;
    }
}

/// Takes the next message of `queue` without acking it. Bounded ([`answered`]): besides a silent broker, when
/// a message the client cannot read fails the connection ([`is_undecodable`]), lapin never answers the
/// `basic.get` in flight.
pub async fn get_unacked(
    channel: &lapin::Channel,
    queue: &str,
) -> Result<Option<lapin::message::Delivery>, BrokerError> {
    let options = lapin::options::BasicGetOptions { no_ack: false };
    Ok(answered(channel.basic_get(queue.into(), options)).await??.map(|message| message.delivery))
}

/// A soft AMQP error: the broker closed a channel, the connection stays up.
fn is_channel_error(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if matches!(e.kind(), lapin::protocol::AMQPErrorKind::Soft(_)))
}

/// The connection failed on a frame the client could not read: a message whose properties do not decode (a
/// `message-id` or a header name that is not UTF-8) or that came in a frame over the agreed size.
/// RabbitMQ passes such a message on as it was published, so it fails every connection it is delivered on.
fn is_undecodable(error: &lapin::Error) -> bool {
    match error.kind() {
        lapin::ErrorKind::ParsingError(_) => true,
        lapin::ErrorKind::ProtocolError(e) => {
            matches!(e.kind(), lapin::protocol::AMQPErrorKind::Hard(lapin::protocol::AMQPHardError::FRAMEERROR))
        }
        _ => false,
    }
}

/// The broker refused access (ACCESS_REFUSED): another client consumes the queue exclusively, or the user may
/// not use it.
pub(crate) fn is_access_refused(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::ACCESSREFUSED))
    )
}

/// The broker refused a declaration because the queue exists with other arguments. It answers 406
/// PRECONDITION_FAILED for other things too (an ack timed out under `consumer_timeout`): only this reply names
/// an argument.
pub(crate) fn is_inequivalent_declaration(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::PRECONDITIONFAILED))
                && e.get_message().as_str().contains("inequivalent arg")
    )
}

/// The connection is gone: closed by the broker (a connection-level error: shutting down, `rabbitmqctl
/// close_connection`), reset, or silent past its heartbeat.
pub(crate) fn is_connection_lost(error: &lapin::Error) -> bool {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => matches!(e.kind(), lapin::protocol::AMQPErrorKind::Hard(_)),
        lapin::ErrorKind::IOError(_)
        | lapin::ErrorKind::InvalidConnectionState(_)
        | lapin::ErrorKind::MissingHeartbeatError => true,
        _ => false,
    }
}

/// The broker answered NOT_FOUND (a queue that does not exist); it has closed the channel.
fn is_not_found(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND))
    )
}
