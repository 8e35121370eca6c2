//! Which tables a subscription applies changes to, and whether a transaction's changes apply to
//! a table yet: each table's synchronization state (`pgsub.sub_rel`, the diagram in
//! `pgsub_core::state`) as the apply worker and a sync worker's catch-up see it.
use crate::catalog::{SubRel, SyncState};
use crate::report;
use pgrx::prelude::*;
use pgsub_proto::Lsn;
use std::collections::HashMap;

type Code = PgSqlErrorCode;

/// Which tables the subscription applies changes to, by remote (schema, name), with their local
/// table (`relid`) and synchronization state.
pub struct TableStates {
    states: HashMap<(String, String), (SyncState, Option<Lsn>)>,
    relids: HashMap<u32, (String, String)>,
    /// How many of `states` are not ready: kept with every change, so that the receive loop's
    /// question between transactions (`any_syncing`) costs nothing on a subscription of many
    /// tables.
    not_ready: usize,
    /// Every table of the subscription is here (not a sync worker's one table).
    whole: bool,
    /// Local tables whose remote name changed here (`rename`, `swap`) and is not yet in
    /// `pgsub.sub_rel`: written between transactions (`take_renamed`), never inside a remote
    /// transaction, which may be rolled back or prepared (and would hold the catalog rows).
    renamed: Vec<u32>,
}

impl TableStates {
    /// Every table of the subscription.
    pub fn new(rels: &[SubRel]) -> Self {
        let states: HashMap<(String, String), (SyncState, Option<Lsn>)> = rels
            .iter()
            .map(|r| ((r.remote_schema.clone(), r.remote_name.clone()), (r.sync_state, r.state_lsn)))
            .collect();
        TableStates {
            not_ready: states.values().filter(|(st, _)| *st != SyncState::Ready).count(),
            states,
            relids: rels.iter().map(|r| (r.relid, (r.remote_schema.clone(), r.remote_name.clone()))).collect(),
            whole: true,
            renamed: Vec::new(),
        }
    }

    /// Sets one table's state, keeping `not_ready` right.
    fn put(&mut self, key: (String, String), value: (SyncState, Option<Lsn>)) {
        let was_ready = self.states.get(&key).is_none_or(|(st, _)| *st == SyncState::Ready);
        let is_ready = value.0 == SyncState::Ready;
        self.states.insert(key, value);
        match (was_ready, is_ready) {
            (true, false) => self.not_ready += 1,
            (false, true) => self.not_ready -= 1,
            _ => {}
        }
    }

    /// A sync worker's one table.
    pub fn only(rel: SubRel) -> Self {
        TableStates { whole: false, ..Self::new(&[rel]) }
    }

    /// In a sync worker: a table other than its own by name, which may be its own renamed on
    /// both sides (`apply::follow_rename` tells).
    pub(super) fn maybe_renamed_own(&self, schema: &str, name: &str) -> bool {
        !self.whole
            && schema != crate::api::PGSUB_SCHEMA
            && !self.states.contains_key(&(schema.to_string(), name.to_string()))
    }

    /// The publisher sends changes of a table that is not the subscription's: renamed or moved
    /// there, or added to a publication since the table list was last refreshed.
    pub(super) fn unlisted(&self, schema: &str, name: &str) -> bool {
        self.whole
            && (schema == crate::api::PGSUB_SCHEMA
                || !self.states.contains_key(&(schema.to_string(), name.to_string())))
    }

    /// Marks synchronized tables whose copy point the stream has passed as ready (in the current
    /// transaction, so the state moves together with the applied position).
    pub(super) fn mark_ready(&mut self, subid: i32, end: Lsn) {
        let due: Vec<(String, String)> = self
            .states
            .iter()
            .filter(|(_, (st, lsn))| st.ready_after(lsn.map(|l| l.0), end.0))
            .map(|(k, _)| k.clone())
            .collect();
        for (schema, name) in due {
            // By local table when known: a rename not yet written (`renamed`) leaves the
            // catalog's name behind the one here.
            let r = match self.relid_of(&schema, &name) {
                Some(relid) => crate::catalog::set_sync_state(subid, relid, SyncState::Ready, None, None),
                None => crate::catalog::set_table_state(subid, &schema, &name, SyncState::Ready),
            };
            if let Err(e) = r {
                report::error(Code::ERRCODE_INTERNAL_ERROR, format!("updating pgsub.sub_rel: {e}"), None, None);
            }
            self.put((schema, name), (SyncState::Ready, None));
        }
    }

    pub(super) fn any_synchronized(&self) -> bool {
        self.states.values().any(|(st, _)| *st == SyncState::SyncDone)
    }

    pub(super) fn any_ready_after(&self, end: Lsn) -> bool {
        self.states.values().any(|(st, lsn)| st.ready_after(lsn.map(|l| l.0), end.0))
    }

    /// Some table is not ready yet (being synchronized, or synchronized and not taken over).
    pub fn any_syncing(&self) -> bool {
        self.not_ready > 0
    }

    /// The subscription has tables and every one is ready (`super::all_ready`).
    pub fn all_ready(&self) -> bool {
        !self.states.is_empty() && self.not_ready == 0
    }

    /// (local table, state) of every table.
    pub fn by_relid(&self) -> Vec<(u32, SyncState)> {
        let mut v: Vec<(u32, SyncState)> =
            self.relids.iter().filter_map(|(relid, key)| self.states.get(key).map(|(st, _)| (*relid, *st))).collect();
        v.sort_unstable_by_key(|(relid, _)| *relid);
        v
    }

    /// A table's state changed (the sync worker's SYNCDONE at `lsn`, or back to INIT).
    pub fn set(&mut self, relid: u32, state: SyncState, lsn: Option<Lsn>) {
        if let Some(key) = self.relids.get(&relid).cloned() {
            self.put(key, (state, lsn));
        }
    }

    /// The remote (schema, name) the subscription records for local table `relid`.
    pub(super) fn key_of(&self, relid: u32) -> Option<(String, String)> {
        self.relids.get(&relid).filter(|_| relid != 0).cloned()
    }

    /// Local table `relid` is now known to the publisher as `schema.name` (renamed there, and
    /// renamed here to match): its entry follows the name.
    pub(super) fn rename(&mut self, relid: u32, schema: &str, name: &str) {
        let new = (schema.to_string(), name.to_string());
        if let Some(old) = self.relids.insert(relid, new.clone()) {
            if let Some(v) = self.states.remove(&old) {
                self.states.insert(new, v);
            }
        }
        self.renamed.push(relid);
    }

    /// The local tables renamed here since the last call, each with its remote (schema, name)
    /// now, for `pgsub.sub_rel` (`Applier::write_names`).
    pub(super) fn take_renamed(&mut self) -> Vec<(u32, String, String)> {
        let mut relids = std::mem::take(&mut self.renamed);
        relids.sort_unstable();
        relids.dedup();
        relids.into_iter().filter_map(|r| self.relids.get(&r).map(|(s, n)| (r, s.clone(), n.clone()))).collect()
    }

    pub(super) fn has_renamed(&self) -> bool {
        !self.renamed.is_empty()
    }

    /// Whether local table `relid` is one of the subscription's and ready.
    pub(super) fn is_ready(&self, relid: u32) -> bool {
        self.relids.get(&relid).and_then(|key| self.states.get(key)).is_some_and(|(st, _)| *st == SyncState::Ready)
    }

    /// Local tables `a` and `b` swapped their remote names (`apply::swap_names`): each takes the
    /// other's, with its own state.
    pub(super) fn swap(&mut self, a: u32, b: u32) {
        let (Some(ka), Some(kb)) = (self.relids.get(&a).cloned(), self.relids.get(&b).cloned()) else { return };
        let (va, vb) = (self.states.remove(&ka), self.states.remove(&kb));
        if let Some(v) = va {
            self.states.insert(kb.clone(), v);
        }
        if let Some(v) = vb {
            self.states.insert(ka.clone(), v);
        }
        self.relids.insert(a, kb);
        self.relids.insert(b, ka);
        self.renamed.extend([a, b]);
    }

    /// The local table the subscription recorded for a remote table (None: none recorded).
    pub(super) fn relid_of(&self, schema: &str, name: &str) -> Option<u32> {
        self.relids
            .iter()
            .find(|(relid, key)| **relid != 0 && key.0 == schema && key.1 == name)
            .map(|(relid, _)| *relid)
    }

    /// Whether changes of a transaction ending at `commit_end` apply to the table (`SyncState::applies`).
    pub(super) fn applies(&self, schema: &str, name: &str, commit_end: Lsn) -> bool {
        // pgsub's own catalog, published by a publisher that runs pgsub too, is never applied,
        // also for a subscription whose table list took it before such tables were left out
        // (`api/remote.rs`).
        schema != crate::api::PGSUB_SCHEMA
            && self
                .states
                .get(&(schema.to_string(), name.to_string()))
                .is_some_and(|(st, lsn)| st.applies(lsn.map(|l| l.0), commit_end.0))
    }
}
