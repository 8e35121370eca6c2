//! The states a subscription and each of its tables go through.
//!
//! A subscription's [`Status`] is what `pgsub.stat_subscription.status` shows; it lives in shared
//! memory (hence `#[repr(u8)]`), written by the launcher and the apply worker.
//!
//! A table's [`SyncState`] is the `sync_state` column of `pgsub.sub_rel`, following PostgreSQL's
//! `pg_subscription_rel.srsubstate`:
//!
//! ```text
//!   create / refresh (copy_data)         create / refresh (copy_data => false)
//!            |                                       |
//!            v                                       |
//!         INIT 'i' ---- copy starts ---> DATASYNC 'd'|
//!            ^                               |       |
//!            +---- copy fails (rolled back) -+       |
//!                                            |       |
//!                  copy committed at LSN C   v       |
//!                                   SYNCDONE 's' (state_lsn = C)
//!                                            |       |
//!        the stream passes C (changes up to  v       v
//!        C are in the copy, later ones apply) READY 'r'
//! ```
//!
//! The copy of a table and its move to SYNCDONE commit in one local transaction, so a crash
//! mid-copy leaves the table in INIT (a DATASYNC row seen at start is an interrupted copy, redone
//! from scratch). While a table is SYNCDONE the apply worker applies only transactions that end
//! after C ([`SyncState::applies`], native `should_apply_changes_for_rel`); the commit that passes
//! C marks it READY in the same transaction.

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
    /// Copied as of its `state_lsn`; becomes ready once the stream passes it.
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
            SyncState::SyncDone => 's',
            SyncState::Ready => 'r',
        }
    }

    /// The state of a catalog letter; None for anything else.
    pub fn from_char(c: char) -> Option<SyncState> {
        match c {
            'i' => Some(SyncState::Init),
            'd' => Some(SyncState::DataSync),
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
            SyncState::SyncDone => "synchronized",
            SyncState::Ready => "ready",
        }
    }

    /// The table still needs its initial copy.
    pub fn needs_copy(self) -> bool {
        matches!(self, SyncState::Init | SyncState::DataSync)
    }

    /// Native `should_apply_changes_for_rel`: a ready table takes every change; a synchronized
    /// one only changes of transactions that end after its copy point (`state_lsn`); a table
    /// not copied yet none.
    pub fn applies(self, state_lsn: Option<u64>, commit_end: u64) -> bool {
        match self {
            SyncState::Ready => true,
            SyncState::SyncDone => state_lsn.is_some_and(|c| commit_end >= c),
            SyncState::Init | SyncState::DataSync => false,
        }
    }

    /// A synchronized table becomes ready once a commit at `end` has passed its copy point.
    pub fn ready_after(self, state_lsn: Option<u64>, end: u64) -> bool {
        self == SyncState::SyncDone && state_lsn.is_some_and(|c| c <= end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_round_trip() {
        for s in [SyncState::Init, SyncState::DataSync, SyncState::SyncDone, SyncState::Ready] {
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
    }

    #[test]
    fn status_names() {
        assert_eq!(Status::WaitingForWorker.as_str(), "waiting_for_worker");
        assert_eq!(Status::default(), Status::Starting);
    }
}
