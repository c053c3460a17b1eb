//! A failed drain run, as the failing backend hands it to the recorder that
//! writes it to `fetch_etl.drain_runs` outside the failing transaction (the
//! extension's `postgres/recorder.rs`): with `on_error => 'raise'` the
//! drain's own transaction rolls back, and a pg_cron job's failures would
//! otherwise leave no trace in `queue_health`.
//!
//! What is recorded is bounded whatever the caller passed: a refused queue
//! URL of a megabyte is recorded as its first [`MAX_TEXT_BYTES`].

use serde::{Deserialize, Serialize};

use crate::dead_letter::floor_char_boundary;

/// The most of a queue URL, target or error a failed run's record keeps.
pub const MAX_TEXT_BYTES: usize = 2048;

/// What the record of a failed run holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRun {
    pub queue_url: String,
    pub target_table: String,
    pub max_messages: i32,
    pub wait_seconds: i32,
    /// The pipeline or router asked for (None: the built-in login pipeline).
    pub pipeline: Option<String>,
    /// "SQLSTATE message", never remote text (the drain's errors carry none).
    pub error: String,
    /// The session user who ran the drain.
    pub run_by: String,
}

impl FailedRun {
    /// The run with every text cut to [`MAX_TEXT_BYTES`] (at a character
    /// boundary, marked with "…").
    #[must_use]
    pub fn bounded(mut self) -> FailedRun {
        for s in [
            &mut self.queue_url,
            &mut self.target_table,
            &mut self.error,
            &mut self.run_by,
        ] {
            clip(s);
        }
        if let Some(p) = self.pipeline.as_mut() {
            clip(p);
        }
        self
    }

    /// The bytes handed to the recorder.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The run from [`FailedRun::encode`]'s bytes (None: not a run).
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<FailedRun> {
        serde_json::from_slice::<FailedRun>(bytes)
            .ok()
            .map(FailedRun::bounded)
    }
}

fn clip(s: &mut String) {
    if s.len() > MAX_TEXT_BYTES {
        let cut = floor_char_boundary(s, MAX_TEXT_BYTES - '…'.len_utf8());
        s.truncate(cut);
        s.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(url: &str) -> FailedRun {
        FailedRun {
            queue_url: url.into(),
            target_table: "user_logins".into(),
            max_messages: 1000,
            wait_seconds: 0,
            pipeline: None,
            error: "42704 the queue does not exist".into(),
            run_by: "postgres".into(),
        }
    }

    #[test]
    fn round_trips() {
        let r = run("https://sqs.us-east-1.amazonaws.com/1/q");
        assert_eq!(FailedRun::decode(&r.encode()), Some(r));
    }

    #[test]
    fn a_huge_queue_url_is_recorded_cut_at_a_character_boundary() {
        let r = run(&"é".repeat(1 << 20)).bounded();
        assert!(r.queue_url.len() <= MAX_TEXT_BYTES);
        assert!(r.queue_url.ends_with('…'));
        assert!(r.queue_url.starts_with("éé"));
        let mut p = run("u");
        p.pipeline = Some("p".repeat(5000));
        assert!(p.bounded().pipeline.unwrap().len() <= MAX_TEXT_BYTES);
    }

    #[test]
    fn bytes_that_are_not_a_run_decode_to_none() {
        assert_eq!(FailedRun::decode(b""), None);
        assert_eq!(FailedRun::decode(b"{\"queue_url\": 1}"), None);
        assert_eq!(FailedRun::decode(&[0xff, 0xfe]), None);
    }

    #[test]
    fn decoding_bounds_what_the_encoder_did_not() {
        let bytes = run(&"x".repeat(10_000)).encode();
        assert!(FailedRun::decode(&bytes).unwrap().queue_url.len() <= MAX_TEXT_BYTES);
    }
}
