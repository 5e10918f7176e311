//! Attachments: uploads streamed into the store under a size limit, typed
//! by their bytes, downloads (with ranges) authorised by room membership,
//! thumbnails made in the background and announced to members, and files
//! gone everywhere once their message is deleted. In cluster mode the
//! store is a real S3-compatible server (moto) on loopback, a bucket per test.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use shared::RoomId;
use shared::protocol::ServerFrame;
use std::time::Duration;
use testkit::{Mode, Options, TestApp, TestUser, WsClient, both_modes, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

both_modes!(
    an_upload_posted_in_a_message_downloads_byte_for_byte_with_its_checksum,
    downloads_answer_byte_ranges,
    an_upload_over_the_limit_is_refused_while_the_client_is_still_sending,
    a_file_lying_about_its_type_is_refused_and_nothing_is_kept,
    an_image_bomb_gets_no_thumbnail_and_the_node_carries_on,
    a_thumbnail_ready_event_reaches_members_on_another_gateway,
    nobody_reads_or_posts_an_attachment_they_should_not,
    a_deleted_messages_files_are_gone_from_every_path_and_the_store,
    uploads_never_posted_are_removed_after_the_orphan_time,
    concurrent_posts_of_one_upload_attach_it_to_exactly_one_message,
);

/// Reads frames until an event of `kind` arrives; returns it as JSON.
async fn next_of_kind(ws: &mut WsClient, kind: &str) -> Value {
    loop {
        if let ServerFrame::Event(event) = ws.frame().await {
            let json = serde_json::to_value(&event).expect("an event is JSON");
            if json["kind"] == kind {
                return json;
            }
        }
    }
}

async fn a_room_of_two(app: &TestApp) -> (TestUser, TestUser, RoomId) {
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    (alice, bob, room)
}

/// A PDF-looking file of `len` bytes whose content varies, so a misplaced
/// range or part shows.
fn pdf(len: usize) -> Vec<u8> {
    let mut bytes = b"%PDF-1.7\n".to_vec();
    let mut x: u32 = 12345;
    while bytes.len() < len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        bytes.push((x >> 16) as u8);
    }
    bytes
}

/// A real PNG of `width` x `height` (uncompressed deflate blocks, so no
/// image library is needed to make it).
fn png(width: u32, height: u32) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..height {
        raw.push(0); // filter: none
        for x in 0..width {
            raw.extend_from_slice(&[(x * 7) as u8, (y * 3) as u8, 90]);
        }
    }
    png_with(width, height, &raw)
}

/// A PNG whose header declares `width` x `height` and whose pixel data is
/// `raw` (however little that is).
fn png_with(width: u32, height: u32, raw: &[u8]) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &zlib_stored(raw));
    chunk(&mut out, b"IEND", &[]);
    out
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// zlib of `data` in stored (uncompressed) blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(65_535).collect()
    };
    for (i, block) in blocks.iter().enumerate() {
        out.push(u8::from(i == blocks.len() - 1));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Uploads and asserts it was stored; the attachment's JSON.
async fn uploaded(
    app: &TestApp,
    user: &TestUser,
    room: RoomId,
    name: &str,
    bytes: Vec<u8>,
) -> Value {
    let (status, attachment) = app
        .upload(user, room, name, "application/octet-stream", bytes)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{attachment}");
    attachment
}

/// Posts a message with attachments; the status and answer.
async fn post_with(
    app: &TestApp,
    user: &TestUser,
    room: RoomId,
    body: &str,
    ids: &[&Value],
) -> (StatusCode, Value) {
    app.post(
        &format!("/v1/rooms/{room}/messages"),
        Some(&user.token),
        json!({"body": body, "attachment_ids": ids.iter().map(|a| a["id"].clone()).collect::<Vec<_>>()}),
    )
    .await
}

fn file_path(attachment: &Value) -> String {
    format!(
        "/v1/attachments/{}",
        attachment["id"].as_str().expect("an id")
    )
}

fn thumbnail_path(attachment: &Value) -> String {
    format!("{}/thumbnail", file_path(attachment))
}

async fn history(app: &TestApp, user: &TestUser, room: RoomId) -> Vec<Value> {
    let (status, page) = app
        .get(&format!("/v1/rooms/{room}/messages"), Some(&user.token))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["events"].as_array().expect("events").clone()
}

async fn an_upload_posted_in_a_message_downloads_byte_for_byte_with_its_checksum(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    let mut ws = app.ws(1, &bob).await;
    ws.join(room).await.expect("joined");
    // Over one S3 part (5 MiB) and several disk parts (1 MiB).
    let bytes = pdf(6 * 1024 * 1024 + 123);

    let attachment = uploaded(
        &app,
        &alice,
        room,
        "Q3 report: ünïcode \"final\".pdf",
        bytes.clone(),
    )
    .await;
    let (status, message) = post_with(&app, &alice, room, "the report", &[&attachment]).await;

    assert_eq!(status, StatusCode::CREATED, "{message}");
    assert_eq!(attachment["size"], bytes.len());
    assert_eq!(attachment["sha256"], sha256_hex(&bytes));
    assert_eq!(attachment["content_type"], "application/pdf");
    assert_eq!(attachment["thumbnail"], "none");
    assert_eq!(attachment["filename"], "Q3 report: ünïcode final.pdf");
    assert_eq!(message["attachments"], json!([attachment]));
    let live = next_of_kind(&mut ws, "message.created").await;
    assert_eq!(
        live["attachments"],
        json!([attachment]),
        "delivered live with its attachment"
    );
    let (status, headers, downloaded) = app.download(&bob, &file_path(&attachment), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sha256_hex(&downloaded), sha256_hex(&bytes));
    assert!(downloaded == bytes, "byte for byte");
    assert_eq!(headers["content-type"], "application/pdf");
    assert_eq!(headers["content-length"], bytes.len().to_string().as_str());
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"Q3 report: _n_code final.pdf\"; \
         filename*=UTF-8''Q3%20report%3A%20%C3%BCn%C3%AFcode%20final.pdf"
    );
    let events = history(&app, &bob, room).await;
    let in_history = events
        .iter()
        .find(|e| e["seq"] == message["seq"])
        .expect("the message in history");
    assert_eq!(in_history["attachments"], json!([attachment]));
    app.stop().await;
}

async fn downloads_answer_byte_ranges(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    let bytes = pdf(100_000);
    let attachment = uploaded(&app, &alice, room, "a.pdf", bytes.clone()).await;
    post_with(&app, &alice, room, "", &[&attachment]).await;
    let path = file_path(&attachment);

    let (status, headers, part) = app.download(&bob, &path, Some("bytes=10-19")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part, bytes[10..20]);
    assert_eq!(headers["content-range"], "bytes 10-19/100000");
    assert_eq!(headers["content-length"], "10");

    let (status, headers, tail) = app.download(&bob, &path, Some("bytes=-5")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail, bytes[99_995..]);
    assert_eq!(headers["content-range"], "bytes 99995-99999/100000");

    let (status, _, rest) = app.download(&bob, &path, Some("bytes=99000-")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(rest, bytes[99_000..]);

    let (status, headers, body) = app.download(&bob, &path, Some("bytes=100000-")).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(headers["content-range"], "bytes */100000");
    let error: Value = serde_json::from_slice(&body).expect("an error body");
    assert_eq!(error["error"]["code"], "range_not_satisfiable");

    let (status, _, whole) = app.download(&bob, &path, Some("bytes=0-1,5-6")).await;
    assert_eq!(status, StatusCode::OK, "several ranges get the whole file");
    assert_eq!(whole, bytes);
    app.stop().await;
}

async fn an_upload_over_the_limit_is_refused_while_the_client_is_still_sending(mode: Mode) {
    const LIMIT: u64 = 1024 * 1024;
    let mut options = Options::default();
    options.attachments.max_bytes = LIMIT;
    let app = TestApp::spawn_with(mode, options).await;
    let (alice, _bob, room) = a_room_of_two(&app).await;

    // A chunked body with no end: the client keeps sending until the
    // server answers. A server that buffered the body, or read it to the
    // end, would never answer.
    let addr = app.api.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /v1/rooms/{room}/attachments?filename=big.pdf HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/pdf\r\nTransfer-Encoding: chunked\r\n\r\n",
        alice.token
    );
    let sender = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let mut chunk = pdf(64 * 1024);
        let mut sent = 0u64;
        loop {
            writer
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            writer.write_all(&chunk).await?;
            writer.write_all(b"\r\n").await?;
            sent += chunk.len() as u64;
            // Only the first chunk is a PDF header; the rest is filler.
            chunk[..4].copy_from_slice(b"more");
            if sent > 1024 * LIMIT {
                return Ok::<u64, std::io::Error>(sent);
            }
        }
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
    .expect("an answer while the client is still sending");

    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("attachment_too_large"), "{response}");
    assert!(
        !sender.is_finished() || sender.await.expect("sender").is_err(),
        "the client was still sending (or was cut off) when the answer came"
    );
    assert_eq!(app.attachment_rows().await, 0, "no row is left");
    assert_eq!(
        app.stored_attachment_keys().await,
        Vec::<String>::new(),
        "no bytes are left"
    );
    // And one declared too large is refused before a byte is read.
    let (status, body) = app
        .upload(
            &alice,
            room,
            "big.pdf",
            "application/pdf",
            pdf(LIMIT as usize + 1),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "attachment_too_large");
    // Exactly the limit is fine.
    let (status, body) = app
        .upload(
            &alice,
            room,
            "max.pdf",
            "application/pdf",
            pdf(LIMIT as usize),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    app.stop().await;
}

async fn a_file_lying_about_its_type_is_refused_and_nothing_is_kept(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, _bob, room) = a_room_of_two(&app).await;

    for (name, bytes) in [
        (
            "cat.png",
            b"<!DOCTYPE html><html><script>alert(document.cookie)</script></html>".to_vec(),
        ),
        (
            "cat.png",
            b"<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"/>".to_vec(),
        ),
        ("notes.txt", b"just some text".to_vec()),
    ] {
        let (status, body) = app.upload(&alice, room, name, "image/png", bytes).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{name}: {body}");
        assert_eq!(body["error"]["code"], "attachment_type_not_allowed");
    }
    let (status, body) = app
        .upload(&alice, room, "empty.png", "image/png", Vec::new())
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // A PNG sent as a PDF is a PNG.
    let attachment = uploaded(&app, &alice, room, "x.pdf", png(4, 4)).await;
    assert_eq!(attachment["content_type"], "image/png");

    assert_eq!(app.attachment_rows().await, 1, "only the PNG");
    assert_eq!(app.stored_attachment_keys().await.len(), 1);
    app.stop().await;
}

async fn an_image_bomb_gets_no_thumbnail_and_the_node_carries_on(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    let mut ws = app.ws(1, &bob).await;
    ws.join(room).await.expect("joined");
    // 100000 x 100000 RGB is 30 GB of pixels, declared in a 1 KB file.
    let bomb = png_with(100_000, 100_000, &[0u8; 1024]);
    let attachment = uploaded(&app, &alice, room, "bomb.png", bomb.clone()).await;
    assert_eq!(attachment["thumbnail"], "pending");
    let (status, message) = post_with(&app, &alice, room, "", &[&attachment]).await;
    assert_eq!(status, StatusCode::CREATED, "{message}");

    let failed = eventually(Duration::from_secs(30), || async {
        let events = history(&app, &bob, room).await;
        let message = events.iter().find(|e| e["seq"] == message["seq"]).cloned();
        message.is_some_and(|m| m["attachments"][0]["thumbnail"] == "failed")
    })
    .await;
    assert!(failed, "the thumbnail failed");

    let (status, _, _) = app.download(&bob, &thumbnail_path(&attachment), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, bytes) = app.download(&bob, &file_path(&attachment), None).await;
    assert_eq!(status, StatusCode::OK, "the file itself is still there");
    assert_eq!(bytes, bomb);
    // The node is fine: a real image after it gets its thumbnail.
    let photo = uploaded(&app, &alice, room, "photo.png", png(64, 48)).await;
    post_with(&app, &alice, room, "", &[&photo]).await;
    let ready = next_of_kind(&mut ws, "attachment.thumbnail_ready").await;
    assert_eq!(ready["attachment_id"], photo["id"]);
    app.stop().await;
}

async fn a_thumbnail_ready_event_reaches_members_on_another_gateway(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    let mut ws = app.ws(2, &bob).await;
    ws.join(room).await.expect("joined");
    let image = png(640, 480);

    let attachment = uploaded(&app, &alice, room, "photo.png", image.clone()).await;
    let (status, message) = post_with(&app, &alice, room, "look", &[&attachment]).await;

    assert_eq!(status, StatusCode::CREATED, "{message}");
    let created = next_of_kind(&mut ws, "message.created").await;
    assert_eq!(created["attachments"][0]["thumbnail"], "pending");
    let ready = next_of_kind(&mut ws, "attachment.thumbnail_ready").await;
    assert_eq!(ready["target_seq"], message["seq"]);
    assert_eq!(ready["attachment_id"], attachment["id"]);
    assert_eq!(ready["sender_id"], alice.id.0);
    assert!(ready["seq"].as_i64() > message["seq"].as_i64());
    let now = &ready["attachment"];
    assert_eq!(now["thumbnail"], "ready");
    assert_eq!((&now["width"], &now["height"]), (&json!(640), &json!(480)));
    assert_eq!(
        (&now["thumbnail_width"], &now["thumbnail_height"]),
        (&json!(320), &json!(240))
    );
    let (status, headers, thumbnail) = app.download(&bob, &thumbnail_path(&attachment), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "image/jpeg");
    assert_eq!(&thumbnail[..3], b"\xff\xd8\xff", "a JPEG");
    // History tells the same story.
    let events = history(&app, &bob, room).await;
    let in_history = events
        .iter()
        .find(|e| e["seq"] == ready["seq"])
        .expect("the event");
    assert_eq!(in_history, &ready);
    let posted = events
        .iter()
        .find(|e| e["seq"] == message["seq"])
        .expect("the message");
    assert_eq!(&posted["attachments"][0], now);
    app.stop().await;
}

async fn nobody_reads_or_posts_an_attachment_they_should_not(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    let mallory = app.user("mallory").await;
    let other_room = app.create_room(&alice, "other").await;
    app.add_member(&alice, other_room, &bob).await;
    let attachment = uploaded(&app, &alice, room, "secret.pdf", pdf(1000)).await;
    let path = file_path(&attachment);
    let not_found = |(status, _, body): (StatusCode, reqwest::header::HeaderMap, Vec<u8>)| {
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        status == StatusCode::NOT_FOUND && body["error"]["code"] == "attachment_not_found"
    };

    // Before it is posted, only its uploader reads it.
    assert_eq!(app.download(&alice, &path, None).await.0, StatusCode::OK);
    assert!(
        not_found(app.download(&bob, &path, None).await),
        "a member, before posting"
    );
    // Nobody else posts it: not another member, not into another room.
    let (status, body) = post_with(&app, &bob, room, "mine now", &[&attachment]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_attachment");
    let (status, body) = post_with(&app, &alice, other_room, "elsewhere", &[&attachment]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_attachment");
    let (status, body) = post_with(&app, &mallory, room, "hi", &[&attachment]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // A failed post claims nothing: an unknown id alongside leaves it free.
    let bogus = json!({"id": "00000000000000000000000000000000"});
    let (status, _) = post_with(&app, &alice, room, "two", &[&attachment, &bogus]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = post_with(&app, &alice, room, "now", &[&attachment]).await;
    assert_eq!(status, StatusCode::CREATED);
    // Posted: members read it, strangers do not, and it cannot be posted again.
    assert_eq!(app.download(&bob, &path, None).await.0, StatusCode::OK);
    assert!(
        not_found(app.download(&mallory, &path, None).await),
        "a non-member"
    );
    let (status, _) = post_with(&app, &alice, room, "again", &[&attachment]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, body) = app
        .upload(&mallory, room, "junk.pdf", "application/pdf", pdf(100))
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no uploads into others' rooms: {body}"
    );
    assert!(not_found(
        app.download(&bob, "/v1/attachments/..%2F..%2Fetc%2Fpasswd", None)
            .await
    ));
    assert!(not_found(
        app.download(
            &bob,
            "/v1/attachments/00000000000000000000000000000000",
            None
        )
        .await
    ));
    app.stop().await;
}

async fn a_deleted_messages_files_are_gone_from_every_path_and_the_store(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    let mut ws = app.ws(1, &bob).await;
    ws.join(room).await.expect("joined");
    let image = uploaded(&app, &alice, room, "photo.png", png(100, 100)).await;
    let doc = uploaded(&app, &alice, room, "doc.pdf", pdf(5000)).await;
    let kept = uploaded(&app, &alice, room, "kept.pdf", pdf(500)).await;
    let (_, message) = post_with(&app, &alice, room, "files", &[&image, &doc]).await;
    post_with(&app, &alice, room, "other", &[&kept]).await;
    let ready = next_of_kind(&mut ws, "attachment.thumbnail_ready").await;
    assert_eq!(ready["attachment_id"], image["id"]);
    assert_eq!(
        app.stored_attachment_keys().await.len(),
        4,
        "two files, a thumbnail, and the kept one"
    );

    let (status, _) = app
        .delete(
            &format!("/v1/rooms/{room}/messages/{}", message["seq"]),
            Some(&bob.token),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "not bob's to delete");
    let (status, deleted) = app
        .delete(
            &format!("/v1/rooms/{room}/messages/{}", message["seq"]),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");

    for path in [file_path(&image), thumbnail_path(&image), file_path(&doc)] {
        for user in [&alice, &bob] {
            let (status, _, _) = app.download(user, &path, None).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        }
    }
    let events = history(&app, &bob, room).await;
    let tombstone = events
        .iter()
        .find(|e| e["seq"] == message["seq"])
        .expect("tombstone");
    assert!(tombstone["attachments"].is_null(), "{tombstone}");
    let was_ready = events
        .iter()
        .find(|e| e["seq"] == ready["seq"])
        .expect("the thumbnail event");
    assert!(was_ready["attachment"].is_null(), "{was_ready}");
    let serialized = serde_json::to_string(&events).expect("json");
    assert!(!serialized.contains("photo.png") && !serialized.contains("doc.pdf"));
    let keys = app.stored_attachment_keys().await;
    let kept_id = kept["id"].as_str().expect("id");
    assert_eq!(
        keys,
        vec![format!("attachments/{kept_id}")],
        "the bytes are gone from the store"
    );
    assert_eq!(app.attachment_rows().await, 1);
    assert_eq!(
        app.download(&bob, &file_path(&kept), None).await.0,
        StatusCode::OK
    );
    app.stop().await;
}

async fn uploads_never_posted_are_removed_after_the_orphan_time(mode: Mode) {
    let mut options = Options::default();
    options.attachments.orphan_ttl = Duration::ZERO;
    let app = TestApp::spawn_with(mode, options).await;
    let (alice, _bob, room) = a_room_of_two(&app).await;
    let posted = uploaded(&app, &alice, room, "posted.pdf", pdf(100)).await;
    post_with(&app, &alice, room, "", &[&posted]).await;
    let orphan = uploaded(&app, &alice, room, "orphan.pdf", pdf(100)).await;
    assert_eq!(app.stored_attachment_keys().await.len(), 2);

    app.sweep_attachments().await;

    let posted_id = posted["id"].as_str().expect("id");
    assert_eq!(
        app.stored_attachment_keys().await,
        vec![format!("attachments/{posted_id}")]
    );
    assert_eq!(app.attachment_rows().await, 1);
    assert_eq!(
        app.download(&alice, &file_path(&orphan), None).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, body) = post_with(&app, &alice, room, "late", &[&orphan]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    app.stop().await;
}

async fn concurrent_posts_of_one_upload_attach_it_to_exactly_one_message(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, _bob, room) = a_room_of_two(&app).await;
    let attachment = uploaded(&app, &alice, room, "once.pdf", pdf(2000)).await;
    let last_seq = app.last_seq(&alice, room).await;

    let posts = (0..6).map(|i| {
        let (app, alice, attachment) = (&app, &alice, &attachment);
        async move { post_with(app, alice, room, &format!("try {i}"), &[attachment]).await }
    });
    let answers = futures::future::join_all(posts).await;

    let created: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(status, body)| *status == StatusCode::CREATED
                || body["error"]["code"] == "invalid_attachment"),
        "{answers:?}"
    );
    assert_eq!(
        app.last_seq(&alice, room).await,
        last_seq + 1,
        "the refused posts took no number"
    );
    app.stop().await;
}
