#!/bin/bash
# bench/many_small_tables.sh — by hand (NOTES 29): N small tables (100 rows each, default 100) in one
# publication FOR ALL TABLES, one pgsub subscription, then in another database of the same
# subscriber server a native subscription (CREATE SUBSCRIPTION); prints the seconds until every
# table is ready for each, and their ratio.
# PG_BIN: server binaries with pgsub installed (default target/pg/18/bin); run as root (servers run
# as the postgres OS user); ports 56191-56192; SYNC_DIR: the clusters' directory.
set -euo pipefail
BIN=${PG_BIN:-$(dirname "$0")/../target/pg/18/bin}
D=${SYNC_DIR:-/tmp/pgsub-many-tables}
N=${N:-100}
# shellcheck source-path=SCRIPTDIR source=lib/pair.sh
. "$(dirname "$0")/lib/pair.sh"
pair_start "$BIN" "$D" 56191 56192
pub_sql=""
sub_sql=""
for i in $(seq 1 "$N"); do
    pub_sql+="CREATE TABLE t$i (id int PRIMARY KEY, v text); INSERT INTO t$i SELECT g, 'x' FROM generate_series(1, 100) g;"
    sub_sql+="CREATE TABLE t$i (id int PRIMARY KEY, v text);"
done
"$BIN/psql" -h "$D" -p 56191 -U postgres -qc "$pub_sql" -c "CREATE PUBLICATION p FOR ALL TABLES"
"$BIN/psql" -h "$D" -p 56192 -U postgres -qc "$sub_sql" -c "CREATE EXTENSION pgsub"
# Seconds from running `create` in database $1 until `ready` there counts $N tables.
time_until_ready() {
    local db=$1 create=$2 ready=$3 start end
    start=$(date +%s.%N)
    "$BIN/psql" -h "$D" -p 56192 -U postgres -d "$db" -qc "$create" >/dev/null
    while [ "$("$BIN/psql" -h "$D" -p 56192 -U postgres -d "$db" -Atc "$ready")" != "$N" ]; do
        sleep 0.1
    done
    end=$(date +%s.%N)
    echo "$end - $start" | bc
}
conninfo="host=$D port=56191 dbname=postgres user=postgres"
pgsub_s=$(time_until_ready postgres "SELECT pgsub.create_subscription('s', '$conninfo', ARRAY['p'])" \
    "SELECT count(*) FROM pgsub.subscription_table WHERE sync_state = 'ready'")
echo "pgsub: $N tables ready in $pgsub_s s"
"$BIN/psql" -h "$D" -p 56192 -U postgres -qc "CREATE DATABASE native"
"$BIN/psql" -h "$D" -p 56192 -U postgres -d native -qc "$sub_sql"
native_s=$(time_until_ready native "CREATE SUBSCRIPTION n CONNECTION '$conninfo' PUBLICATION p" \
    "SELECT count(*) FROM pg_catalog.pg_subscription_rel WHERE srsubstate = 'r'")
echo "native: $N tables ready in $native_s s"
echo "ratio pgsub/native: $(echo "scale=2; $pgsub_s / $native_s" | bc)"
