//! Rates and lag history: what `pgsub.stat_subscription`'s `*_rate_10s` / `*_rate_1m` columns
//! and `pgsub.lag_history(name)` return.
//!
//! Rates: the apply worker (and a sync worker's catch-up) adds what it counted to per-second
//! buckets in its subscription's slot each time it publishes (`progress.rs`; at least once a
//! second while it receives); a rate is read over the complete seconds before the current one
//! (`pgsub_core::rates`), so it falls to 0 by itself when the worker is idle or gone.
//!
//! Lag history: the supervisor takes one sample per second of every subscription whose apply
//! worker runs (`sample_all`, from its loop): the lag as `pgsub.stat_subscription` shows it at
//! that moment (bytes received or announced by the publisher and not applied; the age of the
//! oldest transaction received and not applied) and the rows applied in the second before. A
//! worker blocked (a lock, a long statement) cannot sample itself, which is why the supervisor
//! does: the apply lag of a blocked worker keeps growing in the history. The samples live in
//! the ring of the subscription's slot in `monitor.rs` (the last hour).
use crate::monitor;
use crate::process::now;
use crate::report;
use crate::shmem::{self, SubSlot};
use pgrx::prelude::*;
use pgsub_core::rates::LagSample;

type Code = PgSqlErrorCode;

/// Whole seconds of a TimestampTz.
pub fn second(ts: i64) -> i64 {
    ts.div_euclid(1_000_000)
}

/// Bytes the publisher has (as far as the worker knows) that are not applied yet; the view's
/// `lag_bytes`.
fn lag_bytes(s: &SubSlot) -> i64 {
    let known = s.publisher_wal_end.max(s.received_lsn);
    let done = s.applied_lsn.max(s.caught_up_lsn);
    known.saturating_sub(done).min(i64::MAX as u64) as i64
}

/// `LagSample::apply_lag_ms` when the apply lag is not known (`shmem::LAG_UNKNOWN`).
const UNKNOWN_MS: u32 = u32::MAX;

/// Age of the oldest transaction received and not applied yet, in ms; the view's `apply_lag`.
fn apply_lag_ms(s: &SubSlot, at: i64) -> u32 {
    if s.pending_commit_time == 0 {
        0
    } else if s.pending_commit_time == shmem::LAG_UNKNOWN {
        UNKNOWN_MS
    } else {
        (at.saturating_sub(s.pending_commit_time).max(0) / 1000).min(i64::from(UNKNOWN_MS - 1)) as u32
    }
}

/// One sample of every subscription with a running apply worker, at most one per second each
/// (the supervisor calls this at every second boundary).
pub fn sample_all() {
    let at = now();
    let sec = second(at);
    let mut g = shmem::SHARED.exclusive();
    let samples: Vec<(usize, i32, LagSample)> = g
        .slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.subid != 0 && s.pid > 0)
        .map(|(i, s)| {
            let rows = s.rates.at(sec - 1).rows.clamp(0, u32::MAX as i64) as u32;
            (i, s.subid, LagSample { at, lag_bytes: lag_bytes(s), apply_lag_ms: apply_lag_ms(s, at), rows })
        })
        .collect();
    let Some(r) = monitor::region_mut(&mut g) else { return };
    for (i, subid, sample) in samples {
        let ring = &mut r.history[i];
        if ring.subid != subid {
            ring.reset(subid);
        }
        ring.push(sec, sample);
    }
}

/// The lag history of a subscription of this database, oldest first (`pgsub.lag_history`).
#[pg_extern(volatile, parallel_safe)]
fn _lag_history(
    subid: i32,
) -> TableIterator<'static, (name!(at, i64), name!(lag_bytes, i64), name!(apply_lag_ms, Option<i64>), name!(rows, i64))>
{
    let mut rows = Vec::new();
    if shmem::available() {
        let g = shmem::SHARED.share();
        let here = shmem::my_database();
        let idx = g.slots.iter().position(|s| s.subid == subid && s.dboid == here);
        if let (Some(i), Some(r)) = (idx, monitor::region(&g)) {
            let ring = &r.history[i];
            if ring.subid == subid {
                for s in ring.oldest_first() {
                    let lag = (s.apply_lag_ms != UNKNOWN_MS).then_some(i64::from(s.apply_lag_ms));
                    rows.push((s.at, s.lag_bytes, lag, i64::from(s.rows)));
                }
            }
        }
    }
    TableIterator::new(rows)
}

/// Transactions, rows (changes applied) and bytes received per second over the last 10 and 60
/// complete seconds, and the bytes received in all, for every subscription the caller may see.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn _stat_rates() -> TableIterator<
    'static,
    (
        name!(subid, i32),
        name!(txn_rate_10s, f64),
        name!(row_rate_10s, f64),
        name!(recv_bytes_rate_10s, f64),
        name!(txn_rate_1m, f64),
        name!(row_rate_1m, f64),
        name!(recv_bytes_rate_1m, f64),
        name!(recv_bytes, i64),
    ),
> {
    let mut rows = Vec::new();
    if shmem::available() {
        let sec = second(now());
        let all = crate::stats::sees_all_databases();
        let g = shmem::SHARED.share();
        for s in crate::stats::visible_slots(&g, all) {
            let (a, b) = (s.rates.rates(sec, 10), s.rates.rates(sec, 60));
            rows.push((s.subid, a.txns, a.rows, a.bytes, b.txns, b.rows, b.bytes, s.recv_bytes));
        }
    }
    TableIterator::new(rows)
}

/// Raises "subscription does not exist" for `pgsub.lag_history` of an unknown name.
#[pg_extern(volatile, parallel_safe)]
fn _no_such_subscription(name: &str) -> i32 {
    report::error(
        Code::ERRCODE_UNDEFINED_OBJECT,
        format!("subscription \"{name}\" does not exist"),
        None,
        Some("pgsub.subscription lists the subscriptions of this database."),
    )
}
