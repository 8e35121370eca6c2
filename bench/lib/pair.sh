# shellcheck shell=bash
# bench/lib/pair.sh — the publisher and subscriber of the by-hand bench scripts
# (many_small_tables.sh, full_identity.sh), sourced by them. It owns:
#   pair_start BIN DIR PUB_PORT SUB_PORT   fresh clusters DIR/pub (wal_level=logical) and DIR/sub
#                                          (pgsub preloaded) on Unix sockets in DIR, run as the
#                                          postgres OS user; both stopped when the script exits.
pair_as_postgres() { runuser -u postgres -- "$@"; }

pair_start() {
    local bin=$1 dir=$2 pub_port=$3 sub_port=$4
    rm -rf "$dir"
    mkdir -p "$dir"
    chown postgres "$dir"
    pair_as_postgres "$bin/initdb" -D "$dir/pub" -A trust -U postgres >/dev/null
    pair_as_postgres "$bin/initdb" -D "$dir/sub" -A trust -U postgres >/dev/null
    printf '%s\n' "wal_level=logical" "max_wal_senders=20" "max_replication_slots=20" >>"$dir/pub/postgresql.conf"
    printf '%s\n' "shared_preload_libraries='pgsub'" "max_worker_processes=16" >>"$dir/sub/postgresql.conf"
    pair_as_postgres "$bin/pg_ctl" -D "$dir/pub" -o "-p $pub_port -k $dir -c listen_addresses=''" -l "$dir/pub.log" start >/dev/null
    pair_as_postgres "$bin/pg_ctl" -D "$dir/sub" -o "-p $sub_port -k $dir -c listen_addresses=''" -l "$dir/sub.log" start >/dev/null
    # shellcheck disable=SC2064 # the paths are fixed now
    trap "pair_as_postgres '$bin/pg_ctl' -D '$dir/sub' stop -m fast >/dev/null; pair_as_postgres '$bin/pg_ctl' -D '$dir/pub' stop -m fast >/dev/null" EXIT
}
