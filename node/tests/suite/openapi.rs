//! `/openapi.json` is a complete description: every response has a
//! description, every shared failure is where it can happen, and every
//! status a route answers to the bad requests a schema-driven fuzzer sends
//! (no token, not JSON, broken JSON, the wrong shape, text the store cannot
//! hold, too large, a bad query, a path id that does not parse) is
//! documented for that route. `.ci/api-fuzz` runs schemathesis against the
//! same description; this test keeps the finding in the suite.

use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::Value;
use std::collections::BTreeSet;
use testkit::{Mode, Options, TestApp, both_modes};

both_modes!(
    every_response_of_the_description_has_a_description,
    every_status_a_route_answers_to_bad_requests_is_documented,
);

const METHODS: [&str; 4] = ["get", "post", "put", "delete"];

/// One bad request to send to an operation.
struct Case {
    what: &'static str,
    target: String,
    token: Option<String>,
    content_type: Option<&'static str>,
    body: Option<String>,
}

/// The response object behind `response`, following a `$ref`.
fn resolve<'a>(spec: &'a Value, response: &'a Value) -> &'a Value {
    match response["$ref"].as_str() {
        Some(target) => {
            let name = target
                .strip_prefix("#/components/responses/")
                .unwrap_or_else(|| panic!("a response reference: {target}"));
            let found = &spec["components"]["responses"][name];
            assert!(found.is_object(), "{target} resolves");
            found
        }
        None => response,
    }
}

fn operations(spec: &Value) -> Vec<(String, &'static str, &Value)> {
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item[method].is_object() {
                out.push((path.clone(), method, &item[method]));
            }
        }
    }
    out
}

async fn every_response_of_the_description_has_a_description(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (status, spec) = app.get("/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(spec["openapi"], "3.1.0");
    let operations = operations(&spec);
    assert!(operations.len() >= 17, "every route is described");
    for (path, method, op) in operations {
        let responses = op["responses"].as_object().expect("responses");
        for (status, response) in responses {
            let response = resolve(&spec, response);
            let description = response["description"].as_str().unwrap_or("");
            assert!(
                !description.trim().is_empty(),
                "{method} {path} {status} has a description: {response}"
            );
        }
        let documents = |s: &str| responses.contains_key(s);
        if path.starts_with("/v1/") {
            assert!(documents("503"), "{method} {path} touches the database");
        }
        let bearer = op["security"]
            .as_array()
            .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
        if bearer {
            assert!(documents("401"), "{method} {path} needs a token");
        }
        if op["requestBody"].is_object() {
            for s in ["400", "413", "415", "422"] {
                assert!(documents(s), "{method} {path} takes a JSON body: {s}");
            }
        }
        if let Some(limited) = responses.get("429") {
            assert!(
                resolve(&spec, limited)["headers"]["Retry-After"].is_object(),
                "{method} {path}: 429 says when to retry"
            );
        }
    }
    app.stop().await;
}

async fn every_status_a_route_answers_to_bad_requests_is_documented(mode: Mode) {
    let admin = "a".repeat(api::config::MIN_ADMIN_TOKEN_LEN);
    let mut options = Options::default();
    options.policy.admin_token = Some(SecretString::from(admin.clone()));
    let app = TestApp::spawn_with(mode, options).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&alice, "general").await;
    let (_, spec) = app.get("/openapi.json", None).await;
    let http = reqwest::Client::new();
    // The server publish api takes an API key, with every scope: the bad
    // requests then reach its routes' own checks.
    let (status, key) = app
        .post(
            "/v1/admin/api-keys",
            Some(&admin),
            serde_json::json!({"name": "openapi", "scopes": ["rooms:publish", "users:publish"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let api_key = key["key"].as_str().expect("the key").to_owned();

    let mut undocumented = Vec::new();
    let mut seen = BTreeSet::new();
    for (path, method, op) in operations(&spec) {
        let documented: BTreeSet<String> = op["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .cloned()
            .collect();
        let token = if path.starts_with("/v1/admin") {
            admin.clone()
        } else if path.starts_with("/v1/server") {
            api_key.clone()
        } else {
            alice.token.clone()
        };
        let with_ids = |room_id: &str, user_id: &str, session_id: &str| {
            path.replace("{room_id}", room_id)
                .replace("{user_id}", user_id)
                .replace("{session_id}", session_id)
                .replace("{key_id}", session_id)
        };
        let valid_path = with_ids(
            &room.to_string(),
            &bob.id.to_string(),
            &uuid::Uuid::new_v4().to_string(),
        );
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");

        let authorised = |what, target: String| Case {
            what,
            target,
            token: Some(token.clone()),
            content_type: None,
            body: None,
        };
        let mut cases = Vec::new();
        if op["security"].is_array() {
            cases.push(Case {
                token: None,
                ..authorised("no token", valid_path.clone())
            });
        }
        if op["requestBody"].is_object() {
            let json = Some("application/json");
            for (what, content_type, body) in [
                ("not JSON", Some("text/plain"), "x".to_owned()),
                ("no content type", None, "{}".to_owned()),
                ("broken JSON", json, "{\"a\":".to_owned()),
                ("wrong shape", json, "[1, 2]".to_owned()),
                ("empty object", json, "{}".to_owned()),
                ("NUL", json, "{\"a\": \"\\u0000\"}".to_owned()),
                ("lone surrogate key", json, "{\"\\udfff\": 1}".to_owned()),
                (
                    "too large",
                    json,
                    format!("{{\"a\": \"{}\"}}", "x".repeat(70_000)),
                ),
            ] {
                cases.push(Case {
                    content_type,
                    body: Some(body),
                    ..authorised(what, valid_path.clone())
                });
            }
        }
        let query: Vec<&str> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "query")
            .filter_map(|p| p["name"].as_str())
            .collect();
        for name in &query {
            for (what, value) in [
                ("a query value of the wrong type", "x"),
                ("NUL in a query value", "%00"),
                ("a query value that is not UTF-8", "%FF"),
                ("a query value out of range", "0"),
            ] {
                cases.push(authorised(what, format!("{valid_path}?{name}={value}")));
            }
        }
        if !query.is_empty() {
            cases.push(authorised("no query", valid_path.clone()));
        }
        if path.contains('{') {
            for (what, id) in [
                ("a path id that does not parse", "x"),
                ("a path id too large", "99999999999999999999999"),
                ("NUL in a path id", "%00"),
                ("a path id that is not UTF-8", "%FF"),
            ] {
                cases.push(authorised(what, with_ids(id, id, id)));
            }
        }

        for Case {
            what,
            target,
            token,
            content_type,
            body,
        } in cases
        {
            let mut request = http.request(method.clone(), app.url(&target));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            if let Some(body) = body {
                request = request.body(body);
            }
            let response = request.send().await.expect("a request");
            let status = response.status();
            let answer = response.text().await.expect("an answer");
            assert!(
                !status.is_server_error(),
                "{method} {target} ({what}): {status} {answer}"
            );
            seen.insert(status.as_u16());
            if !documented.contains(status.as_str()) {
                undocumented.push(format!("{method} {path} ({what}): {status} {answer}"));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "undocumented statuses:\n{}",
        undocumented.join("\n")
    );
    // The cases reached every kind of failure they aim at.
    for status in [400, 401, 404, 413, 415, 422] {
        assert!(
            seen.contains(&status),
            "some case answered {status}: {seen:?}"
        );
    }
    app.stop().await;
}
