//! What a leader apply worker and one of its parallel apply workers share: a dynamic shared
//! memory segment holding a small header (the transaction's state, the parallel worker's error)
//! and a message queue (`shm_mq`, leader → worker) carrying the streamed pgoutput messages as they
//! came from the publisher; and the two heavyweight locks between them that make every wait of
//! one on the other visible to PostgreSQL's deadlock detector (native `applyparallelworker.c`
//! uses the same two, on PostgreSQL 16's apply-transaction lock tag; pgsub uses advisory lock
//! tags, which every supported version has and `pg_locks` shows as `advisory`, classid = the
//! subscription id, objid = the remote xid, objsubid = 11 or 12):
//!
//! - the **stream lock** (objsubid 11): the leader holds it while it is *not* sending the
//!   transaction's changes (between Stream Stop and the next Stream Start or Stream Commit); a
//!   parallel worker that has applied everything of a block waits for it before it reads on.
//! - the **transaction lock** (objsubid 12): the parallel worker holds it while the transaction
//!   is open; the leader waits for it at Stream Commit.
//!
//! So a leader applying an ordinary transaction that waits for a row the parallel worker's open
//! transaction holds, while that worker waits for the leader's next block, is a lock cycle the
//! deadlock detector breaks with an error (the transaction is then applied again by spilling).
use pgrx::pg_sys;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

/// Size of the leader → worker queue (native uses 16 MB too).
pub const QUEUE_SIZE: usize = 16 * 1024 * 1024;
/// Bytes kept for the parallel worker's error text.
const ERROR_BYTES: usize = 8192;
const MAGIC: u32 = 0x7067_7061; // "pgpa"

/// The state of the transaction a parallel worker is given, as it reports it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnState {
    /// No transaction (started, or the last one ended by commit or abort).
    Idle = 0,
    /// The worker opened the local transaction and holds the transaction lock.
    Started = 1,
    /// Committed locally (`local_end` is the commit record's end).
    Committed = 2,
    /// The worker failed; the error is in the header.
    Failed = 3,
}

#[repr(C)]
pub struct Header {
    magic: u32,
    pub subid: i32,
    pub proto_version: u32,
    pub origin_id: u32,
    /// The stream carries binary tuples (the leader's choice at connect).
    pub binary: bool,
    /// ... by the leader's own choice (`binary` unset): relations are checked against it.
    pub auto_binary: bool,
    /// The leader's latch, set when the worker's state changes.
    pub leader_latch: *mut pg_sys::Latch,
    pub leader_pid: i32,
    /// The worker's pid, once attached.
    pub worker_pid: AtomicI32,
    state: AtomicU32,
    /// The remote xid of the transaction the state is about.
    pub xid: AtomicU32,
    pub local_end: AtomicU64,
    /// Rows applied so far in the current transaction (shown while it is open).
    pub changes: AtomicU64,
    error_len: AtomicU32,
    error: [u8; ERROR_BYTES],
}

impl Header {
    pub fn state(&self) -> TxnState {
        match self.state.load(Ordering::Acquire) {
            1 => TxnState::Started,
            2 => TxnState::Committed,
            3 => TxnState::Failed,
            _ => TxnState::Idle,
        }
    }

    /// Sets the state and wakes the leader.
    pub fn set_state(&self, s: TxnState) {
        self.state.store(s as u32, Ordering::Release);
        if !self.leader_latch.is_null() {
            // SAFETY: the latch is the leader's PGPROC latch, in the main shared memory.
            unsafe { pg_sys::SetLatch(self.leader_latch) };
        }
    }

    /// Records the worker's error (message, detail, hint, context, each on a line of its own
    /// with its label, as last_error shows them) and the Failed state.
    pub fn set_error(&mut self, text: &str) {
        let bytes = text.as_bytes();
        let mut n = bytes.len().min(ERROR_BYTES);
        while n > 0 && !text.is_char_boundary(n) {
            n -= 1;
        }
        self.error[..n].copy_from_slice(&bytes[..n]);
        self.error_len.store(n as u32, Ordering::Release);
        self.set_state(TxnState::Failed);
    }

    pub fn error(&self) -> String {
        let n = (self.error_len.load(Ordering::Acquire) as usize).min(ERROR_BYTES);
        String::from_utf8_lossy(&self.error[..n]).into_owned()
    }
}

/// Bytes of the segment before the queue.
fn header_size() -> usize {
    std::mem::size_of::<Header>().next_multiple_of(64)
}

pub fn segment_size() -> usize {
    header_size() + QUEUE_SIZE
}

/// A segment made by the leader: header initialized, queue created with the leader as sender.
/// The mapping is kept for the process's life (not tied to a transaction's resource owner).
///
/// # Safety
/// A backend attached to shared memory, outside any critical section.
pub unsafe fn create(
    subid: i32,
    proto_version: u32,
    binary: bool,
    auto_binary: bool,
    origin_id: u16,
) -> (*mut pg_sys::dsm_segment, *mut Header) {
    unsafe {
        let seg = pg_sys::dsm_create(segment_size(), 0);
        pg_sys::dsm_pin_mapping(seg);
        let base = pg_sys::dsm_segment_address(seg) as *mut u8;
        let hdr = base as *mut Header;
        std::ptr::write_bytes(base, 0, header_size());
        (*hdr).magic = MAGIC;
        (*hdr).subid = subid;
        (*hdr).proto_version = proto_version;
        (*hdr).binary = binary;
        (*hdr).auto_binary = auto_binary;
        (*hdr).origin_id = origin_id as u32;
        (*hdr).leader_latch = std::ptr::addr_of_mut!((*pg_sys::MyProc).procLatch);
        (*hdr).leader_pid = pg_sys::MyProcPid;
        let mq = pg_sys::shm_mq_create(base.add(header_size()) as *mut std::ffi::c_void, QUEUE_SIZE);
        pg_sys::shm_mq_set_sender(mq, pg_sys::MyProc);
        (seg, hdr)
    }
}

/// The queue of a segment, attached on this side (in TopMemoryContext).
///
/// # Safety
/// `seg` is a mapped segment made by [`create`].
pub unsafe fn attach_queue(seg: *mut pg_sys::dsm_segment, receiver: bool) -> *mut pg_sys::shm_mq_handle {
    unsafe {
        let base = pg_sys::dsm_segment_address(seg) as *mut u8;
        let mq = base.add(header_size()) as *mut pg_sys::shm_mq;
        if receiver {
            pg_sys::shm_mq_set_receiver(mq, pg_sys::MyProc);
        }
        let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        let h = pg_sys::shm_mq_attach(mq, seg, std::ptr::null_mut());
        pg_sys::MemoryContextSwitchTo(old);
        h
    }
}

/// Maps the segment `handle` in a parallel worker; None when it is gone or not ours.
///
/// # Safety
/// A backend attached to shared memory.
pub unsafe fn attach(handle: u32) -> Option<(*mut pg_sys::dsm_segment, *mut Header)> {
    unsafe {
        let seg = pg_sys::dsm_attach(handle as pg_sys::dsm_handle);
        if seg.is_null() {
            return None;
        }
        pg_sys::dsm_pin_mapping(seg);
        let hdr = pg_sys::dsm_segment_address(seg) as *mut Header;
        if (*hdr).magic != MAGIC {
            return None;
        }
        Some((seg, hdr))
    }
}

/// Which of the two locks.
#[derive(Clone, Copy)]
pub enum Lock {
    Stream = 11,
    Transaction = 12,
}

fn tag(subid: i32, xid: u32, which: Lock) -> pg_sys::LOCKTAG {
    // SAFETY: reading the database this backend is connected to.
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    pg_sys::LOCKTAG {
        locktag_field1: db,
        locktag_field2: subid as u32,
        locktag_field3: xid,
        locktag_field4: which as u16,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

/// Takes the lock for the session (kept across transactions; released at exit). `exclusive`:
/// AccessExclusive (its holder), otherwise AccessShare (a waiter). Waits, as a heavyweight lock
/// wait, so that the deadlock detector sees it.
pub fn lock(subid: i32, xid: u32, which: Lock, exclusive: bool) {
    let t = tag(subid, xid, which);
    // SAFETY: a session lock of this backend on an advisory tag.
    unsafe {
        pg_sys::LockAcquire(&t, mode(exclusive), true, false);
    }
}

pub fn unlock(subid: i32, xid: u32, which: Lock, exclusive: bool) {
    let t = tag(subid, xid, which);
    // SAFETY: releases a session lock taken by `lock` with the same arguments.
    unsafe {
        pg_sys::LockRelease(&t, mode(exclusive), true);
    }
}

fn mode(exclusive: bool) -> pg_sys::LOCKMODE {
    (if exclusive { pg_sys::AccessExclusiveLock } else { pg_sys::AccessShareLock }) as pg_sys::LOCKMODE
}
