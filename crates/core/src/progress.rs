//! The board of drains and replays in progress, as kept in shared memory
//! (the extension's `postgres/progress.rs` puts one [`Board`] there when the
//! library is preloaded) and read by `fetch_etl.drain_progress()` from any
//! session while they run.
//!
//! Plain fixed-size data (no pointers, no heap): each backend writes only
//! its own slots, under the board's lock; a slot is free when its `pid` is
//! 0. At most [`SLOTS`] runs are shown at once; one that finds no free slot
//! runs untracked (and is counted in [`Board::untracked`]).

use crate::contract::{Phase, RunKind as Kind};
use crate::dead_letter::floor_char_boundary;

/// Runs shown at once.
pub const SLOTS: usize = 128;
/// Runs shown at once per backend: one transaction that calls sqs_drain
/// for every row of a query must not take every slot.
pub const SLOTS_PER_BACKEND: usize = 8;
/// The most of a queue URL a slot keeps.
pub const URL_BYTES: usize = 256;

/// Counts so far: received, loaded, rejected, duplicates.
pub type Counts = [i64; 4];

/// One run in progress (free when `pid` is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Slot {
    pub pid: i32,
    /// The database's and the session user's oids.
    pub database: u32,
    pub role: u32,
    kind: u8,
    phase: u8,
    url_len: u16,
    /// The run's id in `drain_runs` (0: none, a replay).
    pub run_id: i64,
    /// When it started and when it last changed (PostgreSQL timestamps,
    /// microseconds since 2000-01-01 UTC).
    pub started_at: i64,
    pub updated_at: i64,
    pub counts: Counts,
    url: [u8; URL_BYTES],
}

impl Slot {
    /// A free slot.
    pub const FREE: Slot = Slot {
        pid: 0,
        database: 0,
        role: 0,
        kind: 0,
        phase: 0,
        url_len: 0,
        run_id: 0,
        started_at: 0,
        updated_at: 0,
        counts: [0; 4],
        url: [0; URL_BYTES],
    };

    pub fn kind(&self) -> Kind {
        Kind::ALL
            .get(usize::from(self.kind))
            .copied()
            .unwrap_or(Kind::Drain)
    }

    pub fn phase(&self) -> Phase {
        Phase::ALL
            .get(usize::from(self.phase))
            .copied()
            .unwrap_or(Phase::Receiving)
    }

    /// The queue URL, cut to [`URL_BYTES`] at a character boundary.
    pub fn queue_url(&self) -> &str {
        let n = usize::from(self.url_len).min(URL_BYTES);
        std::str::from_utf8(&self.url[..n]).unwrap_or_default()
    }
}

/// What a run says about itself when it starts.
#[derive(Debug, Clone, Copy)]
pub struct Start<'a> {
    pub pid: i32,
    pub database: u32,
    pub role: u32,
    pub kind: Kind,
    pub phase: Phase,
    pub run_id: i64,
    pub queue_url: &'a str,
    pub now: i64,
}

/// The slots, and how many runs found none free.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Board {
    pub slots: [Slot; SLOTS],
    pub untracked: u64,
}

impl Default for Board {
    fn default() -> Board {
        Board {
            slots: [Slot::FREE; SLOTS],
            untracked: 0,
        }
    }
}

impl Board {
    /// Takes a free slot for a run; its index, or None (counted) when all
    /// are taken.
    pub fn claim(&mut self, s: &Start<'_>) -> Option<usize> {
        let mine = self.slots.iter().filter(|x| x.pid == s.pid).count();
        let free = self.slots.iter().position(|x| x.pid == 0);
        let Some(i) = free.filter(|_| mine < SLOTS_PER_BACKEND) else {
            self.untracked += 1;
            return None;
        };
        let cut = floor_char_boundary(s.queue_url, URL_BYTES);
        let mut url = [0u8; URL_BYTES];
        url[..cut].copy_from_slice(&s.queue_url.as_bytes()[..cut]);
        self.slots[i] = Slot {
            pid: s.pid,
            database: s.database,
            role: s.role,
            kind: index(Kind::ALL, s.kind),
            phase: index(Phase::ALL, s.phase),
            url_len: cut as u16,
            run_id: s.run_id,
            started_at: s.now,
            updated_at: s.now,
            counts: [0; 4],
            url,
        };
        Some(i)
    }

    /// Slot `i`'s phase and counts, if it is still `pid`'s.
    pub fn update(&mut self, i: usize, pid: i32, phase: Phase, counts: Option<Counts>, now: i64) {
        if let Some(s) = self.slots.get_mut(i).filter(|s| s.pid == pid) {
            s.phase = index(Phase::ALL, phase);
            if let Some(c) = counts {
                s.counts = c;
            }
            s.updated_at = now;
        }
    }

    /// Slot `i`, a drain of `pid`'s, is deleting its messages (a replay
    /// deletes none).
    pub fn deleting(&mut self, i: usize, pid: i32, now: i64) {
        if self
            .slots
            .get(i)
            .is_some_and(|s| s.pid == pid && s.kind() == Kind::Drain)
        {
            self.update(i, pid, Phase::Deleting, None, now);
        }
    }

    /// Frees slot `i` if it is `pid`'s.
    pub fn release(&mut self, i: usize, pid: i32) {
        if let Some(s) = self.slots.get_mut(i).filter(|s| s.pid == pid) {
            *s = Slot::FREE;
        }
    }

    /// Frees every slot of `pid` (its backend is exiting).
    pub fn release_all(&mut self, pid: i32) {
        for s in self.slots.iter_mut().filter(|s| s.pid == pid) {
            *s = Slot::FREE;
        }
    }

    /// The runs in progress, oldest first.
    pub fn in_progress(&self) -> Vec<Slot> {
        let mut v: Vec<Slot> = self.slots.iter().copied().filter(|s| s.pid != 0).collect();
        v.sort_by_key(|s| (s.started_at, s.pid));
        v
    }
}

fn index<T: PartialEq>(all: &[T], v: T) -> u8 {
    all.iter().position(|x| *x == v).unwrap_or(0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(pid: i32, url: &str) -> Start<'_> {
        Start {
            pid,
            database: 5,
            role: 10,
            kind: Kind::Drain,
            phase: Phase::Receiving,
            run_id: 42,
            queue_url: url,
            now: 1_000,
        }
    }

    #[test]
    fn a_run_is_shown_from_claim_to_release() {
        let mut b = Board::default();
        let i = b
            .claim(&start(7, "https://sqs.us-east-1.amazonaws.com/1/q"))
            .unwrap();
        b.update(i, 7, Phase::Storing, Some([10, 9, 1, 0]), 2_000);
        let rows = b.in_progress();
        assert_eq!(rows.len(), 1);
        let r = rows[0];
        assert_eq!(
            (r.pid, r.run_id, r.kind(), r.phase()),
            (7, 42, Kind::Drain, Phase::Storing)
        );
        assert_eq!(r.queue_url(), "https://sqs.us-east-1.amazonaws.com/1/q");
        assert_eq!(
            (r.counts, r.started_at, r.updated_at),
            ([10, 9, 1, 0], 1_000, 2_000)
        );
        b.release(i, 7);
        assert!(b.in_progress().is_empty());
    }

    #[test]
    fn a_backend_changes_only_its_own_slots() {
        let mut b = Board::default();
        let i = b.claim(&start(7, "u")).unwrap();
        b.update(i, 8, Phase::Deleting, Some([1, 1, 0, 0]), 5);
        b.release(i, 8);
        assert_eq!(b.in_progress()[0].phase(), Phase::Receiving);
        assert_eq!(b.in_progress()[0].counts, [0; 4]);
        let j = b.claim(&start(8, "v")).unwrap();
        b.release_all(7);
        assert_eq!(
            b.in_progress().iter().map(|s| s.pid).collect::<Vec<_>>(),
            vec![8]
        );
        assert_ne!(i, j);
    }

    #[test]
    fn a_full_board_counts_the_runs_it_cannot_show() {
        let mut b = Board::default();
        for p in 1..=SLOTS as i32 {
            assert!(b.claim(&start(p, "u")).is_some());
        }
        assert_eq!(b.claim(&start(9999, "u")), None);
        assert_eq!(b.untracked, 1);
        b.release_all(3);
        assert!(b.claim(&start(9999, "u")).is_some());
    }

    #[test]
    fn one_backend_takes_at_most_its_share_of_the_board() {
        let mut b = Board::default();
        for _ in 0..SLOTS_PER_BACKEND {
            assert!(b.claim(&start(7, "u")).is_some());
        }
        assert_eq!(b.claim(&start(7, "u")), None);
        assert_eq!(b.untracked, 1);
        assert!(b.claim(&start(8, "u")).is_some(), "others still are shown");
    }

    #[test]
    fn only_drains_are_shown_deleting() {
        let mut b = Board::default();
        let d = b.claim(&start(7, "u")).unwrap();
        let r = b
            .claim(&Start {
                kind: Kind::Replay,
                phase: Phase::Replaying,
                ..start(7, "")
            })
            .unwrap();
        b.deleting(d, 7, 5);
        b.deleting(r, 7, 5);
        let phases: Vec<Phase> = b.in_progress().iter().map(|s| s.phase()).collect();
        assert!(phases.contains(&Phase::Deleting) && phases.contains(&Phase::Replaying));
    }

    #[test]
    fn a_long_queue_url_is_cut_at_a_character_boundary() {
        let mut b = Board::default();
        let long = format!("https://h/1/{}", "é".repeat(300));
        b.claim(&start(1, &long)).unwrap();
        let kept = b.in_progress()[0];
        assert!(kept.queue_url().len() <= URL_BYTES);
        assert!(long.starts_with(kept.queue_url()));
        assert!(kept.queue_url().len() > URL_BYTES - 2);
    }

    #[test]
    fn spellings() {
        assert_eq!(Phase::parse("deleting"), Some(Phase::Deleting));
        assert_eq!(Kind::Replay.as_str(), "replay");
        assert_eq!(Slot::FREE.phase(), Phase::Receiving);
    }
}
