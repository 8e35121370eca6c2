//! Holding the apply worker at a publisher position for `pgsub.verify_subscription`
//! (`src/api/verify.rs`): the request lives in the subscription's shared-memory slot
//! ([`Hold`], field `hold` of `shmem::SubSlot`); the worker's side is [`Holder`], called by the
//! receive loop (`receive.rs`) before it applies anything that commits at a position, and when
//! it is idle.
//!
//! Protocol: the verifying backend sets `by` (its pid), `lsn` and `until`; the worker applies
//! every transaction that commits before `lsn`, and before the first one that commits at or
//! after it (or, idle, once the publisher reported a position at or past it) it sets `held_at =
//! lsn`, wakes the requester and applies nothing more until the request is withdrawn or raised
//! to a later `lsn`, its `until` has passed, or its requester is gone. While blocked it keeps
//! the walsender's connection alive and serves SIGTERM within 100 ms. `lsn` 0 with `by` set: a
//! request being prepared (nothing is held).
use super::receive::Stream;
use crate::process::{now, pid_alive, shutdown_requested, wake};
use crate::shmem;
use pgrx::prelude::*;
use pgsub_proto::Lsn;
use std::time::{Duration, Instant};

/// A request to hold the apply worker, in the subscription's shared-memory slot.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Hold {
    /// The requesting backend (0 = no request).
    pub by: i32,
    /// Apply nothing that commits at or after this publisher position (0 = not yet known).
    pub lsn: u64,
    /// TimestampTz after which the worker lets go whatever happens.
    pub until: i64,
    /// Set by the worker: everything committed before `lsn` is applied and it holds there.
    pub held_at: u64,
    /// Set by the worker while it waits in front of a transaction.
    pub blocking: bool,
}

impl Hold {
    /// A request the worker must honour now: made by a live backend, not expired, with a
    /// position.
    pub fn active(&self, at: i64) -> bool {
        self.by > 0 && self.lsn > 0 && at < self.until && pid_alive(self.by)
    }

    /// What `pgsub.stat_subscription.status` shows while the worker holds (None: nothing held).
    pub fn status_text(&self) -> Option<&'static str> {
        (self.by > 0 && self.lsn > 0 && self.held_at == self.lsn).then_some("held")
    }
}

/// The apply worker's side of a hold.
#[derive(Debug)]
pub(super) struct Holder {
    /// A publisher position up to which everything has been received and applied (the end of
    /// the last commit, or an idle keepalive's WAL end).
    seen: Lsn,
    /// When we last asked the walsender for its position while a hold waits for it.
    pinged: Option<Instant>,
}

impl Default for Holder {
    fn default() -> Self {
        Holder { seen: Lsn::INVALID, pinged: None }
    }
}

fn read(subid: i32) -> Hold {
    shmem::SHARED.share().find(subid).map(|s| s.hold).unwrap_or_default()
}

/// Marks the hold at `lsn` as reached (and whether the worker blocks in front of a
/// transaction); wakes the requester when that changes.
fn mark(subid: i32, lsn: u64, blocking: bool) {
    let by = shmem::with_slot(subid, |s| {
        if s.hold.lsn == lsn && (s.hold.held_at != lsn || s.hold.blocking != blocking) {
            s.hold.held_at = lsn;
            s.hold.blocking = blocking;
            s.hold.by
        } else {
            0
        }
    });
    wake(by.unwrap_or(0));
}

/// The worker stops blocking (its request ended or was raised past the transaction).
fn unblock(subid: i32) {
    shmem::with_slot(subid, |s| s.hold.blocking = false);
}

impl Holder {
    /// Everything up to `lsn` has been received and applied.
    pub(super) fn saw(&mut self, lsn: Lsn) {
        if lsn > self.seen {
            self.seen = lsn;
        }
    }

    /// Whether a hold waits for the publisher's position (the loop then wakes every 100 ms).
    pub(super) fn pending(&self, subid: i32) -> bool {
        let h = read(subid);
        h.active(now()) && h.held_at != h.lsn
    }
}

impl Stream {
    /// Called between transactions: once everything before a requested hold position is
    /// applied, say so. While the publisher has not told us a position at or past it, ask it
    /// for one (a keepalive answers) every 200 ms.
    pub(super) fn hold_when_idle(&mut self) {
        let subid = self.sub.subid;
        let h = read(subid);
        if !h.active(now()) || h.held_at == h.lsn {
            return;
        }
        if self.hold.seen.0 >= h.lsn {
            mark(subid, h.lsn, false);
            return;
        }
        if self.hold.pinged.is_none_or(|t| t.elapsed() >= Duration::from_millis(200)) {
            self.hold.pinged = Some(Instant::now());
            self.send_feedback(true, true);
        }
    }

    /// Called before applying what commits at `lsn` (a transaction's commit record, a streamed
    /// transaction's commit, a COMMIT PREPARED): waits while a hold at or before `lsn` is
    /// requested.
    pub(super) fn hold_before(&mut self, lsn: Lsn) {
        if self.catchup_end.is_some() {
            return; // a sync worker's catch-up is never held
        }
        let subid = self.sub.subid;
        let mut blocked = false;
        loop {
            let h = read(subid);
            if !h.active(now()) || lsn.0 < h.lsn {
                break;
            }
            // Everything committed before this transaction is applied: held at the request
            // (a group of deferred commits commits first).
            self.finish_group();
            if !blocked || h.held_at != h.lsn {
                mark(subid, h.lsn, true);
                blocked = true;
            }
            if shutdown_requested() {
                break;
            }
            crate::process::nap(100, crate::process::Wait::Extension);
            // The walsender must not time us out while we hold.
            self.send_feedback(false, false);
        }
        if blocked {
            unblock(subid);
        }
        if shutdown_requested() {
            self.stop();
            // SAFETY: clean exit of a background worker that was asked to stop (no local
            // transaction is open in front of a remote one).
            unsafe { pg_sys::proc_exit(0) };
        }
    }
}
