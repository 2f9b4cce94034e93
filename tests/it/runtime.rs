//! The runtime against the real broker and database: consumers per tenant, publishing, exactly-once rows,
//! live resizing. Assertions ask RabbitMQ and PostgreSQL, not internal flags.

use std::{collections::HashMap, time::Duration};

use futures_util::future::join_all;
use lapin::BasicProperties;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::dead_letters::{lock_partition, release};
use crate::helpers::{
    TestApp, amqp, await_consumer, dlq, eventually, publish_raw, queue, queue_state, retry_queue, slow_down_inserts,
    test_config,
};
use crate::metrics::Scrape;

#[tokio::test]
async fn a_tenant_gets_a_queue_with_one_consumer_and_deletion_removes_queue_and_partition() {
    let app = TestApp::spawn().await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("consumed").await;

    eventually(Duration::from_secs(20), "one consumer on the tenant's queue", || async {
        (queue_state(&broker, &queue(&tenant)).await == Some((0, 1))).then_some(())
    })
    .await;
    assert!(queue_state(&broker, &dlq(&tenant)).await.is_some(), "the dead-letter queue is declared too");
    assert!(queue_state(&broker, &retry_queue(&tenant)).await.is_some(), "the retry queue is declared too");
    // The broker shows the consumer a moment before the service has its consume-ok.
    eventually(Duration::from_secs(20), "the tenant's details to show it consuming", || async {
        let details: Value = app.get(&format!("/tenants/{tenant}")).await.json().await.expect("json");
        let runtime = &details["runtime"];
        (runtime["consumer_state"] == "running" && runtime["running_workers"] == 3 && runtime["queue_consumers"] == 1)
            .then_some(())
    })
    .await;

    assert_eq!(app.delete(&format!("/tenants/{tenant}")).await.status(), StatusCode::NO_CONTENT);
    eventually(Duration::from_secs(20), "the tenant's queues to be deleted", || async {
        let gone = [queue(&tenant), retry_queue(&tenant), dlq(&tenant)];
        join_all(gone.iter().map(|q| queue_state(&broker, q))).await.iter().all(Option::is_none).then_some(())
    })
    .await;
    let partition = crate::helpers::partition(&tenant);
    assert_eq!(app.scalar_i64(&format!("SELECT count(*) FROM pg_class WHERE relname = '{partition}'")).await, 0);
    assert_eq!(app.get(&format!("/tenants/{tenant}")).await.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn published_messages_become_exactly_one_row_each_with_the_same_payload() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant_id("publisher").await;
    let mut sent: HashMap<String, Value> = HashMap::new();
    for batch in 0..10 {
        let messages: Vec<Value> = (0..100)
            .map(|i| json!({ "payload": { "batch": batch, "i": i, "nested": [i, "x", null, { "f": 1.5 }] } }))
            .collect();
        let response =
            app.post_json(&format!("/tenants/{tenant}/messages/batch"), &json!({ "messages": messages })).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let ids: Value = response.json().await.expect("json");
        for (id, message) in ids["ids"].as_array().expect("ids").iter().zip(messages) {
            sent.insert(id.as_str().expect("id").to_owned(), message["payload"].clone());
        }
    }
    assert_eq!(sent.len(), 1000, "1000 distinct ids");
    app.await_messages(&tenant, 1000).await;

    let rows = sea_orm::ConnectionTrait::query_all_raw(
        &app.db,
        sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!("SELECT id::text, payload::text FROM messages WHERE tenant_id = '{tenant}'"),
        ),
    )
    .await
    .expect("rows");
    for row in rows {
        let id: String = row.try_get_by_index(0).expect("id");
        let payload: Value = serde_json::from_str(&row.try_get_by_index::<String>(1).expect("payload")).expect("json");
        assert_eq!(sent.get(&id), Some(&payload), "row {id} has the published payload");
    }

    // The client's id is an idempotency key.
    let id = Uuid::new_v4();
    for _ in 0..2 {
        let response =
            app.post_json(&format!("/tenants/{tenant}/messages"), &json!({ "id": id, "payload": "once" })).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(response.json::<Value>().await.expect("json")["id"], id.to_string());
    }
    app.await_messages(&tenant, 1001).await;
    app.stop().await;
}

#[tokio::test]
async fn any_amqp_producer_can_publish_to_the_tenant_queue() {
    let app = TestApp::spawn().await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("direct").await;
    await_consumer(&broker, &tenant).await;
    let channel = broker.create_channel().await.expect("channel");
    let with_id = Uuid::new_v4();
    let properties = BasicProperties::default().with_message_id(with_id.to_string().into());
    for (body, properties) in [
        (br#"{"from": "amqp", "with_id": true}"#.as_slice(), properties),
        (br#"{"from": "amqp", "with_id": false}"#.as_slice(), BasicProperties::default()),
        (br#"[1, 2, 3]"#.as_slice(), BasicProperties::default().with_message_id("not-a-uuid".into())),
    ] {
        publish_raw(&channel, &tenant, body, properties).await;
    }
    app.await_messages(&tenant, 3).await;
    let kept = app
        .scalar_i64(&format!("SELECT count(*) FROM messages WHERE tenant_id = '{tenant}' AND id = '{with_id}'"))
        .await;
    assert_eq!(kept, 1, "the AMQP message_id is the row id");
    app.stop().await;
}

/// A stored id that arrives again as a new delivery (published twice, not redelivered) is a duplicate to
/// skip, not bad data to dead-letter: alone in its batch and beside a new message.
#[tokio::test]
async fn a_message_id_published_again_is_acked_and_stored_once() {
    let app = TestApp::spawn().await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("again").await;
    await_consumer(&broker, &tenant).await;
    let channel = broker.create_channel().await.expect("channel");
    let (again, other) = (Uuid::new_v4(), Uuid::new_v4());
    let with_id = |id: Uuid| BasicProperties::default().with_message_id(id.to_string().into());
    let persisted = |count: f64| {
        let app = &app;
        let tenant = &tenant;
        async move {
            eventually(Duration::from_secs(20), &format!("{count} deliveries committed and acked"), || async {
                let persisted = Scrape::of(app).await.tenant("tenantmq_messages_persisted_total", tenant);
                (persisted == Some(count)).then_some(())
            })
            .await
        }
    };
    publish_raw(&channel, &tenant, br#"{"copy": 1}"#, with_id(again)).await;
    persisted(1.0).await;
    // Fresh deliveries (not redeliveries) of a stored id: alone in a batch, then beside a new one.
    publish_raw(&channel, &tenant, br#"{"copy": 2}"#, with_id(again)).await;
    persisted(2.0).await;
    for (body, id) in [(br#"{"copy": 3}"#.as_slice(), again), (br#"{"other": 1}"#, other)] {
        publish_raw(&channel, &tenant, body, with_id(id)).await;
    }
    persisted(4.0).await;
    assert_eq!(app.message_count(&tenant).await, 2);
    let first = app
        .scalar_i64(&format!(
            "SELECT count(*) FROM messages WHERE tenant_id = '{tenant}' AND id = '{again}' AND payload = '{{\"copy\": 1}}'"
        ))
        .await;
    assert_eq!(first, 1, "the first copy's row stays");
    let scrape = Scrape::of(&app).await;
    for reason in ["transient", "permanent"] {
        let failed = scrape.value("tenantmq_messages_failed_total", &[("tenant_id", &tenant), ("reason", reason)]);
        assert_eq!(failed.unwrap_or(0.0), 0.0, "{reason} failures");
    }
    assert_eq!(queue_state(&broker, &dlq(&tenant)).await.map(|(ready, _)| ready), Some(0), "nothing dead-lettered");
    // Anything left unacked would be back in the queue once the service's channels close.
    let mut app = app;
    app.stop_service().await;
    assert_eq!(queue_state(&broker, &queue(&tenant)).await, Some((0, 0)), "every delivery was acked");
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_is_not_json_is_dead_lettered_not_persisted_and_not_requeued() {
    let app = TestApp::spawn().await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("garbage").await;
    await_consumer(&broker, &tenant).await;
    let channel = broker.create_channel().await.expect("channel");
    for body in [b"not json".as_slice(), b"{\"truncated\": ".as_slice(), &[0xff, 0xfe][..], b"{\"ok\": true}"] {
        publish_raw(&channel, &tenant, body, BasicProperties::default()).await;
    }
    app.await_messages(&tenant, 1).await;
    eventually(Duration::from_secs(20), "three dead letters", || async {
        (queue_state(&broker, &dlq(&tenant)).await.map(|(ready, _)| ready) == Some(3)).then_some(())
    })
    .await;
    assert_eq!(queue_state(&broker, &queue(&tenant)).await.map(|(ready, _)| ready), Some(0), "nothing requeued");
    assert_eq!(app.message_count(&tenant).await, 1);

    // A dead letter is counted once the broker confirms it, which can come after the DLQ shows it.
    let scrape = eventually(Duration::from_secs(20), "three dead letters counted", || async {
        let scrape = Scrape::of(&app).await;
        (scrape.tenant("tenantmq_messages_dead_lettered_total", &tenant) == Some(3.0)).then_some(scrape)
    })
    .await;
    assert_eq!(scrape.tenant("tenantmq_messages_persisted_total", &tenant), Some(1.0));
    assert_eq!(scrape.value("tenantmq_reconciler_actions_total", &[("action", "start")]), Some(1.0));
    app.stop().await;
}

/// An idle tenant holds its consumer but no worker tasks: workers start when deliveries arrive and end after
/// a while without work, while the pool still reports its size; a parked pool takes every new message.
#[tokio::test]
async fn idle_tenants_hold_no_worker_tasks_and_their_pools_start_again_for_new_messages() {
    const TENANTS: usize = 20;
    const WORKERS: usize = 8;
    let app = TestApp::spawn().await;
    let broker = amqp().await;
    let channel = broker.create_channel().await.expect("channel");
    let tasks = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
    let before = tasks();
    let mut tenants = Vec::new();
    for i in 0..TENANTS {
        let response = app.post_json("/tenants", &json!({ "name": format!("idle-{i}"), "workers": WORKERS })).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        tenants.push(response.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned());
    }
    for round in 1..=2 {
        for tenant in &tenants {
            await_consumer(&broker, tenant).await;
            publish_raw(&channel, tenant, format!("{{\"round\":{round}}}").as_bytes(), BasicProperties::default())
                .await;
        }
        for tenant in &tenants {
            app.await_messages(tenant, round).await;
        }
        // Each tenant's consumer stays; its workers end. An idle pool of 8 running tasks would be 9 a tenant.
        let per_tenant = eventually(Duration::from_secs(30), "idle tenants without worker tasks", || async {
            let per_tenant = tasks().saturating_sub(before) as f64 / TENANTS as f64;
            (per_tenant < 2.0).then_some(per_tenant)
        })
        .await;
        let details: Value = app.get(&format!("/tenants/{}", tenants[0])).await.json().await.expect("json");
        assert_eq!(
            details["runtime"]["running_workers"], WORKERS,
            "parked workers are in the pool ({per_tenant} tasks a tenant)"
        );
        assert_eq!(details["runtime"]["busy_workers"], 0);
    }
    app.stop().await;
}

/// 5,000 messages flow while the pool goes 1 → 8 → 2. Each insert is slowed down (a statement trigger on the
/// partition) so that the pool size shows in how many workers are busy at once.
#[tokio::test]
async fn resizing_the_pool_live_changes_running_and_busy_workers_and_loses_nothing() {
    const MESSAGES: i64 = 5000;
    let mut config = test_config();
    config.consumer.batch_size = 10;
    let app = TestApp::spawn_with(config).await;
    let response = app.post_json("/tenants", &json!({ "name": "elastic", "workers": 1 })).await;
    let tenant = response.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned();
    slow_down_inserts(&app.db, &tenant, 0.02).await;

    let publishes = (0..MESSAGES / 1000).map(|_| {
        let messages: Vec<Value> = (0..1000).map(|i| json!({ "payload": { "i": i } })).collect();
        app.post_json(&format!("/tenants/{tenant}/messages/batch"), &json!({ "messages": messages }))
    });
    for response in join_all(publishes).await {
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    let runtime = |details: Value| details["runtime"].clone();
    let details = || async { runtime(app.get(&format!("/tenants/{tenant}")).await.json().await.expect("json")) };
    assert_eq!(details().await["running_workers"], 1);

    let resize =
        |workers: i64| app.put_json(&format!("/tenants/{tenant}/config/concurrency"), &json!({ "workers": workers }));
    assert_eq!(resize(8).await.status(), StatusCode::OK);
    let max_busy = eventually(Duration::from_secs(60), "8 running workers, at least 5 busy at once", || async {
        let now = details().await;
        let (running, busy) = (now["running_workers"].as_i64(), now["busy_workers"].as_i64().unwrap_or(0));
        (running == Some(8) && busy >= 5).then_some(busy)
    })
    .await;
    assert!(max_busy <= 8);
    assert!(app.message_count(&tenant).await < MESSAGES, "still flowing when shrinking");

    assert_eq!(resize(2).await.status(), StatusCode::OK);
    eventually(Duration::from_secs(60), "2 running workers", || async {
        (details().await["running_workers"] == 2).then_some(())
    })
    .await;
    for _ in 0..20 {
        let busy = details().await["busy_workers"].as_i64().expect("busy");
        assert!(busy <= 2, "at most 2 busy after shrinking, saw {busy}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    app.await_messages(&tenant, MESSAGES).await;
    let distinct =
        app.scalar_i64(&format!("SELECT count(DISTINCT id) FROM messages WHERE tenant_id = '{tenant}'")).await;
    assert_eq!(distinct, MESSAGES);
    app.stop().await;
}

#[tokio::test]
async fn fifty_tenants_created_concurrently_each_get_a_consumer_and_lose_it_on_delete() {
    let mut config = crate::helpers::test_config();
    // A delete answers once its tenant is retired (consumers stopped, queues and partition gone); fifty at once
    // on a loaded 2-core machine can take longer than the default wait.
    config.projectors.command_wait = Duration::from_secs(60);
    let app = TestApp::spawn_with(config).await;
    let broker = amqp().await;
    let created = join_all((0..50).map(|i| app.post_json("/tenants", &json!({ "name": format!("bulk-{i}") })))).await;
    let mut tenants = Vec::new();
    for response in created {
        assert_eq!(response.status(), StatusCode::CREATED);
        tenants.push(response.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned());
    }
    eventually(Duration::from_secs(60), "50 queues with one consumer each", || async {
        let states = join_all(tenants.iter().map(|t| queue_state(&broker, queue(t)))).await;
        states.iter().all(|s| matches!(s, Some((_, 1)))).then_some(())
    })
    .await;

    for response in join_all(tenants.iter().map(|t| app.delete(&format!("/tenants/{t}")))).await {
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }
    eventually(Duration::from_secs(60), "no queue left", || async {
        let states = join_all(tenants.iter().map(|t| queue_state(&broker, queue(t)))).await;
        states.iter().all(Option::is_none).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn publishing_to_an_unknown_or_deleted_tenant_is_404_and_oversized_is_413() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant_id("short-lived").await;
    let unknown = Uuid::new_v4();
    let response = app.post_json(&format!("/tenants/{unknown}/messages"), &json!({ "payload": 1 })).await;
    crate::helpers::assert_problem(response, StatusCode::NOT_FOUND, None).await;

    // `max_payload_bytes` bounds a payload's JSON text alone, alike for one message and a batch's item: a string
    // of max − 2 characters (with its quotes, max bytes) fits both ways (a single message's body, which holds
    // more than the payload, was refused).
    let largest = "x".repeat(app.config.max_payload_bytes - 2);
    for (path, body) in [
        ("messages", json!({ "payload": largest })),
        ("messages/batch", json!({ "messages": [{ "payload": largest }] })),
    ] {
        let response = app.post_json(&format!("/tenants/{tenant}/{path}"), &body).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{path}: {}", response.text().await.unwrap_or_default());
    }
    let huge = "x".repeat(app.config.max_payload_bytes);
    let response = app.post_json(&format!("/tenants/{tenant}/messages"), &json!({ "payload": huge })).await;
    crate::helpers::assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, Some("payload")).await;
    let response = app
        .post_json(
            &format!("/tenants/{tenant}/messages/batch"),
            &json!({ "messages": [{ "payload": 1 }, { "payload": huge }] }),
        )
        .await;
    crate::helpers::assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, Some("messages[1].payload")).await;
    let too_many: Vec<Value> = (0..1001).map(|i| json!({ "payload": i })).collect();
    let response = app.post_json(&format!("/tenants/{tenant}/messages/batch"), &json!({ "messages": too_many })).await;
    crate::helpers::assert_problem(response, StatusCode::BAD_REQUEST, Some("messages")).await;
    let response = app.post_json(&format!("/tenants/{tenant}/messages/batch"), &json!({ "messages": [] })).await;
    crate::helpers::assert_problem(response, StatusCode::BAD_REQUEST, Some("messages")).await;
    let response = app.post_json(&format!("/tenants/{tenant}/messages"), &json!({ "id": "nope", "payload": 1 })).await;
    crate::helpers::assert_problem(response, StatusCode::BAD_REQUEST, Some("id")).await;
    let response = app.post_json(&format!("/tenants/{tenant}/messages"), &json!({ "body": 1 })).await;
    crate::helpers::assert_problem(response, StatusCode::BAD_REQUEST, Some("body")).await;

    assert_eq!(app.delete(&format!("/tenants/{tenant}")).await.status(), StatusCode::NO_CONTENT);
    let response = app.post_json(&format!("/tenants/{tenant}/messages"), &json!({ "payload": 1 })).await;
    crate::helpers::assert_problem(response, StatusCode::NOT_FOUND, None).await;
    assert_eq!(app.scalar_i64("SELECT count(*) FROM messages").await, 0);
    app.stop().await;
}

/// `rabbitmq.queue_type: quorum`: the tenant's queues are quorum queues, and messages, retries and dead
/// letters work on them as on classic ones.
#[tokio::test]
async fn with_quorum_queues_messages_become_rows_and_failures_reach_the_dlq() {
    let mut config = test_config();
    config.rabbitmq.queue_type = tenantmq::config::QueueType::Quorum;
    config.database.statement_timeout = Some(Duration::from_secs(1));
    config.consumer.retry_delay = Duration::from_millis(300);
    let app = TestApp::spawn_with(config).await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("quorum").await;
    await_consumer(&broker, &tenant).await;

    // Declaring the queue as classic now fails: the broker holds it as a quorum queue.
    let channel = broker.create_channel().await.expect("channel");
    let mut classic = lapin::types::FieldTable::default();
    classic.insert("x-queue-type".into(), lapin::types::AMQPValue::LongString("classic".into()));
    let durable = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
    let redeclared = channel.queue_declare(queue(&tenant).as_str().into(), durable, classic).await;
    assert!(redeclared.is_err(), "the tenant queue is not a classic queue");

    let messages: Vec<Value> = (0..200).map(|i| json!({ "payload": { "i": i } })).collect();
    let published = app.post_json(&format!("/tenants/{tenant}/messages/batch"), &json!({ "messages": messages })).await;
    assert_eq!(published.status(), StatusCode::ACCEPTED);
    let producer = broker.create_channel().await.expect("channel");
    publish_raw(&producer, &tenant, b"not json", BasicProperties::default()).await;
    app.await_messages(&tenant, 200).await;
    eventually(Duration::from_secs(30), "the dead letter", || async {
        (queue_state(&broker, dlq(&tenant)).await.map(|(ready, _)| ready) == Some(1)).then_some(())
    })
    .await;

    // A retry (per-message TTL, dead-lettered back from the quorum retry queue) works too.
    let lock = lock_partition(&app.config.database.url, &tenant).await;
    let published = app.post_json(&format!("/tenants/{tenant}/messages"), &json!({ "payload": "retried" })).await;
    assert_eq!(published.status(), StatusCode::ACCEPTED);
    eventually(Duration::from_secs(30), "the message in the retry queue", || async {
        (queue_state(&broker, retry_queue(&tenant)).await.map(|(ready, _)| ready) == Some(1)).then_some(())
    })
    .await;
    release(lock).await;
    app.await_messages(&tenant, 201).await;
    app.stop().await;
}

/// Deleting a tenant whose queues are quorum queues: the broker refuses `queue.delete` with `if-unused` or
/// `if-empty` on them as a connection error, so a guarded delete would drop the connection the API publishes
/// on, again at every retirement pass, and never retire the tenant.
#[tokio::test]
async fn with_quorum_queues_a_deleted_tenant_is_retired_without_losing_the_broker_connection() {
    for on_delete in [tenantmq::config::OnTenantDelete::Drop, tenantmq::config::OnTenantDelete::Detach] {
        let mut config = test_config();
        config.rabbitmq.queue_type = tenantmq::config::QueueType::Quorum;
        config.partitions.on_tenant_delete = on_delete;
        let app = TestApp::spawn_with(config).await;
        let broker = amqp().await;
        let tenant = app.create_tenant_id("quorum-retired").await;
        await_consumer(&broker, &tenant).await;
        let messages: Vec<Value> = (0..20).map(|i| json!({ "payload": { "i": i } })).collect();
        let published =
            app.post_json(&format!("/tenants/{tenant}/messages/batch"), &json!({ "messages": messages })).await;
        assert_eq!(published.status(), StatusCode::ACCEPTED);
        app.await_messages(&tenant, 20).await;

        assert_eq!(app.delete(&format!("/tenants/{tenant}")).await.status(), StatusCode::NO_CONTENT, "{on_delete:?}");
        let gone = [queue(&tenant), retry_queue(&tenant), dlq(&tenant)];
        for name in &gone {
            assert_eq!(queue_state(&broker, name).await, None, "{on_delete:?}: {name} deleted before the 204");
        }
        let scrape = Scrape::of(&app).await;
        assert_eq!(scrape.value("tenantmq_broker_reconnects_total", &[]), Some(0.0), "{on_delete:?}");
        // The connection still publishes for the other tenants.
        let other = app.create_tenant_id("quorum-bystander").await;
        let published = app.post_json(&format!("/tenants/{other}/messages"), &json!({ "payload": 1 })).await;
        let status = published.status();
        assert_eq!(status, StatusCode::ACCEPTED, "{on_delete:?}: {}", published.text().await.unwrap_or_default());
        app.stop().await;
    }
}

/// A consumer that starts just as another instance retires its tenant declares the tenant's queues again
/// after they were deleted; nothing was left to delete them but an instance's next start. The reconciler
/// sweeps retired tenants' queues every 120 resync intervals too: those of tenants deleted in the last hour, not
/// every tenant deleted in a longer past (three broker calls each, every sweep, ahead of every consumer change).
#[tokio::test]
async fn queues_of_a_retired_tenant_declared_again_are_swept() {
    let broker = amqp().await;
    let (app, tenant) = retired_with_quick_sweeps(&broker, "declared-again").await;
    assert_eq!(queue_state(&broker, queue(&tenant)).await, None, "deleted with the tenant");
    let long_ago = app.create_tenant_id("deleted-long-ago").await;
    await_consumer(&broker, &long_ago).await;
    assert_eq!(app.delete(&format!("/tenants/{long_ago}")).await.status(), StatusCode::NO_CONTENT);
    let two_hours_ago = format!("UPDATE tenants SET deleted_at = now() - interval '2 hours' WHERE id = '{long_ago}'");
    sea_orm::ConnectionTrait::execute_unprepared(&app.db, &two_hours_ago).await.expect("deleted long ago");

    let channel = broker.create_channel().await.expect("channel");
    let durable = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
    for declared_again in [&tenant, &long_ago] {
        channel
            .queue_declare(queue(declared_again).as_str().into(), durable, lapin::types::FieldTable::default())
            .await
            .expect("declared again");
    }
    eventually(Duration::from_secs(60), "the retired tenant's queue swept", || async {
        queue_state(&broker, queue(&tenant)).await.is_none().then_some(())
    })
    .await;
    assert!(queue_state(&broker, queue(&long_ago)).await.is_some(), "a tenant deleted 2 hours ago is not swept");
    channel.queue_delete(queue(&long_ago).as_str().into(), Default::default()).await.expect("cleaned up");
    app.stop().await;
}

/// A consumer start that read the desired runtime before a delete can declare the tenant's queues after
/// another instance retired it (the start waited for its connection, or its instance was paused), then runs
/// until its reconciler reads the delete. Stopping, it finds the retirement done and deletes the queues:
/// nothing else would but the sweep, which covers the last hour of deletes only. The retirement done elsewhere
/// is stood in for by the partition dropped by hand, with the consumer still running.
#[tokio::test]
async fn a_consumer_that_stops_for_an_already_retired_tenant_deletes_its_queues() {
    let app = TestApp::spawn().await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("declared-late").await;
    await_consumer(&broker, &tenant).await;
    let dropped = format!("DROP TABLE {}", crate::helpers::partition(&tenant));
    sea_orm::ConnectionTrait::execute_unprepared(&app.db, &dropped).await.expect("retired elsewhere");
    // Whether the delete waited for a retirement or answered 503 `recorded`, it is in the log.
    let _deleted = app.delete(&format!("/tenants/{tenant}")).await;
    eventually(Duration::from_secs(30), "the queues declared late deleted", || async {
        let mut left = 0;
        for name in [queue(&tenant), crate::helpers::retry_queue(&tenant), crate::helpers::dlq(&tenant)] {
            left += usize::from(queue_state(&broker, &name).await.is_some());
        }
        (left == 0).then_some(())
    })
    .await;
    app.stop().await;
}

/// A publish that raced a delete may make the tenant's rate-limit bucket again after its retirement forgot
/// it; the sweep forgets it too.
#[tokio::test]
async fn a_rate_limit_bucket_made_again_after_a_retirement_is_swept() {
    let (app, tenant) = retired_with_quick_sweeps(&amqp().await, "raced").await;
    let made_again = format!("INSERT INTO publish_buckets VALUES ('{tenant}', 10, now())");
    sea_orm::ConnectionTrait::execute_unprepared(&app.db, &made_again).await.expect("a bucket made again");
    let buckets = format!("SELECT count(*) FROM publish_buckets WHERE tenant_id = '{tenant}'");
    eventually(Duration::from_secs(60), "the deleted tenant's bucket forgotten", || async {
        (app.scalar_i64(&buckets).await == 0).then_some(())
    })
    .await;
    app.stop().await;
}

/// A service whose retired-tenant sweep comes every 12 s (120 resyncs of 100 ms), and a tenant it ran a
/// consumer of, deleted (204: retired).
async fn retired_with_quick_sweeps(broker: &lapin::Connection, name: &str) -> (TestApp, String) {
    let mut config = test_config();
    config.consumer.resync_interval = Duration::from_millis(100);
    let app = TestApp::spawn_with(config).await;
    let tenant = app.create_tenant_id(name).await;
    await_consumer(broker, &tenant).await;
    assert_eq!(app.delete(&format!("/tenants/{tenant}")).await.status(), StatusCode::NO_CONTENT);
    (app, tenant)
}

/// A consumer stopping for a shutdown keeps its subscription until its workers have settled what they hold:
/// while it still writes for the tenant, the broker counts its consumer. Another instance retires a deleted
/// tenant as soon as the broker counts none, so a consumer that let go first could still be writing, or
/// sending back what it cannot write to queues that are gone.
#[tokio::test]
async fn a_consumer_shutting_down_stays_subscribed_until_its_workers_have_settled() {
    const MESSAGES: i64 = 20;
    let mut app = TestApp::spawn().await;
    let broker = amqp().await;
    let created = app.create_tenant_from(&json!({ "name": "draining", "workers": 1 })).await;
    let tenant = created["id"].as_str().expect("id").to_owned();
    await_consumer(&broker, &tenant).await;
    let lock = lock_partition(&app.config.database.url, &tenant).await;
    let messages: Vec<Value> = (0..MESSAGES).map(|i| json!({ "payload": { "i": i } })).collect();
    let published = app.post_json(&format!("/tenants/{tenant}/messages/batch"), &json!({ "messages": messages })).await;
    assert_eq!(published.status(), StatusCode::ACCEPTED);
    eventually(Duration::from_secs(20), "the worker's write to wait for the lock", || async {
        (crate::limits::writes_waiting_for_a_lock(&app).await > 0).then_some(())
    })
    .await;
    // The service's pool closes with it: the rows are counted on a connection of the test's own.
    let observer = sea_orm::Database::connect(&app.config.database.url).await.expect("observer");

    // The stop begins at once (its first poll cancels the service); the lock holds the write for a while.
    let consumers_while_writing = async {
        let mut counted = Vec::new();
        for _ in 0..20 {
            counted.push(queue_state(&broker, queue(&tenant)).await.map(|(_, consumers)| consumers));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        release(lock).await;
        counted
    };
    let ((), counted) = tokio::join!(app.stop_service(), consumers_while_writing);
    assert!(counted.iter().all(|consumers| *consumers == Some(1)), "consumers while the write waited: {counted:?}");
    // Nothing lost: what the worker held is a row, the rest went back to the queue.
    let rows_sql = format!("SELECT count(*) FROM messages WHERE tenant_id = '{tenant}'");
    let rows = crate::helpers::scalar_i64(&observer, &rows_sql).await;
    assert!(rows > 0, "the write that waited was finished");
    eventually(Duration::from_secs(10), "every other message back in the queue", || async {
        let (ready, consumers) = queue_state(&broker, queue(&tenant)).await.expect("the queue");
        (rows + i64::from(ready) == MESSAGES && consumers == 0).then_some(())
    })
    .await;
    observer.close().await.expect("close");
    app.stop().await;
}
