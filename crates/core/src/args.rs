//! Checks of the SQL functions' arguments: each bound is stated once, here,
//! with the error a caller sees (22023).

use crate::error::{Classified, ErrorKind};

/// SQS allows long polls of 0 to 20 seconds.
pub const MAX_WAIT_SECONDS: i32 = 20;
/// SQS allows visibility timeouts of 0 to 12 hours, and keeps a received
/// message hidden for at most 12 hours in all, however often it is extended.
pub const MAX_VISIBILITY_TIMEOUT: i32 = 43_200;

/// An argument out of its bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgError(String);

impl Classified for ArgError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidParameter
    }
}

/// `sqs_drain(max_messages, wait_seconds, visibility_timeout)`.
pub fn check_drain(
    max_messages: i32,
    wait_seconds: i32,
    visibility_timeout: Option<i32>,
) -> Result<(), ArgError> {
    if max_messages < 1 {
        return Err(ArgError("max_messages must be at least 1".into()));
    }
    if !(0..=MAX_WAIT_SECONDS).contains(&wait_seconds) {
        return Err(ArgError(format!(
            "wait_seconds must be between 0 and {MAX_WAIT_SECONDS}"
        )));
    }
    if let Some(v) = visibility_timeout {
        if !(0..=MAX_VISIBILITY_TIMEOUT).contains(&v) {
            return Err(ArgError(format!(
                "visibility_timeout must be between 0 and {MAX_VISIBILITY_TIMEOUT} seconds"
            )));
        }
    }
    Ok(())
}

/// `replay_dead_letters(max_rows)`.
pub fn check_replay(max_rows: i32) -> Result<(), ArgError> {
    if max_rows < 1 {
        return Err(ArgError("max_rows must be at least 1".into()));
    }
    Ok(())
}

/// The most a discard's note may hold.
pub const MAX_DISCARD_NOTE_BYTES: usize = 1000;

/// `discard_dead_letters`' note: why they were discarded, said in words.
pub fn check_discard_note(note: &str) -> Result<(), ArgError> {
    if note.trim().is_empty() {
        return Err(ArgError(
            "note must say why the dead letters are discarded".into(),
        ));
    }
    if note.len() > MAX_DISCARD_NOTE_BYTES {
        return Err(ArgError(format!(
            "note must be at most {MAX_DISCARD_NOTE_BYTES} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_discard_needs_a_note_of_bounded_size() {
        assert!(check_discard_note("producer bug, fixed in v2").is_ok());
        assert!(check_discard_note("  ").is_err());
        assert!(check_discard_note("").is_err());
        assert!(check_discard_note(&"x".repeat(MAX_DISCARD_NOTE_BYTES)).is_ok());
        assert!(check_discard_note(&"x".repeat(MAX_DISCARD_NOTE_BYTES + 1)).is_err());
    }

    #[test]
    fn drain_bounds() {
        assert!(check_drain(1, 0, None).is_ok());
        assert!(check_drain(i32::MAX, 20, Some(43_200)).is_ok());
        assert!(check_drain(1, 0, Some(0)).is_ok());
        assert_eq!(
            check_drain(0, 0, None).unwrap_err().to_string(),
            "max_messages must be at least 1"
        );
        assert_eq!(
            check_drain(1, 21, None).unwrap_err().to_string(),
            "wait_seconds must be between 0 and 20"
        );
        assert!(check_drain(1, -1, None).is_err());
        assert_eq!(
            check_drain(1, 0, Some(-1)).unwrap_err().to_string(),
            "visibility_timeout must be between 0 and 43200 seconds"
        );
        assert!(check_drain(1, 0, Some(43_201)).is_err());
        assert_eq!(
            check_drain(0, 0, None).unwrap_err().kind(),
            ErrorKind::InvalidParameter
        );
    }

    #[test]
    fn replay_bounds() {
        assert!(check_replay(1).is_ok());
        assert_eq!(
            check_replay(0).unwrap_err().to_string(),
            "max_rows must be at least 1"
        );
    }
}
