//! Progress of an apply worker: what it reports to the publisher, and what it shows in shared
//! memory.
//!
//! Exactly-once rests on the replication origin: each applied transaction's commit record carries
//! the remote end LSN (set in `apply.rs` before commit), and a restarted worker resumes from
//! `replorigin_session_get_progress`. Feedback must never confirm as *flushed* what is not durable
//! here, because the publisher then discards it: with `synchronous_commit = off` a local commit
//! becomes durable later, so we remember (remote end, local commit end) pairs and report as
//! flushed only remote ends whose local commit is at or below the local WAL flush pointer.
//! When nothing is pending, everything received so far is done and is reported as flushed.
use crate::shmem::{self, ConflictType};
use pgrx::pg_sys;
use pgsub_proto::Lsn;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Counters {
    pub txns: i64,
    pub inserts: i64,
    pub updates: i64,
    pub deletes: i64,
    pub truncates: i64,
    pub messages: i64,
    /// Conflicts by type (`ConflictType::index`), counted through [`Counters::conflict`].
    pub conflicts: [i64; ConflictType::COUNT],
    pub skipped: i64,
}

impl Counters {
    /// `n` conflicts of type `t` on the local table `relid` (every conflict is counted here).
    pub fn conflict(&mut self, _relid: pg_sys::Oid, t: ConflictType, n: i64) {
        self.conflicts[t.index()] += n;
    }
}

pub struct Progress {
    subid: i32,
    /// A sync worker's progress: positions and status are the apply worker's to show; only the
    /// counters of what the catch-up applied are added to the subscription's.
    counters_only: bool,
    /// (remote commit end, local commit end) not yet known durable locally.
    pending: VecDeque<(Lsn, Lsn)>,
    /// Newest position the publisher has told us about (XLogData start, keepalive WAL end).
    pub received: Lsn,
    pub wal_end: Lsn,
    pub applied: Lsn,
    pub flushed: Lsn,
    pub last_send_time: i64,
    pub last_commit_time: i64,
    pub pending_commit_time: i64,
    pub caught_up: Lsn,
    pub counters: Counters,
    last_reported: (Lsn, Lsn),
    last_report_at: Option<Instant>,
}

impl Progress {
    pub fn new(subid: i32, start: Lsn) -> Progress {
        Progress {
            subid,
            counters_only: false,
            pending: VecDeque::new(),
            received: start,
            wal_end: start,
            applied: start,
            flushed: start,
            last_send_time: 0,
            last_commit_time: 0,
            pending_commit_time: 0,
            caught_up: Lsn::INVALID,
            counters: Counters::default(),
            last_reported: (Lsn::INVALID, Lsn::INVALID),
            last_report_at: None,
        }
    }

    /// The progress of a sync worker's catch-up (`counters_only`).
    pub fn for_sync_worker(subid: i32, start: Lsn) -> Progress {
        Progress { counters_only: true, ..Progress::new(subid, start) }
    }

    /// A frame arrived: `start` is its WAL position (0 for keepalives), `end` the server's WAL end.
    pub fn on_frame(&mut self, start: Lsn, end: Lsn, send_time: i64) {
        if start > self.received {
            self.received = start;
        }
        if end > self.wal_end {
            self.wal_end = end;
        }
        if send_time != 0 {
            self.last_send_time = send_time;
        }
    }

    /// A keepalive told us the server's WAL end: nothing before it is pending for us.
    pub fn on_keepalive(&mut self, end: Lsn) {
        if end > self.received {
            self.received = end;
        }
    }

    /// A remote transaction ending at `remote_end` committed locally, ending at `local_end`.
    pub fn on_commit(&mut self, remote_end: Lsn, local_end: Lsn, commit_time: i64) {
        self.applied = remote_end;
        self.last_commit_time = commit_time;
        if local_end.is_valid() {
            self.pending.push_back((remote_end, local_end));
        }
        self.counters.txns += 1;
    }

    /// Positions to report: (write, flush, apply).
    pub fn positions(&mut self, in_txn: bool) -> (Lsn, Lsn, Lsn) {
        // SAFETY: reads the shared WAL flush pointer.
        let local_flush = Lsn(unsafe { pg_sys::GetFlushRecPtr(std::ptr::null_mut()) });
        while let Some(&(remote, local)) = self.pending.front() {
            if local <= local_flush {
                if remote > self.flushed {
                    self.flushed = remote;
                }
                self.pending.pop_front();
            } else {
                break;
            }
        }
        if self.pending.is_empty() && !in_txn && self.received > self.flushed {
            self.flushed = self.received;
        }
        let apply = if in_txn { self.applied } else { self.applied.max(self.flushed) };
        (self.received, self.flushed, apply)
    }

    /// Whether local commits are waiting to become durable before they can be confirmed.
    pub fn awaiting_flush(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether a status update is due: the publisher asked, the interval passed, or what we could
    /// confirm moved.
    pub fn report_due(&self, positions: (Lsn, Lsn, Lsn), interval: Duration, force: bool) -> bool {
        force
            || self.last_report_at.is_none_or(|t| t.elapsed() >= interval)
            || (positions.0, positions.1) != self.last_reported
    }

    /// Time since the last status update was sent.
    pub fn since_report(&self) -> Duration {
        self.last_report_at.map(|t| t.elapsed()).unwrap_or(Duration::MAX)
    }

    pub fn reported(&mut self, positions: (Lsn, Lsn, Lsn)) {
        self.last_reported = (positions.0, positions.1);
        self.last_report_at = Some(Instant::now());
    }

    /// Everything received has been applied and nothing is in progress.
    pub fn mark_caught_up(&mut self) {
        self.caught_up = self.received.max(self.applied);
        self.pending_commit_time = 0;
    }

    /// Copies progress and counters into the shared-memory slot (counters are added, so they
    /// survive worker restarts).
    pub fn publish(&mut self, status: Option<shmem::Status>, receipt_time: i64) {
        let c = std::mem::take(&mut self.counters);
        if self.counters_only {
            shmem::with_slot(self.subid, |s| {
                s.txns_applied += c.txns;
                s.inserts += c.inserts;
                s.updates += c.updates;
                s.deletes += c.deletes;
                s.truncates += c.truncates;
                add_conflicts(s, &c);
            });
            return;
        }
        shmem::with_slot(self.subid, |s| {
            if let Some(st) = status {
                s.status = st;
            }
            s.received_lsn = self.received.0;
            s.applied_lsn = self.applied.0;
            s.flushed_lsn = self.flushed.0;
            s.publisher_wal_end = self.wal_end.0;
            s.caught_up_lsn = self.caught_up.0;
            if self.last_send_time != 0 {
                s.last_msg_send_time = self.last_send_time;
            }
            if receipt_time != 0 {
                s.last_msg_receipt_time = receipt_time;
            }
            if self.last_commit_time != 0 {
                s.last_commit_time = self.last_commit_time;
            }
            s.pending_commit_time = self.pending_commit_time;
            s.txns_applied += c.txns;
            s.inserts += c.inserts;
            s.updates += c.updates;
            s.deletes += c.deletes;
            s.truncates += c.truncates;
            s.messages += c.messages;
            add_conflicts(s, &c);
            s.txns_skipped += c.skipped;
            if c.txns > 0 {
                // A transaction went through: the failure streak is over.
                s.failures = 0;
            }
        });
    }
}

/// Adds the conflicts to the slot's counters (by type and in all).
fn add_conflicts(s: &mut shmem::SubSlot, c: &Counters) {
    for t in ConflictType::ALL {
        s.count_conflicts(t, c.conflicts[t.index()]);
    }
}
