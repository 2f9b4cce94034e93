//! tenantmq: event-sourced multi-tenant messaging on RabbitMQ and PostgreSQL.
//!
//! Follow a command through the modules: [`api`] receives it, [`app`] runs the pure [`domain`] rules and
//! appends events to the log in [`store`], [`projectors`] derive the read models from the log, and the
//! [`runtime`]'s reconciler starts, resizes or stops the tenant's consumer on the [`broker`], whose workers
//! write the rows.

pub mod api;
pub mod app;
pub mod auth;
pub(crate) mod backoff;
pub mod broker;
pub mod config;
pub(crate) mod detach;
pub mod domain;
pub mod metrics;
pub mod projectors;
pub mod runtime;
pub mod store;
pub mod telemetry;

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;
use tokio::{net::TcpListener, sync::OnceCell, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    api::AppState,
    app::App,
    config::Config,
    projectors::{PartitionsProjector, RunnerSettings, TenantsProjector},
    runtime::Runtime,
    store::{
        StoreError,
        database::{self, MigrationDirection},
        events::EventStore,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot prepare the database: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Config(config::ConfigError),
    #[error("cannot set up metrics: {0}")]
    Metrics(String),
    #[error("cannot listen on {address}: {source}")]
    Bind { address: String, source: io::Error },
    /// `database.migrate_on_start` is off and the schema is older than this release: serving on it would fail
    /// in ways far from the cause (a rolling update that started the new pods before the migration Job).
    #[error(
        "the database lacks {} migration(s) of this release ({}): run `tenantmq migrate up` first (database.migrate_on_start is off)",
        .0.len(),
        .0.join(", ")
    )]
    PendingMigrations(Vec<String>),
}

/// Files the service keeps open besides client connections (database pool, broker, logs), with room to spare.
const RESERVED_FILES: u64 = 256;

/// The running service: HTTP server, projectors and runtime, stopped by one token.
pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    config: Config,
    state: AppState,
    db: DatabaseConnection,
    runtime: Runtime,
    /// The reconciler and the consumers: stopped first, while the broker connections are still up to ack.
    consumer_tasks: JoinSet<&'static str>,
    stop_consumers: CancellationToken,
    /// Projectors, the NOTIFY listener and the broker connection: stopped last.
    background_tasks: JoinSet<&'static str>,
    background: CancellationToken,
    /// Cancelled by the caller to stop the service (SIGTERM in `main`, the end of a test).
    shutdown: CancellationToken,
}

/// How long closing the broker connections, and then the database pool, may each take past the shutdown deadline.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long the background loops may take to end past the shutdown deadline.
const JOIN_GRACE: Duration = Duration::from_secs(1);
/// The most a graceful stop takes past `shutdown_timeout`: closing the connections, joining the loops, closing
/// the pool, then sending the last spans. A supervisor's grace period before SIGKILL must cover it too.
pub const STOP_PAST_SHUTDOWN_TIMEOUT: Duration =
    CLOSE_GRACE.saturating_add(JOIN_GRACE).saturating_add(CLOSE_GRACE).saturating_add(telemetry::SHUTDOWN_TIMEOUT);

fn warn_about_auth(config: &Config) {
    if config.auth.enabled && config.auth.jwt_secret.as_deref() == Some(config::DEVELOPMENT_SECRET) {
        tracing::warn!("auth.jwt_secret is the development secret from config/default.yaml: set your own");
    }
    if !config.auth.enabled {
        tracing::warn!("authentication is off (auth.enabled: false): every request acts as admin");
    }
}

/// Raises the open files limit to its hard limit and warns when even that is below what the server may need.
fn raise_open_files_limit(config: &Config) {
    match api::server::raise_open_files_limit() {
        Ok(limit) if limit < config.server.max_connections as u64 + RESERVED_FILES => tracing::warn!(
            limit,
            max_connections = config.server.max_connections,
            "the open files limit is below server.max_connections (plus what the service needs itself)"
        ),
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open files limit"),
    }
}

impl Application {
    /// Prepares the database, starts the projectors and binds the HTTP listener (port 0 picks a free port).
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        warn_about_auth(&config);
        let db = prepare_database(&config).await?;
        let store = EventStore::new(db.clone());
        store.head_position().await?;
        let metrics = metrics::Metrics::new().map_err(|e| StartupError::Metrics(e.to_string()))?;
        let authenticator = Arc::new(auth::Authenticator::from_config(&config.auth).map_err(StartupError::Config)?);
        raise_open_files_limit(&config);
        let address = format!("{}:{}", config.server.host, config.server.port);
        let bind_error = |source| StartupError::Bind { address: address.clone(), source };
        let listener = listen(&address).await.map_err(bind_error)?;
        let address = listener.local_addr().map_err(bind_error)?;

        // The loops start last: a start that fails (a port taken) must not abort consumers in mid-batch.
        let background = CancellationToken::new();
        let mut background_tasks = JoinSet::new();
        let projections = spawn_read_side(&config, &db, &store, &metrics, &mut background_tasks, &background);
        let stop_consumers = CancellationToken::new();
        let mut consumer_tasks = JoinSet::new();
        let runtime = Runtime::spawn(
            &config,
            &db,
            &projections,
            &metrics,
            (&mut background_tasks, &background),
            (&mut consumer_tasks, &stop_consumers),
        );
        let app = App::new(&config, &db, store, projections, &runtime);
        let state = AppState {
            app,
            metrics,
            authenticator,
            metrics_tokens: [&config.metrics.bearer_token, &config.metrics.previous_bearer_token]
                .into_iter()
                .flatten()
                .map(|token| Arc::from(token.as_str()))
                .collect(),
            limits: api::json_body::BodyLimits {
                single: config.max_payload_bytes,
                single_body: config.largest_single_body(),
                batch: config.max_batch_bytes,
                payload_depth: config.max_payload_depth,
                read_time: config.server.body_read_timeout,
                buffered: api::json_body::BodyBudget::new(config.server.max_buffered_body_bytes),
            },
        };
        Ok(Self {
            listener,
            address,
            config,
            state,
            db,
            runtime,
            consumer_tasks,
            stop_consumers,
            background_tasks,
            background,
            shutdown: CancellationToken::new(),
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The database the service uses.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Cancel it to stop the service gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then, within `shutdown_timeout` in all: stops taking
    /// requests and lets in-flight ones finish; stops the consumers, whose workers finish and ack what they
    /// hold (what they cannot finish stays unacked and is redelivered); closes the broker connections; stops
    /// the projectors; closes the pool.
    pub async fn run_until_stopped(self) -> io::Result<()> {
        let Self {
            listener,
            address,
            config,
            state,
            db,
            runtime,
            mut consumer_tasks,
            stop_consumers,
            mut background_tasks,
            background,
            shutdown,
        } = self;
        tracing::info!(%address, role = ?config.server.role, version = env!("CARGO_PKG_VERSION"), "serving");
        let routes = api::routes(state, config.server.role, config.max_workers);
        let requested = Arc::new(OnceCell::new());
        let stopping = shutdown.clone();
        let signal = {
            let requested = requested.clone();
            async move {
                shutdown.cancelled().await;
                let _ = requested.set(Instant::now());
            }
        };
        let limits = api::server::ConnectionLimits {
            header_read_timeout: config.server.header_read_timeout,
            idle_timeout: config.server.idle_timeout,
            max_connections: config.server.max_connections,
        };
        // The consumers stop while the HTTP server drains, each with the whole budget: a request that takes it
        // all (a slow upload) must not leave the consumers none, to be aborted mid-batch.
        let serving = async {
            let served = api::server::serve(listener, routes, limits, signal, config.shutdown_timeout).await;
            // A server that ended by itself (its listener failed) stops the rest too.
            stopping.cancel();
            served
        };
        let consumers_stopped = async {
            let ended_early = until_stopped_or_a_task_ends(&mut consumer_tasks, &mut background_tasks, &stopping).await;
            stop_consumers.cancel();
            join_until(&mut consumer_tasks, Instant::now() + config.shutdown_timeout).await;
            ended_early
        };
        let (served, ended_early) = tokio::join!(serving, consumers_stopped);
        let deadline = requested.get().copied().unwrap_or_else(Instant::now) + config.shutdown_timeout;

        // The background loops stop before the broker connections close: their supervisors among them, which
        // would otherwise see a closing connection as a lost one and open another.
        background.cancel();
        // A broker that stopped answering would never confirm the close: give it until the deadline (and a
        // moment), then let the process end, which closes the sockets anyway.
        let closing = runtime.close_connections();
        if tokio::time::timeout_at(deadline.max(Instant::now() + CLOSE_GRACE), closing).await.is_err() {
            tracing::warn!("the broker did not confirm closing the connections in time; leaving them");
        }
        join_until(&mut background_tasks, deadline.max(Instant::now() + JOIN_GRACE)).await;
        // The pool's close waits for every connection to come back, and a write stopped while it waited for a
        // lock keeps its connection until the lock is released, which may be never: give them until the
        // deadline (and a moment), then let the process end, which closes the sockets anyway.
        match tokio::time::timeout_at(deadline.max(Instant::now() + CLOSE_GRACE), db.close_by_ref()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "closing the database pool"),
            Err(_) => {
                tracing::warn!("database connections still busy at the deadline (waiting for a lock?); leaving them")
            }
        }
        tracing::info!("stopped");
        served?;
        match ended_early {
            None => Ok(()),
            Some(task) => Err(io::Error::other(format!("stopped because a task ended while serving: {task}"))),
        }
    }
}

/// Waits until `stopping` is cancelled, or until a task of either set ends first. Every one of them is a loop
/// that runs until the service stops; one that ends while it serves (a panic, a bug) would leave the service
/// running without it: without its consumers, if it was the reconciler. Such an end cancels `stopping`, so the
/// service stops by its usual path and exits with an error, for whatever supervises it to start it again.
async fn until_stopped_or_a_task_ends(
    consumer_tasks: &mut JoinSet<&'static str>,
    background_tasks: &mut JoinSet<&'static str>,
    stopping: &CancellationToken,
) -> Option<String> {
    // A set with no task left disables its branch.
    let ended = tokio::select! {
        biased;
        _ = stopping.cancelled() => return None,
        Some(ended) = consumer_tasks.join_next() => ended,
        Some(ended) = background_tasks.join_next() => ended,
    };
    let task = match ended {
        Ok(name) => format!("{name} ended"),
        Err(error) => error.to_string(),
    };
    tracing::error!(%task, "a task of the service ended while it served; stopping");
    stopping.cancel();
    Some(task)
}

/// The projectors, and the metrics that follow them and the read visibility horizon.
fn spawn_read_side(
    config: &Config,
    db: &DatabaseConnection,
    store: &EventStore,
    metrics: &metrics::Metrics,
    tasks: &mut JoinSet<&'static str>,
    stop: &CancellationToken,
) -> projectors::Projections {
    let settings =
        RunnerSettings { batch_size: config.projectors.batch_size, poll_interval: config.projectors.poll_interval };
    let projections =
        projectors::spawn_all(tasks, db, store, TenantsProjector, PartitionsProjector::Live, settings, stop);
    let progress = projections.clone();
    metrics.observe_projectors(move || progress.positions(), store.subscribe_head());
    let (visibility_lag, lag) = tokio::sync::watch::channel(Some(Duration::ZERO));
    metrics.observe_read_visibility(lag);
    let (db, interval, stop) = (db.clone(), config.metrics.visibility_poll_interval, stop.clone());
    tasks.spawn(async move {
        store::visibility::watch_horizon(db, interval, visibility_lag, stop).await;
        "visibility horizon"
    });
    projections
}

/// Joins every task, reporting how each ended; aborts what is still running at `deadline`.
async fn join_until(tasks: &mut JoinSet<&'static str>, deadline: Instant) {
    let joined = tokio::time::timeout_at(deadline, async {
        while let Some(ended) = tasks.join_next().await {
            match ended {
                Ok(name) => tracing::info!(task = name, "stopped"),
                Err(error) => tracing::error!(%error, "a task failed"),
            }
        }
    })
    .await;
    if joined.is_err() {
        tracing::warn!(left = tasks.len(), "tasks did not stop before the shutdown deadline; abandoning them");
        tasks.abort_all();
    }
}

/// Creates the database if missing and migrates it, as configured, then connects. Without migrating, the
/// schema must already have every migration of this release.
pub async fn prepare_database(config: &Config) -> Result<DatabaseConnection, StartupError> {
    if config.database.create_if_missing {
        database::create_database_if_missing(&config.database.url, config.database.connect_timeout).await?;
    }
    let db = database::connect(&config.database).await?;
    if config.database.migrate_on_start {
        database::migrate(&config.database, MigrationDirection::Up).await?;
    } else {
        let pending = database::pending_migrations(&db).await?;
        if !pending.is_empty() {
            return Err(StartupError::PendingMigrations(pending));
        }
    }
    Ok(db)
}

/// Connections the kernel completes and queues for the server before it refuses more (capped by the
/// system's `net.core.somaxconn`). The standard library's (and tokio's) 128 overflows under a burst of clients
/// connecting at once: every connection past it waits out a SYN retransmit, a second or more.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the first address `address` resolves to that can be bound, as `TcpListener::bind` does, with
/// [`LISTEN_BACKLOG`].
async fn listen(address: &str) -> io::Result<TcpListener> {
    let mut failed = io::Error::new(io::ErrorKind::AddrNotAvailable, "the address resolves to nothing");
    for address in tokio::net::lookup_host(address).await? {
        let bound = (|| {
            let socket =
                if address.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
            socket.set_reuseaddr(true)?;
            socket.bind(address)?;
            socket.listen(LISTEN_BACKLOG)
        })();
        match bound {
            Ok(listener) => return Ok(listener),
            Err(error) => failed = error,
        }
    }
    Err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_while_the_service_serves_stops_it() {
        let (mut consumers, mut background) = (JoinSet::new(), JoinSet::new());
        consumers.spawn(std::future::pending::<&'static str>());
        background.spawn(async { "queue depth poller" });
        let stopping = CancellationToken::new();
        let ended = until_stopped_or_a_task_ends(&mut consumers, &mut background, &stopping).await;
        assert_eq!(ended.as_deref(), Some("queue depth poller ended"));
        assert!(stopping.is_cancelled(), "the service stops by its usual path");

        background.spawn(async { panic!("a bug") });
        let stopping = CancellationToken::new();
        let ended = until_stopped_or_a_task_ends(&mut consumers, &mut background, &stopping).await;
        assert!(ended.as_deref().is_some_and(|task| task.contains("panicked")), "{ended:?}");
        assert!(stopping.is_cancelled());

        // A stop asked for ends no task, whatever is ready.
        background.spawn(async { "visibility horizon" });
        tokio::task::yield_now().await;
        let stopping = CancellationToken::new();
        stopping.cancel();
        assert_eq!(until_stopped_or_a_task_ends(&mut consumers, &mut background, &stopping).await, None);
        assert_eq!((consumers.len(), background.len()), (1, 1), "the stop joins them");
        consumers.abort_all();
    }
}
