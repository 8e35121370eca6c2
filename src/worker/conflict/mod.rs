//! Conflicts between remote changes and local rows, by PostgreSQL 18's types (`ConflictType`):
//! finding the local rows a remote change collides with, deciding by the subscription's
//! `conflict_resolution` (`Resolution`), saying so in the server log, and recording it in
//! `pgsub.conflict_log` in the same local transaction as the change it resolves.
//!
//! Where conflicts are looked for (`apply.rs` calls in here):
//! - INSERT, one row at a time: `INSERT … ON CONFLICT DO NOTHING` when the policy is not `error`
//!   or the transaction failed before (`row_by_row_for`); a row not inserted is looked up in each
//!   unique index (`insert_exists`, or `multiple_unique_conflicts` when several indexes hold it).
//!   Under `error` the first attempt is a plain INSERT or COPY; its unique violation is counted by
//!   the worker's error path, and the retry finds the rows and logs them.
//! - UPDATE and DELETE, one row at a time, when `track_commit_timestamp` is on or the policy is
//!   not `error`: the local row is read (and locked) first; a row last changed by another origin
//!   or locally is `update_origin_differs` / `delete_origin_differs`, and an UPDATE's new values
//!   held by another row in a unique index are `update_exists`.
//! - A missing row (`update_missing`, `delete_missing`) is logged by `execute::missing_row`,
//!   which records it here too; it is skipped under every policy.
//!
//! Lookups run as superuser (they are pgsub's own bookkeeping); what is shown — the log line and
//! the log table's key and rows — holds only columns the subscription owner may read. Changes a
//! policy makes run as the worker's user, like the change they replace.
//!
//! A conflict that stops apply (`error`) is raised as an ERROR; its log-table row cannot be in the
//! aborted transaction, so the worker's error path writes it after the abort
//! (`write_pending_after_abort`).
mod lookup;
mod record;

use super::relation::LocalRel;
use crate::catalog::{self, Resolution};
use crate::report;
use crate::shmem::ConflictType;
pub(super) use lookup::RemoteValues;
use lookup::{lookup, remote_rows, unique_conflicts, LocalRow, Params};
use pgrx::prelude::*;
use pgsub_proto::client::quote_ident;
use pgsub_proto::Lsn;
pub(crate) use record::json_string;

/// How much of a value PostgreSQL's messages show of a row (`ExecBuildSlotValueDescription`'s
/// `maxfieldlen`): longer values are cut there, on a character, and end with `...`.
pub(crate) const MAX_FIELD_BYTES: usize = 64;

/// `value` cut as PostgreSQL's messages cut a row's values (`MAX_FIELD_BYTES`).
pub(crate) fn clip_value(value: &str) -> std::borrow::Cow<'_, str> {
    if value.len() <= MAX_FIELD_BYTES {
        return value.into();
    }
    let mut end = MAX_FIELD_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &value[..end]).into()
}
pub(super) use record::missing;
pub use record::write_pending_after_abort;
use record::{raise, write};
use record::{record, Record};
use std::cell::RefCell;
use std::ffi::CStr;

type Code = PgSqlErrorCode;

#[derive(Clone, Default)]
struct RemoteTxn {
    xid: u32,
    /// The commit time, or the prepare time of a transaction prepared (two_phase).
    commit_time: i64,
    /// Applied at its PREPARE (two_phase): not committed yet.
    prepared: bool,
    finish_lsn: Lsn,
    origin: Option<String>,
}

#[derive(Default)]
struct State {
    subid: i32,
    policy: Resolution,
    /// The publisher's system identifier: the remote side of a tie between commit times.
    publisher_sysid: u64,
    txn: RemoteTxn,
    /// A conflict raised as an ERROR: recorded after the abort.
    pending: Option<Record>,
    /// Conflicts resolved in the current transaction, not yet in the counters.
    counted: Vec<(pg_sys::Oid, ConflictType, i64)>,
    /// Records were written without the remote commit time and finish LSN (a transaction
    /// applied while it streams): [`complete_streamed`] fills them in at its commit.
    unfinished_records: bool,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// The worker's subscription and policy (at start).
pub fn init(subid: i32, policy: Resolution) {
    STATE.with_borrow_mut(|s| {
        s.subid = subid;
        s.policy = policy;
    });
}

pub fn set_publisher_sysid(sysid: u64) {
    STATE.with_borrow_mut(|s| s.publisher_sysid = sysid);
}

/// A remote transaction begins (its identity goes into every record).
pub fn begin_txn(xid: u32, commit_time: i64, finish_lsn: Lsn) {
    STATE.with_borrow_mut(|s| {
        s.txn = RemoteTxn { xid, commit_time, finish_lsn, prepared: false, origin: None };
        s.counted.clear();
        s.pending = None;
        s.unfinished_records = false;
    });
}

/// The commit time of remote transaction `xid` if it is the one begun last and its commit time
/// is known (a transaction a parallel worker applies as it streams has none until its commit).
pub fn txn_commit_time_of(xid: u32) -> Option<i64> {
    STATE.with_borrow(|s| (s.txn.xid == xid && s.txn.commit_time != 0).then_some(s.txn.commit_time))
}

/// The remote transaction begun is one applied at its PREPARE (two_phase): its time is the
/// prepare time, and it is not committed yet.
pub fn txn_is_prepared() {
    STATE.with_borrow_mut(|s| s.txn.prepared = true);
}

/// Stream Commit of a transaction a parallel apply worker applied as it streamed: its conflict
/// records written meanwhile get the commit time and finish LSN (in the committing transaction).
pub fn complete_streamed(commit_time: i64, finish_lsn: Lsn) {
    let (subid, xid, unfinished) = STATE.with_borrow_mut(|s| {
        s.txn.commit_time = commit_time;
        s.txn.finish_lsn = finish_lsn;
        (s.subid, s.txn.xid, std::mem::take(&mut s.unfinished_records))
    });
    if !unfinished {
        return;
    }
    let r = super::execute::with_snapshot(|| {
        catalog::as_superuser(|| {
            catalog::complete_conflict_log(
                subid,
                i64::from(xid),
                record::unix_micros(commit_time),
                &finish_lsn.to_string(),
            )
        })
    });
    if let Err(e) = r {
        report::error(Code::ERRCODE_INTERNAL_ERROR, format!("completing pgsub.conflict_log: {e}"), None, None);
    }
}

/// The remote row of an `update_missing` conflict (its new tuple's values; columns it did not
/// send left out): as JSON for `pgsub.conflict_log` and as text for the log line, as the other
/// conflict types show theirs.
pub(super) fn remote_row(
    local: &LocalRel,
    t: &pgsub_proto::pgoutput::TupleData,
    binary: bool,
    cxt: pg_sys::MemoryContext,
) -> (Option<String>, Option<String>) {
    remote_rows(local, &RemoteValues::of(local, t, binary, cxt), None)
}

/// Counts a conflict on local table `relid` (added to the counters with the transaction's).
pub(super) fn count(relid: pg_sys::Oid, t: ConflictType) {
    STATE.with_borrow_mut(|s| s.counted.push((relid, t, 1)));
}

/// The conflicts counted since the last call.
pub(super) fn take_counts() -> Vec<(pg_sys::Oid, ConflictType, i64)> {
    STATE.with_borrow_mut(|s| std::mem::take(&mut s.counted))
}

/// The remote transaction came to the publisher from `name` (an Origin message).
pub fn set_origin(name: &str) {
    STATE.with_borrow_mut(|s| s.txn.origin = Some(name.to_string()));
}

pub fn policy() -> Resolution {
    STATE.with_borrow(|s| s.policy)
}

/// Whether local rows' origins are known (`track_commit_timestamp`): then UPDATEs and DELETEs
/// check who changed the row last, as natively.
pub fn origins_tracked() -> bool {
    // SAFETY: a GUC variable of the server.
    unsafe { pg_sys::track_commit_timestamp }
}

/// Whether runs of UPDATEs may still be batched: under `error`, where a row is read first only
/// to tell its origin (an origin conflict is reported and the update applied all the same), a
/// run asks for its rows' origins at once (`foreign_origins`) and goes one by one only when one
/// of them was written by another origin. Other policies read every row before deciding.
pub fn batches_updates() -> bool {
    policy() == Resolution::Error
}

/// The origins whose rows are never an origin conflict: this session's (the subscription's apply
/// origin) and the subscription's table synchronization origins that exist. (A row of a dropped
/// one is told by the one-by-one path, `origin_differs`.)
pub fn own_origins() -> Vec<pg_sys::Oid> {
    // SAFETY: this session's replication origin.
    let mine = unsafe { pg_sys::replorigin_session_origin };
    let prefix = format!("{}_sync_", catalog::origin_name(my_subid()));
    let mut out = vec![pg_sys::Oid::from(u32::from(mine))];
    let sync = Spi::connect(|c| {
        let rows = c.select(
            "SELECT roident FROM pg_catalog.pg_replication_origin WHERE pg_catalog.starts_with(roname, $1)",
            None,
            &[prefix.as_str().into()],
        )?;
        let mut ids = Vec::new();
        for r in rows {
            if let Some(id) = r.get::<pg_sys::Oid>(1)? {
                ids.push(id);
            }
        }
        Ok::<_, pgrx::spi::SpiError>(ids)
    });
    out.extend(sync.unwrap_or_default());
    out
}

/// Whether UPDATEs and DELETEs read the local row before changing it (and so go one by one).
pub fn checks_rows() -> bool {
    origins_tracked() || policy() != Resolution::Error
}

/// The conflict type an ERROR raised here stands for (so the error path counts it once).
pub fn raised_type() -> Option<ConflictType> {
    STATE.with_borrow(|s| s.pending.as_ref().map(|r| r.ctype))
}

/// The remote change's (commit time, origin identity) and a local row's, for the policies that
/// compare them. A row written here counts as this server's system identifier, a row applied by
/// this subscription as its publisher's; other origins by their id.
fn decide(row: &LocalRow) -> bool {
    let (policy, remote_time, publisher) = STATE.with_borrow(|s| (s.policy, s.txn.commit_time, s.publisher_sysid));
    // SAFETY: reads the control file's identifier and this session's origin.
    let (me, my_origin) = unsafe { (pg_sys::GetSystemIdentifier(), pg_sys::replorigin_session_origin as i32) };
    let local_ident = match row.origin {
        None | Some(0) => me,
        Some(o) if o == my_origin => publisher,
        Some(o) => o as u64,
    };
    policy.remote_wins((row.commit_time, local_ident), (remote_time, publisher))
}

fn resolution_name(policy: Resolution, remote_wins: bool) -> &'static str {
    match (policy, remote_wins) {
        (Resolution::Error, _) => "error",
        (_, true) => "apply_remote",
        (_, false) => "keep_local",
    }
}

/// Whether the row was last changed by another origin than this subscription's (or locally).
/// The subscription's own origins are its apply origin and its table synchronization origins
/// (`pgsub_<subid>_sync_<relid>`: the initial copy and its catch-up); an origin that no longer
/// exists (a finished table synchronization's, a dropped subscription's) cannot be told apart, so
/// it does not count — the first change to a copied row is not a conflict. Nor when its id was
/// given to another origin since: pgsub notes in which transaction it drops an origin, and a row
/// written by an earlier one is the dropped origin's (`catalog::written_before_release`).
fn origin_differs(row: &LocalRow) -> bool {
    // SAFETY: this session's replication origin.
    let mine = unsafe { pg_sys::replorigin_session_origin } as i32;
    match row.origin {
        _ if row.commit_time.is_none() => false,
        None => false,
        Some(0) => true,
        Some(o) if o == mine => false,
        Some(o) => {
            origin_name(o).is_some_and(|n| !n.starts_with(&format!("{}_sync_", catalog::origin_name(my_subid()))))
                && !row.xid.is_some_and(|x| catalog::written_before_release(o, x))
        }
    }
}

fn my_subid() -> i32 {
    STATE.with_borrow(|s| s.subid)
}

/// The name of an existing replication origin.
fn origin_name(ident: i32) -> Option<String> {
    let ident = u16::try_from(ident).ok()?;
    let mut name: *mut std::ffi::c_char = std::ptr::null_mut();
    // SAFETY: a catalog lookup inside the apply transaction; the name is palloc'd.
    let found = unsafe { pg_sys::replorigin_by_oid(ident, true, &mut name) };
    if !found || name.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated name returned above.
    Some(unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned())
}

/// A remote INSERT was not inserted (`ON CONFLICT DO NOTHING`): finds the rows it collides with,
/// decides, and returns the type and whether the remote row was applied (it overwrote the local
/// ones). Raises under `error`. None when no row holds one of its unique keys: what stopped it
/// was an exclusion constraint, which no policy resolves (nor does native apply): the caller
/// inserts it again without `ON CONFLICT` to raise that error.
pub(super) fn insert_exists(local: &LocalRel, values: &RemoteValues, present: &[bool]) -> Option<(ConflictType, bool)> {
    let rows = unique_conflicts(local, values, None);
    if rows.is_empty() {
        return None;
    }
    let ctype = if rows.len() > 1 { ConflictType::MultipleUniqueConflicts } else { ConflictType::InsertExists };
    let policy = policy();
    let remote_wins = policy != Resolution::Error && rows.iter().all(decide);
    let rec = record(local, ctype, &rows, values, resolution_name(policy, remote_wins), "Key already exists");
    if policy == Resolution::Error {
        raise(rec);
    }
    if remote_wins {
        overwrite(local, &rows, values, present);
    }
    write(&rec);
    Some((ctype, remote_wins))
}

/// Before a remote UPDATE (one row, `checks_rows`): the local row found by the key (None: missing,
/// left to the UPDATE to find out) decides whether to apply it. Returns (apply, conflicts found).
pub(super) fn before_update(
    local: &LocalRel,
    key_cols: &[usize],
    key_values: &RemoteValues,
    new_values: &RemoteValues,
    retry: bool,
) -> (bool, Vec<ConflictType>) {
    let Some(mut row) = lookup(local, key_cols, key_values, false, None, None, false).into_iter().next() else {
        return (true, Vec::new());
    };
    let policy = policy();
    let mut found = Vec::new();
    let mut apply = true;
    if origin_differs(&row) {
        lookup::read_values(local, &mut row);
        let wins = decide(&row);
        apply = wins;
        let rec = record::with_identity_key(
            record(
                local,
                ConflictType::UpdateOriginDiffers,
                std::slice::from_ref(&row),
                new_values,
                if policy == Resolution::Error { "apply_remote" } else { resolution_name(policy, wins) },
                "Updating the row that was modified",
            ),
            local,
            key_cols,
            key_values,
        );
        write(&rec);
        found.push(ConflictType::UpdateOriginDiffers);
    }
    if apply && (policy != Resolution::Error || retry) {
        let others = unique_conflicts(local, new_values, Some((row.tableoid, &row.ctid)));
        if !others.is_empty() {
            // A row held in another partition than the updated row's: the UPDATE moves the row
            // there (every unique key of a partitioned table holds its partition key), which
            // native applies as a DELETE and an INSERT — `insert_exists`.
            let ctype = if others.len() > 1 {
                ConflictType::MultipleUniqueConflicts
            } else if others[0].tableoid != row.tableoid {
                ConflictType::InsertExists
            } else {
                ConflictType::UpdateExists
            };
            let wins = policy != Resolution::Error && others.iter().all(decide);
            let mut rec =
                record(local, ctype, &others, new_values, resolution_name(policy, wins), "Key already exists");
            rec.identity_text = lookup::key_text(local, key_values, key_cols);
            if policy == Resolution::Error {
                raise(rec);
            }
            if wins {
                remove(local, &others);
            } else {
                apply = false;
            }
            write(&rec);
            found.push(ctype);
        }
    }
    (apply, found)
}

/// Before a remote DELETE (one row, `checks_rows`): whether to apply it, and the conflict found.
pub(super) fn before_delete(
    local: &LocalRel,
    key_cols: &[usize],
    key_values: &RemoteValues,
) -> (bool, Option<ConflictType>) {
    let Some(mut row) = lookup(local, key_cols, key_values, false, None, None, false).into_iter().next() else {
        return (true, None);
    };
    if !origin_differs(&row) {
        return (true, None);
    }
    lookup::read_values(local, &mut row);
    let policy = policy();
    let wins = decide(&row);
    let mut rec = record::with_identity_key(
        record(
            local,
            ConflictType::DeleteOriginDiffers,
            std::slice::from_ref(&row),
            key_values,
            if policy == Resolution::Error { "apply_remote" } else { resolution_name(policy, wins) },
            "Deleting the row that was modified",
        ),
        local,
        key_cols,
        key_values,
    );
    // A DELETE sends its replica identity only: the remote row is those columns (the others
    // would read as NULLs it never had), and the log line shows none (native 18 shows the
    // replica identity only).
    rec.remote_row = remote_rows(local, key_values, Some(key_cols)).0;
    rec.remote_text = None;
    write(&rec);
    (wins, Some(ConflictType::DeleteOriginDiffers))
}

/// Makes the remote row win over the rows that hold its key: the first becomes the remote row,
/// the others are deleted.
fn overwrite(local: &LocalRel, rows: &[LocalRow], values: &RemoteValues, present: &[bool]) {
    let Some((first, rest)) = rows.split_first() else { return };
    // One local row can hold the remote row's key in several unique indexes (a primary key and
    // a unique email of the same user): it is listed once per index, and is the row kept, not
    // one of the others to delete (which lost both rows).
    let others: Vec<&LocalRow> =
        rest.iter().filter(|r| (r.tableoid, &r.ctid) != (first.tableoid, &first.ctid)).collect();
    remove(local, &others.into_iter().cloned().collect::<Vec<_>>());
    let sent = |i: usize| present.get(i).copied().unwrap_or(false) && values.get(i).is_some();
    if (0..local.cols.len()).any(|i| sent(i) && local.cols[i].identity_always) {
        replace(local, first, values, &sent);
        return;
    }
    let mut p = Params::new();
    let sets: Vec<String> = (0..local.cols.len())
        .filter(|&i| present.get(i).copied().unwrap_or(false) && !local.cols[i].identity_always)
        .filter_map(|i| values.get(i).cloned().map(|v| (i, v)))
        .map(|(i, v)| format!("{} = {}", quote_ident(&local.cols[i].name), p.typed(local, i, v)))
        .collect();
    if sets.is_empty() {
        return;
    }
    let o = p.text(Some(first.tableoid.to_string()));
    let t = p.text(Some(first.ctid.clone()));
    let sql = format!(
        "UPDATE {}{} t SET {} WHERE t.tableoid = {o}::pg_catalog.oid AND t.ctid = {t}::pg_catalog.tid",
        local.only,
        local.qualified,
        sets.join(", ")
    );
    run(local, &sql, &p);
}

/// [`overwrite`] of a row whose GENERATED ALWAYS identity column the remote row sets (UPDATE
/// cannot set one: the local key was kept, and the publisher's later changes of the row missed
/// it): the row is deleted and inserted again with the remote values (`OVERRIDING SYSTEM
/// VALUE`), its other values kept — as apply replaces a row whose such column an UPDATE changes.
fn replace(local: &LocalRel, row: &LocalRow, values: &RemoteValues, sent: &dyn Fn(usize) -> bool) {
    let mut p = Params::new();
    let o = p.text(Some(row.tableoid.to_string()));
    let t = p.text(Some(row.ctid.clone()));
    let mut names = Vec::new();
    let mut exprs = Vec::new();
    for (i, c) in local.cols.iter().enumerate() {
        let name = quote_ident(&c.name);
        exprs.push(match values.get(i).cloned().filter(|_| sent(i)) {
            Some(v) => p.typed(local, i, v),
            None => format!("pgsub_old.{name}"),
        });
        names.push(name);
    }
    for k in &local.kept {
        let name = quote_ident(k);
        exprs.push(format!("pgsub_old.{name}"));
        names.push(name);
    }
    let sql = format!(
        "WITH pgsub_old AS (DELETE FROM {}{} t WHERE t.tableoid = {o}::pg_catalog.oid AND t.ctid = {t}::pg_catalog.tid RETURNING t.*) \
         INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM pgsub_old",
        local.only,
        local.qualified,
        local.qualified,
        names.join(", "),
        exprs.join(", ")
    );
    run(local, &sql, &p);
}

/// Deletes the given local rows (each once: a row listed for several unique indexes too).
fn remove(local: &LocalRel, rows: &[LocalRow]) {
    let mut seen = std::collections::HashSet::new();
    for r in rows {
        if !seen.insert((r.tableoid, r.ctid.clone())) {
            continue;
        }
        let mut p = Params::new();
        let o = p.text(Some(r.tableoid.to_string()));
        let t = p.text(Some(r.ctid.clone()));
        let sql = format!(
            "DELETE FROM {}{} t WHERE t.tableoid = {o}::pg_catalog.oid AND t.ctid = {t}::pg_catalog.tid",
            local.only, local.qualified
        );
        run(local, &sql, &p);
    }
}

fn run(local: &LocalRel, sql: &str, p: &Params) {
    let args = p.args();
    let r = super::owner::as_table_owner(local.relid, || {
        super::triggers::apply_statement(|| Spi::run_with_args(sql, &args))
    });
    if let Err(e) = r {
        report::error(Code::ERRCODE_INTERNAL_ERROR, format!("resolving a conflict: {e}"), None, None);
    }
}
