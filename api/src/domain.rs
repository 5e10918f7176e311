//! Parsed request values: once a handler holds one, it is valid.
//!
//! Each `parse` returns the validation error a client sees, naming the field.

use crate::error::ApiError;

/// 3 to 32 characters of `a-z`, `0-9`, `_`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let ok = (3..=32).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(ApiError::validation(
                "username",
                "username must be 3 to 32 characters of a-z, 0-9 and _",
            ));
        }
        // Deleted accounts are renamed `deleted_<id>`.
        if s.starts_with(store::DELETED_USERNAME_PREFIX) {
            return Err(ApiError::validation(
                "username",
                "usernames starting with deleted_ are reserved",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address with valid RFC 5322 syntax, stored lowercase so that
/// uniqueness ignores case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

/// The longest address SMTP can carry (RFC 5321 path limit).
const MAX_EMAIL_LEN: usize = 254;

impl Email {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let s = s.trim();
        let valid = s.len() <= MAX_EMAIL_LEN
            && email_address::EmailAddress::parse_with_options(
                s,
                email_address::Options::default()
                    .without_display_text()
                    .without_domain_literal(),
            )
            .is_ok();
        if valid {
            Ok(Self(s.to_lowercase()))
        } else {
            Err(ApiError::validation(
                "email",
                "email must be a valid address such as name@example.com",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// At least 10 characters and at most 1024 bytes (argon2 is fed the bytes;
/// a cap keeps a huge password from costing more than a normal one).
pub struct Password(String);

pub const MIN_PASSWORD_CHARS: usize = 10;
pub const MAX_PASSWORD_BYTES: usize = 1024;

impl Password {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        if s.chars().count() < MIN_PASSWORD_CHARS {
            return Err(ApiError::validation(
                "password",
                "password must be at least 10 characters",
            ));
        }
        if s.len() > MAX_PASSWORD_BYTES {
            return Err(ApiError::validation(
                "password",
                "password must be at most 1024 bytes",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A group room's name: 1 to 100 characters after trimming, no control characters.
pub struct RoomName(String);

pub const MAX_ROOM_NAME_CHARS: usize = 100;

impl RoomName {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let s = s.trim();
        let count = s.chars().count();
        if count == 0 || count > MAX_ROOM_NAME_CHARS {
            return Err(ApiError::validation(
                "name",
                "name must be 1 to 100 characters",
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(ApiError::validation(
                "name",
                "name must not contain control characters",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A room's topic: up to 500 characters after trimming (empty clears it);
/// newlines and tabs are fine, other control characters are not.
pub struct RoomTopic(String);

pub const MAX_TOPIC_CHARS: usize = 500;

impl RoomTopic {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let s = s.trim();
        if s.chars().count() > MAX_TOPIC_CHARS {
            return Err(ApiError::validation(
                "topic",
                "topic must be at most 500 characters",
            ));
        }
        if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err(ApiError::validation(
                "topic",
                "topic must not contain control characters other than newline and tab",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A message body: 1 to 4000 characters, not blank, no NUL (which
/// PostgreSQL text cannot hold). Newlines and tabs are fine.
pub struct MessageBody(String);

pub const MAX_BODY_CHARS: usize = 4000;

impl MessageBody {
    pub fn parse(s: String) -> Result<Self, ApiError> {
        let count = s.chars().count();
        if count == 0 || count > MAX_BODY_CHARS {
            return Err(ApiError::validation(
                "body",
                "body must be 1 to 4000 characters",
            ));
        }
        if s.trim().is_empty() {
            return Err(ApiError::validation("body", "body must not be blank"));
        }
        if s.contains('\0') {
            return Err(ApiError::validation(
                "body",
                "body must not contain NUL characters",
            ));
        }
        Ok(Self(s))
    }

    /// The body of a message that carries attachments: empty (a file
    /// without a caption), or a body as [`MessageBody::parse`] takes it.
    pub fn parse_caption(s: String) -> Result<Self, ApiError> {
        if s.is_empty() {
            Ok(Self(s))
        } else {
            Self::parse(s)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The attachments a post names: at most
/// [`shared::model::MAX_ATTACHMENTS_PER_MESSAGE`], each once. Ids that do
/// not look like ids are left to the store to refuse with the rest
/// (`invalid_attachment`), so every unusable id gets the same answer.
pub fn attachment_ids(ids: Vec<String>) -> Result<Vec<String>, ApiError> {
    if ids.len() > shared::model::MAX_ATTACHMENTS_PER_MESSAGE {
        return Err(ApiError::validation(
            "attachment_ids",
            "a message carries at most 10 attachments",
        ));
    }
    for (i, id) in ids.iter().enumerate() {
        if ids[..i].contains(id) {
            return Err(ApiError::validation(
                "attachment_ids",
                "an attachment can only be posted once",
            ));
        }
    }
    Ok(ids)
}

/// A client's id for a message: 1 to 64 of `A-Z a-z 0-9 - _ . :` (a UUID fits).
pub struct ClientMsgId(String);

impl ClientMsgId {
    pub fn parse(s: String) -> Result<Self, ApiError> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if ok {
            Ok(Self(s))
        } else {
            Err(ApiError::validation(
                "client_msg_id",
                "client_msg_id must be 1 to 64 characters of A-Z, a-z, 0-9, -, _, . and :",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An application's event name (custom events and signals): two or more
/// dot-separated parts of `a-z`, `0-9` and `_`, each starting with a letter,
/// 3 to 64 characters in all. The first part is the application's
/// namespace, so names never collide with Parley's own event kinds: those
/// namespaces are refused.
pub struct EventName(String);

pub const MAX_EVENT_NAME_LEN: usize = 64;

/// First parts of names that are, or may become, Parley's own event kinds
/// and frame types.
const RESERVED_NAMESPACES: &[&str] = &[
    "room", "message", "member", "parley", "custom", "presence", "typing", "receipt", "signal",
    "profile", "system", "reaction",
];

impl EventName {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let part_ok = |p: &str| {
            p.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        let mut parts = s.split('.');
        let namespace = parts.next().unwrap_or_default();
        let rest: Vec<&str> = parts.collect();
        let ok = (3..=MAX_EVENT_NAME_LEN).contains(&s.len())
            && part_ok(namespace)
            && !rest.is_empty()
            && rest.iter().all(|p| part_ok(p));
        if !ok {
            return Err(ApiError::validation(
                "name",
                "name must be 3 to 64 characters: a namespace and a name separated by dots \
                 (acme.order_shipped), each part of a-z, 0-9 and _ starting with a letter",
            ));
        }
        if RESERVED_NAMESPACES.contains(&namespace) {
            return Err(ApiError::validation(
                "name",
                format!("the namespace `{namespace}.` is Parley's own; use your application's"),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An `Idempotency-Key` header: 1 to 128 of `A-Z a-z 0-9 - _ . :` (a UUID fits).
pub struct IdempotencyKey(String);

pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

impl IdempotencyKey {
    pub fn parse(s: &[u8]) -> Result<Self, ApiError> {
        let ok = (1..=MAX_IDEMPOTENCY_KEY_LEN).contains(&s.len())
            && s.iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        match std::str::from_utf8(s) {
            Ok(key) if ok => Ok(Self(key.to_owned())),
            _ => Err(ApiError::validation(
                "Idempotency-Key",
                "the Idempotency-Key header must be 1 to 128 characters of A-Z, a-z, 0-9, -, _, . and :",
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A reaction: 1 to 32 bytes of text without whitespace or control
/// characters (one emoji, possibly with modifiers and joiners, or a short
/// `:shortcode:`). Arrives percent-encoded in the path.
pub struct Emoji(String);

/// Longest emoji in bytes: the longest standard ZWJ sequences (families,
/// flags of subdivisions) are under 30 bytes of UTF-8.
pub const MAX_EMOJI_BYTES: usize = 32;

impl Emoji {
    pub fn parse(s: String) -> Result<Self, ApiError> {
        let ok = (1..=MAX_EMOJI_BYTES).contains(&s.len())
            && !s.chars().any(|c| c.is_control() || c.is_whitespace());
        if ok {
            Ok(Self(s))
        } else {
            Err(ApiError::validation(
                "emoji",
                "emoji must be 1 to 32 bytes without whitespace or control characters",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Most distinct `@username`s of one body that are looked up: enough for
/// any real message, and a bound on the mention insert of a 4000-character
/// body made of mentions.
pub const MAX_MENTIONS: usize = 50;

/// The distinct usernames a body mentions as `@username` (lowercased), in
/// order of appearance. An `@` inside a word (`a@b.example`) is not a
/// mention; names that are not well-formed usernames are skipped. Whether
/// each is a member of the room is the store's business.
pub fn mentioned_usernames(body: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut previous: Option<char> = None;
    for (at, c) in body.char_indices() {
        let starts = c == '@' && !previous.is_some_and(|p| p.is_alphanumeric() || p == '_');
        previous = Some(c);
        if !starts {
            continue;
        }
        let rest = &body[at + 1..];
        let end = rest
            .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
            .unwrap_or(rest.len());
        let name = rest[..end].to_ascii_lowercase();
        if Username::parse(&name).is_ok() && !names.contains(&name) {
            names.push(name);
            if names.len() == MAX_MENTIONS {
                break;
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_at_usernames_outside_words() {
        assert_eq!(
            mentioned_usernames("hi @Bob and @carol_1, mail a@b.example; @bob again @x @"),
            vec!["bob".to_owned(), "carol_1".to_owned()]
        );
        assert!(mentioned_usernames("no mentions").is_empty());
    }

    #[test]
    fn emoji_are_short_text_without_whitespace_or_controls() {
        for ok in ["👍", "👨‍👩‍👧‍👦", ":tada:", "+1"] {
            assert!(Emoji::parse(ok.into()).is_ok(), "{ok}");
        }
        for bad in ["", " ", "a b", "x\n", "\u{7}", &"x".repeat(33)] {
            assert!(Emoji::parse(bad.into()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn event_names_are_namespaced_dotted_words_outside_parleys_own() {
        for ok in [
            "acme.order_shipped",
            "a.b",
            "shop2.cart.item_added",
            &format!("a.{}", "b".repeat(62)),
        ] {
            assert!(EventName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "acme",
            "",
            ".x",
            "acme.",
            "acme..x",
            "Acme.x",
            "acme.1x",
            "acme.order-shipped",
            "acme. x",
            "ácme.x",
            &format!("a.{}", "b".repeat(63)),
            "room.created",
            "message.deleted",
            "reaction.added",
            "member.added",
            "parley.anything",
        ] {
            assert!(EventName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn idempotency_keys_are_bounded_tokens() {
        assert!(IdempotencyKey::parse(b"0b8e2c5e-1f7a-4c3e-9d7a-3b2f1e0c9a8b").is_ok());
        assert!(IdempotencyKey::parse(&[b'k'; 128]).is_ok());
        assert!(IdempotencyKey::parse(&[b'k'; 129]).is_err());
        assert!(IdempotencyKey::parse(b"").is_err());
        assert!(IdempotencyKey::parse(b"has space").is_err());
        assert!(IdempotencyKey::parse(&[0xff, b'a']).is_err());
    }

    #[test]
    fn usernames_are_short_lowercase_words() {
        for ok in ["abc", "alice_01", &"a".repeat(32)] {
            assert!(Username::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "Alice",
            "al ice",
            "al-ice",
            "ålice",
            "",
            &"a".repeat(33),
            "bob\0",
        ] {
            assert!(Username::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails_need_real_syntax_and_are_lowercased() {
        assert_eq!(
            Email::parse("Ann@Example.COM").unwrap().as_str(),
            "ann@example.com"
        );
        assert!(Email::parse("first.last+tag@sub.example.org").is_ok());
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "a b@example.com",
            "Ann <ann@example.com>",
            "a@b@c",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn passwords_have_a_floor_in_characters_and_a_cap_in_bytes() {
        assert!(Password::parse("123456789").is_err());
        assert!(Password::parse("1234567890").is_ok());
        assert!(Password::parse("éééééééééé").is_ok());
        assert!(Password::parse(&"x".repeat(1024)).is_ok());
        assert!(Password::parse(&"x".repeat(1025)).is_err());
        assert_eq!(
            format!("{:?}", Password::parse("1234567890").unwrap()),
            "Password(***)"
        );
    }

    #[test]
    fn message_bodies_are_bounded_and_not_blank() {
        assert!(MessageBody::parse("hi".into()).is_ok());
        assert!(MessageBody::parse("é".repeat(4000)).is_ok());
        assert!(MessageBody::parse("x".repeat(4001)).is_err());
        assert!(MessageBody::parse(String::new()).is_err());
        assert!(MessageBody::parse(" \n\t".into()).is_err());
        assert!(MessageBody::parse("a\0b".into()).is_err());
    }

    #[test]
    fn room_names_and_client_ids_are_checked() {
        assert_eq!(RoomName::parse("  general ").unwrap().as_str(), "general");
        assert!(RoomName::parse("   ").is_err());
        assert!(RoomName::parse("a\u{7}b").is_err());
        assert!(RoomName::parse(&"n".repeat(101)).is_err());
        assert_eq!(
            RoomTopic::parse(" plans\nand notes ").unwrap().into_inner(),
            "plans\nand notes"
        );
        assert_eq!(RoomTopic::parse("  ").unwrap().into_inner(), "");
        assert!(RoomTopic::parse("a\u{1b}[31m").is_err());
        assert!(RoomTopic::parse(&"t".repeat(501)).is_err());
        assert!(ClientMsgId::parse("0b8e2c5e-1f7a-4c3e-9d7a-3b2f1e0c9a8b".into()).is_ok());
        assert!(ClientMsgId::parse(String::new()).is_err());
        assert!(ClientMsgId::parse("has space".into()).is_err());
        assert!(ClientMsgId::parse("x".repeat(65)).is_err());
    }
}
