//! The record of a conflict: the LOG line in PostgreSQL 18's words, the ERROR that stops apply
//! under `error`, and the `pgsub.conflict_log` row (in the change's own transaction, or after
//! the abort for a conflict that stopped apply).
use super::super::relation::LocalRel;
use super::lookup::{key_text, remote_rows, unique_indexes, LocalRow, RemoteValues};
use super::{origin_name, STATE};
use crate::catalog;
use crate::report;
use crate::shmem::ConflictType;
use pgrx::prelude::*;
use std::ffi::CStr;

type Code = PgSqlErrorCode;

/// Seconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

/// One conflict, as logged and recorded.
#[derive(Clone)]
pub(super) struct Record {
    pub(super) ctype: ConflictType,
    pub(super) relation: String,
    pub(super) key: Option<String>,
    pub(super) local_row: Option<String>,
    pub(super) remote_row: Option<String>,
    pub(super) resolution: &'static str,
    pub(super) local: Option<LocalRow>,
    /// What the conflict is about, for the log line ("Key already exists in unique index …").
    pub(super) what: String,
    /// The key and rows as PostgreSQL's messages show them, for the log line.
    pub(super) key_text: Option<String>,
    pub(super) local_text: Option<String>,
    /// `local_text` lists more than one row.
    pub(super) several_local: bool,
    pub(super) remote_text: Option<String>,
    /// The replica identity of the row the remote UPDATE or DELETE changes (`(a)=(1)`), shown
    /// last as native 18 shows it.
    pub(super) identity_text: Option<String>,
    /// Each colliding row of a `multiple_unique_conflicts` with its index and key (shown as
    /// native 18 shows them: a pair of lines each); empty otherwise.
    pub(super) collisions: Vec<Collision>,
}

/// One row a remote row collides with in one unique index.
#[derive(Clone)]
pub(super) struct Collision {
    /// "Key already exists in unique index "i"".
    pub(super) what: String,
    pub(super) row: LocalRow,
    pub(super) key_text: Option<String>,
}

/// A missing row (logged by `execute::missing_row`): recorded, skipped under every policy.
/// `key` is the key looked for as a JSON object. Returns its type.
pub(crate) fn missing(op: &str, relation: &str, key: Option<&str>, remote_row: Option<&str>) -> ConflictType {
    let ctype = if op == "UPDATE" { ConflictType::UpdateMissing } else { ConflictType::DeleteMissing };
    // The LOG line is missing_row's; only the log table's row is written here.
    super::super::execute::with_snapshot(|| {
        insert_log_row(&Record {
            ctype,
            relation: relation.to_string(),
            key: key.map(str::to_string),
            local_row: None,
            remote_row: remote_row.map(str::to_string),
            resolution: "skip",
            local: None,
            what: String::new(),
            key_text: None,
            local_text: None,
            several_local: false,
            remote_text: None,
            identity_text: None,
            collisions: Vec::new(),
        })
    });
    ctype
}

pub(crate) fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Builds the record of a conflict with `rows` (the first one is shown as the local row; the
/// others' are listed in the log line).
pub(super) fn record(
    local: &LocalRel,
    ctype: ConflictType,
    rows: &[LocalRow],
    values: &RemoteValues,
    resolution: &'static str,
    what: &str,
) -> Record {
    let first = rows.first().cloned();
    // "Key already exists", before the indexes are named.
    let base_what = what;
    let indexes_here = if rows.is_empty() { Vec::new() } else { unique_indexes(local) };
    let cols_of = |name: &str| indexes_here.iter().find(|i| i.name == name).map(|i| i.cols.clone());
    let key_cols: Vec<usize> = rows.first().and_then(|r| cols_of(&r.index)).unwrap_or_default();
    // The message names the key of every index a row collides in (native 18 gives each its
    // line); the log table's `key` is the first index's.
    let mut key_texts: Vec<String> = Vec::new();
    for r in rows {
        if let Some(t) = cols_of(&r.index).and_then(|cols| key_text(local, values, &cols)) {
            if !key_texts.contains(&t) {
                key_texts.push(t);
            }
        }
    }
    let local_row = match rows.len() {
        0 => None,
        1 => rows[0].json.clone(),
        _ => Some(format!(
            "[{}]",
            rows.iter().map(|r| r.json.clone().unwrap_or("null".into())).collect::<Vec<_>>().join(", ")
        )),
    };
    let indexes: Vec<String> = rows.iter().map(|r| format!("\"{}\"", r.index)).filter(|i| i != "\"\"").collect();
    let what = if indexes.is_empty() {
        what.to_string()
    } else {
        format!("{what} in unique index{} {}", if indexes.len() > 1 { "es" } else { "" }, indexes.join(", "))
    };
    let local_text = match rows.len() {
        0 => None,
        _ => Some(rows.iter().map(|r| r.text.clone().unwrap_or("()".into())).collect::<Vec<_>>().join(", ")),
    };
    let (remote_row, remote_text) = remote_rows(local, values, None);
    let collisions = if rows.len() > 1 {
        rows.iter()
            .map(|r| Collision {
                what: format!("{base_what} in unique index \"{}\"", r.index),
                row: r.clone(),
                key_text: cols_of(&r.index).and_then(|cols| key_text(local, values, &cols)),
            })
            .collect()
    } else {
        Vec::new()
    };
    Record {
        ctype,
        relation: first.as_ref().map(|r| r.relation.clone()).unwrap_or_else(|| local.qualified.clone()),
        key: if key_cols.is_empty() { None } else { remote_rows(local, values, Some(&key_cols)).0 },
        local_row,
        remote_row,
        resolution,
        local: first,
        what,
        key_text: if key_texts.is_empty() {
            key_text(local, values, &key_cols)
        } else {
            Some(key_texts.join(", key "))
        },
        local_text,
        several_local: rows.len() > 1,
        remote_text,
        identity_text: None,
        collisions,
    }
}

/// A record of a row found by the replica identity (an origin conflict) names that key, as the
/// other types name the unique key they collide on.
pub(super) fn with_identity_key(
    mut rec: Record,
    local: &LocalRel,
    key_cols: &[usize],
    values: &RemoteValues,
) -> Record {
    if !key_cols.is_empty() {
        if rec.key.is_none() {
            rec.key = remote_rows(local, values, Some(key_cols)).0;
        }
        rec.identity_text = key_text(local, values, key_cols);
    }
    rec
}

/// The message and detail of a conflict, in PostgreSQL 18's words.
pub(super) fn describe(rec: &Record) -> (String, String) {
    let txn = STATE.with_borrow(|s| s.txn.clone());
    let msg = format!("pgsub: conflict detected on relation \"{}\": conflict={}", rec.relation, rec.ctype.as_str());
    let mut detail = if rec.collisions.is_empty() {
        about(rec.ctype, &rec.what, rec.local.as_ref())
            + &rows_line(rec.key_text.as_deref(), rec.local_text.as_deref(), rec.several_local, rec)
    } else {
        // Native 18: each colliding row's pair of lines (its index and who modified the row;
        // its key and row).
        rec.collisions
            .iter()
            .map(|c| {
                about(rec.ctype, &c.what, Some(&c.row))
                    + &rows_line(c.key_text.as_deref(), c.row.text.as_deref(), false, rec)
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    // A transaction applied by a parallel apply worker as it streams has neither yet: its
    // pgsub.conflict_log rows get them at its Stream Commit (catalog::complete_conflict_log).
    let when = if txn.finish_lsn.is_valid() {
        let what = if txn.prepared { "prepared" } else { "committed" };
        format!(", {what} at {}, finishing at {}", timestamp_text(txn.commit_time), txn.finish_lsn)
    } else {
        ", still in progress on the publisher (streamed)".to_string()
    };
    detail.push_str(&format!(
        "\nResolution: {}. Remote transaction {}{}{when}.",
        rec.resolution,
        txn.xid,
        txn.origin.as_deref().map(|o| format!(" from origin \"{o}\"")).unwrap_or_default(),
    ));
    (msg, detail)
}

/// The first line of a conflict's detail: what it is about and, for a local row, who modified
/// it and when ("Key already exists in unique index "i", modified locally in transaction 7 at
/// …").
fn about(ctype: ConflictType, what: &str, local: Option<&LocalRow>) -> String {
    let mut detail = what.to_string();
    if let Some(l) = local {
        let by = match l.origin {
            None => String::new(),
            Some(0) => " locally".into(),
            // "modified by origin" for a key that exists, "by a different origin" for a row
            // being updated or deleted, as native 18 words them.
            Some(o) => match origin_name(o) {
                Some(n) if ctype.origin_differs() => format!(" by a different origin \"{n}\""),
                Some(n) => format!(" by origin \"{n}\""),
                // Dropped since (a table synchronization's origin, a dropped subscription's):
                // its id may be another origin's later. Native 18's words.
                None => " by a non-existent origin".into(),
            },
        };
        // "Updating the row that was modified locally …", "Key already exists …, modified by …".
        if !what.ends_with(" modified") {
            detail.push_str(", modified");
        }
        detail.push_str(&by);
        if let Some(x) = l.xid {
            detail.push_str(&format!(" in transaction {x}"));
        }
        if let Some(t) = l.commit_time {
            detail.push_str(&format!(" at {}", timestamp_text(t)));
        }
    }
    detail.push('.');
    detail
}

/// Native 18's second line: key, local row(s), remote row, replica identity, the first one
/// capitalized ("" when there is none of them).
fn rows_line(key: Option<&str>, local_text: Option<&str>, several: bool, rec: &Record) -> String {
    let mut parts = Vec::new();
    if let Some(k) = key {
        parts.push(format!("key {k}"));
    }
    if let Some(l) = local_text {
        parts.push(format!("existing local row{} {l}", if several { "s" } else { "" }));
    }
    if let Some(r) = &rec.remote_text {
        parts.push(format!("remote row {r}"));
    }
    if let Some(i) = &rec.identity_text {
        parts.push(format!("replica identity {i}"));
    }
    if parts.is_empty() {
        return String::new();
    }
    let line = parts.join("; ");
    let mut chars = line.chars();
    let first = chars.next().map(|c| c.to_uppercase().collect::<String>()).unwrap_or_default();
    format!("\n{first}{}.", chars.as_str())
}

pub(super) fn timestamp_text(t: i64) -> String {
    // SAFETY: timestamptz_to_str formats any TimestampTz into a static buffer; copied at once.
    unsafe { CStr::from_ptr(pg_sys::timestamptz_to_str(t)) }.to_string_lossy().into_owned()
}

/// Logs a resolved conflict and inserts its row into `pgsub.conflict_log` (this transaction).
pub(super) fn write(rec: &Record) {
    let (msg, detail) = describe(rec);
    report::log(PgLogLevel::LOG, Code::ERRCODE_SUCCESSFUL_COMPLETION, msg, Some(detail), None);
    insert_log_row(rec);
}

/// Stops apply with the conflict as an ERROR (policy `error`); its log-table row is written after
/// the abort.
pub(super) fn raise(rec: Record) -> ! {
    let (msg, detail) = describe(&rec);
    STATE.with_borrow_mut(|s| s.pending = Some(rec));
    report::error(
        Code::ERRCODE_UNIQUE_VIOLATION,
        msg,
        Some(detail),
        Some("Change or delete the local row, skip the remote transaction with pgsub.skip_transaction(), or choose another conflict_resolution."),
    )
}

/// After the abort of a transaction stopped by a conflict: its record in its own transaction.
pub fn write_pending_after_abort() {
    let Some(rec) = STATE.with_borrow_mut(|s| s.pending.take()) else { return };
    super::super::xact(|| insert_log_row(&rec));
}

pub(super) fn insert_log_row(rec: &Record) {
    let (subid, txn) = STATE.with_borrow_mut(|s| {
        s.unfinished_records |= !s.txn.finish_lsn.is_valid();
        (s.subid, s.txn.clone())
    });
    let row = catalog::ConflictLogRow {
        subid,
        conflict_type: rec.ctype.as_str(),
        relation: &rec.relation,
        key: rec.key.as_deref(),
        local_row: rec.local_row.as_deref(),
        remote_row: rec.remote_row.as_deref(),
        resolution: rec.resolution,
        local_xid: rec.local.as_ref().and_then(|l| l.xid),
        local_commit_time: rec.local.as_ref().and_then(|l| l.commit_time).map(unix_micros),
        local_origin: rec.local.as_ref().and_then(|l| l.origin),
        remote_origin: txn.origin.as_deref(),
        remote_xid: txn.xid as i64,
        remote_commit_time: unix_micros(txn.commit_time),
        remote_finish_lsn: txn.finish_lsn.to_string(),
    };
    if let Err(e) = catalog::as_superuser(|| catalog::insert_conflict_log(&row)) {
        report::error(
            Code::ERRCODE_INTERNAL_ERROR,
            format!("recording the conflict in pgsub.conflict_log: {e}"),
            None,
            None,
        );
    }
}

/// TimestampTz µs → µs since the Unix epoch.
pub(super) fn unix_micros(t: i64) -> i64 {
    t + PG_EPOCH_UNIX_SECS * 1_000_000
}
