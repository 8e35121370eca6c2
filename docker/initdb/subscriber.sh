#!/usr/bin/env bash
# docker/initdb/subscriber.sh — mounted into the subscriber's /docker-entrypoint-initdb.d by
# compose.yaml; the entrypoint runs it once, on an empty data directory, against its temporary
# init server (which already preloads pgsub). The work is done by the same script scripts/demo
# runs: scripts/demo-sql/init-node.sh (mounted at /demo-sql), which creates the extension in
# the postgres database and the subscription to the `publisher` service (DEMO_PUB_CONNINFO).
# This file may be sourced by the entrypoint, so it only runs that script in a child bash.
# DEMO_SQL_DIR (default /demo-sql) lets tests/demo_test.rs run this file outside Docker.
# pgsub serves every database; the demo's subscription lives in postgres.
PGUSER="${POSTGRES_USER:-postgres}" PGDATABASE=postgres \
  bash "${DEMO_SQL_DIR:-/demo-sql}/init-node.sh" subscriber
