//! `pgsub.verify_subscription` (issue 20, behind `pgsub._verify_subscription` in sql/views.sql):
//! compares the subscription's tables between the publisher and here at one consistent point.
//!
//! The point: on the publisher a replication connection creates a temporary logical slot that
//! exports its snapshot (consistent point C); a second, plain connection runs a REPEATABLE READ
//! transaction on that snapshot. Here the apply worker is asked (its shared-memory slot's hold,
//! `src/worker/hold.rs`) to apply everything committed before C and to hold before anything
//! after it — already before C is known, at the publisher's WAL position read just before the
//! slot is made, so that nothing it applies meanwhile can lie beyond C. Once it reports held at
//! C this backend registers the latest snapshot, pushes it as the active one for its read-only
//! queries, and releases the worker at once: it is held only while one snapshot is taken. A
//! verifier that fails or is cancelled meanwhile releases it on the way out (a guard's drop);
//! one that dies is noticed by the worker (the requester's pid is gone), and every hold ends by
//! itself at its deadline.
//!
//! Then each table is compared with both snapshots fixed (`compare.rs`), cancellable between
//! ranges; `pg_stat_activity.query` of the verifying backend says which table and how many
//! ranges while it runs. The bytes received from the publisher per table are returned.
use super::checks::{caller, check_database, require_admin, require_owner_privileges, required, sub_by_name};
use super::compare::{Column, Diff, Pair, Query, RemoteSide, Rows, Side, Table};
use super::cutover::{connect_plain, publisher_position};
use super::remote::{connect, query, sql_text_array};
use crate::catalog::{self, Subscription};
use crate::dbtext::DbText;
use crate::process::{now, pid_alive, wake};
use crate::report::error;
use crate::shmem::{self, Status};
use crate::worker::hold::Hold;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgsub_core::state::SyncState;
use pgsub_proto::client::{quote_ident, quote_literal, Client, SlotOptions, SnapshotAction};
use pgsub_proto::Lsn;
use std::collections::HashSet;
use std::ffi::{CStr, CString};

type Code = PgSqlErrorCode;

/// How long reaching the consistent point may take (slot creation and the worker applying up
/// to it); the worker's hold ends by itself then too.
const SETUP_MS: i64 = 5 * 60 * 1000;

/// Rendering settings set on both sides for the comparison, so that values print alike.
const SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
];

/// Settings of the publisher's session only: no timeout of the role's or database's ends it.
const PUBLISHER_SETTINGS: &[(&str, &str)] =
    &[("statement_timeout", "0"), ("lock_timeout", "0"), ("idle_in_transaction_session_timeout", "0")];

/// The publisher's side: the plain connection inside the exported snapshot's transaction.
struct Remote<'a>(&'a mut Client);

impl Side for Remote<'_> {
    fn rows(&mut self, sql: &str) -> Rows {
        query(self.0, sql, "could not compare on the publisher")
    }
}

impl RemoteSide for Remote<'_> {
    fn start(&mut self, sql: &str) {
        if let Err(e) = self.0.start_query(sql) {
            crate::publisher::raise(&e, "could not compare on the publisher", None);
        }
    }

    fn finish(&mut self) -> Rows {
        match self.0.finish_query() {
            Ok(rows) => rows.into_iter().map(|r| r.values).collect(),
            Err(e) => crate::publisher::raise(&e, "could not compare on the publisher", None),
        }
    }
}

/// This side: read-only SPI, so that every query runs under the pushed snapshot.
struct Local;

impl Side for Local {
    fn rows(&mut self, sql: &str) -> Rows {
        pg_sys::check_for_interrupts!();
        let Ok(c) = CString::new(sql) else {
            error(Code::ERRCODE_INTERNAL_ERROR, "query text contains a zero byte", None, None)
        };
        let mut out = Vec::new();
        // SAFETY: SPI inside the function's transaction; read_only = true uses the active
        // snapshot (ours) for every query; the values are copied before SPI_finish frees them.
        unsafe {
            pg_sys::SPI_connect();
            let rc = pg_sys::SPI_execute(c.as_ptr(), true, 0);
            if rc != pg_sys::SPI_OK_SELECT as i32 {
                pg_sys::SPI_finish();
                error(
                    Code::ERRCODE_INTERNAL_ERROR,
                    format!("comparison query failed here (SPI code {rc})"),
                    None,
                    None,
                );
            }
            let tt = pg_sys::SPI_tuptable;
            let n = pg_sys::SPI_processed as usize;
            if !tt.is_null() {
                let desc = (*tt).tupdesc;
                let natts = (*desc).natts;
                for i in 0..n {
                    let tup = *(*tt).vals.add(i);
                    let mut row = Vec::with_capacity(natts as usize);
                    for j in 1..=natts {
                        // In the database's encoding: read as UTF-8 (`dbtext`), as the
                        // publisher's connection delivers its side.
                        let v = pg_sys::SPI_getvalue(tup, desc, j);
                        row.push((!v.is_null()).then(|| crate::dbtext::from_db_bytes(CStr::from_ptr(v).to_bytes())));
                    }
                    out.push(row);
                }
            }
            pg_sys::SPI_finish();
        }
        out
    }
}

/// A table to verify: its local relation and what the publisher calls it.
#[derive(Clone)]
struct Target {
    relid: pg_sys::Oid,
    display: String,
    remote_schema: String,
    remote_name: String,
    ready: bool,
}

/// The subscription's tables (all, or those named), refusing tables not in it and tables that
/// have not finished their initial copy.
fn targets(sub: &Subscription, only: Option<Vec<Option<pg_sys::Oid>>>) -> Vec<Target> {
    let rels = catalog::load_rels(sub.subid)
        .unwrap_or_else(|e| error(Code::ERRCODE_INTERNAL_ERROR, format!("reading pgsub.sub_rel: {e}"), None, None));
    let mut all = Vec::new();
    for r in &rels {
        let relid = if r.relid != 0 {
            pg_sys::Oid::from(r.relid)
        } else {
            match catalog::local_relid(&r.remote_schema, &r.remote_name) {
                Some(o) => o,
                None => continue,
            }
        };
        all.push(Target {
            relid,
            display: regclass_text(relid),
            remote_schema: r.remote_schema.clone(),
            remote_name: r.remote_name.clone(),
            ready: r.sync_state == SyncState::Ready,
        });
    }
    let picked = match only {
        None => all,
        Some(only) => {
            let mut picked: Vec<Target> = Vec::new();
            for o in only {
                let Some(o) = o else {
                    error(Code::ERRCODE_NULL_VALUE_NOT_ALLOWED, "tables must not contain NULL", None, None)
                };
                match all.iter().find(|t| t.relid == o) {
                    Some(t) if !picked.iter().any(|p| p.relid == o) => picked.push(t.clone()),
                    Some(_) => {}
                    None => error(
                        Code::ERRCODE_INVALID_PARAMETER_VALUE,
                        format!("relation {} is not a table of subscription \"{}\"", regclass_text(o), sub.name),
                        None,
                        Some("pgsub.subscription_table lists the subscription's tables."),
                    ),
                }
            }
            picked
        }
    };
    if let Some(t) = picked.iter().find(|t| !t.ready) {
        error(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("table {} of subscription \"{}\" has not finished its initial copy", t.display, sub.name),
            None,
            Some("Wait until pgsub.subscription_table shows it ready (pgsub.wait_for_catchup waits for that)."),
        );
    }
    picked
}

fn regclass_text(oid: pg_sys::Oid) -> String {
    catalog::read_one::<String>("SELECT $1::pg_catalog.oid::pg_catalog.regclass::text", &[oid.into()])
        .ok()
        .flatten()
        .unwrap_or_else(|| oid.to_u32().to_string())
}

/// A local column: name, type, collatable, generated, built-in type.
struct LocalCol {
    name: String,
    typ: String,
    collatable: bool,
    generated: bool,
    builtin: bool,
}

/// The local table's columns, key and FROM clause; raises unless the caller may read it.
fn local_table(t: &Target) -> (Vec<LocalCol>, Vec<String>, String) {
    let me = caller();
    let r = Spi::connect(|c| {
        let head = c.select(
            "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname), c.relkind::text, \
                    pg_catalog.has_table_privilege($2::pg_catalog.oid, c.oid, 'SELECT') \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            None,
            &[t.relid.into(), me.into()],
        )?;
        let mut meta = None;
        for row in head {
            meta = Some((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<String>(2)?.unwrap_or_default(),
                row.get::<bool>(3)?.unwrap_or(false),
            ));
        }
        let mut cols = Vec::new();
        for row in c.select(
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), ty.typcollation <> 0, \
                    a.attgenerated <> '', ty.typnamespace = 'pg_catalog'::pg_catalog.regnamespace \
             FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            None,
            &[t.relid.into()],
        )? {
            cols.push(LocalCol {
                name: row.get::<String>(1)?.unwrap_or_default(),
                typ: row.get::<String>(2)?.unwrap_or_default(),
                collatable: row.get::<bool>(3)?.unwrap_or(false),
                generated: row.get::<bool>(4)?.unwrap_or(false),
                builtin: row.get::<bool>(5)?.unwrap_or(false),
            });
        }
        let mut key = Vec::new();
        for row in c.select(
            "SELECT a.attname::text FROM (SELECT i.indkey FROM pg_catalog.pg_index i WHERE i.indrelid = $1 \
               AND (i.indisprimary OR i.indisreplident) AND i.indisvalid \
               ORDER BY i.indisprimary DESC LIMIT 1) i, unnest(i.indkey) WITH ORDINALITY k(attnum, ord) \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = $1 AND a.attnum = k.attnum ORDER BY k.ord",
            None,
            &[t.relid.into()],
        )? {
            key.push(row.get::<String>(1)?.unwrap_or_default());
        }
        Ok::<_, pgrx::spi::SpiError>((meta, cols, key))
    });
    let (meta, cols, key) =
        r.unwrap_or_else(|e| error(Code::ERRCODE_INTERNAL_ERROR, format!("reading pg_class: {e}"), None, None));
    let Some((qualified, relkind, may_read)) = meta else {
        error(Code::ERRCODE_UNDEFINED_TABLE, format!("relation {} does not exist", t.display), None, None)
    };
    if !may_read {
        error(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for table {}", t.display),
            Some("pgsub.verify_subscription reads the tables it compares with the caller's SELECT privilege.".into()),
            None,
        );
    }
    let from = if relkind == "p" { qualified } else { format!("ONLY {qualified}") };
    (cols, key, from)
}

/// The publisher's table: FROM clause, columns (name, type, generated), the published columns
/// (None: all but generated ones) and the row filter ("true": none).
#[allow(clippy::type_complexity)]
fn remote_table(
    client: &mut Client,
    t: &Target,
    pubs: &[String],
) -> (String, Vec<(String, String, bool)>, Option<HashSet<String>>, String) {
    let nsp = quote_literal(&t.remote_schema);
    let rel = quote_literal(&t.remote_name);
    let generated = if client.server_version_num() >= 120000 { "a.attgenerated <> ''" } else { "false" };
    let rows = query(
        client,
        &format!(
            "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), {generated}, c.relkind \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE n.nspname = {nsp} AND c.relname = {rel} ORDER BY a.attnum"
        ),
        "could not read the table's columns on the publisher",
    );
    if rows.is_empty() {
        error(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!("table \"{}.{}\" does not exist on the publisher", t.remote_schema, t.remote_name),
            None,
            Some("Refresh the subscription (pgsub.refresh_subscription) after tables were dropped there."),
        );
    }
    let f = |r: &Vec<Option<String>>, i: usize| r.get(i).cloned().flatten().unwrap_or_default();
    let relkind = f(&rows[0], 3);
    // A table with no columns (all dropped, or none made) is one row with no attribute.
    let cols: Vec<(String, String, bool)> = rows
        .iter()
        .filter(|r| r.first().is_some_and(|a| a.is_some()))
        .map(|r| (f(r, 0), f(r, 1), f(r, 2) == "t"))
        .collect();
    let qualified = format!("{}.{}", quote_ident(&t.remote_schema), quote_ident(&t.remote_name));
    let from = if relkind == "p" { qualified } else { format!("ONLY {qualified}") };
    if client.server_version_num() < 150000 {
        return (from, cols, None, "true".into());
    }
    let pubs = sql_text_array(pubs);
    let published = query(
        client,
        &format!(
            "SELECT DISTINCT unnest(attnames)::text FROM pg_catalog.pg_publication_tables \
             WHERE pubname = ANY({pubs}) AND schemaname = {nsp} AND tablename = {rel}"
        ),
        "could not read the table's column list on the publisher",
    );
    let filters = query(
        client,
        &format!(
            "SELECT rowfilter FROM pg_catalog.pg_publication_tables \
             WHERE pubname = ANY({pubs}) AND schemaname = {nsp} AND tablename = {rel}"
        ),
        "could not read the table's row filter on the publisher",
    );
    let names: HashSet<String> = published.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect();
    // Like native: no filter as soon as one publication publishes the table without one.
    let parts: Vec<Option<String>> = filters.into_iter().map(|r| r.into_iter().next().flatten()).collect();
    let filter = if parts.is_empty() || parts.iter().any(|p| p.is_none()) {
        "true".to_string()
    } else {
        parts.into_iter().flatten().map(|p| format!("({p})")).collect::<Vec<_>>().join(" OR ")
    };
    (from, cols, Some(names), filter)
}

/// The send function of a built-in type whose text holds floating-point numbers (by
/// `format_type`'s name): a publisher before 12 prints them with 17 digits, this side with the
/// shortest exact form, so such values are compared by their binary form.
fn float_send(typ: &str) -> Option<&'static str> {
    Some(match typ {
        "double precision" => "float8send",
        "real" => "float4send",
        "double precision[]" | "real[]" => "array_send",
        "point" => "point_send",
        "lseg" => "lseg_send",
        "box" => "box_send",
        "path" => "path_send",
        "polygon" => "poly_send",
        "line" => "line_send",
        "circle" => "circle_send",
        _ => return None,
    })
}

/// What is compared of a table and each side's query.
fn plan(client: &mut Client, t: &Target, pubs: &[String]) -> (Table, Query, Query) {
    let (lcols, lkey, lfrom) = local_table(t);
    let (rfrom, rcols, published, filter) = remote_table(client, t, pubs);
    let mut cols = Vec::new();
    for l in lcols.iter().filter(|l| !l.generated) {
        let Some((_, rtype, rgenerated)) = rcols.iter().find(|(n, _, _)| *n == l.name) else { continue };
        let is_published = match &published {
            Some(set) => set.contains(&l.name),
            None => !rgenerated,
        };
        if !is_published {
            continue;
        }
        let remote_cast = (*rtype != l.typ && l.builtin).then(|| l.typ.clone());
        let send = if client.server_version_num() < 120000 { float_send(&l.typ) } else { None };
        cols.push(Column { name: l.name.clone(), collatable: l.collatable, text_order: !l.builtin, remote_cast, send });
    }
    let key: Vec<usize> = lkey.iter().filter_map(|k| cols.iter().position(|c| c.name == *k)).collect();
    let key = if key.len() == lkey.len() { key } else { Vec::new() };
    // SAFETY: the database's encoding, fixed for the session.
    let local_utf8 = unsafe { pg_sys::GetDatabaseEncoding() } == pg_sys::pg_enc::PG_UTF8 as i32;
    let bytewise = client.parameter("server_encoding") != Some("UTF8") || !local_utf8;
    let table = Table { cols, key, bytewise };
    (table, Query { from: rfrom, filter, remote: true }, Query { from: lfrom, filter: "true".into(), remote: false })
}

// ---------------------------------------------------------------------------------------------
// The consistent point

/// Withdraws this backend's hold request when dropped: on success right after the snapshot is
/// taken, and on the way out of an error or a cancel.
struct HoldGuard {
    subid: i32,
}

impl HoldGuard {
    /// Asks the worker to hold at `lsn` (0: prepare the request only); raises if another
    /// backend holds it.
    fn request(subid: i32, lsn: Lsn, until: i64) -> HoldGuard {
        // SAFETY: MyProcPid is set in every backend.
        let me = unsafe { pg_sys::MyProcPid };
        let (ok, worker) = shmem::with_slot(subid, |s| {
            let h = s.hold;
            if h.by > 0 && h.by != me && pid_alive(h.by) && now() < h.until {
                return (false, h.by);
            }
            s.hold = Hold { by: me, lsn: lsn.0, until, held_at: 0, blocking: false };
            (true, s.pid)
        })
        .unwrap_or((false, 0));
        if !ok {
            error(
                Code::ERRCODE_LOCK_NOT_AVAILABLE,
                "another pgsub.verify_subscription is taking its consistent point for this subscription",
                Some(format!("Backend {worker} holds the apply worker.")),
                Some("Try again in a moment."),
            );
        }
        wake(worker);
        HoldGuard { subid }
    }

    /// Moves the hold to `lsn`.
    fn raise_to(&self, lsn: Lsn) {
        let worker = shmem::with_slot(self.subid, |s| {
            s.hold.lsn = lsn.0;
            s.hold.held_at = 0;
            s.pid
        });
        wake(worker.unwrap_or(0));
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        // SAFETY: MyProcPid is set in every backend.
        let me = unsafe { pg_sys::MyProcPid };
        let worker = shmem::with_slot(self.subid, |s| {
            if s.hold.by == me {
                s.hold = Hold::default();
            }
            s.pid
        });
        wake(worker.unwrap_or(0));
    }
}

/// What the wait for the worker sees of its slot.
fn worker_state(subid: i32) -> (i32, Status, Hold, i64) {
    let g = shmem::SHARED.share();
    g.find(subid).map(|s| (s.pid, s.status, s.hold, s.error_count)).unwrap_or((0, Status::Starting, Hold::default(), 0))
}

/// Waits until the worker holds at `c`; raises if it stops, fails or the deadline passes.
fn wait_held(sub: &Subscription, c: Lsn, deadline: i64) {
    let (pid0, _, _, errors0) = worker_state(sub.subid);
    loop {
        let (pid, status, hold, errors) = worker_state(sub.subid);
        if hold.held_at == c.0 && hold.lsn == c.0 {
            return;
        }
        if pid == 0 || pid != pid0 || errors > errors0 || !applying(status) {
            error(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "the apply worker of subscription \"{}\" stopped before it reached the consistent point {c}",
                    sub.name
                ),
                Some(format!("Worker pid {pid}, status {}.", status.as_str())),
                Some("See pgsub.stat_subscription.last_error and the server log; verify again once it streams."),
            );
        }
        if now() >= deadline {
            error(
                Code::ERRCODE_QUERY_CANCELED,
                format!(
                    "the apply worker of subscription \"{}\" did not reach the consistent point {c} within {} s",
                    sub.name,
                    SETUP_MS / 1000
                ),
                None,
                Some("pgsub.stat_subscription shows its lag; verify again when it has caught up."),
            );
        }
        crate::process::nap(10, crate::process::Wait::Extension);
        pg_sys::check_for_interrupts!();
    }
}

/// The local snapshot taken while the worker holds, active for the comparison's queries.
struct ActiveSnapshot(pg_sys::Snapshot);

impl ActiveSnapshot {
    fn take() -> ActiveSnapshot {
        // SAFETY: inside a transaction; the registered snapshot stays valid until unregistered
        // (or the transaction ends), and is pushed as the active one for read-only SPI.
        unsafe {
            let snap = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
            pg_sys::PushActiveSnapshot(snap);
            ActiveSnapshot(snap)
        }
    }

    fn end(self) {
        // SAFETY: pops and unregisters what `take` pushed and registered.
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::UnregisterSnapshot(self.0);
        }
    }
}

/// The publisher's side at one consistent point: the replication connection keeping the
/// temporary slot (and with it the exported snapshot) and the plain connection in a
/// transaction on that snapshot.
struct Point {
    replication: Client,
    plain: Client,
    lsn: Lsn,
}

/// Takes the consistent point on both sides; returns it with the local snapshot active.
fn consistent_point(sub: &Subscription) -> (Point, ActiveSnapshot) {
    let deadline = now() + SETUP_MS * 1000;
    let mut plain = connect_plain(sub);
    let mut set: Vec<String> = SETTINGS.iter().map(|(k, v)| format!("SET {k} = {}", quote_literal(v))).collect();
    // A timeout the publisher sets for the role or database (a guard against users' runaway
    // queries) must not end the comparison of a large table half-way, which it did.
    set.extend(PUBLISHER_SETTINGS.iter().map(|(k, v)| format!("SET {k} = {}", quote_literal(v))));
    query(&mut plain, &set.join("; "), "could not set up the comparison session on the publisher");
    let before = publisher_position(&mut plain);
    // Nothing committed at or after `before` is applied from here on (the slot's point lies
    // beyond it), so the worker cannot run past the point we are about to take.
    let guard = HoldGuard::request(sub.subid, before, deadline);
    let mut replication = connect(&sub.name, &sub.conninfo, !sub.owner_superuser);
    // SAFETY: MyProcPid is set in every backend.
    let slot = format!("pgsub_verify_{}_{}", sub.subid, unsafe { pg_sys::MyProcPid });
    let info = match replication.create_logical_slot(&slot, true, SnapshotAction::Export, SlotOptions::default()) {
        Ok(i) => i,
        Err(e) => crate::publisher::raise(&e, "could not create a temporary replication slot on the publisher", None),
    };
    let Some(snapshot) = info.snapshot_name else {
        error(Code::ERRCODE_PROTOCOL_VIOLATION, "the publisher exported no snapshot", None, None)
    };
    query(
        &mut plain,
        &format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(&snapshot)
        ),
        "could not import the publisher's snapshot",
    );
    let c = info.consistent_point.max(before);
    guard.raise_to(c);
    wait_held(sub, c, deadline);
    let snap = ActiveSnapshot::take();
    drop(guard);
    (Point { replication, plain, lsn: c }, snap)
}

/// Reports progress in pg_stat_activity.query.
fn report_activity(text: &str) {
    let c = CString::new(text).unwrap_or_default();
    // SAFETY: the backend's own activity entry; the text is copied.
    unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, c.as_ptr()) };
}

fn restore_activity() {
    // SAFETY: debug_query_string is the statement being run (or NULL).
    unsafe {
        if !pg_sys::debug_query_string.is_null() {
            pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, pg_sys::debug_query_string);
        }
    }
}

fn json_array(items: &[String]) -> String {
    format!("[{}]", items.join(", "))
}

/// relation, publisher_rows, subscriber_rows, equal, missing / extra / different keys, bytes
/// received, and the error that kept the table from being compared (the counts NULL then).
type Row =
    (pg_sys::Oid, Option<i64>, Option<i64>, bool, Option<String>, Option<String>, Option<String>, i64, Option<String>);

/// How to compare: `checksum` (else counts only) and the key limit per table.
struct Mode {
    checksum: bool,
    max_keys: usize,
}

fn mode_of(mode: Option<&str>, max_keys: Option<i32>) -> Mode {
    let checksum = match mode.unwrap_or("checksum") {
        "checksum" => true,
        "count" => false,
        other => error(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown verification mode \"{other}\""),
            None,
            Some("Use mode => 'checksum' (rows compared by hashes of key ranges) or 'count' (row counts only)."),
        ),
    };
    let max_keys = match max_keys {
        Some(n) if n >= 0 => n as usize,
        _ => error(Code::ERRCODE_INVALID_PARAMETER_VALUE, "max_keys must be zero or more", None, None),
    };
    Mode { checksum, max_keys }
}

/// Refuses a disabled subscription and a worker that is not streaming.
fn check_streaming(sub: &Subscription) {
    if !sub.enabled {
        error(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("subscription \"{}\" is disabled", sub.name),
            Some("Verification holds the apply worker at the publisher's consistent point; a disabled subscription has none.".into()),
            Some("Enable it with pgsub.enable_subscription() first."),
        );
    }
    // Other tables may still be copying (`initial_copy`; only ready tables are compared, and
    // only the apply worker writes those), or the worker may be behind (`catchup`: it applies up
    // to the point before it holds, within the hold's deadline).
    let (pid, status, _, _) = worker_state(sub.subid);
    if pid == 0 || !applying(status) {
        error(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("the apply worker of subscription \"{}\" is not streaming", sub.name),
            Some(format!("Status {}.", status.as_str())),
            Some("Wait until pgsub.stat_subscription shows it streaming (pgsub.wait_for_catchup)."),
        );
    }
}

/// A status in which the apply worker applies the stream (and so can hold at a point).
fn applying(status: Status) -> bool {
    matches!(status, Status::Streaming | Status::InitialCopy | Status::Catchup)
}

/// Compares table `n` (of `total`) at the point; reports progress on the way.
fn verify_table(point: &mut Point, sub: &Subscription, t: &Target, n: usize, total: usize, mode: &Mode) -> Row {
    let c = point.lsn;
    let start = point.plain.bytes_received() + point.replication.bytes_received();
    let (table, rq, lq) = plan(&mut point.plain, t, &sub.publications);
    let mut remote = Remote(&mut point.plain);
    let mut pair = Pair { remote: &mut remote, rq, local: &mut Local, lq };
    let (theirs, ours) = table.totals(&mut pair, mode.checksum);
    let equal = theirs == ours;
    let diff = if equal || !mode.checksum {
        Diff::default()
    } else {
        let mut progress = |d: &Diff| {
            report_activity(&format!(
                "pgsub.verify_subscription('{}') at {c}: table {} of {total} ({}), {} ranges compared, {} keys differ",
                sub.name,
                n + 1,
                t.display,
                d.ranges,
                d.missing.len() + d.extra.len() + d.different.len()
            ));
            pg_sys::check_for_interrupts!();
        };
        table.narrow(&mut pair, (theirs.clone(), ours.clone()), mode.max_keys, &mut progress)
    };
    let bytes = point.plain.bytes_received() + point.replication.bytes_received() - start;
    let keys = |v: &[String]| mode.checksum.then(|| json_array(v));
    (
        t.relid,
        Some(theirs.rows),
        Some(ours.rows),
        equal,
        keys(&diff.missing),
        keys(&diff.extra),
        keys(&diff.different),
        i64::try_from(bytes).unwrap_or(i64::MAX),
        None,
    )
}

/// Savepoint on the publisher around one table's comparison.
const SAVEPOINT: &str = "pgsub_verify_table";

/// [`verify_table`] in a subtransaction here and under a savepoint on the publisher, both inside
/// the snapshots of the consistent point: an error of one table's comparison — the table gone
/// from the publisher, a value the publisher cannot cast to this side's type, a permission —
/// becomes that table's row (`equal` false, the counts NULL, `error` the message) and the
/// other tables are still compared, where it ended the whole call. A cancel, a lost connection
/// to the publisher or an error while undoing either side still ends the call.
fn verify_table_guarded(point: &mut Point, sub: &Subscription, t: &Target, n: usize, total: usize, mode: &Mode) -> Row {
    let start = point.plain.bytes_received() + point.replication.bytes_received();
    let _ = query(&mut point.plain, &format!("SAVEPOINT {SAVEPOINT}"), "could not compare on the publisher");
    // SAFETY: an internal subtransaction inside the function's transaction, as PL/pgSQL's
    // exception blocks make them; the caller's memory context and resource owner are restored
    // after it ends, either way.
    let (cxt, owner) = unsafe { (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner) };
    unsafe {
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(cxt);
    }
    let restore = || unsafe {
        pg_sys::MemoryContextSwitchTo(cxt);
        pg_sys::CurrentResourceOwner = owner;
    };
    let mut target = std::panic::AssertUnwindSafe(&mut *point);
    let outcome = PgTryBuilder::new(move || Ok(verify_table(&mut target, sub, t, n, total, mode)))
        .catch_others(|e| Err(Box::new(e)))
        .execute();
    match outcome {
        Ok(row) => {
            // SAFETY: ends the subtransaction begun above.
            unsafe { pg_sys::ReleaseCurrentSubTransaction() };
            restore();
            let _ = query(
                &mut point.plain,
                &format!("RELEASE SAVEPOINT {SAVEPOINT}"),
                "could not compare on the publisher",
            );
            row
        }
        Err(e) => {
            // SAFETY: rolls back the subtransaction begun above (its SPI, snapshots and locks).
            unsafe { pg_sys::RollbackAndReleaseCurrentSubTransaction() };
            restore();
            let (code, text) = match &*e {
                CaughtError::PostgresError(r)
                | CaughtError::ErrorReport(r)
                | CaughtError::RustPanic { ereport: r, .. } => (r.sql_error_code(), r.message().to_string()),
            };
            if code == Code::ERRCODE_QUERY_CANCELED || point.plain.is_broken() {
                e.rethrow();
            }
            // A query sent before the error: its answer is read and dropped.
            if point.plain.query_in_flight() {
                let _ = point.plain.finish_query();
            }
            if let Err(undo) = point.plain.simple_query(&format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}")) {
                crate::publisher::raise(&undo, &format!("could not go on after table {}: {text}", t.display), None);
            }
            let bytes = point.plain.bytes_received() + point.replication.bytes_received() - start;
            crate::report::log(
                PgLogLevel::WARNING,
                Code::ERRCODE_WARNING,
                format!("pgsub: could not compare table {} of subscription \"{}\": {text}", t.display, sub.name),
                None,
                None,
            );
            (t.relid, None, None, false, None, None, None, i64::try_from(bytes).unwrap_or(i64::MAX), Some(text))
        }
    }
}

/// Backs `pgsub.verify_subscription(name, tables regclass[] DEFAULT NULL, mode text DEFAULT
/// 'checksum', max_keys int DEFAULT 100)`; see the file's header. Per table: rows on each side,
/// equal, the keys (JSON objects; without a key the rows) missing here, extra here and
/// different (at most `max_keys` in all; NULL in mode 'count'), and the bytes received from
/// the publisher for the table.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn _verify_subscription(
    name: Option<&str>,
    tables: Option<Vec<Option<pg_sys::Oid>>>,
    mode: Option<&str>,
    max_keys: Option<i32>,
) -> TableIterator<
    'static,
    (
        name!(relation, pg_sys::Oid),
        name!(publisher_rows, Option<i64>),
        name!(subscriber_rows, Option<i64>),
        name!(equal, bool),
        name!(missing_keys, Option<DbText>),
        name!(extra_keys, Option<DbText>),
        name!(different_keys, Option<DbText>),
        name!(bytes_received, i64),
        name!(error, Option<DbText>),
    ),
> {
    require_admin();
    let name = required(name, "name");
    check_database();
    let mode = mode_of(mode, max_keys);
    let sub = sub_by_name(name);
    require_owner_privileges(&sub, "verify it");
    check_streaming(&sub);
    let targets = targets(&sub, tables);
    // SAFETY: a GUC nest level for this function's SET LOCALs, undone before returning.
    let guc_level = unsafe { pg_sys::NewGUCNestLevel() };
    for (k, v) in SETTINGS {
        if let Err(e) =
            catalog::read_one::<String>("SELECT pg_catalog.set_config($1, $2, true)", &[(*k).into(), (*v).into()])
        {
            error(Code::ERRCODE_INTERNAL_ERROR, format!("setting {k}: {e}"), None, None);
        }
    }
    report_activity(&format!("pgsub.verify_subscription('{name}'): taking a consistent point"));
    let (mut point, snap) = consistent_point(&sub);
    let rows: Vec<Row> = targets
        .iter()
        .enumerate()
        .map(|(n, t)| verify_table_guarded(&mut point, &sub, t, n, targets.len(), &mode))
        .collect();
    let _ = query(&mut point.plain, "COMMIT", "could not end the transaction on the publisher");
    let c = point.lsn;
    point.plain.close();
    point.replication.close();
    snap.end();
    // SAFETY: undoes this function's SET LOCALs (as a function's SET clause does on exit).
    unsafe { pg_sys::AtEOXact_GUC(true, guc_level) };
    restore_activity();
    let failed = rows.iter().filter(|r| r.8.is_some()).count();
    let differ = rows.iter().filter(|r| !r.3).count() - failed;
    let failed = if failed > 0 { format!(", {failed} could not be compared") } else { String::new() };
    crate::report::log(
        PgLogLevel::LOG,
        Code::ERRCODE_SUCCESSFUL_COMPLETION,
        format!("pgsub: verified {} table(s) of subscription \"{name}\" at {c}: {differ} differ{failed}", rows.len()),
        None,
        None,
    );
    // Keys and errors are UTF-8 here: returned in the database's encoding (`dbtext`).
    let text = |v: Option<String>| v.map(DbText);
    TableIterator::new(
        rows.into_iter().map(move |r| (r.0, r.1, r.2, r.3, text(r.4), text(r.5), text(r.6), r.7, text(r.8))),
    )
}
