//! The subscription catalog (`pgsub.sub`, `pgsub.sub_rel`) as Rust values, read and written
//! through SPI: the only module with SQL against pgsub's tables (as PostgreSQL keeps every
//! access to `pg_subscription` in `catalog/pg_subscription.c`). Every function here must run
//! inside a transaction. The SQL functions (`api.rs`) run as SECURITY DEFINER and call the
//! plain functions; the workers, which run as the subscription owner, get the same statements
//! run as superuser (`as_superuser`) where noted.
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::spi::SpiResult;
pub use pgsub_core::state::{Resolution, StreamingMode, SyncState};
use pgsub_proto::Lsn;

/// One row of `pgsub.sub`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Subscription {
    pub subid: i32,
    pub name: String,
    pub owner: u32,
    pub enabled: bool,
    pub conninfo: String,
    pub publications: Vec<String>,
    pub slot_name: String,
    pub copy_data: bool,
    /// The stream in binary (Some(true)), in text (Some(false)), or chosen by the worker at each
    /// start (None: `worker/format.rs`).
    pub binary: Option<bool>,
    pub streaming: StreamingMode,
    pub two_phase: bool,
    /// `two_phase` is in effect (state `e`): the stream asks for prepared transactions. While
    /// it is asked for and not in effect (`p`), the stream runs without it until every table
    /// is ready.
    pub two_phase_enabled: bool,
    pub origin: String,
    pub disable_on_error: bool,
    pub synchronous_commit: String,
    /// PostgreSQL 16's `run_as_owner`: apply as the subscription owner (true) or as each
    /// table's owner (false, the default).
    pub run_as_owner: bool,
    /// PostgreSQL 16's `password_required` (only a superuser may turn it off).
    pub password_required: bool,
    pub skip_lsn: Option<Lsn>,
    /// What the apply worker does with a conflict.
    pub conflict_resolution: Resolution,
    /// Periodic sequence sync: its interval in ms (None: off) and the margin in increments.
    pub sequence_sync_ms: Option<i64>,
    pub sequence_sync_margin: i64,
    /// The owner is a superuser (read with the row). Otherwise the publisher connection must
    /// authenticate with a password given in `conninfo` (see `publisher::connect`).
    pub owner_superuser: bool,
    /// The database the subscription was created in (`subdbid`; 0 in a catalog created by a
    /// build before that column: taken as this database).
    pub dbid: u32,
    /// PostgreSQL 17's `failover`: the slot is created (or altered) to be synchronized to the
    /// publisher's standbys.
    pub failover: bool,
    /// Whether the owner role may log in (None: it no longer exists). A worker connects as the
    /// owner: the launcher does not start one that could not (`owner_problem`).
    pub owner_can_login: Option<bool>,
    pub owner_name: Option<String>,
}

impl Subscription {
    /// Whether the publisher connection must authenticate with a password given in `conninfo`
    /// (native 16: the owner is not a superuser and `password_required` is on).
    pub fn must_use_password(&self) -> bool {
        !self.owner_superuser && self.password_required
    }

    /// Whether this row was copied from another database with `CREATE DATABASE … TEMPLATE`: its
    /// id, origin and slot are the original subscription's, so it is never run here and
    /// dropping it removes only the row.
    pub fn is_copy(&self) -> bool {
        self.dbid != 0 && self.dbid != crate::shmem::my_database()
    }

    /// Why no worker can connect as the owner: the role was dropped (`DROP ROLE` does not know
    /// pgsub's catalog, where native refuses to drop a subscription's owner) or may not log in.
    pub fn owner_problem(&self) -> Option<String> {
        match self.owner_can_login {
            Some(true) => None,
            Some(false) => Some(format!(
                "the owner of subscription \"{}\" (role {}) is not permitted to log in, so no worker can run as it",
                self.name,
                self.owner_name
                    .as_deref()
                    .map(pgsub_proto::client::quote_ident)
                    .unwrap_or_else(|| self.owner.to_string())
            )),
            None => Some(format!(
                "the owner of subscription \"{}\" (role oid {}) no longer exists, so no worker can run as it",
                self.name, self.owner
            )),
        }
    }

    /// Replication origin that records how far this subscription has applied.
    pub fn origin_name(&self) -> String {
        origin_name(self.subid)
    }

    /// A fingerprint of what a running worker depends on: when it changes the worker restarts.
    pub fn config_hash(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            &self.name,
            &self.owner,
            self.owner_superuser,
            &self.conninfo,
            &self.publications,
            &self.slot_name,
            self.binary,
            self.streaming.as_str(),
            self.two_phase,
            &self.origin,
            &self.synchronous_commit,
            self.conflict_resolution.as_str(),
        )
            .hash(&mut h);
        (self.run_as_owner, self.password_required).hash(&mut h);
        (self.sequence_sync_ms, self.sequence_sync_margin).hash(&mut h);
        h.finish()
    }
}

/// Runs `f` as the bootstrap superuser. The apply worker runs as the subscription owner, who may
/// be a pgsub_admin member without any privilege on pgsub's catalog tables (they hold every
/// subscription's password, so they stay closed): the worker's own catalog statements run
/// through this. The previous user id comes back afterwards, also when `f` raises (and a
/// transaction abort restores it too).
pub fn as_superuser<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(pg_sys::Oid, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: puts back the user id and security context read below.
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) };
        }
    }
    let mut user = pg_sys::InvalidOid;
    let mut context = 0;
    // SAFETY: reads and sets this backend's current user id; SECURITY_LOCAL_USERID_CHANGE keeps
    // SET ROLE / SET SESSION AUTHORIZATION from being used meanwhile.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID),
            context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    let _restore = Restore(user, context);
    crate::process::pin_search_path();
    f()
}

pub fn origin_name(subid: i32) -> String {
    format!("pgsub_{subid}")
}

/// This server's system identifier (`pg_control_system()`).
fn system_identifier() -> u64 {
    // SAFETY: reads the control file's identifier, set once at startup.
    unsafe { pg_sys::GetSystemIdentifier() }
}

/// The name of a table's synchronization slot on the publisher, and of its local replication
/// origin: `pgsub_<subid>_sync_<relid>_<system identifier>`. The system identifier keeps the
/// subscriptions of another server that have the same id (every server counts from 1) away from
/// this server's slots, as native's `pg_<subid>_sync_<relid>_<sysid>` does.
pub fn sync_slot_name(subid: i32, relid: u32) -> String {
    format!("pgsub_{subid}_sync_{relid}_{}", system_identifier())
}

/// A LIKE pattern of the subscription's table synchronization slots made by this server.
pub fn sync_slot_pattern(subid: i32) -> String {
    format!("pgsub\\_{subid}\\_sync\\_%\\_{}", system_identifier())
}

/// The table of a synchronization slot or origin name of the subscription made by this server.
pub fn sync_slot_relid(subid: i32, name: &str) -> Option<u32> {
    name.strip_prefix(&format!("pgsub_{subid}_sync_"))
        .and_then(|r| r.strip_suffix(&format!("_{}", system_identifier())))
        .and_then(|r| r.parse::<u32>().ok())
}

const SUB_COLUMNS: &str = "subid, subname::text, subowner::int8, enabled, conninfo, publications, \
     coalesce(slot_name::text, subname::text), copy_data, \"binary\", streaming, two_phase, origin, \
     disable_on_error, synchronous_commit, skip_lsn::text, \
     coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid = subowner), false), \
     run_as_owner, password_required, conflict_resolution, \
     (pg_catalog.date_part('epoch', sequence_sync_interval) * 1000)::int8, sequence_sync_margin, \
     (pg_catalog.to_jsonb(sub.*) ->> 'subdbid')::int8, \
     coalesce((pg_catalog.to_jsonb(sub.*) ->> 'failover')::boolean, false), \
     coalesce(pg_catalog.to_jsonb(sub.*) ->> 'two_phase_state', CASE WHEN two_phase THEN 'e' ELSE 'd' END) = 'e', \
     (SELECT r.rolcanlogin FROM pg_catalog.pg_roles r WHERE r.oid = subowner), \
     (SELECT r.rolname::text FROM pg_catalog.pg_roles r WHERE r.oid = subowner)";

fn row_to_sub(row: &pgrx::spi::SpiHeapTupleData) -> SpiResult<Subscription> {
    Ok(Subscription {
        subid: row.get::<i32>(1)?.unwrap_or_default(),
        name: row.get::<String>(2)?.unwrap_or_default(),
        owner: row.get::<i64>(3)?.unwrap_or_default() as u32,
        enabled: row.get::<bool>(4)?.unwrap_or_default(),
        conninfo: row.get::<String>(5)?.unwrap_or_default(),
        publications: row.get::<Vec<Option<String>>>(6)?.unwrap_or_default().into_iter().flatten().collect(),
        slot_name: row.get::<String>(7)?.unwrap_or_default(),
        copy_data: row.get::<bool>(8)?.unwrap_or_default(),
        binary: row.get::<bool>(9)?,
        streaming: row.get::<String>(10)?.and_then(|m| StreamingMode::parse(&m)).unwrap_or_default(),
        two_phase: row.get::<bool>(11)?.unwrap_or_default(),
        origin: row.get::<String>(12)?.unwrap_or_else(|| "any".into()),
        disable_on_error: row.get::<bool>(13)?.unwrap_or_default(),
        synchronous_commit: row.get::<String>(14)?.unwrap_or_else(|| "off".into()),
        skip_lsn: row.get::<String>(15)?.and_then(|s| s.parse().ok()),
        owner_superuser: row.get::<bool>(16)?.unwrap_or(false),
        run_as_owner: row.get::<bool>(17)?.unwrap_or(false),
        password_required: row.get::<bool>(18)?.unwrap_or(true),
        conflict_resolution: row.get::<String>(19)?.and_then(|r| Resolution::parse(&r)).unwrap_or_default(),
        sequence_sync_ms: row.get::<i64>(20)?,
        sequence_sync_margin: row.get::<i64>(21)?.unwrap_or(0),
        dbid: row.get::<i64>(22)?.unwrap_or(0) as u32,
        failover: row.get::<bool>(23)?.unwrap_or(false),
        two_phase_enabled: row.get::<bool>(24)?.unwrap_or(false),
        owner_can_login: row.get::<bool>(25)?,
        owner_name: row.get::<String>(26)?,
    })
}

/// One value of a read-only query. pgrx's `Spi::get_one*` run every statement as a write, which
/// gives the calling transaction an xid: a long call (`wait_for_catchup`, `verify_subscription`)
/// then held one for its whole length, and creating a logical slot on this server (a publisher
/// database here, a downstream subscriber's table sync) waited for it. A hot standby refuses it
/// too. After a write in the same transaction the query still sees it (pgrx runs it read-write).
pub fn read_one<'mcx, T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid<'mcx>]) -> SpiResult<Option<T>> {
    Spi::connect(|c| c.select(sql, Some(1), args)?.first().get_one::<T>())
}

/// True when `CREATE EXTENSION pgsub` has been run in the current database.
pub fn extension_exists() -> bool {
    read_one::<bool>("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pgsub')", &[])
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Every subscription, ordered by subid.
pub fn load_all() -> SpiResult<Vec<Subscription>> {
    as_superuser(|| {
        Spi::connect(|client| {
            let table = client.select(&format!("SELECT {SUB_COLUMNS} FROM pgsub.sub ORDER BY subid"), None, &[])?;
            let mut out = Vec::new();
            for row in table {
                out.push(row_to_sub(&row)?);
            }
            Ok(out)
        })
    })
}

/// The owner of every subscription of this database, by subid (read-only: the views call it
/// through `stats::ErrorReader`, also on a hot standby).
pub fn owners() -> SpiResult<Vec<(i32, u32)>> {
    as_superuser(|| {
        Spi::connect(|client| {
            let table = client.select("SELECT subid, subowner::int8 FROM pgsub.sub", None, &[])?;
            let mut out = Vec::new();
            for row in table {
                if let (Some(subid), Some(owner)) = (row.get::<i32>(1)?, row.get::<i64>(2)?) {
                    out.push((subid, owner as u32));
                }
            }
            Ok(out)
        })
    })
}

/// One subscription by id.
pub fn load(subid: i32) -> SpiResult<Option<Subscription>> {
    as_superuser(|| {
        Spi::connect(|client| {
            let table = client.select(
                &format!("SELECT {SUB_COLUMNS} FROM pgsub.sub WHERE subid = $1"),
                None,
                &[subid.into()],
            )?;
            match table.into_iter().next() {
                Some(row) => Ok(Some(row_to_sub(&row)?)),
                None => Ok(None),
            }
        })
    })
}

/// One subscription by name.
pub fn load_by_name(name: &str) -> SpiResult<Option<Subscription>> {
    as_superuser(|| {
        Spi::connect(|client| {
            let table = client.select(
                &format!("SELECT {SUB_COLUMNS} FROM pgsub.sub WHERE subname = $1"),
                None,
                &[name.into()],
            )?;
            match table.into_iter().next() {
                Some(row) => Ok(Some(row_to_sub(&row)?)),
                None => Ok(None),
            }
        })
    })
}

/// One row of `pgsub.sub_rel`.
#[derive(Clone, Debug)]
pub struct SubRel {
    /// The local table (0 when the catalog row has none).
    pub relid: u32,
    pub remote_schema: String,
    pub remote_name: String,
    pub sync_state: SyncState,
    pub state_lsn: Option<Lsn>,
}

pub fn load_rels(subid: i32) -> SpiResult<Vec<SubRel>> {
    as_superuser(|| {
        Spi::connect(|client| {
            let table = client.select(
                "SELECT remote_schema, remote_name, sync_state::text, state_lsn::text, coalesce(relid, 0)::int8 \
             FROM pgsub.sub_rel WHERE subid = $1 ORDER BY remote_schema, remote_name",
                None,
                &[subid.into()],
            )?;
            let mut out = Vec::new();
            for row in table {
                out.push(SubRel {
                    remote_schema: row.get::<String>(1)?.unwrap_or_default(),
                    remote_name: row.get::<String>(2)?.unwrap_or_default(),
                    sync_state: row
                        .get::<String>(3)?
                        .and_then(|s| s.chars().next())
                        .and_then(SyncState::from_char)
                        .unwrap_or(SyncState::Init),
                    state_lsn: row.get::<String>(4)?.and_then(|s| s.parse().ok()),
                    relid: row.get::<i64>(5)?.and_then(|r| u32::try_from(r).ok()).unwrap_or(0),
                });
            }
            Ok(out)
        })
    })
}

/// Sets `enabled` (used by disable_on_error from the worker).
/// The apply worker asked the walsender for prepared transactions: `two_phase` is in effect (the
/// worker's own write, as the catalog's superuser: its owner has no privilege on the table).
pub fn set_two_phase_enabled(subid: i32) -> SpiResult<()> {
    as_superuser(|| Spi::run_with_args("UPDATE pgsub.sub SET two_phase_state = 'e' WHERE subid = $1", &[subid.into()]))
}

/// Whether the catalog has the `two_phase_state` column (a catalog created by a build before it
/// takes two_phase as in effect from the start, as that build did).
fn has_two_phase_state() -> bool {
    sub_has_column("two_phase_state")
}

/// Whether `pgsub.sub` has column `name` (a catalog created by an earlier build may lack it).
fn sub_has_column(name: &str) -> bool {
    read_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = 'pgsub.sub'::pg_catalog.regclass \
         AND attname = $1 AND NOT attisdropped)",
        &[name.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// Records the position of the subscription's replication origin as `stop_lsn`: what a worker
/// that finds its origin gone (after a pg_upgrade) goes on from. Written by disable_subscription
/// once it stopped the worker, and by the apply worker as it exits (a clean shutdown of the
/// server too). Never waits for the row: a backend dropping or changing the subscription holds it
/// while it waits for the worker to exit (and records or clears it itself); nothing is written
/// when the origin is gone.
pub fn record_stop_lsn(subid: i32, origin: &str) -> SpiResult<bool> {
    if !sub_has_column("stop_lsn") {
        return Ok(true);
    }
    // True when written, or when there is nothing to write (no such row or origin); false when
    // another transaction holds the row.
    as_superuser(|| {
        Spi::connect_mut(|c| {
            let r = c.update(
                "WITH r AS (SELECT subid FROM pgsub.sub WHERE subid = $1 FOR NO KEY UPDATE SKIP LOCKED), \
                      o AS (SELECT coalesce(pg_catalog.pg_replication_origin_progress(roname, false), '0/0') AS lsn \
                            FROM pg_catalog.pg_replication_origin WHERE roname = $2), \
                      u AS (UPDATE pgsub.sub s SET stop_lsn = o.lsn FROM r, o WHERE s.subid = r.subid RETURNING 1) \
                 SELECT EXISTS (SELECT 1 FROM u) OR NOT EXISTS (SELECT 1 FROM o) \
                        OR NOT EXISTS (SELECT 1 FROM pgsub.sub WHERE subid = $1)",
                None,
                &[subid.into(), origin.into()],
            )?;
            Ok(r.first().get_one::<bool>()?.unwrap_or(true))
        })
    })
}

/// `stop_lsn` of a subscription, if recorded.
pub fn stop_lsn(subid: i32) -> Option<Lsn> {
    if !sub_has_column("stop_lsn") {
        return None;
    }
    // 0/0 is a record too: the worker stopped before it applied anything.
    as_superuser(|| read_one::<String>("SELECT stop_lsn::text FROM pgsub.sub WHERE subid = $1", &[subid.into()]))
        .ok()
        .flatten()
        .and_then(|t| t.parse::<Lsn>().ok())
}

/// Forgets `stop_lsn` once the worker runs again (it applies past it). Never waits for the row:
/// a disable_subscription holding it (and waiting for this worker to stop) records a new one.
pub fn forget_stop_lsn(subid: i32) {
    if !sub_has_column("stop_lsn") {
        return;
    }
    let r = as_superuser(|| {
        Spi::run_with_args(
            "WITH r AS (SELECT subid FROM pgsub.sub WHERE subid = $1 AND stop_lsn IS NOT NULL \
                        FOR NO KEY UPDATE SKIP LOCKED) \
             UPDATE pgsub.sub s SET stop_lsn = NULL FROM r WHERE s.subid = r.subid",
            &[subid.into()],
        )
    });
    if let Err(e) = r {
        crate::report::error(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("updating pgsub.sub: {e}"), None, None);
    }
}

pub fn set_enabled(subid: i32, enabled: bool) -> SpiResult<()> {
    as_superuser(|| {
        Spi::connect_mut(|client| {
            client.update(
                "UPDATE pgsub.sub SET enabled = $2 WHERE subid = $1",
                None,
                &[subid.into(), enabled.into()],
            )?;
            Ok(())
        })
    })
}

/// Clears `skip_lsn` once the transaction it named has been skipped.
pub fn clear_skip_lsn(subid: i32, lsn: Lsn) -> SpiResult<()> {
    // Only the skip that was done: a skip_lsn the user changed meanwhile stays (as natively).
    as_superuser(|| {
        Spi::connect_mut(|client| {
            client.update(
                "UPDATE pgsub.sub SET skip_lsn = NULL WHERE subid = $1 AND skip_lsn = $2::pg_lsn",
                None,
                &[subid.into(), lsn.to_string().as_str().into()],
            )?;
            Ok(())
        })
    })
}

/// Moves a table to `state` (the worker: DATASYNC when its copy starts, READY once the stream
/// passed its copy point). As superuser.
pub fn set_table_state(subid: i32, schema: &str, name: &str, state: SyncState) -> SpiResult<()> {
    let st = state.as_char().to_string();
    as_superuser(|| {
        Spi::run_with_args(
            "UPDATE pgsub.sub_rel SET sync_state = $4::\"char\" WHERE subid = $1 AND remote_schema = $2 AND remote_name = $3",
            &[subid.into(), schema.into(), name.into(), st.as_str().into()],
        )
    })
}

/// The publisher's table recorded for local table `relid` is now named `schema.name` (renamed
/// on both sides). As superuser.
pub fn rename_remote_table(subid: i32, relid: pg_sys::Oid, schema: &str, name: &str) -> SpiResult<()> {
    as_superuser(|| {
        Spi::run_with_args(
            "UPDATE pgsub.sub_rel SET remote_schema = $3, remote_name = $4 WHERE subid = $1 AND relid = $2",
            &[subid.into(), relid.into(), schema.into(), name.into()],
        )
    })
}

/// The publisher's tables recorded for local tables `names` (relid, schema, name) are now so
/// named (renamed, or swapped, on both sides). Names are unique per subscription, checked row by
/// row: every one first goes through a name no table has (an empty schema name). As superuser.
pub fn set_remote_names(subid: i32, names: &[(u32, String, String)]) -> SpiResult<()> {
    for (relid, _, _) in names {
        rename_remote_table(subid, pg_sys::Oid::from(*relid), "", &format!("pgsub rename {relid}"))?;
    }
    for (relid, schema, name) in names {
        rename_remote_table(subid, pg_sys::Oid::from(*relid), schema, name)?;
    }
    Ok(())
}

/// A table's copy committed: FINISHEDCOPY at the copy point `lsn`, with its row count and local
/// table. As superuser.
pub fn set_table_copied(
    subid: i32,
    schema: &str,
    name: &str,
    lsn: Lsn,
    rows: i64,
    relid: pg_sys::Oid,
) -> SpiResult<()> {
    let st = SyncState::FinishedCopy.as_char().to_string();
    as_superuser(|| {
        Spi::run_with_args(
            "UPDATE pgsub.sub_rel SET sync_state = $7::\"char\", state_lsn = $4::pg_lsn, rows_copied = $5, relid = $6 \
             WHERE subid = $1 AND remote_schema = $2 AND remote_name = $3",
            &[
                subid.into(),
                schema.into(),
                name.into(),
                lsn.to_string().as_str().into(),
                rows.into(),
                relid.into(),
                st.as_str().into(),
            ],
        )
    })
}

/// One table of a subscription by its local table (the sync worker's own row).
pub fn load_rel(subid: i32, relid: u32) -> SpiResult<Option<SubRel>> {
    Ok(load_rels(subid)?.into_iter().find(|r| r.relid == relid))
}

/// A sync worker moves its table to `state`; `lsn` and `rows` replace `state_lsn` and
/// `rows_copied` when given. As superuser.
pub fn set_sync_state(subid: i32, relid: u32, state: SyncState, lsn: Option<Lsn>, rows: Option<i64>) -> SpiResult<()> {
    let st = state.as_char().to_string();
    let lsn = lsn.map(|l| l.to_string());
    as_superuser(|| {
        Spi::run_with_args(
            "UPDATE pgsub.sub_rel SET sync_state = $3::\"char\", state_lsn = coalesce($4::pg_lsn, state_lsn), \
             rows_copied = coalesce($5, rows_copied) WHERE subid = $1 AND relid = $2",
            &[subid.into(), pg_sys::Oid::from(relid).into(), st.as_str().into(), lsn.into(), rows.into()],
        )
    })
}

/// Drops a replication origin pgsub made, noting in which transaction (`pgsub.released_origin`),
/// the calling one: the rows it stamped are never taken for a later origin's that gets the same
/// id. `nowait`: fail at once instead of waiting while the origin is in use. A missing origin is
/// fine.
pub fn drop_origin(name: &str, nowait: bool) {
    let noted = as_superuser(|| {
        Spi::run_with_args(
            "INSERT INTO pgsub.released_origin (roident, released_xid, released_at) \
             SELECT roident::integer, pg_catalog.pg_current_xact_id(), pg_catalog.now() \
               FROM pg_catalog.pg_replication_origin WHERE roname = $1 \
             ON CONFLICT (roident) DO UPDATE \
                SET released_xid = EXCLUDED.released_xid, released_at = EXCLUDED.released_at",
            &[name.into()],
        )
    });
    if let Err(e) = noted {
        crate::report::error(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("noting replication origin \"{name}\" in pgsub.released_origin: {e}"),
            None,
            None,
        );
    }
    let c = std::ffi::CString::new(name).unwrap_or_default();
    // SAFETY: catalog operation inside the caller's transaction.
    unsafe { pg_sys::replorigin_drop_by_name(c.as_ptr(), true, nowait) };
}

/// Whether a row written by local transaction `xid` (32 bits, as `xmin` shows it) and stamped
/// with origin `roident` was written before pgsub dropped an origin of that id: then it is the
/// dropped origin's, whatever origin has the id since.
pub fn written_before_release(roident: i32, xid: i64) -> bool {
    let released = as_superuser(|| {
        read_one::<i64>(
            "SELECT (released_xid::text::int8 % 4294967296) FROM pgsub.released_origin WHERE roident = $1",
            &[roident.into()],
        )
    });
    match released {
        // Modulo 2^32, as PostgreSQL compares transaction ids (TransactionIdPrecedes).
        Ok(Some(r)) => ((xid as u32).wrapping_sub(r as u32) as i32) < 0,
        _ => false,
    }
}

/// The names of a subscription's table synchronization origins (`pgsub_<subid>_sync_<relid>_<sysid>`).
/// Read-write SPI, so a new snapshot: origins sync workers created after the calling statement
/// began are seen too.
pub fn sync_origin_names(subid: i32) -> Vec<String> {
    let prefix = format!("pgsub_{subid}_sync_");
    Spi::connect_mut(|c| {
        let rows = c.update(
            "SELECT roname::text FROM pg_catalog.pg_replication_origin WHERE starts_with(roname, $1)",
            None,
            &[prefix.as_str().into()],
        )?;
        let mut out = Vec::new();
        for r in rows {
            if let Some(n) = r.get::<String>(1)? {
                out.push(n);
            }
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .unwrap_or_default()
}

/// The table is already part of the subscription.
/// Whether the subscription has the table, bound to local table `relid` (one dropped and created
/// again under the name is another table: new to the subscription, as natively).
pub fn has_table(subid: i32, schema: &str, name: &str, relid: pg_sys::Oid) -> bool {
    read_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pgsub.sub_rel WHERE subid = $1 AND remote_schema = $2 AND remote_name = $3 \
                        AND (relid = $4 OR relid IS NULL))",
        &[subid.into(), schema.into(), name.into(), relid.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// Another subscription of this database replicates into local table `relid` (several
/// publishers consolidated into one table): the rows there may be its, and a copy adds to them.
/// Its name, if so.
pub fn replicated_by_another(subid: i32, relid: pg_sys::Oid) -> Option<String> {
    as_superuser(|| {
        read_one::<String>(
            "SELECT s.subname::text FROM pgsub.sub_rel r JOIN pgsub.sub s USING (subid) \
             WHERE r.relid = $1 AND r.subid <> $2 ORDER BY s.subname LIMIT 1",
            &[relid.into(), subid.into()],
        )
    })
    .ok()
    .flatten()
}

/// Makes the subscription's tables exactly `tables` (schema, name, local table): tables no longer
/// published are removed; new ones start in `state`; known ones keep their state — unless their
/// local table is another one now (dropped and created again: native drops its
/// pg_subscription_rel row with the table), which starts in `state` too.
pub fn set_tables(subid: i32, tables: &[(String, String, pg_sys::Oid)], state: SyncState) -> SpiResult<()> {
    let schemas: Vec<String> = tables.iter().map(|t| t.0.clone()).collect();
    let names: Vec<String> = tables.iter().map(|t| t.1.clone()).collect();
    let st = state.as_char().to_string();
    Spi::connect_mut(|c| -> SpiResult<()> {
        c.update(
            "DELETE FROM pgsub.sub_rel r WHERE r.subid = $1 AND (r.remote_schema, r.remote_name) \
             NOT IN (SELECT * FROM unnest($2::text[], $3::text[]))",
            None,
            &[subid.into(), schemas.into(), names.into()],
        )?;
        for (schema, name, oid) in tables {
            c.update(
                "INSERT INTO pgsub.sub_rel AS r (subid, remote_schema, remote_name, relid, sync_state) \
                 VALUES ($1, $2, $3, $4, $5::\"char\") \
                 ON CONFLICT (subid, remote_schema, remote_name) DO UPDATE SET relid = EXCLUDED.relid, \
                   sync_state = CASE WHEN r.relid IS NULL OR r.relid = EXCLUDED.relid THEN r.sync_state ELSE EXCLUDED.sync_state END, \
                   state_lsn = CASE WHEN r.relid IS NULL OR r.relid = EXCLUDED.relid THEN r.state_lsn END, \
                   rows_copied = CASE WHEN r.relid IS NULL OR r.relid = EXCLUDED.relid THEN r.rows_copied ELSE 0 END",
                None,
                &[subid.into(), schema.as_str().into(), name.as_str().into(), (*oid).into(), st.as_str().into()],
            )?;
        }
        Ok(())
    })
}

/// A new subscription's row (as create_subscription validated it); returns its id.
pub struct NewSubscription<'a> {
    pub name: &'a str,
    pub owner: pg_sys::Oid,
    pub enabled: bool,
    pub conninfo: &'a str,
    pub publications: Vec<String>,
    pub slot_name: &'a str,
    pub options: Options,
}

/// The options of a subscription that `create_subscription` takes and
/// `alter_subscription_options` changes (None there: unchanged).
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub copy_data: bool,
    /// None: chosen by the worker (`worker/format.rs`).
    pub binary: Option<bool>,
    pub streaming: StreamingMode,
    pub two_phase: bool,
    /// With `two_phase`: in effect from the start (no table to copy first), as native enables it
    /// when `copy_data` is off and the subscription has tables; otherwise pending.
    pub two_phase_at_once: bool,
    pub failover: bool,
    pub origin: String,
    pub disable_on_error: bool,
    pub synchronous_commit: String,
    pub run_as_owner: bool,
    pub password_required: bool,
    pub conflict_resolution: Resolution,
    /// Periodic sequence sync interval in ms (None: off) and margin.
    pub sequence_sync_ms: Option<i64>,
    pub sequence_sync_margin: i64,
}

/// A subscription id no subscription of any database of the server uses. Ids name replication
/// origins (`pgsub_<id>`, a server-wide catalog), table synchronization slots and shared-memory
/// slots, so each database's own sequence is not enough: ids whose origin exists (or whose
/// shared-memory slot is taken) are skipped. The lock on pg_replication_origin — the one creating
/// the origin takes anyway — is held until the transaction ends, so two databases creating
/// subscriptions at once choose one after the other.
fn free_subid() -> SpiResult<i32> {
    // SAFETY: a relation lock inside a transaction; it also processes pending invalidations, so
    // the origin lookups below see every origin committed before it was granted.
    unsafe { pg_sys::LockRelationOid(pg_sys::ReplicationOriginRelationId, pg_sys::ExclusiveLock as pg_sys::LOCKMODE) };
    loop {
        // An integer identity's sequence ends at the integer's maximum (nextval raises there).
        let id = Spi::get_one::<i32>(
            "SELECT pg_catalog.nextval(pg_catalog.pg_get_serial_sequence('pgsub.sub', 'subid'))::int4",
        )?
        .unwrap_or(0);
        let origin = std::ffi::CString::new(origin_name(id)).unwrap_or_default();
        // SAFETY: syscache lookup inside a transaction; missing_ok.
        let origin_free =
            unsafe { pg_sys::replorigin_by_name(origin.as_ptr(), true) } == pg_sys::InvalidRepOriginId as u16;
        let slot_free = !crate::shmem::available() || crate::shmem::SHARED.share().find(id).is_none();
        if origin_free && slot_free {
            return Ok(id);
        }
    }
}

/// Runs a write of `pgsub.sub`: a CHECK or NOT NULL violation's DETAIL ("Failing row contains
/// …") would print the whole row, the connection string and its password with it, to the caller
/// and the server log. Such an error is raised again without it.
fn hiding_row<T>(write: impl FnOnce() -> T) -> T {
    PgTryBuilder::new(std::panic::AssertUnwindSafe(write))
        .catch_others(|e| match e {
            CaughtError::PostgresError(ref r) | CaughtError::ErrorReport(ref r)
                if r.detail().is_some_and(|d| d.starts_with("Failing row contains")) =>
            {
                crate::report::error(
                    r.sql_error_code(),
                    r.message().to_string(),
                    Some("The row is not shown: it holds the connection string.".into()),
                    r.hint(),
                )
            }
            other => other.rethrow(),
        })
        .execute()
}

pub fn insert(sub: &NewSubscription) -> SpiResult<Option<i32>> {
    hiding_row(|| insert_row(sub))
}

fn insert_row(sub: &NewSubscription) -> SpiResult<Option<i32>> {
    let o = &sub.options;
    let subid = free_subid()?;
    Spi::get_one_with_args::<i32>(
        "INSERT INTO pgsub.sub (subid, subname, subowner, enabled, conninfo, publications, slot_name, \
         copy_data, \"binary\", streaming, two_phase, origin, disable_on_error, synchronous_commit, \
         run_as_owner, password_required, conflict_resolution, sequence_sync_interval, sequence_sync_margin) \
         VALUES ($14, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $15, $16, $17, \
                 pg_catalog.make_interval(secs => $18::float8 / 1000), $19) RETURNING subid",
        &[
            sub.name.into(),
            sub.owner.into(),
            sub.enabled.into(),
            sub.conninfo.into(),
            sub.publications.clone().into(),
            sub.slot_name.into(),
            o.copy_data.into(),
            o.binary.into(),
            o.streaming.as_str().into(),
            o.two_phase.into(),
            o.origin.as_str().into(),
            o.disable_on_error.into(),
            o.synchronous_commit.as_str().into(),
            subid.into(),
            o.run_as_owner.into(),
            o.password_required.into(),
            o.conflict_resolution.as_str().into(),
            o.sequence_sync_ms.into(),
            o.sequence_sync_margin.into(),
        ],
    )
    .and_then(|id| {
        // Set apart, so that a catalog created by a build without the column still takes
        // subscriptions that do not ask for it.
        if o.failover {
            Spi::run_with_args("UPDATE pgsub.sub SET failover = true WHERE subid = $1", &[subid.into()])?;
        }
        if o.two_phase && has_two_phase_state() {
            let state = if o.two_phase_at_once { "e" } else { "p" };
            Spi::run_with_args(
                "UPDATE pgsub.sub SET two_phase_state = $2 WHERE subid = $1",
                &[subid.into(), state.into()],
            )?;
        }
        Ok(id)
    })
}

pub fn delete(subid: i32) -> SpiResult<()> {
    Spi::run_with_args("DELETE FROM pgsub.sub WHERE subid = $1", &[subid.into()])
}

/// One change to a subscription's row, as the ALTER functions make them.
pub enum Change<'a> {
    Conninfo(&'a str),
    Publications(Vec<String>),
    /// Each given option replaces the current one.
    Options {
        /// Some(None): back to the automatic choice.
        binary: Option<Option<bool>>,
        streaming: Option<StreamingMode>,
        disable_on_error: Option<bool>,
        synchronous_commit: Option<&'a str>,
        origin: Option<&'a str>,
        slot_name: Option<&'a str>,
        run_as_owner: Option<bool>,
        password_required: Option<bool>,
        conflict_resolution: Option<Resolution>,
        /// Some(0): periodic sequence sync off.
        sequence_sync_ms: Option<i64>,
        sequence_sync_margin: Option<i64>,
    },
    Name(&'a str),
    Owner(pg_sys::Oid),
    /// None: no transaction to skip (native `SKIP (lsn = NONE)`).
    SkipLsn(Option<&'a str>),
    Failover(bool),
    /// `two_phase` and its state: off, pending (Some(false)) or enabled (Some(true)).
    TwoPhase(Option<bool>),
}

pub fn update(subid: i32, change: Change) -> SpiResult<()> {
    hiding_row(|| update_row(subid, change))
}

fn update_row(subid: i32, change: Change) -> SpiResult<()> {
    match change {
        Change::Conninfo(c) => {
            // Another publisher's positions are not this one's: a recorded stop_lsn goes.
            let also = if sub_has_column("stop_lsn") { ", stop_lsn = NULL" } else { "" };
            Spi::run_with_args(
                &format!("UPDATE pgsub.sub SET conninfo = $2{also} WHERE subid = $1"),
                &[subid.into(), c.into()],
            )
        }
        Change::Publications(p) => {
            Spi::run_with_args("UPDATE pgsub.sub SET publications = $2 WHERE subid = $1", &[subid.into(), p.into()])
        }
        Change::Options {
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
        } => {
            let (binary_given, binary) = (binary.is_some(), binary.flatten());
            Spi::run_with_args(
            "UPDATE pgsub.sub SET \"binary\" = CASE WHEN $13 THEN $2 ELSE \"binary\" END, streaming = coalesce($3, streaming), \
             disable_on_error = coalesce($4, disable_on_error), synchronous_commit = coalesce($5, synchronous_commit), \
             origin = coalesce($6, origin), slot_name = coalesce($7, slot_name), \
             run_as_owner = coalesce($8, run_as_owner), password_required = coalesce($9, password_required), \
             conflict_resolution = coalesce($10, conflict_resolution), \
             sequence_sync_interval = CASE WHEN $11::int8 IS NULL THEN sequence_sync_interval \
                  WHEN $11::int8 = 0 THEN NULL ELSE pg_catalog.make_interval(secs => $11::float8 / 1000) END, \
             sequence_sync_margin = coalesce($12, sequence_sync_margin) WHERE subid = $1",
            &[
                subid.into(),
                binary.into(),
                streaming.map(StreamingMode::as_str).into(),
                disable_on_error.into(),
                synchronous_commit.into(),
                origin.into(),
                slot_name.into(),
                run_as_owner.into(),
                password_required.into(),
                conflict_resolution.map(Resolution::as_str).into(),
                sequence_sync_ms.into(),
                sequence_sync_margin.into(),
                binary_given.into(),
            ],
        )
        }
        Change::Name(n) => {
            Spi::run_with_args("UPDATE pgsub.sub SET subname = $2 WHERE subid = $1", &[subid.into(), n.into()])
        }
        Change::Owner(o) => {
            Spi::run_with_args("UPDATE pgsub.sub SET subowner = $2 WHERE subid = $1", &[subid.into(), o.into()])
        }
        Change::SkipLsn(Some(l)) => {
            Spi::run_with_args("UPDATE pgsub.sub SET skip_lsn = $2::pg_lsn WHERE subid = $1", &[subid.into(), l.into()])
        }
        Change::Failover(f) => {
            Spi::run_with_args("UPDATE pgsub.sub SET failover = $2 WHERE subid = $1", &[subid.into(), f.into()])
        }
        Change::TwoPhase(state) if !has_two_phase_state() => Spi::run_with_args(
            "UPDATE pgsub.sub SET two_phase = $2 WHERE subid = $1",
            &[subid.into(), state.is_some().into()],
        ),
        Change::TwoPhase(state) => Spi::run_with_args(
            "UPDATE pgsub.sub SET two_phase = $2, two_phase_state = $3 WHERE subid = $1",
            &[
                subid.into(),
                state.is_some().into(),
                match state {
                    None => "d",
                    Some(false) => "p",
                    Some(true) => "e",
                }
                .into(),
            ],
        ),
        Change::SkipLsn(None) => {
            Spi::run_with_args("UPDATE pgsub.sub SET skip_lsn = NULL WHERE subid = $1", &[subid.into()])
        }
    }
}

/// The local table a remote one maps to (same schema and name), if it exists. Read from the
/// catalog, not through `to_regclass`: a name lookup needs USAGE on the schema, which a
/// subscription owner that copies and writes as the table's owner (native's default) need not
/// have — native's table synchronization opens the table by OID and copies it.
pub fn local_relid(schema: &str, name: &str) -> Option<pg_sys::Oid> {
    read_one::<pg_sys::Oid>(
        "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
          WHERE n.nspname = $1 AND c.relname = $2",
        &[schema.into(), name.into()],
    )
    .ok()
    .flatten()
}

/// The local table is partitioned (its rows live in its partitions: no `ONLY`).
pub fn is_partitioned(relid: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup; an unknown relation gives relkind 0.
    unsafe { pg_sys::get_rel_relkind(relid) }.cast_unsigned() == b'p'
}

/// Whether the table has a key that a second copy of a row cannot pass: a valid, non-partial
/// unique index on columns (no expressions) that are NOT NULL or compared `NULLS NOT DISTINCT` —
/// and, with `copied`, all among the columns the copy fills (a key the publisher does not send,
/// a local identity or serial, would give every copied row a new value). The initial copy into a
/// table that already has rows appends the publisher's rows (as natively) only to such a table:
/// a row that is there already stops the copy with a unique violation instead of being doubled
/// silently.
pub fn has_unique_key(relid: pg_sys::Oid, copied: Option<&[String]>) -> bool {
    let copied: Option<Vec<String>> = copied.map(<[String]>::to_vec);
    read_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
           WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL \
             AND NOT EXISTS ( \
                  SELECT 1 FROM pg_catalog.pg_attribute a \
                   WHERE a.attrelid = i.indrelid \
                     AND a.attnum OPERATOR(pg_catalog.=) ANY ((i.indkey::pg_catalog.int2[])[0:i.indnkeyatts - 1]) \
                     AND ((NOT a.attnotnull AND NOT i.indisprimary AND NOT i.indnullsnotdistinct) \
                          OR ($2::pg_catalog.text[] IS NOT NULL \
                              AND NOT a.attname::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($2::pg_catalog.text[])))))",
        &[relid.into(), copied.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// What `pgsub.wait_for_catchup` looks at in the catalog on every poll: whether the subscription
/// still exists and is enabled, and how many of its tables have not finished their initial copy
/// (neither synchronized nor ready).
#[derive(Clone, Debug)]
pub struct CatchupState {
    pub enabled: bool,
    pub tables: i64,
    pub tables_copying: i64,
    /// The first few of those tables by name, each with its state as `pgsub.subscription_table`
    /// names it (`"s"."t" (copying)`).
    pub copying: Option<String>,
}

/// The subscription's [`CatchupState`] under the latest snapshot (not the calling statement's),
/// so that a wait sees a disable, a drop or a table's copy that committed after it began. None
/// when the subscription is gone.
pub fn catchup_state(subid: i32) -> SpiResult<Option<CatchupState>> {
    // SAFETY: pushes a fresh snapshot for the read-only SPI query below, inside a transaction;
    // popped after it (an ERROR in between aborts the transaction, which clears the stack).
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot()) };
    let state = as_superuser(|| {
        Spi::connect(|client| {
            let table = client.select(
                "SELECT s.enabled, \
                        (SELECT count(*) FROM pgsub.sub_rel r WHERE r.subid = s.subid), \
                        (SELECT count(*) FROM pgsub.sub_rel r WHERE r.subid = s.subid \
                                                               AND r.sync_state NOT IN ('s', 'r')), \
                        (SELECT string_agg(pg_catalog.format('%I.%I (%s)', c.remote_schema, c.remote_name, \
                                    CASE c.sync_state WHEN 'i' THEN 'init' \
                                                      WHEN 'd' THEN 'copying' ELSE 'copied' END), ', ') \
                           FROM (SELECT r.remote_schema, r.remote_name, r.sync_state FROM pgsub.sub_rel r \
                                  WHERE r.subid = s.subid AND r.sync_state NOT IN ('s', 'r') \
                                  ORDER BY r.remote_schema, r.remote_name LIMIT 5) c) \
                 FROM pgsub.sub s WHERE s.subid = $1",
                None,
                &[subid.into()],
            )?;
            match table.into_iter().next() {
                Some(row) => Ok(Some(CatchupState {
                    enabled: row.get::<bool>(1)?.unwrap_or(false),
                    tables: row.get::<i64>(2)?.unwrap_or(0),
                    tables_copying: row.get::<i64>(3)?.unwrap_or(0),
                    copying: row.get::<String>(4)?,
                })),
                None => Ok(None),
            }
        })
    });
    // SAFETY: the snapshot pushed above.
    unsafe { pg_sys::PopActiveSnapshot() };
    state
}

/// One row of `pgsub.conflict_log` (times in µs since the Unix epoch; rows as jsonb text).
pub struct ConflictLogRow<'a> {
    pub subid: i32,
    pub conflict_type: &'a str,
    pub relation: &'a str,
    pub key: Option<&'a str>,
    pub local_row: Option<&'a str>,
    pub remote_row: Option<&'a str>,
    pub resolution: &'a str,
    pub local_xid: Option<i64>,
    pub local_commit_time: Option<i64>,
    pub local_origin: Option<i32>,
    pub remote_origin: Option<&'a str>,
    pub remote_xid: i64,
    pub remote_commit_time: i64,
    pub remote_finish_lsn: String,
}

/// Gives the conflict records of remote transaction `xid` that were written before its commit
/// time and finish LSN were known (a parallel apply worker applies a streamed transaction before
/// Stream Commit brings them) those values; in the committing transaction. `commit_time` is in
/// microseconds since the Unix epoch.
pub fn complete_conflict_log(subid: i32, xid: i64, commit_time: i64, finish_lsn: &str) -> SpiResult<()> {
    Spi::run_with_args(
        "UPDATE pgsub.conflict_log SET remote_commit_time = pg_catalog.to_timestamp($3::float8 / 1000000), \
         remote_finish_lsn = $4::pg_lsn WHERE subid = $1 AND remote_xid = $2 AND remote_finish_lsn IS NULL",
        &[subid.into(), xid.into(), commit_time.into(), finish_lsn.into()],
    )
}

/// Records a conflict (in the caller's transaction: rolled back with the change it resolves).
pub fn insert_conflict_log(r: &ConflictLogRow) -> SpiResult<()> {
    Spi::run_with_args(
        "INSERT INTO pgsub.conflict_log (subid, conflict_type, relation, key, local_row, remote_row, resolution, \
         local_xid, local_commit_time, local_origin, remote_origin, remote_xid, remote_commit_time, remote_finish_lsn) \
         VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6::jsonb, $7, $8, pg_catalog.to_timestamp($9::float8 / 1000000), \
         (SELECT o.roname FROM pg_catalog.pg_replication_origin o WHERE o.roident = $10), $11, $12, \
         CASE WHEN $14::pg_lsn <> '0/0' THEN pg_catalog.to_timestamp($13::float8 / 1000000) END, \
         NULLIF($14::pg_lsn, '0/0'))",
        &[
            r.subid.into(),
            r.conflict_type.into(),
            // Rust's UTF-8 in the database's encoding (`dbtext`).
            crate::dbtext::DbText(r.relation.to_string()).into(),
            r.key.map(|v| crate::dbtext::DbText(v.to_string())).into(),
            r.local_row.map(|v| crate::dbtext::DbText(v.to_string())).into(),
            r.remote_row.map(|v| crate::dbtext::DbText(v.to_string())).into(),
            r.resolution.into(),
            r.local_xid.into(),
            r.local_commit_time.into(),
            r.local_origin.map(|o| o as i64).into(),
            r.remote_origin.into(),
            r.remote_xid.into(),
            r.remote_commit_time.into(),
            r.remote_finish_lsn.as_str().into(),
        ],
    )
}

/// Deletes conflict records older than `retention_secs` (`pgsub.conflict_log_retention`);
/// returns how many.
pub fn expire_conflict_log(retention_secs: i64) -> SpiResult<i64> {
    Spi::get_one_with_args::<i64>(
        "WITH gone AS (DELETE FROM pgsub.conflict_log \
         WHERE logged_at < pg_catalog.now() - pg_catalog.make_interval(secs => $1::float8) RETURNING 1) \
         SELECT pg_catalog.count(*) FROM gone",
        &[retention_secs.into()],
    )
    .map(|n| n.unwrap_or(0))
}
