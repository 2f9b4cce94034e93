//! Authentication and authorization over every endpoint, and a corpus of bad input that must never hurt.

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tenantmq::auth::{Claims, Role, RoleClaim};
use uuid::Uuid;

use crate::helpers::{TestApp, assert_problem, eventually};

/// Who besides an admin may call each protected operation of the OpenAPI document, by `operationId`: a
/// tenant's own token, an auditor's. An operation missing here fails the tests, so none is forgotten.
fn permission(operation_id: &str) -> Option<Permission> {
    let (own_tenant, auditor) = match operation_id {
        "createTenant" | "setConcurrency" | "setTenantLimits" | "deleteTenant" => (false, false),
        "listTenants" | "verifyChain" | "listStreamHeads" => (false, true),
        "getTenant" | "listTenantEvents" | "getTenantStateAsOf" | "exportTenantEvents" => (true, true),
        "publishMessage" | "publishMessages" | "listMessages" | "listDeadLetters" | "replayDeadLetters"
        | "purgeDeadLetters" => (true, false),
        _ => return None,
    };
    Some(Permission { own_tenant, auditor })
}

#[derive(Debug, Clone, Copy)]
struct Permission {
    own_tenant: bool,
    auditor: bool,
}

/// A request to one protected operation on tenant `a` (a deletion on `doomed`).
struct Endpoint {
    method: Method,
    path: String,
    body: Option<Value>,
    may: Permission,
}

/// Every operation of the OpenAPI document that needs a token, as a request that succeeds for a caller
/// allowed to make it.
fn endpoints(a: &str, doomed: &str) -> Vec<Endpoint> {
    let document: Value = serde_json::from_str(&tenantmq::api::service().spec()).expect("document");
    let mut endpoints = Vec::new();
    for (template, operations) in document["paths"].as_object().expect("paths") {
        for (method, operation) in operations.as_object().expect("operations") {
            if operation.get("security").is_none() {
                continue;
            }
            let method: Method = method.to_uppercase().parse().expect("an HTTP method");
            let id = operation["operationId"].as_str().expect("every operation has an id");
            let may = permission(id).unwrap_or_else(|| panic!("{id}: say who may call it in `permission`"));
            let tenant = if id == "deleteTenant" { doomed } else { a };
            let query = match id {
                "listMessages" => format!("?tenant_id={a}"),
                "getTenantStateAsOf" => format!("?at_position={}", i64::MAX),
                _ => String::new(),
            };
            let body = match id {
                "createTenant" => Some(json!({ "name": "new" })),
                "setConcurrency" => Some(json!({ "workers": 4 })),
                "setTenantLimits" => Some(json!({ "publish_rate": 100 })),
                "publishMessage" => Some(json!({ "payload": 1 })),
                "publishMessages" => Some(json!({ "messages": [{ "payload": 1 }] })),
                "replayDeadLetters" => Some(json!({})),
                _ => None,
            };
            let path = format!("{}{query}", template.replace("{id}", tenant));
            endpoints.push(Endpoint { method, path, body, may });
        }
    }
    endpoints
}

#[test]
fn every_protected_operation_of_the_openapi_document_has_its_permissions() {
    let (a, doomed) = (Uuid::nil().to_string(), Uuid::max().to_string());
    // `endpoints` panics on an operation `permission` does not know.
    assert!(endpoints(&a, &doomed).len() >= 16, "the document's protected operations are all there");
}

fn token_with(secret: &str, claims: &Claims) -> String {
    jsonwebtoken::encode(&Header::default(), claims, &EncodingKey::from_secret(secret.as_bytes())).expect("encoded")
}

#[tokio::test]
async fn every_endpoint_checks_the_token_and_its_tenant() {
    let app = TestApp::spawn().await;
    let a = app.create_tenant_id("a").await;
    let b = app.create_tenant_id("b").await;
    let doomed = app.create_tenant_id("doomed").await;
    let secret = app.config.auth.jwt_secret.clone().expect("secret");
    let now = jsonwebtoken::get_current_timestamp();
    let admin_claims = Claims { sub: "x".into(), iat: now, exp: now + 600, role: RoleClaim::Admin, tenant_id: None };

    let unauthorized: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("bad signature", Some(token_with("another-secret-another-secret-another", &admin_claims))),
        ("expired", Some(token_with(&secret, &Claims { iat: now - 7200, exp: now - 3600, ..admin_claims.clone() }))),
        ("garbage", Some("not-a-jwt".into())),
        (
            "tenant role without tenant_id",
            Some(token_with(&secret, &Claims { role: RoleClaim::Tenant, ..admin_claims.clone() })),
        ),
        // PostgreSQL's jsonb, where the subject is recorded as the actor, refuses U+0000.
        ("a NUL in the subject", Some(token_with(&secret, &Claims { sub: "ops\u{0}".into(), ..admin_claims.clone() }))),
        (
            "a control character in the subject",
            Some(token_with(&secret, &Claims { sub: "ops\u{1b}[2J".into(), ..admin_claims.clone() })),
        ),
        (
            "auditor role with a tenant_id",
            Some(token_with(
                &secret,
                &Claims { role: RoleClaim::Auditor, tenant_id: Some(Uuid::new_v4()), ..admin_claims.clone() },
            )),
        ),
    ];
    let plain = reqwest::Client::new();
    let send = |method: Method, path: &str, body: &Option<Value>, token: Option<&str>| {
        let mut request = plain.request(method, app.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let token_a = app.token(Role::Tenant(a.parse().expect("uuid")));
    let token_b = app.token(Role::Tenant(b.parse().expect("uuid")));
    let admin = app.token(Role::Admin);
    let auditor = app.token(Role::Auditor);
    let events_before = app.scalar_i64("SELECT count(*) FROM events").await;

    for Endpoint { method, path, body, may } in endpoints(&a, &doomed) {
        for (what, token) in &unauthorized {
            let response = send(method.clone(), &path, &body, token.as_deref()).await.expect("sent");
            assert_eq!(response.headers().get("www-authenticate").map(|v| v.as_bytes()), Some(&b"Bearer"[..]));
            let problem = assert_problem(response, StatusCode::UNAUTHORIZED, None).await;
            assert!(problem["detail"].as_str().is_some(), "{method} {path} with {what}");
        }
        // Tenant b's token on tenant a's resources (and on admin-only ones) is forbidden.
        let response = send(method.clone(), &path, &body, Some(&token_b)).await.expect("sent");
        assert_problem(response, StatusCode::FORBIDDEN, None).await;
        for (allowed, token, who) in [(may.own_tenant, &token_a, "tenant a"), (may.auditor, &auditor, "an auditor")] {
            if !allowed {
                let response = send(method.clone(), &path, &body, Some(token)).await.expect("sent");
                assert_eq!(response.status(), StatusCode::FORBIDDEN, "{method} {path} as {who}");
                assert_problem(response, StatusCode::FORBIDDEN, None).await;
            }
        }
    }
    // Whose tenant it is comes before what was sent: another tenant's token hears 403, not what is wrong with
    // its payload.
    let unstorable = json!({ "payload": "\u{0}" });
    let batch = json!({ "messages": [unstorable.clone()] });
    for (path, body) in
        [(format!("/tenants/{a}/messages"), unstorable), (format!("/tenants/{a}/messages/batch"), batch)]
    {
        let response = send(Method::POST, &path, &Some(body), Some(&token_b)).await.expect("sent");
        assert_problem(response, StatusCode::FORBIDDEN, None).await;
    }
    assert_eq!(app.scalar_i64("SELECT count(*) FROM events").await, events_before, "no rejected command was recorded");

    for Endpoint { method, path, body, may } in endpoints(&a, &doomed) {
        let callers =
            [(may.own_tenant, &token_a, "tenant a"), (may.auditor, &auditor, "an auditor"), (true, &admin, "admin")];
        for (_, token, who) in callers.into_iter().filter(|(allowed, ..)| *allowed) {
            let response = send(method.clone(), &path, &body, Some(token)).await.expect("sent");
            assert!(response.status().is_success(), "{method} {path} as {who}: {}", response.status());
        }
    }
    for path in ["/healthz", "/readyz", "/openapi.json", "/docs"] {
        assert_eq!(plain.get(app.url(path)).send().await.expect("sent").status(), StatusCode::OK, "{path} is public");
    }
    app.stop().await;
}

#[tokio::test]
async fn with_auth_off_every_request_is_an_admin() {
    let mut config = crate::helpers::test_config();
    config.auth.enabled = false;
    let app = TestApp::spawn_with(config).await;
    let response =
        reqwest::Client::new().post(app.url("/tenants")).json(&json!({ "name": "open" })).send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::CREATED);
    app.stop().await;
}

/// The problem types the README lists for clients to match on: the first column of its table of types.
fn documented_problem_types() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let table = readme.split("| type | status | meaning |").nth(1).expect("the README's table of problem types");
    let rows = table.lines().skip(2).take_while(|line| line.starts_with('|'));
    let first_cells = rows.filter_map(|row| row.split('|').nth(1));
    let types: Vec<String> = first_cells
        .flat_map(|cell| cell.split('`').skip(1).step_by(2).map(str::to_owned).collect::<Vec<_>>())
        .collect();
    assert!(types.len() >= 15, "{types:?}");
    types
}

/// At least 60 malformed requests over every endpoint: each gets the right 4xx as problem+json naming the
/// field where there is one; none is a 5xx; nothing is written; the service stays ready.
#[tokio::test]
async fn bad_input_gets_a_problem_naming_the_field_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let existing = app.create_tenant_id("existing").await;
    let other = app.create_tenant_id("other").await;
    let events_before = app.scalar_i64("SELECT count(*) FROM events").await;
    let unknown = Uuid::new_v4();
    let concurrency = format!("/tenants/{existing}/config/concurrency");
    let publish = format!("/tenants/{existing}/messages");
    let batch = format!("/tenants/{existing}/messages/batch");
    let max_plus_one = i64::from(app.config.max_workers.get()) + 1;
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    // A well-formed cursor, but of another tenant's event listing.
    let other_cursor = tenantmq::api::pagination::encode(&format!("events:{other}"), 1);
    let c = &app.client;
    let json_body = |method: Method, path: &str, body: &str| {
        c.request(method, app.url(path)).header("content-type", "application/json").body(body.to_owned())
    };

    let mut cases: Vec<(reqwest::RequestBuilder, StatusCode, Option<&str>)> = vec![
        // Path parameters.
        (c.get(app.url("/tenants/not-a-uuid")), StatusCode::BAD_REQUEST, Some("id")),
        (c.delete(app.url("/tenants/123")), StatusCode::BAD_REQUEST, Some("id")),
        (c.get(app.url("/tenants/not-a-uuid/events")), StatusCode::BAD_REQUEST, Some("id")),
        (
            c.put(app.url("/tenants/zzz/config/concurrency")).json(&json!({ "workers": 2 })),
            StatusCode::BAD_REQUEST,
            Some("id"),
        ),
        (c.post(app.url("/tenants/%00/messages")).json(&json!({ "payload": 1 })), StatusCode::BAD_REQUEST, Some("id")),
        (
            c.post(app.url("/tenants/1-2-3-4-5/messages/batch")).json(&json!({ "messages": [] })),
            StatusCode::BAD_REQUEST,
            Some("id"),
        ),
        // Bodies of POST /tenants.
        (json_body(Method::POST, "/tenants", "{\"name\": "), StatusCode::BAD_REQUEST, None),
        (json_body(Method::POST, "/tenants", ""), StatusCode::BAD_REQUEST, None),
        (json_body(Method::POST, "/tenants", "null"), StatusCode::BAD_REQUEST, None),
        (json_body(Method::POST, "/tenants", "[]"), StatusCode::BAD_REQUEST, None),
        (json_body(Method::POST, "/tenants", "{\"name\": \"a\"} {}"), StatusCode::BAD_REQUEST, None),
        (json_body(Method::POST, "/tenants", &deep), StatusCode::BAD_REQUEST, None),
        (
            c.post(app.url("/tenants")).header("content-type", "application/json").body(vec![0xff, 0xfe, 0x00]),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (c.post(app.url("/tenants")).json(&json!({})), StatusCode::BAD_REQUEST, Some("name")),
        (c.post(app.url("/tenants")).json(&json!({ "name": "" })), StatusCode::BAD_REQUEST, Some("name")),
        (c.post(app.url("/tenants")).json(&json!({ "name": "   " })), StatusCode::BAD_REQUEST, Some("name")),
        (c.post(app.url("/tenants")).json(&json!({ "name": "x".repeat(201) })), StatusCode::BAD_REQUEST, Some("name")),
        (c.post(app.url("/tenants")).json(&json!({ "name": "tab\there" })), StatusCode::BAD_REQUEST, Some("name")),
        (c.post(app.url("/tenants")).json(&json!({ "name": 5 })), StatusCode::BAD_REQUEST, Some("name")),
        (c.post(app.url("/tenants")).json(&json!({ "name": ["a"] })), StatusCode::BAD_REQUEST, Some("name")),
        (
            c.post(app.url("/tenants")).json(&json!({ "name": "a", "wrokers": 2 })),
            StatusCode::BAD_REQUEST,
            Some("wrokers"),
        ),
        (c.post(app.url("/tenants")).json(&json!({ "name": "a", "id": "nope" })), StatusCode::BAD_REQUEST, Some("id")),
        (c.post(app.url("/tenants")).json(&json!({ "name": "a", "id": 7 })), StatusCode::BAD_REQUEST, Some("id")),
        (c.post(app.url("/tenants")).json(&json!({ "name": "a", "id": existing })), StatusCode::CONFLICT, None),
        (c.post(app.url("/tenants")).body("{\"name\": \"a\"}"), StatusCode::UNSUPPORTED_MEDIA_TYPE, None),
        (
            c.post(app.url("/tenants")).header("content-type", "text/plain").body("{\"name\": \"a\"}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
        ),
        // A merge patch would keep the limits it does not name; this PUT replaces them all.
        (
            c.put(app.url(&format!("/tenants/{existing}/config/limits")))
                .header("content-type", "application/merge-patch+json")
                .body("{\"publish_rate\": 5}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
        ),
        (
            c.post(app.url("/tenants")).header("content-type", "application/json").body(vec![b' '; 2 * 1024 * 1024]),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
        // Commands on tenants that do not exist.
        (
            c.put(app.url(&format!("/tenants/{unknown}/config/concurrency"))).json(&json!({ "workers": 2 })),
            StatusCode::NOT_FOUND,
            None,
        ),
        (c.delete(app.url(&format!("/tenants/{unknown}"))), StatusCode::NOT_FOUND, None),
        (c.get(app.url(&format!("/tenants/{unknown}"))), StatusCode::NOT_FOUND, None),
        (c.get(app.url(&format!("/tenants/{unknown}/events"))), StatusCode::NOT_FOUND, None),
        (
            c.post(app.url(&format!("/tenants/{unknown}/messages"))).json(&json!({ "payload": 1 })),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            c.post(app.url(&format!("/tenants/{unknown}/messages/batch")))
                .json(&json!({ "messages": [{ "payload": 1 }] })),
            StatusCode::NOT_FOUND,
            None,
        ),
        (c.get(app.url(&format!("/messages?tenant_id={unknown}"))), StatusCode::NOT_FOUND, None),
        // Concurrency bodies.
        (json_body(Method::PUT, &concurrency, "{"), StatusCode::BAD_REQUEST, None),
        (c.put(app.url(&concurrency)).json(&json!({})), StatusCode::BAD_REQUEST, Some("workers")),
        (
            c.put(app.url(&concurrency)).json(&json!({ "workers": 2, "extra": 1 })),
            StatusCode::BAD_REQUEST,
            Some("extra"),
        ),
        // Publishing.
        (c.post(app.url(&publish)).json(&json!({})), StatusCode::BAD_REQUEST, Some("payload")),
        (c.post(app.url(&publish)).json(&json!({ "body": 1 })), StatusCode::BAD_REQUEST, Some("body")),
        (c.post(app.url(&publish)).json(&json!({ "payload": 1, "id": "x" })), StatusCode::BAD_REQUEST, Some("id")),
        (json_body(Method::POST, &publish, "{\"payload\": }"), StatusCode::BAD_REQUEST, None),
        (json_body(Method::POST, &publish, "{\"payload\": NaN}"), StatusCode::BAD_REQUEST, None),
        (
            c.post(app.url(&publish)).header("content-type", "application/xml").body("<a/>"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
        ),
        (c.post(app.url(&batch)).json(&json!({ "messages": [] })), StatusCode::BAD_REQUEST, Some("messages")),
        (c.post(app.url(&batch)).json(&json!({ "messages": {} })), StatusCode::BAD_REQUEST, Some("messages")),
        (
            c.post(app.url(&batch)).json(&json!({ "messages": [{ "payload": 1 }, {}] })),
            StatusCode::BAD_REQUEST,
            Some("messages[1].payload"),
        ),
        (
            c.post(app.url(&batch))
                .header("content-type", "application/json")
                .body(r#"{"messages": [{"payload": 1, "payload": 2}]}"#),
            StatusCode::BAD_REQUEST,
            Some("messages[0].payload"),
        ),
        (
            c.post(app.url(&batch)).json(&json!({ "messages": [{ "payload": 1, "id": "bad" }] })),
            StatusCode::BAD_REQUEST,
            Some("messages[0].id"),
        ),
        (c.post(app.url(&batch)).json(&json!({ "msgs": [] })), StatusCode::BAD_REQUEST, Some("msgs")),
        // Query parameters.
        (c.get(app.url("/tenants?limit=0")), StatusCode::BAD_REQUEST, Some("limit")),
        (c.get(app.url("/tenants?limit=1001")), StatusCode::BAD_REQUEST, Some("limit")),
        (c.get(app.url("/tenants?limit=abc")), StatusCode::BAD_REQUEST, Some("limit")),
        (c.get(app.url("/tenants?limit=99999999999999999999")), StatusCode::BAD_REQUEST, Some("limit")),
        // A parameter given twice: neither is guessed at.
        (c.get(app.url("/tenants?limit=5&limit=1000")), StatusCode::BAD_REQUEST, Some("limit")),
        (
            c.get(app.url(&format!("/messages?tenant_id={existing}&tenant_id={other}"))),
            StatusCode::BAD_REQUEST,
            Some("tenant_id"),
        ),
        (c.get(app.url("/tenants?cursor=garbage")), StatusCode::BAD_REQUEST, Some("cursor")),
        (
            c.get(app.url(&format!("/tenants/{existing}/events?cursor=garbage"))),
            StatusCode::BAD_REQUEST,
            Some("cursor"),
        ),
        (
            c.get(app.url(&format!("/tenants/{existing}/events?cursor={other_cursor}"))),
            StatusCode::BAD_REQUEST,
            Some("cursor"),
        ),
        (c.get(app.url(&format!("/tenants/{existing}/events?limit=-1"))), StatusCode::BAD_REQUEST, Some("limit")),
        (c.get(app.url("/messages?tenant_id=not-a-uuid")), StatusCode::BAD_REQUEST, Some("tenant_id")),
        (c.get(app.url("/messages")), StatusCode::BAD_REQUEST, Some("tenant_id")),
        (c.get(app.url(&format!("/messages?tenant_id={existing}&limit=0"))), StatusCode::BAD_REQUEST, Some("limit")),
        (
            c.get(app.url(&format!("/messages?tenant_id={existing}&cursor=%FF%FE"))),
            StatusCode::BAD_REQUEST,
            Some("cursor"),
        ),
        (
            c.get(app.url(&format!("/messages?tenant_id={existing}&cursor={other_cursor}"))),
            StatusCode::BAD_REQUEST,
            Some("cursor"),
        ),
        // Payloads PostgreSQL's jsonb cannot store (a NUL in a string or key).
        (c.post(app.url(&publish)).json(&json!({ "payload": "a\u{0}b" })), StatusCode::BAD_REQUEST, Some("payload")),
        (
            c.post(app.url(&batch)).json(&json!({ "messages": [{ "payload": 1 }, { "payload": { "k\u{0}": 1 } }] })),
            StatusCode::BAD_REQUEST,
            Some("messages[1].payload"),
        ),
        // Dead letters.
        (c.get(app.url(&format!("/tenants/{existing}/dlq?limit=1001"))), StatusCode::BAD_REQUEST, Some("limit")),
        (c.get(app.url(&format!("/tenants/{existing}/dlq?cursor=nope"))), StatusCode::BAD_REQUEST, Some("cursor")),
        (c.get(app.url(&format!("/tenants/{unknown}/dlq"))), StatusCode::NOT_FOUND, None),
        (c.delete(app.url(&format!("/tenants/{unknown}/dlq"))), StatusCode::NOT_FOUND, None),
        (
            c.post(app.url(&format!("/tenants/{existing}/dlq/replay"))).json(&json!({ "ids": ["nope"] })),
            StatusCode::BAD_REQUEST,
            Some("ids[0]"),
        ),
        (
            c.post(app.url(&format!("/tenants/{existing}/dlq/replay"))).json(&json!({ "all": true })),
            StatusCode::BAD_REQUEST,
            Some("all"),
        ),
        // Routing.
        (c.get(app.url("/no-such-route")), StatusCode::NOT_FOUND, None),
        // Percent-escapes that do not decode to UTF-8, which the router itself refuses.
        (c.get(app.url("/tenants/%FF")), StatusCode::BAD_REQUEST, None),
        (c.post(app.url(&format!("{publish}%C3"))).json(&json!({ "payload": 1 })), StatusCode::BAD_REQUEST, None),
        (c.patch(app.url("/tenants")), StatusCode::METHOD_NOT_ALLOWED, None),
        (c.delete(app.url("/messages")), StatusCode::METHOD_NOT_ALLOWED, None),
    ];
    for workers in
        [json!(0), json!(-1), json!(max_plus_one), json!("five"), json!(1.5), json!(null), json!(1e30), json!(true)]
    {
        cases.push((
            c.put(app.url(&concurrency)).json(&json!({ "workers": workers })),
            StatusCode::BAD_REQUEST,
            Some("workers"),
        ));
        if !workers.is_null() {
            let body = json!({ "name": "w", "workers": workers });
            cases.push((c.post(app.url("/tenants")).json(&body), StatusCode::BAD_REQUEST, Some("workers")));
        }
    }
    assert!(cases.len() >= 60, "the corpus has {} requests", cases.len());
    let documented = documented_problem_types();
    for (request, status, field) in cases {
        let request = request.build().expect("request builds");
        let what = format!("{} {}", request.method(), request.url());
        let response = app.client.execute(request).await.expect("sent");
        assert_eq!(response.status(), status, "{what}");
        let problem = assert_problem(response, status, field).await;
        let kind = problem["type"].as_str().and_then(|t| t.strip_prefix("urn:tenantmq:problem:"));
        assert!(kind.is_some_and(|kind| documented.iter().any(|d| d == kind)), "{what}: {problem}");
    }

    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM events").await,
        events_before,
        "no rejected request wrote an event"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.scalar_i64("SELECT count(*) FROM messages").await, 0, "no rejected publish wrote a row");
    eventually(Duration::from_secs(5), "the service to stay ready", || async {
        (app.get("/readyz").await.status() == StatusCode::OK).then_some(())
    })
    .await;
    app.stop().await;
}

/// The CLI mints tokens with the configured secret that the service accepts, in the role asked for.
#[tokio::test]
async fn tokens_minted_by_the_cli_work_against_the_service() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant_id("cli").await;
    let secret = app.config.auth.jwt_secret.clone().expect("secret");
    let mint = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tenantmq"))
            .arg("token")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("TENANTMQ_AUTH__JWT_SECRET", &secret)
            .output()
            .expect("tenantmq token runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("utf-8").trim().to_owned()
    };
    let admin = mint(&["--admin", "--sub", "ops"]);
    let own = mint(&["--tenant", &tenant, "--ttl", "10m"]);
    let plain = reqwest::Client::new();
    let status = |path: String, token: String| {
        let request = plain.get(app.url(&path)).bearer_auth(token);
        async move { request.send().await.expect("sent").status() }
    };
    assert_eq!(status("/tenants".into(), admin.clone()).await, StatusCode::OK);
    assert_eq!(status(format!("/messages?tenant_id={tenant}"), own.clone()).await, StatusCode::OK);
    assert_eq!(status("/messages".into(), own.clone()).await, StatusCode::OK, "a tenant token reads its own tenant");
    assert_eq!(status("/tenants".into(), own).await, StatusCode::FORBIDDEN);
    let auditor = mint(&["--auditor", "--sub", "external-audit"]);
    assert_eq!(status("/tenants".into(), auditor.clone()).await, StatusCode::OK);
    assert_eq!(status(format!("/audit/verify?tenant_id={tenant}"), auditor.clone()).await, StatusCode::OK);
    assert_eq!(status(format!("/messages?tenant_id={tenant}"), auditor.clone()).await, StatusCode::FORBIDDEN);
    assert_eq!(status("/messages".into(), auditor).await, StatusCode::FORBIDDEN, "forbidden, not a missing tenant");
    app.stop().await;
}

#[tokio::test]
async fn two_authorization_headers_are_a_bad_request_not_a_guess() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant_id("doubled").await;
    let tenant_token = tenantmq::auth::mint(
        &app.config.auth,
        "tests",
        Role::Tenant(tenantmq::domain::tenant::TenantId::from_uuid(tenant.parse().expect("uuid"))),
        std::time::Duration::from_secs(600),
    )
    .expect("token");
    // The admin's token and a tenant's, as a shell alias plus `-H` would send them.
    let mut both = reqwest::header::HeaderMap::new();
    for token in [app.token(Role::Admin), tenant_token.clone()] {
        both.append(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("header value"));
    }
    let doubled = reqwest::Client::new().get(app.url("/messages?limit=2")).headers(both).send().await.expect("sent");
    assert_problem(doubled, StatusCode::BAD_REQUEST, Some("authorization")).await;
    let single = reqwest::Client::new().get(app.url("/messages?limit=2")).bearer_auth(&tenant_token).send().await;
    assert_eq!(single.expect("sent").status(), StatusCode::OK);
    app.stop().await;
}

/// Another tenant's token, and an auditor's, are refused before their body arrives: a request the service
/// would refuse whatever it says holds no memory and waits for nothing. Before, a batch's body (up to
/// `max_batch_bytes`) was read first, for up to `server.body_read_timeout`, and parsed.
#[tokio::test]
async fn another_tenants_token_and_an_auditors_are_refused_before_their_body_arrives() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let a = app.create_tenant_id("a").await;
    let b = app.create_tenant_id("b").await;
    let tokens =
        [("tenant b", app.token(Role::Tenant(b.parse().expect("uuid")))), ("an auditor", app.token(Role::Auditor))];
    for (who, token) in tokens {
        for operation in ["messages/batch", "dlq/replay"] {
            let address = app.base_url.trim_start_matches("http://");
            let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
            let head = format!(
                "POST /tenants/{a}/{operation} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: 16000000\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await.expect("the head, and no body");
            let mut answer = vec![0; 256];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
                .await
                .unwrap_or_else(|_| panic!("{who} on {operation}: not answered before the body"))
                .expect("read");
            let answer = String::from_utf8_lossy(&answer[..read]);
            assert!(answer.starts_with("HTTP/1.1 403"), "{who} on {operation}: {answer}");
        }
    }
    app.stop().await;
}
