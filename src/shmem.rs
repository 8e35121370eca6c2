//! Shared memory: one slot per database the supervisor knows (its launcher and state), one slot
//! per known subscription of any database holding its worker state and statistics, and one slot
//! per table being synchronized (its sync worker, progress, last error and backoff).
//!
//! Subscription ids are unique server-wide (`catalog::insert` picks one no other database uses),
//! so a subscription's slot is found by its id alone; each slot also names its database.
//! The supervisor owns the database slots (a launcher writes its own pid and state); a
//! database's launcher claims a slot for every subscription it sees and decides when workers start; the
//! apply worker owns the progress and counter fields of its slot while it runs; an apply worker
//! claims a [`SyncSlot`] for each table it starts a sync worker for, the two exchange the
//! catch-up handshake through it (`src/worker/syncing.rs`, `src/worker/syncworker.rs`), and it
//! is freed once the table is synchronized. A backend running `pgsub.verify_subscription` writes a
//! slot's `hold` request and the apply worker answers in it (`src/worker/hold.rs`). The SQL views (`stats.rs`) read every slot under a
//! shared lock. Counters survive worker restarts; everything
//! here is reset when the postmaster restarts (shared memory is created anew).
use pgrx::lwlock::PgLwLock;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_shmem_init, pg_sys};
pub use pgsub_core::state::{ConflictType, Status, SyncPhase};
pub use pgsub_core::supervise::DbState;
use std::sync::atomic::{AtomicBool, Ordering};

/// Subscriptions whose state fits in shared memory at once.
pub const MAX_SUBSCRIPTIONS: usize = 128;
/// Tables being synchronized (or waiting to retry) at once, server-wide; `pgsub.max_sync_workers`
/// caps the running workers below it.
pub const MAX_SYNC_SLOTS: usize = 64;
/// Databases the supervisor keeps a state for (beyond it, extra databases are not served).
pub const MAX_DATABASES: usize = 256;
/// Parallel apply workers listed at once, server-wide (`pgsub.stat_subscription_workers`); one
/// started while all are taken runs unlisted.
pub const MAX_PARALLEL_SLOTS: usize = 64;
const NAME_LEN: usize = 64;
/// `SubSlot::pending_commit_time` when how far behind apply is is not known (the view's
/// `apply_lag` is NULL): a worker that has not heard from its publisher since it started.
pub const LAG_UNKNOWN: i64 = i64::MIN;
const ERR_LEN: usize = 1000;
const SYNC_ERR_LEN: usize = 500;

/// State of one subscription. Timestamps are PostgreSQL `TimestampTz` (µs since 2000-01-01), 0 =
/// unset; LSNs are raw `XLogRecPtr`, 0 = unset.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct SubSlot {
    pub subid: i32,
    /// The subscription's database and name (for the server-wide view).
    pub dboid: u32,
    pub name_len: u8,
    pub name: [u8; NAME_LEN],
    pub status: Status,
    /// When the current wait for a worker began (0 = not waiting): first come, first served.
    pub waiting_since: i64,
    /// Its launcher registered a worker that has not claimed the slot yet (counts against the
    /// server-wide cap for the other databases' launchers).
    pub launch_pending: bool,
    /// The launcher logged the "no free worker slot" WARNING for the current wait.
    pub warned_no_worker: bool,
    /// The last worker exited with an error (so the next start is delayed).
    pub failed: bool,
    /// The running worker's pid: set by the worker when it claims the slot, cleared by the
    /// worker itself when it exits (`before_shmem_exit`), so a pid here is a live worker (a
    /// crash of any backend resets shared memory).
    pub pid: i32,
    /// A backend dropping or refreshing this subscription: no worker starts while it lives.
    pub paused_by: i32,
    /// When a routine stop of the running worker was asked for (disable, a changed option, a
    /// refresh; 0 = none): the worker reads it between messages and in its waits and exits
    /// cleanly, as native's worker does on seeing its subscription changed. Only a worker that
    /// has not exited a few seconds later gets SIGTERM (`process::ask_to_stop`).
    pub stop_asked_at: i64,
    /// Why a pgsub function asked the running worker to stop (`StopReason`, 0 = not said: the
    /// launcher's stop after a committed change, which the worker reads from the catalog).
    pub stop_reason: u8,
    /// When a worker last reached its slot (connected, and took it or left it on purpose): a
    /// worker the launcher registered after this that is gone never got there — a failed run.
    pub reached_at: i64,
    /// Consecutive failed runs, for the restart backoff.
    pub failures: i32,
    /// When the first failed run of the current streak ended (its error's time), set as the
    /// launcher counts it: `pgsub.health`'s `error` since.
    pub streak_since: i64,
    /// The launcher will not start a worker before this time.
    pub next_start_at: i64,
    /// When the launcher last registered a worker (0 = never): a failed run's backoff counts
    /// from there.
    pub launched_at: i64,
    /// Fingerprint of the catalog row the running worker was started with.
    pub config_hash: u64,
    pub worker_started_at: i64,
    /// The running worker's last sign of life (`process::heartbeat`: each wake from a wait and
    /// each change applied, at most every 250 ms; 0 = none yet): `pgsub.health`'s `stalled`.
    pub alive_at: i64,
    /// When `disable_on_error` disabled the subscription (0 = it did not, or a worker has run it
    /// since it was enabled again): `pgsub.health`'s `disabled_by_error`. Not kept across a
    /// server restart.
    pub disabled_by_error_at: i64,
    /// The publisher's `server_version_num` and the negotiated pgoutput protocol version, as
    /// of the running worker's connection (0 = not connected yet).
    pub publisher_version: u32,
    pub proto_version: u32,
    /// Parallel apply workers the running worker has (`worker/parallel/`), the streamed
    /// transactions they committed, and the remote xid of the last transaction one failed on
    /// (0 = none; that transaction is applied again by spilling, not in parallel).
    pub parallel_workers: i32,
    pub parallel_txns: i64,
    pub parallel_failed_xid: u32,
    /// Whether the running worker's stream carries binary tuples (None = not connected yet).
    pub binary_in_use: Option<bool>,
    /// Finish LSN of the transaction an automatically binary stream failed at: the next workers
    /// stream text until it is applied (`worker/format.rs`; 0 = none).
    pub text_until: u64,
    /// Finish LSN of the last transaction an apply worker failed on: the next workers commit
    /// every transaction up to it on its own (no grouped commits, `worker/receive.rs`).
    pub ungrouped_until: u64,
    pub received_lsn: u64,
    pub applied_lsn: u64,
    pub flushed_lsn: u64,
    pub publisher_wal_end: u64,
    /// The WAL end and send time of the publisher's last keepalive (native
    /// `pg_stat_subscription.latest_end_lsn` / `latest_end_time`; 0 = none yet).
    pub latest_end_lsn: u64,
    pub latest_end_time: i64,
    /// Everything the publisher sent up to here has been applied (idle and caught up).
    pub caught_up_lsn: u64,
    pub last_msg_send_time: i64,
    pub last_msg_receipt_time: i64,
    pub last_commit_time: i64,
    /// Commit time of the oldest received transaction not applied yet (0 = none,
    /// [`LAG_UNKNOWN`] = not known: no worker has heard from the publisher yet).
    pub pending_commit_time: i64,
    pub txns_applied: i64,
    pub inserts: i64,
    pub updates: i64,
    pub deletes: i64,
    pub truncates: i64,
    pub messages: i64,
    pub conflicts: i64,
    pub txns_skipped: i64,
    /// Errors of the apply worker and of the subscription's sync workers (their sum is
    /// `error_count`), as native `pg_stat_subscription_stats` counts them.
    pub error_count: i64,
    pub apply_error_count: i64,
    pub sync_error_count: i64,
    /// Conflicts by PostgreSQL 18's type names, indexed by `ConflictType` (`conflicts` is their
    /// sum).
    pub confl: [i64; ConflictType::COUNT],
    /// When `pgsub.reset_stats` last zeroed the counters (0 = never).
    pub stats_reset: i64,
    /// Bytes of replication frames received (a counter, as the others).
    pub recv_bytes: i64,
    /// Transactions, rows and bytes received per second over the last minute (`history.rs`).
    pub rates: pgsub_core::rates::RateRing,
    pub last_error_at: i64,
    /// Finish LSN of the remote transaction whose batch (COPY of INSERTs, or DELETEs) failed
    /// last: the next worker applies its rows one by one, so that the error names the column
    /// (0 = none).
    pub batch_failed_lsn: u64,
    /// A `pgsub.verify_subscription` hold of the apply worker (`src/worker/hold.rs`).
    pub hold: crate::worker::hold::Hold,
    pub last_error_len: u16,
    pub last_error: [u8; ERR_LEN],
}

impl SubSlot {
    /// Counts `n` conflicts of one type (and in the total).
    pub fn count_conflicts(&mut self, t: ConflictType, n: i64) {
        self.confl[t.index()] += n;
        self.conflicts += n;
    }
}

impl Default for SubSlot {
    fn default() -> Self {
        SubSlot {
            subid: 0,
            dboid: 0,
            name_len: 0,
            name: [0; NAME_LEN],
            status: Status::Starting,
            waiting_since: 0,
            launch_pending: false,
            warned_no_worker: false,
            failed: false,
            pid: 0,
            paused_by: 0,
            stop_asked_at: 0,
            stop_reason: 0,
            reached_at: 0,
            failures: 0,
            next_start_at: 0,
            config_hash: 0,
            worker_started_at: 0,
            alive_at: 0,
            launched_at: 0,
            streak_since: 0,
            disabled_by_error_at: 0,
            publisher_version: 0,
            proto_version: 0,
            parallel_workers: 0,
            parallel_txns: 0,
            parallel_failed_xid: 0,
            binary_in_use: None,
            text_until: 0,
            ungrouped_until: 0,
            received_lsn: 0,
            applied_lsn: 0,
            flushed_lsn: 0,
            publisher_wal_end: 0,
            latest_end_lsn: 0,
            latest_end_time: 0,
            caught_up_lsn: 0,
            last_msg_send_time: 0,
            last_msg_receipt_time: 0,
            last_commit_time: 0,
            pending_commit_time: 0,
            txns_applied: 0,
            inserts: 0,
            updates: 0,
            deletes: 0,
            truncates: 0,
            messages: 0,
            conflicts: 0,
            txns_skipped: 0,
            error_count: 0,
            apply_error_count: 0,
            sync_error_count: 0,
            confl: [0; ConflictType::COUNT],
            stats_reset: 0,
            recv_bytes: 0,
            rates: pgsub_core::rates::RateRing::default(),
            last_error_at: 0,
            batch_failed_lsn: 0,
            hold: crate::worker::hold::Hold::default(),
            last_error_len: 0,
            last_error: [0; ERR_LEN],
        }
    }
}

impl SubSlot {
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.name[..(self.name_len as usize).min(NAME_LEN)]).into_owned()
    }

    pub fn set_name(&mut self, name: &str) {
        let n = cut(name, NAME_LEN);
        self.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        self.name_len = n as u8;
    }

    pub fn last_error(&self) -> Option<String> {
        if self.last_error_len == 0 {
            return None;
        }
        let n = (self.last_error_len as usize).min(ERR_LEN);
        Some(String::from_utf8_lossy(&self.last_error[..n]).into_owned())
    }

    /// Puts back an error message saved at a clean shutdown (`statsfile.rs`), not counted again.
    pub fn restore_error(&mut self, msg: &str, at: i64) {
        let n = cut(msg, ERR_LEN);
        self.last_error[..n].copy_from_slice(&msg.as_bytes()[..n]);
        self.last_error_len = n as u16;
        self.last_error_at = at;
    }

    /// Stores an error message (cut at a character boundary if too long) and counts it, as an
    /// apply worker's or a sync worker's (`sync`).
    pub fn set_error(&mut self, msg: &str, at: i64, sync: bool) {
        self.restore_error(msg, at);
        self.error_count += 1;
        if sync {
            self.sync_error_count += 1;
        } else {
            self.apply_error_count += 1;
        }
    }

    /// Zeroes the counters (`pgsub.reset_stats`); positions, status and the last error stay.
    pub fn reset_counters(&mut self, at: i64) {
        self.txns_applied = 0;
        self.inserts = 0;
        self.updates = 0;
        self.deletes = 0;
        self.truncates = 0;
        self.messages = 0;
        self.conflicts = 0;
        self.txns_skipped = 0;
        self.error_count = 0;
        self.apply_error_count = 0;
        self.sync_error_count = 0;
        self.confl = [0; ConflictType::COUNT];
        self.recv_bytes = 0;
        self.parallel_txns = 0;
        self.stats_reset = at;
    }
}

/// One table being synchronized: its sync worker, the handshake with the apply worker, live copy
/// progress, and its last error and backoff (kept while the table waits to retry).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct SyncSlot {
    /// 0 = free.
    pub subid: i32,
    /// The local table (`pgsub.sub_rel.relid`).
    pub relid: u32,
    /// The running sync worker (cleared by it when it exits).
    pub pid: i32,
    /// The apply worker that registered it, then the one that answered its SYNCWAIT: a catch-up
    /// is given up when that one is gone (`syncworker::answering_apply_worker_gone`).
    pub apply_pid: i32,
    pub phase: SyncPhase,
    /// Registered, not claimed by the worker yet.
    pub registered: bool,
    /// No background worker slot could be had: the table waits.
    pub waiting: bool,
    /// The sync worker dropped its slot on the publisher.
    pub slot_dropped: bool,
    /// Set by the apply worker in CATCHUP: where the catch-up ends (its own position).
    pub catchup_lsn: u64,
    /// Set by the sync worker with SYNCDONE: the table's `state_lsn`.
    pub done_lsn: u64,
    pub rows_copied: i64,
    pub bytes_copied: i64,
    pub copy_started_at: i64,
    pub registered_at: i64,
    /// The running sync worker's last sign of life, as `SubSlot::alive_at`.
    pub alive_at: i64,
    /// Consecutive failed attempts, and when the next may start.
    pub failures: i32,
    pub next_start_at: i64,
    pub last_error_at: i64,
    pub last_error_len: u16,
    pub last_error: [u8; SYNC_ERR_LEN],
}

impl Default for SyncSlot {
    fn default() -> Self {
        SyncSlot {
            subid: 0,
            relid: 0,
            pid: 0,
            apply_pid: 0,
            phase: SyncPhase::Idle,
            registered: false,
            waiting: false,
            slot_dropped: false,
            catchup_lsn: 0,
            done_lsn: 0,
            rows_copied: 0,
            bytes_copied: 0,
            copy_started_at: 0,
            registered_at: 0,
            alive_at: 0,
            failures: 0,
            next_start_at: 0,
            last_error_at: 0,
            last_error_len: 0,
            last_error: [0; SYNC_ERR_LEN],
        }
    }
}

impl SyncSlot {
    /// A worker is registered or running for the table.
    pub fn active(&self) -> bool {
        self.pid > 0 || self.registered
    }

    pub fn last_error(&self) -> Option<String> {
        (self.last_error_len > 0).then(|| {
            let n = (self.last_error_len as usize).min(SYNC_ERR_LEN);
            String::from_utf8_lossy(&self.last_error[..n]).into_owned()
        })
    }

    pub fn set_error(&mut self, msg: &str, at: i64) {
        let n = cut(msg, SYNC_ERR_LEN);
        self.last_error[..n].copy_from_slice(&msg.as_bytes()[..n]);
        self.last_error_len = n as u16;
        self.last_error_at = at;
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends at a character boundary.
fn cut(s: &str, max: usize) -> usize {
    let mut n = s.len().min(max);
    while n > 0 && !s.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// One database: its launcher and what the supervisor knows of it (`pgsub_core::supervise`).
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub struct DbSlot {
    pub oid: u32,
    pub state: DbState,
    /// The launcher's pid, written by the launcher itself and cleared when it exits.
    pub pid: i32,
    /// A pgsub function in this database asked for a look (its launcher clears it when it reads
    /// the catalog; the supervisor when it starts one).
    pub wake: bool,
    pub probes: i64,
    pub last_probe_at: i64,
    pub next_start_at: i64,
}

#[derive(Clone, Copy)]
#[repr(C)]
pub struct Shared {
    pub supervisor_pid: i32,
    /// The counters saved at the last clean shutdown were read back (`statsfile.rs`).
    pub stats_restored: bool,
    pub dbs: [DbSlot; MAX_DATABASES],
    pub slots: [SubSlot; MAX_SUBSCRIPTIONS],
    pub sync: [SyncSlot; MAX_SYNC_SLOTS],
    pub parallel: [ParallelSlot; MAX_PARALLEL_SLOTS],
}

/// A running parallel apply worker of a subscription and its leader: taken by the worker when
/// it starts, freed when it exits (a crash resets shared memory).
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub struct ParallelSlot {
    pub subid: i32,
    pub pid: i32,
    pub leader_pid: i32,
}

/// Lists this parallel apply worker (`pid`, of subscription `subid`, led by `leader_pid`);
/// false when every slot is taken.
pub fn list_parallel_worker(subid: i32, pid: i32, leader_pid: i32) -> bool {
    let mut g = SHARED.exclusive();
    match g.parallel.iter_mut().find(|p| p.pid == 0) {
        Some(p) => {
            *p = ParallelSlot { subid, pid, leader_pid };
            true
        }
        None => false,
    }
}

/// Frees the slot of the parallel apply worker `pid` (at its exit).
pub fn unlist_parallel_worker(pid: i32) {
    let mut g = SHARED.exclusive();
    for p in g.parallel.iter_mut().filter(|p| p.pid == pid) {
        *p = ParallelSlot::default();
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            supervisor_pid: 0,
            stats_restored: false,
            dbs: [DbSlot::default(); MAX_DATABASES],
            slots: [SubSlot::default(); MAX_SUBSCRIPTIONS],
            sync: [SyncSlot::default(); MAX_SYNC_SLOTS],
            parallel: [ParallelSlot::default(); MAX_PARALLEL_SLOTS],
        }
    }
}

// SAFETY: plain-old-data without pointers; lives in shared memory under an LWLock.
unsafe impl PGRXSharedMemory for Shared {}

// SAFETY: the name is unique to pgsub.
pub static SHARED: PgLwLock<Shared> = unsafe { PgLwLock::new(c"pgsub_shared") };

static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Called from `_PG_init` in the postmaster; every child inherits the flag.
pub fn init() {
    pg_shmem_init!(SHARED);
    PRELOADED.store(true, Ordering::Relaxed);
}

/// True when pgsub was preloaded, so its shared memory (and launcher) exist.
pub fn available() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

impl Shared {
    pub fn find(&self, subid: i32) -> Option<&SubSlot> {
        self.slots.iter().find(|s| s.subid == subid)
    }
    pub fn find_mut(&mut self, subid: i32) -> Option<&mut SubSlot> {
        self.slots.iter_mut().find(|s| s.subid == subid)
    }
    /// The slot of `subid` of database `dboid`, claiming a free one if needed (None when all
    /// are taken).
    /// A slot of the same id held by another database (a database copied from another with
    /// CREATE DATABASE … TEMPLATE carries its subscriptions' ids) is not this one's: None.
    pub fn claim(&mut self, subid: i32, dboid: u32) -> Option<&mut SubSlot> {
        let idx = match self.slots.iter().position(|s| s.subid == subid) {
            Some(i) if self.slots[i].dboid != dboid => return None,
            Some(i) => i,
            None => {
                let i = self.slots.iter().position(|s| s.subid == 0)?;
                self.slots[i] = SubSlot { subid, dboid, pending_commit_time: LAG_UNKNOWN, ..SubSlot::default() };
                // A new subscription (or a dropped one's id reused): no table counters or lag
                // history of an earlier holder.
                crate::monitor::forget_subscription(self, subid, i);
                i
            }
        };
        Some(&mut self.slots[idx])
    }
    /// How many subscriptions of database `oid` hold a slot (its launcher claims one for each,
    /// enabled or not; a dropped one's is forgotten).
    pub fn subscriptions_of(&self, oid: u32) -> usize {
        self.slots.iter().filter(|s| s.subid != 0 && s.dboid == oid).count()
    }
    pub fn db(&self, oid: u32) -> Option<&DbSlot> {
        self.dbs.iter().find(|d| d.oid == oid)
    }
    pub fn db_mut(&mut self, oid: u32) -> Option<&mut DbSlot> {
        self.dbs.iter_mut().find(|d| d.oid == oid)
    }
    /// The slot of database `oid`, claiming a free one if needed (None when all are taken).
    pub fn claim_db(&mut self, oid: u32) -> Option<&mut DbSlot> {
        let idx = match self.dbs.iter().position(|d| d.oid == oid) {
            Some(i) => i,
            None => {
                let i = self.dbs.iter().position(|d| d.oid == 0)?;
                self.dbs[i] = DbSlot { oid, ..DbSlot::default() };
                i
            }
        };
        Some(&mut self.dbs[idx])
    }
    /// Forgets a dropped database: its slot, its subscriptions' slots and their sync slots
    /// (their workers are gone with the database).
    pub fn forget_db(&mut self, oid: u32) {
        let subids: Vec<i32> = self.slots.iter().filter(|s| s.dboid == oid && s.pid == 0).map(|s| s.subid).collect();
        for s in self.slots.iter_mut().filter(|s| subids.contains(&s.subid)) {
            *s = SubSlot::default();
        }
        for s in self.sync.iter_mut().filter(|s| subids.contains(&s.subid) && s.pid == 0) {
            *s = SyncSlot::default();
        }
        if let Some(d) = self.db_mut(oid) {
            *d = DbSlot::default();
        }
    }
    /// Forgets a dropped subscription's slot once its worker is gone.
    pub fn release_if_stopped(&mut self, subid: i32) {
        if let Some(s) = self.find_mut(subid) {
            if s.pid == 0 {
                *s = SubSlot::default();
            }
        }
    }
}

impl Shared {
    pub fn sync_slot(&self, subid: i32, relid: u32) -> Option<&SyncSlot> {
        self.sync.iter().find(|s| s.subid == subid && s.relid == relid)
    }
    pub fn sync_slot_mut(&mut self, subid: i32, relid: u32) -> Option<&mut SyncSlot> {
        self.sync.iter_mut().find(|s| s.subid == subid && s.relid == relid)
    }
    /// The sync slot of a table, claiming a free one if needed (None when all are taken).
    pub fn claim_sync(&mut self, subid: i32, relid: u32) -> Option<&mut SyncSlot> {
        let idx = match self.sync.iter().position(|s| s.subid == subid && s.relid == relid) {
            Some(i) => i,
            None => {
                let i = self.sync.iter().position(|s| s.subid == 0)?;
                self.sync[i] = SyncSlot { subid, relid, ..SyncSlot::default() };
                i
            }
        };
        Some(&mut self.sync[idx])
    }
    /// Sync workers registered or running, server-wide.
    pub fn active_sync_workers(&self) -> usize {
        self.sync.iter().filter(|s| s.subid != 0 && s.active()).count()
    }
}

/// Pids of the running sync workers of a subscription.
pub fn sync_worker_pids(subid: i32) -> Vec<i32> {
    SHARED.share().sync.iter().filter(|s| s.subid == subid && s.pid > 0).map(|s| s.pid).collect()
}

/// Forgets the sync slots of a dropped subscription whose workers are gone.
pub fn forget_sync_slots(subid: i32) {
    let mut g = SHARED.exclusive();
    for s in g.sync.iter_mut().filter(|s| s.subid == subid && s.pid == 0) {
        *s = SyncSlot::default();
    }
}

/// Runs `f` on the sync slot of a table under the exclusive lock, if there is one.
pub fn with_sync_slot<R>(subid: i32, relid: u32, f: impl FnOnce(&mut SyncSlot) -> R) -> Option<R> {
    let mut g = SHARED.exclusive();
    g.sync_slot_mut(subid, relid).map(f)
}

/// Runs `f` on the slot of `subid` under the exclusive lock, if there is one.
pub fn with_slot<R>(subid: i32, f: impl FnOnce(&mut SubSlot) -> R) -> Option<R> {
    let mut g = SHARED.exclusive();
    g.find_mut(subid).map(f)
}

/// Asks for a look at database `dboid`: wakes its launcher if one runs, and the supervisor,
/// which starts one if none does (procsignal's SIGUSR1 handler sets their latches).
pub fn wake_launcher(dboid: u32) {
    let (launcher, supervisor) = {
        let mut g = SHARED.exclusive();
        let launcher = match g.claim_db(dboid) {
            Some(d) => {
                d.wake = true;
                d.pid
            }
            None => 0,
        };
        (launcher, g.supervisor_pid)
    };
    crate::process::wake(launcher);
    crate::process::wake(supervisor);
}

/// The database this backend is connected to.
pub fn my_database() -> u32 {
    // SAFETY: MyDatabaseId is set in every connected backend.
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}
