//! The supervisor: one static background worker, connected to no database, that keeps a
//! launcher (`launcher.rs`) running in every database that holds enabled subscriptions.
//!
//! Its loop, every `pgsub.naptime` and whenever a pgsub function or a launcher start/exit sets
//! its latch, is three named steps, as the launcher's:
//!   1. `list_databases` — the rows of `pg_database` (a shared catalog, read without a database
//!      connection, as the autovacuum launcher reads it), and which `pgsub.database` allows;
//!   2. `decide` — `pgsub_core::supervise::decide`, a pure function of (databases, database slots
//!      in shared memory, clock) whose rules and state diagram are drawn there: each database is
//!      probed once when first seen, again when a pgsub function asks, and otherwise at most
//!      once an hour;
//!   3. `act` — registration of launchers (a few probes at a time), SIGTERM to launchers of
//!      databases excluded since, forgetting dropped databases.
//!
//! Whether a database has the extension, and enabled subscriptions, only its launcher can see:
//! it records that in the database's slot and exits when there is nothing to run.
//!
//! It also takes the lag history's sample of every running subscription at each second
//! (`history.rs`), so it wakes at least once a second.
use crate::process::{now, reload_config_if_requested, shutdown_requested};
use crate::{gucs, launcher, shmem};
use pgrx::bgworkers::SignalWakeFlags;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker};
use pgrx::prelude::*;
use pgsub_core::supervise::{self, Action, Database, Limits};
use shmem::SHARED;
use std::collections::HashMap;
use std::time::Duration;

/// How long a database without the extension, or without enabled subscriptions, waits for its
/// next look when nothing wakes the supervisor (new databases and pgsub's functions do).
const RECHECK_US: i64 = 3600 * 1_000_000;
/// Launchers probing databases at once.
const MAX_PROBES: usize = 2;

pub fn register() {
    // SAFETY: set from the postmaster's command line before shared_preload_libraries load.
    if unsafe { pg_sys::IsBinaryUpgrade } {
        // pg_upgrade starts both clusters in binary-upgrade mode (`-b`), its `--check` too:
        // nothing may be applied there (native's launcher is not registered either).
        log!("pgsub: binary upgrade mode: no pgsub worker runs");
        return;
    }
    BackgroundWorkerBuilder::new("pgsub supervisor")
        .set_type("pgsub supervisor")
        .set_library("pgsub")
        .set_function("pgsub_supervisor_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pgsub_supervisor_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // No database: shared catalogs (pg_database) only.
    BackgroundWorker::connect_worker_to_spi(None, None);
    // SAFETY: MyProcPid is set for every backend.
    let my_pid = unsafe { pg_sys::MyProcPid };
    SHARED.exclusive().supervisor_pid = my_pid;
    log!("pgsub supervisor started");
    // The counters saved at the last clean shutdown, for the databases that still exist.
    let oids: Vec<u32> = list_databases().iter().map(|d| d.oid).collect();
    crate::statsfile::restore(&oids);
    let mut sup = Supervisor { launchers: HashMap::new(), my_pid, warned_full: false };
    let mut sampled_sec = 0;
    while !shutdown_requested() {
        reload_config_if_requested();
        sup.tick();
        // The lag history (`history.rs`): one sample per second, taken at the second's start.
        let t = now();
        if crate::history::second(t) != sampled_sec {
            sampled_sec = crate::history::second(t);
            crate::history::sample_all();
        }
        let to_next_second = 1000 - (t.rem_euclid(1_000_000) / 1000) + 5;
        crate::process::nap(i64::from(gucs::NAPTIME_MS.get()).min(to_next_second), crate::process::Wait::LauncherMain);
    }
    // Launchers keep running; the next supervisor finds them through their slots. At server
    // shutdown every pgsub process is stopping too: their last counts are in shared memory once
    // they are gone, so wait for them (a few seconds at most) before saving the counters.
    SHARED.exclusive().supervisor_pid = 0;
    wait_for_pgsub_processes(Duration::from_secs(5));
    crate::statsfile::save();
    log!("pgsub supervisor shutting down");
    // Exit code 1, as native's launcher (which ends with FATAL): the postmaster starts a
    // background worker that exited with 0 never again, so a supervisor ended by
    // pg_terminate_backend (a "terminate every other session" sweep) would leave no process to
    // start launchers, and apply would stop for good once a launcher exits. At server shutdown
    // nothing is restarted whatever the code. (The counters file it saved is removed unread by
    // the next supervisor, which finds them in shared memory.)
    // SAFETY: ends this process as any backend's exit does (exit callbacks run).
    unsafe { pg_sys::proc_exit(1) };
}

struct Supervisor {
    /// Launchers this supervisor registered, by database, until they exit.
    launchers: HashMap<u32, DynamicBackgroundWorker>,
    my_pid: i32,
    /// It logged that the database slots are all taken.
    warned_full: bool,
}

impl Supervisor {
    fn tick(&mut self) {
        let dbs = list_databases();
        self.reap();
        let limits = Limits { now: now(), recheck: RECHECK_US, retry: retry_us(), max_probes: MAX_PROBES };
        let actions = {
            let mut shared = SHARED.exclusive();
            let mut full = false;
            for db in &dbs {
                full |= shared.claim_db(db.oid).is_none();
            }
            if full && !self.warned_full {
                self.warned_full = true;
                warning!(
                    "pgsub supervisor: more than {} databases; subscriptions in the others are not served",
                    shmem::MAX_DATABASES
                );
            }
            let mut slots: Vec<supervise::DbSlot> = shared
                .dbs
                .iter()
                .filter(|d| d.oid != 0)
                .map(|d| supervise::DbSlot {
                    oid: d.oid,
                    state: d.state,
                    pid: if crate::process::pid_alive(d.pid) { d.pid } else { 0 },
                    registered: self.launchers.contains_key(&d.oid),
                    wake: d.wake,
                    probes: d.probes,
                    last_probe_at: d.last_probe_at,
                    next_start_at: d.next_start_at,
                })
                .collect();
            let actions = supervise::decide(&dbs, &mut slots, limits);
            for v in &slots {
                if let Some(d) = shared.db_mut(v.oid) {
                    d.state = v.state;
                    d.wake = v.wake;
                    d.probes = v.probes;
                    d.last_probe_at = v.last_probe_at;
                    d.next_start_at = v.next_start_at;
                }
            }
            actions
        };
        for action in actions {
            self.act(action);
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Start { oid } => match launcher::register(oid, self.my_pid) {
                Some(h) => {
                    self.launchers.insert(oid, h);
                }
                None => {
                    // No background worker slot: the next pass tries again (the database's
                    // subscriptions show waiting_for_worker meanwhile if they were running).
                    if let Some(d) = SHARED.exclusive().db_mut(oid) {
                        d.wake = true;
                    }
                }
            },
            Action::Stop { pid, .. } => crate::process::terminate(pid),
            Action::Forget { oid } => SHARED.exclusive().forget_db(oid),
        }
    }

    /// Forgets launchers that have exited.
    fn reap(&mut self) {
        self.launchers.retain(|_, h| matches!(h.pid(), Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted)));
    }
}

/// Waits while launchers, apply or sync workers run, at most `limit`.
fn wait_for_pgsub_processes(limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let running = {
            let g = SHARED.share();
            g.dbs.iter().any(|d| crate::process::pid_alive(d.pid))
                || g.slots.iter().any(|s| s.subid != 0 && crate::process::pid_alive(s.pid))
                || g.sync.iter().any(|s| s.subid != 0 && crate::process::pid_alive(s.pid))
        };
        if !running || std::time::Instant::now() >= deadline {
            return;
        }
        // SAFETY: a plain sleep of this process (it is exiting; no latch to wait on).
        unsafe { pg_sys::pg_usleep(50_000) };
    }
}

fn retry_us() -> i64 {
    i64::from(gucs::RETRY_INTERVAL_MS.get().max(1)) * 1000
}

/// Step 1: every database, whether it accepts connections, and whether pgsub serves it (named by
/// `pgsub.database` if that is set, and never a template: its subscriptions would be copied into
/// every database created from it).
fn list_databases() -> Vec<Database> {
    let allowed = gucs::databases();
    let rows = BackgroundWorker::transaction(|| {
        let mut rows = Vec::new();
        // SAFETY: a heap scan of the shared catalog pg_database inside a transaction, as the
        // autovacuum launcher does; the tuples are read before the scan ends.
        unsafe {
            let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
            let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, lock);
            let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
            loop {
                let tup = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
                if tup.is_null() {
                    break;
                }
                let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tup);
                let name = std::ffi::CStr::from_ptr((*form).datname.data.as_ptr()).to_string_lossy().into_owned();
                // A database whose DROP was interrupted is marked with this connection limit.
                let connectable = (*form).datallowconn && (*form).datconnlimit != pg_sys::DATCONNLIMIT_INVALID_DB;
                rows.push(((*form).oid.to_u32(), name, connectable, (*form).datistemplate));
            }
            pg_sys::table_endscan(scan);
            pg_sys::table_close(rel, lock);
        }
        rows
    });
    rows.into_iter()
        .map(|(oid, name, connectable, template)| Database {
            oid,
            connectable,
            included: gucs::database_served(&allowed, &name, template),
        })
        .collect()
}
