//! Data fidelity and the no-loss edges: what goes in comes out as PostgreSQL stored it, what `jsonb` cannot
//! store is refused at the door (or dead-lettered on its first attempt), a page is capped in bytes, a
//! `message_id` is an idempotency key, and deleting a tenant lets its in-flight deliveries finish.

use std::{collections::HashMap, time::Duration};

use lapin::BasicProperties;
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json, value::RawValue};
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    dead_letters::await_dlq_depth,
    helpers::{
        TestApp, amqp, assert_problem, await_consumer, await_exactly, eventually, publish_raw, queue, queue_state,
        slow_down_inserts, test_config,
    },
    metrics::Scrape,
};

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// Edge payloads, as JSON text.
fn corpus() -> Vec<String> {
    let mut corpus: Vec<String> = [
        r#"{"big": 12345678901234567890123, "f": 1.0000000000000000001}"#,
        "1e400",
        "[-1.5E-300, 123.456e10, 0.1, -0, 1E+2, 2.50, 1e-16383]",
        "[9007199254740993, -9007199254740993, 18446744073709551616, 3.14159265358979323846264338327950288419716939937510]",
        r#""\u00e9\ud83d\ude00\u2028 \\ \" \/ \b\f\n\r\t \u0001 \u001f é😀""#,
        r#"{"k\"ey": {"\u00fc": [], "": {}}, "a": 1, "a": 2, "nested": {"x": [{}, [], [[]], {"y": null}]}}"#,
        "{}",
        "[]",
        r#""""#,
        "null",
        "true",
        "false",
        "0",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    corpus.push(nested(64));
    // Deeper than serde_json's own limit of 128, which used to drop the payload from the answer.
    corpus.push(nested(150));
    corpus
}

/// Every message of the tenant as `GET /messages` returns it (id → payload text), paged with `limit`.
async fn read_back(app: &TestApp, tenant: &str, limit: usize) -> (HashMap<String, String>, Vec<usize>) {
    #[derive(serde::Deserialize)]
    struct Page {
        data: Vec<Message>,
        next_cursor: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Message {
        id: String,
        payload: Box<RawValue>,
    }
    let mut payloads = HashMap::new();
    let mut sizes = Vec::new();
    let mut query = vec![("tenant_id", tenant.to_owned()), ("limit", limit.to_string())];
    loop {
        let request = app.client.get(app.url("/messages")).query(&query);
        let response = request.send().await.expect("sent");
        assert_eq!(response.status(), StatusCode::OK);
        // Parsed keeping each payload's text: a `serde_json::Value` would round big numbers.
        let page: Page = serde_json::from_str(&response.text().await.expect("body")).expect("a page");
        sizes.push(page.data.len());
        for message in page.data {
            assert!(payloads.insert(message.id, message.payload.get().to_owned()).is_none(), "a row twice");
        }
        match page.next_cursor {
            Some(next) => {
                query.truncate(2);
                query.push(("cursor", next));
            }
            None => return (payloads, sizes),
        }
    }
}

/// What PostgreSQL stores: id → `payload::text`.
async fn stored(app: &TestApp, tenant: &str) -> HashMap<String, String> {
    let sql = format!("SELECT id::text, payload::text FROM messages WHERE tenant_id = '{tenant}'");
    let rows = app.db.query_all_raw(Statement::from_string(DbBackend::Postgres, sql)).await.expect("rows");
    rows.iter().map(|row| (row.try_get_by_index(0).expect("id"), row.try_get_by_index(1).expect("payload"))).collect()
}

/// Posts a JSON text as it is (a `serde_json::Value` would already round big numbers).
async fn post_text(app: &TestApp, path: &str, body: String) -> reqwest::Response {
    app.client.post(app.url(path)).header("content-type", "application/json").body(body).send().await.expect("sent")
}

#[tokio::test]
async fn edge_payloads_read_back_as_the_stored_jsonb_text_over_http_and_amqp() {
    let mut config = test_config();
    config.max_payload_depth = 200;
    let app = TestApp::spawn_with(config).await;
    let tenant = app.create_tenant_id("fidelity").await;
    let broker = amqp().await;
    await_consumer(&broker, &tenant).await;

    let corpus = corpus();
    let messages: Vec<String> = corpus.iter().map(|payload| format!(r#"{{"payload": {payload}}}"#)).collect();
    let batch = format!(r#"{{"messages": [{}]}}"#, messages.join(","));
    let response = post_text(&app, &format!("/tenants/{tenant}/messages/batch"), batch).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let channel = broker.create_channel().await.expect("channel");
    for payload in &corpus {
        let properties = BasicProperties::default().with_message_id(Uuid::now_v7().to_string().into());
        publish_raw(&channel, &tenant, payload.as_bytes(), properties).await;
    }
    let expected = 2 * corpus.len();
    await_exactly(&app.db, &tenant, i64::try_from(expected).expect("count"), Duration::from_secs(30)).await;

    let stored = stored(&app, &tenant).await;
    let read = eventually(Duration::from_secs(30), "every row readable", || async {
        let (read, _) = read_back(&app, &tenant, 7).await;
        (read.len() == expected).then_some(read)
    })
    .await;
    assert_eq!(read, stored, "every payload reads back as its stored jsonb text, byte for byte");
    let big = read.values().filter(|p| p.contains("12345678901234567890123") && p.contains("1.0000000000000000001"));
    assert_eq!(big.count(), 2, "large numbers keep every digit");
    assert_eq!(read.values().filter(|p| p.len() == 401 && p.starts_with("10")).count(), 2, "1e400 as its digits");
    app.stop().await;
}

#[tokio::test]
async fn a_page_ends_early_at_the_byte_cap_and_says_so_through_its_cursor() {
    let mut config = test_config();
    config.read.max_page_bytes = 2000;
    let app = TestApp::spawn_with(config).await;
    let tenant = app.create_tenant_id("capped").await;
    // One alone above the cap still makes a page (of one), and the page says more follow: it is written first,
    // so it sorts before the others.
    let big = json!({ "payload": { "pad": "y".repeat(5000) } });
    let response = app.post_json(&format!("/tenants/{tenant}/messages"), &big).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    app.await_messages(&tenant, 1).await;
    // Ten payloads of a little over 600 bytes: three fit in 2000 bytes, a fourth would not.
    let messages: Vec<Value> = (0..10).map(|i| json!({ "payload": { "i": i, "pad": "x".repeat(600) } })).collect();
    let response = app.post_json(&format!("/tenants/{tenant}/messages/batch"), &json!({ "messages": messages })).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    app.await_messages(&tenant, 11).await;

    let (read, sizes) = eventually(Duration::from_secs(30), "every row readable", || async {
        let (read, sizes) = read_back(&app, &tenant, 1000).await;
        (read.len() == 11).then_some((read, sizes))
    })
    .await;
    assert_eq!(read, stored(&app, &tenant).await);
    assert!(sizes.iter().all(|size| (1..=3).contains(size)), "pages of at most 3 rows: {sizes:?}");
    assert!(sizes.len() >= 5, "{sizes:?}");
    app.stop().await;
}

/// Two payloads of exactly half the cap fill a page to the byte: the page still says a third follows.
#[tokio::test]
async fn a_page_filled_exactly_to_the_byte_cap_still_says_more_follow() {
    let mut config = test_config();
    config.read.max_page_bytes = 2000;
    let app = TestApp::spawn_with(config).await;
    let tenant = app.create_tenant_id("exact").await;
    // A JSON string of 998 letters is 1000 bytes of stored text with its quotes.
    let messages: Vec<Value> = (0..3).map(|i| json!({ "payload": format!("{i}").repeat(998) })).collect();
    let response = app.post_json(&format!("/tenants/{tenant}/messages/batch"), &json!({ "messages": messages })).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    app.await_messages(&tenant, 3).await;
    let (read, sizes) = eventually(Duration::from_secs(30), "every row readable", || async {
        let (read, sizes) = read_back(&app, &tenant, 1000).await;
        (read.len() == 3).then_some((read, sizes))
    })
    .await;
    assert_eq!(read, stored(&app, &tenant).await);
    assert_eq!(sizes, [2, 1]);
    app.stop().await;
}

#[tokio::test]
async fn payloads_jsonb_cannot_store_are_refused_at_the_door_naming_the_field() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant_id("door").await;
    let single = format!("/tenants/{tenant}/messages");
    for payload in [nested(65), r#""\ud800""#.to_owned(), r#"{"a": ["x\udc00"]}"#.into(), "[1e1000000]".into()] {
        let response = post_text(&app, &single, format!(r#"{{"payload": {payload}}}"#)).await;
        let problem = assert_problem(response, StatusCode::BAD_REQUEST, Some("payload")).await;
        assert!(!problem["detail"].as_str().unwrap_or_default().contains('['), "{problem}");
    }
    let batch = r#"{"messages": [{"payload": 1}, {"payload": 2}, {"payload": 3}, {"payload": "\ud800"}]}"#;
    let response = post_text(&app, &format!("/tenants/{tenant}/messages/batch"), batch.into()).await;
    assert_problem(response, StatusCode::BAD_REQUEST, Some("messages[3].payload")).await;
    for fits in [nested(64), r#""\ud83d\ude00""#.to_owned(), "1e131071".into()] {
        let response = post_text(&app, &single, format!(r#"{{"payload": {fits}}}"#)).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{}", &fits[..fits.len().min(40)]);
    }
    app.await_messages(&tenant, 3).await;
    app.stop().await;
}

/// Over AMQP nothing refuses a body at the door: the consumer applies the same check and dead-letters it on
/// the first attempt, with the reason.
#[tokio::test]
async fn amqp_bodies_jsonb_cannot_store_are_dead_lettered_on_the_first_attempt() {
    let app = TestApp::spawn().await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("amqp-door").await;
    await_consumer(&broker, &tenant).await;
    let channel = broker.create_channel().await.expect("channel");
    for body in [nested(65), r#"["\ud800"]"#.to_owned(), "[1e1000000]".into(), r#"{"ok": 1}"#.into()] {
        publish_raw(&channel, &tenant, body.as_bytes(), BasicProperties::default()).await;
    }
    app.await_messages(&tenant, 1).await;
    await_dlq_depth(&broker, &tenant, 3).await;
    let page: Value = app.get(&format!("/tenants/{tenant}/dlq")).await.json().await.expect("json");
    let letters = page["data"].as_array().expect("data");
    let reasons: Vec<&str> = letters.iter().map(|l| l["reason"].as_str().expect("reason")).collect();
    for expected in ["nested deeper than 64", "lone UTF-16 surrogate", "numeric range"] {
        assert_eq!(reasons.iter().filter(|r| r.contains(expected)).count(), 1, "{expected}: {reasons:?}");
    }
    assert!(letters.iter().all(|l| l["attempts"] == 1), "{page}");
    app.stop().await;
}

/// A row PostgreSQL refuses with a program limit (SQLSTATE 54001, nesting deeper than its stack allows) fails
/// alone: the rest of its batch commits at once, and the bad one is dead-lettered on its first attempt.
#[tokio::test]
async fn a_row_the_database_refuses_is_dead_lettered_alone_and_its_batch_commits() {
    let mut config = test_config();
    // Let the deep body past the service's own check, as far as PostgreSQL.
    config.max_payload_depth = 100_000;
    // One worker gathering for a second: the messages below land in one batch.
    config.workers = std::num::NonZeroU16::MIN;
    config.consumer.batch_wait = Duration::from_secs(1);
    config.consumer.batch_max_wait = Some(Duration::from_secs(3));
    let app = TestApp::spawn_with(config).await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("refused").await;
    await_consumer(&broker, &tenant).await;
    let channel = broker.create_channel().await.expect("channel");
    for n in 0..3 {
        publish_raw(&channel, &tenant, format!(r#"{{"n": {n}}}"#).as_bytes(), BasicProperties::default()).await;
    }
    publish_raw(&channel, &tenant, nested(60_000).as_bytes(), BasicProperties::default()).await;
    for n in 3..6 {
        publish_raw(&channel, &tenant, format!(r#"{{"n": {n}}}"#).as_bytes(), BasicProperties::default()).await;
    }
    await_exactly(&app.db, &tenant, 6, Duration::from_secs(30)).await;
    await_dlq_depth(&broker, &tenant, 1).await;
    let page: Value = app.get(&format!("/tenants/{tenant}/dlq")).await.json().await.expect("json");
    assert_eq!(page["data"][0]["attempts"], 1, "{page}");
    assert!(page["data"][0]["reason"].as_str().is_some_and(|r| r.contains("stack depth")), "{page}");
    let scrape = Scrape::of(&app).await;
    assert_eq!(scrape.tenant("tenantmq_messages_retried_total", &tenant), Some(0.0), "nothing was retried");
    app.stop().await;
}

/// A crash between commit and ack redelivers a message: whatever its `message_id`, it is one row.
#[tokio::test]
async fn any_message_id_is_an_idempotency_key_and_a_message_without_one_is_marked_at_least_once() {
    let app = TestApp::spawn().await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("idempotent").await;
    await_consumer(&broker, &tenant).await;
    let channel = broker.create_channel().await.expect("channel");
    let named = |id: &str| BasicProperties::default().with_message_id(id.into());
    for properties in [named("order-17"), named("order-17"), named("order-18"), BasicProperties::default()] {
        publish_raw(&channel, &tenant, br#"{"order": true}"#, properties).await;
    }
    await_exactly(&app.db, &tenant, 3, Duration::from_secs(30)).await;
    let versions = format!(
        "SELECT count(*) FILTER (WHERE substr(id::text, 15, 1) = '5') * 10 + count(*) FILTER (WHERE substr(id::text, \
         15, 1) = '8') FROM messages WHERE tenant_id = '{tenant}'"
    );
    assert_eq!(app.scalar_i64(&versions).await, 21, "two UUIDv5 rows from the names, one version-8 row");
    app.stop().await;
}

/// With `detach`, a delete while messages are still queued and in flight: every accepted message ends up in
/// the archived table, none as a dead letter.
#[tokio::test]
async fn deleting_a_tenant_with_detach_archives_every_accepted_message() {
    let mut config = test_config();
    config.partitions.on_tenant_delete = tenantmq::config::OnTenantDelete::Detach;
    config.consumer.batch_size = 20;
    let app = TestApp::spawn_with(config).await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("archived").await;
    await_consumer(&broker, &tenant).await;
    slow_down_inserts(&app.db, &tenant, 0.2).await;
    let messages: Vec<Value> = (0..500).map(|i| json!({ "payload": { "i": i } })).collect();
    let response = app.post_json(&format!("/tenants/{tenant}/messages/batch"), &json!({ "messages": messages })).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    eventually(Duration::from_secs(30), "a few rows written, most still queued", || async {
        (app.message_count(&tenant).await > 0).then_some(())
    })
    .await;

    assert_eq!(app.delete(&format!("/tenants/{tenant}")).await.status(), StatusCode::NO_CONTENT);
    let archive = crate::helpers::partition(&tenant);
    let attached = format!("SELECT count(*) FROM pg_inherits WHERE inhrelid = '{archive}'::regclass");
    assert_eq!(app.scalar_i64(&attached).await, 0, "detached");
    assert_eq!(app.scalar_i64(&format!("SELECT count(*) FROM {archive}")).await, 500, "every message archived");
    assert_eq!(queue_state(&broker, queue(&tenant)).await, None, "the queues are gone");
    app.stop().await;
}

/// A retirement that takes long (with `detach`, thousands of queued messages to persist through slow inserts)
/// does not hold up the other tenants: one created meanwhile gets its consumer at once.
#[tokio::test]
async fn a_long_retirement_does_not_hold_up_the_other_tenants() {
    let mut config = test_config();
    config.partitions.on_tenant_delete = tenantmq::config::OnTenantDelete::Detach;
    config.projectors.command_wait = Duration::from_secs(1);
    let app = TestApp::spawn_with(config).await;
    let broker = amqp().await;
    let big = app.create_tenant_id("big").await;
    await_consumer(&broker, &big).await;
    // 100 rows per write of the retirement, 0.4 s each: over a minute for what stays queued, far longer than
    // the new tenant's consumer may take to start on a busy machine.
    slow_down_inserts(&app.db, &big, 0.4).await;
    let messages: Vec<Value> = (0..1000).map(|i| json!({ "payload": { "i": i } })).collect();
    for _ in 0..20 {
        let response = app.post_json(&format!("/tenants/{big}/messages/batch"), &json!({ "messages": messages })).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    // Answered 503 once `command_wait` is over: the retirement is still persisting.
    let _deleting = app.delete(&format!("/tenants/{big}")).await;
    eventually(Duration::from_secs(30), "the retirement persisting the queue", || async {
        let archived = app.scalar_i64(&format!("SELECT count(*) FROM {}", crate::helpers::partition(&big))).await;
        let queued = queue_state(&broker, queue(&big)).await;
        (archived > 0 && queued.is_some_and(|(ready, consumers)| ready > 1000 && consumers == 0)).then_some(())
    })
    .await;

    let other = tenantmq::domain::tenant::TenantId::generate().to_string();
    let _created = app.post_json("/tenants", &json!({ "id": other, "name": "other" })).await;
    eventually(Duration::from_secs(20), "the new tenant's consumer while the retirement runs", || async {
        queue_state(&broker, queue(&other)).await.filter(|(_, consumers)| *consumers > 0)
    })
    .await;
    assert!(queue_state(&broker, queue(&big)).await.is_some(), "the retirement was still running");
    app.stop().await;
}

/// With `drop`, the consumer has stopped (and its queue is gone) by the time DELETE answers, and a publish that
/// starts after the answer gets 404, with no queue coming back.
#[tokio::test]
async fn after_delete_answers_the_consumer_is_gone_and_publishing_is_404() {
    let mut config = test_config();
    config.consumer.batch_size = 20;
    let app = TestApp::spawn_with(config).await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("deleted-while-publishing").await;
    await_consumer(&broker, &tenant).await;
    slow_down_inserts(&app.db, &tenant, 0.2).await;

    // When DELETE answered: the publisher goes on for ten more publishes after that.
    let (answered_at, mut answered) = tokio::sync::watch::channel(None::<Instant>);
    let publisher = {
        let (client, url) = (app.client.clone(), app.url(&format!("/tenants/{tenant}/messages")));
        tokio::spawn(async move {
            let mut answers = Vec::new();
            loop {
                let after = *answered.borrow_and_update();
                if after.is_some_and(|at| answers.iter().filter(|(started, _)| *started > at).count() >= 10) {
                    return answers;
                }
                let started = Instant::now();
                let response = client.post(&url).json(&json!({ "payload": { "n": answers.len() } })).send().await;
                answers.push((started, response.expect("sent").status()));
            }
        })
    };
    eventually(Duration::from_secs(30), "rows being written", || async {
        (app.message_count(&tenant).await > 0).then_some(())
    })
    .await;
    assert_eq!(app.delete(&format!("/tenants/{tenant}")).await.status(), StatusCode::NO_CONTENT);
    let answered = Instant::now();
    answered_at.send_replace(Some(answered));
    assert_eq!(queue_state(&broker, queue(&tenant)).await, None, "the consumer stopped before the answer");
    let partition = format!("SELECT count(*) FROM pg_class WHERE relname = '{}'", crate::helpers::partition(&tenant));
    assert_eq!(app.scalar_i64(&partition).await, 0);

    let answers = publisher.await.expect("publisher");
    let late: Vec<_> = answers.iter().filter(|(started, _)| *started > answered).collect();
    assert!(late.iter().all(|(_, status)| *status == StatusCode::NOT_FOUND), "{late:?}");
    assert!(answers.iter().all(|(_, s)| [StatusCode::ACCEPTED, StatusCode::NOT_FOUND].contains(s)), "{answers:?}");
    assert_eq!(queue_state(&broker, queue(&tenant)).await, None, "no publish brought the queue back");
    app.stop().await;
}
