//! What the SQL functions ask of the publisher over a normal (non-replication) connection:
//! whether the publications exist (a WARNING for those that do not), which tables they publish
//! (and that no table has two column lists), whether the tables to copy are themselves
//! subscribed there (`origin => 'none'`), and the creation of the subscription's slot.
use crate::publisher::{self, Context};
use crate::report::{error, log};
use pgrx::prelude::*;
use pgsub_proto::client::{quote_literal, Client, SlotOptions, SnapshotAction};

type Code = PgSqlErrorCode;

/// Connects for a management function; `require_password`: the subscription's owner (for a new
/// one, the caller) is not a superuser.
pub(super) fn connect(sub_name: &str, conninfo: &str, require_password: bool) -> Client {
    match publisher::connect(conninfo, true, Context::Backend, Some("pgsub"), require_password) {
        Ok(c) => c,
        Err(e) => {
            // The password rule's own hint says what to change; other failures get the general one.
            let hint = match e.sqlstate() {
                Some("2F003") => None,
                // Refused for lack of room, not access (e.g. "number of requested standby
                // connections exceeds max_wal_senders").
                Some("53300") => Some(
                    "The publisher has no free WAL sender or connection: raise max_wal_senders (or max_connections) there, or end other replication connections.",
                ),
                _ => Some(
                    "Check the connection string, that the publisher is running, and its pg_hba.conf (a replication connection to the database is needed).",
                ),
            };
            publisher::raise(&e, &format!("subscription \"{sub_name}\" could not connect to the publisher"), hint)
        }
    }
}

pub(super) fn query(client: &mut Client, sql: &str, what: &str) -> Vec<Vec<Option<String>>> {
    match client.simple_query(sql) {
        Ok(rows) => rows.into_iter().map(|r| r.values).collect(),
        Err(e) => publisher::raise(&e, what, None),
    }
}

pub(super) fn sql_text_array(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| quote_literal(s)).collect();
    format!("ARRAY[{}]::text[]", inner.join(","))
}

/// Warns, as native `CREATE SUBSCRIPTION` does (and with its words), about publications the
/// publisher does not have: the subscription is created all the same, with the tables of the
/// others, and its worker reports the publisher's error until the publication exists.
pub(super) fn check_publications(client: &mut Client, pubs: &[String]) {
    let rows = query(
        client,
        &format!("SELECT pubname FROM pg_catalog.pg_publication WHERE pubname = ANY({})", sql_text_array(pubs)),
        "could not read publications on the publisher",
    );
    let found: Vec<String> = rows.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect();
    let missing: Vec<&String> = pubs.iter().filter(|p| !found.contains(p)).collect();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|p| format!("\"{p}\"")).collect();
        log(
            PgLogLevel::WARNING,
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!(
                "publication{} {} do{} not exist on the publisher",
                if missing.len() > 1 { "s" } else { "" },
                list.join(", "),
                if missing.len() > 1 { "" } else { "es" }
            ),
            None,
            Some(
                "Create the publication on the publisher, then refresh the subscription (pgsub.refresh_subscription).",
            ),
        );
    }
}

/// Warns when the slot a subscription created with `create_slot => false` is to use is not a
/// logical pgoutput slot of this database on the publisher (native does not look; its worker
/// then fails at its start, as pgsub's would, with the reason in the log only).
pub(super) fn check_existing_slot(client: &mut Client, slot: &str) {
    let rows = query(
        client,
        &format!(
            "SELECT slot_type, coalesce(plugin, ''), coalesce(database, '') = pg_catalog.current_database() \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            quote_literal(slot)
        ),
        "could not read replication slots on the publisher",
    );
    let problem = match rows.first().map(|r| r.iter().map(|v| v.as_deref().unwrap_or("")).collect::<Vec<_>>()) {
        None => "does not exist on the publisher".to_string(),
        Some(r) if r.first() != Some(&"logical") => "is not a logical replication slot".to_string(),
        Some(r) if r.get(1) != Some(&"pgoutput") => {
            format!("uses output plugin \"{}\", not pgoutput", r.get(1).copied().unwrap_or(""))
        }
        Some(r) if r.get(2) != Some(&"t") => "belongs to another database of the publisher".to_string(),
        Some(_) => return,
    };
    log(
        PgLogLevel::WARNING,
        Code::ERRCODE_UNDEFINED_OBJECT,
        format!("replication slot \"{slot}\" {problem}"),
        Some("The subscription was created with create_slot => false: its worker fails at its start until the slot is right.".into()),
        Some(&format!(
            "Create it on the publisher (SELECT pg_create_logical_replication_slot({}, 'pgoutput') in the published database), or name another with pgsub.alter_subscription_options(slot_name => …) while the subscription is disabled.",
            quote_literal(slot)
        )),
    );
}

/// Warns, as native does (PostgreSQL 16+, with its words), when `copy_data` with `origin =>
/// 'none'` copies tables that the publisher itself receives from subscriptions (native ones, or
/// pgsub's when it is installed there): their rows may have come from another origin, which the
/// initial copy cannot leave out. `tables`: those about to be copied. Best effort: a publisher
/// that cannot answer (no privilege on pgsub's catalog, say) gets no warning.
pub(super) fn warn_copy_of_other_origins(
    client: &mut Client,
    sub_name: &str,
    pubs: &[String],
    tables: &[(String, String)],
) {
    if tables.is_empty() {
        return;
    }
    let names = sql_text_array(pubs);
    let pgsub_here = client
        // pgsub runs there too and its table list is readable by this role (pgsub_admin): like
        // native's pg_subscription_rel, its subscriptions' tables count.
        .simple_query(
            "SELECT CASE WHEN pg_catalog.to_regclass('pgsub.sub_rel') IS NULL THEN false \
                         ELSE pg_catalog.has_table_privilege('pgsub.sub_rel', 'SELECT') END",
        )
        .ok()
        .and_then(|rows| rows.into_iter().next())
        .and_then(|r| r.values.into_iter().next().flatten())
        .is_some_and(|v| v == "t");
    let pgsub_rel = if pgsub_here { " OR EXISTS (SELECT 1 FROM pgsub.sub_rel s WHERE s.relid = c.oid)" } else { "" };
    // The tables by a join, not a `format(…)::regclass` of each name: the planner may evaluate
    // such a cast for every row of pg_class, and for a role that may not use pg_toast it then
    // failed ("permission denied for schema pg_toast") — the warning silently lost.
    let sql = format!(
        "SELECT t.pubname::text, t.schemaname::text, t.tablename::text \
         FROM pg_catalog.pg_publication_tables t \
         JOIN pg_catalog.pg_namespace n ON n.nspname = t.schemaname \
         JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename \
         WHERE t.pubname = ANY({names}) \
           AND (EXISTS (SELECT 1 FROM pg_catalog.pg_subscription_rel x WHERE x.srrelid = c.oid){pgsub_rel}) \
         ORDER BY 1"
    );
    let Ok(rows) = client.simple_query(&sql) else { return };
    let mut found: Vec<String> = Vec::new();
    for r in rows {
        let mut v = r.values.into_iter();
        let (Some(Some(p)), Some(Some(schema)), Some(Some(name))) = (v.next(), v.next(), v.next()) else { continue };
        if tables.iter().any(|(s, n)| *s == schema && *n == name) && !found.contains(&p) {
            found.push(p);
        }
    }
    if found.is_empty() {
        return;
    }
    let list: Vec<String> = found.iter().map(|p| format!("\"{p}\"")).collect();
    log(
        PgLogLevel::WARNING,
        Code::ERRCODE_WARNING,
        format!("subscription \"{sub_name}\" requested copy_data with origin = NONE but might copy data that had a different origin"),
        Some(format!(
            "The subscription subscribes to {} ({}) that contain{} tables that are written to by other subscriptions.",
            if found.len() > 1 { "publications" } else { "a publication" },
            list.join(", "),
            if found.len() > 1 { "" } else { "s" }
        )),
        Some("Verify that initial data copied from the publisher tables did not come from other origins."),
    );
}

/// The (schema, table) pairs the publications publish, as native's table list has them: when
/// one of the publications publishes a partitioned table through its root
/// (`publish_via_partition_root`), a partition of it listed by another publication is left out —
/// the walsender sends that partition's changes as the root's, and the root's initial copy
/// takes its rows (PostgreSQL 16's `pg_get_publication_tables` over all the publications;
/// the same rule for older publishers, where native 15 copied such rows twice).
pub(super) fn published_tables(client: &mut Client, pubs: &[String]) -> Vec<(String, String)> {
    let names = sql_text_array(pubs);
    let version = client.server_version_num();
    let sql = if version >= 160000 {
        format!(
            "SELECT DISTINCT n.nspname::text, c.relname::text \
             FROM pg_catalog.pg_get_publication_tables(VARIADIC ARRAY(\
                 SELECT pubname::text FROM pg_catalog.pg_publication WHERE pubname = ANY({names}))) g \
             JOIN pg_catalog.pg_class c ON c.oid = g.relid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace ORDER BY 1, 2"
        )
    } else if version >= 130000 {
        format!(
            "WITH r AS (SELECT DISTINCT schemaname::text AS s, tablename::text AS t, \
                            pg_catalog.format('%I.%I', schemaname, tablename)::pg_catalog.regclass AS rel \
                        FROM pg_catalog.pg_publication_tables WHERE pubname = ANY({names})) \
             SELECT s, t FROM r WHERE NOT (\
                 EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = ANY({names}) AND pubviaroot) \
                 AND EXISTS (SELECT 1 FROM pg_catalog.pg_partition_ancestors(r.rel) a \
                             JOIN r o ON o.rel = a.relid WHERE a.relid <> r.rel)) \
             ORDER BY 1, 2"
        )
    } else {
        format!(
            "SELECT DISTINCT schemaname, tablename FROM pg_catalog.pg_publication_tables \
             WHERE pubname = ANY({names}) ORDER BY 1, 2"
        )
    };
    let rows = query(client, &sql, "could not read the published tables on the publisher");
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
    let tables: Vec<(String, String)> = rows
        .into_iter()
        .filter_map(|r| {
            let mut it = r.into_iter();
            Some((it.next().flatten()?, it.next().flatten()?))
        })
        .collect();
    leave_out_own_catalog(tables)
}

/// A publication `FOR ALL TABLES` (or `FOR TABLES IN SCHEMA pgsub`) on a publisher that runs
/// pgsub too publishes pgsub's own catalog there: its subscriptions (connection strings with
/// them) and their tables. Applied here they would become subscriptions of this server, run by
/// its launcher with the publisher's slots. The tables of schema `pgsub` (this server's pgsub
/// catalog: `pgsub.control` fixes the schema) are therefore never subscribed (a WARNING names
/// them); their changes, still sent, are not applied (`worker/tables.rs`, unlisted relations).
fn leave_out_own_catalog(tables: Vec<(String, String)>) -> Vec<(String, String)> {
    let (own, rest): (Vec<_>, Vec<_>) = tables.into_iter().partition(|(schema, _)| schema == PGSUB_SCHEMA);
    if !own.is_empty() {
        let names: Vec<String> = own.iter().map(|(s, n)| format!("{s}.{n}")).collect();
        crate::report::log(
            PgLogLevel::WARNING,
            Code::ERRCODE_WARNING,
            format!("published tables that are pgsub's own catalog here are not subscribed: {}", names.join(", ")),
            Some("The publisher runs pgsub too, and the publication includes its catalog tables (FOR ALL TABLES, or schema pgsub).".into()),
            Some("Their rows (the publisher's subscriptions) stay on the publisher; publish other tables or schemas there to leave them out of the publication too."),
        );
    }
    rest
}

/// The schema of pgsub's catalog (`schema` in pgsub.control).
pub(crate) const PGSUB_SCHEMA: &str = "pgsub";

/// Options the publisher's version cannot serve: two-phase decoding needs PostgreSQL 15 (its slot
/// option and the pgoutput messages), refused with a clear error as the slot creation would fail
/// on the older server anyway. Binary and streaming, like native, are simply not asked of
/// publishers before 14 (the data comes as text, large transactions whole), said in a NOTICE.
pub(super) fn check_publisher_supports(client: &Client, options: &crate::catalog::Options) {
    let server = client.server_version_num();
    let version = pgsub_proto::client::version_string(server);
    if options.two_phase && server < 150000 {
        error(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("two_phase needs a publisher of PostgreSQL 15 or later; the publisher is {version}"),
            None,
            Some("Create the subscription with two_phase => false."),
        );
    }
    if options.failover && server < 170000 {
        error(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("failover needs a publisher of PostgreSQL 17 or later; the publisher is {version}"),
            None,
            Some("Create the subscription with failover => false."),
        );
    }
    let unsupported: Vec<&str> = [("binary", options.binary == Some(true)), ("streaming", options.streaming.streams())]
        .into_iter()
        .filter(|(_, on)| *on && server < 140000)
        .map(|(name, _)| name)
        .collect();
    if !unsupported.is_empty() {
        log(
            PgLogLevel::NOTICE,
            Code::ERRCODE_SUCCESSFUL_COMPLETION,
            format!("the publisher ({version}) does not support {}: it is not requested", unsupported.join(" and ")),
            Some("Publishers before PostgreSQL 14 send text and whole transactions only.".into()),
            None,
        );
    }
}

pub(super) fn create_slot_on_publisher(client: &mut Client, slot: &str, opts: SlotOptions) {
    if let Err(e) = client.create_logical_slot(slot, false, SnapshotAction::NoExport, opts) {
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

/// How long a drop waits for another process to let go of the slot.
const SLOT_ACTIVE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Drops a slot on the publisher, waiting up to [`SLOT_ACTIVE_WAIT`] while another process holds
/// it — not for ever, as `DROP_REPLICATION_SLOT … WAIT` (native's) does when the holder is
/// another subscriber or a `pg_recvlogical` that never lets go. Past that, a holder that is the
/// walsender of this subscription's own stopped worker (`own_app`, its application_name: busy
/// decoding a large transaction, it has not noticed the worker is gone) is waited for on. A
/// cancel ends the wait.
pub(super) fn drop_slot_when_free(
    client: &mut Client,
    slot: &str,
    own_app: Option<&str>,
) -> Result<(), pgsub_proto::client::Error> {
    let until = std::time::Instant::now() + SLOT_ACTIVE_WAIT;
    loop {
        match client.drop_slot(slot, false) {
            Err(e)
                if e.sqlstate() == Some("55006")
                    && (std::time::Instant::now() < until || held_by(client, slot, own_app)) =>
            {
                check_for_interrupts!();
                // The retry's pace (the query above is the real wait).
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            r => return r,
        }
    }
}

/// Whether the process holding `slot` on the publisher runs as `app` (its application_name).
fn held_by(client: &mut Client, slot: &str, app: Option<&str>) -> bool {
    let Some(app) = app else { return false };
    let sql = format!(
        "SELECT a.application_name FROM pg_catalog.pg_replication_slots s \
         JOIN pg_catalog.pg_stat_activity a ON a.pid = s.active_pid WHERE s.slot_name = {}",
        quote_literal(slot)
    );
    match client.simple_query(&sql) {
        Ok(rows) => rows.first().and_then(|r| r.values.first().cloned().flatten()).as_deref() == Some(app),
        Err(_) => false,
    }
}
