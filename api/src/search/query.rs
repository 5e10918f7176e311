//! The search syntax, parsed once at the edge into a [`SearchExpr`] the
//! store turns into SQL for either engine (parse, don't validate).
//!
//! Modelled on web search boxes (and PostgreSQL's `websearch_to_tsquery`),
//! and total: every string is either a query or a clear 422, never an error
//! of the engine underneath.
//!
//! * `deploy friday`: both words (in any order, anywhere in the message);
//! * `"release train"`: the words next to each other in this order (an
//!   unclosed quote runs to the end);
//! * `deploy OR release`: either (`or` in any case); OR binds tighter than
//!   the implicit AND, so `ci deploy OR release` is `ci AND (deploy OR release)`;
//! * `-spam`, `-"out of office"`: messages without it;
//! * words are runs of letters and digits: everything else (punctuation,
//!   `*`, `:`, `^`, `(`, emoji) separates words and means nothing, so
//!   `foo-bar` and `foo.bar` are the phrase `"foo bar"`; matching ignores
//!   case and English word endings (`deploying` finds `deployed`).

use crate::error::ApiError;
use store::{SearchClause, SearchExpr};

/// Longest query, in characters: a search box, not a document. Bounds the
/// work of parsing and of the statement.
pub const MAX_QUERY_CHARS: usize = 256;

/// Most words in one query: each is an index lookup (and a bind).
pub const MAX_QUERY_WORDS: usize = 16;

/// The words of `text`: its runs of letters and digits (byte ranges), as
/// both engines' tokenizers split it.
pub fn word_ranges(text: &str) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut chars = text.char_indices().peekable();
    std::iter::from_fn(move || {
        while let Some(&(_, c)) = chars.peek() {
            if c.is_alphanumeric() {
                break;
            }
            chars.next();
        }
        let (start, _) = *chars.peek()?;
        let mut end = start;
        while let Some(&(i, c)) = chars.peek() {
            if !c.is_alphanumeric() {
                break;
            }
            end = i + c.len_utf8();
            chars.next();
        }
        Some(start..end)
    })
}

fn words(text: &str) -> Vec<String> {
    word_ranges(text).map(|r| text[r].to_owned()).collect()
}

/// What the lexer finds.
enum Item {
    Or,
    Operand { negated: bool, words: Vec<String> },
}

fn lex(q: &str) -> Vec<Item> {
    let mut items = Vec::new();
    let mut rest = q;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return items;
        }
        let negated = rest.starts_with('-');
        if negated {
            rest = &rest[1..];
        }
        if let Some(phrase) = rest.strip_prefix('"') {
            let (inside, after) = phrase.split_once('"').unwrap_or((phrase, ""));
            items.push(Item::Operand {
                negated,
                words: words(inside),
            });
            rest = after;
            continue;
        }
        // A bare word ends at white space or at a quote (which opens a phrase).
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '"')
            .unwrap_or(rest.len());
        let (bare, after) = rest.split_at(end);
        rest = after;
        if !negated && bare.eq_ignore_ascii_case("or") {
            items.push(Item::Or);
        } else {
            items.push(Item::Operand {
                negated,
                words: words(bare),
            });
        }
    }
}

/// Parses `q` (the `q` parameter; `None` when absent).
pub fn parse(q: Option<&str>) -> Result<SearchExpr, ApiError> {
    let q = q.unwrap_or_default();
    if q.trim().is_empty() {
        return Err(ApiError::validation("q", "q must not be empty"));
    }
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(ApiError::validation(
            "q",
            format!("q must be at most {MAX_QUERY_CHARS} characters"),
        ));
    }
    let mut clauses: Vec<SearchClause> = Vec::new();
    let mut pending_or = false;
    for item in lex(q) {
        match item {
            Item::Or => pending_or = true,
            // Nothing to look for (`*`, `-`, `""`): ignored, but an OR
            // around it still joins its neighbours (`a OR * OR b`).
            Item::Operand { words, .. } if words.is_empty() => {}
            Item::Operand { negated, words } => {
                match clauses.last_mut() {
                    // OR joins positive alternatives; `-a OR b` is `-a b`.
                    Some(last) if pending_or && !negated && !last.negated => {
                        last.phrases.push(words)
                    }
                    _ => clauses.push(SearchClause {
                        negated,
                        phrases: vec![words],
                    }),
                }
                pending_or = false;
            }
        }
    }
    let word_count: usize = clauses.iter().flat_map(|c| &c.phrases).map(Vec::len).sum();
    if word_count > MAX_QUERY_WORDS {
        return Err(ApiError::validation(
            "q",
            format!("q may hold at most {MAX_QUERY_WORDS} words"),
        ));
    }
    if !clauses.iter().any(|c| !c.negated) {
        return Err(ApiError::validation(
            "q",
            "q must hold a word to find (letters or digits) that is not excluded with -",
        ));
    }
    Ok(SearchExpr { clauses })
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

    fn parsed(q: &str) -> Vec<SearchClause> {
        parse(Some(q)).expect(q).clauses
    }

    fn refused(q: &str) -> bool {
        matches!(parse(Some(q)), Err(ApiError::Validation { .. }))
    }

    #[test]
    fn words_are_anded_and_split_on_anything_but_letters_and_digits() {
        assert_eq!(
            parsed("deploy  Friday"),
            vec![clause(false, &[&["deploy"]]), clause(false, &[&["Friday"]])]
        );
        assert_eq!(
            parsed("foo-bar café:日本"),
            vec![
                clause(false, &[&["foo", "bar"]]),
                clause(false, &[&["café", "日本"]])
            ]
        );
    }

    #[test]
    fn quotes_make_phrases_and_an_unclosed_one_runs_to_the_end() {
        assert_eq!(
            parsed(r#"ship "release train" now"#),
            vec![
                clause(false, &[&["ship"]]),
                clause(false, &[&["release", "train"]]),
                clause(false, &[&["now"]])
            ]
        );
        assert_eq!(
            parsed(r#"a "b c"#),
            vec![clause(false, &[&["a"]]), clause(false, &[&["b", "c"]])]
        );
        assert_eq!(
            parsed(r#"x"y z"w"#),
            vec![
                clause(false, &[&["x"]]),
                clause(false, &[&["y", "z"]]),
                clause(false, &[&["w"]])
            ]
        );
    }

    #[test]
    fn or_binds_alternatives_tighter_than_and() {
        assert_eq!(
            parsed(r#"ci deploy OR "release train" or ship"#),
            vec![
                clause(false, &[&["ci"]]),
                clause(false, &[&["deploy"], &["release", "train"], &["ship"]])
            ]
        );
        assert_eq!(
            parsed("a OR * OR b"),
            vec![clause(false, &[&["a"], &["b"]])]
        );
        // A dangling OR is nothing; a lone OR is a query of nothing.
        assert_eq!(parsed("OR a OR"), vec![clause(false, &[&["a"]])]);
        assert!(refused("OR"));
    }

    #[test]
    fn a_minus_excludes_but_never_alone() {
        assert_eq!(
            parsed(r#"deploy -friday -"out of office""#),
            vec![
                clause(false, &[&["deploy"]]),
                clause(true, &[&["friday"]]),
                clause(true, &[&["out", "of", "office"]])
            ]
        );
        assert_eq!(
            parsed("-a OR b"),
            vec![clause(true, &[&["a"]]), clause(false, &[&["b"]])]
        );
        assert_eq!(
            parsed("-or x"),
            vec![clause(true, &[&["or"]]), clause(false, &[&["x"]])]
        );
        for q in ["-spam", "-", "- -", "-\"a b\""] {
            assert!(refused(q), "{q}");
        }
    }

    #[test]
    fn empty_long_and_wordless_queries_are_refused() {
        for q in ["", "   ", "*", "\"\"", "()", "^:*", "🙂"] {
            assert!(refused(q), "{q:?}");
        }
        assert!(parse(None).is_err());
        assert!(refused(&"a".repeat(MAX_QUERY_CHARS + 1)));
        assert!(parse(Some(&"é".repeat(MAX_QUERY_CHARS))).is_ok());
        let seventeen = vec!["w"; MAX_QUERY_WORDS + 1].join(" ");
        assert!(refused(&seventeen));
    }
}
