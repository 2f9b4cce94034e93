//! A tenant's whole life through the Rust client that progenitor generates from `docs/openapi.json`
//! (`clients/rust`): what a strictly typed client of the document can do, it can do against the service.

use std::{collections::HashSet, num::NonZeroU64, time::Duration};

use tenantmq::auth::Role;
use tenantmq_client::types;
use uuid::Uuid;

use crate::helpers::{TestApp, eventually};

const BATCH: usize = 120;

#[tokio::test]
async fn a_tenants_whole_life_through_the_generated_rust_client() {
    let app = TestApp::spawn().await;
    let client = tenantmq_client::with_token(&app.base_url, &app.token(Role::Admin)).expect("a client");
    let page_size = NonZeroU64::new(25);

    let request = types::CreateTenantRequest {
        name: "journey".parse().expect("a valid name"),
        workers: NonZeroU64::new(2),
        id: None,
    };
    let tenant = client.create_tenant(None, &request).await.expect("created").into_inner();
    assert_eq!((tenant.name.as_str(), tenant.workers), ("journey", 2));

    let one = types::PublishRequest { payload: serde_json::json!({"n": 0}), id: None };
    let first = client.publish_message(&tenant.id, &one).await.expect("published").into_inner();
    let messages = (1..=BATCH).map(|n| types::PublishRequest { payload: serde_json::json!({ "n": n }), id: None });
    let batch = types::PublishBatchRequest { messages: messages.collect() };
    let batch = client.publish_messages(&tenant.id, &batch).await.expect("published").into_inner();
    let published: HashSet<Uuid> = batch.ids.iter().copied().chain([first.id]).collect();

    // Every page decodes, the last one (`next_cursor: null`) included.
    let read = eventually(Duration::from_secs(60), "every message readable", || async {
        let (mut read, mut cursor) = (Vec::new(), None::<String>);
        loop {
            let page = client.list_messages(cursor.as_deref(), page_size, Some(&tenant.id)).await.expect("a page");
            let page = page.into_inner();
            read.extend(page.data.iter().map(|message| message.id));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        (read.len() >= published.len()).then_some(read)
    })
    .await;
    assert_eq!(read.len(), published.len(), "each message read once");
    assert_eq!(read.into_iter().collect::<HashSet<_>>(), published);

    let four = types::SetConcurrencyRequest { workers: NonZeroU64::new(4).expect("4") };
    let resized = client.set_concurrency(&tenant.id, &four).await.expect("resized").into_inner();
    assert_eq!(resized.workers, 4);
    let details = client.get_tenant(&tenant.id).await.expect("details").into_inner();
    assert_eq!(details.workers, 4);
    let limits = types::SetLimitsRequest {
        publish_rate: NonZeroU64::new(1000),
        publish_burst: None,
        max_queue_depth: NonZeroU64::new(50_000),
    };
    let limited = client.set_tenant_limits(&tenant.id, &limits).await.expect("limited").into_inner();
    assert_eq!((limited.limits.publish_rate, limited.limits.max_queue_depth), (Some(1000), Some(50_000)));
    assert_eq!(limited.limits.source, types::LimitsSource::Tenant);

    let events = client.list_tenant_events(&tenant.id, None, None).await.expect("events").into_inner();
    let kinds: Vec<&str> = events.data.iter().map(|event| event.type_.as_str()).collect();
    assert_eq!(kinds, ["TenantCreated.v1", "ConcurrencySet.v1", "TenantLimitsSet.v1"]);
    assert_eq!(events.next_cursor, None);

    let dead = client.list_dead_letters(&tenant.id, None, None).await.expect("dead letters").into_inner();
    assert!(dead.data.is_empty() && dead.next_cursor.is_none());
    let selection = types::ReplayRequest { ids: Some(vec![Uuid::now_v7()]) };
    let replayed = client.replay_dead_letters(&tenant.id, &selection).await.expect("replayed").into_inner();
    assert_eq!((replayed.replayed, replayed.not_found.len(), replayed.complete), (0, 1, true));
    client.purge_dead_letters(&tenant.id).await.expect("purged");

    client.delete_tenant(&tenant.id).await.expect("deleted");
    let gone = client.get_tenant(&tenant.id).await.expect_err("a deleted tenant is not found");
    assert_eq!(gone.status(), Some(reqwest::StatusCode::NOT_FOUND));
    let tenantmq_client::Error::ErrorResponse(problem) = gone else { panic!("not a problem document: {gone:?}") };
    assert_eq!(problem.type_, "urn:tenantmq:problem:not-found");
    app.stop().await;
}

/// Error answers are problem documents (`application/problem+json`); the client decodes them into
/// `types::Problem`, so a caller can tell one problem from another (`rate-limited` from `queue-full`) and find
/// the field a 400 names, without parsing the body by hand.
#[tokio::test]
async fn the_generated_rust_client_decodes_problem_documents() {
    let app = TestApp::spawn().await;
    let client = tenantmq_client::with_token(&app.base_url, &app.token(Role::Admin)).expect("a client");
    let request = types::CreateTenantRequest { name: "problems".parse().expect("a name"), workers: None, id: None };
    let tenant = client.create_tenant(None, &request).await.expect("created").into_inner();

    let over = (0..=1000).map(|n| types::PublishRequest { payload: serde_json::json!(n), id: None });
    let batch = types::PublishBatchRequest { messages: over.collect() };
    let refused = client.publish_messages(&tenant.id, &batch).await.expect_err("a batch over 1,000 is refused");
    let tenantmq_client::Error::ErrorResponse(problem) = refused else { panic!("not a problem: {refused:?}") };
    assert_eq!((problem.status, problem.type_.as_str()), (400, "urn:tenantmq:problem:invalid-request"));
    assert_eq!(problem.field.as_deref(), Some("messages"));

    let limits = types::SetLimitsRequest {
        publish_rate: NonZeroU64::new(1),
        publish_burst: NonZeroU64::new(1),
        max_queue_depth: None,
    };
    client.set_tenant_limits(&tenant.id, &limits).await.expect("limited");
    let one = types::PublishRequest { payload: serde_json::json!(1), id: None };
    client.publish_message(&tenant.id, &one).await.expect("the burst admits one");
    let limited = client.publish_message(&tenant.id, &one).await.expect_err("the rate is spent");
    let tenantmq_client::Error::ErrorResponse(problem) = limited else { panic!("not a problem: {limited:?}") };
    assert_eq!((problem.status, problem.type_.as_str()), (429, "urn:tenantmq:problem:rate-limited"));
    assert!(problem.headers().contains_key("retry-after"), "{:?}", problem.headers());
    app.stop().await;
}
