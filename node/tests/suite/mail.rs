//! Mail: email verification, address changes, password reset, and the
//! durable mail queue, against a real SMTP server on loopback (aiosmtpd).
//!
//! These tests run with the default policy (`PARLEY_UNVERIFIED_MAY_POST`
//! unset: with an SMTP mailer, unverified accounts may not post), unlike
//! the rest of the suite, whose harness lets unverified accounts post.

use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::protocol::close;
use std::time::Duration;
use testkit::{Mode, Options, SmtpServer, TestApp, TestUser, both_modes, eventually, query_value};

both_modes!(
    a_new_account_may_read_but_not_post_until_it_follows_the_mailed_link,
    a_verification_token_works_once_for_its_account_and_purpose_only,
    expired_links_are_refused,
    changing_the_address_needs_the_password_and_verifies_the_new_one,
    an_address_in_use_is_revealed_neither_by_signup_nor_by_an_address_change,
    resending_the_verification_is_limited_and_refused_once_verified,
    a_password_reset_revokes_every_session_and_closes_its_sockets,
    a_locked_out_account_can_reset_its_password_and_log_in_again,
    reset_requests_answer_the_same_whether_or_not_the_account_exists,
    failing_mail_is_retried_with_backoff_parked_and_delivered_after_an_admin_retry,
    the_file_mailer_writes_each_mail_into_the_data_directory,
);

const ADMIN: &str = "an-admin-token-that-is-long-enough-0123456789";
/// Links in mails start here (`PARLEY_PUBLIC_URL`).
const PUBLIC_URL: &str = "https://chat.example.com";
/// How long a test waits for a mail that is due at once.
const MAIL_WAIT: Duration = Duration::from_secs(20);

/// The default policy, mail to `smtp`, fast retries, admin endpoints on.
fn options(smtp_url: &str) -> Options {
    let mut options = Options::default();
    options.mail.mail = smtp_url.to_owned();
    options.mail.mail_tls = Some(api::config::MailTls::None);
    options.mail.public_url = PUBLIC_URL.to_owned();
    options.mail.unverified_may_post = None;
    options.mail.mail_retry_base = Duration::from_millis(50);
    options.mail.mail_poll_interval = Duration::from_millis(20);
    options.policy.admin_token = Some(ADMIN.to_owned().into());
    options
}

fn code(body: &Value) -> Option<&str> {
    body["error"]["code"].as_str()
}

fn address(name: &str) -> String {
    format!("{name}@example.com")
}

/// The token of the link to `path` in the newest of `n` mails to `to`.
async fn link_token(smtp: &SmtpServer, to: &str, n: usize, path: &str) -> String {
    let mails = smtp.wait_for(to, n, MAIL_WAIT).await;
    let mail = mails.last().expect("a mail");
    let link = format!("{PUBLIC_URL}{path}?token=");
    assert!(mail.contains(&link), "no {link} in the mail:\n{mail}");
    query_value(mail, "token").expect("a token in the mail")
}

async fn verification_token(smtp: &SmtpServer, name: &str, n: usize) -> String {
    link_token(smtp, &address(name), n, "/v1/auth/verify-email").await
}

async fn reset_token(smtp: &SmtpServer, name: &str, n: usize) -> String {
    link_token(smtp, &address(name), n, "/reset-password").await
}

/// Follows a verification link as a browser would (GET, no session).
async fn follow_link(app: &TestApp, token: &str) -> (StatusCode, Value) {
    app.get(&format!("/v1/auth/verify-email?token={token}"), None)
        .await
}

/// Waits until no mail job is pending (every one sent, skipped or parked).
async fn queue_drained(app: &TestApp) {
    let drained = eventually(MAIL_WAIT, || async {
        let (status, body) = app
            .get("/v1/admin/mail-jobs?state=pending", Some(ADMIN))
            .await;
        status == StatusCode::OK && body["jobs"].as_array().is_some_and(|j| j.is_empty())
    })
    .await;
    assert!(drained, "mail jobs still pending after {MAIL_WAIT:?}");
}

async fn me(app: &TestApp, user: &TestUser) -> Value {
    let (status, body) = app.get("/v1/users/me", Some(&user.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn security_event_kinds(app: &TestApp, user: &TestUser) -> Vec<String> {
    let (status, body) = app
        .get("/v1/users/me/security-events", Some(&user.token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_owned))
        .collect()
}

async fn a_new_account_may_read_but_not_post_until_it_follows_the_mailed_link(mode: Mode) {
    let smtp = SmtpServer::start().await;
    let app = TestApp::spawn_with(mode, options(&smtp.url())).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    assert_eq!(me(&app, &alice).await["email_verified"], false);

    // Unverified: logged in, but no room, no direct room.
    let (status, body) = app
        .post("/v1/rooms", Some(&alice.token), json!({"name": "general"}))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, Some("email_unverified"))
    );
    let (status, body) = app
        .post(
            "/v1/rooms/direct",
            Some(&alice.token),
            json!({"user_id": bob.id}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, Some("email_unverified"))
    );

    // The link from the real mail verifies alice, and only alice.
    let token = verification_token(&smtp, "alice", 1).await;
    let (status, body) = follow_link(&app, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], alice.id.0);
    assert_eq!(body["email_verified"], true);
    assert_eq!(me(&app, &alice).await["email_verified"], true);
    assert_eq!(me(&app, &bob).await["email_verified"], false);
    assert!(
        security_event_kinds(&app, &alice)
            .await
            .contains(&"email_verified".to_owned())
    );

    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    let message = app.send_message(&alice, room, "hello bob").await;

    // Bob is a member and reads, but neither posts nor reacts.
    let (status, body) = app
        .post(
            &format!("/v1/rooms/{room}/messages"),
            Some(&bob.token),
            json!({"body": "hi"}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, Some("email_unverified"))
    );
    let (status, body) = app
        .request(
            reqwest::Method::PUT,
            &format!(
                "/v1/rooms/{room}/messages/{}/reactions/%F0%9F%91%8D",
                message.seq
            ),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, Some("email_unverified"))
    );
    let (status, body) = app
        .get(&format!("/v1/rooms/{room}/messages"), Some(&bob.token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Once bob follows his link, he posts too.
    let token = verification_token(&smtp, "bob", 1).await;
    let (status, _) = app
        .post("/v1/auth/verify-email", None, json!({"token": token}))
        .await;
    assert_eq!(status, StatusCode::OK);
    app.send_message(&bob, room, "hi alice").await;
    app.stop().await;
}

async fn a_verification_token_works_once_for_its_account_and_purpose_only(mode: Mode) {
    let smtp = SmtpServer::start().await;
    let app = TestApp::spawn_with(mode, options(&smtp.url())).await;
    let alice = app.user("alice").await;
    let token = verification_token(&smtp, "alice", 1).await;

    // A verification token is no reset token.
    let (status, body) = app
        .post(
            "/v1/auth/password-reset/confirm",
            None,
            json!({"token": token, "password": "a brand new password"}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, Some("invalid_reset_token"))
    );
    app.login("alice", "alice-correct-horse").await;

    // The wrong-purpose attempt did not spend it; once used, it is spent.
    let (status, _) = follow_link(&app, &token).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = follow_link(&app, &token).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, Some("invalid_verification_token"))
    );

    // A reset token is no verification token.
    app.post(
        "/v1/auth/password-reset",
        None,
        json!({"email": address("alice")}),
    )
    .await;
    let reset = reset_token(&smtp, "alice", 2).await;
    let (status, body) = follow_link(&app, &reset).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, Some("invalid_verification_token"))
    );

    for garbage in ["", "x", "AAAA", &format!("{token}x"), "%00"] {
        let (status, body) = follow_link(&app, garbage).await;
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY,
            "{garbage:?}: {status} {body}"
        );
    }
    assert_eq!(me(&app, &alice).await["email_verified"], true);
    app.stop().await;
}

async fn expired_links_are_refused(mode: Mode) {
    let smtp = SmtpServer::start().await;
    let mut options = options(&smtp.url());
    // Links that expire the moment they are made: no waiting for a clock.
    options.mail.email_verification_ttl = Duration::ZERO;
    options.mail.password_reset_ttl = Duration::ZERO;
    let app = TestApp::spawn_with(mode, options).await;
    let alice = app.user("alice").await;
    let token = verification_token(&smtp, "alice", 1).await;
    let (status, body) = follow_link(&app, &token).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, Some("invalid_verification_token"))
    );
    assert_eq!(me(&app, &alice).await["email_verified"], false);

    app.post(
        "/v1/auth/password-reset",
        None,
        json!({"email": address("alice")}),
    )
    .await;
    let reset = reset_token(&smtp, "alice", 2).await;
    let (status, body) = app
        .post(
            "/v1/auth/password-reset/confirm",
            None,
            json!({"token": reset, "password": "a brand new password"}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, Some("invalid_reset_token"))
    );
    app.login("alice", "alice-correct-horse").await;
    app.stop().await;
}

async fn changing_the_address_needs_the_password_and_verifies_the_new_one(mode: Mode) {
    let smtp = SmtpServer::start().await;
    let app = TestApp::spawn_with(mode, options(&smtp.url())).await;
    let alice = app.user("alice").await;
    // The signup's link, not followed before the address changes.
    let old_token = verification_token(&smtp, "alice", 1).await;
    let change = |email: &str, password: &str| Some(json!({"email": email, "password": password}));
    let put = |body| {
        app.request(
            reqwest::Method::PUT,
            "/v1/users/me/email",
            Some(&alice.token),
            body,
        )
    };

    let (status, body) = put(change("alice2@example.com", "not the password")).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, Some("wrong_password"))
    );
    let (status, body) = put(change(&address("alice"), "alice-correct-horse")).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed"))
    );
    let (status, body) = put(change("Alice2@Example.com", "alice-correct-horse")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["email"], "alice2@example.com");
    assert_eq!(body["email_verified"], false);

    // The link to the old address proves nothing about the new one.
    let (status, body) = follow_link(&app, &old_token).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, Some("invalid_verification_token"))
    );
    // The old address is told (no link in it); the new one gets the link.
    let notice = smtp.wait_for(&address("alice"), 2, MAIL_WAIT).await;
    assert!(
        notice
            .last()
            .is_some_and(|m| m.contains("was changed") && !m.contains("token=")),
        "{notice:?}"
    );
    let token = link_token(&smtp, "alice2@example.com", 1, "/v1/auth/verify-email").await;
    let (status, body) = follow_link(&app, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["email"], "alice2@example.com");
    app.create_room(&alice, "general").await;

    // A verified account that changes its address is unverified again.
    let (status, _) = put(change("alice3@example.com", "alice-correct-horse")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app
        .post("/v1/rooms", Some(&alice.token), json!({"name": "random"}))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, Some("email_unverified"))
    );
    let kinds = security_event_kinds(&app, &alice).await;
    assert!(kinds.contains(&"email_changed".to_owned()), "{kinds:?}");
    app.stop().await;
}

async fn an_address_in_use_is_revealed_neither_by_signup_nor_by_an_address_change(mode: Mode) {
    let smtp = SmtpServer::start().await;
    let app = TestApp::spawn_with(mode, options(&smtp.url())).await;
    let alice = app.user("alice").await;
    let token = verification_token(&smtp, "alice", 1).await;
    assert_eq!(follow_link(&app, &token).await.0, StatusCode::OK);
    let a_notice = |mail: &str| {
        mail.contains("Someone used your email address")
            && mail.contains("Hello alice")
            && !mail.contains("token=")
    };

    // Mallory signs up with alice's address: answered as any signup.
    let (status, body) = app
        .post(
            "/v1/auth/signup",
            None,
            json!({"username": "mallory", "email": "Alice@Example.com", "password": "mallory-correct-horse"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["email_verified"], false);
    // Alice hears of it, with no link and no word of who it was.
    let mails = smtp.wait_for(&address("alice"), 2, MAIL_WAIT).await;
    let notice = mails.last().expect("a mail");
    assert!(a_notice(notice), "{notice}");
    assert!(!notice.contains("mallory"), "{notice}");
    // Asking again gets alice another notice, never mallory a link.
    let mallory = app.login("mallory", "mallory-correct-horse").await;
    queue_drained(&app).await;
    let (status, _) = app
        .post(
            "/v1/users/me/email/verification",
            Some(&mallory.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mails = smtp.wait_for(&address("alice"), 3, MAIL_WAIT).await;
    assert!(mails.last().is_some_and(|m| a_notice(m)), "{mails:?}");
    let (status, _) = app
        .post(
            "/v1/auth/login",
            None,
            json!({"login": "alice@example.com", "password": "mallory-correct-horse"}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the address logs in alice only"
    );

    // Bob moves his account to alice's address: answered as any change.
    let bob = app.user("bob").await;
    smtp.wait_for(&address("bob"), 1, MAIL_WAIT).await;
    let (status, body) = app
        .request(
            reqwest::Method::PUT,
            "/v1/users/me/email",
            Some(&bob.token),
            Some(json!({"email": "alice@example.com", "password": "bob-correct-horse"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["email_verified"], false);
    let mails = smtp.wait_for(&address("alice"), 4, MAIL_WAIT).await;
    assert!(mails.last().is_some_and(|m| a_notice(m)), "{mails:?}");
    let mails = smtp.wait_for(&address("bob"), 2, MAIL_WAIT).await;
    assert!(
        mails.last().is_some_and(|m| m.contains("was changed")),
        "{mails:?}"
    );

    // An address only unverified accounts hold: each gets a link, the
    // first to follow one claims it.
    for name in ["dave", "erin"] {
        let (status, body) = app
            .post(
                "/v1/auth/signup",
                None,
                json!({"username": name, "email": "shared@example.com", "password": "long enough pw"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let mails = smtp.wait_for("shared@example.com", 2, MAIL_WAIT).await;
    let tokens: Vec<String> = mails
        .iter()
        .map(|m| query_value(m, "token").expect("a link"))
        .collect();
    let (status, first) = follow_link(&app, &tokens[0]).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, body) = follow_link(&app, &tokens[1]).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, Some("email_taken"))
    );
    let claimed = app.login("shared@example.com", "long enough pw").await;
    assert_eq!(claimed.id.0, first["id"].as_i64().expect("an id"));

    // A reset for alice's address reaches alice's account.
    let (status, _) = app
        .post(
            "/v1/auth/password-reset",
            None,
            json!({"email": "alice@example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let token = reset_token(&smtp, "alice", 5).await;
    let (status, body) = app
        .post(
            "/v1/auth/password-reset/confirm",
            None,
            json!({"token": token, "password": "alice-new-horse-battery"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    app.assert_session_ended(&alice).await;
    let back = app.login("alice", "alice-new-horse-battery").await;
    assert_eq!(back.id, alice.id);
    app.stop().await;
}

async fn resending_the_verification_is_limited_and_refused_once_verified(mode: Mode) {
    let smtp = SmtpServer::start().await;
    let mut options = options(&smtp.url());
    options.mail.account_mails_per_hour = 2;
    let app = TestApp::spawn_with(mode, options).await;
    let alice = app.user("alice").await;
    smtp.wait_for(&address("alice"), 1, MAIL_WAIT).await;
    queue_drained(&app).await;
    let (status, _) = app
        .post(
            "/v1/users/me/email/verification",
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let second = verification_token(&smtp, "alice", 2).await;
    queue_drained(&app).await;
    let (status, body) = app
        .post(
            "/v1/users/me/email/verification",
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );

    // Either mailed link works; the newest is as good as the first.
    let (status, _) = follow_link(&app, &second).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app
        .post(
            "/v1/users/me/email/verification",
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, Some("email_already_verified"))
    );
    assert_eq!(smtp.messages_to(&address("alice")).len(), 2);
    app.stop().await;
}

async fn a_password_reset_revokes_every_session_and_closes_its_sockets(mode: Mode) {
    let smtp = SmtpServer::start().await;
    let app = TestApp::spawn_with(mode, options(&smtp.url())).await;
    let alice = app.user("alice").await;
    let phone = app.login("alice", "alice-correct-horse").await;
    let bob = app.user("bob").await;
    let mut alice_socket = app.ws(1, &alice).await;
    let mut phone_socket = app.ws(2, &phone).await;
    let mut bob_socket = app.ws(0, &bob).await;

    let (status, body) = app
        .post(
            "/v1/auth/password-reset",
            None,
            json!({"email": "ALICE@example.com "}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let token = reset_token(&smtp, "alice", 2).await;
    let (status, body) = app
        .post(
            "/v1/auth/password-reset/confirm",
            None,
            json!({"token": token, "password": "short"}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed"))
    );
    let (status, body) = app
        .post(
            "/v1/auth/password-reset/confirm",
            None,
            json!({"token": token, "password": "a brand new password"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    // Every session of alice's ends, on every gateway; bob's lives on.
    assert_eq!(alice_socket.closed().await, Some(close::SESSION_REVOKED));
    assert_eq!(phone_socket.closed().await, Some(close::SESSION_REVOKED));
    for user in [&alice, &phone] {
        app.assert_session_ended(user).await;
    }
    bob_socket.until_pong().await;
    let (status, _) = app.get("/v1/users/me", Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK);

    // The old password is gone, the new one works, the token is spent.
    let (status, _) = app
        .post(
            "/v1/auth/login",
            None,
            json!({"login": "alice", "password": "alice-correct-horse"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let again = app.login("alice", "a brand new password").await;
    let (status, body) = app
        .post(
            "/v1/auth/password-reset/confirm",
            None,
            json!({"token": token, "password": "yet another password"}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, Some("invalid_reset_token"))
    );
    // The mail reached the account's address: that verified it too.
    assert_eq!(me(&app, &again).await["email_verified"], true);
    let kinds = security_event_kinds(&app, &again).await;
    for kind in ["password_reset_requested", "password_reset_completed"] {
        assert!(kinds.contains(&kind.to_owned()), "{kind} in {kinds:?}");
    }
    app.stop().await;
}

async fn a_locked_out_account_can_reset_its_password_and_log_in_again(mode: Mode) {
    let smtp = SmtpServer::start().await;
    let mut options = options(&smtp.url());
    options.policy.login_failures_per_15min = 3;
    let app = TestApp::spawn_with(mode, options).await;
    app.user("alice").await;
    for _ in 0..4 {
        app.post(
            "/v1/auth/login",
            None,
            json!({"login": "alice", "password": "guess guess"}),
        )
        .await;
    }
    let (status, body) = app
        .post(
            "/v1/auth/login",
            None,
            json!({"login": "alice", "password": "alice-correct-horse"}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );

    let (status, _) = app
        .post(
            "/v1/auth/password-reset",
            None,
            json!({"email": address("alice")}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let token = reset_token(&smtp, "alice", 2).await;
    let (status, _) = app
        .post(
            "/v1/auth/password-reset/confirm",
            None,
            json!({"token": token, "password": "a brand new password"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // The reset lifted the lockout.
    app.login("alice", "a brand new password").await;
    app.stop().await;
}

async fn reset_requests_answer_the_same_whether_or_not_the_account_exists(mode: Mode) {
    let smtp = SmtpServer::start().await;
    let app = TestApp::spawn_with(mode, options(&smtp.url())).await;
    app.user("alice").await;
    smtp.wait_for(&address("alice"), 1, MAIL_WAIT).await;
    let known = app
        .post(
            "/v1/auth/password-reset",
            None,
            json!({"email": address("alice")}),
        )
        .await;
    let unknown = app
        .post(
            "/v1/auth/password-reset",
            None,
            json!({"email": address("nobody")}),
        )
        .await;
    assert_eq!(known.0, StatusCode::ACCEPTED);
    assert_eq!(known, unknown, "the answers must not tell the two apart");
    queue_drained(&app).await;
    // Only the account's owner got mail (the signup's and the reset's).
    assert_eq!(smtp.messages_to(&address("alice")).len(), 2);
    assert!(smtp.messages_to(&address("nobody")).is_empty());
    assert_eq!(smtp.messages().len(), 2);

    let (status, body) = app
        .post(
            "/v1/auth/password-reset",
            None,
            json!({"email": "not an address"}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed"))
    );
    app.stop().await;
}

async fn failing_mail_is_retried_with_backoff_parked_and_delivered_after_an_admin_retry(
    mode: Mode,
) {
    // The mail server is down: nothing listens on its port yet.
    let port = testkit::free_port();
    let mut options = options(&format!("smtp://127.0.0.1:{port}"));
    options.mail.mail_max_attempts = 3;
    let app = TestApp::spawn_with(mode, options).await;
    let alice = app.user("alice").await;

    let parked_one = eventually(MAIL_WAIT, || async {
        let (_, body) = app
            .get("/v1/admin/mail-jobs?state=parked", Some(ADMIN))
            .await;
        body["jobs"].as_array().is_some_and(|j| j.len() == 1)
    })
    .await;
    let (_, parked) = app
        .get("/v1/admin/mail-jobs?state=parked", Some(ADMIN))
        .await;
    assert!(parked_one, "no parked job: {parked}");
    let job = &parked["jobs"][0];
    assert_eq!(job["kind"], "verify_email");
    assert_eq!(job["recipient"], address("alice"));
    assert_eq!(job["state"], "parked");
    assert_eq!(job["attempts"], 3);
    assert!(
        job["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{job}"
    );
    // Three attempts with backoffs of about 50 and 100 ms between them
    // (jitter 0.8 to 1.2): at least 120 ms from queueing to parking.
    let millis = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(job[field].as_str().expect(field))
            .expect("a time")
            .timestamp_millis()
    };
    assert!(
        millis("updated_at") - millis("created_at") >= 120,
        "attempts were not spaced by the backoff: {job}"
    );
    // Admin only.
    let (status, _) = app
        .get("/v1/admin/mail-jobs?state=parked", Some(&alice.token))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app.get("/v1/admin/mail-jobs", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The server comes up; an admin puts the job back; it is delivered.
    let smtp = SmtpServer::start_on(port).await;
    let id = job["id"].as_i64().expect("id");
    let (status, _) = app
        .post(
            &format!("/v1/admin/mail-jobs/{id}/retry"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = app
        .post(
            &format!("/v1/admin/mail-jobs/{id}/retry"),
            Some(ADMIN),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "pending");
    assert_eq!(body["attempts"], 0);
    let token = verification_token(&smtp, "alice", 1).await;
    let (status, _) = follow_link(&app, &token).await;
    assert_eq!(status, StatusCode::OK);
    queue_drained(&app).await;
    let (_, body) = app.get("/v1/admin/mail-jobs", Some(ADMIN)).await;
    assert_eq!(body["jobs"], json!([]), "parked jobs left: {body}");
    let (status, body) = app
        .post(
            &format!("/v1/admin/mail-jobs/{id}/retry"),
            Some(ADMIN),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, Some("mail_job_not_found"))
    );
    assert_eq!(smtp.messages().len(), 1);

    // Another outage parks bob's and carol's mail. An admin gives up on
    // bob's, and once the server is back retries everything parked.
    let mut smtp = smtp;
    smtp.pause().await;
    app.user("bob").await;
    app.user("carol").await;
    let both = eventually(MAIL_WAIT, || async {
        let (_, body) = app.get("/v1/admin/mail-jobs", Some(ADMIN)).await;
        body["jobs"].as_array().is_some_and(|j| j.len() == 2)
    })
    .await;
    assert!(both, "bob's and carol's mail were not parked");
    let (_, body) = app.get("/v1/admin/mail-jobs", Some(ADMIN)).await;
    let bobs = body["jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["recipient"] == address("bob")))
        .and_then(|j| j["id"].as_i64())
        .expect("bob's job");
    let (status, _) = app
        .delete(&format!("/v1/admin/mail-jobs/{bobs}"), Some(ADMIN))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app
        .delete(&format!("/v1/admin/mail-jobs/{bobs}"), Some(ADMIN))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, Some("mail_job_not_found"))
    );
    smtp.resume().await;
    let (status, body) = app
        .post("/v1/admin/mail-jobs/retry", Some(ADMIN), json!({}))
        .await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"retried": 1})));
    smtp.wait_for(&address("carol"), 1, MAIL_WAIT).await;
    queue_drained(&app).await;
    assert!(smtp.messages_to(&address("bob")).is_empty());
    assert_eq!(smtp.messages().len(), 2);
    app.stop().await;
}

async fn the_file_mailer_writes_each_mail_into_the_data_directory(mode: Mode) {
    let mut options = Options::default();
    options.mail.unverified_may_post = Some(false);
    let app = TestApp::spawn_with(mode, options).await;
    let alice = app.user("alice").await;
    let dir = app.data_dir.join("mail");
    let written = eventually(MAIL_WAIT, || async { first_eml(&dir).is_some() }).await;
    assert!(written, "no mail in {}", dir.display());
    let mail = first_eml(&dir).expect("a mail");
    assert!(mail.contains("To: alice@example.com"), "{mail}");
    assert!(
        mail.contains("http://127.0.0.1:8080/v1/auth/verify-email?token="),
        "{mail}"
    );
    let token = query_value(&mail, "token").expect("a token");
    let (status, _) = follow_link(&app, &token).await;
    assert_eq!(status, StatusCode::OK);
    app.create_room(&alice, "general").await;
    app.stop().await;
}

/// The text of a `.eml` file in `dir`, if there is one.
fn first_eml(dir: &std::path::Path) -> Option<String> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .and_then(|e| std::fs::read_to_string(e.path()).ok())
}

/// Mail queued while the mail server is down survives a restart of the
/// node (here parked after its one attempt), and leaves once the server is
/// up and an admin retries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_mail_survives_a_restart() {
    let port = testkit::free_port();
    let data_dir = std::env::temp_dir().join(format!(
        "parley-mail-restart-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let mut options = options(&format!("smtp://127.0.0.1:{port}"));
    options.data_dir = Some(data_dir.clone());
    options.mail.mail_max_attempts = 1;
    let app = TestApp::spawn_with(Mode::Single, options.clone()).await;
    app.user("alice").await;
    let parked = eventually(MAIL_WAIT, || async {
        let (_, body) = app.get("/v1/admin/mail-jobs", Some(ADMIN)).await;
        body["jobs"].as_array().is_some_and(|j| j.len() == 1)
    })
    .await;
    assert!(parked, "the job was not parked after its one attempt");
    app.stop().await;

    let smtp = SmtpServer::start_on(port).await;
    let app = TestApp::spawn_with(Mode::Single, options).await;
    let (_, body) = app.get("/v1/admin/mail-jobs", Some(ADMIN)).await;
    let job = &body["jobs"][0];
    assert_eq!(job["recipient"], address("alice"), "{body}");
    assert_eq!(job["attempts"], 1);
    let (status, _) = app
        .post(
            &format!("/v1/admin/mail-jobs/{}/retry", job["id"]),
            Some(ADMIN),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let token = verification_token(&smtp, "alice", 1).await;
    let (status, _) = follow_link(&app, &token).await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
    let _ = std::fs::remove_dir_all(data_dir);
}

/// Two api nodes take jobs from one queue: every mail leaves exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_nodes_never_send_one_job_twice() {
    let smtp = SmtpServer::start().await;
    let mut options = options(&smtp.url());
    options.api_nodes = 2;
    let app = TestApp::spawn_with(Mode::Cluster, options).await;
    const USERS: usize = 24;
    let http = reqwest::Client::new();
    for i in 0..USERS {
        let name = format!("user{i}");
        let status = http
            .post(format!("{}/v1/auth/signup", app.api_urls[i % 2]))
            .json(&json!({"username": name, "email": address(&name), "password": "a long enough password"}))
            .send()
            .await
            .expect("signup")
            .status();
        assert_eq!(status, StatusCode::CREATED);
    }
    let all = eventually(MAIL_WAIT, || async { smtp.messages().len() >= USERS }).await;
    assert!(all, "{} of {USERS} mails arrived", smtp.messages().len());
    queue_drained(&app).await;
    for i in 0..USERS {
        assert_eq!(
            smtp.messages_to(&address(&format!("user{i}"))).len(),
            1,
            "user{i} got a mail more than once or not at all"
        );
    }
    assert_eq!(smtp.messages().len(), USERS);
    app.stop().await;
}
