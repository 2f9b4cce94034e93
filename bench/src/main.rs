//! `tenantmq-bench`: measures tenantmq against its raw ceilings on the local PostgreSQL and RabbitMQ and prints
//! one Markdown table (see docs/benchmarks.md; `scripts/bench.sh` builds and runs it).

mod amqp;
mod db;
mod env;
mod scale;
mod service;
mod stats;

use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use clap::Parser;

use crate::{
    amqp::ProducerSettings,
    db::DbSettings,
    env::{Machine, Services},
    scale::ScaleSettings,
    service::{HttpSettings, PageSettings, Plan},
    stats::{format_ms, format_rate, format_ratio, format_secs, ratio, thousands},
};

const SECTIONS: [&str; 7] = ["broker", "db", "naive", "amqp", "http", "pages", "scale"];

#[derive(Debug, Parser)]
#[command(name = "tenantmq-bench", about = "Benchmarks tenantmq against raw RabbitMQ and PostgreSQL")]
struct Cli {
    /// Small sizes that finish in under a minute (a smoke test of the bench, not a measurement).
    #[arg(long)]
    quick: bool,
    /// Sections to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(SECTIONS))]
    only: Vec<String>,
    /// Messages per throughput run (raw broker, raw database, naive, end-to-end AMQP and HTTP).
    #[arg(long)]
    messages: Option<u64>,
    /// Tenants (queues) in the throughput runs.
    #[arg(long, default_value_t = 10)]
    tenants: usize,
    /// Approximate JSON payload size in bytes.
    #[arg(long, default_value_t = 128)]
    payload_bytes: usize,
    /// AMQP producer channels (each with publisher confirms).
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    /// Messages an AMQP producer publishes before awaiting their confirms.
    #[arg(long, default_value_t = 500)]
    publish_window: usize,
    /// Concurrent HTTP clients for the batch-publish run.
    #[arg(long, default_value_t = 4)]
    http_clients: usize,
    /// Messages per `POST /tenants/{id}/messages/batch`.
    #[arg(long, default_value_t = 100)]
    http_batch: usize,
    /// Concurrent writers of the raw multi-row INSERT.
    #[arg(long, default_value_t = 4)]
    db_writers: usize,
    /// Rows of the tenant whose pages are timed; the deep page starts after this many.
    #[arg(long)]
    depth: Option<u64>,
    /// Rows per page.
    #[arg(long, default_value_t = 100)]
    page_limit: u64,
    /// Timed requests per page position.
    #[arg(long)]
    page_samples: Option<usize>,
    /// Tenants of the scale run.
    #[arg(long)]
    scale_tenants: Option<usize>,
    /// Concurrent `POST /tenants` in the scale run.
    #[arg(long, default_value_t = 8)]
    scale_concurrency: usize,
    /// The release `tenantmq` binary the scale run starts (default: target/release/tenantmq).
    #[arg(long, env = "TENANTMQ_BENCH_SERVICE_BIN")]
    service_bin: Option<PathBuf>,
    /// PostgreSQL server (no database; the bench creates `tenantmq_bench_*` databases and drops them).
    #[arg(long, env = "TENANTMQ_BENCH_POSTGRES", default_value = "postgres://postgres@127.0.0.1:5432")]
    postgres: String,
    #[arg(long, env = "TENANTMQ_BENCH_AMQP", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
    /// Cleanup only: delete the queues named in FILE (one a line; e.g. an interrupted run's), then exit.
    #[arg(long, value_name = "FILE")]
    delete_queues_from: Option<PathBuf>,
}

impl Cli {
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }

    fn messages(&self) -> u64 {
        self.messages.unwrap_or(if self.quick { 5_000 } else { 100_000 })
    }

    fn producer(&self) -> ProducerSettings {
        ProducerSettings {
            messages: self.messages(),
            publishers: self.publishers,
            window: self.publish_window.max(1),
            payload_bytes: self.payload_bytes,
        }
    }
}

/// One row of the result table.
struct Row {
    figure: String,
    value: String,
    unit: &'static str,
    target: String,
}

fn row(figure: impl Into<String>, value: impl Into<String>, unit: &'static str) -> Row {
    Row { figure: figure.into(), value: value.into(), unit, target: String::new() }
}

fn check(met: bool, target: &str) -> String {
    format!("{target} {}", if met { "✔" } else { "✘" })
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(file) = &cli.delete_queues_from {
        let names = std::fs::read_to_string(file)?;
        let names: Vec<&str> = names.lines().map(str::trim).filter(|n| !n.is_empty()).collect();
        let connection = lapin::Connection::connect(&cli.amqp, lapin::ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        for name in &names {
            channel.queue_delete((*name).into(), lapin::options::QueueDeleteOptions::default()).await?;
        }
        eprintln!("deleted {} queue(s)", names.len());
        return Ok(());
    }
    let services = Services {
        postgres_server: cli.postgres.trim_end_matches('/').to_owned(),
        amqp_url: cli.amqp.clone(),
        run_id: format!("tenantmq_bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
    };
    let swept = env::sweep_databases(&services.postgres_server).await?;
    if swept > 0 {
        eprintln!("dropped {swept} database(s) an interrupted bench run left behind");
    }
    let workspace = env::workspace_root();
    let machine = Machine::probe(&services, &workspace).await;
    let load_before = env::load_average();
    let started = chrono::Utc::now();
    let defaults = tenantmq::config::Config::default();
    let workers = defaults.workers.get();
    let batch_size = defaults.consumer.batch_size;
    let messages = cli.messages();
    let mut rows = Vec::new();

    let mut raw_broker = None;
    if cli.wants("broker") {
        eprintln!("raw broker: {} messages…", thousands(messages));
        let prefetch = workers.saturating_mul(batch_size);
        let rate = amqp::raw_broker(&services, cli.tenants, prefetch, cli.producer()).await?;
        rows.push(row(
            format!("raw broker: publish (confirms) → consume (acks), {} queues, prefetch {prefetch}", cli.tenants),
            format_rate(rate),
            "msg/s",
        ));
        raw_broker = Some(rate);
    }
    let mut raw_db = None;
    if cli.wants("db") {
        eprintln!("raw database: {} rows…", thousands(messages));
        let settings = DbSettings {
            messages,
            payload_bytes: cli.payload_bytes,
            batch_size: batch_size.into(),
            writers: cli.db_writers,
        };
        let result = db::raw_database(&services, settings).await?;
        rows.push(row("raw database: COPY into one partition, 1 connection", format_rate(result.copy), "rows/s"));
        rows.push(row(
            format!(
                "raw database: multi-row INSERT (the service's statement, {batch_size} rows) into one partition, {} writers",
                cli.db_writers
            ),
            format_rate(result.insert),
            "rows/s",
        ));
        raw_db = Some(result.copy.max(result.insert));
    }
    let mut naive = None;
    if cli.wants("naive") {
        eprintln!("naive baseline: {} messages…", thousands(messages));
        let rate = amqp::naive(&services, cli.tenants, cli.producer()).await?;
        rows.push(row(
            format!("naive: 1 INSERT + 1 ack per message, 1 worker per tenant, {} tenants", cli.tenants),
            format_rate(rate),
            "msg/s",
        ));
        naive = Some(rate);
    }
    let depth = cli.depth.unwrap_or(if cli.quick { 20_000 } else { 1_000_000 });
    let samples = cli.page_samples.unwrap_or(if cli.quick { 50 } else { 500 });
    let plan = Plan {
        tenants: cli.tenants,
        amqp: cli.wants("amqp").then(|| cli.producer()),
        http: cli.wants("http").then_some(HttpSettings {
            messages,
            clients: cli.http_clients,
            batch: cli.http_batch.clamp(1, 1000),
            payload_bytes: cli.payload_bytes,
        }),
        pages: cli.wants("pages").then_some(PageSettings { depth, limit: cli.page_limit, samples, load_chunk: 10_000 }),
    };
    let mut e2e_amqp = None;
    if plan.amqp.is_some() || plan.http.is_some() || plan.pages.is_some() {
        eprintln!("service in process: end-to-end AMQP, HTTP, pages…");
        let result = service::run(&services, plan).await?;
        if let Some(rate) = result.amqp {
            rows.push(row(
                format!(
                    "end-to-end AMQP: producers → tenant queues → rows committed, {} tenants × {workers} workers",
                    cli.tenants
                ),
                format_rate(rate),
                "msg/s",
            ));
            e2e_amqp = Some(rate);
        }
        if let Some(batch) = result.amqp_batch {
            rows.push(row("  (rows per worker transaction, average)", format!("{batch:.1}"), "rows"));
        }
        if let Some(rate) = result.http {
            rows.push(row(
                format!(
                    "end-to-end HTTP: POST …/messages/batch ({} per request, {} clients) → rows committed",
                    cli.http_batch, cli.http_clients
                ),
                format_rate(rate),
                "msg/s",
            ));
        }
        if let Some(batch) = result.http_batch {
            rows.push(row("  (rows per worker transaction, average)", format!("{batch:.1}"), "rows"));
        }
        if let Some(rate) = e2e_amqp {
            if let (Some(broker), Some(db)) = (raw_broker, raw_db) {
                let ceiling = broker.min(db);
                let r = ratio(rate, ceiling);
                let mut line = row("ratio: end-to-end AMQP / min(raw broker, raw database)", format_ratio(r), "");
                line.target = check(r.is_some_and(|r| r >= 0.70), "≥ 0.70");
                rows.push(line);
            }
            if let Some(naive) = naive {
                let r = ratio(rate, naive);
                let mut line = row("ratio: end-to-end AMQP / naive", format_ratio(r), "");
                line.target = check(r.is_some_and(|r| r >= 5.0), "≥ 5×");
                rows.push(line);
            }
        }
        if let Some(pages) = result.pages {
            let p = |s: &stats::Samples, q| s.percentile(q).unwrap_or_default();
            let label =
                |at: &str| format!("page of {} at {at}: p50 / p99 ({} requests)", cli.page_limit, pages.first.len());
            rows.push(row(
                label("the start"),
                format!("{} / {}", format_ms(p(&pages.first, 50.0)), format_ms(p(&pages.first, 99.0))),
                "ms",
            ));
            let mut deep = row(
                label(&format!("depth {}", thousands(depth))),
                format!("{} / {}", format_ms(p(&pages.deep, 50.0)), format_ms(p(&pages.deep, 99.0))),
                "ms",
            );
            let r = ratio(p(&pages.deep, 99.0).as_secs_f64(), p(&pages.first, 99.0).as_secs_f64());
            deep.target = check(r.is_some_and(|r| r <= 2.0), &format!("p99 ≤ 2× first ({})", format_ratio(r)));
            rows.push(deep);
            rows.push(row(
                format!("  (bulk load of {} rows, INSERT … SELECT generate_series + VACUUM ANALYZE)", thousands(depth)),
                format_secs(pages.load),
                "s",
            ));
        }
    }
    if cli.wants("scale") {
        let tenants = cli.scale_tenants.unwrap_or(if cli.quick { 50 } else { 1_000 });
        eprintln!("scale: {} tenants on the release binary…", thousands(tenants as u64));
        let settings = ScaleSettings {
            tenants,
            concurrency: cli.scale_concurrency,
            settle: Duration::from_secs(if cli.quick { 1 } else { 5 }),
            binary: cli.service_bin.clone().unwrap_or_else(|| workspace.join("target/release/tenantmq")),
            probes: 4,
        };
        let result = scale::run(&services, settings).await?;
        let n = thousands(tenants as u64);
        let mut all = row(
            format!("scale: {n} tenants created ({} concurrent) → all consumers running", cli.scale_concurrency),
            format_secs(result.all_running),
            "s",
        );
        all.target = check(result.all_running <= Duration::from_secs(10), "≤ 10 s");
        rows.push(all);
        rows.push(row(
            format!("  (of which creating the {n} tenants: 201 answers)"),
            format_secs(result.creation),
            "s",
        ));
        let p = |q| result.latency.percentile(q).unwrap_or_default();
        rows.push(row(
            "scale: command → consumer running, p50 / p99",
            format!("{} / {}", format_ms(p(50.0)), format_ms(p(99.0))),
            "ms",
        ));
        let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
        let mut rss = row(format!("scale: RSS of `tenantmq serve` with {n} idle tenants"), mib(result.rss_kib), "MiB");
        rss.target = check(result.rss_kib < 200 * 1024, "< 200 MiB");
        rows.push(rss);
        rows.push(row("  (peak RSS, VmHWM, while creating them)", mib(result.hwm_kib), "MiB"));
        rows.push(row(
            format!("scale: graceful stop (SIGTERM → exit) with {n} consumers"),
            format_secs(result.shutdown),
            "s",
        ));
        let mut restart = row(
            format!("scale: restart with {n} tenants → all consumers running"),
            format_secs(result.restart_all_running),
            "s",
        );
        restart.target = check(result.restart_all_running <= Duration::from_secs(10), "≤ 10 s");
        rows.push(restart);
        rows.push(row(format!("  (RSS after the restart, {n} idle tenants)"), mib(result.restart_rss_kib), "MiB"));
    }

    print_table(&cli, &machine, &rows, started, &load_before);
    Ok(())
}

fn print_table(cli: &Cli, machine: &Machine, rows: &[Row], started: chrono::DateTime<chrono::Utc>, load_before: &str) {
    // Markdown: a paragraph per header line, then the table.
    println!(
        "tenantmq benchmarks — {} UTC{}",
        started.format("%Y-%m-%d %H:%M"),
        if cli.quick { " (--quick)" } else { "" }
    );
    println!();
    println!(
        "machine: {} cores ({}), {} RAM; load average before / after: {load_before} / {}",
        machine.cores,
        machine.cpu,
        machine.memory,
        env::load_average()
    );
    println!();
    println!(
        "versions: {}; PostgreSQL {}; RabbitMQ {}; tenantmq {}",
        machine.rustc, machine.postgres, machine.rabbitmq, machine.git_rev
    );
    println!();
    println!(
        "sizes: {} messages of ~{} B, {} tenants; service defaults (workers 3, consumer.batch_size 100, pool 20)",
        thousands(cli.messages()),
        cli.payload_bytes,
        cli.tenants
    );
    println!();
    println!("| figure | value | unit | target |");
    println!("| --- | ---: | --- | --- |");
    for r in rows {
        println!("| {} | {} | {} | {} |", r.figure, r.value, r.unit, r.target);
    }
}
