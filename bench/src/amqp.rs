//! Producers that publish straight to tenant queues, the raw broker ceiling and the naive baseline.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use futures_util::{FutureExt, StreamExt};
use lapin::{
    BasicProperties, Confirmation, Connection,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions},
    types::FieldTable,
};
use sea_orm::sqlx;
use tenantmq::{broker::queues::declare, config::QueueType, domain::tenant::TenantId};
use tenantmq_testkit::DeclaredQueues;
use tokio::{task::JoinSet, time::Instant};
use uuid::Uuid;

use crate::env::{self, Services};

/// How producers publish: like the service's publisher (persistent, `mandatory`, confirms awaited per window).
#[derive(Debug, Clone, Copy)]
pub struct ProducerSettings {
    pub messages: u64,
    pub publishers: usize,
    /// Messages published before their confirms are awaited.
    pub window: usize,
    pub payload_bytes: usize,
}

/// Publishes `messages` round-robin over the tenants' queues from `publishers` confirm channels; returns when
/// the broker confirmed all of them.
pub async fn produce(connection: &Connection, tenants: &[TenantId], settings: ProducerSettings) -> Result<()> {
    let queues: Arc<Vec<String>> = Arc::new(tenants.iter().map(TenantId::queue_name).collect());
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..settings.publishers.max(1) {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let queues = queues.clone();
        let next = next.clone();
        tasks.spawn(async move {
            let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
            loop {
                let start = next.fetch_add(settings.window as u64, Ordering::Relaxed);
                if start >= settings.messages {
                    break;
                }
                let end = (start + settings.window as u64).min(settings.messages);
                let mut confirms = Vec::with_capacity(settings.window);
                for n in start..end {
                    let queue = &queues[(n % queues.len() as u64) as usize];
                    let body = env::payload(n, settings.payload_bytes);
                    let properties = BasicProperties::default()
                        .with_message_id(Uuid::now_v7().to_string().into())
                        .with_content_type("application/json".into())
                        .with_delivery_mode(2);
                    confirms.push(
                        channel
                            .basic_publish("".into(), queue.as_str().into(), options, body.as_bytes(), properties)
                            .await?,
                    );
                }
                for confirm in confirms {
                    match confirm.await? {
                        Confirmation::Ack(None) => {}
                        other => anyhow::bail!("publish not confirmed: {other:?}"),
                    }
                }
            }
            let _ = channel.close(200, "done".into()).await;
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// `count` tenants that exist only on the broker: their queues declared as the service declares them, and
/// deleted through the returned guard.
pub async fn bench_queues(
    services: &Services,
    connection: &Connection,
    count: usize,
) -> Result<(Vec<TenantId>, DeclaredQueues)> {
    let tenants: Vec<TenantId> = (0..count).map(|_| TenantId::from_uuid(Uuid::now_v7())).collect();
    let queues = DeclaredQueues::of(&services.servers, &tenants);
    let setup = connection.create_channel().await?;
    for tenant in &tenants {
        declare(&setup, *tenant, QueueType::Classic).await?;
    }
    let _ = setup.close(200, "declared".into()).await;
    Ok((tenants, queues))
}

/// How the raw-broker consumers ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Every delivery on its own, as it arrives.
    EachDelivery,
    /// Like the service: one `multiple` ack for what has arrived (at most `batch` deliveries), once nothing more
    /// is ready.
    Multiple { batch: u64 },
}

/// One consumer per tenant queue with `prefetch` unacked deliveries, acking on receipt as `acks` says. No
/// database. `on_received` sees what each ack covers as it arrives, before the ack. The consumers run until
/// aborted; one ends early only on an error.
pub async fn consume(
    connection: &Connection,
    tenants: &[TenantId],
    prefetch: u16,
    acks: Acks,
    on_received: impl Fn(&[Delivery]) + Clone + Send + 'static,
) -> Result<JoinSet<Result<()>>> {
    let batch = match acks {
        Acks::EachDelivery => 1,
        Acks::Multiple { batch } => batch.max(1),
    };
    let mut consumers = JoinSet::new();
    for tenant in tenants {
        let channel = connection.create_channel().await?;
        channel.basic_qos(prefetch, BasicQosOptions { global: false }).await?;
        let mut consumer = channel
            .basic_consume(
                tenant.queue_name().as_str().into(),
                format!("bench.raw.{tenant}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let on_received = on_received.clone();
        consumers.spawn(async move {
            let mut received = Vec::new();
            while let Some(delivery) = consumer.next().await {
                received.push(delivery?);
                // Take what is already there (no waiting), then ack it all at once.
                while (received.len() as u64) < batch {
                    match consumer.next().now_or_never() {
                        Some(Some(delivery)) => received.push(delivery?),
                        _ => break,
                    }
                }
                on_received(&received);
                let multiple = received.len() > 1;
                if let Some(last) = received.last() {
                    last.acker.ack(BasicAckOptions { multiple }).await?;
                }
                received.clear();
            }
            Ok(())
        });
    }
    Ok(consumers)
}

/// Raw broker: the same queues (declared as the service declares them), producers as above, one consumer per
/// queue with the service's prefetch (`workers × batch_size`) acking on receipt (see [`Acks`]).
pub async fn raw_broker(
    services: &Services,
    tenants: usize,
    prefetch: u16,
    acks: Acks,
    settings: ProducerSettings,
) -> Result<f64> {
    let connection = services.amqp().await?;
    let (tenants, queues) = bench_queues(services, &connection, tenants).await?;
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let total = settings.messages;
    let counted = {
        let (received, done) = (received.clone(), done.clone());
        move |deliveries: &[Delivery]| {
            let count = deliveries.len() as u64;
            if received.fetch_add(count, Ordering::Relaxed) + count == total {
                done.notify_one();
            }
        }
    };
    let mut consumers = consume(&connection, &tenants, prefetch, acks, counted).await?;
    let started = Instant::now();
    let all_received = done.notified();
    produce(&connection, &tenants, settings).await?;
    tokio::select! {
        received = tokio::time::timeout(Duration::from_secs(600), all_received) => {
            received.context("raw broker: not every message arrived")?;
        }
        // A consumer only ends early on an error: report it rather than wait for the timeout.
        Some(ended) = consumers.join_next() => {
            ended??;
            anyhow::bail!("raw broker: a consumer ended before every message arrived");
        }
    }
    let elapsed = started.elapsed();
    consumers.abort_all();
    queues.delete().await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(crate::stats::rate(settings.messages, elapsed))
}

/// The naive design: per tenant one consumer and one worker that, for every delivery, INSERTs one row into the
/// parent `messages` table (autocommit) and then acks it. No prefetch limit (lapin's default), as such
/// implementations usually leave it.
pub async fn naive(services: &Services, tenants: usize, settings: ProducerSettings) -> Result<f64> {
    let database = services.database("naive").await?;
    let db = tenantmq::prepare_database(&services.service_config(&database)).await.context("naive: database")?;
    let connection = services.amqp().await?;
    let (tenants, queues) = bench_queues(services, &connection, tenants).await?;
    for tenant in &tenants {
        env::create_partition(&db, *tenant).await?;
    }
    let pool = db.get_postgres_connection_pool().clone();
    let mut consumers = JoinSet::new();
    for tenant in &tenants {
        let channel = connection.create_channel().await?;
        let mut consumer = channel
            .basic_consume(
                tenant.queue_name().as_str().into(),
                format!("bench.naive.{tenant}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let pool = pool.clone();
        let tenant = *tenant;
        consumers.spawn(async move {
            while let Some(delivery) = consumer.next().await {
                let delivery = delivery?;
                // The service's id rule, so both designs store the same rows.
                let id = tenantmq::runtime::consumer::row_id(tenant, &delivery);
                let payload = std::str::from_utf8(&delivery.data)?;
                sqlx::query(
                    "INSERT INTO messages (tenant_id, id, payload) VALUES ($1, $2, $3::jsonb) \
                     ON CONFLICT (tenant_id, id) DO NOTHING",
                )
                .bind(tenant.as_uuid())
                .bind(id)
                .bind(payload)
                .execute(&pool)
                .await?;
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    let started = Instant::now();
    let total = i64::try_from(settings.messages)?;
    let (produced, rows) = tokio::join!(
        produce(&connection, &tenants, settings),
        env::await_rows(&db, None, total, Duration::from_secs(1800))
    );
    produced?;
    let elapsed = rows?.duration_since(started);
    consumers.abort_all();
    queues.delete().await?;
    let _ = connection.close(200, "done".into()).await;
    db.close_by_ref().await?;
    database.remove().await?;
    Ok(crate::stats::rate(settings.messages, elapsed))
}
