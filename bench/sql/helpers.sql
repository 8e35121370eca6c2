-- bench/sql/helpers.sql — helper functions installed in schema "bench" on every node of the
-- benchmark (never published: the publications list their tables explicitly).
--
-- The waits run inside the server so that the ~20 ms polling costs one connection, not one psql
-- process per probe; each returns the wall-clock time (epoch seconds, clock_timestamp()) at which
-- its condition first held, so the caller subtracts its own start time (same machine, same clock).

CREATE SCHEMA IF NOT EXISTS bench;

-- Publisher: waits until the slot's confirmed_flush_lsn reaches target. Returns
-- 'active_at done_at' (epoch seconds): when a walsender was first seen using the slot (the
-- subscriber's worker had connected) and when the target was confirmed.
DROP FUNCTION IF EXISTS bench.wait_slot(name, pg_lsn, float8, float8);
CREATE FUNCTION bench.wait_slot(slot name, target pg_lsn, timeout_s float8,
                                poll_s float8 DEFAULT 0.02)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
    c pg_lsn;
    act boolean;
    active_at float8;
    now_e float8;
BEGIN
    LOOP
        SELECT confirmed_flush_lsn, active INTO c, act
          FROM pg_catalog.pg_replication_slots WHERE slot_name = slot;
        now_e := extract(epoch FROM clock_timestamp());
        IF act AND active_at IS NULL THEN
            active_at := now_e;
        END IF;
        IF c IS NOT NULL AND c >= target THEN
            RETURN coalesce(active_at, now_e) || ' ' || now_e;
        END IF;
        IF clock_timestamp() - t0 > timeout_s * interval '1 second' THEN
            RAISE EXCEPTION 'timed out after % s waiting for slot % to confirm % (confirmed_flush_lsn %)',
                timeout_s, slot, target, c;
        END IF;
        PERFORM pg_catalog.pg_sleep(poll_s);
    END LOOP;
END $$;

-- Publisher: waits until no walsender uses the slot (after a subscription was disabled).
CREATE OR REPLACE FUNCTION bench.wait_slot_inactive(slot name, timeout_s float8)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
BEGIN
    WHILE EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = slot AND active) LOOP
        IF clock_timestamp() - t0 > timeout_s * interval '1 second' THEN
            RAISE EXCEPTION 'timed out after % s waiting for slot % to become inactive', timeout_s, slot;
        END IF;
        PERFORM pg_catalog.pg_sleep(0.02);
    END LOOP;
END $$;

-- Subscriber: waits until every table of a subscription has its initial copy committed.
-- kind 'native': pg_subscription_rel.srsubstate in (f = finished copy, s = sync done, r = ready),
--                all three are set in or after the transaction that committed the copied rows;
-- kind 'pgsub':  pgsub.subscription_table.sync_state in (synchronized, ready), likewise.
CREATE OR REPLACE FUNCTION bench.wait_copied(kind text, sub text, timeout_s float8,
                                             poll_s float8 DEFAULT 0.02)
RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
    done bigint;
    total bigint;
BEGIN
    LOOP
        IF kind = 'native' THEN
            SELECT count(*) FILTER (WHERE r.srsubstate IN ('f', 's', 'r')), count(*) INTO done, total
              FROM pg_catalog.pg_subscription_rel r
              JOIN pg_catalog.pg_subscription s ON s.oid = r.srsubid
             WHERE s.subname = sub;
        ELSE
            EXECUTE $q$SELECT count(*) FILTER (WHERE sync_state IN ('synchronized', 'ready')), count(*)
                         FROM pgsub.subscription_table WHERE subname = $1$q$
               INTO done, total USING sub;
        END IF;
        IF total > 0 AND done = total THEN
            RETURN extract(epoch FROM clock_timestamp());
        END IF;
        IF clock_timestamp() - t0 > timeout_s * interval '1 second' THEN
            RAISE EXCEPTION 'timed out after % s waiting for the initial copy of subscription % (% of % tables)',
                timeout_s, sub, done, total;
        END IF;
        PERFORM pg_catalog.pg_sleep(poll_s);
    END LOOP;
END $$;

-- Subscriber: waits until ntables tables of a subscription are ready. Returns 'copied_at ready_at'
-- (epoch seconds): when every table's initial copy had been committed (native srsubstate f, s or
-- r; pgsub sync_state copied, catchup, synchronized or ready) and when every table was ready
-- (native r, pgsub ready: the apply worker has taken the table over from its sync worker).
CREATE OR REPLACE FUNCTION bench.wait_synced(kind text, sub text, ntables int, timeout_s float8,
                                             poll_s float8 DEFAULT 0.05)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
    copied bigint;
    ready bigint;
    total bigint;
    copied_at float8;
    now_e float8;
BEGIN
    LOOP
        IF kind = 'native' THEN
            SELECT count(*) FILTER (WHERE r.srsubstate IN ('f', 's', 'r')),
                   count(*) FILTER (WHERE r.srsubstate = 'r'), count(*)
              INTO copied, ready, total
              FROM pg_catalog.pg_subscription_rel r
              JOIN pg_catalog.pg_subscription s ON s.oid = r.srsubid
             WHERE s.subname = sub;
        ELSE
            EXECUTE $q$SELECT count(*) FILTER (WHERE sync_state IN ('copied', 'catchup', 'synchronized', 'ready')),
                              count(*) FILTER (WHERE sync_state = 'ready'), count(*)
                         FROM pgsub.subscription_table WHERE subname = $1$q$
               INTO copied, ready, total USING sub;
        END IF;
        now_e := extract(epoch FROM clock_timestamp());
        IF copied_at IS NULL AND total >= ntables AND copied = total THEN
            copied_at := now_e;
        END IF;
        IF total >= ntables AND ready = total THEN
            RETURN coalesce(copied_at, now_e) || ' ' || now_e;
        END IF;
        IF clock_timestamp() - t0 > timeout_s * interval '1 second' THEN
            RAISE EXCEPTION 'timed out after % s waiting for the tables of subscription % (% of % expected: % copied, % ready)',
                timeout_s, sub, total, ntables, copied, ready;
        END IF;
        PERFORM pg_catalog.pg_sleep(poll_s);
    END LOOP;
END $$;

-- Any node: row count and md5 of a table's rows in key order, as 'count md5'. The md5 is taken
-- per bucket of 65536 keys and then over the buckets' md5s in order (one scan, bounded memory);
-- tables without a key use bucket 0 and the row's text as order.
CREATE OR REPLACE FUNCTION bench.checksum(tbl regclass, bucket_expr text, order_expr text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    r text;
BEGIN
    EXECUTE format(
        'SELECT coalesce(sum(c), 0) || '' '' || coalesce(md5(string_agg(h, '''' ORDER BY b)), ''-'')
           FROM (SELECT %s AS b, count(*) AS c,
                        md5(string_agg(t::text, E''\n'' ORDER BY %s)) AS h
                   FROM %s t GROUP BY 1) s',
        bucket_expr, order_expr, tbl)
    INTO r;
    RETURN r;
END $$;

-- Any node: one 'tables rows md5' line over every table of schema public whose name matches
-- pattern (LIKE), in name order: bench.checksum of each table (key id), combined — workload 8's
-- hundreds of tables compared in one call.
CREATE OR REPLACE FUNCTION bench.checksum_tables(pattern text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    t regclass;
    c text;
    ntab bigint := 0;
    nrows bigint := 0;
    sums text := '';
BEGIN
    FOR t IN SELECT c.oid::regclass FROM pg_catalog.pg_class c
              WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND c.relname LIKE pattern
              ORDER BY c.relname LOOP
        c := bench.checksum(t, 'id / 65536', 'id');
        ntab := ntab + 1;
        nrows := nrows + split_part(c, ' ', 1)::bigint;
        sums := sums || c || E'\n';
    END LOOP;
    RETURN ntab || ' ' || nrows || ' ' || md5(sums);
END $$;
