//! The apply worker: one dynamic background worker per enabled subscription.
//!
//! Started by the launcher with the subscription id as argument and "dboid owner" as extra, it
//! connects to the database as the subscription owner, sets `session_replication_role = replica`
//! and an empty search_path, attaches the subscription's replication origin, and then:
//!   1. copies tables that need an initial copy (`sync.rs`),
//!   2. connects to the publisher's walsender and runs START_REPLICATION from the origin's
//!      progress (receive loop below),
//!   3. decodes every XLogData with the pgoutput decoder and applies it (`apply.rs`), reporting
//!      progress and answering keepalives (`progress.rs`).
//!
//! Waits are on the latch and the socket together, so SIGTERM, SIGHUP and postmaster death are
//! handled within a second even while the publisher is silent. Any error is recorded in shared
//! memory (last_error with its context, error_count), optionally disables the subscription
//! (disable_on_error), and ends the worker with the ERROR in the log; the launcher restarts it
//! after a growing delay. Nothing is ever skipped silently.
pub mod apply;
mod batch;
pub mod copyin;
pub mod errctx;
mod execute;
pub mod progress;
mod relation;
pub mod stream;
pub mod sync;
mod triggers;

use crate::catalog::{self, Subscription};
use crate::process::{now, reload_config_if_requested, shutdown_requested};
use crate::publisher::{self, Context};
use crate::shmem::{self, Status};
use crate::{gucs, report};
use apply::{Applier, TableStates};
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgsub_proto::client::{Client, Error as ProtoError, PgOutputOptions, Streaming};
use pgsub_proto::frame::ReplicationFrame;
use pgsub_proto::pgoutput::{self, Begin, Commit, Decoder, LogicalMessage};
use pgsub_proto::Lsn;
use progress::Progress;
use std::ffi::CString;
use std::time::{Duration, Instant};

type Code = PgSqlErrorCode;

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pgsub_apply_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let subid = arg.value() as i32;
    let extra = BackgroundWorker::get_extra().to_string();
    let mut parts = extra.split_whitespace().map(|p| p.parse::<u32>().unwrap_or(0));
    let dboid = parts.next().unwrap_or(0);
    let owner = parts.next().unwrap_or(0);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(dboid)), Some(pg_sys::Oid::from(owner)));

    // SAFETY: MyProcPid is set for every backend.
    let me = unsafe { pg_sys::MyProcPid };
    // Under the slot lock, so that a backend dropping or changing the subscription either finds
    // this worker's pid (and stops it) or has marked the slot first (and this worker leaves): a
    // worker registered just before a drop must not take the slot the drop is about to remove.
    let claimed = {
        let mut g = shmem::SHARED.exclusive();
        match g.claim(subid) {
            Some(s) if s.pid > 0 && s.pid != me => Err("another worker is running"),
            Some(s) if s.paused_by > 0 && crate::process::pid_alive(s.paused_by) => {
                Err("the subscription is being dropped or changed")
            }
            Some(s) => {
                s.pid = me;
                s.worker_started_at = now();
                s.status = Status::Starting;
                s.failed = false;
                Ok(())
            }
            None => Err("no shared-memory slot"),
        }
    };
    if let Err(why) = claimed {
        log!("pgsub apply worker for subscription {subid}: {why}, exiting");
        return;
    }
    // SAFETY: registers a callback that runs once when this process exits, however it exits.
    unsafe { pg_sys::before_shmem_exit(Some(release_slot), pg_sys::Datum::from(subid)) };
    errctx::install();
    triggers::install();
    PgTryBuilder::new(|| run(subid)).catch_others(|e| on_error(subid, e)).execute();
    shmem::with_slot(subid, |s| {
        if s.pid == me {
            s.pid = 0;
            if s.status != Status::Error {
                s.status = Status::Starting;
            }
        }
    });
}

/// Clears this worker's pid from its slot when the process exits (after an ERROR too), so that
/// a pid in a slot always names a live worker.
#[pg_guard]
unsafe extern "C-unwind" fn release_slot(_code: i32, arg: pg_sys::Datum) {
    // SAFETY: the process is exiting; no pgsub lock may be held across this point.
    unsafe { pg_sys::LWLockReleaseAll() };
    let subid = arg.value() as i32;
    // SAFETY: MyProcPid is set for every backend.
    let me = unsafe { pg_sys::MyProcPid };
    shmem::with_slot(subid, |s| {
        if s.pid == me {
            s.pid = 0;
        }
    });
}

/// Records an error in shared memory, disables the subscription if asked to, and re-raises it so
/// that it is logged (with the apply context) and ends the worker.
fn on_error(subid: i32, e: CaughtError) {
    if shutdown_requested() {
        // Asked to stop (disable, drop, server shutdown) while working: not a failure.
        // SAFETY: leave the interrupted transaction, then exit like a clean stop.
        unsafe {
            pg_sys::AbortOutOfAnyTransaction();
            pg_sys::proc_exit(0);
        }
    }
    let (msg, detail, hint) = match &e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) | CaughtError::RustPanic { ereport: r, .. } => {
            (r.message().to_string(), r.detail().map(str::to_string), r.hint().map(str::to_string))
        }
    };
    let ctx = errctx::describe();
    let batch_failed_lsn = if errctx::in_batch() { errctx::finish_lsn().map_or(0, |l| l.0) } else { 0 };
    let mut text = msg.clone();
    if let Some(d) = &detail {
        text.push_str(&format!("\nDETAIL: {d}"));
    }
    if let Some(h) = &hint {
        text.push_str(&format!("\nHINT: {h}"));
    }
    if !ctx.is_empty() {
        text.push_str(&format!("\nCONTEXT: {ctx}"));
    }
    shmem::with_slot(subid, |s| {
        s.set_error(&text, now());
        s.batch_failed_lsn = batch_failed_lsn;
        s.status = Status::Error;
        s.failed = true;
    });
    // SAFETY: leave whatever transaction the error interrupted before starting a new one.
    unsafe { pg_sys::AbortOutOfAnyTransaction() };
    let disable =
        xact(|| catalog::load(subid).ok().flatten().map(|s| s.disable_on_error && s.enabled).unwrap_or(false));
    if disable {
        xact(|| {
            let _ = catalog::set_enabled(subid, false);
        });
        shmem::with_slot(subid, |s| s.failed = false);
        report::log(
            PgLogLevel::LOG,
            Code::ERRCODE_SUCCESSFUL_COMPLETION,
            format!("pgsub: subscription {subid} has been disabled because of an error (disable_on_error)"),
            None,
            Some("Fix the cause, then call pgsub.enable_subscription()."),
        );
    }
    e.rethrow()
}

/// Runs `f` in a transaction with a snapshot. An ERROR inside propagates to the worker's top-level
/// handler, which aborts the transaction.
pub fn xact<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: standard transaction bracket of a background worker.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let r = f();
    // SAFETY: closes the bracket opened above.
    unsafe {
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
    }
    report_stats(false);
    r
}

/// Sends this process's table statistics (rows inserted, updated, deleted, dead tuples) to the
/// shared statistics, as PostgreSQL's apply worker does after each commit and when idle: without
/// it `pg_stat_user_tables` shows nothing until the worker exits and autovacuum never sees the
/// replicated tables. `force = false` flushes at most once a second (pending counts are kept);
/// `force = true` flushes now. Outside a transaction only.
pub fn report_stats(force: bool) {
    // SAFETY: called between transactions in a backend attached to shared memory.
    unsafe {
        if !pg_sys::IsTransactionOrTransactionBlock() {
            pg_sys::pgstat_report_stat(force);
        }
    }
}

/// Sets a GUC for this worker's session.
fn set_guc(name: &str, value: &str) {
    let (n, v) = (CString::new(name).unwrap_or_default(), CString::new(value).unwrap_or_default());
    // SAFETY: SetConfigOption with a superuser context for session-level settings.
    unsafe {
        pg_sys::SetConfigOption(
            n.as_ptr(),
            v.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        )
    };
}

fn set_status(subid: i32, st: Status) {
    shmem::with_slot(subid, |s| s.status = st);
}

/// The worker body. Returns when asked to stop; raises on errors.
fn run(subid: i32) {
    let loaded = xact(|| catalog::load(subid).map(|s| s.map(|s| (s.clone(), catalog::load_rels(subid)))));
    let (sub, rels) = match loaded {
        Ok(Some((s, Ok(r)))) => (s, r),
        Ok(Some((_, Err(e)))) | Err(e) => {
            report::error(Code::ERRCODE_INTERNAL_ERROR, format!("reading the pgsub catalog: {e}"), None, None)
        }
        Ok(None) => {
            log!("pgsub apply worker for subscription {subid}: subscription was dropped, exiting");
            return;
        }
    };
    if !sub.enabled {
        return;
    }
    errctx::init(&sub.name, &sub.origin_name());
    set_guc("session_replication_role", "replica");
    set_guc("search_path", "");
    set_guc("synchronous_commit", &sub.synchronous_commit);
    set_guc("application_name", &format!("pgsub {}", sub.name));

    let start = attach_origin(&sub);
    log!(
        "pgsub apply worker for subscription \"{}\" has started (origin {} at {})",
        sub.name,
        sub.origin_name(),
        start
    );

    // Tables that still need their initial copy.
    let rels = if rels.iter().any(|r| r.sync_state.needs_copy()) {
        set_status(subid, Status::InitialCopy);
        match sync::copy_tables(&sub, &rels) {
            Some(r) => r,
            None => return, // interrupted
        }
    } else {
        rels
    };

    set_status(subid, Status::Connecting);
    let Some((client, opts)) = start_replication(&sub, start) else { return };
    set_status(subid, Status::Catchup);
    let mut applier = Applier::new(subid, TableStates::new(&rels), sub.binary, sub.origin == "none", sub.skip_lsn);
    if let Some(lsn) = shmem::with_slot(subid, |s| s.batch_failed_lsn) {
        applier.row_by_row_for(Lsn(lsn));
    }
    let origin_none = sub.origin == "none";
    let mut stream = Stream {
        sub,
        client,
        decoder: Decoder::new(opts.proto_version),
        proto_version: opts.proto_version,
        streams: stream::Streams::new(subid),
        origin_none,
        applier,
        progress: Progress::new(subid, start),
        last_recv: Instant::now(),
        ping_sent: false,
        status: Status::Catchup,
        stats_forced_at: Instant::now(),
    };
    stream.run();
}

/// Connects to the publisher's walsender and starts streaming from `start` with the options
/// the publisher's version allows; None when asked to stop meanwhile.
fn start_replication(sub: &Subscription, start: Lsn) -> Option<(Client, PgOutputOptions)> {
    let mut client =
        match publisher::connect(&sub.conninfo, true, Context::Worker, Some(&sub.name), !sub.owner_superuser) {
            Ok(c) => c,
            Err(ProtoError::Interrupted) => return None,
            Err(e) => {
                publisher::raise(&e, &format!("subscription \"{}\" could not connect to the publisher", sub.name), None)
            }
        };
    let server = client.server_version_num();
    let mut opts = PgOutputOptions::for_server(server, sub.publications.clone());
    opts.binary = sub.binary;
    opts.messages = true;
    opts.streaming = if sub.streaming && server >= 140000 { Streaming::On } else { Streaming::Off };
    opts.two_phase = sub.two_phase && server >= 150000;
    // Publishers before 16 do not filter by origin: pgsub filters itself (Origin messages).
    if server >= 160000 {
        opts.origin = Some(sub.origin.clone());
    }
    // A walsender answers START_REPLICATION at once: silence is a dead publisher, given up after
    // receiver_timeout like silence in the stream.
    let timeout = gucs::ms(&gucs::RECEIVER_TIMEOUT_MS);
    let timeout = (!timeout.is_zero()).then_some(timeout);
    if let Err(e) = client.start_replication_within(&sub.slot_name, start, &opts, timeout) {
        if matches!(e, ProtoError::Interrupted) {
            return None;
        }
        publisher::raise(&e, &format!("could not start replication from slot \"{}\"", sub.slot_name), None);
    }
    Some((client, opts))
}

/// Attaches this process to the subscription's replication origin; returns its progress.
fn attach_origin(sub: &Subscription) -> Lsn {
    let name = CString::new(sub.origin_name()).unwrap_or_default();
    xact(|| {
        // SAFETY: replication-origin calls inside a transaction; the session origin stays set
        // for the worker's life so every commit records its remote LSN.
        unsafe {
            let id = pg_sys::replorigin_by_name(name.as_ptr(), true);
            if id == pg_sys::InvalidRepOriginId as u16 {
                pg_sys::replorigin_create(name.as_ptr());
            }
            let id = pg_sys::replorigin_by_name(name.as_ptr(), false);
            #[cfg(feature = "pg15")]
            pg_sys::replorigin_session_setup(id);
            #[cfg(not(feature = "pg15"))]
            pg_sys::replorigin_session_setup(id, 0);
            pg_sys::replorigin_session_origin = id;
            Lsn(pg_sys::replorigin_session_get_progress(false))
        }
    })
}

struct Stream {
    sub: Subscription,
    client: Client,
    decoder: Decoder,
    proto_version: u32,
    streams: stream::Streams,
    origin_none: bool,
    applier: Applier,
    progress: Progress,
    last_recv: Instant,
    ping_sent: bool,
    status: Status,
    /// When table statistics were last flushed by force (idle).
    stats_forced_at: Instant,
}

impl Stream {
    fn run(&mut self) {
        loop {
            if shutdown_requested() {
                self.stop();
                return;
            }
            reload_config_if_requested();
            // Take what the socket has, applying as we go; look at signals now and then.
            let mut n = 0u32;
            let mut got_any = false;
            loop {
                let frame = match self.client.recv_frame() {
                    Ok(f) => f,
                    Err(e) => self.fail(&e, "lost the replication connection to the publisher"),
                };
                let Some(frame) = frame else { break };
                got_any = true;
                self.handle_frame(frame);
                n += 1;
                if n.is_multiple_of(1000) {
                    self.keep_publisher_alive();
                    if shutdown_requested() {
                        break;
                    }
                }
            }
            if got_any {
                self.last_recv = Instant::now();
                self.ping_sent = false;
            }
            let receipt = if got_any { now() } else { 0 };
            if !self.applier.in_txn {
                self.progress.mark_caught_up();
                if self.status != Status::Streaming {
                    self.status = Status::Streaming;
                    self.progress.publish(Some(Status::Streaming), receipt);
                }
            }
            self.progress.publish(None, receipt);
            if !self.applier.in_txn {
                // Table statistics go to shared memory at most once a second while transactions
                // come (pending counts are kept meanwhile). An unforced flush measures that second
                // with the last commit's timestamp, which stands still while the publisher is
                // silent: then a forced one, at most once a second (it waits for the shared
                // entries' locks, which a forced flush on every idle wake would hit often).
                let idle_flush = !got_any && self.stats_forced_at.elapsed() >= Duration::from_secs(1);
                if idle_flush {
                    self.stats_forced_at = Instant::now();
                }
                report_stats(idle_flush);
            }
            self.send_feedback(false, false);
            self.check_timeout();
            self.wait();
        }
    }

    fn handle_frame(&mut self, frame: ReplicationFrame) {
        match frame {
            ReplicationFrame::XLogData { wal_start, wal_end, send_time, data } => {
                self.progress.on_frame(wal_start, wal_end, send_time);
                let raw = data.clone();
                let msg = match self.decoder.decode(data) {
                    Ok(m) => m,
                    Err(e) => report::error(
                        Code::ERRCODE_PROTOCOL_VIOLATION,
                        format!("invalid logical replication message from the publisher: {e}"),
                        Some(format!("At WAL position {wal_start}.")),
                        None,
                    ),
                };
                if self.decoder.in_stream() {
                    self.buffer_streamed(msg, &raw);
                } else {
                    self.apply(msg);
                }
            }
            ReplicationFrame::Keepalive { wal_end, send_time, reply_requested } => {
                self.progress.on_frame(Lsn::INVALID, wal_end, send_time);
                if !self.applier.in_txn {
                    self.progress.on_keepalive(wal_end);
                    self.applier.caught_up_to(wal_end);
                }
                if reply_requested {
                    self.send_feedback(true, false);
                }
            }
        }
    }

    /// A message inside a Stream Start … Stop block: changes are buffered for their top-level
    /// transaction; relation descriptions take effect at once.
    fn buffer_streamed(&mut self, msg: LogicalMessage, raw: &[u8]) {
        let xid = match &msg {
            LogicalMessage::StreamStart(s) => {
                self.streams.start(s.xid);
                return;
            }
            LogicalMessage::Relation(r) => {
                self.applier.on_relation(r.clone());
                return;
            }
            LogicalMessage::Type(_) => return,
            LogicalMessage::Origin(_) => {
                if self.origin_none {
                    self.streams.mark_foreign();
                }
                return;
            }
            LogicalMessage::Insert(m) => m.xid,
            LogicalMessage::Update(m) => m.xid,
            LogicalMessage::Delete(m) => m.xid,
            LogicalMessage::Truncate(m) => m.xid,
            LogicalMessage::Message(m) => m.xid,
            other => report::error(
                Code::ERRCODE_PROTOCOL_VIOLATION,
                format!("unexpected message \"{}\" inside a stream block", other.kind()),
                None,
                None,
            ),
        };
        let Some(xid) = xid else {
            report::error(Code::ERRCODE_PROTOCOL_VIOLATION, "streamed change without a transaction id", None, None);
        };
        self.streams.push(xid, raw);
    }

    fn apply(&mut self, msg: LogicalMessage) {
        let p = &mut self.progress;
        match msg {
            LogicalMessage::Begin(b) => {
                self.applier.begin(b, p);
                if self.status == Status::Streaming {
                    // Show the pending transaction's commit time as apply lag while it applies.
                    p.publish(None, 0);
                }
            }
            LogicalMessage::Commit(c) => {
                self.applier.commit(c, p);
                // Counters and positions are visible as soon as the transaction is.
                p.publish(None, now());
            }
            LogicalMessage::Origin(o) => self.applier.origin(&o.name),
            LogicalMessage::Relation(r) => self.applier.on_relation(r),
            LogicalMessage::Type(_) => {}
            LogicalMessage::Insert(_)
            | LogicalMessage::Update(_)
            | LogicalMessage::Delete(_)
            | LogicalMessage::Truncate(_)
            | LogicalMessage::Message(_) => self.apply_change(msg),
            LogicalMessage::StreamStop => self.streams.stop(),
            LogicalMessage::StreamAbort(a) => self.streams.abort(a.xid, a.subxid),
            LogicalMessage::StreamCommit(c) => {
                let begin = Begin { final_lsn: c.commit_lsn, commit_time: c.commit_time, xid: c.xid };
                let commit =
                    Commit { flags: c.flags, commit_lsn: c.commit_lsn, end_lsn: c.end_lsn, commit_time: c.commit_time };
                self.apply_streamed(c.xid, begin, |applier, p| applier.commit(commit, p));
            }
            LogicalMessage::StreamPrepare(pr) => {
                let begin = Begin { final_lsn: pr.prepare_lsn, commit_time: pr.prepare_time, xid: pr.xid };
                self.apply_streamed(pr.xid, begin, |applier, p| {
                    applier.prepare(pr.xid, pr.end_lsn, pr.prepare_time, p)
                });
            }
            LogicalMessage::BeginPrepare(bp) => {
                let begin = Begin { final_lsn: bp.prepare_lsn, commit_time: bp.prepare_time, xid: bp.xid };
                self.applier.begin(begin, p);
            }
            LogicalMessage::Prepare(pr) => {
                self.applier.prepare(pr.xid, pr.end_lsn, pr.prepare_time, p);
                p.publish(None, now());
            }
            LogicalMessage::CommitPrepared(c) => {
                self.applier.finish_prepared(c.xid, true, c.end_lsn, c.commit_time, p);
                p.publish(None, now());
            }
            LogicalMessage::RollbackPrepared(r) => {
                self.applier.finish_prepared(r.xid, false, r.rollback_end_lsn, r.rollback_time, p);
                p.publish(None, now());
            }
            LogicalMessage::StreamStart(_) => report::error(
                Code::ERRCODE_PROTOCOL_VIOLATION,
                "STREAM START handled outside the stream path",
                None,
                None,
            ),
        }
    }

    /// One change (outside a stream block, or replayed from a streamed transaction's buffer).
    fn apply_change(&mut self, msg: LogicalMessage) {
        let p = &mut self.progress;
        match msg {
            LogicalMessage::Insert(m) => self.applier.insert(m, p),
            LogicalMessage::Update(m) => self.applier.update(m, p),
            LogicalMessage::Delete(m) => self.applier.delete(m, p),
            LogicalMessage::Truncate(m) => execute::with_snapshot(|| self.applier.truncate(m, p)),
            LogicalMessage::Message(_) => p.counters.messages += 1,
            other => report::error(
                Code::ERRCODE_PROTOCOL_VIOLATION,
                format!("unexpected message \"{}\" in a streamed transaction", other.kind()),
                None,
                None,
            ),
        }
    }

    /// Applies a streamed transaction's buffered changes in one local transaction, finished by
    /// `finish` (commit or prepare).
    fn apply_streamed(&mut self, xid: u32, begin: Begin, finish: impl FnOnce(&mut Applier, &mut Progress)) {
        let foreign = self.streams.is_foreign(xid);
        let reader = self.streams.take(xid);
        self.applier.begin(begin, &mut self.progress);
        if foreign {
            self.applier.origin("");
        }
        if let Some(reader) = reader {
            let mut n = 0u64;
            for rec in reader {
                let bytes = match rec {
                    Ok(b) => b,
                    Err(e) => stream::Streams::fail(e, xid),
                };
                let msg = match pgoutput::decode_one(bytes, self.proto_version, true) {
                    Ok(m) => m,
                    Err(e) => report::error(
                        Code::ERRCODE_DATA_CORRUPTED,
                        format!("buffered change of streamed transaction {xid} does not decode: {e}"),
                        None,
                        None,
                    ),
                };
                self.apply_change(msg);
                n += 1;
                if n.is_multiple_of(1000) {
                    self.keep_publisher_alive();
                }
            }
        }
        finish(&mut self.applier, &mut self.progress);
        self.progress.publish(None, now());
    }

    /// During a long apply the socket is not read: tell the walsender we are alive (it would
    /// otherwise end the connection after wal_sender_timeout).
    fn keep_publisher_alive(&mut self) {
        if self.progress.since_report() >= std::time::Duration::from_secs(5) {
            self.send_feedback(true, false);
        }
    }

    fn send_feedback(&mut self, force: bool, reply_requested: bool) {
        let pos = self.progress.positions(self.applier.in_txn);
        if !self.progress.report_due(pos, gucs::ms(&gucs::STATUS_INTERVAL_MS), force || reply_requested) {
            return;
        }
        if let Err(e) = self.client.send_status(pos.0, pos.1, pos.2, reply_requested) {
            self.fail(&e, "could not send a status update to the publisher");
        }
        self.progress.reported(pos);
    }

    fn check_timeout(&mut self) {
        let timeout = gucs::ms(&gucs::RECEIVER_TIMEOUT_MS);
        if timeout.is_zero() {
            return;
        }
        let silent = self.last_recv.elapsed();
        if silent >= timeout {
            // The network failed, not the transaction being received: no apply context (which
            // would offer its finish LSN to skip_transaction).
            errctx::clear();
            report::error(
                Code::ERRCODE_CONNECTION_FAILURE,
                format!(
                    "terminating pgsub apply worker for subscription \"{}\" due to timeout: nothing received from the publisher for {} ms",
                    self.sub.name,
                    silent.as_millis()
                ),
                None,
                Some("Check the publisher and the network; the worker reconnects. pgsub.receiver_timeout sets the limit."),
            );
        }
        if silent >= timeout / 2 && !self.ping_sent {
            self.send_feedback(true, true);
            self.ping_sent = true;
        }
    }

    /// Sleeps on the latch and the socket, at most a second. While applied commits wait for the
    /// WAL writer to make them durable (synchronous_commit = off), it wakes every 100 ms to
    /// confirm them as soon as they are flushed, as PostgreSQL's worker wakes after
    /// wal_writer_delay: the publisher then learns without a second's delay that it may let go.
    fn wait(&mut self) {
        let fd = self.client.raw_fd();
        let timeout_ms = if self.progress.awaiting_flush() { 100 } else { 1000 };
        // SAFETY: latch + socket wait of a background worker.
        unsafe {
            let rc = pg_sys::WaitLatchOrSocket(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_SOCKET_READABLE | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH)
                    as i32,
                fd,
                timeout_ms,
                pg_sys::PG_WAIT_EXTENSION,
            );
            if rc & pg_sys::WL_LATCH_SET as i32 != 0 {
                pg_sys::ResetLatch(pg_sys::MyLatch);
            }
        }
    }

    fn fail(&mut self, e: &ProtoError, what: &str) -> ! {
        if matches!(e, ProtoError::Interrupted) {
            self.stop();
            // SAFETY: clean exit of a background worker that was asked to stop.
            unsafe { pg_sys::proc_exit(0) };
        }
        // A connection failure is no fault of the transaction being received: no apply context.
        errctx::clear();
        publisher::raise(e, &format!("subscription \"{}\": {what}", self.sub.name), None)
    }

    /// Clean stop on SIGTERM: abort a half-applied transaction (it is re-sent after restart),
    /// report what is durable, and say goodbye to the walsender.
    fn stop(&mut self) {
        // A half-applied transaction is not done: do not report what was received as flushed.
        let in_txn = self.applier.in_txn;
        self.applier.abort();
        let pos = self.progress.positions(in_txn);
        let _ = self.client.send_status(pos.0, pos.1, pos.2, false);
        self.progress.publish(None, 0);
        log!("pgsub apply worker for subscription \"{}\" is stopping", self.sub.name);
    }
}
