//! The parallel apply worker: a dynamic background worker a leader apply worker starts for
//! `streaming => 'parallel'`. It reads the streamed messages of one remote transaction at a time
//! from its queue (`shared.rs`) and applies each change as it arrives, in one local transaction
//! — a remote subtransaction becomes a local subtransaction, so that a subtransaction the
//! publisher rolls back is rolled back here — and commits at Stream Commit, with the
//! subscription's replication origin handed over by the leader for the commit (its progress is
//! recorded in the commit record, so exactly-once holds as for the leader's own commits).
//!
//! ```text
//!   Idle ──Stream Start──▶ Started (transaction lock held, local transaction open)
//!                            │  changes applied; Stream Stop: batches flushed, then a wait
//!                            │  for the leader's stream lock (the next block)
//!                            ├─Stream Abort (top)──▶ rolled back ──▶ Idle
//!                            ├─Stream Abort (sub)──▶ back to that subtransaction's start
//!                            └─Stream Commit──▶ origin taken, commit, origin given back
//!                                               ──▶ Committed (lock released) ──▶ next Start
//!   any error ──▶ Failed: message, detail, hint and context left for the leader, then exit
//! ```
//! The leader's exit detaches the queue: the worker rolls back and exits.
use super::shared::{self, Header, Lock, TxnState};
use crate::catalog;
use crate::process::shutdown_requested;
use crate::worker::apply::{Applier, TableStates};
use crate::worker::progress::{Changes, Progress};
use crate::worker::{errctx, receive, triggers};
use crate::{report, shmem};
use bytes::Bytes;
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgsub_proto::pgoutput::{self, Begin, Commit, LogicalMessage, StreamCommit};
use pgsub_proto::Lsn;

type Code = PgSqlErrorCode;

/// Separates the parts of the error text a worker leaves for its leader.
pub const SEP: char = '\u{1f}';

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pgsub_parallel_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    crate::process::terminate_on_sigterm();
    let handle = arg.value() as u32;
    let extra = BackgroundWorker::get_extra().to_string();
    let mut parts = extra.split_whitespace().map(|p| p.parse::<u32>().unwrap_or(0));
    let (dboid, owner, subid) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(dboid)), Some(pg_sys::Oid::from(owner)));
    crate::worker::pin_session_defaults();
    // SAFETY: maps the segment its leader made (None when the leader is already gone).
    let Some((seg, hdr)) = (unsafe { shared::attach(handle) }) else {
        log!("pgsub parallel apply worker for subscription {subid}: its leader is gone, exiting");
        return;
    };
    // SAFETY: the header lives in the mapped segment for the process's life.
    let hdr: &'static mut Header = unsafe { &mut *hdr };
    // SAFETY: MyProcPid is set for every backend; MyBgworkerEntry in a background worker (its
    // notify pid is the leader that registered it).
    let (me, leader) = unsafe { (pg_sys::MyProcPid, (*pg_sys::MyBgworkerEntry).bgw_notify_pid) };
    hdr.worker_pid.store(me, std::sync::atomic::Ordering::Release);
    // Listed for `pgsub.stat_subscription_workers` while it runs.
    if crate::shmem::list_parallel_worker(subid as i32, me, leader) {
        // SAFETY: an exit callback of this process, registered once.
        unsafe { pg_sys::before_shmem_exit(Some(unlist_at_exit), pg_sys::Datum::from(0usize)) };
    }
    // SAFETY: the segment was made by `shared::create`; this process receives.
    let mq = unsafe { shared::attach_queue(seg, true) };
    errctx::install();
    triggers::install();
    // SAFETY: registered after InitPostgres's own exit callbacks, so it runs before their abort.
    unsafe { pg_sys::before_shmem_exit(Some(untag_at_exit), pg_sys::Datum::from(0usize)) };
    let hdr_ptr: *mut Header = hdr;
    // SAFETY (both closures): the header stays mapped until the process exits.
    PgTryBuilder::new(|| run(subid as i32, unsafe { &mut *hdr_ptr }, mq))
        .catch_others(|e| on_error(subid as i32, unsafe { &mut *hdr_ptr }, e))
        .execute();
}

struct ParallelApplier {
    subid: i32,
    hdr: &'static mut Header,
    mq: *mut pg_sys::shm_mq_handle,
    applier: Applier,
    progress: Progress,
    /// The remote transaction being applied.
    xid: Option<u32>,
    /// Open local subtransactions, outermost first: the remote subtransaction each began for,
    /// and the memory context and resource owner to return to when it ends.
    subxacts: Vec<(u32, pg_sys::MemoryContext, pg_sys::ResourceOwner)>,
    /// The row counts (the transaction's and its batches') when each subtransaction began: a
    /// subtransaction rolled back does not count.
    counts_at: Vec<(Changes, Changes)>,
}

fn run(subid: i32, hdr: &'static mut Header, mq: *mut pg_sys::shm_mq_handle) {
    let loaded =
        crate::worker::xact(|| catalog::load(subid).map(|s| s.map(|s| (s.clone(), catalog::load_rels(subid)))));
    let (sub, rels) = match loaded {
        Ok(Some((s, Ok(r)))) => (s, r),
        Ok(Some((_, Err(e)))) | Err(e) => {
            report::error(Code::ERRCODE_INTERNAL_ERROR, format!("reading the pgsub catalog: {e}"), None, None)
        }
        Ok(None) => return,
    };
    crate::worker::setup_session(&sub);
    crate::worker::set_guc("application_name", &format!("pgsub parallel apply {}", sub.name));
    let mut applier = Applier::new(subid, TableStates::new(&rels), hdr.binary, false, None);
    if hdr.auto_binary {
        // A relation binary cannot carry (a column type changed on the publisher since the
        // leader chose binary) is an error the leader retries in text, as for its own.
        applier.check_binary_choice();
    }
    let mut w = ParallelApplier {
        subid,
        hdr,
        mq,
        applier,
        progress: Progress::for_parallel_worker(subid),
        xid: None,
        subxacts: Vec::new(),
        counts_at: Vec::new(),
    };
    while let Some(frame) = w.receive() {
        w.handle(frame);
    }
    // The leader is gone or asked us to stop: an open transaction is not done.
    untag();
    w.applier.abort_all();
}

impl ParallelApplier {
    /// The next message from the leader; None when the leader detached or a stop was asked.
    fn receive(&mut self) -> Option<Bytes> {
        loop {
            if shutdown_requested() {
                return None;
            }
            let mut n: pg_sys::Size = 0;
            let mut data: *mut std::ffi::c_void = std::ptr::null_mut();
            // SAFETY: our attached queue handle; the data is copied before the next receive.
            let r = unsafe { pg_sys::shm_mq_receive(self.mq, &mut n, &mut data, true) };
            match r {
                pg_sys::shm_mq_result::SHM_MQ_SUCCESS => {
                    // SAFETY: shm_mq_receive returned `n` readable bytes at `data`.
                    let bytes = unsafe { std::slice::from_raw_parts(data as *const u8, n) };
                    return Some(Bytes::copy_from_slice(bytes));
                }
                pg_sys::shm_mq_result::SHM_MQ_WOULD_BLOCK => {
                    if self.progress.publish_due() {
                        self.progress.publish(None, 0);
                    }
                    crate::process::nap(1000, crate::process::Wait::ParallelApplyMain);
                }
                _ => return None,
            }
        }
    }

    fn handle(&mut self, frame: Bytes) {
        let Some((&flags, _)) = frame.split_first() else {
            report::error(Code::ERRCODE_PROTOCOL_VIOLATION, "empty message from the leader apply worker", None, None);
        };
        let payload = frame.slice(1..);
        let msg = match pgoutput::decode_one(payload, self.hdr.proto_version, flags & 1 != 0) {
            Ok(m) => m,
            Err(e) => report::error(
                Code::ERRCODE_PROTOCOL_VIOLATION,
                format!("invalid logical replication message from the leader apply worker: {e}"),
                None,
                None,
            ),
        };
        match msg {
            LogicalMessage::Relation(r) => self.applier.on_relation(r),
            LogicalMessage::Type(_) => {}
            LogicalMessage::Origin(o) => self.applier.origin(&o.name),
            LogicalMessage::StreamStart(s) => self.start(s.xid),
            LogicalMessage::StreamStop => self.block_done(),
            LogicalMessage::StreamAbort(a) => self.abort(a.xid, a.subxid),
            LogicalMessage::StreamCommit(c) => self.commit(c),
            LogicalMessage::Insert(_)
            | LogicalMessage::Update(_)
            | LogicalMessage::Delete(_)
            | LogicalMessage::Truncate(_)
            | LogicalMessage::Message(_) => {
                self.enter_subxact(change_xid(&msg));
                receive::apply_change(&mut self.applier, &mut self.progress, msg);
                self.hdr.changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            other => report::error(
                Code::ERRCODE_PROTOCOL_VIOLATION,
                format!("unexpected message \"{}\" for a parallel apply worker", other.kind()),
                None,
                None,
            ),
        }
    }

    /// Stream Start: the first block opens the local transaction (and takes the transaction
    /// lock the leader waits on at commit); later blocks go on in it.
    fn start(&mut self, xid: u32) {
        match self.xid {
            Some(x) if x == xid => return,
            Some(x) => report::error(
                Code::ERRCODE_PROTOCOL_VIOLATION,
                format!("parallel apply worker got transaction {xid} while transaction {x} is open"),
                None,
                None,
            ),
            None => {}
        }
        shared::lock(self.subid, xid, Lock::Transaction, true);
        self.hdr.xid.store(xid, std::sync::atomic::Ordering::Release);
        self.hdr.local_end.store(0, std::sync::atomic::Ordering::Release);
        self.hdr.changes.store(0, std::sync::atomic::Ordering::Relaxed);
        self.applier.begin(Begin { final_lsn: Lsn::INVALID, commit_time: 0, xid }, &mut self.progress);
        // SAFETY: tags this transaction's WAL with the subscription's origin (as the leader's),
        // so that a node subscribing back with origin = none does not send it back.
        unsafe { pg_sys::replorigin_session_origin = self.hdr.origin_id as pg_sys::RepOriginId };
        self.xid = Some(xid);
        self.hdr.set_state(TxnState::Started);
    }

    /// Stream Stop: everything of the block is applied; wait (as a lock wait the deadlock
    /// detector sees) until the leader sends the next block or the commit.
    fn block_done(&mut self) {
        let Some(xid) = self.xid else { return };
        self.applier.flush_batches();
        self.progress.publish(None, 0);
        shared::lock(self.subid, xid, Lock::Stream, false);
        shared::unlock(self.subid, xid, Lock::Stream, false);
    }

    /// A change of remote subtransaction `subxid`: the first one opens a local subtransaction.
    fn enter_subxact(&mut self, subxid: Option<u32>) {
        let (Some(top), Some(sub)) = (self.xid, subxid) else { return };
        if sub == top || self.subxacts.iter().any(|(x, _, _)| *x == sub) {
            return;
        }
        // Rows still batched belong to the enclosing (sub)transaction.
        self.applier.flush_batches();
        // SAFETY: an internal subtransaction inside our open transaction, as PL/pgSQL's
        // exception blocks make them; the caller's memory context is kept.
        unsafe {
            let (cxt, owner) = (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner);
            pg_sys::BeginInternalSubTransaction(std::ptr::null());
            pg_sys::MemoryContextSwitchTo(cxt);
            self.subxacts.push((sub, cxt, owner));
        }
        self.counts_at.push((self.progress.counters.changes(), self.applier.batched.changes()));
    }

    /// Leaves the innermost `n` local subtransactions, committing or rolling them back.
    fn leave_subxacts(&mut self, n: usize, commit: bool) {
        for _ in 0..n {
            let Some((_, cxt, owner)) = self.subxacts.pop() else { return };
            // SAFETY: ends the innermost internal subtransaction opened by `enter_subxact`,
            // then returns to the context and owner of before it.
            unsafe {
                if commit {
                    pg_sys::ReleaseCurrentSubTransaction();
                } else {
                    // Its abort record must not name the origin (see `untag`).
                    let origin = pg_sys::replorigin_session_origin;
                    untag();
                    pg_sys::RollbackAndReleaseCurrentSubTransaction();
                    pg_sys::replorigin_session_origin = origin;
                }
                pg_sys::MemoryContextSwitchTo(cxt);
                pg_sys::CurrentResourceOwner = owner;
            }
        }
    }

    fn abort(&mut self, xid: u32, subxid: u32) {
        if self.xid != Some(xid) {
            return;
        }
        if xid != subxid {
            // ROLLBACK TO the savepoint of subxid: it and every subtransaction after it.
            if let Some(i) = self.subxacts.iter().position(|(x, _, _)| *x == subxid) {
                self.applier.flush_batches();
                let n = self.subxacts.len() - i;
                self.leave_subxacts(n, false);
                if let Some((counted, batched)) = self.counts_at.get(i) {
                    self.progress.counters.restore_changes(counted);
                    self.applier.batched.restore_changes(batched);
                }
                self.counts_at.truncate(i);
            }
            return;
        }
        self.subxacts.clear();
        self.counts_at.clear();
        untag();
        self.applier.abort_all();
        self.progress.discard_changes();
        self.end(TxnState::Idle, xid);
    }

    fn commit(&mut self, c: StreamCommit) {
        if self.xid != Some(c.xid) {
            report::error(
                Code::ERRCODE_PROTOCOL_VIOLATION,
                format!("STREAM COMMIT for transaction {} that this parallel apply worker does not have", c.xid),
                None,
                None,
            );
        }
        errctx::set_txn(c.xid, c.commit_lsn);
        self.applier.flush_batches();
        crate::worker::conflict::complete_streamed(c.commit_time, c.commit_lsn);
        let n = self.subxacts.len();
        self.leave_subxacts(n, true);
        self.counts_at.clear();
        let commit =
            Commit { flags: c.flags, commit_lsn: c.commit_lsn, end_lsn: c.end_lsn, commit_time: c.commit_time };
        // SAFETY: the leader released the origin before sending Stream Commit; it is ours until
        // the commit record carries its progress, then given back.
        unsafe { take_origin(self.hdr.origin_id as pg_sys::RepOriginId) };
        self.applier.streamed = true;
        self.applier.commit(commit, &mut self.progress, false);
        // SAFETY: reads the end of the commit record just written; gives the origin back.
        let local_end = unsafe {
            let end = pg_sys::XactLastCommitEnd;
            pg_sys::replorigin_session_reset();
            end
        };
        self.hdr.local_end.store(local_end, std::sync::atomic::Ordering::Release);
        self.progress.publish(None, 0);
        self.end(TxnState::Committed, c.xid);
    }

    /// The transaction is over: state for the leader, then the transaction lock it waits on.
    fn end(&mut self, state: TxnState, xid: u32) {
        // This process's WAL is no longer the subscription's until the next transaction.
        untag();
        self.xid = None;
        self.hdr.set_state(state);
        shared::unlock(self.subid, xid, Lock::Transaction, true);
        errctx::clear();
        crate::worker::report_stats(false);
        // Renames of the subscription's tables found in it, committed or rolled back.
        self.applier.write_names();
    }
}

/// Stops tagging this process's WAL with the subscription's origin. Before any abort: from
/// PostgreSQL 16 on, an abort record of a transaction tagged with an origin advances the origin's
/// session progress, which this process holds only while it commits (a crash otherwise).
fn untag() {
    // SAFETY: plain globals of this backend.
    unsafe {
        pg_sys::replorigin_session_origin = pg_sys::InvalidRepOriginId as pg_sys::RepOriginId;
        pg_sys::replorigin_session_origin_lsn = 0;
        pg_sys::replorigin_session_origin_timestamp = 0;
    }
}

/// At exit (a FATAL from SIGTERM in the middle of a transaction, say), before the transaction is
/// aborted by PostgreSQL's own exit callback.
#[pg_guard]
unsafe extern "C-unwind" fn untag_at_exit(_code: i32, _arg: pg_sys::Datum) {
    untag();
}

#[pg_guard]
unsafe extern "C-unwind" fn unlist_at_exit(_code: i32, _arg: pg_sys::Datum) {
    // SAFETY: at exit nothing is to be kept: an LWLock held when a FATAL struck (pgsub's own,
    // say) would be waited for by this very process below.
    unsafe { pg_sys::LWLockReleaseAll() };
    // SAFETY: MyProcPid is set for every backend.
    crate::shmem::unlist_parallel_worker(unsafe { pg_sys::MyProcPid });
}

/// The (sub)transaction a streamed change belongs to.
fn change_xid(msg: &LogicalMessage) -> Option<u32> {
    match msg {
        LogicalMessage::Insert(m) => m.xid,
        LogicalMessage::Update(m) => m.xid,
        LogicalMessage::Delete(m) => m.xid,
        LogicalMessage::Truncate(m) => m.xid,
        LogicalMessage::Message(m) => m.xid,
        _ => None,
    }
}

/// Attaches this process to the replication origin for one commit.
///
/// # Safety
/// The origin is not attached by another process (the leader released it).
pub(super) unsafe fn take_origin(id: pg_sys::RepOriginId) {
    unsafe {
        #[cfg(feature = "pg15")]
        pg_sys::replorigin_session_setup(id);
        #[cfg(not(feature = "pg15"))]
        pg_sys::replorigin_session_setup(id, 0);
        pg_sys::replorigin_session_origin = id;
    }
}

/// Leaves the error for the leader (which raises it as its own, with this context) and counts a
/// conflict it was, then re-raises it: it is logged here and ends the worker.
fn on_error(subid: i32, hdr: &mut Header, e: CaughtError) {
    crate::worker::apply::forget_origin_position();
    untag();
    if shutdown_requested() {
        // SAFETY: leave the interrupted transaction, then exit like a clean stop.
        unsafe {
            pg_sys::AbortOutOfAnyTransaction();
            pg_sys::proc_exit(0);
        }
    }
    let r = match &e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) | CaughtError::RustPanic { ereport: r, .. } => r,
    };
    let text = [
        (r.sql_error_code() as i32).to_string(),
        r.message().to_string(),
        r.detail().unwrap_or_default().to_string(),
        r.hint().unwrap_or_default().to_string(),
        errctx::describe(),
    ]
    .join(&SEP.to_string());
    // A conflict this worker reported by its type is counted here; a plain unique violation (a
    // COPY batch's) is not yet: the leader's retry applies the transaction by spilling, row by
    // row, and reports and counts it there (`worker::on_error`'s recheck).
    let conflict = crate::worker::conflict::raised_type();
    shmem::with_slot(subid, |s| crate::worker::count_conflict(s, conflict));
    if let Some(relid) = errctx::relation().and_then(|r| crate::worker::relation::bound_relid(&r)) {
        crate::monitor::add_conflict(subid, relid.to_u32(), conflict);
    }
    // SAFETY: leave whatever transaction the error interrupted.
    unsafe { pg_sys::AbortOutOfAnyTransaction() };
    crate::worker::conflict::write_pending_after_abort();
    hdr.set_error(&text);
    e.rethrow()
}
