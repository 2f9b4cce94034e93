//! Raw database ceilings: COPY and the service's own multi-row INSERT into one tenant partition, no broker.

use std::sync::{Arc, atomic::AtomicU64};

use anyhow::{Context, Result};
use sea_orm::sqlx;
use tenantmq::{
    domain::tenant::TenantId,
    store::messages::{MessageWriter, NewMessage},
};
use tokio::{task::JoinSet, time::Instant};
use uuid::Uuid;

use crate::{
    env::{self, Services},
    stats,
};

pub struct RawDatabase {
    pub copy: f64,
    pub insert: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct DbSettings {
    pub messages: u64,
    pub payload_bytes: usize,
    /// Rows per INSERT statement (the service's `consumer.batch_size`).
    pub batch_size: usize,
    /// Concurrent INSERT writers.
    pub writers: usize,
}

pub async fn raw_database(services: &Services, settings: DbSettings) -> Result<RawDatabase> {
    let database = services.database("rawdb").await?;
    let db = tenantmq::prepare_database(&services.service_config(&database)).await.context("raw database: database")?;
    let pool = db.get_postgres_connection_pool().clone();

    // COPY: one connection, one statement, text format, into a partition of its own.
    let tenant = TenantId::from_uuid(Uuid::now_v7());
    env::create_partition(&db, tenant).await?;
    let started = Instant::now();
    {
        let mut connection = pool.acquire().await?;
        let mut copy = connection
            .copy_in_raw(&format!("COPY {} (tenant_id, id, payload) FROM STDIN", tenant.partition_name()))
            .await?;
        let mut chunk = String::with_capacity(1 << 20);
        for n in 0..settings.messages {
            // Text format: tab-separated; the payload has no tab, backslash or newline to escape.
            chunk.push_str(&format!(
                "{}\t{}\t{}\n",
                tenant.as_uuid(),
                Uuid::now_v7(),
                env::payload(n, settings.payload_bytes)
            ));
            if chunk.len() >= (1 << 20) - 4096 {
                copy.send(chunk.as_bytes()).await?;
                chunk.clear();
            }
        }
        if !chunk.is_empty() {
            copy.send(chunk.as_bytes()).await?;
        }
        copy.finish().await?;
    }
    let copy = stats::rate(settings.messages, started.elapsed());

    // INSERT: the service's writer (unnest, ON CONFLICT DO NOTHING) with `writers` writers on another partition.
    let tenant = TenantId::from_uuid(Uuid::now_v7());
    env::create_partition(&db, tenant).await?;
    let writer = MessageWriter::new(pool.clone(), tenant, tenantmq::metrics::Metrics::new()?);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..settings.writers.max(1) {
        let (writer, next) = (writer.clone(), next.clone());
        tasks.spawn(async move {
            while let Some(claimed) = env::claim(&next, settings.batch_size as u64, settings.messages) {
                let rows: Vec<NewMessage> = claimed
                    .map(|n| NewMessage { id: Uuid::now_v7(), payload: env::payload(n, settings.payload_bytes) })
                    .collect();
                writer.insert(&rows).await?;
            }
            Ok::<_, sqlx::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let insert = stats::rate(settings.messages, started.elapsed());

    db.close_by_ref().await?;
    database.remove().await?;
    Ok(RawDatabase { copy, insert })
}
