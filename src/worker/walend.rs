//! The publisher's WAL end while the stream is in full flow (`pgsub.lag_probe_interval`).
//!
//! A logical walsender tells its client no WAL end but the position of what it sends: each
//! XLogData's and keepalive's "WAL end" is the record's own position, or how far it has sent.
//! When this worker applies more slowly than the publisher writes, the walsender waits on the
//! socket and decodes no further, so the distance from what is received to what is applied stays
//! small while the publisher's WAL runs ahead: `lag_bytes` would say "no lag" for a subscriber
//! minutes behind. The worker learns the WAL end at connect (IDENTIFY_SYSTEM); while changes keep
//! arriving and the transactions applied are old (committed on the publisher more than 2 s ago:
//! the worker is behind) it asks again every interval, over a short ordinary connection to the
//! publisher (the subscription's connection string, bounded by `PROBE_TIMEOUT`), closed at once.
//! A subscriber that keeps up, or an idle stream, never probes. A failed probe is retried after
//! `AFTER_FAILURE`, never more often than the interval, and logged once at LOG.
use crate::catalog::Subscription;
use crate::{gucs, publisher};
use pgrx::prelude::*;
use pgsub_proto::Lsn;
use std::time::{Duration, Instant};

/// Longest a probe may hold the apply worker (connect, query, close).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How far behind the publisher's clock the last applied commit must be for a probe (clocks of
/// the two servers a little apart must not make a subscriber that keeps up probe).
const BEHIND_US: i64 = 2_000_000;
/// Pause after a failed probe.
const AFTER_FAILURE: Duration = Duration::from_secs(60);

pub(super) struct WalEndProbe {
    next_at: Instant,
    warned: bool,
}

impl Default for WalEndProbe {
    fn default() -> Self {
        // The connect-time WAL end is fresh: the first probe waits one interval.
        WalEndProbe { next_at: Instant::now() + gucs::ms(&gucs::LAG_PROBE_INTERVAL_MS), warned: false }
    }
}

impl WalEndProbe {
    /// The publisher's WAL end, when a probe is due and succeeds: changes arrived in this round
    /// and the last one applied was committed on the publisher more than `BEHIND` ago
    /// (`last_commit_time`; a subscriber keeping up never probes).
    pub(super) fn poll(&mut self, sub: &Subscription, got_changes: bool, last_commit_time: i64) -> Option<Lsn> {
        let interval = gucs::ms(&gucs::LAG_PROBE_INTERVAL_MS);
        let behind = last_commit_time != 0 && crate::process::now() - last_commit_time > BEHIND_US;
        if interval.is_zero() || !got_changes || !behind || Instant::now() < self.next_at {
            return None;
        }
        match publisher::current_wal_end(&sub.conninfo, sub.must_use_password(), PROBE_TIMEOUT) {
            Ok(lsn) => {
                self.next_at = Instant::now() + interval;
                Some(lsn)
            }
            // Asked to stop meanwhile: the loop sees it next.
            Err(pgsub_proto::client::Error::Interrupted) => None,
            Err(e) => {
                self.next_at = Instant::now() + interval.max(AFTER_FAILURE);
                if !std::mem::replace(&mut self.warned, true) {
                    log!(
                        "pgsub apply worker for subscription \"{}\": could not read the publisher's WAL position for lag_bytes (retried every {} s): {e}",
                        sub.name,
                        interval.max(AFTER_FAILURE).as_secs()
                    );
                }
                None
            }
        }
    }
}
