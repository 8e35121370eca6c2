-- scripts/demo-sql/subscriber.sql — the subscriber's side of the demo: the pgsub extension, the
-- same tables as the publisher (schema.sql) and the subscription `demo_sub` to `demo_pub`.
-- psql variable: pub_conninfo (libpq connection string of the publisher). The server must have
-- shared_preload_libraries = 'pgsub' (any database will do; the demo uses postgres).
-- Run by init-node.sh, i.e. by scripts/demo and by the compose subscriber's
-- /docker-entrypoint-initdb.d. Safe to rerun: an existing subscription is kept.
\set ON_ERROR_STOP on
CREATE EXTENSION IF NOT EXISTS pgsub;
\ir schema.sql

SELECT NOT EXISTS (SELECT 1 FROM pgsub.subscription WHERE subname = 'demo_sub') AS need_sub \gset
\if :need_sub
-- Connects to the publisher right away: checks the publication and that its tables exist here,
-- creates the replication slot, and the launcher starts the apply worker (initial copy first).
SELECT pgsub.create_subscription('demo_sub', :'pub_conninfo', ARRAY['demo_pub']) \gset
\echo 'subscription demo_sub created'
\else
\echo 'subscription demo_sub exists already'
\endif
