//! A tiny terminal chat client for trying a Parley server (README, "Quick start").
//!
//! ```text
//! export PARLEY_PASSWORD='correct horse battery'
//! cargo run --release -p parley --example chat -- --user bob
//! cargo run --release -p parley --example chat -- --user alice --room general --invite bob
//! ```
//!
//! It signs the user up (an account that exists already is fine) and logs
//! in with `PARLEY_PASSWORD`, joins the room (creating it, and inviting
//! people, if asked), shows its last messages, prints what happens there and
//! posts every line typed. A user without `--room` joins their newest room,
//! or waits to be added to one.
//!
//! It is also a small model of what a real client must do when the server
//! goes away (a restart, a deploy): reconnect with backoff, log in again if
//! its token was refused, rejoin, and fetch from history the events it
//! missed. The gateway's `joined` frame says from which `seq` on live
//! delivery starts, so everything up to it comes from history, and an event
//! seen both ways is shown once (by `seq`).

use clap::Parser;
use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use shared::model::{EventKind, Room, RoomEvent, RoomKind};
use shared::protocol::{ClientFrame, Encoding, ServerFrame, close};
use shared::rest::{
    ErrorBody, HistoryPage, MemberList, RoomList, TokenResponse, UserLookupResponse,
};
use shared::{RoomId, UserId};
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[derive(Parser)]
#[command(about = "A terminal chat client for a Parley server")]
struct Args {
    /// The server's base URL (a single node serves REST and WebSocket on one port).
    #[arg(long, env = "PARLEY_URL", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// WebSocket URL, if the gateway is elsewhere.
    #[arg(long)]
    ws: Option<String>,
    #[arg(long)]
    user: String,
    /// The user's password, for signup and login. The README's quick start
    /// sets PARLEY_PASSWORD once, for this client and its curl steps alike.
    #[arg(long, env = "PARLEY_PASSWORD", hide_env_values = true)]
    password: String,
    /// Room to join, created if the user has none by that name.
    #[arg(long)]
    room: Option<String>,
    /// Users to add to the room.
    #[arg(long)]
    invite: Vec<String>,
    /// How many of the room's latest events to show on joining it.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=100))]
    history: u32,
}

/// First wait before reconnecting; doubled after each failed attempt.
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Longest wait between attempts: a restarted server is found within this.
const MAX_RETRY: Duration = Duration::from_secs(8);
/// Events fetched per history request (the api's page limit).
const HISTORY_PAGE: usize = 100;
/// Most missed events shown after a reconnect; older ones are summarised,
/// so a client that was away for a long time does not flood the terminal.
const MAX_CATCH_UP: usize = 500;
/// Silence allowed before the gateway's `ready` tells us its heartbeat.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a step could not finish.
#[derive(Debug)]
enum Failure {
    /// The server is not reachable or not ready (down, restarting, 5xx,
    /// rate limited): worth retrying.
    Offline(String),
    /// Retrying cannot help (wrong password, a refused room): stop with this.
    Fatal(String),
}

type Step<T> = Result<T, Failure>;

fn offline(e: impl std::fmt::Display) -> Failure {
    Failure::Offline(e.to_string())
}

/// The REST side: credentials, the current access token, and requests
/// that log in again once when the token is refused.
struct Client {
    http: reqwest::Client,
    base: String,
    user: String,
    password: String,
    token: Option<String>,
}

impl Client {
    /// Signs the user up; an account that exists already is what a second
    /// run finds, and fine (a wrong password shows at login).
    async fn sign_up(&self) -> Step<()> {
        let body = json!({"username": self.user, "email": format!("{}@example.com", self.user), "password": self.password});
        let response = self
            .http
            .post(format!("{}/v1/auth/signup", self.base))
            .json(&body)
            .send()
            .await
            .map_err(offline)?;
        let status = response.status();
        match error_of(response).await {
            None if status == StatusCode::CREATED => {
                println!("(signed up as {})", self.user);
                Ok(())
            }
            Some((_, code, _)) if code == "username_taken" => Ok(()),
            Some((status, _, message)) if retryable(status) => Err(Failure::Offline(message)),
            Some((_, _, message)) => Err(Failure::Fatal(format!(
                "signing up {} failed: {message}",
                self.user
            ))),
            None => Err(Failure::Fatal(format!("signup answered {status}"))),
        }
    }

    async fn log_in(&mut self) -> Step<String> {
        let response = self
            .http
            .post(format!("{}/v1/auth/login", self.base))
            .json(&json!({"login": self.user, "password": self.password}))
            .send()
            .await
            .map_err(offline)?;
        if response.status() == StatusCode::OK {
            let login: TokenResponse = response.json().await.map_err(offline)?;
            self.token = Some(login.access_token.clone());
            return Ok(login.access_token);
        }
        match error_of(response).await {
            Some((status, _, message)) if retryable(status) => Err(Failure::Offline(message)),
            Some((_, code, _)) if code == "invalid_credentials" => Err(Failure::Fatal(format!(
                "logging in as {} failed: wrong password (PARLEY_PASSWORD must be the one {} signed up with)",
                self.user, self.user
            ))),
            Some((_, _, message)) => Err(Failure::Fatal(format!(
                "logging in as {} failed: {message}",
                self.user
            ))),
            None => Err(Failure::Fatal("login answered without a token".into())),
        }
    }

    async fn token(&mut self) -> Step<String> {
        match &self.token {
            Some(token) => Ok(token.clone()),
            None => self.log_in().await,
        }
    }

    /// Sends a request as the user. `Ok(Err(..))` is a refusal to show
    /// (status, code, message); a refused token is renewed once.
    async fn request<T: DeserializeOwned>(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Step<Result<T, (StatusCode, String, String)>> {
        for attempt in 0..2 {
            let token = self.token().await?;
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(token);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.map_err(offline)?;
            if response.status().is_success() {
                return Ok(Ok(response.json().await.map_err(offline)?));
            }
            match error_of(response).await {
                Some((StatusCode::UNAUTHORIZED, ..)) if attempt == 0 => self.token = None,
                Some((status, _, message)) if retryable(status) => {
                    return Err(Failure::Offline(message));
                }
                Some(refusal) => return Ok(Err(refusal)),
                None => return Err(Failure::Offline("an unreadable answer".into())),
            }
        }
        Err(Failure::Fatal(
            "the server keeps refusing fresh tokens".into(),
        ))
    }
}

/// The status, code and message of an error answer (`None` for a success).
async fn error_of(response: reqwest::Response) -> Option<(StatusCode, String, String)> {
    let status = response.status();
    if status.is_success() {
        return None;
    }
    let text = response.text().await.unwrap_or_default();
    Some(match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => (status, body.error.code, body.error.message),
        Err(_) => (status, String::new(), format!("{status} {}", text.trim())),
    })
}

fn retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// What the user sees: the room, who is who, and the newest event shown.
struct Chat {
    room: Option<RoomId>,
    /// Whether the `--room`/`--invite` set-up has been done (once, not on
    /// every reconnect).
    set_up: bool,
    signed_up: bool,
    /// `seq` of the newest event shown in `room`: after a reconnect,
    /// history from here on is what was missed.
    last_seq: Option<i64>,
    names: HashMap<UserId, String>,
    history: u32,
}

impl Chat {
    fn name(&self, id: UserId) -> String {
        self.names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    }

    /// Prints an event unless it was shown already (history and live
    /// delivery overlap after a join).
    fn show(&mut self, event: &RoomEvent) {
        if Some(event.room_id) != self.room || self.last_seq.is_some_and(|s| event.seq <= s) {
            return;
        }
        self.last_seq = Some(event.seq);
        let who = self.name(event.sender_id);
        match &event.kind {
            EventKind::MessageCreated {
                body, attachments, ..
            } => {
                println!("[{}] {who}: {body}", event.seq);
                for a in attachments {
                    println!(
                        "    [file] {} ({}, {} bytes) /v1/attachments/{}",
                        a.filename, a.content_type, a.size, a.id
                    );
                }
            }
            EventKind::RoomCreated { name } => println!("[{}] {who} created #{name}", event.seq),
            EventKind::MemberAdded { user_id, .. } => {
                println!("[{}] {who} added {}", event.seq, self.name(*user_id))
            }
            EventKind::MemberRemoved { user_id } if *user_id == event.sender_id => {
                println!("[{}] {who} left", event.seq)
            }
            EventKind::MemberRemoved { user_id } => {
                println!("[{}] {who} removed {}", event.seq, self.name(*user_id))
            }
            EventKind::Custom { name, payload } => {
                println!("[{}] ({name} from {who}: {payload})", event.seq)
            }
            EventKind::MessageEdited {
                target_seq, body, ..
            } => println!("[{}] {who} edited [{target_seq}]: {body}", event.seq),
            EventKind::MessageDeleted { target_seq } => {
                println!("[{}] {who} deleted [{target_seq}]", event.seq)
            }
            EventKind::ReactionAdded { target_seq, emoji } => {
                println!("[{}] {who} reacted {emoji} to [{target_seq}]", event.seq)
            }
            EventKind::ReactionRemoved { target_seq, emoji } => {
                println!(
                    "[{}] {who} took back {emoji} from [{target_seq}]",
                    event.seq
                )
            }
            EventKind::RoomUpdated { name, topic, .. } => {
                println!("[{}] {who} set the room to #{name}: {topic}", event.seq)
            }
            EventKind::OwnerChanged { user_id } => {
                println!(
                    "[{}] {who} made {} the owner",
                    event.seq,
                    self.name(*user_id)
                )
            }
            EventKind::RoomDeleted {} => println!("[{}] {who} deleted the room", event.seq),
            EventKind::MemberInvited { user_id, .. } => {
                println!("[{}] {who} invited {}", event.seq, self.name(*user_id))
            }
            EventKind::InvitationDeclined { .. } => {
                println!("[{}] {who} declined the invitation", event.seq)
            }
            EventKind::InvitationRevoked { user_id } => println!(
                "[{}] {who} withdrew the invitation of {}",
                event.seq,
                self.name(*user_id)
            ),
            // A terminal shows no thumbnails.
            EventKind::AttachmentThumbnailReady { .. } => {}
        }
    }

    fn leave_room(&mut self) {
        self.room = None;
        self.last_seq = None;
        println!("(waiting to be added to a room...)");
    }

    async fn load_names(&mut self, client: &mut Client, room: RoomId) -> Step<()> {
        let path = format!("/v1/rooms/{room}/members");
        if let Ok(list) = client
            .request::<MemberList>(Method::GET, &path, None)
            .await?
        {
            for member in list.members {
                self.names.insert(member.user_id, member.username);
            }
        }
        Ok(())
    }

    /// Shows the events up to `joined_at` that were not shown yet: the last
    /// few on a first join, everything missed on a rejoin. A room's events
    /// are numbered without gaps, so what was missed is exactly the `seq`s
    /// after the last one shown up to the join point.
    async fn catch_up(&mut self, client: &mut Client, room: RoomId, joined_at: i64) -> Step<()> {
        let rejoin = self.last_seq.is_some();
        let (after, wanted) = match self.last_seq {
            Some(seen) => (seen, usize::try_from(joined_at - seen).unwrap_or(0)),
            None => (0, self.history as usize),
        };
        let shown = wanted.min(MAX_CATCH_UP);
        let mut events: Vec<RoomEvent> = Vec::with_capacity(shown); // newest first
        let mut before = joined_at + 1;
        while events.len() < shown {
            let limit = (shown - events.len()).min(HISTORY_PAGE);
            let path = format!("/v1/rooms/{room}/messages?before_seq={before}&limit={limit}");
            let page = match client
                .request::<HistoryPage>(Method::GET, &path, None)
                .await?
            {
                Ok(page) => page,
                Err((_, _, message)) => {
                    println!("(history unavailable: {message})");
                    break;
                }
            };
            let got = page.events.len();
            events.extend(page.events.into_iter().filter(|e| e.seq > after));
            match page.next_before_seq {
                Some(next) if got > 0 && next > after + 1 => before = next,
                _ => break,
            }
        }
        events.truncate(shown);
        if rejoin && !events.is_empty() {
            println!("(missed while away:)");
        }
        if wanted > shown {
            println!(
                "({} earlier events are in the room's history)",
                wanted - shown
            );
        }
        if events
            .iter()
            .any(|e| !self.names.contains_key(&e.sender_id))
        {
            self.load_names(client, room).await?;
        }
        for event in events.iter().rev() {
            self.show(event);
        }
        // Live delivery starts after the join point whatever was shown.
        self.last_seq = Some(self.last_seq.map_or(joined_at, |s| s.max(joined_at)));
        Ok(())
    }
}

/// Standard input, read line by line across reconnections.
struct Input {
    lines: Lines<BufReader<Stdin>>,
}

impl Input {
    /// The next line; `None` at end of input (Ctrl-D), which ends the client.
    /// Cancel-safe, so it can sit in a `select!`.
    async fn next(&mut self) -> Option<String> {
        self.lines.next_line().await.ok().flatten()
    }
}

/// How a connection to the gateway ended.
enum SessionEnd {
    InputClosed,
    /// The connection dropped after the gateway had accepted it.
    Disconnected(String),
}

/// Finds (or creates) the room and invites people: once per run.
async fn set_up_room(args: &Args, client: &mut Client, chat: &mut Chat) -> Step<()> {
    let rooms = match client
        .request::<RoomList>(Method::GET, "/v1/rooms", None)
        .await?
    {
        Ok(list) => list.rooms,
        Err((_, _, message)) => return Err(Failure::Fatal(format!("listing rooms: {message}"))),
    };
    let Some(name) = &args.room else {
        // The newest group room: on a second run, the room a first run was
        // invited to (the inviter's `--invite` finds the user already in it).
        chat.room = newest_group_room(&rooms);
        if chat.room.is_none() {
            println!("(waiting to be added to a room...)");
        }
        return Ok(());
    };
    let id = match rooms.iter().find(|r| &r.name == name) {
        Some(room) => room.id,
        None => {
            let created = client
                .request::<Room>(Method::POST, "/v1/rooms", Some(&json!({"name": name})))
                .await?;
            match created {
                Ok(room) => room.id,
                Err((_, _, message)) => {
                    return Err(Failure::Fatal(format!("creating #{name}: {message}")));
                }
            }
        }
    };
    chat.room = Some(id);
    for invitee in &args.invite {
        let path = format!("/v1/users?username={invitee}");
        let user_id = match client
            .request::<UserLookupResponse>(Method::GET, &path, None)
            .await?
        {
            Ok(found) => found.user.id,
            Err(_) => {
                println!("(no user {invitee} yet: start their client first)");
                continue;
            }
        };
        let path = format!("/v1/rooms/{id}/members");
        let added = client
            .request::<Value>(Method::POST, &path, Some(&json!({"user_id": user_id})))
            .await?;
        match added {
            Ok(_) => println!("(added {invitee} to #{name})"),
            Err((_, code, _)) if code == "already_member" => {}
            Err((_, _, message)) => println!("(could not add {invitee}: {message})"),
        }
    }
    Ok(())
}

fn newest_group_room(rooms: &[Room]) -> Option<RoomId> {
    rooms
        .iter()
        .filter(|r| r.kind == RoomKind::Group)
        .map(|r| r.id)
        .max_by_key(|id| id.0)
}

fn text(frame: &ClientFrame) -> Message {
    Message::text(String::from_utf8_lossy(&Encoding::Json.encode(frame)).into_owned())
}

/// One connection: set up what is missing, connect, authenticate, join,
/// then relay until the connection or the input ends.
async fn session(
    args: &Args,
    client: &mut Client,
    chat: &mut Chat,
    input: &mut Input,
    connected: &mut bool,
) -> Step<SessionEnd> {
    if !chat.signed_up {
        client.sign_up().await?;
        chat.signed_up = true;
    }
    let token = client.token().await?;
    if !chat.set_up {
        set_up_room(args, client, chat).await?;
        chat.set_up = true;
    }
    let ws_url = args
        .ws
        .clone()
        .unwrap_or_else(|| format!("{}/ws", client.base.replacen("http", "ws", 1)));
    let (ws, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .map_err(offline)?;
    let (mut tx, mut rx) = ws.split();
    tx.send(text(&ClientFrame::Auth { id: None, token }))
        .await
        .map_err(offline)?;

    let mut silence_limit = FIRST_FRAME_TIMEOUT;
    let mut deadline = Instant::now() + silence_limit;
    loop {
        tokio::select! {
            line = input.next() => {
                let Some(line) = line else {
                    let _ = tx.send(Message::Close(None)).await;
                    return Ok(SessionEnd::InputClosed);
                };
                post(client, chat, &line).await;
            }
            () = tokio::time::sleep_until(deadline) => {
                return Ok(SessionEnd::Disconnected("the server went silent".into()));
            }
            message = rx.next() => {
                deadline = Instant::now() + silence_limit;
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((u16::from(CloseCode::Status), String::new()));
                        if matches!(code, close::UNAUTHORIZED | close::TOKEN_EXPIRED | close::SESSION_REVOKED) {
                            client.token = None;
                        }
                        return Ok(SessionEnd::Disconnected(format!("closed: {} {reason}", close::name(code))));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Ok(SessionEnd::Disconnected(e.to_string())),
                    None => return Ok(SessionEnd::Disconnected("connection closed".into())),
                };
                match Encoding::Json.decode::<ServerFrame>(text.as_bytes(), &[]) {
                    Ok(ServerFrame::Ready { user_id, heartbeat_ms, .. }) => {
                        *connected = true;
                        // The gateway pings every heartbeat; twice that
                        // without a frame means the connection is dead.
                        silence_limit = Duration::from_millis(heartbeat_ms.saturating_mul(2)) + Duration::from_secs(5);
                        deadline = Instant::now() + silence_limit;
                        println!("(connected as {} #{user_id})", args.user);
                        if let Some(room_id) = chat.room {
                            tx.send(text_frame_join(room_id)).await.map_err(offline)?;
                        }
                    }
                    Ok(ServerFrame::Joined { room_id, seq, .. }) => {
                        let rejoin = chat.last_seq.is_some();
                        chat.load_names(client, room_id).await?;
                        chat.catch_up(client, room_id, seq).await?;
                        if rejoin {
                            println!("(back in room {room_id})");
                        } else {
                            println!("(in room {room_id}; type to talk)");
                        }
                    }
                    Ok(ServerFrame::RoomAdded { room_id, .. }) => {
                        if chat.room.is_none() {
                            chat.room = Some(room_id);
                            tx.send(text_frame_join(room_id)).await.map_err(offline)?;
                        } else {
                            println!("(added to room {room_id}; start another client with --room to talk there)");
                        }
                    }
                    Ok(ServerFrame::RoomRemoved { room_id }) | Ok(ServerFrame::Left { room_id, .. })
                        if Some(room_id) == chat.room =>
                    {
                        println!("(no longer in room {room_id})");
                        chat.leave_room();
                    }
                    Ok(ServerFrame::Event(event)) => {
                        if let EventKind::MemberAdded { user_id, .. } = &event.kind
                            && !chat.names.contains_key(user_id)
                        {
                            chat.load_names(client, event.room_id).await?;
                        }
                        chat.show(&event);
                    }
                    Ok(ServerFrame::Error { message, room_id, .. }) => {
                        println!("(error: {message})");
                        if room_id.is_some() && room_id == chat.room {
                            chat.leave_room();
                        }
                    }
                    Ok(_) => {}
                    Err(e) => println!("(unreadable frame: {e})"),
                }
            }
        }
    }
}

fn text_frame_join(room_id: RoomId) -> Message {
    text(&ClientFrame::Join {
        id: None,
        room_id,
        since_seq: None,
        presence: false,
    })
}

/// Posts a typed line to the room; the server's event shows it.
async fn post(client: &mut Client, chat: &Chat, line: &str) {
    if line.trim().is_empty() {
        return;
    }
    let Some(room) = chat.room else {
        println!("(not in a room yet)");
        return;
    };
    let path = format!("/v1/rooms/{room}/messages");
    match client
        .request::<Value>(Method::POST, &path, Some(&json!({"body": line})))
        .await
    {
        Ok(Ok(_)) => {}
        Ok(Err((_, _, message))) => println!("(not sent: {message})"),
        Err(Failure::Offline(why) | Failure::Fatal(why)) => println!("(not sent: {why})"),
    }
}

/// Waits `delay` before the next attempt. Lines typed meanwhile are still
/// posted: the REST api may well be back before the WebSocket is, and a
/// line that cannot be sent says so. `false` when the input ended.
async fn wait_offline(
    delay: Duration,
    client: &mut Client,
    chat: &Chat,
    input: &mut Input,
) -> bool {
    let until = Instant::now() + delay;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until) => return true,
            line = input.next() => match line {
                None => return false,
                Some(line) => post(client, chat, &line).await,
            },
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let mut client = Client {
        http: reqwest::Client::new(),
        base: args.server.trim_end_matches('/').to_owned(),
        user: args.user.clone(),
        password: args.password.clone(),
        token: None,
    };
    let mut chat = Chat {
        room: None,
        set_up: false,
        signed_up: false,
        last_seq: None,
        names: HashMap::new(),
        history: args.history,
    };
    let mut input = Input {
        lines: BufReader::new(tokio::io::stdin()).lines(),
    };
    let mut retry = FIRST_RETRY;
    loop {
        let mut connected = false;
        let outcome = session(&args, &mut client, &mut chat, &mut input, &mut connected).await;
        if connected {
            retry = FIRST_RETRY;
        }
        match outcome {
            Ok(SessionEnd::InputClosed) => return Ok(()),
            Ok(SessionEnd::Disconnected(why)) => {
                println!("(disconnected: {why}; reconnecting in {retry:?})");
            }
            Err(Failure::Offline(why)) => {
                println!("(server unreachable: {why}; retrying in {retry:?})");
            }
            Err(Failure::Fatal(why)) => return Err(why),
        }
        if !wait_offline(retry, &mut client, &chat, &mut input).await {
            return Ok(());
        }
        retry = (retry * 2).min(MAX_RETRY);
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("chat: {why}");
            ExitCode::FAILURE
        }
    }
}
