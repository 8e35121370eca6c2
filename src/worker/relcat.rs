//! The relation map's catalog reads (`relation.rs` binds a remote relation with them): the local
//! table by name, its columns, whether it has statement-level INSERT triggers, the name of a
//! type's equality operator. Each statement is prepared once per worker and kept (the plan cache
//! revalidates it after DDL), and operator names are remembered until an operator changes, so
//! that binding one more table costs executions, not parses and plans: with a thousand tables
//! that was a fifth of the apply worker's time.
use crate::report;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiResult, SpiTupleTable};
use pgsub_proto::client::quote_ident;
use std::cell::RefCell;
use std::collections::HashMap;

type Code = PgSqlErrorCode;

thread_local! {
    /// Kept statements by their text.
    static PLANS: RefCell<HashMap<&'static str, OwnedPreparedStatement>> = RefCell::new(HashMap::new());
    /// `OPERATOR(schema.=)` by operator OID (None: no such operator).
    static OPERATORS: RefCell<HashMap<u32, Option<String>>> = RefCell::new(HashMap::new());
    static OPERATOR_CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs the kept statement `sql` (prepared with `types` on first use) with `args` and reads its
/// rows with `read`.
fn select<R>(
    sql: &'static str,
    types: &[pg_sys::Oid],
    args: &[pgrx::datum::DatumWithOid],
    read: impl FnOnce(SpiTupleTable) -> SpiResult<R>,
) -> SpiResult<R> {
    Spi::connect(|c| {
        PLANS.with(|plans| {
            let mut plans = plans.borrow_mut();
            if !plans.contains_key(sql) {
                let types: Vec<PgOid> = types.iter().map(|t| PgOid::from_untagged(*t)).collect();
                let kept = c.prepare(sql, &types)?.keep();
                plans.insert(sql, kept);
            }
            let Some(plan) = plans.get(sql) else { unreachable!("inserted above") };
            read(c.select(plan, None, args)?)
        })
    })
}

fn failed(what: &str, e: pgrx::spi::SpiError) -> ! {
    report::error(Code::ERRCODE_INTERNAL_ERROR, format!("{what}: {e}"), None, None)
}

/// The quoted `"schema"."name"` and relkind of local table `relid`, if it exists.
pub(super) fn relation_by_oid(relid: pg_sys::Oid) -> Option<(String, String)> {
    let r = select(
        "SELECT n.nspname::text, c.relname::text, c.relkind::text FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[pg_sys::OIDOID],
        &[relid.into()],
        |t| {
            let mut out = None;
            for row in t {
                let (Some(schema), Some(name)) = (row.get::<String>(1)?, row.get::<String>(2)?) else { continue };
                out = Some((
                    format!("{}.{}", quote_ident(&schema), quote_ident(&name)),
                    row.get::<String>(3)?.unwrap_or_default(),
                ));
            }
            Ok(out)
        },
    );
    r.unwrap_or_else(|e| failed("looking up the target table", e))
}

/// The OID and relkind of the table `qualified` (a quoted `"schema"."name"`), if it exists.
pub(super) fn relation(qualified: &str) -> Option<(pg_sys::Oid, String)> {
    let r = select(
        "SELECT c.oid, c.relkind::text FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1)",
        &[pg_sys::TEXTOID],
        &[qualified.into()],
        |t| {
            let mut out = None;
            for row in t {
                if let Some(oid) = row.get::<pg_sys::Oid>(1)? {
                    out = Some((oid, row.get::<String>(2)?.unwrap_or_default()));
                }
            }
            Ok(out)
        },
    );
    r.unwrap_or_else(|e| failed("looking up the target table", e))
}

/// (name, type, typmod, collation, GENERATED ALWAYS AS IDENTITY) of the local table's ordinary,
/// non-generated columns.
pub(super) fn local_columns(relid: pg_sys::Oid) -> Vec<(String, pg_sys::Oid, i32, pg_sys::Oid, bool)> {
    let r = select(
        "SELECT a.attname::text, a.atttypid, a.atttypmod, a.attcollation, a.attidentity = 'a' \
         FROM pg_catalog.pg_attribute a \
         WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
         ORDER BY a.attnum",
        &[pg_sys::OIDOID],
        &[relid.into()],
        |t| {
            let mut out = Vec::new();
            for row in t {
                out.push((
                    row.get::<String>(1)?.unwrap_or_default(),
                    row.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                    row.get::<i32>(3)?.unwrap_or(-1),
                    row.get::<pg_sys::Oid>(4)?.unwrap_or(pg_sys::InvalidOid),
                    row.get::<bool>(5)?.unwrap_or(false),
                ));
            }
            Ok(out)
        },
    );
    r.unwrap_or_else(|e| failed("reading columns", e))
}

/// A local index that can identify rows: the replica identity index or the primary key
/// (`identity`), or another unique index without predicate or expressions; its key columns.
pub(super) struct LocalKey {
    pub(super) identity: bool,
    pub(super) columns: Vec<String>,
}

/// The partitions (at every level) of the partitioned table `relid`: what a binding of it reads
/// from their catalogs too (triggers, keys), so that a change of one of them drops the binding.
pub(super) fn partitions(relid: pg_sys::Oid) -> Vec<u32> {
    let r = select(
        "SELECT p.relid FROM pg_catalog.pg_partition_tree($1) p WHERE p.relid OPERATOR(pg_catalog.<>) $1",
        &[pg_sys::OIDOID],
        &[relid.into()],
        |t| {
            let mut out = Vec::new();
            for row in t {
                if let Some(oid) = row.get::<pg_sys::Oid>(1)? {
                    out.push(oid.to_u32());
                }
            }
            Ok(out)
        },
    );
    r.unwrap_or_else(|e| failed("reading the table's partitions", e))
}

/// The table's indexes that identify rows, the replica identity index first, then the primary
/// key (the order native apply looks for them in).
pub(super) fn local_keys(relid: pg_sys::Oid) -> Vec<LocalKey> {
    let r = select(
        "SELECT i.indisreplident OR i.indisprimary, \
                ARRAY(SELECT a.attname::text \
                                   FROM pg_catalog.unnest((i.indkey::pg_catalog.int2[])[0:i.indnkeyatts - 1]) k \
                                   JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k) \
           FROM pg_catalog.pg_index i \
          WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL \
          ORDER BY i.indisreplident DESC, i.indisprimary DESC, i.indexrelid",
        &[pg_sys::OIDOID],
        &[relid.into()],
        |t| {
            let mut out = Vec::new();
            for row in t {
                out.push(LocalKey {
                    identity: row.get::<bool>(1)?.unwrap_or(false),
                    columns: row.get::<Vec<String>>(2)?.unwrap_or_default(),
                });
            }
            Ok(out)
        },
    );
    r.unwrap_or_else(|e| failed("reading indexes", e))
}

/// The columns that a unique or exclusion index of the table (or of one of its partitions)
/// covers, by name; None when one of them has expressions or a predicate (any column may
/// count). Setting them in one statement for many rows can break such an index midway — a value
/// taken before another row gives it up — where the publisher's order of the same changes did not.
pub(super) fn constrained_columns(relid: pg_sys::Oid) -> Option<Vec<String>> {
    let r = select(
        "SELECT coalesce(bool_or(i.indexprs IS NOT NULL OR i.indpred IS NOT NULL), false), \
                coalesce(array_agg(DISTINCT a.attname::text) FILTER (WHERE a.attname IS NOT NULL), '{}') \
           FROM pg_catalog.pg_index i \
           LEFT JOIN LATERAL pg_catalog.unnest((i.indkey::pg_catalog.int2[])[0:i.indnkeyatts - 1]) k(attnum) ON true \
           LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum AND k.attnum > 0 \
          WHERE (i.indisunique OR i.indisexclusion) \
            AND (i.indrelid = $1 OR i.indrelid IN (SELECT t.relid FROM pg_catalog.pg_partition_tree($1) t))",
        &[pg_sys::OIDOID],
        &[relid.into()],
        |t| {
            let mut out = None;
            for row in t {
                let any = row.get::<bool>(1)?.unwrap_or(true);
                let names = row.get::<Vec<String>>(2)?.unwrap_or_default();
                out = if any { None } else { Some(names) };
            }
            Ok(out)
        },
    );
    r.unwrap_or_else(|e| failed("reading unique and exclusion indexes", e))
}

/// Whether the table, or one of its partitions, has a `DEFERRABLE` unique or exclusion
/// constraint (an index that is not `indimmediate`): `INSERT … ON CONFLICT` refuses such a table
/// ("does not support deferrable unique constraints"), so its conflicts are looked up before a
/// plain INSERT instead. True when it cannot be told.
pub(super) fn has_deferrable_keys(relid: pg_sys::Oid) -> bool {
    relation_flag(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE NOT i.indimmediate \
                          AND (i.indrelid = $1 OR i.indrelid IN (SELECT t.relid FROM pg_catalog.pg_partition_tree($1) t)))",
        relid,
    )
}

/// Whether the table has statement-level INSERT triggers that fire during apply (enabled
/// REPLICA or ALWAYS); true when it cannot be told.
pub(super) fn has_stmt_insert_triggers(relid: pg_sys::Oid) -> bool {
    // pg_trigger.tgtype: bit 0 = row-level, bit 2 = INSERT.
    relation_flag(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal \
         AND tgenabled IN ('R', 'A') AND (tgtype & 1) = 0 AND (tgtype & 4) <> 0)",
        relid,
    )
}

/// The table, or one of its partitions, has row-level AFTER triggers on INSERT, UPDATE or DELETE
/// that fire during apply (enabled REPLICA or ALWAYS). Native apply runs each row as its own
/// statement, so such a trigger fires right after its row, seeing the table as the rows before
/// it left it; a batched run (one COPY, UPDATE or DELETE statement) would fire them all at its
/// end, each seeing the whole run applied. Such tables are applied row by row.
pub(super) fn has_after_row_triggers(relid: pg_sys::Oid) -> bool {
    // pg_trigger.tgtype: 1 row-level, 2 BEFORE, 64 INSTEAD OF, 4 INSERT, 8 DELETE, 16 UPDATE.
    // pg_partition_tree lists a partitioned table and its partitions, nothing for a plain table.
    relation_flag(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger \
         WHERE (tgrelid = $1 OR tgrelid IN (SELECT p.relid FROM pg_catalog.pg_partition_tree($1) p)) \
         AND NOT tgisinternal AND tgenabled IN ('R', 'A') \
         AND (tgtype & 1) <> 0 AND (tgtype & 66) = 0 AND (tgtype & 28) <> 0)",
        relid,
    )
}

/// A yes/no question about relation `$1`; true when it cannot be answered (the cautious side of
/// every flag asked so).
fn relation_flag(sql: &'static str, relid: pg_sys::Oid) -> bool {
    select(sql, &[pg_sys::OIDOID], &[relid.into()], |t| {
        let mut out = None;
        for row in t {
            out = row.get::<bool>(1)?;
        }
        Ok(out)
    })
    .ok()
    .flatten()
    .unwrap_or(true)
}

#[pg_guard]
unsafe extern "C-unwind" fn operator_changed(_arg: pg_sys::Datum, _cacheid: i32, _hash: u32) {
    OPERATORS.with(|m| m.borrow_mut().clear());
}

/// `OPERATOR(schema.name)` of an operator, quoted as `format('%I')` quotes.
pub(super) fn operator_name(oid: pg_sys::Oid) -> Option<String> {
    if !OPERATOR_CALLBACK.with(|c| c.replace(true)) {
        // SAFETY: registering a static callback once per process; it only clears a map.
        unsafe {
            pg_sys::CacheRegisterSyscacheCallback(
                pg_sys::SysCacheIdentifier::OPEROID as i32,
                Some(operator_changed),
                pg_sys::Datum::from(0),
            );
            // The names are schema-qualified: a renamed schema changes them too.
            pg_sys::CacheRegisterSyscacheCallback(
                pg_sys::SysCacheIdentifier::NAMESPACEOID as i32,
                Some(operator_changed),
                pg_sys::Datum::from(0),
            );
        };
    }
    if let Some(v) = OPERATORS.with(|m| m.borrow().get(&oid.to_u32()).cloned()) {
        return v;
    }
    let name = select(
        "SELECT pg_catalog.format('OPERATOR(%I.%s)', n.nspname, o.oprname) \
         FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace \
         WHERE o.oid = $1",
        &[pg_sys::OIDOID],
        &[oid.into()],
        |t| {
            let mut out = None;
            for row in t {
                out = row.get::<String>(1)?;
            }
            Ok(out)
        },
    )
    .ok()
    .flatten();
    OPERATORS.with(|m| m.borrow_mut().insert(oid.to_u32(), name.clone()));
    name
}
