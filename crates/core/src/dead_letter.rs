//! What a dead letter keeps of a refused message's body.
//!
//! Anyone who can send to a queue decides what its refused messages are, so
//! what they cost the database is bounded: a dead letter keeps at most
//! `fetch_etl.dead_letter_max_body_bytes` of the body (cut at a character
//! boundary), and says so (`body_truncated`, `body_bytes`). A cut body is
//! kept for inspection only: a replay never takes it, since what is left
//! is not the event that was sent. (`fetch_etl.dead_letter_retention` then
//! bounds how long they are kept; `prune()` applies it.)

use std::borrow::Cow;

/// A body as a dead letter stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBody<'a> {
    /// What is stored: the body, or its first bytes.
    pub text: Cow<'a, str>,
    /// The body's size as received, in bytes.
    pub bytes: usize,
    /// `text` is only the start of the body.
    pub truncated: bool,
}

/// `body` cut to at most `max_bytes` (at a character boundary), with any
/// NUL replaced (PostgreSQL text cannot hold it; SQS bodies cannot contain
/// it either, but one must never break a batch).
pub fn stored_body(body: &str, max_bytes: usize) -> StoredBody<'_> {
    let kept = &body[..floor_char_boundary(body, max_bytes)];
    let text = if kept.contains('\0') {
        Cow::Owned(kept.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(kept)
    };
    StoredBody {
        text,
        bytes: body.len(),
        truncated: kept.len() < body.len(),
    }
}

/// The largest index `<= at` that is a character boundary of `s`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    (0..=at).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_within_the_limit_is_kept_whole_and_borrowed() {
        let b = stored_body("{\"a\": 1}", 100);
        assert_eq!(b.text, "{\"a\": 1}");
        assert!(matches!(b.text, Cow::Borrowed(_)));
        assert_eq!((b.bytes, b.truncated), (8, false));
        let exact = stored_body("abcd", 4);
        assert_eq!((exact.text.as_ref(), exact.truncated), ("abcd", false));
    }

    #[test]
    fn disk_a_large_body_is_cut_at_the_limit_and_says_so() {
        let body = "x".repeat(250_000);
        let b = stored_body(&body, 65_536);
        assert_eq!(b.text.len(), 65_536);
        assert_eq!((b.bytes, b.truncated), (250_000, true));
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        // "é" is two bytes: a limit of 3 would split the second one
        let b = stored_body("ééé", 3);
        assert_eq!(b.text, "é");
        assert!(b.truncated);
        let b = stored_body("€", 2);
        assert_eq!((b.text.as_ref(), b.bytes, b.truncated), ("", 3, true));
    }

    #[test]
    fn nul_characters_are_replaced_in_what_is_kept() {
        let b = stored_body("a\0b", 100);
        assert_eq!(b.text, "a\u{FFFD}b");
        assert!(!b.truncated);
        assert_eq!(b.bytes, 3);
    }
}
