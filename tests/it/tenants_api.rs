//! The tenant endpoints over HTTP, as a client uses them.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};
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
    assert_eq!(events[0]["metadata"]["actor"], "anonymous");
    assert!(events[1]["metadata"]["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(history["next_cursor"].is_null());
    app.stop().await;
}

#[tokio::test]
async fn partition_exists_after_create_and_is_gone_after_delete() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("partitioned").await;
    let id: Uuid = tenant["id"].as_str().expect("id").parse().expect("uuid");
    let partition = format!("messages_{}", id.simple());
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
    let partition = format!("messages_{}", id.simple());
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
    let id = app.create_tenant("contended").await["id"].as_str().expect("id").to_owned();
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
        created.push(app.create_tenant(&format!("t{i}")).await["id"].as_str().expect("id").to_owned());
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
async fn bad_input_gets_a_problem_naming_the_field_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let existing = app.create_tenant("existing").await["id"].as_str().expect("id").to_owned();
    let events_before = app.scalar_i64("SELECT count(*) FROM events").await;
    let unknown = Uuid::new_v4();
    let concurrency = format!("/tenants/{existing}/config/concurrency");
    let max_plus_one = i64::from(app.config.max_workers.get()) + 1;

    let cases: Vec<(reqwest::RequestBuilder, StatusCode, Option<&str>)> = vec![
        (app.client.get(app.url("/tenants/not-a-uuid")), StatusCode::BAD_REQUEST, Some("id")),
        (app.client.delete(app.url("/tenants/123")), StatusCode::BAD_REQUEST, Some("id")),
        (app.client.get(app.url("/tenants/not-a-uuid/events")), StatusCode::BAD_REQUEST, Some("id")),
        (
            app.client.post(app.url("/tenants")).header("content-type", "application/json").body("{\"name\": "),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            app.client.post(app.url("/tenants")).header("content-type", "application/json").body(""),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (app.client.post(app.url("/tenants")).json(&json!({})), StatusCode::BAD_REQUEST, Some("name")),
        (app.client.post(app.url("/tenants")).json(&json!({ "name": "" })), StatusCode::BAD_REQUEST, Some("name")),
        (
            app.client.post(app.url("/tenants")).json(&json!({ "name": "x".repeat(201) })),
            StatusCode::BAD_REQUEST,
            Some("name"),
        ),
        (app.client.post(app.url("/tenants")).json(&json!({ "name": 5 })), StatusCode::BAD_REQUEST, Some("name")),
        (
            app.client.post(app.url("/tenants")).json(&json!({ "name": "a", "wrokers": 2 })),
            StatusCode::BAD_REQUEST,
            Some("wrokers"),
        ),
        (
            app.client.post(app.url("/tenants")).json(&json!({ "name": "a", "id": "nope" })),
            StatusCode::BAD_REQUEST,
            Some("id"),
        ),
        (
            app.client.post(app.url("/tenants")).json(&json!({ "name": "a", "id": existing })),
            StatusCode::CONFLICT,
            None,
        ),
        (app.client.post(app.url("/tenants")).body("{\"name\": \"a\"}"), StatusCode::UNSUPPORTED_MEDIA_TYPE, None),
        (
            app.client
                .post(app.url("/tenants"))
                .header("content-type", "application/json")
                .body(vec![b' '; 2 * 1024 * 1024]),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
        (
            app.client.put(app.url(&format!("/tenants/{unknown}/config/concurrency"))).json(&json!({ "workers": 2 })),
            StatusCode::NOT_FOUND,
            None,
        ),
        (app.client.delete(app.url(&format!("/tenants/{unknown}"))), StatusCode::NOT_FOUND, None),
        (app.client.get(app.url(&format!("/tenants/{unknown}"))), StatusCode::NOT_FOUND, None),
        (app.client.get(app.url(&format!("/tenants/{unknown}/events"))), StatusCode::NOT_FOUND, None),
        (app.client.get(app.url("/tenants?limit=0")), StatusCode::BAD_REQUEST, Some("limit")),
        (app.client.get(app.url("/tenants?limit=1001")), StatusCode::BAD_REQUEST, Some("limit")),
        (app.client.get(app.url("/tenants?limit=abc")), StatusCode::BAD_REQUEST, Some("limit")),
        (app.client.get(app.url("/tenants?cursor=garbage")), StatusCode::BAD_REQUEST, Some("cursor")),
        (
            app.client.get(app.url(&format!("/tenants/{existing}/events?cursor=garbage"))),
            StatusCode::BAD_REQUEST,
            Some("cursor"),
        ),
        (app.client.get(app.url("/no-such-route")), StatusCode::NOT_FOUND, None),
        (app.client.patch(app.url("/tenants")), StatusCode::METHOD_NOT_ALLOWED, None),
    ];
    let mut cases = cases;
    for workers in [json!(0), json!(-1), json!(max_plus_one), json!("five"), json!(1.5), json!(null), json!(1e30)] {
        cases.push((
            app.client.put(app.url(&concurrency)).json(&json!({ "workers": workers })),
            StatusCode::BAD_REQUEST,
            Some("workers"),
        ));
        if !workers.is_null() {
            cases.push((
                app.client.post(app.url("/tenants")).json(&json!({ "name": "w", "workers": workers })),
                StatusCode::BAD_REQUEST,
                Some("workers"),
            ));
        }
    }
    for (request, status, field) in cases {
        let request = request.build().expect("request builds");
        let what = format!("{} {}", request.method(), request.url());
        let response = app.client.execute(request).await.expect("sent");
        assert_eq!(response.status(), status, "{what}");
        assert_problem(response, status, field).await;
    }

    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM events").await,
        events_before,
        "no rejected request wrote an event"
    );
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK, "still healthy");
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
