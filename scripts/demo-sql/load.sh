#!/usr/bin/env bash
# scripts/demo-sql/load.sh — the demo's show: waits for the subscription's initial copy, runs a
# write load (pgbench with load.sql) on the publisher while printing the subscriber's
# pgsub.stat_subscription once a second, waits for the subscriber to catch up, draws the run's
# lag from pgsub.lag_history as a chart in the terminal (and as a PNG when gnuplot is installed
# and DEMO_LAG_PNG names a file), and compares every published table on both nodes (row count and
# md5 of all rows). Exits non-zero unless the data is equal, the lag view moved (txns_applied
# grew) and the lag history has samples of the run. Run by scripts/demo and by the compose
# service `load`. Needs psql and pgbench in PATH.
# Environment:
#   DEMO_PUB_DSN, DEMO_SUB_DSN   libpq conninfo of the publisher / subscriber (superuser)
#   DEMO_LOAD_SECONDS (20)       length of the write load
#   DEMO_LOAD_RATE (100)         transactions per second (pgbench -R)
#   DEMO_LOAD_CLIENTS (2)        pgbench clients
#   DEMO_WAIT_SECONDS (120)      limit for the initial copy and for the catch-up
#   DEMO_LAG_PNG                 where to write the lag chart as a PNG (only with gnuplot)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { printf 'load: FAILED: %s\n' "$*" >&2; exit 1; }
say() { printf '%s\n' "$*"; }

PUB_DSN=${DEMO_PUB_DSN:-}
SUB_DSN=${DEMO_SUB_DSN:-}
LOAD_SECONDS=${DEMO_LOAD_SECONDS:-20}
LOAD_RATE=${DEMO_LOAD_RATE:-100}
LOAD_CLIENTS=${DEMO_LOAD_CLIENTS:-2}
WAIT_SECONDS=${DEMO_WAIT_SECONDS:-120}
SUB_NAME=demo_sub
PUB_NAME=demo_pub

[ -n "$PUB_DSN" ] || die "DEMO_PUB_DSN is not set (libpq conninfo of the publisher)"
[ -n "$SUB_DSN" ] || die "DEMO_SUB_DSN is not set (libpq conninfo of the subscriber)"
for v in LOAD_SECONDS LOAD_RATE LOAD_CLIENTS WAIT_SECONDS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "DEMO_$v must be a positive integer (got '${!v}')"
done
for tool in psql pgbench; do
  command -v "$tool" >/dev/null || die "$tool not found in PATH"
done

# q DSN SQL: one query, unaligned, fields separated by '|'.
q() { psql -X -q -A -t -F '|' -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pgsub-demo-load.XXXXXX")
load_pid=
cleanup() {
  if [ -n "$load_pid" ] && kill -0 "$load_pid" 2>/dev/null; then
    kill "$load_pid" 2>/dev/null || true
    wait "$load_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

STATUS_SQL="SELECT to_char(clock_timestamp(), 'HH24:MI:SS'), status,
       coalesce(lag_bytes::text, '-'),
       coalesce(round(extract(epoch FROM apply_lag) * 1000)::bigint::text, '-'),
       txns_applied, inserts, updates, deletes, error_count,
       coalesce(left(regexp_replace(last_error, '\s+', ' ', 'g'), 300), '')
  FROM pgsub.stat_subscription WHERE subname = '$SUB_NAME'"

max_lag_bytes=0
max_apply_lag=0
status_header() {
  printf '%-8s  %-14s %10s %12s %8s %8s %8s %8s %6s\n' \
    time status lag_bytes apply_lag_ms txns inserts updates deletes errors
}
# Prints one line of pgsub.stat_subscription and remembers the largest lags seen.
status_line() {
  local row t st lag alag txns ins upd del errs lasterr
  row=$(q "$SUB_DSN" "$STATUS_SQL") || { say "(subscriber did not answer)"; return 0; }
  [ -n "$row" ] || die "subscription $SUB_NAME does not exist on the subscriber"
  IFS='|' read -r t st lag alag txns ins upd del errs lasterr <<<"$row"
  printf '%-8s  %-14s %10s %12s %8s %8s %8s %8s %6s\n' \
    "$t" "$st" "$lag" "$alag" "$txns" "$ins" "$upd" "$del" "$errs"
  if [[ $lag =~ ^[0-9]+$ ]] && [ "$lag" -gt "$max_lag_bytes" ]; then max_lag_bytes=$lag; fi
  if [[ $alag =~ ^[0-9]+$ ]] && [ "$alag" -gt "$max_apply_lag" ]; then max_apply_lag=$alag; fi
  if [ -n "$lasterr" ]; then say "          last_error: $lasterr"; fi
}

counters() {
  q "$SUB_DSN" "SELECT txns_applied, inserts, updates, deletes FROM pgsub.stat_subscription
                 WHERE subname = '$SUB_NAME'"
}

# --- 1. initial copy -------------------------------------------------------------------------
# A copied table is `synchronized` at its copy point; it turns `ready` with the first applied
# commit past that point, i.e. during the load.
say "== waiting for the initial copy of $PUB_NAME (subscription $SUB_NAME) =="
deadline=$((SECONDS + WAIT_SECONDS))
while :; do
  row=$(q "$SUB_DSN" "SELECT s.status,
         count(t.relid) FILTER (WHERE t.sync_state IN ('synchronized', 'ready')), count(t.relid),
         coalesce(sum(t.rows_copied), 0),
         coalesce(left(regexp_replace(s.last_error, '\s+', ' ', 'g'), 300), '')
    FROM pgsub.stat_subscription s LEFT JOIN pgsub.subscription_table t USING (subname)
   WHERE s.subname = '$SUB_NAME' GROUP BY s.status, s.last_error") \
    || die "cannot query pgsub.stat_subscription on the subscriber ($SUB_DSN)"
  [ -n "$row" ] || die "subscription $SUB_NAME does not exist on the subscriber"
  IFS='|' read -r st ready total copied lasterr <<<"$row"
  say "status $st: $ready of $total tables copied, $copied rows${lasterr:+; last_error: $lasterr}"
  if [ "$st" = streaming ] && [ "$total" -gt 0 ] && [ "$ready" = "$total" ]; then
    break
  fi
  [ "$SECONDS" -lt "$deadline" ] \
    || die "the initial copy did not finish within ${WAIT_SECONDS}s (status $st${lasterr:+, last_error: $lasterr})"
  sleep 1
done

# --- 2. write load ---------------------------------------------------------------------------
IFS='|' read -r txns0 ins0 upd0 del0 <<<"$(counters)"
# The chart starts a few seconds before the load.
chart_from=$(q "$SUB_DSN" "SELECT extract(epoch FROM clock_timestamp())::bigint - 3")
say ""
say "== write load: pgbench, $LOAD_CLIENTS clients, $LOAD_RATE tx/s for ${LOAD_SECONDS}s on the publisher; pgsub.stat_subscription every second =="
pgbench -n -T "$LOAD_SECONDS" -c "$LOAD_CLIENTS" -j 1 -R "$LOAD_RATE" -f "$here/load.sql" "$PUB_DSN" \
  >"$tmp/pgbench.log" 2>&1 &
load_pid=$!
status_header
while kill -0 "$load_pid" 2>/dev/null; do
  status_line
  sleep 1
done
if wait "$load_pid"; then load_rc=0; else load_rc=$?; fi
load_pid=
if [ "$load_rc" -ne 0 ]; then
  cat "$tmp/pgbench.log" >&2
  die "pgbench failed (exit $load_rc)"
fi
grep -E '^(number of transactions actually processed|number of failed transactions|tps = )' \
  "$tmp/pgbench.log" | sed 's/^/pgbench: /' || true

# --- the run's lag as a chart ----------------------------------------------------------------
# pgsub.lag_history has one sample per second (the supervisor takes them while the apply worker
# runs): apply lag as a bar of '#', rows applied in the second before as a bar of '='. Rendered
# by SQL (rpad/repeat), so it needs nothing but psql.
LAG_CHART_SQL="WITH h AS (
    SELECT sample_time, lag_bytes, (extract(epoch FROM apply_lag) * 1000)::bigint AS lag_ms, rows_per_s
      FROM pgsub.lag_history('$SUB_NAME') WHERE sample_time >= to_timestamp(%s)),
  m AS (SELECT greatest(max(lag_ms), 1000) AS ml, greatest(max(rows_per_s), 1) AS mr FROM h)
SELECT format('%%s %%10s %%12s %%8s  |%%s|%%s|', to_char(sample_time, 'HH24:MI:SS'), lag_bytes, lag_ms, rows_per_s,
              rpad(repeat('#', (30 * lag_ms / ml)::int), 30), rpad(repeat('=', (20 * rows_per_s / mr)::int), 20))
  FROM h, m ORDER BY sample_time"

lag_chart() {
  local sql rows
  say ""
  say "== the run's lag (pgsub.lag_history, one sample per second) =="
  # shellcheck disable=SC2059 # the format is ours: %s is the chart's start (an integer)
  printf -v sql "$LAG_CHART_SQL" "$chart_from"
  rows=$(q "$SUB_DSN" "$sql") || die "cannot read pgsub.lag_history('$SUB_NAME')"
  [ -n "$rows" ] || die "pgsub.lag_history('$SUB_NAME') has no sample of the run"
  printf '%-8s %10s %12s %8s  |%-30s|%-20s|\n' time lag_bytes apply_lag_ms rows/s 'apply lag (#)' 'rows/s (=)'
  printf '%s\n' "$rows"
  if [ -n "${DEMO_LAG_PNG:-}" ] && command -v gnuplot >/dev/null; then
    q "$SUB_DSN" "SELECT extract(epoch FROM sample_time)::bigint, (extract(epoch FROM apply_lag) * 1000)::bigint,
                         rows_per_s FROM pgsub.lag_history('$SUB_NAME')
                   WHERE sample_time >= to_timestamp($chart_from) ORDER BY 1" | tr '|' ' ' >"$tmp/lag.dat"
    if gnuplot -e "set terminal png size 900,400; set output '$DEMO_LAG_PNG'; set xdata time; set timefmt '%s';
                   set format x '%H:%M:%S'; set ylabel 'apply lag (ms)'; set y2label 'rows/s'; set y2tics;
                   plot '$tmp/lag.dat' using 1:2 with lines title 'apply lag (ms)',
                        '' using 1:3 axes x1y2 with lines title 'rows/s'" 2>"$tmp/gnuplot.err"; then
      say "lag chart written to $DEMO_LAG_PNG"
    else
      say "gnuplot could not draw $DEMO_LAG_PNG: $(head -c 300 "$tmp/gnuplot.err")"
    fi
  fi
}

# --- 3. catch-up and comparison --------------------------------------------------------------
# One query that checksums every published table; the same text runs on both nodes, with the
# settings that shape a row's text fixed so that equal rows print equally.
CHECKSUM_SQL=$(q "$PUB_DSN" "SELECT 'SET TimeZone = ''UTC''; SET DateStyle = ''ISO, YMD''; SET extra_float_digits = 3; SET IntervalStyle = ''postgres''; '
      || string_agg(format('SELECT %L, count(*), md5(coalesce(string_agg(t::text, E''\\n'' ORDER BY t::text), '''')) FROM %I.%I t',
                           schemaname || '.' || tablename, schemaname, tablename),
                    ' UNION ALL ' ORDER BY schemaname, tablename)
  FROM pg_publication_tables WHERE pubname = '$PUB_NAME'") \
  || die "cannot list the tables of publication $PUB_NAME"
[[ $CHECKSUM_SQL == *FROM* ]] || die "publication $PUB_NAME has no tables"

say ""
say "== waiting for the subscriber to catch up =="
deadline=$((SECONDS + WAIT_SECONDS))
while :; do
  q "$PUB_DSN" "$CHECKSUM_SQL" >"$tmp/pub.sum" || die "checksum query failed on the publisher"
  q "$SUB_DSN" "$CHECKSUM_SQL" >"$tmp/sub.sum" || die "checksum query failed on the subscriber"
  status_line
  if cmp -s "$tmp/pub.sum" "$tmp/sub.sum"; then equal=1; break; fi
  if [ "$SECONDS" -ge "$deadline" ]; then equal=0; break; fi
  sleep 1
done

lag_chart

say ""
say "== both nodes, table by table =="
printf '%-16s %12s %12s  %-34s %-34s %s\n' table publisher subscriber 'md5 (publisher)' 'md5 (subscriber)' ''
total_rows=0
ntables=0
while IFS='|' read -r tbl n sum <&3 && IFS='|' read -r stbl sn ssum <&4; do
  mark=equal
  if [ "$tbl" != "$stbl" ] || [ "$n" != "$sn" ] || [ "$sum" != "$ssum" ]; then mark=DIFFERENT; fi
  printf '%-16s %12s %12s  %-34s %-34s %s\n' "$tbl" "$n" "$sn" "$sum" "$ssum" "$mark"
  total_rows=$((total_rows + n))
  ntables=$((ntables + 1))
done 3<"$tmp/pub.sum" 4<"$tmp/sub.sum"

states=$(q "$SUB_DSN" "SELECT string_agg(relid::text || ' ' || sync_state, ', ' ORDER BY relid::text)
                        FROM pgsub.subscription_table WHERE subname = '$SUB_NAME'") || states='?'
say "sync state on the subscriber: $states"
IFS='|' read -r txns1 ins1 upd1 del1 <<<"$(counters)"
say ""
moved=0
if [ "$txns1" -gt "$txns0" ]; then
  moved=1
  say "lag view moved: txns_applied $txns0 -> $txns1 (+$((txns1 - txns0))), inserts +$((ins1 - ins0)), updates +$((upd1 - upd0)), deletes +$((del1 - del0)); max lag_bytes $max_lag_bytes, max apply_lag ${max_apply_lag} ms"
else
  say "lag view did NOT move: txns_applied stayed at $txns0"
fi
if [ "$equal" = 1 ]; then
  say "RESULT: data is equal on both nodes ($ntables tables, $total_rows rows)"
else
  say "RESULT: data DIFFERS between the nodes after ${WAIT_SECONDS}s (see the table above)"
  status_line
  exit 1
fi
[ "$moved" = 1 ] || die "the subscriber applied no transaction during the load"
