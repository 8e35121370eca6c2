//! The states a subscription and each of its tables go through.
//!
//! A subscription's [`Status`] is what `pgsub.stat_subscription.status` shows; it lives in shared
//! memory (hence `#[repr(u8)]`), written by the launcher and the apply worker.
//!
//! A table's [`SyncState`] is the `sync_state` column of `pgsub.sub_rel`, following PostgreSQL's
//! `pg_subscription_rel.srsubstate`; a table synchronization worker adds the [`SyncPhase`]s that
//! live only in shared memory (SYNCWAIT, CATCHUP), as `tablesync.c` does:
//!
//! ```text
//!   create / refresh (copy_data)                    create / refresh (copy_data => false)
//!        |                                                          |
//!        v        sync worker: slot + snapshot at C                 |
//!     INIT 'i' ----------------------------> DATASYNC 'd'           |
//!        ^   copy fails: rolled back, retried    |                  |
//!        +---- (the table alone, with backoff) --+                  |
//!                                                | copy committed   |
//!                                                v  (origin at C)   |
//!                                        FINISHEDCOPY 'f'           |
//!                      sync worker asks ------>  |                  |
//!                      (SYNCWAIT, shmem)         v                  |
//!        apply worker answers with its   CATCHUP (shmem, X)         |
//!        position X and waits               |  sync worker streams  |
//!                                           |  its slot from C, the |
//!                                           v  table only, to X     |
//!                              SYNCDONE 's' (state_lsn = max(X, C))  |
//!                                           |                       |
//!      the apply worker's stream passes it  v                       v
//!      (a commit or a keepalive)         READY 'r' <-----------------+
//! ```
//!
//! A crash anywhere resumes: DATASYNC redoes the copy (it is one local transaction, so nothing of
//! it is left); FINISHEDCOPY resumes the catch-up from the sync origin (the copy is never
//! repeated); SYNCDONE and READY need nothing but dropping what the sync worker left (its slot
//! and origin). Changes for a table apply in the apply worker only when it is READY, or
//! SYNCDONE and the transaction ends at or after `state_lsn` ([`SyncState::applies`], native
//! `should_apply_changes_for_rel`); the sync worker applied those before it.

/// What a subscription is doing, as shown in `pgsub.stat_subscription.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Status {
    Disabled = 0,
    WaitingForWorker = 1,
    #[default]
    Starting = 2,
    Connecting = 3,
    InitialCopy = 4,
    Catchup = 5,
    Streaming = 6,
    Error = 7,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Disabled => "disabled",
            Status::WaitingForWorker => "waiting_for_worker",
            Status::Starting => "starting",
            Status::Connecting => "connecting",
            Status::InitialCopy => "initial_copy",
            Status::Catchup => "catchup",
            Status::Streaming => "streaming",
            Status::Error => "error",
        }
    }
}

/// A table's synchronization state (module diagram).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncState {
    /// Waiting for its initial copy.
    Init,
    /// Being copied (seen at start: an interrupted copy, redone).
    DataSync,
    /// Copied as of its `state_lsn` (the sync slot's consistent point); the sync worker catches
    /// it up from there.
    FinishedCopy,
    /// Caught up to its `state_lsn`; becomes ready once the apply worker's stream passes it.
    SyncDone,
    /// Every change applies.
    Ready,
}

impl SyncState {
    /// The catalog's letter.
    pub fn as_char(self) -> char {
        match self {
            SyncState::Init => 'i',
            SyncState::DataSync => 'd',
            SyncState::FinishedCopy => 'f',
            SyncState::SyncDone => 's',
            SyncState::Ready => 'r',
        }
    }

    /// The state of a catalog letter; None for anything else.
    pub fn from_char(c: char) -> Option<SyncState> {
        match c {
            'i' => Some(SyncState::Init),
            'd' => Some(SyncState::DataSync),
            'f' => Some(SyncState::FinishedCopy),
            's' => Some(SyncState::SyncDone),
            'r' => Some(SyncState::Ready),
            _ => None,
        }
    }

    /// The name `pgsub.subscription_table.sync_state` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Init => "init",
            SyncState::DataSync => "copying",
            SyncState::FinishedCopy => "copied",
            SyncState::SyncDone => "synchronized",
            SyncState::Ready => "ready",
        }
    }

    /// The table still needs its initial copy.
    pub fn needs_copy(self) -> bool {
        matches!(self, SyncState::Init | SyncState::DataSync)
    }

    /// A table synchronization worker still has work on the table.
    pub fn needs_sync_worker(self) -> bool {
        matches!(self, SyncState::Init | SyncState::DataSync | SyncState::FinishedCopy)
    }

    /// Native `should_apply_changes_for_rel`: a ready table takes every change; a synchronized
    /// one only changes of transactions that end after its copy point (`state_lsn`); a table
    /// not copied yet none.
    pub fn applies(self, state_lsn: Option<u64>, commit_end: u64) -> bool {
        match self {
            SyncState::Ready => true,
            SyncState::SyncDone => state_lsn.is_some_and(|c| commit_end >= c),
            SyncState::Init | SyncState::DataSync | SyncState::FinishedCopy => false,
        }
    }

    /// A synchronized table becomes ready once a commit at `end` has passed its copy point.
    pub fn ready_after(self, state_lsn: Option<u64>, end: u64) -> bool {
        self == SyncState::SyncDone && state_lsn.is_some_and(|c| c <= end)
    }
}

/// Where a table synchronization worker is, in shared memory (the catalog's [`SyncState`] plus
/// the handshake with the apply worker).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum SyncPhase {
    /// No worker, or registered and not started yet.
    #[default]
    Idle = 0,
    /// Creating its slot and copying.
    Copying = 1,
    /// The copy is committed (FINISHEDCOPY); connecting for the catch-up.
    Copied = 2,
    /// Waiting for the apply worker to say how far to catch up.
    SyncWait = 3,
    /// Catching up to the position the apply worker gave (`catchup_lsn`).
    Catchup = 4,
    /// SYNCDONE committed at `done_lsn`: the apply worker takes the table over.
    Done = 5,
}

impl SyncPhase {
    /// The name `pgsub.subscription_table` shows for the phases the catalog does not have.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncPhase::Idle => "idle",
            SyncPhase::Copying => "copying",
            SyncPhase::Copied => "copied",
            SyncPhase::SyncWait => "syncwait",
            SyncPhase::Catchup => "catchup",
            SyncPhase::Done => "synchronized",
        }
    }

    /// The `pgsub.sync_hold_state` name of a phase, where the sync worker can be held.
    pub fn hold_name(self) -> Option<&'static str> {
        match self {
            SyncPhase::Copying => Some("copying"),
            SyncPhase::Copied => Some("copied"),
            SyncPhase::Catchup => Some("catchup"),
            SyncPhase::Done => Some("synchronized"),
            SyncPhase::Idle | SyncPhase::SyncWait => None,
        }
    }
}

/// Where a sync worker's catch-up ends: at the apply worker's position `apply_at`, or where its
/// own stream already is (`start`: the copy point, or later after a restart), whichever is
/// later. Transactions ending before it are the sync worker's; the rest are the apply worker's.
pub fn catchup_end(start: u64, apply_at: u64) -> u64 {
    start.max(apply_at)
}

/// The sync worker's catch-up is over when the next transaction (or, when idle, the position the
/// publisher has sent up to) reaches `end`.
pub fn catchup_done(position: u64, end: u64) -> bool {
    position >= end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_round_trip() {
        for s in [SyncState::Init, SyncState::DataSync, SyncState::FinishedCopy, SyncState::SyncDone, SyncState::Ready]
        {
            assert_eq!(SyncState::from_char(s.as_char()), Some(s));
        }
        assert_eq!(SyncState::from_char('x'), None);
    }

    #[test]
    fn what_applies_in_each_state() {
        assert!(SyncState::Ready.applies(None, 0));
        assert!(!SyncState::Init.applies(None, 100));
        assert!(!SyncState::DataSync.applies(Some(10), 100));
        assert!(!SyncState::SyncDone.applies(Some(100), 99), "in the copy already");
        assert!(SyncState::SyncDone.applies(Some(100), 100));
        assert!(!SyncState::SyncDone.applies(None, 100));
        assert!(SyncState::SyncDone.ready_after(Some(100), 100));
        assert!(!SyncState::SyncDone.ready_after(Some(100), 99));
        assert!(!SyncState::Ready.ready_after(Some(1), 100));
        assert!(SyncState::Init.needs_copy() && SyncState::DataSync.needs_copy());
        assert!(!SyncState::SyncDone.needs_copy() && !SyncState::Ready.needs_copy());
        assert!(!SyncState::FinishedCopy.needs_copy(), "a finished copy is never repeated");
        assert!(!SyncState::FinishedCopy.applies(Some(1), 100), "the sync worker owns its changes");
        assert!(SyncState::FinishedCopy.needs_sync_worker() && SyncState::Init.needs_sync_worker());
        assert!(!SyncState::SyncDone.needs_sync_worker() && !SyncState::Ready.needs_sync_worker());
    }

    #[test]
    fn catchup_ends_at_the_later_of_both_positions() {
        // The apply worker is ahead of the copy point: catch up to it.
        assert_eq!(catchup_end(100, 250), 250);
        // The apply worker lags behind the copy point: nothing to catch up; the apply worker
        // skips the table's transactions up to the copy point (they are in the copy).
        assert_eq!(catchup_end(100, 40), 100);
        assert!(catchup_done(250, 250) && !catchup_done(249, 250));
        assert_eq!(SyncPhase::default(), SyncPhase::Idle);
        assert_eq!(SyncPhase::Catchup.hold_name(), Some("catchup"));
        assert_eq!(SyncPhase::SyncWait.hold_name(), None);
    }

    #[test]
    fn status_names() {
        assert_eq!(Status::WaitingForWorker.as_str(), "waiting_for_worker");
        assert_eq!(Status::default(), Status::Starting);
    }
}
