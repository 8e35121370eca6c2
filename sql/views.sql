-- sql/views.sql — what users see: pgsub.subscription (the catalog, passwords masked for
-- non-superusers), pgsub.subscription_table and pgsub.stat_subscription (shared-memory state and
-- counters joined with the catalog), pgsub.skip_transaction, and the privileges of it all.

CREATE FUNCTION pgsub._ts(us bigint) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN us = 0 THEN NULL
                  ELSE timestamptz '2000-01-01 00:00:00+00' + us * interval '1 microsecond' END $$;

CREATE FUNCTION pgsub._lsn(v bigint) RETURNS pg_lsn
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN v = 0 THEN NULL ELSE '0/0'::pg_lsn + v::numeric END $$;

CREATE FUNCTION pgsub.skip_transaction(name text, lsn pg_lsn) RETURNS void
LANGUAGE sql VOLATILE
AS $$ SELECT pgsub._skip_transaction(name, lsn::text) $$;
COMMENT ON FUNCTION pgsub.skip_transaction(text, pg_lsn) IS
    'Skip the remote transaction that finishes at lsn (its finish LSN is in last_error)';

CREATE VIEW pgsub.subscription AS
SELECT s.subname,
       s.subowner::regrole AS owner,
       s.enabled,
       CASE WHEN (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
            THEN s.conninfo ELSE pgsub._mask_conninfo(s.conninfo) END AS conninfo,
       s.publications,
       s.slot_name,
       s.copy_data,
       s."binary",
       s.streaming,
       s.two_phase,
       s.origin,
       s.disable_on_error,
       s.synchronous_commit,
       s.skip_lsn,
       s.created_at,
       s.subid
FROM pgsub.sub s;

CREATE VIEW pgsub.subscription_table AS
SELECT s.subname,
       r.relid::regclass AS relid,
       r.remote_schema,
       r.remote_name,
       CASE WHEN w.pid IS NOT NULL AND w.phase IN ('catchup', 'synchronized') THEN w.phase
            ELSE CASE r.sync_state WHEN 'i' THEN 'init' WHEN 'd' THEN 'copying' WHEN 'f' THEN 'copied'
                                   WHEN 's' THEN 'synchronized' WHEN 'r' THEN 'ready' END
       END AS sync_state,
       r.state_lsn,
       CASE WHEN r.sync_state IN ('i', 'd') AND w.copy_started_at > 0 THEN w.rows_copied
            ELSE r.rows_copied END AS rows_copied,
       coalesce(w.bytes_copied, 0) AS bytes_copied,
       w.pid AS sync_worker_pid,
       pgsub._ts(w.copy_started_at) AS copy_started_at,
       coalesce(w.waiting AND w.pid IS NULL, false) AS waiting_for_worker,
       w.last_error,
       pgsub._ts(w.last_error_at) AS last_error_at
FROM pgsub.sub_rel r JOIN pgsub.sub s USING (subid)
LEFT JOIN pgsub._sync_progress() w ON w.subid = r.subid AND w.relid = r.relid;

CREATE VIEW pgsub.stat_subscription AS
SELECT s.subname,
       s.enabled,
       CASE WHEN NOT pgsub._preloaded() THEN 'not_preloaded'
            WHEN p.subid IS NULL THEN CASE WHEN s.enabled THEN 'starting' ELSE 'disabled' END
            WHEN NOT s.enabled AND p.pid IS NULL THEN 'disabled'
            ELSE p.status END AS status,
       p.pid,
       pgsub._ts(p.worker_started_at) AS worker_started_at,
       pgsub._lsn(p.received_lsn) AS received_lsn,
       pgsub._lsn(p.applied_lsn) AS applied_lsn,
       pgsub._lsn(p.flushed_lsn) AS flushed_lsn,
       pgsub._lsn(p.publisher_wal_end) AS publisher_wal_end,
       CASE WHEN p.subid IS NULL OR greatest(p.publisher_wal_end, p.received_lsn) = 0 THEN NULL
            ELSE greatest(0, greatest(p.publisher_wal_end, p.received_lsn)
                             - greatest(p.applied_lsn, p.caught_up_lsn)) END AS lag_bytes,
       CASE WHEN p.subid IS NULL THEN NULL
            WHEN p.pending_commit_time = 0 THEN interval '0'
            ELSE greatest(interval '0', now() - pgsub._ts(p.pending_commit_time)) END AS apply_lag,
       pgsub._ts(p.last_msg_send_time) AS last_msg_send_time,
       pgsub._ts(p.last_msg_receipt_time) AS last_msg_receipt_time,
       pgsub._ts(p.last_commit_time) AS last_commit_time,
       coalesce(c.txns_applied, 0) AS txns_applied,
       coalesce(c.inserts, 0) AS inserts,
       coalesce(c.updates, 0) AS updates,
       coalesce(c.deletes, 0) AS deletes,
       coalesce(c.truncates, 0) AS truncates,
       coalesce(c.messages, 0) AS messages,
       coalesce(c.conflicts, 0) AS conflicts,
       coalesce(c.txns_skipped, 0) AS txns_skipped,
       coalesce(c.error_count, 0) AS error_count,
       c.last_error,
       pgsub._ts(c.last_error_at) AS last_error_at,
       s.subid,
       p.publisher_version,
       p.proto_version,
       (SELECT count(*)::int FROM pgsub.sub_rel r WHERE r.subid = s.subid) AS tables_total,
       (SELECT count(*)::int FROM pgsub.sub_rel r WHERE r.subid = s.subid AND r.sync_state = 'r') AS tables_ready,
       (SELECT sum(w.rows_copied / greatest(extract(epoch FROM now() - pgsub._ts(w.copy_started_at)), 0.001))::float8
        FROM pgsub._sync_progress() w JOIN pgsub.sub_rel r ON r.subid = w.subid AND r.relid = w.relid
        WHERE w.subid = s.subid AND w.pid IS NOT NULL AND w.copy_started_at > 0
          AND r.sync_state IN ('i', 'd')) AS copy_rows_per_sec,
       coalesce(k.apply_error_count, 0) AS apply_error_count,
       coalesce(k.sync_error_count, 0) AS sync_error_count,
       coalesce(k.confl_insert_exists, 0) AS confl_insert_exists,
       coalesce(k.confl_update_exists, 0) AS confl_update_exists,
       coalesce(k.confl_update_missing, 0) AS confl_update_missing,
       coalesce(k.confl_delete_missing, 0) AS confl_delete_missing,
       pgsub._ts(k.stats_reset) AS stats_reset
FROM pgsub.sub s
LEFT JOIN pgsub._stat_progress() p ON p.subid = s.subid
LEFT JOIN pgsub._stat_counters() c ON c.subid = s.subid
LEFT JOIN pgsub._stat_conflicts() k ON k.subid = s.subid;

-- Every subscription of every database of the server, from shared memory (what the launchers
-- of all databases know; a subscription appears once its database's launcher has seen it).
CREATE VIEW pgsub.stat_subscription_all AS
SELECT d.datname,
       p.subid,
       n.subname,
       p.status,
       p.pid,
       pgsub._ts(p.worker_started_at) AS worker_started_at,
       pgsub._lsn(p.received_lsn) AS received_lsn,
       pgsub._lsn(p.applied_lsn) AS applied_lsn,
       pgsub._lsn(p.flushed_lsn) AS flushed_lsn,
       CASE WHEN greatest(p.publisher_wal_end, p.received_lsn) = 0 THEN NULL
            ELSE greatest(0, greatest(p.publisher_wal_end, p.received_lsn)
                             - greatest(p.applied_lsn, p.caught_up_lsn)) END AS lag_bytes,
       pgsub._ts(p.last_commit_time) AS last_commit_time,
       c.txns_applied,
       c.error_count,
       c.last_error,
       pgsub._ts(c.last_error_at) AS last_error_at,
       p.publisher_version
FROM pgsub._stat_progress() p
JOIN pgsub._stat_names() n ON n.subid = p.subid
LEFT JOIN pgsub._stat_counters() c ON c.subid = p.subid
LEFT JOIN pg_catalog.pg_database d ON d.oid = n.dboid;

-- Every database the supervisor knows: whether a launcher runs there, and why not.
CREATE VIEW pgsub.stat_database AS
SELECT d.datname,
       x.state,
       x.launcher_pid,
       x.probes,
       pgsub._ts(x.last_probe_at) AS last_probe_at
FROM pgsub._stat_databases() x
JOIN pg_catalog.pg_database d ON d.oid = x.dboid;

-- Management is for superusers and pgsub_admin; the views and their helpers are for everyone
-- (the server-wide ones for pgsub_admin and pg_monitor: they show other databases).
REVOKE EXECUTE ON FUNCTION
    pgsub.create_subscription(text, text, text[], boolean, boolean, boolean, text, boolean, boolean, text, boolean, text, boolean),
    pgsub.drop_subscription(text, boolean, boolean),
    pgsub.enable_subscription(text),
    pgsub.disable_subscription(text),
    pgsub.alter_subscription_connection(text, text),
    pgsub.alter_subscription_publications(text, text[], boolean),
    pgsub.alter_subscription_options(text, boolean, boolean, boolean, text, text, text),
    pgsub.rename_subscription(text, text),
    pgsub.alter_subscription_owner(text, text),
    pgsub.refresh_subscription(text, boolean),
    pgsub._skip_transaction(text, text),
    pgsub.skip_transaction(text, pg_lsn),
    pgsub.reset_stats(text)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    pgsub.create_subscription(text, text, text[], boolean, boolean, boolean, text, boolean, boolean, text, boolean, text, boolean),
    pgsub.drop_subscription(text, boolean, boolean),
    pgsub.enable_subscription(text),
    pgsub.disable_subscription(text),
    pgsub.alter_subscription_connection(text, text),
    pgsub.alter_subscription_publications(text, text[], boolean),
    pgsub.alter_subscription_options(text, boolean, boolean, boolean, text, text, text),
    pgsub.rename_subscription(text, text),
    pgsub.alter_subscription_owner(text, text),
    pgsub.refresh_subscription(text, boolean),
    pgsub._skip_transaction(text, text),
    pgsub.skip_transaction(text, pg_lsn),
    pgsub.reset_stats(text)
TO pgsub_admin;

GRANT USAGE ON SCHEMA pgsub TO PUBLIC;
GRANT SELECT ON pgsub.subscription, pgsub.subscription_table, pgsub.stat_subscription TO PUBLIC;
REVOKE ALL ON pgsub.stat_subscription_all, pgsub.stat_database FROM PUBLIC;
GRANT SELECT ON pgsub.stat_subscription_all, pgsub.stat_database TO pgsub_admin, pg_monitor;
REVOKE EXECUTE ON FUNCTION pgsub._stat_databases() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgsub._stat_databases() TO pgsub_admin, pg_monitor;

-- Created without pgsub preloaded: say so. Either way, have the supervisor look at this
-- database once the creating transaction commits.
SELECT pgsub._extension_created();
REVOKE EXECUTE ON FUNCTION pgsub._extension_created() FROM PUBLIC;
