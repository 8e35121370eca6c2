//! The statements the apply worker prepares for a relation: one text per (operation, column set),
//! built here from the local columns and prepared once with SPI by `src/worker/relation.rs`.
//!
//! - INSERT of the columns sent (`DEFAULT VALUES` when none are);
//! - INSERT with `OVERRIDING SYSTEM VALUE` when a local column is GENERATED ALWAYS AS IDENTITY
//!   (the publisher's value is kept, as native apply does);
//! - UPDATE / DELETE by the replica identity: `col OPERATOR(=) $n` per key column, with the
//!   type's own equality operator; under REPLICA IDENTITY FULL NULLs match NULLs and one row of
//!   possible duplicates is chosen by ctid (by tableoid and ctid in a partitioned table, whose
//!   partitions each have their own ctids). An UPDATE never sets a GENERATED ALWAYS identity
//!   column (SQL refuses it): it requires the row to hold the new value already;
//! - a replacing UPDATE, for a row whose GENERATED ALWAYS identity column the publisher changed:
//!   the row is deleted and inserted again `OVERRIDING SYSTEM VALUE` in one statement, the
//!   columns not sent (TOAST values left unchanged, columns only the subscriber has) taken from
//!   the deleted row;
//! - batched DELETE / UPDATE of a run of rows: each column's values come as one array parameter,
//!   unnested `WITH ORDINALITY`, and `RETURNING` the ordinals of the rows found;
//! - a lookup by the same key condition, asked when an UPDATE or DELETE changed no row: whether
//!   the row is there all the same (a BEFORE ROW trigger skipped the change) or missing.
//!
//! Plain tables are addressed `ONLY` (inheritance children are tables of their own); partitioned
//! ones without it (their partitions hold the rows).
use postgres_protocol::escape::escape_identifier as quote_ident;

/// The type `oid[]`.
const OID_ARRAY: u32 = 1028;

/// A local column as the statement builder needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The column's type OID.
    pub typid: u32,
    /// `OPERATOR(schema.=)` of the type's default equality, when it has one.
    pub eq_op: Option<String>,
    /// The column type's array type, for batched statements; None: never batched (no array
    /// type, or a composite whose `unnest` would expand into its fields).
    pub array_typid: Option<u32>,
    /// GENERATED ALWAYS AS IDENTITY here.
    pub identity_always: bool,
    /// A composite type (or a domain over one). SQL's `IS NULL` is true for such a value when
    /// all its fields are NULL, so that `(,)` and NULL would match each other: its null tests
    /// count NULL values instead (`num_nulls`).
    pub row_type: bool,
}

/// The local table a statement is for.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// `"schema"."name"`, quoted.
    pub qualified: &'a str,
    pub partitioned: bool,
    /// The remote replica identity is FULL (every column identifies the row).
    pub full: bool,
    /// Several local rows may match the key (FULL, or no local unique index on the key
    /// columns): an UPDATE or DELETE changes one of them, chosen by ctid.
    pub pick_one: bool,
    pub cols: &'a [Column],
    /// Under FULL, when the row looked for is known: which key columns are NULL in it. Those
    /// are matched with `IS NULL` and the others with the equality alone, so that the statement
    /// has no `OR` per column: its generic plan can use an index on a key column, and each row
    /// scanned costs one comparison per column (their parameters are still taken, unused).
    /// None: any row, NULLs matching NULLs through an `OR`.
    pub nulls: Option<&'a [bool]>,
    /// The local table's other columns a row is inserted with (not generated, not among
    /// `cols`): those only the subscriber has, which a replacing UPDATE carries over.
    pub kept: &'a [String],
}

/// A statement shape: the operation and which columns take part (one flag per column).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Statement {
    Insert(Vec<bool>),
    /// An INSERT that leaves a row whose key exists alone (`ON CONFLICT DO NOTHING`): the
    /// conflict is then looked for and resolved by the worker.
    InsertIfAbsent(Vec<bool>),
    Update {
        set: Vec<bool>,
        key: Vec<bool>,
    },
    /// An UPDATE that must set a GENERATED ALWAYS identity column: the row found by `key` is
    /// deleted and inserted again with the `set` columns' new values and its own other values.
    /// Parameters as `Update`'s: the set columns, then the key columns.
    Replace {
        set: Vec<bool>,
        key: Vec<bool>,
    },
    Delete {
        key: Vec<bool>,
    },
    /// DELETE of many rows at once: one array parameter per key column.
    DeleteBatch {
        key: Vec<bool>,
    },
    /// UPDATE of many rows at once: one array parameter per set column, then per key column.
    UpdateBatch {
        set: Vec<bool>,
        key: Vec<bool>,
    },
    /// Of a run of rows for a batched UPDATE, the ordinals of those whose local row was last
    /// written by an origin not among the given ones (under `track_commit_timestamp`): a run with
    /// one goes one by one, where each row's origin is looked at. Parameters: one array per key
    /// column, then the origins that are not a conflict (`oid[]`).
    ForeignOrigins {
        key: Vec<bool>,
    },
    /// Whether a row an UPDATE or DELETE did not change is there all the same (a BEFORE ROW
    /// trigger returned NULL): the key condition of the one-row statements, and for `same` the
    /// column must hold the given value (an UPDATE's GENERATED ALWAYS identity columns).
    /// Parameters: the key columns, then the `same` ones.
    Find {
        key: Vec<bool>,
        same: Vec<bool>,
    },
    /// Whether a row that matches the key columns holds a value in one of `odd` (REPLICA
    /// IDENTITY FULL columns whose type cannot be compared): parameters are the key columns'.
    Uncomparable {
        key: Vec<bool>,
        odd: Vec<bool>,
    },
}

/// What to prepare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    pub sql: String,
    /// Parameter types in order ($1, $2, …).
    pub argtypes: Vec<u32>,
    /// Prepare a generic plan at once (the batched statements: their array parameters give the
    /// planner no row count, and one nested loop over the key index serves every run).
    pub generic_plan: bool,
}

/// The statement text and parameter types of `stmt` on `target`.
pub fn build(target: &Target, stmt: &Statement) -> Prepared {
    let mut b = Builder { target, argtypes: Vec::new() };
    let sql = match stmt {
        Statement::Insert(present) => b.insert(present),
        Statement::InsertIfAbsent(present) => format!("{} ON CONFLICT DO NOTHING", b.insert(present)),
        Statement::Update { set, key } => b.update(set, key),
        Statement::Replace { set, key } => b.replace(set, key),
        Statement::Delete { key } => b.delete(key),
        Statement::DeleteBatch { key } => b.delete_batch(key),
        Statement::UpdateBatch { set, key } => b.update_batch(set, key),
        Statement::ForeignOrigins { key } => b.foreign_origins(key),
        Statement::Find { key, same } => b.find(key, same),
        Statement::Uncomparable { key, odd } => b.uncomparable(key, odd),
    };
    let generic_plan = matches!(
        stmt,
        Statement::DeleteBatch { .. } | Statement::UpdateBatch { .. } | Statement::ForeignOrigins { .. }
    );
    Prepared { sql, argtypes: b.argtypes, generic_plan }
}

struct Builder<'a, 'b> {
    target: &'b Target<'a>,
    argtypes: Vec<u32>,
}

fn on(mask: &[bool]) -> impl Iterator<Item = usize> + '_ {
    mask.iter().enumerate().filter(|(_, on)| **on).map(|(i, _)| i)
}

impl Builder<'_, '_> {
    fn only(&self) -> &'static str {
        if self.target.partitioned {
            ""
        } else {
            "ONLY "
        }
    }

    fn col(&self, i: usize) -> String {
        quote_ident(&self.target.cols[i].name)
    }

    fn eq(&self, i: usize) -> String {
        self.target.cols[i].eq_op.clone().unwrap_or_else(|| "=".to_string())
    }

    /// A parameter of column `i`'s type.
    fn param(&mut self, i: usize) -> String {
        self.argtypes.push(self.target.cols[i].typid);
        format!("${}", self.argtypes.len())
    }

    /// An array parameter of column `i`'s array type, and its number.
    fn array_param(&mut self, i: usize) -> usize {
        self.argtypes.push(self.target.cols[i].array_typid.unwrap_or(0));
        self.argtypes.len()
    }

    /// Column `i` and parameter `p` both NULL (not a composite of NULL fields).
    fn both_null(&self, i: usize, col: &str, p: &str) -> String {
        if self.target.cols[i].row_type {
            format!("pg_catalog.num_nulls({col}, {p}) OPERATOR(pg_catalog.=) 2")
        } else {
            format!("({col} IS NULL AND {p} IS NULL)")
        }
    }

    /// Column `i` is NULL (not a composite of NULL fields).
    fn is_null(&self, i: usize, col: &str) -> String {
        if self.target.cols[i].row_type {
            format!("pg_catalog.num_nulls({col}) OPERATOR(pg_catalog.=) 1")
        } else {
            format!("{col} IS NULL")
        }
    }

    /// Column `i` holds a value (a composite of NULL fields too).
    fn holds_value(&self, i: usize) -> String {
        let col = self.col(i);
        if self.target.cols[i].row_type {
            format!("pg_catalog.num_nonnulls({col}) OPERATOR(pg_catalog.=) 1")
        } else {
            format!("{col} IS NOT NULL")
        }
    }

    /// The row identity condition over the key columns.
    fn key_condition(&mut self, key: &[bool]) -> String {
        let mut parts = Vec::new();
        for i in on(key) {
            let col = self.col(i);
            let p = self.param(i);
            let has_eq = self.target.cols[i].eq_op.is_some();
            let null = self.target.nulls.map(|n| n.get(i).copied().unwrap_or(false));
            parts.push(if self.target.full && null == Some(true) {
                self.is_null(i, &col)
            } else if self.target.full && has_eq && null == Some(false) {
                format!("{col} {} {p}", self.eq(i))
            } else if self.target.full && !has_eq {
                // Only reached with a NULL value: a type without equality cannot identify a row
                // otherwise (the worker refuses such values, as native does).
                self.both_null(i, &col, &p)
            } else if self.target.full {
                format!("({col} {} {p} OR {})", self.eq(i), self.both_null(i, &col, &p))
            } else {
                format!("{col} {} {p}", self.eq(i))
            });
        }
        if parts.is_empty() {
            // REPLICA IDENTITY FULL of a table without columns: every row is the same.
            return "true".to_string();
        }
        parts.join(" AND ")
    }

    /// `WHERE …` of a one-row UPDATE/DELETE (the key condition and `extra` ones): under FULL one
    /// of possibly several equal rows, by ctid — and by tableoid in a partitioned table, where
    /// one ctid is a row in each partition.
    fn one_row_where(&mut self, key: &[bool], extra: &[String]) -> String {
        let mut c = self.key_condition(key);
        for e in extra {
            c = format!("{c} AND {e}");
        }
        match (self.target.pick_one, self.target.partitioned) {
            (false, _) => c,
            (true, false) => {
                format!("ctid = (SELECT ctid FROM {}{} WHERE {c} LIMIT 1)", self.only(), self.target.qualified)
            }
            (true, true) => {
                format!("(tableoid, ctid) = (SELECT tableoid, ctid FROM {} WHERE {c} LIMIT 1)", self.target.qualified)
            }
        }
    }

    fn insert(&mut self, present: &[bool]) -> String {
        let q = self.target.qualified;
        let names: Vec<String> = on(present).map(|i| self.col(i)).collect();
        if names.is_empty() {
            return format!("INSERT INTO {q} DEFAULT VALUES");
        }
        let params: Vec<String> = on(present).collect::<Vec<_>>().into_iter().map(|i| self.param(i)).collect();
        let overriding =
            if on(present).any(|i| self.target.cols[i].identity_always) { " OVERRIDING SYSTEM VALUE" } else { "" };
        format!("INSERT INTO {q} ({}){overriding} VALUES ({})", names.join(", "), params.join(", "))
    }

    fn update(&mut self, set: &[bool], key: &[bool]) -> String {
        let mut sets = Vec::new();
        let mut unchanged = Vec::new();
        for i in on(set) {
            let p = self.param(i);
            if self.target.cols[i].identity_always {
                unchanged.push(format!("{} IS NOT DISTINCT FROM {p}", self.col(i)));
            } else {
                sets.push(format!("{} = {p}", self.col(i)));
            }
        }
        if sets.is_empty() {
            // Only identity columns were sent: the row is touched (triggers, the row's origin)
            // through a column set to itself.
            let n = self.target.cols.len();
            if let Some(c) = (0..n).find(|&i| !self.target.cols[i].identity_always).or((n > 0).then_some(0)) {
                sets.push(format!("{0} = {0}", self.col(c)));
            }
        }
        let w = self.one_row_where(key, &unchanged);
        format!("UPDATE {}{} SET {} WHERE {w}", self.only(), self.target.qualified, sets.join(", "))
    }

    fn replace(&mut self, set: &[bool], key: &[bool]) -> String {
        let mut names = Vec::new();
        let mut values = Vec::new();
        for i in 0..self.target.cols.len() {
            let name = self.col(i);
            values.push(if set.get(i).copied().unwrap_or(false) { self.param(i) } else { format!("pgsub_old.{name}") });
            names.push(name);
        }
        for k in self.target.kept {
            let name = quote_ident(k);
            values.push(format!("pgsub_old.{name}"));
            names.push(name);
        }
        let w = self.one_row_where(key, &[]);
        let q = self.target.qualified;
        format!(
            "WITH pgsub_old AS (DELETE FROM {}{q} WHERE {w} RETURNING *) \
             INSERT INTO {q} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM pgsub_old",
            self.only(),
            names.join(", "),
            values.join(", ")
        )
    }

    fn find(&mut self, key: &[bool], same: &[bool]) -> String {
        let mut c = self.key_condition(key);
        for i in on(same) {
            let p = self.param(i);
            c = format!("{c} AND {} IS NOT DISTINCT FROM {p}", self.col(i));
        }
        format!("SELECT 1 FROM {}{} WHERE {c} LIMIT 1", self.only(), self.target.qualified)
    }

    fn uncomparable(&mut self, key: &[bool], odd: &[bool]) -> String {
        let c = self.key_condition(key);
        let held: Vec<String> = on(odd).map(|i| self.holds_value(i)).collect();
        let held = if held.is_empty() { "false".to_string() } else { held.join(" OR ") };
        format!("SELECT 1 FROM {}{} WHERE {c} AND ({held}) LIMIT 1", self.only(), self.target.qualified)
    }

    fn delete(&mut self, key: &[bool]) -> String {
        let w = self.one_row_where(key, &[]);
        format!("DELETE FROM {}{} WHERE {w}", self.only(), self.target.qualified)
    }

    /// A run's key columns as array parameters: the `unnest` calls, their output names and the
    /// conditions matching the table's rows (`pgsub_t`) to them (`pgsub_u`).
    fn unnested_keys(&mut self, key: &[bool]) -> (Vec<String>, Vec<String>, Vec<String>) {
        let (mut args, mut outs, mut conds) = (Vec::new(), Vec::new(), Vec::new());
        for i in on(key) {
            let n = self.array_param(i);
            args.push(format!("pg_catalog.unnest(${n})"));
            let k = format!("pgsub_k{n}");
            conds.push(format!("pgsub_t.{} {} pgsub_u.{k}", self.col(i), self.eq(i)));
            outs.push(k);
        }
        (args, outs, conds)
    }

    fn delete_batch(&mut self, key: &[bool]) -> String {
        let (args, outs, conds) = self.unnested_keys(key);
        format!(
            "DELETE FROM {}{} AS pgsub_t USING ROWS FROM ({}) WITH ORDINALITY AS pgsub_u({}, pgsub_ord) \
             WHERE {} RETURNING pgsub_u.pgsub_ord",
            self.only(),
            self.target.qualified,
            args.join(", "),
            outs.join(", "),
            conds.join(" AND ")
        )
    }

    fn foreign_origins(&mut self, key: &[bool]) -> String {
        let (args, outs, conds) = self.unnested_keys(key);
        self.argtypes.push(OID_ARRAY);
        format!(
            "SELECT pgsub_u.pgsub_ord FROM {}{} AS pgsub_t, ROWS FROM ({}) WITH ORDINALITY AS pgsub_u({}, pgsub_ord) \
             WHERE {} AND (CASE WHEN pgsub_t.xmin OPERATOR(pg_catalog.<>) '0'::pg_catalog.xid \
             THEN (pg_catalog.pg_xact_commit_timestamp_origin(pgsub_t.xmin)).roident END) \
             OPERATOR(pg_catalog.<>) ALL (${})",
            self.only(),
            self.target.qualified,
            args.join(", "),
            outs.join(", "),
            conds.join(" AND "),
            self.argtypes.len()
        )
    }

    fn update_batch(&mut self, set: &[bool], key: &[bool]) -> String {
        let (mut args, mut outs, mut sets, mut conds) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (mask, is_key) in [(set, false), (key, true)] {
            for i in on(mask) {
                let n = self.array_param(i);
                args.push(format!("pg_catalog.unnest(${n})"));
                let a = format!("pgsub_a{n}");
                if is_key {
                    conds.push(format!("pgsub_t.{} {} pgsub_u.{a}", self.col(i), self.eq(i)));
                } else {
                    sets.push(format!("{} = pgsub_u.{a}", self.col(i)));
                }
                outs.push(a);
            }
        }
        format!(
            "UPDATE {}{} AS pgsub_t SET {} FROM ROWS FROM ({}) WITH ORDINALITY AS pgsub_u({}, pgsub_ord) \
             WHERE {} RETURNING pgsub_u.pgsub_ord",
            self.only(),
            self.target.qualified,
            sets.join(", "),
            args.join(", "),
            outs.join(", "),
            conds.join(" AND ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INT4: u32 = 23;
    const INT4ARRAY: u32 = 1007;
    const TEXT: u32 = 25;
    const TEXTARRAY: u32 = 1009;
    const JSON: u32 = 114;

    fn cols() -> Vec<Column> {
        vec![
            Column {
                name: "id".into(),
                typid: INT4,
                eq_op: Some("OPERATOR(pg_catalog.=)".into()),
                array_typid: Some(INT4ARRAY),
                identity_always: false,
                row_type: false,
            },
            Column {
                name: "we\"ird".into(),
                typid: TEXT,
                eq_op: Some("OPERATOR(pg_catalog.=)".into()),
                array_typid: Some(TEXTARRAY),
                identity_always: false,
                row_type: false,
            },
            Column {
                name: "j".into(),
                typid: JSON,
                eq_op: None,
                array_typid: Some(199),
                identity_always: false,
                row_type: false,
            },
        ]
    }

    fn target(cols: &[Column], full: bool, partitioned: bool) -> Target<'_> {
        Target { qualified: "\"s\".\"t\"", partitioned, full, pick_one: full, cols, nulls: None, kept: &[] }
    }

    #[test]
    fn insert_of_the_columns_sent() {
        let c = cols();
        let p = build(&target(&c, false, false), &Statement::Insert(vec![true, false, true]));
        assert_eq!(p.sql, "INSERT INTO \"s\".\"t\" (\"id\", \"j\") VALUES ($1, $2)");
        assert_eq!(p.argtypes, vec![INT4, JSON]);
        assert!(!p.generic_plan);
    }

    #[test]
    fn insert_if_absent_does_nothing_on_conflict() {
        let c = cols();
        let p = build(&target(&c, false, false), &Statement::InsertIfAbsent(vec![true, false, true]));
        assert_eq!(p.sql, "INSERT INTO \"s\".\"t\" (\"id\", \"j\") VALUES ($1, $2) ON CONFLICT DO NOTHING");
        assert_eq!(p.argtypes, vec![INT4, JSON]);
    }

    #[test]
    fn insert_without_columns_takes_defaults() {
        let p = build(&target(&[], false, false), &Statement::Insert(vec![]));
        assert_eq!(p.sql, "INSERT INTO \"s\".\"t\" DEFAULT VALUES");
        assert!(p.argtypes.is_empty());
    }

    #[test]
    fn update_by_key_with_the_type_equality_and_quoted_names() {
        let c = cols();
        let p = build(
            &target(&c, false, false),
            &Statement::Update { set: vec![false, true, true], key: vec![true, false, false] },
        );
        assert_eq!(
            p.sql,
            "UPDATE ONLY \"s\".\"t\" SET \"we\"\"ird\" = $1, \"j\" = $2 WHERE \"id\" OPERATOR(pg_catalog.=) $3"
        );
        assert_eq!(p.argtypes, vec![TEXT, JSON, INT4]);
    }

    #[test]
    fn find_uses_the_key_condition_then_the_same_columns() {
        let c = cols();
        let p = build(
            &target(&c, false, false),
            &Statement::Find { key: vec![false, true, false], same: vec![true, false, false] },
        );
        assert_eq!(
            p.sql,
            "SELECT 1 FROM ONLY \"s\".\"t\" WHERE \"we\"\"ird\" OPERATOR(pg_catalog.=) $1 AND \"id\" IS NOT DISTINCT FROM $2 LIMIT 1"
        );
        assert_eq!(p.argtypes, vec![TEXT, INT4]);
        let p = build(&target(&c, true, true), &Statement::Find { key: vec![true, false, true], same: vec![false; 3] });
        assert_eq!(
            p.sql,
            "SELECT 1 FROM \"s\".\"t\" WHERE (\"id\" OPERATOR(pg_catalog.=) $1 OR (\"id\" IS NULL AND $1 IS NULL)) AND \
             (\"j\" IS NULL AND $2 IS NULL) LIMIT 1"
        );
    }

    #[test]
    fn uncomparable_looks_for_a_matching_row_holding_a_value() {
        let c = cols();
        let p = build(
            &target(&c, true, false),
            &Statement::Uncomparable { key: vec![true, false, false], odd: vec![false, false, true] },
        );
        assert_eq!(
            p.sql,
            "SELECT 1 FROM ONLY \"s\".\"t\" WHERE (\"id\" OPERATOR(pg_catalog.=) $1 OR (\"id\" IS NULL AND $1 IS NULL)) \
             AND (\"j\" IS NOT NULL) LIMIT 1"
        );
        assert_eq!(p.argtypes, vec![INT4]);
    }

    #[test]
    fn composite_columns_test_for_null_values_not_null_fields() {
        let mut c = cols();
        c[2].row_type = true;
        let p = build(&target(&c, true, false), &Statement::Delete { key: vec![false, true, true] });
        assert_eq!(
            p.sql,
            "DELETE FROM ONLY \"s\".\"t\" WHERE ctid = (SELECT ctid FROM ONLY \"s\".\"t\" WHERE \
             (\"we\"\"ird\" OPERATOR(pg_catalog.=) $1 OR (\"we\"\"ird\" IS NULL AND $1 IS NULL)) AND \
             pg_catalog.num_nulls(\"j\", $2) OPERATOR(pg_catalog.=) 2 LIMIT 1)"
        );
        let p = build(
            &target(&c, true, false),
            &Statement::Uncomparable { key: vec![true, false, false], odd: vec![false, false, true] },
        );
        assert!(p.sql.ends_with("AND (pg_catalog.num_nonnulls(\"j\") OPERATOR(pg_catalog.=) 1) LIMIT 1"), "{}", p.sql);
        c[2].eq_op = Some("OPERATOR(pg_catalog.=)".into());
        let p = build(&target(&c, true, false), &Statement::Delete { key: vec![false, false, true] });
        assert!(
            p.sql.contains(
                "(\"j\" OPERATOR(pg_catalog.=) $1 OR pg_catalog.num_nulls(\"j\", $1) OPERATOR(pg_catalog.=) 2)"
            ),
            "{}",
            p.sql
        );
    }

    #[test]
    fn partitioned_targets_are_not_only() {
        let c = cols();
        let p = build(&target(&c, false, true), &Statement::Delete { key: vec![true, false, false] });
        assert_eq!(p.sql, "DELETE FROM \"s\".\"t\" WHERE \"id\" OPERATOR(pg_catalog.=) $1");
    }

    #[test]
    fn full_identity_matches_nulls_and_picks_one_row() {
        let c = cols();
        let p = build(&target(&c, true, false), &Statement::Delete { key: vec![true, true, true] });
        assert_eq!(
            p.sql,
            "DELETE FROM ONLY \"s\".\"t\" WHERE ctid = (SELECT ctid FROM ONLY \"s\".\"t\" WHERE \
             (\"id\" OPERATOR(pg_catalog.=) $1 OR (\"id\" IS NULL AND $1 IS NULL)) AND \
             (\"we\"\"ird\" OPERATOR(pg_catalog.=) $2 OR (\"we\"\"ird\" IS NULL AND $2 IS NULL)) AND \
             (\"j\" IS NULL AND $3 IS NULL) LIMIT 1)"
        );
        assert_eq!(p.argtypes, vec![INT4, TEXT, JSON]);
    }

    #[test]
    fn full_identity_of_a_known_row_matches_without_an_or_per_column() {
        let c = cols();
        let nulls = [false, true, true];
        let t = Target { nulls: Some(&nulls), ..target(&c, true, false) };
        let p = build(&t, &Statement::Delete { key: vec![true, true, true] });
        // `$2` and `$3` are taken (the caller passes every key column) and unused.
        assert_eq!(
            p.sql,
            "DELETE FROM ONLY \"s\".\"t\" WHERE ctid = (SELECT ctid FROM ONLY \"s\".\"t\" WHERE \
             \"id\" OPERATOR(pg_catalog.=) $1 AND \"we\"\"ird\" IS NULL AND \"j\" IS NULL LIMIT 1)"
        );
        assert_eq!(p.argtypes, vec![INT4, TEXT, JSON]);
        let p = build(&t, &Statement::Find { key: vec![true, true, false], same: vec![false, false, false] });
        assert_eq!(
            p.sql,
            "SELECT 1 FROM ONLY \"s\".\"t\" WHERE \"id\" OPERATOR(pg_catalog.=) $1 AND \"we\"\"ird\" IS NULL LIMIT 1"
        );
    }

    #[test]
    fn full_identity_of_a_partitioned_table_picks_the_row_by_tableoid_and_ctid() {
        let c = cols();
        let p = build(&target(&c, true, true), &Statement::Delete { key: vec![true, false, false] });
        assert_eq!(
            p.sql,
            "DELETE FROM \"s\".\"t\" WHERE (tableoid, ctid) = (SELECT tableoid, ctid FROM \"s\".\"t\" WHERE \
             (\"id\" OPERATOR(pg_catalog.=) $1 OR (\"id\" IS NULL AND $1 IS NULL)) LIMIT 1)"
        );
        let p = build(
            &target(&c, true, true),
            &Statement::Update { set: vec![false, true, false], key: vec![true, false, false] },
        );
        assert!(
            p.sql.starts_with(
                "UPDATE \"s\".\"t\" SET \"we\"\"ird\" = $1 WHERE (tableoid, ctid) = (SELECT tableoid, ctid FROM"
            ),
            "{}",
            p.sql
        );
    }

    fn with_identity() -> Vec<Column> {
        let mut c = cols();
        c[0].identity_always = true;
        c
    }

    #[test]
    fn insert_into_a_generated_always_identity_column_overrides_it() {
        let c = with_identity();
        let p = build(&target(&c, false, false), &Statement::Insert(vec![true, true, false]));
        assert_eq!(p.sql, "INSERT INTO \"s\".\"t\" (\"id\", \"we\"\"ird\") OVERRIDING SYSTEM VALUE VALUES ($1, $2)");
        let p = build(&target(&c, false, false), &Statement::Insert(vec![false, true, false]));
        assert_eq!(p.sql, "INSERT INTO \"s\".\"t\" (\"we\"\"ird\") VALUES ($1)");
    }

    #[test]
    fn update_never_sets_a_generated_always_identity_column_but_requires_its_value() {
        let c = with_identity();
        let p = build(
            &target(&c, false, false),
            &Statement::Update { set: vec![true, true, false], key: vec![false, true, false] },
        );
        assert_eq!(
            p.sql,
            "UPDATE ONLY \"s\".\"t\" SET \"we\"\"ird\" = $2 WHERE \"we\"\"ird\" OPERATOR(pg_catalog.=) $3 AND \"id\" IS NOT DISTINCT FROM $1"
        );
        assert_eq!(p.argtypes, vec![INT4, TEXT, TEXT]);
        // Only the identity column sent: the row is touched through another column.
        let p = build(
            &target(&c, false, false),
            &Statement::Update { set: vec![true, false, false], key: vec![false, true, false] },
        );
        assert_eq!(
            p.sql,
            "UPDATE ONLY \"s\".\"t\" SET \"we\"\"ird\" = \"we\"\"ird\" WHERE \"we\"\"ird\" OPERATOR(pg_catalog.=) $2 AND \"id\" IS NOT DISTINCT FROM $1"
        );
    }

    #[test]
    fn a_replacing_update_deletes_and_inserts_the_row_keeping_what_was_not_sent() {
        let c = with_identity();
        let kept = ["local \"only\"".to_string()];
        let t = Target { kept: &kept, ..target(&c, false, false) };
        // The identity column and the key sent, the third column's TOAST value unchanged.
        let p = build(&t, &Statement::Replace { set: vec![true, true, false], key: vec![false, true, false] });
        assert_eq!(
            p.sql,
            "WITH pgsub_old AS (DELETE FROM ONLY \"s\".\"t\" WHERE \"we\"\"ird\" OPERATOR(pg_catalog.=) $3 RETURNING *) \
             INSERT INTO \"s\".\"t\" (\"id\", \"we\"\"ird\", \"j\", \"local \"\"only\"\"\") OVERRIDING SYSTEM VALUE \
             SELECT $1, $2, pgsub_old.\"j\", pgsub_old.\"local \"\"only\"\"\" FROM pgsub_old"
        );
        assert_eq!(p.argtypes, vec![INT4, TEXT, TEXT]);
        // A partitioned table: deleted wherever it is, routed where it belongs; under FULL one
        // row of possible duplicates.
        let t = Target { kept: &[], ..target(&c, true, true) };
        let p = build(&t, &Statement::Replace { set: vec![true, true, true], key: vec![false, true, false] });
        assert!(p.sql.starts_with(
            "WITH pgsub_old AS (DELETE FROM \"s\".\"t\" WHERE (tableoid, ctid) = (SELECT tableoid, ctid FROM \"s\".\"t\" WHERE"
        ));
        assert!(p.sql.ends_with("OVERRIDING SYSTEM VALUE SELECT $1, $2, $3 FROM pgsub_old"));
    }

    #[test]
    fn full_identity_of_a_table_without_columns_matches_any_row() {
        let p = build(&target(&[], true, false), &Statement::Delete { key: vec![] });
        assert_eq!(
            p.sql,
            "DELETE FROM ONLY \"s\".\"t\" WHERE ctid = (SELECT ctid FROM ONLY \"s\".\"t\" WHERE true LIMIT 1)"
        );
    }

    #[test]
    fn batched_delete_unnests_arrays_with_ordinality() {
        let c = cols();
        let p = build(&target(&c, false, false), &Statement::DeleteBatch { key: vec![true, true, false] });
        assert_eq!(
            p.sql,
            "DELETE FROM ONLY \"s\".\"t\" AS pgsub_t USING ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) \
             WITH ORDINALITY AS pgsub_u(pgsub_k1, pgsub_k2, pgsub_ord) WHERE pgsub_t.\"id\" OPERATOR(pg_catalog.=) \
             pgsub_u.pgsub_k1 AND pgsub_t.\"we\"\"ird\" OPERATOR(pg_catalog.=) pgsub_u.pgsub_k2 RETURNING pgsub_u.pgsub_ord"
        );
        assert_eq!(p.argtypes, vec![INT4ARRAY, TEXTARRAY]);
        assert!(p.generic_plan);
    }

    #[test]
    fn foreign_origins_of_a_run_by_its_keys_and_the_origins_given() {
        let c = cols();
        let p = build(&target(&c, false, true), &Statement::ForeignOrigins { key: vec![true, false, false] });
        assert_eq!(
            p.sql,
            "SELECT pgsub_u.pgsub_ord FROM \"s\".\"t\" AS pgsub_t, ROWS FROM (pg_catalog.unnest($1)) WITH ORDINALITY \
             AS pgsub_u(pgsub_k1, pgsub_ord) WHERE pgsub_t.\"id\" OPERATOR(pg_catalog.=) pgsub_u.pgsub_k1 AND \
             (CASE WHEN pgsub_t.xmin OPERATOR(pg_catalog.<>) '0'::pg_catalog.xid \
             THEN (pg_catalog.pg_xact_commit_timestamp_origin(pgsub_t.xmin)).roident END) OPERATOR(pg_catalog.<>) ALL ($2)"
        );
        assert_eq!(p.argtypes, vec![INT4ARRAY, OID_ARRAY]);
        assert!(p.generic_plan);
    }

    #[test]
    fn batched_update_sets_then_keys() {
        let c = cols();
        let p = build(
            &target(&c, false, false),
            &Statement::UpdateBatch { set: vec![false, true, false], key: vec![true, false, false] },
        );
        assert_eq!(
            p.sql,
            "UPDATE ONLY \"s\".\"t\" AS pgsub_t SET \"we\"\"ird\" = pgsub_u.pgsub_a1 FROM ROWS FROM \
             (pg_catalog.unnest($1), pg_catalog.unnest($2)) WITH ORDINALITY AS pgsub_u(pgsub_a1, pgsub_a2, pgsub_ord) \
             WHERE pgsub_t.\"id\" OPERATOR(pg_catalog.=) pgsub_u.pgsub_a2 RETURNING pgsub_u.pgsub_ord"
        );
        assert_eq!(p.argtypes, vec![TEXTARRAY, INT4ARRAY]);
    }

    #[test]
    fn statements_are_keys_for_the_plan_cache() {
        use std::collections::HashSet;
        let a = Statement::Update { set: vec![true], key: vec![true] };
        let b = Statement::UpdateBatch { set: vec![true], key: vec![true] };
        let set: HashSet<Statement> = [a.clone(), b, a].into_iter().collect();
        assert_eq!(set.len(), 2);
    }
}
