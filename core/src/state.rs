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

/// The `streaming` option: how a large in-progress transaction the publisher streams is applied.
/// `Off`: the publisher decodes the whole transaction before sending it (PostgreSQL 15's default);
/// `On`: buffered (in memory, then spilled) and applied at Stream Commit; `Parallel`: applied as it
/// arrives by a parallel apply worker, committed at Stream Commit (PostgreSQL 16's `parallel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum StreamingMode {
    #[default]
    Off,
    On,
    Parallel,
}

impl StreamingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamingMode::Off => "off",
            StreamingMode::On => "on",
            StreamingMode::Parallel => "parallel",
        }
    }

    /// The values PostgreSQL's `streaming` option takes: a boolean spelling or `parallel`,
    /// case-insensitive.
    pub fn parse(s: &str) -> Option<StreamingMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "parallel" => Some(StreamingMode::Parallel),
            "on" | "true" | "yes" | "1" | "t" | "y" => Some(StreamingMode::On),
            "off" | "false" | "no" | "0" | "f" | "n" => Some(StreamingMode::Off),
            _ => None,
        }
    }

    /// Whether the publisher is asked to stream in-progress transactions at all.
    pub fn streams(self) -> bool {
        self != StreamingMode::Off
    }
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

/// A conflict between a remote change and the local data, by PostgreSQL 18's names
/// (`pg_stat_subscription_stats.confl_*`, the `conflict=` of its log lines). The discriminant is
/// the index of the type's counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConflictType {
    /// A remote INSERT whose row violates a unique index: the key exists here.
    InsertExists = 0,
    /// A remote UPDATE of a row last changed by another origin (or locally).
    UpdateOriginDiffers = 1,
    /// A remote UPDATE whose new row violates a unique index.
    UpdateExists = 2,
    /// A remote UPDATE whose row is not here.
    UpdateMissing = 3,
    /// A remote DELETE of a row last changed by another origin (or locally).
    DeleteOriginDiffers = 4,
    /// A remote DELETE whose row is not here.
    DeleteMissing = 5,
    /// A remote INSERT or UPDATE that violates more than one unique index.
    MultipleUniqueConflicts = 6,
}

impl ConflictType {
    pub const COUNT: usize = 7;
    pub const ALL: [ConflictType; Self::COUNT] = [
        ConflictType::InsertExists,
        ConflictType::UpdateOriginDiffers,
        ConflictType::UpdateExists,
        ConflictType::UpdateMissing,
        ConflictType::DeleteOriginDiffers,
        ConflictType::DeleteMissing,
        ConflictType::MultipleUniqueConflicts,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConflictType::InsertExists => "insert_exists",
            ConflictType::UpdateOriginDiffers => "update_origin_differs",
            ConflictType::UpdateExists => "update_exists",
            ConflictType::UpdateMissing => "update_missing",
            ConflictType::DeleteOriginDiffers => "delete_origin_differs",
            ConflictType::DeleteMissing => "delete_missing",
            ConflictType::MultipleUniqueConflicts => "multiple_unique_conflicts",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// A remote UPDATE or DELETE of a row another origin (or a local session) changed last.
    pub fn origin_differs(self) -> bool {
        matches!(self, ConflictType::UpdateOriginDiffers | ConflictType::DeleteOriginDiffers)
    }
}

/// What a subscription does with a conflict (`conflict_resolution`), pglogical's names:
/// `Error` is native PostgreSQL's behaviour (a unique violation stops apply, a missing row is
/// skipped and logged, a row of another origin is overwritten).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Resolution {
    #[default]
    Error,
    ApplyRemote,
    KeepLocal,
    LastUpdateWins,
    FirstUpdateWins,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Error => "error",
            Resolution::ApplyRemote => "apply_remote",
            Resolution::KeepLocal => "keep_local",
            Resolution::LastUpdateWins => "last_update_wins",
            Resolution::FirstUpdateWins => "first_update_wins",
        }
    }

    pub fn parse(s: &str) -> Option<Resolution> {
        [
            Resolution::Error,
            Resolution::ApplyRemote,
            Resolution::KeepLocal,
            Resolution::LastUpdateWins,
            Resolution::FirstUpdateWins,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }

    /// Whether the policy compares commit timestamps (needs `track_commit_timestamp = on`).
    pub fn needs_commit_timestamps(self) -> bool {
        matches!(self, Resolution::LastUpdateWins | Resolution::FirstUpdateWins)
    }

    /// Whether the remote change wins over a local row: `local` and `remote` are (commit time in
    /// µs, origin identity) — the local time `None` when unknown (no commit timestamp recorded).
    /// Ties on time break by the identity (the larger wins under both `*_update_wins`), so two
    /// nodes that see the same pair decide the same way.
    pub fn remote_wins(self, local: (Option<i64>, u64), remote: (i64, u64)) -> bool {
        match self {
            Resolution::Error | Resolution::ApplyRemote => true,
            Resolution::KeepLocal => false,
            Resolution::LastUpdateWins => match local.0 {
                None => true,
                Some(t) => (remote.0, remote.1) > (t, local.1),
            },
            Resolution::FirstUpdateWins => match local.0 {
                None => false,
                Some(t) => remote.0 < t || (remote.0 == t && remote.1 > local.1),
            },
        }
    }
}

#[cfg(test)]
mod conflict_tests {
    use super::*;

    #[test]
    fn conflict_type_indexes_are_their_position() {
        for (i, t) in ConflictType::ALL.iter().enumerate() {
            assert_eq!(t.index(), i);
        }
        assert_eq!(ConflictType::MultipleUniqueConflicts.as_str(), "multiple_unique_conflicts");
    }

    #[test]
    fn resolution_names_round_trip() {
        for r in ["error", "apply_remote", "keep_local", "last_update_wins", "first_update_wins"] {
            assert_eq!(Resolution::parse(r).map(Resolution::as_str), Some(r));
        }
        assert_eq!(Resolution::parse("latest"), None);
    }

    #[test]
    fn update_wins_policies_compare_times_then_origins() {
        let l = Resolution::LastUpdateWins;
        let f = Resolution::FirstUpdateWins;
        assert!(l.remote_wins((Some(10), 1), (11, 1)));
        assert!(!l.remote_wins((Some(12), 1), (11, 1)));
        assert!(!f.remote_wins((Some(10), 1), (11, 1)));
        assert!(f.remote_wins((Some(12), 1), (11, 1)));
        // A tie goes to the larger origin identity under both, seen from either node.
        for p in [l, f] {
            let on_a = p.remote_wins((Some(5), 7), (5, 9));
            let on_b = p.remote_wins((Some(5), 9), (5, 7));
            assert!(on_a && !on_b, "{p:?}");
        }
        // Unknown local time: the remote row is newer for last_update_wins, and loses first_update_wins.
        assert!(l.remote_wins((None, 1), (0, 0)));
        assert!(!f.remote_wins((None, 1), (0, 0)));
        assert!(Resolution::ApplyRemote.remote_wins((Some(99), 9), (1, 1)));
        assert!(!Resolution::KeepLocal.remote_wins((Some(1), 1), (99, 9)));
    }

    #[test]
    fn streaming_mode_parses_what_postgresql_accepts() {
        for (s, m) in [
            ("parallel", StreamingMode::Parallel),
            ("PARALLEL", StreamingMode::Parallel),
            ("on", StreamingMode::On),
            ("true", StreamingMode::On),
            ("1", StreamingMode::On),
            ("off", StreamingMode::Off),
            ("false", StreamingMode::Off),
            (" no ", StreamingMode::Off),
        ] {
            assert_eq!(StreamingMode::parse(s), Some(m), "{s}");
            assert_eq!(StreamingMode::parse(m.as_str()), Some(m));
        }
        assert_eq!(StreamingMode::parse("paralel"), None);
        assert_eq!(StreamingMode::parse(""), None);
        assert!(!StreamingMode::Off.streams() && StreamingMode::On.streams() && StreamingMode::Parallel.streams());
    }
}
