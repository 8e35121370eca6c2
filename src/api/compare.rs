//! The comparison of one table for `pgsub.verify_subscription` (`verify.rs`): what is compared
//! (the published columns the local table has, the publication's row filter, a key), and the
//! range hashing that finds the differing rows without moving the table over the wire.
//!
//! Each side renders a row as the text of a row value of its compared columns' text (the
//! publisher's value cast to the local column's built-in type first where the types differ, so
//! both sides render it as the local type does), hashes it with md5, and sums the first 64 bits
//! of the hashes per key range (an order-independent checksum: a second half would double the
//! cost of the sums for a 2^-64 chance of a miss) with the row count. Ranges whose
//! count or checksum differ are split at key quantiles of the side with more rows there (up to
//! [`FANOUT`] parts, counted in one grouped query per side; above [`SAMPLE_ABOVE`] rows the
//! quantiles of a block sample) until they hold at most [`LEAF`] rows; only then are the rows'
//! keys and hashes fetched. The two sides' queries of a step run at the same time (the
//! publisher's is sent, this side's runs, then the publisher's answer is read). Keys are the local primary key (or
//! replica identity index); text keys are ordered with `COLLATE "C"` on both sides. A table
//! without one is compared as a multiset of rows: its "key" is the row's hash.
use pgsub_proto::client::{quote_ident, quote_literal};
use std::collections::BTreeMap;

/// Parts a differing range is split into.
const FANOUT: i64 = 32;
/// Rows (on the larger side) below which a range's rows are fetched.
const LEAF: i64 = 512;
/// Ranges of more rows are split at quantiles of a sample of about SAMPLE_ROWS rows.
const SAMPLE_ABOVE: i64 = 100_000;
const SAMPLE_ROWS: i64 = 4_000;

/// Rows of a query, as text.
pub(super) type Rows = Vec<Vec<Option<String>>>;

/// Runs a query on one side and returns its rows as text.
pub(super) trait Side {
    fn rows(&mut self, sql: &str) -> Rows;
}

/// The publisher's side can run a query while this side runs its own.
pub(super) trait RemoteSide: Side {
    /// Sends `sql`; `finish` returns its rows.
    fn start(&mut self, sql: &str);
    fn finish(&mut self) -> Rows;
}

/// A compared column.
#[derive(Clone, Debug)]
pub(super) struct Column {
    pub name: String,
    /// Its local type is collatable (ordered with COLLATE "C" as a key).
    pub collatable: bool,
    /// Its local type is not built in (an enum, a domain, a composite, an extension's type): as
    /// a key it is ordered by its text (COLLATE "C"), because its own order may differ between the
    /// sides — an enum whose labels are declared in another order there — and ranges split by
    /// one side's order would hold other rows on the other.
    pub text_order: bool,
    /// The local built-in type the publisher's value is cast to before it is rendered (its type
    /// differs there).
    pub remote_cast: Option<String>,
    /// The built-in send function its value is rendered through (as hex bytes) instead of its
    /// text: floating-point values from a publisher before 12, whose text (17 digits under
    /// `extra_float_digits = 3`) is not the shortest exact form this side prints.
    pub send: Option<&'static str>,
}

/// One table as a side queries it.
#[derive(Clone, Debug)]
pub(super) struct Query {
    /// `ONLY schema.table` (or `schema.table` for a partitioned table).
    pub from: String,
    /// The publisher's row filter (`true` here).
    pub filter: String,
    pub remote: bool,
}

/// What is compared of one table.
#[derive(Clone, Debug)]
pub(super) struct Table {
    pub cols: Vec<Column>,
    /// Indexes into `cols` of the key's columns (empty: compared as a multiset of rows).
    pub key: Vec<usize>,
    /// The two servers' encodings differ: text keys are ordered by their UTF-8 bytes, and
    /// bounds travel as hex of those bytes (the byte order of a single-byte encoding such as
    /// WIN1252 is not the characters' order, and a bound from one side may hold a character the
    /// other's encoding lacks).
    pub bytewise: bool,
}

/// Both sides of a table: each side's runner and queries.
pub(super) struct Pair<'a> {
    pub remote: &'a mut dyn RemoteSide,
    pub rq: Query,
    pub local: &'a mut dyn Side,
    pub lq: Query,
}

/// A range of keys: lower bound included, upper excluded (None: open).
#[derive(Clone, Debug, Default)]
struct Range {
    lo: Option<Vec<String>>,
    hi: Option<Vec<String>>,
}

/// Count and checksum of a range on one side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Sum {
    pub rows: i64,
    h1: String,
}

/// Keys that differ, as JSON objects (text), each list at most `max_keys` long in all.
#[derive(Debug, Default)]
pub(super) struct Diff {
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub different: Vec<String>,
    /// Ranges compared (for the progress report).
    pub ranges: u64,
}

impl Diff {
    fn found(&self) -> usize {
        self.missing.len() + self.extra.len() + self.different.len()
    }
}

impl Table {
    /// A column's value rendered as text the same way on both sides.
    fn render(&self, c: &Column, q: &Query) -> String {
        let ident = quote_ident(&c.name);
        let value = match (&c.remote_cast, q.remote) {
            (Some(t), true) => format!("({ident})::text::{t}"),
            _ => format!("({ident})"),
        };
        match c.send {
            Some(f) => format!("pg_catalog.{f}({value})::text"),
            None => format!("{value}::text"),
        }
    }

    fn row_text(&self, q: &Query) -> String {
        if self.cols.is_empty() {
            return "'()'::text".into();
        }
        let parts: Vec<String> = self.cols.iter().map(|c| self.render(c, q)).collect();
        format!("ROW({})::text", parts.join(", "))
    }

    /// The row's md5 — over its text's UTF-8 bytes when the two servers' encodings differ (each
    /// side's text is in its own server encoding).
    fn hash(&self, q: &Query) -> String {
        if self.bytewise {
            format!("pg_catalog.md5(pg_catalog.convert_to({}, 'UTF8'))", self.row_text(q))
        } else {
            format!("pg_catalog.md5({})", self.row_text(q))
        }
    }

    /// A collatable key column's text as its UTF-8 bytes (`bytewise`; its type may be an array
    /// or a domain of text: its text is what is compared).
    fn utf8_bytes(ident: &str) -> String {
        format!("pg_catalog.convert_to(({ident})::text, 'UTF8')")
    }

    /// A key column as this side compares it: the publisher's value cast to the local type when
    /// its type differs there (`remote_cast`), so that both sides order it alike — a publisher's
    /// `text` key ordered as text there and as `int` here would split ranges that hold other rows.
    fn key_value(c: &Column, ident: String, q: &Query) -> String {
        match (&c.remote_cast, q.remote) {
            (Some(t), true) => format!("(({ident})::text::{t})"),
            _ => ident,
        }
    }

    /// The key's ordering expressions.
    fn order(&self, q: &Query) -> Vec<String> {
        if self.key.is_empty() {
            return vec![format!("{} COLLATE \"C\"", self.hash(q))];
        }
        self.key_exprs(q, |c, ident| match (c.collatable || c.text_order, self.bytewise) {
            (true, true) => Self::utf8_bytes(&ident),
            (true, false) if c.collatable => format!("{ident} COLLATE \"C\""),
            (true, false) => format!("({ident})::text COLLATE \"C\""),
            (false, _) => ident,
        })
    }

    /// The key's values as text, for bounds (as the side's own type renders them).
    fn bound_values(&self, q: &Query) -> Vec<String> {
        if self.key.is_empty() {
            return vec![self.hash(q)];
        }
        self.key_exprs(q, |c, ident| {
            if (c.collatable || c.text_order) && self.bytewise {
                format!("pg_catalog.encode({}, 'hex')", Self::utf8_bytes(&ident))
            } else {
                format!("({ident})::text")
            }
        })
    }

    /// `f(column, its value as this side compares it)` for each key column (`key_value`).
    fn key_exprs(&self, q: &Query, f: impl Fn(&Column, String) -> String) -> Vec<String> {
        self.key
            .iter()
            .map(|&i| {
                let c = &self.cols[i];
                f(c, Self::key_value(c, quote_ident(&c.name), q))
            })
            .collect()
    }

    /// A row's identity, rendered alike on both sides.
    fn ident(&self, q: &Query) -> String {
        if self.key.is_empty() {
            return self.hash(q);
        }
        let parts: Vec<String> = self.key.iter().map(|&i| self.render(&self.cols[i], q)).collect();
        format!("ROW({})::text", parts.join(", "))
    }

    /// The key (or, without one, the row) as a JSON object, for the report.
    fn json(&self) -> String {
        let idx: Vec<usize> = if self.key.is_empty() { (0..self.cols.len()).collect() } else { self.key.clone() };
        let parts: Vec<String> = idx
            .iter()
            .map(|&i| format!("{}, {}", quote_literal(&self.cols[i].name), quote_ident(&self.cols[i].name)))
            .collect();
        format!("pg_catalog.json_build_object({})::text", parts.join(", "))
    }

    /// A bound (from `bound_values` of either side) as a row value to compare the key with: a
    /// text key's bound is hex of its UTF-8 bytes when `bytewise`.
    fn bound_row(&self, vals: &[String]) -> String {
        let v: Vec<String> = vals
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let hex = self.bytewise
                    && self.key.get(i).is_some_and(|&k| self.cols[k].collatable || self.cols[k].text_order);
                if hex {
                    format!("pg_catalog.decode({}, 'hex')", quote_literal(s))
                } else {
                    quote_literal(s)
                }
            })
            .collect();
        format!("ROW({})", v.join(", "))
    }

    fn condition(&self, q: &Query, r: &Range) -> String {
        let keys = format!("ROW({})", self.order(q).join(", "));
        let lit = |vals: &[String]| self.bound_row(vals);
        let mut c = format!("({})", q.filter);
        if let Some(lo) = &r.lo {
            c.push_str(&format!(" AND {keys} >= {}", lit(lo)));
        }
        if let Some(hi) = &r.hi {
            c.push_str(&format!(" AND {keys} < {}", lit(hi)));
        }
        c
    }

    /// Count and checksum of each of the parts of `r` split at `bounds` (part i: before
    /// bounds[i]; the last: from the last bound on).
    fn sums_sql(&self, q: &Query, r: &Range, bounds: &[Vec<String>]) -> String {
        let keys = format!("ROW({})", self.order(q).join(", "));
        let bucket = if bounds.is_empty() {
            "0".to_string()
        } else {
            let arms: Vec<String> = bounds
                .iter()
                .enumerate()
                .map(|(i, b)| format!("WHEN {keys} < {} THEN {i}", self.bound_row(b)))
                .collect();
            format!("CASE {} ELSE {} END", arms.join(" "), bounds.len())
        };
        let half = |from: u8| {
            format!(
                "COALESCE(pg_catalog.sum((('x' || pg_catalog.substr(h, {from}, 16))::bit(64))::int8::numeric), 0)::text"
            )
        };
        format!(
            "SELECT b, pg_catalog.count(*), {} FROM (SELECT {bucket} AS b, {} AS h FROM {} WHERE {}) s GROUP BY b",
            half(1),
            self.hash(q),
            q.from,
            self.condition(q, r)
        )
    }

    /// Count and checksum of each part of `r` split at `bounds` on both sides, the two
    /// queries running at once.
    fn sums(&self, pair: &mut Pair, r: &Range, bounds: &[Vec<String>]) -> (Vec<Sum>, Vec<Sum>) {
        let (theirs, ours) = both(pair, &self.sums_sql(&pair.rq, r, bounds), &self.sums_sql(&pair.lq, r, bounds));
        (parse_sums(theirs, bounds.len()), parse_sums(ours, bounds.len()))
    }

    /// The rows of a range on both sides, the two queries running at once.
    #[allow(clippy::type_complexity)]
    fn leaves(
        &self,
        pair: &mut Pair,
        r: &Range,
    ) -> (BTreeMap<String, (String, String, i64)>, BTreeMap<String, (String, String, i64)>) {
        let (theirs, ours) = both(pair, &self.leaf_sql(&pair.rq, r), &self.leaf_sql(&pair.lq, r));
        (parse_leaf(theirs), parse_leaf(ours))
    }

    /// Up to FANOUT - 1 key values splitting `r` into parts of about equal size on this side:
    /// exact quantiles for a range of up to [`SAMPLE_ABOVE`] rows, else quantiles of a block
    /// sample of about [`SAMPLE_ROWS`] rows (any key values split correctly; a sample only
    /// makes the parts less even), so that no large range is sorted.
    fn quantiles(&self, side: &mut dyn Side, q: &Query, r: &Range, rows: i64) -> Vec<Vec<String>> {
        let vals = self.bound_values(q);
        let names: Vec<String> = (0..vals.len()).map(|i| format!("k{i}")).collect();
        let select: Vec<String> = vals.iter().zip(&names).map(|(v, n)| format!("{v} AS {n}")).collect();
        if rows > SAMPLE_ABOVE {
            let percent = (100.0 * SAMPLE_ROWS as f64 / rows as f64).min(100.0);
            let sql = format!(
                "SELECT {} FROM {} TABLESAMPLE SYSTEM ({percent:.6}) WHERE {} ORDER BY {}",
                select.join(", "),
                q.from,
                self.condition(q, r),
                self.order(q).join(", ")
            );
            let sample = side.rows(&sql);
            let step = sample.len().div_ceil(FANOUT as usize).max(1);
            let picked = sample.into_iter().enumerate().filter(|(i, _)| *i > 0 && i % step == 0).map(|(_, r)| r);
            let out = distinct(picked);
            if out.len() >= 2 {
                return out;
            }
        }
        let step = (rows + FANOUT - 1) / FANOUT;
        let sql = format!(
            "SELECT {} FROM (SELECT {}, pg_catalog.row_number() OVER (ORDER BY {}) AS rn FROM {} WHERE {}) s \
             WHERE rn > 1 AND (rn - 1) % {step} = 0 ORDER BY rn",
            names.join(", "),
            select.join(", "),
            self.order(q).join(", "),
            q.from,
            self.condition(q, r)
        );
        distinct(side.rows(&sql).into_iter())
    }

    /// The rows of a range: identity → (JSON, hash, copies).
    fn leaf_sql(&self, q: &Query, r: &Range) -> String {
        format!(
            "SELECT i, pg_catalog.min(j), pg_catalog.min(h), pg_catalog.count(*) FROM \
             (SELECT {} AS i, {} AS j, {} AS h FROM {} WHERE {}) s GROUP BY i",
            self.ident(q),
            self.json(),
            self.hash(q),
            q.from,
            self.condition(q, r)
        )
    }

    /// The whole table's count and checksum on each side (None: not compared by checksum).
    pub(super) fn totals(&self, pair: &mut Pair, checksum: bool) -> (Sum, Sum) {
        if !checksum {
            let count = |side: &mut dyn Side, q: &Query| {
                let rows = side.rows(&format!("SELECT pg_catalog.count(*) FROM {} WHERE ({})", q.from, q.filter));
                let n = rows.first().and_then(|r| r.first().cloned().flatten()).and_then(|v| v.parse().ok());
                Sum { rows: n.unwrap_or(0), ..Sum::default() }
            };
            return (count(pair.remote, &pair.rq), count(pair.local, &pair.lq));
        }
        let (mut r, mut l) = self.sums(pair, &Range::default(), &[]);
        (r.remove(0), l.remove(0))
    }

    /// Narrows the differences of a table whose totals differ down to its keys, at most
    /// `max_keys` of them; `progress` is called before each range.
    pub(super) fn narrow(
        &self,
        pair: &mut Pair,
        totals: (Sum, Sum),
        max_keys: usize,
        progress: &mut dyn FnMut(&Diff),
    ) -> Diff {
        let mut diff = Diff::default();
        // Depth first, in key order: the last pushed is the next compared.
        // A part holding all of its parent's rows (duplicates of one row, without a key) is
        // not split again.
        let mut stack = vec![(Range::default(), totals.0.rows, totals.1.rows, true)];
        while let Some((range, rrows, lrows, split)) = stack.pop() {
            if diff.found() >= max_keys {
                break;
            }
            diff.ranges += 1;
            progress(&diff);
            let bounds = if !split || rrows.max(lrows) <= LEAF {
                Vec::new()
            } else if rrows >= lrows {
                self.quantiles(pair.remote, &pair.rq, &range, rrows)
            } else {
                self.quantiles(pair.local, &pair.lq, &range, lrows)
            };
            if bounds.is_empty() {
                self.compare_leaf(pair, &range, max_keys, &mut diff);
                continue;
            }
            let (rs, ls) = self.sums(pair, &range, &bounds);
            let mut parts = Vec::new();
            for i in 0..=bounds.len() {
                if rs[i] != ls[i] {
                    let lo = if i == 0 { range.lo.clone() } else { Some(bounds[i - 1].clone()) };
                    let hi = if i == bounds.len() { range.hi.clone() } else { Some(bounds[i].clone()) };
                    let split = (rs[i].rows, ls[i].rows) != (rrows, lrows);
                    parts.push((Range { lo, hi }, rs[i].rows, ls[i].rows, split));
                }
            }
            stack.extend(parts.into_iter().rev());
        }
        diff
    }

    fn compare_leaf(&self, pair: &mut Pair, range: &Range, max_keys: usize, diff: &mut Diff) {
        let (theirs, ours) = self.leaves(pair, range);
        let push = |list: u8, json: &str, copies: i64, diff: &mut Diff| {
            for _ in 0..copies.max(0) {
                if diff.found() >= max_keys {
                    return;
                }
                let v = match list {
                    0 => &mut diff.missing,
                    1 => &mut diff.extra,
                    _ => &mut diff.different,
                };
                v.push(json.to_string());
            }
        };
        for (ident, (json, hash, n)) in &theirs {
            match ours.get(ident) {
                None => push(0, json, *n, diff),
                Some((_, _, m)) if self.key.is_empty() => {
                    if n > m {
                        push(0, json, n - m, diff);
                    }
                }
                Some((_, h, _)) if h != hash => push(2, json, 1, diff),
                Some(_) => {}
            }
        }
        for (ident, (json, _, n)) in &ours {
            match theirs.get(ident) {
                None => push(1, json, *n, diff),
                Some((_, _, m)) if self.key.is_empty() && n > m => push(1, json, n - m, diff),
                Some(_) => {}
            }
        }
    }
}

/// Runs `rsql` on the publisher and `lsql` here at the same time.
fn both(pair: &mut Pair, rsql: &str, lsql: &str) -> (Rows, Rows) {
    pair.remote.start(rsql);
    let ours = pair.local.rows(lsql);
    (pair.remote.finish(), ours)
}

fn parse_sums(rows: Rows, bounds: usize) -> Vec<Sum> {
    let mut out = vec![Sum::default(); bounds + 1];
    for row in rows {
        let f = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        let Some(slot) = f(0).parse::<usize>().ok().and_then(|b| out.get_mut(b)) else { continue };
        *slot = Sum { rows: f(1).parse().unwrap_or(0), h1: f(2) };
    }
    out
}

/// Identity → (JSON, hash, copies).
fn parse_leaf(rows: Rows) -> BTreeMap<String, (String, String, i64)> {
    let mut out = BTreeMap::new();
    for row in rows {
        let f = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        out.insert(f(0), (f(1), f(2), f(3).parse().unwrap_or(0)));
    }
    out
}

/// Bound values in order, without repeats.
fn distinct(rows: impl Iterator<Item = Vec<Option<String>>>) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    for row in rows {
        let b: Vec<String> = row.into_iter().map(|v| v.unwrap_or_default()).collect();
        if out.last() != Some(&b) {
            out.push(b);
        }
    }
    out
}
