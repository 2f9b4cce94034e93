//! What a new user meets in the first hour: Swagger UI's example bodies, the answers to a pasted cursor and
//! to a reused id, and the ids in the log.

use std::{
    io::{Read, Write},
    time::Duration,
};

use lapin::{BasicProperties, options::ConfirmSelectOptions};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tenantmq::auth::Role;

use crate::{
    helpers::{
        TestApp, amqp, assert_problem, await_consumer, create_database, eventually, publish_raw, remove_database,
        test_config,
    },
    processes::{self, admin_token},
};

#[test]
fn swagger_uis_example_bodies_carry_no_fixed_id() {
    let document: Value = serde_json::from_str(&tenantmq::api::service().spec()).expect("the OpenAPI document");
    let schemas = &document["components"]["schemas"];
    for (schema, key) in [("CreateTenantRequest", "name"), ("PublishRequest", "payload")] {
        let example = &schemas[schema]["example"];
        assert!(example.get(key).is_some(), "{schema} has an example: {example}");
        assert!(example.get("id").is_none(), "{schema}'s example must not fix an id: {example}");
    }
    let batch = &schemas["PublishBatchRequest"]["example"]["messages"];
    assert!(batch.as_array().is_some_and(|m| m.len() == 2 && m.iter().all(|m| m.get("id").is_none())), "{batch}");
    let scheme = document["components"]["securitySchemes"]["BearerAuth"]["description"].as_str().unwrap_or_default();
    assert!(scheme.contains("tenantmq token"), "the Authorize dialog says how to get a token: {scheme:?}");
}

#[tokio::test]
async fn a_deleted_tenants_id_is_reserved_and_the_409_says_why() {
    let app = TestApp::spawn().await;
    let id = app.create_tenant_id("gone").await;
    assert_eq!(app.delete(&format!("/tenants/{id}")).await.status(), StatusCode::NO_CONTENT);
    let again = app.post_json("/tenants", &json!({ "name": "again", "id": id })).await;
    let problem = assert_problem(again, StatusCode::CONFLICT, None).await;
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("deleted") && d.contains("reserved")), "{problem}");
    app.stop().await;
}

#[tokio::test]
async fn a_cursor_pasted_with_characters_http_forbids_gets_a_problem_document() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant_id("pasted").await;
    let address = app.base_url.trim_start_matches("http://").to_owned();
    let token = app.token(Role::Admin);
    // A quote and angle brackets, unencoded, as a terminal paste may leave them: HTTP forbids them in a URL.
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&address).expect("connect");
        write!(
            stream,
            "GET /messages?tenant_id={tenant}&cursor=\"<abc>\" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .expect("request written");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("answer read");
        answer
    })
    .await
    .expect("client ran");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/problem+json"), "{answer}");
    let problem: Value = serde_json::from_str(body).expect("a problem document");
    assert_eq!(problem["status"], 400);
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("percent-encode")), "{problem}");
    app.stop().await;
}

#[tokio::test]
async fn a_dead_letters_id_in_the_log_is_its_id_in_the_dlq() {
    let config = test_config();
    let database = create_database(&config).await;
    let (instance, log) = processes::start_logged(&config).await;
    let token = admin_token(&config);
    let tenant = instance.create_tenant(&token, &json!({ "name": "undecodable" })).await;
    let broker = amqp().await;
    await_consumer(&broker, &tenant).await;
    let channel = broker.create_channel().await.expect("channel");
    channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    // No message id and a body that is not JSON: the service names the message itself.
    publish_raw(&channel, &tenant, b"not json {", BasicProperties::default()).await;
    let client = reqwest::Client::new();
    let dead_letter_id = eventually(Duration::from_secs(30), "the dead letter", || async {
        let page: Value = client
            .get(format!("{}/tenants/{tenant}/dlq", instance.base_url))
            .bearer_auth(&token)
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("page");
        page["data"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    processes::signal(instance, "-TERM").await;
    let log = log.read();
    let line = log.lines().find(|line| line.contains("dead-lettered")).expect("a dead-lettered line");
    assert!(line.contains(&dead_letter_id), "the log names {dead_letter_id}: {line}");
    remove_database(database).await;
}
