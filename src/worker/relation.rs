//! The relation map (PostgreSQL's `logical/relation.c`): each remote relation the publisher
//! described in a RELATION message, bound on first use to the local table of the same
//! schema-qualified name, its remote columns mapped to local columns by name with their type's
//! input/receive functions and equality operator, and the statements prepared for it (text from
//! `pgsub_core::sql`, prepared with SPI and kept). A relcache invalidation of the local table
//! (DDL) drops the binding and its plans, rebuilt at next use. The plans are kept for at most
//! `pgsub.max_cached_relations` relations: beyond it the least recently used relation's plans
//! are freed (`evict_plans`), its description and binding stay.
use super::errctx;
use super::execute::in_context;
use crate::report;
use pgrx::prelude::*;
use pgsub_core::sql;
use pgsub_proto::client::quote_ident;
use pgsub_proto::pgoutput::{Relation, ReplicaIdentity, TupleData, TupleValue};
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::sync::Mutex;

type Code = PgSqlErrorCode;

/// Local column a remote column maps to.
pub(super) struct ColMap {
    pub(super) name: String,
    pub(super) typid: pg_sys::Oid,
    pub(super) typmod: i32,
    pub(super) input: Box<pg_sys::FmgrInfo>,
    pub(super) receive: Option<Box<pg_sys::FmgrInfo>>,
    pub(super) ioparam: pg_sys::Oid,
    /// `OPERATOR(schema.=)` for this type, when it has a default equality operator.
    pub(super) eq_op: Option<String>,
    /// The array type of the column's type and the element layout, for batched DELETEs and
    /// UPDATEs (`None` when the type has no array type).
    pub(super) array: Option<ArrayInfo>,
    /// Values are equal exactly when the text (and binary) forms received are equal, so that a
    /// repeated key in a run of UPDATEs is seen by comparing bytes: the local type compares by
    /// representation (integers, uuid, text and varchar under a deterministic collation, dates
    /// and timestamps) and the remote column has the same type.
    pub(super) exact_key: bool,
    /// The local column is GENERATED ALWAYS AS IDENTITY: inserted with OVERRIDING SYSTEM VALUE,
    /// and never set by an UPDATE (SQL refuses it; the value must stay what it is, `sql.rs`).
    pub(super) identity_always: bool,
    /// A composite type or a domain over one (`sql::Column::row_type`).
    pub(super) row_type: bool,
}

#[derive(Clone, Copy)]
pub(super) struct ArrayInfo {
    pub(super) typid: pg_sys::Oid,
    pub(super) elem_len: i16,
    pub(super) elem_byval: bool,
    pub(super) elem_align: std::ffi::c_char,
}

/// A statement shape: the plan cache key of a relation.
pub(super) type PlanKey = sql::Statement;

/// A remote relation bound to its local table.
pub(super) struct LocalRel {
    pub(super) relid: pg_sys::Oid,
    /// `"schema"."name"`, quoted.
    pub(super) qualified: String,
    /// `ONLY ` for plain tables (partitioned tables route to their partitions).
    pub(super) only: &'static str,
    pub(super) cols: Vec<ColMap>,
    pub(super) plans: HashMap<(PlanKey, Option<Vec<bool>>), pg_sys::SPIPlanPtr>,
    /// The table has statement-level INSERT triggers that fire during apply (enabled REPLICA or
    /// ALWAYS): its inserts are not loaded with COPY, which would fire them (`triggers.rs`).
    pub(super) stmt_insert_triggers: bool,
    /// The table or a partition has row-level AFTER triggers that fire during apply: its changes
    /// are applied row by row, never in batched runs (`relcat::has_after_row_triggers`).
    pub(super) after_row_triggers: bool,
    /// Its partitions, when it is partitioned: the binding reads their triggers and keys too, and
    /// is dropped when one of them changes (`drop_stale`).
    pub(super) partitions: Vec<u32>,
    /// The columns (a mask over `cols`) of the local replica identity index or primary key, when
    /// every one of them is replicated: under a remote REPLICA IDENTITY FULL rows are found by
    /// them, as native apply finds them through that index.
    pub(super) identity_key: Option<Vec<bool>>,
    /// A local unique index covers only remote key columns, so a remote key finds one row at
    /// most. Otherwise (no such index: duplicates are legal here) an UPDATE or DELETE by the
    /// remote key changes one of the matching rows, as under FULL, not all of them.
    pub(super) remote_key_unique: bool,
    /// The local columns not among the remote ones that a row is inserted with (not generated):
    /// a replacing UPDATE (`sql::Statement::Replace`) carries their values over.
    pub(super) kept: Vec<String>,
    /// A `DEFERRABLE` unique or exclusion constraint (on the table or a partition): conflicts are
    /// looked up before a plain INSERT, not found by `ON CONFLICT DO NOTHING`, which refuses it.
    pub(super) deferrable_keys: bool,
    /// Per column (as `cols`): a unique or exclusion index covers it. A run of UPDATEs that sets
    /// one is applied one by one, in the publisher's order, not as one statement.
    pub(super) constrained: Vec<bool>,
}

impl LocalRel {
    /// How the row a change of `remote` names is found: whether by every column sent (FULL
    /// semantics: NULLs match) and the key columns. Under a remote FULL identity the local
    /// replica identity index or primary key is used when there is one.
    pub(super) fn row_identity(&self, remote: &Relation, t: &TupleData) -> (bool, Vec<bool>) {
        let full = remote.replica_identity == ReplicaIdentity::Full;
        match (&self.identity_key, full) {
            (Some(mask), true) => (false, mask.clone()),
            _ => (full, super::execute::key_mask(remote, t, full, &self.cols)),
        }
    }

    /// Whether one of possibly several matching rows is chosen (by ctid) for an UPDATE or DELETE.
    pub(super) fn picks_one_row(&self, remote: &Relation) -> bool {
        if remote.replica_identity == ReplicaIdentity::Full {
            self.identity_key.is_none()
        } else {
            !self.remote_key_unique
        }
    }
}

pub(super) struct RelEntry {
    pub(super) remote: Relation,
    pub(super) local: Option<LocalRel>,
    /// `"schema"."name"` of the remote relation, for error context.
    pub(super) display: std::rc::Rc<str>,
    /// When a change last targeted it (the applier's counter): the plan cache's LRU order.
    pub(super) last_used: u64,
    /// Not among the subscription's tables, and [`unlisted`] has looked at it.
    pub(super) unlisted_seen: bool,
    /// The local table of its name is not the one the subscription recorded (that one was
    /// dropped, or renamed away and another took its name): [`replaced`] said so, and its changes
    /// are not applied until the subscription is refreshed. The other table's oid, so that its
    /// invalidation (dropped or renamed in turn) has the name looked up again.
    pub(super) replaced_by: Option<u32>,
}

thread_local! {
    /// The relations [`unlisted`] warned about.
    static WARNED_UNLISTED: std::cell::RefCell<HashSet<String>> = std::cell::RefCell::new(HashSet::new());
    /// The relations [`insert_without_values`] warned about.
    static WARNED_UNSENT: std::cell::RefCell<HashSet<String>> = std::cell::RefCell::new(HashSet::new());
}

/// An INSERT whose tuple marks columns "unchanged TOAST" (values the publisher did not send): a
/// PostgreSQL 15+ publisher turns an UPDATE that moves a row into a publication's row filter into
/// an INSERT and leaves its unchanged out-of-line values out. As natively, those columns take
/// their local default (NULL); unlike native, a WARNING (once per table and worker) says so, since
/// the subscriber's row then differs from the publisher's.
pub(super) fn insert_without_values(display: &str, remote: &Relation, new: &TupleData) {
    if !WARNED_UNSENT.with_borrow_mut(|w| w.insert(display.to_string())) {
        return;
    }
    let cols: Vec<String> = new
        .columns
        .iter()
        .zip(&remote.columns)
        .filter(|(v, _)| matches!(v, TupleValue::UnchangedToast))
        .map(|(_, c)| quote_ident(&c.name))
        .collect();
    report::log(
        PgLogLevel::WARNING,
        PgSqlErrorCode::ERRCODE_WARNING,
        format!("pgsub: an INSERT into {display} came without the value of column(s) {}", cols.join(", ")),
        Some("The publisher sent them as unchanged TOAST values: an UPDATE that moved the row into the publication's row filter. They take their local default here, as in native logical replication, and differ from the publisher's.".into()),
        Some("Update those columns on the publisher to send their values, or publish the table without a row filter."),
    );
}

/// A change of a relation that is not among the subscription's tables, as native apply treats
/// it: an ERROR when no local table has its name (the publisher renamed or moved it, or created
/// it in a `FOR ALL TABLES` publication: native's `logical replication target relation … does
/// not exist`, retried until it is created or renamed here); otherwise its changes are not
/// applied, as natively, but said once per worker start, where native is silent.
pub(super) fn unlisted(remote: &Relation) {
    let qualified = format!("{}.{}", quote_ident(&remote.namespace), quote_ident(&remote.name));
    if remote.namespace == crate::api::PGSUB_SCHEMA {
        if WARNED_UNLISTED.with(|w| w.borrow_mut().insert(qualified.clone())) {
            report::log(
                PgLogLevel::WARNING,
                Code::ERRCODE_WARNING,
                format!("pgsub: changes of relation {qualified} are not applied: pgsub's catalog is never replicated"),
                Some("The publisher runs pgsub too and publishes its catalog (a publication FOR ALL TABLES).".into()),
                None,
            );
        }
        return;
    }
    let found = super::execute::with_snapshot(|| super::relcat::relation(&qualified));
    if let Some((_, relkind)) = &found {
        refuse_non_table(remote, relkind);
    }
    if found.is_none() {
        report::error(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!(
                "logical replication target relation {} does not exist",
                native_name(&remote.namespace, &remote.name)
            ),
            Some("The publisher sends changes of this table, which is not among the subscription's tables: dropped here, renamed or moved on the publisher, or added to a publication there.".into()),
            Some("Create (or rename) the table here and refresh the subscription (pgsub.refresh_subscription), or remove the table from the publication; the worker retries."),
        );
    }
    // Once per worker and name: a root published via its root is described again (and so looked
    // at again) for each of its partitions' first change.
    if !WARNED_UNLISTED.with(|w| w.borrow_mut().insert(qualified.clone())) {
        return;
    }
    report::log(
        PgLogLevel::WARNING,
        Code::ERRCODE_WARNING,
        format!("pgsub: changes of relation {qualified} are not applied: it is not among the subscription's tables"),
        Some("The publisher sends them (the table was renamed or moved there, or added to a publication).".into()),
        Some("Refresh the subscription (pgsub.refresh_subscription) to add it."),
    );
}

/// Something else than a table has the remote relation's name here (a view put in the table's
/// place): native's error — it opens the local relation by name first — retried until a table is
/// back, rather than its changes skipped.
/// A relation as native's messages name it: `"schema.name"`, the parts unquoted (also the key
/// of the local tables bound, by which an apply error's context finds its table).
pub(crate) fn native_name(namespace: &str, name: &str) -> String {
    format!("\"{namespace}.{name}\"")
}

fn refuse_non_table(remote: &Relation, relkind: &str) {
    if relkind == "r" || relkind == "p" {
        return;
    }
    let what = match relkind {
        "v" => "views",
        "m" => "materialized views",
        "f" => "foreign tables",
        "S" => "sequences",
        _ => "this kind of relation",
    };
    report::error(
        Code::ERRCODE_WRONG_OBJECT_TYPE,
        format!("cannot use relation {} as logical replication target", native_name(&remote.namespace, &remote.name)),
        Some(format!("This operation is not supported for {what}.")),
        Some("Put a table of that name back (and refresh the subscription to copy it); the worker retries."),
    );
}

/// The local table of the remote relation's name, when it is not `recorded`, the table the
/// subscription holds for it: the oid of the other table. As natively (the subscription's table
/// state is kept by local table there), a table dropped and created again here, or one renamed
/// into the place of the subscription's, is not the subscription's until it is refreshed, which
/// copies the new one: its changes are not applied meanwhile (`warn_replaced`). Another of the
/// subscription's tables that took the name (two tables' names swapped on both sides) is the
/// apply worker's to follow (`apply::swap_names`). A relation of that name that is no table (a
/// view) is native's error. A table of that name missing altogether is left to the binding, whose
/// error names it.
pub(super) fn other_local(remote: &Relation, recorded: u32) -> Option<u32> {
    let qualified = format!("{}.{}", quote_ident(&remote.namespace), quote_ident(&remote.name));
    let (found, relkind) = super::execute::with_snapshot(|| super::relcat::relation(&qualified))?;
    if found.to_u32() == recorded {
        return None;
    }
    refuse_non_table(remote, &relkind);
    Some(found.to_u32())
}

/// Says once that the changes of `remote` are not applied: local table `found`, which is not the
/// subscription's, has the name of its table `recorded` (`other_local`). Native is silent.
pub(super) fn warn_replaced(remote: &Relation, recorded: u32, found: u32) {
    let qualified = format!("{}.{}", quote_ident(&remote.namespace), quote_ident(&remote.name));
    report::log(
        PgLogLevel::WARNING,
        Code::ERRCODE_WARNING,
        format!("pgsub: changes of relation {qualified} are not applied: the local table of that name is not the one the subscription copied"),
        Some(format!(
            "The subscription's table (oid {recorded}) was dropped or renamed here; table {qualified} (oid {found}) has its name now."
        )),
        Some("Refresh the subscription (pgsub.refresh_subscription) to copy the new table, or rename the old one back; the changes meanwhile are not applied."),
    );
}

/// Where a remote UPDATE or DELETE found no row (`LocalRel::row_target`): the relation (the
/// leaf partition of a partitioned target, as natively) and the key looked for, as PostgreSQL's
/// messages show it and as a JSON object of the columns' text values.
pub(super) struct RowTarget {
    pub(super) relation: String,
    pub(super) key_text: Option<String>,
    pub(super) key_json: Option<String>,
    /// An UPDATE's new row (`LocalRel::update_target`), as native 18 shows it.
    pub(super) remote_json: Option<String>,
    pub(super) remote_text: Option<String>,
}

/// Relations whose local mapping must be rebuilt (set by the relcache callback).
pub(super) static INVALIDATED: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

pub(super) static INVALIDATE_ALL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    if relid == pg_sys::InvalidOid {
        INVALIDATE_ALL.store(true, std::sync::atomic::Ordering::Relaxed);
    } else if let Ok(mut g) = INVALIDATED.lock() {
        g.get_or_insert_with(HashSet::new).insert(relid.to_u32());
    }
}

/// A schema was created, renamed or dropped: every binding is looked up again. Statements name
/// their table by schema and name, so after `ALTER SCHEMA … RENAME` (which invalidates no table)
/// they would go on naming the old schema — another table, if one took that name.
#[pg_guard]
unsafe extern "C-unwind" fn namespace_callback(_arg: pg_sys::Datum, _cacheid: i32, _hash: u32) {
    INVALIDATE_ALL.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Has relcache and schema invalidations reach this process's relation map (once per worker).
pub(super) fn register_invalidation_callback() {
    // SAFETY: registering static callbacks once per worker process; they only set flags.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0));
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::NAMESPACEOID as i32,
            Some(namespace_callback),
            pg_sys::Datum::from(0),
        );
    }
}

/// Whether invalidations are waiting for `drop_stale`.
pub(super) fn stale_pending() -> bool {
    INVALIDATE_ALL.load(std::sync::atomic::Ordering::Relaxed)
        || INVALIDATED.lock().is_ok_and(|g| g.as_ref().is_some_and(|s| !s.is_empty()))
}

/// Drops the local bindings (and plans) of relations whose local table changed since.
pub(super) fn drop_stale(rels: &mut HashMap<u32, RelEntry>) {
    let all = INVALIDATE_ALL.swap(false, std::sync::atomic::Ordering::Relaxed);
    let set = INVALIDATED.lock().ok().and_then(|mut g| g.take()).unwrap_or_default();
    if !all && set.is_empty() {
        return;
    }
    for e in rels.values_mut() {
        if e.replaced_by.is_some_and(|oid| all || set.contains(&oid)) {
            e.replaced_by = None;
        }
        let stale = match &e.local {
            Some(l) => all || set.contains(&l.relid.to_u32()) || l.partitions.iter().any(|p| set.contains(p)),
            None => false,
        };
        if stale {
            if let Some(l) = e.local.take() {
                free_plans(l.plans);
            }
        }
    }
}

thread_local! {
    /// Local tables bound so far, by the qualified name the error context shows: an apply error
    /// that is a conflict is counted on its table (`bound_relid`).
    static BOUND: std::cell::RefCell<HashMap<String, pg_sys::Oid>> = std::cell::RefCell::new(HashMap::new());
}

/// The local table of the relation the error context names (see `BOUND`).
pub(crate) fn bound_relid(qualified: &str) -> Option<pg_sys::Oid> {
    BOUND.with(|b| b.borrow().get(qualified).copied())
}

/// The local table a remote relation is applied to (0 = not bound yet): what the per-table
/// counters are kept by.
pub(super) fn local_relid(rels: &HashMap<u32, RelEntry>, rel_oid: u32) -> pg_sys::Oid {
    rels.get(&rel_oid).and_then(|e| e.local.as_ref()).map_or(pg_sys::InvalidOid, |l| l.relid)
}

pub(super) fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

thread_local! {
    /// Relations of this process's relation map that hold kept plans (`plan` counts a relation's
    /// first, `free_plans` its last).
    static PLANNED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A new relation map holds no plans (one per process; a map is only dropped at exit).
pub(super) fn reset_planned() {
    PLANNED.with(|c| c.set(0));
}

/// How many relations hold kept plans.
pub(super) fn planned_relations() -> usize {
    PLANNED.with(|c| c.get())
}

/// Frees the plans of the least recently used relations (never `keep`'s) until at most `max`
/// relations hold plans. Only plans go: the remote description and the local binding stay, so a
/// pending batch of an evicted relation is still applied (its plan is prepared again). Returns
/// how many relations lost their plans.
pub(super) fn evict_plans(rels: &mut HashMap<u32, RelEntry>, max: usize, keep: u32) -> usize {
    let mut evicted = 0;
    while planned_relations() > max {
        let lru = rels
            .iter()
            .filter(|(oid, e)| **oid != keep && e.local.as_ref().is_some_and(|l| !l.plans.is_empty()))
            .min_by_key(|(_, e)| e.last_used)
            .map(|(oid, _)| *oid);
        let Some(oid) = lru else {
            // Nothing left to free: the count is the map's own again (it cannot be above it
            // unless plans were dropped without `free_plans`), so that the next change does
            // not scan the map in vain.
            let held = rels.values().filter(|e| e.local.as_ref().is_some_and(|l| !l.plans.is_empty())).count();
            PLANNED.with(|c| c.set(held));
            break;
        };
        let Some(e) = rels.get_mut(&oid) else { break };
        if let Some(l) = e.local.as_mut() {
            free_plans(std::mem::take(&mut l.plans));
            evicted += 1;
            report::log(
                PgLogLevel::DEBUG1,
                Code::ERRCODE_SUCCESSFUL_COMPLETION,
                format!(
                    "pgsub: freed the prepared statements of relation {} ({} relations keep theirs, at most {max})",
                    e.display,
                    planned_relations()
                ),
                None,
                None,
            );
        }
    }
    evicted
}

pub(super) fn free_plans(plans: HashMap<(PlanKey, Option<Vec<bool>>), pg_sys::SPIPlanPtr>) {
    if !plans.is_empty() {
        PLANNED.with(|c| c.set(c.get().saturating_sub(1)));
    }
    for (_, p) in plans {
        // SAFETY: plans were kept with SPI_keepplan and are not used after this.
        unsafe { pg_sys::SPI_freeplan(p) };
    }
}

impl ColMap {
    /// One array of this column's type holding the `n` values (an absent value is NULL), for a
    /// batched statement's parameter.
    pub(super) fn array_of<'a>(
        &self,
        values: impl Iterator<Item = Option<&'a TupleValue>>,
        n: usize,
        binary: bool,
    ) -> pg_sys::Datum {
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
    pub(super) fn datum(&self, v: &TupleValue, binary: bool) -> (pg_sys::Datum, std::ffi::c_char) {
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
                // Values arrive in the connection's UTF8: in a database of another encoding they are
                // converted first (an error for a character it cannot hold, as natively).
                // SAFETY: a NUL-terminated string of `bytes.len()` bytes; the conversion returns it
                // or a palloc'd NUL-terminated copy.
                let text = if convert_text() {
                    unsafe { pg_sys::pg_any_to_server(c.as_ptr(), bytes.len() as i32, pg_sys::pg_enc::PG_UTF8 as i32) }
                } else {
                    c.as_ptr() as *mut std::ffi::c_char
                };
                // SAFETY: input function of the local column type, with its ioparam/typmod.
                let d = unsafe {
                    pg_sys::InputFunctionCall(&*self.input as *const _ as *mut _, text, self.ioparam, self.typmod)
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
                // SAFETY: a StringInfo over an exact-size, NUL-terminated copy of our bytes in the
                // current memory context, as PostgreSQL's logicalrep_read_tuple builds it (not
                // initStringInfo's 1 kB per value: a batched UPDATE holds thousands at once).
                let d = unsafe {
                    let len = bytes.len();
                    let data = pg_sys::palloc(len + 1) as *mut std::ffi::c_char;
                    std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const std::ffi::c_char, data, len);
                    *data.add(len) = 0;
                    let mut si = pg_sys::StringInfoData { data, len: len as i32, maxlen: len as i32 + 1, cursor: 0 };
                    errctx::receiving(true);
                    let d =
                        pg_sys::ReceiveFunctionCall(&**recv as *const _ as *mut _, &mut si, self.ioparam, self.typmod);
                    errctx::receiving(false);
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

impl LocalRel {
    /// Whether the row an UPDATE or DELETE changed nothing of is here all the same: identified
    /// by `t`'s `key` columns as the statement looked for it, and for an UPDATE (`same`) holding
    /// `new`'s values in its GENERATED ALWAYS identity columns. A BEFORE ROW trigger that returns
    /// NULL skips the change of a row that is there, which native apply does not count or log
    /// as a conflict either; only a row that is not there is one. Run in a replication step.
    pub(super) fn holds_row(
        &mut self,
        remote: &Relation,
        t: &TupleData,
        key: &[bool],
        same: Option<(&TupleData, &[bool])>,
        binary: bool,
        cxt: pg_sys::MemoryContext,
    ) -> bool {
        let same_mask = same.map_or_else(|| vec![false; key.len()], |(_, m)| m.to_vec());
        let nulls = self.null_keys(remote, t, key);
        let plan = self.plan_for_nulls(PlanKey::Find { key: key.to_vec(), same: same_mask.clone() }, remote, nulls);
        let sources = [(t, key), (same.map_or(t, |(n, _)| n), same_mask.as_slice())];
        self.any_row(plan, &sources, binary, cxt)
    }

    /// Under REPLICA IDENTITY FULL with [`uncomparable`](super::execute::uncomparable) values in
    /// `odd`: whether a local row matches `t`'s `key` columns and holds a value in one of those
    /// — the row native's comparison stops at with "could not identify an equality operator".
    /// Run in a replication step.
    pub(super) fn uncomparable_candidate(
        &mut self,
        remote: &Relation,
        t: &TupleData,
        key: &[bool],
        odd: &[bool],
        binary: bool,
        cxt: pg_sys::MemoryContext,
    ) -> bool {
        let nulls = self.null_keys(remote, t, key);
        let plan = self.plan_for_nulls(PlanKey::Uncomparable { key: key.to_vec(), odd: odd.to_vec() }, remote, nulls);
        self.any_row(plan, &[(t, key)], binary, cxt)
    }

    /// Runs a prepared `SELECT 1 … LIMIT 1` as the table owner, its parameters the values of each
    /// source tuple's masked columns in order; whether it found a row.
    fn any_row(
        &self,
        plan: pg_sys::SPIPlanPtr,
        sources: &[(&TupleData, &[bool])],
        binary: bool,
        cxt: pg_sys::MemoryContext,
    ) -> bool {
        let relid = self.relid;
        let cols = &self.cols;
        in_context(cxt, || {
            let mut values = Vec::new();
            let mut nulls = Vec::new();
            for (tuple, mask) in sources {
                for (i, v) in tuple.columns.iter().enumerate() {
                    if mask.get(i).copied().unwrap_or(false) {
                        let (d, n) = cols[i].datum(v, binary);
                        values.push(d);
                        nulls.push(n);
                    }
                }
            }
            super::owner::as_table_owner(relid, || {
                super::execute::execute(plan, &mut values, &nulls, pg_sys::SPI_OK_SELECT as i32)
            }) > 0
        })
    }

    /// Where the row identified by `t`'s `key` columns belongs, for the message about a missing
    /// row: the table itself, or for a partitioned table its leaf partition, named like native's
    /// `… relation's partition "leaf"`. The leaf is the one whose partition constraint the key
    /// values satisfy; when that cannot be told safely (a partition key that is an expression or
    /// not among the key columns sent), the partitioned table is named.
    /// With it, the key of the row looked for, as `(a, b)=(1, x)` (PostgreSQL 18 logs the
    /// replica identity of a missing row the same way), leaving out columns the subscription's
    /// owner — the worker's user — may not read; None when none is left.
    pub(super) fn row_target(
        &self,
        t: &TupleData,
        key: &[bool],
        full: bool,
        binary: bool,
        cxt: pg_sys::MemoryContext,
    ) -> RowTarget {
        let pairs = self.key_pairs(t, key, binary, cxt);
        let key_text = (!pairs.is_empty()).then(|| {
            if full {
                // Native 18's `replica identity full (…)`: the values alone, cut as a row's.
                let values: Vec<std::borrow::Cow<str>> = pairs
                    .iter()
                    .map(|(_, v)| v.as_deref().map_or("null".into(), super::conflict::clip_value))
                    .collect();
                return format!("full ({})", values.join(", "));
            }
            // Names quoted only when needed, as PostgreSQL's own key details show them.
            let names: Vec<String> = pairs
                .iter()
                .map(|(n, _)| {
                    let plain = n.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                        && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                    if plain {
                        n.clone()
                    } else {
                        pgsub_proto::client::quote_ident(n)
                    }
                })
                .collect();
            let values: Vec<&str> = pairs.iter().map(|(_, v)| v.as_deref().unwrap_or("null")).collect();
            format!("({})=({})", names.join(", "), values.join(", "))
        });
        let key_json = (!pairs.is_empty()).then(|| {
            let fields: Vec<String> = pairs
                .iter()
                .map(|(n, v)| {
                    let v = v.as_deref().map_or("null".to_string(), super::conflict::json_string);
                    format!("{}: {v}", super::conflict::json_string(n))
                })
                .collect();
            format!("{{{}}}", fields.join(", "))
        });
        let leaf = if self.only.is_empty() { self.leaf_partition(t, key, binary, cxt) } else { None };
        // As the other conflict types name it: the relation's regclass text (the worker's
        // search_path is empty, so always schema-qualified, each part quoted when needed).
        let relation = leaf.unwrap_or_else(|| {
            Spi::get_one_with_args::<String>(
                "SELECT $1::pg_catalog.oid::pg_catalog.regclass::pg_catalog.text",
                &[self.relid.into()],
            )
            .ok()
            .flatten()
            .unwrap_or_else(|| self.qualified.clone())
        });
        RowTarget { relation, key_text, key_json, remote_json: None, remote_text: None }
    }

    /// `row_target` of an UPDATE, with its new row `new`.
    pub(super) fn update_target(
        &self,
        t: &TupleData,
        key: &[bool],
        full: bool,
        new: &TupleData,
        binary: bool,
        cxt: pg_sys::MemoryContext,
    ) -> RowTarget {
        let mut target = self.row_target(t, key, full, binary, cxt);
        (target.remote_json, target.remote_text) = super::conflict::remote_row(self, new, binary, cxt);
        target
    }

    /// Whether the current user (the worker's: the subscription owner) may read local column `i`
    /// — what decides if its values may appear in a message or in `pgsub.conflict_log`.
    pub(super) fn readable(&self, i: usize) -> bool {
        let Some(col) = self.cols.get(i) else { return false };
        let name = CString::new(col.name.as_str()).unwrap_or_default();
        // SAFETY: catalog lookups inside the apply transaction. SELECT on the table covers
        // every column (and superusers); otherwise the column's own privilege decides.
        unsafe {
            let me = pg_sys::GetUserId();
            let attnum = pg_sys::get_attnum(self.relid, name.as_ptr());
            attnum > 0
                && (pg_sys::pg_class_aclcheck(self.relid, me, pg_sys::ACL_SELECT as _)
                    == pg_sys::AclResult::ACLCHECK_OK
                    || pg_sys::pg_attribute_aclcheck(self.relid, attnum, me, pg_sys::ACL_SELECT as _)
                        == pg_sys::AclResult::ACLCHECK_OK)
        }
    }

    /// `(a, b)=(1, x)` for the `key` columns of `t` the current user may read.
    /// (column name, value as text; None for NULL) of the key columns the subscription owner may
    /// read.
    fn key_pairs(
        &self,
        t: &TupleData,
        key: &[bool],
        binary: bool,
        cxt: pg_sys::MemoryContext,
    ) -> Vec<(String, Option<String>)> {
        let mut out = Vec::new();
        for (i, col) in self.cols.iter().enumerate() {
            if !key.get(i).copied().unwrap_or(false) {
                continue;
            }
            let Some(v) = t.columns.get(i) else { continue };
            if !self.readable(i) {
                continue;
            }
            let text = match v {
                TupleValue::Null => None,
                TupleValue::UnchangedToast => Some("(unchanged)".to_string()),
                TupleValue::Text(b) => Some(String::from_utf8_lossy(b).into_owned()),
                TupleValue::Binary(_) => Some(super::execute::in_context(cxt, || {
                    let (d, _) = col.datum(v, binary);
                    // SAFETY: the type's output function on a Datum of that type, in the
                    // per-message memory context.
                    unsafe {
                        let mut out = pg_sys::InvalidOid;
                        let mut varlena = false;
                        pg_sys::getTypeOutputInfo(col.typid, &mut out, &mut varlena);
                        let c = pg_sys::OidOutputFunctionCall(out, d);
                        std::ffi::CStr::from_ptr(c).to_string_lossy().into_owned()
                    }
                })),
            };
            out.push((col.name.clone(), text));
        }
        out
    }

    pub(super) fn leaf_partition(
        &self,
        t: &TupleData,
        key: &[bool],
        binary: bool,
        cxt: pg_sys::MemoryContext,
    ) -> Option<String> {
        let sent: Vec<usize> = (0..self.cols.len())
            .filter(|&i| {
                key.get(i).copied().unwrap_or(false)
                    && !matches!(t.columns.get(i), Some(TupleValue::UnchangedToast) | None)
            })
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
        if keys
            .iter()
            .any(|(name, expr)| *expr || name.as_ref().is_some_and(|n| !sent.iter().any(|&i| self.cols[i].name == *n)))
        {
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
        let names: Vec<String> = sent
            .iter()
            .enumerate()
            .map(|(n, &i)| format!("${} AS {}", n + 1, quote_ident(&self.cols[i].name)))
            .collect();
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

    /// The prepared plan for `key`, prepared and kept on first use (text from
    /// `pgsub_core::sql::build`).
    pub(super) fn plan(&mut self, key: PlanKey, remote: &Relation) -> pg_sys::SPIPlanPtr {
        self.plan_for_nulls(key, remote, None)
    }

    /// Under REPLICA IDENTITY FULL: which `key` columns are NULL in `t`, the shape of the one-row
    /// statements for that row (`sql::Target::nulls`); None when not FULL.
    pub(super) fn null_keys(&self, remote: &Relation, t: &TupleData, key: &[bool]) -> Option<Vec<bool>> {
        if remote.replica_identity != ReplicaIdentity::Full || self.identity_key.is_some() {
            return None;
        }
        Some(
            t.columns
                .iter()
                .enumerate()
                .map(|(i, v)| key.get(i).copied().unwrap_or(false) && matches!(v, TupleValue::Null))
                .collect(),
        )
    }

    /// The prepared statement `key`, for a row whose FULL key columns `nulls` are NULL.
    pub(super) fn plan_for_nulls(
        &mut self,
        key: PlanKey,
        remote: &Relation,
        nulls: Option<Vec<bool>>,
    ) -> pg_sys::SPIPlanPtr {
        let mut key = (key, nulls);
        if let Some(p) = self.plans.get(&key) {
            return *p;
        }
        // Patterns of NULLs are many on a wide table with NULLs all over: past a bound the
        // statement that matches any row serves the rest.
        if key.1.is_some() && self.plans.len() >= MAX_PLANS_PER_RELATION {
            key.1 = None;
            if let Some(p) = self.plans.get(&key) {
                return *p;
            }
        }
        let cols: Vec<sql::Column> = self
            .cols
            .iter()
            .map(|c| sql::Column {
                name: c.name.clone(),
                typid: c.typid.to_u32(),
                eq_op: c.eq_op.clone(),
                array_typid: c.array.map(|a| a.typid.to_u32()),
                identity_always: c.identity_always,
                row_type: c.row_type,
            })
            .collect();
        let target = sql::Target {
            qualified: &self.qualified,
            partitioned: self.only.is_empty(),
            full: remote.replica_identity == ReplicaIdentity::Full && self.identity_key.is_none(),
            pick_one: self.picks_one_row(remote),
            cols: &cols,
            nulls: key.1.as_deref(),
            kept: &self.kept,
        };
        let built = sql::build(&target, &key.0);
        let sql = built.sql;
        let mut argtypes: Vec<pg_sys::Oid> = built.argtypes.into_iter().map(pg_sys::Oid::from).collect();
        let options = if built.generic_plan { pg_sys::CURSOR_OPT_GENERIC_PLAN as i32 } else { 0 };
        let csql = cstring(&sql);
        // SAFETY: SPI is connected (inside a remote transaction); the plan is kept for reuse.
        let plan = unsafe {
            let p = pg_sys::SPI_prepare_cursor(csql.as_ptr(), argtypes.len() as i32, argtypes.as_mut_ptr(), options);
            if p.is_null() {
                report::error(Code::ERRCODE_INTERNAL_ERROR, format!("SPI_prepare failed for: {sql}"), None, None);
            }
            pg_sys::SPI_keepplan(p);
            p
        };
        if self.plans.is_empty() {
            PLANNED.with(|c| c.set(c.get() + 1));
        }
        self.plans.insert(key, plan);
        plan
    }
}

/// Prepared statements a relation keeps before its REPLICA IDENTITY FULL statements stop being
/// prepared per pattern of NULL columns (`LocalRel::plan_for_nulls`).
const MAX_PLANS_PER_RELATION: usize = 64;

/// Whether text values need converting from UTF8 to this database's encoding (not UTF8, nor
/// SQL_ASCII, which takes bytes as they are).
fn convert_text() -> bool {
    thread_local! {
        static CONVERT: bool = {
            // SAFETY: reads the database encoding, set for the backend's life.
            let enc = unsafe { pg_sys::GetDatabaseEncoding() };
            enc != pg_sys::pg_enc::PG_UTF8 as i32 && enc != pg_sys::pg_enc::PG_SQL_ASCII as i32
        };
    }
    CONVERT.with(|c| *c)
}

/// Binds a remote relation to the local table of the same schema-qualified name, or to local
/// table `own` (a sync worker's table, whatever either side now calls it).
pub(super) fn bind_local(remote: &Relation, binary: bool, own: Option<pg_sys::Oid>) -> LocalRel {
    let shown = native_name(&remote.namespace, &remote.name);
    let relinfo = match own {
        Some(relid) => super::relcat::relation_by_oid(relid).map(|(q, kind)| (relid, q, kind)),
        None => {
            let qualified = format!("{}.{}", quote_ident(&remote.namespace), quote_ident(&remote.name));
            super::relcat::relation(&qualified).map(|(oid, kind)| (oid, qualified, kind))
        }
    };
    let (relid, qualified, relkind) = match relinfo {
        Some(found) => found,
        None => report::error(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!("logical replication target relation {shown} does not exist"),
            None,
            Some("Create the table on the subscriber (or rename it back); the worker retries."),
        ),
    };
    if relkind != "r" && relkind != "p" {
        report::error(
            Code::ERRCODE_WRONG_OBJECT_TYPE,
            format!("logical replication target relation {shown} is not a table"),
            None,
            None,
        );
    }
    // Row-level security is checked at each write, for the role that writes (owner.rs).
    BOUND.with(|b| b.borrow_mut().insert(shown.clone(), relid));
    // Local columns by name.
    let local_cols = super::relcat::local_columns(relid);
    let missing: Vec<&str> = remote
        .columns
        .iter()
        .filter(|rc| !local_cols.iter().any(|(n, ..)| *n == rc.name))
        .map(|rc| rc.name.as_str())
        .collect();
    if !missing.is_empty() {
        missing_columns(relid, &shown, &missing);
    }
    let mut cols = Vec::with_capacity(remote.columns.len());
    for rc in &remote.columns {
        let Some((_, typid, typmod, collation, identity_always)) = local_cols.iter().find(|(n, ..)| *n == rc.name)
        else {
            missing_columns(relid, &shown, &[&rc.name]);
        };
        let mut col = col_map(&rc.name, *typid, *typmod, *collation, binary);
        col.identity_always = *identity_always;
        // Remote text '01' and '1' are one local int: exact only when the types are the same.
        col.exact_key &= rc.type_oid == typid.to_u32();
        cols.push(col);
    }
    let kept = local_cols
        .iter()
        .filter(|(n, ..)| !remote.columns.iter().any(|rc| rc.name == *n))
        .map(|(n, ..)| n.clone())
        .collect();
    let stmt_insert_triggers = super::relcat::has_stmt_insert_triggers(relid);
    let after_row_triggers = super::relcat::has_after_row_triggers(relid);
    let partitions = if relkind == "p" { super::relcat::partitions(relid) } else { Vec::new() };
    let deferrable_keys = super::relcat::has_deferrable_keys(relid);
    let constrained = match super::relcat::constrained_columns(relid) {
        Some(names) => cols.iter().map(|c| names.contains(&c.name)).collect(),
        None => vec![true; cols.len()],
    };
    let keys = super::relcat::local_keys(relid);
    let identity_key = keys.iter().find(|k| k.identity).and_then(|k| {
        let all_mapped = k.columns.iter().all(|c| remote.columns.iter().any(|rc| rc.name == *c));
        all_mapped.then(|| remote.columns.iter().map(|rc| k.columns.contains(&rc.name)).collect())
    });
    let remote_key_unique = keys.iter().any(|k| {
        !k.columns.is_empty() && k.columns.iter().all(|c| remote.columns.iter().any(|rc| rc.is_key && rc.name == *c))
    });
    LocalRel {
        relid,
        qualified,
        only: if relkind == "p" { "" } else { "ONLY " },
        cols,
        plans: HashMap::new(),
        stmt_insert_triggers,
        after_row_triggers,
        partitions,
        identity_key,
        remote_key_unique,
        kept,
        deferrable_keys,
        constrained,
    }
}

pub(super) fn col_map(name: &str, typid: pg_sys::Oid, typmod: i32, collation: pg_sys::Oid, binary: bool) -> ColMap {
    // SAFETY: catalog lookups and fmgr_info into TopMemoryContext (the FmgrInfo lives in a Box
    // for the worker's life).
    unsafe {
        let mut input_fn = pg_sys::InvalidOid;
        let mut ioparam = pg_sys::InvalidOid;
        pg_sys::getTypeInputInfo(typid, &mut input_fn, &mut ioparam);
        let mut input: Box<pg_sys::FmgrInfo> = Box::new(std::mem::zeroed());
        pg_sys::fmgr_info_cxt(input_fn, &mut *input, pg_sys::TopMemoryContext);
        // A type without a receive function is sent in text even in a binary stream (pgoutput
        // does so for a type without a send function): only a value that does come in binary
        // needs one, and is an error without it (`datum`).
        let receive = if binary {
            let (mut typlen, mut typbyval, mut typalign, mut typdelim) = (0i16, false, 0, 0);
            let (mut recv_param, mut recv_fn) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
            pg_sys::get_type_io_data(
                typid,
                pg_sys::IOFuncSelector::IOFunc_receive,
                &mut typlen,
                &mut typbyval,
                &mut typalign,
                &mut typdelim,
                &mut recv_param,
                &mut recv_fn,
            );
            (recv_fn != pg_sys::InvalidOid).then(|| {
                let mut f: Box<pg_sys::FmgrInfo> = Box::new(std::mem::zeroed());
                pg_sys::fmgr_info_cxt(recv_fn, &mut *f, pg_sys::TopMemoryContext);
                f
            })
        } else {
            None
        };
        let tc = pg_sys::lookup_type_cache(typid, pg_sys::TYPECACHE_EQ_OPR as i32);
        let eq_oid = if tc.is_null() { pg_sys::InvalidOid } else { (*tc).eq_opr };
        let eq_op = if eq_oid == pg_sys::InvalidOid { None } else { super::relcat::operator_name(eq_oid) };
        // `unnest` of an array of a composite type (or a domain over one) in FROM expands each
        // element into its fields instead of yielding one value: such columns are never batched.
        let row_type = pg_sys::type_is_rowtype(typid);
        let array_typid = if row_type { pg_sys::InvalidOid } else { pg_sys::get_array_type(typid) };
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
        ColMap {
            name: name.to_string(),
            typid,
            typmod,
            input,
            receive,
            ioparam,
            eq_op,
            array,
            exact_key,
            identity_always: false,
            row_type,
        }
    }
}

/// Raises native's error for remote columns the local table lacks, naming every one of them
/// (`"a", "b"`): those missing, or on PostgreSQL 18 when only generated columns here stand in
/// their way, those (which cannot receive values), as native 18 tells them apart.
pub(super) fn missing_columns(relid: pg_sys::Oid, shown: &str, columns: &[&str]) -> ! {
    let generated_here = |column: &str| {
        Spi::get_one_with_args::<bool>(
            "SELECT a.attgenerated <> '' FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[relid.into(), column.into()],
        )
        .ok()
        .flatten()
        .unwrap_or(false)
    };
    let (generated, missing): (Vec<&str>, Vec<&str>) = if pg_sys::PG_VERSION_NUM >= 180000 {
        columns.iter().partition(|c| generated_here(c))
    } else {
        (Vec::new(), columns.to_vec())
    };
    let list = |names: &[&str]| names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
    let plural = |names: &[&str]| if names.len() == 1 { "" } else { "s" };
    if missing.is_empty() && !generated.is_empty() {
        report::error(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "logical replication target relation {shown} has incompatible generated column{}: {}",
                plural(&generated),
                list(&generated)
            ),
            None,
            Some("A generated column cannot receive published values: make it a plain column on the subscriber, or leave it out of the publication; the worker retries."),
        );
    }
    report::error(
        Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!(
            "logical replication target relation {shown} is missing replicated column{}: {}",
            plural(&missing),
            list(&missing)
        ),
        None,
        Some(&format!(
            "Add the column{} on the subscriber (a generated column there cannot receive values); the worker retries.",
            plural(&missing)
        )),
    );
}

/// Checks that the local table can take every one of `columns` (before an initial copy).
pub(super) fn require_columns(relid: pg_sys::Oid, shown: &str, columns: &[String]) {
    let local = super::relcat::local_columns(relid);
    let missing: Vec<&str> =
        columns.iter().filter(|c| !local.iter().any(|(n, ..)| n == *c)).map(String::as_str).collect();
    if !missing.is_empty() {
        missing_columns(relid, shown, &missing);
    }
}
