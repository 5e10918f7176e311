//! What reached PostgreSQL during a window: the database's row of
//! `pg_stat_database` read at its start and end.
//!
//! PostgreSQL's statistics lag: each backend flushes its counters at most
//! once a second while busy, and an idle backend's last ones after up to
//! [`PG_STATS_FLUSH`]. A window is therefore sampled after that long of
//! quiet on both sides, and its figures are the work of the window plus
//! whatever else the database did during those quiet periods (which a run
//! keeps free of load).
//!
//! `pg_stat_statements` would count statements directly but needs a
//! preloaded library that a stock server lacks, so it is not used:
//! statements are derived from the gateways' marker-batch counters (each
//! batch is one transaction of a known shape, see [`crate::scenario::reads`]).

use serde::{Deserialize, Serialize};
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use std::time::Duration;

/// PostgreSQL's PGSTAT_IDLE_INTERVAL (10 s, how long an idle backend may
/// keep pending statistics) plus its 1 s minimum flush interval.
pub const PG_STATS_FLUSH: Duration = Duration::from_secs(11);

/// Time limit of connecting or of one sample.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The counters of one database, as read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbCounters {
    pub xact_commit: i64,
    pub xact_rollback: i64,
    pub tup_inserted: i64,
    pub tup_updated: i64,
    pub tup_fetched: i64,
}

/// One connection to the database under test, kept for the run.
pub struct DbProbe {
    conn: PgConnection,
}

impl DbProbe {
    pub async fn connect(url: &str) -> Result<Self, String> {
        let conn = tokio::time::timeout(SAMPLE_TIMEOUT, PgConnection::connect(url))
            .await
            .map_err(|_| "PostgreSQL: no connection within 10 s".to_owned())?
            .map_err(|e| format!("PostgreSQL: {e}"))?;
        Ok(Self { conn })
    }

    /// The database's counters now (one transaction of the tool's own).
    pub async fn sample(&mut self) -> Result<DbCounters, String> {
        let row: (i64, i64, i64, i64, i64) = tokio::time::timeout(
            SAMPLE_TIMEOUT,
            sqlx::query_as(
                "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_fetched \
                 FROM pg_stat_database WHERE datname = current_database()",
            )
            .fetch_one(&mut self.conn),
        )
        .await
        .map_err(|_| "PostgreSQL: pg_stat_database did not answer within 10 s".to_owned())?
        .map_err(|e| format!("PostgreSQL: reading pg_stat_database: {e}"))?;
        Ok(DbCounters {
            xact_commit: row.0,
            xact_rollback: row.1,
            tup_inserted: row.2,
            tup_updated: row.3,
            tup_fetched: row.4,
        })
    }
}

/// The database's work over a window, per second of `per`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DbWindow {
    /// Differences of the counters; `xact_commit` without the tool's own
    /// first sample (its commit is counted in the second).
    pub delta: DbCounters,
    /// The length the rates are divided by (the load's, not the quiet
    /// periods around it).
    pub per_s: f64,
    pub commits_per_s: f64,
    pub rows_updated_per_s: f64,
    /// Quiet before and after the window, for the statistics to flush.
    pub settle_s: f64,
}

pub fn window(
    before: &DbCounters,
    after: &DbCounters,
    per: Duration,
    settle: Duration,
) -> DbWindow {
    let delta = DbCounters {
        xact_commit: (after.xact_commit - before.xact_commit - 1).max(0),
        xact_rollback: after.xact_rollback - before.xact_rollback,
        tup_inserted: after.tup_inserted - before.tup_inserted,
        tup_updated: after.tup_updated - before.tup_updated,
        tup_fetched: after.tup_fetched - before.tup_fetched,
    };
    let secs = per.as_secs_f64();
    let rate = |n: i64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    DbWindow {
        commits_per_s: rate(delta.xact_commit),
        rows_updated_per_s: rate(delta.tup_updated),
        delta,
        per_s: secs,
        settle_s: settle.as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_excludes_the_tools_own_sample() {
        let before = DbCounters {
            xact_commit: 100,
            tup_updated: 10,
            ..DbCounters::default()
        };
        let after = DbCounters {
            xact_commit: 251,
            tup_updated: 1010,
            ..DbCounters::default()
        };
        let w = window(&before, &after, Duration::from_secs(30), PG_STATS_FLUSH);
        assert_eq!(w.delta.xact_commit, 150);
        assert_eq!(w.commits_per_s, 5.0);
        assert!((w.rows_updated_per_s - 33.333).abs() < 0.01);
    }
}
