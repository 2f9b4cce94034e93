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

fn bench_tenants(count: usize) -> Vec<TenantId> {
    (0..count).map(|_| TenantId::from_uuid(Uuid::now_v7())).collect()
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

/// Raw broker: the same queues (declared as the service declares them), producers as above, one consumer per
/// queue with the service's prefetch (`workers × batch_size`) acking on receipt (see [`Acks`]). No database.
pub async fn raw_broker(
    services: &Services,
    tenants: usize,
    prefetch: u16,
    acks: Acks,
    settings: ProducerSettings,
) -> Result<f64> {
    let connection = services.amqp().await?;
    let tenants = bench_tenants(tenants);
    let queues = DeclaredQueues::of(&services.servers, &tenants);
    let setup = connection.create_channel().await?;
    for tenant in &tenants {
        declare(&setup, *tenant, QueueType::Classic).await?;
    }
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let mut consumers = JoinSet::new();
    for tenant in &tenants {
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
        let (acked, done) = (acked.clone(), done.clone());
        let total = settings.messages;
        consumers.spawn(async move {
            while let Some(delivery) = consumer.next().await {
                let mut last = delivery?;
                let mut received = 1;
                if let Acks::Multiple { batch } = acks {
                    // Take what is already there (no waiting), then ack it all at once.
                    while received < batch {
                        match consumer.next().now_or_never() {
                            Some(Some(delivery)) => {
                                last = delivery?;
                                received += 1;
                            }
                            _ => break,
                        }
                    }
                }
                let multiple = received > 1;
                last.acker.ack(BasicAckOptions { multiple }).await?;
                if acked.fetch_add(received, Ordering::Relaxed) + received == total {
                    done.notify_one();
                }
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    let started = Instant::now();
    let all_acked = done.notified();
    produce(&connection, &tenants, settings).await?;
    tokio::select! {
        acked = tokio::time::timeout(Duration::from_secs(600), all_acked) => {
            acked.context("raw broker: not every message acked")?;
        }
        // A consumer only ends early on an error: report it rather than wait for the timeout.
        Some(ended) = consumers.join_next() => {
            ended??;
            anyhow::bail!("raw broker: a consumer ended before every message was acked");
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
    let tenants = bench_tenants(tenants);
    let queues = DeclaredQueues::of(&services.servers, &tenants);
    let setup = connection.create_channel().await?;
    for tenant in &tenants {
        env::create_partition(&db, *tenant).await?;
        declare(&setup, *tenant, QueueType::Classic).await?;
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
