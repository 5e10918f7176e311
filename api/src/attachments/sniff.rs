//! What an upload is, decided from its first bytes, and the name it is
//! served under.
//!
//! The client's `Content-Type` is never trusted: a file is accepted only if
//! its magic number says it is one of the [`ALLOWED`] types, and it is
//! served with that type, `nosniff`, and a `Content-Disposition` whose name
//! cannot break out of the header. Anything that cannot be recognised by
//! its bytes (HTML, SVG, scripts, plain text) is refused: those are the
//! files a browser might run in the api's origin.

/// Bytes looked at before deciding. The longest signature in the list
/// (MP4's `ftyp` box, ZIP's local header) is well inside this.
pub const SNIFF_BYTES: usize = 512;

/// The content types accepted, as the sniffer names them.
pub const ALLOWED: &[&str] = &[
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "application/pdf",
    "video/mp4",
    "video/webm",
    "video/quicktime",
    "audio/mpeg",
    "audio/ogg",
    "audio/x-wav",
    "audio/mp4",
    "application/zip",
];

/// Types a thumbnail is made of.
pub fn is_thumbnailable(content_type: &str) -> bool {
    matches!(
        content_type,
        "image/jpeg" | "image/png" | "image/gif" | "image/webp"
    )
}

/// Types a browser may show in place (`Content-Disposition: inline`): images
/// only, which cannot run script; the rest download.
pub fn is_inline(content_type: &str) -> bool {
    is_thumbnailable(content_type)
}

/// The allowed content type `head` (an upload's first bytes) is, if any.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    let kind = infer::get(head)?;
    ALLOWED.iter().copied().find(|t| *t == kind.mime_type())
}

/// Longest file name kept, in characters.
pub const MAX_FILENAME_CHARS: usize = 200;

/// The name an upload is kept and served under: the last path component
/// of what the client sent, without control characters or quotes, at most
/// [`MAX_FILENAME_CHARS`]; `file` when nothing is left.
pub fn safe_filename(given: Option<&str>) -> String {
    let given = given.unwrap_or("");
    let last = given.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '"' | '\u{2028}' | '\u{2029}'))
        .take(MAX_FILENAME_CHARS)
        .collect();
    let trimmed = cleaned.trim().trim_start_matches('.').trim();
    if trimmed.is_empty() {
        "file".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// `Content-Disposition` for `filename`: an ASCII fallback for old clients
/// and the exact name as RFC 8187 `filename*` (percent-encoded UTF-8).
pub fn content_disposition(filename: &str, inline: bool) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    // RFC 8187 attr-char: ALPHA / DIGIT / "!#$&+-.^_`|~"
    const ATTR: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'!')
        .remove(b'#')
        .remove(b'$')
        .remove(b'&')
        .remove(b'+')
        .remove(b'-')
        .remove(b'.')
        .remove(b'^')
        .remove(b'_')
        .remove(b'`')
        .remove(b'|')
        .remove(b'~');
    let fallback: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '%' | ';') || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{}; filename=\"{fallback}\"; filename*=UTF-8''{}",
        if inline { "inline" } else { "attachment" },
        utf8_percent_encode(filename, ATTR)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_decided_by_the_bytes() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert_eq!(sniff(png), Some("image/png"));
        assert_eq!(sniff(b"\xff\xd8\xff\xe0\0\x10JFIF\0"), Some("image/jpeg"));
        assert_eq!(sniff(b"GIF89a\x01\0\x01\0"), Some("image/gif"));
        assert_eq!(sniff(b"%PDF-1.7\n"), Some("application/pdf"));
    }

    #[test]
    fn html_scripts_and_unknown_bytes_are_refused() {
        assert_eq!(
            sniff(b"<!DOCTYPE html><html><script>alert(1)</script>"),
            None
        );
        assert_eq!(sniff(b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>"), None);
        assert_eq!(sniff(b"#!/bin/sh\nrm -rf /\n"), None);
        assert_eq!(
            sniff(b"MZ\x90\0\x03\0\0\0"),
            None,
            "executables are not on the list"
        );
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn file_names_lose_paths_control_characters_and_quotes() {
        assert_eq!(safe_filename(Some("../../etc/passwd")), "passwd");
        assert_eq!(safe_filename(Some("C:\\Users\\me\\cat.png")), "cat.png");
        assert_eq!(
            safe_filename(Some("a\r\nSet-Cookie: x\".png")),
            "aSet-Cookie: x.png"
        );
        assert_eq!(safe_filename(Some("   ")), "file");
        assert_eq!(safe_filename(Some(".htaccess")), "htaccess");
        assert_eq!(safe_filename(None), "file");
        assert_eq!(
            safe_filename(Some(&"x".repeat(500))).len(),
            MAX_FILENAME_CHARS
        );
    }

    #[test]
    fn content_disposition_keeps_the_name_exact_and_the_header_safe() {
        assert_eq!(
            content_disposition("Übersicht; 2024.pdf", false),
            "attachment; filename=\"_bersicht_ 2024.pdf\"; filename*=UTF-8''%C3%9Cbersicht%3B%202024.pdf"
        );
        assert!(content_disposition("cat.png", true).starts_with("inline; filename=\"cat.png\""));
    }
}
