//! tenantmq: event-sourced multi-tenant messaging on RabbitMQ and PostgreSQL.
//!
//! Follow a command through the modules: [`api`] receives it, [`commands`] runs the pure [`domain`] rules and
//! appends events to the log in [`store`], [`projectors`] derive the read models from the log.

pub mod api;
pub mod commands;
pub mod config;
pub mod domain;
pub mod projectors;
pub mod store;
pub mod telemetry;

use std::{io, net::SocketAddr};

use poem::{
    Server,
    listener::{Acceptor, Listener, TcpAcceptor, TcpListener},
};
use sea_orm::DatabaseConnection;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    api::AppState,
    commands::TenantCommands,
    config::Config,
    projectors::{PartitionsProjector, RunnerSettings, TenantsProjector},
    store::{
        StoreError,
        database::{self, MigrationDirection},
        events::EventStore,
        tenants::TenantReadModel,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot prepare the database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {address}: {source}")]
    Bind { address: String, source: io::Error },
}

/// The running service: HTTP server, projectors and (later) the runtime, stopped by one token.
pub struct Application {
    acceptor: TcpAcceptor,
    address: SocketAddr,
    config: Config,
    state: AppState,
    tasks: JoinSet<&'static str>,
    /// Cancelled by the caller to stop the service (SIGTERM in `main`, the end of a test).
    shutdown: CancellationToken,
    /// Cancelled after the HTTP server has drained, to stop the background loops.
    background: CancellationToken,
}

impl Application {
    /// Prepares the database, starts the projectors and binds the HTTP listener (port 0 picks a free port).
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let db = prepare_database(&config).await?;
        let store = EventStore::new(db.clone());
        store.head_position().await?;

        let background = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let projections = projectors::spawn_all(
            &mut tasks,
            &db,
            &store,
            TenantsProjector,
            PartitionsProjector { on_delete: config.partitions.on_tenant_delete },
            RunnerSettings { batch_size: config.projectors.batch_size, poll_interval: config.projectors.poll_interval },
            &background,
        );
        let commands = TenantCommands::new(
            store.clone(),
            config.tenant_policy(),
            projections.clone(),
            config.projectors.command_wait,
        );
        let state = AppState { commands, tenants: TenantReadModel::new(db.clone()), events: store, db, projections };

        let address = format!("{}:{}", config.server.host, config.server.port);
        let acceptor = TcpListener::bind(address.clone())
            .into_acceptor()
            .await
            .map_err(|source| StartupError::Bind { address: address.clone(), source })?;
        let address = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .ok_or_else(|| StartupError::Bind { address, source: io::Error::other("no local address") })?;
        Ok(Self { acceptor, address, config, state, tasks, shutdown: CancellationToken::new(), background })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// The database the service uses.
    pub fn db(&self) -> &DatabaseConnection {
        &self.state.db
    }

    /// Cancel it to stop the service gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then stops taking requests, lets in-flight requests
    /// finish, stops the background loops, and returns within `shutdown_timeout`.
    pub async fn run_until_stopped(self) -> io::Result<()> {
        let Self { acceptor, address, config, state, mut tasks, shutdown, background } = self;
        tracing::info!(%address, "serving");
        let routes = api::routes(state.clone(), config.max_payload_bytes);
        let served = Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(routes, shutdown.cancelled_owned(), Some(config.shutdown_timeout))
            .await;
        background.cancel();
        let drained = tokio::time::timeout(config.shutdown_timeout, async {
            while let Some(ended) = tasks.join_next().await {
                match ended {
                    Ok(name) => tracing::info!(task = name, "stopped"),
                    Err(error) => tracing::error!(%error, "a background task failed"),
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(timeout = ?config.shutdown_timeout, "background tasks did not stop in time; abandoning them");
            tasks.abort_all();
        }
        if let Err(error) = state.db.close_by_ref().await {
            tracing::warn!(%error, "closing the database pool");
        }
        tracing::info!("stopped");
        served
    }
}

/// Creates the database if missing and migrates it, as configured, then connects.
pub async fn prepare_database(config: &Config) -> Result<DatabaseConnection, StoreError> {
    if config.database.create_if_missing {
        database::create_database_if_missing(&config.database.url).await?;
    }
    let db = database::connect(&config.database).await?;
    if config.database.migrate_on_start {
        database::migrate(&db, &config.database.url, MigrationDirection::Up).await?;
    }
    Ok(db)
}
