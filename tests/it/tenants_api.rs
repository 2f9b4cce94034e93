//! The tenant endpoints over HTTP, as a client uses them.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tenantmq::domain::tenant::TenantId;
use uuid::Uuid;

use crate::helpers::{TestApp, assert_problem};

#[tokio::test]
async fn tenant_lifecycle_create_get_reconfigure_delete_and_history() {
    let app = TestApp::spawn().await;

    let response = app
        .client
        .post(app.url("/tenants"))
        .header("x-request-id", "req-create-1")
        .json(&json!({ "name": "acme", "workers": 2 }))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::CREATED);
    let id = response.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned();
    let location = format!("/tenants/{id}");

    let tenant: Value = app.get(&location).await.json().await.expect("json");
    assert_eq!(tenant["name"], "acme");
    assert_eq!(tenant["workers"], 2);
    assert_eq!(tenant["status"], "active");
    assert_eq!(tenant["version"], 1);
    assert_eq!(tenant["queue"], format!("tenant_{id}_queue"));

    let response = app.put_json(&format!("{location}/config/concurrency"), &json!({ "workers": 5 })).await;
    assert_eq!(response.status(), StatusCode::OK);
    let tenant: Value = response.json().await.expect("json");
    assert_eq!(tenant["workers"], 5, "the response reads the caller's own write");
    assert_eq!(tenant["version"], 2);

    assert_eq!(app.delete(&location).await.status(), StatusCode::NO_CONTENT);
    assert_problem(app.get(&location).await, StatusCode::NOT_FOUND, None).await;
    assert_problem(app.delete(&location).await, StatusCode::NOT_FOUND, None).await;

    let history: Value = app.get(&format!("{location}/events")).await.json().await.expect("json");
    let events = history["data"].as_array().expect("data");
    let summary: Vec<(i64, &str)> =
        events.iter().map(|e| (e["version"].as_i64().expect("version"), e["type"].as_str().expect("type"))).collect();
    assert_eq!(summary, vec![(1, "TenantCreated.v1"), (2, "ConcurrencySet.v1"), (3, "TenantDeleted.v1")]);
    assert_eq!(events[0]["data"], json!({ "name": "acme", "workers": 2 }));
    assert_eq!(events[1]["data"], json!({ "workers": 5, "previous": 2 }));
    assert_eq!(events[0]["metadata"]["request_id"], "req-create-1");
    assert_eq!(events[0]["metadata"]["actor"], "tests", "the token's subject");
    assert!(events[1]["metadata"]["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(history["next_cursor"].is_null());

    // Past the end of a stream is an empty page; a cursor made up for a tenant that never existed is a 404.
    let (id, never) = (TenantId::from_uuid(id.parse().expect("uuid")), TenantId::from_uuid(Uuid::now_v7()));
    for (tenant, expected) in [(id, StatusCode::OK), (never, StatusCode::NOT_FOUND)] {
        let cursor =
            tenantmq::api::pagination::encode(&tenantmq::api::pagination::Listing::Events(tenant).to_string(), 5);
        let page = app.get(&format!("/tenants/{tenant}/events?cursor={cursor}")).await;
        assert_eq!(page.status(), expected, "{tenant}");
    }
    app.stop().await;
}

#[tokio::test]
async fn partition_exists_after_create_and_is_gone_after_delete() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("partitioned").await;
    let id: Uuid = tenant["id"].as_str().expect("id").parse().expect("uuid");
    let partition = TenantId::from_uuid(id).partition_name();
    let attached = format!(
        "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'messages'::regclass AND c.relname = '{partition}'"
    );
    let exists = format!("SELECT count(*) FROM pg_class WHERE relname = '{partition}'");
    assert_eq!(app.scalar_i64(&attached).await, 1, "created with the tenant, before the 201");

    assert_eq!(app.delete(&format!("/tenants/{id}")).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.scalar_i64(&exists).await, 0, "dropped with the tenant, before the 204");
    app.stop().await;
}

#[tokio::test]
async fn detach_on_delete_keeps_the_partition_as_a_standalone_table() {
    let mut config = crate::helpers::test_config();
    config.partitions.on_tenant_delete = tenantmq::config::OnTenantDelete::Detach;
    let app = TestApp::spawn_with(config).await;
    let tenant = app.create_tenant("archived").await;
    let id: Uuid = tenant["id"].as_str().expect("id").parse().expect("uuid");
    let partition = TenantId::from_uuid(id).partition_name();
    assert_eq!(app.delete(&format!("/tenants/{id}")).await.status(), StatusCode::NO_CONTENT);
    let attached = format!(
        "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'messages'::regclass AND c.relname = '{partition}'"
    );
    assert_eq!(app.scalar_i64(&attached).await, 0);
    assert_eq!(app.scalar_i64(&format!("SELECT count(*) FROM pg_class WHERE relname = '{partition}'")).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_set_concurrency_one_winner_per_version_and_no_gaps() {
    let app = TestApp::spawn().await;
    let id = app.create_tenant_id("contended").await;
    let path = format!("/tenants/{id}/config/concurrency");

    // Every request asks for a different value (never the initial 3), so none is a no-op.
    let requests = (4..=27).map(|workers| {
        let (client, url) = (app.client.clone(), app.url(&path));
        tokio::spawn(async move {
            client.put(url).json(&json!({ "workers": workers })).send().await.expect("sent").status()
        })
    });
    let mut statuses = Vec::new();
    for request in requests.collect::<Vec<_>>() {
        statuses.push(request.await.expect("request task"));
    }
    let won = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let lost = statuses.iter().filter(|s| **s == StatusCode::CONFLICT).count();
    assert_eq!(won + lost, statuses.len(), "only 200 or 409: {statuses:?}");
    assert!(won >= 1);

    let versions: Vec<i64> = {
        let sql = format!("SELECT version::bigint FROM events WHERE stream_id = '{id}' ORDER BY version");
        let rows = sea_orm::ConnectionTrait::query_all_raw(
            &app.db,
            sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql),
        )
        .await
        .expect("query");
        rows.iter().map(|r| r.try_get_by_index::<i64>(0).expect("version")).collect()
    };
    assert_eq!(versions, (1..=(won as i64 + 1)).collect::<Vec<_>>(), "one event per winner, versions without gaps");
    let tenant: Value = app.get(&format!("/tenants/{id}")).await.json().await.expect("json");
    assert_eq!(tenant["version"], won as i64 + 1);
    app.stop().await;
}

#[tokio::test]
async fn tenants_are_listed_in_creation_order_with_cursor_pages() {
    let app = TestApp::spawn().await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(app.create_tenant_id(&format!("t{i}")).await);
    }
    let deleted = created.remove(2);
    assert_eq!(app.delete(&format!("/tenants/{deleted}")).await.status(), StatusCode::NO_CONTENT);

    let mut seen = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/tenants?limit=2&cursor={c}"),
            None => "/tenants?limit=2".to_owned(),
        };
        let page: Value = app.get(&path).await.json().await.expect("json");
        pages += 1;
        seen.extend(page["data"].as_array().expect("data").iter().map(|t| t["id"].as_str().expect("id").to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, created, "live tenants, oldest first, each once");
    assert_eq!(pages, 2);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());
    app.stop().await;
}

#[tokio::test]
async fn a_client_chosen_id_is_kept() {
    let app = TestApp::spawn().await;
    let id = Uuid::new_v4();
    let response = app.post_json("/tenants", &json!({ "name": "mine", "id": id })).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["location"], format!("/tenants/{id}").as_str());
    let tenant: Value = response.json().await.expect("json");
    assert_eq!(tenant["id"], id.to_string());
    assert_eq!(tenant["workers"], 3, "the configured default");
    app.stop().await;
}

/// A create sent again with the same `Idempotency-Key` (its answer lost, say) makes no second tenant: it is
/// answered 201 with the tenant the first made. The same key with another request is a 409 naming the header,
/// a key with an `id`, or not 1 to 255 printable characters, a 400 naming it; another caller's same key makes
/// a tenant of its own.
#[tokio::test]
async fn a_create_sent_again_with_the_same_idempotency_key_makes_one_tenant() {
    let app = TestApp::spawn().await;
    let create = |client: &reqwest::Client, key: &str, body: Value| {
        client.post(app.url("/tenants")).header("Idempotency-Key", key).json(&body).send()
    };
    let body = json!({ "name": "once", "workers": 2 });
    let first = create(&app.client, "order-17", body.clone()).await.expect("sent");
    assert_eq!(first.status(), StatusCode::CREATED);
    let location = first.headers()["location"].to_str().expect("location").to_owned();
    let first: Value = first.json().await.expect("tenant");
    let id = first["id"].as_str().expect("id").to_owned();
    assert_eq!(location, format!("/tenants/{id}"));

    let again = create(&app.client, "order-17", body.clone()).await.expect("sent");
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.json::<Value>().await.expect("tenant")["id"], id.as_str());
    let without_workers = create(&app.client, "order-17", json!({ "name": "once" })).await.expect("sent");
    assert_eq!(without_workers.status(), StatusCode::CREATED, "the workers it was created with are the same");
    assert_eq!(app.scalar_i64(&format!("SELECT count(*) FROM events WHERE stream_id = '{id}'")).await, 1);
    assert_eq!(app.scalar_i64("SELECT count(*) FROM tenants").await, 1);

    for other in [json!({ "name": "another" }), json!({ "name": "once", "workers": 3 })] {
        let reused = create(&app.client, "order-17", other).await.expect("sent");
        assert_problem(reused, StatusCode::CONFLICT, Some("Idempotency-Key")).await;
    }
    let with_id = create(&app.client, "order-18", json!({ "name": "x", "id": Uuid::now_v7() })).await.expect("sent");
    assert_problem(with_id, StatusCode::BAD_REQUEST, Some("Idempotency-Key")).await;
    for bad in [String::new(), "k".repeat(256), "tab\there".to_owned()] {
        let refused = create(&app.client, &bad, body.clone()).await.expect("sent");
        assert_problem(refused, StatusCode::BAD_REQUEST, Some("Idempotency-Key")).await;
    }

    // Sent twice in one request, or not text: refused, not passed over (which would create without the key).
    let twice = app
        .client
        .post(app.url("/tenants"))
        .header("Idempotency-Key", "order-19")
        .header("Idempotency-Key", "order-20")
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_problem(twice, StatusCode::BAD_REQUEST, Some("Idempotency-Key")).await;
    let not_text = reqwest::header::HeaderValue::from_bytes("ключ".as_bytes()).expect("a header value");
    let refused = app
        .client
        .post(app.url("/tenants"))
        .header("Idempotency-Key", not_text)
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_problem(refused, StatusCode::BAD_REQUEST, Some("Idempotency-Key")).await;

    // Two at once: one creates, the other finds its creation.
    let both = json!({ "name": "twins" });
    let (left, right) =
        tokio::join!(create(&app.client, "order-21", both.clone()), create(&app.client, "order-21", both));
    let (left, right) = (left.expect("sent"), right.expect("sent"));
    assert_eq!((left.status(), right.status()), (StatusCode::CREATED, StatusCode::CREATED));
    let twin = left.json::<Value>().await.expect("tenant")["id"].clone();
    assert_eq!(right.json::<Value>().await.expect("tenant")["id"], twin);
    assert_eq!(app.scalar_i64("SELECT count(*) FROM tenants").await, 2);

    let other_caller = tenantmq::auth::mint(
        &app.config.auth,
        "another-operator",
        tenantmq::auth::Role::Admin,
        std::time::Duration::from_secs(60),
    )
    .expect("minted");
    let theirs =
        create(&tenantmq_testkit::bearer_client(&other_caller).expect("client"), "order-17", body).await.expect("sent");
    assert_eq!(theirs.status(), StatusCode::CREATED);
    assert_ne!(theirs.json::<Value>().await.expect("tenant")["id"], id.as_str());
    app.stop().await;
}

/// A create answered `503 recorded` (its read models behind: here the tenants projector is held by a lock)
/// and sent again with the same key waits for them as the first did: before, it answered 404 from the read
/// model that did not show the tenant yet, and a client taking that for "not created" would create again.
#[tokio::test]
async fn a_create_sent_again_with_its_key_while_the_read_models_are_behind_is_not_answered_404() {
    let mut config = crate::helpers::test_config();
    config.projectors.command_wait = std::time::Duration::from_secs(2);
    let app = TestApp::spawn_with(config).await;
    let create = || {
        app.client.post(app.url("/tenants")).header("Idempotency-Key", "late").json(&json!({ "name": "late" })).send()
    };
    // A first tenant, for the projector's checkpoint row to exist and be locked.
    app.create_tenant("first").await;
    let lock = crate::dead_letters::hold_in_transaction(
        &app.config.database.url,
        "SELECT * FROM projector_checkpoints WHERE name = 'tenants' FOR UPDATE",
    )
    .await;
    let first = create().await.expect("sent");
    let recorded = assert_problem(first, StatusCode::SERVICE_UNAVAILABLE, None).await;
    assert_eq!(recorded["type"], "urn:tenantmq:problem:recorded");
    let again = create().await.expect("sent");
    let still_recorded = assert_problem(again, StatusCode::SERVICE_UNAVAILABLE, None).await;
    assert_eq!(still_recorded["tenant_id"], recorded["tenant_id"]);
    crate::dead_letters::release(lock).await;
    let done = create().await.expect("sent");
    assert_eq!(done.status(), StatusCode::CREATED);
    assert_eq!(done.json::<Value>().await.expect("tenant")["id"], recorded["tenant_id"]);
    app.stop().await;
}
