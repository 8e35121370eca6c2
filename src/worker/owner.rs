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
///
/// Whatever the user, `f` runs at a GUC nest level of its own, rolled back after it: a trigger,
/// default or index expression that changes a setting for the session (`set_config(…, false)`,
/// `SET`) changes it for its statement only. pgsub's own statements, some of them run as a
/// superuser, must never run under a `search_path` (or anything else) the table's code chose.
pub(crate) fn as_table_owner<R>(relid: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    // SAFETY: reads this backend's current user id.
    let me = unsafe { pg_sys::GetUserId() };
    // Switching to oneself changes nothing (native does it anyway): skipped.
    let ctx = switches().then(|| rel_owner(relid)).flatten().filter(|o| *o != me).map(switch_to_untrusted_user);
    super::copyin::refuse_row_level_security(relid);
    let r = with_own_settings(f);
    if let Some(ctx) = ctx {
        ctx.restore();
    }
    r
}

/// Runs `f` at a GUC nest level rolled back afterwards (an ERROR inside rolls it back with the
/// transaction).
pub(crate) fn with_own_settings<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: opens a GUC nest level inside the current transaction, closed below.
    let level = unsafe { pg_sys::NewGUCNestLevel() };
    let r = f();
    // SAFETY: rolls back the settings changed at that level.
    unsafe { pg_sys::AtEOXact_GUC(false, level) };
    r
}

/// Runs `f`, a lookup of rows of the table `relid` in pgsub's own SQL (conflict detection,
/// `conflict/lookup.rs`), as the table's owner inside a security-restricted operation, whatever
/// `run_as_owner` says. The only user code such a lookup runs — the table's index expressions
/// and predicates, its types' equality operators and input functions — is the table owner's, and
/// it runs with the owner's privileges, as when the owner writes (native's lookups run as the
/// applying role without SQL privilege checks; a plain SELECT … FOR UPDATE needs the owner's).
pub(crate) fn as_table_owner_for_lookup<R>(relid: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    // Row-level security is checked for the role that writes the change: the subscription owner
    // under `run_as_owner` (checked before the switch: a table whose FORCE ROW LEVEL SECURITY
    // binds its owner is written by a subscription owner that bypasses it, as natively), else
    // the table's owner.
    let owner = rel_owner(relid);
    if !switches() {
        super::copyin::refuse_row_level_security(relid);
        // The table's owner bound by its own policies (FORCE ROW LEVEL SECURITY) would not see
        // every row: the look-up runs as the subscription owner, who writes, bypasses them
        // (checked just above) and under `run_as_owner` runs the table's code anyway.
        if owner.is_some_and(|o| rls_binds(relid, o)) {
            return with_own_settings(f);
        }
    }
    let ctx = owner.map(|owner| {
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
    if switches() {
        super::copyin::refuse_row_level_security(relid);
    }
    let r = f();
    if let Some(ctx) = ctx {
        ctx.restore();
    }
    r
}

/// TRUNCATE of `targets` (each table's oid and its name as the statement names it; `run`
/// truncates a list of them in one statement). Native truncates every table as its owner in one
/// call; in SQL one statement runs as one role: as their owner when they share one; when they
/// have several, the subscription owner must still be able to `SET ROLE` to each of them
/// (native's error), and each owner's tables are truncated in a statement of their own, as that
/// owner — so that no table's TRUNCATE triggers run with the subscription owner's privileges.
/// Tables of different owners linked by a foreign key cannot be truncated apart: refused, with
/// a hint (README: where pgsub differs).
pub(crate) fn truncate_as_owners<E>(
    targets: &[(pg_sys::Oid, String)],
    run: impl Fn(&[&str]) -> Result<(), E>,
) -> Result<(), E> {
    fn names<'a>(group: &[&'a (pg_sys::Oid, String)]) -> Vec<&'a str> {
        group.iter().map(|(_, n)| n.as_str()).collect()
    }
    let all: Vec<&(pg_sys::Oid, String)> = targets.iter().collect();
    if !switches() {
        return with_own_settings(|| run(&names(&all)));
    }
    let mut owners: Vec<pg_sys::Oid> = Vec::new();
    for (relid, _) in targets {
        if let Some(o) = rel_owner(*relid) {
            if !owners.contains(&o) {
                owners.push(o);
            }
        }
    }
    if owners.len() <= 1 {
        let ctx = owners.first().map(|o| switch_to_untrusted_user(*o));
        let r = with_own_settings(|| run(&names(&all)));
        if let Some(ctx) = ctx {
            ctx.restore();
        }
        return r;
    }
    // SAFETY: reads this backend's current user id.
    let me = unsafe { pg_sys::GetUserId() };
    for o in &owners {
        if !can_set_role(me, *o) {
            cannot_set_role(me, *o);
        }
    }
    let oids: Vec<u32> = targets.iter().map(|(r, _)| u32::from(*r)).collect();
    if fk_between_owners(&oids) {
        report::error(
            pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "cannot truncate tables of different owners linked by a foreign key, each as its owner",
            Some("A TRUNCATE runs as one role, and with run_as_owner = false each table's triggers must run as its own owner.".into()),
            Some("Give the tables one owner, or set run_as_owner => true (their code then runs as the subscription owner)."),
        );
    }
    for o in owners {
        let group: Vec<&(pg_sys::Oid, String)> = targets.iter().filter(|(r, _)| rel_owner(*r) == Some(o)).collect();
        let ctx = switch_to_untrusted_user(o);
        let r = with_own_settings(|| run(&names(&group)));
        ctx.restore();
        r?;
    }
    Ok(())
}

/// Whether a foreign key links two of `oids` owned by different roles.
fn fk_between_owners(oids: &[u32]) -> bool {
    let list = oids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c \
           JOIN pg_catalog.pg_class a ON a.oid OPERATOR(pg_catalog.=) c.conrelid \
           JOIN pg_catalog.pg_class b ON b.oid OPERATOR(pg_catalog.=) c.confrelid \
          WHERE c.contype OPERATOR(pg_catalog.=) 'f' AND c.conrelid OPERATOR(pg_catalog.=) ANY ('{{{list}}}'::pg_catalog.oid[]) \
            AND c.confrelid OPERATOR(pg_catalog.=) ANY ('{{{list}}}'::pg_catalog.oid[]) \
            AND a.relowner OPERATOR(pg_catalog.<>) b.relowner)"
    );
    crate::catalog::as_superuser(|| pgrx::Spi::get_one::<bool>(&sql)).ok().flatten().unwrap_or(false)
}

/// The owner of `relid` (None when it is gone: the statement then fails on its own).
/// Whether row-level security applies to `role` on the table `relid` (its policies would filter
/// what the role reads).
fn rls_binds(relid: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    // SAFETY: a catalog and relcache lookup inside a transaction.
    unsafe { pg_sys::check_enable_rls(relid, role, false) == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32 }
}

pub(super) fn rel_owner(relid: pg_sys::Oid) -> Option<pg_sys::Oid> {
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
