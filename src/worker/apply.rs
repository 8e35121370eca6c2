//! Applying decoded pgoutput changes to local tables through SPI.
//!
//! Each remote transaction becomes one local transaction (Begin → StartTransactionCommand +
//! SPI_connect, Commit → origin LSN/timestamp set, SPI_finish, CommitTransactionCommand). Remote
//! relations are mapped to local tables by schema-qualified name and remote columns to local
//! columns by name; values go through the local type's input (text) or receive (binary) function,
//! called through FmgrInfo cached per relation. Statements are prepared once per (relation,
//! operation, column set) with SPI_prepare + SPI_keepplan and reused; a local DDL change
//! (relcache invalidation) drops the mapping and its plans so they are rebuilt at next use.
//!
//! Runs of changes to one table are batched: INSERTs into one COPY, DELETEs by key and UPDATEs
//! that keep their key into one statement over `unnest` of array parameters whose RETURNING
//! ordinals tell which remote rows were found. A transaction whose batch failed is applied row by
//! row on retry (`row_by_row_for`), so that its error names the row.
//!
//! Row identity for UPDATE/DELETE is the remote replica identity: the key columns flagged in the
//! Relation message (primary key / USING INDEX), or every column for REPLICA IDENTITY FULL, where
//! one matching row is chosen by ctid (duplicates are legal there).
use super::{copyin, errctx};
use super::progress::Progress;
use crate::catalog::SubRel;
use crate::report;
use pgrx::memcxt::PgMemoryContexts;
use pgrx::prelude::*;
use pgsub_proto::client::quote_ident;
use pgsub_proto::pgoutput::{
    Begin, Commit, Delete, Insert, OldTuple, Relation, ReplicaIdentity, Truncate, TupleData, TupleValue, Update,
};
use pgsub_proto::Lsn;
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::sync::Mutex;

type Code = PgSqlErrorCode;

/// Local column a remote column maps to.
struct ColMap {
    name: String,
    typid: pg_sys::Oid,
    typmod: i32,
    input: Box<pg_sys::FmgrInfo>,
    receive: Option<Box<pg_sys::FmgrInfo>>,
    ioparam: pg_sys::Oid,
    /// `OPERATOR(schema.=)` for this type, when it has a default equality operator.
    eq_op: Option<String>,
    /// The array type of the column's type and the element layout, for batched DELETEs and
    /// UPDATEs (`None` when the type has no array type).
    array: Option<ArrayInfo>,
    /// Values are equal exactly when the text (and binary) forms received are equal, so that a
    /// repeated key in a run of UPDATEs is seen by comparing bytes: the local type compares by
    /// representation (integers, uuid, text and varchar under a deterministic collation, dates
    /// and timestamps) and the remote column has the same type.
    exact_key: bool,
}

#[derive(Clone, Copy)]
struct ArrayInfo {
    typid: pg_sys::Oid,
    elem_len: i16,
    elem_byval: bool,
    elem_align: std::ffi::c_char,
}

#[derive(Clone, Hash, PartialEq, Eq)]
enum PlanKey {
    Insert(Vec<bool>),
    Update { set: Vec<bool>, key: Vec<bool> },
    Delete { key: Vec<bool> },
    /// DELETE of many rows at once: one array parameter per key column.
    DeleteBatch { key: Vec<bool> },
    /// UPDATE of many rows at once: one array parameter per set column, then per key column.
    UpdateBatch { set: Vec<bool>, key: Vec<bool> },
}

/// A remote relation bound to its local table.
struct LocalRel {
    relid: pg_sys::Oid,
    /// `"schema"."name"`, quoted.
    qualified: String,
    /// `ONLY ` for plain tables (partitioned tables route to their partitions).
    only: &'static str,
    cols: Vec<ColMap>,
    plans: HashMap<PlanKey, pg_sys::SPIPlanPtr>,
}

struct RelEntry {
    remote: Relation,
    local: Option<LocalRel>,
    /// `"schema"."name"` of the remote relation, for error context.
    display: std::rc::Rc<str>,
}

/// A run of INSERTs into one relation, waiting to be loaded together.
struct InsertBatch {
    rel_oid: u32,
    rows: Vec<Insert>,
    bytes: usize,
}

const BATCH_MAX_ROWS: usize = 10_000;
const BATCH_MAX_BYTES: usize = 8 << 20;
/// A run of DELETEs from one table by the same key columns, applied with one statement.
struct DeleteBatch {
    rel_oid: u32,
    key: Vec<bool>,
    rows: Vec<Delete>,
}

const DELETE_BATCH_MAX_ROWS: usize = 1000;

/// A run of UPDATEs of one table that keep their key, with the same key and set columns and no
/// key twice, applied with one statement.
struct UpdateBatch {
    rel_oid: u32,
    set: Vec<bool>,
    key: Vec<bool>,
    rows: Vec<Update>,
    /// Bytes of the new values in `rows` (the run is applied before it holds too much).
    bytes: usize,
    /// The key values of `rows`, as received: a key seen twice ends the run, because one
    /// `UPDATE … FROM` changes a row once however many source rows match it.
    seen: HashSet<Vec<u8>>,
}

const UPDATE_BATCH_MAX_ROWS: usize = 1000;
/// The values are held three times while a run is applied (received, converted, in the array
/// parameters): a run of wide rows ends early.
const UPDATE_BATCH_MAX_BYTES: usize = 4 << 20;
/// Fewer rows than this go through the prepared one-row UPDATE instead.
const UPDATE_BATCH_MIN_ROWS: usize = 4;
/// Fewer rows than this go through the prepared INSERT instead of COPY.
const BATCH_MIN_COPY_ROWS: usize = 8;

/// Relations whose local mapping must be rebuilt (set by the relcache callback).
static INVALIDATED: Mutex<Option<HashSet<u32>>> = Mutex::new(None);
static INVALIDATE_ALL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    if relid == pg_sys::InvalidOid {
        INVALIDATE_ALL.store(true, std::sync::atomic::Ordering::Relaxed);
    } else if let Ok(mut g) = INVALIDATED.lock() {
        g.get_or_insert_with(HashSet::new).insert(relid.to_u32());
    }
}

/// Which tables the subscription applies changes to, by remote (schema, name).
pub struct TableStates {
    states: HashMap<(String, String), (char, Option<Lsn>)>,
}

impl TableStates {
    pub fn new(rels: &[SubRel]) -> Self {
        TableStates {
            states: rels
                .iter()
                .map(|r| ((r.remote_schema.clone(), r.remote_name.clone()), (r.sync_state, r.state_lsn)))
                .collect(),
        }
    }

    /// Marks synchronized tables whose copy point the stream has passed as ready (in the current
    /// transaction, so the state moves together with the applied position).
    fn mark_ready(&mut self, subid: i32, end: Lsn) {
        let due: Vec<(String, String)> = self
            .states
            .iter()
            .filter(|(_, (st, lsn))| *st == 's' && lsn.is_some_and(|l| l <= end))
            .map(|(k, _)| k.clone())
            .collect();
        for (schema, name) in due {
            let r = crate::catalog::as_superuser(|| {
                Spi::run_with_args(
                    "UPDATE pgsub.sub_rel SET sync_state = 'r' WHERE subid = $1 AND remote_schema = $2 AND remote_name = $3",
                    &[subid.into(), schema.as_str().into(), name.as_str().into()],
                )
            });
            if let Err(e) = r {
                report::error(Code::ERRCODE_INTERNAL_ERROR, format!("updating pgsub.sub_rel: {e}"), None, None);
            }
            self.states.insert((schema, name), ('r', None));
        }
    }

    fn any_synchronized(&self) -> bool {
        self.states.values().any(|(st, _)| *st == 's')
    }

    /// Native `should_apply_changes_for_rel`: ready tables always; tables synchronized by a copy
    /// only for transactions that end after the copy's snapshot; other tables not at all.
    fn applies(&self, schema: &str, name: &str, commit_end: Lsn) -> bool {
        match self.states.get(&(schema.to_string(), name.to_string())) {
            Some(('r', _)) => true,
            Some(('s', Some(lsn))) => commit_end >= *lsn,
            _ => false,
        }
    }
}

pub struct Applier {
    rels: HashMap<u32, RelEntry>,
    pub tables: TableStates,
    pub in_txn: bool,
    skipping: bool,
    /// origin = none: skip transactions that carry an Origin message.
    skip_foreign_origin: bool,
    binary: bool,
    skip_lsn: Option<Lsn>,
    subid: i32,
    begin: Option<Begin>,
    msg_cxt: PgMemoryContexts,
    batch: Option<InsertBatch>,
    deletes: Option<DeleteBatch>,
    updates: Option<UpdateBatch>,
    /// Rows deleted / updated / not found by batched DELETEs and UPDATEs, not yet added to the
    /// counters.
    batched_deleted: i64,
    batched_updated: i64,
    batched_missing: i64,
    /// Finish LSN of a remote transaction whose INSERTs, UPDATEs and DELETEs go one by one
    /// instead of in batches.
    row_by_row_lsn: Option<Lsn>,
}

fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

impl Applier {
    pub fn new(subid: i32, tables: TableStates, binary: bool, origin_none: bool, skip_lsn: Option<Lsn>) -> Self {
        // SAFETY: registering a static callback once per worker process.
        unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0)) };
        Applier {
            rels: HashMap::new(),
            tables,
            in_txn: false,
            skipping: false,
            skip_foreign_origin: origin_none,
            binary,
            skip_lsn,
            subid,
            begin: None,
            msg_cxt: PgMemoryContexts::new("pgsub apply message"),
            batch: None,
            deletes: None,
            updates: None,
            batched_deleted: 0,
            batched_updated: 0,
            batched_missing: 0,
            row_by_row_lsn: None,
        }
    }

    /// Applies the INSERTs, UPDATEs and DELETEs of the remote transaction that finishes at `lsn` one by one
    /// (set after a batch of that transaction failed, so that the retry's error names the row's
    /// column).
    pub fn row_by_row_for(&mut self, lsn: Lsn) {
        self.row_by_row_lsn = lsn.is_valid().then_some(lsn);
    }

    pub fn on_relation(&mut self, rel: Relation) {
        self.flush_batches();
        // A new definition replaces the old one and its plans.
        if let Some(old) = self.rels.remove(&rel.oid) {
            if let Some(l) = old.local {
                free_plans(l.plans);
            }
        }
        let display: std::rc::Rc<str> = format!("{}.{}", quote_ident(&rel.namespace), quote_ident(&rel.name)).into();
        self.rels.insert(rel.oid, RelEntry { remote: rel, local: None, display });
    }

    pub fn begin(&mut self, b: Begin, progress: &mut Progress) {
        if self.in_txn {
            report::error(
                Code::ERRCODE_PROTOCOL_VIOLATION,
                "BEGIN received while a remote transaction is open",
                None,
                None,
            );
        }
        errctx::set_txn(b.xid, b.final_lsn);
        self.skipping = self.skip_lsn == Some(b.final_lsn);
        if self.skipping {
            report::log(
                PgLogLevel::LOG,
                Code::ERRCODE_SUCCESSFUL_COMPLETION,
                format!(
                    "pgsub: skipping remote transaction {} that finishes at {} (skip_lsn)",
                    b.xid, b.final_lsn
                ),
                None,
                None,
            );
        }
        progress.pending_commit_time = b.commit_time;
        // The walsender's XLogData header carries only the record's own LSN; the commit LSN in
        // BEGIN is the furthest publisher position we know of until the transaction is applied.
        progress.on_frame(Lsn::INVALID, b.final_lsn, 0);
        // SAFETY: standard transaction start in a background worker; SPI inside it.
        unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::StartTransactionCommand();
            if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
                report::error(Code::ERRCODE_INTERNAL_ERROR, "SPI_connect failed", None, None);
            }
        }
        self.in_txn = true;
        self.begin = Some(b);
        self.refresh_invalidated();
    }

    /// ORIGIN: the transaction came to the publisher from another node; with origin = 'none'
    /// it is skipped (publishers before 16 cannot filter it themselves).
    pub fn origin(&mut self, _name: &str) {
        if self.skip_foreign_origin && self.in_txn && !self.skipping {
            self.skipping = true;
        }
    }

    pub fn commit(&mut self, c: Commit, progress: &mut Progress) {
        if !self.in_txn {
            report::error(Code::ERRCODE_PROTOCOL_VIOLATION, "COMMIT received outside a transaction", None, None);
        }
        self.flush_batches();
        self.drain_counts(progress);
        errctx::set_message("COMMIT", None);
        let skipped = self.skipping;
        // SAFETY: closing SPI and committing the transaction opened in `begin`; the origin
        // position goes into the commit record.
        let local_end = unsafe {
            if skipped && self.skip_lsn.is_some() && Some(c.commit_lsn) == self.skip_lsn {
                // Done skipping: forget skip_lsn in the same transaction.
                let r = with_snapshot(|| crate::catalog::clear_skip_lsn(self.subid, c.commit_lsn));
                if let Err(e) = r {
                    report::error(Code::ERRCODE_INTERNAL_ERROR, format!("clearing skip_lsn: {e}"), None, None);
                }
                self.skip_lsn = None;
            }
            if self.tables.any_synchronized() {
                let subid = self.subid;
                with_snapshot(|| self.tables.mark_ready(subid, c.end_lsn));
            }
            pg_sys::SPI_finish();
            pg_sys::replorigin_session_origin_lsn = c.end_lsn.0;
            pg_sys::replorigin_session_origin_timestamp = c.commit_time;
            pg_sys::CommitTransactionCommand();
            pg_sys::replorigin_session_origin_lsn = 0;
            pg_sys::replorigin_session_origin_timestamp = 0;
            Lsn(pg_sys::XactLastCommitEnd)
        };
        super::report_stats(false);
        self.in_txn = false;
        self.skipping = false;
        self.begin = None;
        if skipped {
            progress.counters.skipped += 1;
        }
        progress.on_commit(c.end_lsn, local_end, c.commit_time);
        errctx::clear();
    }

    /// Aborts the local transaction (used when the worker stops mid-transaction).
    pub fn abort(&mut self) {
        self.batch = None;
        self.deletes = None;
        self.updates = None;
        if self.in_txn {
            // SAFETY: abort of our own transaction; SPI is cleaned up by the abort.
            unsafe { pg_sys::AbortCurrentTransaction() };
            self.in_txn = false;
        }
    }

    /// PREPARE (two-phase): the applied changes become a local prepared transaction named after
    /// the subscription and the remote xid, with the origin position of the prepare.
    pub fn prepare(&mut self, xid: u32, end_lsn: Lsn, prepare_time: i64, progress: &mut Progress) {
        if !self.in_txn {
            report::error(Code::ERRCODE_PROTOCOL_VIOLATION, "PREPARE received outside a transaction", None, None);
        }
        self.flush_batches();
        self.drain_counts(progress);
        errctx::set_message("PREPARE", None);
        let gid = cstring(&local_gid(self.subid, xid));
        // A skipped transaction is still prepared (empty), as natively: COMMIT/ROLLBACK PREPARED
        // will come for it and must find it.
        let skipped = self.skipping && self.skip_lsn.is_some() && self.skip_lsn == Some(self.commit_end());
        // SAFETY: the same sequence as PostgreSQL's own apply worker: a transaction block is
        // opened so that PrepareTransactionBlock has one to end, then prepared.
        let local_end = unsafe {
            pg_sys::SPI_finish();
            pg_sys::BeginTransactionBlock();
            pg_sys::CommitTransactionCommand();
            pg_sys::replorigin_session_origin_lsn = end_lsn.0;
            pg_sys::replorigin_session_origin_timestamp = prepare_time;
            pg_sys::PrepareTransactionBlock(gid.as_ptr());
            pg_sys::CommitTransactionCommand();
            pg_sys::replorigin_session_origin_lsn = 0;
            pg_sys::replorigin_session_origin_timestamp = 0;
            Lsn(pg_sys::XactLastCommitEnd)
        };
        super::report_stats(false);
        let skip_done = self.commit_end();
        self.in_txn = false;
        self.skipping = false;
        self.begin = None;
        if skipped {
            // Done skipping: forget skip_lsn, after the prepare (its own transaction, as native
            // clear_subscription_skip_lsn does; the prepared transaction must not hold the
            // catalog row).
            let r = super::xact(|| crate::catalog::clear_skip_lsn(self.subid, skip_done));
            if let Err(e) = r {
                report::error(Code::ERRCODE_INTERNAL_ERROR, format!("clearing skip_lsn: {e}"), None, None);
            }
            self.skip_lsn = None;
            progress.counters.skipped += 1;
        }
        progress.on_commit(end_lsn, local_end, prepare_time);
        errctx::clear();
    }

    /// COMMIT PREPARED / ROLLBACK PREPARED of a transaction prepared earlier.
    pub fn finish_prepared(&mut self, xid: u32, commit: bool, end_lsn: Lsn, time: i64, progress: &mut Progress) {
        errctx::set_message(if commit { "COMMIT PREPARED" } else { "ROLLBACK PREPARED" }, None);
        let gid_s = local_gid(self.subid, xid);
        let gid = cstring(&gid_s);
        // SAFETY: finishing our own prepared transaction inside a fresh local transaction whose
        // commit carries the origin position.
        let local_end = unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::StartTransactionCommand();
            let exists = with_snapshot(|| {
                Spi::get_one_with_args::<bool>(
                    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_xacts WHERE gid = $1)",
                    &[gid_s.as_str().into()],
                )
                .ok()
                .flatten()
                .unwrap_or(false)
            });
            if exists {
                pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| FinishPreparedTransaction(gid.as_ptr(), commit));
            } else if commit {
                report::error(
                    Code::ERRCODE_UNDEFINED_OBJECT,
                    format!("prepared transaction \"{gid_s}\" does not exist"),
                    None,
                    None,
                );
            }
            pg_sys::replorigin_session_origin_lsn = end_lsn.0;
            pg_sys::replorigin_session_origin_timestamp = time;
            pg_sys::CommitTransactionCommand();
            pg_sys::replorigin_session_origin_lsn = 0;
            pg_sys::replorigin_session_origin_timestamp = 0;
            Lsn(pg_sys::XactLastCommitEnd)
        };
        super::report_stats(false);
        progress.on_commit(end_lsn, local_end, time);
        errctx::clear();
    }

    fn commit_end(&self) -> Lsn {
        self.begin.as_ref().map(|b| b.final_lsn).unwrap_or_default()
    }

    fn require_txn(&self, what: &str) {
        if !self.in_txn {
            report::error(
                Code::ERRCODE_PROTOCOL_VIOLATION,
                format!("{what} received outside a transaction"),
                None,
                None,
            );
        }
    }

    /// The relation's entry, bound to its local table; None when changes to it are not applied.
    fn target(&mut self, rel_oid: u32) -> Option<&mut RelEntry> {
        let commit_end = self.commit_end();
        let skipping = self.skipping;
        let Some(entry) = self.rels.get_mut(&rel_oid) else {
            report::error(
                Code::ERRCODE_PROTOCOL_VIOLATION,
                format!("change for relation with OID {rel_oid} that was not described by a RELATION message"),
                None,
                None,
            );
        };
        errctx::set_message("", Some(entry.display.clone()));
        if skipping || !self.tables.applies(&entry.remote.namespace, &entry.remote.name, commit_end) {
            return None;
        }
        if entry.local.is_none() {
            let binary = self.binary;
            entry.local = Some(with_snapshot(|| bind_local(&entry.remote, binary)));
        }
        Some(entry)
    }

    fn refresh_invalidated(&mut self) {
        let all = INVALIDATE_ALL.swap(false, std::sync::atomic::Ordering::Relaxed);
        let set = INVALIDATED.lock().ok().and_then(|mut g| g.take()).unwrap_or_default();
        if !all && set.is_empty() {
            return;
        }
        for e in self.rels.values_mut() {
            let stale = match &e.local {
                Some(l) => all || set.contains(&l.relid.to_u32()),
                None => false,
            };
            if stale {
                if let Some(l) = e.local.take() {
                    free_plans(l.plans);
                }
            }
        }
    }

    /// INSERT: consecutive inserts into one table are collected and loaded together with COPY
    /// (`flush_inserts`) when the run ends — at any other change, at commit, or when the batch
    /// is full.
    pub fn insert(&mut self, m: Insert, progress: &mut Progress) {
        self.require_txn("INSERT");
        if self.deletes.is_some() || self.updates.is_some() {
            self.flush_deletes();
            self.flush_updates();
            self.drain_counts(progress);
        }
        if self.batch.as_ref().is_some_and(|b| b.rel_oid != m.rel_oid) {
            self.flush_inserts();
        }
        errctx::set_message("INSERT", None);
        let Some(entry) = self.target(m.rel_oid) else { return };
        if entry.local.is_none() {
            return;
        }
        check_width(&entry.remote, &m.new, "new tuple");
        let batch = self.batch.get_or_insert_with(|| InsertBatch { rel_oid: m.rel_oid, rows: Vec::new(), bytes: 0 });
        batch.bytes += m.new.columns.iter().map(|v| v.as_bytes().map_or(0, |b| b.len())).sum::<usize>();
        batch.rows.push(m);
        progress.counters.inserts += 1;
        if batch.rows.len() >= BATCH_MAX_ROWS || batch.bytes >= BATCH_MAX_BYTES {
            self.flush_inserts();
        }
    }

    /// Applies the collected inserts: through COPY for a real run, one by one for a few rows.
    pub fn flush_inserts(&mut self) {
        let Some(batch) = self.batch.take() else { return };
        // A COPY error names neither the remote row nor the column: the transaction whose batch
        // failed last time is applied row by row, so that its error names them.
        if batch.rows.len() < BATCH_MIN_COPY_ROWS || self.row_by_row_lsn == Some(self.commit_end()) {
            for m in batch.rows {
                with_snapshot(|| self.insert_one(m));
            }
            return;
        }
        let Some(entry) = self.rels.get(&batch.rel_oid) else { return };
        let Some(local) = entry.local.as_ref() else { return };
        errctx::set_message("INSERT", Some(entry.display.clone()));
        // One COPY format for the whole batch: binary when every value came binary, text when
        // every value came as text; otherwise row by row.
        let all = |f: fn(&TupleValue) -> bool| batch.rows.iter().all(|m| m.new.columns.iter().all(f));
        let binary = if all(|v| matches!(v, TupleValue::Text(_) | TupleValue::Null)) {
            false
        } else if all(|v| matches!(v, TupleValue::Binary(_) | TupleValue::Null)) {
            true
        } else {
            for m in batch.rows {
                with_snapshot(|| self.insert_one(m));
            }
            return;
        };
        let columns: Vec<String> = local.cols.iter().map(|c| c.name.clone()).collect();
        let relid = local.relid;
        errctx::set_kind(errctx::COPY_BATCH);
        let mut buf = Vec::with_capacity(batch.bytes + batch.rows.len() * (8 + 4 * local.cols.len()) + 32);
        if binary {
            buf.extend_from_slice(copyin::BINARY_HEADER);
        }
        for m in &batch.rows {
            if binary {
                buf.extend_from_slice(&(m.new.columns.len() as i16).to_be_bytes());
            }
            for (i, v) in m.new.columns.iter().enumerate() {
                let value = v.as_bytes().map(|b| b.as_ref());
                if binary {
                    copyin::push_binary_value(&mut buf, value);
                } else {
                    if i > 0 {
                        buf.push(b'\t');
                    }
                    copyin::push_text_value(&mut buf, value);
                }
            }
            if !binary {
                buf.push(b'\n');
            }
        }
        if binary {
            buf.extend_from_slice(copyin::BINARY_TRAILER);
        }
        // One COPY FROM call per run (bench/NOTES.md, 1: smaller calls save CPU in the resource
        // owner but not time, and cost memory).
        with_snapshot(|| copyin::copy_into(relid, &columns, buf, binary));
    }

    /// One INSERT through its prepared plan.
    fn insert_one(&mut self, m: Insert) {
        errctx::set_message("INSERT", None);
        let binary = self.binary;
        let cxt = self.msg_cxt.value();
        let Some(entry) = self.target(m.rel_oid) else { return };
        let RelEntry { remote, local, .. } = entry;
        let Some(local) = local.as_mut() else { return };
        let present: Vec<bool> = m.new.columns.iter().map(|v| !matches!(v, TupleValue::UnchangedToast)).collect();
        let plan = local.plan(PlanKey::Insert(present.clone()), remote);
        let mut values = Vec::new();
        let mut nulls = Vec::new();
        in_context(cxt, || {
            for (i, v) in m.new.columns.iter().enumerate() {
                if present[i] {
                    let (d, n) = local.cols[i].datum(v, binary);
                    values.push(d);
                    nulls.push(n);
                }
            }
            execute(plan, &mut values, &nulls, pg_sys::SPI_OK_INSERT as i32);
        });
    }

    /// UPDATE: consecutive updates of one table that keep their key (no old tuple sent), set the
    /// same columns and touch distinct keys are collected and applied with one statement
    /// (`flush_updates`); the others go one by one, in order, after the collected run.
    pub fn update(&mut self, m: Update, progress: &mut Progress) {
        self.require_txn("UPDATE");
        self.flush_inserts();
        self.flush_deletes();
        if self.updates.as_ref().is_some_and(|b| b.rel_oid != m.rel_oid) {
            self.flush_updates();
        }
        self.drain_counts(progress);
        let batching = self.row_by_row_lsn != Some(self.commit_end());
        let Some(entry) = self.target(m.rel_oid) else { return };
        errctx::set_kind("UPDATE");
        let RelEntry { remote, local, .. } = entry;
        let Some(local) = local.as_mut() else { return };
        check_width(remote, &m.new, "new tuple");
        if let Some(OldTuple::Key(t) | OldTuple::Full(t)) = &m.old {
            check_width(remote, t, "old tuple");
        }
        let full = remote.replica_identity == ReplicaIdentity::Full;
        let batch_shape = if batching && !full && m.old.is_none() {
            let key = key_mask(remote, &m.new, false, &local.cols);
            // The key is unchanged and its values are exact (`ColMap::exact_key`): only the
            // other columns are set.
            let set: Vec<bool> = set_mask(&m.new).iter().zip(&key).map(|(s, k)| *s && !*k).collect();
            let fits = set.iter().any(|s| *s)
                && local.cols.iter().enumerate().all(|(i, c)| {
                    (!key[i] || (c.exact_key && c.array.is_some())) && (!set[i] || c.array.is_some())
                });
            fits.then(|| {
                let id = key_bytes(&m.new, &key);
                (set, key, id)
            })
        } else {
            None
        };
        let Some((set, key, id)) = batch_shape else {
            self.flush_updates();
            self.drain_counts(progress);
            match with_snapshot(|| self.update_one(&m)) {
                Some(true) => progress.counters.updates += 1,
                Some(false) => progress.counters.conflicts += 1,
                None => {}
            }
            return;
        };
        let fits = self.updates.as_ref().is_some_and(|b| b.set == set && b.key == key && !b.seen.contains(&id));
        if !fits {
            self.flush_updates();
            self.drain_counts(progress);
            self.updates =
                Some(UpdateBatch { rel_oid: m.rel_oid, set, key, rows: Vec::new(), bytes: 0, seen: HashSet::new() });
        }
        let full_batch = self.updates.as_mut().is_some_and(|b| {
            b.seen.insert(id);
            b.bytes += m.new.columns.iter().map(|v| v.as_bytes().map_or(0, |x| x.len())).sum::<usize>();
            b.rows.push(m);
            b.rows.len() >= UPDATE_BATCH_MAX_ROWS || b.bytes >= UPDATE_BATCH_MAX_BYTES
        });
        if full_batch {
            self.flush_updates();
            self.drain_counts(progress);
        }
    }

    /// One UPDATE through its prepared plan: Some(found the row), None when not applied here.
    fn update_one(&mut self, m: &Update) -> Option<bool> {
        let binary = self.binary;
        let cxt = self.msg_cxt.value();
        let entry = self.target(m.rel_oid)?;
        errctx::set_kind("UPDATE");
        let RelEntry { remote, local, .. } = entry;
        let local = local.as_mut()?;
        let full = remote.replica_identity == ReplicaIdentity::Full;
        // Key values: from the old tuple when sent (key changed, or identity FULL), else the new one.
        let key_src: &TupleData = match &m.old {
            Some(OldTuple::Key(t)) | Some(OldTuple::Full(t)) => t,
            None => &m.new,
        };
        let key = key_mask(remote, key_src, full, &local.cols);
        let set = set_mask(&m.new);
        let plan = local.plan(PlanKey::Update { set: set.clone(), key: key.clone() }, remote);
        let mut values = Vec::new();
        let mut nulls = Vec::new();
        let processed = in_context(cxt, || {
            for (i, v) in m.new.columns.iter().enumerate() {
                if set[i] {
                    let (d, n) = local.cols[i].datum(v, binary);
                    values.push(d);
                    nulls.push(n);
                }
            }
            for (i, v) in key_src.columns.iter().enumerate() {
                if key[i] {
                    let (d, n) = local.cols[i].datum(v, binary);
                    values.push(d);
                    nulls.push(n);
                }
            }
            execute(plan, &mut values, &nulls, pg_sys::SPI_OK_UPDATE as i32)
        });
        if processed == 0 {
            let target = with_snapshot(|| local.row_target(key_src, &key, binary, cxt));
            missing_row("UPDATE", &target);
        }
        Some(processed > 0)
    }

    /// Applies the collected updates with one `UPDATE … FROM unnest(…) WITH ORDINALITY …
    /// RETURNING` statement: each set and key column's values go in as one array, and the
    /// ordinals that come back tell which remote rows were found (a row not found is a conflict,
    /// logged like a single UPDATE's). A short run goes one by one.
    pub fn flush_updates(&mut self) {
        let Some(batch) = self.updates.take() else { return };
        if batch.rows.len() < UPDATE_BATCH_MIN_ROWS {
            for m in &batch.rows {
                match with_snapshot(|| self.update_one(m)) {
                    Some(true) => self.batched_updated += 1,
                    Some(false) => self.batched_missing += 1,
                    None => {}
                }
            }
            return;
        }
        let binary = self.binary;
        let cxt = self.msg_cxt.value();
        let Some(entry) = self.rels.get_mut(&batch.rel_oid) else { return };
        let RelEntry { remote, local, display } = entry;
        let Some(local) = local.as_mut() else { return };
        errctx::set_message("UPDATE", Some(display.clone()));
        errctx::set_kind(errctx::UPDATE_BATCH);
        let n = batch.rows.len();
        let params: Vec<usize> = batch
            .set
            .iter()
            .enumerate()
            .filter(|(_, s)| **s)
            .chain(batch.key.iter().enumerate().filter(|(_, k)| **k))
            .map(|(i, _)| i)
            .collect();
        let found = with_snapshot(|| {
            let plan = local.plan(PlanKey::UpdateBatch { set: batch.set.clone(), key: batch.key.clone() }, remote);
            in_context(cxt, || {
                let mut values: Vec<pg_sys::Datum> = params
                    .iter()
                    .map(|&c| local.cols[c].array_of(batch.rows.iter().map(|m| m.new.columns.get(c)), n, binary))
                    .collect();
                run_batch(plan, &mut values, pg_sys::SPI_OK_UPDATE_RETURNING as i32, n)
            })
        });
        let target = |i: usize| with_snapshot(|| local.row_target(&batch.rows[i].new, &batch.key, binary, cxt));
        tally(&found, "UPDATE", target, &mut self.batched_updated, &mut self.batched_missing);
        errctx::set_kind("");
    }

    /// DELETE: consecutive deletes from one table by the same key columns are collected and
    /// applied with one statement (`flush_deletes`) when the run ends; deletes that cannot be
    /// batched (REPLICA IDENTITY FULL, a key type without an array type) go one by one.
    pub fn delete(&mut self, m: Delete, progress: &mut Progress) {
        self.require_txn("DELETE");
        self.flush_inserts();
        self.flush_updates();
        if self.deletes.as_ref().is_some_and(|b| b.rel_oid != m.rel_oid) {
            self.flush_deletes();
        }
        self.drain_counts(progress);
        let batching = self.row_by_row_lsn != Some(self.commit_end());
        let binary = self.binary;
        let cxt = self.msg_cxt.value();
        let Some(entry) = self.target(m.rel_oid) else { return };
        errctx::set_kind("DELETE");
        let RelEntry { remote, local, .. } = entry;
        let Some(local) = local.as_mut() else { return };
        let full = remote.replica_identity == ReplicaIdentity::Full;
        let old = match &m.old {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        };
        check_width(remote, old, "old tuple");
        let key = key_mask(remote, old, full, &local.cols);
        let batchable = batching
            && !full
            && key.iter().any(|k| *k)
            && key.iter().zip(&local.cols).all(|(k, c)| !*k || c.array.is_some());
        if batchable {
            let same = self.deletes.as_ref().is_some_and(|b| b.key == key);
            if !same {
                self.flush_deletes();
                self.drain_counts(progress);
                self.deletes = Some(DeleteBatch { rel_oid: m.rel_oid, key, rows: Vec::new() });
            }
            let full_batch = self.deletes.as_mut().is_some_and(|b| {
                b.rows.push(m);
                b.rows.len() >= DELETE_BATCH_MAX_ROWS
            });
            if full_batch {
                self.flush_deletes();
                self.drain_counts(progress);
            }
            return;
        }
        let processed = with_snapshot(|| {
            let plan = local.plan(PlanKey::Delete { key: key.clone() }, remote);
            let mut values = Vec::new();
            let mut nulls = Vec::new();
            in_context(cxt, || {
                for (i, v) in old.columns.iter().enumerate() {
                    if key[i] {
                        let (d, n) = local.cols[i].datum(v, binary);
                        values.push(d);
                        nulls.push(n);
                    }
                }
                execute(plan, &mut values, &nulls, pg_sys::SPI_OK_DELETE as i32)
            })
        });
        if processed == 0 {
            progress.counters.conflicts += 1;
            let target = with_snapshot(|| local.row_target(old, &key, binary, cxt));
            missing_row("DELETE", &target);
        } else {
            progress.counters.deletes += 1;
        }
    }

    /// Applies the collected deletes with one `DELETE … USING unnest(…) WITH ORDINALITY …
    /// RETURNING` statement: each key column's values go in as one array, and the ordinals that
    /// come back tell which remote rows were found. A row not found is a conflict, logged like a
    /// single DELETE's; a key that occurs twice in the run finds its row once, as two single
    /// DELETEs would.
    pub fn flush_deletes(&mut self) {
        let Some(batch) = self.deletes.take() else { return };
        let binary = self.binary;
        let cxt = self.msg_cxt.value();
        let Some(entry) = self.rels.get_mut(&batch.rel_oid) else { return };
        let RelEntry { remote, local, display } = entry;
        let Some(local) = local.as_mut() else { return };
        errctx::set_message("DELETE", Some(display.clone()));
        errctx::set_kind(errctx::DELETE_BATCH);
        let n = batch.rows.len();
        let key_cols: Vec<usize> = batch.key.iter().enumerate().filter(|(_, k)| **k).map(|(i, _)| i).collect();
        let found = with_snapshot(|| {
            let plan = local.plan(PlanKey::DeleteBatch { key: batch.key.clone() }, remote);
            in_context(cxt, || {
                let mut values: Vec<pg_sys::Datum> = key_cols
                    .iter()
                    .map(|&c| {
                        let olds = batch.rows.iter().map(|m| {
                            let (OldTuple::Key(t) | OldTuple::Full(t)) = &m.old;
                            t.columns.get(c)
                        });
                        local.cols[c].array_of(olds, n, binary)
                    })
                    .collect();
                run_batch(plan, &mut values, pg_sys::SPI_OK_DELETE_RETURNING as i32, n)
            })
        });
        let target = |i: usize| {
            let (OldTuple::Key(t) | OldTuple::Full(t)) = &batch.rows[i].old;
            with_snapshot(|| local.row_target(t, &batch.key, binary, cxt))
        };
        tally(&found, "DELETE", target, &mut self.batched_deleted, &mut self.batched_missing);
        errctx::set_kind("");
    }

    fn flush_batches(&mut self) {
        self.flush_inserts();
        self.flush_updates();
        self.flush_deletes();
    }

    /// Adds what batched DELETEs and UPDATEs did to the counters.
    fn drain_counts(&mut self, progress: &mut Progress) {
        progress.counters.deletes += std::mem::take(&mut self.batched_deleted);
        progress.counters.updates += std::mem::take(&mut self.batched_updated);
        progress.counters.conflicts += std::mem::take(&mut self.batched_missing);
    }

    pub fn truncate(&mut self, m: Truncate, progress: &mut Progress) {
        self.require_txn("TRUNCATE");
        self.flush_batches();
        self.drain_counts(progress);
        errctx::set_message("TRUNCATE", None);
        let mut targets = Vec::new();
        for oid in &m.rel_oids {
            if let Some(entry) = self.target(*oid) {
                if let Some(l) = &entry.local {
                    targets.push(format!("{}{}", l.only, l.qualified));
                }
            }
        }
        errctx::set_message("TRUNCATE", None);
        if targets.is_empty() {
            return;
        }
        // Like native: never cascade further on the subscriber.
        let sql = format!(
            "TRUNCATE {}{}",
            targets.join(", "),
            if m.restart_identity { " RESTART IDENTITY" } else { "" }
        );
        if let Err(e) = Spi::run(&sql) {
            report::error(Code::ERRCODE_INTERNAL_ERROR, format!("TRUNCATE failed: {e}"), None, None);
        }
        progress.counters.truncates += targets.len() as i64;
    }
}

extern "C-unwind" {
    // twophase.h (not in pgrx's bindings): finishes a prepared transaction by gid.
    fn FinishPreparedTransaction(gid: *const std::ffi::c_char, is_commit: bool);
}

/// Name of the local prepared transaction for remote transaction `xid`.
pub fn local_gid(subid: i32, xid: u32) -> String {
    format!("pgsub_{subid}_{xid}")
}

/// The LOG line of an UPDATE or DELETE whose row is not there; `rel` is what
/// `LocalRel::row_target` names (the leaf partition of a partitioned target, as natively).
fn missing_row(op: &str, rel: &str) {
    report::log(
        PgLogLevel::LOG,
        Code::ERRCODE_NO_DATA_FOUND,
        format!("pgsub: logical replication did not find row to be {}d in replication target relation {rel}", op.to_lowercase()),
        Some(errctx::describe()),
        None,
    );
}

fn check_width(remote: &Relation, t: &TupleData, what: &str) {
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

/// Which columns identify the row: the remote key columns (all columns for FULL) whose value was
/// sent and, for FULL, whose type has an equality operator.
fn key_mask(remote: &Relation, t: &TupleData, full: bool, cols: &[ColMap]) -> Vec<bool> {
    let mask: Vec<bool> = remote
        .columns
        .iter()
        .zip(t.columns.iter())
        .zip(cols.iter())
        .map(|((rc, v), lc)| {
            let sent = !matches!(v, TupleValue::UnchangedToast);
            if full {
                if sent && lc.eq_op.is_none() && !matches!(v, TupleValue::Null) {
                    // Native tuples_equal cannot compare such a value either, and says so.
                    no_equality(lc.typid);
                }
                sent
            } else {
                rc.is_key && sent
            }
        })
        .collect();
    if !mask.iter().any(|b| *b) {
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

/// The error of PostgreSQL's `tuples_equal` for a REPLICA IDENTITY FULL column whose type has no
/// equality operator (json, point, …): the row cannot be identified.
fn no_equality(typid: pg_sys::Oid) -> ! {
    // SAFETY: format_type_be returns a palloc'd C string for any type OID.
    let name = unsafe { std::ffi::CStr::from_ptr(pg_sys::format_type_be(typid)) }.to_string_lossy().into_owned();
    report::error(
        Code::ERRCODE_UNDEFINED_FUNCTION,
        format!("could not identify an equality operator for type {name}"),
        None,
        Some("With REPLICA IDENTITY FULL every column is compared; give the table a primary key or REPLICA IDENTITY USING INDEX, as for PostgreSQL's own subscriber."),
    )
}

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

fn in_context<R>(cxt: pg_sys::MemoryContext, f: impl FnOnce() -> R) -> R {
    // SAFETY: cxt is our per-message context, alive for the worker's life; reset after use.
    unsafe {
        let old = pg_sys::MemoryContextSwitchTo(cxt);
        let r = f();
        pg_sys::MemoryContextSwitchTo(old);
        pg_sys::MemoryContextReset(cxt);
        r
    }
}

fn execute(plan: pg_sys::SPIPlanPtr, values: &mut [pg_sys::Datum], nulls: &[std::ffi::c_char], expect: i32) -> u64 {
    // SAFETY: a kept plan whose argument count matches values/nulls (built from the same masks).
    unsafe {
        let rc = pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_ptr(), false, 0);
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
fn run_batch(plan: pg_sys::SPIPlanPtr, values: &mut [pg_sys::Datum], expect: i32, n: usize) -> Vec<bool> {
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

/// The changed columns of a new tuple (an unchanged TOAST value is left as it is).
fn set_mask(t: &TupleData) -> Vec<bool> {
    t.columns.iter().map(|v| !matches!(v, TupleValue::UnchangedToast)).collect()
}

/// The key values of a tuple as received, each with its kind and length, for telling repeated
/// keys apart in a run of UPDATEs.
fn key_bytes(t: &TupleData, key: &[bool]) -> Vec<u8> {
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

/// Adds a batch's rows to the found / not-found counts, logging each row not found.
fn tally(found: &[bool], op: &str, target: impl Fn(usize) -> String, hit: &mut i64, missing: &mut i64) {
    for (i, f) in found.iter().enumerate() {
        if *f {
            *hit += 1;
        } else {
            *missing += 1;
            missing_row(op, &target(i));
        }
    }
}

fn free_plans(plans: HashMap<PlanKey, pg_sys::SPIPlanPtr>) {
    for (_, p) in plans {
        // SAFETY: plans were kept with SPI_keepplan and are not used after this.
        unsafe { pg_sys::SPI_freeplan(p) };
    }
}

impl ColMap {
    /// One array of this column's type holding the `n` values (an absent value is NULL), for a
    /// batched statement's parameter.
    fn array_of<'a>(&self, values: impl Iterator<Item = Option<&'a TupleValue>>, n: usize, binary: bool) -> pg_sys::Datum {
        let Some(arr) = self.array else {
            report::error(
                Code::ERRCODE_INTERNAL_ERROR,
                format!("batched statement on column \"{}\" whose type has no array type", self.name),
                None,
                None,
            );
        };
        let mut elems = Vec::with_capacity(n);
        let mut elem_nulls = Vec::with_capacity(n);
        for v in values {
            let (d, null) = self.datum(v.unwrap_or(&TupleValue::Null), binary);
            elems.push(d);
            elem_nulls.push(null == b'n' as std::ffi::c_char);
        }
        let mut dims = [elems.len() as i32];
        let mut lbs = [1i32];
        // SAFETY: datums of the column's type with their null flags, in the current (message)
        // context; the array is built there too and lives until the statement ran.
        let a = unsafe {
            pg_sys::construct_md_array(
                elems.as_mut_ptr(),
                elem_nulls.as_mut_ptr(),
                1,
                dims.as_mut_ptr(),
                lbs.as_mut_ptr(),
                self.typid,
                i32::from(arr.elem_len),
                arr.elem_byval,
                arr.elem_align,
            )
        };
        pg_sys::Datum::from(a)
    }

    /// The Datum of a remote value for this column (None-valued for NULL).
    fn datum(&self, v: &TupleValue, binary: bool) -> (pg_sys::Datum, std::ffi::c_char) {
        errctx::set_column(Some(&self.name));
        let r = match v {
            TupleValue::Null => (pg_sys::Datum::from(0), b'n' as std::ffi::c_char),
            TupleValue::Text(bytes) => {
                let c = CString::new(bytes.as_ref()).unwrap_or_else(|_| {
                    report::error(
                        Code::ERRCODE_INVALID_TEXT_REPRESENTATION,
                        format!("value for column \"{}\" contains a NUL byte", self.name),
                        None,
                        None,
                    )
                });
                // SAFETY: input function of the local column type, with its ioparam/typmod.
                let d = unsafe {
                    pg_sys::InputFunctionCall(
                        &*self.input as *const _ as *mut _,
                        c.as_ptr() as *mut _,
                        self.ioparam,
                        self.typmod,
                    )
                };
                (d, b' ' as std::ffi::c_char)
            }
            TupleValue::Binary(bytes) => {
                let Some(recv) = &self.receive else {
                    report::error(
                        Code::ERRCODE_FEATURE_NOT_SUPPORTED,
                        format!("no binary input function available for column \"{}\"", self.name),
                        None,
                        Some("Create the subscription with binary => false."),
                    );
                };
                let _ = binary;
                // SAFETY: a StringInfo over our bytes (receive functions read, not write).
                let d = unsafe {
                    let mut si: pg_sys::StringInfoData = std::mem::zeroed();
                    pg_sys::initStringInfo(&mut si);
                    pg_sys::appendBinaryStringInfo(&mut si, bytes.as_ptr() as *const _, bytes.len() as i32);
                    let d = pg_sys::ReceiveFunctionCall(&**recv as *const _ as *mut _, &mut si, self.ioparam, self.typmod);
                    if si.cursor != si.len {
                        report::error(
                            Code::ERRCODE_INVALID_BINARY_REPRESENTATION,
                            format!("incorrect binary data format in column \"{}\"", self.name),
                            None,
                            None,
                        );
                    }
                    d
                };
                (d, b' ' as std::ffi::c_char)
            }
            TupleValue::UnchangedToast => {
                report::error(
                    Code::ERRCODE_INTERNAL_ERROR,
                    format!("unchanged TOAST value of column \"{}\" used as data", self.name),
                    None,
                    None,
                );
            }
        };
        errctx::set_column(None);
        r
    }
}

/// Binds a remote relation to the local table of the same schema-qualified name.
fn bind_local(remote: &Relation, binary: bool) -> LocalRel {
    let qualified = format!("{}.{}", quote_ident(&remote.namespace), quote_ident(&remote.name));
    let relinfo = Spi::get_two_with_args::<pg_sys::Oid, String>(
        "SELECT c.oid, c.relkind::text FROM pg_catalog.pg_class c \
         WHERE c.oid = pg_catalog.to_regclass($1)",
        &[qualified.as_str().into()],
    );
    let (relid, relkind) = match relinfo {
        Ok((Some(oid), kind)) => (oid, kind.unwrap_or_default()),
        _ => report::error(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!("logical replication target relation {qualified} does not exist"),
            None,
            Some("Create the table on the subscriber (or rename it back); the worker retries."),
        ),
    };
    if relkind != "r" && relkind != "p" {
        report::error(
            Code::ERRCODE_WRONG_OBJECT_TYPE,
            format!("logical replication target relation {qualified} is not a table"),
            None,
            None,
        );
    }
    copyin::refuse_row_level_security(relid);
    // Local columns by name.
    let local_cols = local_columns(relid);
    let mut cols = Vec::with_capacity(remote.columns.len());
    for rc in &remote.columns {
        let Some((_, typid, typmod, collation)) = local_cols.iter().find(|(n, ..)| *n == rc.name) else {
            report::error(
                Code::ERRCODE_UNDEFINED_COLUMN,
                format!(
                    "logical replication target relation {qualified} is missing replicated column \"{}\"",
                    rc.name
                ),
                None,
                Some("Add the column on the subscriber; the worker retries."),
            );
        };
        let mut col = col_map(&rc.name, *typid, *typmod, *collation, binary);
        // Remote text '01' and '1' are one local int: exact only when the types are the same.
        col.exact_key &= rc.type_oid == typid.to_u32();
        cols.push(col);
    }
    LocalRel {
        relid,
        qualified,
        only: if relkind == "p" { "" } else { "ONLY " },
        cols,
        plans: HashMap::new(),
    }
}

/// (name, type, typmod, collation) of the local table's ordinary, non-generated columns.
fn local_columns(relid: pg_sys::Oid) -> Vec<(String, pg_sys::Oid, i32, pg_sys::Oid)> {
    let r = Spi::connect(|c| {
        let t = c.select(
            "SELECT a.attname::text, a.atttypid, a.atttypmod, a.attcollation FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             ORDER BY a.attnum",
            None,
            &[relid.into()],
        )?;
        let mut out = Vec::new();
        for row in t {
            out.push((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                row.get::<i32>(3)?.unwrap_or(-1),
                row.get::<pg_sys::Oid>(4)?.unwrap_or(pg_sys::InvalidOid),
            ));
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    });
    match r {
        Ok(v) => v,
        Err(e) => report::error(Code::ERRCODE_INTERNAL_ERROR, format!("reading columns: {e}"), None, None),
    }
}

fn col_map(name: &str, typid: pg_sys::Oid, typmod: i32, collation: pg_sys::Oid, binary: bool) -> ColMap {
    // SAFETY: catalog lookups and fmgr_info into TopMemoryContext (the FmgrInfo lives in a Box
    // for the worker's life).
    unsafe {
        let mut input_fn = pg_sys::InvalidOid;
        let mut ioparam = pg_sys::InvalidOid;
        pg_sys::getTypeInputInfo(typid, &mut input_fn, &mut ioparam);
        let mut input: Box<pg_sys::FmgrInfo> = Box::new(std::mem::zeroed());
        pg_sys::fmgr_info_cxt(input_fn, &mut *input, pg_sys::TopMemoryContext);
        let receive = if binary {
            let mut recv_fn = pg_sys::InvalidOid;
            let mut recv_param = pg_sys::InvalidOid;
            pg_sys::getTypeBinaryInputInfo(typid, &mut recv_fn, &mut recv_param);
            let mut f: Box<pg_sys::FmgrInfo> = Box::new(std::mem::zeroed());
            pg_sys::fmgr_info_cxt(recv_fn, &mut *f, pg_sys::TopMemoryContext);
            Some(f)
        } else {
            None
        };
        let tc = pg_sys::lookup_type_cache(typid, pg_sys::TYPECACHE_EQ_OPR as i32);
        let eq_oid = if tc.is_null() { pg_sys::InvalidOid } else { (*tc).eq_opr };
        let eq_op = if eq_oid == pg_sys::InvalidOid {
            None
        } else {
            Spi::get_one_with_args::<String>(
                "SELECT pg_catalog.format('OPERATOR(%I.%s)', n.nspname, o.oprname) \
                 FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace \
                 WHERE o.oid = $1",
                &[eq_oid.into()],
            )
            .ok()
            .flatten()
        };
        // `unnest` of an array of a composite type (or a domain over one) in FROM expands each
        // element into its fields instead of yielding one value: such columns are never batched.
        let array_typid = if pg_sys::type_is_rowtype(typid) { pg_sys::InvalidOid } else { pg_sys::get_array_type(typid) };
        let array = (array_typid != pg_sys::InvalidOid).then(|| {
            let mut elem_len = 0i16;
            let mut elem_byval = false;
            let mut elem_align: std::ffi::c_char = 0;
            pg_sys::get_typlenbyvalalign(typid, &mut elem_len, &mut elem_byval, &mut elem_align);
            ArrayInfo { typid: array_typid, elem_len, elem_byval, elem_align }
        });
        let exact_key = match typid {
            pg_sys::INT2OID
            | pg_sys::INT4OID
            | pg_sys::INT8OID
            | pg_sys::OIDOID
            | pg_sys::UUIDOID
            | pg_sys::BOOLOID
            | pg_sys::DATEOID
            | pg_sys::TIMESTAMPOID
            | pg_sys::TIMESTAMPTZOID
            | pg_sys::BYTEAOID => true,
            // Not bpchar: its equality ignores trailing spaces that its text form keeps.
            pg_sys::TEXTOID | pg_sys::VARCHAROID => {
                collation == pg_sys::InvalidOid
                    || collation == pg_sys::DEFAULT_COLLATION_OID
                    || pg_sys::get_collation_isdeterministic(collation)
            }
            _ => false,
        };
        ColMap { name: name.to_string(), typid, typmod, input, receive, ioparam, eq_op, array, exact_key }
    }
}

impl LocalRel {
    /// Where the row identified by `t`'s `key` columns belongs, for the message about a missing
    /// row: the table itself, or for a partitioned table its leaf partition, named like native's
    /// `… relation's partition "leaf"`. The leaf is the one whose partition constraint the key
    /// values satisfy; when that cannot be told safely (a partition key that is an expression or
    /// not among the key columns sent), the partitioned table is named.
    fn row_target(&self, t: &TupleData, key: &[bool], binary: bool, cxt: pg_sys::MemoryContext) -> String {
        if !self.only.is_empty() {
            return self.qualified.clone();
        }
        let leaf = self.leaf_partition(t, key, binary, cxt);
        match leaf {
            Some(l) => format!("{}'s partition {l}", self.qualified),
            None => self.qualified.clone(),
        }
    }

    fn leaf_partition(&self, t: &TupleData, key: &[bool], binary: bool, cxt: pg_sys::MemoryContext) -> Option<String> {
        let sent: Vec<usize> = (0..self.cols.len())
            .filter(|&i| key.get(i).copied().unwrap_or(false) && !matches!(t.columns.get(i), Some(TupleValue::UnchangedToast) | None))
            .collect();
        // Every level's partition key must be plain columns among those sent.
        let keys = Spi::connect(|c| {
            let rows = c.select(
                "SELECT a.attname::text, pt.partexprs IS NOT NULL \
                 FROM pg_catalog.pg_partition_tree($1) t \
                 JOIN pg_catalog.pg_partitioned_table pt ON pt.partrelid = t.relid \
                 LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = ANY (pt.partattrs) AND a.attnum > 0",
                None,
                &[self.relid.into()],
            )?;
            let mut out = Vec::new();
            for r in rows {
                out.push((r.get::<String>(1)?, r.get::<bool>(2)?.unwrap_or(true)));
            }
            Ok::<_, pgrx::spi::SpiError>(out)
        })
        .ok()?;
        if keys.iter().any(|(name, expr)| *expr || name.as_ref().is_some_and(|n| !sent.iter().any(|&i| self.cols[i].name == *n))) {
            return None;
        }
        let leaves = Spi::connect(|c| {
            let rows = c.select(
                "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), pg_catalog.pg_get_partition_constraintdef(c.oid) \
                 FROM pg_catalog.pg_partition_tree($1) t JOIN pg_catalog.pg_class c ON c.oid = t.relid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE t.isleaf",
                None,
                &[self.relid.into()],
            )?;
            let mut out = Vec::new();
            for r in rows {
                out.push((r.get::<String>(1)?.unwrap_or_default(), r.get::<String>(2)?));
            }
            Ok::<_, pgrx::spi::SpiError>(out)
        })
        .ok()?;
        let names: Vec<String> = sent.iter().enumerate().map(|(n, &i)| format!("${} AS {}", n + 1, quote_ident(&self.cols[i].name))).collect();
        let mut argtypes: Vec<pg_sys::Oid> = sent.iter().map(|&i| self.cols[i].typid).collect();
        in_context(cxt, || {
            let mut values = Vec::new();
            let mut nulls = Vec::new();
            for &i in &sent {
                let (d, n) = self.cols[i].datum(&t.columns[i], binary);
                values.push(d);
                nulls.push(n);
            }
            for (name, def) in &leaves {
                let Some(def) = def else { return Some(name.clone()) };
                let sql = cstring(&format!("SELECT 1 FROM (SELECT {}) pgsub_v WHERE {def}", names.join(", ")));
                // SAFETY: argument arrays built from the same column list as the statement.
                let rc = unsafe {
                    pg_sys::SPI_execute_with_args(
                        sql.as_ptr(),
                        argtypes.len() as i32,
                        argtypes.as_mut_ptr(),
                        values.as_mut_ptr(),
                        nulls.as_ptr(),
                        true,
                        1,
                    )
                };
                // SAFETY: reads the row count of the statement just run.
                if rc == pg_sys::SPI_OK_SELECT as i32 && unsafe { pg_sys::SPI_processed } == 1 {
                    return Some(name.clone());
                }
            }
            None
        })
    }

    /// The prepared plan for `key`, prepared and kept on first use.
    fn plan(&mut self, key: PlanKey, remote: &Relation) -> pg_sys::SPIPlanPtr {
        if let Some(p) = self.plans.get(&key) {
            return *p;
        }
        let full = remote.replica_identity == ReplicaIdentity::Full;
        let mut argtypes: Vec<pg_sys::Oid> = Vec::new();
        let q = &self.qualified;
        let mut arg = |i: usize, argtypes: &mut Vec<pg_sys::Oid>| {
            argtypes.push(self.cols[i].typid);
            format!("${}", argtypes.len())
        };
        let cond = |mask: &[bool], argtypes: &mut Vec<pg_sys::Oid>, arg: &mut dyn FnMut(usize, &mut Vec<pg_sys::Oid>) -> String| {
            let mut parts = Vec::new();
            for (i, on) in mask.iter().enumerate() {
                if !*on {
                    continue;
                }
                let col = quote_ident(&self.cols[i].name);
                let p = arg(i, argtypes);
                let op = self.cols[i].eq_op.clone().unwrap_or_else(|| "=".to_string());
                if full && self.cols[i].eq_op.is_none() {
                    // Only reached with a NULL value (`key_mask` refuses others, as native).
                    parts.push(format!("({col} IS NULL AND {p} IS NULL)"));
                } else if full {
                    parts.push(format!("({col} {op} {p} OR ({col} IS NULL AND {p} IS NULL))"));
                } else {
                    parts.push(format!("{col} {op} {p}"));
                }
            }
            parts.join(" AND ")
        };
        let sql = match &key {
            PlanKey::Insert(present) => {
                let mut names = Vec::new();
                let mut params = Vec::new();
                for (i, on) in present.iter().enumerate() {
                    if *on {
                        names.push(quote_ident(&self.cols[i].name));
                        params.push(arg(i, &mut argtypes));
                    }
                }
                if names.is_empty() {
                    format!("INSERT INTO {q} DEFAULT VALUES")
                } else {
                    format!("INSERT INTO {q} ({}) VALUES ({})", names.join(", "), params.join(", "))
                }
            }
            PlanKey::Update { set, key } => {
                let mut sets = Vec::new();
                for (i, on) in set.iter().enumerate() {
                    if *on {
                        let p = arg(i, &mut argtypes);
                        sets.push(format!("{} = {p}", quote_ident(&self.cols[i].name)));
                    }
                }
                let c = cond(key, &mut argtypes, &mut arg);
                if full {
                    format!(
                        "UPDATE {}{q} SET {} WHERE ctid = (SELECT ctid FROM {}{q} WHERE {c} LIMIT 1)",
                        self.only,
                        sets.join(", "),
                        self.only
                    )
                } else {
                    format!("UPDATE {}{q} SET {} WHERE {c}", self.only, sets.join(", "))
                }
            }
            PlanKey::DeleteBatch { key } => {
                let mut args = Vec::new();
                let mut outs = Vec::new();
                let mut conds = Vec::new();
                for (i, on) in key.iter().enumerate() {
                    if !*on {
                        continue;
                    }
                    argtypes.push(self.cols[i].array.map_or(pg_sys::InvalidOid, |a| a.typid));
                    args.push(format!("pg_catalog.unnest(${})", argtypes.len()));
                    let k = format!("pgsub_k{}", argtypes.len());
                    let op = self.cols[i].eq_op.clone().unwrap_or_else(|| "=".to_string());
                    conds.push(format!("pgsub_t.{} {op} pgsub_u.{k}", quote_ident(&self.cols[i].name)));
                    outs.push(k);
                }
                format!(
                    "DELETE FROM {}{q} AS pgsub_t USING ROWS FROM ({}) WITH ORDINALITY AS pgsub_u({}, pgsub_ord) \
                     WHERE {} RETURNING pgsub_u.pgsub_ord",
                    self.only,
                    args.join(", "),
                    outs.join(", "),
                    conds.join(" AND ")
                )
            }
            PlanKey::UpdateBatch { set, key } => {
                let mut args = Vec::new();
                let mut outs = Vec::new();
                let mut sets = Vec::new();
                let mut conds = Vec::new();
                for (mask, is_key) in [(set, false), (key, true)] {
                    for (i, on) in mask.iter().enumerate() {
                        if !*on {
                            continue;
                        }
                        argtypes.push(self.cols[i].array.map_or(pg_sys::InvalidOid, |a| a.typid));
                        args.push(format!("pg_catalog.unnest(${})", argtypes.len()));
                        let a = format!("pgsub_a{}", argtypes.len());
                        let col = quote_ident(&self.cols[i].name);
                        if is_key {
                            let op = self.cols[i].eq_op.clone().unwrap_or_else(|| "=".to_string());
                            conds.push(format!("pgsub_t.{col} {op} pgsub_u.{a}"));
                        } else {
                            sets.push(format!("{col} = pgsub_u.{a}"));
                        }
                        outs.push(a);
                    }
                }
                format!(
                    "UPDATE {}{q} AS pgsub_t SET {} FROM ROWS FROM ({}) WITH ORDINALITY AS pgsub_u({}, pgsub_ord) \
                     WHERE {} RETURNING pgsub_u.pgsub_ord",
                    self.only,
                    sets.join(", "),
                    args.join(", "),
                    outs.join(", "),
                    conds.join(" AND ")
                )
            }
            PlanKey::Delete { key } => {
                let c = cond(key, &mut argtypes, &mut arg);
                if full {
                    format!(
                        "DELETE FROM {}{q} WHERE ctid = (SELECT ctid FROM {}{q} WHERE {c} LIMIT 1)",
                        self.only, self.only
                    )
                } else {
                    format!("DELETE FROM {}{q} WHERE {c}", self.only)
                }
            }
        };
        // A batched statement's array parameters give the planner no row count; the generic plan
        // (a nested loop over the key index) serves every run, so custom plans are not tried.
        let options = match key {
            PlanKey::DeleteBatch { .. } | PlanKey::UpdateBatch { .. } => pg_sys::CURSOR_OPT_GENERIC_PLAN as i32,
            _ => 0,
        };
        let csql = cstring(&sql);
        // SAFETY: SPI is connected (inside a remote transaction); the plan is kept for reuse.
        let plan = unsafe {
            let p = pg_sys::SPI_prepare_cursor(csql.as_ptr(), argtypes.len() as i32, argtypes.as_mut_ptr(), options);
            if p.is_null() {
                report::error(
                    Code::ERRCODE_INTERNAL_ERROR,
                    format!("SPI_prepare failed for: {sql}"),
                    None,
                    None,
                );
            }
            pg_sys::SPI_keepplan(p);
            p
        };
        self.plans.insert(key, plan);
        plan
    }
}
