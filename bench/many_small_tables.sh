#!/bin/bash
# bench/many_small_tables.sh — by hand (NOTES 29): N small tables (100 rows each, default 100) in one
# publication FOR ALL TABLES, one pgsub subscription; prints the seconds until every table is ready.
# PG_BIN: server binaries with pgsub installed (default target/pg/18/bin); run as root (servers run
# as the postgres OS user); ports 56191-56192.
set -e
BIN=${PG_BIN:-$(dirname "$0")/../target/pg/18/bin}
D=${SYNC_DIR:-/tmp/pgsub-many-tables}; rm -rf $D; mkdir -p $D; chown postgres $D
runuser -u postgres -- $BIN/initdb -D $D/pub -A trust -U postgres >/dev/null
runuser -u postgres -- $BIN/initdb -D $D/sub -A trust -U postgres >/dev/null
echo "wal_level=logical" >> $D/pub/postgresql.conf
echo "max_wal_senders=20" >> $D/pub/postgresql.conf
echo "max_replication_slots=20" >> $D/pub/postgresql.conf
echo "shared_preload_libraries='pgsub'" >> $D/sub/postgresql.conf
echo "max_worker_processes=16" >> $D/sub/postgresql.conf
runuser -u postgres -- $BIN/pg_ctl -D $D/pub -o "-p 56191 -k $D -c listen_addresses=''" -l $D/pub.log start >/dev/null
runuser -u postgres -- $BIN/pg_ctl -D $D/sub -o "-p 56192 -k $D -c listen_addresses=''" -l $D/sub.log start >/dev/null
N=${N:-100}
SQL=$(for i in $(seq 1 $N); do echo "CREATE TABLE t$i (id int primary key, v text); INSERT INTO t$i SELECT g, 'x' FROM generate_series(1,100) g;"; done)
$BIN/psql -h $D -p 56191 -U postgres -qc "$SQL" -c "CREATE PUBLICATION p FOR ALL TABLES"
SQL2=$(for i in $(seq 1 $N); do echo "CREATE TABLE t$i (id int primary key, v text);"; done)
$BIN/psql -h $D -p 56192 -U postgres -qc "$SQL2" -c "CREATE EXTENSION pgsub"
start=$(date +%s.%N)
$BIN/psql -h $D -p 56192 -U postgres -qc "SELECT pgsub.create_subscription('s', 'host=$D port=56191 dbname=postgres user=postgres', ARRAY['p'])" >/dev/null
while [ "$($BIN/psql -h $D -p 56192 -U postgres -Atc "SELECT count(*) FROM pgsub.subscription_table WHERE sync_state = 'ready'")" != "$N" ]; do sleep 0.1; done
end=$(date +%s.%N)
echo "ready in $(echo "$end - $start" | bc) s"
runuser -u postgres -- $BIN/pg_ctl -D $D/sub stop -m fast >/dev/null
runuser -u postgres -- $BIN/pg_ctl -D $D/pub stop -m fast >/dev/null
