//! Malformed requests get a JSON error with a stable code, never a panic.

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{Mode, TestApp, both_modes};

both_modes!(
    every_kind_of_bad_request_gets_a_coded_json_error,
    the_service_describes_and_reports_itself
);

async fn every_kind_of_bad_request_gets_a_coded_json_error(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let http = reqwest::Client::new();
    let raw = |method: reqwest::Method, path: &str| {
        http.request(method, app.url(path))
            .bearer_auth(&alice.token)
    };
    let code = |body: &str| {
        serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
    };

    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            raw(reqwest::Method::POST, "/v1/rooms")
                .header("content-type", "application/json")
                .body("{\"name\":"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            raw(reqwest::Method::POST, "/v1/rooms").body("name=x"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            raw(reqwest::Method::POST, "/v1/rooms").json(&json!({"name": 7})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            raw(reqwest::Method::POST, "/v1/rooms").json(&json!({"name": "x", "extra": 1})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            raw(reqwest::Method::POST, "/v1/rooms")
                .header("content-type", "application/json")
                .body(format!("{{\"name\":\"{}\"}}", "x".repeat(100_000))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            raw(reqwest::Method::GET, "/v1/nowhere"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            raw(reqwest::Method::GET, "/v1/rooms/not-a-number"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            raw(reqwest::Method::GET, "/v1/rooms/99999999999999999999999"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            raw(reqwest::Method::PUT, "/v1/rooms"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            http.get(app.url("/v1/rooms")),
            StatusCode::UNAUTHORIZED,
            "missing_token",
        ),
        (
            http.get(app.url("/v1/rooms"))
                .header("authorization", "Basic YTpi"),
            StatusCode::UNAUTHORIZED,
            "missing_token",
        ),
        (
            http.get(app.url("/v1/rooms")).bearer_auth("a.b.c"),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            http.get(app.url("/v1/rooms"))
                .bearer_auth(app.expired_token(&alice, std::time::Duration::from_secs(60))),
            StatusCode::UNAUTHORIZED,
            "token_expired",
        ),
    ];
    for (request, status, expected) in cases {
        let response = request.send().await.expect("request");
        let got_status = response.status();
        let is_json = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap_or("").starts_with("application/json"));
        let body = response.text().await.expect("body");
        assert_eq!(
            (got_status, code(&body).as_deref()),
            (status, Some(expected)),
            "{body}"
        );
        assert!(is_json, "errors are JSON: {body}");
        assert!(
            !body.contains("sqlx") && !body.contains("SQL"),
            "no internals leak: {body}"
        );
    }
    app.stop().await;
}

async fn the_service_describes_and_reports_itself(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (status, spec) = app.get("/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(spec["openapi"], "3.1.0");
    for path in [
        "/v1/auth/signup",
        "/v1/auth/login",
        "/v1/rooms",
        "/v1/rooms/{room_id}/members",
        "/v1/rooms/{room_id}/messages",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} is documented");
    }
    assert!(spec["components"]["schemas"]["ErrorBody"].is_object());
    let (status, health) = app.get("/healthz", None).await;
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, ready) = app.get("/readyz", None).await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(
        (ready["database"].as_str(), ready["broker"].as_str()),
        (Some("ok"), Some("ok"))
    );
    app.stop().await;
}
