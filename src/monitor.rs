//! Monitoring state too large for the main shared-memory struct (`shmem.rs`): per-table counters
//! of every subscribed table of the server (`pgsub.stat_subscription_table`) and the lag history
//! of every subscription (`pgsub.lag_history`, `history.rs`).
//!
//! It is one extra shared-memory region (about 12 MB), requested in `_PG_init` and zeroed when
//! the postmaster creates it (all-zero is every entry's empty state, so it is never built on a
//! stack). It has no lock of its own: it is read and written only under the `shmem::SHARED`
//! lock, which the functions here take as a `&Shared` / `&mut Shared` argument.
//!
//! Table entries: a fixed array of [`MAX_TABLES`] (subscription, table) entries, claimed the first
//! time the apply worker or a sync worker publishes a count for the table. An entry whose
//! subscription has no slot any more is free. When all are taken, tables beyond are not
//! counted and the worker logs a WARNING once. Entries go when the subscription is dropped (its
//! slot claimed anew clears them, as does a new slot for the same id), when its apply worker
//! starts without the table (refresh removed it), and are zeroed by `pgsub.reset_stats`.
//!
//! Lag rings: ring `i` belongs to the subscription in `Shared.slots[i]` (it records the subid it
//! belongs to and is reset when another subscription holds the slot).
use crate::shmem::{self, Shared, MAX_SUBSCRIPTIONS};
use pgrx::prelude::*;
use pgsub_core::rates::LagRing;
use std::sync::atomic::{AtomicPtr, Ordering};

/// (subscription, table) entries server-wide.
pub const MAX_TABLES: usize = 8192;
/// Conflict types, as PostgreSQL 18 names them (`pg_stat_subscription_stats.confl_*`).
pub const N_CONFLICTS: usize = 7;

/// What was applied to one table (also a worker's pending counts, `progress::Counters`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TableCounts {
    pub inserts: i64,
    pub updates: i64,
    pub deletes: i64,
    pub truncates: i64,
    /// Conflicts by type, in `pgsub_core::state::ConflictType` order.
    pub conflicts: [i64; N_CONFLICTS],
}

impl TableCounts {
    pub fn add(&mut self, o: &TableCounts) {
        self.inserts += o.inserts;
        self.updates += o.updates;
        self.deletes += o.deletes;
        self.truncates += o.truncates;
        for (a, b) in self.conflicts.iter_mut().zip(o.conflicts) {
            *a += b;
        }
    }

    /// Whether a change (not only a conflict) was counted.
    pub fn changed(&self) -> bool {
        self.inserts + self.updates + self.deletes + self.truncates > 0
    }
}

/// One subscribed table's counters; `subid` 0 = free.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct TableEntry {
    pub subid: i32,
    pub relid: u32,
    pub counts: TableCounts,
    /// Rows loaded by the table's initial copies.
    pub rows_copied: i64,
    /// When a change to the table was last applied (TimestampTz, 0 = never).
    pub last_change_at: i64,
}

#[repr(C)]
pub struct Region {
    pub tables: [TableEntry; MAX_TABLES],
    pub history: [LagRing; MAX_SUBSCRIPTIONS],
}

static REGION: AtomicPtr<Region> = AtomicPtr::new(std::ptr::null_mut());
static mut PREV_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP: pg_sys::shmem_startup_hook_type = None;
const NAME: &std::ffi::CStr = c"pgsub_monitor";

/// Requests the region (from `_PG_init`, while preloading).
pub fn init() {
    // SAFETY: hooks are installed once, in the postmaster, before shared memory is created.
    unsafe {
        PREV_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(on_request);
        PREV_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(on_startup);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_request() {
    // SAFETY: called by the postmaster in its shmem_request phase.
    unsafe {
        if let Some(prev) = PREV_REQUEST {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(std::mem::size_of::<Region>());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_startup() {
    // SAFETY: creates or attaches the region under AddinShmemInitLock, as PostgreSQL's
    // extensions do; a new region is zeroed (every entry empty).
    unsafe {
        if let Some(prev) = PREV_STARTUP {
            prev();
        }
        let lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let p = pg_sys::ShmemInitStruct(NAME.as_ptr(), std::mem::size_of::<Region>(), &mut found).cast::<Region>();
        if !found {
            std::ptr::write_bytes(p.cast::<u8>(), 0, std::mem::size_of::<Region>());
        }
        REGION.store(p, Ordering::Release);
        pg_sys::LWLockRelease(lock);
    }
}

/// The region, read under the shared lock `_g` holds.
pub fn region(_g: &Shared) -> Option<&Region> {
    // SAFETY: created at server start and never freed; the caller holds SHARED.
    unsafe { REGION.load(Ordering::Acquire).as_ref() }
}

/// The region, written under the exclusive lock `_g` holds.
pub fn region_mut(_g: &mut Shared) -> Option<&mut Region> {
    // SAFETY: as `region`, and the caller holds SHARED exclusively (so no one else reads).
    unsafe { REGION.load(Ordering::Acquire).as_mut() }
}

impl Region {
    /// The entry of (subid, relid), claiming a free one (None when all are taken). `live` says
    /// which subscriptions have a slot: entries of others are free.
    fn claim(&mut self, subid: i32, relid: u32, live: &[i32], hint: Option<usize>) -> Option<(usize, &mut TableEntry)> {
        let hinted = hint.filter(|&i| self.tables.get(i).is_some_and(|e| e.subid == subid && e.relid == relid));
        let idx = match hinted.or_else(|| self.tables.iter().position(|e| e.subid == subid && e.relid == relid)) {
            Some(i) => i,
            None => {
                let i = self.tables.iter().position(|e| e.subid == 0 || !live.contains(&e.subid))?;
                self.tables[i] = TableEntry { subid, relid, ..TableEntry::default() };
                i
            }
        };
        Some((idx, &mut self.tables[idx]))
    }
}

fn live_subids(g: &Shared) -> Vec<i32> {
    g.slots.iter().filter(|s| s.subid != 0).map(|s| s.subid).collect()
}

/// Adds a worker's per-table counts (`progress.rs publish`, under the exclusive lock). `hints`
/// remembers each table's entry index for the next time (the array is not searched per commit).
/// Returns false when some table found no free entry.
pub fn add_counts<'a>(
    g: &mut Shared,
    subid: i32,
    counts: impl Iterator<Item = (&'a u32, &'a TableCounts)>,
    at: i64,
    hints: &mut std::collections::HashMap<u32, usize>,
) -> bool {
    let live = live_subids(g);
    let Some(r) = region_mut(g) else { return true };
    let mut all = true;
    for (&relid, c) in counts {
        match r.claim(subid, relid, &live, hints.get(&relid).copied()) {
            Some((i, e)) => {
                hints.insert(relid, i);
                e.counts.add(c);
                if c.changed() {
                    e.last_change_at = at;
                }
            }
            None => all = false,
        }
    }
    all
}

/// Counts the rows of a committed initial copy. Returns false when the table found no entry.
pub fn add_copied(subid: i32, relid: u32, rows: i64) -> bool {
    if !shmem::available() {
        return true;
    }
    let mut g = shmem::SHARED.exclusive();
    let live = live_subids(&g);
    let Some(r) = region_mut(&mut g) else { return true };
    match r.claim(subid, relid, &live, None) {
        Some((_, e)) => {
            e.rows_copied += rows;
            true
        }
        None => false,
    }
}

/// Counts a conflict an apply error was (a unique violation) on its table.
pub fn add_conflict(subid: i32, relid: u32, conflict: Option<pgsub_core::state::ConflictType>) {
    let Some(t) = conflict else { return };
    let mut g = shmem::SHARED.exclusive();
    let live = live_subids(&g);
    if let Some((_, e)) = region_mut(&mut g).and_then(|r| r.claim(subid, relid, &live, None)) {
        e.counts.conflicts[t.index()] += 1;
    }
}

/// Frees the entries of a subscription (its slot is new: a dropped one's id reused) and resets
/// its lag ring `slot_idx`.
pub fn forget_subscription(g: &mut Shared, subid: i32, slot_idx: usize) {
    let Some(r) = region_mut(g) else { return };
    for e in r.tables.iter_mut().filter(|e| e.subid == subid) {
        *e = TableEntry::default();
    }
    if let Some(h) = r.history.get_mut(slot_idx) {
        h.reset(subid);
    }
}

/// Frees the entries of a subscription's tables that are not in `relids` (its apply worker
/// starts with this table list).
pub fn retain_tables(subid: i32, relids: &[u32]) {
    let mut g = shmem::SHARED.exclusive();
    let Some(r) = region_mut(&mut g) else { return };
    for e in r.tables.iter_mut().filter(|e| e.subid == subid && !relids.contains(&e.relid)) {
        *e = TableEntry::default();
    }
}

/// Zeroes the counters of a subscription's tables (`pgsub.reset_stats`).
pub fn reset_tables(g: &mut Shared, subid: i32) {
    let Some(r) = region_mut(g) else { return };
    for e in r.tables.iter_mut().filter(|e| e.subid == subid) {
        *e = TableEntry { subid: e.subid, relid: e.relid, ..TableEntry::default() };
    }
}

/// Every table entry of subscription `subid` (statistics file).
pub fn entries_of(g: &Shared, subid: i32) -> Vec<TableEntry> {
    region(g).map(|r| r.tables.iter().filter(|e| e.subid == subid).copied().collect()).unwrap_or_default()
}

/// Puts back a saved entry (statistics file, at start). False when none is free.
pub fn restore_entry(g: &mut Shared, saved: &TableEntry) -> bool {
    let live = live_subids(g);
    let Some(r) = region_mut(g) else { return true };
    match r.claim(saved.subid, saved.relid, &live, None) {
        Some((_, e)) => {
            *e = *saved;
            true
        }
        None => false,
    }
}

/// Per-table counters of the subscriptions the caller may see (`pgsub.stat_subscription_table`
/// joins them with the catalog).
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn _stat_tables() -> TableIterator<
    'static,
    (
        name!(subid, i32),
        name!(relid, pg_sys::Oid),
        name!(inserts, i64),
        name!(updates, i64),
        name!(deletes, i64),
        name!(truncates, i64),
        name!(conflicts, Vec<i64>),
        name!(rows_copied, i64),
        name!(last_change_at, i64),
    ),
> {
    let mut rows = Vec::new();
    if shmem::available() {
        let all = crate::stats::sees_all_databases();
        let g = shmem::SHARED.share();
        let subs: Vec<i32> = crate::stats::visible_slots(&g, all).map(|s| s.subid).collect();
        if let Some(r) = region(&g) {
            for e in r.tables.iter().filter(|e| e.subid != 0 && subs.contains(&e.subid)) {
                let c = &e.counts;
                rows.push((
                    e.subid,
                    pg_sys::Oid::from(e.relid),
                    c.inserts,
                    c.updates,
                    c.deletes,
                    c.truncates,
                    c.conflicts.to_vec(),
                    e.rows_copied,
                    e.last_change_at,
                ));
            }
        }
    }
    TableIterator::new(rows)
}
