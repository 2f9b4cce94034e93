//! The committed OpenAPI document is the one the code generates (regenerate with
//! `cargo run -q -- openapi > docs/openapi.json`).

#[test]
fn committed_openapi_document_matches_the_code() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
        .expect("docs/openapi.json exists");
    let generated = tenantmq::api::service().spec();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "docs/openapi.json is stale: run `cargo run -q -- openapi > docs/openapi.json`"
    );
}

#[tokio::test]
async fn the_service_serves_the_document_and_swagger_ui() {
    let app = crate::helpers::TestApp::spawn().await;
    let served: serde_json::Value = app.get("/openapi.json").await.json().await.expect("json");
    assert!(served["paths"]["/tenants/{id}/config/concurrency"]["put"].is_object());
    let docs = app.get("/docs").await;
    assert_eq!(docs.status(), reqwest::StatusCode::OK);
    assert!(docs.text().await.expect("html").contains("swagger"), "Swagger UI page");
    app.stop().await;
}
