//! Trace context: a caller's `traceparent` continues into event metadata and into the AMQP headers of what
//! it publishes; spans reach an OTLP collector when one is configured.

use std::time::Duration;

use lapin::{
    options::BasicGetOptions,
    types::{AMQPValue, FieldTable},
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value, trace::v1::Span,
};
use prost::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc,
};
use uuid::Uuid;

use crate::{
    dead_letters::{await_dlq_depth, lock_partition, release},
    helpers::{
        TestApp, amqp, await_consumer, create_database, dlq, eventually, remove_database, scalar_i64, test_config,
    },
    processes,
};

/// A fresh W3C trace id (32 hex digits) and a `traceparent` of a sampled caller span in it.
fn caller_trace() -> (String, String) {
    let trace_id = Uuid::new_v4().simple().to_string();
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    (trace_id, traceparent)
}

fn header_text<'a>(headers: &'a FieldTable, name: &str) -> Option<&'a str> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
        _ => None,
    }
}

#[tokio::test]
async fn a_published_message_carries_the_callers_trace_in_its_amqp_headers() {
    let mut config = test_config();
    // The partition is locked, so the insert times out and, with no retries, the message is dead-lettered:
    // it then waits in the DLQ with its headers, where the test can read it.
    config.database.statement_timeout = Some(Duration::from_secs(1));
    config.max_retries = 0;
    let app = TestApp::spawn_with(config).await;
    let broker = amqp().await;
    let tenant = app.create_tenant_id("traced").await;
    await_consumer(&broker, &tenant).await;
    let lock = lock_partition(&app.config.database.url, &tenant).await;

    let (trace_id, traceparent) = caller_trace();
    // A trace state as long as W3C allows, which would go into every message's headers: left out.
    let tracestate = (0..32).map(|i| format!("k{i}={}", "v".repeat(250))).collect::<Vec<_>>().join(",");
    let published = app
        .client
        .post(app.url(&format!("/tenants/{tenant}/messages")))
        .header("traceparent", &traceparent)
        .header("tracestate", &tracestate)
        .json(&json!({ "payload": { "n": 1 } }))
        .send()
        .await
        .expect("sent");
    assert_eq!(published.status(), StatusCode::ACCEPTED);
    await_dlq_depth(&broker, &tenant, 1).await;

    let channel = broker.create_channel().await.expect("channel");
    let letter = channel
        .basic_get(dlq(&tenant).as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .expect("the dead letter");
    let headers = letter.delivery.properties.headers().clone().expect("headers");
    let sent = header_text(&headers, "traceparent").expect("a traceparent header");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(parts[1], trace_id, "the caller's trace: {sent}");
    assert_ne!(parts[2], "00f067aa0ba902b7", "the parent is the service's publish span, not the caller's: {sent}");
    assert_eq!(parts[3], "01", "the caller's sampling decision is kept: {sent}");
    let carried = header_text(&headers, "tracestate").unwrap_or_default();
    assert!(carried.is_empty(), "the caller's long trace state was carried: {} bytes", carried.len());

    release(lock).await;
    app.stop().await;
}

#[tokio::test]
async fn event_metadata_records_the_trace_id_of_the_request() {
    let app = TestApp::spawn().await;
    let (trace_id, traceparent) = caller_trace();
    let created = app
        .client
        .post(app.url("/tenants"))
        .header("traceparent", &traceparent)
        .json(&json!({ "name": "traced" }))
        .send()
        .await
        .expect("sent");
    assert_eq!(created.status(), StatusCode::CREATED);
    let tenant = created.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned();
    // Without a traceparent the request starts a trace of its own.
    let resized = app.put_json(&format!("/tenants/{tenant}/config/concurrency"), &json!({ "workers": 2 })).await;
    assert_eq!(resized.status(), StatusCode::OK);

    let history: Value = app.get(&format!("/tenants/{tenant}/events")).await.json().await.expect("json");
    let events = history["data"].as_array().expect("data");
    assert_eq!(events.len(), 2, "{history}");
    assert_eq!(events[0]["metadata"]["trace_id"], trace_id.as_str(), "{history}");
    let own = events[1]["metadata"]["trace_id"].as_str().expect("a trace id of its own");
    assert!(own.len() == 32 && own.bytes().all(|b| b.is_ascii_hexdigit()) && own != trace_id, "{own}");
    app.stop().await;
}

/// A stand-in OTLP/HTTP collector: answers 200 to every request and passes on each request's head and body.
async fn collector() -> (String, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    let (sender, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let sender = sender.clone();
            tokio::spawn(async move {
                // One request per connection is enough here: each answer closes it.
                let mut request = Vec::new();
                let mut buffer = [0; 8192];
                loop {
                    let Ok(read) = stream.read(&mut buffer).await else { return };
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..read]);
                    let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                    let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        let body = request[end + 4..end + 4 + length].to_vec();
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                        let _ = sender.send((head, body));
                        return;
                    }
                }
            });
        }
    });
    (endpoint, received)
}

/// The spans of every export the collector received so far.
fn exported_spans(exports: &[(String, Vec<u8>)]) -> Vec<(String, Span)> {
    let mut spans = Vec::new();
    for (head, body) in exports {
        assert!(head.starts_with("post /v1/traces "), "{head}");
        assert!(head.contains("content-type: application/x-protobuf"), "{head}");
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP trace export");
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(any_value::Value::StringValue(name)) => Some(name.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                spans.extend(scope.spans.into_iter().map(|span| (service.clone(), span)));
            }
        }
    }
    spans
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn spans_are_exported_over_otlp_and_a_messages_handling_links_to_the_request_that_published_it() {
    let (endpoint, mut received) = collector().await;
    let mut config = test_config();
    config.telemetry.otlp_endpoint = Some(endpoint);
    let database = create_database(&config).await;
    let instance = processes::start(&config).await;
    let client = reqwest::Client::new();
    let token = tenantmq::auth::mint(&config.auth, "tests", tenantmq::auth::Role::Admin, Duration::from_secs(60))
        .expect("token");
    let tenant = instance.create_tenant(&token, &json!({ "name": "exported" })).await;
    let broker = amqp().await;
    await_consumer(&broker, &tenant).await;

    let (trace_id, traceparent) = caller_trace();
    let published = client
        .post(format!("{}/tenants/{tenant}/messages", instance.base_url))
        .bearer_auth(&token)
        .header("traceparent", &traceparent)
        .json(&json!({ "payload": { "n": 1 } }))
        .send()
        .await
        .expect("sent");
    assert_eq!(published.status(), StatusCode::ACCEPTED);
    let db = sea_orm::Database::connect(&config.database.url).await.expect("database");
    eventually(Duration::from_secs(30), "the message's row", || {
        let db = db.clone();
        let sql = format!("SELECT count(*) FROM messages WHERE tenant_id = '{tenant}'");
        async move { (scalar_i64(&db, &sql).await == 1).then_some(()) }
    })
    .await;
    db.close().await.expect("closed");
    // A graceful stop flushes the spans still waiting in the batch processor.
    let status = processes::signal(instance, "-TERM").await;
    assert!(status.success(), "{status:?}");

    let mut exports = Vec::new();
    let spans = eventually(Duration::from_secs(20), "the handling of the message exported", || {
        while let Ok(export) = received.try_recv() {
            exports.push(export);
        }
        let spans = exported_spans(&exports);
        let handled =
            spans.iter().any(|(_, s)| s.name == "handle" && s.links.iter().any(|l| hex(&l.trace_id) == trace_id));
        async move { handled.then_some(spans) }
    })
    .await;
    assert!(spans.iter().all(|(service, _)| service == "tenantmq"), "service.name");
    for name in ["command", "projector.step"] {
        assert!(spans.iter().any(|(_, span)| span.name == name), "a {name} span");
    }
    let in_trace = |name: &str| {
        spans
            .iter()
            .map(|(_, span)| span)
            .find(|s| s.name == name && hex(&s.trace_id) == trace_id)
            .unwrap_or_else(|| panic!("a {name} span in the caller's trace"))
    };
    let request = in_trace("http.request");
    assert_eq!(hex(&request.parent_span_id), "00f067aa0ba902b7", "the caller's span is the request's parent");
    let publish = in_trace("publish");
    let handle = spans
        .iter()
        .map(|(_, span)| span)
        .find(|s| s.name == "handle" && s.links.iter().any(|l| hex(&l.trace_id) == trace_id))
        .expect("the handle span");
    assert_ne!(hex(&handle.trace_id), trace_id, "a batch span has a trace of its own and links to its messages'");
    let link = handle.links.iter().find(|l| hex(&l.trace_id) == trace_id).expect("the link");
    assert_eq!(link.span_id, publish.span_id, "the link points at the publish span");
    remove_database(database).await;
}
