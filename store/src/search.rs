//! Full-text search over the messages of the caller's rooms.
//!
//! The api parses the user's query into a [`SearchExpr`] (words, phrases,
//! OR, negation; see `api/src/search/query.rs`); here it becomes SQL for the
//! engine underneath, every word a bind parameter, so no user text is ever
//! part of a statement nor of an FTS5 expression the engine parses:
//!
//! * PostgreSQL: `phraseto_tsquery` of each phrase, combined with the
//!   tsquery operators `||`, `&&` and `!!`, matched against the stored
//!   `room_events.search_vector` through its GIN index and ranked by
//!   `ts_rank` (normalised by the body's length, so a long message does
//!   not win by length alone).
//! * SQLite: an FTS5 expression of quoted phrases (`"w1 w2"` holds only
//!   letters and digits, so nothing in it is FTS5 syntax), matched against
//!   the `message_search` table the triggers keep, ranked by `bm25`.
//!
//! Membership is part of the statement (a join on the caller's
//! `room_members` rows): a search cannot reach a room the caller is not in
//! now, whatever filters it names. Tombstones are never matched: their body
//! is NULL, so they have no search vector and no FTS5 row, and the
//! statement says `deleted_at IS NULL` as well.
//!
//! Pages are a keyset on (score, created_at, room_id, seq), all descending:
//! each page is "the best hits after the last one of the previous page", so
//! no hit is served twice and none is skipped however deep a client pages,
//! and each page costs the same. `ts_rank` depends only on the message and
//! the query, so a hit's score is the same on every page; FTS5's `bm25`
//! also depends on the whole index (how many messages hold each word), so
//! on a single node a message posted between two pages can shift scores
//! slightly (documented in docs/api.md).

use crate::{Backend, Result, Store, StoreError};
use shared::{RoomId, UserId};
use sqlx::Row;
use sqlx::any::AnyArguments;

/// A parsed query: every clause must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchExpr {
    /// At least one is not negated (the api makes sure: a query of
    /// negations alone would match nearly every message, through no index).
    pub clauses: Vec<SearchClause>,
}

/// One of a query's conditions: any of its phrases occurs (or, negated,
/// none does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchClause {
    pub negated: bool,
    /// Each phrase is its words in order (one word is a phrase of one);
    /// words hold only letters and digits.
    pub phrases: Vec<Vec<String>>,
}

/// Where the previous page ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SearchKey {
    pub score: f64,
    pub created_at: i64,
    pub room_id: RoomId,
    pub seq: i64,
}

/// A search on behalf of `caller`.
#[derive(Clone, Debug)]
pub struct SearchRequest<'a> {
    pub caller: UserId,
    pub expr: &'a SearchExpr,
    pub room: Option<RoomId>,
    pub sender: Option<UserId>,
    /// Only messages created strictly before (ms).
    pub before: Option<i64>,
    /// Only messages created at or after (ms).
    pub after: Option<i64>,
    /// Only hits after this one.
    pub page_after: Option<SearchKey>,
    pub limit: u32,
}

/// A message that matched, best first.
#[derive(Clone, Debug)]
pub struct SearchHit {
    pub room_id: RoomId,
    pub seq: i64,
    pub sender_id: UserId,
    pub created_at: i64,
    pub edited_at: Option<i64>,
    /// Its current body (for the snippet).
    pub body: String,
    /// Higher is better; comparable only within one search.
    pub score: f64,
}

impl SearchHit {
    /// The key a next page starts after.
    pub fn key(&self) -> SearchKey {
        SearchKey {
            score: self.score,
            created_at: self.created_at,
            room_id: self.room_id,
            seq: self.seq,
        }
    }
}

/// What [`Store::explain_search`] shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Explain {
    /// The plan the engine chooses.
    Plan,
    /// The plan PostgreSQL chooses when it avoids sequential scans where it
    /// can, as it does by itself once a table is large: on the few rows of
    /// a test a scan is cheaper, and the question is then whether the
    /// index *can* serve the statement. (SQLite: the plan.)
    PlanWithoutScans,
    /// PostgreSQL: the plan run, with real row counts and buffers (the
    /// benchmark). (SQLite: the plan.)
    Analyze,
}

/// How long one search may run on PostgreSQL before it is cancelled: a
/// query of common words across many large rooms ranks every match, and
/// one user must not hold a connection and a core for longer than this.
pub const SEARCH_TIMEOUT_MS: u64 = 5_000;

/// SQLSTATE of a statement cancelled by `statement_timeout`.
const QUERY_CANCELED: &str = "57014";

/// Bind values in order.
enum Bind {
    Int(i64),
    Float(f64),
    Text(String),
}

/// A statement and its binds, numbered as it was built.
struct Statement {
    sql: String,
    binds: Vec<Bind>,
}

impl Statement {
    fn new() -> Self {
        Statement {
            sql: String::new(),
            binds: Vec::new(),
        }
    }

    /// Adds a bind and returns its placeholder.
    fn bind(&mut self, value: Bind) -> String {
        self.binds.push(value);
        format!("${}", self.binds.len())
    }

    fn arguments(self) -> (String, AnyArguments) {
        use sqlx::Arguments;
        let mut args = AnyArguments::default();
        for bind in self.binds {
            // Encoding an i64, f64 or String into AnyArguments cannot fail.
            let _ = match bind {
                Bind::Int(v) => args.add(v),
                Bind::Float(v) => args.add(v),
                Bind::Text(v) => args.add(v),
            };
        }
        (self.sql, args)
    }
}

/// The PostgreSQL tsquery expression for `expr` (placeholders into `st`).
fn postgres_tsquery(st: &mut Statement, expr: &SearchExpr) -> String {
    let clauses: Vec<String> = expr
        .clauses
        .iter()
        .map(|clause| {
            let phrases: Vec<String> = clause
                .phrases
                .iter()
                .map(|words| {
                    let p = st.bind(Bind::Text(words.join(" ")));
                    format!("phraseto_tsquery('parley_search', {p})")
                })
                .collect();
            let any = format!("({})", phrases.join(" || "));
            if clause.negated {
                format!("(!! {any})")
            } else {
                any
            }
        })
        .collect();
    format!("({})", clauses.join(" && "))
}

/// The FTS5 expression for `expr`: positive clauses ANDed, then each
/// negated one taken away with FTS5's binary NOT.
pub(crate) fn fts5_expression(expr: &SearchExpr) -> String {
    let clause = |c: &SearchClause| {
        let phrases: Vec<String> = c
            .phrases
            .iter()
            // Words hold only letters and digits; a stray quote is still
            // doubled, as FTS5 string syntax wants.
            .map(|words| format!("\"{}\"", words.join(" ").replace('"', "\"\"")))
            .collect();
        format!("({})", phrases.join(" OR "))
    };
    let positive: Vec<String> = expr
        .clauses
        .iter()
        .filter(|c| !c.negated)
        .map(clause)
        .collect();
    let mut out = format!("({})", positive.join(" AND "));
    for negated in expr.clauses.iter().filter(|c| c.negated) {
        out.push_str(" NOT ");
        out.push_str(&clause(negated));
    }
    out
}

/// The filters and the keyset shared by both engines' statements, on the
/// columns of `e` (room_events) and of the hit's `score`.
fn filters(st: &mut Statement, req: &SearchRequest<'_>) -> String {
    let mut sql = String::new();
    if let Some(room) = req.room {
        sql.push_str(&format!(" AND e.room_id = {}", st.bind(Bind::Int(room.0))));
    }
    if let Some(sender) = req.sender {
        sql.push_str(&format!(
            " AND e.sender_id = {}",
            st.bind(Bind::Int(sender.0))
        ));
    }
    if let Some(before) = req.before {
        sql.push_str(&format!(
            " AND e.created_at < {}",
            st.bind(Bind::Int(before))
        ));
    }
    if let Some(after) = req.after {
        sql.push_str(&format!(
            " AND e.created_at >= {}",
            st.bind(Bind::Int(after))
        ));
    }
    sql
}

fn keyset(st: &mut Statement, page_after: Option<SearchKey>) -> String {
    match page_after {
        None => String::new(),
        Some(key) => format!(
            "WHERE (score, created_at, room_id, seq) < ({}, {}, {}, {})",
            st.bind(Bind::Float(key.score)),
            st.bind(Bind::Int(key.created_at)),
            st.bind(Bind::Int(key.room_id.0)),
            st.bind(Bind::Int(key.seq)),
        ),
    }
}

const ORDER: &str = "ORDER BY score DESC, created_at DESC, room_id DESC, seq DESC";

fn statement(backend: Backend, req: &SearchRequest<'_>) -> Statement {
    let mut st = Statement::new();
    let caller = st.bind(Bind::Int(req.caller.0));
    let inner = match backend {
        Backend::Postgres => {
            let tsquery = postgres_tsquery(&mut st, req.expr);
            let filters = filters(&mut st, req);
            format!(
                "SELECT e.room_id, e.seq, e.sender_id, e.created_at, e.edited_at, e.body, \
                     ts_rank(e.search_vector, {tsquery}, 1)::float8 AS score \
                 FROM room_events e \
                 JOIN room_members m ON m.room_id = e.room_id AND m.user_id = {caller} \
                 WHERE e.search_vector IS NOT NULL AND e.search_vector @@ {tsquery} \
                     AND e.deleted_at IS NULL{filters}"
            )
        }
        Backend::Sqlite => {
            let matched = st.bind(Bind::Text(fts5_expression(req.expr)));
            let filters = filters(&mut st, req);
            format!(
                "SELECT e.room_id, e.seq, e.sender_id, e.created_at, e.edited_at, e.body, \
                     -bm25(message_search) AS score \
                 FROM message_search \
                 JOIN room_events e ON e.room_id = (message_search.rowid >> 32) \
                     AND e.seq = (message_search.rowid & 4294967295) \
                 JOIN room_members m ON m.room_id = e.room_id AND m.user_id = {caller} \
                 WHERE message_search MATCH {matched} AND e.kind = 'message.created' \
                     AND e.deleted_at IS NULL{filters}"
            )
        }
    };
    let keyset = keyset(&mut st, req.page_after);
    let limit = st.bind(Bind::Int(i64::from(req.limit)));
    st.sql = format!(
        "SELECT room_id, seq, sender_id, created_at, edited_at, body, score \
         FROM ({inner}) hits {keyset} {ORDER} LIMIT {limit}"
    );
    st
}

impl Store {
    /// The best `req.limit` messages matching `req` in rooms the caller
    /// is a member of, best first (see the module doc).
    #[tracing::instrument(skip(self, req), fields(caller = %req.caller, clauses = req.expr.clauses.len()))]
    pub async fn search_messages(&self, req: &SearchRequest<'_>) -> Result<Vec<SearchHit>> {
        let rows = match self.backend {
            Backend::Postgres => {
                let outcome = self
                    .read(|| async {
                        let (sql, args) = statement(self.backend, req).arguments();
                        let mut tx = self.pool.begin().await?;
                        // Both settings end with the transaction (is_local):
                        // * a time bound per search (see SEARCH_TIMEOUT_MS);
                        // * a plan for this query's words: the statement is
                        //   prepared, and a generic plan, made once without
                        //   the words, cannot know whether they are rare (start
                        //   from the GIN index) or common (start from the
                        //   caller's rooms). Measured on 1M messages
                        //   (docs/benchmarks.md), generic plans made the
                        //   median search ten times slower.
                        sqlx::query(
                            "SELECT set_config('statement_timeout', $1, true), \
                                 set_config('plan_cache_mode', 'force_custom_plan', true)",
                        )
                        .bind(SEARCH_TIMEOUT_MS.to_string())
                        .execute(&mut *tx)
                        .await?;
                        let rows = sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
                            .fetch_all(&mut *tx)
                            .await?;
                        tx.commit().await?;
                        Ok::<_, sqlx::Error>(rows)
                    })
                    .await;
                match outcome {
                    Err(StoreError::Database(sqlx::Error::Database(db)))
                        if db.code().as_deref() == Some(QUERY_CANCELED) =>
                    {
                        return Err(StoreError::TimedOut);
                    }
                    other => other?,
                }
            }
            Backend::Sqlite => {
                self.read(|| async {
                    let (sql, args) = statement(self.backend, req).arguments();
                    sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
                        .fetch_all(&self.pool)
                        .await
                })
                .await?
            }
        };
        rows.iter()
            .map(|row| {
                Ok(SearchHit {
                    room_id: RoomId(row.try_get("room_id")?),
                    seq: row.try_get("seq")?,
                    sender_id: UserId(row.try_get("sender_id")?),
                    created_at: row.try_get("created_at")?,
                    edited_at: row.try_get("edited_at")?,
                    body: row
                        .try_get::<Option<String>, _>("body")?
                        .unwrap_or_default(),
                    score: row.try_get("score")?,
                })
            })
            .collect()
    }

    /// The plan of the statement a search runs, one line per node: the
    /// proof (in the suite and the benchmark) that a search is served by the
    /// full-text index and the primary keys, not by a scan of the messages.
    pub async fn explain_search(
        &self,
        req: &SearchRequest<'_>,
        how: Explain,
    ) -> Result<Vec<String>> {
        let (sql, args) = statement(self.backend, req).arguments();
        let rows = match self.backend {
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                if how == Explain::PlanWithoutScans {
                    sqlx::query("SET LOCAL enable_seqscan = off")
                        .execute(&mut *tx)
                        .await?;
                }
                let options = match how {
                    Explain::Analyze => "ANALYZE, BUFFERS, COSTS OFF, TIMING OFF",
                    Explain::Plan | Explain::PlanWithoutScans => "COSTS OFF",
                };
                let rows = sqlx::query_with(
                    sqlx::AssertSqlSafe(format!("EXPLAIN ({options}) {sql}")),
                    args,
                )
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                rows.iter()
                    .map(|r| r.try_get::<String, _>(0))
                    .collect::<Result<Vec<_>, _>>()?
            }
            Backend::Sqlite => {
                let rows = sqlx::query_with(
                    sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")),
                    args,
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| r.try_get::<String, _>("detail"))
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clause(negated: bool, phrases: &[&[&str]]) -> SearchClause {
        SearchClause {
            negated,
            phrases: phrases
                .iter()
                .map(|p| p.iter().map(|w| (*w).to_owned()).collect())
                .collect(),
        }
    }

    #[test]
    fn fts5_expressions_quote_every_phrase_and_put_negations_last() {
        let expr = SearchExpr {
            clauses: vec![
                clause(true, &[&["spam"]]),
                clause(false, &[&["deploy"]]),
                clause(false, &[&["friday"], &["release", "train"]]),
            ],
        };
        assert_eq!(
            fts5_expression(&expr),
            r#"(("deploy") AND ("friday" OR "release train")) NOT ("spam")"#
        );
    }

    #[test]
    fn postgres_binds_every_phrase() {
        let expr = SearchExpr {
            clauses: vec![
                clause(false, &[&["a"], &["b", "c"]]),
                clause(true, &[&["d"]]),
            ],
        };
        let mut st = Statement::new();
        let q = postgres_tsquery(&mut st, &expr);
        assert_eq!(
            q,
            "((phraseto_tsquery('parley_search', $1) || phraseto_tsquery('parley_search', $2)) \
             && (!! (phraseto_tsquery('parley_search', $3))))"
        );
        assert_eq!(st.binds.len(), 3);
    }
}
