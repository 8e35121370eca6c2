#!/usr/bin/env bash
# scripts/demo-sql/init-node.sh — sets up one node of the pgsub demo with the SQL files beside it:
#   init-node.sh publisher    schema, sample data, role demo_repl, publication demo_pub
#                             (publisher.sql; needs DEMO_REPL_PASSWORD)
#   init-node.sh subscriber   CREATE EXTENSION pgsub, schema, subscription demo_sub
#                             (subscriber.sql; needs DEMO_PUB_CONNINFO, the publisher's conninfo)
# It connects as libpq's environment says (PGHOST, PGPORT, PGUSER, PGDATABASE), or to DEMO_DSN
# when set. Run by scripts/demo on loopback clusters and, in Docker, by the
# /docker-entrypoint-initdb.d wrappers in docker/initdb/ (compose.yaml). Safe to rerun.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { printf 'init-node: %s\n' "$*" >&2; exit 1; }

role=${1:-}
psql_args=(-X -q -v ON_ERROR_STOP=1)
if [ -n "${DEMO_DSN:-}" ]; then
  psql_args+=(-d "$DEMO_DSN")
fi
command -v psql >/dev/null || die "psql not found in PATH"

case "$role" in
  publisher)
    [ -n "${DEMO_REPL_PASSWORD:-}" ] || die "DEMO_REPL_PASSWORD is not set (password for the role demo_repl)"
    psql "${psql_args[@]}" -v repl_password="$DEMO_REPL_PASSWORD" -f "$here/publisher.sql" \
      || die "publisher setup failed (publisher.sql)"
    echo "init-node: publisher ready: tables shop.accounts, shop.orders, shop.events; publication demo_pub"
    ;;
  subscriber)
    [ -n "${DEMO_PUB_CONNINFO:-}" ] || die "DEMO_PUB_CONNINFO is not set (libpq conninfo of the publisher)"
    psql "${psql_args[@]}" -v pub_conninfo="$DEMO_PUB_CONNINFO" -f "$here/subscriber.sql" \
      || die "subscriber setup failed (subscriber.sql): is pgsub in shared_preload_libraries, and can the publisher be reached with DEMO_PUB_CONNINFO?"
    echo "init-node: subscriber ready: extension pgsub; subscription demo_sub to publication demo_pub"
    ;;
  *)
    die "usage: init-node.sh publisher|subscriber (got '${role}')"
    ;;
esac
