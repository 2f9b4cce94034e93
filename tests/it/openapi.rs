//! The committed OpenAPI document is the one the code generates (regenerate with
//! `cargo run -q -- openapi > docs/openapi.json`).

#[test]
fn committed_openapi_document_matches_the_code() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
        .expect("docs/openapi.json exists");
    let generated = tenantmq::api::document::document();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "docs/openapi.json is stale: run `cargo run -q -- openapi > docs/openapi.json`"
    );
}

#[tokio::test]
async fn the_service_serves_the_document_and_swagger_ui() {
    let app = crate::helpers::TestApp::spawn().await;
    let served: serde_json::Value = app.get("/openapi.json").await.json().await.expect("json");
    let generated: serde_json::Value = serde_json::from_str(tenantmq::api::document::document()).expect("json");
    assert_eq!(served, generated, "the completed document is served");
    assert!(served["paths"]["/tenants/{id}/config/concurrency"]["put"].is_object());
    let docs = app.get("/docs").await;
    assert_eq!(docs.status(), reqwest::StatusCode::OK);
    let page = docs.text().await.expect("html");
    assert!(page.contains("swagger"), "Swagger UI page");
    // Only the completed document has examples of its problems.
    assert!(page.contains("urn:tenantmq:problem:conflict"), "Swagger UI shows the completed document");
    app.stop().await;
}

/// Clients generated from the served document check the workers' bounds before they send: the document says
/// what this instance takes. It said 64 whatever `max_workers` was, so such a client refused 65 to 100 to an
/// instance configured for 100, and sent 17 to 64 to one configured for 16.
#[tokio::test]
async fn the_served_document_states_the_configured_max_workers() {
    let mut config = crate::helpers::test_config();
    config.max_workers = std::num::NonZeroU16::new(100).expect("non-zero");
    let app = crate::helpers::TestApp::spawn_with(config).await;
    let served: serde_json::Value = app.get("/openapi.json").await.json().await.expect("json");
    for request in ["CreateTenantRequest", "SetConcurrencyRequest"] {
        assert_eq!(served["components"]["schemas"][request]["properties"]["workers"]["maximum"], 100, "{request}");
    }
    let page = app.get("/docs").await.text().await.expect("html");
    assert!(page.contains(r#""maximum": 100"#), "Swagger UI shows the served document");
    let created = app.post_json("/tenants", &serde_json::json!({ "name": "wide", "workers": 100 })).await;
    assert_eq!(created.status(), reqwest::StatusCode::CREATED, "the documented maximum is taken");
    app.stop().await;
}

/// RFC 9110: a 405 lists the methods the resource has.
#[tokio::test]
async fn a_method_the_path_does_not_have_gets_405_with_allow() {
    let app = crate::helpers::TestApp::spawn().await;
    for (path, allow) in [("/tenants", "GET, POST"), ("/tenants/{id}", "DELETE, GET"), ("/metrics", "GET")] {
        let url = app.url(&path.replace("{id}", &uuid::Uuid::now_v7().to_string()));
        let response = app.client.patch(url).send().await.expect("sent");
        assert_eq!(response.status(), reqwest::StatusCode::METHOD_NOT_ALLOWED, "{path}");
        let header = response.headers().get("allow").and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(header.as_deref(), Some(allow), "{path}");
    }
    app.stop().await;
}
