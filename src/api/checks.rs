//! Checks of the SQL functions' arguments and callers, done on the subscriber before anything
//! is changed: who may call, names, options, the connection string, the database.
use crate::catalog::{self, Subscription};
use crate::report::error;
use crate::shmem;
use pgrx::prelude::*;
use pgsub_proto::conninfo;

type Code = PgSqlErrorCode;

/// The role calling the API. The management functions are SECURITY DEFINER (so that the catalog,
/// which holds passwords, stays unreadable to non-superusers); the caller is the outer user.
pub(super) fn caller() -> pg_sys::Oid {
    // SAFETY: no preconditions.
    unsafe { pg_sys::GetOuterUserId() }
}

/// Raises unless the current user is a superuser or a member of `pgsub_admin`, and on a hot
/// standby: every function that calls this changes a subscription or waits on its worker,
/// neither of which a standby can do (native: "cannot execute ALTER SUBSCRIPTION in a read-only
/// transaction"; without this check the catalog write failed with an internal error).
pub fn require_admin() {
    require_admin_role();
    // SAFETY: reads shared state; no preconditions.
    if unsafe { pg_sys::RecoveryInProgress() } {
        error(
            Code::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "cannot manage or wait on pgsub subscriptions during recovery",
            Some("This server is a standby: no pgsub worker runs here until it is promoted, and the catalog is read-only.".into()),
            Some("Run it on the primary."),
        );
    }
}

/// [`require_admin`]'s role check alone (for what a standby can do too).
pub(super) fn require_admin_role() {
    let ok = crate::process::has_privs_of_any(caller(), &[c"pgsub_admin"]);
    if !ok {
        error(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied to manage pgsub subscriptions",
            None,
            Some("Only superusers and members of the pgsub_admin role may manage subscriptions."),
        );
    }
}

pub(super) fn required<T>(v: Option<T>, arg: &str) -> T {
    match v {
        Some(v) => v,
        None => error(Code::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("{arg} must not be NULL"), None, None),
    }
}

/// Changing where a subscription's changes come from (connection, publications) is for its owner:
/// the worker applies them with the owner's privileges, so another pgsub_admin member could
/// otherwise point a superuser's subscription at a publisher of their own and write any table.
/// `action` completes "must have the privileges of the owner of subscription "s" to …".
pub(super) fn require_owner_privileges(sub: &Subscription, action: &str) {
    require_superuser_if_passwordless(sub);
    let caller = caller();
    // SAFETY: catalog lookups inside a transaction.
    let ok =
        unsafe { pg_sys::superuser_arg(caller) || pg_sys::has_privs_of_role(caller, pg_sys::Oid::from(sub.owner)) };
    if !ok {
        error(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must have the privileges of the owner of subscription \"{}\" to {action}", sub.name),
            Some(
                "The apply worker writes the publisher's changes with the privileges of the subscription's owner."
                    .into(),
            ),
            Some("Ask its owner or a superuser, or create a subscription of your own."),
        );
    }
}

/// Whether the caller passes `require_owner_privileges` for `sub` (without raising).
pub(super) fn may_act_as_owner(sub: &Subscription) -> bool {
    let caller = caller();
    // SAFETY: catalog lookups inside a transaction.
    unsafe {
        pg_sys::superuser_arg(caller)
            || (sub.password_required && pg_sys::has_privs_of_role(caller, pg_sys::Oid::from(sub.owner)))
    }
}

/// Native 16: `password_required => false` is for superusers to set.
pub(super) fn require_superuser_for_password_required_false() {
    // SAFETY: catalog lookup inside a transaction.
    if !unsafe { pg_sys::superuser_arg(caller()) } {
        error(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "password_required=false is superuser-only",
            None,
            Some("Subscriptions with the password_required option set to false may only be created or modified by the superuser."),
        );
    }
}

/// Native 16: a subscription with `password_required => false` may only be changed by a
/// superuser (dropping it stays open to its owner).
pub(super) fn require_superuser_if_passwordless(sub: &Subscription) {
    if !sub.password_required {
        require_superuser_for_password_required_false();
    }
}

pub(super) fn sub_by_name(name: &str) -> Subscription {
    match catalog::load_by_name(name) {
        Ok(Some(s)) if s.is_copy() => refuse_copy(&s),
        Ok(Some(s)) => s,
        Ok(None) => error(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("subscription \"{name}\" does not exist"),
            None,
            Some("pgsub.subscription lists the existing subscriptions."),
        ),
        Err(e) => error(Code::ERRCODE_INTERNAL_ERROR, format!("reading pgsub.sub: {e}"), None, None),
    }
}

/// A subscription copied from another database with `CREATE DATABASE … TEMPLATE` cannot be
/// used: its id, origin and slot are the original's (55000).
pub(super) fn refuse_copy(sub: &Subscription) -> ! {
    error(
        Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("subscription \"{}\" was copied from another database", sub.name),
        Some(format!(
            "CREATE DATABASE … TEMPLATE copied the row of the subscription of database {} (subid {}); its replication origin and slot are that subscription's.",
            sub.dbid, sub.subid
        )),
        Some("Drop it here with pgsub.drop_subscription() (only the row in this database is removed) and create it anew."),
    )
}

pub(super) fn check_name(name: &str) {
    if name.is_empty() {
        error(Code::ERRCODE_INVALID_PARAMETER_VALUE, "subscription name must not be empty", None, None);
    }
    if name.len() >= pg_sys::NAMEDATALEN as usize {
        error(
            Code::ERRCODE_NAME_TOO_LONG,
            format!("subscription name \"{name}\" is too long"),
            Some(format!("The limit is {} bytes.", pg_sys::NAMEDATALEN - 1)),
            None,
        );
    }
}

/// Checks a replication slot name as the publisher will (lower-case letters, digits, underscore).
pub(super) fn check_slot_name(slot: &str) {
    if slot.is_empty() || slot.len() >= pg_sys::NAMEDATALEN as usize {
        error(Code::ERRCODE_INVALID_NAME, format!("replication slot name \"{slot}\" is empty or too long"), None, None);
    }
    if !slot.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        error(
            Code::ERRCODE_INVALID_NAME,
            format!("replication slot name \"{slot}\" contains invalid character"),
            None,
            Some("Replication slot names may only contain lower case letters, numbers, and the underscore character."),
        );
    }
}

/// The slot name used when none is given: the subscription name when it is a valid slot name,
/// else a sanitized form of it (a name with capitals, spaces or unicode is a fine subscription
/// name but not a slot name).
pub fn default_slot_name(name: &str) -> String {
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    if !name.is_empty() && name.bytes().all(ok) {
        return name.to_string();
    }
    let mut s: String = name
        .chars()
        .map(|c| {
            let l = c.to_ascii_lowercase();
            if l.is_ascii_lowercase() || l.is_ascii_digit() {
                l
            } else {
                '_'
            }
        })
        .collect();
    // Keep distinct names distinct: add a short hash of the original.
    let h = name.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    s.truncate(40);
    format!("pgsub_{s}_{:08x}", h as u32)
}

/// Subscriptions run only where pgsub's workers can run them: refuse to create or enable one
/// when pgsub is not preloaded (no supervisor, no worker would ever start), or in a database a
/// non-empty `pgsub.database` leaves out.
pub(super) fn check_database() {
    if !shmem::available() {
        error(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "pgsub is not loaded through shared_preload_libraries: no worker could apply subscriptions",
            Some("The pgsub extension is created, but its supervisor, launchers and workers only run when the server loads pgsub at start.".into()),
            Some("Add pgsub to shared_preload_libraries (for example ALTER SYSTEM SET shared_preload_libraries = 'pgsub', keeping any libraries already listed) and restart the server."),
        );
    }
    let here = catalog::read_one::<String>("SELECT pg_catalog.current_database()::text", &[])
        .ok()
        .flatten()
        .unwrap_or_default();
    let template = catalog::read_one::<bool>(
        "SELECT datistemplate FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()",
        &[],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if template {
        error(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("pgsub does not run subscriptions in template database \"{here}\""),
            Some("A subscription in a template would be copied into every database created from it.".into()),
            Some("Create the subscription in a database that is not a template."),
        );
    }
    let allowed = crate::gucs::databases();
    if allowed.is_empty() {
        return;
    }
    if !allowed.contains(&here) {
        error(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "pgsub runs subscriptions only in the databases named by pgsub.database ('{}'), not in \"{here}\"",
                crate::gucs::database_setting()
            ),
            Some("Databases not named there get no launcher.".into()),
            Some("Create subscriptions in one of those databases, or add this one to pgsub.database (or empty it for every database; a restart is needed)."),
        );
    }
}

pub(super) fn check_conninfo(conninfo: &str) {
    // An empty string would silently mean "the local default server" (Unix socket, port 5432).
    if conninfo.trim().is_empty() {
        error(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "connection string must not be empty",
            None,
            Some("Name the publisher, e.g. 'host=publisher.example dbname=app user=repl'."),
        );
    }
    if let Err(e) = conninfo::parse(conninfo) {
        let masked = conninfo::mask_password(conninfo);
        error(
            Code::ERRCODE_SYNTAX_ERROR,
            format!("invalid connection string: {}", redact_quoted(&e.to_string(), conninfo, &masked)),
            Some(format!("Connection string: {masked}")),
            None,
        );
    }
}

/// A parse error quotes pieces of the connection string, which can be (part of) a password (a bad
/// percent-escape in it, or a whole malformed URI): a quoted piece of the string that its masked
/// form does not show is masked as well.
pub(super) fn redact_quoted(msg: &str, conninfo: &str, masked: &str) -> String {
    msg.split('"')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 && !part.is_empty() && conninfo.contains(part) && !masked.contains(part) {
                conninfo::MASK
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join("\"")
}

/// The replication slot is created (dropped) on the publisher at once and a rollback cannot undo
/// that: like native CREATE/DROP SUBSCRIPTION with a slot, refuse inside a transaction block
/// (BEGIN … or several statements in one query), where a later statement could roll back the
/// catalog change and leave the slot behind (or the subscription without its slot).
pub(super) fn prevent_in_transaction_block(what: &str, hint: &str) {
    // SAFETY: reads the current transaction's block state.
    if unsafe { pg_sys::IsTransactionBlock() } {
        error(
            Code::ERRCODE_ACTIVE_SQL_TRANSACTION,
            format!("{what} cannot run inside a transaction block"),
            Some("The replication slot is changed on the publisher at once; rolling back could not undo it.".into()),
            Some(hint),
        );
    }
}

pub(super) const SYNC_COMMIT_VALUES: [&str; 5] = ["off", "local", "remote_write", "remote_apply", "on"];

pub(super) fn check_origin(origin: &str) {
    if origin != "any" && origin != "none" {
        error(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unrecognized origin value: \"{origin}\""),
            None,
            Some("Use 'any' (apply every change) or 'none' (skip changes that came to the publisher from elsewhere)."),
        );
    }
}

pub(super) fn check_synchronous_commit(value: &str) {
    if !SYNC_COMMIT_VALUES.contains(&value) {
        error(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid value for synchronous_commit: \"{value}\""),
            None,
            Some("Use one of off, local, remote_write, remote_apply, on."),
        );
    }
}

/// The publications argument: non-empty, no NULL or empty name; duplicates dropped.
pub(super) fn publication_list(pubs_in: Vec<Option<String>>) -> Vec<String> {
    if pubs_in.is_empty() || pubs_in.iter().any(|p| p.as_deref().is_none_or(str::is_empty)) {
        error(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "publications must be a non-empty array of publication names without NULLs",
            None,
            None,
        );
    }
    let mut pubs: Vec<String> = Vec::new();
    for p in pubs_in.into_iter().flatten() {
        if pubs.contains(&p) {
            // Native's error for `PUBLICATION p1, p1`.
            error(
                Code::ERRCODE_DUPLICATE_OBJECT,
                format!("publication name \"{p}\" used more than once"),
                None,
                Some("Name each publication once."),
            );
        }
        pubs.push(p);
    }
    pubs
}

/// A two_phase subscription applies a remote PREPARE as a local prepared transaction.
pub(super) fn require_prepared_transactions() {
    let max_prepared =
        catalog::read_one::<i32>("SELECT pg_catalog.current_setting('max_prepared_transactions')::int", &[])
            .ok()
            .flatten()
            .unwrap_or(0);
    if max_prepared == 0 {
        error(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "two_phase subscriptions need prepared transactions on the subscriber",
            Some("max_prepared_transactions is 0 here, so a remote PREPARE could not be applied.".into()),
            Some("Set max_prepared_transactions (a restart is needed) to at least the number of transactions the publisher may have prepared at once."),
        );
    }
}

/// What create_subscription checks on the subscriber before it connects anywhere.
pub(super) fn check_new_subscription(name: &str, conninfo: &str, options: &catalog::Options) {
    check_name(name);
    check_database();
    check_origin(&options.origin);
    check_synchronous_commit(&options.synchronous_commit);
    if options.two_phase {
        require_prepared_transactions();
    }
    check_conninfo(conninfo);
    if catalog::load_by_name(name).ok().flatten().is_some() {
        error(Code::ERRCODE_DUPLICATE_OBJECT, format!("subscription \"{name}\" already exists"), None, None);
    }
}

/// A `conflict_resolution` value: one of the policies, and the two that compare commit times only
/// with `track_commit_timestamp = on` (without it a local row's commit time is unknown).
pub(super) fn check_conflict_resolution(value: &str) -> crate::catalog::Resolution {
    let Some(r) = crate::catalog::Resolution::parse(value) else {
        error(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unrecognized conflict_resolution value: \"{value}\""),
            None,
            Some("Use error, apply_remote, keep_local, last_update_wins or first_update_wins."),
        );
    };
    // SAFETY: a GUC variable of the server, read in a backend.
    if r.needs_commit_timestamps() && !unsafe { pg_sys::track_commit_timestamp } {
        error(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("conflict_resolution \"{value}\" needs track_commit_timestamp"),
            Some("It compares the commit time of the local row with the remote commit time.".into()),
            Some("Set track_commit_timestamp = on in postgresql.conf and restart the server."),
        );
    }
    r
}

/// An `anycompatible` argument: its datum and type (pgrx has `anyelement` only, which refuses an
/// untyped literal; `anycompatible` takes it as text).
#[derive(Debug, Clone, Copy)]
pub struct AnyCompatible {
    datum: pg_sys::Datum,
    typoid: pg_sys::Oid,
}

impl FromDatum for AnyCompatible {
    const GET_TYPOID: bool = true;

    unsafe fn from_datum(_datum: pg_sys::Datum, _is_null: bool) -> Option<Self> {
        // Never called: GET_TYPOID makes pgrx call from_polymorphic_datum.
        None
    }

    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, typoid: pg_sys::Oid) -> Option<Self> {
        (!is_null).then_some(AnyCompatible { datum, typoid })
    }
}

// SAFETY: the SQL type is the polymorphic pseudo-type, whose datum and type pgrx hands over.
unsafe impl pgrx::pgrx_sql_entity_graph::metadata::SqlTranslatable for AnyCompatible {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(AnyCompatible);
    const TYPE_ORIGIN: pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin =
        pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin::External;
    const ARGUMENT_SQL: Result<
        pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef,
        pgrx::pgrx_sql_entity_graph::metadata::ArgumentError,
    > = Ok(pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef::literal("anycompatible"));
    const RETURN_SQL: Result<
        pgrx::pgrx_sql_entity_graph::metadata::ReturnsRef,
        pgrx::pgrx_sql_entity_graph::metadata::ReturnsError,
    > = Err(pgrx::pgrx_sql_entity_graph::metadata::ReturnsError::Datum);
}

// SAFETY: unboxed through FromDatum with the argument's type, as pgrx's own polymorphic types.
unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for AnyCompatible {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        // SAFETY: called by pgrx for a non-NULL argument of this function.
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or(AnyCompatible { datum: pg_sys::Datum::from(0usize), typoid: pg_sys::BOOLOID })
    }
}

/// The `streaming` argument: a boolean (`streaming => true`, as before) or a string
/// (`streaming => 'parallel'`, `'on'`, `'off'` — the values PostgreSQL's option takes). The SQL
/// parameter is `anycompatible` so that both spellings call the same function.
pub(super) fn streaming_mode(v: Option<AnyCompatible>) -> Option<catalog::StreamingMode> {
    let v = v?;
    let oid = v.typoid;
    // SAFETY: the datum is the argument's, of the type `oid` says (not NULL).
    let text = unsafe {
        if oid == pg_sys::BOOLOID {
            return Some(if bool::from_datum(v.datum, false).unwrap_or(false) {
                catalog::StreamingMode::On
            } else {
                catalog::StreamingMode::Off
            });
        } else if oid == pg_sys::TEXTOID || oid == pg_sys::VARCHAROID || oid == pg_sys::BPCHAROID {
            String::from_polymorphic_datum(v.datum, false, oid)
        } else {
            None
        }
    };
    match text.as_deref().and_then(catalog::StreamingMode::parse) {
        Some(m) => Some(m),
        None => error(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "streaming requires a Boolean value or \"parallel\"",
            text.map(|t| format!("The value given is \"{t}\".")),
            Some("Use streaming => true (buffered, applied at commit), 'parallel' (applied as it arrives), or false."),
        ),
    }
}
