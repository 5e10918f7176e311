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
