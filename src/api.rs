//! The SQL API (schema `pgsub`), each function a SECURITY DEFINER entry point:
//! `create_subscription`, `drop_subscription`, `enable_subscription`, `disable_subscription`,
//! `alter_subscription_connection`, `alter_subscription_publications`,
//! `alter_subscription_options`, `rename_subscription`, `alter_subscription_owner`,
//! `refresh_subscription`, `_skip_transaction` (its pg_lsn wrapper `skip_transaction` is in
//! sql/views.sql) and `_mask_conninfo` (for the `pgsub.subscription` view).
//!
//! Each validates on the spot against the publisher where native ALTER/CREATE SUBSCRIPTION would
//! (published tables exist locally as tables, one column list per table; a missing publication
//! is a WARNING), changes the catalog through `catalog.rs` in the caller's transaction, and
//! wakes the launcher when that transaction commits. Only superusers and members of `pgsub_admin` may call them; the privilege
//! rules are in the README (Security).
mod checks;
mod compare;
mod control;
mod cutover;
pub(crate) use control::wake_launcher_at_commit;
pub(crate) use cutover::advance_owned_sequences;
pub(crate) use remote::PGSUB_SCHEMA;
mod health;
mod remote;
mod verify;

use crate::catalog::{self};
use crate::publisher::{self, Context};
use crate::report::{error, log};
use crate::shmem;
use checks::*;
pub use checks::{default_slot_name, require_admin};
use control::*;
use pgrx::prelude::*;
use pgsub_proto::conninfo;
use remote::*;
use std::ffi::CString;

type Code = PgSqlErrorCode;

/// The longest periodic sequence sync interval taken: a year, in ms.
const SEQUENCE_SYNC_MAX_MS: i64 = 366 * 24 * 3600 * 1000;

/// The periodic sequence sync interval in ms (Some(0): off); a negative one, one shorter than a
/// millisecond but not zero (it would be stored as off), and one over a year are refused.
fn interval_ms(i: Option<Interval>) -> Option<i64> {
    let i = i?;
    let micros = i.as_micros();
    let hint = Some("Pass an interval such as '1 min'; '0' turns the periodic sync off.");
    if micros < 0 {
        error(Code::ERRCODE_INVALID_PARAMETER_VALUE, "sequence_sync_interval must not be negative", None, hint);
    }
    let ms = i64::try_from(micros / 1000).unwrap_or(i64::MAX);
    if micros > 0 && ms == 0 {
        error(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "sequence_sync_interval must be at least 1 millisecond",
            None,
            hint,
        );
    }
    if ms > SEQUENCE_SYNC_MAX_MS {
        error(Code::ERRCODE_INVALID_PARAMETER_VALUE, "sequence_sync_interval must be at most 1 year", None, hint);
    }
    Some(ms)
}

fn margin(m: i64) -> i64 {
    if m < 0 {
        error(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "sequence_sync_margin must not be negative",
            Some("It is how many increments the local sequences are set beyond the publisher's.".into()),
            None,
        );
    }
    m
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
    binary: default!(Option<bool>, "NULL"),
    streaming: default!(Option<AnyCompatible>, false),
    origin: default!(Option<&str>, "'any'"),
    disable_on_error: default!(Option<bool>, false),
    synchronous_commit: default!(Option<&str>, "'off'"),
    two_phase: default!(Option<bool>, false),
    run_as_owner: default!(Option<bool>, false),
    password_required: default!(Option<bool>, true),
    conflict_resolution: default!(Option<&str>, "'error'"),
    sequence_sync_interval: default!(Option<Interval>, "NULL"),
    sequence_sync_margin: default!(Option<i64>, 1000),
    failover: default!(Option<bool>, false),
    connect: default!(Option<bool>, true),
) {
    require_admin();
    let name = required(name, "name");
    let conninfo = required(conninfo, "conninfo");
    let pubs_in = required(publications, "publications");
    // Native `connect = false`: nothing is asked of the publisher, so no slot is created, no
    // table listed or copied, and the subscription starts disabled.
    let connect = required(connect, "connect");
    let enabled = required(enabled, "enabled") && connect;
    let copy_data = required(copy_data, "copy_data") && connect;
    let create_slot = required(create_slot, "create_slot") && connect;
    // NULL: the worker chooses (worker/format.rs).
    let streaming = required(streaming_mode(streaming), "streaming");
    // Case-insensitive, as natively ('ANY' is 'any').
    let origin = required(origin, "origin").to_ascii_lowercase();
    let origin = origin.as_str();
    let disable_on_error = required(disable_on_error, "disable_on_error");
    let synchronous_commit = required(synchronous_commit, "synchronous_commit");
    let two_phase = required(two_phase, "two_phase");
    let failover = required(failover, "failover");
    if failover && !connect {
        error(
            Code::ERRCODE_SYNTAX_ERROR,
            "connect => false and failover => true are mutually exclusive options",
            Some("A failover slot is created or altered on the publisher.".into()),
            Some("Create it with failover => false, then set failover with pgsub.alter_subscription_options() once the publisher can be reached."),
        );
    }
    let run_as_owner = required(run_as_owner, "run_as_owner");
    let password_required = required(password_required, "password_required");
    if !password_required {
        require_superuser_for_password_required_false();
    }
    let conflict_resolution = check_conflict_resolution(required(conflict_resolution, "conflict_resolution"));
    let mut options = catalog::Options {
        copy_data,
        binary,
        streaming,
        two_phase,
        two_phase_at_once: false,
        failover,
        origin: origin.to_string(),
        disable_on_error,
        synchronous_commit: synchronous_commit.to_string(),
        run_as_owner,
        password_required,
        conflict_resolution,
        sequence_sync_ms: interval_ms(sequence_sync_interval).filter(|ms| *ms > 0),
        sequence_sync_margin: margin(required(sequence_sync_margin, "sequence_sync_margin")),
    };
    if create_slot {
        prevent_in_transaction_block(
            "pgsub.create_subscription(…, create_slot => true)",
            "Run it as a statement of its own, or create the slot on the publisher and pass create_slot => false.",
        );
    }
    let pubs = publication_list(pubs_in);
    check_new_subscription(name, conninfo, &options);
    let slot = match slot_name {
        Some(s) => s.to_string(),
        None => default_slot_name(name),
    };
    check_slot_name(&slot);

    let owner = caller();
    // SAFETY: catalog lookup inside a transaction.
    let require_password = !unsafe { pg_sys::superuser_arg(owner) } && password_required;
    publisher::require_password_in(conninfo, require_password);
    let mut client = connect.then(|| self::connect(name, conninfo, require_password));
    let tables = match client.as_mut() {
        Some(client) => {
            check_publisher_supports(client, &options);
            check_publications(client, &pubs);
            let tables = published_tables(client, &pubs);
            if copy_data && options.origin == "none" {
                warn_copy_of_other_origins(client, name, &pubs, &tables);
            }
            tables
        }
        None => Vec::new(),
    };
    // As natively, two_phase is in effect from the start only when no table is copied first:
    // otherwise it stays pending until every table is ready (the slot is created without it,
    // and the apply worker asks for it then), so that no prepared transaction is split between
    // a table's copy and the stream.
    options.two_phase_at_once = two_phase && !copy_data && !tables.is_empty();
    let slot_two_phase = options.two_phase_at_once;

    let new =
        catalog::NewSubscription { name, owner, enabled, conninfo, publications: pubs, slot_name: &slot, options };
    let subid = match catalog::insert(&new) {
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

    let Some(mut client) = client else {
        log(
            PgLogLevel::WARNING,
            Code::ERRCODE_WARNING,
            format!("subscription \"{name}\" was created, but is not connected"),
            None,
            Some(&format!(
                "To start replication, create the replication slot {} with the pgoutput plugin on the publisher, enable the subscription, and refresh it (pgsub.refresh_subscription).",
                pgsub_proto::client::quote_literal(&slot)
            )),
        );
        return;
    };
    // Last, so that any earlier error leaves nothing behind on the publisher.
    if create_slot {
        create_slot_on_publisher(
            &mut client,
            &slot,
            pgsub_proto::client::SlotOptions { two_phase: slot_two_phase, failover },
        );
        drop_slot_if_aborted(conninfo, &slot, require_password);
    } else {
        check_existing_slot(&mut client, &slot);
    }
    if !create_slot && failover {
        // An existing slot is used: it is made a failover slot, as natively.
        if let Err(e) = client.alter_slot_failover(&slot, true) {
            publisher::raise(&e, &format!("could not alter replication slot \"{slot}\" on the publisher"), None);
        }
    }
    client.close();
    wake_launcher_at_commit();
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn drop_subscription(
    name: Option<&str>,
    drop_slot: default!(Option<bool>, true),
    if_exists: default!(Option<bool>, false),
) {
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
    if sub.is_copy() {
        // The original's worker, origin and slot are not this row's to stop or drop.
        if let Err(e) = catalog::delete(sub.subid) {
            error(Code::ERRCODE_INTERNAL_ERROR, format!("deleting subscription: {e}"), None, None);
        }
        log(
            PgLogLevel::NOTICE,
            Code::ERRCODE_SUCCESSFUL_COMPLETION,
            format!("subscription \"{name}\" was copied from another database: only its row here was removed"),
            Some(
                "The replication origin and slot it names belong to the original subscription and were left alone."
                    .into(),
            ),
            None,
        );
        return;
    }
    if drop_slot {
        prevent_in_transaction_block(
            "pgsub.drop_subscription(…, drop_slot => true)",
            "Run it as a statement of its own, or pass drop_slot => false and drop the slot on the publisher yourself.",
        );
    }
    // Tables still being synchronized may have sync slots on the publisher (named as their
    // origins): pgsub's own, dropped also when the subscription's slot is kept.
    let sync_slots = if drop_slot { Vec::new() } else { catalog::sync_origin_names(sub.subid) };
    if let Err(e) = catalog::delete(sub.subid) {
        error(Code::ERRCODE_INTERNAL_ERROR, format!("deleting subscription: {e}"), None, None);
    }
    // Whether this subscription had a worker here: only then can a walsender still holding its
    // slot be that worker's (one of a same-named subscription of another database or server —
    // a restored copy — is not, and must not be waited for beyond the usual 30 s).
    let had_worker = shmem::available()
        && shmem::SHARED
            .share()
            .find(sub.subid)
            .is_some_and(|s| s.dboid == shmem::my_database() && (s.pid > 0 || s.worker_started_at > 0));
    stop_worker(sub.subid, crate::process::StopReason::Dropped);
    drop_origin(&sub.origin_name());
    drop_sync_origins(sub.subid);
    if !sync_slots.is_empty() {
        drop_kept_subscriptions_sync_slots(&sub, &sync_slots);
    }
    if drop_slot {
        let mut client = match publisher::connect(&sub.conninfo, true, Context::Backend, Some("pgsub"), sub.must_use_password()) {
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
        drop_sync_slots(&mut client, sub.subid);
        let own_app = had_worker.then_some(sub.name.as_str());
        match drop_slot_when_free(&mut client, &sub.slot_name, own_app) {
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
                Some(if e.sqlstate() == Some("55006") {
                    "Another process uses the slot (another subscriber, pg_recvlogical): stop it, or drop the subscription without the slot with pgsub.drop_subscription(name, drop_slot => false)."
                } else {
                    "Use pgsub.drop_subscription(name, drop_slot => false) to drop the subscription without the slot."
                }),
            ),
        }
        client.close();
    }
    if shmem::available() {
        shmem::SHARED.exclusive().release_if_stopped(sub.subid);
        shmem::forget_sync_slots(sub.subid);
    }
}

fn set_enabled(name: Option<&str>, enabled: bool) {
    require_admin();
    if enabled {
        check_database();
    }
    let name = required(name, "name");
    let sub = sub_by_name(name);
    require_superuser_if_passwordless(&sub);
    if let Err(e) = catalog::set_enabled(sub.subid, enabled) {
        error(Code::ERRCODE_INTERNAL_ERROR, format!("updating subscription: {e}"), None, None);
    }
    if !enabled {
        // Returns once the worker has exited (none starts again before this transaction ends):
        // the origin's position read next is final, which a handover to another subscriber
        // relies on. Native ALTER SUBSCRIPTION … DISABLE returns at once.
        stop_worker(sub.subid, crate::process::StopReason::Disabled);
        // Where it stopped, for a worker that finds its origin gone (pg_upgrade carries no pgsub
        // origin over).
        if let Err(e) = catalog::record_stop_lsn(sub.subid, &sub.origin_name()) {
            error(Code::ERRCODE_INTERNAL_ERROR, format!("updating subscription: {e}"), None, None);
        }
    }
    wake_launcher_at_commit();
}

/// `drop_slot => false` keeps the subscription's slot, not the table synchronization slots of
/// tables still being copied (native drops those too): dropped when the publisher can be
/// reached outside a transaction block (a rollback could not bring them back); otherwise each is
/// named in a WARNING, to be dropped by hand.
fn drop_kept_subscriptions_sync_slots(sub: &catalog::Subscription, names: &[String]) {
    let leave = |why: String| {
        for n in names {
            log(
                PgLogLevel::WARNING,
                Code::ERRCODE_WARNING,
                format!("table synchronization slot \"{n}\" may be left on the publisher"),
                Some(why.clone()),
                Some(&format!(
                    "Drop it on the publisher with SELECT pg_drop_replication_slot({}), if it exists.",
                    pgsub_proto::client::quote_literal(n)
                )),
            );
        }
    };
    // SAFETY: reads the current transaction's block state.
    if unsafe { pg_sys::IsTransactionBlock() } {
        leave("pgsub.drop_subscription ran inside a transaction block, whose rollback could not bring it back.".into());
        return;
    }
    match publisher::connect(&sub.conninfo, true, Context::Backend, Some("pgsub"), sub.must_use_password()) {
        Ok(mut client) => {
            drop_sync_slots(&mut client, sub.subid);
            client.close();
        }
        Err(e) => leave(format!("Could not connect to the publisher: {e}")),
    }
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
    require_owner_privileges(&sub, "change its connection");
    check_conninfo(conninfo);
    publisher::require_password_in(conninfo, sub.must_use_password());
    // Like native ALTER SUBSCRIPTION … CONNECTION: the new connection must work.
    connect(name, conninfo, sub.must_use_password()).close();
    update_sub(sub.subid, catalog::Change::Conninfo(conninfo));
}

/// The `binary` change of `alter_subscription_options`: None unchanged, Some(None) automatic.
fn binary_option(binary: Option<bool>, binary_auto: Option<bool>) -> Option<Option<bool>> {
    match (binary, binary_auto) {
        (Some(_), Some(true)) => error(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "binary and binary_auto => true cannot be given together",
            None,
            Some("binary => true or false fixes the format; binary_auto => true lets the worker choose it."),
        ),
        (_, Some(false)) => error(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "binary_auto only takes true",
            None,
            Some("To fix the format, pass binary => true or binary => false."),
        ),
        (_, Some(true)) => Some(None),
        (b, None) => b.map(Some),
    }
}

/// Like native `ALTER SUBSCRIPTION … SET (…)`: each option given (not NULL) replaces the
/// current one; a running worker restarts with them (`binary_auto => true`: the worker chooses
/// the format again, as when `binary` was never set). The slot may only be renamed while the
/// subscription is disabled (the slot itself is not touched: it must exist under the new name
/// on the publisher when the subscription is enabled again).
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn alter_subscription_options(
    name: Option<&str>,
    binary: default!(Option<bool>, "NULL"),
    streaming: default!(Option<AnyCompatible>, "NULL::boolean"),
    disable_on_error: default!(Option<bool>, "NULL"),
    synchronous_commit: default!(Option<&str>, "NULL"),
    origin: default!(Option<&str>, "NULL"),
    slot_name: default!(Option<&str>, "NULL"),
    run_as_owner: default!(Option<bool>, "NULL"),
    password_required: default!(Option<bool>, "NULL"),
    conflict_resolution: default!(Option<&str>, "NULL"),
    sequence_sync_interval: default!(Option<Interval>, "NULL"),
    sequence_sync_margin: default!(Option<i64>, "NULL"),
    binary_auto: default!(Option<bool>, "NULL"),
    failover: default!(Option<bool>, "NULL"),
    two_phase: default!(Option<bool>, "NULL"),
) {
    require_admin();
    let name = required(name, "name");
    let binary = binary_option(binary, binary_auto);
    let sequence_sync_ms = interval_ms(sequence_sync_interval);
    let sequence_sync_margin = sequence_sync_margin.map(margin);
    let streaming = streaming_mode(streaming);
    let sub = sub_by_name(name);
    require_owner_privileges(&sub, "change its options");
    if password_required == Some(false) {
        require_superuser_for_password_required_false();
    }
    let conflict_resolution = conflict_resolution.map(check_conflict_resolution);
    // Case-insensitive, as natively ('ANY' is 'any').
    let origin_lower = origin.map(str::to_ascii_lowercase);
    let origin = origin_lower.as_deref();
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
        catalog::Change::Options {
            binary,
            streaming,
            disable_on_error,
            synchronous_commit,
            origin,
            slot_name,
            run_as_owner,
            password_required,
            conflict_resolution,
            sequence_sync_ms,
            sequence_sync_margin,
        },
    );
    if let Some(f) = failover.filter(|f| *f != sub.failover) {
        set_failover(&sub, f);
    }
    if let Some(t) = two_phase.filter(|t| *t != sub.two_phase) {
        set_two_phase(&sub, t);
    }
}

/// PostgreSQL 18's `ALTER SUBSCRIPTION … SET (two_phase = …)`, only while the subscription is
/// disabled, as natively. On: pending, enabled by the apply worker once every table is ready.
/// Off: refused while a transaction it prepared here is still prepared; a slot that already
/// decodes prepared transactions is altered on the publisher at once (PostgreSQL 18's
/// `ALTER_REPLICATION_SLOT … (TWO_PHASE false)`; an older publisher cannot).
fn set_two_phase(sub: &catalog::Subscription, on: bool) {
    if sub.enabled {
        error(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("cannot set option \"two_phase\" for enabled subscription \"{}\"", sub.name),
            None,
            Some("Disable the subscription first."),
        );
    }
    if on {
        checks::require_prepared_transactions();
        update_sub(sub.subid, catalog::Change::TwoPhase(Some(false)));
        return;
    }
    let prepared = catalog::read_one::<i64>(
        "SELECT count(*) FROM pg_catalog.pg_prepared_xacts WHERE pg_catalog.starts_with(gid, $1)",
        &[format!("pgsub_{}_", sub.subid).into()],
    )
    .ok()
    .flatten()
    .unwrap_or(0);
    if prepared > 0 {
        error(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "cannot disable two_phase when prepared transactions are present",
            Some(format!(
                "{prepared} transaction(s) of subscription \"{}\" are prepared here (pg_prepared_xacts, gid pgsub_{}_…).",
                sub.name, sub.subid
            )),
            Some("Resolve these transactions and try again."),
        );
    }
    if sub.two_phase_enabled {
        let mut client = slot_alteration(
            sub,
            "two_phase => false",
            180000,
            "two_phase cannot be turned off for a slot of a publisher before PostgreSQL 18",
            Some(format!("Slot \"{}\" decodes prepared transactions as such.", sub.slot_name)),
            Some("Drop and create the subscription again without two_phase."),
        );
        if let Err(e) = client.alter_slot_two_phase(&sub.slot_name, false) {
            publisher::raise(
                &e,
                &format!("could not alter replication slot \"{}\" on the publisher", sub.slot_name),
                None,
            );
        }
        client.close();
    }
    update_sub(sub.subid, catalog::Change::TwoPhase(None));
}

/// A connection to the publisher for altering the subscription's slot at once (`failover`,
/// `two_phase`): not inside a transaction block (the slot's change cannot be rolled back), and
/// refused (0A000, `refusal` and the version) when the publisher is older than `min_server`.
fn slot_alteration(
    sub: &catalog::Subscription,
    option: &str,
    min_server: u32,
    refusal: &str,
    detail: Option<String>,
    hint: Option<&str>,
) -> pgsub_proto::client::Client {
    prevent_in_transaction_block(
        &format!("pgsub.alter_subscription_options(…, {option})"),
        "Run it as a statement of its own: it alters the slot on the publisher at once.",
    );
    let client = match publisher::connect(&sub.conninfo, true, Context::Backend, Some("pgsub"), sub.must_use_password())
    {
        Ok(c) => c,
        Err(e) => publisher::raise(&e, "could not connect to the publisher", None),
    };
    let server = client.server_version_num();
    if server < min_server {
        client.close();
        error(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("{refusal}; the publisher is {}", pgsub_proto::client::version_string(server)),
            detail,
            hint,
        );
    }
    client
}

/// As natively, a refresh that would copy tables is refused once two_phase is in effect: a
/// transaction prepared before a new table's copy point and committed after it would be split
/// between the copy and the stream.
fn refuse_copy_under_two_phase(sub: &catalog::Subscription, copy_data: bool, call: &str) {
    if copy_data && sub.two_phase_enabled {
        error(
            Code::ERRCODE_SYNTAX_ERROR,
            format!("pgsub.{call}(…, copy_data => true) is not allowed when two_phase is enabled"),
            None,
            Some("Use copy_data => false, or drop and create the subscription again."),
        );
    }
}

/// PostgreSQL 17's `ALTER SUBSCRIPTION … SET (failover = …)`: only while the subscription is
/// disabled (as natively), and the slot on the publisher is altered at once.
fn set_failover(sub: &catalog::Subscription, failover: bool) {
    if sub.enabled {
        error(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("cannot set option \"failover\" for enabled subscription \"{}\"", sub.name),
            None,
            Some("Disable the subscription first."),
        );
    }
    let mut client = slot_alteration(
        sub,
        "failover => …",
        170000,
        "failover needs a publisher of PostgreSQL 17 or later",
        None,
        None,
    );
    if let Err(e) = client.alter_slot_failover(&sub.slot_name, failover) {
        publisher::raise(&e, &format!("could not alter replication slot \"{}\" on the publisher", sub.slot_name), None);
    }
    client.close();
    update_sub(sub.subid, catalog::Change::Failover(failover));
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
    require_owner_privileges(&sub, "rename it");
    check_name(new_name);
    // Also the same name, as native ALTER SUBSCRIPTION … RENAME TO says.
    if catalog::load_by_name(new_name).ok().flatten().is_some() {
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
    require_owner_privileges(&sub, "change its owner");
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
    publisher::require_password_in(&sub.conninfo, !owner_super && sub.password_required);
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
    let pubs = publication_list(pubs_in);
    let sub = sub_by_name(name);
    require_owner_privileges(&sub, "change its publications");
    refuse_copy_under_two_phase(&sub, copy_data, "alter_subscription_publications");
    let mut client = connect(name, &sub.conninfo, sub.must_use_password());
    check_publications(&mut client, &pubs);
    let tables = published_tables(&mut client, &pubs);
    if copy_data && sub.origin == "none" {
        warn_copy_of_other_origins(&mut client, name, &pubs, &new_tables(sub.subid, &tables));
    }
    client.close();
    if let Err(e) = catalog::update(sub.subid, catalog::Change::Publications(pubs)) {
        error(Code::ERRCODE_INTERNAL_ERROR, format!("updating subscription: {e}"), None, None);
    }
    sync_table_list(sub.subid, &tables, copy_data);
    // The apply worker restarts with the new list once this commits (first, so that it cannot
    // start another sync worker for a removed table); a removed table's sync worker is stopped
    // now, as natively, the others go on.
    stop_worker(sub.subid, crate::process::StopReason::Publications);
    // What a failing worker waits for may be what the publications changed: no backoff.
    retry_now(sub.subid);
    wake_launcher_at_commit();
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn refresh_subscription(name: Option<&str>, copy_data: default!(Option<bool>, true)) {
    require_admin();
    let name = required(name, "name");
    let copy_data = required(copy_data, "copy_data");
    let sub = sub_by_name(name);
    require_superuser_if_passwordless(&sub);
    refuse_copy_under_two_phase(&sub, copy_data, "refresh_subscription");
    let mut client = connect(name, &sub.conninfo, sub.must_use_password());
    let tables = published_tables(&mut client, &sub.publications);
    if copy_data && sub.origin == "none" {
        warn_copy_of_other_origins(&mut client, name, &sub.publications, &new_tables(sub.subid, &tables));
    }
    client.close();
    sync_table_list(sub.subid, &tables, copy_data);
    // The worker re-reads its table list on restart.
    stop_worker(sub.subid, crate::process::StopReason::Refresh);
}

/// Backs `pgsub.skip_transaction(name, lsn pg_lsn)`.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn _skip_transaction(name: Option<&str>, lsn: Option<&str>) {
    require_admin();
    let name = required(name, "name");
    let sub = sub_by_name(name);
    require_superuser_if_passwordless(&sub);
    let Some(lsn) = lsn else {
        // NULL: nothing to skip any more (native `SKIP (lsn = NONE)`); a running worker
        // restarts to forget it.
        update_sub(sub.subid, catalog::Change::SkipLsn(None));
        stop_worker(sub.subid, crate::process::StopReason::Skip);
        return;
    };
    let parsed: Option<pgsub_proto::Lsn> = lsn.parse().ok().filter(|l: &pgsub_proto::Lsn| l.is_valid());
    if parsed.is_none() {
        error(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid WAL location (LSN): {lsn}"),
            None,
            Some("Use the finish LSN of the failed remote transaction, shown in pgsub.stat_subscription.last_error and the server log."),
        );
    }
    // As natively: a transaction that finishes before the origin's position was applied already.
    // One that finishes exactly there is the next one (the origin holds the end of the last
    // applied commit, and the next commit record may start where that one ends).
    let origin_lsn = catalog::read_one::<String>(
        "SELECT pg_catalog.pg_replication_origin_progress(roname, false)::text \
         FROM pg_catalog.pg_replication_origin WHERE roname = $1",
        &[sub.origin_name().into()],
    )
    .ok()
    .flatten()
    .and_then(|s| s.parse::<pgsub_proto::Lsn>().ok());
    if let (Some(skip), Some(origin)) = (parsed, origin_lsn) {
        if origin.is_valid() && skip < origin {
            error(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("skip WAL location (LSN {skip}) must be greater than origin LSN {origin}"),
                None,
                Some("Use the finish LSN of the failed remote transaction, shown in pgsub.stat_subscription.last_error and the server log."),
            );
        }
    }
    update_sub(sub.subid, catalog::Change::SkipLsn(Some(lsn)));
    // A running worker reads skip_lsn when it starts: it restarts once this commits (a failing
    // one would at its next retry anyway), so the next remote transaction is skipped or, if it
    // does not finish there, clears skip_lsn, as natively.
    stop_worker(sub.subid, crate::process::StopReason::Skip);
}

/// Like native `pg_stat_reset_subscription_stats`: zeroes the subscription's counters (errors,
/// conflicts by type, rows and transactions applied, and those of each of its tables) and sets
/// `stats_reset`; NULL resets every
/// subscription of this database. Positions, status and the last error stay.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn reset_stats(name: default!(Option<&str>, "NULL")) {
    require_admin_role();
    let subs = match name {
        Some(n) => {
            let sub = sub_by_name(n);
            require_owner_privileges(&sub, "reset its statistics");
            vec![sub]
        }
        // Every subscription the caller may reset; the others are named in a NOTICE.
        None => {
            let all = catalog::load_all().unwrap_or_else(|e| {
                error(Code::ERRCODE_INTERNAL_ERROR, format!("reading subscriptions: {e}"), None, None)
            });
            let (mine, others): (Vec<_>, Vec<_>) = all.into_iter().partition(may_act_as_owner);
            if !others.is_empty() {
                let names: Vec<String> = others.iter().map(|s| format!("\"{}\"", s.name)).collect();
                log(
                    PgLogLevel::NOTICE,
                    Code::ERRCODE_WARNING,
                    format!("statistics of subscription(s) {} not reset", names.join(", ")),
                    Some("Resetting a subscription's statistics needs the privileges of its owner (and superuser for one with password_required = false).".into()),
                    None,
                );
            }
            mine
        }
    };
    if !shmem::available() {
        return;
    }
    let at = crate::process::now();
    let mut g = shmem::SHARED.exclusive();
    let here = shmem::my_database();
    for sub in &subs {
        if let Some(s) = g.find_mut(sub.subid).filter(|s| s.dboid == here) {
            s.reset_counters(at);
            crate::monitor::reset_tables(&mut g, sub.subid);
        }
    }
}

/// Masks the password of a connection string (used by the pgsub.subscription view).
#[pg_extern(immutable, parallel_safe)]
fn _mask_conninfo(conninfo: &str) -> String {
    conninfo::mask_password(conninfo)
}

/// Run by the extension's script at `CREATE EXTENSION`: warns when pgsub is not preloaded (the
/// extension works as a catalog then, but nothing would apply a subscription), and has the
/// supervisor look at this database once the creating transaction commits.
#[pg_extern(volatile, parallel_unsafe)]
fn _extension_created() {
    if !shmem::available() {
        log(
            PgLogLevel::WARNING,
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "pgsub is not loaded through shared_preload_libraries",
            Some("Subscriptions cannot be created or enabled until the server loads pgsub at start.".into()),
            Some("Add pgsub to shared_preload_libraries (for example ALTER SYSTEM SET shared_preload_libraries = 'pgsub', keeping any libraries already listed) and restart the server."),
        );
        return;
    }
    wake_launcher_at_commit();
}
