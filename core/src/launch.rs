//! The launcher's decision: given the subscriptions in the catalog, what shared memory says of
//! their workers, and the clock, which workers to stop and start and what each subscription's
//! status becomes. A pure function: `src/launcher.rs` reads the inputs, calls [`decide`], writes
//! the updated slots back and carries out the actions.
//!
//! For each subscription:
//!   * dropped → stop its worker; forget its slot once no worker is left;
//!   * disabled → stop its worker; once it is gone the status is `disabled`;
//!   * catalog row changed since its worker started (conninfo, publications, options) → restart
//!     it (stop it, its table synchronization workers going on; a later pass starts a fresh one);
//!   * enabled without a worker → start one, unless its last worker failed recently (restart
//!     `retry` after that worker was started, doubling per consecutive failure, at most
//!     [`MAX_BACKOFF`]×: a worker that ran longer than that — a connection the publisher ended
//!     after hours of streaming — restarts at once, as native's launcher counts
//!     `wal_retrieve_retry_interval` from the last start), a backend holds it (drop
//!     or refresh in progress), or the worker cap is reached: then `waiting_for_worker`, with a
//!     warning once per wait.
//!
//! Each database has its own launcher; the cap (`pgsub.max_apply_workers`) is server-wide. A
//! launcher decides for its own database's slots and is told how many workers the others run
//! and since when their subscriptions wait: a free worker goes to the subscription that has
//! waited longest, whichever database it is in (first come, first served).
use crate::state::Status;

/// A subscription as the catalog has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sub {
    pub subid: i32,
    pub enabled: bool,
    /// Fingerprint of the catalog row: a running worker started with another one is restarted.
    pub config_hash: u64,
}

/// The launcher's part of a subscription's shared-memory slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub subid: i32,
    pub status: Status,
    /// Pid of the subscription's running worker (0 = none). The worker clears it when it exits.
    pub pid: i32,
    /// The launcher has a handle of a worker it registered that has not stopped yet (it may not
    /// have started, so its pid is not in the slot yet).
    pub registered: bool,
    /// The last worker ended with an error: the next start waits (backoff).
    pub failed: bool,
    pub failures: i32,
    pub next_start_at: i64,
    pub config_hash: u64,
    /// A backend that holds the subscription (drop or refresh in progress) is alive.
    pub held: bool,
    /// The "waiting for a worker" warning was logged for the current wait.
    pub warned: bool,
    /// When the current wait for a worker began (0 = not waiting).
    pub waiting_since: i64,
    /// When the launcher last registered a worker for it (0 = never): the backoff after a
    /// failure counts from there.
    pub launched_at: i64,
}

impl Slot {
    fn has_worker(&self) -> bool {
        self.pid > 0 || self.registered
    }
}

/// Limits and the clock.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Now, in PostgreSQL's microseconds.
    pub now: i64,
    /// `pgsub.retry_interval` in microseconds (≥ 1).
    pub retry: i64,
    /// `pgsub.max_apply_workers`, server-wide.
    pub max_workers: usize,
}

/// What the launchers of the other databases hold.
#[derive(Clone, Debug, Default)]
pub struct Others {
    /// Apply workers they run (or registered).
    pub running: usize,
    /// When each of their waiting subscriptions began to wait.
    pub waiting_since: Vec<i64>,
}

/// Why a subscription waits for a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitReason {
    /// `pgsub.max_apply_workers` is reached.
    Cap,
    /// Registering the worker failed: `max_worker_processes` is exhausted.
    NoBackgroundWorkerSlot,
}

/// What the launcher does, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stop the worker with this pid and the subscription's table synchronization workers (the
    /// subscription was disabled or dropped).
    Stop { subid: i32, pid: i32 },
    /// Stop the worker with this pid to start it again with the changed catalog row; the table
    /// synchronization workers go on (a copy is not started over), as natively, and the next
    /// apply worker takes them over.
    Restart { subid: i32, pid: i32 },
    /// The subscription was dropped and has no worker left: free its slot.
    Forget { subid: i32 },
    /// Register a worker for the subscription.
    Start { subid: i32 },
    /// Log that the subscription waits for a worker (once per wait).
    WarnWaiting { subid: i32, reason: WaitReason },
}

/// Decides one launcher pass. `slots` holds one slot per subscription the launcher has seen
/// (dropped ones included) and is updated in place.
pub fn decide(subs: &[Sub], slots: &mut [Slot], limits: Limits, others: &Others) -> Vec<Action> {
    let mut actions = Vec::new();
    for slot in slots.iter_mut().filter(|s| s.subid != 0 && !subs.iter().any(|x| x.subid == s.subid)) {
        if slot.pid > 0 {
            actions.push(Action::Stop { subid: slot.subid, pid: slot.pid });
        } else if !slot.registered {
            actions.push(Action::Forget { subid: slot.subid });
        }
    }
    let mut running = others.running + slots.iter().filter(|s| s.subid != 0 && s.has_worker()).count();
    // Those waiting longest are considered first, then the rest in catalog order.
    let since = |subid: i32| {
        slots.iter().find(|s| s.subid == subid).map(|s| s.waiting_since).filter(|&t| t > 0).unwrap_or(i64::MAX)
    };
    let mut order: Vec<&Sub> = subs.iter().collect();
    order.sort_by_key(|s| since(s.subid));
    for sub in order {
        let Some(slot) = slots.iter_mut().find(|s| s.subid == sub.subid) else { continue };
        if !sub.enabled {
            disable(slot, &mut actions);
            continue;
        }
        if slot.has_worker() {
            if slot.pid > 0 && slot.config_hash != sub.config_hash {
                actions.push(Action::Restart { subid: sub.subid, pid: slot.pid });
            }
            continue;
        }
        if slot.status == Status::Disabled {
            slot.status = Status::Starting;
        }
        if slot.failed {
            back_off(slot, limits);
        }
        if slot.next_start_at > limits.now || slot.held {
            continue;
        }
        // Subscriptions of other databases that waited longer come first.
        let since = if slot.waiting_since > 0 { slot.waiting_since } else { limits.now };
        let ahead = others.waiting_since.iter().filter(|&&t| t < since).count();
        if running + ahead >= limits.max_workers {
            waiting(slot, WaitReason::Cap, &mut actions, limits.now);
            continue;
        }
        actions.push(Action::Start { subid: sub.subid });
        started(slot, sub.config_hash, limits.now);
        running += 1;
    }
    actions
}

fn disable(slot: &mut Slot, actions: &mut Vec<Action>) {
    if slot.pid > 0 {
        actions.push(Action::Stop { subid: slot.subid, pid: slot.pid });
    }
    if !slot.has_worker() {
        slot.status = Status::Disabled;
        slot.waiting_since = 0;
        slot.warned = false;
        slot.failures = 0;
        slot.failed = false;
        slot.next_start_at = 0;
    }
}

/// The worker of a [`Action::Start`] is registered: the subscription no longer waits.
pub fn registered(slot: &mut Slot) {
    slot.warned = false;
    slot.waiting_since = 0;
}

/// The longest wait before a retry, in multiples of `retry`. Native retries every
/// `wal_retrieve_retry_interval` (5 s); doubling up to 4× (20 s by default) spares the publisher
/// and the log a tight loop while an operator's fix (a conflicting row removed) still takes at
/// most that long to be picked up.
pub const MAX_BACKOFF: i64 = 4;

/// The wait after the `failures`-th consecutive failure: `retry` × 2^(failures-1), at most
/// [`MAX_BACKOFF`] × `retry`.
pub fn retry_delay(retry: i64, failures: i32) -> i64 {
    let factor = 1i64 << (failures.saturating_sub(1)).clamp(0, 30);
    retry.saturating_mul(factor.min(MAX_BACKOFF))
}

/// The delays waited between the first `n + 1` failures of a streak (after each of the first
/// `n`): how long before the last failure the streak began, at least (its runs not counted).
pub fn total_delay(retry: i64, n: i32) -> i64 {
    (1..=n.clamp(0, 10_000)).map(|k| retry_delay(retry, k)).fold(0i64, i64::saturating_add)
}

/// The last run failed: the next start comes [`retry_delay`] after the failed worker's (at once
/// when it ran that long). Between two failures there is so always at least the delay, which
/// `total_delay`'s estimate of a streak's start relies on.
fn back_off(slot: &mut Slot, limits: Limits) {
    slot.failed = false;
    slot.failures = slot.failures.saturating_add(1);
    let from = if slot.launched_at > 0 { slot.launched_at.min(limits.now) } else { limits.now };
    slot.next_start_at = from.saturating_add(retry_delay(limits.retry, slot.failures));
    slot.status = Status::Error;
}

/// The subscription waits for a worker slot.
pub fn waiting(slot: &mut Slot, reason: WaitReason, actions: &mut Vec<Action>, now: i64) {
    slot.status = Status::WaitingForWorker;
    if slot.waiting_since == 0 {
        slot.waiting_since = now;
    }
    if !slot.warned {
        slot.warned = true;
        actions.push(Action::WarnWaiting { subid: slot.subid, reason });
    }
}

/// A worker is to be registered. The wait, if any, goes on until the registration succeeds
/// ([`registered`]): when no background worker slot is free, the launcher learns it only then,
/// and the wait's start and its one warning must survive the attempt (they were cleared here,
/// and a subscription waiting for a slot was warned about once a second, its `since` always now).
fn started(slot: &mut Slot, config_hash: u64, now: i64) {
    slot.launched_at = now;
    slot.status = Status::Starting;
    slot.config_hash = config_hash;
    slot.next_start_at = 0;
    slot.registered = true;
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000;

    fn limits(now: i64, max_workers: usize) -> Limits {
        Limits { now, retry: 5 * SEC, max_workers }
    }

    fn sub(subid: i32, enabled: bool) -> Sub {
        Sub { subid, enabled, config_hash: 42 }
    }

    fn slot(subid: i32) -> Slot {
        Slot { subid, config_hash: 42, ..Slot::default() }
    }

    #[test]
    fn total_delay_sums_the_waits_between_failures() {
        // 5 s, 10 s, 20 s, then 20 s each (4× at most).
        assert_eq!(total_delay(5 * SEC, 0), 0);
        assert_eq!(total_delay(5 * SEC, 1), 5 * SEC);
        assert_eq!(total_delay(5 * SEC, 4), 55 * SEC);
        assert_eq!(total_delay(5 * SEC, -3), 0);
    }

    #[test]
    fn enabled_subscriptions_get_a_worker_within_the_cap() {
        let subs = [sub(1, true), sub(2, true), sub(3, true)];
        let mut slots = [slot(1), slot(2), slot(3)];
        let a = decide(&subs, &mut slots, limits(0, 2), &Others::default());
        assert_eq!(
            a,
            vec![
                Action::Start { subid: 1 },
                Action::Start { subid: 2 },
                Action::WarnWaiting { subid: 3, reason: WaitReason::Cap }
            ]
        );
        assert_eq!(slots[2].status, Status::WaitingForWorker);
        assert!(slots[0].registered && slots[1].registered);
        // Warned once per wait.
        let a = decide(&subs, &mut slots, limits(1, 2), &Others::default());
        assert!(a.is_empty(), "{a:?}");
        // A worker exits: the one that waited starts first, the other now waits (and warns).
        slots[0].registered = false;
        let a = decide(&subs, &mut slots, limits(2, 2), &Others::default());
        assert_eq!(a, vec![Action::Start { subid: 3 }, Action::WarnWaiting { subid: 1, reason: WaitReason::Cap }]);
        assert_eq!(slots[0].waiting_since, 2);
        // Its wait ends once the worker is registered.
        assert!(slots[2].warned, "still the wait's warning until registered");
        registered(&mut slots[2]);
        assert!(!slots[2].warned && slots[2].waiting_since == 0);
    }

    #[test]
    fn a_wait_for_a_background_worker_slot_is_warned_about_once_and_keeps_its_start() {
        // The launcher learns that max_worker_processes is exhausted only when registering: each
        // pass decides a start, the registration fails, and the slot waits again.
        let subs = [sub(1, true)];
        let mut slots = [slot(1)];
        let mut warnings = 0;
        for now in [10, 20, 30, 40] {
            let mut a = decide(&subs, &mut slots, limits(now, 4), &Others::default());
            assert_eq!(a, vec![Action::Start { subid: 1 }]);
            // Registration failed.
            slots[0].registered = false;
            waiting(&mut slots[0], WaitReason::NoBackgroundWorkerSlot, &mut a, now);
            warnings += a.iter().filter(|x| matches!(x, Action::WarnWaiting { .. })).count();
            assert_eq!(slots[0].status, Status::WaitingForWorker);
            assert_eq!(slots[0].waiting_since, 10, "the wait began at the first attempt");
        }
        assert_eq!(warnings, 1, "warned once per wait");
        // A slot frees: registered, the wait is over; a later wait warns again.
        decide(&subs, &mut slots, limits(50, 4), &Others::default());
        registered(&mut slots[0]);
        assert!(!slots[0].warned && slots[0].waiting_since == 0);
        slots[0].registered = false;
        let mut a = decide(&subs, &mut slots, limits(60, 4), &Others::default());
        slots[0].registered = false;
        waiting(&mut slots[0], WaitReason::NoBackgroundWorkerSlot, &mut a, 60);
        assert!(a.contains(&Action::WarnWaiting { subid: 1, reason: WaitReason::NoBackgroundWorkerSlot }));
        assert_eq!(slots[0].waiting_since, 60);
    }

    #[test]
    fn a_failed_worker_restarts_after_a_growing_delay() {
        let subs = [sub(1, true)];
        let mut slots = [Slot { failed: true, failures: 0, ..slot(1) }];
        assert!(decide(&subs, &mut slots, limits(0, 4), &Others::default()).is_empty());
        assert_eq!(slots[0].status, Status::Error);
        assert_eq!(slots[0].next_start_at, 5 * SEC);
        assert_eq!(decide(&subs, &mut slots, limits(5 * SEC, 4), &Others::default()), vec![Action::Start { subid: 1 }]);
        // Second and later failures: 10 s, then at most 20 s.
        let mut delays = Vec::new();
        for _ in 0..5 {
            // Each worker fails as soon as it starts.
            let now = 1000 * SEC;
            slots[0].launched_at = now;
            slots[0].registered = false;
            slots[0].failed = true;
            decide(&subs, &mut slots, limits(now, 4), &Others::default());
            delays.push((slots[0].next_start_at - now) / SEC);
        }
        assert_eq!(delays, vec![10, 20, 20, 20, 20]);
    }

    #[test]
    fn the_delay_counts_from_the_failed_workers_start() {
        let subs = [sub(1, true)];
        let mut slots = [slot(1)];
        assert_eq!(
            decide(&subs, &mut slots, limits(100 * SEC, 4), &Others::default()),
            vec![Action::Start { subid: 1 }]
        );
        assert_eq!(slots[0].launched_at, 100 * SEC);
        // It streamed for an hour, then the publisher ended the connection: restarted at once.
        slots[0].registered = false;
        slots[0].failed = true;
        let later = 3700 * SEC;
        assert_eq!(decide(&subs, &mut slots, limits(later, 4), &Others::default()), vec![Action::Start { subid: 1 }]);
        assert_eq!(slots[0].failures, 1);
        // The new one fails 2 s after its start: the next waits 10 s from that start.
        slots[0].registered = false;
        slots[0].failed = true;
        assert!(decide(&subs, &mut slots, limits(later + 2 * SEC, 4), &Others::default()).is_empty());
        assert_eq!(slots[0].status, Status::Error);
        assert_eq!(slots[0].next_start_at, later + 10 * SEC);
        // A worker that failed 3 s into a 5-s delay waits out the rest only.
        let mut slots = [Slot { failed: true, launched_at: 50 * SEC, ..slot(1) }];
        assert!(decide(&subs, &mut slots, limits(53 * SEC, 4), &Others::default()).is_empty());
        assert_eq!(slots[0].next_start_at, 55 * SEC);
    }

    #[test]
    fn disabling_stops_the_worker_then_shows_disabled() {
        let subs = [sub(1, false)];
        let mut slots = [Slot { pid: 100, status: Status::Streaming, failures: 3, ..slot(1) }];
        assert_eq!(
            decide(&subs, &mut slots, limits(0, 4), &Others::default()),
            vec![Action::Stop { subid: 1, pid: 100 }]
        );
        assert_eq!(slots[0].status, Status::Streaming, "until the worker is gone");
        slots[0].pid = 0;
        assert!(decide(&subs, &mut slots, limits(1, 4), &Others::default()).is_empty());
        assert_eq!(slots[0].status, Status::Disabled);
        assert_eq!(slots[0].failures, 0);
        // Enabled again: starts at once.
        assert_eq!(
            decide(&[sub(1, true)], &mut slots, limits(2, 4), &Others::default()),
            vec![Action::Start { subid: 1 }]
        );
        assert_eq!(slots[0].status, Status::Starting);
    }

    #[test]
    fn a_changed_catalog_row_restarts_the_worker() {
        let mut slots = [Slot { pid: 100, config_hash: 1, ..slot(1) }];
        let a =
            decide(&[Sub { subid: 1, enabled: true, config_hash: 2 }], &mut slots, limits(0, 4), &Others::default());
        assert_eq!(a, vec![Action::Restart { subid: 1, pid: 100 }]);
        // A registered worker that has not started yet is left alone.
        let mut slots = [Slot { registered: true, config_hash: 1, ..slot(1) }];
        assert!(decide(
            &[Sub { subid: 1, enabled: true, config_hash: 2 }],
            &mut slots,
            limits(0, 4),
            &Others::default()
        )
        .is_empty());
    }

    #[test]
    fn dropped_subscriptions_stop_then_free_their_slot() {
        let mut slots = [Slot { pid: 7, ..slot(9) }, slot(1)];
        let a = decide(&[sub(1, true)], &mut slots, limits(0, 4), &Others::default());
        assert_eq!(a, vec![Action::Stop { subid: 9, pid: 7 }, Action::Start { subid: 1 }]);
        slots[0].pid = 0;
        let a = decide(&[sub(1, true)], &mut slots, limits(1, 4), &Others::default());
        assert_eq!(a, vec![Action::Forget { subid: 9 }]);
    }

    #[test]
    fn workers_of_dropped_subscriptions_count_against_the_cap() {
        let mut slots = [Slot { pid: 7, ..slot(9) }, slot(1)];
        let a = decide(&[sub(1, true)], &mut slots, limits(0, 1), &Others::default());
        assert_eq!(
            a,
            vec![Action::Stop { subid: 9, pid: 7 }, Action::WarnWaiting { subid: 1, reason: WaitReason::Cap }]
        );
    }

    #[test]
    fn a_held_subscription_does_not_start() {
        let mut slots = [Slot { held: true, ..slot(1) }];
        assert!(decide(&[sub(1, true)], &mut slots, limits(0, 4), &Others::default()).is_empty());
        slots[0].held = false;
        assert_eq!(
            decide(&[sub(1, true)], &mut slots, limits(0, 4), &Others::default()),
            vec![Action::Start { subid: 1 }]
        );
    }

    #[test]
    fn the_cap_is_server_wide_and_the_longest_wait_goes_first() {
        // Another database runs one worker of two: one start is left.
        let others = Others { running: 1, waiting_since: vec![] };
        let subs = [sub(1, true), sub(2, true)];
        let mut slots = [slot(1), slot(2)];
        let a = decide(&subs, &mut slots, limits(10, 2), &others);
        assert_eq!(a, vec![Action::Start { subid: 1 }, Action::WarnWaiting { subid: 2, reason: WaitReason::Cap }]);
        assert_eq!(slots[1].waiting_since, 10);
        // A worker frees, but a subscription of another database has waited since 5: it goes first.
        slots[0].registered = false;
        let others = Others { running: 1, waiting_since: vec![5] };
        let a = decide(&subs, &mut slots, limits(20, 2), &others);
        assert_eq!(a, vec![Action::WarnWaiting { subid: 1, reason: WaitReason::Cap }]);
        assert_eq!(slots[0].status, Status::WaitingForWorker);
        // One that began waiting later does not: ours (since 10) starts.
        let others = Others { running: 1, waiting_since: vec![15] };
        let a = decide(&subs, &mut slots, limits(30, 3), &others);
        assert_eq!(a, vec![Action::Start { subid: 2 }]);
        assert_eq!(slots[1].waiting_since, 10, "waiting until its worker is registered");
        registered(&mut slots[1]);
        assert_eq!(slots[1].waiting_since, 0, "no longer waiting");
    }
}
