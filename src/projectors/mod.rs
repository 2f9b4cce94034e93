//! Projectors turn the event log into read models. Each runs in its own task: once a read shows events past its
//! checkpoint, it locks its checkpoint row, applies the next batch of events and saves the checkpoint in the
//! same transaction, so every event is applied exactly once per read model, however many instances run it.

pub mod check;
mod partitions;
mod tenants;

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    time::{Duration, Instant},
};

use futures_util::{FutureExt, StreamExt};
use sea_orm::{DatabaseConnection, DatabaseTransaction, TransactionTrait};
use tokio::{sync::watch, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::Backoff,
    store::{
        StoreError, checkpoints,
        events::{EventStore, NOTIFY_CHANNEL, RecordedEvent, read_all_after},
    },
};

pub use partitions::PartitionsProjector;
pub use tenants::TenantsProjector;

/// A read model derived from the log.
pub trait Projector: Send + Sync + 'static {
    /// The checkpoint row's name; stable across releases.
    const NAME: &'static str;

    /// Applies one event inside the projector's transaction.
    fn apply(
        &self,
        txn: &DatabaseTransaction,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Empties the read model before a replay.
    fn reset(&self, txn: &DatabaseTransaction) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// How far a projector has come, as seen by this instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Its checkpoint: every event up to here is in its read model.
    pub position: i64,
    /// It has reached the head of the log at least once since start (readiness).
    pub caught_up: bool,
}

/// Applies the events after the checkpoint, up to `batch_size` of them, in one transaction.
/// Returns the new checkpoint and how many events were applied.
#[tracing::instrument(name = "projector.step", level = "debug", skip_all, fields(projector = P::NAME))]
async fn step<P: Projector>(
    db: &DatabaseConnection,
    projector: &P,
    batch_size: u32,
) -> Result<(i64, usize), StoreError> {
    if let Some(position) = checkpoints::at_head(db, P::NAME).await? {
        return Ok((position, 0));
    }
    let txn = db.begin().await?;
    let from = checkpoints::lock(&txn, P::NAME).await?;
    let (to, applied) = apply_batch(&txn, projector, from, batch_size).await?;
    if applied > 0 {
        checkpoints::save(&txn, P::NAME, to).await?;
    }
    txn.commit().await?;
    Ok((to, applied))
}

async fn apply_batch<P: Projector>(
    txn: &DatabaseTransaction,
    projector: &P,
    from: i64,
    batch_size: u32,
) -> Result<(i64, usize), StoreError> {
    let events = read_all_after(txn, from, batch_size).await?;
    let mut position = from;
    for event in &events {
        projector.apply(txn, event).await?;
        position = event.position;
    }
    Ok((position, events.len()))
}

/// Rebuilds the projector's read model from the start of the log in one transaction, holding its checkpoint
/// lock throughout so that running instances wait rather than interleave. The projector is made from the
/// checkpoint the rebuild starts from: how far the live projector had come.
pub async fn replay<P: Projector>(
    db: &DatabaseConnection,
    projector: impl FnOnce(i64) -> P,
    batch_size: u32,
) -> Result<i64, StoreError> {
    let txn = db.begin().await?;
    let projector = projector(checkpoints::lock(&txn, P::NAME).await?);
    projector.reset(&txn).await?;
    let position = rebuild(&txn, &projector, i64::MAX, batch_size).await?;
    checkpoints::save(&txn, P::NAME, position).await?;
    txn.commit().await?;
    Ok(position)
}

/// Applies the log from its start up to `up_to` (a position) to a read model just reset; returns the position
/// of the last event applied.
async fn rebuild<P: Projector>(
    txn: &DatabaseTransaction,
    projector: &P,
    up_to: i64,
    batch_size: u32,
) -> Result<i64, StoreError> {
    let mut position = 0;
    loop {
        let events = read_all_after(txn, position, batch_size).await?;
        for event in events.iter().take_while(|event| event.position <= up_to) {
            projector.apply(txn, event).await?;
            position = event.position;
        }
        if events.len() < batch_size as usize || events.last().is_some_and(|event| event.position > up_to) {
            return Ok(position);
        }
    }
}

/// Settings shared by the runners.
#[derive(Debug, Clone, Copy)]
pub struct RunnerSettings {
    pub batch_size: u32,
    /// The safety-net poll while NOTIFY is received (see [`poll_interval`]).
    pub poll_interval: Duration,
}

/// How often runners poll while this instance does not listen for NOTIFY (at start, or reconnecting): every
/// append of another instance then shows only by a poll.
pub const POLL_WHILE_NOT_LISTENING: Duration = Duration::from_secs(1);

/// The wait between two polls: the configured safety net while NOTIFY is received, which covers only what
/// NOTIFY cannot (a connection that died without the listener noticing yet, a read model edited by hand); at
/// most [`POLL_WHILE_NOT_LISTENING`] otherwise.
fn poll_interval(settings: RunnerSettings, listening: bool) -> Duration {
    if listening { settings.poll_interval } else { settings.poll_interval.min(POLL_WHILE_NOT_LISTENING) }
}

/// Runs a projector until `cancel` fires: catches up, then waits for the log's head to move (local append or
/// NOTIFY) or for the poll interval, whichever comes first. `listening` says whether NOTIFY is received (see
/// [`listen_for_appends`]). Errors are logged and retried with backoff.
pub async fn run<P: Projector>(
    projector: P,
    db: DatabaseConnection,
    store: EventStore,
    progress: watch::Sender<Progress>,
    settings: RunnerSettings,
    mut listening: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let mut head = store.subscribe_head();
    let mut backoff = Backoff::new();
    while !cancel.is_cancelled() {
        let claimed = *head.borrow_and_update();
        // A panic in a step (a row it cannot read, such as a time of `infinity` written by hand) fails the
        // step like an error: the projector tries again with backoff, as for an event it cannot decode, and the
        // service goes on serving. Let through, it would end the loop, and the service with it, at every start.
        let stepped = match AssertUnwindSafe(step(&db, &projector, settings.batch_size)).catch_unwind().await {
            Ok(stepped) => stepped.map_err(|error| error.to_string()),
            Err(panic) => Err(format!("panicked: {}", crate::telemetry::panic_message(panic.as_ref()))),
        };
        match stepped {
            Ok((position, applied)) => {
                backoff.reset();
                let caught_up = applied < settings.batch_size as usize;
                if caught_up && store.disown_head(claimed, position) {
                    tracing::warn!(
                        projector = P::NAME,
                        claimed,
                        tip = position,
                        "a notification named a position past the end of the event log; ignored"
                    );
                }
                progress.send_if_modified(|p| {
                    let before = *p;
                    p.position = position;
                    p.caught_up |= caught_up;
                    *p != before
                });
                if !caught_up {
                    continue;
                }
                let poll = poll_interval(settings, *listening.borrow_and_update());
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = head.changed() => {}
                    // Listening stopped: poll at the shorter interval from now on, not after the longer one.
                    () = listening_changed(&mut listening) => {}
                    _ = tokio::time::sleep(poll) => {}
                }
            }
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(projector = P::NAME, %error, ?delay, "projector step failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Resolves when `listening` changes; never once its sender is gone (the listener ended: shutdown).
async fn listening_changed(listening: &mut watch::Receiver<bool>) {
    if listening.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A listener connection that lasted this long was healthy: losing it starts the backoff afresh.
const LISTENER_HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// How often the listener notifies itself, and how long it waits to hear it: a connection gone silent (a
/// network partition, which TCP reports hours later) hears nothing, not even an error, and is told apart from
/// a quiet one only so.
const ECHO_EVERY: Duration = Duration::from_secs(10);

/// Listens for NOTIFY on append so that projectors on every instance wake at once, and says on `listening`
/// whether it does. What is appended while it does not listen is never notified: so after each LISTEN it reads
/// the log's head, which wakes the projectors if the log moved meanwhile; until then they poll every
/// [`POLL_WHILE_NOT_LISTENING`]. Every [`ECHO_EVERY`] it notifies itself, and a connection that does not
/// bring that back by the next time counts as lost.
pub async fn listen_for_appends(
    db: DatabaseConnection,
    store: EventStore,
    listening: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new();
    while !cancel.is_cancelled() {
        // Each step can fail for as long as the server does (LISTEN on a standby in recovery, say): all wait.
        let listen = async {
            let mut listener =
                sea_orm::sqlx::postgres::PgListener::connect_with(db.get_postgres_connection_pool()).await?;
            // A lost connection ends this listener (and this loop reads the head again), not a silent reconnect.
            listener.eager_reconnect(false);
            listener.listen(NOTIFY_CHANNEL).await?;
            store.head_position().await?;
            Ok::<_, StoreError>(listener)
        };
        let listener = match listen.await {
            Ok(listener) => listener,
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, ?delay, "cannot listen for NOTIFY; retrying");
                tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(delay) => continue }
            }
        };
        listening.send_replace(true);
        let listening_since = Instant::now();
        // `try_recv`, unlike `recv`, tells of a lost connection (`Ok(None)`) instead of reconnecting silently
        // past the notifications sent meanwhile. In a stream, a receive under way is kept, not dropped, when
        // the echo's tick comes first.
        let mut notifications = std::pin::pin!(futures_util::stream::unfold(listener, |mut listener| async move {
            let received = listener.try_recv().await;
            Some((received, listener))
        }));
        let echo = format!("echo:{}", uuid::Uuid::new_v4());
        let mut echo_heard = true;
        let mut ticks = tokio::time::interval(ECHO_EVERY);
        // After a stall (a paused VM, a starved runtime) one tick, not a burst: a second tick at once would
        // find the first's echo unheard only because it had no time to arrive, and reconnect for nothing.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lost = loop {
            tokio::select! {
                // What has arrived is read before a tick looks for the echo: after a stall both are ready at
                // once, and a tick taken first would find the echo unheard that is waiting to be read. (A
                // steady stream of notifications keeps ticks waiting; it also says the connection is alive.)
                biased;
                _ = cancel.cancelled() => return,
                received = notifications.next() => match received {
                    Some(Ok(Some(notification))) if notification.payload() == echo => echo_heard = true,
                    Some(Ok(Some(notification))) => {
                        if let Ok(position) = notification.payload().parse::<i64>() {
                            store.observe_head(position);
                        }
                    }
                    Some(Ok(None)) | None => break "the connection was lost".to_owned(),
                    Some(Err(error)) => break error.to_string(),
                },
                _ = ticks.tick() => {
                    if !std::mem::replace(&mut echo_heard, false) {
                        break format!("its own notification did not come back within {ECHO_EVERY:?}");
                    }
                    let sent = tokio::time::timeout(ECHO_EVERY, store.notify(&echo)).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        break "it could not notify itself".to_owned();
                    }
                }
            }
        };
        if listening_since.elapsed() >= LISTENER_HEALTHY_AFTER {
            backoff.reset();
        }
        // A server that drops every connection at once must not make this loop spin.
        let delay = backoff.next_delay();
        tracing::warn!(error = %lost, ?delay, "NOTIFY listener lost its connection; listening again");
        listening.send_replace(false);
        tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(delay) => {} }
    }
}

/// The projectors of this service and where each one's progress is published.
#[derive(Clone)]
pub struct Projections {
    pub tenants: watch::Receiver<Progress>,
    pub partitions: watch::Receiver<Progress>,
}

impl Projections {
    fn each(&self) -> [&watch::Receiver<Progress>; 2] {
        [&self.tenants, &self.partitions]
    }

    /// Each projector's name and position.
    pub fn positions(&self) -> [(&'static str, i64); 2] {
        [
            (TenantsProjector::NAME, self.tenants.borrow().position),
            (PartitionsProjector::NAME, self.partitions.borrow().position),
        ]
    }

    /// Every projector has reached the head of the log at least once.
    pub fn all_caught_up(&self) -> bool {
        self.each().iter().all(|p| p.borrow().caught_up)
    }

    /// Waits until every projector has applied the log up to `position`; false if a projector stopped.
    pub async fn wait_for(&self, position: i64) -> bool {
        for progress in self.each() {
            if progress.clone().wait_for(|p| p.position >= position).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// Spawns the NOTIFY listener and every projector into `tasks`.
pub fn spawn_all(
    tasks: &mut JoinSet<&'static str>,
    db: &DatabaseConnection,
    store: &EventStore,
    tenants: TenantsProjector,
    partitions: PartitionsProjector,
    settings: RunnerSettings,
    cancel: &CancellationToken,
) -> Projections {
    let (listening, listening_receiver) = watch::channel(false);
    let (db_, store_, cancel_) = (db.clone(), store.clone(), cancel.clone());
    tasks.spawn(async move {
        listen_for_appends(db_, store_, listening, cancel_).await;
        "event log listener"
    });
    Projections {
        tenants: spawn(tasks, tenants, db, store, settings, &listening_receiver, cancel),
        partitions: spawn(tasks, partitions, db, store, settings, &listening_receiver, cancel),
    }
}

fn spawn<P: Projector>(
    tasks: &mut JoinSet<&'static str>,
    projector: P,
    db: &DatabaseConnection,
    store: &EventStore,
    settings: RunnerSettings,
    listening: &watch::Receiver<bool>,
    cancel: &CancellationToken,
) -> watch::Receiver<Progress> {
    let (progress, receiver) = watch::channel(Progress::default());
    let (db, store, listening, cancel) = (db.clone(), store.clone(), listening.clone(), cancel.clone());
    tasks.spawn(async move {
        run(projector, db, store, progress, settings, listening, cancel).await;
        P::NAME
    });
    receiver
}

/// Rebuilds every read model from the log (`tenantmq replay`). Returns each projector's final position.
pub async fn replay_all(db: &DatabaseConnection, batch_size: u32) -> Result<Vec<(&'static str, i64)>, StoreError> {
    Ok(vec![
        (TenantsProjector::NAME, replay(db, |_| TenantsProjector, batch_size).await?),
        (
            PartitionsProjector::NAME,
            replay(db, |live_reached| PartitionsProjector::Replay { live_reached }, batch_size).await?,
        ),
    ])
}
