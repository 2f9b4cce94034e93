//! Scale: the release `tenantmq serve` binary as a child process; N tenants created through the API; the broker
//! asked (passive `queue.declare`) when each tenant's consumer runs; the service's RSS with N idle tenants; a
//! tenant's page with 10 partitions and with N; the queue depth poller's broker calls; and the time until all
//! N consumers run again after a restart.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use sea_orm::ConnectionTrait;
use tenantmq::{auth::Role, domain::tenant::TenantId};
use tenantmq_testkit::{DeclaredQueues, QueueProbe};
use tokio::{
    process::{Child, Command},
    sync::Semaphore,
    task::JoinSet,
    time::Instant,
};
use uuid::Uuid;

use crate::{
    env::{self, Services},
    service::get_page,
    stats::Samples,
};

/// Partitions when a tenant's page is first timed, before the other tenants are created.
const FEW_PARTITIONS: usize = 10;
/// Rows of the tenant whose page is timed.
const PAGE_ROWS: u64 = 1_000;
/// Timed requests of that page, at each size.
const PAGE_SAMPLES: usize = 300;

#[derive(Debug, Clone)]
pub struct ScaleSettings {
    pub tenants: usize,
    /// Concurrent `POST /tenants`.
    pub concurrency: usize,
    /// How long the service idles before its RSS is read.
    pub settle: Duration,
    pub binary: PathBuf,
    /// Channels probing the broker in parallel.
    pub probes: usize,
    /// The service's `metrics.queue_poll_interval`; its broker calls are counted over two of them.
    pub poll_interval: Duration,
}

pub struct Scale {
    /// From the first command sent to the last consumer seen running.
    pub all_running: Duration,
    /// Per tenant: from its `POST /tenants` sent to its consumer seen running.
    pub latency: Samples,
    pub creation: Duration,
    /// RSS before the first tenant.
    pub baseline_rss_kib: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub shutdown: Duration,
    /// From spawning the binary again to all consumers running.
    pub restart_all_running: Duration,
    pub restart_rss_kib: u64,
    /// A tenant's first page (100 rows) with [`FEW_PARTITIONS`] partitions, then with N.
    pub page_few: Samples,
    pub page_all: Samples,
    /// `tenantmq_queue_depth_broker_calls_total` per second over `poll_window`, with N idle tenants.
    pub poll_calls_per_second: f64,
}

impl Scale {
    /// What each idle tenant adds to the service's RSS.
    pub fn rss_per_tenant_kib(&self, tenants: usize) -> f64 {
        self.rss_kib.saturating_sub(self.baseline_rss_kib) as f64 / tenants.max(1) as f64
    }
}

struct Service {
    child: Child,
    pid: u32,
}

fn spawn(settings: &ScaleSettings, env: &[(String, String)], log: &Path) -> Result<Service> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let child = Command::new(&settings.binary)
        .arg("serve")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(env::workspace_root())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running {}", settings.binary.display()))?;
    let pid = child.id().context("child pid")?;
    Ok(Service { child, pid })
}

impl Service {
    /// SIGTERM, then waits for the exit (the service stops gracefully).
    async fn terminate(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let status = std::process::Command::new("kill").args(["-TERM", &self.pid.to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -TERM {} failed", self.pid);
        let exited = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
        match exited {
            Ok(status) => anyhow::ensure!(status?.success(), "the service exited with an error"),
            Err(_) => {
                self.child.kill().await?;
                anyhow::bail!("the service did not stop within 60 s of SIGTERM");
            }
        }
        Ok(started.elapsed())
    }

    fn rss(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok((field("VmRSS:"), field("VmHWM:")))
    }
}

async fn await_healthy(base_url: &str, timeout: Duration) -> Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(response) = client.get(format!("{base_url}/healthz")).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the service did not answer /healthz within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run(services: &Services, settings: ScaleSettings) -> Result<Scale> {
    anyhow::ensure!(
        settings.binary.is_file(),
        "{} not found: build it with `cargo build --release -p tenantmq` (scripts/bench.sh does)",
        settings.binary.display()
    );
    // Declared first, so dropped last: after the service (killed on drop), whose tenants' queues go with it.
    let database = services.database("scale").await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = services.service_config(&database);
    let secret = config.auth.jwt_secret.clone().unwrap_or_default();
    let vars = vec![
        ("TENANTMQ_DATABASE__URL".to_owned(), database.url()),
        ("TENANTMQ_RABBITMQ__URL".to_owned(), services.servers.amqp_url.clone()),
        ("TENANTMQ_SERVER__HOST".to_owned(), "127.0.0.1".to_owned()),
        ("TENANTMQ_SERVER__PORT".to_owned(), port.to_string()),
        ("TENANTMQ_AUTH__JWT_SECRET".to_owned(), secret),
        ("TENANTMQ_LOG__LEVEL".to_owned(), "warn".to_owned()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
        ("TENANTMQ_METRICS__QUEUE_POLL_INTERVAL".to_owned(), format!("{}ms", settings.poll_interval.as_millis())),
    ];
    let log = std::env::temp_dir().join(format!("{}_scale.log", services.run_id));
    let base_url = format!("http://127.0.0.1:{port}");
    let client = tenantmq_testkit::bearer_client(&tenantmq_testkit::token(&config, Role::Admin)?)?;
    let connection = Arc::new(services.amqp().await?);
    // Every tenant id goes in here before its command is sent, so that its queues are deleted when this run
    // ends however it ends, also when the database that knows the tenants is gone.
    let created = CreatedQueues { services: services.servers.clone(), tenants: Arc::default() };

    let mut service = spawn(&settings, &vars, &log)?;
    let outcome = async {
        await_healthy(&base_url, Duration::from_secs(120)).await?;
        let (baseline_rss_kib, _) = service.rss()?;

        // Create the tenants; each one goes to the probes as soon as its command was sent. A tenant's page is
        // timed once the first few exist, and again with all of them (that pause is not counted).
        let pending: Arc<Mutex<VecDeque<Probe>>> = Arc::default();
        let seen: Seen = Arc::default();
        let probes = spawn_probes(&connection, &pending, &seen, settings.probes, settings.tenants);
        let started = Instant::now();
        let few = FEW_PARTITIONS.min(settings.tenants);
        let mut tenants = create(&client, &base_url, &pending, &created, 0..few, settings.concurrency).await?;
        let paused = Instant::now();
        let paged = *tenants.first().context("at least one tenant")?;
        let page_url = format!("{base_url}/messages?tenant_id={paged}&limit=100");
        load_rows(&database.url(), paged).await?;
        let page_few = time_page(&client, &page_url).await?;
        let pause = paused.elapsed();
        let rest = few..settings.tenants;
        tenants.extend(create(&client, &base_url, &pending, &created, rest, settings.concurrency).await?);
        let creation = started.elapsed() - pause;
        tokio::time::timeout(Duration::from_secs(600), join_all(probes))
            .await
            .context("not every consumer ran within 10 minutes")??;
        let seen = std::mem::take(&mut *seen.lock().expect("lock"));
        let mut latency = Samples::new();
        let mut last = started;
        for (_, sent, running) in &seen {
            latency.push(running.duration_since(*sent));
            last = last.max(*running);
        }
        let all_running = last.duration_since(started).saturating_sub(pause);

        tokio::time::sleep(settings.settle).await;
        let (rss_kib, hwm_kib) = service.rss()?;
        let page_all = time_page(&client, &page_url).await?;
        let calls_before = broker_calls(&client, &base_url).await?;
        let counted = Instant::now();
        tokio::time::sleep(2 * settings.poll_interval).await;
        let poll_calls_per_second =
            (broker_calls(&client, &base_url).await? - calls_before) / counted.elapsed().as_secs_f64();

        // Restart: the same N tenants, all to be consumed again.
        let shutdown = service.terminate().await?;
        service = spawn(&settings, &vars, &log)?;
        let restarted = Instant::now();
        let pending: Arc<Mutex<VecDeque<Probe>>> =
            Arc::new(Mutex::new(tenants.iter().map(|t| Probe { tenant: *t, sent: restarted, last: None }).collect()));
        let seen: Seen = Arc::default();
        let probes = spawn_probes(&connection, &pending, &seen, settings.probes, settings.tenants);
        tokio::time::timeout(Duration::from_secs(600), join_all(probes))
            .await
            .context("not every consumer ran again within 10 minutes")??;
        let restart_all_running =
            seen.lock().expect("lock").iter().map(|(_, _, r)| r.duration_since(restarted)).max().unwrap_or_default();
        tokio::time::sleep(settings.settle).await;
        let (restart_rss_kib, _) = service.rss()?;
        service.terminate().await?;
        Ok::<_, anyhow::Error>(Scale {
            all_running,
            latency,
            creation,
            baseline_rss_kib,
            rss_kib,
            hwm_kib,
            shutdown,
            restart_all_running,
            restart_rss_kib,
            page_few,
            page_all,
            poll_calls_per_second,
        })
    }
    .await;
    if outcome.is_err() {
        let _ = service.child.kill().await;
        eprintln!("scale: the service's log is {}", log.display());
    } else {
        let _ = std::fs::remove_file(&log);
    }
    database.remove().await?;
    // The database knew every tenant, and its removal deleted their queues.
    created.tenants.lock().expect("lock").clear();
    outcome
}

/// Creates the tenants numbered `range` through the API, `concurrency` at a time; each goes to the probes as
/// soon as its command was answered.
async fn create(
    client: &reqwest::Client,
    base_url: &str,
    pending: &Arc<Mutex<VecDeque<Probe>>>,
    created: &CreatedQueues,
    range: std::ops::Range<usize>,
    concurrency: usize,
) -> Result<Vec<TenantId>> {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut creators = JoinSet::new();
    for i in range {
        let permit = permits.clone().acquire_owned().await?;
        let (client, base_url, pending) = (client.clone(), base_url.to_owned(), pending.clone());
        let id = TenantId::from_uuid(Uuid::now_v7());
        created.tenants.lock().expect("lock").push(id);
        creators.spawn(async move {
            let _permit = permit;
            let sent = Instant::now();
            let body = serde_json::json!({ "name": format!("scale-{i}"), "id": id.as_uuid() });
            tenantmq_testkit::create_tenant(&client, &base_url, &body).await?;
            pending.lock().expect("lock").push_back(Probe { tenant: id, sent, last: None });
            Ok::<_, anyhow::Error>(id)
        });
    }
    let mut tenants = Vec::new();
    while let Some(done) = creators.join_next().await {
        tenants.push(done??);
    }
    Ok(tenants)
}

/// The queues of every tenant the run created, deleted when dropped.
struct CreatedQueues {
    services: tenantmq_testkit::Services,
    tenants: Arc<Mutex<Vec<TenantId>>>,
}

impl Drop for CreatedQueues {
    fn drop(&mut self) {
        let tenants = std::mem::take(&mut *self.tenants.lock().unwrap_or_else(|e| e.into_inner()));
        drop(DeclaredQueues::of(&self.services, &tenants));
    }
}

/// Writes [`PAGE_ROWS`] rows into the tenant's partition, as its consumer would have.
async fn load_rows(url: &str, tenant: TenantId) -> Result<()> {
    let db = sea_orm::Database::connect(url).await?;
    db.execute_unprepared(&format!(
        "INSERT INTO {} (tenant_id, id, payload) SELECT '{}', gen_random_uuid(), jsonb_build_object('n', g) \
         FROM generate_series(1, {PAGE_ROWS}) AS g; ANALYZE messages",
        tenant.partition_name(),
        tenant.as_uuid()
    ))
    .await?;
    db.close().await?;
    Ok(())
}

/// Times [`PAGE_SAMPLES`] requests of one page, after a warm-up.
async fn time_page(client: &reqwest::Client, url: &str) -> Result<Samples> {
    for _ in 0..20 {
        get_page(client, url).await?;
    }
    let mut samples = Samples::new();
    for _ in 0..PAGE_SAMPLES {
        let started = Instant::now();
        get_page(client, url).await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// `tenantmq_queue_depth_broker_calls_total` from the service's `/metrics`.
async fn broker_calls(client: &reqwest::Client, base_url: &str) -> Result<f64> {
    let [calls] = env::metrics(client, base_url, ["tenantmq_queue_depth_broker_calls_total"]).await?;
    Ok(calls)
}

/// `(tenant, command sent, consumer seen running)` per tenant.
type Seen = Arc<Mutex<Vec<(TenantId, Instant, Instant)>>>;

struct Probe {
    tenant: TenantId,
    sent: Instant,
    last: Option<Instant>,
}

/// Probe errors in a row after which a probe task gives up.
const MAX_PROBE_FAILURES: u32 = 50;

/// `count` probe tasks take tenants from `pending`, ask the broker for the consumer count of their queue, and
/// record `(tenant, sent, seen running)` once it is at least one; they end when `expected` were seen.
fn spawn_probes(
    connection: &Arc<lapin::Connection>,
    pending: &Arc<Mutex<VecDeque<Probe>>>,
    seen: &Seen,
    count: usize,
    expected: usize,
) -> JoinSet<Result<()>> {
    let mut probes = JoinSet::new();
    for _ in 0..count.max(1) {
        let (connection, pending, seen) = (connection.clone(), pending.clone(), seen.clone());
        probes.spawn(async move {
            let mut probe_queue = QueueProbe::new(&connection);
            let mut failures = 0;
            loop {
                if seen.lock().expect("lock").len() >= expected {
                    return Ok(());
                }
                let next = pending.lock().expect("lock").pop_front();
                let Some(mut probe) = next else {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                };
                // Do not hammer one queue: at most one probe of it every 10 ms.
                if let Some(last) = probe.last {
                    let since = last.elapsed();
                    if since < Duration::from_millis(10) {
                        tokio::time::sleep(Duration::from_millis(10) - since).await;
                    }
                }
                // A queue not declared yet is simply not running yet; so is a question the broker could not
                // answer (a channel it closed), unless it keeps failing.
                let state = match probe_queue.state(&probe.tenant.queue_name()).await {
                    Ok(state) => {
                        failures = 0;
                        state
                    }
                    Err(error) if failures < MAX_PROBE_FAILURES => {
                        failures += 1;
                        eprintln!("scale: probing {} failed ({error:#}); trying again", probe.tenant);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        None
                    }
                    Err(error) => return Err(error.context("the broker failed every probe in a row")),
                };
                let now = Instant::now();
                if state.is_some_and(|(_, consumers)| consumers > 0) {
                    seen.lock().expect("lock").push((probe.tenant, probe.sent, now));
                } else {
                    probe.last = Some(now);
                    pending.lock().expect("lock").push_back(probe);
                }
            }
        });
    }
    probes
}

async fn join_all(mut tasks: JoinSet<Result<()>>) -> Result<()> {
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}
