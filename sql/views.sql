-- sql/views.sql — what users see: pgsub.subscription (the catalog, passwords masked for
-- non-superusers), pgsub.subscription_table and pgsub.stat_subscription (shared-memory state and
-- counters joined with the catalog), pgsub.stat_subscription_table and pgsub.lag_history (issue
-- 21), pgsub.skip_transaction, and the privileges of it all.

-- Row estimates of the functions the views read (set at the end of this file): a row per
-- subscription or table, not the planner's default of 1000 per function. With that default the
-- views' joins were estimated at millions of rows, over `jit_above_cost`, and with `jit = on`
-- (PostgreSQL's default) every read of a view spent seconds compiling its query
-- (`monitoring_test::views_are_cheap_enough_to_never_be_jit_compiled`).

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
       CASE s.two_phase_state WHEN 'p' THEN 'pending' WHEN 'e' THEN 'enabled' ELSE 'disabled' END AS two_phase_state,
       s.failover,
       s.origin,
       s.disable_on_error,
       s.conflict_resolution,
       s.synchronous_commit,
       s.run_as_owner,
       s.password_required,
       s.skip_lsn,
       s.sequence_sync_interval,
       s.sequence_sync_margin,
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
       -- A copy's live progress only while its sync worker runs: an interrupted copy's counts
       -- stay in shared memory until it starts again, but its rows were rolled back.
       CASE WHEN r.sync_state IN ('i', 'd') AND w.copy_started_at > 0 AND w.pid IS NOT NULL THEN w.rows_copied
            ELSE r.rows_copied END AS rows_copied,
       -- Kept in shared memory only while the table copies (rows_copied is kept in the catalog).
       CASE WHEN r.sync_state IN ('i', 'd') AND w.copy_started_at > 0 AND w.pid IS NOT NULL THEN w.bytes_copied END
           AS bytes_copied,
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
            WHEN s.subdbid <> pgsub._current_database_oid() THEN 'copied'
            WHEN s.enabled AND p.pid IS NULL AND pg_catalog.pg_is_in_recovery() THEN 'standby'
            WHEN s.enabled AND p.pid IS NULL AND NOT pgsub._database_served() THEN 'not_served'
            WHEN p.subid IS NULL THEN CASE WHEN s.enabled THEN 'starting' ELSE 'disabled' END
            WHEN NOT s.enabled AND p.pid IS NULL THEN 'disabled'
            ELSE p.status END AS status,
       p.pid,
       pgsub._ts(p.worker_started_at) AS worker_started_at,
       pgsub._lsn(p.received_lsn) AS received_lsn,
       pgsub._lsn(p.applied_lsn) AS applied_lsn,
       pgsub._lsn(p.flushed_lsn) AS flushed_lsn,
       pgsub._lsn(p.publisher_wal_end) AS publisher_wal_end,
       -- Neither lag is known of a disabled subscription (its publisher is not read) nor, for
       -- apply_lag, before a worker has heard from the publisher (pending_commit_time is then
       -- the smallest bigint, src/shmem.rs LAG_UNKNOWN).
       CASE WHEN p.subid IS NULL OR NOT s.enabled OR greatest(p.publisher_wal_end, p.received_lsn) = 0 THEN NULL
            ELSE greatest(0, greatest(p.publisher_wal_end, p.received_lsn)
                             - greatest(p.applied_lsn, p.caught_up_lsn)) END AS lag_bytes,
       CASE WHEN p.subid IS NULL OR NOT s.enabled OR p.pending_commit_time = -9223372036854775808 THEN NULL
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
       p.binary_in_use,
       (SELECT count(*)::int FROM pgsub.sub_rel r WHERE r.subid = s.subid) AS tables_total,
       (SELECT count(*)::int FROM pgsub.sub_rel r WHERE r.subid = s.subid AND r.sync_state = 'r') AS tables_ready,
       (SELECT sum(w.rows_copied / greatest(extract(epoch FROM now() - pgsub._ts(w.copy_started_at)), 0.001))::float8
        FROM pgsub._sync_progress() w JOIN pgsub.sub_rel r ON r.subid = w.subid AND r.relid = w.relid
        WHERE w.subid = s.subid AND w.pid IS NOT NULL AND w.copy_started_at > 0
          AND r.sync_state IN ('i', 'd')) AS copy_rows_per_sec,
       coalesce(k.apply_error_count, 0) AS apply_error_count,
       coalesce(k.sync_error_count, 0) AS sync_error_count,
       coalesce(k.confl_insert_exists, 0) AS confl_insert_exists,
       coalesce(k.confl_update_origin_differs, 0) AS confl_update_origin_differs,
       coalesce(k.confl_update_exists, 0) AS confl_update_exists,
       coalesce(k.confl_update_missing, 0) AS confl_update_missing,
       coalesce(k.confl_delete_origin_differs, 0) AS confl_delete_origin_differs,
       coalesce(k.confl_delete_missing, 0) AS confl_delete_missing,
       coalesce(k.confl_multiple_unique_conflicts, 0) AS confl_multiple_unique_conflicts,
       pgsub._ts(k.stats_reset) AS stats_reset,
       coalesce(x.txn_rate_10s, 0) AS txn_rate_10s,
       coalesce(x.row_rate_10s, 0) AS row_rate_10s,
       coalesce(x.recv_bytes_rate_10s, 0) AS recv_bytes_rate_10s,
       coalesce(x.txn_rate_1m, 0) AS txn_rate_1m,
       coalesce(x.row_rate_1m, 0) AS row_rate_1m,
       coalesce(x.recv_bytes_rate_1m, 0) AS recv_bytes_rate_1m,
       coalesce(x.recv_bytes, 0) AS recv_bytes,
       coalesce(p.parallel_apply_workers, 0) AS parallel_apply_workers,
       coalesce(p.parallel_txns, 0) AS parallel_txns
FROM pgsub.sub s
LEFT JOIN pgsub._stat_progress() p ON p.subid = s.subid
LEFT JOIN pgsub._stat_counters() c ON c.subid = s.subid
LEFT JOIN pgsub._stat_conflicts() k ON k.subid = s.subid
LEFT JOIN pgsub._stat_rates() x ON x.subid = s.subid;

-- One row per running worker, as native's pg_stat_subscription (same columns, same worker_type
-- values): the apply worker, its table synchronization workers (relid) and its parallel apply
-- workers (leader_pid). Positions and times are the apply worker's; NULL for the others.
CREATE VIEW pgsub.stat_subscription_workers AS
SELECT w.subid,
       s.subname,
       w.worker_type,
       w.pid,
       w.leader_pid,
       w.relid,
       pgsub._lsn(w.received_lsn) AS received_lsn,
       pgsub._ts(w.last_msg_send_time) AS last_msg_send_time,
       pgsub._ts(w.last_msg_receipt_time) AS last_msg_receipt_time,
       pgsub._lsn(w.latest_end_lsn) AS latest_end_lsn,
       pgsub._ts(w.latest_end_time) AS latest_end_time
FROM pgsub._stat_workers() w
JOIN pgsub.sub s ON s.subid = w.subid;

-- One row per subscribed table: what was applied to it (src/monitor.rs; the counters survive
-- clean restarts and are zeroed by pgsub.reset_stats), conflicts by PostgreSQL 18's type names
-- as in stat_subscription, and its sync state as pgsub.subscription_table shows it.
CREATE VIEW pgsub.stat_subscription_table AS
SELECT st.subname,
       st.relid,
       n.nspname AS schemaname,
       c.relname,
       st.sync_state,
       coalesce(t.inserts, 0) AS inserts,
       coalesce(t.updates, 0) AS updates,
       coalesce(t.deletes, 0) AS deletes,
       coalesce(t.truncates, 0) AS truncates,
       coalesce((SELECT sum(x) FROM unnest(t.conflicts) x), 0)::bigint AS conflicts,
       coalesce(t.conflicts[1], 0) AS confl_insert_exists,
       coalesce(t.conflicts[2], 0) AS confl_update_origin_differs,
       coalesce(t.conflicts[3], 0) AS confl_update_exists,
       coalesce(t.conflicts[4], 0) AS confl_update_missing,
       coalesce(t.conflicts[5], 0) AS confl_delete_origin_differs,
       coalesce(t.conflicts[6], 0) AS confl_delete_missing,
       coalesce(t.conflicts[7], 0) AS confl_multiple_unique_conflicts,
       coalesce(t.rows_copied, 0) AS rows_copied,
       pgsub._ts(t.last_change_at) AS last_change_at,
       s.subid
FROM pgsub.subscription_table st
JOIN pgsub.sub s ON s.subname = st.subname
JOIN pg_catalog.pg_class c ON c.oid = st.relid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pgsub._stat_tables() t ON t.subid = s.subid AND t.relid = st.relid;

-- The last hour of a subscription's lag, one sample per second while its apply worker runs
-- (src/history.rs), oldest first.
CREATE FUNCTION pgsub.lag_history(name text)
RETURNS TABLE (sample_time timestamptz, lag_bytes bigint, apply_lag interval, rows_per_s bigint)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pgsub._ts(h.at), h.lag_bytes, h.apply_lag_ms * interval '1 millisecond', h.rows
      FROM pgsub._lag_history(coalesce((SELECT s.subid FROM pgsub.subscription s
                                        WHERE s.subname = lag_history.name),
                                       pgsub._no_such_subscription(lag_history.name))) h
      ORDER BY h.at $$;
COMMENT ON FUNCTION pgsub.lag_history(text) IS
    'The last hour of the subscription''s lag: one sample per second while its apply worker runs, oldest first';

-- Every subscription of every database of the server, from shared memory (what the launchers
-- of all databases know; a subscription appears once its database's launcher has seen it).
CREATE VIEW pgsub.stat_subscription_all AS
SELECT d.datname,
       p.subid,
       n.subname,
       -- As pgsub.stat_subscription says it, as far as shared memory tells (no catalog of
       -- another database is read): a database no launcher serves. (On a hot standby shared
       -- memory holds no subscription: no supervisor runs there.)
       CASE WHEN p.pid IS NULL AND x.state IN ('excluded', 'not_connectable') THEN 'not_served'
            ELSE p.status END AS status,
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
LEFT JOIN pgsub._stat_databases() x ON x.dboid = n.dboid
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
    pgsub.create_subscription(text, text, text[], boolean, boolean, boolean, text, boolean, anycompatible, text, boolean, text, boolean, boolean, boolean, text, interval, bigint, boolean, boolean),
    pgsub.drop_subscription(text, boolean, boolean),
    pgsub.enable_subscription(text),
    pgsub.disable_subscription(text),
    pgsub.alter_subscription_connection(text, text),
    pgsub.alter_subscription_publications(text, text[], boolean),
    pgsub.alter_subscription_options(text, boolean, anycompatible, boolean, text, text, text, boolean, boolean, text, interval, bigint, boolean, boolean, boolean),
    pgsub.rename_subscription(text, text),
    pgsub.alter_subscription_owner(text, text),
    pgsub.refresh_subscription(text, boolean),
    pgsub._skip_transaction(text, text),
    pgsub.skip_transaction(text, pg_lsn),
    pgsub.reset_stats(text)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    pgsub.create_subscription(text, text, text[], boolean, boolean, boolean, text, boolean, anycompatible, text, boolean, text, boolean, boolean, boolean, text, interval, bigint, boolean, boolean),
    pgsub.drop_subscription(text, boolean, boolean),
    pgsub.enable_subscription(text),
    pgsub.disable_subscription(text),
    pgsub.alter_subscription_connection(text, text),
    pgsub.alter_subscription_publications(text, text[], boolean),
    pgsub.alter_subscription_options(text, boolean, anycompatible, boolean, text, text, text, boolean, boolean, text, interval, bigint, boolean, boolean, boolean),
    pgsub.rename_subscription(text, text),
    pgsub.alter_subscription_owner(text, text),
    pgsub.refresh_subscription(text, boolean),
    pgsub._skip_transaction(text, text),
    pgsub.skip_transaction(text, pg_lsn),
    pgsub.reset_stats(text)
TO pgsub_admin;

-- Cutover (issue 20, src/api/cutover.rs): waiting for the subscription to catch up with the
-- publisher, and setting the local sequences to the publisher's. Management functions, closed
-- like the ones above.
CREATE FUNCTION pgsub.wait_for_catchup(name text, lsn pg_lsn DEFAULT NULL,
                                       timeout interval DEFAULT '5 min')
RETURNS pg_lsn
LANGUAGE sql VOLATILE
AS $$ SELECT pgsub._wait_for_catchup(name, lsn::text,
                                     (extract(epoch FROM timeout) * 1000)::float8)::pg_lsn $$;
COMMENT ON FUNCTION pgsub.wait_for_catchup(text, pg_lsn, interval) IS
    'Wait until the subscription has durably applied everything the publisher wrote up to lsn (default: its current WAL position); returns that position';
CREATE FUNCTION pgsub.sync_sequences(name text, sequences regclass[] DEFAULT NULL)
RETURNS TABLE (sequence regclass, publisher_value bigint, previous_value bigint, next_value bigint)
LANGUAGE sql VOLATILE
AS $$ SELECT s.seq::regclass, s.publisher_value, s.previous_value, s.next_value
      FROM pgsub._sync_sequences(name, sequences::oid[]) s $$;
COMMENT ON FUNCTION pgsub.sync_sequences(text, regclass[]) IS
    'Set the local sequences (default: those of the subscription''s tables) to the publisher''s sequences of the same name';
CREATE FUNCTION pgsub.verify_subscription(name text, tables regclass[] DEFAULT NULL,
                                          mode text DEFAULT 'checksum', max_keys int DEFAULT 100)
RETURNS TABLE (relation regclass, publisher_rows bigint, subscriber_rows bigint, equal boolean,
               missing_keys jsonb, extra_keys jsonb, different_keys jsonb, bytes_received bigint,
               error text)
LANGUAGE sql VOLATILE
AS $$ SELECT v.relation::regclass, v.publisher_rows, v.subscriber_rows, v.equal,
             v.missing_keys::jsonb, v.extra_keys::jsonb, v.different_keys::jsonb, v.bytes_received,
             v.error
      FROM pgsub._verify_subscription(name, tables::oid[], mode, max_keys) v $$;
COMMENT ON FUNCTION pgsub.verify_subscription(text, regclass[], text, int) IS
    'Compare the subscription''s tables with the publisher''s at one consistent point; per table the rows on each side and the keys missing, extra or different here, or why it could not be compared';
REVOKE EXECUTE ON FUNCTION
    pgsub.verify_subscription(text, regclass[], text, int),
    pgsub._verify_subscription(text, oid[], text, integer),
    pgsub.wait_for_catchup(text, pg_lsn, interval),
    pgsub._wait_for_catchup(text, text, double precision),
    pgsub.sync_sequences(text, regclass[]),
    pgsub._sync_sequences(text, oid[])
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    pgsub.verify_subscription(text, regclass[], text, int),
    pgsub._verify_subscription(text, oid[], text, integer),
    pgsub.wait_for_catchup(text, pg_lsn, interval),
    pgsub._wait_for_catchup(text, text, double precision),
    pgsub.sync_sequences(text, regclass[]),
    pgsub._sync_sequences(text, oid[])
TO pgsub_admin;

GRANT USAGE ON SCHEMA pgsub TO PUBLIC;
GRANT SELECT ON pgsub.subscription, pgsub.subscription_table, pgsub.stat_subscription,
    pgsub.stat_subscription_table, pgsub.stat_subscription_workers TO PUBLIC;
REVOKE ALL ON pgsub.stat_subscription_all, pgsub.stat_database FROM PUBLIC;
GRANT SELECT ON pgsub.stat_subscription_all, pgsub.stat_database TO pgsub_admin, pg_monitor;
REVOKE EXECUTE ON FUNCTION pgsub._stat_databases() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgsub._stat_databases() TO pgsub_admin, pg_monitor;

-- Created without pgsub preloaded: say so. Either way, have the supervisor look at this
-- database once the creating transaction commits.
SELECT pgsub._extension_created();
REVOKE EXECUTE ON FUNCTION pgsub._extension_created() FROM PUBLIC;

-- Health (issue 21): one row per current problem, for a DBA's scheduled check or an exporter.
-- Thresholds are parameters of pgsub.check_health; the view pgsub.health calls it with the
-- defaults. Problems (README, Monitoring):
--   error               critical  failing (pgsub._health_state().failing) for error_minutes or more;
--                                 since = estimated start of the streak of consecutive failures
--   table_error         critical  a table's synchronization has failed every attempt for
--                                 error_minutes or more and no attempt runs now (its sync worker
--                                 retries; the subscription's status stays initial_copy);
--                                 since = as for error
--   disabled_by_error   critical  disable_on_error disabled the subscription (until it is enabled
--                                 again; not kept across a server restart)
--   lag                 warning   lag_bytes above lag_bytes or apply_lag above apply_lag;
--                                 since = commit time of the oldest transaction not applied yet
--   waiting_for_worker  warning   the subscription waits for an apply worker slot (since: from
--                                 when), or one of its tables for a table synchronization worker
--   conflicts           warning   the conflicts counter above the count given for the subscription
--                                 in conflicts_seen ({"subname": count}, default none: above 0)
--   slot_retains_wal    warning   a slot of the subscription on its publisher retains more than
--                                 retained_wal_bytes of WAL; critical, whatever it retains, when
--                                 its wal_status is unreserved or lost
--   slot_missing        critical  the subscription's slot does not exist on the publisher
--   publisher_unreachable warning the publisher could not be read within publisher_timeout
--   not_preloaded       critical  pgsub is not in shared_preload_libraries
--   not_served          critical  pgsub.database does not name this database (or it is a template)
--   lock_wait           warning   one of its workers (apply, parallel apply, table synchronization)
--                                 has waited lock_wait or longer for a lock: the detail names the
--                                 lock and who holds it (pgsub._lock_waits); since = the wait's start
--   stalled             warning   a running worker (apply or table synchronization) has shown no sign
--                                 of life for stalled or longer — a running worker wakes at least
--                                 once a second and stamps its slot then and as it applies or
--                                 copies (src/process.rs heartbeat): it is stopped (SIGSTOP), hung,
--                                 or busy in one statement; its last wait event is named. A worker
--                                 waiting for a lock is lock_wait's, not this; since = its last sign
-- The publisher is read only for enabled subscriptions, and not at all when retained_wal_bytes
-- is NULL.
-- check_health's thresholds, refused when they cannot mean anything (a negative one, a
-- conflicts_seen that is not an object of counts, a publisher_timeout of zero).
CREATE FUNCTION pgsub._health_arguments(error_minutes integer, lag_bytes bigint, apply_lag interval,
                                        retained_wal_bytes bigint, conflicts_seen jsonb,
                                        publisher_timeout interval, lock_wait interval,
                                        stalled interval)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bad text;
BEGIN
    IF error_minutes < 0 OR lag_bytes < 0 OR apply_lag < interval '0' OR retained_wal_bytes < 0
       OR lock_wait < interval '0' OR stalled < interval '0' THEN
        RAISE EXCEPTION 'check_health thresholds must not be negative'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('error_minutes %s, lag_bytes %s, apply_lag %s, retained_wal_bytes %s, lock_wait %s, stalled %s',
                                  error_minutes, lag_bytes, apply_lag, retained_wal_bytes, lock_wait, stalled);
    END IF;
    IF publisher_timeout <= interval '0' THEN
        RAISE EXCEPTION 'check_health publisher_timeout must be positive'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass an interval such as ''5 seconds'', or retained_wal_bytes => NULL not to read the publishers.';
    END IF;
    IF conflicts_seen IS NOT NULL AND jsonb_typeof(conflicts_seen) <> 'object' THEN
        RAISE EXCEPTION 'check_health conflicts_seen must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass the conflicts counted at the previous check by subscription: ''{"mysub": 12}''.';
    END IF;
    SELECT k INTO bad FROM jsonb_each(coalesce(conflicts_seen, '{}')) AS e(k, v)
    WHERE jsonb_typeof(v) <> 'number' LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'check_health conflicts_seen: the value of "%" is not a number', bad
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END $$;

-- The lock waits of this database's pgsub workers: each worker waiting for a lock, since when,
-- the lock, and who holds it — sessions by pid, user, application and state; prepared
-- transactions (which pg_blocking_pids gives as pid 0) by their gid, found through the lock a
-- prepared transaction keeps on its own transaction id. A remote change that waits
-- for a row or table a local session or prepared transaction holds shows nothing else: the
-- status stays streaming and nothing fails. (A parallel apply worker, whose pid is not in shared
-- memory, is found by its application_name or by the transaction lock it holds while applying.)
CREATE FUNCTION pgsub._lock_waits()
RETURNS TABLE (subname text, pid integer, worker text, waiting_since timestamptz, lock text, held_by text,
               held_by_prepared boolean)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
WITH workers AS (
    SELECT s.subname::text AS subname, s.pid, 'apply worker'::text AS worker
    FROM pgsub.stat_subscription s
    WHERE s.pid IS NOT NULL
    UNION ALL
    SELECT t.subname::text, t.sync_worker_pid, format('table synchronization worker of %s', t.relid)
    FROM pgsub.subscription_table t
    WHERE t.sync_worker_pid IS NOT NULL
    UNION
    -- A parallel apply worker: by its application_name, or (a long or non-ASCII name is cut or
    -- changed there) by the transaction lock it holds on the subscription's id while it applies.
    SELECT s.subname::text, a.pid, 'parallel apply worker'
    FROM pgsub.subscription s JOIN pg_catalog.pg_stat_activity a
      ON a.backend_type = 'pgsub parallel apply worker'
     AND a.datid = pgsub._current_database_oid()
     AND (a.application_name = 'pgsub parallel apply ' || s.subname
          OR EXISTS (SELECT FROM pg_catalog.pg_locks k
                     WHERE k.pid = a.pid AND k.granted AND k.locktype = 'advisory' AND k.objsubid = 12
                       AND k.classid = s.subid::pg_catalog.oid))
),
waits AS (
    SELECT w.subname, w.pid, w.worker, l.locktype, l.database, l.relation, l.page, l.tuple,
           l.virtualxid, l.transactionid, l.classid, l.objid, l.objsubid, l.mode, l.waitstart
    FROM workers w JOIN pg_catalog.pg_locks l ON l.pid = w.pid AND NOT l.granted
    -- Not the waits between an apply worker and its parallel apply worker (advisory locks on
    -- the subscription's id, objsubid 11 and 12: src/worker/parallel/shared.rs): a parallel
    -- worker waits so for the next piece of a long transaction, as designed.
    WHERE NOT (l.locktype = 'advisory' AND l.objsubid IN (11, 12)
               AND l.classid IN (SELECT x.subid::pg_catalog.oid FROM pgsub.subscription x))
),
-- PostgreSQL's table-level lock conflicts: a prepared transaction is named only when a lock it
-- holds conflicts with the one waited for.
conflicts(mode, blocks) AS (
    VALUES ('AccessShareLock', ARRAY['AccessExclusiveLock']),
           ('RowShareLock', ARRAY['ExclusiveLock', 'AccessExclusiveLock']),
           ('RowExclusiveLock', ARRAY['ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock']),
           ('ShareUpdateExclusiveLock', ARRAY['ShareUpdateExclusiveLock', 'ShareLock', 'ShareRowExclusiveLock',
                                              'ExclusiveLock', 'AccessExclusiveLock']),
           ('ShareLock', ARRAY['RowExclusiveLock', 'ShareUpdateExclusiveLock', 'ShareRowExclusiveLock',
                               'ExclusiveLock', 'AccessExclusiveLock']),
           ('ShareRowExclusiveLock', ARRAY['RowExclusiveLock', 'ShareUpdateExclusiveLock', 'ShareLock',
                                           'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock']),
           ('ExclusiveLock', ARRAY['RowShareLock', 'RowExclusiveLock', 'ShareUpdateExclusiveLock', 'ShareLock',
                                   'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock']),
           ('AccessExclusiveLock', ARRAY['AccessShareLock', 'RowShareLock', 'RowExclusiveLock',
                                         'ShareUpdateExclusiveLock', 'ShareLock', 'ShareRowExclusiveLock',
                                         'ExclusiveLock', 'AccessExclusiveLock'])
)
SELECT w.subname, w.pid, w.worker, w.waitstart,
       CASE w.locktype
           WHEN 'relation' THEN format('%s on table %s', w.mode, w.relation::regclass)
           WHEN 'tuple' THEN format('%s on a row of %s', w.mode, w.relation::regclass)
           WHEN 'transactionid' THEN format('%s on transaction %s (a row it changed or locked)',
                                            w.mode, w.transactionid)
           ELSE format('%s (lock type %s)', w.mode, w.locktype) END,
       (SELECT string_agg(h.holder, '; ' ORDER BY h.holder)
        FROM (SELECT CASE WHEN b.pid = 0
                          THEN coalesce((SELECT string_agg(format('prepared transaction %L (database %s, owner %s, prepared at %s)',
                                                                  x.gid, x.database, x.owner, x.prepared), ', ' ORDER BY x.gid)
                                         FROM (SELECT DISTINCT x.gid, x.database, x.owner, x.prepared
                                         FROM pg_catalog.pg_locks g
                                         JOIN pg_catalog.pg_locks own
                                           ON own.virtualtransaction = g.virtualtransaction AND own.pid IS NULL
                                          AND own.granted AND own.locktype = 'transactionid'
                                          AND own.mode = 'ExclusiveLock'
                                         JOIN pg_catalog.pg_prepared_xacts x ON x.transaction = own.transactionid
                                         WHERE g.granted AND g.pid IS NULL AND g.locktype = w.locktype
                                           AND g.database IS NOT DISTINCT FROM w.database
                                           AND g.relation IS NOT DISTINCT FROM w.relation
                                           AND g.page IS NOT DISTINCT FROM w.page
                                           AND g.tuple IS NOT DISTINCT FROM w.tuple
                                           AND g.virtualxid IS NOT DISTINCT FROM w.virtualxid
                                           AND g.transactionid IS NOT DISTINCT FROM w.transactionid
                                           AND g.classid IS NOT DISTINCT FROM w.classid
                                           AND g.objid IS NOT DISTINCT FROM w.objid
                                           AND g.objsubid IS NOT DISTINCT FROM w.objsubid
                                           AND g.mode = ANY (coalesce((SELECT c.blocks FROM conflicts c
                                                                       WHERE c.mode = w.mode),
                                                                      ARRAY[g.mode]))) x),
                                        'a prepared transaction')
                          -- (state and transaction start are NULL for a role that may not see
                          -- them: left out)
                          ELSE coalesce((SELECT format('pid %s (%s)', a.pid,
                                                       concat_ws(', ', 'user ' || a.usename,
                                                                 'application ' || quote_literal(a.application_name),
                                                                 a.state, 'transaction started at ' || a.xact_start))
                                         FROM pg_catalog.pg_stat_activity a WHERE a.pid = b.pid),
                                        format('pid %s', b.pid)) END AS holder
              FROM (SELECT DISTINCT u.pid FROM unnest(pg_catalog.pg_blocking_pids(w.pid)) u(pid)) b) h),
       0 = ANY (pg_catalog.pg_blocking_pids(w.pid))
FROM waits w
$$;

CREATE FUNCTION pgsub.check_health(
    error_minutes integer DEFAULT 5,
    lag_bytes bigint DEFAULT 1073741824,
    apply_lag interval DEFAULT '5 minutes',
    retained_wal_bytes bigint DEFAULT 10737418240,
    conflicts_seen jsonb DEFAULT '{}',
    publisher_timeout interval DEFAULT '5 seconds',
    lock_wait interval DEFAULT '1 minute',
    stalled interval DEFAULT '1 minute')
RETURNS TABLE (subname text, problem text, severity text, detail text, since timestamptz)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT pgsub._health_arguments(check_health.error_minutes, check_health.lag_bytes, check_health.apply_lag,
                               check_health.retained_wal_bytes, check_health.conflicts_seen,
                               check_health.publisher_timeout, check_health.lock_wait,
                               check_health.stalled);
WITH s AS (
    SELECT s.*, h.failures, h.failing, pgsub._ts(h.failing_since) AS failing_since,
           pgsub._ts(h.waiting_since) AS waiting_since,
           pgsub._ts(h.disabled_by_error_at) AS disabled_by_error_at,
           pgsub._ts(h.alive_at) AS alive_at
    FROM pgsub.stat_subscription s
    LEFT JOIN pgsub._health_state() h ON h.subid = s.subid
),
slots AS (
    SELECT * FROM pgsub.publisher_slots(greatest(1, least(2147483647,
               extract(epoch FROM check_health.publisher_timeout) * 1000))::integer)
    WHERE check_health.retained_wal_bytes IS NOT NULL
),
problems AS (
    SELECT s.subname::text, 'not_preloaded' AS problem, 'critical' AS severity,
           'pgsub is not loaded through shared_preload_libraries: nothing applies this subscription' AS detail,
           NULL::timestamptz AS since
    FROM s WHERE s.status = 'not_preloaded'
    UNION ALL
    SELECT s.subname::text, 'not_served', 'critical',
           format('pgsub does not serve database %s (pgsub.database = %L, or a template): nothing applies this subscription',
                  current_database(), current_setting('pgsub.database', true)),
           NULL
    FROM s WHERE s.status = 'not_served'
    UNION ALL
    SELECT s.subname::text, 'error', 'critical',
           format('%s consecutive failed runs, the last at %s: %s', s.failures, s.last_error_at,
                  split_part(coalesce(s.last_error, ''), E'\n', 1)),
           s.failing_since
    FROM s
    WHERE s.enabled AND s.failing
      AND now() - s.failing_since >= make_interval(mins => check_health.error_minutes)
    UNION ALL
    SELECT s.subname::text, 'table_error', 'critical',
           format('table %s: %s consecutive failed synchronization attempts, the last at %s: %s',
                  t.relid::regclass, t.failures, pgsub._ts(t.last_error_at),
                  split_part(coalesce(t.last_error, ''), E'\n', 1)),
           pgsub._ts(t.failing_since)
    FROM pgsub._sync_progress() t
    JOIN s ON s.subid = t.subid
    JOIN pgsub.subscription_table st ON st.subname = s.subname AND st.relid::oid = t.relid
    WHERE s.enabled AND t.failures > 0 AND t.last_error_at > 0 AND t.pid IS NULL
      AND st.sync_state NOT IN ('synchronized', 'ready')
      AND now() - pgsub._ts(t.failing_since) >= make_interval(mins => check_health.error_minutes)
    UNION ALL
    SELECT s.subname::text, 'disabled_by_error', 'critical',
           format('disabled by disable_on_error at %s after an error: %s', s.disabled_by_error_at,
                  split_part(coalesce(s.last_error, ''), E'\n', 1)),
           s.disabled_by_error_at
    FROM s WHERE NOT s.enabled AND s.disabled_by_error_at IS NOT NULL
    UNION ALL
    SELECT s.subname::text, 'lag', 'warning',
           format('lag_bytes %s (threshold %s), apply_lag %s (threshold %s)',
                  s.lag_bytes, check_health.lag_bytes, s.apply_lag, check_health.apply_lag),
           CASE WHEN s.apply_lag > interval '0' THEN now() - s.apply_lag END
    FROM s
    WHERE s.enabled AND (s.lag_bytes > check_health.lag_bytes OR s.apply_lag > check_health.apply_lag)
    UNION ALL
    SELECT s.subname::text, 'waiting_for_worker', 'warning',
           'no background worker slot for its apply worker (pgsub.max_apply_workers or max_worker_processes reached)',
           s.waiting_since
    FROM s WHERE s.status = 'waiting_for_worker'
    UNION ALL
    SELECT t.subname::text, 'waiting_for_worker', 'warning',
           format('table %s waits for a table synchronization worker (pgsub.max_sync_workers or max_worker_processes reached)',
                  t.relid),
           NULL
    FROM pgsub.subscription_table t WHERE t.waiting_for_worker
    UNION ALL
    SELECT s.subname::text, 'conflicts', 'warning',
           format('%s conflicts counted, %s at the previous check (conflicts_seen)',
                  s.conflicts, coalesce((check_health.conflicts_seen ->> s.subname)::bigint, 0)),
           NULL
    FROM s WHERE s.conflicts > coalesce((check_health.conflicts_seen ->> s.subname)::bigint, 0)
    UNION ALL
    SELECT l.subname, 'slot_retains_wal',
           CASE WHEN l.wal_status IN ('unreserved', 'lost') THEN 'critical' ELSE 'warning' END,
           CASE WHEN l.wal_status = 'lost'
                THEN format('slot %s on the publisher is lost (wal_status lost): the publisher removed WAL it '
                            'still needed (max_slot_wal_keep_size); the subscription cannot go on and must be '
                            'dropped and created again', l.slot_name)
                ELSE format('slot %s on the publisher retains %s bytes of WAL (%s; threshold %s), active %s, wal_status %s',
                            l.slot_name, l.retained_wal_bytes, pg_size_pretty(l.retained_wal_bytes),
                            check_health.retained_wal_bytes, l.active, coalesce(l.wal_status, 'unknown'))
                     || CASE WHEN l.wal_status = 'unreserved'
                             THEN ': beyond max_slot_wal_keep_size, the next checkpoint on the publisher may remove it'
                             ELSE '' END
           END,
           NULL
    FROM slots l
    WHERE l.retained_wal_bytes > check_health.retained_wal_bytes OR l.wal_status IN ('unreserved', 'lost')
    UNION ALL
    SELECT l.subname, CASE WHEN l.publisher_reachable THEN 'slot_missing' ELSE 'publisher_unreachable' END,
           CASE WHEN l.publisher_reachable THEN 'critical' ELSE 'warning' END, l.error, NULL
    FROM slots l WHERE l.error IS NOT NULL
    UNION ALL
    SELECT w.subname, 'lock_wait', 'warning',
           format('%s (pid %s) has waited since %s for %s, held by %s%s', w.worker, w.pid, w.waiting_since,
                  w.lock, coalesce(w.held_by, 'a transaction that has just ended'),
                  CASE WHEN w.held_by_prepared
                       THEN ': COMMIT PREPARED or ROLLBACK PREPARED it, connected to its database, to let apply go on'
                       ELSE '' END),
           w.waiting_since
    FROM pgsub._lock_waits() w
    WHERE now() - w.waiting_since >= check_health.lock_wait
    UNION ALL
    SELECT b.subname, 'stalled', 'warning',
           format('%s (pid %s) has shown no sign of life since %s (%s): it is stopped, hung or busy in one '
                  'statement; its last wait event: %s', b.worker, b.pid, b.alive_at,
                  date_trunc('second', now() - b.alive_at),
                  coalesce((SELECT a.wait_event_type || ' ' || a.wait_event FROM pg_catalog.pg_stat_activity a
                            WHERE a.pid = b.pid), 'none')),
           b.alive_at
    FROM (SELECT s.subname::text AS subname, s.pid, 'apply worker'::text AS worker, s.alive_at
          FROM s WHERE s.pid IS NOT NULL AND s.alive_at IS NOT NULL
          UNION ALL
          SELECT s.subname::text, t.pid, format('table synchronization worker of %s', t.relid::regclass),
                 pgsub._ts(t.alive_at)
          FROM pgsub._sync_progress() t JOIN s ON s.subid = t.subid
          WHERE t.pid IS NOT NULL AND t.alive_at > 0) b
    WHERE now() - b.alive_at >= check_health.stalled
      -- Waiting for a lock: lock_wait names what it waits for.
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_locks l WHERE l.pid = b.pid AND NOT l.granted)
)
SELECT p.subname, p.problem, p.severity, p.detail, p.since FROM problems p
ORDER BY p.severity = 'critical' DESC, p.subname, p.problem, p.detail
$$;
COMMENT ON FUNCTION pgsub.check_health(integer, bigint, interval, bigint, jsonb, interval, interval, interval) IS
    'One row per current problem of this database''s subscriptions (README, Monitoring)';

CREATE VIEW pgsub.health AS SELECT * FROM pgsub.check_health();

-- Health reads the publishers with the stored credentials: pgsub_admin and pg_monitor only.
REVOKE EXECUTE ON FUNCTION
    pgsub.check_health(integer, bigint, interval, bigint, jsonb, interval, interval, interval),
    pgsub.publisher_slots(integer)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    pgsub.check_health(integer, bigint, interval, bigint, jsonb, interval, interval, interval),
    pgsub.publisher_slots(integer)
TO pgsub_admin, pg_monitor;
REVOKE ALL ON pgsub.health FROM PUBLIC;
GRANT SELECT ON pgsub.health TO pgsub_admin, pg_monitor;

-- The row estimates (see the top of this file).
ALTER FUNCTION pgsub._health_state() ROWS 10;
ALTER FUNCTION pgsub._stat_conflicts() ROWS 10;
ALTER FUNCTION pgsub._stat_counters() ROWS 10;
ALTER FUNCTION pgsub._stat_databases() ROWS 4;
ALTER FUNCTION pgsub._stat_names() ROWS 10;
ALTER FUNCTION pgsub._stat_progress() ROWS 10;
ALTER FUNCTION pgsub._stat_workers() ROWS 10;
ALTER FUNCTION pgsub._stat_rates() ROWS 10;
ALTER FUNCTION pgsub._stat_tables() ROWS 100;
ALTER FUNCTION pgsub._sync_progress() ROWS 10;
ALTER FUNCTION pgsub._lock_waits() ROWS 10;
ALTER FUNCTION pgsub._lag_history(integer) ROWS 60;
ALTER FUNCTION pgsub.lag_history(text) ROWS 60;
ALTER FUNCTION pgsub.publisher_slots(integer) ROWS 10;
ALTER FUNCTION pgsub.check_health(integer, bigint, interval, bigint, jsonb, interval, interval, interval) ROWS 10;
