//! The highlighted excerpt of a hit, built here rather than by the engine
//! (`ts_headline`, FTS5's `snippet`), so that both modes give the same
//! excerpt with the same markup, and so that it is safe HTML by
//! construction: the body is escaped and the only tags are the `<mark>`s
//! added here. `ts_headline` would also drop anything that looks like a
//! tag from the text (`<div>`), and both would need markers that a body
//! cannot contain.
//!
//! A word is marked when its stem (English Snowball, what PostgreSQL's
//! index uses; SQLite's Porter stems almost always agree) is the stem of a
//! word the query looks for (not of an excluded one).

use super::query::word_ranges;
use rust_stemmers::{Algorithm, Stemmer};
use std::collections::HashSet;
use std::sync::LazyLock;
use store::SearchExpr;

/// Longest excerpt, in characters of the body (before escaping): two lines
/// of a results list.
pub const SNIPPET_CHARS: usize = 200;

/// Words of context shown before the first match when the body is cut.
const CONTEXT_WORDS: usize = 6;

static STEMMER: LazyLock<Stemmer> = LazyLock::new(|| Stemmer::create(Algorithm::English));

fn stem(word: &str) -> String {
    STEMMER.stem(&word.to_lowercase()).into_owned()
}

/// The excerpt of `body` for a hit of `expr` (see the module doc).
pub fn snippet(body: &str, expr: &SearchExpr) -> String {
    let wanted: HashSet<String> = expr
        .clauses
        .iter()
        .filter(|c| !c.negated)
        .flat_map(|c| c.phrases.iter().flatten())
        .map(|w| stem(w))
        .collect();
    let marks: Vec<std::ops::Range<usize>> = word_ranges(body)
        .filter(|r| wanted.contains(&stem(&body[r.clone()])))
        .collect();
    let (start, end) = window(body, marks.first().map(|r| r.start));
    let mut out = String::with_capacity(end - start + 32);
    if start > 0 {
        out.push('…');
    }
    let mut at = start;
    for mark in marks.iter().filter(|r| r.start >= start && r.end <= end) {
        escape_into(&mut out, &body[at..mark.start]);
        out.push_str("<mark>");
        escape_into(&mut out, &body[mark.clone()]);
        out.push_str("</mark>");
        at = mark.end;
    }
    escape_into(&mut out, &body[at..end]);
    if end < body.len() {
        out.push('…');
    }
    out
}

/// The byte range of `body` to show: all of it when short, otherwise
/// [`SNIPPET_CHARS`] from a few words before the first match, ending after
/// a whole word where one ends in reach.
fn window(body: &str, first_match: Option<usize>) -> (usize, usize) {
    if body.chars().count() <= SNIPPET_CHARS {
        return (0, body.len());
    }
    let start = match first_match {
        Some(first) => {
            let before: Vec<usize> = word_ranges(&body[..first]).map(|r| r.start).collect();
            match before.len().checked_sub(CONTEXT_WORDS) {
                Some(i) => before[i],
                None => 0,
            }
        }
        None => 0,
    };
    let limit = body[start..]
        .char_indices()
        .nth(SNIPPET_CHARS)
        .map_or(body.len(), |(i, _)| start + i);
    if limit == body.len() {
        return (start, limit);
    }
    let last_word_end = word_ranges(&body[start..limit])
        .map(|r| start + r.end)
        .filter(|&e| e < limit || !body[e..].starts_with(char::is_alphanumeric))
        .last();
    (start, last_word_end.unwrap_or(limit))
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::query::parse;

    fn snip(body: &str, q: &str) -> String {
        snippet(body, &parse(Some(q)).expect("a query"))
    }

    #[test]
    fn matched_words_are_marked_by_stem_and_case() {
        assert_eq!(
            snip("Deploying on Friday; we deployed twice", "deploy friday"),
            "<mark>Deploying</mark> on <mark>Friday</mark>; we <mark>deployed</mark> twice"
        );
    }

    #[test]
    fn the_body_is_escaped_and_excluded_words_are_not_marked() {
        assert_eq!(
            snip(r#"<b>ship</b> & "spam" it's"#, "ship -spam"),
            "&lt;b&gt;<mark>ship</mark>&lt;/b&gt; &amp; &quot;spam&quot; it&#39;s"
        );
    }

    #[test]
    fn a_long_body_is_cut_around_the_first_match() {
        let body = format!("{} needle {}", "hay ".repeat(100), "straw ".repeat(100));
        let s = snip(&body, "needle");
        assert!(s.starts_with("…hay hay"), "{s}");
        assert!(s.contains("<mark>needle</mark>"), "{s}");
        assert!(s.ends_with("straw…"), "{s}");
        assert!(s.chars().count() <= SNIPPET_CHARS + 2 + "<mark></mark>".len());
    }

    #[test]
    fn a_long_word_is_cut_at_a_character_boundary() {
        let body = "é".repeat(3 * SNIPPET_CHARS);
        let s = snip(&body, "x");
        assert_eq!(s.chars().count(), SNIPPET_CHARS + 1);
        assert!(s.ends_with('…'));
    }
}
