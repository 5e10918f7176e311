//! Text the store can hold, checked once at the edge: every JSON string
//! (keys too) and every query parameter, before any handler sees it.
//!
//! PostgreSQL's `text` cannot hold U+0000, and a lone UTF-16 surrogate is no
//! character at all, while SQLite stores both. Letting such input reach the
//! store made the engines disagree (a 500 on PostgreSQL, a 4xx or a stored
//! oddity on SQLite), so the extractors in `extract.rs` reject it with
//! `422 validation_failed`, the same on every endpoint and engine. Raw
//! control bytes inside a JSON string are already a syntax error; these code
//! points can only arrive escaped in JSON (`\u0000`, `\ud800`) or
//! percent-encoded in a query string (`%00`, bytes that are not UTF-8).
//!
//! Valid bodies almost never contain a `\u` escape, so the JSON check is one
//! `memchr`-like pass in the common case; only a body with escapes is walked
//! to find the field to name.

use percent_encoding::percent_decode;

/// Input holding text the store cannot hold, and where.
#[derive(Debug, PartialEq, Eq)]
pub struct Unstorable {
    /// The field (`name`, `a.b`, `list[2]`) or query parameter holding it;
    /// `None` when it is in a key or parameter name itself at the top level.
    pub field: Option<String>,
}

/// The first string of a JSON document that holds NUL or an unpaired
/// surrogate, if any, with the byte offset of every such `\uXXXX` escape.
///
/// `json` need not be valid JSON: the walk never panics, and its answer for
/// malformed input only matters once the caller has checked the syntax.
pub fn find_in_json(json: &[u8]) -> Option<(Unstorable, Vec<usize>)> {
    if !json.windows(2).any(|w| w == b"\\u") {
        return None;
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut found: Option<Unstorable> = None;
    let mut escapes = Vec::new();
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'{' => stack.push(Frame::Object {
                key: None,
                want_key: true,
            }),
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Object { want_key, .. }) => *want_key = true,
                Some(Frame::Array { index }) => *index += 1,
                None => {}
            },
            b':' => {
                if let Some(Frame::Object { want_key, .. }) = stack.last_mut() {
                    *want_key = false;
                }
            }
            b'"' => {
                let string = read_string(json, i + 1);
                let is_key = matches!(stack.last(), Some(Frame::Object { want_key: true, .. }));
                if !string.bad.is_empty() && found.is_none() {
                    // A bad key is named by the object that holds it.
                    let holder = if is_key {
                        &stack[..stack.len() - 1]
                    } else {
                        &stack[..]
                    };
                    found = Some(Unstorable {
                        field: path(holder),
                    });
                }
                escapes.extend(string.bad);
                if is_key && let Some(Frame::Object { key, .. }) = stack.last_mut() {
                    *key = Some(string.text);
                }
                i = string.end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    found.map(|f| (f, escapes))
}

/// `query` (the raw, still percent-encoded query string) has a parameter
/// whose name or value decodes to NUL or to bytes that are not UTF-8.
pub fn find_in_query(query: &str) -> Option<Unstorable> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name: Vec<u8> = percent_decode(name.as_bytes()).collect();
        let Some(name) = storable(&name) else {
            return Some(Unstorable { field: None });
        };
        let value: Vec<u8> = percent_decode(value.as_bytes()).collect();
        if storable(&value).is_none() {
            return Some(Unstorable {
                field: Some(name.replace('+', " ")),
            });
        }
    }
    None
}

fn storable(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|s| !s.contains('\0'))
}

enum Frame {
    Object { key: Option<String>, want_key: bool },
    Array { index: usize },
}

/// `a.b[2].c` for the frames' current keys and indexes; `None` at the top.
fn path(frames: &[Frame]) -> Option<String> {
    let mut out = String::new();
    for frame in frames {
        match frame {
            Frame::Object { key: Some(k), .. } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Frame::Object { key: None, .. } => {}
            Frame::Array { index } => out.push_str(&format!("[{index}]")),
        }
    }
    (!out.is_empty()).then_some(out)
}

struct JsonString {
    /// Offset just past the closing quote (or the end of the input).
    end: usize,
    /// The decoded text (lossy; it only names fields).
    text: String,
    /// Offsets of escapes of NUL or an unpaired surrogate.
    bad: Vec<usize>,
}

/// Reads a JSON string whose content starts at `start`.
fn read_string(json: &[u8], start: usize) -> JsonString {
    let mut text = Vec::new();
    let mut bad = Vec::new();
    let mut i = start;
    while i < json.len() {
        match json[i] {
            b'"' => {
                return JsonString {
                    end: i + 1,
                    text: String::from_utf8_lossy(&text).into_owned(),
                    bad,
                };
            }
            b'\\' => match json.get(i + 1) {
                Some(b'u') => {
                    let Some(unit) = hex4(json, i + 2) else {
                        i += 2;
                        continue;
                    };
                    match unit {
                        0 => {
                            bad.push(i);
                            i += 6;
                        }
                        0xD800..=0xDBFF => {
                            let low = (json.get(i + 6..i + 8) == Some(b"\\u"))
                                .then(|| hex4(json, i + 8))
                                .flatten()
                                .filter(|u| (0xDC00..=0xDFFF).contains(u));
                            match low {
                                Some(low) => {
                                    let c = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                                    push_char(&mut text, c);
                                    i += 12;
                                }
                                None => {
                                    bad.push(i);
                                    i += 6;
                                }
                            }
                        }
                        0xDC00..=0xDFFF => {
                            bad.push(i);
                            i += 6;
                        }
                        c => {
                            push_char(&mut text, c);
                            i += 6;
                        }
                    }
                }
                Some(&c) => {
                    text.push(match c {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        other => other,
                    });
                    i += 2;
                }
                None => i += 1,
            },
            b => {
                text.push(b);
                i += 1;
            }
        }
    }
    JsonString {
        end: json.len(),
        text: String::from_utf8_lossy(&text).into_owned(),
        bad,
    }
}

fn hex4(json: &[u8], at: usize) -> Option<u32> {
    let digits = std::str::from_utf8(json.get(at..at + 4)?).ok()?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}

fn push_char(out: &mut Vec<u8>, c: u32) {
    let c = char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER);
    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(json: &str) -> Option<Option<String>> {
        find_in_json(json.as_bytes()).map(|(u, _)| u.field)
    }

    #[test]
    fn ordinary_json_and_harmless_escapes_pass() {
        for ok in [
            r#"{"name": "general"}"#,
            r#"{"name": "tab\there \u00e9 \u0001 \ud83d\ude00"}"#,
            r#"{"name": "a backslash then u0000: \\u0000"}"#,
            r#"{"body": "\"\\u0000\""}"#,
            "",
            "not json at all \\",
        ] {
            assert_eq!(field(ok), None, "{ok}");
        }
    }

    #[test]
    fn nul_and_unpaired_surrogates_are_found_and_their_field_named() {
        assert_eq!(field(r#"{"name": "a\u0000b"}"#), Some(Some("name".into())));
        assert_eq!(
            field(r#"{"login": "x", "password": "\ud800"}"#),
            Some(Some("password".into()))
        );
        assert_eq!(
            field(r#"{"body": "\udc00 low first"}"#),
            Some(Some("body".into()))
        );
        assert_eq!(
            field(r#"{"body": "\ud800\u0041 high then not low"}"#),
            Some(Some("body".into()))
        );
        assert_eq!(
            field(r#"{"a": {"b": [1, "ok", "\u0000"]}}"#),
            Some(Some("a.b[2]".into()))
        );
        assert_eq!(
            field(r#"{"x\u0000": 1}"#),
            Some(None),
            "a bad key at the top names no field"
        );
        assert_eq!(
            field(r#"{"outer": {"k": 1, "\u0000": 2}}"#),
            Some(Some("outer".into()))
        );
    }

    #[test]
    fn every_bad_escape_is_located() {
        let json = r#"{"a": "\u0000", "b": "\ud800\u0000"}"#;
        let (_, at) = find_in_json(json.as_bytes()).unwrap();
        let escapes: Vec<&str> = at.iter().map(|&i| &json[i..i + 6]).collect();
        assert_eq!(escapes, ["\\u0000", "\\ud800", "\\u0000"]);
    }

    #[test]
    fn query_values_and_names_must_decode_to_text_without_nul() {
        assert_eq!(find_in_query(""), None);
        assert_eq!(find_in_query("username=bob&limit=5"), None);
        assert_eq!(find_in_query("username=%C3%A9l%C3%A8ve+x&&flag"), None);
        assert_eq!(
            find_in_query("limit=5&username=b%00ob"),
            Some(Unstorable {
                field: Some("username".into())
            })
        );
        assert_eq!(
            find_in_query("username=%ED%A0%80"),
            Some(Unstorable {
                field: Some("username".into())
            }),
            "an encoded surrogate is not UTF-8"
        );
        assert_eq!(
            find_in_query("username=%FF"),
            Some(Unstorable {
                field: Some("username".into())
            })
        );
        assert_eq!(
            find_in_query("us%00er=bob"),
            Some(Unstorable { field: None })
        );
    }
}
