//! The table synchronization worker: one dynamic background worker per table being synchronized,
//! started by the apply worker (`syncing.rs`) with the subscription id as argument and
//! "dboid owner relid" as extra. It walks the table through the states drawn in
//! `core/src/state.rs`, as PostgreSQL's `tablesync.c` does:
//!
//!   INIT/DATASYNC  drops a slot an earlier attempt left, marks the table DATASYNC, creates the
//!                  permanent slot `pgsub_<subid>_sync_<relid>` with its snapshot (consistent
//!                  point C) and copies the table under it (`sync.rs`); the copy, FINISHEDCOPY
//!                  and the sync origin's position C commit together.
//!   FINISHEDCOPY   asks the apply worker how far to catch up (SYNCWAIT in shared memory); the
//!                  apply worker answers with its position X (CATCHUP) and waits.
//!   CATCHUP        streams its own slot from the origin's position (C, or later after a
//!                  restart) and applies the changes of this table only (known by the
//!                  publisher's OID, so under any name a rename gives it), through the same
//!                  receive loop and applier as the apply worker, until the stream reaches
//!                  `catchup_end(start, X)`; each applied transaction advances the sync origin.
//!   SYNCDONE       commits SYNCDONE at that position (the apply worker applies the table's
//!                  transactions from there on), then drops its slot and origin and exits.
//!
//! A crash at any point resumes from the catalog state: nothing is copied twice and nothing is
//! applied twice (the origin says where the catch-up is). An error ends the worker with the
//! error in the table's shared-memory slot and the log; the apply worker starts it again after a
//! growing delay while the other tables proceed. `pgsub.sync_hold_state` holds a worker in one
//! state (a testing aid, like PostgreSQL's injection points; a held worker re-reads the
//! configuration file every second, so lifting the hold never depends on a SIGHUP arriving).
use super::apply::{Applier, TableStates};
use super::progress::Progress;
use super::receive::Stream;
use super::syncing::{sync_slot_name, wait_ms};
use super::{errctx, sync, triggers, xact};
use crate::catalog::{self, SubRel, Subscription, SyncState};
use crate::process::{now, reload_config_if_requested, shutdown_requested};
use crate::publisher::{self, Context};
use crate::shmem::{self, SyncPhase};
use crate::{gucs, report};
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgsub_core::state::catchup_end;
use pgsub_core::tablesync::backoff;
use pgsub_proto::client::{Client, Error as ProtoError, SlotOptions, SnapshotAction};
use pgsub_proto::Lsn;

type Code = PgSqlErrorCode;

/// The table this worker synchronizes, as the publisher names it (for error messages).
static TABLE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pgsub_sync_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    crate::process::terminate_on_sigterm();
    let subid = arg.value() as i32;
    let extra = BackgroundWorker::get_extra().to_string();
    let mut parts = extra.split_whitespace().map(|p| p.parse::<u32>().unwrap_or(0));
    let (dboid, owner, relid) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(dboid)), Some(pg_sys::Oid::from(owner)));
    crate::worker::pin_session_defaults();
    // SAFETY: MyProcPid is set for every backend.
    let me = unsafe { pg_sys::MyProcPid };
    let claimed = shmem::SHARED.exclusive().sync_slot_mut(subid, relid).is_some_and(|s| {
        if s.pid > 0 && s.pid != me && crate::process::pid_alive(s.pid) {
            return false;
        }
        s.pid = me;
        s.alive_at = crate::process::now();
        s.registered = false;
        s.waiting = false;
        true
    });
    if !claimed {
        log!("pgsub sync worker for subscription {subid} table {relid}: another worker runs or the table is done, exiting");
        return;
    }
    let key = ((subid as u32 as u64) << 32) | u64::from(relid);
    // SAFETY: registers a callback that runs once when this process exits, however it exits.
    unsafe { pg_sys::before_shmem_exit(Some(release_sync_slot), pg_sys::Datum::from(key as usize)) };
    crate::process::beat_for(crate::process::Beat::Sync(subid, relid));
    errctx::install();
    triggers::install();
    PgTryBuilder::new(|| run(subid, relid)).catch_others(|e| on_error(subid, relid, e)).execute();
}

/// Clears this worker's pid from its sync slot when the process exits.
#[pg_guard]
unsafe extern "C-unwind" fn release_sync_slot(_code: i32, arg: pg_sys::Datum) {
    // SAFETY: the process is exiting; no pgsub lock may be held across this point.
    unsafe { pg_sys::LWLockReleaseAll() };
    let key = arg.value() as u64;
    let (subid, relid) = ((key >> 32) as u32 as i32, key as u32);
    // SAFETY: MyProcPid is set for every backend.
    let me = unsafe { pg_sys::MyProcPid };
    shmem::with_sync_slot(subid, relid, |s| {
        if s.pid == me {
            s.pid = 0;
            if s.phase != SyncPhase::Done {
                s.phase = SyncPhase::Idle;
            }
        }
    });
}

/// Records the table's error (and its backoff), disables the subscription if asked to, and
/// re-raises the error so that it is logged and ends the worker.
fn on_error(subid: i32, relid: u32, e: CaughtError) {
    super::apply::forget_origin_position();
    if shutdown_requested() {
        // SAFETY: leave the interrupted transaction, then exit like a clean stop.
        unsafe {
            pg_sys::AbortOutOfAnyTransaction();
            pg_sys::proc_exit(0);
        }
    }
    let text = match &e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) | CaughtError::RustPanic { ereport: r, .. } => {
            let mut t = r.message().to_string();
            if let Some(d) = r.detail() {
                t.push_str(&format!("\nDETAIL: {d}"));
            }
            if let Some(h) = r.hint() {
                t.push_str(&format!("\nHINT: {h}"));
            }
            t
        }
    };
    let retry_us = i64::from(gucs::RETRY_INTERVAL_MS.get().max(1)) * 1000;
    let conflict = super::conflict_of(&e);
    shmem::with_sync_slot(subid, relid, |s| {
        s.set_error(&text, now());
        s.failures += 1;
        s.next_start_at = now() + backoff(retry_us, s.failures);
        // SYNCDONE is committed once Done shows: an error after it (dropping the slot) must not
        // hide that from the apply worker, which would go on skipping the table's changes.
        if s.phase != SyncPhase::Done {
            s.phase = SyncPhase::Idle;
        }
    });
    // The subscription's view shows it too (counted in error_count, as native counts sync errors
    // in pg_stat_subscription_stats); its status stays the apply worker's.
    let table = TABLE.get().cloned().unwrap_or_else(|| format!("with OID {relid}"));
    shmem::with_slot(subid, |s| {
        s.set_error(&format!("table synchronization of {table}: {text}"), now(), true);
        super::count_conflict(s, conflict);
    });
    crate::monitor::add_conflict(subid, relid, conflict);
    // SAFETY: leave whatever transaction the error interrupted before starting a new one.
    unsafe { pg_sys::AbortOutOfAnyTransaction() };
    super::conflict::write_pending_after_abort();
    super::disable_on_error(subid);
    e.rethrow()
}

fn set_phase(subid: i32, relid: u32, phase: SyncPhase) {
    shmem::with_sync_slot(subid, relid, |s| s.phase = phase);
}

/// Waits while `pgsub.sync_hold_state` names `phase` (module comment).
fn hold(phase: SyncPhase) {
    let Some(name) = phase.hold_name() else { return };
    let mut logged = false;
    let mut polls = 0u32;
    while gucs::sync_hold_state() == name {
        if !logged {
            log!("pgsub sync worker: holding in state {name} (pgsub.sync_hold_state)");
            logged = true;
        }
        exit_if_asked();
        // Re-read the configuration file about once a second even without a SIGHUP: a worker
        // the postmaster forked just before a reload misses that reload's signal (it is
        // discarded while the new process still ignores SIGHUP), and a held worker would then
        // never see the hold lifted.
        polls += 1;
        if !reload_config_if_requested() && polls.is_multiple_of(10) {
            // SAFETY: the main thread of a background worker, outside a transaction.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        wait_ms(100, crate::process::Wait::Extension);
    }
}

/// In CATCHUP: whether the apply worker that answered with the catch-up end (X, its position)
/// is no longer the subscription's apply worker. Its successor starts from the subscription's
/// origin and skips this table's changes until the table is synchronized, so it may pass X
/// before this worker commits SYNCDONE at X: the changes between would be lost (native's
/// tablesync has the same window). The catch-up is then given up, to be done again with the
/// running apply worker's position (the sync origin keeps what was applied).
pub(super) fn answering_apply_worker_gone(subid: i32, relid: u32) -> bool {
    let g = shmem::SHARED.share();
    let Some(answered_by) = g.sync_slot(subid, relid).map(|s| s.apply_pid) else { return false };
    let current = g.find(subid).map_or(0, |s| s.pid);
    answered_by > 0 && (current != answered_by || !crate::process::pid_alive(answered_by))
}

fn exit_if_asked() {
    if shutdown_requested() {
        // SAFETY: clean exit of a background worker asked to stop.
        unsafe { pg_sys::proc_exit(0) };
    }
}

/// The worker body (module comment). Returns when done or asked to stop; raises on errors.
fn run(subid: i32, relid: u32) {
    let loaded = xact(|| catalog::load(subid).map(|s| s.map(|s| (s, catalog::load_rel(subid, relid)))));
    let (sub, rel) = match loaded {
        Ok(Some((s, Ok(Some(r))))) => (s, r),
        Ok(Some((_, Err(e)))) | Err(e) => {
            report::error(Code::ERRCODE_INTERNAL_ERROR, format!("reading the pgsub catalog: {e}"), None, None)
        }
        Ok(None) | Ok(Some((_, Ok(None)))) => return, // dropped meanwhile
    };
    if !sub.enabled {
        return;
    }
    super::setup_session(&sub);
    super::set_guc("application_name", &format!("pgsub {} sync {relid}", sub.name));
    let slot = sync_slot_name(subid, relid);
    let _ = TABLE.set(format!(
        "{}.{}",
        pgsub_proto::client::quote_ident(&rel.remote_schema),
        pgsub_proto::client::quote_ident(&rel.remote_name)
    ));
    if matches!(rel.sync_state, SyncState::SyncDone | SyncState::Ready) {
        // A worker before this one committed SYNCDONE and did not finish cleaning up.
        let done = rel.state_lsn.unwrap_or_default();
        shmem::with_sync_slot(subid, relid, |s| {
            s.done_lsn = done.0;
            s.phase = SyncPhase::Done;
        });
        wake_apply_worker(subid);
        clean_up(&sub, &slot, None);
        return;
    }
    // After a copy its replication connection streams the catch-up too, and the table's OID on
    // the publisher is the one the copy's snapshot saw.
    let (start, mut client, copied_oid) = if rel.sync_state.needs_copy() {
        match copy(&sub, &rel, &slot) {
            Some((at, c, oid)) => (at, Some(c), oid),
            None => return,
        }
    } else {
        (super::attach_origin(&slot, false), None, None)
    };
    set_phase(subid, relid, SyncPhase::Copied);
    hold(SyncPhase::Copied);
    let Some(apply_at) = ask_apply_worker(subid, relid) else { return };
    if subscription_changed(&sub) {
        log!(
            "pgsub: table synchronization worker for subscription \"{}\", table {}.{} will restart because of a parameter change",
            sub.name,
            pgsub_proto::client::quote_ident(&rel.remote_schema),
            pgsub_proto::client::quote_ident(&rel.remote_name)
        );
        return;
    }
    let end = Lsn(catchup_end(start.0, apply_at.0));
    hold(SyncPhase::Catchup);
    let given_up = || {
        let gone = answering_apply_worker_gone(subid, relid);
        if gone {
            log!(
                "pgsub: table synchronization worker for subscription \"{}\", table {}.{}: the apply worker that set the catch-up end has exited; the table's catch-up starts again with the next one",
                sub.name,
                pgsub_proto::client::quote_ident(&rel.remote_schema),
                pgsub_proto::client::quote_ident(&rel.remote_name)
            );
        }
        gone
    };
    if end > start {
        match catch_up(&sub, &rel, &slot, client.take(), copied_oid, start, end) {
            Some(c) => client = Some(c),
            None => {
                given_up();
                return;
            }
        }
    }
    // X was that apply worker's position: the next one may be past it already, skipping this
    // table's changes — SYNCDONE at X would lose those between. Start over with it.
    if given_up() {
        return;
    }
    xact(|| {
        if let Err(e) = catalog::set_sync_state(subid, relid, SyncState::SyncDone, Some(end), None) {
            report::error(Code::ERRCODE_INTERNAL_ERROR, format!("updating pgsub.sub_rel: {e}"), None, None);
        }
    });
    // Durable before the slot is dropped below, whatever the subscription's synchronous_commit
    // (native's finish_sync_worker flushes too): after a crash that lost the commit the table
    // would be synchronized again from a slot that is gone.
    // SAFETY: flushes the WAL up to this process's last commit, outside a transaction.
    unsafe { pg_sys::XLogFlush(pg_sys::XactLastCommitEnd) };
    shmem::with_sync_slot(subid, relid, |s| {
        s.done_lsn = end.0;
        s.phase = SyncPhase::Done;
        s.failures = 0;
        s.last_error_len = 0;
    });
    wake_apply_worker(subid);
    log!(
        "pgsub: table synchronization worker for subscription \"{}\", table {}.{} has finished (synchronized at {end})",
        sub.name,
        pgsub_proto::client::quote_ident(&rel.remote_schema),
        pgsub_proto::client::quote_ident(&rel.remote_name)
    );
    hold(SyncPhase::Done);
    clean_up(&sub, &slot, client);
}

/// INIT/DATASYNC: a fresh slot and snapshot, and the copy. Returns the copy point, the
/// replication connection and the table's OID on the publisher under the snapshot (None: not
/// found), or None when asked to stop.
fn copy(sub: &Subscription, rel: &SubRel, slot: &str) -> Option<(Lsn, Client, Option<u32>)> {
    let (subid, relid) = (sub.subid, rel.relid);
    set_phase(subid, relid, SyncPhase::Copying);
    let mut client = connect(sub)?;
    // A slot of an interrupted attempt: its snapshot is gone with its connection.
    if slot_exists(sub, &mut client, slot) {
        match client.drop_slot(slot, true) {
            Ok(()) => log!("pgsub: dropped table synchronization slot \"{slot}\" of an interrupted copy"),
            Err(e) if e.sqlstate() == Some("42704") => {}
            Err(e) => fail(sub, &e, &format!("could not drop replication slot \"{slot}\"")),
        }
    }
    xact(|| {
        if let Err(e) = catalog::set_sync_state(subid, relid, SyncState::DataSync, None, None) {
            report::error(Code::ERRCODE_INTERNAL_ERROR, format!("updating pgsub.sub_rel: {e}"), None, None);
        }
    });
    super::attach_origin(slot, false);
    if let Err(e) = client.execute("BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ") {
        fail(sub, &e, "could not start the snapshot transaction");
    }
    let at = match client.create_logical_slot(slot, false, SnapshotAction::Use, SlotOptions::default()) {
        Ok(i) => i.consistent_point,
        Err(e) => fail(sub, &e, &format!("could not create replication slot \"{slot}\"")),
    };
    shmem::with_sync_slot(subid, relid, |s| {
        s.copy_started_at = now();
        s.rows_copied = 0;
        s.bytes_copied = 0;
        s.slot_dropped = false;
    });
    hold(SyncPhase::Copying);
    let oid = remote_oid(sub, &mut client, rel);
    match sync::copy_table(&mut client, sub, rel, at) {
        // Committed with FINISHEDCOPY: counted once (a failed copy rolled back counts nothing).
        Ok((rows, _)) => {
            if !crate::monitor::add_copied(subid, relid, rows as i64) {
                warning!(
                    "pgsub: all {} per-table statistics entries are taken; the copy of table {relid} is not counted",
                    crate::monitor::MAX_TABLES
                );
            }
        }
        Err(e) => fail(sub, &e, "could not copy the table"),
    }
    if let Err(e) = client.execute("COMMIT") {
        fail(sub, &e, "could not end the snapshot transaction");
    }
    Some((at, client, oid))
}

/// SYNCWAIT: waits for the apply worker's position (CATCHUP). None when asked to stop or when no
/// apply worker runs for the subscription for a while (the next one starts this table again).
fn ask_apply_worker(subid: i32, relid: u32) -> Option<Lsn> {
    set_phase(subid, relid, SyncPhase::SyncWait);
    wake_apply_worker(subid);
    let mut without_apply = 0u32;
    let mut polls = 0u32;
    loop {
        exit_if_asked();
        reload_config_if_requested();
        // About once a second: a table removed from the subscription meanwhile is no longer
        // synchronized (no apply worker answers for it).
        polls += 1;
        if polls.is_multiple_of(10) && !still_synchronized(subid, relid) {
            log!("pgsub: table synchronization worker for table {relid}: the table is no longer synchronized by the subscription; exiting");
            return None;
        }
        let answer = shmem::SHARED
            .share()
            .sync_slot(subid, relid)
            .and_then(|s| (s.phase == SyncPhase::Catchup).then_some(Lsn(s.catchup_lsn)));
        if answer.is_some() {
            return answer;
        }
        let apply_running = shmem::SHARED.share().find(subid).is_some_and(|s| s.pid > 0);
        without_apply = if apply_running { 0 } else { without_apply + 1 };
        if without_apply > 50 {
            return None;
        }
        wait_ms(100, crate::process::Wait::SyncStateChange);
    }
}

/// Whether the subscription still synchronizes the table (its row is there and not ready).
fn still_synchronized(subid: i32, relid: u32) -> bool {
    xact(|| catalog::load_rel(subid, relid)).ok().flatten().is_some_and(|r| r.sync_state.needs_sync_worker())
}

/// Whether the subscription's options changed since `sub` was read (or it was disabled or
/// dropped): a catch-up runs with the current ones, as native's tablesync restarts on seeing
/// such a change (the copy is kept; the next worker catches up).
fn subscription_changed(sub: &Subscription) -> bool {
    match xact(|| catalog::load(sub.subid)) {
        Ok(Some(now)) => !now.enabled || now.config_hash() != sub.config_hash(),
        Ok(None) => true,
        Err(_) => false,
    }
}

/// CATCHUP: streams the sync slot from `start` and applies this table's changes up to `end`
/// (the publisher's relation `copied_oid`, when the copy just looked it up).
/// Returns the connection, out of streaming mode (for dropping the slot), or None when asked
/// to stop first.
fn catch_up(
    sub: &Subscription,
    rel: &SubRel,
    slot: &str,
    client: Option<Client>,
    copied_oid: Option<u32>,
    start: Lsn,
    end: Lsn,
) -> Option<Client> {
    let mut client = client.or_else(|| connect(sub))?;
    // After a restart, the publisher's catalog now (a table created there since under the
    // recorded name after a rename would be taken for this one: a narrow case left open).
    let remote_oid = copied_oid.or_else(|| remote_oid(sub, &mut client, rel));
    let (client, opts) = super::start_replication(client, sub, slot, std::slice::from_ref(rel), start, true)?;
    let only = SubRel { sync_state: SyncState::Ready, state_lsn: None, ..rel.clone() };
    let mut applier = Applier::new(sub.subid, TableStates::only(only), opts.binary, sub.origin == "none", None);
    applier.own_table(rel.relid, remote_oid);
    let progress = Progress::for_sync_worker(sub.subid, start);
    let mut stream = Stream::new(sub.clone(), client, &opts, applier, progress, Some(end));
    stream.sync_relid = Some(rel.relid);
    stream.run();
    if !stream.caught_up {
        stream.client.close();
        return None;
    }
    let mut client = stream.client;
    match client.end_copy() {
        Ok(()) => Some(client),
        // The catch-up is applied and committed: a connection that cannot leave streaming mode
        // is closed, and the slot dropped over a new one.
        Err(_) => {
            client.close();
            connect(sub)
        }
    }
}

/// The publisher's OID of the table under the name the catalog records (None when it has no
/// table of that name now: renamed there since, and not followed here yet).
fn remote_oid(sub: &Subscription, client: &mut Client, rel: &SubRel) -> Option<u32> {
    let sql = format!(
        "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = {} AND c.relname = {}",
        pgsub_proto::client::quote_literal(&rel.remote_schema),
        pgsub_proto::client::quote_literal(&rel.remote_name)
    );
    match client.simple_query(&sql) {
        Ok(rows) => {
            rows.into_iter().next().and_then(|r| r.values.into_iter().next().flatten()).and_then(|v| v.parse().ok())
        }
        Err(e) => fail(sub, &e, "could not look up the table on the publisher"),
    }
}

/// After SYNCDONE: drops the slot on the publisher (over `client`, the copy's or catch-up's
/// connection, when there is one) and the local origin.
fn clean_up(sub: &Subscription, slot: &str, client: Option<Client>) {
    let relid = slot.rsplit('_').next().and_then(|r| r.parse::<u32>().ok()).unwrap_or(0);
    if let Some(mut client) = client.or_else(|| connect(sub)) {
        if slot_exists(sub, &mut client, slot) {
            match client.drop_slot(slot, true) {
                Ok(()) => {}
                Err(e) if e.sqlstate() == Some("42704") => {}
                Err(e) => fail(sub, &e, &format!("could not drop replication slot \"{slot}\"")),
            }
        }
        client.close();
        shmem::with_sync_slot(sub.subid, relid, |s| s.slot_dropped = true);
    }
    xact(|| {
        // SAFETY: this session's origin is let go before it is dropped; both in a transaction.
        unsafe {
            if pg_sys::replorigin_session_origin != pg_sys::InvalidRepOriginId as u16 {
                pg_sys::replorigin_session_reset();
                pg_sys::replorigin_session_origin = pg_sys::InvalidRepOriginId as u16;
            }
        }
        crate::catalog::drop_origin(slot, false);
    });
}

/// Whether the publisher has the slot (asked first, so that dropping a slot that is not there
/// leaves no ERROR in the publisher's log).
fn slot_exists(sub: &Subscription, client: &mut Client, slot: &str) -> bool {
    let sql = format!(
        "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
        pgsub_proto::client::quote_literal(slot)
    );
    match client.simple_query(&sql) {
        Ok(rows) => !rows.is_empty(),
        Err(e) => fail(sub, &e, "could not look up the table synchronization slot"),
    }
}

fn connect(sub: &Subscription) -> Option<Client> {
    let app = format!("{} sync", sub.name);
    match publisher::connect(&sub.conninfo, true, Context::Worker, Some(&app), sub.must_use_password()) {
        Ok(c) => Some(c),
        Err(ProtoError::Interrupted) => None,
        Err(e) => fail(sub, &e, "could not connect to the publisher"),
    }
}

fn fail(sub: &Subscription, e: &ProtoError, what: &str) -> ! {
    if matches!(e, ProtoError::Interrupted) {
        // SAFETY: clean exit of a background worker asked to stop.
        unsafe { pg_sys::proc_exit(0) };
    }
    publisher::raise(e, &format!("table synchronization for subscription \"{}\": {what}", sub.name), None)
}

fn wake_apply_worker(subid: i32) {
    if let Some(pid) = shmem::SHARED.share().find(subid).map(|s| s.pid) {
        crate::process::wake(pid);
    }
}
