//! The real application in this process, started as `main` starts it.

use anyhow::{Context, Result};
use sea_orm::DatabaseConnection;
use tenantmq::{Application, auth::Role, config::Config};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct RunningApp {
    pub base_url: String,
    /// Sends an admin token with every request when the configuration enables auth.
    pub client: reqwest::Client,
    /// The application's own pool.
    pub db: DatabaseConnection,
    pub config: Config,
    shutdown: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningApp {
    /// Builds the application from `config` (its database must exist or be creatable) and serves it.
    pub async fn start(config: Config) -> Result<Self> {
        let app = Application::build(config.clone()).await.context("the application starts")?;
        let base_url = format!("http://{}", app.address());
        let db = app.db().clone();
        let shutdown = app.shutdown_token();
        let server = tokio::spawn(app.run_until_stopped());
        let client = if config.auth.enabled {
            crate::bearer_client(&crate::token(&config, Role::Admin)?)?
        } else {
            reqwest::Client::new()
        };
        Ok(Self { base_url, client, db, config, shutdown, server: Some(server) })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Stops the application gracefully and waits for it (queues and database stay).
    pub async fn stop(&mut self) -> Result<()> {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.context("the server task")?.context("the server stopped")?;
        }
        Ok(())
    }
}

impl Drop for RunningApp {
    /// Not stopped (a failure on the way): the server task ends now, and with it the tasks it owns (reconciler,
    /// consumers, projectors), so that no consumer declares its queues again while the caller deletes them.
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
