//! The apply worker: one dynamic background worker per enabled subscription.
//!
//! Started by the launcher with the subscription id as argument and "dboid owner" as extra, it
//! connects to the database as the subscription owner, sets `session_replication_role = replica`
//! and an empty search_path, attaches the subscription's replication origin, connects to the
//! publisher's walsender and runs START_REPLICATION from the origin's progress; then the receive
//! loop (`receive.rs`) decodes every XLogData and applies it (`apply.rs`), reporting progress and
//! answering keepalives (`progress.rs`).
//!
//! Tables that need their initial copy are each synchronized by a table synchronization worker
//! (`syncworker.rs`, copying with `sync.rs`) that the apply worker starts and hands over from
//! between transactions (`syncing.rs`); the same receive loop runs a sync worker's catch-up,
//! bounded by the position where it ends.
//!
//! Waits are on the latch and the socket together, so SIGTERM, SIGHUP and postmaster death are
//! handled within a second even while the publisher is silent. Any error is recorded in shared
//! memory (last_error with its context, error_count), optionally disables the subscription
//! (disable_on_error), and ends the worker with the ERROR in the log; the launcher restarts it
//! after a growing delay. Nothing is ever skipped silently.
pub mod apply;
mod batch;
mod conflict;
pub mod copyin;
pub mod errctx;
mod execute;
mod format;
pub mod hold;
mod owner;
pub mod parallel;
pub mod progress;
mod receive;
mod relation;
mod relcat;
mod seqsync;
pub mod stream;
pub mod sync;
mod syncing;
pub mod syncworker;
mod tables;
mod triggers;
mod walend;

use crate::catalog::{self, StreamingMode, Subscription};
use crate::process::{now, shutdown_requested};
use crate::publisher::{self, Context};
use crate::shmem::{self, ConflictType, Status};
use crate::{gucs, report};
use apply::{Applier, TableStates};
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgsub_proto::client::{Client, Error as ProtoError, PgOutputOptions, Streaming};
use pgsub_proto::Lsn;
use progress::Progress;
use receive::Stream;
use std::ffi::CString;

type Code = PgSqlErrorCode;

thread_local! {
    /// This apply worker streams binary by its own choice (`binary` unset): an apply error makes
    /// the retry of the failed transaction stream text (`on_error`, `format.rs`).
    static AUTO_BINARY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pgsub_apply_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    crate::process::terminate_on_sigterm();
    let subid = arg.value() as i32;
    let extra = BackgroundWorker::get_extra().to_string();
    let mut parts = extra.split_whitespace().map(|p| p.parse::<u32>().unwrap_or(0));
    let dboid = parts.next().unwrap_or(0);
    let owner = parts.next().unwrap_or(0);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(dboid)), Some(pg_sys::Oid::from(owner)));
    pin_session_defaults();

    // SAFETY: MyProcPid is set for every backend.
    let me = unsafe { pg_sys::MyProcPid };
    // Under the slot lock, so that a backend dropping or changing the subscription either finds
    // this worker's pid (and stops it) or has marked the slot first (and this worker leaves): a
    // worker registered just before a drop must not take the slot the drop is about to remove.
    let claimed = {
        let mut g = shmem::SHARED.exclusive();
        match g.claim(subid, dboid) {
            // Leaving on purpose is not a failed start (`reached_at`, which the launcher reads).
            Some(s) if s.pid > 0 && s.pid != me => {
                s.reached_at = now();
                Err("another worker is running")
            }
            Some(s) if s.paused_by > 0 && crate::process::pid_alive(s.paused_by) => {
                s.reached_at = now();
                Err("the subscription is being dropped or changed")
            }
            Some(s) => {
                s.reached_at = now();
                s.pid = me;
                s.stop_asked_at = 0;
                s.stop_reason = 0;
                crate::process::watch_stop_request(&s.stop_asked_at);
                s.launch_pending = false;
                s.worker_started_at = now();
                s.alive_at = s.worker_started_at;
                s.status = Status::Starting;
                s.failed = false;
                s.binary_in_use = None;
                // This worker's own, as natively (a new worker shows none until its first).
                s.latest_end_lsn = 0;
                s.latest_end_time = 0;
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
    crate::process::beat_for(crate::process::Beat::Apply(subid));
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
            s.binary_in_use = None;
            // However it exited (a SIGTERM inside a statement ends it with FATAL, past the
            // normal path): the view must not go on showing the gone worker's status.
            if s.status != Status::Error {
                s.status = Status::Starting;
            }
        }
    });
}

/// The conflict an apply error is, by PostgreSQL 18's names: a unique violation while applying a
/// remote INSERT (`insert_exists`) or UPDATE (`update_exists`), batched or not.
pub(crate) fn conflict_of(e: &CaughtError) -> Option<ConflictType> {
    if let Some(t) = conflict::raised_type() {
        return Some(t);
    }
    let code = match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) | CaughtError::RustPanic { ereport: r, .. } => {
            r.sql_error_code()
        }
    };
    if code != PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION {
        return None;
    }
    let kind = errctx::kind();
    if kind.starts_with("INSERT") {
        Some(ConflictType::InsertExists)
    } else if kind.starts_with("UPDATE") {
        Some(ConflictType::UpdateExists)
    } else {
        None
    }
}

/// Counts a conflict found by an error in the subscription's counters.
pub(crate) fn count_conflict(s: &mut shmem::SubSlot, c: Option<ConflictType>) {
    if let Some(t) = c {
        s.count_conflicts(t, 1);
    }
}

/// Records an error in shared memory, disables the subscription if asked to, and re-raises it so
/// that it is logged (with the apply context) and ends the worker.
fn on_error(subid: i32, e: CaughtError) {
    apply::forget_origin_position();
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
    let conflict = conflict_of(&e);
    let code = match &e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) | CaughtError::RustPanic { ereport: r, .. } => {
            r.sql_error_code()
        }
    };
    parallel::leader_failed(subid, code);
    // A failed batch, or a key that exists: the retry goes row by row, so that the error names
    // the row and the conflict's local row is found and recorded (worker/conflict/).
    let batch_failed_lsn =
        if errctx::in_batch() || conflict.is_some() { errctx::finish_lsn().map_or(0, |l| l.0) } else { 0 };
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
    let failed_in_auto_binary = AUTO_BINARY.with(|a| a.get());
    // A unique violation met the fast way (a batch, or a statement applied without looking the
    // row up first) is not reported as a conflict yet: the retry, at once, applies the
    // transaction row by row, looking each row up, and reports the conflict by its type with
    // the local row (counted, logged, in pgsub.conflict_log, and what disable_on_error acts on),
    // as native does at the first attempt. A retry that meets it again counts it as it is.
    let finish = errctx::finish_lsn().map_or(0, |l| l.0);
    // A parallel apply worker's (its transaction's finish not known yet while it streams) is the
    // same: the retry applies that transaction by spilling, which meets it with its finish LSN
    // and so goes row by row (a parallel worker's COPY batch met it the fast way).
    // (Its type is not told here: the leader's message is the one it was at, Stream Commit.)
    // A conflict the parallel worker reported by its type (a policy's) is counted as it is.
    let from_parallel = msg.starts_with(parallel::ERROR_PREFIX)
        && code == PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION
        && !msg.contains("conflict detected on relation");
    let recheck = conflict::raised_type().is_none()
        && ((conflict.is_some()
            && finish != 0
            && shmem::with_slot(subid, |s| s.batch_failed_lsn != finish).unwrap_or(false))
            || from_parallel);
    let counted = if recheck { None } else { conflict };
    // An error while several remote transactions were applied together (a group's commit, a
    // run of inserts carried over their commits) is not pinned to one of them: the retry, at
    // once, applies them one by one (`ungrouped_until`), and only an error there — naming its
    // own transaction, the one `skip_transaction` takes — backs off or disables the
    // subscription (disable_on_error).
    let grouped = errctx::span().is_some();
    // An error in a stream whose binary format pgsub chose itself (`binary` unset) that may be
    // binary's own — a relation binary cannot carry (a column whose type was changed here first,
    // say, which a text stream carries), a value the local type's binary input refuses: the
    // transaction is applied again in text at once, and only an error there is one. Not
    // counted, no backoff, no disable_on_error for what a text stream (native's default) would
    // not have met; logged (LOG) with what it was. Other errors (constraints, deadlocks,
    // privileges) are the data's whatever the format: reported as they are, and the retry is
    // in text all the same (`text_until`).
    // A parallel worker's error (re-raised here, its transaction's finish not known yet while it
    // streams) is judged the same: the retry applies that transaction by spilling, and an error
    // of binary's there has its finish LSN and turns the stream to text.
    let parallel_msg = msg.strip_prefix(parallel::ERROR_PREFIX);
    if failed_in_auto_binary
        && conflict.is_none()
        && (finish != 0 || parallel_msg.is_some())
        && (errctx::failed_in_receive() || binary_may_cause(code, parallel_msg.unwrap_or(&msg)))
    {
        shmem::with_slot(subid, |s| {
            // A parallel worker's transaction has no finish LSN yet: text until past what was
            // received, which it ends beyond (binary again, it could fail on and on, two
            // transactions taking turns to spill).
            let until = if finish != 0 { finish } else { s.received_lsn.max(s.applied_lsn) + 1 };
            s.text_until = s.text_until.max(until);
            s.ungrouped_until = s.ungrouped_until.max(finish);
            s.failed = false;
        });
        // SAFETY: leave the interrupted transaction; HOLD_INTERRUPTS() (never resumed) so that
        // a pending stop cannot turn the LOG line into a FATAL one; then exit like a clean stop.
        unsafe {
            pg_sys::AbortOutOfAnyTransaction();
            pg_sys::InterruptHoldoffCount += 1;
        }
        report::log(
            PgLogLevel::LOG,
            code,
            format!("pgsub apply worker: applying in binary format failed, the transaction is applied again in text format: {msg}"),
            Some(text.clone()),
            Some("The stream's binary format was chosen automatically (binary unset); an error in text format is reported as one."),
        );
        // SAFETY: the transaction was aborted above.
        unsafe { pg_sys::proc_exit(0) };
    }
    shmem::with_slot(subid, |s| {
        if recheck || (grouped && conflict.is_some()) {
            // A unique violation found the fast way (a batch, a group): the retry that follows
            // at once names the transaction and row and reports the conflict, which is what
            // native's one attempt is — counted there. Any other error counts now.
            s.restore_error(&text, now());
        } else {
            s.set_error(&text, now(), false);
        }
        count_conflict(s, counted);
        s.batch_failed_lsn = batch_failed_lsn;
        if let Some(lsn) = errctx::finish_lsn() {
            // The retry commits each transaction up to this one on its own.
            s.ungrouped_until = s.ungrouped_until.max(lsn.0);
        }
        if let Some(lsn) = errctx::finish_lsn().filter(|_| failed_in_auto_binary) {
            // The retry of this transaction streams text (worker/format.rs).
            s.text_until = s.text_until.max(lsn.0);
        }
        s.status = Status::Error;
        // The failed transaction is the oldest not applied: `apply_lag` goes on counting its age
        // until a worker applies it (0 here would read "caught up").
        // Outside a transaction, or in one whose commit time is not known here (a parallel
        // worker's): not known (the age shown may be of a transaction applied since).
        s.pending_commit_time = errctx::xid().and_then(conflict::txn_commit_time_of).unwrap_or(shmem::LAG_UNKNOWN);
        // No backoff before the row-by-row (or one-by-one) retry.
        s.failed = !recheck && !grouped;
    });
    if let Some(relid) = errctx::relation().and_then(|r| relation::bound_relid(&r)) {
        crate::monitor::add_conflict(subid, relid.to_u32(), counted);
    }
    // SAFETY: leave whatever transaction the error interrupted before starting a new one.
    unsafe { pg_sys::AbortOutOfAnyTransaction() };
    conflict::write_pending_after_abort();
    if !recheck && !grouped && disable_on_error(subid) {
        shmem::with_slot(subid, |s| s.failed = false);
    }
    e.rethrow()
}

/// Whether an apply error may come from the binary format itself: pgsub's own refusal of a
/// relation (`format::check_bound`), a data exception (class 22: a binary value a local input
/// function refuses or reads out of range), a datatype mismatch, a malformed binary message.
/// (Any error raised inside a binary input function is too: `errctx::failed_in_receive`.)
fn binary_may_cause(code: PgSqlErrorCode, msg: &str) -> bool {
    let class = |c: PgSqlErrorCode| (c as i32) & 0xFFF;
    msg.starts_with("binary transfer cannot carry")
        || class(code) == class(PgSqlErrorCode::ERRCODE_DATA_EXCEPTION)
        || code == PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH
        || code == PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION
}

/// After an error (its transaction aborted): disables the subscription if it has
/// disable_on_error, as natively, and says so; true when it did. The caller re-raises the error
/// next: interrupts stay held from the disabling on, so that the launcher's SIGTERM, which the
/// disabling brings, cannot end the worker before the error is logged.
pub(crate) fn disable_on_error(subid: i32) -> bool {
    let (disable, name) = xact(|| {
        catalog::load(subid)
            .ok()
            .flatten()
            .map(|s| (s.disable_on_error && s.enabled, s.name))
            .unwrap_or((false, subid.to_string()))
    });
    if disable {
        // SAFETY: HOLD_INTERRUPTS(); never resumed, the process ends with the error re-raised.
        unsafe { pg_sys::InterruptHoldoffCount += 1 };
        xact(|| {
            let _ = catalog::set_enabled(subid, false);
        });
        shmem::with_slot(subid, |s| s.disabled_by_error_at = now());
        shmem::wake_launcher(shmem::my_database());
        report::log(
            PgLogLevel::LOG,
            Code::ERRCODE_SUCCESSFUL_COMPLETION,
            // Native's words ("subscription \"…\" has been disabled because of an error").
            format!("pgsub: subscription \"{name}\" has been disabled because of an error (disable_on_error)"),
            None,
            Some("Fix the cause, then call pgsub.enable_subscription()."),
        );
    }
    disable
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
    let (mut sub, rels) = match loaded {
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
    // Enabled again since disable_on_error stopped it: no longer a health problem.
    shmem::with_slot(subid, |s| s.disabled_by_error_at = 0);
    // Tables a refresh removed leave pgsub.stat_subscription_table.
    crate::monitor::retain_tables(subid, &rels.iter().map(|r| r.relid).collect::<Vec<u32>>());
    setup_session(&sub);
    set_guc("application_name", &format!("pgsub {}", sub.name));

    let had_origin = origin_exists(&sub.origin_name());
    let restored = if had_origin { None } else { restore_origin(&sub) };
    let start = attach_origin(&sub.origin_name(), false);
    xact(|| catalog::forget_stop_lsn(subid));
    // SAFETY: registers a callback that runs once when this process exits (after release_slot's
    // registration, so before it).
    unsafe { pg_sys::before_shmem_exit(Some(record_stop), pg_sys::Datum::from(subid)) };
    if let Some(lsn) = restored {
        log!(
            "pgsub: replication origin \"{}\" of subscription \"{}\" was missing: created again at {lsn}, where its worker last stopped",
            sub.origin_name(),
            sub.name
        );
    } else if !had_origin {
        // create_subscription made it: it was lost since — pg_upgrade carries no origin but
        // native subscriptions' over — and the last stop was not clean (nothing recorded).
        report::log(
            PgLogLevel::WARNING,
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "pgsub: replication origin \"{}\" of subscription \"{}\" was missing and is created again: apply starts where the publisher's slot stands",
                sub.origin_name(),
                sub.name
            ),
            Some("The origin records how far this server applied; pg_upgrade does not carry pgsub's origins over. Transactions applied here after the slot's confirmed position are applied again.".into()),
            Some("A worker records where it stopped as it exits, and a lost origin is created again there: stop the server cleanly before a pg_upgrade, not by a crash or -m immediate (README, \"Upgrading the subscriber\")."),
        );
    }
    log!(
        "pgsub apply worker for subscription \"{}\" has started (origin {} at {})",
        sub.name,
        sub.origin_name(),
        start
    );

    set_status(subid, Status::Connecting);
    let slot = sub.slot_name.clone();
    let mut server_end = Lsn::INVALID;
    let Some((client, opts)) = connect_and_start(&sub, &slot, &rels, start, |client| {
        // What sync workers that are gone left behind (their slots).
        syncing::drop_stale_sync_slots(client, &sub, &rels);
        // The publisher's WAL end now: until the walsender has decoded that far (a backlog of
        // changes this subscription does not receive sends nothing for a while), the lag is
        // measured to it, not to the last change received.
        if let Ok(info) = client.identify_system() {
            server_end = info.xlogpos;
        }
    }) else {
        return;
    };
    // A pending two_phase the start enabled (`start_replication`) is in effect for this run.
    sub.two_phase_enabled |= sub.two_phase && opts.two_phase;
    shmem::with_slot(subid, |s| {
        s.publisher_version = client.server_version_num();
        s.proto_version = opts.proto_version;
        s.binary_in_use = Some(opts.binary_in_use());
    });
    set_status(subid, Status::Catchup);
    let mut applier = Applier::new(subid, TableStates::new(&rels), opts.binary, sub.origin == "none", sub.skip_lsn);
    if sub.binary.is_none() && opts.binary_in_use() {
        AUTO_BINARY.with(|a| a.set(true));
        applier.check_binary_choice();
    }
    if let Some(lsn) = shmem::with_slot(subid, |s| s.batch_failed_lsn) {
        applier.row_by_row_for(Lsn(lsn));
    }
    syncing::drop_stale_sync_origins(subid, &rels);
    // SAFETY: the session's origin, attached above.
    let origin_id = unsafe { pg_sys::replorigin_session_origin };
    let parallel = parallel::Pool::new(&sub, &opts, origin_id);
    let mut progress = Progress::new(subid, start);
    progress.on_publisher_end(server_end);
    let mut stream = Stream::new(sub, client, &opts, applier, progress, None);
    stream.parallel = parallel;
    stream.run();
}

/// Session settings shared by the apply worker and the sync workers.
pub(crate) fn setup_session(sub: &Subscription) {
    errctx::init(&sub.name, &sub.origin_name());
    conflict::init(sub.subid, sub.conflict_resolution);
    owner::set_run_as_owner(sub.run_as_owner);
    set_guc("session_replication_role", "replica");
    set_guc("synchronous_commit", &sub.synchronous_commit);
}

/// What every pgsub process that connects to a database sets at once, before its first query:
/// the database's or role's settings must not reach what it runs.
/// - An empty `search_path`, as native's workers: its catalog queries run as superuser, and an
///   operator or function of a schema on a path the database owner or the subscription owner
///   set (`ALTER DATABASE/ROLE … SET search_path`) would run with those rights.
/// - No `transaction_timeout` (17+).
/// - Read-write, read committed transactions. Native apply writes through the executor's
///   replication entry points, below the read-only check, so a database a DBA made
///   `default_transaction_read_only` for its users still receives changes; pgsub writes through
///   SQL and turns the default off for itself. And every statement must see the latest
///   committed rows, as native's lookups do: under a default of `repeatable read` or
///   `serializable` an UPDATE would miss a row committed locally after the transaction's
///   snapshot and call it missing, or fail on a concurrent local update.
pub(crate) fn pin_session_defaults() {
    set_guc("search_path", "");
    set_guc("default_transaction_read_only", "off");
    set_guc("default_transaction_isolation", "read committed");
    set_guc("default_transaction_deferrable", "off");
    // PostgreSQL 17's transaction_timeout, set for a database's users, ends any transaction that
    // runs longer, a worker's too — with a FATAL that records nothing and restarts it at once into
    // the same transaction for ever (native's workers loop so). pgsub's transactions last as long
    // as the publisher's changes take to apply.
    if pg_sys::PG_VERSION_NUM >= 170000 {
        set_guc("transaction_timeout", "0");
    }
}

/// Connects to the publisher's walsender, runs `before` on the connection, and starts streaming
/// `slot` from `start`; None when asked to stop meanwhile.
fn connect_and_start(
    sub: &Subscription,
    slot: &str,
    rels: &[catalog::SubRel],
    start: Lsn,
    before: impl FnOnce(&mut Client),
) -> Option<(Client, PgOutputOptions)> {
    let mut client =
        match publisher::connect(&sub.conninfo, true, Context::Worker, Some(&sub.name), sub.must_use_password()) {
            Ok(c) => c,
            Err(ProtoError::Interrupted) => return None,
            Err(e) => {
                publisher::raise(&e, &format!("subscription \"{}\" could not connect to the publisher", sub.name), None)
            }
        };
    // The publisher's identity breaks ties between equal commit times (worker/conflict/), for the
    // policies that compare them.
    if sub.conflict_resolution.needs_commit_timestamps() {
        // Checked when the policy was set, but the server may have been restarted without it
        // since: then no local row has a commit time, and every remote change would win (the
        // policy turned into apply_remote without a word).
        // SAFETY: a GUC variable of the server, read in a backend.
        if !unsafe { pg_sys::track_commit_timestamp } {
            client.close();
            report::error(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "conflict_resolution \"{}\" of subscription \"{}\" needs track_commit_timestamp, which is off",
                    sub.conflict_resolution.as_str(),
                    sub.name
                ),
                Some("It compares the commit time of the local row with the remote commit time.".into()),
                Some("Set track_commit_timestamp = on and restart the server, or choose another conflict_resolution."),
            );
        }
        match client.identify_system() {
            Ok(info) => conflict::set_publisher_sysid(info.systemid.parse().unwrap_or(0)),
            Err(ProtoError::Interrupted) => return None,
            Err(e) => publisher::raise(&e, "could not identify the publisher (IDENTIFY_SYSTEM)", None),
        }
    }
    before(&mut client);
    let sync = slot != sub.slot_name;
    start_replication(client, sub, slot, rels, start, sync)
}

/// With `streaming => 'parallel'`: sets the walsender's `logical_decoding_work_mem` to
/// `pgsub.parallel_streaming_decoding_work_mem` (unless it is lower already), so that a large transaction is streamed (and
/// applied by a parallel apply worker) as it is written, and only the changes of the last such
/// amount are left for its COMMIT — with the publisher's default of 64MB, up to 64MB of changes are
/// decoded, sent and applied only after it commits. The setting is the walsender session's
/// own (the publisher's other sessions are untouched); the walsender of a logical replication
/// connection runs SQL, and PostgreSQL 14+ (the streaming publishers) has the setting. None
/// when asked to stop meanwhile.
fn ask_to_stream_early(client: &mut Client, sub: &Subscription) -> Option<()> {
    let kb = gucs::PARALLEL_STREAM_DECODING_WORK_MEM_KB.get();
    if kb < 0 {
        return Some(());
    }
    // PostgreSQL's minimum is 64kB. A publisher set lower (or its role or database) keeps its
    // setting: pgsub never makes it stream later; one that does not read as a memory amount is
    // left alone. SHOW and SET are utility commands: no function or operator is looked up.
    let kb = i64::from(kb.max(64));
    let current = match client.simple_query("SHOW logical_decoding_work_mem") {
        Ok(rows) => rows.first().and_then(|r| r.values.first().cloned().flatten()),
        Err(ProtoError::Interrupted) => return None,
        Err(e) => publisher::raise(
            &e,
            &format!(
                "subscription \"{}\" could not read logical_decoding_work_mem on the publisher's walsender",
                sub.name
            ),
            Some("Set pgsub.parallel_streaming_decoding_work_mem = -1 to keep the publisher's own setting."),
        ),
    };
    if current.as_deref().and_then(pgsub_core::units::memory_kb).is_none_or(|c| c <= kb) {
        return Some(());
    }
    match client.simple_query(&format!("SET logical_decoding_work_mem = '{kb}kB'")) {
        Ok(_) => Some(()),
        Err(ProtoError::Interrupted) => None,
        Err(e) => publisher::raise(
            &e,
            &format!(
                "subscription \"{}\" could not set logical_decoding_work_mem on the publisher's walsender",
                sub.name
            ),
            Some("Set pgsub.parallel_streaming_decoding_work_mem = -1 to keep the publisher's own setting."),
        ),
    }
}

/// Starts streaming `slot` from `start` with the options the publisher's version allows (a sync
/// worker's catch-up takes whole transactions, never streamed or two-phase ones, as native
/// tablesync's) and in the format `format.rs` decides for the tables `rels`; None when asked to
/// stop meanwhile.
pub(crate) fn start_replication(
    mut client: Client,
    sub: &Subscription,
    slot: &str,
    rels: &[catalog::SubRel],
    start: Lsn,
    sync: bool,
) -> Option<(Client, PgOutputOptions)> {
    let server = client.server_version_num();
    if sub.two_phase && server < 150000 && !sync {
        // The slot was made for two-phase decoding; an older server cannot do it (the
        // connection string now names another server).
        report::error(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "subscription \"{}\" has two_phase enabled, which needs a publisher of PostgreSQL 15 or later (the publisher is {})",
                sub.name,
                pgsub_proto::client::version_string(server)
            ),
            None,
            Some(if sub.two_phase_enabled {
                "Connect to a newer publisher, or recreate the subscription with two_phase => false."
            } else {
                // Still pending: no slot was made for it, so it can simply be turned off.
                "Connect to a newer publisher, or disable the subscription and turn it off with pgsub.alter_subscription_options(name, two_phase => false)."
            }),
        );
    }
    let mut opts = PgOutputOptions::for_server(server, sub.publications.clone());
    // An apply worker's retry after an automatically binary stream failed streams text up to
    // the failed transaction; a sync worker's catch-up decides afresh.
    let text_until = if sync { Lsn(0) } else { shmem::with_slot(sub.subid, |s| Lsn(s.text_until)).unwrap_or(Lsn(0)) };
    let format = match format::stream_format(&mut client, sub, rels, start, text_until) {
        Ok(f) => f,
        Err(ProtoError::Interrupted) => return None,
        Err(e) => publisher::raise(&e, "could not read the published columns' types from the publisher", None),
    };
    // Publishers before 14 send text whatever is asked (PgOutputOptions leaves the option out).
    opts.binary = format.binary;
    if !sync {
        log!(
            "pgsub apply worker for subscription \"{}\" receives changes in {} format ({})",
            sub.name,
            if opts.binary_in_use() { "binary" } else { "text" },
            format.why
        );
    }
    opts.messages = true;
    opts.streaming = if sub.streaming.streams() && server >= 140000 && !sync { Streaming::On } else { Streaming::Off };
    if opts.streaming == Streaming::On && sub.streaming == StreamingMode::Parallel {
        ask_to_stream_early(&mut client, sub)?;
    }
    // two_phase asked for and pending: the apply worker enables it once every table is ready
    // (the walsender then decodes prepared transactions from this start on), as native's does.
    let enable_two_phase = !sync && sub.two_phase && !sub.two_phase_enabled && all_ready(rels);
    opts.two_phase = !sync && server >= 150000 && (sub.two_phase_enabled || enable_two_phase);
    // Publishers before 16 do not filter by origin: pgsub filters itself (Origin messages).
    if server >= 160000 {
        opts.origin = Some(sub.origin.clone());
    }
    // A walsender answers START_REPLICATION at once: silence is a dead publisher, given up after
    // receiver_timeout like silence in the stream.
    let timeout = gucs::ms(&gucs::RECEIVER_TIMEOUT_MS);
    let timeout = (!timeout.is_zero()).then_some(timeout);
    // The slot still active (55006) is, right after this subscription's worker restarted (a
    // refresh, a changed option), the previous connection's walsender that has not noticed its
    // client is gone (busy decoding a large transaction, it reads no socket): waited for, up to
    // SLOT_BUSY_WAIT, the status `connecting`, rather than counted as an error and retried
    // after the backoff. Native waits by failing and retrying every 5 s.
    let busy_since = std::time::Instant::now();
    let mut said = false;
    // Each try is an ERROR line in the publisher's log: 250 ms after the first (a walsender
    // that is about to notice lets go soon), then doubling to 2 s (it polled every 250 ms: 120
    // lines in a 30-s wait).
    let mut pause = 250;
    while let Err(e) = client.start_replication_within(slot, start, &opts, timeout) {
        if matches!(e, ProtoError::Interrupted) {
            return None;
        }
        if e.sqlstate() == Some("55006") && busy_since.elapsed() < SLOT_BUSY_WAIT {
            if !std::mem::replace(&mut said, true) {
                log!("pgsub: replication slot \"{slot}\" is still active on the publisher ({e}); waiting up to {} s for it", SLOT_BUSY_WAIT.as_secs());
            }
            crate::process::nap(pause, crate::process::Wait::Extension);
            pause = (pause * 2).min(2000);
            if shutdown_requested() {
                return None;
            }
            continue;
        }
        // A sync slot gone: after a pg_upgrade (the name carries the system identifier, which it
        // changes), or dropped by hand on the publisher.
        let hint = (sync && e.sqlstate() == Some("42704")).then_some(
            "The table's synchronization slot is gone from the publisher (pg_upgrade gives the server a new system identifier, which the slot's name carries). Synchronize the table again: remove it from the subscription (pgsub.alter_subscription_publications or the publication, then pgsub.refresh_subscription), truncate it here, and add it back; drop a slot of the old name left on the publisher.",
        );
        publisher::raise(&e, &format!("could not start replication from slot \"{slot}\""), hint);
    }
    if enable_two_phase && opts.two_phase {
        let r = xact(|| catalog::set_two_phase_enabled(sub.subid));
        if let Err(e) = r {
            report::error(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("updating pgsub.sub: {e}"), None, None);
        }
        log!("pgsub apply worker for subscription \"{}\": two_phase is enabled from {start}", sub.name);
    }
    Some((client, opts))
}

/// How long START_REPLICATION is retried while the slot is active on the publisher.
const SLOT_BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The subscription has tables and every one is ready: a pending two_phase can be enabled (with
/// no table it stays pending, as natively, so that a refresh may still copy).
pub(crate) fn all_ready(rels: &[catalog::SubRel]) -> bool {
    !rels.is_empty() && rels.iter().all(|r| r.sync_state == catalog::SyncState::Ready)
}

/// The subscription's replication origin is gone (pg_upgrade carries none of pgsub's): when the
/// last worker (or disable_subscription) recorded where it stopped, it is created again at that
/// position.
fn restore_origin(sub: &Subscription) -> Option<Lsn> {
    let origin = sub.origin_name();
    xact(|| {
        let lsn = catalog::stop_lsn(sub.subid)?;
        let made = catalog::as_superuser(|| {
            Spi::run_with_args("SELECT pg_catalog.pg_replication_origin_create($1)", &[origin.as_str().into()])?;
            // 0/0: it had applied nothing; a new origin is there already.
            if !lsn.is_valid() {
                return Ok(());
            }
            Spi::run_with_args(
                "SELECT pg_catalog.pg_replication_origin_advance($1, $2::pg_catalog.pg_lsn)",
                &[origin.as_str().into(), lsn.to_string().into()],
            )
        });
        match made {
            Ok(()) => Some(lsn),
            Err(e) => report::error(
                Code::ERRCODE_INTERNAL_ERROR,
                format!("creating replication origin \"{origin}\" again: {e}"),
                None,
                None,
            ),
        }
    })
}

/// As the worker exits (SIGTERM, a clean shutdown of the server, an error or the subscription
/// disabled), records where its origin stands (`catalog::record_stop_lsn`), so that a pg_upgrade
/// without disabling the subscriptions first is exact too. A process left by a crash or an
/// immediate shutdown records nothing (and the start forgot the last record): its origin, if
/// lost, is created again at the slot's position, with a WARNING.
#[pg_guard]
unsafe extern "C-unwind" fn record_stop(_code: i32, arg: pg_sys::Datum) {
    // SAFETY: the process is exiting; what it was doing is abandoned first, as PostgreSQL's own
    // exit callbacks that write do (temporary-relation removal).
    unsafe {
        // After the postmaster died, nothing is written (the next start recovers).
        if getppid_is_not(pg_sys::PostmasterPid) {
            return;
        }
        // A SIGTERM that ended the worker may still be pending (a stop between statements): it
        // would end this write at its first interrupt check. The process is exiting anyway, and
        // during the exit a new SIGTERM is not taken (die leaves proc_exit alone); the timeouts
        // set below still fire.
        std::ptr::addr_of_mut!(pg_sys::ProcDiePending).write_volatile(0);
        std::ptr::addr_of_mut!(pg_sys::QueryCancelPending).write_volatile(0);
        pg_sys::AbortOutOfAnyTransaction();
        // A remote transaction's end may be set for a commit that never came: this write is
        // not a remote transaction and must not move the origin.
        pg_sys::replorigin_session_origin_lsn = 0;
        pg_sys::replorigin_session_origin_timestamp = 0;
        pg_sys::replorigin_session_origin = pg_sys::InvalidRepOriginId as u16;
    }
    let subid = arg.value() as i32;
    // A pgsub function that stops the worker (disable, drop, a change) holds the subscription's
    // row while it waits, and records or clears the position itself: one try. Otherwise (a
    // server shutdown, pg_terminate_backend) a transaction holding the row is being ended too,
    // or is another session's: tried for up to 3 s, then said.
    let tries = if crate::process::stop_asked_by_pgsub() { 1 } else { 30 };
    for n in 1..=tries {
        // Never a wait that nothing could end: no synchronous standby awaited, and a lock on
        // pgsub.sub (LOCK TABLE, VACUUM FULL) or a slow statement given up (a FATAL line then).
        let bounded = || {
            Spi::run("SET LOCAL synchronous_commit = local")?;
            Spi::run("SET LOCAL lock_timeout = '1s'")?;
            Spi::run("SET LOCAL statement_timeout = '5s'")?;
            catalog::record_stop_lsn(subid, &catalog::origin_name(subid))
        };
        match xact(bounded) {
            Ok(true) => return,
            Ok(false) if n < tries => {
                // SAFETY: a plain sleep of an exiting process.
                unsafe { pg_sys::pg_usleep(100_000) };
            }
            Ok(false) => {
                if tries > 1 {
                    warning!(
                        "pgsub apply worker for subscription {subid}: could not record where it stopped: another transaction holds its row in pgsub.sub"
                    );
                }
                return;
            }
            Err(e) => {
                log!("pgsub apply worker for subscription {subid}: could not record where it stopped: {e}");
                return;
            }
        }
    }
}

/// Whether this process's parent is no longer the postmaster (it died: the child was re-parented).
fn getppid_is_not(postmaster: i32) -> bool {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() != postmaster }
}

/// Whether replication origin `name` exists.
fn origin_exists(name: &str) -> bool {
    let name = CString::new(name).unwrap_or_default();
    // SAFETY: a syscache lookup inside a transaction; missing_ok.
    xact(|| unsafe { pg_sys::replorigin_by_name(name.as_ptr(), true) } != pg_sys::InvalidRepOriginId as u16)
}

/// Attaches this process to the replication origin `name` (created if missing); returns its
/// progress (`flushed_only`: only what is durable).
pub(crate) fn attach_origin(name: &str, flushed_only: bool) -> Lsn {
    let name = CString::new(name).unwrap_or_default();
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
            Lsn(pg_sys::replorigin_session_get_progress(flushed_only))
        }
    })
}
