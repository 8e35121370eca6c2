# bench/scale.sh — bench/run's scaling workloads (issue 22, "cost that stays flat"); sourced by
# bench/run, which owns the clusters, samplers, recording and report.
#
#   8. N tables: a subscription of a publication FOR ALL TABLES in a database of its own
#      ("wide") with N tables, for each N of BENCH_WIDE_TABLES (10,100,1000): the time of
#      CREATE SUBSCRIPTION / pgsub.create_subscription, then a backlog that changes every table
#      (WIDE_TXNS transactions of inserts, then of updates, then of deletes; each transaction
#      touches 10 tables with WIDE_RUN rows each, the tables taken round-robin) caught up like
#      workloads 1–4: time, peak RssAnon and CPU of the apply worker, drain limit.
#   9. 8 subscriptions on the pgsub subscriber, 4 from the publisher and 4 from a second one
#      (pub2), each with its own table, publication and backlog (MULTI_ROWS inserts in
#      BATCH-row transactions, then updates of half of them); all 8 enabled at once and each timed
#      until its slot confirms its publisher's end; the drain limit is the same: 8 pg_recvlogical
#      at once, one per publication. pg_stat_activity of the 8 apply workers is sampled every
#      0.1 s for wait events (pgsub's shared-memory lock is the LWLock "pgsub_shared").
# shellcheck shell=bash disable=SC2034,SC2153
# (SC2034/SC2153: NATIVE_SUB, PGSUB_SUB and PORT are bench/run's, read by its samplers)

WIDE_DB=wide
# qd NODE DB SQL — q in another database.
qd() {
    local node=$1 db=$2; shift 2
    PGOPTIONS="-c client_min_messages=warning" as_pg "$PGBIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 \
        -h "$SOCK" -p "${PORT[$node]}" -U postgres -d "$db" -c "$*"
}

# ------------------------------------------------------------------ workload 8
wide_drop() { # the subscriptions, the drain slot and the database "wide" on every node
    local node
    for node in native pgsub; do
        [ "$(q "$node" "SELECT count(*) FROM pg_database WHERE datname = '$WIDE_DB'")" = 1 ] || continue
        if [ "$node" = native ]; then
            qd native "$WIDE_DB" "DROP SUBSCRIPTION IF EXISTS wide_native" >/dev/null
        else
            qd pgsub "$WIDE_DB" "SELECT pgsub.drop_subscription(s.subname) FROM pgsub.stat_subscription s WHERE s.subname = 'wide_pgsub'" >/dev/null
        fi
    done
    q pub "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'wide_drain'" >/dev/null
    for node in "${NODES[@]}"; do q "$node" "DROP DATABASE IF EXISTS $WIDE_DB WITH (FORCE)" >/dev/null; done
}

wide_reset_db() { # N: the database "wide" on every node, N empty tables w_0001 … in it
    local n=$1 node
    wide_drop
    for node in "${NODES[@]}"; do
        q "$node" "CREATE DATABASE $WIDE_DB" >/dev/null
        PGOPTIONS="-c client_min_messages=warning" as_pg "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" \
            -p "${PORT[$node]}" -U postgres -d "$WIDE_DB" -f "$BENCH_DIR/sql/helpers.sql" >/dev/null
        qd "$node" "$WIDE_DB" "DO \$\$ BEGIN FOR i IN 1..$n LOOP
            EXECUTE format('CREATE TABLE public.%I (id int PRIMARY KEY, v text, n int)', 'w_' || lpad(i::text, 4, '0'));
            END LOOP; END \$\$" >/dev/null
    done
    qd pgsub "$WIDE_DB" "CREATE EXTENSION pgsub" >/dev/null
    qd pub "$WIDE_DB" "CREATE PUBLICATION wide_pub FOR ALL TABLES" >/dev/null
}

wide_gen_sql() { # N: inserts, updates, deletes; each transaction 10 tables × WIDE_RUN rows
    local n=$1 r=$WIDE_RUN
    local tbl="'w_' || lpad((((s * 10 + j) % $n) + 1)::text, 4, '0')"
    echo "DO \$\$ BEGIN PERFORM set_config('synchronous_commit', 'off', false);
      FOR s IN 0..$WIDE_TXNS - 1 LOOP FOR j IN 0..9 LOOP
        EXECUTE format('INSERT INTO public.%I SELECT g, md5(g::text), g FROM generate_series(\$1, \$2) g', $tbl)
          USING s * $r + 1, (s + 1) * $r;
      END LOOP; COMMIT; END LOOP;
      FOR s IN 0..$WIDE_TXNS - 1 LOOP FOR j IN 0..9 LOOP
        EXECUTE format('UPDATE public.%I SET n = n + 1 WHERE id BETWEEN \$1 AND \$2', $tbl) USING s * $r + 1, (s + 1) * $r;
      END LOOP; COMMIT; END LOOP;
      FOR s IN 0..$WIDE_TXNS - 1 LOOP FOR j IN 0..9 LOOP
        EXECUTE format('DELETE FROM public.%I WHERE id BETWEEN \$1 AND \$2 AND id %% 2 = 0', $tbl) USING s * $r + 1, (s + 1) * $r;
      END LOOP; COMMIT; END LOOP; END \$\$"
}

wide_verify() { # WHAT
    local p s node
    p=$(qd pub "$WIDE_DB" "SELECT bench.checksum_tables('w\\_%')")
    for node in native pgsub; do
        s=$(qd "$node" "$WIDE_DB" "SELECT bench.checksum_tables('w\\_%')")
        if [ "$s" != "$p" ]; then
            echo "mismatch $1 wide $node" >>"$WORK/mismatches"
            diagnose
            die "subscriber $node does not hold the publisher's rows of the w_* tables after $1: '$s' vs '$p'"
        fi
    done
    log "  verified $1: ${p%% *} tables, $(echo "$p" | cut -d' ' -f2) rows, md5 ${p##* } on publisher, native and pgsub"
}

run_wide() { # N rep
    local n=$1 rep=$2 wl=8n$1 t0 t1 s target
    log "  workload 8, $n tables, rep $rep: database $WIDE_DB with $n tables on every node"
    wide_reset_db "$n"
    for s in $(order_for "$rep"); do
        t0=$(now)
        if [ "$s" = native ]; then
            qd native "$WIDE_DB" "CREATE SUBSCRIPTION wide_native CONNECTION '$(PUB_CONNINFO) dbname=$WIDE_DB' PUBLICATION wide_pub WITH (copy_data = false, enabled = false)" >/dev/null
        else
            qd pgsub "$WIDE_DB" "SELECT pgsub.create_subscription('wide_pgsub', '$(PUB_CONNINFO) dbname=$WIDE_DB', ARRAY['wide_pub'], copy_data => false, enabled => false)" >/dev/null
        fi
        t1=$(now)
        record "$wl" "$rep" "$s" create_s "$(elapsed "$t0" "$t1")"
    done
    qd pub "$WIDE_DB" "SELECT pg_create_logical_replication_slot('wide_drain', 'pgoutput')" >/dev/null
    local g0 g1
    g0=$(now)
    qd pub "$WIDE_DB" "$(wide_gen_sql "$n")" >/dev/null
    g1=$(now)
    record "$wl" "$rep" pub gen_s "$(elapsed "$g0" "$g1")"
    for node in "${NODES[@]}"; do q "$node" "CHECKPOINT" >/dev/null; done
    target=$(q pub "SELECT pg_current_wal_insert_lsn()")
    NATIVE_SUB=wide_native PGSUB_SUB=wide_pgsub SAMPLER_DB=$WIDE_DB
    for s in $(order_for "$rep"); do
        start_samplers "w8.$n.r$rep" "$s"
        t0=$(now)
        if [ "$s" = native ]; then
            qd native "$WIDE_DB" "ALTER SUBSCRIPTION wide_native ENABLE" >/dev/null
        else
            qd pgsub "$WIDE_DB" "SELECT pgsub.enable_subscription('wide_pgsub')" >/dev/null
        fi
        local r ta perfpid=""
        if [ "${BENCH_W8_PERF:-0}" = 1 ] && [ "$s" = pgsub ] && command -v perf >/dev/null; then
            # Diagnostics: the apply worker under perf during the catch-up (not for timed runs).
            local wpid=""
            for _ in $(seq 1 100); do
                wpid=$(qd pgsub "$WIDE_DB" "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'wide_pgsub' AND pid IS NOT NULL")
                [ -n "$wpid" ] && break
                sleep 0.02
            done
            mkdir -p "$WORK/profile"
            perf record -e cpu-clock -F 999 --call-graph dwarf,16384 -p "$wpid" -o "$WORK/profile/wide.$n.perf.data" \
                -- sleep 30 >"$WORK/profile/wide.record.log" 2>&1 &
            perfpid=$!; BG_PIDS+=("$perfpid")
        fi
        if ! r=$(q pub "SELECT bench.wait_slot('wide_$s', '$target', $TIMEOUT)"); then
            stop_samplers "w8.$n.r$rep" "$s"; diagnose; die "workload 8 ($n tables): $s did not catch up to $target"
        fi
        stop_samplers "w8.$n.r$rep" "$s"
        if [ -n "$perfpid" ]; then
            kill -INT "$perfpid" 2>/dev/null || true; wait "$perfpid" 2>/dev/null || true
            perf report -i "$WORK/profile/wide.$n.perf.data" --stdio --children --sort symbol --percent-limit 2 -g none \
                >"$WORK/profile/wide.$n.children.txt" 2>/dev/null || true
            log "    perf profile of the pgsub worker: $WORK/profile/wide.$n.children.txt"
        fi
        if [ "${BENCH_MEMCTX:-0}" = 1 ] && [ "$s" = pgsub ]; then
            # Diagnostics: the worker's memory contexts into the pgsub server's log.
            q pgsub "SELECT pg_log_backend_memory_contexts(pid) FROM pgsub.stat_subscription WHERE pid IS NOT NULL" >/dev/null
            qd pgsub "$WIDE_DB" "SELECT pg_log_backend_memory_contexts(pid) FROM pgsub.stat_subscription WHERE subname = 'wide_pgsub'" >/dev/null
        fi
        read -r ta t1 <<<"$r"
        record "$wl" "$rep" "$s" time_s "$(elapsed "$t0" "$t1")"
        record "$wl" "$rep" "$s" startup_s "$(elapsed "$t0" "$ta")"
        record "$wl" "$rep" "$s" rss_kb "${PEAK[$s]}"
        record "$wl" "$rep" "$s" cpu_s "${CPU[$s]}"
        log "  workload 8, $n tables, rep $rep: $s caught up in $(fmt "$(elapsed "$t0" "$t1")" 2) s (CPU $(fmt "${CPU[$s]}" 2) s, peak RssAnon $((${PEAK[$s]} / 1024)) MB; create took $(fmt "$(awk -F'\t' -v w="$wl" -v r="$rep" -v s="$s" '$1 == w && $2 == r && $3 == s && $4 == "create_s" { print $5 }' "$RAW")" 3) s)"
    done
    NATIVE_SUB=bench_native PGSUB_SUB=bench_pgsub SAMPLER_DB=postgres
    t0=$(now)
    as_pg "$PGBIN/pg_recvlogical" -h "$DRAIN_HOST" -p "${PORT[pub]}" -U postgres -d "$WIDE_DB" --slot wide_drain \
        --start --no-loop --endpos "$target" -o proto_version=1 -o publication_names=wide_pub -f /dev/null \
        || die "pg_recvlogical could not drain slot wide_drain to $target"
    t1=$(now)
    record "$wl" "$rep" drain time_s "$(elapsed "$t0" "$t1")"
    log "  workload 8, $n tables, rep $rep: pg_recvlogical drained the backlog in $(fmt "$(elapsed "$t0" "$t1")" 2) s"
    wide_verify "workload 8 ($n tables) rep $rep"
}

# ------------------------------------------------------------------ workload 9
MULTI_SUBS=(1 2 3 4 5 6 7 8)
multi_pub() { if [ "$1" -le 4 ]; then echo pub; else echo pub2; fi; }
multi_conninfo() { echo "host=$PUB_HOST port=${PORT[$(multi_pub "$1")]} user=postgres dbname=postgres"; }

multi_setup() {
    local base=${PORT[pgsub]} port k p
    port=$((base + 1))
    while ! port_free "$port"; do port=$((port + 1)); done
    start_node pub2 "$port"
    as_pg "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "${PORT[pub2]}" -U postgres -d postgres \
        -f "$BENCH_DIR/sql/helpers.sql" >/dev/null
    log "second publisher up: pub2 :${PORT[pub2]}"
    for k in "${MULTI_SUBS[@]}"; do
        p=$(multi_pub "$k")
        q "$p" "CREATE TABLE m_$k (id int PRIMARY KEY, v text, n int)" >/dev/null
        q pgsub "CREATE TABLE m_$k (id int PRIMARY KEY, v text, n int)" >/dev/null
        q "$p" "CREATE PUBLICATION mp_$k FOR TABLE m_$k" >/dev/null
        q pgsub "SELECT pgsub.create_subscription('multi_$k', '$(multi_conninfo "$k")', ARRAY['mp_$k'], copy_data => false)" >/dev/null
        q "$p" "SELECT pg_create_logical_replication_slot('mdrain_$k', 'pgoutput')" >/dev/null
    done
}

multi_gen_sql() { # k
    local b=$BATCH r=$MULTI_ROWS
    echo "DO \$\$ BEGIN PERFORM set_config('synchronous_commit', 'off', false);
      FOR s IN 0..($r - 1) / $b LOOP
        INSERT INTO m_$1 SELECT g, md5(g::text), g FROM generate_series(s * $b + 1, least((s + 1) * $b, $r)) g;
        COMMIT;
      END LOOP;
      FOR s IN 0..($r / 2 - 1) / $b LOOP
        UPDATE m_$1 SET n = n + 1 WHERE id BETWEEN s * $b + 1 AND least((s + 1) * $b, $r / 2);
        COMMIT;
      END LOOP; END \$\$"
}

multi_wait_caught_up() {
    local k p target
    for k in "${MULTI_SUBS[@]}"; do
        p=$(multi_pub "$k")
        target=$(q "$p" "SELECT pg_current_wal_insert_lsn()")
        q "$p" "SELECT bench.wait_slot('multi_$k', '$target', $TIMEOUT)" >/dev/null || { diagnose; die "$1: multi_$k did not catch up"; }
    done
}

# wait_event_sampler OUTFILE — every 0.1 s, one line per pgsub apply worker of multi_*:
# "wait_event_type|wait_event|state" (empty type: on CPU).
wait_event_sampler() {
    local out=$1
    : >"$out"
    while [ ! -e "$out.stop" ]; do
        q pgsub "SELECT coalesce(a.wait_event_type, 'CPU'), coalesce(a.wait_event, '-'), coalesce(a.state, '')
                   FROM pg_stat_activity a JOIN pgsub.stat_subscription s ON s.pid = a.pid
                  WHERE s.subname LIKE 'multi\\_%'" >>"$out" 2>/dev/null || true
        sleep 0.1
    done
}

run_multi() { # rep
    local rep=$1 k p s tag=w9.r$1
    for p in pub pub2; do q "$p" "TRUNCATE $(for k in "${MULTI_SUBS[@]}"; do [ "$(multi_pub "$k")" = "$p" ] && printf 'm_%s,' "$k"; done | sed 's/,$//')" >/dev/null; done
    multi_wait_caught_up "truncate (rep $rep)"
    for k in "${MULTI_SUBS[@]}"; do q pgsub "SELECT pgsub.disable_subscription('multi_$k')" >/dev/null; done
    declare -A mtarget=()
    for k in "${MULTI_SUBS[@]}"; do
        p=$(multi_pub "$k")
        q "$p" "SELECT bench.wait_slot_inactive('multi_$k', 60)" >/dev/null
        q "$p" "SELECT pg_replication_slot_advance('mdrain_$k', pg_current_wal_insert_lsn())" >/dev/null
    done
    for k in "${MULTI_SUBS[@]}"; do q "$(multi_pub "$k")" "$(multi_gen_sql "$k")" >/dev/null; done
    for p in pub pub2 pgsub; do q "$p" "CHECKPOINT" >/dev/null; done
    for p in pub pub2; do mtarget[$p]=$(q "$p" "SELECT pg_current_wal_insert_lsn()"); done
    local phase
    local phases="sub drain"; [ $((rep % 2)) -eq 0 ] && phases="drain sub"
    for phase in $phases; do
        local t0 waitpids=() f
        if [ "$phase" = sub ]; then
            rm -f "$WORK/wait.$tag.stop"
            wait_event_sampler "$WORK/wait.$tag" &
            local wpid=$!; BG_PIDS+=("$wpid")
            PGSUB_SUB='multi\_%' start_samplers "$tag" pgsub
            local perfpid=""
            t0=$(now)
            for k in "${MULTI_SUBS[@]}"; do
                now >"$WORK/$tag.enable.$k"
                q pgsub "SELECT pgsub.enable_subscription('multi_$k')" >/dev/null
            done
            if [ "${BENCH_W9_PERF:-0}" = 1 ] && [ "$rep" = "$REPS" ] && command -v perf >/dev/null; then
                local wpids=""
                for _ in $(seq 1 50); do
                    wpids=$(q pgsub "SELECT string_agg(pid::text, ',') FROM pgsub.stat_subscription WHERE subname LIKE 'multi\\_%' AND pid IS NOT NULL HAVING count(*) = 8")
                    [ -n "$wpids" ] && break
                    sleep 0.1
                done
                if [ -n "$wpids" ]; then
                    mkdir -p "$WORK/profile"
                    perf record -e cpu-clock -F 499 -g -p "$wpids" -o "$WORK/profile/multi.perf.data" \
                        -- sleep "${BENCH_PROFILE_SECONDS:-15}" >"$WORK/profile/multi.record.log" 2>&1 &
                    perfpid=$!; BG_PIDS+=("$perfpid")
                fi
            fi
            for k in "${MULTI_SUBS[@]}"; do
                p=$(multi_pub "$k")
                (q "$p" "SELECT bench.wait_slot('multi_$k', '${mtarget[$p]}', $TIMEOUT)" >"$WORK/$tag.done.$k") &
                waitpids+=($!)
            done
            for f in "${waitpids[@]}"; do wait "$f" || { diagnose; die "workload 9 rep $rep: a subscription did not catch up"; }; done
            if [ -n "$perfpid" ]; then
                kill -INT "$perfpid" 2>/dev/null || true; wait "$perfpid" 2>/dev/null || true
                perf report -i "$WORK/profile/multi.perf.data" --stdio --no-children --sort dso,symbol --percent-limit 0.5 -g none \
                    >"$WORK/profile/multi.self.txt" 2>/dev/null || true
                log "    perf profile of the 8 workers: $WORK/profile/multi.self.txt"
            fi
            stop_samplers "$tag" pgsub
            touch "$WORK/wait.$tag.stop"; wait "$wpid" 2>/dev/null || true
            record 9 "$rep" pgsub rss_kb "${PEAK[pgsub]}"
            record 9 "$rep" pgsub cpu_s "${CPU[pgsub]}"
            local last=0 e d
            for k in "${MULTI_SUBS[@]}"; do
                e=$(cat "$WORK/$tag.enable.$k"); d=$(cut -d' ' -f2 "$WORK/$tag.done.$k")
                record "9s$k" "$rep" pgsub time_s "$(elapsed "$e" "$d")"
                last=$(awk -v a="$last" -v b="$d" 'BEGIN { print (b > a ? b : a) }')
            done
            record 9 "$rep" pgsub time_s "$(elapsed "$t0" "$last")"
            log "  workload 9 rep $rep: all 8 subscriptions caught up after $(fmt "$(elapsed "$t0" "$last")" 2) s (per subscription: $(for k in "${MULTI_SUBS[@]}"; do printf '%s ' "$(fmt "$(awk -F'\t' -v w="9s$k" -v r="$rep" '$1 == w && $2 == r && $3 == "pgsub" && $4 == "time_s" { print $5 }' "$RAW")" 2)"; done)s; workers' CPU $(fmt "${CPU[pgsub]}" 2) s; peak RssAnon of one $((PEAK[pgsub] / 1024)) MB)"
            awk -F'|' '{ n++; c[$1 "|" $2]++ } END { for (k in c) printf "%s\t%d\t%d\n", k, c[k], n }' "$WORK/wait.$tag" \
                | sort -t$'\t' -k2,2nr >"$WORK/wait.$tag.summary"
            local lw
            lw=$(awk -F'|' '$1 == "LWLock" { n++ } END { print n + 0 }' "$WORK/wait.$tag")
            record 9 "$rep" pgsub wait_samples "$(wc -l <"$WORK/wait.$tag")"
            record 9 "$rep" pgsub lwlock_samples "$lw"
            record 9 "$rep" pgsub pgsub_lock_samples "$(grep -c '^LWLock|pgsub' "$WORK/wait.$tag" || true)"
            log "    wait events of the 8 workers (samples): $(head -6 "$WORK/wait.$tag.summary" | awk -F'\t' '{ printf "%s %d; ", $1, $2 }')LWLock $lw"
        else
            t0=$(now)
            for k in "${MULTI_SUBS[@]}"; do
                p=$(multi_pub "$k")
                (
                    a=$(now)
                    as_pg "$PGBIN/pg_recvlogical" -h "$DRAIN_HOST" -p "${PORT[$p]}" -U postgres -d postgres --slot "mdrain_$k" \
                        --start --no-loop --endpos "${mtarget[$p]}" -o proto_version=1 -o "publication_names=mp_$k" -f /dev/null
                    echo "$a $(now)" >"$WORK/$tag.drain.$k"
                ) &
                waitpids+=($!)
            done
            for f in "${waitpids[@]}"; do wait "$f" || die "workload 9 rep $rep: pg_recvlogical failed"; done
            local last=0 a d
            for k in "${MULTI_SUBS[@]}"; do
                read -r a d <"$WORK/$tag.drain.$k"
                record "9s$k" "$rep" drain time_s "$(elapsed "$a" "$d")"
                last=$(awk -v x="$last" -v y="$d" 'BEGIN { print (y > x ? y : x) }')
            done
            record 9 "$rep" drain time_s "$(elapsed "$t0" "$last")"
            log "  workload 9 rep $rep: 8 pg_recvlogical at once drained their backlogs after $(fmt "$(elapsed "$t0" "$last")" 2) s"
        fi
    done
    for k in "${MULTI_SUBS[@]}"; do
        p=$(multi_pub "$k")
        local a b
        a=$(checksum_m "$p" "$k"); b=$(checksum_m pgsub "$k")
        [ "$a" = "$b" ] || { echo "mismatch w9 m_$k" >>"$WORK/mismatches"; diagnose; die "workload 9 rep $rep: m_$k differs: '$b' vs '$a'"; }
    done
    log "  verified workload 9 rep $rep: m_1 … m_8 equal on their publisher and pgsub"
}
checksum_m() { q "$1" "SELECT bench.checksum('m_$2', 'id / 65536', 'id')"; }

# ------------------------------------------------------------------ report
write_scale_report() {
    if want 8; then
        echo "## N tables in one subscription (workload 8)"
        echo
        echo "A publication FOR ALL TABLES in a database of its own with N tables \`(id int primary key, v text, n int)\`; a backlog of $WIDE_TXNS transactions of inserts, $WIDE_TXNS of updates and $WIDE_TXNS of deletes, each touching 10 tables with $WIDE_RUN rows each (tables round-robin, so every table changes; $((WIDE_TXNS * 10 * WIDE_RUN)) inserts, as many updates, half as many deletes, whatever N). Create: the time of \`CREATE SUBSCRIPTION\` / \`pgsub.create_subscription\` (copy_data = false). Medians; peak RssAnon the highest over repetitions."
        echo
        echo "| tables | native create s | pgsub create s | native catch-up s | pgsub catch-up s | pgsub/native | drain limit s | pgsub/drain | native/drain | native CPU s | pgsub CPU s | native peak RssAnon | pgsub peak RssAnon |"
        echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        local n w tn tp td
        for n in ${WIDE_TABLES//,/ }; do
            w=8n$n
            tn=$(median_of "$w" native time_s); tp=$(median_of "$w" pgsub time_s); td=$(median_of "$w" drain time_s)
            echo "| $n | $(fmt "$(median_of "$w" native create_s)" 3) | $(fmt "$(median_of "$w" pgsub create_s)" 3) | $(fmt "$tn" 2) | $(fmt "$tp" 2) | **$(ratio "$tp" "$tn")** | $(fmt "$td" 2) | $(ratio "$tp" "$td") | $(ratio "$tn" "$td") | $(fmt "$(median_of "$w" native cpu_s)" 2) | $(fmt "$(median_of "$w" pgsub cpu_s)" 2) | $(mb "$(max_of "$w" native rss_kb)") | $(mb "$(max_of "$w" pgsub rss_kb)") |"
        done
        echo
        echo "| tables | measure | native | pgsub | drain |"
        echo "| ---: | --- | --- | --- | --- |"
        for n in ${WIDE_TABLES//,/ }; do
            w=8n$n
            echo "| $n | catch-up (s) | $(values_of "$w" native time_s) | $(values_of "$w" pgsub time_s) | $(values_of "$w" drain time_s) |"
            echo "| $n | create (s) | $(values_of "$w" native create_s) | $(values_of "$w" pgsub create_s) | |"
            echo "| $n | peak RssAnon (MB) | $(values_of "$w" native rss_kb | awk -F', ' '{ for (i = 1; i <= NF; i++) printf "%s%.1f", (i > 1 ? ", " : ""), $i / 1024 }') | $(values_of "$w" pgsub rss_kb | awk -F', ' '{ for (i = 1; i <= NF; i++) printf "%s%.1f", (i > 1 ? ", " : ""), $i / 1024 }') | |"
            echo "| $n | worker CPU (s) | $(values_of "$w" native cpu_s) | $(values_of "$w" pgsub cpu_s) | |"
        done
        echo
    fi
    if want 9; then
        echo "## 8 subscriptions from 2 publishers (workload 9)"
        echo
        echo "pgsub only: 8 subscriptions on one subscriber, multi_1–4 from the publisher, multi_5–8 from a second one, each with its own table and publication and a backlog of $MULTI_ROWS inserts in $BATCH-row transactions and $((MULTI_ROWS / 2)) updates. All 8 are enabled at once; each is timed from its ENABLE until its slot confirms its publisher's end. The drain limit: 8 \`pg_recvlogical\` at once, each on a slot of its own with the subscription's publication (alternating order with the subscribers per repetition). Medians."
        echo
        echo "| subscription | publisher | pgsub s | drain s | pgsub/drain |"
        echo "| --- | --- | ---: | ---: | ---: |"
        local k tp td
        for k in "${MULTI_SUBS[@]}"; do
            tp=$(median_of "9s$k" pgsub time_s); td=$(median_of "9s$k" drain time_s)
            echo "| multi_$k | $(multi_pub "$k") | $(fmt "$tp" 2) | $(fmt "$td" 2) | $(ratio "$tp" "$td") |"
        done
        tp=$(median_of 9 pgsub time_s); td=$(median_of 9 drain time_s)
        echo "| all 8 (first enable → last confirmed) | both | $(fmt "$tp" 2) | $(fmt "$td" 2) | **$(ratio "$tp" "$td")** |"
        echo
        echo "Workers' CPU (8 together, median): $(fmt "$(median_of 9 pgsub cpu_s)" 2) s; peak RssAnon of one worker: $(mb "$(max_of 9 pgsub rss_kb)"). Wait-event samples of the 8 workers (pg_stat_activity every 0.1 s) per repetition: $(values_of 9 pgsub wait_samples | sed 's/\.00//g'); of them LWLock waits: $(values_of 9 pgsub lwlock_samples | sed 's/\.00//g'), on pgsub's own lock (\`pgsub_shared\`): $(values_of 9 pgsub pgsub_lock_samples | sed 's/\.00//g')."
        echo
        echo "| repetition | all 8: pgsub s | all 8: drain s | per subscription pgsub s (multi_1 … 8) | per subscription drain s |"
        echo "| ---: | ---: | ---: | --- | --- |"
        local rep
        for rep in $(seq 1 "$REPS"); do
            echo "| $rep | $(awk -F'\t' -v r="$rep" '$1 == 9 && $2 == r && $3 == "pgsub" && $4 == "time_s" { printf "%.2f", $5 }' "$RAW") | $(awk -F'\t' -v r="$rep" '$1 == 9 && $2 == r && $3 == "drain" && $4 == "time_s" { printf "%.2f", $5 }' "$RAW") | $(awk -F'\t' -v r="$rep" '$1 ~ /^9s/ && $2 == r && $3 == "pgsub" && $4 == "time_s" { printf "%s%.2f", (n++ ? ", " : ""), $5 }' "$RAW") | $(awk -F'\t' -v r="$rep" '$1 ~ /^9s/ && $2 == r && $3 == "drain" && $4 == "time_s" { printf "%s%.2f", (n++ ? ", " : ""), $5 }' "$RAW") |"
        done
        echo
        echo "Wait events of the 8 apply workers, all repetitions (samples):"
        echo
        echo '```text'
        cat "$WORK"/wait.w9.r*.summary 2>/dev/null | awk -F'\t' '{ c[$1] += $2 } END { for (k in c) printf "%8d  %s\n", c[k], k }' | sort -rn
        echo '```'
        echo
    fi
}
