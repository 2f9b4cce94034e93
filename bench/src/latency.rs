//! Latency from publish to row: one message at a time on an idle service, under open-loop load at shares of the
//! measured maximum, and for a quiet tenant while another floods (the noisy neighbour). Each open-loop level is
//! followed by the broker alone at the same rate (publish → delivery to a consumer that writes nothing), to
//! tell the service's part of the tail from the broker's.
//!
//! Each message carries the time it was due (`sent_us`, microseconds since the epoch): under open-loop load
//! the time its rate schedules it for, so a publisher or broker that falls behind shows as latency; on the idle
//! service the time just before its publish. Its row's `created_at` is the start of the worker's insert
//! transaction, on the same machine's clock. The commit follows within the insert's own duration
//! (`tenantmq_persist_duration_seconds`: 3 ms for one row, 8 ms for 8 under half load here), which these
//! figures leave out.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use futures_util::FutureExt;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    message::Delivery,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::json;
use tenantmq::domain::tenant::TenantId;
use tenantmq_testkit::RunningApp;
use tokio::{sync::mpsc, time::Instant};
use uuid::Uuid;

use crate::{
    amqp::{self, Acks, ProducerSettings},
    env::{self, Services},
    service,
    stats::{self, Samples},
};

#[derive(Debug, Clone, Copy)]
pub struct LatencySettings {
    /// Messages of the closed-loop run that finds the maximum.
    pub max_messages: u64,
    /// Single messages timed on the idle service.
    pub idle_samples: usize,
    /// How long each open-loop level runs.
    pub level_duration: Duration,
    pub tenants: usize,
    pub payload_bytes: usize,
    /// Messages the flooding tenant has queued.
    pub flood: u64,
    /// The quiet tenant's publish rate during the flood.
    pub quiet_rate: f64,
}

/// Shares of the maximum the open-loop levels run at.
pub const LEVELS: [f64; 3] = [0.1, 0.5, 0.9];

pub struct Latencies {
    /// End-to-end msg/s of the closed-loop run the levels are shares of.
    pub max_rate: f64,
    pub idle: Samples,
    pub levels: Vec<Level>,
}

/// One open-loop level.
pub struct Level {
    /// Share of the maximum.
    pub share: f64,
    /// Offered msg/s.
    pub rate: f64,
    /// Publish → row.
    pub samples: Samples,
    pub in_service: InService,
    /// Publish → delivery at the same rate into queues of their own, consumed with no database: the broker's
    /// part, which the service cannot go under.
    pub broker_alone: Samples,
}

/// The part of the latency spent inside the service, from each delivery to its row committed, as the
/// service's `tenantmq_message_persist_delay_seconds` histogram counted it over a level, and the batch writes
/// meanwhile (`tenantmq_persist_duration_seconds`; rows per write are the delays counted over the writes).
#[derive(Debug, Clone, Copy)]
pub struct InService {
    pub messages: f64,
    pub seconds: f64,
    pub within_25ms: f64,
    pub within_50ms: f64,
    pub writes: f64,
    pub write_seconds: f64,
}

impl InService {
    const SERIES: [&str; 6] = [
        "tenantmq_message_persist_delay_seconds_count",
        "tenantmq_message_persist_delay_seconds_sum",
        "tenantmq_message_persist_delay_seconds_bucket{le=\"0.025\"}",
        "tenantmq_message_persist_delay_seconds_bucket{le=\"0.05\"}",
        "tenantmq_persist_duration_seconds_count",
        "tenantmq_persist_duration_seconds_sum",
    ];

    async fn read(app: &RunningApp) -> Result<Self> {
        let [messages, seconds, within_25ms, within_50ms, writes, write_seconds] =
            env::metrics(&app.client, &app.base_url, Self::SERIES).await?;
        Ok(Self { messages, seconds, within_25ms, within_50ms, writes, write_seconds })
    }

    fn since(self, before: Self) -> Self {
        Self {
            messages: self.messages - before.messages,
            seconds: self.seconds - before.seconds,
            within_25ms: self.within_25ms - before.within_25ms,
            within_50ms: self.within_50ms - before.within_50ms,
            writes: self.writes - before.writes,
            write_seconds: self.write_seconds - before.write_seconds,
        }
    }

    pub fn mean(&self) -> Duration {
        Duration::from_secs_f64((self.seconds / self.messages.max(1.0)).max(0.0))
    }

    /// Rows per batch write, and a write's mean duration.
    pub fn writes(&self) -> (f64, Duration) {
        let writes = self.writes.max(1.0);
        (self.messages / writes, Duration::from_secs_f64((self.write_seconds / writes).max(0.0)))
    }

    /// The shares of messages the service held at most 25 and 50 ms.
    pub fn shares_within(&self) -> (f64, f64) {
        let of = |count: f64| count / self.messages.max(1.0);
        (of(self.within_25ms), of(self.within_50ms))
    }
}

pub struct NoisyNeighbour {
    pub quiet_alone: Samples,
    pub quiet_during_flood: Samples,
    /// The flooding tenant's msg/s draining its queue alone, and while the quiet one publishes.
    pub flood_alone: f64,
    pub flood_with_quiet: f64,
}

/// Runs the latency parts on a service of their own.
pub async fn run(services: &Services, settings: LatencySettings) -> Result<(Latencies, NoisyNeighbour)> {
    service::on_service(services, "latency", async |app| {
        let connection = services.amqp().await?;
        let latencies = levels(app, services, &connection, settings).await?;
        let noisy = noisy_neighbour(app, services, &connection, settings).await?;
        let _ = connection.close(200, "done".into()).await;
        Ok((latencies, noisy))
    })
    .await
}

async fn levels(
    app: &RunningApp,
    services: &Services,
    connection: &Connection,
    settings: LatencySettings,
) -> Result<Latencies> {
    let tenants = env::create_tenants(app, "latency", settings.tenants).await?;
    env::await_consumers(connection, &tenants, Duration::from_secs(60)).await?;

    eprintln!("latency: the maximum, {} messages closed-loop…", stats::thousands(settings.max_messages));
    let producer = ProducerSettings {
        messages: settings.max_messages,
        publishers: 8,
        window: 500,
        payload_bytes: settings.payload_bytes,
    };
    let started = Instant::now();
    let expected = i64::try_from(settings.max_messages)?;
    let (produced, rows) = tokio::join!(
        amqp::produce(connection, &tenants, producer),
        env::await_rows(&app.db, Some(&tenants), expected, Duration::from_secs(1800))
    );
    produced?;
    let max_rate = stats::rate(settings.max_messages, rows?.duration_since(started));

    eprintln!("latency: {} single messages on the idle service…", settings.idle_samples);
    let channel = confirm_channel(connection).await?;
    let mut idle = Samples::new();
    for n in 0..settings.idle_samples {
        let tenant = tenants[n % tenants.len()];
        let id = Uuid::now_v7();
        let published = publish(&channel, tenant, id, now_us()?, "idle", settings.payload_bytes).await?;
        published.await?;
        idle.push(await_row(app, tenant, id).await?);
    }

    let mut measured = Vec::new();
    for share in LEVELS {
        let rate = max_rate * share;
        eprintln!("latency: open loop at {:.0} % of the maximum ({rate:.0} msg/s)…", share * 100.0);
        env::settle(services).await?;
        let phase = format!("level{}", (share * 100.0) as u32);
        let before = InService::read(app).await?;
        let sent = open_loop(services, &tenants, rate, settings.level_duration, &phase, settings.payload_bytes).await?;
        let samples = collect(app, &tenants, &phase, sent).await?;
        let in_service = InService::read(app).await?.since(before);
        env::settle(services).await?;
        let broker_alone = broker_alone(app, services, connection, tenants.len(), rate, settings).await?;
        measured.push(Level { share, rate, samples, in_service, broker_alone });
    }
    Ok(Latencies { max_rate, idle, levels: measured })
}

/// The open loop at `rate` into `count` queues of their own, declared as the service declares them, with one
/// consumer each that has the service's prefetch and acks on arrival like the raw broker: publish → delivery,
/// with the same publisher, broker and machine as the service's level but no database and no service.
async fn broker_alone(
    app: &RunningApp,
    services: &Services,
    connection: &Connection,
    count: usize,
    rate: f64,
    settings: LatencySettings,
) -> Result<Samples> {
    let (tenants, queues) = amqp::bench_queues(services, connection, count).await?;
    let arrivals = Arc::new(Mutex::new(Arrivals::default()));
    let record = {
        let arrivals = arrivals.clone();
        move |deliveries: &[Delivery]| {
            let arrived_us = now_us().unwrap_or_default();
            // Parsed before taking the lock, which every consumer shares: a consumer waiting on it would show
            // as the broker's latency.
            let latencies: Vec<Option<Duration>> = deliveries
                .iter()
                .map(|delivery| {
                    let payload = serde_json::from_slice::<serde_json::Value>(&delivery.data).ok()?;
                    let latency = arrived_us.saturating_sub(u128::from(payload["sent_us"].as_u64()?));
                    Some(Duration::from_micros(u64::try_from(latency).unwrap_or(u64::MAX)))
                })
                .collect();
            let mut arrivals = arrivals.lock().unwrap_or_else(|e| e.into_inner());
            for latency in latencies {
                match latency {
                    Some(latency) => arrivals.samples.push(latency),
                    None => arrivals.unstamped += 1,
                }
            }
        }
    };
    let prefetch = tenantmq::runtime::consumer::prefetch(app.config.workers.get(), app.config.consumer.batch_size);
    let acks = Acks::Multiple { batch: app.config.consumer.batch_size.into() };
    let mut consumers = amqp::consume(connection, &tenants, prefetch, acks, record).await?;
    let sent = open_loop(services, &tenants, rate, settings.level_duration, "broker", settings.payload_bytes).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let arrived = || arrivals.lock().unwrap_or_else(|e| e.into_inner()).count();
    while arrived() < sent {
        anyhow::ensure!(Instant::now() < deadline, "broker alone: the messages did not all arrive");
        if let Some(Some(ended)) = consumers.join_next().now_or_never() {
            ended??;
            anyhow::bail!("broker alone: a consumer ended before every message arrived");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumers.abort_all();
    queues.delete().await?;
    let arrivals = std::mem::take(&mut *arrivals.lock().unwrap_or_else(|e| e.into_inner()));
    anyhow::ensure!(arrivals.unstamped == 0, "broker alone: {} messages without `sent_us`", arrivals.unstamped);
    Ok(arrivals.samples)
}

/// What the broker-alone consumers received: the latencies, and messages without a readable stamp.
#[derive(Default)]
struct Arrivals {
    samples: Samples,
    unstamped: u64,
}

impl Arrivals {
    fn count(&self) -> u64 {
        self.samples.len() as u64 + self.unstamped
    }
}

/// Tenant A, with the most workers, drains a queue of `flood` messages; B publishes at `quiet_rate` alone, then
/// during A's flood.
async fn noisy_neighbour(
    app: &RunningApp,
    services: &Services,
    connection: &Connection,
    settings: LatencySettings,
) -> Result<NoisyNeighbour> {
    let max_workers = app.config.max_workers.get();
    let flood = create(app, "flood", max_workers).await?;
    let quiet = create(app, "quiet", app.config.workers.get()).await?;
    env::await_consumers(connection, &[flood, quiet], Duration::from_secs(60)).await?;
    let duration = settings.level_duration;

    eprintln!("noisy neighbour: the quiet tenant alone at {} msg/s…", settings.quiet_rate);
    let sent = open_loop(services, &[quiet], settings.quiet_rate, duration, "alone", settings.payload_bytes).await?;
    let quiet_alone = collect(app, &[quiet], "alone", sent).await?;

    eprintln!("noisy neighbour: {} messages queued for the flooding tenant, drained alone…", settings.flood);
    let (flood_alone, _) = drain(app, services, connection, flood, settings, 1, None).await?;
    eprintln!("noisy neighbour: and again while the quiet tenant publishes…");
    let (flood_with_quiet, sent) = drain(app, services, connection, flood, settings, 2, Some(quiet)).await?;
    let quiet_during_flood = collect(app, &[quiet], "flood", sent).await?;
    Ok(NoisyNeighbour { quiet_alone, quiet_during_flood, flood_alone, flood_with_quiet })
}

/// Queues `flood` messages for the tenant while its partition is locked (its workers wait), then lets them
/// go and times the drain; `quiet` publishes meanwhile. Returns the drain's msg/s and what `quiet` sent.
async fn drain(
    app: &RunningApp,
    services: &Services,
    connection: &Connection,
    tenant: TenantId,
    settings: LatencySettings,
    round: i64,
    quiet: Option<TenantId>,
) -> Result<(f64, u64)> {
    env::settle(services).await?;
    let lock = sea_orm::Database::connect(&app.config.database.url).await?;
    let held = lock.begin().await?;
    held.execute_unprepared(&format!("LOCK TABLE {} IN SHARE MODE", tenant.partition_name())).await?;
    let producer = ProducerSettings {
        messages: settings.flood,
        publishers: 8,
        window: 500,
        payload_bytes: settings.payload_bytes,
    };
    amqp::produce(connection, &[tenant], producer).await?;
    let expected = i64::try_from(settings.flood)? * round;
    let started = Instant::now();
    // Until the drain is surely over: the rows counted are those of the drain's span.
    let quiet = quiet.map(|quiet| [quiet]);
    let quiet_publisher = quiet.as_ref().map(|quiet| {
        open_loop(services, quiet, settings.quiet_rate, settings.level_duration, "flood", settings.payload_bytes)
    });
    held.commit().await?;
    let quiet_sent = async {
        match quiet_publisher {
            Some(publisher) => publisher.await.map(Some),
            None => Ok(None),
        }
    };
    let flooding = [tenant];
    let (rows, sent) =
        tokio::join!(env::await_rows(&app.db, Some(&flooding), expected, Duration::from_secs(1800)), quiet_sent);
    let rate = stats::rate(settings.flood, rows?.duration_since(started));
    lock.close().await?;
    Ok((rate, sent?.unwrap_or(0)))
}

async fn create(app: &RunningApp, name: &str, workers: u16) -> Result<TenantId> {
    let body = json!({ "name": name, "workers": workers });
    let tenant = tenantmq_testkit::create_tenant(&app.client, &app.base_url, &body).await?;
    tenant["id"].as_str().and_then(|id| id.parse().ok()).context("the tenant's id")
}

async fn confirm_channel(connection: &Connection) -> Result<Channel> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

fn now_us() -> Result<u128> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros())
}

/// Publishes one message stamped with the time it was due, `sent_us`; the confirm is the returned future's.
async fn publish(
    channel: &Channel,
    tenant: TenantId,
    id: Uuid,
    sent_us: u128,
    phase: &str,
    payload_bytes: usize,
) -> Result<lapin::PublisherConfirm> {
    let head = format!(r#"{{"sent_us":{sent_us},"phase":"{phase}","pad":""#);
    let body = format!("{head}{}\"}}", "x".repeat(payload_bytes.saturating_sub(head.len() + 2)));
    let properties = BasicProperties::default().with_message_id(id.to_string().into()).with_delivery_mode(2);
    let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
    let queue = tenant.queue_name();
    Ok(channel.basic_publish("".into(), queue.as_str().into(), options, body.as_bytes(), properties).await?)
}

/// Publishes at `rate` msg/s for `duration` whatever the service does (open loop), round-robin over the
/// tenants, each message stamped with the time its rate made it due; returns how many it sent, all confirmed.
///
/// The publisher runs on a thread, runtime and connection of its own, as a producer process of its own would:
/// on the runtime of the service in this process, its ticks would wait behind the service's tasks, and that
/// wait would count as the service's latency.
async fn open_loop(
    services: &Services,
    tenants: &[TenantId],
    rate: f64,
    duration: Duration,
    phase: &str,
    payload_bytes: usize,
) -> Result<u64> {
    let (services, tenants, phase) = (services.clone(), tenants.to_vec(), phase.to_owned());
    // The thread cannot be aborted: when this future is dropped (Ctrl-C, a failed part), the guard tells the
    // loop to stop at its next tick instead of publishing into queues that are being deleted.
    let stop = StopOnDrop::default();
    let stopped = stop.0.clone();
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
            let connection = services.amqp().await?;
            let sent = async {
                let channel = confirm_channel(&connection).await?;
                let (confirms, mut confirmed) = mpsc::unbounded_channel();
                let checker = tokio::spawn(async move {
                    while let Some(confirm) = confirmed.recv().await {
                        let confirm: lapin::PublisherConfirm = confirm;
                        match confirm.await? {
                            Confirmation::Ack(None) => {}
                            other => anyhow::bail!("publish not confirmed: {other:?}"),
                        }
                    }
                    Ok(())
                });
                let started = Instant::now();
                let started_us = now_us()?;
                let due_us = |n: u64| started_us + (n as f64 * 1e6 / rate) as u128;
                let mut ticker = tokio::time::interval(Duration::from_millis(1));
                let mut sent: u64 = 0;
                while started.elapsed() < duration && !stopped.load(Ordering::Relaxed) {
                    ticker.tick().await;
                    let due = (started.elapsed().as_secs_f64() * rate) as u64;
                    // The millisecond's messages go out together, as from concurrent producers: awaiting each
                    // publish before the next would cost the measured machine a wake-up of the connection's I/O
                    // thread per message. A tick that falls behind delays the next, but each message keeps the
                    // time it was due.
                    let publishes = (sent..due).map(|n| {
                        let tenant = tenants[(n % tenants.len() as u64) as usize];
                        publish(&channel, tenant, Uuid::now_v7(), due_us(n), &phase, payload_bytes)
                    });
                    for confirm in futures_util::future::try_join_all(publishes).await? {
                        confirms.send(confirm).ok().context("the confirm checker stopped")?;
                    }
                    sent = sent.max(due);
                }
                drop(confirms);
                checker.await??;
                Ok(sent)
            }
            .await;
            let _ = connection.close(200, "done".into()).await;
            sent
        })
    })
    .await?
}

/// Set when dropped.
#[derive(Default)]
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A row's latency in microseconds: its insert transaction's start less the time stamped into its payload.
const LATENCY_US: &str = "(extract(epoch FROM created_at) * 1000000)::bigint - (payload->>'sent_us')::bigint";

/// Waits for the row of message `id` and returns its latency.
async fn await_row(app: &RunningApp, tenant: TenantId, id: Uuid) -> Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let sql = format!("SELECT {LATENCY_US} FROM messages WHERE tenant_id = '{}' AND id = '{id}'", tenant.as_uuid());
    loop {
        if let Some(row) = app.db.query_one_raw(statement(sql.clone())).await? {
            return Ok(micros(row.try_get_by_index(0)?));
        }
        anyhow::ensure!(Instant::now() < deadline, "message {id} has no row after 30 s");
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// Waits for the `sent` rows of the phase and returns their latencies.
async fn collect(app: &RunningApp, tenants: &[TenantId], phase: &str, sent: u64) -> Result<Samples> {
    let filter =
        format!("FROM messages WHERE tenant_id IN ({}) AND payload->>'phase' = '{phase}'", env::sql_ids(tenants));
    let expected = i64::try_from(sent)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while tenantmq_testkit::scalar_i64(&app.db, &format!("SELECT count(*) {filter}")).await? < expected {
        anyhow::ensure!(Instant::now() < deadline, "the {phase} messages did not all arrive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sql = format!("SELECT {LATENCY_US} AS latency {filter}");
    let mut samples = Samples::new();
    for row in app.db.query_all_raw(statement(sql)).await? {
        samples.push(micros(row.try_get_by_index(0)?));
    }
    Ok(samples)
}

fn statement(sql: String) -> sea_orm::Statement {
    sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql)
}

/// A latency in microseconds; a negative one (clock steps) counts as zero.
fn micros(value: i64) -> Duration {
    Duration::from_micros(u64::try_from(value).unwrap_or(0))
}
