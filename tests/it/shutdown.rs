//! SIGTERM and kill -9 on the real binary while messages flow: SIGTERM exits 0 within the timeout; either
//! way, after a restart every message is a row, exactly once.

use std::time::Duration;

use serde_json::json;

use crate::{
    dead_letters::{lock_partition, release},
    helpers::{
        await_exactly, create_database, eventually, remove_database, scalar_i64, slow_down_inserts, test_config,
    },
    processes::{admin_token, publish_batches, signal, signal_logged, start, start_logged},
};

#[tokio::test]
async fn sigterm_while_messages_flow_exits_cleanly_and_loses_nothing() {
    stop_mid_flow_then_restart("-TERM").await;
}

#[tokio::test]
async fn kill_9_while_messages_flow_loses_nothing_after_a_restart() {
    stop_mid_flow_then_restart("-KILL").await;
}

async fn stop_mid_flow_then_restart(how: &str) {
    const MESSAGES: i64 = 5000;
    let config = test_config();
    let database = create_database(&config).await;
    let admin = admin_token(&config);
    let first = start(&config).await;
    let tenant = first.create_tenant(&admin, &json!({ "name": "shutdown", "workers": 3 })).await;
    let db = sea_orm::Database::connect(&config.database.url).await.expect("db");
    slow_down_inserts(&db, &tenant, 0.03).await;
    // Writes wait until everything is published, so the stream is surely still flowing when stopped.
    let lock = lock_partition(&config.database.url, &tenant).await;
    publish_batches(&[&first], &admin, &tenant, 5).await;
    release(lock).await;
    let count = format!("SELECT count(*) FROM messages WHERE tenant_id = '{tenant}'");
    eventually(Duration::from_secs(30), "the first rows", || async {
        (scalar_i64(&db, &count).await > 100).then_some(())
    })
    .await;

    let status = signal(first, how).await;
    if how == "-TERM" {
        assert_eq!(status.code(), Some(0), "graceful shutdown exits 0");
    }
    assert!(scalar_i64(&db, &count).await < MESSAGES, "stopped while messages were still flowing");

    let second = start(&config).await;
    await_exactly(&db, &tenant, MESSAGES, Duration::from_secs(60)).await;
    assert_eq!(signal(second, "-TERM").await.code(), Some(0));
    db.close().await.expect("closed");
    remove_database(database).await;
}

/// A request that takes the whole shutdown budget (an upload still trickling in) does not leave the consumers
/// none: they stop while the HTTP server drains, and finish their batches in time rather than being aborted.
#[tokio::test]
async fn a_slow_upload_during_shutdown_leaves_the_consumers_their_time_to_stop() {
    use tokio::io::AsyncWriteExt;
    let mut config = test_config();
    config.shutdown_timeout = Duration::from_secs(3);
    config.server.body_read_timeout = Duration::from_secs(60);
    let database = create_database(&config).await;
    let admin = admin_token(&config);
    let (instance, log) = start_logged(&config).await;
    let tenant = instance.create_tenant(&admin, &json!({ "name": "draining", "workers": 3 })).await;
    let db = sea_orm::Database::connect(&config.database.url).await.expect("db");
    slow_down_inserts(&db, &tenant, 0.05).await;
    publish_batches(&[&instance], &admin, &tenant, 2).await;

    let address = instance.base_url.trim_start_matches("http://").to_owned();
    let mut upload = tokio::net::TcpStream::connect(&address).await.expect("connect");
    let head = format!(
        "POST /tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    );
    upload.write_all(head.as_bytes()).await.expect("head");
    let trickling = tokio::spawn(async move {
        while upload.write_all(b" ").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let status = signal_logged(instance, "-TERM", Some(&log)).await;
    trickling.abort();
    assert_eq!(status.code(), Some(0));
    let written = log.read();
    assert!(!written.contains("did not stop before the shutdown deadline"), "{written}");
    db.close().await.expect("closed");
    remove_database(database).await;
}
