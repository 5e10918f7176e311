//! Message search latency over a large PostgreSQL database, through the
//! real endpoint (`GET /v1/search/messages`).
//!
//! 1. Provisions users and rooms through `POST /v1/admin/provision` (so the
//!    rows are the api's own: users, rooms, memberships, room events, and a
//!    token per user).
//! 2. Loads the messages straight into PostgreSQL with one
//!    `INSERT ... SELECT generate_series` per room batch: bodies of 4 to 24
//!    words drawn from a vocabulary of common English and chat words
//!    followed by a long tail of made-up ones, by a Zipf-like law (a word's
//!    frequency falls with its rank), so common, middling and rare words
//!    behave as in a real chat. The rows are valid `message.created`
//!    events: seq numbered per room after the provisioned events, the
//!    rooms' `last_seq` raised to match, senders members of their room.
//!    Then `ANALYZE`.
//! 3. Searches as one user, a member of exactly `--member-rooms` rooms
//!    (every user is, by the provisioning layout), with `--concurrency`
//!    requests in flight, cycling through a
//!    fixed list of query classes (a very common word, a middling word, a
//!    rare word, two words, a phrase, OR, a negation, a room filter, a
//!    second page); prints p50/p90/p99/max per class and overall, and the
//!    plan PostgreSQL chooses for each class (`Store::explain_search`, the
//!    store's own statement, under EXPLAIN ANALYZE).
//!
//! Bounded: the load is one statement per batch of rooms, the searches a
//! fixed number. The api must run against the same database with
//! `PARLEY_ADMIN_TOKEN` set and `PARLEY_RATE_SEARCHES_PER_SECOND` /
//! `PARLEY_RATE_SEARCHES_BURST` raised (docs/benchmarks.md).

use anyhow::{Context as _, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "search-bench",
    about = "Message search latency over a large PostgreSQL database"
)]
struct Args {
    /// The api (`http://127.0.0.1:8080`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// The api's PARLEY_ADMIN_TOKEN.
    #[arg(long, env = "PARLEY_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// The api's database (a fresh one: messages are added to it).
    #[arg(long, env = "PARLEY_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Messages to load.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Rooms; every user is a member of `member_rooms` of them.
    #[arg(long, default_value_t = 1_000)]
    rooms: u32,
    /// Rooms each user is a member of (and members per room).
    #[arg(long, default_value_t = 20)]
    member_rooms: u32,
    /// Searches to time.
    #[arg(long, default_value_t = 2_000)]
    searches: u32,
    /// Searches in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
    /// After loading, the searcher's token, id and rooms are written here;
    /// with `--reuse` they are read from here instead of provisioning and
    /// loading again (the token lasts an hour), e.g. to time another build
    /// of the api against the same data.
    #[arg(long, default_value = "target/search-bench.json")]
    state: std::path::PathBuf,
    #[arg(long)]
    reuse: bool,
    /// Username prefix of the provisioned users.
    #[arg(long, default_value = "sb")]
    prefix: String,
}

/// Upper bounds, so that a typo cannot start a run that never ends.
const MAX_MESSAGES: u64 = 20_000_000;
const MAX_SEARCHES: u32 = 1_000_000;

/// Words people type, most frequent first (rank 1 is the most common).
const COMMON: &str = "the to and a of i it is you that in we for on this be with have are not \
    but do so can just at was if will what me my all about get from they like your up there one \
    out yes no ok know think how time when now would good need see go make should did then also \
    more some want thanks today tomorrow meeting team deploy release build test fix bug issue \
    review merge branch code server database api client user message room update change config \
    error log alert incident customer ticket feature design plan sprint demo call week friday \
    monday production staging latency cache queue worker job metrics dashboard rollback hotfix \
    migration schema index query search performance memory cpu disk network timeout retry \
    failure outage backup restore security token session login password permission access \
    document spec proposal budget deadline launch roadmap priority estimate blocker standup \
    retro lunch coffee holiday weekend morning afternoon evening question answer idea problem \
    solution approach option decision agree sounds great thank please sorry maybe sure";

/// Made-up words after the common ones: the long tail of names, jargon and
/// typos a real chat has.
const TAIL_WORDS: usize = 20_000;

fn vocabulary() -> Vec<String> {
    let mut words: Vec<String> = COMMON.split_whitespace().map(str::to_owned).collect();
    const ONSETS: [&str; 16] = [
        "b", "c", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "sh",
    ];
    const VOWELS: [&str; 6] = ["a", "e", "i", "o", "u", "ai"];
    let syllable = |n: usize| format!("{}{}", ONSETS[n % 16], VOWELS[(n / 16) % 6]);
    let mut i = 0usize;
    while words.len() < COMMON.split_whitespace().count() + TAIL_WORDS {
        // Three syllables from the digits of i in base 96: all distinct.
        let word = format!(
            "{}{}{}x",
            syllable(i % 96),
            syllable((i / 96) % 96),
            syllable(i / 9216)
        );
        words.push(word);
        i += 1;
    }
    words
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.messages > MAX_MESSAGES || args.searches > MAX_SEARCHES {
        bail!("at most {MAX_MESSAGES} messages and {MAX_SEARCHES} searches");
    }
    let http = reqwest::Client::new();
    let vocab = vocabulary();
    let mut db = PgConnection::connect(&args.database_url)
        .await
        .context("connecting to the database")?;

    let (token, user_id, rooms): (String, i64, Vec<i64>) = if args.reuse {
        let saved = std::fs::read(&args.state)
            .with_context(|| format!("reading {}", args.state.display()))?;
        serde_json::from_slice(&saved)?
    } else {
        let started = Instant::now();
        let searcher = provision(&http, &args).await?;
        println!(
            "provisioned {} users in {} rooms in {:.1} s",
            args.rooms,
            args.rooms,
            started.elapsed().as_secs_f64()
        );
        let started = Instant::now();
        load(&mut db, &args, &vocab).await?;
        println!(
            "loaded {} messages in {:.1} s",
            args.messages,
            started.elapsed().as_secs_f64()
        );
        std::fs::write(&args.state, serde_json::to_vec(&searcher)?)
            .with_context(|| format!("writing {}", args.state.display()))?;
        searcher
    };
    let stats: (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE search_vector IS NOT NULL) FROM room_events \
         WHERE kind = 'message.created'",
    )
    .fetch_one(&mut db)
    .await?;
    let size: (String, String) = sqlx::query_as(
        "SELECT pg_size_pretty(pg_total_relation_size('room_events')), \
                pg_size_pretty(pg_relation_size('room_events_search_idx'))",
    )
    .fetch_one(&mut db)
    .await?;
    println!(
        "database: {} messages ({} indexed); room_events {} with indexes, of which the GIN index {}",
        stats.0, stats.1, size.0, size.1
    );
    println!(
        "searching as user {user_id}, a member of {} rooms",
        rooms.len()
    );

    let classes = query_classes(&vocab, rooms[0]);
    // One request of each class first: the plan, and warm caches.
    for class in &classes {
        let (status, body) = get(&http, &args.api, &token, &class.params).await?;
        if status != 200 {
            bail!("{}: {status} {body}", class.name);
        }
    }
    let cursor_of = {
        let (_, body) = get(&http, &args.api, &token, &classes[0].params).await?;
        body["next_cursor"].as_str().map(str::to_owned)
    };

    let slots = classes.len() + 1;
    let classes = Arc::new(classes);
    let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (http, api, token) = (http.clone(), args.api.clone(), token.clone());
        let (classes, next) = (classes.clone(), next.clone());
        let (searches, cursor) = (args.searches, cursor_of.clone());
        // Each task keeps its own histograms; they are added up at the end.
        tasks.spawn(async move {
            let mut latency = vec![Histogram::<u64>::new(3)?; slots];
            let mut hits = vec![0u64; slots];
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= searches {
                    return Ok::<_, anyhow::Error>((latency, hits));
                }
                // The last slot is the second page of the first class.
                let slot = i as usize % slots;
                let params: Vec<(String, String)> = if slot == classes.len() {
                    let mut p = classes[0].params.clone();
                    if let Some(c) = &cursor {
                        p.push(("cursor".into(), c.clone()));
                    }
                    p
                } else {
                    classes[slot].params.clone()
                };
                let sent = Instant::now();
                let (status, body) = get(&http, &api, &token, &params).await?;
                let micros = sent.elapsed().as_micros() as u64;
                if status != 200 {
                    bail!("{params:?}: {status} {body}");
                }
                latency[slot].record(micros.max(1))?;
                hits[slot] += body["hits"].as_array().map_or(0, |h| h.len() as u64);
            }
        });
    }
    let mut per_class = vec![Histogram::<u64>::new(3)?; slots];
    let mut hits_per_class = vec![0u64; slots];
    while let Some(done) = tasks.join_next().await {
        let (latency, hits) = done??;
        for slot in 0..slots {
            per_class[slot].add(&latency[slot])?;
            hits_per_class[slot] += hits[slot];
        }
    }
    let elapsed = started.elapsed();
    let mut all = Histogram::<u64>::new(3)?;
    println!(
        "\n{} searches, {} in flight, in {:.1} s ({:.0}/s)\n",
        args.searches,
        args.concurrency,
        elapsed.as_secs_f64(),
        f64::from(args.searches) / elapsed.as_secs_f64()
    );
    println!(
        "{:<34} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "query", "n", "p50 ms", "p90 ms", "p99 ms", "max ms", "hits/page"
    );
    let names: Vec<String> = classes
        .iter()
        .map(|c| c.name.clone())
        .chain(std::iter::once(format!("{} (page 2)", classes[0].name)))
        .collect();
    for (slot, h) in per_class.iter().enumerate() {
        all.add(h)?;
        print_row(&names[slot], h, hits_per_class[slot]);
    }
    print_row("all", &all, hits_per_class.iter().sum());

    println!("\nplans (EXPLAIN ANALYZE of the statement the store runs, as the searcher):");
    let store = store::Store::connect(&args.database_url, 1).await?;
    for class in classes.iter() {
        println!("-- {}: q={:?}", class.name, class.params[0].1);
        for line in explain(&store, user_id, class).await? {
            println!("   {line}");
        }
    }
    Ok(())
}

fn print_row(name: &str, h: &Histogram<u64>, hits: u64) {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{:<34} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.1}",
        name,
        h.len(),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        h.max() as f64 / 1000.0,
        hits as f64 / h.len().max(1) as f64
    );
}

struct QueryClass {
    name: String,
    params: Vec<(String, String)>,
    /// What the api parses `q` into (for the plan).
    expr: store::SearchExpr,
    room: Option<i64>,
}

/// A clause of one phrase, as the api's parser makes it.
fn clause(negated: bool, phrases: &[&str]) -> store::SearchClause {
    store::SearchClause {
        negated,
        phrases: phrases
            .iter()
            .map(|p| p.split_whitespace().map(str::to_owned).collect())
            .collect(),
    }
}

/// The queries timed: words of each frequency, and each feature.
fn query_classes(vocab: &[String], a_room: i64) -> Vec<QueryClass> {
    let common = COMMON.split_whitespace().count();
    let class = |name: &str, q: String, clauses: Vec<store::SearchClause>, room: Option<i64>| {
        let mut params = vec![("q".to_owned(), q), ("limit".to_owned(), "20".to_owned())];
        if let Some(room) = room {
            params.push(("room_id".to_owned(), room.to_string()));
        }
        QueryClass {
            name: name.to_owned(),
            params,
            expr: store::SearchExpr { clauses },
            room,
        }
    };
    let w = |rank: usize| vocab[rank - 1].as_str();
    let rare = common + 14_000;
    vec![
        class(
            "very common word (rank 1)",
            w(1).into(),
            vec![clause(false, &[w(1)])],
            None,
        ),
        class(
            "common word (rank 60)",
            w(60).into(),
            vec![clause(false, &[w(60)])],
            None,
        ),
        class(
            "middling word (rank 1,000)",
            w(1000).into(),
            vec![clause(false, &[w(1000)])],
            None,
        ),
        class(
            "rare word (rank 15,000)",
            w(rare).into(),
            vec![clause(false, &[w(rare)])],
            None,
        ),
        class(
            "two words",
            format!("{} {}", w(70), w(120)),
            vec![clause(false, &[w(70)]), clause(false, &[w(120)])],
            None,
        ),
        class(
            "phrase",
            format!("\"{} {}\"", w(3), w(4)),
            vec![clause(false, &[&format!("{} {}", w(3), w(4))])],
            None,
        ),
        class(
            "OR",
            format!("{} OR {}", w(300), w(400)),
            vec![clause(false, &[w(300), w(400)])],
            None,
        ),
        class(
            "negation",
            format!("{} -{}", w(80), w(1)),
            vec![clause(false, &[w(80)]), clause(true, &[w(1)])],
            None,
        ),
        class(
            "common word, one room",
            w(11).into(),
            vec![clause(false, &[w(11)])],
            Some(a_room),
        ),
    ]
}

async fn get(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    params: &[(String, String)],
) -> anyhow::Result<(u16, Value)> {
    let response = http
        .get(format!("{api}/v1/search/messages"))
        .bearer_auth(token)
        .query(params)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// Users and rooms through the admin endpoint; the first user's token, id
/// and rooms.
async fn provision(http: &reqwest::Client, args: &Args) -> anyhow::Result<(String, i64, Vec<i64>)> {
    let response = http
        .post(format!("{}/v1/admin/provision", args.api))
        .bearer_auth(&args.admin_token)
        .json(&json!({
            "prefix": args.prefix,
            // Room r's members are users (r * size + i) % users: with as many
            // users as rooms, each user is in exactly `member_rooms` rooms.
            "users": args.rooms,
            "rooms": args.rooms,
            "room_size": args.member_rooms,
            "token_ttl_secs": 3600,
        }))
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .context("provisioning")?;
    let status = response.status();
    let body: Value = response.json().await?;
    if !status.is_success() {
        bail!("provisioning: {status} {body}");
    }
    let user = &body["users"][0];
    let token = user["access_token"]
        .as_str()
        .context("a token in the provisioning answer")?
        .to_owned();
    let user_id = user["id"].as_i64().context("a user id")?;
    let rooms = rooms_of(http, args, &token).await?;
    Ok((token, user_id, rooms))
}

async fn rooms_of(http: &reqwest::Client, args: &Args, token: &str) -> anyhow::Result<Vec<i64>> {
    let body: Value = http
        .get(format!("{}/v1/rooms", args.api))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    let rooms: Vec<i64> = body["rooms"]
        .as_array()
        .context("a room list")?
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    if rooms.is_empty() {
        bail!("the searching user is in no room: {body}");
    }
    Ok(rooms)
}

/// Messages straight into PostgreSQL, a batch of rooms per statement.
async fn load(db: &mut PgConnection, args: &Args, vocab: &[String]) -> anyhow::Result<()> {
    let rooms: Vec<(i64,)> = sqlx::query_as("SELECT id FROM rooms ORDER BY id")
        .fetch_all(&mut *db)
        .await?;
    if rooms.is_empty() {
        bail!("no rooms to load messages into");
    }
    let per_room = args.messages / rooms.len() as u64;
    let extra = args.messages % rooms.len() as u64;
    let now_ms = chrono::Utc::now().timestamp_millis();
    // Messages spread over the last 90 days.
    let span_ms: i64 = 90 * 24 * 3600 * 1000;
    let vocab_len = vocab.len() as i64;
    let batch = 50usize;
    let mut done = 0u64;
    for (b, chunk) in rooms.chunks(batch).enumerate() {
        let ids: Vec<i64> = chunk.iter().map(|r| r.0).collect();
        let count = per_room + u64::from((b * batch) < extra as usize);
        // Word ranks are log-uniform (rank = vocab_len ^ u): frequency
        // about 1/rank, Zipf's law with exponent 1.
        let inserted = sqlx::query(
            "WITH r AS ( \
                 SELECT rooms.id, rooms.last_seq, \
                     (SELECT array_agg(user_id ORDER BY user_id) FROM room_members m WHERE m.room_id = rooms.id) AS members \
                 FROM rooms WHERE rooms.id = ANY($1::bigint[]) \
             ), \
             m AS ( \
                 SELECT r.id AS room_id, r.last_seq + g AS seq, r.members[1 + (g % array_length(r.members, 1))] AS sender_id, \
                     $3::bigint - $4::bigint + (g * $4::bigint / $2::bigint) + (r.id % 1000) AS created_at, \
                     4 + (hashint8(r.id * 1000003 + g) & 15) + (hashint8(g) & 4) AS words \
                 FROM r, generate_series(1, $2::bigint) AS g \
             ) \
             INSERT INTO room_events (room_id, seq, kind, sender_id, body, created_at) \
             SELECT m.room_id, m.seq, 'message.created', m.sender_id, \
                 (SELECT string_agg(($5::text[])[least($6::int, floor(exp(ln($6::float8 + 1) * random()))::int)], ' ') \
                  FROM generate_series(1, m.words)), \
                 m.created_at \
             FROM m",
        )
        .bind(&ids)
        .bind(count as i64)
        .bind(now_ms)
        .bind(span_ms)
        .bind(vocab)
        .bind(vocab_len as i32)
        .execute(&mut *db)
        .await
        .context("loading messages")?;
        sqlx::query(
            "UPDATE rooms SET last_seq = (SELECT max(seq) FROM room_events e WHERE e.room_id = rooms.id) \
             WHERE id = ANY($1::bigint[])",
        )
        .bind(&ids)
        .execute(&mut *db)
        .await?;
        done += inserted.rows_affected();
        eprint!("\r{done} messages");
    }
    eprintln!();
    sqlx::query("ANALYZE room_events").execute(&mut *db).await?;
    sqlx::query("ANALYZE room_members")
        .execute(&mut *db)
        .await?;
    Ok(())
}

/// EXPLAIN ANALYZE of the store's own statement for a class.
async fn explain(
    store: &store::Store,
    user_id: i64,
    class: &QueryClass,
) -> anyhow::Result<Vec<String>> {
    let request = store::SearchRequest {
        caller: shared::UserId(user_id),
        expr: &class.expr,
        room: class.room.map(shared::RoomId),
        sender: None,
        before: None,
        after: None,
        page_after: None,
        limit: 20,
    };
    Ok(store
        .explain_search(&request, store::Explain::Analyze)
        .await?)
}
