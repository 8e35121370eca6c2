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
use super::execute::in_context;
use super::relation::LocalRel;
use crate::catalog::{self, Resolution};
use crate::report;
use crate::shmem::ConflictType;
use pgrx::prelude::*;
use pgsub_proto::client::{quote_ident, quote_literal};
use pgsub_proto::pgoutput::{TupleData, TupleValue};
use pgsub_proto::Lsn;
use std::cell::RefCell;
use std::ffi::CStr;

type Code = PgSqlErrorCode;

/// Seconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

#[derive(Clone, Default)]
struct RemoteTxn {
    xid: u32,
    commit_time: i64,
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
        s.txn = RemoteTxn { xid, commit_time, finish_lsn, origin: None };
        s.counted.clear();
        s.pending = None;
    });
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

/// Whether UPDATEs and DELETEs read the local row before changing it (and so go one by one).
pub fn checks_rows() -> bool {
    origins_tracked() || policy() != Resolution::Error
}

/// The conflict type an ERROR raised here stands for (so the error path counts it once).
pub fn raised_type() -> Option<ConflictType> {
    STATE.with_borrow(|s| s.pending.as_ref().map(|r| r.ctype))
}

/// One conflict, as logged and recorded.
#[derive(Clone)]
struct Record {
    ctype: ConflictType,
    relation: String,
    key: Option<String>,
    local_row: Option<String>,
    remote_row: Option<String>,
    resolution: &'static str,
    local: Option<LocalRow>,
    /// What the conflict is about, for the log line ("Key already exists in unique index …").
    what: String,
    /// The key and rows as PostgreSQL's messages show them, for the log line.
    key_text: Option<String>,
    local_text: Option<String>,
    remote_text: Option<String>,
}

/// A local row found by a lookup.
#[derive(Clone)]
pub(super) struct LocalRow {
    relation: String,
    tableoid: u32,
    ctid: String,
    xid: Option<i64>,
    /// Commit time (TimestampTz µs) and origin of the transaction that last changed it, when
    /// `track_commit_timestamp` recorded them.
    commit_time: Option<i64>,
    origin: Option<i32>,
    json: Option<String>,
    /// The same columns as a record's text, `(1,local)`, for the log line.
    text: Option<String>,
    /// The unique index the row was found through.
    index: String,
}

/// The remote values of a tuple as text, per local column (None: NULL; skipped: unchanged TOAST).
pub(super) struct RemoteValues(Vec<Option<Option<String>>>);

impl RemoteValues {
    pub(super) fn of(local: &LocalRel, t: &TupleData, binary: bool, cxt: pg_sys::MemoryContext) -> RemoteValues {
        let vals = local
            .cols
            .iter()
            .enumerate()
            .map(|(i, col)| match t.columns.get(i) {
                None | Some(TupleValue::UnchangedToast) => None,
                Some(TupleValue::Null) => Some(None),
                Some(TupleValue::Text(b)) => Some(Some(String::from_utf8_lossy(b).into_owned())),
                Some(v @ TupleValue::Binary(_)) => Some(Some(in_context(cxt, || {
                    let (d, _) = col.datum(v, binary);
                    // SAFETY: the type's output function on a Datum of that type.
                    unsafe {
                        let mut out = pg_sys::InvalidOid;
                        let mut varlena = false;
                        pg_sys::getTypeOutputInfo(col.typid, &mut out, &mut varlena);
                        CStr::from_ptr(pg_sys::OidOutputFunctionCall(out, d)).to_string_lossy().into_owned()
                    }
                }))),
            })
            .collect();
        RemoteValues(vals)
    }

    fn get(&self, i: usize) -> Option<&Option<String>> {
        self.0.get(i).and_then(|v| v.as_ref())
    }
}

/// `$n::text::type` parameters for a statement built here: every value goes in as text and is
/// converted by the local column type's input function.
struct Params {
    values: Vec<Option<String>>,
}

impl Params {
    fn new() -> Self {
        Params { values: Vec::new() }
    }

    fn text(&mut self, v: Option<String>) -> String {
        self.values.push(v);
        format!("${}::pg_catalog.text", self.values.len())
    }

    fn typed(&mut self, local: &LocalRel, i: usize, v: Option<String>) -> String {
        let t = self.text(v);
        format!("{t}::{}", type_name(local.cols[i].typid))
    }

    fn args(&self) -> Vec<pgrx::datum::DatumWithOid<'static>> {
        self.values.iter().map(|v| v.clone().into()).collect()
    }
}

fn type_name(typid: pg_sys::Oid) -> String {
    // SAFETY: returns a palloc'd name for any type OID.
    unsafe { CStr::from_ptr(pg_sys::format_type_be_qualified(typid)) }.to_string_lossy().into_owned()
}

/// `jsonb_build_object(…)` of the given columns' expressions (in chunks: the function takes at
/// most 100 arguments); None when no column is left.
fn json_of(pairs: Vec<(String, String)>) -> Option<String> {
    if pairs.is_empty() {
        return None;
    }
    let parts: Vec<String> = pairs
        .chunks(40)
        .map(|c| {
            let args: Vec<String> = c.iter().map(|(n, e)| format!("{}, {e}", quote_literal(n))).collect();
            format!("pg_catalog.jsonb_build_object({})", args.join(", "))
        })
        .collect();
    Some(parts.join(" OPERATOR(pg_catalog.||) "))
}

/// `ROW(…)::text` of the given expressions (NULL when there are none): a row as PostgreSQL's
/// messages show one.
fn row_of(exprs: Vec<String>) -> String {
    if exprs.is_empty() {
        return "NULL::text".into();
    }
    format!("ROW({})::text", exprs.join(", "))
}

/// `(a, b)=(1, x)` of the readable columns among `cols`, from the remote values.
fn key_text(local: &LocalRel, values: &RemoteValues, cols: &[usize]) -> Option<String> {
    let mut names = Vec::new();
    let mut vals = Vec::new();
    for &i in cols {
        let Some(v) = values.get(i) else { continue };
        if !local.readable(i) {
            continue;
        }
        let name = &local.cols[i].name;
        let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        names.push(if plain { name.clone() } else { quote_ident(name) });
        vals.push(v.clone().unwrap_or_else(|| "null".into()));
    }
    (!names.is_empty()).then(|| format!("({})=({})", names.join(", "), vals.join(", ")))
}

/// A unique index of the local table: its name, columns (positions in `LocalRel::cols`),
/// whether NULLs are equal in it, and its predicate.
struct UniqueIndex {
    name: String,
    cols: Vec<usize>,
    nulls_not_distinct: bool,
    predicate: Option<String>,
}

fn unique_indexes(local: &LocalRel) -> Vec<UniqueIndex> {
    let sql = "SELECT c.relname::text, \
                ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, n) \
                      JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                      WHERE k.n <= i.indnkeyatts ORDER BY k.n), \
                i.indnullsnotdistinct, pg_catalog.pg_get_expr(i.indpred, i.indrelid) \
         FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid \
         WHERE i.indrelid = $1 AND i.indisunique AND i.indimmediate AND i.indexprs IS NULL \
           AND NOT (0 = ANY (i.indkey::int2[])) \
         ORDER BY i.indisprimary DESC, c.relname";
    let rows = Spi::connect(|c| {
        let mut out = Vec::new();
        for row in c.select(sql, None, &[local.relid.into()])? {
            let name = row.get::<String>(1)?.unwrap_or_default();
            let names: Vec<String> =
                row.get::<Vec<Option<String>>>(2)?.unwrap_or_default().into_iter().flatten().collect();
            let nnd = row.get::<bool>(3)?.unwrap_or(false);
            let pred = row.get::<String>(4)?;
            out.push((name, names, nnd, pred));
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    });
    let rows = match rows {
        Ok(r) => r,
        Err(e) => report::error(Code::ERRCODE_INTERNAL_ERROR, format!("reading unique indexes: {e}"), None, None),
    };
    rows.into_iter()
        .filter_map(|(name, names, nulls_not_distinct, predicate)| {
            // Only indexes over columns the publisher sends can be checked.
            let cols: Option<Vec<usize>> = names.iter().map(|n| local.cols.iter().position(|c| &c.name == n)).collect();
            cols.map(|cols| UniqueIndex { name, cols, nulls_not_distinct, predicate })
        })
        .collect()
}

/// The SELECT list of a lookup: where the row is, who changed it last, and its readable columns.
fn row_select(local: &LocalRel) -> String {
    let origin = if origins_tracked() {
        "(SELECT ((pg_catalog.date_part('epoch', x.\"timestamp\")::numeric - 946684800) * 1000000)::int8 \
         FROM pg_catalog.pg_xact_commit_timestamp_origin(t.xmin) x), \
         (SELECT x.roident::int4 FROM pg_catalog.pg_xact_commit_timestamp_origin(t.xmin) x)"
    } else {
        "NULL::int8, NULL::int4"
    };
    let pairs: Vec<(String, String)> = (0..local.cols.len())
        .filter(|&i| local.readable(i))
        .map(|i| (local.cols[i].name.clone(), format!("t.{}", quote_ident(&local.cols[i].name))))
        .collect();
    let record = row_of(pairs.iter().map(|(_, e)| e.clone()).collect());
    let json = json_of(pairs).map_or("NULL::pg_catalog.jsonb".to_string(), |j| j);
    format!(
        "t.tableoid::pg_catalog.regclass::text, t.tableoid::int8, t.ctid::text, \
         t.xmin::text::int8, {origin}, ({json})::text, {record}"
    )
}

/// Local rows where the given columns hold the given values (NULL never matches unless
/// `nulls_equal`), locked FOR UPDATE; rows at `except` (tableoid, ctid) left out.
fn lookup(
    local: &LocalRel,
    cols: &[usize],
    values: &RemoteValues,
    nulls_equal: bool,
    predicate: Option<&str>,
    except: Option<(u32, &str)>,
) -> Vec<LocalRow> {
    let mut p = Params::new();
    let mut conds = Vec::new();
    for &i in cols {
        let Some(v) = values.get(i) else { return Vec::new() };
        if v.is_none() && !nulls_equal {
            return Vec::new();
        }
        let col = format!("t.{}", quote_ident(&local.cols[i].name));
        let param = p.typed(local, i, v.clone());
        conds.push(if nulls_equal {
            format!("{col} IS NOT DISTINCT FROM {param}")
        } else {
            let op = local.cols[i].eq_op.clone().unwrap_or_else(|| "=".into());
            format!("{col} {op} {param}")
        });
    }
    if let Some(pred) = predicate {
        conds.push(format!("({pred})"));
    }
    if let Some((oid, tid)) = except {
        let o = p.text(Some(oid.to_string()));
        let t = p.text(Some(tid.to_string()));
        conds.push(format!("NOT (t.tableoid = {o}::pg_catalog.oid AND t.ctid = {t}::pg_catalog.tid)"));
    }
    if conds.is_empty() {
        conds.push("true".into());
    }
    let sql = format!(
        "SELECT {} FROM {}{} t WHERE {} FOR UPDATE OF t",
        row_select(local),
        local.only,
        local.qualified,
        conds.join(" AND ")
    );
    let args = p.args();
    let rows = catalog::as_superuser(|| {
        // Read-write: the rows are locked (FOR UPDATE).
        Spi::connect_mut(|c| {
            let mut out = Vec::new();
            for row in c.update(&sql, None, &args)? {
                out.push(LocalRow {
                    relation: row.get::<String>(1)?.unwrap_or_default(),
                    tableoid: row.get::<i64>(2)?.unwrap_or_default() as u32,
                    ctid: row.get::<String>(3)?.unwrap_or_default(),
                    xid: row.get::<i64>(4)?,
                    commit_time: row.get::<i64>(5)?,
                    origin: row.get::<i32>(6)?,
                    json: row.get::<String>(7)?,
                    text: row.get::<String>(8)?,
                    index: String::new(),
                });
            }
            Ok::<_, pgrx::spi::SpiError>(out)
        })
    });
    match rows {
        Ok(r) => r,
        Err(e) => report::error(Code::ERRCODE_INTERNAL_ERROR, format!("looking up the local row: {e}"), None, None),
    }
}

/// The local rows that hold the remote values in some unique index, one per index that has one
/// (`except`: the row being updated).
fn unique_conflicts(local: &LocalRel, values: &RemoteValues, except: Option<(u32, &str)>) -> Vec<LocalRow> {
    let mut found = Vec::new();
    for idx in unique_indexes(local) {
        for mut row in lookup(local, &idx.cols, values, idx.nulls_not_distinct, idx.predicate.as_deref(), except) {
            row.index = idx.name.clone();
            found.push(row);
        }
    }
    found
}

/// JSON and record text of the remote values of the readable columns (text converted by the
/// local types).
fn remote_rows(local: &LocalRel, values: &RemoteValues, only: Option<&[usize]>) -> (Option<String>, Option<String>) {
    let mut p = Params::new();
    let mut pairs = Vec::new();
    for i in 0..local.cols.len() {
        if only.is_some_and(|o| !o.contains(&i)) || !local.readable(i) {
            continue;
        }
        let Some(v) = values.get(i) else { continue };
        pairs.push((local.cols[i].name.clone(), p.typed(local, i, v.clone())));
    }
    let record = row_of(pairs.iter().map(|(_, e)| e.clone()).collect());
    let Some(json) = json_of(pairs) else { return (None, None) };
    let args = p.args();
    let r = Spi::connect(|c| {
        let row = c.select(&format!("SELECT ({json})::text, {record}"), Some(1), &args)?.first();
        Ok::<_, pgrx::spi::SpiError>((row.get::<String>(1)?, row.get::<String>(2)?))
    });
    match r {
        Ok(v) => v,
        Err(e) => report::error(Code::ERRCODE_INTERNAL_ERROR, format!("rendering the remote row: {e}"), None, None),
    }
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
/// it does not count — the first change to a copied row is not a conflict.
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
/// decides, and returns the type. Raises under `error`.
pub(super) fn insert_exists(local: &LocalRel, values: &RemoteValues, present: &[bool]) -> ConflictType {
    let rows = unique_conflicts(local, values, None);
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
    ctype
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
    let Some(row) = lookup(local, key_cols, key_values, false, None, None).into_iter().next() else {
        return (true, Vec::new());
    };
    let policy = policy();
    let mut found = Vec::new();
    let mut apply = true;
    if origin_differs(&row) {
        let wins = decide(&row);
        apply = wins;
        let rec = record(
            local,
            ConflictType::UpdateOriginDiffers,
            std::slice::from_ref(&row),
            new_values,
            if policy == Resolution::Error { "apply_remote" } else { resolution_name(policy, wins) },
            "Updating the row that was modified",
        );
        write(&rec);
        found.push(ConflictType::UpdateOriginDiffers);
    }
    if apply && (policy != Resolution::Error || retry) {
        let others = unique_conflicts(local, new_values, Some((row.tableoid, &row.ctid)));
        if !others.is_empty() {
            let ctype =
                if others.len() > 1 { ConflictType::MultipleUniqueConflicts } else { ConflictType::UpdateExists };
            let wins = policy != Resolution::Error && others.iter().all(decide);
            let rec = record(
                local,
                ctype,
                &others,
                new_values,
                resolution_name(policy, wins),
                "Updating would make a key that already exists",
            );
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
    let Some(row) = lookup(local, key_cols, key_values, false, None, None).into_iter().next() else {
        return (true, None);
    };
    if !origin_differs(&row) {
        return (true, None);
    }
    let policy = policy();
    let wins = decide(&row);
    let rec = record(
        local,
        ConflictType::DeleteOriginDiffers,
        std::slice::from_ref(&row),
        key_values,
        if policy == Resolution::Error { "apply_remote" } else { resolution_name(policy, wins) },
        "Deleting the row that was modified",
    );
    write(&rec);
    (wins, Some(ConflictType::DeleteOriginDiffers))
}

/// A missing row (logged by `execute::missing_row`): recorded, skipped under every policy.
pub(super) fn missing(op: &str, relation: &str, key: Option<&str>) {
    let ctype = if op == "UPDATE" { ConflictType::UpdateMissing } else { ConflictType::DeleteMissing };
    let key_json = key.map(|k| format!("{{\"key\": {}}}", json_string(k)));
    // The LOG line is missing_row's; only the log table's row is written here.
    super::execute::with_snapshot(|| {
        insert_log_row(&Record {
            ctype,
            relation: relation.to_string(),
            key: key_json,
            local_row: None,
            remote_row: None,
            resolution: "skip",
            local: None,
            what: String::new(),
            key_text: None,
            local_text: None,
            remote_text: None,
        })
    });
}

fn json_string(s: &str) -> String {
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
fn record(
    local: &LocalRel,
    ctype: ConflictType,
    rows: &[LocalRow],
    values: &RemoteValues,
    resolution: &'static str,
    what: &str,
) -> Record {
    let first = rows.first().cloned();
    let key_cols: Vec<usize> = match rows.first() {
        Some(r) => unique_indexes(local).into_iter().find(|i| i.name == r.index).map(|i| i.cols).unwrap_or_default(),
        None => Vec::new(),
    };
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
    Record {
        ctype,
        relation: first.as_ref().map(|r| r.relation.clone()).unwrap_or_else(|| local.qualified.clone()),
        key: if key_cols.is_empty() { None } else { remote_rows(local, values, Some(&key_cols)).0 },
        local_row,
        remote_row,
        resolution,
        local: first,
        what,
        key_text: key_text(local, values, &key_cols),
        local_text,
        remote_text,
    }
}

/// The message and detail of a conflict, in PostgreSQL 18's words.
fn describe(rec: &Record) -> (String, String) {
    let txn = STATE.with_borrow(|s| s.txn.clone());
    let msg = format!("pgsub: conflict detected on relation \"{}\": conflict={}", rec.relation, rec.ctype.as_str());
    let mut detail = rec.what.clone();
    if let Some(l) = &rec.local {
        let by = match l.origin {
            None => ", modified".into(),
            Some(0) => ", modified locally".into(),
            Some(o) => match origin_name(o) {
                Some(n) => format!(", modified by origin \"{n}\""),
                None => format!(", modified by origin {o}"),
            },
        };
        detail.push_str(&by);
        if let Some(x) = l.xid {
            detail.push_str(&format!(" in transaction {x}"));
        }
        if let Some(t) = l.commit_time {
            detail.push_str(&format!(" at {}", timestamp_text(t)));
        }
    }
    detail.push('.');
    let mut parts = Vec::new();
    if let Some(k) = &rec.key_text {
        parts.push(format!("Key {k}"));
    }
    if let Some(l) = &rec.local_text {
        let several = rec.local_text.as_deref().is_some_and(|t| t.contains("), ("));
        parts.push(format!("existing local row{} {l}", if several { "s" } else { "" }));
    }
    if let Some(r) = &rec.remote_text {
        parts.push(format!("remote row {r}"));
    }
    if !parts.is_empty() {
        detail.push_str(&format!("\n{}.", parts.join("; ")));
    }
    detail.push_str(&format!(
        "\nResolution: {}. Remote transaction {}{}, committed at {}, finishing at {}.",
        rec.resolution,
        txn.xid,
        txn.origin.as_deref().map(|o| format!(" from origin \"{o}\"")).unwrap_or_default(),
        timestamp_text(txn.commit_time),
        txn.finish_lsn
    ));
    (msg, detail)
}

fn timestamp_text(t: i64) -> String {
    // SAFETY: timestamptz_to_str formats any TimestampTz into a static buffer; copied at once.
    unsafe { CStr::from_ptr(pg_sys::timestamptz_to_str(t)) }.to_string_lossy().into_owned()
}

/// Logs a resolved conflict and inserts its row into `pgsub.conflict_log` (this transaction).
fn write(rec: &Record) {
    let (msg, detail) = describe(rec);
    report::log(PgLogLevel::LOG, Code::ERRCODE_SUCCESSFUL_COMPLETION, msg, Some(detail), None);
    insert_log_row(rec);
}

/// Stops apply with the conflict as an ERROR (policy `error`); its log-table row is written after
/// the abort.
fn raise(rec: Record) -> ! {
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
    super::xact(|| insert_log_row(&rec));
}

fn insert_log_row(rec: &Record) {
    let (subid, txn) = STATE.with_borrow(|s| (s.subid, s.txn.clone()));
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
fn unix_micros(t: i64) -> i64 {
    t + PG_EPOCH_UNIX_SECS * 1_000_000
}

/// Makes the remote row win over the rows that hold its key: the first becomes the remote row,
/// the others are deleted.
fn overwrite(local: &LocalRel, rows: &[LocalRow], values: &RemoteValues, present: &[bool]) {
    let Some((first, rest)) = rows.split_first() else { return };
    remove(local, rest);
    let mut p = Params::new();
    let sets: Vec<String> = (0..local.cols.len())
        .filter(|&i| present.get(i).copied().unwrap_or(false))
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

/// Deletes the given local rows.
fn remove(local: &LocalRel, rows: &[LocalRow]) {
    for r in rows {
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
