//! What `pgsub.check_health` and the `pgsub.health` view (sql/views.sql) need beyond the other
//! views: `_health_state()`, the failure streak and worker wait of this database's subscriptions
//! (shared memory), and `publisher_slots()`, the replication slots of every enabled subscription as
//! its publisher sees them (how much WAL each one retains), read over a normal connection.
//!
//! The publisher is read with a deadline on the whole exchange (connect, authentication, the one
//! query), `timeout_ms`: `publisher::connect` bounds only a worker's start-up, and a health check
//! must answer even when a publisher accepts connections and then says nothing. A publisher that
//! cannot be reached, or refuses, becomes a row with its `error`, never an ERROR of the caller:
//! one bad publisher must not hide the others' problems. Messages never contain the connection
//! string's password (`publisher::describe`).
use crate::catalog::{self, Subscription};
use crate::publisher::{self, BoundedWait, Context, LatchWait};
use crate::report::error;
use crate::shmem;
use pgrx::prelude::*;
use pgsub_core::state::Status;
use pgsub_proto::client::{quote_literal, Client, Error, ServerError};
use pgsub_proto::conninfo;
use std::time::{Duration, Instant};

type Code = PgSqlErrorCode;

/// Failure streak and worker wait of each subscription of this database, from shared memory.
///
/// `failing`: the subscription's last worker run ended in an error and no worker has started
/// since (status `error`, or a retry not yet started) — a worker that started after the last
/// error and has not failed yet is not counted. `failing_since`: when the streak of consecutive
/// failures began — the first failed run's error time, as the launcher recorded it when it
/// counted that run (`SubSlot::streak_since`), but not before the last error less the retry
/// delays between the failures counted.
/// `waiting_since`: since when it has waited for a background worker slot (0 = not waiting).
/// `disabled_by_error_at`: when `disable_on_error` disabled it (0 = it did not, or a worker has
/// run it since it was enabled again). `alive_at`: the running worker's last sign of life
/// (`process::heartbeat`; NULL without a running worker).
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn _health_state() -> TableIterator<
    'static,
    (
        name!(subid, i32),
        name!(failures, i32),
        name!(failing, bool),
        name!(failing_since, i64),
        name!(waiting_since, i64),
        name!(disabled_by_error_at, i64),
        name!(alive_at, Option<i64>),
    ),
> {
    let mut rows = Vec::new();
    if shmem::available() {
        let retry_us = i64::try_from(crate::gucs::ms(&crate::gucs::RETRY_INTERVAL_MS).as_micros()).unwrap_or(0);
        let here = shmem::my_database();
        let g = shmem::SHARED.share();
        for s in g.slots.iter().filter(|s| s.subid != 0 && s.dboid == here) {
            // A failed run the launcher has not counted yet (`failed`) is part of the streak.
            let runs = s.failures.saturating_add(i32::from(s.failed));
            let failing = s.last_error_at > 0
                && runs > 0
                && (s.status == Status::Error || s.last_error_at >= s.worker_started_at);
            let failing_since = if !failing {
                0
            } else if s.failures == 0 {
                // The streak's only failure, not counted by the launcher yet.
                s.last_error_at
            } else {
                // The streak's first failure, as the launcher recorded it — but not before the
                // last error less the retry delays between the failures counted: the count
                // (and so the record) is only reset by an applied transaction, and a worker of
                // a quiet publication that streamed for days between two failures must not
                // date the streak from the first.
                let bound = s.last_error_at - pgsub_core::launch::total_delay(retry_us, runs - 1);
                s.streak_since.max(bound)
            };
            let waiting_since = if s.status == Status::WaitingForWorker { s.waiting_since } else { 0 };
            // The running worker's last sign of life (none without a worker).
            let alive_at = (s.pid > 0).then(|| s.alive_at.max(s.worker_started_at));
            rows.push((s.subid, runs, failing, failing_since, waiting_since, s.disabled_by_error_at, alive_at));
        }
    }
    TableIterator::new(rows)
}

/// Superusers, `pgsub_admin` and `pg_monitor` members: the function reads with every enabled
/// subscription's stored credentials (read-only, a fixed query), so a stray GRANT must not open it.
fn require_monitor() {
    // SAFETY: the session's outer user, set in every backend.
    let caller = unsafe { pg_sys::GetOuterUserId() };
    let ok = crate::process::has_privs_of_any(caller, &[c"pgsub_admin", c"pg_monitor"]);
    if !ok {
        error(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied to read the publishers' replication slots",
            None,
            Some("Only superusers and members of pgsub_admin or pg_monitor may call pgsub.publisher_slots."),
        );
    }
}

/// One row of `publisher_slots`.
type SlotRow = (String, String, bool, Option<bool>, Option<String>, Option<i64>, Option<String>);

/// The replication slots of every enabled subscription of this database on its publisher: its own
/// slot and the table synchronization slots (`pgsub_<subid>_sync_<relid>_<sysid>`) — whether each is
/// active, `wal_status` (PostgreSQL 13+) and the WAL it retains (the publisher's current WAL
/// position, or on a standby its last received one, minus the slot's `restart_lsn`). A missing
/// subscription slot (`publisher_reachable` true), or a publisher that cannot be read within
/// `timeout_ms` (false), is one row with `error` set.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn publisher_slots(
    timeout_ms: default!(Option<i32>, 5000),
) -> TableIterator<
    'static,
    (
        name!(subname, String),
        name!(slot_name, String),
        name!(publisher_reachable, bool),
        name!(active, Option<bool>),
        name!(wal_status, Option<String>),
        name!(retained_wal_bytes, Option<i64>),
        name!(error, Option<String>),
    ),
> {
    require_monitor();
    let timeout_ms = timeout_ms.unwrap_or(5000);
    if timeout_ms <= 0 {
        error(Code::ERRCODE_INVALID_PARAMETER_VALUE, "timeout_ms must be positive", None, None);
    }
    let timeout = Duration::from_millis(timeout_ms as u64);
    let subs = match catalog::load_all() {
        Ok(s) => s,
        Err(e) => error(Code::ERRCODE_INTERNAL_ERROR, format!("reading pgsub.sub: {e}"), None, None),
    };
    let mut rows: Vec<SlotRow> = Vec::new();
    for sub in subs.iter().filter(|s| s.enabled) {
        match read_slots(sub, timeout) {
            Ok(mut found) => {
                if !found.iter().any(|r| r.1 == sub.slot_name) {
                    rows.push((
                        sub.name.clone(),
                        sub.slot_name.clone(),
                        true,
                        None,
                        None,
                        None,
                        Some(format!("replication slot \"{}\" does not exist on the publisher", sub.slot_name)),
                    ));
                }
                rows.append(&mut found);
            }
            Err(msg) => rows.push((sub.name.clone(), sub.slot_name.clone(), false, None, None, None, Some(msg))),
        }
    }
    TableIterator::new(rows)
}

/// Connects (normal connection, `application_name` pgsub_health) and reads the subscription's
/// slots; every failure is returned as its message.
fn read_slots(sub: &Subscription, timeout: Duration) -> Result<Vec<SlotRow>, String> {
    let fail = |what: &str, e: &Error| {
        let (msg, detail, _) = publisher::describe(e);
        match detail {
            Some(d) => format!("{what}: {msg} ({d})"),
            None => format!("{what}: {msg}"),
        }
    };
    let mut cfg = conninfo::parse(&sub.conninfo).map_err(|e| fail("invalid connection string", &Error::Config(e)))?;
    cfg.pin_output_settings();
    if cfg.application_name.is_none() {
        cfg.application_name = Some("pgsub_health".into());
    }
    cfg.connect_timeout = Some(cfg.connect_timeout.map_or(timeout, |t| t.min(timeout)));
    let waiter = BoundedWait { inner: LatchWait { ctx: Context::Backend }, until: Instant::now() + timeout };
    let mut client =
        Client::connect(&cfg, false, Box::new(waiter)).map_err(|e| fail("could not connect to the publisher", &e))?;
    // The password rule of the subscription's worker (publisher::connect) holds here too.
    if sub.must_use_password() && !client.used_password() {
        client.close();
        let e = Error::Server(ServerError {
            severity: "ERROR".into(),
            code: "2F003".into(),
            message: "password is required".into(),
            detail: Some(
                "The subscription's owner is not a superuser and the publisher did not ask for a password.".into(),
            ),
            hint: None,
        });
        return Err(fail("could not connect to the publisher", &e));
    }
    let wal_status = if client.server_version_num() >= 130000 { "s.wal_status::text" } else { "NULL::text" };
    let sync_pattern = crate::catalog::sync_slot_pattern(sub.subid);
    let sql = format!(
        "SELECT s.slot_name::text, s.active::text, {wal_status}, \
                pg_catalog.pg_wal_lsn_diff(CASE WHEN pg_catalog.pg_is_in_recovery() \
                                                THEN pg_catalog.pg_last_wal_receive_lsn() \
                                                ELSE pg_catalog.pg_current_wal_lsn() END, \
                                           s.restart_lsn)::bigint::text \
         FROM pg_catalog.pg_replication_slots s \
         WHERE s.slot_name = {} OR s.slot_name LIKE {} \
         ORDER BY 1",
        quote_literal(&sub.slot_name),
        quote_literal(&sync_pattern),
    );
    let result = client.simple_query(&sql);
    client.close();
    let found = result.map_err(|e| fail("could not read the replication slots on the publisher", &e))?;
    Ok(found
        .into_iter()
        .filter_map(|r| {
            let mut it = r.values.into_iter();
            let slot = it.next().flatten()?;
            let active = it.next().flatten().map(|v| matches!(v.as_str(), "t" | "true"));
            let wal_status = it.next().flatten();
            let retained = it.next().flatten().and_then(|v| v.parse::<i64>().ok());
            Some((sub.name.clone(), slot, true, active, wal_status, retained, None))
        })
        .collect())
}
