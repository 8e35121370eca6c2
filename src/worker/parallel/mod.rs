//! Parallel apply of streamed transactions (`streaming => 'parallel'`), the leader's side: the
//! apply worker hands each large in-progress transaction the publisher streams to a parallel
//! apply worker (`worker.rs`) that applies its changes as they arrive, instead of buffering them
//! until Stream Commit (`stream.rs`). The leader forwards every message of the transaction's
//! stream blocks through the worker's queue, goes on applying the ordinary transactions that
//! come between the blocks itself, and at Stream Commit waits for the worker's commit before it
//! reads on — so transactions still become visible in the publisher's commit order.
//!
//! ```text
//!  leader, per remote xid:
//!   Stream Start (first segment) ─ a free worker, or a new one within
//!   │   pgsub.max_parallel_apply_workers_per_subscription ─▶ SENDING ─▶ (no worker: spilled)
//!   SENDING ──Stream Stop (stream lock taken, then the Stop sent)──▶ BETWEEN BLOCKS
//!   BETWEEN BLOCKS ──Stream Start (lock released)──▶ SENDING
//!   BETWEEN BLOCKS ──Stream Abort (top)──▶ done (the worker rolls back and is free again)
//!   BETWEEN BLOCKS ──Stream Commit──▶ lock released, replication origin released, Commit sent,
//!         wait for the worker's transaction lock ─▶ Committed: origin taken back, positions move
//!                                                  ─▶ Failed / worker gone: ERROR (below)
//! ```
//! Not in parallel (spilled as with `streaming => true`): while any table is not ready (its
//! changes depend on the commit LSN, unknown until Stream Commit, as natively), with
//! `skip_lsn` set, with two-phase, with `origin => 'none'` before PostgreSQL 16 publishers (the
//! filter needs the whole transaction), under the `*_update_wins` conflict policies (they need
//! the remote commit time), and the transaction a parallel worker failed on: the
//! leader raises that error as its own (message, detail, hint and the worker's context), so it
//! is in `last_error` and the log, and the retry applies that transaction by spilling, so that a
//! deadlock between the leader and a worker, or an error, does not loop (native retries in
//! parallel again).
mod shared;
pub mod worker;

use crate::catalog::{StreamingMode, Subscription};
use crate::process::shutdown_requested;
use crate::{gucs, report, shmem};
use bytes::Bytes;
use pgrx::bgworkers::{BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker};
use pgrx::prelude::*;
use pgsub_proto::pgoutput::{StreamAbort, StreamCommit};
use pgsub_proto::Lsn;
use shared::{Header, Lock, TxnState};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

type Code = PgSqlErrorCode;

/// How long the leader waits for a full queue while another worker holds a transaction open
/// before it takes the wait for a deadlock the detector cannot see (a queue is no lock).
const QUEUE_DEADLOCK_TIMEOUT: Duration = Duration::from_secs(10);

struct Worker {
    handle: DynamicBackgroundWorker,
    hdr: *mut Header,
    mq: *mut pg_sys::shm_mq_handle,
    /// The remote transaction it applies.
    xid: Option<u32>,
    /// The leader holds the transaction's stream lock (between blocks).
    stream_locked: bool,
}

impl Worker {
    fn hdr(&self) -> &Header {
        // SAFETY: the segment stays mapped for the leader's life.
        unsafe { &*self.hdr }
    }

    fn free(&self) -> bool {
        self.xid.is_none() && matches!(self.hdr().state(), TxnState::Idle | TxnState::Committed)
    }

    fn gone(&self) -> bool {
        matches!(self.handle.pid(), Err(BackgroundWorkerStatus::Stopped) | Err(BackgroundWorkerStatus::PostmasterDied))
    }
}

thread_local! {
    /// Pids of this leader's workers, stopped when it exits however it exits.
    static PIDS: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
    /// The remote transactions open in this leader's workers.
    static OPEN: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// The leader failed: when it was a deadlock (the leader waiting for a row a parallel worker's
/// open transaction holds), that transaction is applied by spilling on the retry, so that the
/// same deadlock does not come back.
pub fn leader_failed(subid: i32, code: PgSqlErrorCode) {
    if code != Code::ERRCODE_T_R_DEADLOCK_DETECTED {
        return;
    }
    if let Some(xid) = OPEN.with(|o| o.borrow().first().copied()) {
        shmem::with_slot(subid, |s| s.parallel_failed_xid = xid);
    }
}

/// What the leader puts before the message of an error it re-raises for a parallel worker.
pub const ERROR_PREFIX: &str = "parallel apply worker: ";

pub struct Pool {
    subid: i32,
    name: String,
    owner: u32,
    proto_version: u32,
    binary: bool,
    /// The stream is binary by the leader's own choice (`binary` unset): the workers check each
    /// relation against it as the leader does (`Applier::check_binary_choice`).
    auto_binary: bool,
    origin_id: u16,
    workers: Vec<Worker>,
    /// Remote xid → the worker applying it.
    assigned: HashMap<u32, usize>,
    /// The xid whose stream block is being forwarded.
    current: Option<u32>,
    /// Each remote relation's last description (`in_stream`, message), sent to a worker before
    /// its next transaction.
    relations: HashMap<u32, (bool, Bytes)>,
    /// The transaction a worker failed on (applied by spilling this time).
    failed_xid: u32,
    warned_no_worker: bool,
    /// The worker count last shown in shared memory.
    shown: i32,
}

impl Pool {
    /// None unless the subscription asks for parallel apply.
    pub fn new(sub: &Subscription, opts: &pgsub_proto::client::PgOutputOptions, origin_id: u16) -> Option<Pool> {
        let proto_version = opts.proto_version;
        if sub.streaming != StreamingMode::Parallel || proto_version < 2 {
            return None;
        }
        let failed_xid = shmem::with_slot(sub.subid, |s| s.parallel_failed_xid).unwrap_or(0);
        // SAFETY: registers a callback that runs once when this process exits.
        unsafe { pg_sys::before_shmem_exit(Some(stop_workers), pg_sys::Datum::from(0usize)) };
        Some(Pool {
            subid: sub.subid,
            name: sub.name.clone(),
            owner: sub.owner,
            proto_version,
            binary: opts.binary,
            auto_binary: sub.binary.is_none() && opts.binary_in_use(),
            origin_id,
            workers: Vec::new(),
            shown: 0,
            assigned: HashMap::new(),
            current: None,
            relations: HashMap::new(),
            failed_xid,
            warned_no_worker: false,
        })
    }

    /// A Relation message (`in_stream`: inside a stream block): kept for the workers, and
    /// forwarded to the worker whose block it is in.
    pub fn relation(&mut self, oid: u32, in_stream: bool, raw: &Bytes) {
        self.relations.insert(oid, (in_stream, raw.clone()));
    }

    /// Stream Start. True when the block goes to a parallel worker (then every message until
    /// Stream Stop is `forward`ed); `eligible`: the transaction may start in parallel now.
    pub fn start_block(&mut self, xid: u32, first_segment: bool, eligible: bool, raw: &Bytes) -> bool {
        let i = match self.assigned.get(&xid) {
            Some(&i) => i,
            None if first_segment && eligible && xid != self.failed_xid => match self.assign(xid) {
                Some(i) => i,
                None => return false,
            },
            None => return false,
        };
        if self.workers[i].stream_locked {
            shared::unlock(self.subid, xid, Lock::Stream, true);
            self.workers[i].stream_locked = false;
        }
        self.send(i, xid, false, raw, false);
        self.current = Some(xid);
        true
    }

    /// The xid of the block being forwarded, if any.
    pub fn forwarding(&self) -> Option<u32> {
        self.current
    }

    /// Whether transaction `xid` is in a parallel worker.
    pub fn has(&self, xid: u32) -> bool {
        self.assigned.contains_key(&xid)
    }

    pub fn forward(&mut self, in_stream: bool, raw: &Bytes) {
        if let Some(xid) = self.current {
            if let Some(&i) = self.assigned.get(&xid) {
                self.send(i, xid, in_stream, raw, false);
            }
        }
    }

    /// Stream Stop of a forwarded block: the stream lock first, so that the worker, done with
    /// the block, waits for it (a wait the deadlock detector sees).
    pub fn end_block(&mut self, raw: &Bytes) {
        let Some(xid) = self.current.take() else { return };
        let Some(&i) = self.assigned.get(&xid) else { return };
        shared::lock(self.subid, xid, Lock::Stream, true);
        self.workers[i].stream_locked = true;
        self.send(i, xid, false, raw, true);
    }

    /// Stream Abort of a transaction in a worker (true), or of one that is not (false).
    pub fn abort(&mut self, a: &StreamAbort, raw: &Bytes) -> bool {
        let Some(&i) = self.assigned.get(&a.xid) else { return false };
        self.send(i, a.xid, false, raw, true);
        if a.xid == a.subxid {
            self.release(i, a.xid);
        }
        true
    }

    /// Stream Commit of a transaction in a worker: hands it the replication origin, waits for
    /// its commit, takes the origin back. Some(local commit end), or None when the transaction
    /// is not in a worker.
    pub fn commit(&mut self, c: &StreamCommit, raw: &Bytes) -> Option<Lsn> {
        let i = *self.assigned.get(&c.xid)?;
        if self.workers[i].stream_locked {
            shared::unlock(self.subid, c.xid, Lock::Stream, true);
            self.workers[i].stream_locked = false;
        }
        // SAFETY: the leader is between transactions; the worker takes the origin for its commit.
        // Until it is taken back no commit here may name it: a transaction the leader commits
        // meanwhile (disabling the subscription after the worker failed, say) would advance a
        // session origin that is not attached, and crash (`worker::take_origin` sets it again).
        unsafe {
            pg_sys::replorigin_session_reset();
            pg_sys::replorigin_session_origin = pg_sys::InvalidRepOriginId as pg_sys::RepOriginId;
        }
        self.send(i, c.xid, false, raw, true);
        self.wait_started(i, c.xid, c.commit_lsn);
        // The worker holds the transaction lock until it has committed (or failed and exited).
        shared::lock(self.subid, c.xid, Lock::Transaction, false);
        shared::unlock(self.subid, c.xid, Lock::Transaction, false);
        let w = &self.workers[i];
        let committed =
            w.hdr().state() == TxnState::Committed && w.hdr().xid.load(std::sync::atomic::Ordering::Acquire) == c.xid;
        if !committed {
            self.fail(i, c.xid, c.commit_lsn);
        }
        let local_end = Lsn(w.hdr().local_end.load(std::sync::atomic::Ordering::Acquire));
        // SAFETY: the worker gave the origin back before it released the lock.
        unsafe { worker::take_origin(self.origin_id) };
        self.release(i, c.xid);
        if self.failed_xid == c.xid {
            self.failed_xid = 0;
            shmem::with_slot(self.subid, |s| s.parallel_failed_xid = 0);
        }
        Some(local_end)
    }

    /// Raises the error of a worker that failed (or exited) with a transaction open: called at
    /// every wake of the leader, so that the failure is the subscription's at once, not when the
    /// transaction's next message comes (a worker ended by the deadlock detector, say).
    pub fn check(&mut self) {
        self.show_running();
        let failed = self.workers.iter().enumerate().find_map(|(i, w)| {
            let xid = w.xid?;
            (w.hdr().state() == TxnState::Failed || w.gone()).then_some((i, xid))
        });
        if let Some((i, xid)) = failed {
            self.fail(i, xid, Lsn::INVALID);
        }
    }

    /// `stat_subscription.parallel_apply_workers`: the workers running now (one that exited
    /// between transactions, stopped by a DBA say, no longer counts; it is replaced at the next
    /// assignment).
    fn show_running(&mut self) {
        let n = self.workers.iter().filter(|w| !w.gone()).count() as i32;
        if n != self.shown {
            self.shown = n;
            shmem::with_slot(self.subid, |s| s.parallel_workers = n);
        }
    }

    /// Stops the workers (the leader is stopping).
    pub fn shutdown(&mut self) {
        for w in self.workers.drain(..) {
            let _ = w.handle.terminate();
        }
        PIDS.with(|p| p.borrow_mut().clear());
        shmem::with_slot(self.subid, |s| s.parallel_workers = 0);
    }

    fn release(&mut self, i: usize, xid: u32) {
        self.assigned.remove(&xid);
        OPEN.with(|o| o.borrow_mut().retain(|x| *x != xid));
        if self.current == Some(xid) {
            self.current = None;
        }
        let w = &mut self.workers[i];
        w.xid = None;
        if w.stream_locked {
            shared::unlock(self.subid, xid, Lock::Stream, true);
            w.stream_locked = false;
        }
    }

    /// A free worker for `xid` (started if needed): it first gets every relation description.
    fn assign(&mut self, xid: u32) -> Option<usize> {
        let i = match self.workers.iter().position(|w| w.free() && !w.gone()) {
            Some(i) => i,
            None => {
                // A worker that exited between transactions (stopped by a DBA, say) is replaced
                // in its place: indexes of the others stay.
                let dead = self.workers.iter().position(|w| w.xid.is_none() && w.gone());
                let max = gucs::MAX_PARALLEL_APPLY_WORKERS_PER_SUBSCRIPTION.get().max(0) as usize;
                if dead.is_none() && self.workers.len() >= max {
                    return None;
                }
                let w = self.start_worker()?;
                match dead {
                    Some(d) => {
                        self.workers[d] = w;
                        d
                    }
                    None => {
                        self.workers.push(w);
                        self.workers.len() - 1
                    }
                }
            }
        };
        self.show_running();
        let w = &mut self.workers[i];
        w.xid = Some(xid);
        // SAFETY: the worker is idle: only the leader writes its header now.
        unsafe {
            (*w.hdr).xid.store(0, std::sync::atomic::Ordering::Release);
        }
        self.assigned.insert(xid, i);
        OPEN.with(|o| o.borrow_mut().push(xid));
        let rels: Vec<(bool, Bytes)> = self.relations.values().cloned().collect();
        for (in_stream, raw) in rels {
            self.send(i, xid, in_stream, &raw, false);
        }
        Some(i)
    }

    fn start_worker(&mut self) -> Option<Worker> {
        // SAFETY: a new segment and queue of this backend's, kept mapped for its life.
        let (seg, hdr) =
            unsafe { shared::create(self.subid, self.proto_version, self.binary, self.auto_binary, self.origin_id) };
        // SAFETY: the segment was just made; the leader sends.
        let mq = unsafe { shared::attach_queue(seg, false) };
        // SAFETY: reading this backend's database and pid.
        let (db, me, handle) =
            unsafe { (pg_sys::MyDatabaseId.to_u32(), pg_sys::MyProcPid, pg_sys::dsm_segment_handle(seg)) };
        let registered =
            BackgroundWorkerBuilder::new(&format!("pgsub parallel apply worker for subscription {}", self.subid))
                .set_type("pgsub parallel apply worker")
                .set_library("pgsub")
                .set_function("pgsub_parallel_main")
                .enable_spi_access()
                .set_restart_time(None)
                .set_argument(Some(pg_sys::Datum::from(handle as usize)))
                .set_extra(&format!("{db} {} {}", self.owner, self.subid))
                .set_notify_pid(me)
                .load_dynamic();
        let handle = match registered {
            Ok(h) => h,
            Err(_) => {
                // SAFETY: our own segment, no longer needed.
                unsafe { pg_sys::dsm_detach(seg) };
                if !self.warned_no_worker {
                    self.warned_no_worker = true;
                    report::log(
                        PgLogLevel::LOG,
                        Code::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                        format!(
                            "pgsub: no background worker slot for a parallel apply worker of subscription \"{}\": streamed transactions are spilled and applied at commit",
                            self.name
                        ),
                        None,
                        Some("Raise max_worker_processes."),
                    );
                }
                return None;
            }
        };
        if let Ok(pid) = handle.wait_for_startup() {
            PIDS.with(|p| p.borrow_mut().push(pid));
        }
        Some(Worker { handle, hdr, mq, xid: None, stream_locked: false })
    }

    /// Sends one message (flag byte: decoded as inside a stream block) to worker `i`, waiting
    /// on the latch while its queue is full; raises when the worker is gone.
    fn send(&mut self, i: usize, xid: u32, in_stream: bool, raw: &Bytes, flush: bool) {
        let flag = [u8::from(in_stream)];
        // The flag byte and the message as they are: no copy on this side.
        let mut iov = [
            pg_sys::shm_mq_iovec { data: flag.as_ptr() as *const std::ffi::c_char, len: 1 },
            pg_sys::shm_mq_iovec { data: raw.as_ptr() as *const std::ffi::c_char, len: raw.len() },
        ];
        let since = Instant::now();
        loop {
            // SAFETY: our attached queue handle; the same message is offered again after
            // WOULD_BLOCK, as shm_mq requires.
            let r = unsafe { pg_sys::shm_mq_sendv(self.workers[i].mq, iov.as_mut_ptr(), 2, true, flush) };
            match r {
                pg_sys::shm_mq_result::SHM_MQ_SUCCESS => return,
                pg_sys::shm_mq_result::SHM_MQ_WOULD_BLOCK => {
                    if self.workers[i].gone() {
                        self.fail(i, xid, Lsn::INVALID);
                    }
                    if since.elapsed() >= QUEUE_DEADLOCK_TIMEOUT && self.assigned.len() > 1 {
                        self.queue_deadlock(xid);
                    }
                    self.wait(crate::process::Wait::ApplySendData);
                }
                _ => self.fail(i, xid, Lsn::INVALID),
            }
        }
    }

    /// Waits until the worker has opened the transaction (so that its transaction lock is
    /// held), or failed.
    fn wait_started(&mut self, i: usize, xid: u32, finish: Lsn) {
        loop {
            let h = self.workers[i].hdr();
            let state = h.state();
            if state == TxnState::Failed {
                self.fail(i, xid, finish);
            }
            if h.xid.load(std::sync::atomic::Ordering::Acquire) == xid
                && matches!(state, TxnState::Started | TxnState::Committed)
            {
                return;
            }
            if self.workers[i].gone() {
                self.fail(i, xid, finish);
            }
            self.wait(crate::process::Wait::ParallelApplyStateChange);
        }
    }

    fn wait(&self, what: crate::process::Wait) {
        crate::process::nap(1000, what);
        if shutdown_requested() {
            // SAFETY: the worker's clean stop path: nothing half-applied is kept.
            unsafe {
                pg_sys::AbortOutOfAnyTransaction();
                pg_sys::proc_exit(0);
            }
        }
    }

    /// Worker `i` failed or is gone while applying `xid`: its error becomes the leader's, and
    /// the retry applies `xid` by spilling.
    fn fail(&mut self, i: usize, xid: u32, finish: Lsn) -> ! {
        let text = self.workers[i].hdr().error();
        shmem::with_slot(self.subid, |s| s.parallel_failed_xid = xid);
        OPEN.with(|o| o.borrow_mut().clear());
        crate::worker::errctx::set_txn(xid, finish);
        let mut parts = text.split(worker::SEP);
        let code = parts.next().and_then(|c| c.parse::<i32>().ok());
        let (msg, detail, hint, ctx) = (parts.next(), parts.next(), parts.next(), parts.next());
        let nonempty = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_string);
        match (code, msg) {
            (Some(code), Some(msg)) => {
                crate::worker::errctx::borrow(ctx.unwrap_or_default().to_string());
                report::error(
                    PgSqlErrorCode::from(code),
                    format!("{ERROR_PREFIX}{msg}"),
                    nonempty(detail),
                    nonempty(hint).as_deref(),
                )
            }
            _ => report::error(
                Code::ERRCODE_CONNECTION_EXCEPTION,
                format!(
                    "the parallel apply worker of subscription \"{}\" exited while applying remote transaction {xid}",
                    self.name
                ),
                Some("It was stopped or crashed; its server log says why.".into()),
                Some("The worker restarts and applies the transaction again, by spilling it this time."),
            ),
        }
    }

    fn queue_deadlock(&mut self, xid: u32) -> ! {
        shmem::with_slot(self.subid, |s| s.parallel_failed_xid = xid);
        OPEN.with(|o| o.borrow_mut().clear());
        report::error(
            Code::ERRCODE_T_R_DEADLOCK_DETECTED,
            format!(
                "parallel apply worker of subscription \"{}\" has not taken changes of remote transaction {xid} for {} s while another parallel apply worker holds a transaction open",
                self.name,
                QUEUE_DEADLOCK_TIMEOUT.as_secs()
            ),
            Some("The workers may wait for each other through a row lock and the queue, which the deadlock detector does not see.".into()),
            Some("The worker restarts and applies the transaction again, by spilling it this time."),
        )
    }
}

/// Stops this leader's parallel workers when it exits (after an ERROR too): they would otherwise
/// notice only at their next read.
#[pg_guard]
unsafe extern "C-unwind" fn stop_workers(_code: i32, _arg: pg_sys::Datum) {
    PIDS.with(|p| {
        for pid in p.borrow_mut().drain(..) {
            crate::process::terminate(pid);
        }
    });
}
