//! Profiles: display name, status text and avatar, seen only by the users
//! who share a room with their owner (anyone else gets the 404 of a user
//! that does not exist), announced live to those rooms, avatars re-encoded
//! and kept in the attachment store (moto's S3 bucket in cluster mode, the
//! data directory on a single node).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::RoomId;
use shared::protocol::{Encoding, ServerFrame};
use std::io::Cursor;
use std::time::Duration;
use testkit::{Mode, Options, TestApp, TestUser, WsClient, both_modes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

both_modes!(
    a_profile_is_set_changed_in_part_and_cleared,
    profile_text_that_is_too_long_or_has_control_characters_is_refused_by_field,
    an_avatar_is_served_to_co_members_reencoded_as_a_small_square_from_the_attachment_store,
    an_avatar_over_the_limit_is_refused_with_413,
    bytes_that_are_not_an_image_are_refused_and_nothing_is_kept,
    a_stranger_gets_the_same_404_for_a_profile_as_for_a_user_that_does_not_exist,
    a_removed_member_can_no_longer_see_the_profile_or_the_avatar,
    the_username_lookup_shows_a_profile_only_to_co_members,
    member_lists_and_the_callers_account_carry_the_profile,
    a_new_avatar_replaces_the_old_object_and_deleting_it_removes_it,
    a_profile_change_reaches_co_members_on_other_gateways_and_no_stranger,
);

/// A client of its own: the harness's sends JSON bodies only.
fn client() -> reqwest::Client {
    reqwest::Client::new()
}

pub(crate) async fn patch_profile(
    app: &TestApp,
    user: &TestUser,
    body: Value,
) -> (StatusCode, Value) {
    app.request(
        Method::PATCH,
        "/v1/users/me/profile",
        Some(&user.token),
        Some(body),
    )
    .await
}

/// PUTs `bytes` as `user`'s avatar (with a `Content-Type` the server ignores).
pub(crate) async fn put_avatar(
    app: &TestApp,
    user: &TestUser,
    bytes: Vec<u8>,
) -> (StatusCode, Value) {
    let response = client()
        .put(app.url("/v1/users/me/avatar"))
        .bearer_auth(&user.token)
        .header("content-type", "image/png")
        .body(bytes)
        .send()
        .await
        .expect("uploading an avatar");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A real PNG of `width` x `height` (a smooth gradient, so it stays
/// small), with an alpha channel if `alpha`.
pub(crate) fn png(width: u32, height: u32, alpha: bool) -> Vec<u8> {
    let image = if alpha {
        image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(width, height, |x, y| {
            image::Rgba([x as u8, y as u8, 90, 128])
        }))
    } else {
        image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([x as u8, y as u8, 90])
        }))
    };
    encode(image)
}

/// A PNG of noise, which does not compress: about 3 bytes a pixel.
fn noisy_png(width: u32, height: u32) -> Vec<u8> {
    let mut x: u32 = 7;
    let mut noise = move || {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        (x >> 16) as u8
    };
    encode(image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(
        width,
        height,
        |_, _| image::Rgb([noise(), noise(), noise()]),
    )))
}

fn encode(image: image::DynamicImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encoding a PNG");
    out.into_inner()
}

async fn a_room_of_two(app: &TestApp) -> (TestUser, TestUser, RoomId) {
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    (alice, bob, room)
}

async fn a_profile_is_set_changed_in_part_and_cleared(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, _room) = a_room_of_two(&app).await;
    let path = format!("/v1/users/{}/profile", alice.id);

    let (status, empty) = app.get(&path, Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK, "{empty}");
    assert_eq!(
        empty,
        json!({"user_id": alice.id, "username": "alice", "profile": {"display_name": null, "status_text": null, "avatar_url": null}})
    );

    let (status, set) = patch_profile(
        &app,
        &alice,
        json!({"display_name": "  Alice Liddell ", "status_text": "down the rabbit hole"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{set}");
    assert_eq!(set["display_name"], "Alice Liddell", "trimmed");
    assert_eq!(set["status_text"], "down the rabbit hole");

    // An absent field stays; null clears.
    let (status, changed) = patch_profile(&app, &alice, json!({"status_text": null})).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["display_name"], "Alice Liddell");
    assert_eq!(changed["status_text"], Value::Null);
    let (_, seen) = app.get(&path, Some(&bob.token)).await;
    assert_eq!(seen["profile"], changed, "bob reads what alice set");

    // Empty text clears as null does.
    let (status, cleared) = patch_profile(&app, &alice, json!({"display_name": "   "})).await;
    assert_eq!(status, StatusCode::OK, "{cleared}");
    assert_eq!(cleared["display_name"], Value::Null);

    let (status, own) = app.get("/v1/users/me/profile", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(own["profile"], cleared);
    app.stop().await;
}

async fn profile_text_that_is_too_long_or_has_control_characters_is_refused_by_field(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    patch_profile(&app, &alice, json!({"display_name": "Alice"})).await;
    let cases = [
        (json!({"display_name": "x".repeat(65)}), "display_name"),
        (json!({"display_name": "Al\u{7}ice"}), "display_name"),
        (json!({"display_name": "Al\nice"}), "display_name"),
        (json!({"status_text": "é".repeat(141)}), "status_text"),
        (json!({"status_text": "bell\u{1b}[31m"}), "status_text"),
        (json!({"status_text": "nul\u{0}"}), "status_text"),
    ];
    for (body, field) in cases {
        let (status, error) = patch_profile(&app, &alice, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {error}");
        assert_eq!(error["error"]["code"], "validation_failed", "{body}");
        assert_eq!(error["error"]["field"], field, "{body}");
    }
    let (status, error) = patch_profile(&app, &alice, json!({"avatar_url": "http://evil"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    let (status, error) = patch_profile(&app, &alice, json!({"display_name": 5})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");

    // The limits are characters, not bytes.
    let (status, ok) = patch_profile(
        &app,
        &alice,
        json!({"display_name": "é".repeat(64), "status_text": "🙂".repeat(140)}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{ok}");

    let (_, own) = app.get("/v1/users/me/profile", Some(&alice.token)).await;
    assert_eq!(
        own["profile"]["display_name"],
        "é".repeat(64),
        "the refused changes changed nothing"
    );
    app.stop().await;
}

async fn an_avatar_is_served_to_co_members_reencoded_as_a_small_square_from_the_attachment_store(
    mode: Mode,
) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, _room) = a_room_of_two(&app).await;

    let original = png(900, 600, false);
    let (status, profile) = put_avatar(&app, &alice, original.clone()).await;
    assert_eq!(status, StatusCode::OK, "{profile}");
    let url = profile["avatar_url"].as_str().expect("an avatar url");
    assert!(
        url.starts_with(&format!("/v1/users/{}/avatar?v=", alice.id)),
        "{url}"
    );

    let (status, headers, bytes) = app.download(&bob, url, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "image/jpeg", "no alpha: a JPEG");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_ne!(bytes, original, "never served as uploaded");
    let served = image::load_from_memory(&bytes).expect("an image");
    assert_eq!((served.width(), served.height()), (256, 256));

    // With transparency: a PNG.
    let (status, _) = put_avatar(&app, &alice, png(64, 64, true)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, headers, bytes) = app
        .download(&bob, &format!("/v1/users/{}/avatar", alice.id), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "image/png");
    let served = image::load_from_memory(&bytes).expect("an image");
    assert_eq!((served.width(), served.height()), (64, 64), "not enlarged");

    // The bytes are in the attachment store (the S3 bucket in a cluster),
    // under the owner's id, and they are what is served.
    let keys = app.stored_keys("avatars").await;
    assert_eq!(keys.len(), 1, "the replaced avatar is gone: {keys:?}");
    assert!(
        keys[0].starts_with(&format!("avatars/{}/", alice.id)),
        "{keys:?}"
    );
    let (engine, stored) = app.stored_bytes(&keys[0]).await;
    assert_eq!(
        engine,
        match mode {
            Mode::Cluster | Mode::RedisCluster => api::attachments::storage::Engine::S3,
            Mode::Single => api::attachments::storage::Engine::Disk,
        }
    );
    assert_eq!(stored, bytes);
    assert_eq!(app.stored_attachment_keys().await, Vec::<String>::new());

    let (status, _, own) = app.download(&alice, "/v1/users/me/avatar", None).await;
    assert_eq!((status, own), (StatusCode::OK, bytes));
    app.stop().await;
}

async fn an_avatar_over_the_limit_is_refused_with_413(mode: Mode) {
    const LIMIT: u64 = 20_000;
    let mut options = Options::default();
    options.attachments.avatar_max_bytes = LIMIT;
    let app = TestApp::spawn_with(mode, options).await;
    let alice = app.user("alice").await;
    let big = noisy_png(200, 200);
    assert!(big.len() as u64 > LIMIT);

    let (status, error) = put_avatar(&app, &alice, big.clone()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{error}");
    assert_eq!(error["error"]["code"], "avatar_too_large");

    // Without a Content-Length (chunked), and a body that never ends: the
    // answer comes as soon as the limit is passed. A server that read the
    // body to its end would never answer.
    let addr = app.api.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "PUT /v1/users/me/avatar HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        alice.token
    );
    let sender = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        for chunk in big.chunks(4096) {
            writer
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            writer.write_all(chunk).await?;
            writer.write_all(b"\r\n").await?;
        }
        // Never the last chunk: the body stays open.
        std::future::pending::<()>().await;
        Ok::<(), std::io::Error>(())
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let response = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n = reader.read(&mut buf).await.expect("reading the answer");
            assert!(n > 0, "the server closed without answering");
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer).to_string();
            if let Some((_, body)) = text.split_once("\r\n\r\n")
                && body.contains('}')
            {
                return text;
            }
        }
    })
    .await
    .expect("an answer while the body is still open");
    sender.abort();
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("avatar_too_large"), "{response}");
    assert_eq!(app.stored_keys("avatars").await, Vec::<String>::new());

    let (status, ok) = put_avatar(&app, &alice, png(40, 40, false)).await;
    assert_eq!(status, StatusCode::OK, "under the limit: {ok}");
    assert_eq!(app.stored_keys("avatars").await.len(), 1);
    app.stop().await;
}

async fn bytes_that_are_not_an_image_are_refused_and_nothing_is_kept(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    for (what, bytes) in [
        (
            "svg",
            b"<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"/>".to_vec(),
        ),
        ("html", b"<!DOCTYPE html><script>alert(1)</script>".to_vec()),
        ("pdf", b"%PDF-1.7\n1 0 obj\n".to_vec()),
    ] {
        let (status, error) = put_avatar(&app, &alice, bytes).await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{what}: {error}"
        );
        assert_eq!(error["error"]["code"], "avatar_type_not_allowed", "{what}");
    }
    // A PNG signature over garbage: typed as PNG, not decodable.
    let mut broken = png(50, 50, false);
    broken.truncate(40);
    let (status, error) = put_avatar(&app, &alice, broken).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(error["error"]["code"], "avatar_unreadable");
    let (status, error) = put_avatar(&app, &alice, Vec::new()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(error["error"]["code"], "validation_failed");

    assert_eq!(app.stored_keys("avatars").await, Vec::<String>::new());
    let (_, own) = app.get("/v1/users/me/profile", Some(&alice.token)).await;
    assert_eq!(own["profile"]["avatar_url"], Value::Null);
    let (status, error) = app.get("/v1/users/me/avatar", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["error"]["code"], "avatar_not_found");
    app.stop().await;
}

async fn a_stranger_gets_the_same_404_for_a_profile_as_for_a_user_that_does_not_exist(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, _bob, _room) = a_room_of_two(&app).await;
    let mallory = app.user("mallory").await;
    // Mallory is in a room too, just not one of alice's.
    app.create_room(&mallory, "elsewhere").await;
    patch_profile(&app, &alice, json!({"display_name": "Alice"})).await;
    put_avatar(&app, &alice, png(30, 30, false)).await;

    let nobody = alice.id.0 + 1_000_000;
    for what in ["profile", "avatar"] {
        let (status, stranger) = app
            .get(
                &format!("/v1/users/{}/{what}", alice.id),
                Some(&mallory.token),
            )
            .await;
        let (missing_status, missing) = app
            .get(&format!("/v1/users/{nobody}/{what}"), Some(&mallory.token))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{what}: {stranger}");
        assert_eq!(
            (status, &stranger),
            (missing_status, &missing),
            "{what}: a stranger's answer is exactly that of no such user"
        );
        assert_eq!(stranger["error"]["code"], "user_not_found");
    }
    // The avatar's URL, with its version, is no key either.
    let (_, own) = app.get("/v1/users/me/profile", Some(&alice.token)).await;
    let url = own["profile"]["avatar_url"].as_str().expect("an avatar");
    let (status, _, bytes) = app.download(&mallory, url, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!String::from_utf8_lossy(&bytes).contains("Alice"));
    // Without a token: nothing at all.
    let (status, _) = app
        .get(&format!("/v1/users/{}/profile", alice.id), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

async fn a_removed_member_can_no_longer_see_the_profile_or_the_avatar(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    patch_profile(&app, &bob, json!({"status_text": "here"})).await;
    put_avatar(&app, &bob, png(30, 30, false)).await;
    let profile = format!("/v1/users/{}/profile", bob.id);
    let avatar = format!("/v1/users/{}/avatar", bob.id);
    assert_eq!(
        app.get(&profile, Some(&alice.token)).await.0,
        StatusCode::OK
    );
    assert_eq!(app.download(&alice, &avatar, None).await.0, StatusCode::OK);

    let (status, body) = app
        .delete(
            &format!("/v1/rooms/{room}/members/{}", bob.id),
            Some(&alice.token),
        )
        .await;
    assert!(status.is_success(), "{body}");

    for path in [&profile, &avatar] {
        let (status, error) = app.get(path, Some(&alice.token)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {error}");
        assert_eq!(error["error"]["code"], "user_not_found");
    }
    // And the other way round: bob no longer sees alice.
    let (status, _) = app
        .get(&format!("/v1/users/{}/profile", alice.id), Some(&bob.token))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Bob still sees himself.
    assert_eq!(app.get(&profile, Some(&bob.token)).await.0, StatusCode::OK);
    app.stop().await;
}

async fn the_username_lookup_shows_a_profile_only_to_co_members(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, _room) = a_room_of_two(&app).await;
    let mallory = app.user("mallory").await;
    patch_profile(
        &app,
        &alice,
        json!({"display_name": "Alice", "status_text": "secret plans"}),
    )
    .await;
    put_avatar(&app, &alice, png(30, 30, false)).await;

    let (status, stranger) = app
        .get("/v1/users?username=alice", Some(&mallory.token))
        .await;
    assert_eq!(status, StatusCode::OK, "{stranger}");
    assert_eq!(
        stranger,
        json!({"user": {"id": alice.id, "username": "alice"}}),
        "a stranger gets the id and the username, nothing else"
    );

    let (status, member) = app.get("/v1/users?username=alice", Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(member["user"]["display_name"], "Alice");
    assert!(member["user"]["avatar_url"].is_string(), "{member}");
    assert!(member["user"].get("status_text").is_none());
    app.stop().await;
}

async fn member_lists_and_the_callers_account_carry_the_profile(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    patch_profile(&app, &bob, json!({"display_name": "Bob B."})).await;
    let (_, with_avatar) = put_avatar(&app, &bob, png(30, 30, false)).await;

    let (status, list) = app
        .get(&format!("/v1/rooms/{room}/members"), Some(&alice.token))
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let members = list["members"].as_array().expect("members");
    let bob_entry = members
        .iter()
        .find(|m| m["user_id"] == bob.id.0)
        .expect("bob is listed");
    assert_eq!(bob_entry["display_name"], "Bob B.");
    assert_eq!(bob_entry["avatar_url"], with_avatar["avatar_url"]);
    let alice_entry = members
        .iter()
        .find(|m| m["user_id"] == alice.id.0)
        .expect("alice is listed");
    assert!(alice_entry.get("display_name").is_none(), "unset: absent");

    let (status, me) = app.get("/v1/users/me", Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["profile"]["display_name"], "Bob B.");
    assert_eq!(me["profile"]["avatar_url"], with_avatar["avatar_url"]);

    // A member added later is answered with their profile too.
    let carol = app.user("carol").await;
    patch_profile(&app, &carol, json!({"display_name": "Carol"})).await;
    let (status, added) = app
        .post(
            &format!("/v1/rooms/{room}/members"),
            Some(&alice.token),
            json!({"user_id": carol.id}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    assert_eq!(added["display_name"], "Carol");
    app.stop().await;
}

async fn a_new_avatar_replaces_the_old_object_and_deleting_it_removes_it(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, _room) = a_room_of_two(&app).await;
    let (_, first) = put_avatar(&app, &alice, png(30, 30, false)).await;
    let (_, second) = put_avatar(&app, &alice, png(40, 40, false)).await;
    assert_ne!(first["avatar_url"], second["avatar_url"], "a new URL");
    assert_eq!(app.stored_keys("avatars").await.len(), 1);

    let (status, removed) = app.delete("/v1/users/me/avatar", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    assert_eq!(removed["avatar_url"], Value::Null);
    assert_eq!(app.stored_keys("avatars").await, Vec::<String>::new());
    let (status, error) = app
        .get(&format!("/v1/users/{}/avatar", alice.id), Some(&bob.token))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["error"]["code"], "avatar_not_found", "bob may know");
    // Deleting again is fine.
    let (status, _) = app.delete("/v1/users/me/avatar", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

/// Reads frames until a `profile` frame arrives.
async fn next_profile(ws: &mut WsClient) -> ServerFrame {
    loop {
        let frame = ws.frame().await;
        if matches!(frame, ServerFrame::Profile { .. }) {
            return frame;
        }
    }
}

async fn a_profile_change_reaches_co_members_on_other_gateways_and_no_stranger(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    let mallory = app.user("mallory").await;
    let elsewhere = app.create_room(&mallory, "elsewhere").await;

    let mut bob_ws = app.ws(1, &bob).await;
    bob_ws.join(room).await.expect("bob joined");
    let mut bob_msgpack =
        WsClient::authenticated(app.ws_url(2), &bob.token, Encoding::MsgPack).await;
    bob_msgpack.join(room).await.expect("bob joined");
    let mut mallory_ws = app.ws(2, &mallory).await;
    mallory_ws.join(elsewhere).await.expect("mallory joined");

    let (status, profile) = patch_profile(
        &app,
        &alice,
        json!({"display_name": "Alice", "status_text": "hi"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{profile}");

    for ws in [&mut bob_ws, &mut bob_msgpack] {
        let ServerFrame::Profile {
            room_id,
            user_id,
            profile: got,
        } = next_profile(ws).await
        else {
            unreachable!()
        };
        assert_eq!((room_id, user_id), (room, alice.id));
        assert_eq!(got.display_name.as_deref(), Some("Alice"));
        assert_eq!(got.status_text.as_deref(), Some("hi"));
    }

    // An avatar change is announced the same way, with its URL.
    let (_, with_avatar) = put_avatar(&app, &alice, png(30, 30, false)).await;
    let ServerFrame::Profile { profile: got, .. } = next_profile(&mut bob_ws).await else {
        unreachable!()
    };
    assert_eq!(
        got.avatar_url.as_deref(),
        with_avatar["avatar_url"].as_str()
    );

    // Mallory's room hears nothing of it: a message there is the next
    // thing her connection gets.
    let marker = app.send_message(&mallory, elsewhere, "still here").await;
    loop {
        match mallory_ws.frame().await {
            ServerFrame::Event(event) if event.seq == marker.seq => break,
            ServerFrame::Profile { .. } => panic!("a stranger got a profile change"),
            _ => {}
        }
    }
    app.stop().await;
}
