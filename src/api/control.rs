//! The local effects of the SQL functions besides the catalog rows: the table list of a
//! subscription, replication origins, stopping a subscription's worker while it is dropped or
//! refreshed, and waking the launcher when the changing transaction ends.
use crate::catalog::{self};
use crate::report::error;
use crate::shmem;
use pgrx::prelude::*;
use pgsub_proto::client::quote_ident;
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};

type Code = PgSqlErrorCode;

/// Records the published tables of a subscription: new ones are added (to be copied when
/// Of the published `tables`, those the subscription does not have yet (what a refresh copies).
pub(super) fn new_tables(subid: i32, tables: &[(String, String)]) -> Vec<(String, String)> {
    tables
        .iter()
        .filter(|(schema, name)| {
            catalog::local_relid(schema, name).is_none_or(|oid| !catalog::has_table(subid, schema, name, oid))
        })
        .cloned()
        .collect()
}

/// `copy_data`), ones no longer published are removed. Every table must exist locally.
pub(super) fn sync_table_list(subid: i32, tables: &[(String, String)], copy_data: bool) {
    let mut missing = Vec::new();
    let mut resolved = Vec::new();
    for (schema, name) in tables {
        match catalog::local_relid(schema, name) {
            Some(oid) => resolved.push((schema, name, oid)),
            None => missing.push(format!("{}.{}", quote_ident(schema), quote_ident(name))),
        }
    }
    if !missing.is_empty() {
        error(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!("published relation {} does not exist on the subscriber", missing.join(", ")),
            Some("pgsub maps published tables to local tables of the same schema and name.".into()),
            Some("Create the table(s) on the subscriber first (the schema is not replicated)."),
        );
    }
    for (schema, name, oid) in &resolved {
        // SAFETY: a catalog lookup of a relation that exists, inside the transaction.
        let relkind = unsafe { pg_sys::get_rel_relkind(*oid) } as u8;
        if relkind != pg_sys::RELKIND_RELATION && relkind != pg_sys::RELKIND_PARTITIONED_TABLE {
            let what = match relkind {
                pg_sys::RELKIND_VIEW => "views",
                pg_sys::RELKIND_MATVIEW => "materialized views",
                pg_sys::RELKIND_FOREIGN_TABLE => "foreign tables",
                pg_sys::RELKIND_SEQUENCE => "sequences",
                pg_sys::RELKIND_COMPOSITE_TYPE => "composite types",
                _ => "this kind of relation",
            };
            // Native CREATE SUBSCRIPTION's words (CheckSubscriptionRelkind).
            error(
                Code::ERRCODE_WRONG_OBJECT_TYPE,
                format!("cannot use relation \"{schema}.{name}\" as logical replication target"),
                Some(format!("This operation is not supported for {what}.")),
                Some("Replicate into a table of that schema and name."),
            );
        }
    }
    follow_renames(subid, tables, &resolved);
    if copy_data {
        // Tables new to the subscription get the publisher's rows: refuse to mix them with rows
        // that are already there (the worker checks again before copying).
        for (schema, name, oid) in &resolved {
            if catalog::has_table(subid, schema, name, *oid) {
                continue;
            }
            // Another subscription replicates into it too (several publishers consolidated into
            // one table): its rows are added to, as natively.
            if let Some(other) = catalog::replicated_by_another(subid, *oid) {
                crate::report::log(
                    PgLogLevel::NOTICE,
                    Code::ERRCODE_SUCCESSFUL_COMPLETION,
                    format!(
                        "table {}.{} also receives rows from subscription \"{other}\": the publisher's rows are copied in beside the rows it has",
                        quote_ident(schema),
                        quote_ident(name)
                    ),
                    None,
                    Some("Rows with the same key on both publishers stop the copy with a unique violation; a table without a key takes both."),
                );
                continue;
            }
            // Only the table's own rows: an inheritance parent's children are tables of their own.
            let only = if catalog::is_partitioned(*oid) { "" } else { "ONLY " };
            let q = format!("SELECT EXISTS (SELECT 1 FROM {only}{}.{})", quote_ident(schema), quote_ident(name));
            if !catalog::read_one::<bool>(&q, &[]).ok().flatten().unwrap_or(false) {
                continue;
            }
            // With a key, as natively: the publisher's rows are added to the local ones, and a
            // row that is there already stops the copy with a unique violation.
            if catalog::has_unique_key(*oid, None) {
                crate::report::log(
                    PgLogLevel::NOTICE,
                    Code::ERRCODE_SUCCESSFUL_COMPLETION,
                    format!(
                        "table {}.{} already has rows: the publisher's rows are copied in beside them",
                        quote_ident(schema),
                        quote_ident(name)
                    ),
                    None,
                    Some("A publisher row whose key a local row holds stops the copy with a unique violation until the local row is removed; pass copy_data => false when the rows are there already."),
                );
                continue;
            }
            error(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "table {}.{} is not empty; pgsub will not copy into a table that already has rows and no unique key",
                    quote_ident(schema),
                    quote_ident(name)
                ),
                Some("copy_data => true copies every published row into the local table: without a primary key or a unique index on NOT NULL columns, rows that are there already would be doubled silently.".into()),
                Some("TRUNCATE the local table first, or pass copy_data => false to replicate only new changes. (A table another pgsub subscription replicates into takes the copy beside its rows.)"),
            );
        }
    }
    let state = if copy_data { catalog::SyncState::Init } else { catalog::SyncState::Ready };
    let resolved: Vec<(String, String, pg_sys::Oid)> =
        resolved.into_iter().map(|(s, n, o)| (s.clone(), n.clone(), o)).collect();
    if let Err(e) = catalog::set_tables(subid, &resolved, state) {
        error(Code::ERRCODE_INTERNAL_ERROR, format!("updating pgsub.sub_rel: {e}"), None, None);
    }
}

/// Tables renamed on the publisher and here alike (native keeps a subscription's tables by local
/// OID): a published name the subscription does not record, whose local table it records under a
/// name no longer published, is that table — its row takes the new name and keeps its state, as
/// the worker's `follow_rename` does when a change of it comes first. (A refresh took it for a
/// new table and refused to copy into it, or copied it again.)
fn follow_renames(subid: i32, tables: &[(String, String)], resolved: &[(&String, &String, pg_sys::Oid)]) {
    let recorded = match catalog::load_rels(subid) {
        Ok(r) => r,
        Err(e) => error(Code::ERRCODE_INTERNAL_ERROR, format!("reading pgsub.sub_rel: {e}"), None, None),
    };
    let published = |s: &str, n: &str| tables.iter().any(|(ts, tn)| ts == s && tn == n);
    for (schema, name, oid) in resolved {
        if recorded.iter().any(|r| &r.remote_schema == *schema && &r.remote_name == *name) {
            continue;
        }
        let Some(old) = recorded.iter().find(|r| r.relid == oid.to_u32()) else { continue };
        if published(&old.remote_schema, &old.remote_name) {
            continue;
        }
        if let Err(e) = catalog::rename_remote_table(subid, *oid, schema, name) {
            error(Code::ERRCODE_INTERNAL_ERROR, format!("updating pgsub.sub_rel: {e}"), None, None);
        }
        crate::report::log(
            PgLogLevel::LOG,
            Code::ERRCODE_SUCCESSFUL_COMPLETION,
            format!(
                "pgsub: table {}.{} is the subscription's table {}.{}, renamed on the publisher and here: it keeps its state",
                quote_ident(schema),
                quote_ident(name),
                quote_ident(&old.remote_schema),
                quote_ident(&old.remote_name)
            ),
            None,
            None,
        );
    }
}

// Wake the launcher when the transaction that changed the catalog commits.
pub(super) static WAKE_AT_COMMIT: AtomicBool = AtomicBool::new(false);

pub(super) static CALLBACK_REGISTERED: AtomicBool = AtomicBool::new(false);

/// A slot this transaction created on a publisher.
struct CreatedSlot {
    conninfo: String,
    slot: String,
    require_password: bool,
}

thread_local! {
    /// Slots created by the current transaction: a rollback cannot undo them, so they are dropped
    /// again when it aborts — `create_subscription` called from a function or DO block that
    /// fails afterwards (native refuses such a call; pgsub's functions cannot tell).
    static CREATED_SLOTS: std::cell::RefCell<Vec<CreatedSlot>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Has `slot`, just created on the publisher of `conninfo`, dropped again if this transaction
/// aborts.
pub(super) fn drop_slot_if_aborted(conninfo: &str, slot: &str, require_password: bool) {
    CREATED_SLOTS.with_borrow_mut(|v| {
        v.push(CreatedSlot { conninfo: conninfo.to_string(), slot: slot.to_string(), require_password })
    });
    register_callback();
}

/// Drops the slots the aborting transaction created (best effort, bounded: a slot that cannot be
/// dropped is named in a WARNING). Runs inside AbortTransaction, where interrupts are held: it
/// must not raise an ERROR.
fn drop_created_slots() {
    for c in CREATED_SLOTS.with_borrow_mut(std::mem::take) {
        let dropped = crate::publisher::connect_bounded(
            &c.conninfo,
            true,
            c.require_password,
            std::time::Duration::from_secs(10),
        )
        .and_then(|mut client| {
            let r = client.drop_slot(&c.slot, false);
            client.close();
            r
        });
        match dropped {
            Ok(()) => crate::report::log(
                PgLogLevel::WARNING,
                Code::ERRCODE_WARNING,
                format!("dropped replication slot \"{}\" on the publisher: the transaction that created it was rolled back", c.slot),
                None,
                None,
            ),
            Err(e) => crate::report::log(
                PgLogLevel::WARNING,
                Code::ERRCODE_WARNING,
                format!(
                    "replication slot \"{}\" is left on the publisher: the transaction that created it was rolled back, and dropping it failed: {e}",
                    c.slot
                ),
                None,
                Some(&format!(
                    "Drop it on the publisher with SELECT pg_drop_replication_slot({}); it holds back WAL there.",
                    pgsub_proto::client::quote_literal(&c.slot)
                )),
            ),
        }
    }
}

fn register_callback() {
    if !CALLBACK_REGISTERED.swap(true, Ordering::Relaxed) {
        // SAFETY: registering a static callback once per backend.
        unsafe { pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut()) };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT => {
            CREATED_SLOTS.with_borrow_mut(Vec::clear);
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            // No panic may leave here while the transaction aborts.
            let _ = std::panic::catch_unwind(drop_created_slots);
        }
        _ => {}
    }
    // At the end of the transaction either way: the launcher looks again, and the marks this
    // backend set while dropping or refreshing go.
    let ended = matches!(
        event,
        pg_sys::XactEvent::XACT_EVENT_COMMIT
            | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT
            | pg_sys::XactEvent::XACT_EVENT_ABORT
            | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT
    );
    if ended && WAKE_AT_COMMIT.swap(false, Ordering::Relaxed) {
        release_pauses();
        shmem::wake_launcher(shmem::my_database());
    }
}

/// Clears the "do not start" marks this backend set while dropping subscriptions.
pub(super) fn release_pauses() {
    if !shmem::available() {
        return;
    }
    // SAFETY: MyProcPid is set in every backend.
    let me = unsafe { pg_sys::MyProcPid };
    let mut g = shmem::SHARED.exclusive();
    for s in g.slots.iter_mut() {
        if s.paused_by == me {
            s.paused_by = 0;
        }
    }
}

/// Runs one UPDATE of `pgsub.sub`, then has the launcher look at the subscriptions when the
/// transaction commits (a running worker restarts if what it depends on changed).
pub(super) fn update_sub(subid: i32, change: catalog::Change) {
    if let Err(e) = catalog::update(subid, change) {
        error(Code::ERRCODE_INTERNAL_ERROR, format!("updating subscription: {e}"), None, None);
    }
    retry_now(subid);
    wake_launcher_at_commit();
}

/// An operator changed what a failing worker may be waiting for (an option, the connection,
/// skip_lsn, the tables): its next start is not held back by the error backoff, which may have
/// grown to a minute — it starts at the launcher's next pass, as a native worker would at its
/// next attempt.
pub(super) fn retry_now(subid: i32) {
    if !shmem::available() {
        return;
    }
    shmem::with_slot(subid, |s| {
        s.failed = false;
        s.failures = 0;
        s.next_start_at = 0;
    });
}

pub(crate) fn wake_launcher_at_commit() {
    if !shmem::available() {
        return;
    }
    register_callback();
    WAKE_AT_COMMIT.store(true, Ordering::Relaxed);
}

pub(super) fn create_origin(name: &str) {
    let c = CString::new(name).unwrap_or_default();
    // SAFETY: catalog operations inside a transaction.
    unsafe {
        if pg_sys::replorigin_by_name(c.as_ptr(), true) == pg_sys::InvalidRepOriginId as u16 {
            pg_sys::replorigin_create(c.as_ptr());
        }
    }
}

pub(super) fn drop_origin(name: &str) {
    // Waits if the origin is still in use.
    catalog::drop_origin(name, false);
}

/// Drops the table synchronization slots the subscription's sync workers left on the publisher
/// (tables still being synchronized when it is dropped). Failures are warnings: the slot is named.
pub(super) fn drop_sync_slots(client: &mut pgsub_proto::client::Client, subid: i32) {
    let pattern = catalog::sync_slot_pattern(subid);
    let sql = format!(
        "SELECT slot_name::text FROM pg_catalog.pg_replication_slots WHERE slot_name LIKE {}",
        pgsub_proto::client::quote_literal(&pattern)
    );
    let names: Vec<String> = match client.simple_query(&sql) {
        Ok(rows) => rows.into_iter().filter_map(|r| r.values.into_iter().next().flatten()).collect(),
        Err(_) => Vec::new(),
    };
    for name in names {
        if let Err(e) = super::remote::drop_slot_when_free(client, &name, None) {
            crate::report::log(
                PgLogLevel::WARNING,
                crate::publisher::sqlstate(&e),
                format!("could not drop table synchronization slot \"{name}\" on the publisher: {e}"),
                None,
                Some("Drop it on the publisher with pg_drop_replication_slot()."),
            );
        }
    }
}

/// Drops the subscription's table synchronization origins (after its sync workers are stopped).
pub(super) fn drop_sync_origins(subid: i32) {
    for n in catalog::sync_origin_names(subid) {
        drop_origin(&n);
    }
}

/// Stops the subscription's workers (apply and table synchronization; after a refresh or
/// skip_lsn only those of tables no longer synchronized) and keeps the launcher from starting
/// another until this transaction ends; waits up to 30 s for it to exit.
pub(super) fn stop_worker(subid: i32, why: crate::process::StopReason) {
    if !shmem::available() {
        return;
    }
    // SAFETY: MyProcPid is set in every backend.
    let me = unsafe { pg_sys::MyProcPid };
    let pid = {
        let mut g = shmem::SHARED.exclusive();
        match g.claim(subid, shmem::my_database()) {
            Some(s) => {
                s.paused_by = me;
                // Restarted for a reason (a refresh, skip_lsn): no error backoff before it.
                s.failed = false;
                s.failures = 0;
                s.next_start_at = 0;
                s.stop_reason = why as u8;
                crate::process::ask_to_stop(s)
            }
            None => 0,
        }
    };
    wake_launcher_at_commit();
    if pid > 0 {
        // Asked first, so that the worker stops cleanly between messages (a LOG line, exit 0);
        // SIGTERM only if it has not within the grace time (FATAL, as a terminated backend).
        // The worker clears its pid from the slot when it exits.
        let running = || shmem::SHARED.share().find(subid).is_some_and(|s| s.pid == pid);
        crate::process::wake(pid);
        crate::process::backend_wait_while(
            std::time::Duration::from_micros(crate::process::STOP_GRACE_US as u64),
            50,
            running,
        );
        if running() {
            crate::process::terminate(pid);
            wait_until_gone(running);
        }
    }
    // Then its table synchronization workers (no new one is registered now). After a refresh or
    // skip_lsn, as natively, those of tables the subscription still synchronizes go on (their
    // copy is not started over; the next apply worker answers them).
    match why {
        crate::process::StopReason::Refresh
        | crate::process::StopReason::Skip
        | crate::process::StopReason::Publications => stop_removed_sync_workers(subid),
        crate::process::StopReason::Dropped | crate::process::StopReason::Disabled => stop_sync_workers(subid, &[]),
    }
}

/// Stops the sync workers of tables this transaction removed from the subscription (a refresh,
/// a change of its publications), as native's refresh does; the others go on.
fn stop_removed_sync_workers(subid: i32) {
    let keep: Vec<u32> = catalog::load_rels(subid)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.sync_state.needs_sync_worker())
        .map(|r| r.relid)
        .collect();
    stop_sync_workers(subid, &keep);
}

/// Stops the subscription's sync workers but those of the tables `keep`: a registered one that
/// has not claimed its slot finds none and leaves; running ones are stopped (waited for up to
/// 30 s).
fn stop_sync_workers(subid: i32, keep: &[u32]) {
    if !shmem::available() {
        return;
    }
    let syncs: Vec<i32> = {
        let mut g = shmem::SHARED.exclusive();
        let mut pids = Vec::new();
        for s in g.sync.iter_mut().filter(|s| s.subid == subid && !keep.contains(&s.relid)) {
            if s.pid > 0 {
                pids.push(s.pid);
            } else {
                *s = shmem::SyncSlot::default();
            }
        }
        pids
    };
    for p in &syncs {
        crate::process::terminate(*p);
    }
    wait_until_gone(|| shmem::SHARED.share().sync.iter().any(|s| s.subid == subid && syncs.contains(&s.pid)));
}

/// Waits up to 30 s while `running()` holds.
fn wait_until_gone(running: impl Fn() -> bool) {
    crate::process::backend_wait_while(std::time::Duration::from_secs(30), 50, running);
}
