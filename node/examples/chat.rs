//! A tiny terminal chat client for trying a Parley server.
//!
//! ```text
//! cargo run --release -p parley --example chat -- --user bob
//! cargo run --release -p parley --example chat -- --user alice --room general --invite bob
//! ```
//!
//! It signs the user up (or logs in), connects to the gateway, joins the room
//! (creating it, and inviting people, if asked), prints what happens there
//! and posts every line typed. A user without `--room` joins the first room
//! they are added to.

use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use shared::RoomId;
use shared::model::EventKind;
use shared::protocol::{ClientFrame, Encoding, ServerFrame};
use std::collections::HashMap;
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// The server's base URL (a single node serves REST and WebSocket on one port).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// WebSocket URL, if the gateway is elsewhere.
    #[arg(long)]
    ws: Option<String>,
    #[arg(long)]
    user: String,
    /// Defaults to a demo password derived from the username.
    #[arg(long)]
    password: Option<String>,
    /// Room to join, created if the user has none by that name.
    #[arg(long)]
    room: Option<String>,
    /// Users to add to the room.
    #[arg(long)]
    invite: Vec<String>,
}

type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Fallible<(u16, Value)> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }
}

#[tokio::main]
async fn main() -> Fallible<()> {
    let args = Args::parse();
    let password = args
        .password
        .clone()
        .unwrap_or_else(|| format!("{}-password-123", args.user));
    let http = reqwest::Client::new();
    let base = args.server.trim_end_matches('/').to_owned();
    let signup = json!({"username": args.user, "email": format!("{}@example.com", args.user), "password": password});
    let response = http
        .post(format!("{base}/v1/auth/signup"))
        .json(&signup)
        .send()
        .await?;
    if !(response.status().is_success() || response.status().as_u16() == 409) {
        return Err(format!("signup failed: {}", response.text().await?).into());
    }
    let login: Value = http
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"login": args.user, "password": password}))
        .send()
        .await?
        .json()
        .await?;
    let token = login["access_token"]
        .as_str()
        .ok_or_else(|| format!("login failed: {login}"))?
        .to_owned();
    let api = Api {
        http,
        base: base.clone(),
        token: token.clone(),
    };

    let mut room: Option<RoomId> = None;
    if let Some(name) = &args.room {
        let (_, rooms) = api.call(reqwest::Method::GET, "/v1/rooms", None).await?;
        let existing = rooms["rooms"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == name.as_str());
        let id = match existing {
            Some(r) => r["id"].as_i64(),
            None => api
                .call(
                    reqwest::Method::POST,
                    "/v1/rooms",
                    Some(json!({"name": name})),
                )
                .await?
                .1["id"]
                .as_i64(),
        };
        let id = RoomId(id.ok_or("could not create the room")?);
        for invitee in &args.invite {
            let (_, found) = api
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/users?username={invitee}"),
                    None,
                )
                .await?;
            match found["user"]["id"].as_i64() {
                Some(user_id) => {
                    api.call(
                        reqwest::Method::POST,
                        &format!("/v1/rooms/{id}/members"),
                        Some(json!({"user_id": user_id})),
                    )
                    .await?;
                }
                None => eprintln!("(no user {invitee}; start their client first)"),
            }
        }
        room = Some(id);
    }

    let ws_url = args
        .ws
        .clone()
        .unwrap_or_else(|| format!("{}/ws", base.replacen("http", "ws", 1)));
    let (ws, _) = tokio_tungstenite::connect_async(&ws_url).await?;
    let (mut tx, mut rx) = ws.split();
    let send = |frame: ClientFrame| {
        Message::text(String::from_utf8_lossy(&Encoding::Json.encode(&frame)).into_owned())
    };
    tx.send(send(ClientFrame::Auth { id: None, token })).await?;
    if let Some(id) = room {
        tx.send(send(ClientFrame::Join {
            id: None,
            room_id: id,
        }))
        .await?;
    } else {
        println!("(waiting to be added to a room...)");
    }

    let mut names: HashMap<i64, String> = HashMap::new();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                match room {
                    Some(id) if !line.trim().is_empty() => {
                        let (status, body) = api.call(reqwest::Method::POST, &format!("/v1/rooms/{id}/messages"), Some(json!({"body": line}))).await?;
                        if status >= 400 {
                            eprintln!("(not sent: {})", body["error"]["message"]);
                        }
                    }
                    Some(_) => {}
                    None => eprintln!("(not in a room yet)"),
                }
            }
            message = rx.next() => {
                let Some(Ok(Message::Text(text))) = message else {
                    if matches!(message, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
                        println!("(disconnected: {message:?})");
                        break;
                    }
                    continue;
                };
                match Encoding::Json.decode::<ServerFrame>(text.as_bytes(), &[]) {
                    Ok(ServerFrame::Ready { user_id, .. }) => println!("(connected as {} #{user_id})", args.user),
                    Ok(ServerFrame::Joined { room_id, .. }) => {
                        let (_, members) = api.call(reqwest::Method::GET, &format!("/v1/rooms/{room_id}/members"), None).await?;
                        for m in members["members"].as_array().into_iter().flatten() {
                            if let (Some(id), Some(name)) = (m["user_id"].as_i64(), m["username"].as_str()) {
                                names.insert(id, name.to_owned());
                            }
                        }
                        println!("(in room {room_id}; type to talk)");
                    }
                    Ok(ServerFrame::RoomAdded { room_id, .. }) if room.is_none() => {
                        room = Some(room_id);
                        tx.send(send(ClientFrame::Join { id: None, room_id })).await?;
                    }
                    Ok(ServerFrame::Event(event)) => {
                        let who = names.get(&event.sender_id.0).cloned().unwrap_or_else(|| format!("#{}", event.sender_id));
                        match event.kind {
                            EventKind::MessageCreated { body, .. } => println!("[{}] {who}: {body}", event.seq),
                            EventKind::MemberAdded { user_id, .. } => {
                                println!("[{}] {who} added user #{user_id}", event.seq);
                            }
                            other => println!("[{}] {who}: {}", event.seq, other.name()),
                        }
                    }
                    Ok(ServerFrame::Error { message, .. }) => println!("(error: {message})"),
                    Ok(other) => println!("({other:?})"),
                    Err(e) => println!("(unreadable frame: {e})"),
                }
            }
        }
    }
    Ok(())
}
