//! The real service, in process: end-to-end AMQP and HTTP throughput, and page latency at depth.

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use anyhow::{Context, Result};
use sea_orm::ConnectionTrait;
use tenantmq::{api::pagination, domain::tenant::TenantId, store::messages::MessageKey};
use tenantmq_testkit::RunningApp;
use tokio::{task::JoinSet, time::Instant};
use uuid::Uuid;

use crate::{
    amqp::{self, ProducerSettings},
    env::{self, Services},
    stats::{self, Samples},
};

pub struct EndToEnd {
    pub amqp: Option<f64>,
    /// Rows per writing transaction in the AMQP run (the workers' average batch).
    pub amqp_batch: Option<f64>,
    pub http: Option<f64>,
    pub http_batch: Option<f64>,
    /// The same HTTP run with every tenant's limits set high enough never to be hit.
    pub http_limited: Option<f64>,
    /// The HTTP runs' msg/s in the order they ran, each with whether its tenants had limits.
    pub http_runs: Vec<(bool, f64)>,
    pub pages: Option<Pages>,
}

#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    pub messages: u64,
    pub clients: usize,
    /// Messages per `POST …/messages/batch`.
    pub batch: usize,
    pub payload_bytes: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct PageSettings {
    pub depth: u64,
    pub limit: u64,
    pub samples: usize,
    /// Rows per bulk-load transaction.
    pub load_chunk: u64,
}

pub struct Pages {
    pub first: Samples,
    pub deep: Samples,
    pub load: Duration,
}

pub struct Plan {
    pub tenants: usize,
    pub amqp: Option<ProducerSettings>,
    pub http: Option<HttpSettings>,
    pub pages: Option<PageSettings>,
}

/// Starts the service (default settings: `workers` 3, `consumer.batch_size` 100, pool of 20 connections) on a
/// database of its own (`<run>_<name>`) and runs the planned parts against it. The tenants' queues go with the
/// database, once the service has stopped (a running consumer would declare its queues again).
pub async fn run(services: &Services, name: &str, plan: Plan) -> Result<EndToEnd> {
    on_service(services, name, async |app| run_on(app, services, plan).await).await
}

/// Runs `part` against the service started on a database of its own (`<run>_<name>`), then stops the service
/// and removes the database with its tenants' queues, also when the part failed.
pub async fn on_service<T>(
    services: &Services,
    name: &str,
    part: impl AsyncFnOnce(&RunningApp) -> Result<T>,
) -> Result<T> {
    let database = services.database(name).await?;
    let mut app = RunningApp::start(services.service_config(&database)).await?;
    let result = part(&app).await;
    let stopped = app.stop().await;
    let removed = database.remove().await;
    let result = result?;
    stopped?;
    removed?;
    Ok(result)
}

async fn run_on(app: &RunningApp, services: &Services, plan: Plan) -> Result<EndToEnd> {
    let connection = services.amqp().await?;
    let tenants = env::create_tenants(app, "bench", plan.tenants).await?;
    env::await_consumers(&connection, &tenants, Duration::from_secs(60)).await?;

    let mut result = EndToEnd {
        amqp: None,
        amqp_batch: None,
        http: None,
        http_batch: None,
        http_limited: None,
        http_runs: Vec::new(),
        pages: None,
    };
    if let Some(settings) = plan.amqp {
        let started = Instant::now();
        let expected = i64::try_from(settings.messages)?;
        let (produced, rows) = tokio::join!(
            amqp::produce(&connection, &tenants, settings),
            env::await_rows(&app.db, Some(&tenants), expected, Duration::from_secs(1800))
        );
        produced?;
        result.amqp = Some(stats::rate(settings.messages, rows?.duration_since(started)));
        result.amqp_batch = Some(rows_per_transaction(&app.db, &tenants).await?);
    }
    if let Some(settings) = plan.http {
        // Two rounds of each, in the order plain, limited, limited, plain: a drift in the machine's speed
        // along the four runs (the database grows with each) then weighs on both alike. Alternated (plain
        // first each time), a steady slowdown was charged to the limits.
        let (mut plain, mut limited) = (Vec::new(), Vec::new());
        for (round, with_limits) in [false, true, true, false].into_iter().enumerate() {
            let prefix = format!("bench-{}-{round}", if with_limits { "limited" } else { "http" });
            let (rate, batch) = http_run(app, &connection, plan.tenants, settings, &prefix, with_limits).await?;
            result.http_runs.push((with_limits, rate));
            if with_limits {
                limited.push(rate);
            } else {
                plain.push(rate);
                result.http_batch = Some(batch);
            }
        }
        result.http = Some(plain.iter().sum::<f64>() / plain.len() as f64);
        result.http_limited = Some(limited.iter().sum::<f64>() / limited.len() as f64);
    }
    if let Some(settings) = plan.pages {
        result.pages = Some(pages(app, settings).await?);
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(result)
}

/// One HTTP publish run on fresh tenants (so the count sees only this run's rows), with or without limits
/// that are set and never hit; its msg/s and rows per transaction.
async fn http_run(
    app: &RunningApp,
    connection: &lapin::Connection,
    tenants: usize,
    settings: HttpSettings,
    prefix: &str,
    limited: bool,
) -> Result<(f64, f64)> {
    let fresh = env::create_tenants(app, prefix, tenants).await?;
    if limited {
        let limits = serde_json::json!({ "publish_rate": 1_000_000, "max_queue_depth": 1_000_000_000 });
        for tenant in &fresh {
            let url = format!("{}/tenants/{tenant}/config/limits", app.base_url);
            let response = app.client.put(url).json(&limits).send().await?;
            anyhow::ensure!(response.status().is_success(), "setting limits answered {}", response.status());
        }
    }
    env::await_consumers(connection, &fresh, Duration::from_secs(60)).await?;
    let started = Instant::now();
    let expected = i64::try_from(settings.messages)?;
    let (published, rows) = tokio::join!(
        publish_http(app, &fresh, settings),
        env::await_rows(&app.db, Some(&fresh), expected, Duration::from_secs(1800))
    );
    published?;
    let rate = stats::rate(settings.messages, rows?.duration_since(started));
    Ok((rate, rows_per_transaction(&app.db, &fresh).await?))
}

/// Rows per writing transaction of the tenants: each row records its transaction id (`txid`).
async fn rows_per_transaction(db: &sea_orm::DatabaseConnection, tenants: &[TenantId]) -> Result<f64> {
    let filter = format!("FROM messages WHERE tenant_id IN ({})", env::sql_ids(tenants));
    let rows = tenantmq_testkit::scalar_i64(db, &format!("SELECT count(*) {filter}")).await?;
    let transactions = tenantmq_testkit::scalar_i64(db, &format!("SELECT count(DISTINCT txid) {filter}")).await?;
    Ok(if transactions > 0 { rows as f64 / transactions as f64 } else { 0.0 })
}

/// `clients` HTTP clients post batches of `batch` messages round-robin over the tenants until `messages`
/// are accepted (202 after the broker's confirms).
async fn publish_http(app: &RunningApp, tenants: &[TenantId], settings: HttpSettings) -> Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let tenants: Arc<Vec<TenantId>> = Arc::new(tenants.to_vec());
    let mut tasks = JoinSet::new();
    for _ in 0..settings.clients.max(1) {
        let (next, tenants, client, base_url) =
            (next.clone(), tenants.clone(), app.client.clone(), app.base_url.clone());
        tasks.spawn(async move {
            while let Some(claimed) = env::claim(&next, settings.batch as u64, settings.messages) {
                let (start, end) = (claimed.start, claimed.end);
                let tenant = tenants[((start / settings.batch as u64) % tenants.len() as u64) as usize];
                let mut body = String::with_capacity((end - start) as usize * (settings.payload_bytes + 16) + 16);
                body.push_str(r#"{"messages":["#);
                for n in start..end {
                    if n > start {
                        body.push(',');
                    }
                    body.push_str(r#"{"payload":"#);
                    body.push_str(&env::payload(n, settings.payload_bytes));
                    body.push('}');
                }
                body.push_str("]}");
                let response = client
                    .post(format!("{base_url}/tenants/{tenant}/messages/batch"))
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .send()
                    .await?;
                let status = response.status();
                anyhow::ensure!(
                    status == reqwest::StatusCode::ACCEPTED,
                    "batch publish answered {status}: {}",
                    response.text().await.unwrap_or_default()
                );
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Loads `depth + limit` rows into one tenant's partition with `INSERT … SELECT generate_series` (one
/// transaction per `load_chunk` rows, so rows carry many transaction ids as the workers' batches do), then
/// times `GET /messages?tenant_id&limit` at the start and after the row at `depth`.
async fn pages(app: &RunningApp, settings: PageSettings) -> Result<Pages> {
    let tenant = *env::create_tenants(app, "bench-pages", 1).await?.first().context("the pages' tenant")?;
    let partition = tenant.partition_name();
    let total = settings.depth + settings.limit;
    let started = Instant::now();
    let mut from = 1;
    while from <= total {
        let to = (from + settings.load_chunk - 1).min(total);
        app.db
            .execute_unprepared(&format!(
                "INSERT INTO {partition} (tenant_id, id, payload) \
                 SELECT '{}', gen_random_uuid(), jsonb_build_object('n', g, 'kind', 'bench', 'body', repeat('x', 90)) \
                 FROM generate_series({from}, {to}) AS g",
                tenant.as_uuid()
            ))
            .await?;
        from = to + 1;
    }
    app.db.execute_unprepared(&format!("VACUUM ANALYZE {partition}")).await?;
    let load = started.elapsed();

    // The key of the row at `depth` in page order, and the row after it, which the deep page must start with.
    let rows = app
        .db
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!(
                "SELECT txid::text AS txid, id FROM {partition} ORDER BY txid, id OFFSET {} LIMIT 2",
                settings.depth.saturating_sub(1)
            ),
        ))
        .await?;
    anyhow::ensure!(rows.len() == 2, "the partition holds fewer rows than the depth");
    let txid: String = rows[0].try_get("", "txid")?;
    let key = MessageKey { txid: txid.parse()?, id: rows[0].try_get("", "id")? };
    let expected_first: Uuid = rows[1].try_get("", "id")?;
    let cursor = pagination::encode(&format!("messages:{tenant}"), key);

    let first_url = app.url(&format!("/messages?tenant_id={tenant}&limit={}", settings.limit));
    let deep_url = format!("{first_url}&cursor={cursor}");
    // The derived cursor is what the API itself hands out: the deep page starts right after row `depth`.
    let page = get_page(&app.client, &deep_url).await?;
    let data = page["data"].as_array().context("data")?;
    anyhow::ensure!(data.len() as u64 == settings.limit, "deep page holds {} rows", data.len());
    anyhow::ensure!(
        data[0]["id"].as_str() == Some(expected_first.to_string().as_str()),
        "the deep page does not start at row {}",
        settings.depth + 1
    );

    for _ in 0..20 {
        get_page(&app.client, &first_url).await?;
        get_page(&app.client, &deep_url).await?;
    }
    let (mut first, mut deep) = (Samples::new(), Samples::new());
    for _ in 0..settings.samples {
        let t = Instant::now();
        get_page(&app.client, &first_url).await?;
        first.push(t.elapsed());
        let t = Instant::now();
        get_page(&app.client, &deep_url).await?;
        deep.push(t.elapsed());
    }
    Ok(Pages { first, deep, load })
}

pub(crate) async fn get_page(client: &reqwest::Client, url: &str) -> Result<serde_json::Value> {
    let response = client.get(url).send().await?;
    let status = response.status();
    anyhow::ensure!(status == reqwest::StatusCode::OK, "GET {url} answered {status}");
    Ok(response.json().await?)
}
