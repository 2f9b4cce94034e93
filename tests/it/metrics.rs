//! `/metrics` against the real broker and database: per-tenant counters and gauges agree with what was
//! published and with `GET /tenants/{id}`, queue depth follows a backlog, a deleted tenant's series go, and
//! every metric the dashboard and the alert rules use is exported.

use std::{collections::BTreeMap, time::Duration};

use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::{Value, json};
use tenantmq_testkit::RunningApp;

use crate::helpers::{TestApp, amqp, await_consumer, eventually, test_config};

/// One line of the text exposition: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (enough of it for what the service exports: no timestamps).
fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("a sample line: {line}"));
            let value = value.parse().unwrap_or_else(|_| panic!("a numeric value: {line}"));
            let Some((name, labels)) = series.split_once('{') else {
                return Sample { name: series.to_owned(), labels: BTreeMap::new(), value };
            };
            let labels = labels.strip_suffix('}').unwrap_or_else(|| panic!("closing brace: {line}"));
            Sample { name: name.to_owned(), labels: parse_labels(labels), value }
        })
        .collect()
}

/// `a="x",b="y"`; values may hold commas and braces (route templates), never quotes in this service.
fn parse_labels(mut text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while let Some((key, rest)) = text.split_once("=\"") {
        let (value, rest) = rest.split_once('"').expect("a closing quote");
        labels.insert(key.trim_start_matches(',').to_owned(), value.to_owned());
        text = rest;
    }
    labels
}

pub struct Scrape(Vec<Sample>);

impl Scrape {
    /// Scrapes an instance (a `TestApp` or a second instance on its database).
    pub async fn of(app: &RunningApp) -> Self {
        Self::at(&app.base_url).await
    }

    /// A scrape of the service at `base_url` (`/metrics` is open unless configured otherwise).
    pub async fn at(base_url: &str) -> Self {
        let response = reqwest::get(format!("{base_url}/metrics")).await.expect("scraped");
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"].to_str().expect("ascii").to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        Self(parse_exposition(&response.text().await.expect("metrics text")))
    }

    /// The value of the one series with this name and these labels (among others), if exported.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<&Sample> = self
            .0
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect();
        assert!(matching.len() <= 1, "{name} {labels:?} names one series, not {matching:?}");
        matching.first().map(|s| s.value)
    }

    pub fn tenant(&self, name: &str, tenant: &str) -> Option<f64> {
        self.value(name, &[("tenant_id", tenant)])
    }

    pub fn mentions(&self, tenant: &str) -> bool {
        self.0.iter().any(|s| s.labels.values().any(|v| v == tenant))
    }
}

pub fn fast_polling() -> tenantmq::config::Config {
    let mut config = test_config();
    config.metrics.queue_poll_interval = Duration::from_millis(200);
    config
}

#[tokio::test]
async fn message_counters_match_what_was_published_and_worker_gauges_match_the_tenant() {
    const SINGLES: usize = 5;
    const BATCH: usize = 100;
    const PUBLISHED: f64 = (SINGLES + BATCH) as f64;
    let app = TestApp::spawn_with(fast_polling()).await;
    let tenant = app.create_tenant_id("counted").await;
    // Refused before routing: counted under its route, not as `unmatched`.
    let repeated = app.get(&format!("/tenants/{tenant}/events?limit=1&limit=2")).await;
    assert_eq!(repeated.status(), StatusCode::BAD_REQUEST);
    let messages: Vec<Value> = (0..BATCH).map(|i| json!({ "payload": { "i": i } })).collect();
    let response = app.post_json(&format!("/tenants/{tenant}/messages/batch"), &json!({ "messages": messages })).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{}", response.text().await.unwrap_or_default());
    for i in 0..SINGLES {
        let response = app.post_json(&format!("/tenants/{tenant}/messages"), &json!({ "payload": i })).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    app.await_messages(&tenant, PUBLISHED as i64).await;

    let scrape = eventually(Duration::from_secs(20), "consumed and persisted counters to reach 105", || async {
        let scrape = Scrape::of(&app).await;
        let settled = scrape.tenant("tenantmq_messages_consumed_total", &tenant) == Some(PUBLISHED)
            && scrape.tenant("tenantmq_messages_persisted_total", &tenant) == Some(PUBLISHED)
            && scrape.tenant("tenantmq_queue_messages_unacked", &tenant) == Some(0.0);
        settled.then_some(scrape)
    })
    .await;
    for reason in ["transient", "permanent"] {
        let failed = scrape.value("tenantmq_messages_failed_total", &[("tenant_id", &tenant), ("reason", reason)]);
        assert_eq!(failed, Some(0.0), "no {reason} failures");
    }
    assert_eq!(scrape.tenant("tenantmq_messages_retried_total", &tenant), Some(0.0));
    assert_eq!(scrape.tenant("tenantmq_messages_dead_lettered_total", &tenant), Some(0.0));
    assert_eq!(scrape.tenant("tenantmq_consumer_up", &tenant), Some(1.0));
    // Every row went through one batch write or another: the batch sizes add up to the messages.
    assert_eq!(scrape.value("tenantmq_persist_batch_size_sum", &[]), Some(PUBLISHED));
    let batches = scrape.value("tenantmq_persist_batch_size_count", &[]).expect("batch count");
    assert!((1.0..=PUBLISHED).contains(&batches), "{batches} batches");
    assert_eq!(scrape.value("tenantmq_persist_duration_seconds_count", &[]), Some(batches));
    assert!(scrape.value("tenantmq_persist_duration_seconds_sum", &[]).is_some_and(|s| s > 0.0));
    // Each delivery's delay to its commit: one per row here, as nothing was redelivered.
    assert_eq!(scrape.value("tenantmq_message_persist_delay_seconds_count", &[]), Some(PUBLISHED));
    assert!(scrape.value("tenantmq_message_persist_delay_seconds_sum", &[]).is_some_and(|s| s > 0.0));

    // HTTP requests by route template, never by raw path.
    let requests = |route: &str, status: &str| {
        scrape.value("tenantmq_http_requests_total", &[("method", "POST"), ("route", route), ("status", status)])
    };
    assert_eq!(requests("/tenants/{id}/messages", "202"), Some(SINGLES as f64));
    assert_eq!(requests("/tenants/{id}/messages/batch", "202"), Some(1.0));
    assert_eq!(requests("/tenants", "201"), Some(1.0));
    assert!(!scrape.0.iter().any(|s| s.labels.get("route").is_some_and(|r| r.contains(&tenant))), "no raw paths");
    let refused = [("method", "GET"), ("route", "/tenants/{id}/events"), ("status", "400")];
    assert_eq!(scrape.value("tenantmq_http_requests_total", &refused), Some(1.0));
    let latency = scrape.value(
        "tenantmq_http_request_duration_seconds_count",
        &[("method", "POST"), ("route", "/tenants/{id}/messages")],
    );
    assert_eq!(latency, Some(SINGLES as f64));

    // The worker gauges say what GET /tenants/{id} says, before and after a resize.
    for workers in [3, 5] {
        if workers != 3 {
            let path = format!("/tenants/{tenant}/config/concurrency");
            assert_eq!(app.put_json(&path, &json!({ "workers": workers })).await.status(), StatusCode::OK);
        }
        eventually(Duration::from_secs(20), &format!("worker gauges at {workers}"), || async {
            let details: Value = app.get(&format!("/tenants/{tenant}")).await.json().await.expect("json");
            let scrape = Scrape::of(&app).await;
            let gauges = [
                scrape.tenant("tenantmq_workers_desired", &tenant),
                scrape.tenant("tenantmq_workers_running", &tenant),
                scrape.tenant("tenantmq_workers_busy", &tenant),
            ];
            let api =
                [&details["workers"], &details["runtime"]["running_workers"], &details["runtime"]["busy_workers"]]
                    .map(Value::as_f64);
            (gauges == api && gauges[..2] == [Some(f64::from(workers)); 2]).then_some(())
        })
        .await;
    }
    let scrape = Scrape::of(&app).await;
    assert_eq!(scrape.value("tenantmq_reconciler_actions_total", &[("action", "start")]), Some(1.0));
    assert_eq!(scrape.value("tenantmq_reconciler_actions_total", &[("action", "resize")]), Some(1.0));
    assert_eq!(scrape.value("tenantmq_broker_connected", &[]), Some(1.0));
    assert_eq!(scrape.value("tenantmq_broker_reconnects_total", &[]), Some(0.0));
    app.stop().await;
}

/// The tenant's partition is locked, so its one worker blocks on its first batch and the consumer holds
/// exactly one prefetch (workers × batch_size = 10) while the rest waits in the queue.
#[tokio::test]
async fn queue_depth_rises_while_the_consumer_is_held_back_and_falls_to_zero() {
    const MESSAGES: f64 = 200.0;
    const PREFETCH: f64 = 10.0;
    let mut config = fast_polling();
    config.consumer.batch_size = 10;
    let app = TestApp::spawn_with(config).await;
    let response = app.post_json("/tenants", &json!({ "name": "backlog", "workers": 1 })).await;
    let tenant = response.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned();
    await_consumer(&amqp().await, &tenant).await;

    let hold = app.db.begin().await.expect("transaction");
    let partition = crate::helpers::partition(&tenant);
    hold.execute_unprepared(&format!("LOCK TABLE {partition} IN ACCESS EXCLUSIVE MODE")).await.expect("lock");
    let messages: Vec<Value> = (0..MESSAGES as usize).map(|i| json!({ "payload": i })).collect();
    let response = app.post_json(&format!("/tenants/{tenant}/messages/batch"), &json!({ "messages": messages })).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    let ready = |scrape: &Scrape, queue: &str| {
        scrape.value("tenantmq_queue_messages_ready", &[("tenant_id", &tenant), ("queue", queue)])
    };
    eventually(Duration::from_secs(20), "the backlog in the queue and one prefetch held", || async {
        let scrape = Scrape::of(&app).await;
        let held = scrape.tenant("tenantmq_queue_messages_unacked", &tenant);
        (ready(&scrape, "main") == Some(MESSAGES - PREFETCH) && held == Some(PREFETCH)).then_some(())
    })
    .await;
    let scrape = Scrape::of(&app).await;
    assert_eq!(scrape.tenant("tenantmq_messages_persisted_total", &tenant), Some(0.0), "nothing written yet");
    assert_eq!(scrape.tenant("tenantmq_workers_busy", &tenant), Some(1.0));

    hold.rollback().await.expect("lock released");
    eventually(Duration::from_secs(30), "an empty queue and nothing held", || async {
        let scrape = Scrape::of(&app).await;
        let drained = ready(&scrape, "main") == Some(0.0)
            && scrape.tenant("tenantmq_queue_messages_unacked", &tenant) == Some(0.0)
            && scrape.tenant("tenantmq_messages_persisted_total", &tenant) == Some(MESSAGES);
        drained.then_some(())
    })
    .await;
    assert_eq!(ready(&Scrape::of(&app).await, "dlq"), Some(0.0), "the dead-letter queue is polled too");
    app.await_messages(&tenant, MESSAGES as i64).await;
    app.stop().await;
}

#[tokio::test]
async fn a_deleted_tenants_series_disappear_and_the_others_stay() {
    let app = TestApp::spawn_with(fast_polling()).await;
    let (deleted, kept) = (app.create_tenant_id("deleted").await, app.create_tenant_id("kept").await);
    for tenant in [&deleted, &kept] {
        let response = app.post_json(&format!("/tenants/{tenant}/messages"), &json!({ "payload": 1 })).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    eventually(Duration::from_secs(20), "both tenants' series, queue depth included", || async {
        let scrape = Scrape::of(&app).await;
        let complete = |tenant: &str| {
            scrape.tenant("tenantmq_messages_persisted_total", tenant) == Some(1.0)
                && scrape.value("tenantmq_queue_messages_ready", &[("tenant_id", tenant), ("queue", "main")]).is_some()
        };
        (complete(&deleted) && complete(&kept)).then_some(())
    })
    .await;

    assert_eq!(app.delete(&format!("/tenants/{deleted}")).await.status(), StatusCode::NO_CONTENT);
    eventually(Duration::from_secs(20), "no series of the deleted tenant", || async {
        (!Scrape::of(&app).await.mentions(&deleted)).then_some(())
    })
    .await;
    let scrape = Scrape::of(&app).await;
    assert_eq!(scrape.tenant("tenantmq_messages_persisted_total", &kept), Some(1.0));
    assert_eq!(scrape.tenant("tenantmq_consumer_up", &kept), Some(1.0));
    app.stop().await;
}

const MONITORING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/monitoring");

/// Every `tenantmq_…` name in a file.
fn metric_names_in(path: &str) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut names: Vec<String> = text
        .match_indices("tenantmq_")
        .map(|(start, _)| {
            let rest = &text[start..];
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            rest[..end].to_owned()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn the_dashboard_is_json_whose_panels_all_have_queries() {
    let path = format!("{MONITORING}/grafana/dashboards/tenantmq.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("JSON");
    assert_eq!(dashboard["uid"], "tenantmq");
    let panels = dashboard["panels"].as_array().expect("panels");
    let queries: Vec<&Value> = panels.iter().filter(|p| p["type"] != "row").collect();
    assert!(queries.len() >= 10, "queue depth, workers, throughput, latency, errors");
    for panel in queries {
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{} has targets", panel["title"]));
        assert!(!targets.is_empty() && targets.iter().all(|t| t["expr"].as_str().is_some_and(|e| !e.is_empty())));
    }
}

/// The service is driven until every kind of series exists (a tenant, a message, a dead letter, a scrape of
/// the queue depths), then each name the dashboard and the alert rules query must be in its exposition; and
/// the release it runs is named, as Prometheus's convention has it (`tenantmq_build_info`).
#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_use_is_exported() {
    let used: Vec<(String, String)> = ["grafana/dashboards/tenantmq.json", "prometheus/alerts.yml"]
        .iter()
        .flat_map(|file| metric_names_in(&format!("{MONITORING}/{file}")).into_iter().map(|n| (file.to_string(), n)))
        .collect();
    assert!(used.len() >= 15, "the files query the metrics: {used:?}");

    let app = TestApp::spawn_with(fast_polling()).await;
    let tenant = app.create_tenant_id("observed").await;
    app.assert_consuming([&tenant]).await;
    let scrape = eventually(Duration::from_secs(20), "the queue depths to be polled", || async {
        let scrape = Scrape::of(&app).await;
        scrape.value("tenantmq_queue_messages_ready", &[("tenant_id", &tenant), ("queue", "main")]).map(|_| scrape)
    })
    .await;
    let missing: Vec<&(String, String)> =
        used.iter().filter(|(_, name)| !scrape.0.iter().any(|sample| &sample.name == name)).collect();
    assert!(missing.is_empty(), "used but not exported: {missing:?}");
    let release = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(scrape.value("tenantmq_build_info", &release), Some(1.0), "the release this instance runs");
    app.stop().await;
}
