//! Retries and dead letters against the real broker and database: permanent failures go to the DLQ at once
//! with their reason, transient ones (an insert stuck behind a lock past the statement timeout) are retried
//! with a delay, and the DLQ API peeks, replays and purges.

use std::time::Duration;

use lapin::BasicProperties;
use reqwest::StatusCode;
use sea_orm::sqlx::{Connection, Executor, PgConnection};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    TestApp, amqp, assert_problem, await_consumer, dlq, eventually, publish_raw, queue_state, retry_queue, test_config,
};
use crate::metrics::Scrape;

async fn dlq_depth(broker: &lapin::Connection, tenant: &str) -> Option<u32> {
    queue_state(broker, dlq(tenant)).await.map(|(ready, _)| ready)
}

pub(crate) async fn await_dlq_depth(broker: &lapin::Connection, tenant: &str, expected: u32) {
    eventually(Duration::from_secs(30), &format!("{expected} dead letters"), || async {
        (dlq_depth(broker, tenant).await == Some(expected)).then_some(())
    })
    .await;
}

async fn peek(app: &TestApp, path: &str) -> Value {
    let response = app.get(path).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("page JSON")
}

/// Holds a SHARE lock on the tenant's partition from a connection of the test's own: reads go on, inserts
/// wait for it (and hit the service's statement timeout) until the lock is released.
pub(crate) async fn lock_partition(database_url: &str, tenant: &str) -> PgConnection {
    let partition = crate::helpers::partition(tenant);
    hold_in_transaction(database_url, &format!("LOCK TABLE {partition} IN SHARE MODE")).await
}

/// Runs `sql` in a transaction left open, so that the locks it took stay held until [`release`].
pub(crate) async fn hold_in_transaction(database_url: &str, sql: &str) -> PgConnection {
    let mut connection = PgConnection::connect(database_url).await.expect("lock connection");
    connection.execute("BEGIN").await.expect("begin");
    connection.execute(sea_orm::sqlx::AssertSqlSafe(sql.to_owned())).await.expect("lock");
    connection
}

pub(crate) async fn release(mut lock: PgConnection) {
    lock.execute("COMMIT").await.expect("commit releases the lock");
    lock.close().await.expect("close");
}

/// A dead letter's JSON body is shown as it was published: a number too large for a double keeps every digit.
#[tokio::test]
async fn a_dead_letters_payload_is_shown_with_every_digit() {
    let app = TestApp::spawn().await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("exact").await;
    await_consumer(&broker, &tenant).await;
    let channel = broker.create_channel().await.expect("channel");
    // JSON, but not storable (`jsonb` refuses U+0000): dead-lettered at once.
    let body = br#"{"n": 12345678901234567890123, "bad": "\u0000"}"#;
    publish_raw(&channel, &tenant, body, BasicProperties::default()).await;
    await_dlq_depth(&broker, &tenant, 1).await;
    let page = app.get(&format!("/tenants/{tenant}/dlq")).await.text().await.expect("text");
    assert!(page.contains("12345678901234567890123"), "{page}");
    app.stop().await;
}

/// A dead letter the client cannot read (a `message-id` that is not UTF-8, from a producer allowed to write to
/// the DLQ, or dead-lettered by RabbitMQ 4's delivery limit on quorum queues after failing its consumer's
/// connection 20 times) fails the connection it is delivered on. DLQ reads used the connection every
/// tenant's deletes and queue inspections use: each read of that DLQ dropped it. They read on a connection of
/// their own now, and a purge, which reads nothing, still empties the DLQ.
#[tokio::test]
async fn a_dead_letter_the_client_cannot_read_fails_only_the_reads_of_its_dlq() {
    let app = TestApp::spawn().await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("unreadable-dead-letter").await;
    await_consumer(&broker, &tenant).await;
    crate::raw_amqp::publish_with_message_id(&app.config.rabbitmq.url, &dlq(&tenant), b"\xff\xfe", b"{}").await;
    let path = format!("/tenants/{tenant}/dlq");
    assert_eq!(app.get(&path).await.status(), StatusCode::SERVICE_UNAVAILABLE);
    let replay = app.post_json(&format!("{path}/replay"), &json!({})).await;
    assert_eq!(replay.status(), StatusCode::SERVICE_UNAVAILABLE);
    // A shared connection that failed is connected again within milliseconds: give it the time to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let scrape = Scrape::of(&app).await;
    assert_eq!(scrape.value("tenantmq_broker_reconnects_total", &[]), Some(0.0), "a shared connection failed");
    let purged = app.delete(&path).await;
    assert_eq!(purged.status(), StatusCode::NO_CONTENT);
    assert_eq!(queue_state(&broker, dlq(&tenant)).await.map(|(ready, _)| ready), Some(0));
    app.stop().await;
}

/// A producer publishing straight to the queue may send a body as large as the broker takes (128 MiB by
/// default). One over `max_payload_bytes` is dead-lettered at once, as the API would answer 413, instead of
/// becoming a row that large; one of exactly the limit is stored.
#[tokio::test]
async fn a_body_over_max_payload_bytes_published_over_amqp_is_dead_lettered() {
    let mut config = test_config();
    config.max_payload_bytes = 1024;
    let app = TestApp::spawn_with(config).await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("over-the-limit").await;
    await_consumer(&broker, &tenant).await;
    let channel = broker.create_channel().await.expect("channel");
    let json_string_of = |bytes: usize| format!("\"{}\"", "x".repeat(bytes - 2));
    publish_raw(&channel, &tenant, json_string_of(1024).as_bytes(), BasicProperties::default()).await;
    publish_raw(&channel, &tenant, json_string_of(1025).as_bytes(), BasicProperties::default()).await;
    app.await_messages(&tenant, 1).await;
    await_dlq_depth(&broker, &tenant, 1).await;
    let page = peek(&app, &format!("/tenants/{tenant}/dlq")).await;
    let reason = page["data"][0]["reason"].as_str().unwrap_or_default();
    assert_eq!(reason, "the body is 1025 bytes, more than max_payload_bytes (1024)", "{page}");
    app.stop().await;
}

#[tokio::test]
async fn messages_that_are_not_json_are_dead_lettered_with_a_reason_and_the_dlq_api_peeks_replays_and_purges() {
    let app = TestApp::spawn().await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("dead-letters").await;
    await_consumer(&broker, &tenant).await;
    let channel = broker.create_channel().await.expect("channel");
    let named = Uuid::now_v7();
    publish_raw(&channel, &tenant, b"not json", BasicProperties::default().with_message_id(named.to_string().into()))
        .await;
    publish_raw(&channel, &tenant, &[0xff, 0xfe], BasicProperties::default()).await;
    publish_raw(&channel, &tenant, b"{\"truncated\": ", BasicProperties::default().with_message_id("x-1".into())).await;
    publish_raw(&channel, &tenant, b"{\"ok\": true}", BasicProperties::default()).await;
    app.await_messages(&tenant, 1).await;
    await_dlq_depth(&broker, &tenant, 3).await;

    let path = format!("/tenants/{tenant}/dlq");
    let page = peek(&app, &path).await;
    let letters = page["data"].as_array().expect("data");
    assert_eq!(letters.len(), 3, "{page}");
    assert_eq!(page["next_cursor"], Value::Null);
    let reasons: Vec<_> = letters.iter().map(|l| l["reason"].as_str().expect("a reason")).collect();
    assert_eq!(reasons, ["body is not JSON", "body is not UTF-8", "body is not JSON"]);
    assert_eq!(letters[0]["id"], named.to_string(), "the producer's id is kept");
    assert_eq!(letters[0]["body"], "not json");
    for letter in letters {
        assert_eq!(letter["attempts"], 1, "{letter}");
        assert!(letter["first_failed_at"].is_string() && letter["dead_lettered_at"].is_string(), "{letter}");
        let id = letter["id"].as_str().expect("every dead letter has an id");
        assert!(Uuid::try_parse(id).is_ok(), "a UUID id is given to messages without one: {id}");
    }

    // Peeking loses nothing, and pages.
    assert_eq!(dlq_depth(&broker, &tenant).await, Some(3));
    let first = peek(&app, &format!("{path}?limit=2")).await;
    assert_eq!(first["data"].as_array().map(Vec::len), Some(2));
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second = peek(&app, &format!("{path}?limit=2&cursor={cursor}")).await;
    assert_eq!(second["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(second["data"][0]["id"], letters[2]["id"]);
    assert_eq!(second["next_cursor"], Value::Null);
    assert_eq!(dlq_depth(&broker, &tenant).await, Some(3));

    // A replay of one selected message sends it through the consumer again: still not JSON, so it is back
    // in the DLQ, with its history started anew.
    let unknown = Uuid::now_v7();
    let replay = app.post_json(&format!("{path}/replay"), &json!({ "ids": [named, unknown] })).await;
    assert_eq!(replay.status(), StatusCode::ACCEPTED);
    let replayed: Value = replay.json().await.expect("json");
    assert_eq!(replayed, json!({ "replayed": 1, "not_found": [unknown], "complete": true }));
    eventually(Duration::from_secs(30), "the replayed message back at the end of the DLQ", || async {
        let page = peek(&app, &path).await;
        (page["data"].as_array().map(Vec::len) == Some(3) && page["data"][2]["id"] == named.to_string()).then_some(page)
    })
    .await;

    assert_problem(
        app.post_json(&format!("{path}/replay"), &json!({ "ids": [] })).await,
        StatusCode::BAD_REQUEST,
        Some("ids"),
    )
    .await;
    assert_problem(app.get(&format!("{path}?cursor=bogus")).await, StatusCode::BAD_REQUEST, Some("cursor")).await;

    assert_eq!(app.delete(&path).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(dlq_depth(&broker, &tenant).await, Some(0));
    assert_eq!(peek(&app, &path).await["data"], json!([]));
    assert_eq!(app.message_count(&tenant).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_transient_failure_is_retried_with_a_delay_and_succeeds_once_the_fault_is_lifted() {
    let mut config = test_config();
    config.database.statement_timeout = Some(Duration::from_secs(1));
    config.consumer.retry_delay = Duration::from_millis(500);
    config.max_retries = 100;
    let app = TestApp::spawn_with(config).await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("transient").await;
    await_consumer(&broker, &tenant).await;

    let lock = lock_partition(&app.config.database.url, &tenant).await;
    let published = app.post_json(&format!("/tenants/{tenant}/messages"), &json!({ "payload": { "n": 1 } })).await;
    assert_eq!(published.status(), StatusCode::ACCEPTED);
    eventually(Duration::from_secs(30), "the message waiting in the retry queue", || async {
        (queue_state(&broker, retry_queue(&tenant)).await.map(|(ready, _)| ready) == Some(1)).then_some(())
    })
    .await;
    assert_eq!(app.message_count(&tenant).await, 0);

    release(lock).await;
    app.await_messages(&tenant, 1).await;
    assert_eq!(dlq_depth(&broker, &tenant).await, Some(0), "nothing was dead-lettered");
    let details: Value = app.get(&format!("/tenants/{tenant}")).await.json().await.expect("json");
    assert_eq!(details["runtime"]["retry_depth"], 0);
    app.stop().await;
}

#[tokio::test]
async fn a_fault_that_outlasts_the_retries_dead_letters_and_a_replay_persists_each_message_once() {
    let mut config = test_config();
    config.database.statement_timeout = Some(Duration::from_secs(1));
    config.consumer.retry_delay = Duration::from_millis(200);
    config.max_retries = 2;
    let app = TestApp::spawn_with(config).await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("outlasting").await;
    await_consumer(&broker, &tenant).await;

    let lock = lock_partition(&app.config.database.url, &tenant).await;
    let batch = json!({ "messages": [{ "payload": { "n": 1 } }, { "payload": { "n": 2 } }] });
    let published = app.post_json(&format!("/tenants/{tenant}/messages/batch"), &batch).await;
    assert_eq!(published.status(), StatusCode::ACCEPTED);
    let ids: Value = published.json().await.expect("json");
    await_dlq_depth(&broker, &tenant, 2).await;
    let page = peek(&app, &format!("/tenants/{tenant}/dlq")).await;
    for letter in page["data"].as_array().expect("data") {
        assert_eq!(letter["attempts"], 3, "the first try and two retries: {letter}");
        let reason = letter["reason"].as_str().expect("reason");
        assert!(reason.contains("statement timeout"), "{reason}");
        assert!(letter["payload"]["n"].is_number(), "{letter}");
        assert!(ids["ids"].as_array().expect("ids").contains(&letter["id"]), "{letter}");
    }
    assert_eq!(app.message_count(&tenant).await, 0);
    // A dead letter is counted once the broker confirms it, which can come after the DLQ shows it.
    let scrape = eventually(Duration::from_secs(20), "two dead letters counted", || async {
        let scrape = Scrape::of(&app).await;
        (scrape.tenant("tenantmq_messages_dead_lettered_total", &tenant) == Some(2.0)).then_some(scrape)
    })
    .await;
    let transient = scrape.value("tenantmq_messages_failed_total", &[("tenant_id", &tenant), ("reason", "transient")]);
    assert_eq!(transient, Some(6.0), "three failed attempts each");
    assert_eq!(scrape.tenant("tenantmq_messages_retried_total", &tenant), Some(4.0));

    release(lock).await;
    let replay = app.post_json(&format!("/tenants/{tenant}/dlq/replay"), &json!({})).await;
    assert_eq!(replay.status(), StatusCode::ACCEPTED);
    assert_eq!(
        replay.json::<Value>().await.expect("json"),
        json!({ "replayed": 2, "not_found": [], "complete": true })
    );
    app.await_messages(&tenant, 2).await;
    assert_eq!(dlq_depth(&broker, &tenant).await, Some(0));
    // Replaying again (an empty DLQ) changes nothing.
    let again = app.post_json(&format!("/tenants/{tenant}/dlq/replay"), &json!({})).await;
    assert_eq!(again.json::<Value>().await.expect("json"), json!({ "replayed": 0, "not_found": [], "complete": true }));
    app.await_messages(&tenant, 2).await;
    app.stop().await;
}

/// `scripts/test-dlq.sh`, the walk-through for users, runs against a live service and succeeds.
#[tokio::test]
async fn the_dlq_walkthrough_script_succeeds_against_a_running_service() {
    let app = TestApp::spawn().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-dlq.sh");
    let output = tokio::process::Command::new("bash")
        .arg(script)
        .env("TENANTMQ_URL", &app.base_url)
        .env("TENANTMQ_TOKEN", app.token(tenantmq::auth::Role::Admin))
        .env("TENANTMQ_BIN", env!("CARGO_BIN_EXE_tenantmq"))
        .env("TENANTMQ_RABBITMQ__URL", &app.config.rabbitmq.url)
        .output()
        .await
        .expect("the script runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("reason: body is not JSON, attempts: 1"), "{stdout}");
    assert_eq!(app.scalar_i64("SELECT count(*) FROM messages").await, 0, "the demo tenant was deleted");
    app.stop().await;
}

/// A dead letter can be as large as the broker takes (any AMQP producer may publish one): a peek shows at most
/// `max_payload_bytes` of each body and `read.max_page_bytes` per page, so a page of large bodies cannot
/// exhaust the service's memory, and the next page starts where this one stopped.
#[tokio::test]
async fn a_peek_shows_the_start_of_large_bodies_and_ends_its_page_at_the_byte_bound() {
    let mut config = crate::helpers::test_config();
    config.max_payload_bytes = 1000;
    config.read.max_page_bytes = 2500;
    let app = TestApp::spawn_with(config).await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("large-dead-letters").await;
    await_consumer(&broker, &tenant).await;
    let channel = broker.create_channel().await.expect("channel");
    for n in 0..5_u8 {
        // Not JSON, so dead-lettered; 100 kB each, every byte the same so a cut shows.
        let body = vec![b'a' + n; 100_000];
        publish_raw(&channel, &tenant, &body, BasicProperties::default()).await;
    }
    await_dlq_depth(&broker, &tenant, 5).await;

    let path = format!("/tenants/{tenant}/dlq");
    let first = peek(&app, &path).await;
    let letters = first["data"].as_array().expect("data");
    assert_eq!(letters.len(), 3, "1,000 bytes shown of each, until 2,500 are reached");
    // The workers dead-letter in parallel, so the DLQ's order need not be the publish order.
    let mut shown = Vec::new();
    for (n, letter) in letters.iter().enumerate() {
        assert_eq!((letter["size"].as_u64(), letter["truncated"].as_bool()), (Some(100_000), Some(true)), "{n}");
        let body = letter["body"].as_str().expect("a body");
        let first_byte = body.chars().next().expect("a byte shown");
        assert_eq!(body, first_byte.to_string().repeat(1000), "{n}: the start of one body, cut at 1,000 bytes");
        assert_eq!(letter["payload"], Value::Null);
        shown.push(first_byte);
    }
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second = peek(&app, &format!("{path}?cursor={cursor}")).await;
    let rest = second["data"].as_array().expect("data").iter().filter_map(|l| l["body"].as_str()?.chars().next());
    shown.extend(rest);
    shown.sort_unstable();
    assert_eq!(shown, ['a', 'b', 'c', 'd', 'e'], "the next page starts after the last one shown: each once");
    assert_eq!(second["next_cursor"], Value::Null);
    assert_eq!(dlq_depth(&broker, &tenant).await, Some(5), "peeking takes nothing");

    // A replay moves the whole message, not what a peek showed of it: back through the consumer (still not
    // JSON), it is dead-lettered again, whole.
    let dead_lettered_before = letters[0]["dead_lettered_at"].clone();
    let replay = app.post_json(&format!("{path}/replay"), &json!({})).await;
    assert_eq!(replay.status(), StatusCode::ACCEPTED);
    eventually(Duration::from_secs(30), "the replayed messages back in the DLQ", || async {
        let first = peek(&app, &path).await;
        let next = first["next_cursor"].as_str().map(|cursor| format!("{path}?cursor={cursor}"));
        let second = match next {
            Some(next) => peek(&app, &next).await,
            None => json!({ "data": [] }),
        };
        let pages = [&first["data"], &second["data"]];
        let all = pages.iter().flat_map(|data| data.as_array().into_iter().flatten());
        let letter = all.clone().find(|letter| letter["id"] == letters[0]["id"])?;
        let again = letter["dead_lettered_at"] != dead_lettered_before && all.count() == 5;
        (again && letter["size"].as_u64() == Some(100_000)).then_some(())
    })
    .await;
    app.stop().await;
}

/// A message the broker dead-lettered on its own keeps the `message_id` its producer gave it, which need not be
/// a UUID; its row may already be stored (the commit's ack was lost and the redeliveries ran out). Replayed,
/// twice even, it must land on that row, not on a fresh id.
#[tokio::test]
async fn replaying_a_dead_letter_named_by_its_producer_finds_the_row_it_already_has() {
    let app = TestApp::spawn().await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("named").await;
    await_consumer(&broker, &tenant).await;
    let channel = broker.create_channel().await.expect("channel");
    let named = || BasicProperties::default().with_message_id("order-17".into());
    publish_raw(&channel, &tenant, br#"{"order":17}"#, named()).await;
    app.await_messages(&tenant, 1).await;

    for replay in 1..=2 {
        channel
            .basic_publish(
                "".into(),
                dlq(&tenant).as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                br#"{"order":17}"#,
                named(),
            )
            .await
            .expect("publish")
            .await
            .expect("sent");
        await_dlq_depth(&broker, &tenant, 1).await;
        let replayed = app.post_json(&format!("/tenants/{tenant}/dlq/replay"), &json!({})).await;
        assert_eq!(replayed.json::<Value>().await.expect("json")["replayed"], 1);
        eventually(Duration::from_secs(20), "the replayed copy written", || async {
            let persisted = Scrape::of(&app).await.tenant("tenantmq_messages_persisted_total", &tenant);
            (persisted == Some(1.0 + f64::from(replay))).then_some(())
        })
        .await;
        assert_eq!(app.message_count(&tenant).await, 1, "replay {replay} stored a second row");
    }
    app.stop().await;
}

/// A message the broker dead-lettered out of the tenant's queue (its `expiration` ran out, a `max-length`
/// policy dropped it, a quorum delivery limit was reached) carries the broker's `x-death`, which names that
/// queue. The service's copies kept it: replayed, then failing once, such a message went to the retry queue
/// with it, and when it expired back, RabbitMQ 3 took the way back to the tenant's queue for a cycle and
/// dropped the message, with no trace but a line in the broker's log. Copies leave the broker's dead-lettering
/// headers behind now. The dead letter here carries `x-death` as the broker writes it. (RabbitMQ 4 ignores an
/// `x-death` it did not write, so against it this passes either way; the broker of this project's CI is 3.)
#[tokio::test]
async fn a_replayed_message_the_broker_had_dead_lettered_survives_a_retry() {
    use lapin::types::{AMQPValue, FieldArray, FieldTable};
    let mut config = test_config();
    config.database.statement_timeout = Some(Duration::from_secs(1));
    config.consumer.retry_delay = Duration::from_millis(200);
    config.max_retries = 5;
    let app = TestApp::spawn_with(config).await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("expired-once").await;
    await_consumer(&broker, &tenant).await;

    let main_queue = crate::helpers::queue(&tenant);
    let text = |value: &str| AMQPValue::LongString(value.into());
    let mut death = FieldTable::default();
    death.insert("queue".into(), text(&main_queue));
    death.insert("reason".into(), text("expired"));
    death.insert("count".into(), AMQPValue::LongLongInt(1));
    death.insert("exchange".into(), text(""));
    death.insert("routing-keys".into(), AMQPValue::FieldArray(FieldArray::from(vec![text(&main_queue)])));
    death.insert("time".into(), AMQPValue::Timestamp(chrono::Utc::now().timestamp().unsigned_abs()));
    let mut headers = FieldTable::default();
    headers.insert("x-death".into(), AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])));
    headers.insert("x-first-death-queue".into(), text(&main_queue));
    headers.insert("x-first-death-reason".into(), text("expired"));
    headers.insert("x-first-death-exchange".into(), text(""));
    let properties =
        BasicProperties::default().with_message_id(Uuid::now_v7().to_string().into()).with_headers(headers);
    let channel = broker.create_channel().await.expect("channel");
    channel
        .basic_publish(
            "".into(),
            dlq(&tenant).as_str().into(),
            lapin::options::BasicPublishOptions::default(),
            br#"{"n":1}"#,
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("sent");
    await_dlq_depth(&broker, &tenant, 1).await;

    let lock = lock_partition(&app.config.database.url, &tenant).await;
    let replayed = app.post_json(&format!("/tenants/{tenant}/dlq/replay"), &json!({})).await;
    assert_eq!(replayed.json::<Value>().await.expect("json")["replayed"], 1);
    eventually(Duration::from_secs(30), "the replayed message retried", || async {
        let retried = Scrape::of(&app).await.tenant("tenantmq_messages_retried_total", &tenant);
        retried.is_some_and(|retried| retried >= 1.0).then_some(())
    })
    .await;
    release(lock).await;
    app.await_messages(&tenant, 1).await;
    app.stop().await;
}

/// A peek takes the dead letters and gives them back: a peek or a replay on another instance at the same time
/// (two API pods behind one address) found them gone, and answered a short page or ids "not found". A tenant's
/// dead-letter operations now take turns across instances.
#[tokio::test]
async fn peeks_on_two_instances_at_once_each_see_every_dead_letter() {
    const DEAD_LETTERS: usize = 300;
    let app = TestApp::spawn().await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("peeked-twice").await;
    await_consumer(&broker, &tenant).await;
    fill_dlq(&broker, &tenant, DEAD_LETTERS).await;
    let mut second = tenantmq_testkit::RunningApp::start(app.config.clone()).await.expect("a second instance");
    let path = format!("/tenants/{tenant}/dlq?limit=1000");
    let urls = [app.url(&path), second.url(&path)];
    let peeks = (0..16).map(|i| {
        let request = app.client.get(&urls[i % 2]);
        async move {
            let response = request.send().await.expect("sent");
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<Value>().await.expect("page")["data"].as_array().map_or(0, Vec::len)
        }
    });
    let seen = futures_util::future::join_all(peeks).await;
    assert!(seen.iter().all(|&n| n == DEAD_LETTERS), "dead letters each peek saw: {seen:?}");
    second.stop().await.expect("the second instance stopped");
    app.stop().await;
}

/// A dead-letter operation keeps a database connection while it runs (its tenant's lock): many tenants' at
/// once took the whole pool, and every other request, of every tenant, waited for a connection and answered
/// 503. A quarter of the pool at most runs them now.
#[tokio::test]
async fn many_tenants_dead_letter_operations_at_once_leave_the_pool_to_the_rest() {
    const TENANTS: usize = 6;
    const DEAD_LETTERS: usize = 3_000;
    let mut config = test_config();
    config.database.max_connections = 4;
    config.database.write_connections = Some(1);
    // A request waits this long for a connection, then answers 503.
    config.database.connect_timeout = Duration::from_millis(500);
    let app = TestApp::spawn_with(config).await;
    let broker = amqp().await;
    let mut tenants = Vec::new();
    for i in 0..TENANTS {
        let tenant = app.create_tenant_id(&format!("dead-letters-{i}")).await;
        await_consumer(&broker, &tenant).await;
        fill_dlq(&broker, &tenant, DEAD_LETTERS).await;
        tenants.push(tenant);
    }
    // A replay of an id no dead letter has walks the whole DLQ.
    let done = std::sync::atomic::AtomicBool::new(false);
    let replays = async {
        let replays = tenants
            .iter()
            .map(|tenant| app.post_json(&format!("/tenants/{tenant}/dlq/replay"), &json!({ "ids": [Uuid::now_v7()] })));
        let answers = futures_util::future::join_all(replays).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        answers.iter().map(|answer| answer.status()).collect::<Vec<_>>()
    };
    let reads = async {
        let mut statuses = Vec::new();
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            statuses.push(app.get(&format!("/tenants/{}", tenants[0])).await.status());
        }
        statuses
    };
    let (replayed, read) = tokio::join!(replays, reads);
    assert!(
        replayed.iter().all(|s| [StatusCode::ACCEPTED, StatusCode::SERVICE_UNAVAILABLE].contains(s)),
        "{replayed:?}"
    );
    assert!(replayed.contains(&StatusCode::ACCEPTED), "{replayed:?}");
    assert!(read.len() > 1 && read.iter().all(|s| *s == StatusCode::OK), "reads meanwhile: {read:?}");
    app.stop().await;
}

/// Puts `count` dead letters (`{"i": n}`, each with an id of its own) straight into the tenant's DLQ, whose
/// consumer has declared it, and waits until the broker counts them.
async fn fill_dlq(broker: &lapin::Connection, tenant: &str, count: usize) {
    let channel = broker.create_channel().await.expect("channel");
    channel.confirm_select(lapin::options::ConfirmSelectOptions::default()).await.expect("confirms");
    let queue = dlq(tenant);
    let mut confirms = Vec::with_capacity(count);
    for i in 0..count {
        let properties = BasicProperties::default().with_message_id(Uuid::now_v7().to_string().into());
        let body = json!({ "i": i }).to_string();
        let publish =
            channel.basic_publish("".into(), queue.as_str().into(), Default::default(), body.as_bytes(), properties);
        confirms.push(publish.await.expect("published"));
    }
    for confirm in confirms {
        confirm.await.expect("confirmed");
    }
    await_dlq_depth(broker, tenant, count as u32).await;
}
