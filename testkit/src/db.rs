//! A fresh PostgreSQL database per test, dropped afterwards.

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
        let mut conn = PgConnection::connect(admin).await?;
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
        if let Ok(mut conn) = PgConnection::connect(&self.admin).await {
            let _ = conn
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                )))
                .await;
        }
    }
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
}
