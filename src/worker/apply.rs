//! Applying decoded pgoutput changes to local tables through SPI.
//!
//! Each remote transaction becomes one local transaction (Begin → StartTransactionCommand +
//! SPI_connect, Commit → origin LSN/timestamp set, SPI_finish, CommitTransactionCommand) — or,
//! when the receive loop asks for it (`receive.rs`, grouped commits), consecutive remote
//! transactions that are already waiting share one local transaction: a deferred Commit leaves
//! the local transaction open ([`Group`]) and the next Begin goes on in it; the local commit
//! carries the last one's origin position, so a crash replays the whole group, never a part. Remote
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
//!
//! Conflicts — a key that exists here, a row last changed by another origin — are looked for and
//! resolved by the subscription's policy in `conflict/`; which tables a transaction's changes
//! apply to is `tables.rs`.
use super::batch::{
    DeleteBatch, InsertBatch, UpdateBatch, BATCH_MAX_BYTES, BATCH_MAX_ROWS, DELETE_BATCH_MAX_ROWS,
    UPDATE_BATCH_MAX_BYTES, UPDATE_BATCH_MAX_ROWS,
};
use super::conflict;
use super::errctx;
use super::execute::{
    check_width, execute, in_context, key_bytes, key_mask, missing_row, no_equality, set_mask, uncomparable,
    with_snapshot, RowOutcome,
};
use super::owner;
use super::progress::Progress;
use super::relation::{self, bind_local, cstring, free_plans, LocalRel, PlanKey, RelEntry};
pub use super::tables::TableStates;
use crate::catalog::Resolution;
use crate::report;
use crate::shmem::ConflictType;
use pgrx::memcxt::PgMemoryContexts;
use pgrx::prelude::*;
use pgsub_proto::client::quote_ident;
use pgsub_proto::pgoutput::{
    Begin, Commit, Delete, Insert, OldTuple, Relation, ReplicaIdentity, Truncate, TupleData, TupleValue, Update,
};
use pgsub_proto::Lsn;
use std::collections::{HashMap, HashSet};

type Code = PgSqlErrorCode;

pub struct Applier {
    pub(super) rels: HashMap<u32, RelEntry>,
    pub tables: TableStates,
    pub in_txn: bool,
    pub(super) skipping: bool,
    /// origin = none: skip transactions that carry an Origin message.
    pub(super) skip_foreign_origin: bool,
    pub(super) binary: bool,
    pub(super) skip_lsn: Option<Lsn>,
    pub(super) subid: i32,
    pub(super) begin: Option<Begin>,
    pub(super) msg_cxt: PgMemoryContexts,
    pub(super) batch: Option<InsertBatch>,
    pub(super) deletes: Option<DeleteBatch>,
    pub(super) updates: Option<UpdateBatch>,
    /// Rows deleted / updated / not found by batched DELETEs and UPDATEs, not yet added to the
    /// counters.
    pub(super) batched: super::progress::Counters,
    /// Finish LSN of a remote transaction whose INSERTs, UPDATEs and DELETEs go one by one
    /// instead of in batches.
    pub(super) row_by_row_lsn: Option<Lsn>,
    /// The stream is binary by the worker's own choice (`binary` unset): each relation is
    /// checked against that choice when it is bound (`format::check_bound`).
    pub(super) auto_binary: bool,
    /// Counts the changes given a target relation: the plan cache's LRU clock.
    pub(super) use_tick: u64,
    /// Remote transactions applied in the open local transaction and not committed yet.
    pub(super) group: Option<Group>,
    /// The current remote transaction changed a table here (not only tables still being
    /// synchronized, whose changes a sync worker applies): a skip_lsn it does not match is
    /// cleared at its commit, as native clears it only for a non-empty transaction.
    pub(super) changed_in_txn: bool,
    /// The transaction being finished came streamed: its COMMIT or PREPARE is a Stream Commit or
    /// Stream Prepare, as the error context names it (native's words). Cleared at the finish.
    pub streamed: bool,
    /// In a sync worker: its one table, known by its local table and (once learnt) the
    /// publisher's OID of it, so that its changes are applied to it under whatever name either
    /// side gives it by then (`own_table`).
    pub(super) own: Option<OwnTable>,
}

/// A sync worker's table (`Applier::own`).
pub(super) struct OwnTable {
    pub(super) relid: u32,
    pub(super) remote_oid: Option<u32>,
}

/// Remote transactions whose Commit was deferred: they are applied in the open local
/// transaction, which commits with the last one's origin position.
pub struct Group {
    /// The last deferred Commit and its remote xid.
    last: Commit,
    xid: u32,
    /// The remote xid of the group's first transaction.
    first_xid: u32,
    /// When the group's first remote transaction was deferred.
    pub(super) started: std::time::Instant,
}

impl Applier {
    pub fn new(subid: i32, tables: TableStates, binary: bool, origin_none: bool, skip_lsn: Option<Lsn>) -> Self {
        relation::register_invalidation_callback();
        relation::reset_planned();
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
            batched: Default::default(),
            row_by_row_lsn: None,
            auto_binary: false,
            use_tick: 0,
            group: None,
            changed_in_txn: false,
            streamed: false,
            own: None,
        }
    }

    /// A sync worker's catch-up: changes of the publisher's relation `remote_oid` (when known:
    /// looked up under the name the catalog records) or of the recorded name are its table's,
    /// applied to local table `relid` whatever it is called by then. A table renamed on both
    /// sides while it caught up is followed both ways: the changes written before the rename
    /// come under the old name, which no local table has any more, those after under the new.
    pub fn own_table(&mut self, relid: u32, remote_oid: Option<u32>) {
        self.own = Some(OwnTable { relid, remote_oid });
    }

    /// The stream is binary by the worker's own choice: a relation whose columns binary cannot
    /// carry is an error (the worker then retries in text, `format.rs`).
    pub fn check_binary_choice(&mut self) {
        self.auto_binary = self.binary;
    }

    /// Applies the INSERTs, UPDATEs and DELETEs of the remote transaction that finishes at `lsn` one by one
    /// (set after a batch of that transaction failed, so that the retry's error names the row's
    /// column).
    pub fn row_by_row_for(&mut self, lsn: Lsn) {
        self.row_by_row_lsn = lsn.is_valid().then_some(lsn);
    }

    pub fn on_relation(&mut self, rel: Relation) {
        self.flush_batches();
        // A new definition replaces the old one and its plans. A local table found to be not the
        // subscription's stays so (until its invalidation): a root published via its root is
        // described again for each of its partitions' first change.
        let mut replaced_by = None;
        if let Some(old) = self.rels.remove(&rel.oid) {
            if old.remote.namespace == rel.namespace && old.remote.name == rel.name {
                replaced_by = old.replaced_by;
            }
            if let Some(l) = old.local {
                free_plans(l.plans);
            }
        }
        let display: std::rc::Rc<str> = relation::native_name(&rel.namespace, &rel.name).into();
        self.rels.insert(
            rel.oid,
            RelEntry { remote: rel, local: None, display, last_used: 0, unlisted_seen: false, replaced_by },
        );
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
        if self.batch.is_some() && relation::stale_pending() {
            // A run carried over from the group's previous transaction was prepared for the
            // relation bindings about to be dropped: loaded first, with them, in the context of
            // the group's last transaction (whose finish LSN the retry goes one by one to).
            if let Some(g) = &self.group {
                errctx::set_txn(g.xid, g.last.commit_lsn);
            }
            self.flush_inserts();
        }
        errctx::set_txn(b.xid, b.final_lsn);
        conflict::begin_txn(b.xid, b.commit_time, b.final_lsn);
        self.skipping = self.skip_lsn == Some(b.final_lsn);
        self.changed_in_txn = false;
        if self.skipping {
            report::log(
                PgLogLevel::LOG,
                Code::ERRCODE_SUCCESSFUL_COMPLETION,
                format!("pgsub: skipping remote transaction {} that finishes at {} (skip_lsn)", b.xid, b.final_lsn),
                None,
                None,
            );
        }
        progress.pending_commit_time = b.commit_time;
        // The walsender's XLogData header carries only the record's own LSN; the commit LSN in
        // BEGIN is the furthest publisher position we know of until the transaction is applied.
        progress.on_frame(Lsn::INVALID, b.final_lsn, 0);
        // SAFETY: standard transaction start in a background worker; SPI inside it. In a group
        // the local transaction is open already: the next command sees the earlier ones' rows.
        unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            if self.group.is_some() {
                pg_sys::CommandCounterIncrement();
            } else {
                pg_sys::StartTransactionCommand();
                if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
                    report::error(Code::ERRCODE_INTERNAL_ERROR, "SPI_connect failed", None, None);
                }
            }
        }
        self.in_txn = true;
        self.begin = Some(b);
        relation::drop_stale(&mut self.rels);
    }

    /// ORIGIN: the transaction came to the publisher from another node; with origin = 'none'
    /// it is skipped (publishers before 16 cannot filter it themselves).
    pub fn origin(&mut self, name: &str) {
        conflict::set_origin(name);
        if self.skip_foreign_origin && self.in_txn && !self.skipping {
            self.skipping = true;
        }
    }

    /// COMMIT. With `defer` (the receive loop's grouped commits) the local transaction stays
    /// open for the next remote transaction, unless this one was skipped or a synchronized
    /// table becomes ready at it.
    pub fn commit(&mut self, c: Commit, progress: &mut Progress, defer: bool) {
        if !self.in_txn {
            report::error(Code::ERRCODE_PROTOCOL_VIOLATION, "COMMIT received outside a transaction", None, None);
        }
        let skipped = self.skipping;
        let defer = defer && !skipped && self.skip_lsn.is_none() && !self.tables.any_synchronized();
        if defer {
            // A run of inserts goes on into the next transaction of the group (one COPY for
            // the runs of several small transactions); updates and deletes end here.
            self.flush_updates();
            self.flush_deletes();
            // Not under a conflict policy: its rows go one by one, and a conflict is recorded
            // with the remote transaction being applied, which must be the row's own.
            if conflict::policy() != Resolution::Error {
                self.flush_inserts();
            }
        } else {
            self.flush_batches();
        }
        self.drain_counts(progress);
        errctx::set_commit(if std::mem::take(&mut self.streamed) { "STREAM COMMIT" } else { "COMMIT" });
        if defer {
            let xid = self.begin.take().map_or(0, |b| b.xid);
            let (started, first_xid) =
                self.group.take().map_or_else(|| (std::time::Instant::now(), xid), |g| (g.started, g.first_xid));
            self.group = Some(Group { last: c, xid, first_xid, started });
            self.in_txn = false;
            progress.on_commit_deferred();
            errctx::clear();
            return;
        }
        if let Some(g) = self.group.take() {
            // The group ends with this transaction (its time is up): the local transaction
            // holds the group's earlier ones too, and an error at this commit (a deferred
            // constraint or trigger) may be any one's.
            let xid = self.begin.as_ref().map_or(0, |b| b.xid);
            errctx::set_span(Some((g.first_xid, xid)));
        }
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
            } else if let Some(skip) = self.skip_lsn.filter(|_| !skipped && self.changed_in_txn) {
                // A transaction was applied that skip_lsn did not name: it is forgotten, with
                // a warning, as natively (a mistyped position would otherwise stay for ever,
                // and with it the slower path that skip_lsn keeps apply on). A transaction
                // that changed nothing here leaves it, as natively.
                let r = with_snapshot(|| crate::catalog::clear_skip_lsn(self.subid, skip));
                if let Err(e) = r {
                    report::error(Code::ERRCODE_INTERNAL_ERROR, format!("clearing skip_lsn: {e}"), None, None);
                }
                report::log(
                    PgLogLevel::WARNING,
                    Code::ERRCODE_WARNING,
                    "pgsub: skip_lsn of the subscription cleared".to_string(),
                    Some(format!(
                        "Remote transaction's finish WAL location (LSN) {} did not match skip_lsn {skip}.",
                        c.commit_lsn
                    )),
                    None,
                );
                self.skip_lsn = None;
            }
            if self.tables.any_synchronized() {
                let subid = self.subid;
                with_snapshot(|| self.tables.mark_ready(subid, c.end_lsn));
            }
            commit_local(&c)
        };
        self.in_txn = false;
        self.skipping = false;
        self.begin = None;
        if skipped {
            progress.counters.skipped += 1;
        }
        progress.on_commit(c.end_lsn, local_end, c.commit_time);
        errctx::clear();
    }

    /// Whether a local transaction is open: a remote one being applied, or a group of applied
    /// ones not committed yet (nothing of either may be confirmed to the publisher).
    pub fn open(&self) -> bool {
        self.in_txn || self.group.is_some()
    }

    /// Commits the deferred group of remote transactions (if any, and none is being applied)
    /// with the last one's origin position; a failure here names that last transaction.
    pub fn finish_group(&mut self, progress: &mut Progress) {
        // A remote transaction open in the group commits with it (its COMMIT ends the group or
        // extends it).
        if self.in_txn {
            return;
        }
        let Some(g) = self.group.take() else { return };
        errctx::set_txn(g.xid, g.last.commit_lsn);
        // A run of inserts carried over the group's last commit is loaded now.
        self.flush_batches();
        self.drain_counts(progress);
        errctx::set_commit("COMMIT");
        if g.first_xid != g.xid {
            // Deferred constraints of every transaction of the group are checked here.
            errctx::set_span(Some((g.first_xid, g.xid)));
        }
        // SAFETY: the transaction the group's first Begin opened, SPI connected.
        let local_end = unsafe { commit_local(&g.last) };
        progress.on_group_commit(g.last.end_lsn, local_end, g.last.commit_time);
        errctx::clear();
    }

    /// A keepalive between transactions: the publisher has sent everything up to `end`, and all
    /// of it is applied. Synchronized tables whose copy point that passes become ready now, in a
    /// transaction of their own, instead of at the next commit, which may be long in coming on
    /// an idle publisher (native moves tables on at keepalives too).
    pub fn caught_up_to(&mut self, end: Lsn) {
        if self.open() || !self.tables.any_ready_after(end) {
            return;
        }
        let subid = self.subid;
        super::xact(|| self.tables.mark_ready(subid, end));
    }

    /// Writes the renames and swaps of the subscription's tables found while applying
    /// (`follow_rename`, `swap_names`) to `pgsub.sub_rel`, in a transaction of their own: between
    /// remote transactions only, so that none of them, rolled back or prepared, undoes them or
    /// holds the catalog rows. A worker that exits first finds them again from the next change.
    pub fn write_names(&mut self) {
        if self.open() || !self.tables.has_renamed() {
            return;
        }
        let names = self.tables.take_renamed();
        let subid = self.subid;
        super::xact(|| {
            // Only names the local tables still have: another worker of the subscription (the
            // leader, a parallel worker) may have seen a later rename since.
            let current: Vec<(u32, String, String)> = names
                .into_iter()
                .filter(|(relid, schema, name)| {
                    crate::catalog::local_relid(schema, name).map(|o| o.to_u32()) == Some(*relid)
                })
                .collect();
            // An error aborts the whole change (the worker restarts and finds the renames again).
            if let Err(e) = crate::catalog::set_remote_names(subid, &current) {
                report::error(Code::ERRCODE_INTERNAL_ERROR, format!("updating pgsub.sub_rel: {e}"), None, None);
            }
        });
    }

    /// Aborts the local transaction (used when the worker stops mid-transaction).
    pub fn abort(&mut self) {
        self.batch = None;
        self.deletes = None;
        self.updates = None;
        if self.open() {
            // SAFETY: abort of our own transaction; SPI is cleaned up by the abort. A group's
            // remote transactions are sent again (the origin did not move).
            unsafe { pg_sys::AbortCurrentTransaction() };
            self.in_txn = false;
            self.group = None;
        }
    }

    /// Rolls back the local transaction with every subtransaction in it (a parallel apply
    /// worker's streamed transaction the publisher aborted, or its leader gone).
    pub fn abort_all(&mut self) {
        self.batch = None;
        self.deletes = None;
        self.updates = None;
        self.batched = Default::default();
        if self.in_txn {
            // SAFETY: abort of our own transaction and its subtransactions; SPI is cleaned up.
            unsafe { pg_sys::AbortOutOfAnyTransaction() };
            self.in_txn = false;
        }
        self.skipping = false;
        self.begin = None;
    }

    /// PREPARE (two-phase): the applied changes become a local prepared transaction named after
    /// the subscription and the remote xid, with the origin position of the prepare.
    pub fn prepare(&mut self, xid: u32, end_lsn: Lsn, prepare_time: i64, progress: &mut Progress) {
        if !self.in_txn {
            report::error(Code::ERRCODE_PROTOCOL_VIOLATION, "PREPARE received outside a transaction", None, None);
        }
        self.flush_batches();
        self.drain_counts(progress);
        errctx::set_commit(if std::mem::take(&mut self.streamed) { "STREAM PREPARE" } else { "PREPARE" });
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

    /// COMMIT PREPARED (`commit`) or ROLLBACK PREPARED of remote transaction `xid`, whose record
    /// is at `finish_lsn` and ends at `end_lsn`. A COMMIT PREPARED whose prepared transaction is
    /// gone here (rolled back by hand) stops apply, naming the transaction and `finish_lsn` as
    /// native does; `skip_transaction` with that LSN goes past it.
    pub fn finish_prepared(
        &mut self,
        xid: u32,
        commit: bool,
        finish_lsn: Lsn,
        end_lsn: Lsn,
        time: i64,
        progress: &mut Progress,
    ) {
        errctx::set_txn(xid, finish_lsn);
        errctx::set_message(if commit { "COMMIT PREPARED" } else { "ROLLBACK PREPARED" }, None);
        let skip = commit && self.skip_lsn == Some(finish_lsn);
        let gid_s = local_gid(self.subid, xid);
        let gid = cstring(&gid_s);
        // SAFETY: finishing our own prepared transaction inside a fresh local transaction whose
        // commit carries the origin position.
        let mut skipped = false;
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
            // Before FinishPreparedTransaction, as native's apply_handle_commit_prepared: its
            // COMMIT PREPARED (or ROLLBACK PREPARED) record, written and flushed there, is what
            // carries the origin position. Set only after it, the position went into the outer
            // transaction's own commit record, asynchronous with synchronous_commit = off: a
            // crash between the two left the origin one transaction behind, and the worker then
            // met the COMMIT PREPARED of a transaction it had already committed ("does not exist")
            // for ever.
            pg_sys::replorigin_session_origin_lsn = end_lsn.0;
            pg_sys::replorigin_session_origin_timestamp = time;
            if exists {
                pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| FinishPreparedTransaction(gid.as_ptr(), commit));
            } else if skip {
                log!(
                    "pgsub: skipping COMMIT PREPARED of remote transaction {xid} that finishes at {finish_lsn} (skip_lsn): prepared transaction \"{gid_s}\" does not exist"
                );
                let r = with_snapshot(|| crate::catalog::clear_skip_lsn(self.subid, finish_lsn));
                if let Err(e) = r {
                    report::error(Code::ERRCODE_INTERNAL_ERROR, format!("clearing skip_lsn: {e}"), None, None);
                }
                self.skip_lsn = None;
                skipped = true;
            } else if commit {
                report::error(
                    Code::ERRCODE_UNDEFINED_OBJECT,
                    format!("prepared transaction \"{gid_s}\" does not exist"),
                    Some(format!(
                        "The remote transaction was prepared here as \"{gid_s}\", which was committed or rolled back by other means."
                    )),
                    Some("To go on without it, skip this COMMIT PREPARED with pgsub.skip_transaction() and the finish LSN in the context."),
                );
            }
            pg_sys::CommitTransactionCommand();
            pg_sys::replorigin_session_origin_lsn = 0;
            pg_sys::replorigin_session_origin_timestamp = 0;
            Lsn(pg_sys::XactLastCommitEnd)
        };
        super::report_stats(false);
        if skipped {
            progress.counters.skipped += 1;
        }
        progress.on_commit(end_lsn, local_end, time);
        errctx::clear();
    }

    pub(super) fn commit_end(&self) -> Lsn {
        self.begin.as_ref().map(|b| b.final_lsn).unwrap_or_default()
    }

    pub(super) fn require_txn(&self, what: &str) {
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
    pub(super) fn target(&mut self, rel_oid: u32) -> Option<&mut RelEntry> {
        let commit_end = self.commit_end();
        let skipping = self.skipping;
        // Between changes at most pgsub.max_cached_relations relations keep plans (one more
        // while a change prepares its own): the least recently used others' are freed first.
        let max = crate::gucs::MAX_CACHED_RELATIONS.get().max(1) as usize;
        if relation::planned_relations() > max {
            relation::evict_plans(&mut self.rels, max, rel_oid);
        }
        let Some(entry) = self.rels.get_mut(&rel_oid) else {
            report::error(
                Code::ERRCODE_PROTOCOL_VIOLATION,
                format!("change for relation with OID {rel_oid} that was not described by a RELATION message"),
                None,
                None,
            );
        };
        errctx::set_message("", Some(entry.display.clone()));
        if skipping {
            return None;
        }
        let by_name = self.tables.applies(&entry.remote.namespace, &entry.remote.name, commit_end);
        let mut own = None;
        if let Some(o) = self.own.as_mut() {
            if o.remote_oid.is_none() && by_name {
                o.remote_oid = Some(rel_oid);
            }
            match o.remote_oid {
                // Its table, under whatever name; once known, the OID alone decides: another
                // publisher table may carry the recorded name by now (swapped, created again).
                Some(r) if r == rel_oid => own = Some(o.relid),
                Some(_) => return None,
                None => {}
            }
        }
        if own.is_some() {
            if !by_name && !entry.unlisted_seen {
                // Its table under a name the catalog does not record: renamed on the publisher.
                // The catalog follows when the local table took the new name too.
                entry.unlisted_seen = true;
                follow_rename(&mut self.tables, &entry.remote);
            }
        } else if !by_name {
            if !entry.unlisted_seen && self.tables.maybe_renamed_own(&entry.remote.namespace, &entry.remote.name) {
                // A sync worker's catch-up: its table renamed on the publisher and here comes
                // under the new name (the apply worker follows it too); any other table's
                // changes are not this worker's.
                entry.unlisted_seen = true;
                if !follow_rename(&mut self.tables, &entry.remote)
                    || !self.tables.applies(&entry.remote.namespace, &entry.remote.name, commit_end)
                {
                    return None;
                }
            } else {
                if entry.unlisted_seen || !self.tables.unlisted(&entry.remote.namespace, &entry.remote.name) {
                    return None;
                }
                if !follow_rename(&mut self.tables, &entry.remote) {
                    entry.unlisted_seen = true;
                    relation::unlisted(&entry.remote);
                    return None;
                }
                if !self.tables.applies(&entry.remote.namespace, &entry.remote.name, commit_end) {
                    return None;
                }
            }
        }
        self.changed_in_txn = true;
        self.use_tick += 1;
        entry.last_used = self.use_tick;
        if entry.local.is_none() {
            if own.is_none() {
                if entry.replaced_by.is_some() {
                    return None;
                }
                if let Some(recorded) = self.tables.relid_of(&entry.remote.namespace, &entry.remote.name) {
                    if let Some(found) = relation::other_local(&entry.remote, recorded) {
                        if !swap_names(&mut self.tables, &entry.remote, recorded, found) {
                            relation::warn_replaced(&entry.remote, recorded, found);
                            entry.replaced_by = Some(found);
                            return None;
                        }
                    }
                }
            }
            let (binary, check) = (self.binary, self.auto_binary);
            entry.local = Some(with_snapshot(|| {
                let local = bind_local(&entry.remote, binary, own.map(pg_sys::Oid::from));
                if check {
                    super::format::check_bound(&entry.remote, local.relid);
                }
                local
            }));
        }
        Some(entry)
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
        if m.new.columns.iter().any(|v| matches!(v, TupleValue::UnchangedToast)) {
            relation::insert_without_values(&entry.display, &entry.remote, &m.new);
        }
        let xid = self.begin.as_ref().map_or(0, |b| b.xid);
        let batch = self.batch.get_or_insert_with(|| InsertBatch {
            rel_oid: m.rel_oid,
            rows: Vec::new(),
            bytes: 0,
            first_xid: xid,
            last_xid: xid,
        });
        batch.last_xid = xid;
        batch.bytes += m.new.columns.iter().map(|v| v.as_bytes().map_or(0, |b| b.len())).sum::<usize>();
        batch.rows.push(m);
        if batch.rows.len() >= BATCH_MAX_ROWS || batch.bytes >= BATCH_MAX_BYTES {
            self.flush_inserts();
        }
    }

    /// One INSERT through its prepared plan; one whose key exists is a conflict to resolve when
    /// the policy is not `error` or the transaction failed before (`conflict/`). False when the
    /// row was left out (the local row kept): it is not counted as inserted.
    pub(super) fn insert_one(&mut self, m: Insert) -> bool {
        errctx::set_message("INSERT", None);
        let detect = conflict::policy() != Resolution::Error || self.row_by_row_lsn == Some(self.commit_end());
        let binary = self.binary;
        let cxt = self.msg_cxt.value();
        let Some(entry) = self.target(m.rel_oid) else { return false };
        let RelEntry { remote, local, .. } = entry;
        let Some(local) = local.as_mut() else { return false };
        let present: Vec<bool> = m.new.columns.iter().map(|v| !matches!(v, TupleValue::UnchangedToast)).collect();
        // `ON CONFLICT` refuses a table with a DEFERRABLE key: its conflicts are looked up first.
        let look_first = detect && local.deferrable_keys;
        let key = if detect && !look_first {
            PlanKey::InsertIfAbsent(present.clone())
        } else {
            PlanKey::Insert(present.clone())
        };
        let run = |local: &mut super::relation::LocalRel, key: PlanKey| {
            let plan = local.plan(key, remote);
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
                owner::as_table_owner(local.relid, || execute(plan, &mut values, &nulls, pg_sys::SPI_OK_INSERT as i32))
            })
        };
        if look_first {
            let remote_values = conflict::RemoteValues::of(local, &m.new, binary, cxt);
            if let Some((t, applied)) = conflict::insert_exists(local, &remote_values, &present) {
                conflict::count(local.relid, t);
                return applied;
            }
            run(local, key);
            return true;
        }
        let processed = run(local, key);
        if detect && processed == 0 {
            let remote_values = conflict::RemoteValues::of(local, &m.new, binary, cxt);
            match conflict::insert_exists(local, &remote_values, &present) {
                Some((t, applied)) => {
                    conflict::count(local.relid, t);
                    return applied;
                }
                // Not a unique key: an exclusion constraint, whose error the plain INSERT raises.
                None => {
                    run(local, PlanKey::Insert(present.clone()));
                }
            }
        }
        true
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
        let batching = self.row_by_row_lsn != Some(self.commit_end()) && conflict::batches_updates();
        // Before the relation is bound: an error binding it names this message.
        errctx::set_kind("UPDATE");
        let Some(entry) = self.target(m.rel_oid) else { return };
        let RelEntry { remote, local, .. } = entry;
        let Some(local) = local.as_mut() else { return };
        check_width(remote, &m.new, "new tuple");
        if let Some(OldTuple::Key(t) | OldTuple::Full(t)) = &m.old {
            check_width(remote, t, "old tuple");
        }
        let full = remote.replica_identity == ReplicaIdentity::Full;
        let batch_shape =
            if batching && !full && m.old.is_none() && local.remote_key_unique && !local.after_row_triggers {
                let key = key_mask(remote, &m.new, false, &local.cols);
                // The key is unchanged and its values are exact (`ColMap::exact_key`): only the
                // other columns are set — none that a unique or exclusion index covers, whose checks
                // would see the run's rows changed in another order than the publisher's.
                let set: Vec<bool> = set_mask(&m.new).iter().zip(&key).map(|(s, k)| *s && !*k).collect();
                let fits = set.iter().any(|s| *s)
                    && local.cols.iter().enumerate().all(|(i, c)| {
                        (!key[i] || (c.exact_key && c.array.is_some()))
                            && (!set[i] || (c.array.is_some() && !c.identity_always && !local.constrained[i]))
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
                Some((relid, RowOutcome::Applied)) => progress.counters.updated(relid, 1),
                Some((relid, RowOutcome::Missing)) => progress.counters.conflict(relid, ConflictType::UpdateMissing, 1),
                Some((_, RowOutcome::Skipped)) | None => {}
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

    /// One UPDATE through its prepared plan: Some((local table, found the row)), None when not
    /// applied here.
    /// With `conflict::checks_rows` (or on the retry of a failed transaction) the local row is
    /// read first and conflicts with it resolved (`conflict::before_update`).
    pub(super) fn update_one(&mut self, m: &Update) -> Option<(pg_sys::Oid, RowOutcome)> {
        let retry = self.row_by_row_lsn == Some(self.commit_end());
        let checks = conflict::checks_rows() || retry;
        let binary = self.binary;
        let cxt = self.msg_cxt.value();
        // Before the relation is bound: an error binding it names this message.
        errctx::set_kind("UPDATE");
        let entry = self.target(m.rel_oid)?;
        let RelEntry { remote, local, .. } = entry;
        let local = local.as_mut()?;
        // Key values: from the old tuple when sent (key changed, or identity FULL), else the new one.
        let key_src: &TupleData = match &m.old {
            Some(OldTuple::Key(t)) | Some(OldTuple::Full(t)) => t,
            None => &m.new,
        };
        let (full, key) = local.row_identity(remote, key_src);
        let set = set_mask(&m.new);
        if full {
            let odd = uncomparable(key_src, &local.cols);
            if let Some(first) = odd.iter().position(|o| *o) {
                if with_snapshot(|| local.uncomparable_candidate(remote, key_src, &key, &odd, binary, cxt)) {
                    no_equality(local.cols[first].typid);
                }
                let target = with_snapshot(|| local.update_target(key_src, &key, full, &m.new, binary, cxt));
                missing_row("UPDATE", &target);
                return Some((local.relid, RowOutcome::Missing));
            }
        }
        if checks {
            let key_cols: Vec<usize> = (0..key.len()).filter(|&i| key[i]).collect();
            let key_values = conflict::RemoteValues::of(local, key_src, binary, cxt);
            let new_values = conflict::RemoteValues::of(local, &m.new, binary, cxt);
            let (apply, found) = conflict::before_update(local, &key_cols, &key_values, &new_values, retry);
            for t in found {
                conflict::count(local.relid, t);
            }
            if !apply {
                return Some((local.relid, RowOutcome::Applied));
            }
        }
        // The new values of the set columns, then the key's: the parameters of an UPDATE and of
        // a replacing one.
        let run = |local: &mut LocalRel, stmt: PlanKey, ok: u32| {
            let nulls = local.null_keys(remote, key_src, &key);
            let plan = local.plan_for_nulls(stmt, remote, nulls);
            let mut values = Vec::new();
            let mut nulls = Vec::new();
            in_context(cxt, || {
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
                owner::as_table_owner(local.relid, || execute(plan, &mut values, &nulls, ok as i32))
            })
        };
        if run(local, PlanKey::Update { set: set.clone(), key: key.clone() }, pg_sys::SPI_OK_UPDATE) > 0 {
            return Some((local.relid, RowOutcome::Applied));
        }
        // The UPDATE requires each GENERATED ALWAYS identity column sent to hold its new value
        // already (SQL cannot set one): a row found with it was skipped by a trigger.
        let same: Vec<bool> = set.iter().zip(&local.cols).map(|(s, c)| *s && c.identity_always).collect();
        if with_snapshot(|| local.holds_row(remote, key_src, &key, Some((&m.new, &same)), binary, cxt)) {
            return Some((local.relid, RowOutcome::Skipped));
        }
        // Otherwise the publisher changed such a column (`SET id = DEFAULT` there, or a plain
        // column there): native apply writes the new value, so the row is replaced by one with
        // it — deleted and inserted again, its other values kept.
        if same.iter().any(|s| *s) {
            if run(local, PlanKey::Replace { set: set.clone(), key: key.clone() }, pg_sys::SPI_OK_INSERT) > 0 {
                return Some((local.relid, RowOutcome::Applied));
            }
            // Nothing replaced, and the row is still there: a replica-enabled BEFORE DELETE
            // trigger kept it, as a BEFORE UPDATE one returning NULL keeps an UPDATE's row — not
            // a missing row.
            if with_snapshot(|| local.holds_row(remote, key_src, &key, None, binary, cxt)) {
                return Some((local.relid, RowOutcome::Skipped));
            }
        }
        let target = with_snapshot(|| local.update_target(key_src, &key, full, &m.new, binary, cxt));
        missing_row("UPDATE", &target);
        Some((local.relid, RowOutcome::Missing))
    }

    /// DELETE: consecutive deletes from one table by the same key columns are collected and
    /// applied with one statement (`flush_deletes`) when the run ends; deletes that cannot be
    /// batched (REPLICA IDENTITY FULL, a key type without an array type, a conflict policy that
    /// reads every row first) go one by one (`delete_one`).
    pub fn delete(&mut self, m: Delete, progress: &mut Progress) {
        self.require_txn("DELETE");
        self.flush_inserts();
        self.flush_updates();
        if self.deletes.as_ref().is_some_and(|b| b.rel_oid != m.rel_oid) {
            self.flush_deletes();
        }
        self.drain_counts(progress);
        // Under `error` with `track_commit_timestamp` a run is still batched: its rows' origins
        // are asked for at once (`flush_deletes`), as for UPDATEs.
        let batching = self.row_by_row_lsn != Some(self.commit_end()) && conflict::batches_updates();
        // Before the relation is bound: an error binding it names this message.
        errctx::set_kind("DELETE");
        let Some(entry) = self.target(m.rel_oid) else { return };
        let RelEntry { remote, local, .. } = entry;
        let Some(local) = local.as_mut() else { return };
        let old = match &m.old {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        };
        check_width(remote, old, "old tuple");
        let (full, key) = local.row_identity(remote, old);
        let batchable = batching
            && !full
            && !local.after_row_triggers
            && !local.picks_one_row(remote)
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
        // In order: a collected run of this table goes first.
        self.flush_deletes();
        match self.delete_one(&m) {
            Some((relid, RowOutcome::Applied)) => progress.counters.deleted(relid, 1),
            Some((relid, RowOutcome::Missing)) => progress.counters.conflict(relid, ConflictType::DeleteMissing, 1),
            Some((_, RowOutcome::Skipped)) | None => {}
        }
        self.drain_counts(progress);
    }

    /// One DELETE through its prepared plan: Some((local table, outcome)), None when not applied
    /// here. With `conflict::checks_rows` the local row is read first and an origin conflict
    /// resolved (`conflict::before_delete`); a row kept by the policy is `Skipped`.
    pub(super) fn delete_one(&mut self, m: &Delete) -> Option<(pg_sys::Oid, RowOutcome)> {
        let binary = self.binary;
        let cxt = self.msg_cxt.value();
        errctx::set_kind("DELETE");
        let entry = self.target(m.rel_oid)?;
        let RelEntry { remote, local, .. } = entry;
        let local = local.as_mut()?;
        let old = match &m.old {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        };
        let (full, key) = local.row_identity(remote, old);
        if full {
            let odd = uncomparable(old, &local.cols);
            if let Some(first) = odd.iter().position(|o| *o) {
                if with_snapshot(|| local.uncomparable_candidate(remote, old, &key, &odd, binary, cxt)) {
                    no_equality(local.cols[first].typid);
                }
                let target = with_snapshot(|| local.row_target(old, &key, full, binary, cxt));
                missing_row("DELETE", &target);
                return Some((local.relid, RowOutcome::Missing));
            }
        }
        if conflict::checks_rows() {
            let key_cols: Vec<usize> = (0..key.len()).filter(|&i| key[i]).collect();
            let (apply, found) = with_snapshot(|| {
                let key_values = conflict::RemoteValues::of(local, old, binary, cxt);
                conflict::before_delete(local, &key_cols, &key_values)
            });
            if let Some(t) = found {
                conflict::count(local.relid, t);
            }
            if !apply {
                return Some((local.relid, RowOutcome::Skipped));
            }
        }
        let processed = with_snapshot(|| {
            let nulls = local.null_keys(remote, old, &key);
            let plan = local.plan_for_nulls(PlanKey::Delete { key: key.clone() }, remote, nulls);
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
                owner::as_table_owner(local.relid, || execute(plan, &mut values, &nulls, pg_sys::SPI_OK_DELETE as i32))
            })
        });
        if processed > 0 {
            return Some((local.relid, RowOutcome::Applied));
        }
        if with_snapshot(|| local.holds_row(remote, old, &key, None, binary, cxt)) {
            return Some((local.relid, RowOutcome::Skipped));
        }
        let target = with_snapshot(|| local.row_target(old, &key, full, binary, cxt));
        missing_row("DELETE", &target);
        Some((local.relid, RowOutcome::Missing))
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
                    targets.push((l.relid, format!("{}{}", l.only, l.qualified)));
                }
            }
        }
        errctx::set_message("TRUNCATE", None);
        if targets.is_empty() {
            return;
        }
        // Like native: never cascade further on the subscriber.
        let restart = if m.restart_identity { " RESTART IDENTITY" } else { "" };
        let run = |names: &[&str]| Spi::run(&format!("TRUNCATE {}{restart}", names.join(", ")));
        if let Err(e) = owner::truncate_as_owners(&targets, run) {
            report::error(Code::ERRCODE_INTERNAL_ERROR, format!("TRUNCATE failed: {e}"), None, None);
        }
        for (relid, _) in targets {
            progress.counters.truncated(relid);
        }
    }
}

extern "C-unwind" {
    // twophase.h (not in pgrx's bindings): finishes a prepared transaction by gid.
    fn FinishPreparedTransaction(gid: *const std::ffi::c_char, is_commit: bool);
}

/// Forgets the origin position a commit that failed had set for its commit record (a deferred
/// trigger or constraint failing at COMMIT ends it with an ERROR before the position is reset):
/// called first thing after an error, so that a transaction committed next — disabling the
/// subscription, recording the error or a conflict — does not advance the origin past remote
/// transactions that were never applied.
pub(crate) fn forget_origin_position() {
    // SAFETY: plain assignments to the session's origin globals.
    unsafe {
        pg_sys::replorigin_session_origin_lsn = 0;
        pg_sys::replorigin_session_origin_timestamp = 0;
    }
}

/// Closes SPI and commits the local transaction with `c`'s end LSN and commit time as the
/// replication origin's progress (in the commit record itself); reports table statistics.
/// Returns the local commit's end.
///
/// # Safety
/// A local transaction with SPI connected is open (`Applier::begin`).
unsafe fn commit_local(c: &Commit) -> Lsn {
    // SAFETY: per the caller; the origin position goes into the commit record.
    let local_end = unsafe {
        pg_sys::SPI_finish();
        pg_sys::replorigin_session_origin_lsn = c.end_lsn.0;
        pg_sys::replorigin_session_origin_timestamp = c.commit_time;
        pg_sys::CommitTransactionCommand();
        pg_sys::replorigin_session_origin_lsn = 0;
        pg_sys::replorigin_session_origin_timestamp = 0;
        Lsn(pg_sys::XactLastCommitEnd)
    };
    crate::process::repin_session_settings();
    super::report_stats(false);
    local_end
}

/// Name of the local prepared transaction for remote transaction `xid`.
pub fn local_gid(subid: i32, xid: u32) -> String {
    format!("pgsub_{subid}_{xid}")
}

/// Two of the subscription's tables whose names were swapped on the publisher and here (a
/// change of `remote` finds local table `found`, recorded under another name, where the
/// subscription recorded `recorded`, and the local table of `found`'s recorded name is
/// `recorded`): as native, which binds each remote table to the local table of its name, the
/// records swap names (written between transactions: `Applier::write_names`) and the changes go
/// to `found`. Only between ready tables: a table still being synchronized is known by name to
/// its sync worker, so a swap with it is left to the WARNING (`relation::warn_replaced`). False
/// when it is no such swap.
fn swap_names(
    tables: &mut super::tables::TableStates,
    remote: &pgsub_proto::pgoutput::Relation,
    recorded: u32,
    found: u32,
) -> bool {
    let Some((found_schema, found_name)) = tables.key_of(found) else { return false };
    if !tables.is_ready(found) || !tables.is_ready(recorded) {
        return false;
    }
    let other = format!("{}.{}", quote_ident(&found_schema), quote_ident(&found_name));
    let other_now = with_snapshot(|| super::relcat::relation(&other)).map(|(oid, _)| oid.to_u32());
    if other_now != Some(recorded) {
        return false;
    }
    tables.swap(recorded, found);
    let qualified = format!("{}.{}", quote_ident(&remote.namespace), quote_ident(&remote.name));
    report::log(
        PgLogLevel::LOG,
        Code::ERRCODE_SUCCESSFUL_COMPLETION,
        format!(
            "pgsub: tables {qualified} and {other} of the subscription swapped names on the publisher and here: each one's changes are applied under its new name"
        ),
        Some(format!("The subscription now records table oid {found} as {qualified} and table oid {recorded} as {other}.")),
        None,
    );
    true
}

/// The publisher sends changes of a table under a name the subscription does not record: when
/// the local table of that name is one the subscription has (recorded under its old name — the
/// table was renamed on the publisher and here alike), it follows the rename, as native apply
/// does (it keeps tables by their local OID): recorded under the new name (written between
/// transactions: `Applier::write_names`) and applied. False when it is not such a table.
fn follow_rename(tables: &mut super::tables::TableStates, remote: &pgsub_proto::pgoutput::Relation) -> bool {
    if remote.namespace == crate::api::PGSUB_SCHEMA {
        return false;
    }
    let qualified = format!("{}.{}", quote_ident(&remote.namespace), quote_ident(&remote.name));
    let Some((oid, _)) = with_snapshot(|| super::relcat::relation(&qualified)) else { return false };
    let Some((old_schema, old_name)) = tables.key_of(oid.to_u32()) else { return false };
    tables.rename(oid.to_u32(), &remote.namespace, &remote.name);
    report::log(
        PgLogLevel::LOG,
        Code::ERRCODE_SUCCESSFUL_COMPLETION,
        format!(
            "pgsub: table {qualified} is the subscription's table {}.{}, renamed on the publisher and here: its changes are applied under the new name",
            quote_ident(&old_schema),
            quote_ident(&old_name)
        ),
        None,
        None,
    );
    true
}
