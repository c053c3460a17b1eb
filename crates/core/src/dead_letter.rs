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
    // Replaced first, then cut: a NUL (1 byte) becomes U+FFFD (3 bytes), and
    // what is kept must stay within the cap.
    let whole: Cow<'_, str> = if body.contains('\0') {
        Cow::Owned(body.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(body)
    };
    let cut = floor_char_boundary(&whole, max_bytes);
    let truncated = cut < whole.len();
    let text = match whole {
        Cow::Borrowed(b) => Cow::Borrowed(&b[..cut]),
        Cow::Owned(mut o) => {
            o.truncate(cut);
            Cow::Owned(o)
        }
    };
    StoredBody {
        text,
        bytes: body.len(),
        truncated,
    }
}

/// The largest index `<= at` that is a character boundary of `s`.
pub(crate) fn floor_char_boundary(s: &str, at: usize) -> usize {
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

    /// Threat: a body of NULs (1 byte each, 3 once replaced) stored at three
    /// times the cap.
    #[test]
    fn disk_a_body_of_nuls_is_kept_within_the_cap() {
        let nuls = "\0".repeat(3000);
        let b = stored_body(&nuls, 1024);
        assert!(b.text.len() <= 1024, "{}", b.text.len());
        assert!(b.truncated);
        assert_eq!(b.bytes, 3000);
    }
}
