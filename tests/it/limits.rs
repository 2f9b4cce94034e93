//! Tenant limits: set as events, shown, replayed; the publish rate (also across instances) and the backlog
//! cap answered with 429; the database shared fairly between tenants that compete for it.

use std::time::{Duration, Instant};

use reqwest::{Response, StatusCode};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use tenantmq::{projectors, store::tenants::TenantReadModel};
use tenantmq_testkit::RunningApp;

use crate::{
    dead_letters::{hold_in_transaction, lock_partition, release},
    helpers::{
        TestApp, amqp, assert_problem, await_consumer, eventually, queue, queue_state, slow_down_inserts, test_config,
    },
    metrics::Scrape,
    proxy::Proxy,
    scale_out::consumer_tag,
};

async fn json_of(response: Response) -> Value {
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("json")
}

fn limits_path(tenant: &str) -> String {
    format!("/tenants/{tenant}/config/limits")
}

/// Publishes `n` messages in one batch; the status.
async fn publish(app: &RunningApp, tenant: &str, n: usize) -> Response {
    let messages: Vec<Value> = (0..n).map(|i| json!({ "payload": { "i": i } })).collect();
    let url = app.url(&format!("/tenants/{tenant}/messages/batch"));
    app.client.post(url).json(&json!({ "messages": messages })).send().await.expect("sent")
}

#[tokio::test]
async fn limits_are_events_shown_with_their_source_replayed_and_in_the_history() {
    let mut config = test_config();
    config.limits.publish_rate = Some(1000);
    let app = TestApp::spawn_with(config).await;
    let id = app.create_tenant_id("limited").await;
    let tenant = json_of(app.get(&format!("/tenants/{id}")).await).await;
    let defaults = json!({ "publish_rate": 1000, "publish_burst": null, "max_queue_depth": null, "source": "default" });
    assert_eq!(tenant["limits"], defaults, "the configured defaults, until the tenant has its own");

    let set = json!({ "publish_rate": 50, "publish_burst": 100, "max_queue_depth": 10 });
    let tenant = json_of(app.put_json(&limits_path(&id), &set).await).await;
    let own = json!({ "publish_rate": 50, "publish_burst": 100, "max_queue_depth": 10, "source": "tenant" });
    assert_eq!(tenant["limits"], own, "the response reads the caller's own write");
    assert_eq!(tenant["version"], 2);
    let again = json_of(app.put_json(&limits_path(&id), &set).await).await;
    assert_eq!(again["version"], 2, "setting the same limits again records nothing");
    // Absent is unlimited: a PUT sets all three.
    let unlimited = json_of(app.put_json(&limits_path(&id), &json!({})).await).await;
    let none = json!({ "publish_rate": null, "publish_burst": null, "max_queue_depth": null, "source": "tenant" });
    assert_eq!(unlimited["limits"], none, "unlimited overrides the configured defaults");
    assert_eq!(json_of(app.get(&format!("/tenants/{id}")).await).await["limits"], none);

    let history = json_of(app.get(&format!("/tenants/{id}/events")).await).await;
    let events = history["data"].as_array().expect("data");
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().expect("type")).collect();
    assert_eq!(types, ["TenantCreated.v1", "TenantLimitsSet.v1", "TenantLimitsSet.v1"]);
    assert_eq!(events[1]["data"], json!({ "publish_rate": 50, "publish_burst": 100, "max_queue_depth": 10 }));
    let position = events[1]["position"].as_i64().expect("position");
    let then = json_of(app.get(&format!("/tenants/{id}/state?at_position={position}")).await).await;
    assert_eq!(then["limits"], own, "as-of reads show the limits of the time");
    let before = json_of(app.get(&format!("/tenants/{id}/state?at_position={}", position - 1)).await).await;
    assert!(before["limits"].is_null(), "none set yet: {before}");

    // Rebuilt from the log, the read model holds the same limits.
    let read_model = TenantReadModel::new(app.db.clone());
    let rows = read_model.all().await.expect("rows");
    app.db.execute_unprepared("UPDATE tenants SET publish_rate = 7, limits_set = false").await.expect("corrupt");
    projectors::replay_all(&app.db, 2).await.expect("replay");
    assert_eq!(read_model.all().await.expect("rows"), rows);
    app.stop().await;
}

#[tokio::test]
async fn limits_out_of_range_are_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    let id = app.create_tenant_id("bounded").await;
    let cases = [
        (json!({ "publish_rate": 0 }), "publish_rate"),
        (json!({ "publish_rate": -5 }), "publish_rate"),
        (json!({ "publish_rate": 1_000_001 }), "publish_rate"),
        (json!({ "publish_rate": 10, "publish_burst": 99_999_999_999_i64 }), "publish_burst"),
        (json!({ "publish_burst": 10 }), "publish_burst"),
        (json!({ "max_queue_depth": 1e300 }), "max_queue_depth"),
        (json!({ "max_queue_depth": "10" }), "max_queue_depth"),
        (json!({ "publish_rate": 1.5 }), "publish_rate"),
        (json!({ "publish_rat": 10 }), "publish_rat"),
    ];
    for (body, field) in cases {
        let response = app.put_json(&limits_path(&id), &body).await;
        assert_problem(response, StatusCode::BAD_REQUEST, Some(field)).await;
    }
    let tenant = json_of(app.get(&format!("/tenants/{id}")).await).await;
    assert_eq!(tenant["version"], 1, "nothing was recorded");
    app.stop().await;
}

#[tokio::test]
async fn over_its_rate_a_tenant_gets_429_with_retry_after_and_a_batch_is_admitted_whole_or_not_at_all() {
    let app = TestApp::spawn().await;
    let id = app.create_tenant_id("rated").await;
    // 1/s, so that 3 tokens take 3 s to come back: time enough for the refused publish on a busy machine.
    let set = json!({ "publish_rate": 1, "publish_burst": 5 });
    assert_eq!(app.put_json(&limits_path(&id), &set).await.status(), StatusCode::OK);

    let drained = Instant::now();
    assert_eq!(publish(&app, &id, 5).await.status(), StatusCode::ACCEPTED, "a full bucket takes the burst");
    let refused = publish(&app, &id, 3).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS, "{:?} after the burst", drained.elapsed());
    let retry_after: u64 = refused.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=3).contains(&retry_after), "3 tokens at 1/s: {retry_after}");
    let problem = assert_problem(refused, StatusCode::TOO_MANY_REQUESTS, None).await;
    assert_eq!(problem["type"], "urn:tenantmq:problem:rate-limited");
    assert_problem(publish(&app, &id, 6).await, StatusCode::BAD_REQUEST, Some("messages")).await;

    eventually(Duration::from_secs(20), "tokens to refill", || async {
        (publish(&app, &id, 3).await.status() == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    assert!(drained.elapsed() >= Duration::from_millis(2500), "3 tokens take 3 s to refill at 1/s");
    app.await_messages(&id, 8).await;
    app.stop().await;
}

#[tokio::test]
async fn a_tenant_whose_queue_holds_its_max_depth_gets_429_queue_full_until_it_drains() {
    let mut config = test_config();
    config.consumer.batch_size = 10;
    let app = TestApp::spawn_with(config).await;
    let created = app.post_json("/tenants", &json!({ "name": "deep", "workers": 1 })).await;
    let id = created.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned();
    await_consumer(&amqp().await, &id).await;
    let limits = json!({ "max_queue_depth": 5, "publish_rate": 1000, "publish_burst": 25 });
    assert_eq!(app.put_json(&limits_path(&id), &limits).await.status(), StatusCode::OK);

    // The one worker blocks on the locked partition with one prefetch (10); the rest stays ready in the queue.
    let lock = lock_partition(&app.config.database.url, &id).await;
    assert_eq!(publish(&app, &id, 20).await.status(), StatusCode::ACCEPTED);
    let refused = eventually(Duration::from_secs(10), "the backlog cap to apply", || async {
        let response = publish(&app, &id, 1).await;
        (response.status() == StatusCode::TOO_MANY_REQUESTS).then_some(response)
    })
    .await;
    assert_eq!(refused.headers()["retry-after"], "1");
    let problem = assert_problem(refused, StatusCode::TOO_MANY_REQUESTS, None).await;
    assert_eq!(problem["type"], "urn:tenantmq:problem:queue-full");
    // A batch larger than the burst can never go in: it hears so now, not after waiting for the queue to drain.
    assert_problem(publish(&app, &id, 26).await, StatusCode::BAD_REQUEST, Some("messages")).await;

    release(lock).await;
    eventually(Duration::from_secs(30), "publishes accepted once the queue drained", || async {
        (publish(&app, &id, 1).await.status() == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    app.stop().await;
}

/// Two instances publish for one tenant as fast as they can: together they get what the rate and the burst
/// allow over the time they tried, plus at most the chunk each instance may hold.
#[tokio::test]
async fn two_instances_share_one_tenants_rate() {
    const RATE: u64 = 40;
    const BURST: u64 = 40;
    let first = TestApp::spawn().await;
    let mut second = RunningApp::start(first.config.clone()).await.expect("a second instance");
    let id = first.create_tenant_id("shared-rate").await;
    let set = json!({ "publish_rate": RATE, "publish_burst": BURST });
    assert_eq!(first.put_json(&limits_path(&id), &set).await.status(), StatusCode::OK);

    let started = Instant::now();
    let clients = [&*first, &second].into_iter().flat_map(|app| [app, app]).map(|app| {
        let id = id.clone();
        async move {
            let mut accepted = 0;
            while started.elapsed() < Duration::from_secs(3) {
                match publish(app, &id, 1).await.status() {
                    StatusCode::ACCEPTED => accepted += 1,
                    StatusCode::TOO_MANY_REQUESTS => tokio::time::sleep(Duration::from_millis(5)).await,
                    other => panic!("unexpected {other}"),
                }
            }
            accepted
        }
    });
    let accepted: u64 = futures_util::future::join_all(clients).await.into_iter().sum();
    let elapsed = started.elapsed().as_secs_f64();
    // Each instance may hold one chunk (1/20 of a second of the rate, at least 1) beyond the bucket.
    let most = BURST as f64 + RATE as f64 * elapsed + 2.0 * (RATE / 20).max(1) as f64;
    assert!(accepted as f64 <= most, "{accepted} accepted in {elapsed:.2}s; at most {most:.0} allowed");
    assert!(accepted > BURST, "the bucket refilled while they tried: {accepted}");
    first.await_messages(&id, i64::try_from(accepted).expect("count")).await;
    second.stop().await.expect("second instance stopped");
    first.stop().await;
}

/// Holds the tenant's bucket row locked, as a lease does while it runs, until [`release`].
async fn lock_bucket(app: &RunningApp, tenant: &str) -> sea_orm::sqlx::PgConnection {
    let row = format!("SELECT 1 FROM publish_buckets WHERE tenant_id = '{tenant}' FOR UPDATE");
    hold_in_transaction(&app.config.database.url, &row).await
}

/// Publishes that lease at the same moment each get a remainder beyond what they need; an instance keeps at
/// most one chunk of them, so what it admits next is bounded by what the shared bucket holds, plus one chunk.
#[tokio::test]
async fn an_instance_keeps_at_most_one_chunk_of_the_tokens_it_leased() {
    const RATE: u32 = 1000;
    const CHUNK: f64 = 50.0;
    let app = TestApp::spawn().await;
    let id = app.create_tenant_id("chunked").await;
    let set = json!({ "publish_rate": RATE, "publish_burst": RATE });
    assert_eq!(app.put_json(&limits_path(&id), &set).await.status(), StatusCode::OK);
    let at_once = (0..40).map(|_| publish(&app, &id, 1));
    let statuses: Vec<StatusCode> =
        futures_util::future::join_all(at_once).await.iter().map(Response::status).collect();
    assert!(statuses.contains(&StatusCode::ACCEPTED), "{statuses:?}");

    let started = Instant::now();
    let in_bucket = format!(
        "SELECT least({RATE}, tokens + {RATE} * extract(epoch FROM clock_timestamp() - refilled_at))::bigint \
         FROM publish_buckets WHERE tenant_id = '{id}'"
    );
    let in_bucket = app.scalar_i64(&in_bucket).await as f64;
    let mut admitted = 0.0;
    for _ in 0..200 {
        match publish(&app, &id, 50).await.status() {
            StatusCode::ACCEPTED => admitted += 50.0,
            StatusCode::TOO_MANY_REQUESTS => break,
            other => panic!("unexpected {other}"),
        }
    }
    // +1: the bucket's reading was rounded.
    let most = in_bucket + 1.0 + f64::from(RATE) * started.elapsed().as_secs_f64() + CHUNK;
    assert!(admitted <= most, "{admitted} admitted; the bucket held {in_bucket}, so at most {most:.0}");
    app.stop().await;
}

/// Refused, an instance remembers what the bucket held: until it can have refilled enough, a publish is
/// refused at once without touching the bucket's row (here locked, so a lease would wait for it).
#[tokio::test]
async fn a_tenant_over_its_rate_is_refused_without_a_round_trip_to_the_bucket() {
    let app = TestApp::spawn().await;
    let id = app.create_tenant_id("hammering").await;
    let set = json!({ "publish_rate": 1, "publish_burst": 5 });
    assert_eq!(app.put_json(&limits_path(&id), &set).await.status(), StatusCode::OK);
    assert_eq!(publish(&app, &id, 5).await.status(), StatusCode::ACCEPTED);
    assert_eq!(publish(&app, &id, 5).await.status(), StatusCode::TOO_MANY_REQUESTS);

    let lock = lock_bucket(&app, &id).await;
    // Five tokens take five seconds to refill at 1/s.
    let hammering = async {
        for _ in 0..20 {
            let refused = publish(&app, &id, 5).await;
            let retry_after: u64 = refused.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
            assert!((1..=5).contains(&retry_after), "{retry_after}");
            assert_problem(refused, StatusCode::TOO_MANY_REQUESTS, None).await;
        }
    };
    let answered = tokio::time::timeout(Duration::from_secs(3), hammering).await;
    release(lock).await;
    assert!(answered.is_ok(), "refusals waited for the bucket's row");
    app.stop().await;
}

/// The database's clock set back (an NTP correction, a failover to a host behind): the bucket's last refill
/// then lies in the future. It refills again from the first lease after the step, not once the clock has
/// caught up with it (ten minutes here, answered 429 all along before). Nor does a bucket set to hold
/// `-Infinity` tokens by hand refuse its tenant for good.
#[tokio::test]
async fn a_bucket_refills_after_the_database_clock_is_set_back_or_its_tokens_are_set_wrong() {
    let app = TestApp::spawn().await;
    let id = app.create_tenant_id("clock set back").await;
    let set = json!({ "publish_rate": 10, "publish_burst": 10 });
    assert_eq!(app.put_json(&limits_path(&id), &set).await.status(), StatusCode::OK);
    assert_eq!(publish(&app, &id, 10).await.status(), StatusCode::ACCEPTED, "the burst");
    let set_back = format!(
        "UPDATE publish_buckets SET tokens = 0, refilled_at = now() + interval '10 minutes' WHERE tenant_id = '{id}'"
    );
    app.db.execute_unprepared(&set_back).await.expect("the clock set back");

    let refilled = || {
        eventually(Duration::from_secs(20), "the bucket to refill", || async {
            (publish(&app, &id, 5).await.status() == StatusCode::ACCEPTED).then_some(())
        })
    };
    refilled().await;
    let set_wrong = format!("UPDATE publish_buckets SET tokens = '-Infinity' WHERE tenant_id = '{id}'");
    app.db.execute_unprepared(&set_wrong).await.expect("set wrong by hand");
    refilled().await;
    app.await_messages(&id, 20).await;
    app.stop().await;
}

/// A lease that waits past `database.statement_timeout` (the bucket's row locked from outside) is the
/// database being unavailable for the moment: 503, not 500.
#[tokio::test]
async fn a_publish_whose_lease_times_out_in_the_database_answers_503() {
    let mut config = test_config();
    config.database.statement_timeout = Some(Duration::from_secs(1));
    let app = TestApp::spawn_with(config).await;
    let id = app.create_tenant_id("slow bucket").await;
    let set = json!({ "publish_rate": 100, "publish_burst": 100 });
    assert_eq!(app.put_json(&limits_path(&id), &set).await.status(), StatusCode::OK);
    // The whole burst: the instance holds no tokens, so the next publish must lease.
    assert_eq!(publish(&app, &id, 100).await.status(), StatusCode::ACCEPTED);

    let lock = lock_bucket(&app, &id).await;
    let waited = publish(&app, &id, 1).await;
    release(lock).await;
    let problem = assert_problem(waited, StatusCode::SERVICE_UNAVAILABLE, None).await;
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("database")), "{problem}");
    app.stop().await;
}

/// A deleted tenant's id never publishes again: its bucket goes with its partition.
#[tokio::test]
async fn a_retired_tenants_bucket_is_forgotten() {
    let app = TestApp::spawn().await;
    let id = app.create_tenant_id("short-lived").await;
    let set = json!({ "publish_rate": 10 });
    assert_eq!(app.put_json(&limits_path(&id), &set).await.status(), StatusCode::OK);
    assert_eq!(publish(&app, &id, 1).await.status(), StatusCode::ACCEPTED);
    let buckets = format!("SELECT count(*) FROM publish_buckets WHERE tenant_id = '{id}'");
    assert_eq!(app.scalar_i64(&buckets).await, 1);

    assert_eq!(app.delete(&format!("/tenants/{id}")).await.status(), StatusCode::NO_CONTENT);
    let partition = format!("SELECT count(*) FROM pg_class WHERE relname = '{}'", crate::helpers::partition(&id));
    eventually(Duration::from_secs(30), "the tenant retired", || async {
        (app.scalar_i64(&partition).await == 0).then_some(())
    })
    .await;
    assert_eq!(app.scalar_i64(&buckets).await, 0);
    app.stop().await;
}

/// A service with `write_connections` and batches of 10, and two tenants of the given names and workers; their ids.
async fn competing(write_connections: u32, tenants: [(&str, u16); 2]) -> (TestApp, Vec<String>) {
    competing_with(test_config(), write_connections, tenants).await
}

/// [`competing`], on the given configuration.
async fn competing_with(
    mut config: tenantmq::config::Config,
    write_connections: u32,
    tenants: [(&str, u16); 2],
) -> (TestApp, Vec<String>) {
    config.database.write_connections = Some(write_connections);
    config.consumer.batch_size = 10;
    let app = TestApp::spawn_with(config).await;
    let mut ids = Vec::new();
    for (name, workers) in tenants {
        let created = app.post_json("/tenants", &json!({ "name": name, "workers": workers })).await;
        ids.push(created.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned());
    }
    (app, ids)
}

/// Two tenants compete for two write connections with full queues: the one with four times the workers gets
/// about four times the writes, and the other keeps writing all along.
#[tokio::test]
async fn tenants_competing_for_the_database_get_shares_in_proportion_to_their_workers() {
    const MESSAGES: usize = 2000;
    let (app, tenants) = competing(2, [("many", 8), ("few", 2)]).await;
    let broker = amqp().await;
    let mut locks = Vec::new();
    for id in &tenants {
        await_consumer(&broker, id).await;
        // Every write takes at least 10 ms, so the two connections are the bottleneck.
        slow_down_inserts(&app.db, id, 0.01).await;
        locks.push(lock_partition(&app.config.database.url, id).await);
    }
    for id in &tenants {
        for _ in 0..MESSAGES / 1000 {
            assert_eq!(publish(&app, id, 1000).await.status(), StatusCode::ACCEPTED);
        }
    }
    for lock in locks {
        release(lock).await;
    }
    // Both still have a backlog until one of them has written about half of its messages.
    let (many, few) = eventually(Duration::from_secs(120), "a third of the messages written", || async {
        let (many, few) = (app.message_count(&tenants[0]).await, app.message_count(&tenants[1]).await);
        (many + few >= (MESSAGES as i64) * 2 / 3).then_some((many, few))
    })
    .await;
    let share = many as f64 / (many + few) as f64;
    assert!((0.65..=0.92).contains(&share), "8 against 2 workers should get about 80 %: {many} / {few}");
    assert!(few >= 60, "the tenant with fewer workers kept writing: {many} / {few}");
    app.stop().await;
}

/// One tenant's writes hang (its partition is locked, as `VACUUM FULL` or an `ALTER TABLE` would lock it) while
/// it has more workers than there are write connections: the other tenants keep a quarter of the connections,
/// and go on writing until the lock ends, when the stuck tenant's messages are written too.
#[tokio::test]
async fn a_tenant_whose_writes_hang_cannot_hold_every_write_connection() {
    let (app, tenants) = competing(4, [("stuck", 8), ("other", 1)]).await;
    let (stuck, other) = (&tenants[0], &tenants[1]);
    let broker = amqp().await;
    for id in &tenants {
        await_consumer(&broker, id).await;
    }
    let lock = lock_partition(&app.config.database.url, stuck).await;
    assert_eq!(publish(&app, stuck, 200).await.status(), StatusCode::ACCEPTED);
    // Its workers take batches and wait for the lock, as many as may hold a connection (3 of 4 with the
    // quarter kept; all 4 without it).
    eventually(Duration::from_secs(20), "the stuck tenant's writes waiting", || async {
        (writes_waiting_for_a_lock(&app).await >= 3).then_some(())
    })
    .await;
    // Every worker is busy, but five of them only wait for a turn: more workers would not write more.
    eventually(Duration::from_secs(20), "the workers beyond the share waiting for a turn", || async {
        let scrape = Scrape::of(&app).await;
        let gauge = |name| scrape.tenant(name, stuck);
        (gauge("tenantmq_workers_busy") == Some(8.0) && gauge("tenantmq_workers_waiting_for_write") == Some(5.0))
            .then_some(())
    })
    .await;
    assert_eq!(publish(&app, other, 5).await.status(), StatusCode::ACCEPTED);
    eventually(Duration::from_secs(20), "the other tenant's messages written while the lock is held", || async {
        (app.message_count(other).await == 5).then_some(())
    })
    .await;
    assert_eq!(app.message_count(stuck).await, 0, "the lock still holds the stuck tenant's writes");
    release(lock).await;
    eventually(Duration::from_secs(30), "the stuck tenant's messages written after the lock", || async {
        (app.message_count(stuck).await == 200).then_some(())
    })
    .await;
    app.stop().await;
}

/// Inserts of messages waiting for a lock, on the service's database.
pub(crate) async fn writes_waiting_for_a_lock(app: &TestApp) -> i64 {
    app.scalar_i64(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO messages%'",
    )
    .await
}

/// Nor when its consumer's connection is lost meanwhile. The consumer stops its workers after a moment, but
/// their writes go on waiting for the lock, each on its connection: they still count against the tenant's
/// share, so the restarted consumer's workers wait for a turn rather than take more connections; and the
/// consumer comes back at once rather than waiting for them, with workers started for what it still held.
#[tokio::test]
async fn a_tenant_whose_writes_hang_holds_no_more_connections_after_its_consumer_is_cut_off() {
    let mut config = test_config();
    let (proxy, through_proxy) = Proxy::in_front_of(&config.rabbitmq.url).await;
    config.rabbitmq.url = through_proxy;
    let (app, tenants) = competing_with(config, 4, [("stuck", 8), ("other", 1)]).await;
    let (stuck, other) = (&tenants[0], &tenants[1]);
    let broker = amqp().await;
    for id in &tenants {
        await_consumer(&broker, id).await;
    }
    let lock = lock_partition(&app.config.database.url, stuck).await;
    // One at a time: the workers take them in small batches as they come, and once all 8 hold one (3 writing,
    // 5 waiting for a turn), the rest wait in the consumer for a worker.
    for _ in 0..40 {
        assert_eq!(publish(&app, stuck, 1).await.status(), StatusCode::ACCEPTED);
    }
    eventually(Duration::from_secs(20), "the stuck tenant's writes waiting", || async {
        (writes_waiting_for_a_lock(&app).await >= 3).then_some(())
    })
    .await;

    let cut_off = consumer_tag(&app, stuck).await.expect("a running consumer's tag");
    proxy.cut();
    eventually(Duration::from_secs(30), "the stuck tenant's consumer back, holding its 40 messages", || async {
        let tag = consumer_tag(&app, stuck).await.filter(|tag| *tag != cut_off)?;
        queue_state(&broker, queue(stuck)).await.filter(|&(ready, consumers)| consumers == 1 && ready == 0)?;
        Some(tag)
    })
    .await;
    // The publishing connection was cut too.
    eventually(Duration::from_secs(30), "the service ready again", || async {
        (app.get("/readyz").await.status() == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(publish(&app, other, 5).await.status(), StatusCode::ACCEPTED);
    eventually(Duration::from_secs(20), "the other tenant's messages written while the lock is held", || async {
        (app.message_count(other).await == 5).then_some(())
    })
    .await;
    let waiting = writes_waiting_for_a_lock(&app).await;
    assert_eq!(waiting, 3, "the stuck tenant writes on 3 of the 4 write connections, its share, and no more");
    assert_eq!(app.message_count(stuck).await, 0, "the lock still holds the stuck tenant's writes");
    release(lock).await;
    app.await_messages(stuck, 40).await;
    app.stop().await;
}

/// A graceful stop ends on time while writes wait for a lock that is never released: the pool's close would
/// wait for their connections forever.
#[tokio::test]
async fn a_graceful_stop_ends_on_time_while_writes_wait_for_a_lock() {
    let mut config = test_config();
    config.shutdown_timeout = Duration::from_secs(2);
    let mut app = TestApp::spawn_with(config).await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("locked out").await;
    await_consumer(&broker, &tenant).await;
    let lock = lock_partition(&app.config.database.url, &tenant).await;
    assert_eq!(publish(&app, &tenant, 20).await.status(), StatusCode::ACCEPTED);
    eventually(Duration::from_secs(20), "the tenant's writes waiting", || async {
        (writes_waiting_for_a_lock(&app).await >= 1).then_some(())
    })
    .await;

    let stopped = tokio::time::timeout(Duration::from_secs(20), app.stop_service()).await;
    assert!(stopped.is_ok(), "the service did not stop within 20 s of a stop, with a shutdown timeout of 2 s");
    release(lock).await;
    app.stop().await;
}

/// Clients that hang up as soon as they have sent do not take back what they sent: their messages still go to
/// the broker. What this instance holds for them on the way is bounded by
/// `rabbitmq.max_publish_bytes_in_flight`, a tenant's by a quarter of it: with the broker silent, three batches
/// fit in the tenant's share and hold it, and the others wait for room until their clients give up. Without the bound, 300 batches whose clients hung up at
/// once made the release binary hold 330 MB. Room comes back when the broker has not confirmed within
/// `rabbitmq.publish_timeout`, though it stays silent: else it would hold every tenant's publishes for good.
#[tokio::test]
async fn publishes_whose_clients_hang_up_hold_at_most_the_in_flight_bound_and_give_it_back() {
    const BATCH: usize = 100;
    // Each message counts its body and 4 KiB: a tenant's share, a quarter, has room for three batches of 100,
    // not four.
    const BUDGET: u32 = 5_200_000;
    let mut config = test_config();
    let (proxy, through_proxy) = Proxy::in_front_of(&config.rabbitmq.url).await;
    config.rabbitmq.url = through_proxy;
    config.rabbitmq.max_publish_bytes_in_flight = BUDGET;
    // Longer than the clients wait (2 s), so that room is still held when they have given up.
    config.rabbitmq.publish_timeout = Duration::from_secs(5);
    // One publishing channel, opened by a first publish: the stall then holds publishes, not channel opens.
    config.rabbitmq.publisher_channels = 1;
    let app = TestApp::spawn_with(config).await;
    let tenant = app.create_tenant_id("hasty-clients").await;
    await_consumer(&amqp().await, &tenant).await;
    let batch = json!({ "messages": (0..BATCH).map(|i| json!({ "payload": { "i": i } })).collect::<Vec<_>>() });
    let path = format!("/tenants/{tenant}/messages/batch");
    assert_eq!(app.post_json(&path, &batch).await.status(), StatusCode::ACCEPTED);
    let in_flight =
        || async { Scrape::of(&app).await.value("tenantmq_publish_bytes_in_flight", &[]).expect("exported") };

    proxy.stall();
    let hasty: Vec<_> = (0..8)
        .map(|_| tokio::spawn(app.client.post(app.url(&path)).json(&batch).timeout(Duration::from_secs(2)).send()))
        .collect();
    for request in hasty {
        assert!(request.await.expect("joined").is_err(), "a client that gave up");
    }
    let held = in_flight().await;
    let three_batches = (3 * BATCH * 4096) as f64;
    assert!(three_batches < held && held <= f64::from(BUDGET / 4), "{held} bytes in flight for three batches");

    eventually(Duration::from_secs(30), "the room given back with the broker still silent", || async {
        (in_flight().await == 0.0).then_some(())
    })
    .await;
    proxy.restore();
    eventually(Duration::from_secs(30), "a publish after them", || async {
        (app.post_json(&path, &batch).await.status() == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    app.stop().await;
}
