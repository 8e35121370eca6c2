//! The apply worker's side of table synchronization (native `process_syncing_tables_for_apply`):
//! between transactions — when the socket is empty, and at most every 100 ms while the stream
//! never pauses — it
//!   1. answers a sync worker that finished its copy (SYNCWAIT) with the apply worker's position
//!      X (CATCHUP) and waits until that worker has caught the table up to X and committed
//!      SYNCDONE — the table is then the apply worker's from X on (`core::state` diagram);
//!   2. starts sync workers for tables that need one (`core::tablesync::plan`: per-subscription
//!      and server-wide caps, backoff after a failure), or shows them waiting for a worker;
//!   3. frees the shared-memory slot of a table once it is synchronized, dropping what its sync
//!      worker left behind if it could not (its slot on the publisher, its local origin).
//!
//! At start the apply worker also drops sync slots and origins of tables that no longer need
//! them (a sync worker killed after SYNCDONE, a table removed by refresh).
use super::receive::Stream;
use crate::catalog::{SubRel, Subscription, SyncState};
use crate::process::{now, shutdown_requested};
use crate::publisher::{self, Context};
use crate::shmem::{self, SyncPhase};
use crate::{gucs, report};
use pgrx::bgworkers::{BackgroundWorkerBuilder, DynamicBackgroundWorker};
use pgrx::prelude::*;
use pgsub_core::tablesync::{self, Caps, Table, Worker};
use pgsub_proto::client::{quote_literal, Client};
use pgsub_proto::Lsn;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The name of a table's sync slot on the publisher (and of its local replication origin).
pub fn sync_slot_name(subid: i32, relid: u32) -> String {
    crate::catalog::sync_slot_name(subid, relid)
}

/// What the apply worker keeps about its sync workers.
#[derive(Default)]
pub struct Syncing {
    /// Handles of the sync workers it registered, by table.
    handles: HashMap<u32, DynamicBackgroundWorker>,
    planned_at: Option<Instant>,
    /// Tables whose sync slot may be left on the publisher.
    stale_slots: Vec<u32>,
    stale_tried_at: Option<Instant>,
}

/// How often the apply worker looks at its sync workers while tables synchronize (reaping the
/// finished, starting the next): short, since a subscription of many small tables spends most of
/// its initial synchronization between one table's worker and the next (100 ms made 200 tables
/// of 100 rows take 2-5x native's time).
pub(super) const STEP: Duration = Duration::from_millis(10);

impl Stream {
    /// Tables are being synchronized and the last synchronization step is [`STEP`] old: the
    /// receive loop takes one between transactions even while the stream never pauses.
    pub(super) fn sync_step_due(&self) -> bool {
        (self.applier.tables.any_syncing() || !self.syncing.handles.is_empty())
            && self.syncing.planned_at.is_none_or(|t| t.elapsed() >= STEP)
    }

    /// Step of the receive loop between transactions (module comment).
    pub(super) fn process_syncing_tables(&mut self) {
        if !self.applier.tables.any_syncing() && self.syncing.handles.is_empty() && self.syncing.stale_slots.is_empty()
        {
            return;
        }
        self.answer_sync_requests();
        let due = self.syncing.planned_at.is_none_or(|t| t.elapsed() >= STEP);
        if due {
            self.syncing.planned_at = Some(Instant::now());
            self.reap_sync_workers();
            self.start_sync_workers();
            self.free_finished_tables();
        }
        if !self.syncing.stale_slots.is_empty()
            && self.syncing.stale_tried_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            self.syncing.stale_tried_at = Some(Instant::now());
            self.drop_stale_slots_now();
        }
    }

    /// The apply worker's position between transactions: everything received is applied.
    fn apply_position(&self) -> Lsn {
        self.progress.received.max(self.progress.applied)
    }

    /// SYNCWAIT → CATCHUP, then wait for SYNCDONE (or the sync worker's end).
    fn answer_sync_requests(&mut self) {
        let subid = self.sub.subid;
        // Tables a sync worker finished while this worker was not waiting for it.
        let done: Vec<(u32, u64)> = {
            let g = shmem::SHARED.share();
            g.sync
                .iter()
                .filter(|s| s.subid == subid && s.phase == SyncPhase::Done)
                .map(|s| (s.relid, s.done_lsn))
                .collect()
        };
        let states: HashMap<u32, SyncState> = self.applier.tables.by_relid().into_iter().collect();
        for (relid, lsn) in done {
            if states.get(&relid).is_some_and(|st| st.needs_sync_worker()) {
                self.applier.tables.set(relid, SyncState::SyncDone, Some(Lsn(lsn)));
            }
        }
        let x = self.apply_position();
        // SAFETY: MyProcPid is set for every backend.
        let me = unsafe { pg_sys::MyProcPid };
        let asking: Vec<(u32, i32)> = {
            let mut g = shmem::SHARED.exclusive();
            g.sync
                .iter_mut()
                // Only tables this worker synchronizes: one removed from the subscription since
                // its sync worker started is not taken over.
                .filter(|s| {
                    s.subid == subid
                        && s.phase == SyncPhase::SyncWait
                        && s.pid > 0
                        && states.get(&s.relid).is_some_and(|st| st.needs_sync_worker())
                })
                .map(|s| {
                    s.catchup_lsn = x.0;
                    // The catch-up end is this worker's position: the sync worker gives it up
                    // if this worker goes (`syncworker::answering_apply_worker_gone`).
                    s.apply_pid = me;
                    s.phase = SyncPhase::Catchup;
                    (s.relid, s.pid)
                })
                .collect()
        };
        for (relid, pid) in asking {
            crate::process::wake(pid);
            self.wait_for_sync_done(relid, pid);
        }
    }

    /// Waits while the sync worker `pid` catches its table up (the publisher is kept informed
    /// that this worker is alive); then takes the table over if it reached SYNCDONE.
    fn wait_for_sync_done(&mut self, relid: u32, pid: i32) {
        let subid = self.sub.subid;
        loop {
            let (phase, alive, done) = shmem::SHARED
                .share()
                .sync_slot(subid, relid)
                .map(|s| (s.phase, s.pid == pid, s.done_lsn))
                .unwrap_or((SyncPhase::Idle, false, 0));
            if phase == SyncPhase::Done {
                self.applier.tables.set(relid, SyncState::SyncDone, Some(Lsn(done)));
                // Nothing of the table is pending between its SYNCDONE point and here: it may be
                // ready at once.
                let x = self.apply_position();
                self.applier.caught_up_to(x);
                return;
            }
            if !alive || shutdown_requested() {
                return; // it is restarted later; the table stays FINISHEDCOPY
            }
            if self.progress.since_report() >= Duration::from_secs(5) {
                self.send_feedback(true, false);
            }
            // The sync worker sets this worker's latch when its phase changes.
            crate::process::nap(10, crate::process::Wait::SyncStateChange);
        }
    }

    /// Forgets handles of sync workers that have stopped; a worker that died before claiming its
    /// slot leaves it registered, which is undone here.
    fn reap_sync_workers(&mut self) {
        let subid = self.sub.subid;
        // SAFETY: MyProcPid is set for every backend.
        let me = unsafe { pg_sys::MyProcPid };
        {
            // Registered by an apply worker that has exited (only it held the handle) and never
            // claimed: a worker that died before its start would keep the table from ever
            // being started again. Were it still to start, it finds the slot taken and leaves.
            let mut g = shmem::SHARED.exclusive();
            for s in g.sync.iter_mut().filter(|s| {
                s.subid == subid
                    && s.registered
                    && s.pid == 0
                    && s.apply_pid != me
                    && !self.syncing.handles.contains_key(&s.relid)
                    && !crate::process::pid_alive(s.apply_pid)
            }) {
                s.registered = false;
            }
        }
        self.syncing.handles.retain(|relid, h| {
            let stopped = matches!(h.pid(), Err(pgrx::bgworkers::BackgroundWorkerStatus::Stopped));
            if stopped {
                shmem::with_sync_slot(subid, *relid, |s| {
                    s.registered = false;
                    if s.pid > 0 && !crate::process::pid_alive(s.pid) {
                        s.pid = 0;
                    }
                });
            }
            !stopped
        });
    }

    /// Starts the sync workers `core::tablesync::plan` asks for.
    fn start_sync_workers(&mut self) {
        let subid = self.sub.subid;
        let tables: Vec<Table> =
            self.applier.tables.by_relid().into_iter().map(|(relid, state)| Table { relid, state }).collect();
        if !tables.iter().any(|t| t.state.needs_sync_worker()) {
            return;
        }
        let plan = {
            let g = shmem::SHARED.share();
            let workers: Vec<Worker> = g
                .sync
                .iter()
                .filter(|s| s.subid == subid)
                // A worker past SYNCDONE still counts until it has exited (it drops its slot and
                // origin first): the cap is on processes, as native's.
                .map(|s| Worker { relid: s.relid, active: s.active(), next_start_at: s.next_start_at })
                .collect();
            let cap = gucs::MAX_SYNC_WORKERS.get().max(0) as usize;
            let caps = Caps {
                per_subscription: gucs::MAX_SYNC_WORKERS_PER_SUBSCRIPTION.get().max(0) as usize,
                free_slots: cap.saturating_sub(g.active_sync_workers()),
                now: now(),
            };
            tablesync::plan(&tables, &workers, caps)
        };
        for relid in plan.waiting {
            shmem::with_sync_slot(subid, relid, |s| s.waiting = true);
        }
        // SAFETY: MyProcPid is set for every backend.
        let me = unsafe { pg_sys::MyProcPid };
        for relid in plan.start {
            // Whether the table waited for a worker slot already (its WARNING is said once).
            let mut waited = false;
            let claimed = shmem::SHARED
                .exclusive()
                .claim_sync(subid, relid)
                .map(|s| {
                    waited = s.waiting;
                    s.registered = true;
                    s.waiting = false;
                    s.apply_pid = me;
                    s.phase = SyncPhase::Idle;
                    s.catchup_lsn = 0;
                    s.done_lsn = 0;
                    s.registered_at = now();
                })
                .is_some();
            if !claimed {
                continue; // every sync slot is taken: the table waits
            }
            match register_sync_worker(&self.sub, relid) {
                Some(h) => {
                    self.syncing.handles.insert(relid, h);
                }
                None => {
                    shmem::with_sync_slot(subid, relid, |s| {
                        s.registered = false;
                        s.waiting = true;
                    });
                    if !waited {
                        report::log(
                            PgLogLevel::WARNING,
                            PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                            format!(
                                "pgsub: a table of subscription \"{}\" (OID {relid}) is waiting for a background worker for its initial synchronization",
                                self.sub.name
                            ),
                            Some("No background worker slot is free (max_worker_processes).".into()),
                            Some("Raise max_worker_processes (each subscription needs one apply worker and, while tables synchronize, up to pgsub.max_sync_workers_per_subscription more); the table starts once a slot frees."),
                        );
                    }
                }
            }
        }
    }

    /// Frees the sync slots of tables that are synchronized and have no sync worker left, noting
    /// what the worker did not drop itself.
    fn free_finished_tables(&mut self) {
        let subid = self.sub.subid;
        let states: HashMap<u32, SyncState> = self.applier.tables.by_relid().into_iter().collect();
        let mut freed: Vec<(u32, bool)> = Vec::new();
        {
            let mut g = shmem::SHARED.exclusive();
            for s in g.sync.iter_mut().filter(|s| s.subid == subid && !s.active()) {
                let finished = states.get(&s.relid).is_none_or(|st| !st.needs_sync_worker());
                if finished {
                    freed.push((s.relid, s.slot_dropped));
                    *s = shmem::SyncSlot::default();
                }
            }
        }
        for (relid, slot_dropped) in freed {
            self.syncing.handles.remove(&relid);
            drop_sync_origin(subid, relid);
            if !slot_dropped && !self.syncing.stale_slots.contains(&relid) {
                self.syncing.stale_slots.push(relid);
            }
        }
    }

    /// Drops the sync slots still on the publisher of tables that are done (a regular connection
    /// of its own; the replication connection is streaming). Failures are retried later.
    fn drop_stale_slots_now(&mut self) {
        let names: Vec<String> = self.syncing.stale_slots.iter().map(|r| sync_slot_name(self.sub.subid, *r)).collect();
        let sql = format!(
            "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots \
             WHERE slot_name = ANY(ARRAY[{}]::text[]) AND NOT active",
            names.iter().map(|n| quote_literal(n)).collect::<Vec<_>>().join(",")
        );
        let check = format!(
            "SELECT slot_name::text FROM pg_catalog.pg_replication_slots WHERE slot_name = ANY(ARRAY[{}]::text[])",
            names.iter().map(|n| quote_literal(n)).collect::<Vec<_>>().join(",")
        );
        let sub = &self.sub;
        let result =
            publisher::connect(&sub.conninfo, false, Context::Worker, Some(&sub.name), sub.must_use_password())
                .and_then(|mut c| {
                    c.simple_query(&sql)?;
                    let left = c.simple_query(&check)?;
                    c.close();
                    Ok(left.into_iter().filter_map(|r| r.values.into_iter().next().flatten()).collect::<Vec<String>>())
                });
        match result {
            Ok(left) => {
                let subid = self.sub.subid;
                self.syncing.stale_slots.retain(|r| left.contains(&sync_slot_name(subid, *r)));
            }
            Err(e) => report::log(
                PgLogLevel::WARNING,
                publisher::sqlstate(&e),
                format!("pgsub: could not drop finished table synchronization slots on the publisher: {e}"),
                Some(format!("Slots: {}. The apply worker tries again.", names.join(", "))),
                None,
            ),
        }
    }
}

/// Registers a sync worker for the table (None when no background worker slot is free).
fn register_sync_worker(sub: &Subscription, relid: u32) -> Option<DynamicBackgroundWorker> {
    // SAFETY: MyDatabaseId and MyProcPid are set in a connected background worker.
    let (db, me) = unsafe { (pg_sys::MyDatabaseId.to_u32(), pg_sys::MyProcPid) };
    let extra = format!("{db} {} {relid}", sub.owner);
    BackgroundWorkerBuilder::new(&format!("pgsub sync worker for subscription {} table {relid}", sub.subid))
        .set_type("pgsub sync worker")
        .set_library("pgsub")
        .set_function("pgsub_sync_main")
        .enable_spi_access()
        .set_restart_time(None)
        .set_argument(sub.subid.into_datum())
        .set_extra(&extra)
        .set_notify_pid(me)
        .load_dynamic()
        .ok()
}

/// Drops a table's sync origin if it is left (its sync worker is gone).
fn drop_sync_origin(subid: i32, relid: u32) {
    let name = sync_slot_name(subid, relid);
    // Missing is fine, in use cannot be (no sync worker is left for the table).
    super::xact(|| crate::catalog::drop_origin(&name, true));
}

/// At start, on the replication connection: drops the inactive sync slots of this subscription
/// whose tables need no sync worker any more (synchronized, ready, or removed by refresh).
pub fn drop_stale_sync_slots(client: &mut Client, sub: &Subscription, rels: &[SubRel]) {
    let sql = format!(
        "SELECT slot_name::text FROM pg_catalog.pg_replication_slots WHERE NOT active AND slot_name LIKE {}",
        quote_literal(&crate::catalog::sync_slot_pattern(sub.subid))
    );
    let Ok(rows) = client.simple_query(&sql) else { return };
    for name in rows.into_iter().filter_map(|r| r.values.into_iter().next().flatten()) {
        let relid = crate::catalog::sync_slot_relid(sub.subid, &name);
        let still_syncing = rels.iter().any(|r| Some(r.relid) == relid && r.sync_state.needs_sync_worker());
        if still_syncing {
            continue; // its sync worker resumes with it
        }
        match client.drop_slot(&name, false) {
            Ok(()) => log!("pgsub: dropped table synchronization slot \"{name}\" left on the publisher"),
            Err(e) => report::log(
                PgLogLevel::WARNING,
                publisher::sqlstate(&e),
                format!("pgsub: could not drop table synchronization slot \"{name}\" on the publisher: {e}"),
                None,
                Some("Drop it on the publisher with pg_drop_replication_slot()."),
            ),
        }
    }
}

/// At start: drops this subscription's sync origins whose tables need no sync worker any more.
pub fn drop_stale_sync_origins(subid: i32, rels: &[SubRel]) {
    let names = super::xact(|| crate::catalog::sync_origin_names(subid));
    for name in names {
        let relid = crate::catalog::sync_slot_relid(subid, &name);
        let still_syncing = rels.iter().any(|r| Some(r.relid) == relid && r.sync_state.needs_sync_worker());
        let running =
            relid.is_some_and(|relid| shmem::SHARED.share().sync_slot(subid, relid).is_some_and(|s| s.active()));
        if !still_syncing && !running {
            if let Some(relid) = relid {
                drop_sync_origin(subid, relid);
            }
        }
    }
}

pub(super) fn wait_ms(ms: i64, what: crate::process::Wait) {
    crate::process::nap(ms, what);
}
