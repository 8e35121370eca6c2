//! The SQL API: `pgsub.create_subscription`, `drop_subscription`, `enable_subscription`,
//! `disable_subscription`, `alter_subscription_connection`, `alter_subscription_publications`,
//! `refresh_subscription` and `skip_transaction` (its pg_lsn wrapper is in sql/views.sql).
//!
//! Each validates on the spot against the publisher where native ALTER/CREATE SUBSCRIPTION would,
//! changes the catalog in the caller's transaction, and wakes the launcher when that transaction
//! commits. Only superusers and members of `pgsub_admin` may call them.
use crate::catalog::{self, Subscription};
use crate::publisher::{self, Context};
use crate::report::{error, log};
use crate::shmem;
use pgrx::prelude::*;
use pgsub_proto::client::{quote_ident, quote_literal, Client, SnapshotAction};
use pgsub_proto::conninfo;
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};

type Code = PgSqlErrorCode;

/// The role calling the API. The management functions are SECURITY DEFINER (so that the catalog,
/// which holds passwords, stays unreadable to non-superusers); the caller is the outer user.
fn caller() -> pg_sys::Oid {
    // SAFETY: no preconditions.
    unsafe { pg_sys::GetOuterUserId() }
}

/// Raises unless the current user is a superuser or a member of `pgsub_admin`.
pub fn require_admin() {
    // SAFETY: catalog lookups inside a transaction.
    let ok = unsafe {
        let caller = caller();
        pg_sys::superuser_arg(caller) || {
            let role = pg_sys::get_role_oid(c"pgsub_admin".as_ptr(), true);
            role != pg_sys::InvalidOid && pg_sys::has_privs_of_role(caller, role)
        }
    };
    if !ok {
        error(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied to manage pgsub subscriptions",
            None,
            Some("Only superusers and members of the pgsub_admin role may manage subscriptions."),
        );
    }
}

fn required<T>(v: Option<T>, arg: &str) -> T {
    match v {
        Some(v) => v,
        None => error(
            Code::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{arg} must not be NULL"),
            None,
            None,
        ),
    }
}

/// Changing where a subscription's changes come from (connection, publications) is for its owner:
/// the worker applies them with the owner's privileges, so another pgsub_admin member could
/// otherwise point a superuser's subscription at a publisher of their own and write any table.
fn require_owner_privileges(sub: &Subscription) {
    let caller = caller();
    // SAFETY: catalog lookups inside a transaction.
    let ok = unsafe { pg_sys::superuser_arg(caller) || pg_sys::has_privs_of_role(caller, pg_sys::Oid::from(sub.owner)) };
    if !ok {
        error(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must have the privileges of the owner of subscription \"{}\" to change its connection or publications", sub.name),
            Some("The apply worker writes the publisher's changes with the privileges of the subscription's owner.".into()),
            Some("Ask its owner or a superuser, or create a subscription of your own."),
        );
    }
}

fn sub_by_name(name: &str) -> Subscription {
    match catalog::load_by_name(name) {
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

fn check_name(name: &str) {
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
fn check_slot_name(slot: &str) {
    if slot.is_empty() || slot.len() >= pg_sys::NAMEDATALEN as usize {
        error(
            Code::ERRCODE_INVALID_NAME,
            format!("replication slot name \"{slot}\" is empty or too long"),
            None,
            None,
        );
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
            if l.is_ascii_lowercase() || l.is_ascii_digit() { l } else { '_' }
        })
        .collect();
    // Keep distinct names distinct: add a short hash of the original.
    let h = name.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    s.truncate(40);
    format!("pgsub_{s}_{:08x}", h as u32)
}

/// Subscriptions only run in the database named by pgsub.database: refuse to create one that
/// would never start, and warn when pgsub is not preloaded (no launcher runs then).
fn check_database() {
    let here = Spi::get_one::<String>("SELECT pg_catalog.current_database()::text").ok().flatten().unwrap_or_default();
    let configured = crate::gucs::database();
    if here != configured {
        error(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("pgsub runs its workers in database \"{configured}\", not in \"{here}\""),
            Some("The launcher reads subscriptions only from the database named by pgsub.database.".into()),
            Some("Create subscriptions in that database, or set pgsub.database (needs a restart)."),
        );
    }
    if !shmem::available() {
        log(
            PgLogLevel::WARNING,
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "pgsub is not loaded through shared_preload_libraries: no worker will apply this subscription",
            None,
            Some("Add pgsub to shared_preload_libraries and restart the server."),
        );
    }
}

fn check_conninfo(conninfo: &str) {
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
fn redact_quoted(msg: &str, conninfo: &str, masked: &str) -> String {
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

/// Connects for a management function; `require_password`: the subscription's owner (for a new
/// one, the caller) is not a superuser.
fn connect(sub_name: &str, conninfo: &str, require_password: bool) -> Client {
    match publisher::connect(conninfo, true, Context::Backend, Some("pgsub"), require_password) {
        Ok(c) => c,
        Err(e) => {
            // The password rule's own hint says what to change; other failures get the general one.
            let hint = (e.sqlstate() != Some("2F003")).then_some(
                "Check the connection string, that the publisher is running, and its pg_hba.conf (a replication connection to the database is needed).",
            );
            publisher::raise(&e, &format!("subscription \"{sub_name}\" could not connect to the publisher"), hint)
        }
    }
}

fn query(client: &mut Client, sql: &str, what: &str) -> Vec<Vec<Option<String>>> {
    match client.simple_query(sql) {
        Ok(rows) => rows.into_iter().map(|r| r.values).collect(),
        Err(e) => publisher::raise(&e, what, None),
    }
}

fn sql_text_array(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| quote_literal(s)).collect();
    format!("ARRAY[{}]::text[]", inner.join(","))
}

/// Checks that every publication exists on the publisher.
fn check_publications(client: &mut Client, pubs: &[String]) {
    let rows = query(
        client,
        &format!(
            "SELECT pubname FROM pg_catalog.pg_publication WHERE pubname = ANY({})",
            sql_text_array(pubs)
        ),
        "could not read publications on the publisher",
    );
    let found: Vec<String> = rows.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect();
    let missing: Vec<&String> = pubs.iter().filter(|p| !found.contains(p)).collect();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|p| format!("\"{p}\"")).collect();
        error(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!(
                "publication{} {} do{} not exist on the publisher",
                if missing.len() > 1 { "s" } else { "" },
                list.join(", "),
                if missing.len() > 1 { "" } else { "es" }
            ),
            None,
            Some("Create the publication on the publisher first (CREATE PUBLICATION … FOR TABLE …)."),
        );
    }
}

/// The (schema, table) pairs the publications publish.
fn published_tables(client: &mut Client, pubs: &[String]) -> Vec<(String, String)> {
    let rows = query(
        client,
        &format!(
            "SELECT DISTINCT schemaname, tablename FROM pg_catalog.pg_publication_tables \
             WHERE pubname = ANY({}) ORDER BY 1, 2",
            sql_text_array(pubs)
        ),
        "could not read the published tables on the publisher",
    );
    // Like native (PostgreSQL 16's CREATE SUBSCRIPTION, 15's table sync and pgoutput): one table
    // must not have different column lists in the subscription's publications.
    if client.server_version_num() >= 150000 {
        let clash = query(
            client,
            &format!(
                "SELECT schemaname, tablename FROM pg_catalog.pg_publication_tables \
                 WHERE pubname = ANY({}) GROUP BY 1, 2 HAVING count(DISTINCT attnames) > 1 ORDER BY 1, 2 LIMIT 1",
                sql_text_array(pubs)
            ),
            "could not read the published column lists on the publisher",
        );
        if let Some((schema, name)) = clash.into_iter().find_map(|r| {
            let mut it = r.into_iter();
            Some((it.next().flatten()?, it.next().flatten()?))
        }) {
            error(
                Code::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("cannot use different column lists for table \"{schema}.{name}\" in different publications"),
                None,
                Some("Give the table the same column list (or none) in every publication of the subscription."),
            );
        }
    }
    rows.into_iter()
        .filter_map(|r| {
            let mut it = r.into_iter();
            Some((it.next().flatten()?, it.next().flatten()?))
        })
        .collect()
}

/// Records the published tables of a subscription: new ones are added (to be copied when
/// `copy_data`), ones no longer published are removed. Every table must exist locally.
fn sync_table_list(subid: i32, tables: &[(String, String)], copy_data: bool) {
    let mut missing = Vec::new();
    let mut resolved = Vec::new();
    for (schema, name) in tables {
        match catalog::local_relid(schema, name) {
            Some(oid) => resolved.push((schema, name, oid)),
            None => missing.push(format!("{}.{}", quote_ident(schema), quote_ident(name))),
        }
    }
    if !missing.is_empty() {
        error(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!("published relation {} does not exist on the subscriber", missing.join(", ")),
            Some("pgsub maps published tables to local tables of the same schema and name.".into()),
            Some("Create the table(s) on the subscriber first (the schema is not replicated)."),
        );
    }
    if copy_data {
        // Tables new to the subscription get the publisher's rows: refuse to mix them with rows
        // that are already there (the worker checks again before copying).
        for (schema, name, oid) in &resolved {
            if catalog::has_table(subid, schema, name) {
                continue;
            }
            // Only the table's own rows: an inheritance parent's children are tables of their own.
            // SAFETY: a syscache lookup of a relation that exists.
            let only = if unsafe { pg_sys::get_rel_relkind(*oid) } as u8 == b'p' { "" } else { "ONLY " };
            let q = format!("SELECT EXISTS (SELECT 1 FROM {only}{}.{})", quote_ident(schema), quote_ident(name));
            if Spi::get_one::<bool>(&q).ok().flatten().unwrap_or(false) {
                error(
                    Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!(
                        "table {}.{} is not empty; pgsub will not copy into a table that already has rows",
                        quote_ident(schema),
                        quote_ident(name)
                    ),
                    Some("copy_data => true copies every published row into the local table.".into()),
                    Some("TRUNCATE the local table first, or pass copy_data => false to replicate only new changes."),
                );
            }
        }
    }
    let state = if copy_data { catalog::SyncState::Init } else { catalog::SyncState::Ready };
    let resolved: Vec<(String, String, pg_sys::Oid)> =
        resolved.into_iter().map(|(s, n, o)| (s.clone(), n.clone(), o)).collect();
    if let Err(e) = catalog::set_tables(subid, &resolved, state) {
        error(Code::ERRCODE_INTERNAL_ERROR, format!("updating pgsub.sub_rel: {e}"), None, None);
    }
}

// Wake the launcher when the transaction that changed the catalog commits.
static WAKE_AT_COMMIT: AtomicBool = AtomicBool::new(false);
static CALLBACK_REGISTERED: AtomicBool = AtomicBool::new(false);

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT => {
            if WAKE_AT_COMMIT.swap(false, Ordering::Relaxed) {
                release_pauses();
                shmem::wake_launcher();
            }
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            if WAKE_AT_COMMIT.swap(false, Ordering::Relaxed) {
                release_pauses();
                shmem::wake_launcher();
            }
        }
        _ => {}
    }
}

/// Clears the "do not start" marks this backend set while dropping subscriptions.
fn release_pauses() {
    if !shmem::available() {
        return;
    }
    // SAFETY: MyProcPid is set in every backend.
    let me = unsafe { pg_sys::MyProcPid };
    let mut g = shmem::SHARED.exclusive();
    for s in g.slots.iter_mut() {
        if s.paused_by == me {
            s.paused_by = 0;
        }
    }
}

/// Runs one UPDATE of `pgsub.sub`, then has the launcher look at the subscriptions when the
/// transaction commits (a running worker restarts if what it depends on changed).
fn update_sub(subid: i32, change: catalog::Change) {
    if let Err(e) = catalog::update(subid, change) {
        error(Code::ERRCODE_INTERNAL_ERROR, format!("updating subscription: {e}"), None, None);
    }
    wake_launcher_at_commit();
}

fn wake_launcher_at_commit() {
    if !shmem::available() {
        return;
    }
    if !CALLBACK_REGISTERED.swap(true, Ordering::Relaxed) {
        // SAFETY: registering a static callback once per backend.
        unsafe { pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut()) };
    }
    WAKE_AT_COMMIT.store(true, Ordering::Relaxed);
}

fn create_origin(name: &str) {
    let c = CString::new(name).unwrap_or_default();
    // SAFETY: catalog operations inside a transaction.
    unsafe {
        if pg_sys::replorigin_by_name(c.as_ptr(), true) == pg_sys::InvalidRepOriginId as u16 {
            pg_sys::replorigin_create(c.as_ptr());
        }
    }
}

fn drop_origin(name: &str) {
    let c = CString::new(name).unwrap_or_default();
    // SAFETY: catalog operation inside a transaction; waits if the origin is still in use.
    unsafe { pg_sys::replorigin_drop_by_name(c.as_ptr(), true, false) };
}

/// The replication slot is created (dropped) on the publisher at once and a rollback cannot undo
/// that: like native CREATE/DROP SUBSCRIPTION with a slot, refuse inside a transaction block
/// (BEGIN … or several statements in one query), where a later statement could roll back the
/// catalog change and leave the slot behind (or the subscription without its slot).
fn prevent_in_transaction_block(what: &str, hint: &str) {
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

const SYNC_COMMIT_VALUES: [&str; 5] = ["off", "local", "remote_write", "remote_apply", "on"];

fn check_origin(origin: &str) {
    if origin != "any" && origin != "none" {
        error(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unrecognized origin value: \"{origin}\""),
            None,
            Some("Use 'any' (apply every change) or 'none' (skip changes that came to the publisher from elsewhere)."),
        );
    }
}

fn check_synchronous_commit(value: &str) {
    if !SYNC_COMMIT_VALUES.contains(&value) {
        error(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid value for synchronous_commit: \"{value}\""),
            None,
            Some("Use one of off, local, remote_write, remote_apply, on."),
        );
    }
}

#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn create_subscription(
    name: Option<&str>,
    conninfo: Option<&str>,
    publications: Option<Vec<Option<String>>>,
    enabled: default!(Option<bool>, true),
    copy_data: default!(Option<bool>, true),
    create_slot: default!(Option<bool>, true),
    slot_name: default!(Option<&str>, "NULL"),
    binary: default!(Option<bool>, false),
    streaming: default!(Option<bool>, false),
    origin: default!(Option<&str>, "'any'"),
    disable_on_error: default!(Option<bool>, false),
    synchronous_commit: default!(Option<&str>, "'off'"),
    two_phase: default!(Option<bool>, false),
) {
    require_admin();
    let name = required(name, "name");
    let conninfo = required(conninfo, "conninfo");
    let pubs_in = required(publications, "publications");
    let enabled = required(enabled, "enabled");
    let copy_data = required(copy_data, "copy_data");
    let create_slot = required(create_slot, "create_slot");
    let binary = required(binary, "binary");
    let streaming = required(streaming, "streaming");
    let origin = required(origin, "origin");
    let disable_on_error = required(disable_on_error, "disable_on_error");
    let synchronous_commit = required(synchronous_commit, "synchronous_commit");
    let two_phase = required(two_phase, "two_phase");
    let options = catalog::Options {
        copy_data,
        binary,
        streaming,
        two_phase,
        origin: origin.to_string(),
        disable_on_error,
        synchronous_commit: synchronous_commit.to_string(),
    };
    if create_slot {
        prevent_in_transaction_block(
            "pgsub.create_subscription(…, create_slot => true)",
            "Run it as a statement of its own, or create the slot on the publisher and pass create_slot => false.",
        );
    }

    check_name(name);
    check_database();
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
        if !pubs.contains(&p) {
            pubs.push(p);
        }
    }
    check_origin(origin);
    check_synchronous_commit(synchronous_commit);
    let max_prepared = Spi::get_one::<i32>("SELECT pg_catalog.current_setting('max_prepared_transactions')::int")
        .ok()
        .flatten()
        .unwrap_or(0);
    if two_phase && max_prepared == 0 {
        error(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "two_phase subscriptions need prepared transactions on the subscriber",
            Some("max_prepared_transactions is 0 here, so a remote PREPARE could not be applied.".into()),
            Some("Set max_prepared_transactions (a restart is needed) to at least the number of transactions the publisher may have prepared at once."),
        );
    }
    let slot = match slot_name {
        Some(s) => s.to_string(),
        None => default_slot_name(name),
    };
    check_slot_name(&slot);
    check_conninfo(conninfo);
    if catalog::load_by_name(name).ok().flatten().is_some() {
        error(
            Code::ERRCODE_DUPLICATE_OBJECT,
            format!("subscription \"{name}\" already exists"),
            None,
            None,
        );
    }

    let owner = caller();
    // SAFETY: catalog lookup inside a transaction.
    let require_password = !unsafe { pg_sys::superuser_arg(owner) };
    publisher::require_password_in(conninfo, require_password);
    let mut client = connect(name, conninfo, require_password);
    check_publications(&mut client, &pubs);
    let tables = published_tables(&mut client, &pubs);

    let subid = catalog::insert(&catalog::NewSubscription {
        name,
        owner,
        enabled,
        conninfo,
        publications: pubs.clone(),
        slot_name: &slot,
        options: options.clone(),
    });
    let subid = match subid {
        Ok(Some(id)) => id,
        other => error(
            Code::ERRCODE_INTERNAL_ERROR,
            format!("could not record subscription \"{name}\": {other:?}"),
            None,
            None,
        ),
    };
    sync_table_list(subid, &tables, copy_data);
    create_origin(&catalog::origin_name(subid));

    // Last, so that any earlier error leaves nothing behind on the publisher.
    if create_slot {
        if let Err(e) = client.create_logical_slot(&slot, false, SnapshotAction::NoExport, two_phase) {
            let hint = if e.sqlstate() == Some("42710") {
                Some("Use another slot_name, drop the slot on the publisher, or pass create_slot => false to use the existing slot.")
            } else {
                None
            };
            publisher::raise(&e, &format!("could not create replication slot \"{slot}\" on the publisher"), hint);
        }
        log(
            PgLogLevel::NOTICE,
            Code::ERRCODE_SUCCESSFUL_COMPLETION,
            format!("created replication slot \"{slot}\" on publisher"),
            None,
            None,
        );
    }
    client.close();
    wake_launcher_at_commit();
}

/// Stops the subscription's worker (if any) and keeps the launcher from starting another until
/// this transaction ends; waits up to 30 s for it to exit.
fn stop_worker(subid: i32) {
    if !shmem::available() {
        return;
    }
    // SAFETY: MyProcPid is set in every backend.
    let me = unsafe { pg_sys::MyProcPid };
    let pid = {
        let mut g = shmem::SHARED.exclusive();
        match g.claim(subid) {
            Some(s) => {
                s.paused_by = me;
                s.pid
            }
            None => 0,
        }
    };
    wake_launcher_at_commit();
    if pid <= 0 {
        return;
    }
    crate::process::terminate(pid);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // The worker clears its pid from the slot when it exits.
    let running = || shmem::SHARED.share().find(subid).is_some_and(|s| s.pid == pid);
    while running() && std::time::Instant::now() < deadline {
        // SAFETY: latch wait in a backend.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                50,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pg_sys::check_for_interrupts!();
    }
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn drop_subscription(name: Option<&str>, drop_slot: default!(Option<bool>, true), if_exists: default!(Option<bool>, false)) {
    require_admin();
    let name = required(name, "name");
    let drop_slot = required(drop_slot, "drop_slot");
    let if_exists = required(if_exists, "if_exists");
    let sub = match catalog::load_by_name(name).ok().flatten() {
        Some(s) => s,
        None if if_exists => {
            log(
                PgLogLevel::NOTICE,
                Code::ERRCODE_SUCCESSFUL_COMPLETION,
                format!("subscription \"{name}\" does not exist, skipping"),
                None,
                None,
            );
            return;
        }
        None => {
            sub_by_name(name);
            return;
        }
    };
    if drop_slot {
        prevent_in_transaction_block(
            "pgsub.drop_subscription(…, drop_slot => true)",
            "Run it as a statement of its own, or pass drop_slot => false and drop the slot on the publisher yourself.",
        );
    }
    if let Err(e) = catalog::delete(sub.subid) {
        error(Code::ERRCODE_INTERNAL_ERROR, format!("deleting subscription: {e}"), None, None);
    }
    stop_worker(sub.subid);
    drop_origin(&sub.origin_name());
    if drop_slot {
        let mut client = match publisher::connect(&sub.conninfo, true, Context::Backend, Some("pgsub"), !sub.owner_superuser) {
            Ok(c) => c,
            Err(e) => publisher::raise(
                &e,
                &format!(
                    "could not connect to publisher when attempting to drop replication slot \"{}\"",
                    sub.slot_name
                ),
                Some("Use pgsub.drop_subscription(name, drop_slot => false) to drop the subscription without the slot; then drop the slot on the publisher yourself (pg_drop_replication_slot)."),
            ),
        };
        match client.drop_slot(&sub.slot_name, true) {
            Ok(()) => log(
                PgLogLevel::NOTICE,
                Code::ERRCODE_SUCCESSFUL_COMPLETION,
                format!("dropped replication slot \"{}\" on publisher", sub.slot_name),
                None,
                None,
            ),
            Err(e) if e.sqlstate() == Some("42704") => log(
                PgLogLevel::WARNING,
                Code::ERRCODE_UNDEFINED_OBJECT,
                format!("replication slot \"{}\" does not exist on the publisher", sub.slot_name),
                None,
                None,
            ),
            Err(e) => publisher::raise(
                &e,
                &format!("could not drop replication slot \"{}\" on publisher", sub.slot_name),
                Some("Use pgsub.drop_subscription(name, drop_slot => false) to drop the subscription without the slot."),
            ),
        }
        client.close();
    }
    if shmem::available() {
        shmem::SHARED.exclusive().release_if_stopped(sub.subid);
    }
}

fn set_enabled(name: Option<&str>, enabled: bool) {
    require_admin();
    if enabled {
        check_database();
    }
    let name = required(name, "name");
    let sub = sub_by_name(name);
    if let Err(e) = catalog::set_enabled(sub.subid, enabled) {
        error(Code::ERRCODE_INTERNAL_ERROR, format!("updating subscription: {e}"), None, None);
    }
    wake_launcher_at_commit();
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn enable_subscription(name: Option<&str>) {
    set_enabled(name, true);
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn disable_subscription(name: Option<&str>) {
    set_enabled(name, false);
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn alter_subscription_connection(name: Option<&str>, conninfo: Option<&str>) {
    require_admin();
    let name = required(name, "name");
    let conninfo = required(conninfo, "conninfo");
    let sub = sub_by_name(name);
    require_owner_privileges(&sub);
    check_conninfo(conninfo);
    publisher::require_password_in(conninfo, !sub.owner_superuser);
    // Like native ALTER SUBSCRIPTION … CONNECTION: the new connection must work.
    connect(name, conninfo, !sub.owner_superuser).close();
    update_sub(sub.subid, catalog::Change::Conninfo(conninfo));
}

/// Like native `ALTER SUBSCRIPTION … SET (…)`: each option given (not NULL) replaces the
/// current one; a running worker restarts with them. The slot may only be renamed while the
/// subscription is disabled (the slot itself is not touched: it must exist under the new name
/// on the publisher when the subscription is enabled again).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn alter_subscription_options(
    name: Option<&str>,
    binary: default!(Option<bool>, "NULL"),
    streaming: default!(Option<bool>, "NULL"),
    disable_on_error: default!(Option<bool>, "NULL"),
    synchronous_commit: default!(Option<&str>, "NULL"),
    origin: default!(Option<&str>, "NULL"),
    slot_name: default!(Option<&str>, "NULL"),
) {
    require_admin();
    let name = required(name, "name");
    let sub = sub_by_name(name);
    require_owner_privileges(&sub);
    if let Some(o) = origin {
        check_origin(o);
    }
    if let Some(v) = synchronous_commit {
        check_synchronous_commit(v);
    }
    if let Some(slot) = slot_name {
        check_slot_name(slot);
        if sub.enabled && slot != sub.slot_name {
            error(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("cannot change the slot of enabled subscription \"{name}\""),
                None,
                Some("Disable the subscription first."),
            );
        }
    }
    update_sub(
        sub.subid,
        catalog::Change::Options { binary, streaming, disable_on_error, synchronous_commit, origin, slot_name },
    );
}

/// Like native `ALTER SUBSCRIPTION … RENAME TO`: the slot and the replication origin keep their
/// names; a running worker restarts under the new name (its application_name on the publisher).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn rename_subscription(name: Option<&str>, new_name: Option<&str>) {
    require_admin();
    let name = required(name, "name");
    let new_name = required(new_name, "new_name");
    let sub = sub_by_name(name);
    require_owner_privileges(&sub);
    check_name(new_name);
    if new_name != name && catalog::load_by_name(new_name).ok().flatten().is_some() {
        error(Code::ERRCODE_DUPLICATE_OBJECT, format!("subscription \"{new_name}\" already exists"), None, None);
    }
    update_sub(sub.subid, catalog::Change::Name(new_name));
}

/// Like native `ALTER SUBSCRIPTION … OWNER TO`: the caller needs the privileges of the current
/// owner and of the new one, who must be a superuser or a member of pgsub_admin. The worker
/// restarts and applies with the new owner's privileges; a new owner who is not a superuser must
/// authenticate with a password (see `create_subscription`).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn alter_subscription_owner(name: Option<&str>, new_owner: Option<&str>) {
    require_admin();
    let name = required(name, "name");
    let new_owner = required(new_owner, "new_owner");
    let sub = sub_by_name(name);
    require_owner_privileges(&sub);
    let role_name = CString::new(new_owner).unwrap_or_default();
    // SAFETY: catalog lookups inside a transaction.
    let (owner, caller_may, owner_super, owner_admin) = unsafe {
        let owner = pg_sys::get_role_oid(role_name.as_ptr(), true);
        if owner == pg_sys::InvalidOid {
            error(Code::ERRCODE_UNDEFINED_OBJECT, format!("role \"{new_owner}\" does not exist"), None, None);
        }
        let caller = caller();
        let admin = pg_sys::get_role_oid(c"pgsub_admin".as_ptr(), true);
        (
            owner,
            pg_sys::superuser_arg(caller) || pg_sys::has_privs_of_role(caller, owner),
            pg_sys::superuser_arg(owner),
            admin != pg_sys::InvalidOid && pg_sys::has_privs_of_role(owner, admin),
        )
    };
    if !caller_may {
        error(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must have the privileges of role \"{new_owner}\" to make it the owner of subscription \"{name}\""),
            Some("The apply worker writes with the privileges of the subscription's owner.".into()),
            None,
        );
    }
    if !owner_super && !owner_admin {
        error(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("role \"{new_owner}\" may not own subscriptions"),
            None,
            Some("The owner must be a superuser or a member of pgsub_admin."),
        );
    }
    publisher::require_password_in(&sub.conninfo, !owner_super);
    update_sub(sub.subid, catalog::Change::Owner(owner));
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn alter_subscription_publications(
    name: Option<&str>,
    publications: Option<Vec<Option<String>>>,
    copy_data: default!(Option<bool>, true),
) {
    require_admin();
    let name = required(name, "name");
    let pubs_in = required(publications, "publications");
    let copy_data = required(copy_data, "copy_data");
    if pubs_in.is_empty() || pubs_in.iter().any(|p| p.as_deref().is_none_or(str::is_empty)) {
        error(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "publications must be a non-empty array of publication names without NULLs",
            None,
            None,
        );
    }
    let pubs: Vec<String> = pubs_in.into_iter().flatten().collect();
    let sub = sub_by_name(name);
    require_owner_privileges(&sub);
    let mut client = connect(name, &sub.conninfo, !sub.owner_superuser);
    check_publications(&mut client, &pubs);
    let tables = published_tables(&mut client, &pubs);
    client.close();
    if let Err(e) = catalog::update(sub.subid, catalog::Change::Publications(pubs)) {
        error(Code::ERRCODE_INTERNAL_ERROR, format!("updating subscription: {e}"), None, None);
    }
    sync_table_list(sub.subid, &tables, copy_data);
    wake_launcher_at_commit();
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn refresh_subscription(name: Option<&str>, copy_data: default!(Option<bool>, true)) {
    require_admin();
    let name = required(name, "name");
    let copy_data = required(copy_data, "copy_data");
    let sub = sub_by_name(name);
    let mut client = connect(name, &sub.conninfo, !sub.owner_superuser);
    let tables = published_tables(&mut client, &sub.publications);
    client.close();
    sync_table_list(sub.subid, &tables, copy_data);
    // The worker re-reads its table list on restart.
    stop_worker(sub.subid);
}

/// Backs `pgsub.skip_transaction(name, lsn pg_lsn)`.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn _skip_transaction(name: Option<&str>, lsn: Option<&str>) {
    require_admin();
    let name = required(name, "name");
    let lsn = required(lsn, "lsn");
    let sub = sub_by_name(name);
    let parsed: Option<pgsub_proto::Lsn> = lsn.parse().ok().filter(|l: &pgsub_proto::Lsn| l.is_valid());
    if parsed.is_none() {
        error(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid WAL location (LSN): {lsn}"),
            None,
            Some("Use the finish LSN of the failed remote transaction, shown in pgsub.stat_subscription.last_error and the server log."),
        );
    }
    update_sub(sub.subid, catalog::Change::SkipLsn(lsn));
}

/// Masks the password of a connection string (used by the pgsub.subscription view).
#[pg_extern(immutable, parallel_safe)]
fn _mask_conninfo(conninfo: &str) -> String {
    conninfo::mask_password(conninfo)
}
