//! Cutting over to the subscriber (issue 20): `_wait_for_catchup` (behind
//! `pgsub.wait_for_catchup(name, lsn pg_lsn, timeout interval)` in sql/views.sql) and
//! `_sync_sequences` (behind `pgsub.sync_sequences(name, sequences regclass[])`).
//!
//! `wait_for_catchup` reads the publisher's WAL position over a plain (non-replication)
//! connection, then polls the subscription's shared-memory slot and its catalog row every 100 ms
//! on the latch (a cancel or terminate is served at once) until the apply worker has durably
//! applied everything up to that position: its `flushed_lsn` (local commits known flushed,
//! keepalive positions included) has reached it, or everything up to it is applied
//! (`applied_lsn`, or `caught_up_lsn` when the publisher's WAL past the last published change
//! holds nothing for the subscription) and the local WAL is flushed through the replication
//! origin's last commit here. A disabled or dropped subscription, a worker that fails during the
//! wait (its retry, when it had failed before) and the timeout are errors with the positions in
//! their detail.
//!
//! `sync_sequences` sets local sequences to the state of the publisher's sequences of the same
//! schema and name, read from the sequence relations themselves (`last_value` there is the last
//! value any session fetched, its cache included: at or beyond every value handed out).
use super::checks::{caller, check_database, require_admin, required, sub_by_name};
use super::remote::{query, sql_text_array};
use crate::catalog::{self, Subscription};
use crate::publisher::{self, Context};
use crate::report::{error, log};
use crate::shmem::{self, Status};
use pgrx::prelude::*;
use pgsub_proto::client::{quote_ident, Client};
use pgsub_proto::Lsn;
use std::ffi::CString;
use std::time::{Duration, Instant};

type Code = PgSqlErrorCode;

/// How often a wait looks at the worker's progress.
const POLL_MS: u64 = 100;

/// Connects to the publisher for a query of these functions: a plain session (no walsender
/// slot is taken), with the subscription's connection string and password rule.
pub(super) fn connect_plain(sub: &Subscription) -> Client {
    match publisher::connect(&sub.conninfo, false, Context::Backend, Some("pgsub"), sub.must_use_password()) {
        Ok(c) => c,
        Err(e) => {
            let hint = match e.sqlstate() {
                Some("2F003") => None,
                // Refused for lack of room ("sorry, too many clients already").
                Some("53300") => {
                    Some("The publisher has no free connection: raise max_connections there, or end other sessions.")
                }
                _ => Some("Check the connection string, that the publisher is running, and its pg_hba.conf."),
            };
            publisher::raise(&e, &format!("subscription \"{}\" could not connect to the publisher", sub.name), hint)
        }
    }
}

/// The end of the last WAL record given the position where the next one will be inserted:
/// PostgreSQL reports an insert position at the start of a page as just after the page's header
/// (24 bytes, 40 at the start of a segment), which no record ends at, so a walsender that has
/// sent everything reports the page boundary instead. `block`/`segment`: the publisher's
/// `wal_block_size` and `wal_segment_size` (0 = unknown).
fn record_end(insert: Lsn, block: u64, segment: u64) -> Lsn {
    const LONG_HEADER: u64 = 40;
    const SHORT_HEADER: u64 = 24;
    if segment > 0 && insert.0 % segment == LONG_HEADER {
        Lsn(insert.0 - LONG_HEADER)
    } else if block > 0 && insert.0 % block == SHORT_HEADER {
        Lsn(insert.0 - SHORT_HEADER)
    } else {
        insert
    }
}

/// Everything the publisher has written so far, committed transactions included whose commit
/// record is not flushed yet there (`synchronous_commit = off`): its WAL insert position (replay
/// position on a standby).
pub(super) fn publisher_position(client: &mut Client) -> Lsn {
    let rows = query(
        client,
        "SELECT (CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() \
                 ELSE pg_catalog.pg_current_wal_insert_lsn() END)::text, \
                pg_catalog.current_setting('wal_block_size'), \
                pg_catalog.pg_size_bytes(pg_catalog.current_setting('wal_segment_size'))::text",
        "could not read the publisher's WAL position",
    );
    let row = rows.into_iter().next().unwrap_or_default();
    let field = |i: usize| row.get(i).cloned().flatten();
    let Some(insert) = field(0).and_then(|s| s.parse::<Lsn>().ok()).filter(|l| l.is_valid()) else {
        error(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "the publisher did not report its WAL position",
            None,
            Some("Pass the position to wait for as lsn => '…'."),
        )
    };
    let block = field(1).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let segment = field(2).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    record_end(insert, block, segment)
}

/// What a wait reads of the subscription's shared-memory slot.
#[derive(Clone, Debug, Default)]
struct Worker {
    pid: i32,
    status: Status,
    flushed: Lsn,
    applied: Lsn,
    caught_up: Lsn,
    error_count: i64,
    last_error: Option<String>,
}

impl Worker {
    fn read(subid: i32) -> Worker {
        let here = shmem::my_database();
        let g = shmem::SHARED.share();
        match g.find(subid).filter(|s| s.dboid == here) {
            Some(s) => Worker {
                pid: s.pid,
                status: s.status,
                flushed: Lsn(s.flushed_lsn),
                applied: Lsn(s.applied_lsn),
                caught_up: Lsn(s.caught_up_lsn),
                error_count: s.error_count,
                last_error: s.last_error(),
            },
            None => Worker::default(),
        }
    }

    /// The worker runs and its positions are its own (published with its status once it applies
    /// the stream, so a new worker's slot does not show the previous one's).
    fn streaming(&self) -> bool {
        self.pid > 0 && matches!(self.status, Status::Streaming | Status::InitialCopy)
    }

    fn describe(&self, target: Lsn, cat: Option<&catalog::CatchupState>, origin: &str) -> String {
        let lsn = |l: Lsn| if l.is_valid() { l.to_string() } else { "none".into() };
        let worker = if self.pid > 0 { format!("worker pid {}", self.pid) } else { "no worker running".to_string() };
        // A worker that is (re)starting has published no position yet: the origin's is durable.
        let durable = if self.flushed.is_valid() { self.flushed } else { origin_progress(origin) };
        let mut s = format!(
            "Target {target}; durably applied up to {} (applied {}, caught up {}); status {}, {worker}.",
            lsn(durable),
            lsn(self.applied),
            lsn(self.caught_up),
            self.status.as_str()
        );
        if let Some(c) = cat.filter(|c| c.tables_copying > 0) {
            s.push_str(&format!(" {} of {} tables have not finished their initial copy", c.tables_copying, c.tables));
            if let Some(names) = &c.copying {
                let more = if c.tables_copying > 5 { ", …" } else { "" };
                s.push_str(&format!(": {names}{more}"));
            }
            s.push('.');
        }
        s
    }
}

/// Makes the apply worker's applied transactions durable here: flushes the local WAL up to the
/// commit of the last transaction recorded in the subscription's replication origin (the worker
/// commits with the subscription's `synchronous_commit`, `off` by default).
/// The replication origin's durable position (invalid when it has none).
fn origin_progress(origin: &str) -> Lsn {
    let name = CString::new(origin).unwrap_or_default();
    // SAFETY: origin lookup and progress read inside a transaction; no flush.
    unsafe {
        let id = pg_sys::replorigin_by_name(name.as_ptr(), true);
        if id == pg_sys::InvalidRepOriginId as u16 {
            return Lsn::INVALID;
        }
        Lsn(pg_sys::replorigin_get_progress(id, false))
    }
}

fn flush_applied(origin: &str) {
    let name = CString::new(origin).unwrap_or_default();
    // SAFETY: origin lookup and progress read inside a transaction; with flush = true the WAL is
    // flushed up to the origin's local commit position, as pg_replication_origin_progress does.
    unsafe {
        let id = pg_sys::replorigin_by_name(name.as_ptr(), true);
        if id != pg_sys::InvalidRepOriginId as u16 {
            pg_sys::replorigin_get_progress(id, true);
        }
    }
}

/// Sleeps on the latch for up to `ms`; a cancel or terminate request is served on waking.
pub(super) fn nap(ms: u64) {
    crate::process::nap(i64::try_from(ms).unwrap_or(i64::MAX), crate::process::Wait::Extension);
    pg_sys::check_for_interrupts!();
}

fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 10_000 {
        format!("{ms} ms")
    } else {
        format!("{} s", d.as_secs())
    }
}

/// Backs `pgsub.wait_for_catchup(name, lsn pg_lsn DEFAULT NULL, timeout interval DEFAULT '5
/// min')`: returns the position waited for once the subscription has durably applied
/// everything the publisher wrote up to it (default: the publisher's current WAL position) and
/// every table has finished its initial copy. `timeout_ms` NULL: no limit.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn _wait_for_catchup(name: Option<&str>, lsn: Option<&str>, timeout_ms: Option<f64>) -> String {
    require_admin();
    let name = required(name, "name");
    check_database();
    let sub = sub_by_name(name);
    if !sub.enabled {
        error(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("subscription \"{name}\" is disabled"),
            Some("A disabled subscription has no worker, so it does not catch up.".into()),
            Some("Enable it with pgsub.enable_subscription() first."),
        );
    }
    let started = Instant::now();
    let deadline = match timeout_ms {
        None => None,
        Some(ms) if ms.is_finite() && ms >= 0.0 => {
            // Too large to add to the clock: no limit.
            Duration::try_from_secs_f64(ms / 1000.0).ok().and_then(|d| started.checked_add(d))
        }
        Some(_) => error(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "timeout must be a non-negative interval",
            None,
            Some("Pass timeout => NULL to wait without a limit (a cancel still stops the wait)."),
        ),
    };
    let target = match lsn {
        Some(text) => match text.parse::<Lsn>().ok().filter(|l| l.is_valid()) {
            Some(l) => l,
            None => error(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("invalid WAL location (LSN): {text}"),
                None,
                Some(
                    "Pass a position of the publisher's WAL (pg_current_wal_lsn() there), or NULL for its current one.",
                ),
            ),
        },
        None => {
            let mut client = connect_plain(&sub);
            let t = publisher_position(&mut client);
            client.close();
            t
        }
    };
    let origin = sub.origin_name();
    // A worker that fails while we wait (also the retry of a worker that had failed before: it
    // may have been fixed meanwhile) ends the wait with its error.
    let errors_before = Worker::read(sub.subid).error_count;
    loop {
        let cat = match catalog::catchup_state(sub.subid) {
            Ok(Some(c)) => c,
            Ok(None) => error(
                Code::ERRCODE_UNDEFINED_OBJECT,
                format!("subscription \"{name}\" was dropped while waiting for it to catch up"),
                None,
                None,
            ),
            Err(e) => error(Code::ERRCODE_INTERNAL_ERROR, format!("reading pgsub.sub: {e}"), None, None),
        };
        let w = Worker::read(sub.subid);
        if !cat.enabled {
            // Disabled after it got there: the wait has what it waited for.
            if w.flushed >= target && cat.tables_copying == 0 {
                return target.to_string();
            }
            error(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("subscription \"{name}\" was disabled while waiting for it to catch up"),
                Some(w.describe(target, Some(&cat), &origin)),
                Some("Enable it with pgsub.enable_subscription(), then wait again."),
            );
        }
        if w.streaming() && cat.tables_copying == 0 {
            if w.flushed >= target {
                return target.to_string();
            }
            if w.applied.max(w.caught_up) >= target {
                flush_applied(&origin);
                return target.to_string();
            }
        }
        if w.error_count > errors_before {
            let mut detail = w.describe(target, Some(&cat), &origin);
            if let Some(e) = &w.last_error {
                detail.push_str(&format!("\nLast error of the worker: {e}"));
            }
            // A slot the publisher invalidated never comes back: retrying cannot help.
            let lost = w.last_error.as_deref().is_some_and(|e| e.contains("has been invalidated"));
            let hint = if lost {
                "The subscription's slot on the publisher is lost: drop the subscription and create it again (README, pgsub.health's slot_retains_wal)."
            } else {
                "Fix the cause (pgsub.stat_subscription.last_error, the server log); the worker retries by itself. Then wait again."
            };
            error(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("subscription \"{name}\" failed while waiting for it to catch up to {target}"),
                Some(detail),
                Some(hint),
            );
        }
        if let Some(d) = deadline {
            let now = Instant::now();
            if now >= d {
                error(
                    Code::ERRCODE_QUERY_CANCELED,
                    format!(
                        "timed out after {} waiting for subscription \"{name}\" to catch up to {target}",
                        human(now - started)
                    ),
                    Some(w.describe(target, Some(&cat), &origin)),
                    Some(
                        "pgsub.stat_subscription shows what the worker is doing (status, lag_bytes, last_error); wait again, with a longer timeout if needed.",
                    ),
                );
            }
            nap(POLL_MS.min((d - now).as_millis() as u64).max(1));
        } else {
            nap(POLL_MS);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// sync_sequences

/// One local sequence to set.
struct LocalSeq {
    oid: pg_sys::Oid,
    schema: String,
    name: String,
    increment: i64,
    min: i64,
    max: i64,
    /// `last_value` when the sequence has been used (is_called), else None.
    previous: Option<i64>,
}

impl LocalSeq {
    fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// The state of a publisher's sequence.
struct RemoteSeq {
    last_value: i64,
    is_called: bool,
}

/// The sequences owned by columns of the subscription's tables (serial and identity columns,
/// `pg_depend` types 'a' and 'i'), those of partitioned ancestors included (a partition's rows
/// take their default from the root's column), ordered by name.
fn owned_sequences(subid: i32) -> Vec<pg_sys::Oid> {
    let rels = match catalog::load_rels(subid) {
        Ok(r) => r,
        Err(e) => error(Code::ERRCODE_INTERNAL_ERROR, format!("reading pgsub.sub_rel: {e}"), None, None),
    };
    let relids: Vec<i64> = rels
        .iter()
        .filter_map(|r| {
            if r.relid != 0 {
                Some(r.relid as i64)
            } else {
                catalog::local_relid(&r.remote_schema, &r.remote_name).map(|o| o.to_u32() as i64)
            }
        })
        .collect();
    if relids.is_empty() {
        return Vec::new();
    }
    let sql = "SELECT d.objid FROM ( \
                 SELECT DISTINCT d.objid FROM pg_catalog.pg_depend d \
                 JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
                 WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                   AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                   AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0 \
                   AND d.refobjid IN (SELECT r::oid FROM unnest($1::int8[]) AS r \
                                      UNION SELECT a::oid FROM unnest($1::int8[]) AS r, \
                                                   pg_catalog.pg_partition_ancestors(r::oid) AS a)) d \
               ORDER BY d.objid::pg_catalog.regclass::text";
    let r = Spi::connect(|c| {
        let rows = c.select(sql, None, &[relids.into()])?;
        let mut out = Vec::new();
        for row in rows {
            if let Some(oid) = row.get::<pg_sys::Oid>(1)? {
                out.push(oid);
            }
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    });
    r.unwrap_or_else(|e| error(Code::ERRCODE_INTERNAL_ERROR, format!("reading pg_depend: {e}"), None, None))
}

/// A local sequence's definition and state; raises unless `oid` is a sequence the subscription's
/// owner may set (UPDATE, which setval needs).
fn local_sequence(oid: pg_sys::Oid, sub: &Subscription) -> LocalSeq {
    let r = Spi::connect(|c| {
        let rows = c.select(
            "SELECT n.nspname::text, c.relname::text, c.relkind::text, s.seqincrement, s.seqmin, s.seqmax, \
                    pg_catalog.has_sequence_privilege($2::pg_catalog.oid, c.oid, 'UPDATE') \
                      AND pg_catalog.has_sequence_privilege($2::pg_catalog.oid, c.oid, 'SELECT'), \
                    CASE WHEN c.relkind = 'S' THEN pg_catalog.pg_sequence_last_value(c.oid::pg_catalog.regclass) END \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_catalog.pg_sequence s ON s.seqrelid = c.oid WHERE c.oid = $1",
            None,
            &[oid.into(), (sub.owner as i64).into()],
        )?;
        let mut out = None;
        for row in rows {
            out = Some((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<String>(2)?.unwrap_or_default(),
                row.get::<String>(3)?.unwrap_or_default(),
                row.get::<i64>(4)?,
                row.get::<i64>(5)?.unwrap_or(i64::MIN),
                row.get::<i64>(6)?.unwrap_or(i64::MAX),
                row.get::<bool>(7)?.unwrap_or(false),
                row.get::<i64>(8)?,
            ));
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    });
    let row = r.unwrap_or_else(|e| error(Code::ERRCODE_INTERNAL_ERROR, format!("reading pg_class: {e}"), None, None));
    let Some((schema, name, relkind, increment, min, max, may_set, previous)) = row else {
        error(Code::ERRCODE_UNDEFINED_TABLE, format!("relation with OID {} does not exist", oid.to_u32()), None, None)
    };
    let seq = LocalSeq { oid, schema, name, increment: increment.unwrap_or(1), min, max, previous };
    if relkind != "S" || increment.is_none() {
        error(Code::ERRCODE_WRONG_OBJECT_TYPE, format!("{} is not a sequence", seq.qualified()), None, None);
    }
    if !may_set {
        error(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for sequence {}", seq.qualified()),
            Some(format!(
                "pgsub.sync_sequences sets sequences with the privileges of the owner of subscription \"{}\", who needs SELECT and UPDATE on it.",
                sub.name
            )),
            None,
        );
    }
    seq
}

/// The publisher's state of each sequence (same schema and name); raises naming every sequence
/// that is missing there or that the subscription's user may not read, and a sequence that runs
/// the other way there.
fn remote_sequences(client: &mut Client, seqs: &[LocalSeq]) -> Vec<RemoteSeq> {
    let schemas: Vec<String> = seqs.iter().map(|s| s.schema.clone()).collect();
    let names: Vec<String> = seqs.iter().map(|s| s.name.clone()).collect();
    let meta = query(
        client,
        &format!(
            "SELECT w.i, c.oid IS NOT NULL, \
                    CASE WHEN c.oid IS NULL THEN false ELSE pg_catalog.has_sequence_privilege(c.oid, 'SELECT') END, \
                    s.seqincrement, current_user::text \
             FROM unnest({}, {}) WITH ORDINALITY AS w(nsp, rel, i) \
             LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = w.nsp \
             LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = w.rel AND c.relkind = 'S' \
             LEFT JOIN pg_catalog.pg_sequence s ON s.seqrelid = c.oid \
             ORDER BY w.i",
            sql_text_array(&schemas),
            sql_text_array(&names)
        ),
        "could not look up the sequences on the publisher",
    );
    let mut missing = Vec::new();
    let mut denied = Vec::new();
    let mut user = String::new();
    for (seq, row) in seqs.iter().zip(meta.iter()) {
        let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        user = field(4);
        if field(1) != "t" {
            missing.push(seq.qualified());
        } else if field(2) != "t" {
            denied.push(seq.qualified());
        } else if let Ok(inc) = field(3).parse::<i64>() {
            if (inc < 0) != (seq.increment < 0) {
                error(
                    Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!(
                        "sequence {} increments by {} on the publisher but by {} here",
                        seq.qualified(),
                        inc,
                        seq.increment
                    ),
                    Some("Values beyond the publisher's would run into the ones it handed out.".into()),
                    Some("Give the sequence the same direction on both nodes (ALTER SEQUENCE … INCREMENT BY)."),
                );
            }
        }
    }
    if meta.len() != seqs.len() {
        error(Code::ERRCODE_PROTOCOL_VIOLATION, "the publisher answered the sequence lookup incompletely", None, None);
    }
    if !missing.is_empty() {
        error(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!(
                "sequence{} {} {} not exist on the publisher",
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", "),
                if missing.len() > 1 { "do" } else { "does" }
            ),
            Some("pgsub maps a local sequence to the publisher's sequence of the same schema and name; nothing was changed.".into()),
            Some("A sequence only this server uses (owned by a column the publisher's table does not have) is no one's to copy: name the sequences to synchronize with sequences => ARRAY[…] (the default takes every one owned by the subscription's tables). Otherwise create it on the publisher."),
        );
    }
    if !denied.is_empty() {
        let hint =
            format!("On the publisher: GRANT SELECT ON SEQUENCE {} TO {};", denied.join(", "), quote_ident(&user));
        error(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied on the publisher for sequence{} {}",
                if denied.len() > 1 { "s" } else { "" },
                denied.join(", ")
            ),
            Some(format!(
                "The subscription's user {} needs SELECT on them to read their state; nothing was changed.",
                quote_ident(&user)
            )),
            Some(&hint),
        );
    }
    // The sequences' own rows: `last_value` is the last value fetched by any session (its cache
    // included), at or beyond every value handed out; `is_called` false = never used.
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(500) {
        let base = out.len();
        let parts: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(i, s)| format!("SELECT {}, last_value, is_called FROM {}", base + i, s.qualified()))
            .collect();
        let rows = query(
            client,
            &format!("{} ORDER BY 1", parts.join(" UNION ALL ")),
            "could not read the sequences on the publisher",
        );
        if rows.len() != chunk.len() {
            error(
                Code::ERRCODE_PROTOCOL_VIOLATION,
                "the publisher answered the sequence read incompletely",
                None,
                None,
            );
        }
        for (s, row) in chunk.iter().zip(rows) {
            let field = |i: usize| row.get(i).cloned().flatten();
            let Some(last_value) = field(1).and_then(|v| v.parse::<i64>().ok()) else {
                error(
                    Code::ERRCODE_PROTOCOL_VIOLATION,
                    format!("the publisher returned no last_value for sequence {}", s.qualified()),
                    None,
                    None,
                )
            };
            out.push(RemoteSeq { last_value, is_called: field(2).as_deref() == Some("t") });
        }
    }
    out
}

/// Backs `pgsub.sync_sequences(name, sequences regclass[] DEFAULT NULL)`: sets each local
/// sequence (default: those owned by columns of the subscription's tables) to the state of the
/// publisher's sequence of the same name, like PostgreSQL 19's `ALTER SUBSCRIPTION … REFRESH
/// SEQUENCES`. Everything is checked and read first; then every sequence is set (setval, which
/// no rollback undoes). Returns per sequence the publisher's value (NULL: never used there), the
/// local value before (NULL: never used here) and what `nextval()` returns here now (NULL: the
/// sequence is exhausted and does not cycle).
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn _sync_sequences(
    name: Option<&str>,
    sequences: Option<Vec<Option<pg_sys::Oid>>>,
) -> TableIterator<
    'static,
    (
        name!(seq, pg_sys::Oid),
        name!(publisher_value, Option<i64>),
        name!(previous_value, Option<i64>),
        name!(next_value, Option<i64>),
    ),
> {
    require_admin();
    let name = required(name, "name");
    let sub = sub_by_name(name);
    // It reads the publisher with the subscription's connection: one that sends no password is
    // a superuser's to use (as every other change of such a subscription).
    super::checks::require_superuser_if_passwordless(&sub);
    // Like the apply worker's writes, with the owner's privileges: the caller needs them.
    let me = caller();
    // SAFETY: catalog lookups inside a transaction.
    let may = unsafe { pg_sys::superuser_arg(me) || pg_sys::has_privs_of_role(me, pg_sys::Oid::from(sub.owner)) };
    if !may {
        error(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must have the privileges of the owner of subscription \"{name}\" to synchronize its sequences"),
            Some("pgsub.sync_sequences sets sequences with the privileges of the subscription's owner.".into()),
            Some("Ask its owner or a superuser."),
        );
    }
    let oids: Vec<pg_sys::Oid> = match sequences {
        Some(list) => {
            let mut out: Vec<pg_sys::Oid> = Vec::new();
            for o in list {
                let Some(o) = o else {
                    error(Code::ERRCODE_NULL_VALUE_NOT_ALLOWED, "sequences must not contain NULL", None, None)
                };
                if !out.contains(&o) {
                    out.push(o);
                }
            }
            out
        }
        None => owned_sequences(sub.subid),
    };
    if oids.is_empty() {
        log(
            PgLogLevel::NOTICE,
            Code::ERRCODE_SUCCESSFUL_COMPLETION,
            format!("no sequences to synchronize for subscription \"{name}\""),
            Some("By default pgsub.sync_sequences takes the sequences owned by columns (serial, identity) of the subscription's tables.".into()),
            Some("Name others with sequences => ARRAY['schema.sequence'::regclass, …]."),
        );
        return TableIterator::new(Vec::new());
    }
    let locals: Vec<LocalSeq> = oids.iter().map(|o| local_sequence(*o, &sub)).collect();
    let mut client = connect_plain(&sub);
    let remotes = remote_sequences(&mut client, &locals);
    client.close();

    let mut rows = Vec::with_capacity(locals.len());
    for (l, r) in locals.iter().zip(remotes.iter()) {
        let set = Spi::get_one_with_args::<i64>(
            "SELECT pg_catalog.setval($1::pg_catalog.oid::pg_catalog.regclass, $2, $3)",
            &[l.oid.into(), r.last_value.into(), r.is_called.into()],
        );
        if let Err(e) = set {
            error(Code::ERRCODE_INTERNAL_ERROR, format!("setting sequence {}: {e}", l.qualified()), None, None);
        }
        let next = if r.is_called {
            r.last_value.checked_add(l.increment).filter(|v| *v >= l.min && *v <= l.max)
        } else {
            Some(r.last_value)
        };
        rows.push((l.oid, r.is_called.then_some(r.last_value), l.previous, next));
    }
    log(
        PgLogLevel::LOG,
        Code::ERRCODE_SUCCESSFUL_COMPLETION,
        format!("pgsub: subscription \"{name}\" synchronized {} sequence(s) from the publisher", rows.len()),
        None,
        None,
    );
    TableIterator::new(rows)
}

// ---------------------------------------------------------------------------------------------
// Periodic mode (`sequence_sync_interval`, run by the apply worker: worker/seqsync.rs)

/// Where the periodic mode sets a local sequence: the publisher's state plus `margin`
/// increments (within the local bounds), or None when that would not move it forward (already
/// at or beyond it, or the publisher's sequence was never used).
fn ahead(l: &LocalSeq, r: &RemoteSeq, margin: i64) -> Option<(i64, bool)> {
    if !r.is_called {
        return None;
    }
    let step = l.increment.saturating_mul(margin);
    let value = r.last_value.saturating_add(step).clamp(l.min, l.max);
    match l.previous {
        Some(prev) if (l.increment > 0 && prev >= value) || (l.increment < 0 && prev <= value) => None,
        _ => Some((value, true)),
    }
}

/// Moves the sequences owned by the subscription's tables' columns to the publisher's state
/// plus `margin` increments, never backwards; returns how many moved. Runs in the apply worker
/// (as the subscription's owner, inside a transaction) over `client`, a plain connection to the
/// publisher; raises like `sync_sequences`.
pub(crate) fn advance_owned_sequences(sub: &Subscription, client: &mut Client, margin: i64) -> usize {
    let oids = owned_sequences(sub.subid);
    if oids.is_empty() {
        return 0;
    }
    let locals: Vec<LocalSeq> = oids.iter().map(|o| local_sequence(*o, sub)).collect();
    let remotes = remote_sequences(client, &locals);
    let mut moved = 0;
    for (l, r) in locals.iter().zip(remotes.iter()) {
        let Some((value, called)) = ahead(l, r, margin) else { continue };
        if let Err(e) = Spi::get_one_with_args::<i64>(
            "SELECT pg_catalog.setval($1::pg_catalog.oid::pg_catalog.regclass, $2, $3)",
            &[l.oid.into(), value.into(), called.into()],
        ) {
            error(Code::ERRCODE_INTERNAL_ERROR, format!("setting sequence {}: {e}", l.qualified()), None, None);
        }
        moved += 1;
    }
    moved
}
