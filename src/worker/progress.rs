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
//! `flush_applied` (the receive loop calls it when its socket is empty, `pgsub.flush_when_idle`)
//! flushes the WAL up to the last pending commit instead of waiting for the WAL writer.
//!
//! Counters are kept here per transaction and per table, and added into shared memory by
//! `publish` (one lock per publish, none per row): the subscription's totals and rate buckets
//! in its slot, each table's in `monitor.rs`. Changes count once their transaction commits (a
//! transaction that fails and is applied again is counted once); conflicts, messages and bytes
//! received count when they happen, as native counts conflicts.
use crate::monitor::TableCounts;
use crate::shmem::{self, ConflictType};
use pgrx::pg_sys;
use pgsub_proto::Lsn;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How often counters reach shared memory at least while the worker receives (the rates and
/// the lag history have one-second resolution).
const PUBLISH_INTERVAL: Duration = Duration::from_millis(500);

/// The shortest time between two status updates that only report moved positions.
pub const REPORT_MIN_GAP: Duration = Duration::from_millis(10);
/// The least time between two idle WAL flushes of the apply worker (`flush_applied`).
pub const FLUSH_MIN_GAP: Duration = Duration::from_millis(10);

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
    /// Bytes of replication frames received (CopyData payloads).
    pub bytes_received: i64,
    /// The same changes by local table (`pgsub.sub_rel.relid`).
    pub tables: HashMap<u32, TableCounts>,
}

impl Counters {
    fn table(&mut self, relid: pg_sys::Oid) -> &mut TableCounts {
        self.tables.entry(relid.to_u32()).or_default()
    }
    /// `n` rows inserted into the local table `relid` (and so on for the others).
    pub fn inserted(&mut self, relid: pg_sys::Oid, n: i64) {
        self.inserts += n;
        self.table(relid).inserts += n;
    }
    pub fn updated(&mut self, relid: pg_sys::Oid, n: i64) {
        self.updates += n;
        self.table(relid).updates += n;
    }
    pub fn deleted(&mut self, relid: pg_sys::Oid, n: i64) {
        self.deletes += n;
        self.table(relid).deletes += n;
    }
    pub fn truncated(&mut self, relid: pg_sys::Oid) {
        self.truncates += 1;
        self.table(relid).truncates += 1;
    }
    /// `n` conflicts of type `t` on the local table `relid` (every conflict is counted here).
    pub fn conflict(&mut self, relid: pg_sys::Oid, t: ConflictType, n: i64) {
        if n == 0 {
            return;
        }
        self.conflicts[t.index()] += n;
        self.table(relid).conflicts[t.index()] += n;
    }
    /// Takes what counts whatever becomes of the transaction: bytes received, logical decoding
    /// messages (transactional ones are re-sent with a retried transaction, as its conflicts
    /// are) and conflicts (by table too), leaving the changes.
    fn take_immediate(&mut self) -> Counters {
        let mut out = Counters {
            bytes_received: std::mem::take(&mut self.bytes_received),
            messages: std::mem::take(&mut self.messages),
            conflicts: std::mem::take(&mut self.conflicts),
            ..Counters::default()
        };
        for (relid, t) in self.tables.iter_mut() {
            if t.conflicts.iter().any(|&n| n != 0) {
                out.tables.entry(*relid).or_default().conflicts = std::mem::take(&mut t.conflicts);
            }
        }
        out
    }

    /// The row changes counted so far (not conflicts, messages or bytes), to be put back with
    /// [`Counters::restore_changes`] when what was counted since is rolled back.
    pub fn changes(&self) -> Changes {
        Changes {
            totals: [self.inserts, self.updates, self.deletes, self.truncates],
            tables: self.tables.iter().map(|(k, t)| (*k, [t.inserts, t.updates, t.deletes, t.truncates])).collect(),
        }
    }

    /// Puts the row changes back to `c` (a subtransaction the publisher rolled back); conflicts
    /// found meanwhile stay counted.
    pub fn restore_changes(&mut self, c: &Changes) {
        [self.inserts, self.updates, self.deletes, self.truncates] = c.totals;
        for (relid, t) in self.tables.iter_mut() {
            [t.inserts, t.updates, t.deletes, t.truncates] = c.tables.get(relid).copied().unwrap_or_default();
        }
    }

    /// Adds counts collected elsewhere (a batch's) to these.
    pub fn absorb(&mut self, o: Counters) {
        self.txns += o.txns;
        self.inserts += o.inserts;
        self.updates += o.updates;
        self.deletes += o.deletes;
        self.truncates += o.truncates;
        self.messages += o.messages;
        for (a, b) in self.conflicts.iter_mut().zip(o.conflicts) {
            *a += b;
        }
        self.skipped += o.skipped;
        self.bytes_received += o.bytes_received;
        for (relid, c) in o.tables {
            self.tables.entry(relid).or_default().add(&c);
        }
    }
}

/// A snapshot of [`Counters`]' row changes: inserts, updates, deletes, truncates, in all and by
/// table.
#[derive(Clone, Default)]
pub struct Changes {
    totals: [i64; 4],
    tables: HashMap<u32, [i64; 4]>,
}

pub struct Progress {
    subid: i32,
    /// A sync worker's progress: positions and status are the apply worker's to show; only the
    /// counters of what the catch-up applied are added to the subscription's.
    counters_only: bool,
    /// A parallel apply worker's: counters only, messages included, no positions kept (the
    /// leader keeps them).
    parallel: bool,
    /// (remote commit end, local commit end) not yet known durable locally.
    pending: VecDeque<(Lsn, Lsn)>,
    /// Newest position the publisher has told us about (XLogData start, keepalive WAL end).
    pub received: Lsn,
    pub wal_end: Lsn,
    pub applied: Lsn,
    pub flushed: Lsn,
    pub last_send_time: i64,
    /// The last keepalive's WAL end and send time (`SubSlot::latest_end_lsn`).
    latest_end: Lsn,
    latest_end_time: i64,
    pub last_commit_time: i64,
    pub pending_commit_time: i64,
    pub caught_up: Lsn,
    /// The walsender said it has read all the WAL there is, and no data came since (see
    /// [`Progress::on_keepalive`]). Only then is an empty socket taken as caught up for
    /// `pending_commit_time`: it is empty too while the walsender decodes a large transaction,
    /// or starts decoding after a restart of the worker.
    idle_seen: bool,
    /// When data last came, or the worker started (the idle question's clock).
    pub data_at: Instant,
    /// The publisher's WAL end as the publisher itself said it (IDENTIFY_SYSTEM at the start, the
    /// lag probe): a walsender that has read that far has nothing older left to send.
    publisher_end: Lsn,
    /// What the transaction being applied counted so far (and frames received).
    pub counters: Counters,
    /// What committed transactions counted, not published yet.
    committed: Counters,
    last_reported: (Lsn, Lsn),
    last_report_at: Option<Instant>,
    /// A move of the positions not reported yet (`report_due`).
    unreported: bool,
    /// When `flush_applied` last flushed, and whether one was held back since (`FLUSH_MIN_GAP`).
    flushed_at: Option<Instant>,
    flush_held: bool,
    last_publish_at: Instant,
    /// Each table's entry in `monitor.rs`, found once.
    table_hints: HashMap<u32, usize>,
    /// Logged that the table entries are all taken.
    warned_full: bool,
}

impl Progress {
    pub fn new(subid: i32, start: Lsn) -> Progress {
        Progress {
            subid,
            counters_only: false,
            parallel: false,
            pending: VecDeque::new(),
            received: start,
            wal_end: start,
            applied: start,
            flushed: start,
            last_send_time: 0,
            latest_end: Lsn::INVALID,
            latest_end_time: 0,
            last_commit_time: 0,
            // Not known until a BEGIN (its commit time) or the stream is caught up (0).
            pending_commit_time: shmem::LAG_UNKNOWN,
            caught_up: Lsn::INVALID,
            idle_seen: false,
            data_at: Instant::now(),
            publisher_end: Lsn::INVALID,
            counters: Counters::default(),
            committed: Counters::default(),
            last_reported: (Lsn::INVALID, Lsn::INVALID),
            last_report_at: None,
            unreported: false,
            flushed_at: None,
            flush_held: false,
            last_publish_at: Instant::now(),
            table_hints: HashMap::new(),
            warned_full: false,
        }
    }

    /// The progress of a sync worker's catch-up (`counters_only`).
    pub fn for_sync_worker(subid: i32, start: Lsn) -> Progress {
        Progress { counters_only: true, ..Progress::new(subid, start) }
    }

    /// The progress of a parallel apply worker (`parallel/`).
    pub fn for_parallel_worker(subid: i32) -> Progress {
        Progress { counters_only: true, parallel: true, ..Progress::new(subid, Lsn::INVALID) }
    }

    /// A frame arrived: `start` is its WAL position (0 for keepalives), `end` the server's WAL end.
    pub fn on_frame(&mut self, start: Lsn, end: Lsn, send_time: i64) {
        if start.is_valid() {
            self.idle_seen = false;
            self.data_at = Instant::now();
        }
        if start > self.received {
            self.received = start;
        }
        if end > self.wal_end {
            self.wal_end = end;
        }
        if send_time != 0 {
            self.last_send_time = send_time;
            if !start.is_valid() {
                // A keepalive (the publisher's word through on_publisher_end has no time): its
                // WAL end, or what was received if that is further, as native's worker shows.
                self.latest_end = end.max(self.received);
                self.latest_end_time = send_time;
            }
        }
    }

    /// The publisher's own word on its WAL end (see `publisher_end`).
    pub fn on_publisher_end(&mut self, end: Lsn) {
        self.publisher_end = self.publisher_end.max(end);
        self.on_frame(Lsn::INVALID, end, 0);
    }

    /// Whether the apply lag is known to be 0 once nothing is open (`idle_seen`).
    pub fn idle_seen(&self) -> bool {
        self.idle_seen
    }

    /// A keepalive outside a transaction told us the server's WAL end: nothing before it is
    /// pending for us. `unasked`: the walsender sent it on its own, not asking for a reply — it
    /// does so on reaching the end of its WAL (its timeout pings ask for a reply; its answers to
    /// ours come while it may still be decoding). Either that, or a WAL end at least the
    /// publisher's own, says the walsender has nothing older left: the apply lag is 0.
    pub fn on_keepalive(&mut self, end: Lsn, unasked: bool) {
        if unasked || (self.publisher_end.is_valid() && end >= self.publisher_end) {
            self.idle_seen = true;
        }
        if end > self.received {
            self.received = end;
        }
    }

    /// A remote transaction ending at `remote_end` committed locally, ending at `local_end`.
    pub fn on_commit(&mut self, remote_end: Lsn, local_end: Lsn, commit_time: i64) {
        self.counters.txns += 1;
        self.on_group_commit(remote_end, local_end, commit_time);
    }

    /// A remote transaction was applied and its commit deferred (grouped commits,
    /// `apply.rs`): counted, but its counters and position wait for the local commit.
    pub fn on_commit_deferred(&mut self) {
        self.counters.txns += 1;
    }

    /// The local commit of a group of remote transactions (counted as each was applied), the
    /// last of which ends at `remote_end`.
    pub fn on_group_commit(&mut self, remote_end: Lsn, local_end: Lsn, commit_time: i64) {
        self.applied = remote_end;
        self.last_commit_time = commit_time;
        if local_end.is_valid() && !self.parallel {
            self.pending.push_back((remote_end, local_end));
        }
        let done = std::mem::take(&mut self.counters);
        self.committed.absorb(done);
    }

    /// A remote transaction was committed locally by a parallel apply worker (which counts its
    /// changes): only the positions move here.
    pub fn on_commit_elsewhere(&mut self, remote_end: Lsn, local_end: Lsn, commit_time: i64) {
        self.applied = remote_end;
        self.last_commit_time = commit_time;
        if local_end.is_valid() {
            self.pending.push_back((remote_end, local_end));
        }
    }

    /// The transaction being applied was rolled back (a streamed transaction aborted on the
    /// publisher): its changes do not count; conflicts, messages and bytes received still do.
    pub fn discard_changes(&mut self) {
        self.counters = self.counters.take_immediate();
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

    /// Makes the applied local commits durable now (one WAL flush up to the last of them), so
    /// that they can be confirmed without waiting for the WAL writer. Called when the socket is
    /// empty: under a steady stream the flushes are one per idle moment, not one per commit.
    pub fn flush_applied(&mut self) {
        self.flush_held = false;
        let Some(&(_, last)) = self.pending.back() else { return };
        // SAFETY: reads the shared WAL flush pointer; XLogFlush writes and fsyncs WAL up to a
        // position already inserted (a commit record's end), outside any transaction.
        unsafe {
            if last.0 <= pg_sys::GetFlushRecPtr(std::ptr::null_mut()) {
                return;
            }
            // At most every FLUSH_MIN_GAP: a steady stream of small transactions leaves the
            // socket empty after nearly each one, and a flush for each would fsync the WAL
            // hundreds of times a second (bench/NOTES.md, 26). A held-back flush shortens the
            // next wait to do it.
            if self.flushed_at.is_some_and(|t| t.elapsed() < FLUSH_MIN_GAP) {
                self.flush_held = true;
                return;
            }
            pg_sys::XLogFlush(last.0);
        }
        self.flushed_at = Some(Instant::now());
    }

    /// A flush is held back until `FLUSH_MIN_GAP` has passed (`flush_applied`): how long is left.
    pub fn flush_held_for(&self) -> Option<Duration> {
        self.flush_held.then(|| FLUSH_MIN_GAP.saturating_sub(self.flushed_at.map_or(FLUSH_MIN_GAP, |t| t.elapsed())))
    }

    /// Whether local commits are waiting to become durable before they can be confirmed.
    pub fn awaiting_flush(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether a status update is due: the publisher asked, the interval passed, or what we could
    /// confirm moved — then at most every `REPORT_MIN_GAP`: a stream that leaves the socket
    /// empty for a moment hundreds of times a second would otherwise be answered with as many
    /// status updates, each one more message for the walsender to take in (bench/NOTES.md, 18).
    /// A move held back sets `unreported`, and the wait is cut short to send it.
    pub fn report_due(&mut self, positions: (Lsn, Lsn, Lsn), interval: Duration, force: bool) -> bool {
        let since = self.since_report();
        let moved = (positions.0, positions.1) != self.last_reported;
        self.unreported = moved && since < REPORT_MIN_GAP;
        force || since >= interval || (moved && since >= REPORT_MIN_GAP)
    }

    /// A position move is waiting for `REPORT_MIN_GAP` to pass (`report_due`).
    pub fn unreported(&self) -> bool {
        self.unreported
    }

    /// Time since the last status update was sent.
    pub fn since_report(&self) -> Duration {
        self.last_report_at.map(|t| t.elapsed()).unwrap_or(Duration::MAX)
    }

    pub fn reported(&mut self, positions: (Lsn, Lsn, Lsn)) {
        self.last_reported = (positions.0, positions.1);
        self.last_report_at = Some(Instant::now());
        self.unreported = false;
    }

    /// Everything received has been applied and nothing is in progress; the apply lag is 0 once
    /// the walsender has said it has nothing more (`idle_seen`): until then the last transaction's
    /// commit time stays pending (its age grows while the walsender decodes the next one), or
    /// the lag stays unknown after a start.
    pub fn mark_caught_up(&mut self) {
        self.caught_up = self.received.max(self.applied);
        if self.idle_seen {
            self.pending_commit_time = 0;
        }
    }

    /// Whether counters have not reached shared memory for a while (the receive loop publishes
    /// then even in the middle of a stream of frames).
    pub fn publish_due(&self) -> bool {
        self.last_publish_at.elapsed() >= PUBLISH_INTERVAL
    }

    /// Copies progress and counters into the shared-memory slot (counters are added, so they
    /// survive worker restarts), each table's into its entry, and the second's rate bucket.
    pub fn publish(&mut self, status: Option<shmem::Status>, receipt_time: i64) {
        self.last_publish_at = Instant::now();
        let mut c = std::mem::take(&mut self.committed);
        c.absorb(self.counters.take_immediate());
        let at = crate::process::now();
        let all_fit = {
            let mut g = shmem::SHARED.exclusive();
            if let Some(s) = g.find_mut(self.subid) {
                self.add_counters(s, &c, at);
                if !self.counters_only {
                    self.show_progress(s, status, receipt_time);
                }
            }
            c.tables.is_empty()
                || crate::monitor::add_counts(&mut g, self.subid, c.tables.iter(), at, &mut self.table_hints)
        };
        if !all_fit && !self.warned_full {
            self.warned_full = true;
            pgrx::warning!(
                "pgsub: all {} per-table statistics entries are taken; some tables of this subscription are not counted in pgsub.stat_subscription_table",
                crate::monitor::MAX_TABLES
            );
        }
    }

    fn add_counters(&self, s: &mut shmem::SubSlot, c: &Counters, at: i64) {
        s.txns_applied += c.txns;
        s.inserts += c.inserts;
        s.updates += c.updates;
        s.deletes += c.deletes;
        s.truncates += c.truncates;
        add_conflicts(s, c);
        if !self.counters_only || self.parallel {
            // A sync worker's catch-up passes messages and skipped transactions the apply worker
            // counts too.
            s.messages += c.messages;
            s.txns_skipped += c.skipped;
        }
        if self.parallel {
            s.parallel_txns += c.txns;
        }
        let rows = c.inserts + c.updates + c.deletes;
        s.recv_bytes += c.bytes_received;
        s.rates.add(crate::history::second(at), c.txns, rows, c.bytes_received);
        if c.txns > 0 && (!self.counters_only || self.parallel) {
            // A transaction went through: the failure streak is over.
            s.failures = 0;
        }
    }

    fn show_progress(&self, s: &mut shmem::SubSlot, status: Option<shmem::Status>, receipt_time: i64) {
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
        if self.latest_end_time != 0 {
            s.latest_end_lsn = self.latest_end.0;
            s.latest_end_time = self.latest_end_time;
        }
        if self.last_commit_time != 0 {
            s.last_commit_time = self.last_commit_time;
        }
        s.pending_commit_time = self.pending_commit_time;
    }
}

/// Adds the conflicts to the slot's counters (by type and in all).
fn add_conflicts(s: &mut shmem::SubSlot, c: &Counters) {
    for t in ConflictType::ALL {
        s.count_conflicts(t, c.conflicts[t.index()]);
    }
}
