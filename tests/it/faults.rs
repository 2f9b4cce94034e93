//! Real faults, each ending with the exact row count: the broker's connections cut under load, the broker
//! down (publishing answers 503, readiness too), the database down under load. Each test breaks only its own
//! connections, through a proxy of its own (see `proxy.rs`).

use std::time::Duration;

use lapin::{BasicProperties, options::ConfirmSelectOptions};
use reqwest::StatusCode;
use sea_orm::sqlx::{Connection, Executor, PgConnection};
use serde_json::json;
use uuid::Uuid;

use crate::{
    helpers::{
        TestApp, amqp, await_consumer, await_exactly, eventually, publish_raw, queue, queue_state, scalar_i64,
        test_config,
    },
    metrics::Scrape,
    proxy::Proxy,
};

/// Publishes `count` JSON messages with UUID ids straight to the tenant's queue, on the test's own
/// connection (not through the proxy), with confirms.
async fn publish_directly(broker: &lapin::Connection, tenant: &str, count: usize) {
    let channel = broker.create_channel().await.expect("channel");
    channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    for i in 0..count {
        let properties = BasicProperties::default().with_message_id(Uuid::now_v7().to_string().into());
        publish_raw(&channel, tenant, json!({ "i": i }).to_string().as_bytes(), properties).await;
    }
}

async fn readiness(app: &TestApp) -> StatusCode {
    app.get("/readyz").await.status()
}

#[tokio::test]
async fn broker_connections_cut_under_load_come_back_by_themselves_and_every_message_is_a_row_once() {
    const MESSAGES: usize = 3000;
    let mut config = test_config();
    let (proxy, through_proxy) = Proxy::in_front_of(&config.rabbitmq.url).await;
    config.rabbitmq.url = through_proxy;
    config.consumer.batch_size = 20;
    let app = TestApp::spawn_with(config).await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("cut").await;
    await_consumer(&broker, &tenant).await;

    let publishing = tokio::spawn({
        let tenant = tenant.clone();
        async move { publish_directly(&amqp().await, &tenant, MESSAGES).await }
    });
    for round in 1..=3 {
        eventually(Duration::from_secs(60), "rows to flow", || async {
            (app.message_count(&tenant).await >= i64::try_from(round * MESSAGES / 5).unwrap_or(0)).then_some(())
        })
        .await;
        proxy.cut();
    }
    publishing.await.expect("publisher");
    await_exactly(&app.db, &tenant, i64::try_from(MESSAGES).expect("count"), Duration::from_secs(60)).await;
    await_consumer(&broker, &tenant).await;
    assert_eq!(readiness(&app).await, StatusCode::OK);
    app.stop().await;
}

/// A service whose broker connections go through a proxy (and whose stop takes 2 s at most), with one tenant
/// consuming; its id.
async fn consuming_through_a_proxy(name: &str) -> (TestApp, Proxy, String) {
    let mut config = test_config();
    let (proxy, through_proxy) = Proxy::in_front_of(&config.rabbitmq.url).await;
    config.rabbitmq.url = through_proxy;
    config.shutdown_timeout = Duration::from_secs(2);
    let app = TestApp::spawn_with(config).await;
    let tenant = app.create_tenant_id(name).await;
    await_consumer(&amqp().await, &tenant).await;
    (app, proxy, tenant)
}

/// A broker that stops answering (its connections open, silent) cannot hold a graceful stop forever: the
/// service gives up on the close handshake once `shutdown_timeout` has passed.
#[tokio::test]
async fn a_graceful_stop_ends_when_the_broker_has_stopped_answering() {
    let (app, proxy, _) = consuming_through_a_proxy("silent broker").await;

    proxy.stall();
    let stopped = tokio::time::timeout(Duration::from_secs(30), app.stop()).await;
    assert!(stopped.is_ok(), "the service did not stop within 30 s of a stop with the broker silent");
    drop(proxy);
}

/// With the broker silent, a publish for a tenant with a backlog cap cannot hang on reading its queue's
/// depth: it gives up on the depth and answers 503 within its publish timeout, as one without a cap does, and
/// so does a second tenant's publish waiting for the same inspection channel.
#[tokio::test]
async fn with_the_broker_silent_publishes_of_capped_tenants_answer_503_in_time() {
    let mut config = test_config();
    let (proxy, through_proxy) = Proxy::in_front_of(&config.rabbitmq.url).await;
    config.rabbitmq.url = through_proxy;
    config.rabbitmq.publish_timeout = Duration::from_secs(2);
    config.shutdown_timeout = Duration::from_secs(2);
    let app = TestApp::spawn_with(config).await;
    let broker = amqp().await;
    let mut publishes = Vec::new();
    for name in ["capped-1", "capped-2"] {
        let tenant = app.create_tenant_id(name).await;
        await_consumer(&broker, &tenant).await;
        let limits =
            app.put_json(&format!("/tenants/{tenant}/config/limits"), &json!({ "max_queue_depth": 100 })).await;
        assert_eq!(limits.status(), StatusCode::OK);
        publishes.push(format!("/tenants/{tenant}/messages"));
    }

    proxy.stall();
    let started = std::time::Instant::now();
    let answers = publishes.iter().map(|path| app.post_json(path, &json!({ "payload": { "stalled": true } })));
    let answers = tokio::time::timeout(Duration::from_secs(15), futures_util::future::join_all(answers)).await;
    let answers = answers.expect("publishes hung on the silent broker");
    for answer in answers {
        crate::helpers::assert_problem(answer, StatusCode::SERVICE_UNAVAILABLE, None).await;
    }
    // Seconds to spare for a busy machine: what matters is an answer long before the idle timeout (60 s).
    assert!(started.elapsed() < Duration::from_secs(12), "took {:?}", started.elapsed());
    app.stop().await;
    drop(proxy);
}

/// With the broker silent, every request that asks it something answers in time: a tenant's details with
/// its queue counts unknown, dead-letter reads and purges with 503; none waits until the connection's idle
/// timeout drops it unanswered.
#[tokio::test]
async fn with_the_broker_silent_requests_that_ask_it_answer_in_time() {
    let (app, proxy, tenant) = consuming_through_a_proxy("asks a silent broker").await;

    proxy.stall();
    let started = std::time::Instant::now();
    let (details, dead_letters, purge) = tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::future::join3(
            app.get(&format!("/tenants/{tenant}")),
            app.get(&format!("/tenants/{tenant}/dlq")),
            app.delete(&format!("/tenants/{tenant}/dlq")),
        ),
    )
    .await
    .expect("requests hung on the silent broker");
    assert_eq!(details.status(), StatusCode::OK);
    let details: serde_json::Value = details.json().await.expect("tenant JSON");
    assert_eq!(details["runtime"]["queue_depth"], serde_json::Value::Null, "{details}");
    crate::helpers::assert_problem(dead_letters, StatusCode::SERVICE_UNAVAILABLE, None).await;
    crate::helpers::assert_problem(purge, StatusCode::SERVICE_UNAVAILABLE, None).await;
    // The read gives up on connecting after 10 s; the purge waits for it (a tenant's DLQ operations take
    // turns), then for its channel, 5 s: 15 s, and seconds to spare for a busy machine.
    assert!(started.elapsed() < Duration::from_secs(25), "took {:?}", started.elapsed());
    app.stop().await;
    drop(proxy);
}

#[tokio::test]
async fn while_the_broker_is_down_publishing_answers_503_readiness_fails_and_both_recover() {
    let mut config = test_config();
    let (proxy, through_proxy) = Proxy::in_front_of(&config.rabbitmq.url).await;
    config.rabbitmq.url = through_proxy;
    config.rabbitmq.publish_timeout = Duration::from_secs(2);
    let app = TestApp::spawn_with(config).await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("down").await;
    await_consumer(&broker, &tenant).await;
    let publish = format!("/tenants/{tenant}/messages");

    proxy.take_down();
    eventually(Duration::from_secs(20), "readiness to fail", || async {
        (readiness(&app).await == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    let refused = app.post_json(&publish, &json!({ "payload": { "lost": false } })).await;
    let problem = crate::helpers::assert_problem(refused, StatusCode::SERVICE_UNAVAILABLE, None).await;
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("broker")), "{problem}");
    eventually(Duration::from_secs(20), "the consumer to be gone", || async {
        queue_state(&broker, queue(&tenant)).await.filter(|(_, consumers)| *consumers == 0)
    })
    .await;

    proxy.restore();
    eventually(Duration::from_secs(60), "readiness to recover", || async {
        (readiness(&app).await == StatusCode::OK).then_some(())
    })
    .await;
    await_consumer(&broker, &tenant).await;
    let accepted = app.post_json(&publish, &json!({ "payload": { "after": true } })).await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    app.await_messages(&tenant, 1).await;
    app.stop().await;
}

/// A service whose broker connections go through a proxy that can block publishers as a RabbitMQ memory or
/// disk alarm does (see `proxy.rs`).
async fn spawn_behind_an_alarm() -> (TestApp, Proxy) {
    let mut config = test_config();
    let (proxy, through_proxy) = Proxy::in_front_of_broker(&config.rabbitmq.url).await;
    config.rabbitmq.url = through_proxy;
    config.rabbitmq.publish_timeout = Duration::from_secs(2);
    (TestApp::spawn_with(config).await, proxy)
}

async fn one_worker_tenant(app: &TestApp, name: &str) -> String {
    let created = app.create_tenant_from(&json!({ "name": name, "workers": 1 })).await;
    created["id"].as_str().expect("id").to_owned()
}

async fn blocked_reported(app: &TestApp, blocked: bool) {
    let expected = Some(if blocked { 1.0 } else { 0.0 });
    eventually(Duration::from_secs(10), &format!("tenantmq_broker_blocked {expected:?}"), || async {
        (Scrape::of(app).await.value("tenantmq_broker_blocked", &[]) == expected).then_some(())
    })
    .await;
}

/// While RabbitMQ blocks publishers, a publish answers 503 at once and sends nothing. It used to wait for
/// the publish timeout with its message in the client's buffer, and the message reached the queue when the
/// alarm ended, long after the client had been told to retry: a retry without an `id` made a second row.
/// Only the first publish of an alarm still does so: the broker blocks a connection, and says so, when it
/// publishes. What does not publish goes on meanwhile: publishes used to share their connection with DLQ
/// reads and deletes, and RabbitMQ stops reading a blocked connection, so those hung too.
#[tokio::test]
async fn while_the_broker_blocks_publishers_a_refused_publish_never_arrives_and_reads_and_deletes_go_on() {
    let (app, proxy) = spawn_behind_an_alarm().await;
    let broker = amqp().await;
    // One worker: rows are committed in the order the queue delivers them.
    let tenant = one_worker_tenant(&app, "blocked").await;
    let deleted = app.create_tenant_id("deleted-while-blocked").await;
    await_consumer(&broker, &tenant).await;
    let publish = format!("/tenants/{tenant}/messages");
    assert_eq!(app.post_json(&publish, &json!({ "payload": 1 })).await.status(), StatusCode::ACCEPTED);
    app.await_messages(&tenant, 1).await;

    proxy.block_publishing(true);
    let first = app.post_json(&publish, &json!({ "payload": 2 })).await;
    let problem = crate::helpers::assert_problem(first, StatusCode::SERVICE_UNAVAILABLE, None).await;
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("did not confirm")), "{problem}");
    blocked_reported(&app, true).await;
    let refused = app.post_json(&publish, &json!({ "payload": 3 })).await;
    let problem = crate::helpers::assert_problem(refused, StatusCode::SERVICE_UNAVAILABLE, None).await;
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("blocking publishers")), "{problem}");
    assert_eq!(app.get(&format!("/tenants/{tenant}/dlq")).await.status(), StatusCode::OK);
    assert_eq!(app.delete(&format!("/tenants/{deleted}")).await.status(), StatusCode::NO_CONTENT);

    proxy.block_publishing(false);
    blocked_reported(&app, false).await;
    assert_eq!(app.post_json(&publish, &json!({ "payload": 4 })).await.status(), StatusCode::ACCEPTED);
    let with_payload =
        |payload: i32| format!("SELECT count(*) FROM messages WHERE tenant_id = '{tenant}' AND payload = '{payload}'");
    eventually(Duration::from_secs(20), "the publish after the block as a row", || async {
        (app.scalar_i64(&with_payload(4)).await == 1).then_some(())
    })
    .await;
    assert_eq!(app.scalar_i64(&with_payload(2)).await, 1, "the publish that timed out reached the queue after all");
    assert_eq!(app.scalar_i64(&with_payload(3)).await, 0, "the refused message reached the queue after the block");
    assert_eq!(app.message_count(&tenant).await, 3);
    app.stop().await;
}

/// A failed message's copy for the DLQ, published while RabbitMQ blocks publishers, waits without holding
/// back its tenant's other messages or any other tenant. It used to go out on the consumers' connection,
/// which the broker then stopped reading, so no tenant's acks got through and no backlog drained (the very
/// backlog a memory alarm wants drained) until the alarm ended.
#[tokio::test]
async fn a_dead_letter_published_while_the_broker_blocks_publishers_holds_back_nothing_else() {
    let (app, proxy) = spawn_behind_an_alarm().await;
    let broker = amqp().await;
    // One worker: the copy must not hold it up either.
    let failing = one_worker_tenant(&app, "failing-while-blocked").await;
    let draining = app.create_tenant_id("draining-while-blocked").await;
    for tenant in [&failing, &draining] {
        await_consumer(&broker, tenant).await;
    }

    proxy.block_publishing(true);
    let channel = broker.create_channel().await.expect("channel");
    channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let properties = BasicProperties::default().with_message_id(Uuid::now_v7().to_string().into());
    publish_raw(&channel, &failing, b"not JSON", properties).await;
    let failed = [("tenant_id", failing.as_str()), ("reason", "permanent")];
    eventually(Duration::from_secs(20), "the message that is not JSON to fail", || async {
        (Scrape::of(&app).await.value("tenantmq_messages_failed_total", &failed) == Some(1.0)).then_some(())
    })
    .await;
    // Over three prefetches' worth (3 workers, batches of 100) for the other tenant, and a prefetch's worth
    // (1 worker) behind the failed message: they drain only while the consumers' connection goes on acking.
    publish_directly(&broker, &draining, 1000).await;
    publish_directly(&broker, &failing, 200).await;
    await_exactly(&app.db, &draining, 1000, Duration::from_secs(60)).await;
    await_exactly(&app.db, &failing, 200, Duration::from_secs(60)).await;
    let dead_letters = || async { queue_state(&broker, crate::helpers::dlq(&failing)).await };
    assert_eq!(dead_letters().await, Some((0, 0)), "published while blocked");

    proxy.block_publishing(false);
    eventually(Duration::from_secs(20), "the dead letter to arrive once the block ends", || async {
        (dead_letters().await == Some((1, 0))).then_some(())
    })
    .await;

    // A replay while publishers are blocked moves nothing, and says why (once an API publish has been told
    // of the block).
    proxy.block_publishing(true);
    let first = app.post_json(&format!("/tenants/{draining}/messages"), &json!({ "payload": "first" })).await;
    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
    blocked_reported(&app, true).await;
    let replay = app.post_json(&format!("/tenants/{failing}/dlq/replay"), &json!({})).await;
    let problem = crate::helpers::assert_problem(replay, StatusCode::SERVICE_UNAVAILABLE, None).await;
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("blocking publishers")), "{problem}");
    assert_eq!(dead_letters().await, Some((1, 0)));
    proxy.block_publishing(false);
    app.stop().await;
}

/// A database that only reads (a standby after a failover, a disk-full read-only mode) is unavailable, not a
/// reason to retry: messages are held back without counting attempts, never dead-lettered nor redelivered,
/// and written once it takes writes again.
#[tokio::test]
async fn a_read_only_database_holds_messages_back_instead_of_retrying_them() {
    let mut config = test_config();
    config.consumer.retry_delay = Duration::from_millis(50);
    config.max_retries = 1;
    let app = TestApp::spawn_with(config).await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("read-only").await;
    await_consumer(&broker, &tenant).await;
    // One session of the test's own: it outlives the others and can write after the default changes.
    let mut admin = PgConnection::connect(&app.config.database.url).await.expect("admin session");
    let mut run = async |sql: &str| {
        admin.execute(sea_orm::sqlx::AssertSqlSafe(sql.to_owned())).await.expect(sql);
    };
    let database = app.config.database.url.rsplit('/').next().and_then(|name| name.split('?').next()).expect("a name");
    // New sessions only read; ending the service's sessions makes its pools open new ones.
    let sessions = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                    WHERE datname = current_database() AND pid <> pg_backend_pid()";
    run(&format!("ALTER DATABASE \"{database}\" SET default_transaction_read_only = on")).await;
    run(sessions).await;

    for n in 0..5 {
        let published = app.post_json(&format!("/tenants/{tenant}/messages"), &json!({ "payload": { "n": n } })).await;
        assert_eq!(published.status(), StatusCode::ACCEPTED);
    }
    let labels = [("tenant_id", tenant.as_str()), ("reason", "transient")];
    let failed = async || Scrape::of(&app).await.value("tenantmq_messages_failed_total", &labels);
    eventually(Duration::from_secs(30), "messages held back", || async { failed().await.filter(|n| *n >= 1.0) }).await;
    // Every try is a write the database rolls back: eight more tries of at most five messages.
    let rollbacks = "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()";
    let before = app.scalar_i64(rollbacks).await;
    eventually(Duration::from_secs(30), "writes refused again and again", || async {
        (app.scalar_i64(rollbacks).await >= before + 8).then_some(())
    })
    .await;
    // A failed attempt per message held, not one per try: the share of messages that fail must stay a share.
    let held = failed().await.expect("counted");
    assert!((1.0..=5.0).contains(&held), "{held} failures counted for 5 messages");
    let scrape = Scrape::of(&app).await;
    // The workers holding them are busy, also while they pause between tries (they read 0 then).
    assert!(scrape.tenant("tenantmq_workers_busy", &tenant) >= Some(1.0), "busy while holding messages");
    assert_eq!(scrape.tenant("tenantmq_messages_retried_total", &tenant), Some(0.0), "held back, not retried");
    assert_eq!(scrape.tenant("tenantmq_messages_dead_lettered_total", &tenant), Some(0.0));

    run(&format!("ALTER DATABASE \"{database}\" RESET default_transaction_read_only")).await;
    run(sessions).await;
    await_exactly(&app.db, &tenant, 5, Duration::from_secs(60)).await;
    // Held by their workers, not handed back to the broker at each attempt: a broker counts every return, and a
    // quorum queue dead-letters a message returned more often than its delivery limit.
    let scrape = Scrape::of(&app).await;
    assert_eq!(scrape.tenant("tenantmq_messages_consumed_total", &tenant), Some(5.0), "each delivered once");
    app.stop().await;
}

#[tokio::test]
async fn the_database_down_under_load_holds_messages_back_and_every_message_is_a_row_once_it_returns() {
    const MESSAGES: usize = 3000;
    let mut config = test_config();
    let direct_url = config.database.url.clone();
    let (proxy, through_proxy) = Proxy::in_front_of(&config.database.url).await;
    config.database.url = through_proxy;
    config.consumer.batch_size = 20;
    let app = TestApp::spawn_with(config).await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("db-down").await;
    await_consumer(&broker, &tenant).await;
    let direct = sea_orm::Database::connect(&direct_url).await.expect("direct connection");
    let count = format!("SELECT count(*) FROM messages WHERE tenant_id = '{tenant}'");

    let publishing = tokio::spawn({
        let tenant = tenant.clone();
        async move { publish_directly(&amqp().await, &tenant, MESSAGES).await }
    });
    eventually(Duration::from_secs(60), "rows to flow", || async {
        (scalar_i64(&direct, &count).await >= i64::try_from(MESSAGES / 5).unwrap_or(0)).then_some(())
    })
    .await;
    proxy.take_down();
    eventually(Duration::from_secs(20), "readiness to fail", || async {
        (readiness(&app).await == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    publishing.await.expect("publisher");
    // A statement sent just before the cut may still commit on the server: take the count once no statement
    // of the service's runs any more.
    let running = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                   AND backend_type = 'client backend' AND state <> 'idle' AND pid <> pg_backend_pid()";
    eventually(Duration::from_secs(20), "the service's last statements to end", || async {
        (scalar_i64(&direct, running).await == 0).then_some(())
    })
    .await;
    let stalled = scalar_i64(&direct, &count).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // the outage lasts a while: workers back off meanwhile
    assert_eq!(scalar_i64(&direct, &count).await, stalled, "nothing is written while the database is unreachable");

    proxy.restore();
    await_exactly(&direct, &tenant, i64::try_from(MESSAGES).expect("count"), Duration::from_secs(90)).await;
    eventually(Duration::from_secs(30), "readiness to recover", || async {
        (readiness(&app).await == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(queue_state(&broker, crate::helpers::dlq(&tenant)).await.map(|(ready, _)| ready), Some(0));
    direct.close().await.expect("closed");
    app.stop().await;
}

/// While the broker is away no consumer runs, and none starts: the workers a tenant is meant to have still
/// follow a change, where the metric kept the number from before the outage.
#[tokio::test]
async fn a_tenants_desired_workers_follow_a_change_while_its_consumer_cannot_run() {
    let mut config = test_config();
    let (proxy, through_proxy) = Proxy::in_front_of(&config.rabbitmq.url).await;
    config.rabbitmq.url = through_proxy;
    let app = TestApp::spawn_with(config).await;
    let tenant = app.create_tenant_id("resized-offline").await;
    await_consumer(&amqp().await, &tenant).await;
    let desired = async || Scrape::of(&app).await.tenant("tenantmq_workers_desired", &tenant);
    assert_eq!(desired().await, Some(3.0));

    proxy.take_down();
    eventually(Duration::from_secs(20), "the consumer to fail", || async {
        (app.runtime_of(&tenant).await["consumer_state"] == "restarting").then_some(())
    })
    .await;
    let resized = app.put_json(&format!("/tenants/{tenant}/config/concurrency"), &json!({ "workers": 7 })).await;
    assert_eq!(resized.status(), StatusCode::OK);
    eventually(Duration::from_secs(20), "the desired workers to follow", || async {
        (desired().await == Some(7.0)).then_some(())
    })
    .await;
    proxy.restore();
    app.stop().await;
}

/// A lag measured before the database went away is not reported as if it still held: the alert on it kept
/// firing through an outage, whatever became of the transaction. The series goes while the horizon cannot be
/// read, and comes back with the database.
#[tokio::test]
async fn the_read_visibility_lag_is_not_reported_while_the_database_is_unreachable() {
    let mut config = test_config();
    let direct_url = config.database.url.clone();
    let (proxy, through_proxy) = Proxy::in_front_of(&config.database.url).await;
    config.database.url = through_proxy;
    config.metrics.visibility_poll_interval = Duration::from_millis(200);
    let app = TestApp::spawn_with(config).await;
    let mut open = PgConnection::connect(&direct_url).await.expect("a session of the test's own");
    open.execute("BEGIN; SELECT pg_current_xact_id();").await.expect("a transaction left open");
    let lag = async || Scrape::of(&app).await.value("tenantmq_read_visibility_lag_seconds", &[]);
    eventually(Duration::from_secs(30), "the lag to show", || async { (lag().await >= Some(1.0)).then_some(()) }).await;

    proxy.take_down();
    eventually(Duration::from_secs(30), "the lag to go", || async { lag().await.is_none().then_some(()) }).await;
    proxy.restore();
    eventually(Duration::from_secs(30), "the lag back", || async { lag().await.is_some().then_some(()) }).await;
    open.execute("ROLLBACK").await.expect("rolled back");
    open.close().await.expect("closed");
    app.stop().await;
}

/// One of two instances loses the database, the other keeps it. The cut-off one's workers keep what they
/// cannot write, so its share of the messages waited for the whole outage; past
/// `consumer.database_outage_grace` it now stops its consumers and hands that share back, and the other
/// instance writes every message while the outage lasts. Its consumers come back with the database.
#[tokio::test]
async fn an_instance_cut_off_from_the_database_hands_its_messages_to_one_that_is_not() {
    cut_off_instance_hands_back(Proxy::take_down).await;
}

/// The same when the database stops answering instead of refusing (a network partition): the read of the
/// desired runtime and the writes in flight would each wait until the kernel gives up on the connection.
#[tokio::test]
async fn an_instance_whose_database_stops_answering_hands_its_messages_to_one_that_is_not() {
    cut_off_instance_hands_back(Proxy::stall).await;
}

async fn cut_off_instance_hands_back(fault: fn(&Proxy)) {
    const MESSAGES: usize = 200;
    let app = TestApp::spawn_with(quick_to_pause()).await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("cut-off").await;
    let (proxy, through_proxy) = Proxy::in_front_of(&app.config.database.url).await;
    let mut cut_off_config = app.config.clone();
    cut_off_config.database.url = through_proxy;
    let mut cut_off = tenantmq_testkit::RunningApp::start(cut_off_config).await.expect("a second instance");
    await_consumers(&broker, &tenant, 2).await;

    fault(&proxy);
    publish_directly(&broker, &tenant, MESSAGES).await;
    await_exactly(&app.db, &tenant, i64::try_from(MESSAGES).expect("count"), Duration::from_secs(60)).await;
    await_consumers(&broker, &tenant, 1).await;
    let paused = Scrape::of(&cut_off).await.value("tenantmq_reconciler_actions_total", &[("action", "pause")]);
    assert_eq!(paused, Some(1.0));

    proxy.restore();
    await_consumers(&broker, &tenant, 2).await;
    cut_off.stop().await.expect("the second instance stopped");
    app.stop().await;
}

/// An instance alone on its queues keeps what it holds through an outage of any length: handing it back
/// would only count a delivery against each message, with nobody else to take it.
#[tokio::test]
async fn an_instance_alone_on_its_queues_pauses_nothing_when_it_loses_the_database() {
    let mut config = quick_to_pause();
    let (proxy, through_proxy) = Proxy::in_front_of(&config.database.url).await;
    config.database.url = through_proxy;
    let app = TestApp::spawn_with(config).await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("alone").await;
    await_consumers(&broker, &tenant, 1).await;

    proxy.take_down();
    // Passes that could not reach the database, over several times the grace.
    eventually(Duration::from_secs(30), "ten failed reads of the desired runtime", || async {
        let failed = Scrape::of(&app).await.value("tenantmq_reconciler_errors_total", &[("kind", "desired_state")]);
        failed.filter(|failed| *failed >= 10.0)
    })
    .await;
    let paused = Scrape::of(&app).await.value("tenantmq_reconciler_actions_total", &[("action", "pause")]);
    assert_eq!(paused, Some(0.0));
    assert_eq!(queue_state(&broker, queue(&tenant)).await.map(|(_, consumers)| consumers), Some(1));
    proxy.restore();
    app.stop().await;
}

/// An instance found alone on its queue when it lost the database is looked at again: another instance that
/// starts during the outage (a rolling restart, a scale-out) gets the messages it holds and the ones the broker
/// would go on sending it. Before, each consumer was looked at once per outage, and its share of the messages
/// waited for the database to come back.
#[tokio::test]
async fn an_instance_that_lost_the_database_alone_hands_back_once_another_instance_comes() {
    const MESSAGES: usize = 200;
    let mut config = quick_to_pause();
    let direct = config.clone();
    let (proxy, through_proxy) = Proxy::in_front_of(&config.database.url).await;
    config.database.url = through_proxy;
    let cut_off = TestApp::spawn_with(config).await;
    let broker = amqp().await;
    let tenant = cut_off.create_tenant_id("alone-at-first").await;
    await_consumers(&broker, &tenant, 1).await;

    proxy.take_down();
    // Passes that could not reach the database (a pass each 200 ms at most), well past the grace (1 s): the
    // consumer was looked at, alone.
    eventually(Duration::from_secs(30), "fifteen failed reads of the desired runtime", || async {
        let failed = Scrape::of(&cut_off).await.value("tenantmq_reconciler_errors_total", &[("kind", "desired_state")]);
        failed.filter(|failed| *failed >= 15.0)
    })
    .await;
    let mut other = tenantmq_testkit::RunningApp::start(direct).await.expect("another instance");
    publish_directly(&broker, &tenant, MESSAGES).await;
    await_exactly(&other.db, &tenant, i64::try_from(MESSAGES).expect("count"), Duration::from_secs(60)).await;
    let paused = Scrape::of(&cut_off).await.value("tenantmq_reconciler_actions_total", &[("action", "pause")]);
    assert_eq!(paused, Some(1.0));

    proxy.restore();
    await_consumers(&broker, &tenant, 2).await;
    other.stop().await.expect("the other instance stopped");
    cut_off.stop().await;
}

/// A database that answers, only slowly (a lock on `tenants` held past the grace: an `ALTER TABLE`, a
/// `VACUUM FULL`), is not an outage: the read of the desired runtime is cancelled by the server and tried
/// again, and no consumer stops, while the messages go on being written (they do not touch `tenants`).
#[tokio::test]
async fn a_lock_on_the_tenants_table_pauses_no_consumer() {
    const MESSAGES: usize = 100;
    let app = TestApp::spawn_with(quick_to_pause()).await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("locked-out").await;
    let mut second = tenantmq_testkit::RunningApp::start(app.config.clone()).await.expect("a second instance");
    await_consumers(&broker, &tenant, 2).await;

    let lock = crate::dead_letters::hold_in_transaction(
        &app.config.database.url,
        "LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE",
    )
    .await;
    publish_directly(&broker, &tenant, MESSAGES).await;
    await_exactly(&app.db, &tenant, i64::try_from(MESSAGES).expect("count"), Duration::from_secs(30)).await;
    // Two failed reads of the desired runtime (the server cancels each after 5 s) at least a grace apart.
    eventually(Duration::from_secs(30), "two reads of the desired runtime to fail", || async {
        let failed = Scrape::of(&second).await.value("tenantmq_reconciler_errors_total", &[("kind", "desired_state")]);
        failed.filter(|failed| *failed >= 2.0)
    })
    .await;
    for instance in [&*app, &second] {
        let paused = Scrape::of(instance).await.value("tenantmq_reconciler_actions_total", &[("action", "pause")]);
        assert_eq!(paused, Some(0.0), "a consumer paused");
    }
    crate::dead_letters::release(lock).await;
    second.stop().await.expect("the second instance stopped");
    app.stop().await;
}

/// Two instances started from this share their queues; one that loses the database pauses within a second.
fn quick_to_pause() -> tenantmq::config::Config {
    let mut config = test_config();
    config.consumer.database_outage_grace = Duration::from_secs(1);
    config.consumer.resync_interval = Duration::from_millis(200);
    config
}

async fn await_consumers(broker: &lapin::Connection, tenant: &str, expected: u32) {
    eventually(Duration::from_secs(60), &format!("{expected} consumers"), || async {
        queue_state(broker, queue(tenant)).await.filter(|(_, consumers)| *consumers == expected)
    })
    .await;
}

/// The reply to an append's COMMIT lost after the database made it durable: the service finds its events in
/// the log and answers the command as done. Told that it failed, a client would send it again, and a create
/// without an id makes a new tenant each time.
#[tokio::test]
async fn a_create_whose_commit_reply_is_lost_is_answered_as_done_and_recorded_once() {
    let mut config = test_config();
    let (proxy, through_proxy) = Proxy::in_front_of_database(&config.database.url).await;
    config.database.url = through_proxy;
    let app = TestApp::spawn_with(config).await;
    proxy.lose_the_reply_to_the_next_append();
    let response = app.post_json("/tenants", &json!({ "name": "recorded-once", "workers": 1 })).await;
    assert_eq!(proxy.lost_commit_replies(), 1, "the reply to the create's COMMIT was lost");
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: serde_json::Value = response.json().await.expect("the tenant");
    let id = created["id"].as_str().expect("id");
    assert_eq!(app.scalar_i64("SELECT count(*) FROM events").await, 1, "one event, and no other tenant");
    assert_eq!(app.scalar_i64(&format!("SELECT count(*) FROM events WHERE stream_id = '{id}'")).await, 1);
    // The service goes on from the event it was not told of.
    let changed = app.put_json(&format!("/tenants/{id}/config/concurrency"), &json!({ "workers": 2 })).await;
    assert_eq!(changed.status(), StatusCode::OK);
    app.stop().await;
}

/// An instance frozen (or cut off) between an append's insert and its COMMIT leaves a transaction open on the
/// server, holding the event log's append lock: every instance's commands waited out their lock wait and
/// answered 503 until TCP gave up on the connection, hours later. PostgreSQL now ends a session of the service
/// idle in a transaction for `database.idle_in_transaction_timeout`, and the commands go on.
#[tokio::test]
async fn an_append_frozen_before_its_commit_does_not_hold_up_the_other_commands() {
    let mut config = test_config();
    config.database.idle_in_transaction_timeout = Some(Duration::from_secs(1));
    let (proxy, through_proxy) = Proxy::in_front_of_database(&config.database.url).await;
    config.database.url = through_proxy;
    let app = TestApp::spawn_with(config).await;
    proxy.freeze_the_next_append();
    let frozen = app.post_json("/tenants", &json!({ "name": "frozen" }));
    let next = async {
        eventually(Duration::from_secs(30), "an append frozen before its COMMIT", || async {
            (proxy.frozen_appends() == 1).then_some(())
        })
        .await;
        app.post_json("/tenants", &json!({ "name": "next" })).await
    };
    let (frozen, next) = tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(frozen, next) })
        .await
        .expect("both creates answered");
    assert_eq!(next.status(), StatusCode::CREATED, "{:?}", next.text().await);
    // The frozen create was never committed: it is not in the log, whatever its answer.
    assert_ne!(frozen.status(), StatusCode::CREATED);
    let named = |name: &str| format!("SELECT count(*) FROM events WHERE data->>'name' = '{name}'");
    assert_eq!(app.scalar_i64(&named("frozen")).await, 0);
    assert_eq!(app.scalar_i64(&named("next")).await, 1);
    app.stop().await;
}

/// A database host that takes the connection and never answers (a firewall that drops packets, a frozen
/// server) held `serve` and `migrate` at their first step, the look for the database, until the kernel gave
/// up on the connection, minutes later: `database.connect_timeout` bounded only the pool's connections.
#[tokio::test]
async fn the_first_look_for_the_database_gives_up_after_the_connect_timeout() {
    let config = test_config();
    let (proxy, through_proxy) = Proxy::in_front_of_database(&config.database.url).await;
    proxy.stall();
    let look = tenantmq::store::database::create_database_if_missing(&through_proxy, Duration::from_secs(1));
    let outcome = tokio::time::timeout(Duration::from_secs(30), look).await.expect("given up within the timeout");
    let error = outcome.expect_err("no database to be had");
    assert!(error.to_string().contains("database.connect_timeout"), "{error}");
}
