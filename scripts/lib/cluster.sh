# shellcheck shell=bash
# scripts/lib/cluster.sh — PostgreSQL clusters on loopback ports for the shell scripts: sourced by
# scripts/demo and bench/run (tests/harness.rs is the Rust counterpart for the end-to-end tests).
# It owns how a node is created, configured, started, found and stopped:
#   cluster_mkdir DIR                   a fresh, empty directory (mode 0700) for the server user
#   cluster_init DATA LOG [ARGS...]     initdb -D DATA -U postgres -E UTF8 --locale=C ARGS (output to LOG)
#   cluster_configure DATA FILE         stdin becomes DATA/FILE, included from postgresql.conf
#   cluster_start DATA LOG              pg_ctl start -w (server log LOG)
#   cluster_pid DATA                    prints the pid of the postmaster running DATA, else fails
#   cluster_stop DATA [LABEL]           pg_ctl stop -m fast, then immediate, then SIGKILL by pid;
#                                       then its children (SIGKILL to any left)
#   cluster_port_in_use PORT            whether something listens on 127.0.0.1:PORT
#   cluster_free_port FROM [AVOID]      prints the first free loopback port from FROM, not AVOID
#   cluster_as_owner CMD...             runs CMD as the server user, from /
#   cluster_own PATH...                 gives PATHs (recursively) to the server user
#   cluster_pid_alive PID, cluster_wait_gone PID SECONDS, cluster_child_pids PID
# The server user is `postgres` when the caller is root (PostgreSQL refuses to run as root), else
# the caller. CLUSTER_BINDIR names the directory of initdb and pg_ctl (callers set it; without it
# cluster_stop falls back to signals). Messages go through cluster_log, which a caller may
# redefine after sourcing this file (default: stderr). Processes are found and stopped by pid,
# never by name. The compose demo does not use this file: there the official postgres image's
# entrypoint runs initdb and the server, and scripts/demo-sql/init-node.sh only runs SQL on them.

CLUSTER_BINDIR=${CLUSTER_BINDIR:-}

cluster_log() { printf '%s\n' "$*" >&2; }

cluster_is_root() { [ "$(id -u)" -eq 0 ]; }

cluster_as_owner() {
  if cluster_is_root; then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && "$@")
  fi
}

cluster_own() {
  if cluster_is_root; then chown -R postgres: "$@"; fi
}

cluster_mkdir() {
  rm -rf -- "$1"
  install -d -m 0700 "$1"
  cluster_own "$1"
}

# cluster_init DATA LOG [INITDB ARGS...]: on failure prints LOG to stderr and returns 1.
cluster_init() {
  local data=$1 log=$2
  shift 2
  cluster_as_owner "$CLUSTER_BINDIR/initdb" -D "$data" -U postgres -E UTF8 --locale=C "$@" >"$log" 2>&1 \
    || { cat "$log" >&2; return 1; }
}

# cluster_configure DATA FILE: the settings on stdin go to DATA/FILE (rewritten each time), which
# postgresql.conf includes (the include line is added once).
cluster_configure() {
  local data=$1 file=$2
  cat >"$data/$file"
  if ! grep -qxF "include '$file'" "$data/postgresql.conf"; then
    printf "\ninclude '%s'\n" "$file" >>"$data/postgresql.conf"
  fi
  cluster_own "$data/$file" "$data/postgresql.conf"
}

# cluster_start DATA LOG: on failure prints the end of LOG to stderr and returns 1.
cluster_start() {
  local data=$1 log=$2
  cluster_as_owner "$CLUSTER_BINDIR/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null 2>&1 \
    || { tail -n 30 "$log" >&2 2>/dev/null || true; return 1; }
}

cluster_pid_alive() {
  local state
  [ -r "/proc/$1/stat" ] || return 1
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ "$state" != Z ]
}

# True if `pid` runs (not a zombie) and its command line names data directory `data`: a
# postmaster.pid file may be stale and its pid reused by something else.
cluster_is_postmaster_of() {
  local pid=$1 data=$2 cmd
  cluster_pid_alive "$pid" || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmd == *"$data"* ]]
}

cluster_pid() {
  local data=$1 pid
  [ -f "$data/postmaster.pid" ] || return 1
  pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null | tr -dc '0-9')
  [ -n "$pid" ] || return 1
  cluster_is_postmaster_of "$pid" "$data" || return 1
  printf '%s\n' "$pid"
}

# Pids whose parent is $1 (a postmaster's backends and workers).
cluster_child_pids() {
  local f stat rest ppid
  for f in /proc/[0-9]*/stat; do
    stat=$(cat "$f" 2>/dev/null) || continue
    rest=${stat##*) }
    read -r _ ppid _ <<<"$rest"
    if [ "$ppid" = "$1" ]; then
      f=${f#/proc/}
      printf '%s\n' "${f%/stat}"
    fi
  done
}

cluster_wait_gone() { # pid seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    cluster_pid_alive "$1" || return 0
    sleep 0.1 # the poll interval of this wait
  done
  ! cluster_pid_alive "$1"
}

# cluster_stop DATA [LABEL]: returns 0 once nothing of the node runs (also when it was not
# running), 1 when a process does not exit even after SIGKILL.
cluster_stop() {
  local data=$1 label=${2:-$1} pid children c
  pid=$(cluster_pid "$data") || return 0
  mapfile -t children < <(cluster_child_pids "$pid")
  if [ -n "$CLUSTER_BINDIR" ] && [ -x "$CLUSTER_BINDIR/pg_ctl" ]; then
    cluster_as_owner "$CLUSTER_BINDIR/pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    if cluster_pid_alive "$pid"; then
      cluster_as_owner "$CLUSTER_BINDIR/pg_ctl" -D "$data" -m immediate -w -t 10 stop >/dev/null 2>&1 || true
    fi
  else
    kill -INT "$pid" 2>/dev/null || true # fast shutdown
    cluster_wait_gone "$pid" 30 || true
  fi
  if cluster_pid_alive "$pid" && cluster_is_postmaster_of "$pid" "$data"; then
    cluster_log "$label: postmaster $pid still there; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  cluster_wait_gone "$pid" 10 || { cluster_log "$label: postmaster pid $pid does not exit"; return 1; }
  for c in "${children[@]}"; do
    if ! cluster_wait_gone "$c" 10; then
      cluster_log "$label: child pid $c still there; sending SIGKILL"
      kill -KILL "$c" 2>/dev/null || true
      cluster_wait_gone "$c" 5 || { cluster_log "$label: process $c does not exit"; return 1; }
    fi
  done
}

cluster_port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# cluster_free_port FROM [AVOID]: the first port from FROM (at most 100 tried) that is free and
# not AVOID; fails when there is none.
cluster_free_port() {
  local port=$1 avoid=${2:-0} tries
  for ((tries = 0; tries < 100; tries++)); do
    if [ "$port" != "$avoid" ] && ! cluster_port_in_use "$port"; then
      printf '%s\n' "$port"
      return 0
    fi
    port=$((port + 1))
  done
  return 1
}
