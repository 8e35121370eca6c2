//! Statement-level triggers during apply. PostgreSQL's apply worker fires the row-level triggers
//! of a replicated INSERT, UPDATE or DELETE (those enabled `REPLICA` or `ALWAYS`, since it runs
//! with `session_replication_role = replica`) but never the statement-level ones: it applies rows,
//! not statements (only TRUNCATE and the initial copy fire statement triggers). pgsub applies
//! through SQL statements, whose executor would fire BEFORE/AFTER STATEMENT triggers of the target
//! once per statement. An `ExecutorStart` hook, installed in apply workers only, clears the
//! statement-trigger flags of the target of the one statement pgsub marks with [`apply_statement`]
//! — not of statements that triggers or functions run in turn, which behave as usual.
//!
//! Runs of INSERTs are loaded with COPY, which has no such hook: tables with enabled
//! statement-level INSERT triggers take their inserts one by one instead
//! (`relation::LocalRel::stmt_insert_triggers`).
use pgrx::prelude::*;
use std::cell::Cell;

thread_local! {
    /// The next executor start is pgsub's own apply statement.
    static NEXT_IS_APPLY: Cell<bool> = const { Cell::new(false) };
}

static mut PREV_EXECUTOR_START: pg_sys::ExecutorStart_hook_type = None;

/// Installs the hook (once, at apply worker start).
pub(super) fn install() {
    // SAFETY: hooks are process-global and set once before any statement runs.
    unsafe {
        PREV_EXECUTOR_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
    }
}

/// Runs `f`, whose statement is an apply statement (its statement-level triggers do not fire).
pub(super) fn apply_statement<R>(f: impl FnOnce() -> R) -> R {
    NEXT_IS_APPLY.with(|c| c.set(true));
    let r = f();
    NEXT_IS_APPLY.with(|c| c.set(false));
    r
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: i32) {
    // Taken before the executor starts: statements the start itself runs are not ours.
    let ours = NEXT_IS_APPLY.with(|c| c.replace(false));
    // SAFETY: the standard chaining of an executor hook.
    unsafe {
        match PREV_EXECUTOR_START {
            Some(prev) => prev(query_desc, eflags),
            None => pg_sys::standard_ExecutorStart(query_desc, eflags),
        }
    }
    if !ours {
        return;
    }
    // SAFETY: after ExecutorStart the plan state tree exists; a ModifyTableState's result
    // relations carry copies of their relations' trigger descriptors owned by this query.
    unsafe {
        let ps = (*query_desc).planstate;
        if ps.is_null() || (*ps).type_ != pg_sys::NodeTag::T_ModifyTableState {
            return;
        }
        let mt = ps as *mut pg_sys::ModifyTableState;
        clear_statement_triggers((*mt).rootResultRelInfo);
        for i in 0..(*mt).mt_nrels.max(0) as usize {
            clear_statement_triggers((*mt).resultRelInfo.add(i));
        }
    }
}

/// # Safety
/// `rri` is null or a live ResultRelInfo of the current query.
unsafe fn clear_statement_triggers(rri: *mut pg_sys::ResultRelInfo) {
    if rri.is_null() {
        return;
    }
    // SAFETY: per the function's contract.
    unsafe {
        let td = (*rri).ri_TrigDesc;
        if td.is_null() {
            return;
        }
        (*td).trig_insert_before_statement = false;
        (*td).trig_insert_after_statement = false;
        (*td).trig_update_before_statement = false;
        (*td).trig_update_after_statement = false;
        (*td).trig_delete_before_statement = false;
        (*td).trig_delete_after_statement = false;
    }
}
