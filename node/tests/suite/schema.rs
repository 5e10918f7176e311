//! The PostgreSQL and SQLite migrations describe the same schema.

use sqlx::{Connection, PgConnection, Row, SqliteConnection};
use std::collections::BTreeSet;
use testkit::TestDatabase;

/// (table, column, NOT NULL)
type Columns = BTreeSet<(String, String, bool)>;

/// The one place the engines' schemas differ on purpose: message search
/// (migrations 20261201000006) is a generated tsvector column with a GIN
/// index in PostgreSQL, and an FTS5 virtual table (with the shadow tables
/// FTS5 creates for it: `_data`, `_idx`, `_docsize`, `_config`, `_content`)
/// kept by triggers in SQLite. Neither is read or written by the store
/// except through the search statements, which differ per engine anyway.
const POSTGRES_SEARCH_COLUMN: (&str, &str) = ("room_events", "search_vector");
const SQLITE_SEARCH_TABLE: &str = "message_search";

#[tokio::test]
async fn the_postgres_and_sqlite_schemas_have_the_same_tables_and_columns() {
    let pg = TestDatabase::create().await.expect("test database");
    store::Store::connect(&pg.url, 1)
        .await
        .expect("connect")
        .migrate()
        .await
        .expect("migrate postgres");
    let mut conn = PgConnection::connect(&pg.url).await.expect("connect");
    let rows = sqlx::query(
        "SELECT table_name::text AS t, column_name::text AS c, is_nullable::text AS n FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name NOT LIKE '\\_sqlx%'",
    )
    .fetch_all(&mut conn)
    .await
    .expect("postgres columns");
    assert!(
        rows.iter().any(|r| {
            (
                r.get::<String, _>("t").as_str(),
                r.get::<String, _>("c").as_str(),
            ) == POSTGRES_SEARCH_COLUMN
        }),
        "the search column exists"
    );
    let postgres: Columns = rows
        .iter()
        .filter(|r| {
            (
                r.get::<String, _>("t").as_str(),
                r.get::<String, _>("c").as_str(),
            ) != POSTGRES_SEARCH_COLUMN
        })
        .map(|r| {
            (
                r.get::<String, _>("t"),
                r.get::<String, _>("c"),
                r.get::<String, _>("n") == "NO",
            )
        })
        .collect();
    conn.close().await.ok();
    pg.drop_database().await;

    let dir = std::env::temp_dir().join(format!("parley-schema-{}", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite://{}/schema.db", dir.display());
    let sqlite_store = store::Store::connect(&url, 1).await.expect("open sqlite");
    sqlite_store.migrate().await.expect("migrate sqlite");
    sqlite_store.close().await;
    let mut conn = SqliteConnection::connect(&format!("{url}?mode=ro"))
        .await
        .expect("open sqlite");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_sqlx%' ESCAPE '\\' AND name <> 'sqlite_sequence'",
    )
    .fetch_all(&mut conn)
    .await
    .expect("sqlite tables");
    let mut sqlite = Columns::new();
    let search_tables = tables
        .iter()
        .filter(|t| {
            *t == SQLITE_SEARCH_TABLE
                || t.strip_prefix(SQLITE_SEARCH_TABLE)
                    .is_some_and(|rest| rest.starts_with('_'))
        })
        .count();
    assert!(
        search_tables >= 2,
        "the FTS5 table and its shadow tables exist: {tables:?}"
    );
    for table in tables {
        if table == SQLITE_SEARCH_TABLE
            || table
                .strip_prefix(SQLITE_SEARCH_TABLE)
                .is_some_and(|rest| rest.starts_with('_'))
        {
            continue;
        }
        let columns = sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA table_info({table})")))
            .fetch_all(&mut conn)
            .await
            .expect("table info");
        for c in columns {
            // An INTEGER PRIMARY KEY is SQLite's rowid: never NULL, though not declared NOT NULL.
            let not_null = c.get::<i64, _>("notnull") == 1 || c.get::<i64, _>("pk") > 0;
            sqlite.insert((table.clone(), c.get::<String, _>("name"), not_null));
        }
    }
    conn.close().await.ok();
    std::fs::remove_dir_all(&dir).ok();

    assert!(postgres.len() > 20, "the schema was read: {postgres:?}");
    assert_eq!(
        postgres.symmetric_difference(&sqlite).collect::<Vec<_>>(),
        Vec::<&(String, String, bool)>::new(),
        "tables, columns and nullability must match"
    );
}

/// Migration 20261201000012 rebuilds `users` on SQLite (a UNIQUE constraint
/// cannot be dropped there): a single node's existing data must come
/// through it whole, with every reference to an account intact, the id
/// counter kept, and foreign keys enforced again afterwards.
#[tokio::test]
async fn upgrading_a_sqlite_database_keeps_accounts_and_what_refers_to_them() {
    let dir =
        std::env::temp_dir().join(format!("parley-upgrade-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}/node.db", dir.display());
    let options = url
        .parse::<sqlx::sqlite::SqliteConnectOptions>()
        .expect("url")
        .create_if_missing(true)
        .foreign_keys(true);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .expect("open");
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/sqlite");
    sqlx::migrate::Migrator::new(migrations)
        .await
        .expect("migrations")
        .run_to(20261201000011, &mut conn)
        .await
        .expect("migrate to the schema before the rebuild");
    for (id, name, verified) in [(1, "alice", Some(5)), (2, "bob", None), (3, "gone", None)] {
        sqlx::query(
            "INSERT INTO users (id, username, email, password_hash, created_at, email_verified_at, display_name) \
             VALUES (?, ?, ?, 'hash', 1, ?, ?)",
        )
        .bind(id)
        .bind(name)
        .bind(format!("{name}@example.com"))
        .bind(verified)
        .bind(format!("{name}'s name"))
        .execute(&mut conn)
        .await
        .expect("user");
    }
    // The newest id is no longer in the table: the counter must remember it.
    sqlx::query("DELETE FROM users WHERE id = 3")
        .execute(&mut conn)
        .await
        .expect("delete");
    sqlx::query(
        "INSERT INTO sessions (id, user_id, refresh_hash, created_at, last_used_at, expires_at) VALUES ('s1', 1, 'h', 1, 1, 9)",
    )
    .execute(&mut conn)
    .await
    .expect("session");
    sqlx::query("INSERT INTO rooms (id, kind, name, created_by, created_at) VALUES (1, 'group', 'general', 2, 1)")
        .execute(&mut conn)
        .await
        .expect("room");
    conn.close().await.ok();

    let store = store::Store::connect(&url, 1)
        .await
        .expect("open the store");
    store.migrate().await.expect("the upgrade");
    store.close().await;

    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .expect("reopen");
    let users: Vec<(i64, String, Option<i64>, Option<String>)> = sqlx::query_as(
        "SELECT id, username, email_verified_at, display_name FROM users ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .expect("users");
    assert_eq!(
        users,
        vec![
            (1, "alice".into(), Some(5), Some("alice's name".into())),
            (2, "bob".into(), None, Some("bob's name".into())),
        ]
    );
    let session_user: i64 = sqlx::query_scalar("SELECT user_id FROM sessions WHERE id = 's1'")
        .fetch_one(&mut conn)
        .await
        .expect("the session survived");
    assert_eq!(session_user, 1);
    let broken: Vec<sqlx::sqlite::SqliteRow> = sqlx::query("PRAGMA foreign_key_check")
        .fetch_all(&mut conn)
        .await
        .expect("foreign key check");
    assert!(broken.is_empty(), "{} dangling references", broken.len());
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO users (username, email, password_hash, created_at) VALUES ('carol', 'alice@example.com', 'h', 2) RETURNING id",
    )
    .fetch_one(&mut conn)
    .await
    .expect("a new account may hold a verified address, unverified");
    assert_eq!(id, 4, "ids are never given twice");
    let verified_twice = sqlx::query("UPDATE users SET email_verified_at = 6 WHERE id = 4")
        .execute(&mut conn)
        .await;
    assert!(
        verified_twice.is_err(),
        "an address is unique among verified accounts"
    );
    let dangling = sqlx::query(
        "INSERT INTO sessions (id, user_id, refresh_hash, created_at, last_used_at, expires_at) VALUES ('s2', 99, 'h', 1, 1, 9)",
    )
    .execute(&mut conn)
    .await;
    assert!(
        dangling.is_err(),
        "foreign keys still hold on the rebuilt table"
    );
    conn.close().await.ok();
    std::fs::remove_dir_all(&dir).ok();
}
