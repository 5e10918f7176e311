//! Two-factor login with TOTP and recovery codes, and the ways around it
//! that must not work.

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{Mode, Options, TestApp, TestUser, both_modes};
use totp_rs::{Algorithm, Secret, Totp};

both_modes!(
    enrolment_needs_the_password_and_a_confirming_code,
    a_two_factor_login_answers_a_challenge_and_tokens_only_for_a_right_code,
    a_challenge_takes_few_guesses_and_guesses_count_towards_the_lockout,
    recovery_codes_work_once_and_can_be_replaced,
    disabling_needs_the_password_and_a_code,
    the_second_factor_cannot_be_skipped,
);

fn code(body: &Value) -> Option<&str> {
    body["error"]["code"].as_str()
}

fn password(user: &TestUser) -> String {
    format!("{}-correct-horse", user.username)
}

/// The authenticator app: codes of `secret` at `offset_secs` from now.
pub(crate) fn app_code(secret: &str, offset_secs: i64) -> String {
    let totp = Totp::from_rfc6238_secret(secret);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs() as i64;
    totp.generate((now + offset_secs) as u64).to_string()
}

trait FromSecret {
    fn from_rfc6238_secret(secret: &str) -> Totp;
}

impl FromSecret for Totp {
    fn from_rfc6238_secret(secret: &str) -> Totp {
        totp_rs::Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(6)
            .with_step_duration(30)
            .with_secret(Secret::try_from_base32(secret).expect("base32"))
            .build()
            .expect("a TOTP")
    }
}

/// Enrols `user` and confirms with the current code; the secret and the
/// recovery codes.
pub(crate) async fn enable(app: &TestApp, user: &TestUser) -> (String, Vec<String>) {
    let (secret, codes, _) = enable_with(app, user).await;
    (secret, codes)
}

/// Like [`enable`], also answering the code the confirmation spent (a
/// 30 s step may end right after it, so "now" is not that step).
async fn enable_with(app: &TestApp, user: &TestUser) -> (String, Vec<String>, String) {
    let (status, enrolment) = app
        .post(
            "/v1/auth/totp/enrol",
            Some(&user.token),
            json!({"password": password(user)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{enrolment}");
    let secret = enrolment["secret"].as_str().expect("secret").to_owned();
    let confirmation = app_code(&secret, 0);
    let (status, body) = app
        .post(
            "/v1/auth/totp/confirm",
            Some(&user.token),
            json!({"code": confirmation}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let codes = body["recovery_codes"]
        .as_array()
        .expect("codes")
        .iter()
        .map(|c| c.as_str().expect("a code").to_owned())
        .collect();
    (secret, codes, confirmation)
}

/// A login with the password: its status and body.
async fn login(app: &TestApp, user: &TestUser) -> (StatusCode, Value) {
    app.post(
        "/v1/auth/login",
        None,
        json!({"login": user.username, "password": password(user)}),
    )
    .await
}

async fn challenge(app: &TestApp, user: &TestUser) -> String {
    let (status, body) = login(app, user).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["two_factor_required"], true, "{body}");
    assert!(body.get("access_token").is_none(), "no tokens yet: {body}");
    body["challenge"].as_str().expect("challenge").to_owned()
}

async fn answer(app: &TestApp, challenge: &str, code: &str) -> (StatusCode, Value) {
    app.post(
        "/v1/auth/login/totp",
        None,
        json!({"challenge": challenge, "code": code}),
    )
    .await
}

async fn audit_kinds(app: &TestApp, user: &TestUser) -> Vec<String> {
    let (_, page) = app
        .get("/v1/users/me/security-events", Some(&user.token))
        .await;
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn enrolment_needs_the_password_and_a_confirming_code(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let (status, body) = app
        .post(
            "/v1/auth/totp/enrol",
            Some(&alice.token),
            json!({"password": "not it"}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, Some("wrong_password"))
    );
    let (status, enrolment) = app
        .post(
            "/v1/auth/totp/enrol",
            Some(&alice.token),
            json!({"password": password(&alice)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{enrolment}");
    let secret = enrolment["secret"].as_str().expect("secret");
    assert!(Secret::try_from_base32(secret).is_ok_and(|s| s.as_bytes().len() == 20));
    let uri = enrolment["otpauth_uri"].as_str().expect("uri");
    assert!(
        uri.starts_with("otpauth://totp/Parley:alice?") && uri.contains(secret),
        "{uri}"
    );
    let png = base64::engine::general_purpose::STANDARD
        .decode(enrolment["qr_png_base64"].as_str().expect("qr"))
        .expect("base64");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");

    // Pending: the login is unchanged until a code confirms it.
    let (_, status_body) = app.get("/v1/auth/totp", Some(&alice.token)).await;
    assert_eq!(
        (&status_body["enabled"], &status_body["pending"]),
        (&json!(false), &json!(true))
    );
    let (_, body) = login(&app, &alice).await;
    assert!(body["access_token"].is_string(), "{body}");

    let wrong = if app_code(secret, 0) == "000000" {
        "111111"
    } else {
        "000000"
    };
    let (status, body) = app
        .post(
            "/v1/auth/totp/confirm",
            Some(&alice.token),
            json!({"code": wrong}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("invalid_two_factor_code")
        )
    );
    let (status, body) = app
        .post(
            "/v1/auth/totp/confirm",
            Some(&alice.token),
            json!({"code": app_code(secret, 0)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let codes = body["recovery_codes"].as_array().expect("codes");
    assert_eq!(codes.len(), 10);
    let distinct: std::collections::HashSet<_> = codes.iter().collect();
    assert_eq!(distinct.len(), 10);
    let (_, status_body) = app.get("/v1/auth/totp", Some(&alice.token)).await;
    assert_eq!(
        status_body,
        json!({"enabled": true, "pending": false, "recovery_codes_left": 10})
    );
    let (status, body) = app
        .post(
            "/v1/auth/totp/enrol",
            Some(&alice.token),
            json!({"password": password(&alice)}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, Some("totp_already_enabled"))
    );
    assert!(
        audit_kinds(&app, &alice)
            .await
            .contains(&"totp_enabled".to_owned())
    );
    app.stop().await;
}

async fn a_two_factor_login_answers_a_challenge_and_tokens_only_for_a_right_code(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    // The confirmation spent its step.
    let (secret, _, confirmation) = enable_with(&app, &alice).await;
    let challenge = challenge(&app, &alice).await;

    let (status, body) = answer(&app, &challenge, "12345").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, Some("invalid_two_factor_code"))
    );
    let (status, body) = answer(&app, &challenge, &confirmation).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, Some("invalid_two_factor_code")),
        "a code is accepted once: the confirmation used this one"
    );
    // The next step's code (within the one-step skew) is new.
    let (status, tokens) = answer(&app, &challenge, &app_code(&secret, 30)).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let token = tokens["access_token"].as_str().expect("token");
    let (status, me) = app.get("/v1/users/me", Some(token)).await;
    assert_eq!((status, &me["username"]), (StatusCode::OK, &json!("alice")));
    let (status, body) = app
        .post(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "a normal session: {body}");

    // The challenge is spent; an older step never comes back.
    let (status, body) = answer(&app, &challenge, &app_code(&secret, 30)).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, Some("invalid_challenge"))
    );
    let again = self::challenge(&app, &alice).await;
    for offset in [-30, 0, 30] {
        let (status, _) = answer(&app, &again, &app_code(&secret, offset)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "step {offset}: spent");
    }
    let kinds = audit_kinds(&app, &alice).await;
    assert!(kinds.contains(&"two_factor_failed".to_owned()), "{kinds:?}");
    app.stop().await;
}

async fn a_challenge_takes_few_guesses_and_guesses_count_towards_the_lockout(mode: Mode) {
    let mut options = Options::default();
    options.policy.login_failures_per_15min = 12;
    let app = TestApp::spawn_with(mode, options).await;
    let alice = app.user("alice").await;
    let (secret, _) = enable(&app, &alice).await;
    let right = app_code(&secret, 30);
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };

    let first = challenge(&app, &alice).await;
    for _ in 0..5 {
        let (status, _) = answer(&app, &first, wrong).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = answer(&app, &first, &right).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, Some("invalid_challenge")),
        "five guesses spend a challenge, even before a right code"
    );

    // New challenges buy no more guesses than the account's login budget:
    // each password and each code counted, only a full login gives them back.
    let mut limited = false;
    for _ in 0..12 {
        let (status, body) = login(&app, &alice).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = true;
            break;
        }
        let c = body["challenge"].as_str().expect("challenge").to_owned();
        let (status, _) = answer(&app, &c, wrong).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = true;
            break;
        }
    }
    assert!(limited, "the lockout stops code guessing");
    assert!(
        audit_kinds(&app, &alice)
            .await
            .contains(&"login_locked_out".to_owned())
    );
    app.stop().await;
}

async fn recovery_codes_work_once_and_can_be_replaced(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let (secret, codes) = enable(&app, &alice).await;

    // As typed by a person: upper case, without the dash.
    let typed = codes[0].replace('-', "").to_uppercase();
    let (status, body) = answer(&app, &challenge(&app, &alice).await, &typed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().expect("token").to_owned();
    let (status, _) = answer(&app, &challenge(&app, &alice).await, &codes[0]).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a recovery code works once"
    );
    let (_, status_body) = app.get("/v1/auth/totp", Some(&token)).await;
    assert_eq!(status_body["recovery_codes_left"], 9);
    assert!(
        audit_kinds(&app, &alice)
            .await
            .contains(&"recovery_code_used".to_owned())
    );

    let (status, body) = app
        .post(
            "/v1/auth/totp/recovery-codes",
            Some(&token),
            json!({"password": password(&alice), "code": app_code(&secret, 30)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let fresh = body["recovery_codes"].as_array().expect("codes");
    assert_eq!(fresh.len(), 10);
    let (status, _) = answer(&app, &challenge(&app, &alice).await, &codes[1]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the old codes are gone");
    let (status, _) = answer(
        &app,
        &challenge(&app, &alice).await,
        fresh[0].as_str().expect("code"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

async fn disabling_needs_the_password_and_a_code(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let (status, body) = app
        .post(
            "/v1/auth/totp/disable",
            Some(&alice.token),
            json!({"password": password(&alice), "code": "123456"}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, Some("totp_not_enabled"))
    );
    let (_, codes) = enable(&app, &alice).await;
    let (status, body) = app
        .post(
            "/v1/auth/totp/disable",
            Some(&alice.token),
            json!({"password": "guess", "code": codes[0]}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, Some("wrong_password"))
    );
    let (status, body) = app
        .post(
            "/v1/auth/totp/disable",
            Some(&alice.token),
            json!({"password": password(&alice), "code": "zzzzz-zzzzz"}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("invalid_two_factor_code")
        )
    );
    let (_, still) = app.get("/v1/auth/totp", Some(&alice.token)).await;
    assert_eq!(still["enabled"], true, "nothing changed");
    let (status, _) = app
        .post(
            "/v1/auth/totp/disable",
            Some(&alice.token),
            json!({"password": password(&alice), "code": codes[0]}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, body) = login(&app, &alice).await;
    assert!(
        body["access_token"].is_string(),
        "a password is enough again: {body}"
    );
    let (_, status_body) = app.get("/v1/auth/totp", Some(&alice.token)).await;
    assert_eq!(
        status_body,
        json!({"enabled": false, "pending": false, "recovery_codes_left": 0})
    );
    assert!(
        audit_kinds(&app, &alice)
            .await
            .contains(&"totp_disabled".to_owned())
    );
    app.stop().await;
}

async fn the_second_factor_cannot_be_skipped(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, mallory) = (app.user("alice").await, app.user("mallory").await);
    let (_, alices_codes) = enable(&app, &alice).await;
    let (mallory_secret, _) = enable(&app, &mallory).await;
    let challenge = challenge(&app, &alice).await;

    // The challenge is no token, anywhere one is taken.
    let (status, _) = app.get("/v1/users/me", Some(&challenge)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app
        .post(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": challenge}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut ws = testkit::WsClient::connect(app.ws_url(0), shared::protocol::Encoding::Json).await;
    ws.send(&shared::protocol::ClientFrame::Auth {
        id: None,
        token: challenge.clone(),
    })
    .await;
    assert!(ws.closed().await.is_some(), "the gateway refuses it");

    // Another account's code does not answer alice's challenge, nor does a
    // made-up challenge take a right code.
    let (status, _) = answer(&app, &challenge, &app_code(&mallory_secret, 30)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = answer(&app, "made-up", &alices_codes[0]).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, Some("invalid_challenge"))
    );
    // The code was not spent by the refused attempts.
    let (status, _) = answer(&app, &challenge, &alices_codes[0]).await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}
