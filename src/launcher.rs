//! A database's launcher: a dynamic background worker the supervisor (`supervisor.rs`) starts
//! for each database that holds subscriptions; it keeps one apply worker running per enabled
//! subscription of its database.
//!
//! Its loop, every `pgsub.naptime` and whenever a pgsub function or a worker start/exit sets its
//! latch, is three named steps:
//!   1. `read_catalog` — the subscriptions in `pgsub.sub` (through `catalog.rs`);
//!   2. `decide` — `pgsub_core::launch::decide`, a pure function of (catalog rows, this
//!      database's worker slots in shared memory, what the other databases' launchers hold, clock)
//!      that returns which workers to stop and start and updates each subscription's status,
//!      backoff and warning flags (its rules are listed there; the worker cap is server-wide);
//!   3. `act` — SIGTERM to workers to stop, registration of dynamic apply workers, the
//!      `waiting_for_worker` warning.
//!
//! About once a minute it also deletes the `pgsub.conflict_log` records older than
//! `pgsub.conflict_log_retention` (`expire_conflicts`).
//!
//! Then it rests or goes on: with no extension in the database, or no enabled subscription and
//! no worker left, it records that state for the supervisor and exits, so that an idle database
//! holds no connection (DROP DATABASE is not kept waiting) and costs nothing.
//!
//! A worker is identified by the bgworker handle the launcher registered it with (`reap` forgets
//! handles whose worker stopped) and by the pid the worker itself writes into its shared-memory
//! slot and clears when it exits; a worker that outlived a launcher restart is adopted through
//! that pid.
use crate::process::{now, reload_config_if_requested, shutdown_requested};
use crate::{catalog, gucs, shmem};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::prelude::*;
use pgsub_core::launch::{self, Action, Limits, Others, WaitReason};
use pgsub_core::state::Status;
use shmem::{DbState, SHARED};
use std::collections::{HashMap, HashSet};

/// Registers the launcher of database `dboid` (None when no background worker slot is free).
pub fn register(dboid: u32, supervisor_pid: i32) -> Option<DynamicBackgroundWorker> {
    BackgroundWorkerBuilder::new(&format!("pgsub launcher for database {dboid}"))
        .set_type("pgsub launcher")
        .set_library("pgsub")
        .set_function("pgsub_launcher_main")
        .enable_spi_access()
        .set_restart_time(None)
        .set_argument(Some(pg_sys::Datum::from(dboid)))
        .set_notify_pid(supervisor_pid)
        .load_dynamic()
        .ok()
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pgsub_launcher_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let dboid = arg.value() as u32;
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(dboid)), None);
    crate::worker::pin_session_defaults();
    // SAFETY: MyProcPid is set for every backend.
    let my_pid = unsafe { pg_sys::MyProcPid };
    let claimed = {
        let mut g = SHARED.exclusive();
        match g.claim_db(dboid) {
            Some(d) if d.pid > 0 && d.pid != my_pid && crate::process::pid_alive(d.pid) => false,
            Some(d) => {
                d.pid = my_pid;
                true
            }
            None => false,
        }
    };
    if !claimed {
        return;
    }
    // SAFETY: registers a callback that runs once when this process exits, however it exits.
    unsafe { pg_sys::before_shmem_exit(Some(release_db), pg_sys::Datum::from(dboid)) };

    let mut launcher =
        Launcher { workers: HashMap::new(), my_pid, dboid, announced: false, warned: HashSet::new(), expired_at: 0 };
    let rest = loop {
        if shutdown_requested() {
            break None;
        }
        reload_config_if_requested();
        if let Some(state) = launcher.tick() {
            break Some(state);
        }
        crate::process::nap(i64::from(gucs::NAPTIME_MS.get()), crate::process::Wait::LauncherMain);
    };
    // Workers of ours keep running when we are stopped: they are independent and stop on their
    // own when their subscription goes away; the next launcher adopts them through shared memory.
    if let Some(state) = rest {
        if let Some(d) = SHARED.exclusive().db_mut(dboid) {
            d.state = state;
        }
        if launcher.announced {
            log!("pgsub launcher: no enabled subscription left in this database, exiting");
        }
    }
}

/// Exit callback: the database's slot no longer names this process.
#[pg_guard]
unsafe extern "C-unwind" fn release_db(_code: std::ffi::c_int, arg: pg_sys::Datum) {
    let dboid = arg.value() as u32;
    // SAFETY: MyProcPid is set for every backend.
    let me = unsafe { pg_sys::MyProcPid };
    let supervisor = {
        let mut g = SHARED.exclusive();
        if let Some(d) = g.db_mut(dboid) {
            if d.pid == me {
                d.pid = 0;
            }
        }
        g.supervisor_pid
    };
    crate::process::wake(supervisor);
}

struct Launcher {
    /// Workers this launcher registered, by subscription, until they stop.
    /// The workers this launcher registered, with when it registered each.
    workers: HashMap<i32, (DynamicBackgroundWorker, i64)>,
    my_pid: i32,
    dboid: u32,
    /// It logged that it runs the database's subscriptions.
    announced: bool,
    /// Subscriptions it warned about having no slot (once each).
    warned: HashSet<i32>,
    /// When it last expired old conflict records.
    expired_at: i64,
}

impl Launcher {
    /// One pass; `Some(state)` when the launcher should record that resting state and exit.
    fn tick(&mut self) -> Option<DbState> {
        // Requests made before this catalog read are answered by it.
        if let Some(d) = SHARED.exclusive().db_mut(self.dboid) {
            d.wake = false;
        }
        let (has_extension, rows) = read_catalog()?;
        // Rows copied from another database (CREATE DATABASE … TEMPLATE) are that database's
        // subscriptions: never run here.
        let (copies, subs): (Vec<_>, Vec<_>) = rows.into_iter().partition(|s| s.is_copy());
        for c in &copies {
            if self.warned.insert(c.subid) {
                warning!(
                    "pgsub: subscription \"{}\" is not run: it was copied from another database (CREATE DATABASE … TEMPLATE); drop it here and create it anew",
                    c.name
                );
            }
        }
        if has_extension && now() - self.expired_at >= 60_000_000 {
            self.expired_at = now();
            expire_conflicts();
        }
        self.reap();
        let limits = Limits {
            now: now(),
            retry: i64::from(gucs::RETRY_INTERVAL_MS.get().max(1)) * 1000,
            max_workers: gucs::MAX_APPLY_WORKERS.get().max(0) as usize,
        };
        let dboid = self.dboid;
        let (actions, names, busy) = {
            let mut shared = SHARED.exclusive();
            let mut names = HashMap::new();
            for sub in &subs {
                let taken = shared.find(sub.subid).is_some_and(|s| s.dboid != dboid);
                match shared.claim(sub.subid, dboid) {
                    Some(slot) => slot.set_name(&sub.name),
                    None if !self.warned.insert(sub.subid) => {}
                    None if taken => warning!(
                        "pgsub: subscription \"{}\" is not run: another database has a subscription with the same id {} (this database was copied from it?)",
                        sub.name,
                        sub.subid
                    ),
                    None => warning!(
                        "pgsub: subscription \"{}\" has no shared-memory slot (at most {} subscriptions)",
                        sub.name,
                        shmem::MAX_SUBSCRIPTIONS
                    ),
                }
                names.insert(sub.subid, sub.name.clone());
            }
            let others = Others {
                running: shared
                    .slots
                    .iter()
                    .filter(|s| s.subid != 0 && s.dboid != dboid && (s.pid > 0 || s.launch_pending))
                    .count(),
                waiting_since: shared
                    .slots
                    .iter()
                    .filter(|s| s.subid != 0 && s.dboid != dboid && s.status == shmem::Status::WaitingForWorker)
                    .map(|s| s.waiting_since)
                    .filter(|&t| t > 0)
                    .collect(),
            };
            let mut slots: Vec<launch::Slot> =
                shared.slots.iter().filter(|s| s.subid != 0 && s.dboid == dboid).map(|s| self.view(s)).collect();
            let rows: Vec<launch::Sub> = subs
                .iter()
                .map(|s| launch::Sub { subid: s.subid, enabled: s.enabled, config_hash: s.config_hash() })
                .collect();
            let actions = launch::decide(&rows, &mut slots, limits, &others);
            for v in &slots {
                if let Some(slot) = shared.find_mut(v.subid) {
                    write_back(slot, v);
                }
            }
            // Workers still to stop or forget keep the launcher here.
            let busy = slots.iter().any(|v| v.pid > 0 || v.registered);
            (actions, names, busy)
        };
        for action in actions {
            self.act(action, &subs, &names);
        }
        let enabled = subs.iter().any(|s| s.enabled);
        if !busy && self.workers.is_empty() {
            if !has_extension {
                return Some(DbState::NoExtension);
            }
            if !enabled {
                return Some(DbState::Idle);
            }
        }
        if let Some(d) = SHARED.exclusive().db_mut(dboid) {
            d.state = DbState::Running;
        }
        if !self.announced && enabled {
            self.announced = true;
            log!("pgsub launcher started for the subscriptions of this database");
        }
        None
    }

    /// What `decide` needs of a slot.
    fn view(&self, s: &shmem::SubSlot) -> launch::Slot {
        launch::Slot {
            subid: s.subid,
            status: s.status,
            pid: s.pid,
            registered: self.workers.contains_key(&s.subid),
            failed: s.failed,
            failures: s.failures,
            next_start_at: s.next_start_at,
            config_hash: s.config_hash,
            held: crate::process::pid_alive(s.paused_by),
            warned: s.warned_no_worker,
            waiting_since: s.waiting_since,
            launched_at: s.launched_at,
        }
    }

    fn act(&mut self, action: Action, subs: &[catalog::Subscription], names: &HashMap<i32, String>) {
        let name = |subid: i32| names.get(&subid).cloned().unwrap_or_else(|| subid.to_string());
        match action {
            Action::Stop { subid, pid } => {
                // Disabled or dropped: its table synchronization workers go with it.
                stop_apply_worker(subid, pid);
                for p in shmem::sync_worker_pids(subid) {
                    crate::process::terminate(p);
                }
            }
            // A changed option: the sync workers go on; the next apply worker answers them.
            Action::Restart { subid, pid } => stop_apply_worker(subid, pid),
            Action::Forget { subid } => {
                if let Some(slot) = SHARED.exclusive().find_mut(subid) {
                    *slot = shmem::SubSlot::default();
                }
                shmem::forget_sync_slots(subid);
            }
            Action::WarnWaiting { subid, reason } => warn_waiting(&name(subid), reason),
            Action::Start { subid } => {
                let Some(sub) = subs.iter().find(|s| s.subid == subid) else { return };
                // A worker that cannot connect as the owner would die at once, over and over:
                // a failed run instead, shown and retried after the backoff.
                if let Some(problem) = sub.owner_problem() {
                    owner_cannot_run(sub, &problem);
                    return;
                }
                // Taken before registering: the worker may reach its slot before the
                // registration returns.
                let registered_at = now();
                match self.register(sub) {
                    Some(handle) => {
                        self.workers.insert(subid, (handle, registered_at));
                        if let Some(slot) = SHARED.exclusive().find_mut(subid) {
                            let mut v = self.view(slot);
                            launch::registered(&mut v);
                            write_back(slot, &v);
                        }
                    }
                    None => {
                        let mut warn = Vec::new();
                        if let Some(slot) = SHARED.exclusive().find_mut(subid) {
                            let mut v = self.view(slot);
                            launch::waiting(&mut v, WaitReason::NoBackgroundWorkerSlot, &mut warn, now());
                            write_back(slot, &v);
                        }
                        for a in warn {
                            if let Action::WarnWaiting { reason, .. } = a {
                                warn_waiting(&sub.name, reason);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Registers a dynamic apply worker for `sub` (None when no background worker slot is free).
    fn register(&self, sub: &catalog::Subscription) -> Option<DynamicBackgroundWorker> {
        let extra = format!("{} {}", self.dboid, sub.owner);
        BackgroundWorkerBuilder::new(&format!("pgsub apply worker for subscription {}", sub.subid))
            .set_type("pgsub apply worker")
            .set_library("pgsub")
            .set_function("pgsub_apply_main")
            .enable_spi_access()
            .set_restart_time(None)
            .set_argument(sub.subid.into_datum())
            .set_extra(&extra)
            .set_notify_pid(self.my_pid)
            .load_dynamic()
            .ok()
    }

    /// Forgets workers that have stopped.
    fn reap(&mut self) {
        self.workers.retain(|subid, (h, registered_at)| match h.pid() {
            Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted) => true,
            Err(_) => {
                // The worker clears its own pid when it exits; one that died before it claimed
                // its slot never wrote it. One that died before it claimed it at all (a FATAL
                // while connecting) is a failed run: retried after the backoff, not at once.
                let mut shared = SHARED.exclusive();
                if let Some(slot) = shared.find_mut(*subid) {
                    if slot.pid > 0 && !crate::process::pid_alive(slot.pid) {
                        slot.pid = 0;
                    }
                    // It never reached the slot (`reached_at`).
                    if slot.reached_at < *registered_at {
                        slot.failed = true;
                        slot.set_error(
                            "pgsub apply worker exited while it started, before it reached the subscription (see the server log)",
                            now(),
                            false,
                        );
                    }
                    slot.launch_pending = false;
                }
                false
            }
        });
    }
}

/// Step 1: whether the extension exists, and the subscriptions in the catalog.
fn read_catalog() -> Option<(bool, Vec<catalog::Subscription>)> {
    let subs = BackgroundWorker::transaction(|| {
        if !catalog::extension_exists() {
            return Ok((false, Vec::new()));
        }
        catalog::load_all().map(|s| (true, s))
    });
    match subs {
        Ok(s) => Some(s),
        Err(e) => {
            warning!("pgsub launcher: cannot read the subscription catalog: {e}");
            None
        }
    }
}

/// Deletes conflict records older than `pgsub.conflict_log_retention`.
fn expire_conflicts() {
    let retention = gucs::CONFLICT_LOG_RETENTION_S.get();
    if retention < 0 {
        return;
    }
    match BackgroundWorker::transaction(|| catalog::expire_conflict_log(i64::from(retention))) {
        Ok(0) => {}
        Ok(n) => log!("pgsub launcher: deleted {n} conflict records older than pgsub.conflict_log_retention"),
        Err(e) => warning!("pgsub launcher: cannot expire pgsub.conflict_log: {e}"),
    }
}

/// Asks the apply worker `pid` to stop cleanly (SIGTERM once the grace time has passed, on a
/// later pass).
fn stop_apply_worker(subid: i32, pid: i32) {
    let asked = SHARED.exclusive().find_mut(subid).filter(|s| s.pid == pid).map(crate::process::ask_to_stop);
    match asked {
        Some(p) => crate::process::wake(p),
        None => crate::process::terminate(pid),
    }
}

/// Copies what `decide` changed into the shared-memory slot.
fn write_back(slot: &mut shmem::SubSlot, v: &launch::Slot) {
    slot.status = v.status;
    slot.failed = v.failed;
    if slot.failures == 0 && v.failures > 0 {
        // A streak of failed runs begins with this one.
        slot.streak_since = if slot.last_error_at > 0 { slot.last_error_at } else { now() };
    }
    slot.failures = v.failures;
    slot.next_start_at = v.next_start_at;
    slot.config_hash = v.config_hash;
    slot.warned_no_worker = v.warned;
    slot.waiting_since = v.waiting_since;
    slot.launched_at = v.launched_at;
    slot.launch_pending = v.registered && v.pid == 0;
}

/// The owner of `sub` cannot log in (dropped, or NOLOGIN): a failed run, logged and shown in the
/// subscription's `last_error`, retried after the error backoff.
fn owner_cannot_run(sub: &catalog::Subscription, problem: &str) {
    if let Some(slot) = SHARED.exclusive().find_mut(sub.subid) {
        slot.set_error(problem, now(), false);
        slot.failed = true;
        slot.launch_pending = false;
        slot.status = Status::Error;
        // No longer waiting for a worker (the start was decided): a later wait starts afresh.
        slot.warned_no_worker = false;
        slot.waiting_since = 0;
    }
    crate::report::log(
        PgLogLevel::WARNING,
        PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
        format!("pgsub: {problem}"),
        None,
        Some("Give the subscription a new owner with pgsub.alter_subscription_owner(), or let the role log in."),
    );
}

fn warn_waiting(name: &str, reason: WaitReason) {
    let why = match reason {
        WaitReason::Cap => "pgsub.max_apply_workers is reached",
        WaitReason::NoBackgroundWorkerSlot => "no free background worker slot (max_worker_processes)",
    };
    crate::report::log(
        PgLogLevel::WARNING,
        PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
        format!("pgsub: subscription \"{name}\" is waiting for a worker: {why}"),
        Some("It starts as soon as a worker slot is free.".into()),
        Some("Raise max_worker_processes or pgsub.max_apply_workers (both need a restart), or disable another subscription."),
    );
}
