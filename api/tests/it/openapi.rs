//! The OpenAPI document is a reviewed artefact: any change to it shows as a diff of
//! `api/tests/snapshots/openapi.json`. Run with `UPDATE_SNAPSHOTS=1` to accept a change.

use reqwest::{Method, StatusCode};

use crate::support::TestApp;

const SNAPSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/snapshots/openapi.json");

#[tokio::test]
async fn the_openapi_document_matches_its_snapshot() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let served = response.text().await.unwrap();
    let document: serde_json::Value = serde_json::from_str(&served).unwrap();
    let rendered = serde_json::to_string_pretty(&document).unwrap() + "\n";
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(SNAPSHOT, &rendered).unwrap();
    }
    let expected = std::fs::read_to_string(SNAPSHOT).unwrap_or_default();
    assert!(
        expected == rendered,
        "the OpenAPI document changed; review and accept with UPDATE_SNAPSHOTS=1 make test\n{rendered}"
    );
    for path in [
        "/events",
        "/events/batch",
        "/subscriptions",
        "/subscriptions/{id}/rotate-secret",
        "/admin/dead-letters/{id}/replay",
    ] {
        assert!(document["paths"].get(path).is_some(), "{path} documented");
    }
    assert!(document["components"]["securitySchemes"]["bearerAuth"].is_object());
}

#[tokio::test]
async fn swagger_ui_is_served_at_docs() {
    let app = TestApp::spawn().await;
    let (status, body) = app.call(Method::GET, "/docs/", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.as_str().unwrap().contains("swagger"), "{body}");
}

#[tokio::test]
async fn a_method_not_allowed_lists_the_allowed_ones() {
    let app = TestApp::spawn().await;
    for (method, path, allowed) in [
        (Method::PUT, "/api/v1/subscriptions", "GET, POST"),
        (
            Method::TRACE,
            "/api/v1/subscriptions/01a22415-1292-7a36-aa6d-264ec608abbf",
            "GET, DELETE, PATCH",
        ),
        (Method::DELETE, "/api/v1/events/batch", "POST"),
        (Method::POST, "/health", "GET"),
        (Method::POST, "/console", "GET"),
        (Method::DELETE, "/console/app.js", "GET"),
    ] {
        let response = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(
            response.headers()["allow"].to_str().unwrap(),
            allowed,
            "{method} {path}"
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], "method_not_allowed");
    }
}
