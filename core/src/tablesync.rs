//! Which tables get a table synchronization worker now: a pure function of the subscription's
//! tables, its sync workers and the caps, called by the apply worker between transactions
//! (`src/worker/syncing.rs`), like `process_syncing_tables_for_apply` in PostgreSQL's
//! `tablesync.c`.
//!
//! A table that needs one (INIT, DATASYNC, FINISHEDCOPY) gets a worker unless one already runs
//! for it, its last one failed less than its backoff ago, or the caps are reached:
//! `pgsub.max_sync_workers_per_subscription` running for this subscription, and the free slots
//! of `pgsub.max_sync_workers` in all. Tables whose copy is done (FINISHEDCOPY) go first: their
//! catch-up is short and a finished copy should never wait behind a new one.
use crate::state::SyncState;

/// A table of the subscription, as the apply worker knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    pub relid: u32,
    pub state: SyncState,
}

/// What shared memory says of the sync worker of one table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Worker {
    pub relid: u32,
    /// Registered or running.
    pub active: bool,
    /// Not to be started again before this time (backoff after a failure; 0 = any time).
    pub next_start_at: i64,
}

/// The caps and the clock.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// `pgsub.max_sync_workers_per_subscription`.
    pub per_subscription: usize,
    /// Sync worker slots free server-wide (`pgsub.max_sync_workers` minus those in use).
    pub free_slots: usize,
    pub now: i64,
}

/// The decision: tables to start a worker for, and tables that need one but must wait for a
/// slot (shown as waiting for a worker).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub start: Vec<u32>,
    pub waiting: Vec<u32>,
}

pub fn plan(tables: &[Table], workers: &[Worker], caps: Caps) -> Plan {
    let worker = |relid: u32| workers.iter().find(|w| w.relid == relid);
    let running = workers.iter().filter(|w| w.active && tables.iter().any(|t| t.relid == w.relid)).count();
    let mut room = caps.per_subscription.saturating_sub(running).min(caps.free_slots);
    let mut candidates: Vec<&Table> = tables
        .iter()
        .filter(|t| t.state.needs_sync_worker())
        .filter(|t| worker(t.relid).is_none_or(|w| !w.active && w.next_start_at <= caps.now))
        .collect();
    // Finished copies first; otherwise the catalog's order.
    candidates.sort_by_key(|t| t.state != SyncState::FinishedCopy);
    let mut out = Plan::default();
    for t in candidates {
        if room > 0 {
            out.start.push(t.relid);
            room -= 1;
        } else {
            out.waiting.push(t.relid);
        }
    }
    out
}

/// Delay before a table whose sync worker failed `failures` times in a row is tried again:
/// the launcher's [`crate::launch::retry_delay`] (`retry` doubled per failure, at most
/// [`crate::launch::MAX_BACKOFF`]×).
pub fn backoff(retry: i64, failures: i32) -> i64 {
    crate::launch::retry_delay(retry, failures.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(relid: u32, state: SyncState) -> Table {
        Table { relid, state }
    }
    const CAPS: Caps = Caps { per_subscription: 2, free_slots: 8, now: 1000 };

    #[test]
    fn starts_up_to_the_per_subscription_cap_and_the_rest_wait() {
        let tables = [t(1, SyncState::Init), t(2, SyncState::Init), t(3, SyncState::Init), t(4, SyncState::Ready)];
        let p = plan(&tables, &[], CAPS);
        assert_eq!(p.start, vec![1, 2]);
        assert_eq!(p.waiting, vec![3]);
    }

    #[test]
    fn running_workers_count_and_are_not_started_twice() {
        let tables = [t(1, SyncState::DataSync), t(2, SyncState::Init), t(3, SyncState::Init)];
        let w = [Worker { relid: 1, active: true, next_start_at: 0 }];
        let p = plan(&tables, &w, CAPS);
        assert_eq!(p.start, vec![2]);
        assert_eq!(p.waiting, vec![3]);
        // A worker of a table no longer in the subscription does not take this subscription's room.
        let w = [Worker { relid: 9, active: true, next_start_at: 0 }];
        assert_eq!(plan(&tables, &w, CAPS).start, vec![1, 2]);
    }

    #[test]
    fn server_wide_slots_limit_too() {
        let tables = [t(1, SyncState::Init), t(2, SyncState::Init)];
        let p = plan(&tables, &[], Caps { free_slots: 1, ..CAPS });
        assert_eq!((p.start, p.waiting), (vec![1], vec![2]));
        let p = plan(&tables, &[], Caps { free_slots: 0, ..CAPS });
        assert_eq!((p.start, p.waiting), (vec![], vec![1, 2]));
    }

    #[test]
    fn a_failed_table_waits_for_its_backoff_and_others_proceed() {
        let tables = [t(1, SyncState::DataSync), t(2, SyncState::Init)];
        let w = [Worker { relid: 1, active: false, next_start_at: 5000 }];
        assert_eq!(plan(&tables, &w, CAPS).start, vec![2]);
        assert_eq!(plan(&tables, &w, Caps { now: 5000, ..CAPS }).start, vec![1, 2]);
    }

    #[test]
    fn finished_copies_go_first() {
        let tables = [t(1, SyncState::Init), t(2, SyncState::Init), t(3, SyncState::FinishedCopy)];
        let p = plan(&tables, &[], Caps { per_subscription: 1, ..CAPS });
        assert_eq!(p.start, vec![3]);
        assert_eq!(p.waiting, vec![1, 2]);
    }

    #[test]
    fn synchronized_and_ready_tables_need_no_worker() {
        let tables = [t(1, SyncState::SyncDone), t(2, SyncState::Ready)];
        assert_eq!(plan(&tables, &[], CAPS), Plan::default());
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1000, 1), 1000);
        assert_eq!(backoff(1000, 2), 2000);
        assert_eq!(backoff(1000, 3), 4000);
        assert_eq!(backoff(1000, 4), 4000);
        assert_eq!(backoff(1000, 50), 4000);
        assert_eq!(backoff(1000, 0), 1000);
    }
}
