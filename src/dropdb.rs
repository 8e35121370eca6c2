//! Guards `DROP DATABASE` as native `dropdb()` does: a database that holds subscriptions cannot
//! be dropped (not even `WITH (FORCE)`), because its subscriptions' replication origins are
//! server-wide and their slots live on the publisher — dropping the database would leave both
//! behind. `pgsub.drop_subscription` in that database removes them first.
//!
//! A `ProcessUtility_hook` (pgsub is preloaded, so every backend has it) looks up the database
//! in shared memory: each launcher claims a slot for every subscription of its database, enabled
//! or not, and the supervisor probes every database once after the server starts. A database
//! copied with `CREATE DATABASE … TEMPLATE` holds no slot of the subscriptions it carries (their
//! ids are the original's) and can be dropped.
//!
//! `DROP EXTENSION pgsub` (and `DROP SCHEMA pgsub CASCADE`, which drops it too) is guarded the
//! same way, in the database it runs in: it would drop the catalog and leave the subscriptions'
//! origins and slots behind, and a subscription created again on the old slot would replay from
//! the slot's older confirmed position.
use crate::{report, shmem};
use pgrx::prelude::*;
use std::ffi::CStr;

static mut PREV_HOOK: pg_sys::ProcessUtility_hook_type = None;

/// Installs the hook (from `_PG_init`, in the postmaster).
pub fn init() {
    // SAFETY: called once while loading the preloaded library, before any backend exists.
    unsafe {
        PREV_HOOK = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

/// PostgreSQL's own `standard_ProcessUtility`, called directly: not through pgrx's guarded
/// binding, which would turn every ERROR of every utility statement into a Rust panic and back
/// (with a Rust backtrace in its DETAIL when `RUST_BACKTRACE` is set). This frame holds nothing
/// to drop, so an ERROR may pass through it as through a C hook's.
mod raw {
    use pgrx::pg_sys;
    unsafe extern "C-unwind" {
        pub fn standard_ProcessUtility(
            pstmt: *mut pg_sys::PlannedStmt,
            query_string: *const std::ffi::c_char,
            read_only_tree: bool,
            context: pg_sys::ProcessUtilityContext::Type,
            params: pg_sys::ParamListInfo,
            query_env: *mut pg_sys::QueryEnvironment,
            dest: *mut pg_sys::DestReceiver,
            qc: *mut pg_sys::QueryCompletion,
        );
    }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: PostgreSQL passes a valid statement; the node is read, not kept. The check runs
    // behind its own guard; the statement itself is run by the previous hook or PostgreSQL.
    unsafe {
        let stmt = (*pstmt).utilityStmt;
        if pgrx::is_a(stmt, pg_sys::NodeTag::T_DropdbStmt) {
            guarded_check(stmt.cast::<pg_sys::DropdbStmt>());
        } else if pgrx::is_a(stmt, pg_sys::NodeTag::T_DropStmt) && drops_pgsub(stmt.cast::<pg_sys::DropStmt>()) {
            guarded_check_extension();
        }
        match PREV_HOOK {
            Some(prev) => prev(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc),
            None => {
                raw::standard_ProcessUtility(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc)
            }
        }
    }
}

/// Whether a DROP statement drops the extension pgsub: `DROP EXTENSION pgsub`, or `DROP SCHEMA
/// pgsub CASCADE`, which takes the extension with it.
///
/// # Safety
/// `stmt` points to a `DropStmt`.
unsafe fn drops_pgsub(stmt: *const pg_sys::DropStmt) -> bool {
    // SAFETY: the caller's promise; an extension or schema DROP lists String nodes with their
    // names.
    unsafe {
        let extension = (*stmt).removeType == pg_sys::ObjectType::OBJECT_EXTENSION;
        let schema_cascade = (*stmt).removeType == pg_sys::ObjectType::OBJECT_SCHEMA
            && (*stmt).behavior == pg_sys::DropBehavior::DROP_CASCADE;
        if !extension && !schema_cascade {
            return false;
        }
        let objects = pgrx::PgList::<pg_sys::Node>::from_pg((*stmt).objects);
        let found = objects.iter_ptr().any(|n| {
            pgrx::is_a(n, pg_sys::NodeTag::T_String)
                && !(*n.cast::<pg_sys::String>()).sval.is_null()
                && CStr::from_ptr((*n.cast::<pg_sys::String>()).sval).to_bytes() == b"pgsub"
        });
        found
    }
}

/// Refuses `DROP EXTENSION pgsub` in a database that has subscriptions (SQLSTATE 55006), behind
/// pgrx's guard.
#[pg_guard]
unsafe extern "C-unwind" fn guarded_check_extension() {
    // SAFETY: MyDatabaseId is set in every backend that runs SQL.
    let oid = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let count = settled_count(oid);
    if count == 0 {
        // Once it is gone, the supervisor looks at the database again (pgsub.stat_database).
        crate::api::wake_launcher_at_commit();
        return;
    }
    report::error(
        PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
        "cannot drop extension pgsub because this database has subscriptions",
        Some(if count == 1 {
            "There is 1 pgsub subscription.".to_string()
        } else {
            format!("There are {count} pgsub subscriptions.")
        }),
        Some(
            "Drop them first with pgsub.drop_subscription() (it drops their replication slots on the publisher and their origins here; drop_slot => false when the publisher is gone).",
        ),
    );
}

/// [`check_drop`] behind pgrx's guard: its ERROR is raised as PostgreSQL's.
#[pg_guard]
unsafe extern "C-unwind" fn guarded_check(stmt: *mut pg_sys::DropdbStmt) {
    // SAFETY: the caller passes a DropdbStmt.
    unsafe { check_drop(stmt) }
}

/// Refuses to drop a database that has subscriptions (native's error, SQLSTATE 55006).
///
/// # Safety
/// `stmt` points to a `DropdbStmt`.
unsafe fn check_drop(stmt: *const pg_sys::DropdbStmt) {
    // SAFETY: the caller's promise; dbname is a NUL-terminated name.
    let name = unsafe {
        if (*stmt).dbname.is_null() {
            return;
        }
        CStr::from_ptr((*stmt).dbname).to_string_lossy().into_owned()
    };
    // SAFETY: a catalog lookup by name; missing_ok so DROP DATABASE reports a missing one itself.
    let oid = unsafe { pg_sys::get_database_oid((*stmt).dbname, true) };
    if oid == pg_sys::InvalidOid {
        return;
    }
    let count = settled_count(oid.to_u32());
    if count == 0 {
        return;
    }
    report::error(
        PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
        format!("database \"{name}\" is being used by logical replication subscription"),
        Some(if count == 1 {
            "There is 1 pgsub subscription.".to_string()
        } else {
            format!("There are {count} pgsub subscriptions.")
        }),
        Some(
            "Drop them first with pgsub.drop_subscription() in that database (it drops their replication slots on the publisher and their origins here).",
        ),
    );
}

/// The subscriptions shared memory knows of in database `oid`. While that database's launcher
/// runs it may be about to forget a subscription dropped a moment ago: then wait for it, at
/// most 5 s (as long as DROP DATABASE itself waits for other sessions to leave).
fn settled_count(oid: u32) -> usize {
    if !shmem::available() {
        return 0;
    }
    let state = || {
        let g = shmem::SHARED.share();
        (g.subscriptions_of(oid), g.db(oid).map_or(0, |d| d.pid))
    };
    crate::process::backend_wait_while(std::time::Duration::from_secs(5), 100, || {
        let (count, launcher) = state();
        count > 0 && launcher != 0
    });
    state().0
}
