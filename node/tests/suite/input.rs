//! Text the store cannot hold (NUL, unpaired UTF-16 surrogates, bytes that
//! are not UTF-8) is refused with `422 validation_failed` in every text input
//! of every endpoint: JSON strings and keys, query parameters, path
//! segments. The same answer on both engines, never a 5xx, and nothing of it
//! reaches the store. The gateway's one text input (the `auth` token) gives
//! the documented auth failure, and the one stored header (User-Agent) can
//! carry nothing odd.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use shared::protocol::{ClientFrame, Encoding, close};
use testkit::{Mode, Options, TestApp, WsClient, both_modes};

both_modes!(
    unstorable_text_in_any_text_input_is_a_validation_failure,
    a_nul_in_the_websocket_auth_token_is_the_documented_auth_failure,
    a_user_agent_that_is_not_plain_ascii_is_not_kept,
);

/// Cases per mode: each is one cheap request (the check runs before any
/// handler, so no password is hashed), and the inputs are few in kind.
const CASES: u32 = 48;

/// Where the generated text goes: `{BAD}` in the path or the body is
/// replaced by it (JSON-escaped text in a body, percent-encoded in a URL).
struct Target {
    method: Method,
    path: String,
    body: Option<String>,
    token: Option<String>,
    /// The field the answer must name (`None`: a top-level key, unnamed).
    field: Option<&'static str>,
}

fn targets(token: &str, room: shared::RoomId, admin: &str) -> Vec<Target> {
    let json = |method: Method, path: &str, token: Option<&str>, body: &str, field| Target {
        method,
        path: path.to_owned(),
        body: Some(body.to_owned()),
        token: token.map(str::to_owned),
        field,
    };
    let url = |method: Method, path: String, field| Target {
        method,
        path,
        body: None,
        token: Some(token.to_owned()),
        field,
    };
    let user = Some(token);
    let messages = format!("/v1/rooms/{room}/messages");
    let members = format!("/v1/rooms/{room}/members");
    vec![
        // JSON strings of every body, one field at a time.
        json(
            Method::POST,
            "/v1/auth/signup",
            None,
            r#"{"username": "a{BAD}b", "email": "x@example.com", "password": "long enough pw"}"#,
            Some("username"),
        ),
        json(
            Method::POST,
            "/v1/auth/signup",
            None,
            r#"{"username": "xyz", "email": "x{BAD}@example.com", "password": "long enough pw"}"#,
            Some("email"),
        ),
        json(
            Method::POST,
            "/v1/auth/signup",
            None,
            r#"{"username": "xyz", "email": "x@example.com", "password": "long {BAD} enough pw"}"#,
            Some("password"),
        ),
        json(
            Method::POST,
            "/v1/auth/login",
            None,
            r#"{"login": "ann{BAD}", "password": "long enough pw"}"#,
            Some("login"),
        ),
        json(
            Method::POST,
            "/v1/auth/login",
            None,
            r#"{"email": "ann{BAD}@example.com", "password": "long enough pw"}"#,
            Some("email"),
        ),
        json(
            Method::POST,
            "/v1/auth/login",
            None,
            r#"{"login": "ann", "password": "pw{BAD}"}"#,
            Some("password"),
        ),
        json(
            Method::POST,
            "/v1/auth/refresh",
            None,
            r#"{"refresh_token": "{BAD}.abc"}"#,
            Some("refresh_token"),
        ),
        json(
            Method::POST,
            "/v1/rooms",
            user,
            r#"{"name": "room {BAD}"}"#,
            Some("name"),
        ),
        json(
            Method::POST,
            &members,
            user,
            r#"{"user_id": 1, "role": "adm{BAD}in"}"#,
            Some("role"),
        ),
        json(
            Method::POST,
            &messages,
            user,
            r#"{"body": "hello {BAD}"}"#,
            Some("body"),
        ),
        json(
            Method::POST,
            &messages,
            user,
            r#"{"body": "hello", "client_msg_id": "id-{BAD}"}"#,
            Some("client_msg_id"),
        ),
        json(
            Method::POST,
            "/v1/admin/provision",
            Some(admin),
            r#"{"prefix": "p{BAD}", "users": 1}"#,
            Some("prefix"),
        ),
        // Keys: unknown ones are refused anyway, but the text check comes first.
        json(
            Method::POST,
            "/v1/rooms",
            user,
            r#"{"name": "ok", "{BAD}": 1}"#,
            None,
        ),
        json(
            Method::POST,
            "/v1/rooms/direct",
            user,
            r#"{"{BAD}user_id": 1}"#,
            None,
        ),
        // Query parameters, values and names.
        url(
            Method::GET,
            "/v1/users?username={BAD}".into(),
            Some("username"),
        ),
        url(
            Method::GET,
            format!("{messages}?limit=5&before_seq=1{{BAD}}"),
            Some("before_seq"),
        ),
        url(
            Method::GET,
            format!("{messages}?limit={{BAD}}"),
            Some("limit"),
        ),
        url(Method::GET, "/v1/users?{BAD}=bob".into(), None),
        // Path segments.
        url(Method::GET, "/v1/rooms/{BAD}".into(), Some("room_id")),
        url(
            Method::GET,
            "/v1/rooms/1{BAD}/messages".into(),
            Some("room_id"),
        ),
        url(
            Method::DELETE,
            format!("{members}/{{BAD}}"),
            Some("user_id"),
        ),
        url(
            Method::DELETE,
            "/v1/auth/sessions/{BAD}".into(),
            Some("session_id"),
        ),
    ]
}

/// Text that is fine anywhere, as a JSON string fragment and as a URL
/// fragment: plain letters, an accented letter, a character outside the
/// BMP as a proper surrogate pair, and (in JSON) an escaped backslash
/// followed by `u0000`, which is text and not a NUL.
fn harmless() -> impl Strategy<Value = (String, String)> {
    prop::collection::vec(
        prop_oneof![
            Just(("a", "a")),
            Just(("7", "7")),
            Just(("\\u00e9", "%C3%A9")),
            Just(("\\ud83d\\ude00", "%F0%9F%98%80")),
            Just(("\\\\u0000", "u0000")),
            Just(("\\n", "%20")),
        ],
        0..3,
    )
    .prop_map(|parts| {
        parts
            .into_iter()
            .fold((String::new(), String::new()), |(j, u), (pj, pu)| {
                (j + pj, u + pu)
            })
    })
}

/// What the store cannot hold: NUL, a lone high or low surrogate (in JSON);
/// NUL, an encoded surrogate, an overlong NUL or a byte that starts no
/// UTF-8 character (in a URL).
fn unstorable() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        Just(("\\u0000".to_owned(), "%00".to_owned())),
        (0xd800u32..0xdc00).prop_map(|u| (format!("\\u{u:04x}"), "%ED%A0%80".to_owned())),
        (0xdc00u32..0xe000).prop_map(|u| (format!("\\u{u:04X}"), "%C0%80".to_owned())),
        Just(("\\u0000\\u0000".to_owned(), "%FF".to_owned())),
    ]
}

async fn unstorable_text_in_any_text_input_is_a_validation_failure(mode: Mode) {
    let admin = "a".repeat(api::config::MIN_ADMIN_TOKEN_LEN);
    let mut options = Options::default();
    options.policy.admin_token = Some(SecretString::from(admin.clone()));
    let app = TestApp::spawn_with(mode, options).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "general").await;
    let targets = targets(&alice.token, room, &admin);
    let http = reqwest::Client::new();
    let runtime = tokio::runtime::Handle::current();

    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (0..targets.len(), harmless(), unstorable(), harmless());
    let outcome = runner.run(&strategy, |(which, before, bad, after)| {
        let target = &targets[which];
        let (text, in_url) = match &target.body {
            Some(_) => (format!("{}{}{}", before.0, bad.0, after.0), false),
            None => (format!("{}{}{}", before.1, bad.1, after.1), true),
        };
        let path = if in_url {
            target.path.replace("{BAD}", &text)
        } else {
            target.path.clone()
        };
        let mut request = http.request(target.method.clone(), app.url(&path));
        if let Some(token) = &target.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = &target.body {
            request = request
                .header("content-type", "application/json")
                .body(body.replace("{BAD}", &text));
        }
        let (status, answer) = tokio::task::block_in_place(|| {
            runtime.block_on(async {
                let response = request.send().await.expect("sending a request");
                let status = response.status();
                let text = response.text().await.expect("reading the answer");
                (
                    status,
                    serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text)),
                )
            })
        });
        let what = format!("{} {path} with {text:?}: {status} {answer}", target.method);
        prop_assert!(!status.is_server_error(), "{}", what);
        prop_assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{}", what);
        prop_assert_eq!(&answer["error"]["code"], "validation_failed", "{}", what);
        prop_assert_eq!(&answer["error"]["field"], &json!(target.field), "{}", what);
        Ok::<(), TestCaseError>(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }

    // Nothing of it reached the store: still one user with one room.
    let (status, rooms) = app.get("/v1/rooms", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rooms["rooms"].as_array().map(Vec::len), Some(1), "{rooms}");
    let (status, _) = app.get("/v1/users?username=xyz", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no account was created");
    app.stop().await;
}

async fn a_nul_in_the_websocket_auth_token_is_the_documented_auth_failure(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        for token in [
            "\0".to_owned(),
            format!("{}\0", alice.token),
            alice.token.replacen('.', ".\0", 1),
        ] {
            let mut ws = WsClient::connect(app.ws_url(0), encoding).await;
            ws.send(&ClientFrame::Auth { id: None, token }).await;
            assert_eq!(ws.closed().await, Some(close::UNAUTHORIZED), "{encoding:?}");
        }
    }
    // The gateway is unharmed: the real token still works.
    let ws = app.ws(0, &alice).await;
    ws.close().await;
    app.stop().await;
}

async fn a_user_agent_that_is_not_plain_ascii_is_not_kept(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let http = reqwest::Client::new();
    for agent in [&b"caf\xe9/1.0"[..], b"\xff\xfe\x80", b"plain/1.0"] {
        let response = http
            .post(app.url("/v1/auth/login"))
            .header(
                "user-agent",
                reqwest::header::HeaderValue::from_bytes(agent).expect("a header value"),
            )
            .json(&json!({"login": "alice", "password": "alice-correct-horse"}))
            .send()
            .await
            .expect("login");
        assert_eq!(response.status(), StatusCode::OK, "{agent:?}");
    }
    let (status, body) = app.get("/v1/auth/sessions", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    let sessions = body["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 4, "{body}");
    let kept: Vec<&Value> = sessions
        .iter()
        .map(|s| &s["user_agent"])
        .filter(|a| !a.is_null())
        .collect();
    assert_eq!(
        kept,
        [&json!("plain/1.0")],
        "only the plain agent is kept: {body}"
    );
    app.stop().await;
}
