//! `serve --role`: an `api` and a `worker` process on one database. The api serves the commands and
//! publishes, the worker runs the tenant's only consumer and serves nothing but its probes and `/metrics`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::{
    helpers::{amqp, await_exactly, create_database, eventually, queue, queue_state, remove_database, test_config},
    metrics::Scrape,
    processes::{Launch, admin_token, publish_batches, signal_logged, start_logged_with},
};

#[tokio::test]
async fn an_api_and_a_worker_process_split_the_work_on_one_database() {
    let config = test_config();
    let database = create_database(&config).await;
    let admin = admin_token(&config);
    let client = tenantmq_testkit::bearer_client(&admin).expect("client");
    // One role from the command line, the other from the environment: both ways set it.
    let (api, api_log) = start_logged_with(&config, Launch { role: Some("api"), ..Launch::default() }).await;
    let worker_role = vec![("TENANTMQ_SERVER__ROLE", "worker".to_owned())];
    let (worker, worker_log) = start_logged_with(&config, Launch { env: worker_role, ..Launch::default() }).await;

    for path in ["/tenants", "/docs", "/openapi.json", "/messages"] {
        let response = client.get(format!("{}{path}", worker.base_url)).send().await.expect("sent");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "the worker serves no {path}");
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = client.get(format!("{}{path}", worker.base_url)).send().await.expect("sent");
        assert_eq!(response.status(), StatusCode::OK, "the worker serves {path}");
    }

    // Read-your-writes on the api: it answers 201 only once the projections have the tenant.
    let tenant = api.create_tenant(&admin, &json!({ "name": "split", "workers": 2 })).await;
    let broker = amqp().await;
    eventually(Duration::from_secs(30), "the worker's consumer on the tenant's queue", || async {
        queue_state(&broker, queue(&tenant)).await.filter(|(_, consumers)| *consumers == 1)
    })
    .await;
    assert_eq!(Scrape::at(&worker.base_url).await.tenant("tenantmq_consumer_up", &tenant), Some(1.0));
    assert!(!Scrape::at(&api.base_url).await.mentions(&tenant), "the api runs nothing for the tenant");

    publish_batches(&[&api], &admin, &tenant, 3).await;
    let db = sea_orm::Database::connect(&config.database.url).await.expect("db");
    await_exactly(&db, &tenant, 3000, Duration::from_secs(60)).await;
    assert_eq!(queue_state(&broker, queue(&tenant)).await.map(|(_, consumers)| consumers), Some(1), "still one");

    // A delete through the api waits for the worker to retire the tenant.
    let deleted = client.delete(format!("{}/tenants/{tenant}", api.base_url)).send().await.expect("sent");
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(queue_state(&broker, queue(&tenant)).await, None, "the worker removed the queues");

    for (instance, log) in [(api, api_log), (worker, worker_log)] {
        assert_eq!(signal_logged(instance, "-TERM", Some(&log)).await.code(), Some(0));
    }
    db.close().await.expect("closed");
    remove_database(database).await;
}

/// Deployed with a migration Job (`database.migrate_on_start: false`), an instance must not serve a schema
/// older than its release: a rolling update that started before the Job finished would otherwise put it on
/// tables it does not match. A schema newer than the release (a rollback) it serves: migrations only add.
/// Migrating on start, it serves such a schema too when it has all of the release's migrations.
#[tokio::test]
async fn an_instance_that_does_not_migrate_refuses_a_schema_older_than_its_release() {
    use migration::{MigratorTrait, sea_orm::ConnectionTrait};
    use tenantmq::{
        Application, StartupError,
        store::database::{self, MigrationDirection},
    };
    let mut config = test_config();
    let database = create_database(&config).await;
    database::migrate(&config.database, MigrationDirection::Down).await.expect("the newest migration rolled back");
    config.database.migrate_on_start = false;
    let newest = migration::Migrator::migrations().last().map(|m| m.name().to_owned()).expect("a migration");
    match Application::build(config.clone()).await {
        Err(StartupError::PendingMigrations(pending)) => {
            assert_eq!(pending, std::slice::from_ref(&newest));
            let message = StartupError::PendingMigrations(pending).to_string();
            assert!(message.contains(&newest) && message.contains("tenantmq migrate up"), "{message}");
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("served a schema without {newest}"),
    }

    database::migrate(&config.database, MigrationDirection::Up).await.expect("migrated");
    let db = sea_orm::Database::connect(&config.database.url).await.expect("db");
    db.execute_unprepared(
        "INSERT INTO seaql_migrations (version, applied_at) VALUES ('m29991231_000001_from_a_newer_release', 0)",
    )
    .await
    .expect("a newer release's migration recorded");
    let status = database::migration_status(&db).await.expect("the status");
    assert!(status.contains(&("m29991231_000001_from_a_newer_release (a newer release's)".to_owned(), true)));
    db.close().await.expect("closed");
    let mut app = tenantmq_testkit::RunningApp::start(config.clone()).await.expect("serves a newer schema");
    app.stop().await.expect("stopped");
    // Migrating on start, it has nothing to do: it serves too (it stopped on the migrator's "file is missing").
    config.database.migrate_on_start = true;
    let mut app = tenantmq_testkit::RunningApp::start(config.clone()).await.expect("migrates nothing, serves");
    app.stop().await.expect("stopped");
    // A schema that lacks one of its own besides, it neither migrates nor serves, and says why.
    database::migrate(&config.database, MigrationDirection::Down).await.expect_err("no roll back either");
    let db = sea_orm::Database::connect(&config.database.url).await.expect("db");
    db.execute_unprepared(&format!("DELETE FROM seaql_migrations WHERE version = '{newest}'"))
        .await
        .expect("forgotten");
    db.close().await.expect("closed");
    match Application::build(config).await {
        Err(error) => {
            let message = error.to_string();
            assert!(message.contains("newer release") && message.contains(&newest), "{message}");
        }
        Ok(_) => panic!("migrated a schema it does not know"),
    }
    remove_database(database).await;
}
