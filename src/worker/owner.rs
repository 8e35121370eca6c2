//! Whose privileges apply a change: PostgreSQL 16's `run_as_owner` for pgsub's workers. With
//! `run_as_owner = false` (the default, as 16) each statement of a relation run, batch or single
//! row, and the initial copy of a table, runs as the target table's *owner* as native's
//! `SwitchToUntrustedUser` (usercontext.c) does it: the subscription owner must be able to
//! `SET ROLE` to the table owner (else native's error, `role "a" cannot SET ROLE to "b"`); when the
//! table owner cannot `SET ROLE` back, it runs inside a security-restricted operation (and with
//! `SECURITY_LOCAL_USERID_CHANGE`, so it cannot `SET ROLE` either) with its own GUC nest level,
//! rolled back afterwards. With `run_as_owner = true` nothing is switched: everything runs as the
//! subscription owner, as before 16. Owns the worker's setting and the switch; the call sites
//! (`apply.rs`, `batch.rs`, `sync.rs`) wrap their statement in [`as_table_owner`].

use std::cell::Cell;

use pgrx::pg_sys;

use crate::report;

thread_local! {
    /// The subscription's `run_as_owner`, set once per worker by `setup_session`; true (never
    /// switch) until then.
    static RUN_AS_OWNER: Cell<bool> = const { Cell::new(true) };
}

/// Records the worker's subscription setting.
pub(crate) fn set_run_as_owner(run_as_owner: bool) {
    RUN_AS_OWNER.with(|r| r.set(run_as_owner));
}

/// Whether the worker switches to table owners.
pub(crate) fn switches() -> bool {
    !RUN_AS_OWNER.with(Cell::get)
}

/// Runs `f` — one statement, batch or copy into the table `relid` — as that table's owner unless
/// the subscription runs as its owner. An ERROR inside `f` aborts the transaction, which restores
/// the user id and the GUC nest level itself; the guard restores the user id on the way out too.
///
/// Row-level security is checked each time, for the user that writes (as native apply does at
/// every change): a role that loses BYPASSRLS, or the membership that made it the table's
/// owner, must stop apply rather than write through policies that hide the rows it looks for.
pub(crate) fn as_table_owner<R>(relid: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    // SAFETY: reads this backend's current user id.
    let me = unsafe { pg_sys::GetUserId() };
    // Switching to oneself changes nothing (native does it anyway): skipped.
    let ctx = switches().then(|| rel_owner(relid)).flatten().filter(|o| *o != me).map(switch_to_untrusted_user);
    super::copyin::refuse_row_level_security(relid);
    let r = f();
    if let Some(ctx) = ctx {
        ctx.restore();
    }
    r
}

/// Runs `f`, a lookup of rows of the table `relid` in pgsub's own SQL (conflict detection,
/// `conflict/lookup.rs`), as the table's owner inside a security-restricted operation, whatever
/// `run_as_owner` says. The only user code such a lookup runs — the table's index expressions
/// and predicates, its types' equality operators and input functions — is the table owner's, and
/// it runs with the owner's privileges, as when the owner writes (native's lookups run as the
/// applying role without SQL privilege checks; a plain SELECT … FOR UPDATE needs the owner's).
pub(crate) fn as_table_owner_for_lookup<R>(relid: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let ctx = rel_owner(relid).map(|owner| {
        let mut user = pg_sys::InvalidOid;
        let mut sec_context = 0;
        // SAFETY: reads, then switches, this backend's user id inside the current transaction
        // (an abort restores it; the guard does on the way out of an error too).
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut user, &mut sec_context);
            let restricted = sec_context
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32;
            pg_sys::SetUserIdAndSecContext(owner, restricted);
            UserContext { user, sec_context, nest_level: pg_sys::NewGUCNestLevel(), restored: false }
        }
    });
    super::copyin::refuse_row_level_security(relid);
    let r = f();
    if let Some(ctx) = ctx {
        ctx.restore();
    }
    r
}

/// TRUNCATE of `relids` in one statement (native truncates each table as its owner): as their
/// owner when they share one; when they have several, the subscription owner must still be able
/// to `SET ROLE` to each of them (native's error), and the one statement runs as the subscription
/// owner — one statement cannot run as several roles (README: where pgsub differs).
pub(crate) fn truncate_as_owners<R>(relids: &[pg_sys::Oid], f: impl FnOnce() -> R) -> R {
    if !switches() {
        return f();
    }
    let mut owners: Vec<pg_sys::Oid> = relids.iter().filter_map(|r| rel_owner(*r)).collect();
    owners.sort_unstable_by_key(|o| u32::from(*o));
    owners.dedup();
    if let [one] = owners.as_slice() {
        let ctx = switch_to_untrusted_user(*one);
        let r = f();
        ctx.restore();
        return r;
    }
    // SAFETY: reads this backend's current user id.
    let me = unsafe { pg_sys::GetUserId() };
    for o in owners {
        if !can_set_role(me, o) {
            cannot_set_role(me, o);
        }
    }
    f()
}

/// The owner of `relid` (None when it is gone: the statement then fails on its own).
fn rel_owner(relid: pg_sys::Oid) -> Option<pg_sys::Oid> {
    // SAFETY: a relcache lookup inside a transaction; the reference is closed again.
    unsafe {
        let rel = pg_sys::RelationIdGetRelation(relid);
        if rel.is_null() {
            return None;
        }
        let owner = (*(*rel).rd_rel).relowner;
        pg_sys::RelationClose(rel);
        Some(owner)
    }
}

/// Whether `member` may `SET ROLE` to `role` (superusers may).
fn can_set_role(member: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    // SAFETY: catalog lookups (cached role memberships) inside a transaction.
    unsafe {
        #[cfg(feature = "pg15")]
        {
            pg_sys::is_member_of_role(member, role)
        }
        #[cfg(not(feature = "pg15"))]
        {
            pg_sys::member_can_set_role(member, role)
        }
    }
}

fn role_name(oid: pg_sys::Oid) -> String {
    // SAFETY: a syscache lookup inside a transaction; noerr gives NULL for a dropped role.
    let p = unsafe { pg_sys::GetUserNameFromId(oid, true) };
    if p.is_null() {
        return format!("{}", u32::from(oid));
    }
    // SAFETY: a NUL-terminated palloc'd string.
    unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Native's error when the subscription owner may not become a table's owner.
fn cannot_set_role(user: pg_sys::Oid, owner: pg_sys::Oid) -> ! {
    report::error(
        pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!("role \"{}\" cannot SET ROLE to \"{}\"", role_name(user), role_name(owner)),
        None,
        Some("Grant the subscription owner membership in the table owner's role, or set run_as_owner => true."),
    )
}

/// The user and security context to go back to, restored also when dropped during an error.
struct UserContext {
    user: pg_sys::Oid,
    sec_context: i32,
    /// The GUC nest level opened for the restricted operation (-1: none).
    nest_level: i32,
    restored: bool,
}

impl UserContext {
    fn restore(mut self) {
        if self.nest_level != -1 {
            // SAFETY: rolls back the GUC changes made at the nest level opened by the switch.
            unsafe { pg_sys::AtEOXact_GUC(false, self.nest_level) };
        }
        // SAFETY: puts back the user id and security context read by the switch.
        unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.sec_context) };
        self.restored = true;
    }
}

impl Drop for UserContext {
    fn drop(&mut self) {
        if !self.restored {
            // An error is unwinding: the transaction abort rolls the GUC level back; the user id
            // goes back here so that nothing on the way out runs as the table owner.
            // SAFETY: as in restore.
            unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.sec_context) };
        }
    }
}

/// Native's `SwitchToUntrustedUser`.
fn switch_to_untrusted_user(owner: pg_sys::Oid) -> UserContext {
    let mut user = pg_sys::InvalidOid;
    let mut sec_context = 0;
    // SAFETY: reads this backend's current user id and security context.
    unsafe { pg_sys::GetUserIdAndSecContext(&mut user, &mut sec_context) };
    if !can_set_role(user, owner) {
        cannot_set_role(user, owner);
    }
    let mut ctx = UserContext { user, sec_context, nest_level: -1, restored: false };
    // SAFETY: switches this backend's user id inside the current transaction; an abort restores.
    unsafe {
        if can_set_role(owner, user) {
            // Each may become the other: nothing to protect.
            pg_sys::SetUserIdAndSecContext(owner, sec_context);
        } else {
            let restricted = sec_context
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32;
            pg_sys::SetUserIdAndSecContext(owner, restricted);
            ctx.nest_level = pg_sys::NewGUCNestLevel();
        }
    }
    ctx
}
