//! `tenantmq-bench`: measures tenantmq against its raw ceilings on the local PostgreSQL and RabbitMQ and prints
//! one Markdown table (see docs/benchmarks.md; `scripts/bench.sh` builds and runs it).

mod amqp;
mod db;
mod env;
mod latency;
mod scale;
mod service;
mod stats;

use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use clap::Parser;

use crate::{
    amqp::{Acks, ProducerSettings},
    db::DbSettings,
    env::{Machine, Services},
    latency::LatencySettings,
    scale::ScaleSettings,
    service::{HttpSettings, PageSettings, Plan},
    stats::{Rounds, format_ms, format_rate, format_ratio, format_secs, ratio, thousands},
};

const SECTIONS: [&str; 8] = ["broker", "db", "naive", "amqp", "http", "pages", "latency", "scale"];

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
    /// Rounds of the throughput runs (raw broker, naive, end-to-end AMQP, interleaved); the table gives each
    /// figure's median and range, and each ratio from the figures of one round (default: 3, 1 with --quick).
    #[arg(long)]
    rounds: Option<u32>,
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
    /// Seconds each open-loop latency level (and the noisy neighbour's quiet tenant) publishes.
    #[arg(long)]
    latency_seconds: Option<u64>,
    /// Messages the flooding tenant has queued in the noisy-neighbour part.
    #[arg(long)]
    flood: Option<u64>,
    /// The quiet tenant's msg/s in the noisy-neighbour part.
    #[arg(long, default_value_t = 200.0)]
    quiet_rate: f64,
    /// `consumer.batch_max_wait` of the services the bench starts, in ms (and `batch_wait` at most that):
    /// the batching window, which trades latency for throughput (default: the service's).
    #[arg(long)]
    batch_max_wait_ms: Option<u64>,
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
    #[arg(long, env = "TENANTMQ_BENCH_POSTGRES", default_value = tenantmq_testkit::LOCAL_POSTGRES)]
    postgres: String,
    #[arg(long, env = "TENANTMQ_BENCH_AMQP", default_value = tenantmq_testkit::LOCAL_AMQP)]
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

    fn rounds(&self) -> u32 {
        self.rounds.unwrap_or(if self.quick { 1 } else { 3 }).max(1)
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

/// What one round of the throughput runs measured (`None`: not run).
#[derive(Default)]
struct Round {
    broker: Option<f64>,
    broker_multiple: Option<f64>,
    naive: Option<f64>,
    e2e: Option<f64>,
    e2e_batch: Option<f64>,
}

/// The per-round figures of the throughput runs, and the ratios of each round's own figures.
#[derive(Default)]
struct Throughput {
    broker: Rounds,
    broker_multiple: Rounds,
    naive: Rounds,
    e2e: Rounds,
    e2e_batch: Rounds,
    e2e_over_ceiling: Rounds,
    e2e_over_naive: Rounds,
    /// 5 × naive over the broker ceiling with multiple acks: above 1, the 5× target asks for more than the broker
    /// alone delivers on this machine.
    five_naive_over_broker: Rounds,
}

impl Throughput {
    /// Adds one round's figures, and the ratios computed from them alone.
    fn add(&mut self, round: Round, raw_db: Option<f64>) {
        let Round { broker, broker_multiple, naive, e2e, e2e_batch } = round;
        if let (Some(e2e), Some(broker), Some(db)) = (e2e, broker, raw_db) {
            self.e2e_over_ceiling.extend(ratio(e2e, broker.min(db)));
        }
        if let (Some(e2e), Some(naive)) = (e2e, naive) {
            self.e2e_over_naive.extend(ratio(e2e, naive));
        }
        if let (Some(naive), Some(broker)) = (naive, broker_multiple) {
            self.five_naive_over_broker.extend(ratio(5.0 * naive, broker));
        }
        self.broker.extend(broker);
        self.broker_multiple.extend(broker_multiple);
        self.naive.extend(naive);
        self.e2e.extend(e2e);
        self.e2e_batch.extend(e2e_batch);
    }

    fn report(&self, rows: &mut Vec<Row>, cli: &Cli, prefetch: u16, workers: u16) {
        let rate = |r: &Rounds| r.format(format_rate);
        let times = |r: &Rounds| r.format(|v| format_ratio(Some(v)));
        let tenants = cli.tenants;
        if !self.broker.is_empty() {
            rows.push(row(
                format!(
                    "raw broker: publish (confirms) → consume (acks on receipt), {tenants} queues, prefetch {prefetch}"
                ),
                rate(&self.broker),
                "msg/s",
            ));
            rows.push(row(
                "  (the same, acked like the service: `multiple` acks of what has arrived)",
                rate(&self.broker_multiple),
                "msg/s",
            ));
        }
        if !self.naive.is_empty() {
            rows.push(row(
                format!("naive: 1 INSERT + 1 ack per message, 1 worker per tenant, {tenants} tenants"),
                rate(&self.naive),
                "msg/s",
            ));
        }
        if !self.e2e.is_empty() {
            rows.push(row(
                format!(
                    "end-to-end AMQP: producers → tenant queues → rows committed, {tenants} tenants × {workers} workers"
                ),
                rate(&self.e2e),
                "msg/s",
            ));
            rows.push(row(
                "  (rows per worker transaction, average)",
                self.e2e_batch.format(|v| format!("{v:.1}")),
                "rows",
            ));
        }
        if let Some(median) = self.e2e_over_ceiling.median() {
            let mut line = row(
                "ratio: end-to-end AMQP / min(raw broker, raw database), per round",
                times(&self.e2e_over_ceiling),
                "",
            );
            line.target = check(median >= 0.70, "≥ 0.70");
            rows.push(line);
        }
        if let Some(median) = self.e2e_over_naive.median() {
            let mut line = row("ratio: end-to-end AMQP / naive, per round", times(&self.e2e_over_naive), "");
            line.target = check(median >= 5.0, "≥ 5×");
            rows.push(line);
        }
        if !self.five_naive_over_broker.is_empty() {
            rows.push(row(
                "  (5 × naive / raw broker with `multiple` acks, per round: above 1, 5× naive is beyond the broker alone)",
                times(&self.five_naive_over_broker),
                "",
            ));
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // Ctrl-C drops the run where it is: the databases and queues it holds are removed as they are dropped.
    tokio::select! {
        finished = run(cli) => finished,
        interrupted = tokio::signal::ctrl_c() => {
            interrupted?;
            anyhow::bail!("interrupted; what the run had made is removed")
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
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
        servers: tenantmq_testkit::Services {
            postgres_server: cli.postgres.trim_end_matches('/').to_owned(),
            amqp_url: cli.amqp.clone(),
        },
        run_id: format!("tenantmq_bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        batch_max_wait: cli.batch_max_wait_ms.map(Duration::from_millis),
    };
    let swept = env::sweep_databases(&services.servers.postgres_server).await?;
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

    let rounds = cli.rounds();

    // The raw database is far above the broker here (see docs/benchmarks.md): measured once, not per round.
    let mut raw_db = None;
    if cli.wants("db") {
        eprintln!("raw database: {} rows…", thousands(messages));
        env::settle(&services).await?;
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

    // Throughput: the broker ceilings, the naive baseline and the end-to-end AMQP run, interleaved round by
    // round, so that each round's ratios compare figures taken minutes apart at most.
    let prefetch = tenantmq::runtime::consumer::prefetch(workers, batch_size);
    let mut figures = Throughput::default();
    for round in 1..=rounds {
        let mut round_figures = Round::default();
        if cli.wants("broker") {
            eprintln!(
                "round {round}/{rounds}: raw broker, {} messages, acks per delivery, then multiple…",
                thousands(messages)
            );
            env::settle(&services).await?;
            round_figures.broker =
                Some(amqp::raw_broker(&services, cli.tenants, prefetch, Acks::EachDelivery, cli.producer()).await?);
            env::settle(&services).await?;
            let acks = Acks::Multiple { batch: batch_size.into() };
            round_figures.broker_multiple =
                Some(amqp::raw_broker(&services, cli.tenants, prefetch, acks, cli.producer()).await?);
        }
        if cli.wants("naive") {
            eprintln!("round {round}/{rounds}: naive baseline…");
            env::settle(&services).await?;
            round_figures.naive = Some(amqp::naive(&services, cli.tenants, cli.producer()).await?);
        }
        if cli.wants("amqp") {
            eprintln!("round {round}/{rounds}: end-to-end AMQP (the service in process)…");
            env::settle(&services).await?;
            let plan = Plan { tenants: cli.tenants, amqp: Some(cli.producer()), http: None, pages: None };
            let result = service::run(&services, &format!("amqp{round}"), plan).await?;
            round_figures.e2e = result.amqp;
            round_figures.e2e_batch = result.amqp_batch;
        }
        figures.add(round_figures, raw_db);
    }
    figures.report(&mut rows, &cli, prefetch, workers);

    let depth = cli.depth.unwrap_or(if cli.quick { 20_000 } else { 1_000_000 });
    let samples = cli.page_samples.unwrap_or(if cli.quick { 50 } else { 500 });
    let plan = Plan {
        tenants: cli.tenants,
        amqp: None,
        http: cli.wants("http").then_some(HttpSettings {
            messages,
            clients: cli.http_clients,
            batch: cli.http_batch.clamp(1, 1000),
            payload_bytes: cli.payload_bytes,
        }),
        pages: cli.wants("pages").then_some(PageSettings { depth, limit: cli.page_limit, samples, load_chunk: 10_000 }),
    };
    if plan.http.is_some() || plan.pages.is_some() {
        eprintln!("service in process: end-to-end HTTP, pages…");
        env::settle(&services).await?;
        let result = service::run(&services, "service", plan).await?;
        if let Some(rate) = result.http {
            rows.push(row(
                format!(
                    "end-to-end HTTP: POST …/messages/batch ({} per request, {} clients) → rows committed (mean of 2)",
                    cli.http_batch, cli.http_clients
                ),
                format_rate(rate),
                "msg/s",
            ));
        }
        if let Some(batch) = result.http_batch {
            rows.push(row("  (rows per worker transaction, average)", format!("{batch:.1}"), "rows"));
        }
        if let (Some(plain), Some(limited)) = (result.http, result.http_limited) {
            let mut with_limits = row(
                "end-to-end HTTP with every tenant's rate and depth limits set, never hit",
                format_rate(limited),
                "msg/s",
            );
            let r = ratio(limited, plain);
            with_limits.target = check(r.is_some_and(|r| r >= 0.95), &format!("≥ 95 % ({})", format_ratio(r)));
            let runs: Vec<String> = result
                .http_runs
                .iter()
                .map(|&(limited, rate)| format!("{}{}", format_rate(rate), if limited { " (limits)" } else { "" }))
                .collect();
            rows.push(with_limits);
            rows.push(row("  (each run, in the order they ran)", runs.join(" / "), "msg/s"));
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
    if cli.wants("latency") {
        eprintln!("service in process: latency…");
        env::settle(&services).await?;
        let settings = LatencySettings {
            max_messages: messages,
            idle_samples: if cli.quick { 50 } else { 500 },
            level_duration: Duration::from_secs(cli.latency_seconds.unwrap_or(if cli.quick { 2 } else { 10 })),
            tenants: cli.tenants,
            payload_bytes: cli.payload_bytes,
            flood: cli.flood.unwrap_or(if cli.quick { 5_000 } else { 100_000 }),
            quiet_rate: cli.quiet_rate,
        };
        let (latencies, noisy) = latency::run(&services, settings).await?;
        report_latency(&mut rows, &latencies, &noisy, &settings, defaults.max_workers.get());
    }
    if cli.wants("scale") {
        let tenants = cli.scale_tenants.unwrap_or(if cli.quick { 50 } else { 1_000 });
        eprintln!("scale: {} tenants on the release binary…", thousands(tenants as u64));
        env::settle(&services).await?;
        let settings = ScaleSettings {
            tenants,
            concurrency: cli.scale_concurrency,
            settle: Duration::from_secs(if cli.quick { 1 } else { 5 }),
            binary: cli.service_bin.clone().unwrap_or_else(|| workspace.join("target/release/tenantmq")),
            probes: 4,
            poll_interval: Duration::from_secs(if cli.quick { 2 } else { 15 }),
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
        let per_tenant = result.rss_per_tenant_kib(tenants);
        let mut idle = row(
            format!("scale: RSS per idle tenant (above the {} MiB of none)", mib(result.baseline_rss_kib)),
            format!("{per_tenant:.1}"),
            "KiB",
        );
        idle.target = check(per_tenant <= 20.0, "≤ 20 KiB");
        rows.push(idle);
        let page_p99 = |samples: &stats::Samples| samples.percentile(99.0).unwrap_or_default();
        let (few, all) = (page_p99(&result.page_few), page_p99(&result.page_all));
        rows.push(row("scale: a tenant's page of 100, p99, with 10 partitions", format_ms(few), "ms"));
        let mut pages = row(format!("scale: the same page, p99, with {n} partitions"), format_ms(all), "ms");
        let over = ratio(all.as_secs_f64(), few.as_secs_f64());
        pages.target = check(over.is_some_and(|r| r <= 1.5), &format!("≤ 1.5× with 10 ({})", format_ratio(over)));
        rows.push(pages);
        rows.push(row(
            format!("scale: queue depth poller, broker calls with {n} idle tenants (one instance)"),
            format!("{:.0}", result.poll_calls_per_second),
            "calls/s",
        ));
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
        let restart_target = if tenants > 1_000 { 30 } else { 10 };
        restart.target =
            check(result.restart_all_running <= Duration::from_secs(restart_target), &format!("≤ {restart_target} s"));
        rows.push(restart);
        rows.push(row(format!("  (RSS after the restart, {n} idle tenants)"), mib(result.restart_rss_kib), "MiB"));
    }

    print_table(&cli, &machine, &rows, started, &load_before);
    Ok(())
}

/// `p50 / p99 / p99.9` of the samples, in ms.
fn percentiles(samples: &stats::Samples, tail: bool) -> String {
    let p = |q| format_ms(samples.percentile(q).unwrap_or_default());
    if tail { format!("{} / {} / {}", p(50.0), p(99.0), p(99.9)) } else { format!("{} / {}", p(50.0), p(99.0)) }
}

fn report_latency(
    rows: &mut Vec<Row>,
    latencies: &latency::Latencies,
    noisy: &latency::NoisyNeighbour,
    settings: &LatencySettings,
    max_workers: u16,
) {
    let ms = |samples: &stats::Samples, q| samples.percentile(q).unwrap_or_default();
    rows.push(row(
        format!(
            "latency: the maximum it is measured against (closed loop, {} messages)",
            thousands(settings.max_messages)
        ),
        format_rate(latencies.max_rate),
        "msg/s",
    ));
    let mut idle = row(
        format!("latency: publish → row, one message at a time, idle: p50 / p99 / p99.9 ({})", latencies.idle.len()),
        percentiles(&latencies.idle, true),
        "ms",
    );
    idle.target = check(ms(&latencies.idle, 50.0) <= Duration::from_millis(10), "p50 ≤ 10 ms");
    rows.push(idle);
    for level in &latencies.levels {
        let mut measured = row(
            format!(
                "latency at {:.0} % of the maximum ({} msg/s offered, open loop): p50 / p99 / p99.9",
                level.share * 100.0,
                format_rate(level.rate)
            ),
            percentiles(&level.samples, true),
            "ms",
        );
        if (level.share - 0.5).abs() < f64::EPSILON {
            measured.target = check(ms(&level.samples, 99.0) <= Duration::from_millis(50), "p99 ≤ 50 ms");
        }
        rows.push(measured);
        let (within_25ms, within_50ms) = level.in_service.shares_within();
        let (batch, write) = level.in_service.writes();
        rows.push(row(
            "  inside the service (delivery → commit): mean; share ≤ 25 ms / ≤ 50 ms; rows per write, a write's mean"
                .to_owned(),
            format!(
                "{} ms; {:.1} / {:.1} %; {batch:.1}, {} ms",
                format_ms(level.in_service.mean()),
                within_25ms * 100.0,
                within_50ms * 100.0,
                format_ms(write)
            ),
            "",
        ));
        rows.push(row(
            "  the broker alone at the same rate (publish → delivery, no service, no database): p50 / p99 / p99.9"
                .to_owned(),
            percentiles(&level.broker_alone, true),
            "ms",
        ));
    }
    let quiet = format_rate(settings.quiet_rate);
    rows.push(row(
        format!("noisy neighbour: the quiet tenant ({quiet} msg/s) alone: p50 / p99"),
        percentiles(&noisy.quiet_alone, false),
        "ms",
    ));
    let alone = ms(&noisy.quiet_alone, 99.0);
    let during = ms(&noisy.quiet_during_flood, 99.0);
    let mut flooded = row(
        format!(
            "noisy neighbour: the quiet tenant while a tenant of {max_workers} workers drains {} queued: p50 / p99",
            thousands(settings.flood)
        ),
        percentiles(&noisy.quiet_during_flood, false),
        "ms",
    );
    flooded.target = check(during <= alone * 2 + Duration::from_millis(10), "p99 ≤ 2× alone + 10 ms");
    rows.push(flooded);
    let mut flood = row(
        "noisy neighbour: the flooding tenant's drain, alone → with the quiet tenant",
        format!("{} → {}", format_rate(noisy.flood_alone), format_rate(noisy.flood_with_quiet)),
        "msg/s",
    );
    let share = ratio(noisy.flood_with_quiet, noisy.flood_alone);
    flood.target = check(share.is_some_and(|r| r >= 0.8), &format!("≥ 80 % ({})", format_ratio(share)));
    rows.push(flood);
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
        "sizes: {} messages of ~{} B, {} tenants; service defaults (workers 3, consumer.batch_size 100, pool 20); \
         throughput: median (min–max) of {} round(s)",
        thousands(cli.messages()),
        cli.payload_bytes,
        cli.tenants,
        cli.rounds()
    );
    println!();
    println!("| figure | value | unit | target |");
    println!("| --- | ---: | --- | --- |");
    for r in rows {
        println!("| {} | {} | {} | {} |", r.figure, r.value, r.unit, r.target);
    }
}
