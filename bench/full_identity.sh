#!/bin/bash
# bench/full_identity.sh — by hand (NOTES 31): a REPLICA IDENTITY FULL table of 20,000 rows and 7
# columns (int, text, numeric, timestamptz, float8, jsonb, a text that is NULL in every other
# row), subscribed by pgsub in database postgres and natively (CREATE SUBSCRIPTION) in database
# nat of the same subscriber server, both applying at once. Each repetition fills the table
# afresh, VACUUMs both copies, runs one `UPDATE w SET n = n + 1` of every row on the publisher
# and prints the seconds from its commit until each subscriber shows it. INDEX=1 gives both
# subscribers' tables a (non-unique) btree on the first column.
# PG_BIN: server binaries with pgsub installed (default target/pg/18/bin); run as root (servers run
# as the postgres OS user); ports 56193-56194; FULL_DIR: the clusters' directory; REPS (3).
set -euo pipefail
BIN=${PG_BIN:-$(dirname "$0")/../target/pg/18/bin}
D=${FULL_DIR:-/tmp/pgsub-full-identity}
REPS=${REPS:-3}
# shellcheck source-path=SCRIPTDIR source=lib/pair.sh
. "$(dirname "$0")/lib/pair.sh"
pair_start "$BIN" "$D" 56193 56194
pub() { "$BIN/psql" -X -q -h "$D" -p 56193 -U postgres "$@"; }
sub() { "$BIN/psql" -X -q -h "$D" -p 56194 -U postgres "$@"; }
ddl="CREATE TABLE w (id int, t text, n numeric, ts timestamptz, f float8, j jsonb, z text)"
conn="host=$D port=56193 dbname=postgres user=postgres"
pub -c "$ddl" -c "ALTER TABLE w REPLICA IDENTITY FULL" -c "CREATE PUBLICATION pp FOR TABLE w" \
    -c "CREATE PUBLICATION pn FOR TABLE w"
sub -c "CREATE DATABASE nat"
sub -c "CREATE EXTENSION pgsub" -c "$ddl" -c "SELECT pgsub.create_subscription('s', '$conn', ARRAY['pp'])" >/dev/null
sub -d nat -c "$ddl" -c "CREATE SUBSCRIPTION n CONNECTION '$conn' PUBLICATION pn" 2>/dev/null
if [ "${INDEX:-0}" = 1 ]; then
    sub -c "CREATE INDEX ON w (id)"
    sub -d nat -c "CREATE INDEX ON w (id)"
fi
both_show() {
    [ "$(sub -Atc 'SELECT sum(n) FROM w')" = "$1" ] && [ "$(sub -d nat -Atc 'SELECT sum(n) FROM w')" = "$1" ]
}
for rep in $(seq 1 "$REPS"); do
    pub -c "TRUNCATE w" -c "INSERT INTO w SELECT g, 'text ' || g, g * 1.5, now() + g * interval '1 s', g / 3.0,
        jsonb_build_object('k', g), CASE WHEN g % 2 = 0 THEN NULL ELSE 'z' END FROM generate_series(1, 20000) g"
    want=$(pub -Atc "SELECT sum(n) FROM w")
    until both_show "$want"; do sleep 0.2; done
    sub -c "VACUUM w"
    sub -d nat -c "VACUUM w"
    want=$(pub -Atc "UPDATE w SET n = n + 1; SELECT sum(n) FROM w")
    start=$(date +%s.%N)
    pgsub="" native=""
    while [ -z "$pgsub" ] || [ -z "$native" ]; do
        if [ -z "$pgsub" ] && [ "$(sub -Atc 'SELECT sum(n) FROM w')" = "$want" ]; then
            pgsub=$(echo "$(date +%s.%N) - $start" | bc)
        fi
        if [ -z "$native" ] && [ "$(sub -d nat -Atc 'SELECT sum(n) FROM w')" = "$want" ]; then
            native=$(echo "$(date +%s.%N) - $start" | bc)
        fi
        sleep 0.1
    done
    echo "repetition $rep: pgsub $pgsub s, native $native s, ratio $(echo "scale=2; $pgsub / $native" | bc)"
done
