//! The launcher: one static background worker that keeps one apply worker running per enabled
//! subscription.
//!
//! Its loop, every `pgsub.naptime` and whenever a pgsub function or a worker start/exit sets its
//! latch, is three named steps:
//!   1. `read_catalog` — the subscriptions in `pgsub.sub` (through `catalog.rs`);
//!   2. `decide` — `pgsub_core::launch::decide`, a pure function of (catalog rows, worker slots in
//!      shared memory, clock) that returns which workers to stop and start and updates each
//!      subscription's status, backoff and warning flags (its rules are listed there);
//!   3. `act` — SIGTERM to workers to stop, registration of dynamic apply workers, the
//!      `waiting_for_worker` warning.
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
use pgsub_core::launch::{self, Action, Limits, WaitReason};
use shmem::SHARED;
use std::collections::HashMap;
use std::time::Duration;

pub fn register() {
    BackgroundWorkerBuilder::new("pgsub launcher")
        .set_type("pgsub launcher")
        .set_library("pgsub")
        .set_function("pgsub_launcher_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pgsub_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = gucs::database();
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    // SAFETY: MyProcPid is set for every backend.
    let my_pid = unsafe { pg_sys::MyProcPid };
    SHARED.exclusive().launcher_pid = my_pid;
    log!("pgsub launcher started in database \"{db}\"");

    let mut launcher = Launcher { workers: HashMap::new(), my_pid };
    while !shutdown_requested() {
        reload_config_if_requested();
        launcher.tick();
        // SAFETY: standard latch wait of a background worker.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                gucs::NAPTIME_MS.get() as std::ffi::c_long,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
    }
    // Workers of ours keep running: they are independent and stop on their own when their
    // subscription goes away; the next launcher adopts them through shared memory.
    SHARED.exclusive().launcher_pid = 0;
    log!("pgsub launcher shutting down");
}

struct Launcher {
    /// Workers this launcher registered, by subscription, until they stop.
    workers: HashMap<i32, DynamicBackgroundWorker>,
    my_pid: i32,
}

impl Launcher {
    fn tick(&mut self) {
        let Some(subs) = read_catalog() else { return };
        self.reap();
        let limits = Limits {
            now: now(),
            retry: i64::from(gucs::RETRY_INTERVAL_MS.get().max(1)) * 1000,
            max_workers: gucs::MAX_APPLY_WORKERS.get().max(0) as usize,
        };
        let (actions, names) = {
            let mut shared = SHARED.exclusive();
            let mut names = HashMap::new();
            for sub in &subs {
                if shared.claim(sub.subid).is_none() {
                    warning!(
                        "pgsub: subscription \"{}\" has no shared-memory slot (at most {} subscriptions)",
                        sub.name,
                        shmem::MAX_SUBSCRIPTIONS
                    );
                }
                names.insert(sub.subid, sub.name.clone());
            }
            let mut slots: Vec<launch::Slot> =
                shared.slots.iter().filter(|s| s.subid != 0).map(|s| self.view(s)).collect();
            let rows: Vec<launch::Sub> = subs
                .iter()
                .map(|s| launch::Sub { subid: s.subid, enabled: s.enabled, config_hash: s.config_hash() })
                .collect();
            let actions = launch::decide(&rows, &mut slots, limits);
            for v in &slots {
                if let Some(slot) = shared.find_mut(v.subid) {
                    write_back(slot, v);
                }
            }
            (actions, names)
        };
        for action in actions {
            self.act(action, &subs, &names);
        }
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
        }
    }

    fn act(&mut self, action: Action, subs: &[catalog::Subscription], names: &HashMap<i32, String>) {
        let name = |subid: i32| names.get(&subid).cloned().unwrap_or_else(|| subid.to_string());
        match action {
            Action::Stop { subid, pid } => {
                // The subscription's table synchronization workers go with its apply worker.
                crate::process::terminate(pid);
                for p in shmem::sync_worker_pids(subid) {
                    crate::process::terminate(p);
                }
            }
            Action::Forget { subid } => {
                if let Some(slot) = SHARED.exclusive().find_mut(subid) {
                    *slot = shmem::SubSlot::default();
                }
                shmem::forget_sync_slots(subid);
            }
            Action::WarnWaiting { subid, reason } => warn_waiting(&name(subid), reason),
            Action::Start { subid } => {
                let Some(sub) = subs.iter().find(|s| s.subid == subid) else { return };
                match self.register(sub) {
                    Some(handle) => {
                        self.workers.insert(subid, handle);
                    }
                    None => {
                        let mut warn = Vec::new();
                        if let Some(slot) = SHARED.exclusive().find_mut(subid) {
                            let mut v = self.view(slot);
                            launch::waiting(&mut v, WaitReason::NoBackgroundWorkerSlot, &mut warn);
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
        // SAFETY: MyDatabaseId is set once the launcher is connected.
        let extra = format!("{} {}", unsafe { pg_sys::MyDatabaseId }.to_u32(), sub.owner);
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
        self.workers.retain(|subid, h| match h.pid() {
            Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted) => true,
            Err(_) => {
                // The worker clears its own pid when it exits; one that died before it claimed
                // its slot never wrote it.
                let mut shared = SHARED.exclusive();
                if let Some(slot) = shared.find_mut(*subid) {
                    if slot.pid > 0 && !crate::process::pid_alive(slot.pid) {
                        slot.pid = 0;
                    }
                }
                false
            }
        });
    }
}

/// Step 1: the subscriptions in the catalog (none while the extension is not created).
fn read_catalog() -> Option<Vec<catalog::Subscription>> {
    let subs = BackgroundWorker::transaction(|| {
        if !catalog::extension_exists() {
            return Ok(Vec::new());
        }
        catalog::load_all()
    });
    match subs {
        Ok(s) => Some(s),
        Err(e) => {
            warning!("pgsub launcher: cannot read the subscription catalog: {e}");
            None
        }
    }
}

/// Copies what `decide` changed into the shared-memory slot.
fn write_back(slot: &mut shmem::SubSlot, v: &launch::Slot) {
    slot.status = v.status;
    slot.failed = v.failed;
    slot.failures = v.failures;
    slot.next_start_at = v.next_start_at;
    slot.config_hash = v.config_hash;
    slot.warned_no_worker = v.warned;
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
