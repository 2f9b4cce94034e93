//! Reading messages back: keyset pages, gap-free tailing while workers write.

use std::{collections::HashSet, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tenantmq::auth::Role;

use crate::helpers::{TestApp, assert_problem, eventually, test_config};

async fn publish(app: &TestApp, tenant: &str, count: usize, tag: &str) {
    for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
        let messages: Vec<Value> = chunk.iter().map(|i| json!({ "payload": { "tag": tag, "i": i } })).collect();
        let response =
            app.post_json(&format!("/tenants/{tenant}/messages/batch"), &json!({ "messages": messages })).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
}

/// Walks `/messages` from `cursor` to the end; returns the ids, the number of pages and the tail cursor.
async fn walk(app: &TestApp, tenant: &str, limit: u32, mut cursor: Option<String>) -> (Vec<String>, usize, String) {
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        let mut path = format!("/messages?tenant_id={tenant}&limit={limit}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let response = app.get(&path).await;
        assert_eq!(response.status(), StatusCode::OK);
        let page: Value = response.json().await.expect("json");
        pages += 1;
        let data = page["data"].as_array().expect("data");
        assert!(data.len() <= limit as usize);
        ids.extend(data.iter().map(|m| m["id"].as_str().expect("id").to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (ids, pages, page["tail_cursor"].as_str().expect("tail cursor").to_owned()),
        }
    }
}

async fn ids_in_db_order(app: &TestApp, tenant: &str) -> Vec<String> {
    let rows = sea_orm::ConnectionTrait::query_all_raw(
        &app.db,
        sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!("SELECT id::text FROM messages WHERE tenant_id = '{tenant}' ORDER BY txid, id"),
        ),
    )
    .await
    .expect("rows");
    rows.iter().map(|r| r.try_get_by_index::<String>(0).expect("id")).collect()
}

#[tokio::test]
async fn pages_of_100_over_2500_messages_return_each_once_in_order() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant_id("paged").await;
    publish(&app, &tenant, 2500, "paged").await;
    app.await_messages(&tenant, 2500).await;

    // Rows become readable once every transaction older than them has ended (other tests' included).
    let (ids, pages, tail) = eventually(Duration::from_secs(30), "all 2500 rows readable", || async {
        let walked = walk(&app, &tenant, 100, None).await;
        (walked.0.len() == 2500).then_some(walked)
    })
    .await;
    assert_eq!(pages, 25, "25 full pages, the last with next_cursor null");
    assert_eq!(ids, ids_in_db_order(&app, &tenant).await, "every id once, in (txid, id) order");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 2500);

    // Tailing from the end returns nothing until new messages land, then exactly those.
    let (none, _, same_tail) = walk(&app, &tenant, 100, Some(tail.clone())).await;
    assert!(none.is_empty());
    assert_eq!(same_tail, tail, "an empty page keeps the cursor");
    publish(&app, &tenant, 3, "later").await;
    let new = eventually(Duration::from_secs(30), "3 new rows via the tail cursor", || async {
        let (ids, _, _) = walk(&app, &tenant, 100, Some(tail.clone())).await;
        (ids.len() == 3).then_some(ids)
    })
    .await;
    assert!(new.iter().all(|id| !ids.contains(id)), "only the new rows");

    for bad in ["0", "1001", "abc", "-5"] {
        let response = app.get(&format!("/messages?tenant_id={tenant}&limit={bad}")).await;
        assert_problem(response, StatusCode::BAD_REQUEST, Some("limit")).await;
    }
    let response = app.get(&format!("/messages?tenant_id={tenant}&cursor=garbage")).await;
    assert_problem(response, StatusCode::BAD_REQUEST, Some("cursor")).await;
    let other = app.create_tenant_id("other").await;
    let response = app.get(&format!("/messages?tenant_id={other}&cursor={tail}")).await;
    assert_problem(response, StatusCode::BAD_REQUEST, Some("cursor")).await;
    let response = app.get("/messages").await;
    assert_problem(response, StatusCode::BAD_REQUEST, Some("tenant_id")).await;
    app.stop().await;
}

/// 20,000 messages written by 8 workers per batch while a reader tails with its cursor: when the writers
/// are done and the reader has drained, it has seen every row exactly once.
#[tokio::test]
async fn a_reader_tailing_under_load_sees_every_row_exactly_once() {
    const MESSAGES: usize = 20_000;
    let mut config = test_config();
    config.consumer.batch_size = 50;
    let app = TestApp::spawn_with(config).await;
    let response = app.post_json("/tenants", &json!({ "name": "tailed", "workers": 8 })).await;
    let tenant = response.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned();

    let reader = {
        let (client, base, tenant) = (app.client.clone(), app.base_url.clone(), tenant.clone());
        tokio::spawn(async move {
            let mut seen = HashSet::new();
            let mut cursor: Option<String> = None;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while seen.len() < MESSAGES {
                assert!(tokio::time::Instant::now() < deadline, "the reader saw only {} rows", seen.len());
                let mut url = format!("{base}/messages?tenant_id={tenant}&limit=1000");
                if let Some(cursor) = &cursor {
                    url.push_str(&format!("&cursor={cursor}"));
                }
                let page: Value = client.get(url).send().await.expect("sent").json().await.expect("json");
                let data = page["data"].as_array().expect("data");
                for message in data {
                    let id = message["id"].as_str().expect("id").to_owned();
                    assert!(seen.insert(id.clone()), "row {id} returned twice");
                }
                cursor = Some(page["tail_cursor"].as_str().expect("tail").to_owned());
                if data.is_empty() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            seen
        })
    };
    publish(&app, &tenant, MESSAGES, "tailed").await;
    let seen = reader.await.expect("reader");
    assert_eq!(seen.len(), MESSAGES);
    let stored: HashSet<String> = ids_in_db_order(&app, &tenant).await.into_iter().collect();
    assert_eq!(seen, stored, "the reader saw exactly the stored rows");
    app.stop().await;
}

#[tokio::test]
async fn a_tenant_token_reads_only_its_own_messages() {
    let app = TestApp::spawn().await;
    let a = app.create_tenant_id("a").await;
    let b = app.create_tenant_id("b").await;
    publish(&app, &a, 20, "a").await;
    publish(&app, &b, 30, "b").await;
    app.await_messages(&a, 20).await;
    app.await_messages(&b, 30).await;
    let token_a = app.token(Role::Tenant(a.parse().expect("uuid")));
    let plain = reqwest::Client::new();
    let rows = eventually(Duration::from_secs(30), "a's 20 rows", || async {
        let page: Value = plain
            .get(app.url("/messages?limit=1000"))
            .bearer_auth(&token_a)
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("json");
        let data = page["data"].as_array().expect("data").clone();
        (data.len() == 20).then_some(data)
    })
    .await;
    assert!(rows.iter().all(|m| m["tenant_id"] == a.as_str()), "only tenant a's rows");
    let foreign =
        plain.get(app.url(&format!("/messages?tenant_id={b}"))).bearer_auth(&token_a).send().await.expect("sent");
    assert_problem(foreign, StatusCode::FORBIDDEN, None).await;
    app.stop().await;
}
