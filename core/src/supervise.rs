//! The supervisor's decision: which databases get a launcher now. A pure function of (the rows
//! of `pg_database`, the per-database slots in shared memory, the clock); `src/supervisor.rs`
//! reads the inputs, calls [`decide`] and starts the launchers.
//!
//! A database's [`DbState`] (what `pgsub.stat_database.state` shows):
//!
//! ```text
//!            first seen, woken by a pgsub function,          launcher finds no extension
//!            or an hour since the last probe                 ┌──────────────► no_extension ─┐
//!  (unknown) ──────────────────────────────► starting ───────┤                              │
//!      ▲                                        ▲   │        │ extension, nothing enabled   │
//!      │                                        │   │        └──────────────► idle ─────────┤
//!      │                                        │   ▼ enabled subscriptions                 │
//!      │                                        │ running ─(all disabled / dropped)─► idle  │
//!      │                                        └───────────────────────────────────────────┘
//!      │                                              woken, or an hour since the last probe
//!  database dropped: its slot (and its subscriptions' slots) are forgotten.
//! ```
//!
//! Rules:
//!   * not in `pg_database` any more → forget it (its launcher is stopped if one runs);
//!   * not connectable (`datallowconn = false`, or half-dropped) → `not_connectable`;
//!     outside `pgsub.database`, or a template → `excluded`; a launcher running there is stopped;
//!   * a launcher registered or running → nothing (it reports its state itself);
//!   * no launcher: start one when the database was never probed, when a pgsub function asked
//!     (the `wake` flag), when the last probe is `recheck` old, or — after a launcher exited in
//!     `starting`/`running` state, i.e. failed — `retry` after that; at most `max_probes`
//!     launchers are in `starting` at once, so many databases never exhaust worker slots.
//!
//! A database without the extension therefore costs one short-lived launcher when first seen
//! and one an hour, never a restart loop.

/// What the supervisor knows of a database. Stored in shared memory as `u8`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DbState {
    /// Seen, never probed.
    #[default]
    Unknown = 0,
    /// A launcher was started and has not reported yet.
    Starting = 1,
    /// A launcher runs the database's subscriptions.
    Running = 2,
    /// The extension exists but no subscription is enabled: no launcher runs.
    Idle = 3,
    /// The extension is not created there.
    NoExtension = 4,
    /// Connections are not allowed (or the database is half dropped).
    NotConnectable = 5,
    /// Not named in a non-empty `pgsub.database`.
    Excluded = 6,
}

impl DbState {
    pub fn as_str(self) -> &'static str {
        match self {
            DbState::Unknown => "unknown",
            DbState::Starting => "starting",
            DbState::Running => "running",
            DbState::Idle => "idle",
            DbState::NoExtension => "no_extension",
            DbState::NotConnectable => "not_connectable",
            DbState::Excluded => "excluded",
        }
    }
}

/// A row of `pg_database`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Database {
    pub oid: u32,
    /// `datallowconn` and not half dropped.
    pub connectable: bool,
    /// Named by `pgsub.database` (or that setting is empty), and not a template database (a
    /// subscription there would be copied into every database created from it).
    pub included: bool,
}

/// The supervisor's part of a database's shared-memory slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DbSlot {
    pub oid: u32,
    pub state: DbState,
    /// The launcher's pid (0 = none running).
    pub pid: i32,
    /// The supervisor holds a handle of a launcher it registered that has not exited.
    pub registered: bool,
    /// A pgsub function asked for a look at this database.
    pub wake: bool,
    /// Launchers started for it since the server started.
    pub probes: i64,
    pub last_probe_at: i64,
    /// The last launcher exited in `starting`/`running`: not before this time.
    pub next_start_at: i64,
}

impl DbSlot {
    fn has_launcher(&self) -> bool {
        self.pid > 0 || self.registered
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub now: i64,
    /// How long a database without the extension (or idle) waits for the next probe.
    pub recheck: i64,
    /// How long after a failed launcher the next one starts.
    pub retry: i64,
    /// Launchers in `starting` at once.
    pub max_probes: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Register a launcher for the database.
    Start { oid: u32 },
    /// SIGTERM to the launcher (its database is excluded or not connectable any more).
    Stop { oid: u32, pid: i32 },
    /// The database is gone: forget its slot and its subscriptions' slots.
    Forget { oid: u32 },
}

/// Decides one supervisor pass; `slots` holds every database seen (dropped ones included) and
/// is updated in place. New databases must already have a slot (state `Unknown`).
pub fn decide(dbs: &[Database], slots: &mut [DbSlot], limits: Limits) -> Vec<Action> {
    let mut actions = Vec::new();
    for slot in slots.iter_mut().filter(|s| s.oid != 0 && !dbs.iter().any(|d| d.oid == s.oid)) {
        if slot.pid > 0 {
            actions.push(Action::Stop { oid: slot.oid, pid: slot.pid });
        } else if !slot.registered {
            actions.push(Action::Forget { oid: slot.oid });
        }
    }
    let mut probing = slots.iter().filter(|s| s.oid != 0 && s.state == DbState::Starting && s.has_launcher()).count();
    for db in dbs {
        let Some(slot) = slots.iter_mut().find(|s| s.oid == db.oid) else { continue };
        let barred = if !db.connectable {
            Some(DbState::NotConnectable)
        } else if !db.included {
            Some(DbState::Excluded)
        } else {
            None
        };
        if let Some(state) = barred {
            if slot.pid > 0 {
                actions.push(Action::Stop { oid: db.oid, pid: slot.pid });
            }
            if !slot.has_launcher() {
                slot.state = state;
            }
            continue;
        }
        if slot.has_launcher() {
            continue;
        }
        let due = match slot.state {
            DbState::Unknown | DbState::Excluded | DbState::NotConnectable => true,
            // The last launcher exited without reporting a resting state: it failed.
            DbState::Starting | DbState::Running => {
                if slot.next_start_at == 0 {
                    slot.next_start_at = limits.now + limits.retry;
                }
                slot.wake || slot.next_start_at <= limits.now
            }
            DbState::Idle | DbState::NoExtension => slot.wake || limits.now - slot.last_probe_at >= limits.recheck,
        };
        if !due || probing >= limits.max_probes {
            continue;
        }
        actions.push(Action::Start { oid: db.oid });
        slot.state = DbState::Starting;
        slot.registered = true;
        slot.wake = false;
        slot.probes += 1;
        slot.last_probe_at = limits.now;
        slot.next_start_at = 0;
        probing += 1;
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000;
    const HOUR: i64 = 3600 * SEC;

    fn limits(now: i64) -> Limits {
        Limits { now, recheck: HOUR, retry: 5 * SEC, max_probes: 2 }
    }
    fn db(oid: u32) -> Database {
        Database { oid, connectable: true, included: true }
    }
    fn slot(oid: u32) -> DbSlot {
        DbSlot { oid, ..DbSlot::default() }
    }
    /// The launcher of `s` exits having found `state`.
    fn exits(s: &mut DbSlot, state: DbState) {
        s.registered = false;
        s.pid = 0;
        s.state = state;
    }

    #[test]
    fn new_databases_are_probed_a_few_at_a_time() {
        let dbs = [db(1), db(2), db(3)];
        let mut slots = [slot(1), slot(2), slot(3)];
        let a = decide(&dbs, &mut slots, limits(0));
        assert_eq!(a, vec![Action::Start { oid: 1 }, Action::Start { oid: 2 }]);
        assert_eq!(slots[2].state, DbState::Unknown);
        exits(&mut slots[0], DbState::NoExtension);
        let a = decide(&dbs, &mut slots, limits(SEC));
        assert_eq!(a, vec![Action::Start { oid: 3 }]);
        assert_eq!(slots.iter().map(|s| s.probes).collect::<Vec<_>>(), vec![1, 1, 1]);
    }

    #[test]
    fn no_extension_costs_one_probe_an_hour_unless_woken() {
        let dbs = [db(1)];
        let mut slots = [slot(1)];
        decide(&dbs, &mut slots, limits(0));
        exits(&mut slots[0], DbState::NoExtension);
        for t in 1..60 {
            assert!(decide(&dbs, &mut slots, limits(t * 60 * SEC - 1)).is_empty(), "minute {t}");
        }
        assert_eq!(decide(&dbs, &mut slots, limits(HOUR)), vec![Action::Start { oid: 1 }]);
        exits(&mut slots[0], DbState::NoExtension);
        // CREATE EXTENSION wakes it.
        slots[0].wake = true;
        assert_eq!(decide(&dbs, &mut slots, limits(HOUR + SEC)), vec![Action::Start { oid: 1 }]);
        assert!(!slots[0].wake);
        assert_eq!(slots[0].probes, 3);
    }

    #[test]
    fn a_failed_launcher_restarts_after_the_retry_delay() {
        let dbs = [db(1)];
        let mut slots = [slot(1)];
        decide(&dbs, &mut slots, limits(0));
        exits(&mut slots[0], DbState::Running);
        assert!(decide(&dbs, &mut slots, limits(SEC)).is_empty());
        assert!(decide(&dbs, &mut slots, limits(5 * SEC)).is_empty());
        assert_eq!(decide(&dbs, &mut slots, limits(6 * SEC)), vec![Action::Start { oid: 1 }]);
    }

    #[test]
    fn a_running_launcher_is_left_alone() {
        let dbs = [db(1)];
        let mut slots = [DbSlot { pid: 10, state: DbState::Running, wake: true, ..slot(1) }];
        assert!(decide(&dbs, &mut slots, limits(0)).is_empty());
        assert!(slots[0].wake, "its launcher clears the flag when it reads the catalog");
    }

    #[test]
    fn excluded_and_unconnectable_databases_get_no_launcher() {
        let dbs = [Database { included: false, ..db(1) }, Database { connectable: false, ..db(2) }];
        let mut slots = [DbSlot { pid: 10, state: DbState::Running, ..slot(1) }, slot(2)];
        assert_eq!(decide(&dbs, &mut slots, limits(0)), vec![Action::Stop { oid: 1, pid: 10 }]);
        assert_eq!(slots[1].state, DbState::NotConnectable);
        exits(&mut slots[0], DbState::Running);
        assert!(decide(&dbs, &mut slots, limits(SEC)).is_empty());
        assert_eq!(slots[0].state, DbState::Excluded);
        // Allowed again: probed at once.
        assert_eq!(decide(&[db(1)], &mut slots[..1], limits(2 * SEC)), vec![Action::Start { oid: 1 }]);
    }

    #[test]
    fn dropped_databases_stop_then_are_forgotten() {
        let mut slots = [DbSlot { pid: 10, state: DbState::Running, ..slot(1) }];
        assert_eq!(decide(&[], &mut slots, limits(0)), vec![Action::Stop { oid: 1, pid: 10 }]);
        slots[0].pid = 0;
        assert_eq!(decide(&[], &mut slots, limits(SEC)), vec![Action::Forget { oid: 1 }]);
    }

    #[test]
    fn states_have_the_names_the_view_shows() {
        assert_eq!(DbState::NoExtension.as_str(), "no_extension");
        assert_eq!(DbState::NotConnectable.as_str(), "not_connectable");
        assert_eq!(DbState::default(), DbState::Unknown);
    }
}
