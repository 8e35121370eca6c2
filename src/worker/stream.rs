//! Streamed (in-progress) transactions, protocol v2+: with `streaming => true` the publisher sends
//! a large transaction in blocks (Stream Start … Stop) before it commits, interleaved with other
//! transactions. Each top-level transaction's changes are buffered in a
//! [`pgsub_proto::spill::TxnBuffer`] — in memory while all open streamed transactions together
//! stay under `pgsub.work_mem`, then in CRC-checked spill files under `base/pgsql_tmp` — and are
//! applied in order, in one local transaction, at Stream Commit (or prepared at Stream Prepare).
//! Stream Abort drops a transaction or truncates an aborted subtransaction's changes.
//!
//! RELATION messages inside a stream block describe the table as the streamed transaction sees it
//! (after its own DDL, if any): like native apply, they take effect only when the transaction is
//! applied, between the changes they came between — never at once, where they would change how
//! the other transactions arriving meanwhile are read. They are kept beside the buffer with the
//! position they arrived at; a subtransaction's abort does not drop them (the publisher counts
//! them as sent for the whole transaction), they move to where the buffer was cut.
//!
//! Spill files are named `pgsql_tmp_pgsub_<subid>_<xid>.spill`: they are removed at commit,
//! abort and worker exit, leftovers of a crashed worker at worker start, and PostgreSQL itself
//! removes `pgsql_tmp*` files when it restarts.
use crate::gucs;
use crate::report;
use pgrx::prelude::*;
use pgsub_proto::spill::{remove_leftovers, SpillError, TxnBuffer, TxnReader};
use std::collections::HashMap;
use std::path::PathBuf;

type Code = PgSqlErrorCode;

const SPILL_DIR: &str = "base/pgsql_tmp";

/// A streamed transaction's buffered changes and the relation descriptions that go between them.
pub struct Buffered {
    pub changes: Option<TxnReader>,
    /// (index of the first change the description applies to, the RELATION message).
    pub relations: Vec<(u64, Vec<u8>)>,
}

pub struct Streams {
    subid: i32,
    open: HashMap<u32, TxnBuffer>,
    /// RELATION messages of each open streamed transaction, with their positions.
    relations: HashMap<u32, Vec<(u64, Vec<u8>)>>,
    /// Top-level xid of the stream block being received.
    current: Option<u32>,
    /// Streamed transactions that came to the publisher from another origin (origin = none).
    foreign: std::collections::HashSet<u32>,
}

fn spill_error(e: SpillError, xid: u32) -> ! {
    let code = match e {
        SpillError::Corrupt { .. } => Code::ERRCODE_DATA_CORRUPTED,
        SpillError::Io { .. } => Code::ERRCODE_IO_ERROR,
    };
    report::error(
        code,
        format!("streamed transaction {xid}: {e}"),
        Some("Nothing of this transaction was applied; the worker restarts and the publisher sends it again.".into()),
        None,
    )
}

impl Streams {
    /// Removes spill files a previous worker of this subscription left behind.
    pub fn new(subid: i32) -> Streams {
        let n = remove_leftovers(std::path::Path::new(SPILL_DIR), &Self::prefix(subid));
        if n > 0 {
            log!("pgsub: removed {n} leftover spill file(s) of subscription {subid}");
        }
        Streams { subid, open: HashMap::new(), relations: HashMap::new(), current: None, foreign: Default::default() }
    }

    fn prefix(subid: i32) -> String {
        format!("pgsql_tmp_pgsub_{subid}_")
    }

    fn path(&self, xid: u32) -> PathBuf {
        PathBuf::from(SPILL_DIR).join(format!("{}{xid}.spill", Self::prefix(self.subid)))
    }

    pub fn start(&mut self, xid: u32) {
        if !self.open.contains_key(&xid) {
            if let Err(e) = std::fs::create_dir_all(SPILL_DIR) {
                report::error(
                    Code::ERRCODE_IO_ERROR,
                    format!("could not create directory \"{SPILL_DIR}\": {e}"),
                    None,
                    None,
                );
            }
            let buf = TxnBuffer::new(xid, self.path(xid));
            self.open.insert(xid, buf);
        }
        self.current = Some(xid);
    }

    /// The current stream block's transaction carries a replication origin.
    pub fn mark_foreign(&mut self) {
        if let Some(x) = self.current {
            self.foreign.insert(x);
        }
    }

    pub fn is_foreign(&mut self, xid: u32) -> bool {
        self.foreign.remove(&xid)
    }

    pub fn stop(&mut self) {
        self.current = None;
    }

    /// Whether a stream block of a transaction buffered here is being received.
    pub fn in_block(&self) -> bool {
        self.current.is_some()
    }

    /// A RELATION message of the current stream block: it applies from the next change on.
    pub fn push_relation(&mut self, raw: &[u8]) {
        let Some(top) = self.current else {
            report::error(Code::ERRCODE_PROTOCOL_VIOLATION, "streamed relation outside a stream block", None, None);
        };
        let at = self.open.get(&top).map_or(0, |b| b.records());
        self.relations.entry(top).or_default().push((at, raw.to_vec()));
    }

    /// Buffers a change of (sub)transaction `xid` of the current stream block.
    pub fn push(&mut self, xid: u32, raw: &[u8]) {
        let Some(top) = self.current else {
            report::error(Code::ERRCODE_PROTOCOL_VIOLATION, "streamed change outside a stream block", None, None);
        };
        let corrupt = gucs::TEST_CORRUPT_SPILL.get();
        let Some(buf) = self.open.get_mut(&top) else {
            report::error(Code::ERRCODE_PROTOCOL_VIOLATION, format!("no open streamed transaction {top}"), None, None);
        };
        buf.push(xid, raw);
        let limit = gucs::WORK_MEM_KB.get().max(64) as usize * 1024;
        let total: usize = self.open.values().map(|b| b.mem_bytes()).sum();
        if total > limit {
            for b in self.open.values_mut() {
                if corrupt {
                    b.corrupt_next_spilled_record();
                }
                if let Err(e) = b.spill() {
                    let x = b.xid();
                    spill_error(e, x);
                }
            }
        }
    }

    /// Stream Abort: the whole transaction (subxid == xid) or one subtransaction.
    pub fn abort(&mut self, xid: u32, subxid: u32) {
        if xid == subxid {
            self.foreign.remove(&xid);
            self.relations.remove(&xid);
            if let Some(b) = self.open.remove(&xid) {
                b.discard();
            }
        } else if let Some(b) = self.open.get_mut(&xid) {
            if let Err(e) = b.abort_subxact(subxid) {
                spill_error(e, xid);
            }
            let cut = b.records();
            if let Some(rels) = self.relations.get_mut(&xid) {
                for r in rels.iter_mut() {
                    r.0 = r.0.min(cut);
                }
            }
        }
    }

    /// Stream Commit / Stream Prepare: the transaction's changes, oldest first, and its
    /// relation descriptions.
    pub fn take(&mut self, xid: u32) -> Buffered {
        let relations = self.relations.remove(&xid).unwrap_or_default();
        let changes = self.open.remove(&xid).map(|b| match b.into_reader() {
            Ok(r) => r,
            Err(e) => spill_error(e, xid),
        });
        Buffered { changes, relations }
    }

    /// Raises for a record that could not be read back.
    pub fn fail(e: SpillError, xid: u32) -> ! {
        spill_error(e, xid)
    }
}
