//! Runs of changes to one table applied together (bench/NOTES.md): INSERTs loaded with one
//! COPY, DELETEs by key and UPDATEs that keep their key each with one statement over `unnest` of
//! array parameters (`pgsub_core::sql`). A run ends at any other change, at commit, or when it
//! is full; a transaction whose batch failed is applied row by row on retry
//! (`Applier::row_by_row_for`), so that its error names the row.
use super::apply::Applier;
use super::copyin;
use super::errctx;
use super::execute::{in_context, run_batch, tally, with_snapshot, RowOutcome};
use super::progress::Progress;
use super::relation::{PlanKey, RelEntry};
use crate::shmem::ConflictType;
use pgrx::prelude::*;
use pgsub_proto::pgoutput::{Delete, Insert, OldTuple, TupleData, TupleValue, Update};
use std::collections::HashSet;

/// A run of INSERTs into one relation, waiting to be loaded together.
pub(super) struct InsertBatch {
    pub(super) rel_oid: u32,
    pub(super) rows: Vec<Insert>,
    pub(super) bytes: usize,
    /// The remote xids of the transactions whose inserts began and last joined the run: they
    /// differ when it went on past a deferred commit (grouped commits), and an error in its COPY
    /// cannot name one of them.
    pub(super) first_xid: u32,
    pub(super) last_xid: u32,
}

pub(super) const BATCH_MAX_ROWS: usize = 10_000;

pub(super) const BATCH_MAX_BYTES: usize = 8 << 20;

/// The key (or whole old row) a DELETE names its row by.
fn old_of(m: &Delete) -> &TupleData {
    let (OldTuple::Key(t) | OldTuple::Full(t)) = &m.old;
    t
}

/// A run of DELETEs from one table by the same key columns, applied with one statement.
pub(super) struct DeleteBatch {
    pub(super) rel_oid: u32,
    pub(super) key: Vec<bool>,
    pub(super) rows: Vec<Delete>,
}

pub(super) const DELETE_BATCH_MAX_ROWS: usize = 1000;

/// A run of UPDATEs of one table that keep their key, with the same key and set columns and no
/// key twice, applied with one statement.
pub(super) struct UpdateBatch {
    pub(super) rel_oid: u32,
    pub(super) set: Vec<bool>,
    pub(super) key: Vec<bool>,
    pub(super) rows: Vec<Update>,
    /// Bytes of the new values in `rows` (the run is applied before it holds too much).
    pub(super) bytes: usize,
    /// The key values of `rows`, as received: a key seen twice ends the run, because one
    /// `UPDATE … FROM` changes a row once however many source rows match it.
    pub(super) seen: HashSet<Vec<u8>>,
}

pub(super) const UPDATE_BATCH_MAX_ROWS: usize = 1000;

/// The values are held three times while a run is applied (received, converted, in the array
/// parameters): a run of wide rows ends early.
pub(super) const UPDATE_BATCH_MAX_BYTES: usize = 4 << 20;

/// Fewer rows than this go through the prepared one-row UPDATE instead.
pub(super) const UPDATE_BATCH_MIN_ROWS: usize = 4;

/// Fewer rows than this go through the prepared INSERT instead of COPY.
pub(super) const BATCH_MIN_COPY_ROWS: usize = 8;

impl Applier {
    /// The collected inserts one by one; the rows a conflict policy left out (the local row
    /// kept) come off the run's count.
    fn insert_each(&mut self, relid: pg_sys::Oid, rows: Vec<Insert>) {
        let mut left_out = 0i64;
        for m in rows {
            if !with_snapshot(|| self.insert_one(m)) {
                left_out += 1;
            }
        }
        if left_out > 0 {
            self.batched.inserted(relid, -left_out);
        }
    }

    /// Applies the collected inserts: through COPY for a real run, one by one for a few rows.
    pub fn flush_inserts(&mut self) {
        let Some(batch) = self.batch.take() else { return };
        // A run carried over commits of a group (rows of several transactions, or of an earlier
        // one than the transaction being applied): an error names the transactions' range (and
        // is left so for the error handler, which reads the context).
        let current = errctx::xid().unwrap_or(batch.last_xid);
        let carried = batch.first_xid != batch.last_xid || batch.last_xid != current;
        if carried {
            errctx::set_span(Some((batch.first_xid, current)));
        }
        // Every row of the run was taken in while its transaction was applied: a carried run
        // loaded in a later transaction that is being skipped (ORIGIN of another node with
        // origin = none) is not skipped with it.
        let skipping = std::mem::replace(&mut self.skipping, false);
        self.load_inserts(batch);
        self.skipping = skipping;
        if carried {
            errctx::set_span(None);
        }
    }

    fn load_inserts(&mut self, batch: InsertBatch) {
        // Counted once per run (with the transaction's other counts at its commit), not per row.
        let relid = super::relation::local_relid(&self.rels, batch.rel_oid);
        self.batched.inserted(relid, batch.rows.len() as i64);
        // A COPY error names neither the remote row nor the column: the transaction whose batch
        // failed last time is applied row by row, so that its error names them.
        // Statement triggers would fire for the COPY, row-level AFTER triggers all at its end.
        let stmt_triggers = self
            .rels
            .get(&batch.rel_oid)
            .and_then(|e| e.local.as_ref())
            .is_some_and(|l| l.stmt_insert_triggers || l.after_row_triggers);
        // COPY cannot leave a conflicting row alone: under a conflict policy inserts go one by one.
        if batch.rows.len() < BATCH_MIN_COPY_ROWS
            || self.row_by_row_lsn == Some(self.commit_end())
            || stmt_triggers
            || super::conflict::policy() != crate::catalog::Resolution::Error
        {
            self.insert_each(relid, batch.rows);
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
            self.insert_each(relid, batch.rows);
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
        with_snapshot(|| super::owner::as_table_owner(relid, || copyin::copy_into(relid, &columns, buf, binary)));
    }

    /// Applies the collected updates with one `UPDATE … FROM unnest(…) WITH ORDINALITY …
    /// RETURNING` statement: each set and key column's values go in as one array, and the
    /// ordinals that come back tell which remote rows were found (a row not found is a conflict,
    /// logged like a single UPDATE's). A short run goes one by one.
    pub fn flush_updates(&mut self) {
        let Some(batch) = self.updates.take() else { return };
        if batch.rows.len() < UPDATE_BATCH_MIN_ROWS
            || (super::conflict::origins_tracked() && {
                let news: Vec<&TupleData> = batch.rows.iter().map(|m| &m.new).collect();
                self.foreign_origin_in(batch.rel_oid, &batch.key, &news)
            })
        {
            for m in &batch.rows {
                match with_snapshot(|| self.update_one(m)) {
                    Some((relid, RowOutcome::Applied)) => self.batched.updated(relid, 1),
                    Some((relid, RowOutcome::Missing)) => self.batched.conflict(relid, ConflictType::UpdateMissing, 1),
                    Some((_, RowOutcome::Skipped)) | None => {}
                }
            }
            return;
        }
        let binary = self.binary;
        let cxt = self.msg_cxt.value();
        let Some(entry) = self.rels.get_mut(&batch.rel_oid) else { return };
        let RelEntry { remote, local, display, .. } = entry;
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
                let relid = local.relid;
                super::owner::as_table_owner(relid, || {
                    run_batch(plan, &mut values, pg_sys::SPI_OK_UPDATE_RETURNING as i32, n)
                })
            })
        });
        let relid = local.relid;
        let present: Vec<bool> = (0..n)
            .map(|i| {
                !found[i]
                    && with_snapshot(|| local.holds_row(remote, &batch.rows[i].new, &batch.key, None, binary, cxt))
            })
            .collect();
        let target = |i: usize| {
            let new = &batch.rows[i].new;
            with_snapshot(|| local.update_target(new, &batch.key, false, new, binary, cxt))
        };
        let mut hit = 0;
        let missing = tally(&found, "UPDATE", &present, target, &mut hit);
        self.batched.updated(relid, hit);
        self.batched.conflict(relid, ConflictType::UpdateMissing, missing);
        errctx::set_kind("");
    }

    /// Whether a row of a run (of `rel_oid`, found by the `key` columns of `tuples`) was last
    /// written by another origin than this subscription's (`conflict::batches_updates`): then the
    /// run goes one by one, each row's origin looked at.
    fn foreign_origin_in(&mut self, rel_oid: u32, key: &[bool], tuples: &[&TupleData]) -> bool {
        let binary = self.binary;
        let cxt = self.msg_cxt.value();
        let Some(entry) = self.rels.get_mut(&rel_oid) else { return false };
        let RelEntry { remote, local, .. } = entry;
        let Some(local) = local.as_mut() else { return false };
        let n = tuples.len();
        let key_cols: Vec<usize> = key.iter().enumerate().filter(|(_, k)| **k).map(|(i, _)| i).collect();
        let foreign = with_snapshot(|| {
            let plan = local.plan(PlanKey::ForeignOrigins { key: key.to_vec() }, remote);
            let own = super::conflict::own_origins();
            in_context(cxt, || {
                let mut values: Vec<pg_sys::Datum> = key_cols
                    .iter()
                    .map(|&c| local.cols[c].array_of(tuples.iter().map(|t| t.columns.get(c)), n, binary))
                    .collect();
                values.push(own.into_datum().unwrap_or(pg_sys::Datum::from(0)));
                let relid = local.relid;
                super::owner::as_table_owner(relid, || run_batch(plan, &mut values, pg_sys::SPI_OK_SELECT as i32, n))
            })
        });
        foreign.iter().any(|f| *f)
    }

    /// Applies the collected deletes with one `DELETE … USING unnest(…) WITH ORDINALITY …
    /// RETURNING` statement: each key column's values go in as one array, and the ordinals that
    /// come back tell which remote rows were found. A row not found is a conflict, logged like a
    /// single DELETE's; a key that occurs twice in the run finds its row once, as two single
    /// DELETEs would.
    pub fn flush_deletes(&mut self) {
        let Some(batch) = self.deletes.take() else { return };
        if super::conflict::origins_tracked() && {
            let olds: Vec<&TupleData> = batch.rows.iter().map(old_of).collect();
            self.foreign_origin_in(batch.rel_oid, &batch.key, &olds)
        } {
            for m in &batch.rows {
                match self.delete_one(m) {
                    Some((relid, RowOutcome::Applied)) => self.batched.deleted(relid, 1),
                    Some((relid, RowOutcome::Missing)) => self.batched.conflict(relid, ConflictType::DeleteMissing, 1),
                    Some((_, RowOutcome::Skipped)) | None => {}
                }
            }
            return;
        }
        let binary = self.binary;
        let cxt = self.msg_cxt.value();
        let Some(entry) = self.rels.get_mut(&batch.rel_oid) else { return };
        let RelEntry { remote, local, display, .. } = entry;
        let Some(local) = local.as_mut() else { return };
        errctx::set_message("DELETE", Some(display.clone()));
        errctx::set_kind(errctx::DELETE_BATCH);
        let n = batch.rows.len();
        let relid = local.relid;
        let key_cols: Vec<usize> = batch.key.iter().enumerate().filter(|(_, k)| **k).map(|(i, _)| i).collect();
        let found = with_snapshot(|| {
            let plan = local.plan(PlanKey::DeleteBatch { key: batch.key.clone() }, remote);
            in_context(cxt, || {
                let mut values: Vec<pg_sys::Datum> = key_cols
                    .iter()
                    .map(|&c| {
                        let olds = batch.rows.iter().map(|m| old_of(m).columns.get(c));
                        local.cols[c].array_of(olds, n, binary)
                    })
                    .collect();
                let relid = local.relid;
                super::owner::as_table_owner(relid, || {
                    run_batch(plan, &mut values, pg_sys::SPI_OK_DELETE_RETURNING as i32, n)
                })
            })
        });
        let present: Vec<bool> = (0..n)
            .map(|i| {
                !found[i]
                    && with_snapshot(|| local.holds_row(remote, old_of(&batch.rows[i]), &batch.key, None, binary, cxt))
            })
            .collect();
        let target =
            |i: usize| with_snapshot(|| local.row_target(old_of(&batch.rows[i]), &batch.key, false, binary, cxt));
        let mut hit = 0;
        let missing = tally(&found, "DELETE", &present, target, &mut hit);
        self.batched.deleted(relid, hit);
        self.batched.conflict(relid, ConflictType::DeleteMissing, missing);
        errctx::set_kind("");
    }

    pub(super) fn flush_batches(&mut self) {
        self.flush_inserts();
        self.flush_updates();
        self.flush_deletes();
    }

    /// Adds what batched DELETEs and UPDATEs did to the counters.
    pub(super) fn drain_counts(&mut self, progress: &mut Progress) {
        progress.counters.absorb(std::mem::take(&mut self.batched));
        // Conflicts the conflict module found and resolved (insert_exists, origin differs, …).
        for (relid, t, n) in super::conflict::take_counts() {
            progress.counters.conflict(relid, t, n);
        }
    }
}
