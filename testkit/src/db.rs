//! A fresh PostgreSQL database per test, dropped afterwards.
//!
//! Tests connect to one "admin" database (`test` by default) to create and
//! drop their own. A fresh server has no `test` database, so the first
//! connection creates it from the server's `postgres` database: nothing
//! needs setting up by hand beyond a user that may create databases.

use sqlx::{Connection, Executor, PgConnection};
use std::sync::OnceLock;

/// Where tests find PostgreSQL: any database the user may connect to;
/// test databases are created next to it.
pub fn admin_url() -> String {
    std::env::var("PARLEY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Test databases older than this are left over from a crashed run and dropped.
const STALE_AFTER_SECS: u64 = 2 * 3600;

pub struct TestDatabase {
    pub name: String,
    pub url: String,
    /// The database it was created from (and is dropped through).
    admin: String,
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(head, _)| head);
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TestDatabase {
    pub async fn create() -> anyhow::Result<TestDatabase> {
        Self::create_on(&admin_url()).await
    }

    /// A fresh database on the server of `admin` (a URL of any database
    /// there the user may connect to).
    pub async fn create_on(admin: &str) -> anyhow::Result<TestDatabase> {
        let mut conn = connect_admin(admin).await?;
        static CLEANED: OnceLock<()> = OnceLock::new();
        if CLEANED.set(()).is_ok() {
            drop_stale(&mut conn).await;
        }
        let name = format!(
            "parley_test_{}_{}",
            unix_now(),
            uuid::Uuid::new_v4().simple()
        );
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        Ok(TestDatabase {
            url: with_database(admin, &name),
            name,
            admin: admin.to_owned(),
        })
    }

    pub async fn drop_database(&self) {
        if let Ok(mut conn) = connect_admin(&self.admin).await {
            let _ = conn
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                )))
                .await;
        }
    }
}

/// SQLSTATE of "database does not exist".
const INVALID_CATALOG_NAME: &str = "3D000";
/// SQLSTATE of "database already exists" (another test won the race).
const DUPLICATE_DATABASE: &str = "42P04";
/// SQLSTATE of a unique violation: how PostgreSQL reports a duplicate
/// database name when the other `CREATE DATABASE` has not committed yet.
const UNIQUE_VIOLATION: &str = "23505";

/// Connects to the admin database, creating it first if the server does
/// not have it.
async fn connect_admin(admin: &str) -> anyhow::Result<PgConnection> {
    use anyhow::Context;
    match PgConnection::connect(admin).await {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(INVALID_CATALOG_NAME) => {}
        other => {
            return other.with_context(|| {
                format!(
                    "connecting to the test server {} (set PARLEY_TEST_DATABASE_URL)",
                    shared::config::redact_url(admin)
                )
            });
        }
    }
    let name = database_name(admin).context("PARLEY_TEST_DATABASE_URL names no database")?;
    let mut server = PgConnection::connect(&with_database(admin, "postgres"))
        .await
        .with_context(|| {
            format!("database {name} is missing, and creating it needs the `postgres` database")
        })?;
    match server
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .await
    {
        Ok(_) => {}
        Err(sqlx::Error::Database(e))
            if matches!(
                e.code().as_deref(),
                Some(DUPLICATE_DATABASE | UNIQUE_VIOLATION)
            ) => {}
        Err(e) => {
            return Err(e).with_context(|| format!("creating the test admin database {name}"));
        }
    }
    let _ = server.close().await;
    Ok(PgConnection::connect(admin).await?)
}

/// The database part of a `postgres://` URL.
fn database_name(url: &str) -> Option<&str> {
    let base = url.split_once('?').map_or(url, |(b, _)| b);
    let (_, name) = base.split_once("://")?.1.split_once('/')?;
    (!name.is_empty() && !name.contains('"')).then_some(name)
}

async fn drop_stale(conn: &mut PgConnection) {
    let names: Vec<(String,)> =
        sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'parley_test_%'")
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
    let now = unix_now();
    for (name,) in names {
        let created = name
            .split('_')
            .nth(2)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(now);
        if now.saturating_sub(created) > STALE_AFTER_SECS {
            let _ = conn
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_replaced_in_the_url() {
        assert_eq!(
            with_database("postgres://u@h:5432/test", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/test?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }

    #[test]
    fn the_database_name_is_read_from_the_url() {
        assert_eq!(database_name("postgres://u@h:5432/test"), Some("test"));
        assert_eq!(
            database_name("postgres://u@h/t2?sslmode=disable"),
            Some("t2")
        );
        assert_eq!(database_name("postgres://u@h"), None);
        assert_eq!(database_name("postgres://u@h/"), None);
    }

    /// A server without the admin database gets it: the test names an
    /// admin database that does not exist yet and connects to it from
    /// several tasks at once (as parallel tests do); all get in.
    #[tokio::test]
    async fn a_missing_admin_database_is_created() {
        let name = format!(
            "parley_test_{}_{}",
            unix_now(),
            uuid::Uuid::new_v4().simple()
        );
        let url = with_database(&admin_url(), &name);
        let mut racing = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let url = url.clone();
            racing.spawn(async move { connect_admin(&url).await.map_err(|e| format!("{e:#}")) });
        }
        while let Some(joined) = racing.join_next().await {
            let mut conn = joined.expect("task").expect("creates and connects");
            let (current,): (String,) = sqlx::query_as("SELECT current_database()")
                .fetch_one(&mut conn)
                .await
                .expect("query");
            assert_eq!(current, name);
            let _ = conn.close().await;
        }
        // Named like a test database, so a crashed run's copy is cleaned up too.
        let mut server = connect_admin(&admin_url()).await.expect("admin");
        server
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE {name} WITH (FORCE)"
            )))
            .await
            .expect("drop");
    }
}
