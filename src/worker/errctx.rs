//! Error context of the apply worker, as PostgreSQL's own worker reports it: which subscription,
//! message type, relation, column, remote xid and the finish LSN of the remote transaction (the
//! value `pgsub.skip_transaction` takes). Installed as an ErrorContextCallback for the worker's
//! life, so every ERROR in the log carries it; `describe()` gives the same text for last_error.
use pgrx::pg_sys;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};

#[derive(Default)]
struct State {
    subscription: String,
    origin: String,
    kind: &'static str,
    relation: Option<std::rc::Rc<str>>,
    column: Option<String>,
    xid: Option<u32>,
    finish_lsn: Option<u64>,
    /// Set while rows or checks of several remote transactions of a group are applied together:
    /// the remote xids of the first and the last. The context then names the range and no
    /// finish LSN, which would name only one of them to `skip_transaction`.
    span: Option<(u32, u32)>,
    /// The context of an error a parallel apply worker reported, which the leader raises as its
    /// own (`parallel/`): shown instead of the leader's.
    borrowed: Option<String>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
    /// Set while a local type's binary input function reads a remote value (`receiving`): an
    /// error raised there, whatever its SQLSTATE (tsquery's is an internal error), is the
    /// binary format's own. Left set by the error, read by the worker's error handler.
    static RECEIVING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A binary input function is (true) or is no longer (false) reading a remote value.
pub fn receiving(on: bool) {
    RECEIVING.with(|r| r.set(on));
}

/// Whether the error being handled was raised while a binary input function read a value.
pub fn failed_in_receive() -> bool {
    RECEIVING.with(|r| r.get())
}

extern "C" {
    // elog.c: appends a CONTEXT line to the error being reported.
    fn errcontext_msg(fmt: *const c_char, ...) -> c_int;
}

pub fn init(subscription: &str, origin: &str) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.subscription = subscription.to_string();
        s.origin = origin.to_string();
    });
}

pub fn set_txn(xid: u32, finish_lsn: pgsub_proto::Lsn) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.xid = Some(xid);
        // A parallel apply worker learns the finish LSN only at Stream Commit.
        s.finish_lsn = finish_lsn.is_valid().then_some(finish_lsn.0);
        s.span = None;
        s.borrowed = None;
        s.kind = "BEGIN";
        s.relation = None;
        s.column = None;
    });
    receiving(false);
}

/// Several remote transactions of a group, the first and last xid given, are being applied
/// together (a run of inserts carried over their commits, or the group's commit); `None` ends it.
pub fn set_span(span: Option<(u32, u32)>) {
    STATE.with(|s| s.borrow_mut().span = span);
}

/// Whether several remote transactions are being applied together ([`set_span`]): an error
/// now is not pinned to one of them.
pub fn span() -> Option<(u32, u32)> {
    STATE.with(|s| s.borrow().span)
}

/// A COMMIT (or PREPARE) is being applied: its errors (deferred constraints and triggers) belong
/// to the transaction, not to the relation of its last change, which native's context leaves
/// out too.
pub fn set_commit(kind: &'static str) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.kind = kind;
        s.relation = None;
        s.column = None;
    });
}

/// The message being applied; `relation` replaces the current one when given.
pub fn set_message(kind: &'static str, relation: Option<std::rc::Rc<str>>) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if !kind.is_empty() {
            s.kind = kind;
        }
        if relation.is_some() {
            s.relation = relation;
        }
        s.column = None;
    });
}

pub fn set_kind(kind: &'static str) {
    STATE.with(|s| s.borrow_mut().kind = kind);
}

pub fn set_column(column: Option<&str>) {
    STATE.with(|s| s.borrow_mut().column = column.map(str::to_string));
}

pub fn clear() {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.kind = "";
        s.relation = None;
        s.column = None;
        s.xid = None;
        s.finish_lsn = None;
        s.span = None;
        s.borrowed = None;
    });
}

/// The leader raises a parallel apply worker's error: its context is the worker's.
pub fn borrow(context: String) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.kind = "STREAM COMMIT";
        s.relation = None;
        s.column = None;
        s.borrowed = (!context.is_empty()).then_some(context);
    });
}

/// True while a batch of INSERTs is being loaded with COPY or a batch of UPDATEs or DELETEs applied: an
/// error there names neither the remote row nor always the column, so the retry of that
/// transaction goes row by row.
pub fn in_batch() -> bool {
    STATE.with(|s| {
        let k = s.borrow().kind;
        k == COPY_BATCH || k == UPDATE_BATCH || k == DELETE_BATCH
    })
}

/// The relation being applied to, as the context names it.
pub fn relation() -> Option<std::rc::Rc<str>> {
    STATE.with(|s| s.borrow().relation.clone())
}

/// The kind of remote change being applied ("INSERT", "UPDATE (batch)", …; "" outside one).
pub fn kind() -> &'static str {
    STATE.with(|s| s.borrow().kind)
}

/// The message kind shown while a run of INSERTs is loaded with COPY.
pub const COPY_BATCH: &str = "INSERT (COPY batch)";
/// The message kind shown while a run of UPDATEs is applied with one statement.
pub const UPDATE_BATCH: &str = "UPDATE (batch)";
/// The message kind shown while a run of DELETEs is applied with one statement.
pub const DELETE_BATCH: &str = "DELETE (batch)";

/// The remote xid of the transaction being applied, if any.
pub fn xid() -> Option<u32> {
    STATE.with(|s| s.borrow().xid)
}

/// The finish LSN of the remote transaction being applied, if any.
pub fn finish_lsn() -> Option<pgsub_proto::Lsn> {
    STATE.with(|s| s.borrow().finish_lsn.map(pgsub_proto::Lsn))
}

/// Native-style context text, or an empty string outside a message.
pub fn describe() -> String {
    STATE.with(|s| {
        let s = s.borrow();
        if let Some(b) = &s.borrowed {
            return b.clone();
        }
        if s.kind.is_empty() {
            return String::new();
        }
        let mut out = format!(
            "processing remote data for subscription \"{}\" (replication origin \"{}\") during message type \"{}\"",
            s.subscription, s.origin, s.kind
        );
        if let Some(r) = &s.relation {
            out.push_str(&format!(" for replication target relation {r}"));
            if let Some(c) = &s.column {
                out.push_str(&format!(" column \"{c}\""));
            }
        }
        if let Some((first, x)) = s.span {
            // Which transaction failed is found by the retry, which applies them one by one.
            out.push_str(&format!(
                " in remote transactions {first} to {x}, applied together (the retry applies them one by one)"
            ));
            return out;
        }
        if let Some(x) = s.xid {
            out.push_str(&format!(" in transaction {x}"));
        }
        if let Some(l) = s.finish_lsn {
            out.push_str(&format!(", finished at {}", pgsub_proto::Lsn(l)));
        }
        out
    })
}

unsafe extern "C-unwind" fn callback(_arg: *mut std::ffi::c_void) {
    let text = describe();
    if text.is_empty() {
        return;
    }
    if let Ok(c) = CString::new(text) {
        // SAFETY: called by errfinish while an error is being built; "%s" with one C string.
        unsafe { errcontext_msg(c"%s".as_ptr(), c.as_ptr()) };
    }
}

/// Pushes the callback for the rest of the process's life.
pub fn install() {
    // SAFETY: the callback record is leaked so it outlives every error report of the process.
    unsafe {
        let rec: &'static mut pg_sys::ErrorContextCallback = Box::leak(Box::new(pg_sys::ErrorContextCallback {
            previous: pg_sys::error_context_stack,
            callback: Some(callback),
            arg: std::ptr::null_mut(),
        }));
        pg_sys::error_context_stack = rec;
    }
}
