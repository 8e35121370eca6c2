#!/usr/bin/env bash
# docker/initdb/publisher.sh — mounted into the publisher's /docker-entrypoint-initdb.d by
# compose.yaml; the official postgres image runs it once, on an empty data directory, against its
# temporary init server. The work is done by the same script scripts/demo runs:
# scripts/demo-sql/init-node.sh (mounted at /demo-sql). This file may be sourced by the entrypoint,
# so it only runs that script in a child bash (a failure there fails the container's init).
# DEMO_SQL_DIR (default /demo-sql) lets tests/demo_test.rs run this file outside Docker.
PGUSER="${POSTGRES_USER:-postgres}" PGDATABASE="${POSTGRES_DB:-${POSTGRES_USER:-postgres}}" \
  bash "${DEMO_SQL_DIR:-/demo-sql}/init-node.sh" publisher
