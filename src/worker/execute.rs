//! Running the statements of one remote change through SPI: the snapshot and memory context of
//! a replication step, execution of a prepared plan (one row, or a batch whose `RETURNING`
//! ordinals tell which rows were found), which columns identify the row, and the message about a
//! row that is not there.
use super::relation::ColMap;
use crate::report;
use pgrx::prelude::*;
use pgsub_proto::client::quote_ident;
use pgsub_proto::pgoutput::{Relation, TupleData, TupleValue};

type Code = PgSqlErrorCode;

/// Runs one replication step with a fresh snapshot (READ COMMITTED, like native's
/// begin_replication_step): catalog lookups, plan preparation and the statement all see it.
pub fn with_snapshot<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: inside the remote transaction's local transaction.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    let r = f();
    // SAFETY: pops the snapshot pushed above.
    unsafe { pg_sys::PopActiveSnapshot() };
    r
}

pub(super) fn in_context<R>(cxt: pg_sys::MemoryContext, f: impl FnOnce() -> R) -> R {
    // SAFETY: cxt is our per-message context, alive for the worker's life; reset after use.
    unsafe {
        let old = pg_sys::MemoryContextSwitchTo(cxt);
        let r = f();
        pg_sys::MemoryContextSwitchTo(old);
        pg_sys::MemoryContextReset(cxt);
        r
    }
}

pub(super) fn execute(
    plan: pg_sys::SPIPlanPtr,
    values: &mut [pg_sys::Datum],
    nulls: &[std::ffi::c_char],
    expect: i32,
) -> u64 {
    // SAFETY: a kept plan whose argument count matches values/nulls (built from the same masks).
    unsafe {
        let rc = super::triggers::apply_statement(|| {
            pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_ptr(), false, 0)
        });
        if rc != expect {
            report::error(
                Code::ERRCODE_INTERNAL_ERROR,
                format!("SPI_execute_plan returned {rc} (expected {expect})"),
                None,
                None,
            );
        }
        pg_sys::SPI_processed
    }
}

/// Runs a batched statement over `n` remote rows (array parameters, none NULL) and returns which
/// rows it found: its RETURNING gives their ordinals (one bigint column, 1-based).
pub(super) fn run_batch(plan: pg_sys::SPIPlanPtr, values: &mut [pg_sys::Datum], expect: i32, n: usize) -> Vec<bool> {
    let nulls = vec![b' ' as std::ffi::c_char; values.len()];
    let processed = execute(plan, values, &nulls, expect);
    let mut found = vec![false; n];
    // SAFETY: SPI_tuptable holds `processed` rows of one bigint column (the ordinal).
    unsafe {
        let tt = pg_sys::SPI_tuptable;
        if !tt.is_null() {
            for i in 0..processed as usize {
                let tup = *(*tt).vals.add(i);
                let mut isnull = false;
                let d = pg_sys::SPI_getbinval(tup, (*tt).tupdesc, 1, &mut isnull);
                let ord = d.value() as i64;
                if !isnull && ord >= 1 && ord as usize <= n {
                    found[ord as usize - 1] = true;
                }
            }
            pg_sys::SPI_freetuptable(tt);
        }
    }
    found
}

/// Which columns identify the row: the remote key columns (all columns for FULL) whose value was
/// sent and, for FULL, that can be compared — a type with an equality operator, or a NULL
/// (matched by NULL); see [`uncomparable`] for the others.
pub(super) fn key_mask(remote: &Relation, t: &TupleData, full: bool, cols: &[ColMap]) -> Vec<bool> {
    let odd = if full { uncomparable(t, cols) } else { Vec::new() };
    let mask: Vec<bool> = remote
        .columns
        .iter()
        .zip(t.columns.iter())
        .enumerate()
        .map(|(i, (rc, v))| {
            let sent = !matches!(v, TupleValue::UnchangedToast);
            if full {
                sent && !odd.get(i).copied().unwrap_or(false)
            } else {
                rc.is_key && sent
            }
        })
        .collect();
    // Under FULL a table without columns identifies its rows by nothing: any one row matches
    // (native deletes one of them).
    if !mask.iter().any(|b| *b) && !odd.iter().any(|b| *b) && (!full || !remote.columns.is_empty()) {
        report::error(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "publisher did not send replica identity column values for relation {}.{}",
                quote_ident(&remote.namespace),
                quote_ident(&remote.name)
            ),
            None,
            Some("The published table needs a primary key, REPLICA IDENTITY USING INDEX, or REPLICA IDENTITY FULL to replicate UPDATE and DELETE."),
        );
    }
    mask
}

/// Under REPLICA IDENTITY FULL, the sent columns whose value cannot be compared: a type without an
/// equality operator (json, point, xml, …) holding a value. Native's `tuples_equal` meets such a
/// value only in a local row that matches the other columns up to it and holds a value there too
/// — then it stops with [`no_equality`]; any other row is not the one. So such a change never
/// applies: with a candidate row it is that error, without one a missing row
/// (`LocalRel::uncomparable_candidate`).
pub(super) fn uncomparable(t: &TupleData, cols: &[ColMap]) -> Vec<bool> {
    t.columns
        .iter()
        .zip(cols.iter())
        .map(|(v, lc)| lc.eq_op.is_none() && !matches!(v, TupleValue::Null | TupleValue::UnchangedToast))
        .collect()
}

/// The error of PostgreSQL's `tuples_equal` for a REPLICA IDENTITY FULL column whose type has no
/// equality operator (json, point, …): the row cannot be identified.
pub(super) fn no_equality(typid: pg_sys::Oid) -> ! {
    // SAFETY: format_type_be returns a palloc'd C string for any type OID.
    let name = unsafe { std::ffi::CStr::from_ptr(pg_sys::format_type_be(typid)) }.to_string_lossy().into_owned();
    report::error(
        Code::ERRCODE_UNDEFINED_FUNCTION,
        format!("could not identify an equality operator for type {name}"),
        None,
        Some("With REPLICA IDENTITY FULL every column is compared; give the table a primary key or REPLICA IDENTITY USING INDEX, as for PostgreSQL's own subscriber."),
    )
}

/// The changed columns of a new tuple (an unchanged TOAST value is left as it is).
pub(super) fn set_mask(t: &TupleData) -> Vec<bool> {
    t.columns.iter().map(|v| !matches!(v, TupleValue::UnchangedToast)).collect()
}

/// The key values of a tuple as received, each with its kind and length, for telling repeated
/// keys apart in a run of UPDATEs.
pub(super) fn key_bytes(t: &TupleData, key: &[bool]) -> Vec<u8> {
    let mut out = Vec::new();
    for (v, _) in t.columns.iter().zip(key).filter(|(_, k)| **k) {
        match v {
            TupleValue::Null => out.push(b'n'),
            TupleValue::UnchangedToast => out.push(b'u'),
            TupleValue::Text(b) | TupleValue::Binary(b) => {
                out.push(if matches!(v, TupleValue::Text(_)) { b't' } else { b'b' });
                out.extend_from_slice(&(b.len() as u64).to_le_bytes());
                out.extend_from_slice(b);
            }
        }
    }
    out
}

pub(super) fn check_width(remote: &Relation, t: &TupleData, what: &str) {
    if t.columns.len() != remote.columns.len() {
        report::error(
            Code::ERRCODE_PROTOCOL_VIOLATION,
            format!(
                "{what} has {} columns but relation {}.{} has {}",
                t.columns.len(),
                quote_ident(&remote.namespace),
                quote_ident(&remote.name),
                remote.columns.len()
            ),
            None,
            None,
        );
    }
}

/// What one remote UPDATE or DELETE did here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RowOutcome {
    Applied,
    /// The row is not there: an `update_missing` / `delete_missing` conflict, logged.
    Missing,
    /// The row is there but a BEFORE ROW trigger returned NULL: nothing to count, as natively.
    Skipped,
}

/// The LOG line of an UPDATE or DELETE whose row is not there, in PostgreSQL 18's words, and its
/// `pgsub.conflict_log` row; `target` is what `LocalRel::row_target` gives.
pub(super) fn missing_row(op: &str, target: &super::relation::RowTarget) {
    let verb = if op == "UPDATE" { "updated" } else { "deleted" };
    let ctype =
        super::conflict::missing(op, &target.relation, target.key_json.as_deref(), target.remote_json.as_deref());
    let mut detail = format!("Could not find the row to be {verb}.");
    match (&target.remote_text, &target.key_text) {
        (Some(r), Some(k)) => detail.push_str(&format!("\nRemote row {r}; replica identity {k}.")),
        (Some(r), None) => detail.push_str(&format!("\nRemote row {r}.")),
        (None, Some(k)) => detail.push_str(&format!("\nReplica identity {k}.")),
        (None, None) => {}
    }
    detail.push_str("\nResolution: skip.");
    report::log(
        PgLogLevel::LOG,
        Code::ERRCODE_NO_DATA_FOUND,
        format!("pgsub: conflict detected on relation \"{}\": conflict={}", target.relation, ctype.as_str()),
        Some(detail),
        None,
    );
}

/// Adds a batch's found rows to `hit`; of the others, those `present` marks as there all the same
/// were skipped by a trigger, and each of the rest is logged as missing. Returns how many were.
pub(super) fn tally(
    found: &[bool],
    op: &str,
    present: &[bool],
    target: impl Fn(usize) -> super::relation::RowTarget,
    hit: &mut i64,
) -> i64 {
    let mut missing = 0;
    for (i, f) in found.iter().enumerate() {
        if *f {
            *hit += 1;
        } else if !present.get(i).copied().unwrap_or(false) {
            missing += 1;
            missing_row(op, &target(i));
        }
    }
    missing
}
