//! The launcher: one static background worker that keeps one apply worker running per enabled
//! subscription.
//!
//! Every `pgsub.naptime` (and whenever a pgsub function or a worker start/exit sets its latch) it
//! reads `pgsub.sub` and, for each subscription:
//!   * disabled or dropped → SIGTERM its worker;
//!   * catalog row changed since the worker started (conninfo, publications, …) → SIGTERM, and the
//!     next pass starts a fresh worker;
//!   * enabled without a worker → registers a dynamic apply worker, unless the worker failed
//!     recently (restart after `pgsub.retry_interval`, doubling per consecutive failure, capped at
//!     12×) or no worker slot is free (`pgsub.max_apply_workers`, or `max_worker_processes` shared
//!     with parallel query and other extensions): then the subscription shows `waiting_for_worker`,
//!     a WARNING is logged once per wait, and it starts as soon as a slot frees up.
use crate::{catalog, gucs, shmem};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker,
    SignalWakeFlags,
};
use pgrx::prelude::*;
pub(crate) use shmem::pid_alive;
use shmem::{Status, SHARED};
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

/// PostgreSQL's current time as TimestampTz.
pub fn now() -> i64 {
    // SAFETY: no preconditions.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

pub(crate) fn shutdown_requested() -> bool {
    // SAFETY: reading a sig_atomic_t flag set by our SIGTERM handler.
    unsafe { std::ptr::addr_of!(pg_sys::ShutdownRequestPending).read_volatile() != 0 }
}

pub(crate) fn reload_config_if_requested() -> bool {
    // SAFETY: flag set by the SIGHUP handler; ProcessConfigFile is the standard response.
    unsafe {
        if std::ptr::addr_of!(pg_sys::ConfigReloadPending).read_volatile() != 0 {
            std::ptr::addr_of_mut!(pg_sys::ConfigReloadPending).write_volatile(0);
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            return true;
        }
    }
    false
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
    workers: HashMap<i32, DynamicBackgroundWorker>,
    my_pid: i32,
}

impl Launcher {
    fn tick(&mut self) {
        let subs = BackgroundWorker::transaction(|| {
            if !catalog::extension_exists() {
                return Ok(Vec::new());
            }
            catalog::load_all()
        });
        let subs = match subs {
            Ok(s) => s,
            Err(e) => {
                warning!("pgsub launcher: cannot read the subscription catalog: {e}");
                return;
            }
        };
        self.reap();
        let now = now();
        let retry = gucs::RETRY_INTERVAL_MS.get().max(1) as i64 * 1000;
        let max_workers = gucs::MAX_APPLY_WORKERS.get().max(0) as usize;

        let mut shared = SHARED.exclusive();
        // Dropped subscriptions: stop their workers and forget their slots.
        for slot in shared.slots.iter_mut() {
            if slot.subid != 0 && !subs.iter().any(|s| s.subid == slot.subid) {
                if slot.pid > 0 && pid_alive(slot.pid) {
                    shmem::terminate(slot.pid);
                } else if !self.workers.contains_key(&slot.subid) {
                    *slot = shmem::SubSlot::default();
                }
            }
        }
        let mut running = shared.slots.iter().filter(|s| s.subid != 0 && s.pid > 0 && pid_alive(s.pid)).count()
            .max(self.workers.len());
        for sub in &subs {
            let Some(slot) = shared.claim(sub.subid) else {
                warning!(
                    "pgsub: subscription \"{}\" has no shared-memory slot (at most {} subscriptions)",
                    sub.name,
                    shmem::MAX_SUBSCRIPTIONS
                );
                continue;
            };
            // A worker may outlive a launcher restart: a live pid in the slot counts as running.
            let has_worker = self.workers.contains_key(&sub.subid) || (slot.pid > 0 && pid_alive(slot.pid));
            if !sub.enabled {
                if has_worker && slot.pid > 0 {
                    shmem::terminate(slot.pid);
                }
                if !has_worker {
                    slot.status = Status::Disabled as u8;
                    slot.pid = 0;
                    slot.failures = 0;
                    slot.next_start_at = 0;
                }
                continue;
            }
            if has_worker {
                if slot.config_hash != sub.config_hash() && slot.pid > 0 {
                    shmem::terminate(slot.pid);
                }
                continue;
            }
            if slot.status == Status::Disabled as u8 {
                slot.status = Status::Starting as u8;
            }
            if slot.failed {
                slot.failed = false;
                slot.failures = slot.failures.saturating_add(1);
                let factor = 1i64 << (slot.failures - 1).clamp(0, 30);
                slot.next_start_at = now + (retry * factor).min(retry * 12);
                slot.status = Status::Error as u8;
            }
            if slot.next_start_at > now {
                continue;
            }
            if slot.paused_by > 0 && pid_alive(slot.paused_by) {
                continue;
            }
            if running >= max_workers {
                wait_for_worker(slot, &sub.name, "pgsub.max_apply_workers is reached");
                continue;
            }
            let extra = format!("{} {}", unsafe { pg_sys::MyDatabaseId }.to_u32(), sub.owner);
            let started = BackgroundWorkerBuilder::new(&format!("pgsub apply worker for subscription {}", sub.subid))
                .set_type("pgsub apply worker")
                .set_library("pgsub")
                .set_function("pgsub_apply_main")
                .enable_spi_access()
                .set_restart_time(None)
                .set_argument(sub.subid.into_datum())
                .set_extra(&extra)
                .set_notify_pid(self.my_pid)
                .load_dynamic();
            match started {
                Ok(handle) => {
                    if slot.warned_no_worker {
                        log!("pgsub: subscription \"{}\" got a worker slot", sub.name);
                    }
                    slot.warned_no_worker = false;
                    slot.status = Status::Starting as u8;
                    slot.config_hash = sub.config_hash();
                    slot.next_start_at = 0;
                    self.workers.insert(sub.subid, handle);
                    running += 1;
                }
                Err(_) => wait_for_worker(slot, &sub.name, "no free background worker slot (max_worker_processes)"),
            }
        }
    }

    /// Forgets workers that have exited.
    fn reap(&mut self) {
        self.workers.retain(|subid, h| match h.pid() {
            Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted) => true,
            Err(_) => {
                let mut shared = SHARED.exclusive();
                if let Some(slot) = shared.find_mut(*subid) {
                    slot.pid = 0;
                }
                false
            }
        });
    }
}

fn wait_for_worker(slot: &mut shmem::SubSlot, name: &str, why: &str) {
    slot.status = Status::WaitingForWorker as u8;
    if !slot.warned_no_worker {
        slot.warned_no_worker = true;
        crate::report::log(
            PgLogLevel::WARNING,
            PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            format!("pgsub: subscription \"{name}\" is waiting for a worker: {why}"),
            Some("It starts as soon as a worker slot is free.".into()),
            Some("Raise max_worker_processes or pgsub.max_apply_workers (both need a restart), or disable another subscription."),
        );
    }
}
