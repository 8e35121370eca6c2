//! Set-returning functions that expose the shared-memory slots to SQL; the
//! `pgsub.stat_subscription` view (sql/views.sql) joins them with the catalog. Times are
//! returned as raw TimestampTz microseconds and LSNs as bigint; the view converts both.
//!
//! Shared memory holds the subscriptions of every database. A caller sees those of its own
//! database, and all of them only if it is a superuser or has the privileges of `pg_monitor` or
//! `pgsub_admin` (errors can quote row values; other databases' are not everyone's business).
//! Error texts are masked here, per subscription (`ErrorReader`), for every caller of these
//! functions; the views add no rule of their own.
use crate::dbtext::DbText;
use crate::shmem;
use pgrx::prelude::*;

/// Whether the calling role may see the subscriptions of every database.
pub(crate) fn sees_all_databases() -> bool {
    // SAFETY: the current user, set in every backend.
    let me = unsafe { pg_sys::GetUserId() };
    crate::process::has_privs_of_any(me, &[c"pg_monitor", c"pgsub_admin"])
}

/// Whether the caller may read a subscription's error texts, which can quote row values: with
/// its owner's privileges, `pg_read_all_stats` (so `pg_monitor`) or `pgsub_admin` — as
/// `pg_stat_activity` shows other roles' queries only to `pg_read_all_stats`. Others get NULL
/// from every function that returns `last_error`, not only from the views over them.
struct ErrorReader {
    all: bool,
    /// This database's subscriptions whose owner's privileges the caller has (empty when `all`).
    owned: Vec<i32>,
}

impl ErrorReader {
    /// Before the shared-memory lock is taken: the catalog lookups are done here.
    fn new() -> Self {
        // SAFETY: the current user, set in every backend.
        let me = unsafe { pg_sys::GetUserId() };
        let all = crate::process::has_privs_of_any(me, &[c"pg_read_all_stats", c"pgsub_admin"]);
        // A catalog that cannot be read masks every error.
        let owners = if all { Vec::new() } else { crate::catalog::owners().unwrap_or_default() };
        let owned = owners
            .into_iter()
            // SAFETY: catalog lookups of role memberships inside a transaction.
            .filter(|&(_, owner)| unsafe { pg_sys::has_privs_of_role(me, pg_sys::Oid::from(owner)) })
            .map(|(subid, _)| subid)
            .collect();
        ErrorReader { all, owned }
    }

    fn sees(&self, subid: i32, dboid: u32) -> bool {
        self.all || (dboid == shmem::my_database() && self.owned.contains(&subid))
    }
}

/// The subscription slots the caller may see (`all`: [`sees_all_databases`], asked before the
/// shared-memory lock is taken: it looks up role memberships in the catalog).
pub(crate) fn visible_slots(g: &shmem::Shared, all: bool) -> impl Iterator<Item = &shmem::SubSlot> {
    let here = shmem::my_database();
    g.slots.iter().filter(move |s| s.subid != 0 && (all || s.dboid == here))
}

/// One row per running worker of the subscriptions pgsub's launcher knows about — apply, table
/// synchronization, parallel apply — as native `pg_stat_subscription` has them
/// (`pgsub.stat_subscription_workers`). Positions and times are the apply worker's (a sync
/// worker's catch-up and a parallel worker show none).
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn _stat_workers() -> TableIterator<
    'static,
    (
        name!(subid, i32),
        name!(worker_type, String),
        name!(pid, i32),
        name!(leader_pid, Option<i32>),
        name!(relid, Option<pg_sys::Oid>),
        name!(received_lsn, i64),
        name!(last_msg_send_time, i64),
        name!(last_msg_receipt_time, i64),
        name!(latest_end_lsn, i64),
        name!(latest_end_time, i64),
    ),
> {
    let mut rows = Vec::new();
    if shmem::available() {
        let g = shmem::SHARED.share();
        // This database's only: the view joins them to its catalog by subscription id, which
        // another database (one made from this one as a template) may share.
        let subs: Vec<i32> = visible_slots(&g, false).map(|s| s.subid).collect();
        for s in visible_slots(&g, false).filter(|s| s.pid > 0) {
            // The slot keeps the previous worker's positions: shown once this worker has heard
            // from the publisher, as native's new worker shows none until then.
            let own = s.last_msg_receipt_time >= s.worker_started_at;
            let mine = |v: i64| if own { v } else { 0 };
            rows.push((
                s.subid,
                "apply".to_string(),
                s.pid,
                None,
                None,
                mine(s.received_lsn as i64),
                mine(s.last_msg_send_time),
                mine(s.last_msg_receipt_time),
                s.latest_end_lsn as i64,
                s.latest_end_time,
            ));
        }
        for s in g.sync.iter().filter(|s| s.subid != 0 && s.pid > 0 && subs.contains(&s.subid)) {
            let relid = Some(pg_sys::Oid::from(s.relid));
            rows.push((s.subid, "table synchronization".to_string(), s.pid, None, relid, 0, 0, 0, 0, 0));
        }
        for p in g.parallel.iter().filter(|p| p.pid > 0 && subs.contains(&p.subid)) {
            let leader = (p.leader_pid > 0).then_some(p.leader_pid);
            rows.push((p.subid, "parallel apply".to_string(), p.pid, leader, None, 0, 0, 0, 0, 0));
        }
    }
    TableIterator::new(rows)
}

/// Progress of every subscription pgsub's launcher knows about.
// The column list is the SQL signature: pgrx needs it spelled out inline.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn _stat_progress() -> TableIterator<
    'static,
    (
        name!(subid, i32),
        name!(status, String),
        name!(pid, Option<i32>),
        name!(worker_started_at, i64),
        name!(received_lsn, i64),
        name!(applied_lsn, i64),
        name!(flushed_lsn, i64),
        name!(publisher_wal_end, i64),
        name!(caught_up_lsn, i64),
        name!(last_msg_send_time, i64),
        name!(last_msg_receipt_time, i64),
        name!(last_commit_time, i64),
        name!(pending_commit_time, i64),
        name!(publisher_version, Option<i32>),
        name!(proto_version, Option<i32>),
        name!(parallel_apply_workers, i32),
        name!(parallel_txns, i64),
        name!(binary_in_use, Option<bool>),
    ),
> {
    let mut rows = Vec::new();
    if shmem::available() {
        let all = sees_all_databases();
        let g = shmem::SHARED.share();
        for s in visible_slots(&g, all) {
            let alive = s.pid > 0;
            rows.push((
                s.subid,
                // While pgsub.verify_subscription holds the worker at its consistent point.
                s.hold.status_text().filter(|_| alive).unwrap_or(s.status.as_str()).to_string(),
                if alive { Some(s.pid) } else { None },
                s.worker_started_at,
                s.received_lsn as i64,
                s.applied_lsn as i64,
                s.flushed_lsn as i64,
                s.publisher_wal_end as i64,
                s.caught_up_lsn as i64,
                s.last_msg_send_time,
                s.last_msg_receipt_time,
                s.last_commit_time,
                s.pending_commit_time,
                (s.publisher_version > 0).then_some(s.publisher_version as i32),
                (s.proto_version > 0).then_some(s.proto_version as i32),
                if alive { s.parallel_workers } else { 0 },
                s.parallel_txns,
                s.binary_in_use,
            ));
        }
    }
    TableIterator::new(rows)
}

/// Counters and the last error of every subscription pgsub's launcher knows about.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn _stat_counters() -> TableIterator<
    'static,
    (
        name!(subid, i32),
        name!(txns_applied, i64),
        name!(inserts, i64),
        name!(updates, i64),
        name!(deletes, i64),
        name!(truncates, i64),
        name!(messages, i64),
        name!(conflicts, i64),
        name!(txns_skipped, i64),
        name!(error_count, i64),
        name!(last_error, Option<DbText>),
        name!(last_error_at, i64),
    ),
> {
    let mut rows = Vec::new();
    if shmem::available() {
        let reader = ErrorReader::new();
        let all = sees_all_databases();
        let g = shmem::SHARED.share();
        for s in visible_slots(&g, all) {
            rows.push((
                s.subid,
                s.txns_applied,
                s.inserts,
                s.updates,
                s.deletes,
                s.truncates,
                s.messages,
                s.conflicts,
                s.txns_skipped,
                s.error_count,
                s.last_error().filter(|_| reader.sees(s.subid, s.dboid)).map(DbText),
                s.last_error_at,
            ));
        }
    }
    TableIterator::new(rows)
}

/// The database and name of every subscription in shared memory (`pgsub.stat_subscription_all`).
#[pg_extern(volatile, parallel_safe)]
fn _stat_names() -> TableIterator<'static, (name!(subid, i32), name!(dboid, pg_sys::Oid), name!(subname, String))> {
    let mut rows = Vec::new();
    if shmem::available() {
        let all = sees_all_databases();
        let g = shmem::SHARED.share();
        for s in visible_slots(&g, all) {
            rows.push((s.subid, pg_sys::Oid::from(s.dboid), s.name()));
        }
    }
    TableIterator::new(rows)
}

/// Every database the supervisor knows: its state, launcher and probes (`pgsub.stat_database`).
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn _stat_databases() -> TableIterator<
    'static,
    (
        name!(dboid, pg_sys::Oid),
        name!(state, String),
        name!(launcher_pid, Option<i32>),
        name!(probes, i64),
        name!(last_probe_at, i64),
    ),
> {
    let mut rows = Vec::new();
    if shmem::available() {
        let g = shmem::SHARED.share();
        for d in g.dbs.iter().filter(|d| d.oid != 0) {
            rows.push((
                pg_sys::Oid::from(d.oid),
                d.state.as_str().to_string(),
                (d.pid > 0).then_some(d.pid),
                d.probes,
                d.last_probe_at,
            ));
        }
    }
    TableIterator::new(rows)
}

/// Errors and conflicts by kind, and when the counters were last reset (`pgsub.stat_subscription`).
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn _stat_conflicts() -> TableIterator<
    'static,
    (
        name!(subid, i32),
        name!(apply_error_count, i64),
        name!(sync_error_count, i64),
        name!(confl_insert_exists, i64),
        name!(confl_update_origin_differs, i64),
        name!(confl_update_exists, i64),
        name!(confl_update_missing, i64),
        name!(confl_delete_origin_differs, i64),
        name!(confl_delete_missing, i64),
        name!(confl_multiple_unique_conflicts, i64),
        name!(stats_reset, i64),
    ),
> {
    let mut rows = Vec::new();
    if shmem::available() {
        let all = sees_all_databases();
        let g = shmem::SHARED.share();
        for s in visible_slots(&g, all) {
            rows.push((
                s.subid,
                s.apply_error_count,
                s.sync_error_count,
                s.confl[0],
                s.confl[1],
                s.confl[2],
                s.confl[3],
                s.confl[4],
                s.confl[5],
                s.confl[6],
                s.stats_reset,
            ));
        }
    }
    TableIterator::new(rows)
}

/// True when pgsub was loaded through shared_preload_libraries (so the launcher runs).
#[pg_extern(volatile, parallel_safe)]
fn _preloaded() -> bool {
    shmem::available()
}

/// Whether pgsub serves this database (`gucs::database_served`): not a template, and named by
/// `pgsub.database` when that is set. Its subscriptions show `not_served` otherwise.
#[pg_extern(volatile, parallel_safe)]
fn _database_served() -> bool {
    // Read-only SPI (`select`): pgrx's `Spi::get_*` take a transaction id, which a hot standby
    // refuses — the views that call this must work there.
    let row = Spi::connect(|c| {
        c.select(
            "SELECT datname::text, datistemplate FROM pg_catalog.pg_database \
             WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database()",
            Some(1),
            &[],
        )?
        .first()
        .get_two::<String, bool>()
    });
    match row {
        Ok((Some(name), Some(template))) => crate::gucs::database_served(&crate::gucs::databases(), &name, template),
        _ => true,
    }
}

/// Every table being synchronized (or waiting to retry): its sync worker, phase, live copy
/// progress and last error (`pgsub.subscription_table` joins it with the catalog); `failures`,
/// its consecutive failed attempts, and `failing_since`, when that streak began as estimated
/// from the last error's time and the backoff between the attempts (as `_health_state`'s);
/// `alive_at`, the running sync worker's last sign of life (`process::heartbeat`; 0 = none).
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn _sync_progress() -> TableIterator<
    'static,
    (
        name!(subid, i32),
        name!(relid, pg_sys::Oid),
        name!(pid, Option<i32>),
        name!(phase, String),
        name!(rows_copied, i64),
        name!(bytes_copied, i64),
        name!(copy_started_at, i64),
        name!(waiting, bool),
        name!(last_error, Option<DbText>),
        name!(last_error_at, i64),
        name!(failures, i32),
        name!(failing_since, i64),
        name!(alive_at, i64),
    ),
> {
    let mut rows = Vec::new();
    if shmem::available() {
        let retry_us = i64::from(crate::gucs::RETRY_INTERVAL_MS.get().max(1)) * 1000;
        let reader = ErrorReader::new();
        let all = sees_all_databases();
        let g = shmem::SHARED.share();
        let subs: Vec<(i32, u32)> = visible_slots(&g, all).map(|s| (s.subid, s.dboid)).collect();
        for s in g.sync.iter().filter(|s| s.subid != 0) {
            let Some(&(_, dboid)) = subs.iter().find(|&&(id, _)| id == s.subid) else { continue };
            rows.push((
                s.subid,
                pg_sys::Oid::from(s.relid),
                (s.pid > 0).then_some(s.pid),
                s.phase.as_str().to_string(),
                s.rows_copied,
                s.bytes_copied,
                s.copy_started_at,
                s.waiting,
                s.last_error().filter(|_| reader.sees(s.subid, dboid)).map(DbText),
                s.last_error_at,
                s.failures,
                if s.failures > 0 && s.last_error_at > 0 {
                    // The table's retries wait as the apply worker's do (tablesync::backoff).
                    s.last_error_at.saturating_sub(pgsub_core::launch::total_delay(retry_us, s.failures - 1))
                } else {
                    0
                },
                if s.pid > 0 { s.alive_at } else { 0 },
            ));
        }
    }
    TableIterator::new(rows)
}
