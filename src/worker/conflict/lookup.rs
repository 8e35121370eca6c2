//! Looking up the local rows a remote change collides with: the remote values as text, the
//! unique indexes of the local table, `SELECT … FOR UPDATE` of the rows that hold given values
//! (with who changed them last, as `pg_xact_commit_timestamp_origin` says), and the jsonb and
//! record text of rows — only of the columns the subscription owner may read.
use super::super::execute::in_context;
use super::super::relation::LocalRel;
use super::origins_tracked;
use crate::dbtext::DbText;
use crate::report;
use pgrx::prelude::*;
use pgsub_proto::client::{quote_ident, quote_literal};
use pgsub_proto::pgoutput::{TupleData, TupleValue};
use std::ffi::CStr;

type Code = PgSqlErrorCode;

/// At most this many lookups stay prepared (`run_prepared`); past it the cache starts afresh.
const MAX_PREPARED: usize = 256;

thread_local! {
    /// The lookups prepared so far, by their text. The one-by-one path (another policy than
    /// `error`, `track_commit_timestamp`, the retry of a failed transaction) runs the same few
    /// shapes for every row of a table; parsing and planning each anew cost several times the
    /// apply itself. The plans are the plan cache's: a change of the table replans them.
    static PREPARED: std::cell::RefCell<std::collections::HashMap<String, pgrx::spi::OwnedPreparedStatement>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Runs `sql` (parameters of `types`) through its prepared plan, preparing it the first time.
fn run_prepared<'conn>(
    c: &mut pgrx::spi::SpiClient<'conn>,
    sql: &str,
    types: &[PgOid],
    args: &[pgrx::datum::DatumWithOid<'_>],
) -> pgrx::spi::SpiResult<pgrx::spi::SpiTupleTable<'conn>> {
    let known = PREPARED.with_borrow(|m| m.contains_key(sql));
    if !known {
        let stmt = c.prepare_mut(sql, types)?.keep();
        PREPARED.with_borrow_mut(|m| {
            if m.len() >= MAX_PREPARED {
                m.clear();
            }
            m.insert(sql.to_string(), stmt);
        });
    }
    PREPARED.with_borrow(|m| match m.get(sql) {
        Some(stmt) => c.update(stmt, None, args),
        None => c.update(sql, None, args),
    })
}

/// A local row found by a lookup.
#[derive(Clone)]
pub(super) struct LocalRow {
    pub(super) relation: String,
    pub(super) tableoid: u32,
    pub(super) ctid: String,
    pub(super) xid: Option<i64>,
    /// Commit time (TimestampTz µs) and origin of the transaction that last changed it, when
    /// `track_commit_timestamp` recorded them.
    pub(super) commit_time: Option<i64>,
    pub(super) origin: Option<i32>,
    pub(super) json: Option<String>,
    /// The same columns as a record's text, `(1,local)`, for the log line.
    pub(super) text: Option<String>,
    /// The unique index the row was found through.
    pub(super) index: String,
}

/// The remote values of a tuple as text, per local column (None: NULL; skipped: unchanged TOAST).
pub(crate) struct RemoteValues(Vec<Option<Option<String>>>);

impl RemoteValues {
    pub(crate) fn of(local: &LocalRel, t: &TupleData, binary: bool, cxt: pg_sys::MemoryContext) -> RemoteValues {
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

    pub(super) fn get(&self, i: usize) -> Option<&Option<String>> {
        self.0.get(i).and_then(|v| v.as_ref())
    }
}

/// `$n::text::type` parameters for a statement built here: every value goes in as text and is
/// converted by the local column type's input function.
pub(super) struct Params {
    pub(super) values: Vec<Option<String>>,
}

impl Params {
    pub(super) fn new() -> Self {
        Params { values: Vec::new() }
    }

    pub(super) fn text(&mut self, v: Option<String>) -> String {
        self.values.push(v);
        format!("${}::pg_catalog.text", self.values.len())
    }

    pub(super) fn typed(&mut self, local: &LocalRel, i: usize, v: Option<String>) -> String {
        let t = self.text(v);
        format!("{t}::{}", type_name(local.cols[i].typid, local.cols[i].typmod))
    }

    /// The values as text parameters, in the database's encoding (`dbtext`).
    pub(super) fn args(&self) -> Vec<pgrx::datum::DatumWithOid<'static>> {
        self.values.iter().map(|v| v.clone().map(DbText).into()).collect()
    }
}

/// The column's type as a cast names it. Length types (`character`, `varchar`, `bit`,
/// `varbit` and their arrays) without their modifier — an explicit cast to `varchar(3)` cuts a
/// longer value, where applying it is native's "value too long" error — and as the bare type:
/// `format_type_be` says `character`, which a cast reads as `character(1)` (a remote `yz `
/// became `y`, and a key of that type was not found). Others with theirs (`numeric(10,2)`,
/// `timestamp(3)`), whose cast rounds as storing the value does.
pub(super) fn type_name(typid: pg_sys::Oid, typmod: i32) -> String {
    let length_type = [
        pg_sys::BPCHAROID,
        pg_sys::VARCHAROID,
        pg_sys::BITOID,
        pg_sys::VARBITOID,
        pg_sys::BPCHARARRAYOID,
        pg_sys::VARCHARARRAYOID,
        pg_sys::BITARRAYOID,
        pg_sys::VARBITARRAYOID,
    ]
    .contains(&typid);
    let typmod = if length_type { -1 } else { typmod };
    let flags = (pg_sys::FORMAT_TYPE_TYPEMOD_GIVEN | pg_sys::FORMAT_TYPE_FORCE_QUALIFY) as pg_sys::bits16;
    // SAFETY: returns a palloc'd name for any type OID.
    unsafe { CStr::from_ptr(pg_sys::format_type_extended(typid, typmod, flags)) }.to_string_lossy().into_owned()
}

/// `jsonb_build_object(…)` of the given columns' expressions (in chunks: the function takes at
/// most 100 arguments); None when no column is left.
pub(super) fn json_of(pairs: Vec<(String, String)>) -> Option<String> {
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

/// The text of a row as PostgreSQL's messages show one (`ExecBuildSlotValueDescription`):
/// `(1, quux, null)`, each value its type's output, cut to at most 64 bytes (a whole character)
/// and `...` when longer. NULL when there are no expressions.
pub(super) fn row_of(exprs: Vec<String>) -> String {
    if exprs.is_empty() {
        return "NULL::text".into();
    }
    // `format('%s')` is the type's output function (a cast to text is not: `true`, `1.2.3.4/32`,
    // char(n) without its padding); `num_nulls` tells a NULL from a composite of NULLs.
    let values: Vec<String> = exprs
        .iter()
        .map(|e| {
            format!(
                "CASE WHEN pg_catalog.num_nulls({e}) OPERATOR(pg_catalog.=) 0 THEN {} END",
                clipped(&format!("pg_catalog.format('%s', {e})"))
            )
        })
        .collect();
    format!(
        "('(' OPERATOR(pg_catalog.||) pg_catalog.array_to_string(ARRAY[{}]::pg_catalog.text[], ', ', 'null') OPERATOR(pg_catalog.||) ')')",
        values.join(", ")
    )
}

/// `v` (a text expression) cut as `row_of` says; the cut only for a value over 64 bytes.
fn clipped(v: &str) -> String {
    format!(
        "CASE WHEN pg_catalog.octet_length({v}) OPERATOR(pg_catalog.<=) {MAX} THEN {v} \
         ELSE (SELECT pg_catalog.left(s.v, n) OPERATOR(pg_catalog.||) '...' FROM (SELECT {v}) s(v), \
               pg_catalog.generate_series({MAX}, 1, -1) n \
               WHERE pg_catalog.octet_length(pg_catalog.left(s.v, n)) OPERATOR(pg_catalog.<=) {MAX} LIMIT 1) END",
        MAX = super::MAX_FIELD_BYTES
    )
}

/// `(a, b)=(1, x)` of the readable columns among `cols`, from the remote values.
pub(super) fn key_text(local: &LocalRel, values: &RemoteValues, cols: &[usize]) -> Option<String> {
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

/// A unique index of the local table: its name, the columns its keys read (positions in
/// `LocalRel::cols`; every one must have been sent to look the index up), its key expressions
/// (`exprs`: one per key, None for a plain column — then `cols` lists the key columns in order),
/// whether NULLs are equal in it, and its predicate.
pub(super) struct UniqueIndex {
    pub(super) oid: u32,
    pub(super) name: String,
    pub(super) cols: Vec<usize>,
    pub(super) exprs: Option<Vec<String>>,
    pub(super) nulls_not_distinct: bool,
    pub(super) predicate: Option<String>,
}

pub(super) fn unique_indexes(local: &LocalRel) -> Vec<UniqueIndex> {
    // Key columns in order; for an index with expressions, each key's text as
    // pg_get_indexdef prints it (a column name or an expression over the table's columns), and
    // the columns they read (the index's dependencies on them).
    // In a database that is not UTF8, an index whose predicate, key expressions or column names
    // hold non-ASCII text is left out (`non_ascii`): they are pasted into pgsub's SQL, which is
    // UTF-8 here and read in the database's encoding (a known limit, README).
    let sql = "SELECT q.name, q.keys, q.nnd, q.pred, q.has_exprs, q.defs, q.reads, \
                (coalesce(q.pred, '') || ' ' || pg_catalog.array_to_string(q.keys, ' ') || ' ' \
                 || pg_catalog.array_to_string(q.defs, ' ') || ' ' || pg_catalog.array_to_string(q.reads, ' ') \
                 || ' ' || q.name) OPERATOR(pg_catalog.~) '[^\x01-\x7f]', q.oid \
         FROM (SELECT c.relname::text AS name, i.indisprimary AS prim, i.indexrelid::int8 AS oid, \
                ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, n) \
                      JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                      WHERE k.n <= i.indnkeyatts ORDER BY k.n) AS keys, \
                i.indnullsnotdistinct AS nnd, pg_catalog.pg_get_expr(i.indpred, i.indrelid) AS pred, \
                i.indexprs IS NOT NULL AS has_exprs, \
                ARRAY(SELECT pg_catalog.pg_get_indexdef(i.indexrelid, k.n::int, true) \
                      FROM pg_catalog.generate_series(1, i.indnkeyatts) k(n) ORDER BY k.n) AS defs, \
                ARRAY(SELECT DISTINCT a.attname::text FROM pg_catalog.pg_depend d \
                      JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
                      WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = i.indexrelid \
                        AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = i.indrelid \
                        AND d.refobjsubid > 0 ORDER BY 1) AS reads \
         FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid \
         WHERE i.indrelid = $1 AND i.indisunique AND i.indimmediate) q \
         ORDER BY q.prim DESC, q.name";
    type Row = (u32, String, Vec<String>, bool, Option<String>, bool, Vec<String>, Vec<String>);
    let converts = crate::dbtext::converts();
    let rows = Spi::connect_mut(|c| {
        let mut out: Vec<Row> = Vec::new();
        let strings = |v: Option<Vec<Option<String>>>| v.unwrap_or_default().into_iter().flatten().collect::<Vec<_>>();
        for row in run_prepared(c, sql, &[PgOid::BuiltIn(PgBuiltInOids::OIDOID)], &[local.relid.into()])? {
            if converts && row.get::<bool>(8)?.unwrap_or(true) {
                continue;
            }
            out.push((
                row.get::<i64>(9)?.unwrap_or_default() as u32,
                row.get::<DbText>(1)?.unwrap_or_default().into_string(),
                strings(row.get::<Vec<Option<String>>>(2)?),
                row.get::<bool>(3)?.unwrap_or(false),
                row.get::<DbText>(4)?.map(DbText::into_string),
                row.get::<bool>(5)?.unwrap_or(false),
                strings(row.get::<Vec<Option<String>>>(6)?),
                strings(row.get::<Vec<Option<String>>>(7)?),
            ));
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    });
    let rows = match rows {
        Ok(r) => r,
        Err(e) => report::error(Code::ERRCODE_INTERNAL_ERROR, format!("reading unique indexes: {e}"), None, None),
    };
    let position = |n: &String| local.cols.iter().position(|c| &c.name == n);
    rows.into_iter()
        .filter_map(|(oid, name, keys, nulls_not_distinct, predicate, has_exprs, defs, reads)| {
            // Only indexes over columns the publisher sends can be checked.
            if has_exprs {
                let cols: Option<Vec<usize>> = reads.iter().map(position).collect();
                let cols = cols.filter(|c| !c.is_empty())?;
                Some(UniqueIndex { oid, name, cols, exprs: Some(defs), nulls_not_distinct, predicate })
            } else {
                let cols: Option<Vec<usize>> = keys.iter().map(position).collect();
                cols.map(|cols| UniqueIndex { oid, name, cols, exprs: None, nulls_not_distinct, predicate })
            }
        })
        .collect()
}

/// The SELECT list of a lookup: where the row is, who changed it last, and its readable columns.
/// The commit time is taken to the microsecond with `EXTRACT` (numeric); `date_part` is a float8,
/// whose cast to numeric keeps 15 digits — 10 µs — and last_update_wins would misorder versions
/// committed within them on the two nodes.
///
/// A row of a foreign-table partition has no transaction (`xmin` 0), whose commit timestamp
/// cannot be asked for: its commit time and origin are NULL.
pub(super) fn row_select(local: &LocalRel, values: bool) -> String {
    let origin = if origins_tracked() {
        "(SELECT ((EXTRACT(epoch FROM x.\"timestamp\") - 946684800) * 1000000)::int8 \
         FROM pg_catalog.pg_xact_commit_timestamp_origin(CASE WHEN t.xmin OPERATOR(pg_catalog.<>) '0'::pg_catalog.xid \
              THEN t.xmin END) x), \
         (SELECT x.roident::int4 FROM pg_catalog.pg_xact_commit_timestamp_origin(\
              CASE WHEN t.xmin OPERATOR(pg_catalog.<>) '0'::pg_catalog.xid THEN t.xmin END) x)"
    } else {
        "NULL::int8, NULL::int4"
    };
    let (json, record) =
        if values { values_select(local) } else { ("NULL::pg_catalog.jsonb".into(), "NULL::text".into()) };
    format!(
        "t.tableoid::pg_catalog.regclass::text, t.tableoid::int8, t.ctid::text, \
         t.xmin::text::int8, {origin}, ({json})::text, {record}"
    )
}

/// The JSON and text of a local row `t`'s readable columns (`LocalRow::json`, `text`).
fn values_select(local: &LocalRel) -> (String, String) {
    let pairs: Vec<(String, String)> = (0..local.cols.len())
        .filter(|&i| local.readable(i))
        .map(|i| (local.cols[i].name.clone(), format!("t.{}", quote_ident(&local.cols[i].name))))
        .collect();
    let record = row_of(pairs.iter().map(|(_, e)| e.clone()).collect());
    (json_of(pairs).map_or("NULL::pg_catalog.jsonb".to_string(), |j| j), record)
}

/// Reads a row found without its values (`lookup(.., false)`) for a conflict's record: its JSON
/// and text. The row is locked (FOR UPDATE), so it is the one found.
pub(super) fn read_values(local: &LocalRel, row: &mut LocalRow) {
    let (json, record) = values_select(local);
    let mut p = Params::new();
    let o = p.text(Some(row.tableoid.to_string()));
    let t = p.text(Some(row.ctid.clone()));
    let sql = format!(
        "SELECT ({json})::text, {record} FROM {}{} t \
          WHERE t.tableoid OPERATOR(pg_catalog.=) {o}::pg_catalog.oid AND t.ctid OPERATOR(pg_catalog.=) {t}::pg_catalog.tid",
        local.only, local.qualified
    );
    let args = p.args();
    let r = super::super::owner::as_table_owner_for_lookup(local.relid, || {
        Spi::connect(|c| {
            let first = c.select(&sql, Some(1), &args)?.first();
            let text = |i: usize| first.get::<DbText>(i).map(|v| v.map(DbText::into_string));
            Ok::<_, pgrx::spi::SpiError>((text(1)?, text(2)?))
        })
    });
    match r {
        Ok((json, text)) => (row.json, row.text) = (json, text),
        Err(e) => report::error(Code::ERRCODE_INTERNAL_ERROR, format!("reading the local row: {e}"), None, None),
    }
}

/// Local rows where the given columns hold the given values (NULL never matches unless
/// `nulls_equal`), locked FOR UPDATE; rows at `except` (tableoid, ctid) left out. Without
/// `with_values` their columns are not read (`read_values` reads them for a record).
pub(super) fn lookup(
    local: &LocalRel,
    cols: &[usize],
    values: &RemoteValues,
    nulls_equal: bool,
    predicate: Option<&str>,
    except: Option<(u32, &str)>,
    with_values: bool,
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
    select_locked(local, p, conds, predicate, except, with_values)
}

/// Local rows whose keys in unique index `idx` equal those the remote values give, for an index
/// with key expressions: each expression is evaluated over the local row and over the remote
/// values (a sub-select whose columns, named as the table's, are those values), and compared with
/// `=` (`IS NOT DISTINCT FROM` under NULLS NOT DISTINCT); locked FOR UPDATE.
fn lookup_expressions(
    local: &LocalRel,
    idx: &UniqueIndex,
    exprs: &[String],
    values: &RemoteValues,
    except: Option<(u32, &str)>,
) -> Vec<LocalRow> {
    let mut p = Params::new();
    let mut remote_cols = Vec::new();
    for &i in &idx.cols {
        let Some(v) = values.get(i) else { return Vec::new() };
        remote_cols.push(format!("{} AS {}", p.typed(local, i, v.clone()), quote_ident(&local.cols[i].name)));
    }
    let remote = format!("(SELECT {}) AS pgsub_remote", remote_cols.join(", "));
    let op = if idx.nulls_not_distinct { "IS NOT DISTINCT FROM" } else { "=" };
    // Unqualified column names in an expression read the local row outside the sub-select and
    // the remote values inside it (the innermost relation that has the name).
    let conds = exprs.iter().map(|e| format!("({e}) {op} (SELECT ({e}) FROM {remote})")).collect();
    select_locked(local, p, conds, idx.predicate.as_deref(), except, true)
}

/// `SELECT … FROM the table t WHERE conds [AND predicate] [AND not except] FOR UPDATE OF t`, run
/// as the table's owner in a security-restricted operation (`owner::as_table_owner_for_lookup`),
/// not as a superuser: index expressions, predicates and the types' operators are the table
/// owner's code.
fn select_locked(
    local: &LocalRel,
    mut p: Params,
    mut conds: Vec<String>,
    predicate: Option<&str>,
    except: Option<(u32, &str)>,
    with_values: bool,
) -> Vec<LocalRow> {
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
        row_select(local, with_values),
        local.only,
        local.qualified,
        conds.join(" AND ")
    );
    let args = p.args();
    let rows = super::super::owner::as_table_owner_for_lookup(local.relid, || {
        // Read-write: the rows are locked (FOR UPDATE).
        Spi::connect_mut(|c| {
            let mut out = Vec::new();
            let text = vec![PgOid::BuiltIn(PgBuiltInOids::TEXTOID); args.len()];
            for row in run_prepared(c, &sql, &text, &args)? {
                // Text in the database's encoding, read as UTF-8 (`dbtext`).
                let text = |i: usize| row.get::<DbText>(i).map(|v| v.map(DbText::into_string));
                out.push(LocalRow {
                    relation: text(1)?.unwrap_or_default(),
                    tableoid: row.get::<i64>(2)?.unwrap_or_default() as u32,
                    ctid: text(3)?.unwrap_or_default(),
                    xid: row.get::<i64>(4)?,
                    commit_time: row.get::<i64>(5)?,
                    origin: row.get::<i32>(6)?,
                    json: text(7)?,
                    text: text(8)?,
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
pub(super) fn unique_conflicts(local: &LocalRel, values: &RemoteValues, except: Option<(u32, &str)>) -> Vec<LocalRow> {
    let mut found = Vec::new();
    for idx in unique_indexes(local) {
        let rows = match &idx.exprs {
            Some(exprs) => lookup_expressions(local, &idx, exprs, values, except),
            None => lookup(local, &idx.cols, values, idx.nulls_not_distinct, idx.predicate.as_deref(), except, true),
        };
        for mut row in rows {
            // A row of a partition: named by the partition's own index, as natively (the leaf's
            // index is the one that holds the key).
            row.index = if row.tableoid != local.relid.to_u32() {
                partition_index(idx.oid, row.tableoid).unwrap_or_else(|| idx.name.clone())
            } else {
                idx.name.clone()
            };
            found.push(row);
        }
    }
    found
}

/// The name of the index of partition `leaf` attached (at any depth) to the partitioned index
/// `parent` (None if there is none).
fn partition_index(parent: u32, leaf: u32) -> Option<String> {
    let sql = "SELECT c.relname::text FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid \
               WHERE i.indrelid = $2 AND EXISTS (SELECT FROM pg_catalog.pg_partition_ancestors(i.indexrelid) a \
                                                 WHERE a.relid = $1) \
               LIMIT 1";
    let args = [pg_sys::Oid::from(parent).into(), pg_sys::Oid::from(leaf).into()];
    Spi::connect(|c| {
        let rows = c.select(sql, Some(1), &args)?;
        rows.first().get::<DbText>(1).map(|v| v.map(DbText::into_string))
    })
    .ok()
    .flatten()
}

/// JSON and record text of the remote values of the readable columns (text converted by the
/// local types).
pub(super) fn remote_rows(
    local: &LocalRel,
    values: &RemoteValues,
    only: Option<&[usize]>,
) -> (Option<String>, Option<String>) {
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
        let text = |i: usize| row.get::<DbText>(i).map(|v| v.map(DbText::into_string));
        Ok::<_, pgrx::spi::SpiError>((text(1)?, text(2)?))
    });
    match r {
        Ok(v) => v,
        Err(e) => report::error(Code::ERRCODE_INTERNAL_ERROR, format!("rendering the remote row: {e}"), None, None),
    }
}
