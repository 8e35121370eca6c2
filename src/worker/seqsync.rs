//! Periodic sequence sync (`sequence_sync_interval`, issue 20): between transactions, at most
//! once per interval, the apply worker moves the local sequences owned by the subscription's
//! tables to the publisher's state plus `sequence_sync_margin` increments, never backwards
//! (`api::advance_owned_sequences`). It reads the publisher over a plain connection of its own,
//! kept open between syncs (connecting is bounded by `connect_timeout`, else
//! `pgsub.receiver_timeout`; SIGTERM ends any wait), so a sync costs apply two short queries.
//! A failed sync does not stop apply: its error is recorded in the subscription's stats
//! (`last_error`, `apply_error_count`) and logged as a WARNING, the connection is dropped, and the
//! next interval tries again.
use super::receive::Stream;
use crate::process::now;
use crate::publisher::{self, Context};
use crate::shmem;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgsub_proto::client::Client;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

/// The apply worker's periodic sequence sync.
#[derive(Default)]
pub(super) struct SeqSync {
    /// When the last sync was attempted (None: not yet).
    last: Option<Instant>,
    client: Option<Client>,
}

impl std::fmt::Debug for SeqSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeqSync").field("last", &self.last).field("connected", &self.client.is_some()).finish()
    }
}

impl Stream {
    /// Runs a sequence sync if the subscription has an interval and it has passed.
    pub(super) fn sync_sequences_if_due(&mut self) {
        let Some(ms) = self.sub.sequence_sync_ms.filter(|ms| *ms > 0) else { return };
        let every = Duration::from_millis(ms as u64);
        if self.seqsync.last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.seqsync.last = Some(Instant::now());
        let sub = self.sub.clone();
        let kept = self.seqsync.client.take();
        // The connection comes back when the sync worked; after an error it is dropped.
        self.seqsync.client = PgTryBuilder::new(AssertUnwindSafe(|| {
            let mut client = match kept {
                Some(c) => c,
                None => match publisher::connect(
                    &sub.conninfo,
                    false,
                    Context::Worker,
                    Some(&format!("pgsub {} sequences", sub.name)),
                    !sub.owner_superuser,
                ) {
                    Ok(c) => c,
                    Err(e) => publisher::raise(&e, "could not connect to the publisher to read its sequences", None),
                },
            };
            let moved =
                super::xact(|| crate::api::advance_owned_sequences(&sub, &mut client, sub.sequence_sync_margin));
            if moved > 0 {
                debug1!("pgsub: subscription \"{}\" moved {moved} sequence(s) ahead of the publisher", sub.name);
            }
            Some(client)
        }))
        .catch_others(|e| {
            failed(&sub, e);
            None
        })
        .execute();
    }
}

/// Records a failed sync like the worker's other errors, without stopping apply.
fn failed(sub: &crate::catalog::Subscription, e: CaughtError) {
    // SAFETY: leaves the transaction the error interrupted (none when connecting failed).
    unsafe { pg_sys::AbortOutOfAnyTransaction() };
    // A stop asked for meanwhile (disable, a changed option) interrupted it: not a failure; the
    // worker leaves at its next look at the request.
    if crate::process::shutdown_requested() {
        return;
    }
    let (msg, detail) = match &e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) | CaughtError::RustPanic { ereport: r, .. } => {
            (r.message().to_string(), r.detail().map(str::to_string))
        }
    };
    let text = format!(
        "periodic sequence sync of subscription \"{}\" failed: {msg}{}",
        sub.name,
        detail.as_deref().map(|d| format!("\nDETAIL: {d}")).unwrap_or_default()
    );
    shmem::with_slot(sub.subid, |s| s.set_error(&text, now(), false));
    crate::report::log(
        PgLogLevel::WARNING,
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        text,
        None,
        Some("Apply goes on; the sync is tried again after sequence_sync_interval."),
    );
}
