//! End-to-end: issue 21's per-table statistics, rates and lag history.
//! - `pgsub.stat_subscription_table` counts every change exactly per table under a mixed workload
//!   (COPY-loaded runs of inserts, batched UPDATEs and DELETEs, single rows, REPLICA IDENTITY
//!   FULL tables, a truncate, missing-row conflicts in a batch and alone, the initial copy); the
//!   counts survive a clean restart and `pgsub.reset_stats` zeroes them.
//! - The rates of `pgsub.stat_subscription` (transactions, rows, bytes received) agree within 10%
//!   with the rate the test measures from the counters over the same window, and fall to 0 when
//!   the load stops.
//! - `pgsub.lag_history` shows the apply lag rise while a lock holds the worker back, and fall
//!   once it is released.
use pgsub_tests::{
    assert_replicated_equal, must_fail, one, set_sync_hold, wait_for, wait_for_subscription_sync, wait_value,
    ClusterOpts, TwoNodes,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(60);

/// One table's row of `pgsub.stat_subscription_table`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct TableRow {
    inserts: i64,
    updates: i64,
    deletes: i64,
    truncates: i64,
    insert_exists: i64,
    update_missing: i64,
    delete_missing: i64,
    conflicts: i64,
    rows_copied: i64,
}

async fn table_rows(s: &Client) -> BTreeMap<String, TableRow> {
    s.query(
        "SELECT relname::text, inserts, updates, deletes, truncates, confl_insert_exists, confl_update_missing, \
                confl_delete_missing, conflicts, rows_copied \
         FROM pgsub.stat_subscription_table WHERE subname = 'sub'",
        &[],
    )
    .await
    .expect("stat_subscription_table")
    .iter()
    .map(|r| {
        (
            r.get(0),
            TableRow {
                inserts: r.get(1),
                updates: r.get(2),
                deletes: r.get(3),
                truncates: r.get(4),
                insert_exists: r.get(5),
                update_missing: r.get(6),
                delete_missing: r.get(7),
                conflicts: r.get(8),
                rows_copied: r.get(9),
            },
        )
    })
    .collect()
}

/// Waits until the view shows `want` for every table; panics with the last rows seen.
async fn wait_tables(s: &Client, what: &str, want: &BTreeMap<String, TableRow>) {
    let last = std::cell::RefCell::new(BTreeMap::new());
    let r = wait_for(what, WAIT, || {
        let last = &last;
        async move {
            let rows = table_rows(s).await;
            let done = &rows == want;
            *last.borrow_mut() = rows;
            Ok(done.then_some(()))
        }
    })
    .await;
    if let Err(e) = r {
        panic!("{e}\nwanted {want:#?}\nlast seen {:#?}", last.borrow());
    }
}

/// The subscription's totals: inserts, updates, deletes, truncates, conflicts.
async fn totals(s: &Client) -> [i64; 5] {
    let r = s
        .query_one(
            "SELECT inserts, updates, deletes, truncates, conflicts FROM pgsub.stat_subscription WHERE subname = 'sub'",
            &[],
        )
        .await
        .expect("stat_subscription");
    [r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)]
}

fn sum(rows: &BTreeMap<String, TableRow>) -> [i64; 5] {
    rows.values().fold([0; 5], |a, r| {
        [a[0] + r.inserts, a[1] + r.updates, a[2] + r.deletes, a[3] + r.truncates, a[4] + r.conflicts]
    })
}

#[tokio::test(flavor = "current_thread")]
async fn per_table_counters_are_exact_survive_a_restart_and_reset() {
    let mut nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    // a: key batches; b: interleaved with a; f: REPLICA IDENTITY FULL (one row at a time).
    let ddl = "CREATE TABLE a (id int PRIMARY KEY, n int NOT NULL, pad text); \
               CREATE TABLE b (id int PRIMARY KEY, n int NOT NULL); \
               CREATE TABLE f (id int, n int);";
    p.batch_execute(ddl).await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    p.batch_execute(
        "ALTER TABLE f REPLICA IDENTITY FULL; \
         INSERT INTO a SELECT g, g, md5(g::text) FROM generate_series(1, 700) g; \
         INSERT INTO f SELECT g, g FROM generate_series(1, 40) g; \
         CREATE PUBLICATION pub FOR TABLE a, b, f;",
    )
    .await
    .unwrap();
    s.execute("SELECT pgsub.create_subscription('sub', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create_subscription");
    wait_for_subscription_sync(&s, "sub", WAIT).await;

    let mut want: BTreeMap<String, TableRow> =
        ["a", "b", "f"].iter().map(|t| (t.to_string(), TableRow::default())).collect();
    want.get_mut("a").unwrap().rows_copied = 700;
    want.get_mut("f").unwrap().rows_copied = 40;
    wait_tables(&s, "the initial copy counted per table", &want).await;
    let sync_states: Vec<String> = s
        .query("SELECT sync_state FROM pgsub.stat_subscription_table ORDER BY relname", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(sync_states.iter().all(|st| st == "ready" || st == "synchronized"), "sync states: {sync_states:?}");

    // A 1000-row run of inserts (COPY), single inserts, a transaction alternating two tables.
    p.batch_execute("INSERT INTO a SELECT g, g, 'run' FROM generate_series(1001, 2000) g").await.unwrap();
    for i in 2001..=2005 {
        p.batch_execute(&format!("INSERT INTO a VALUES ({i}, {i}, 'one')")).await.unwrap();
    }
    p.batch_execute(
        "BEGIN; \
         INSERT INTO b SELECT g, g FROM generate_series(1, 300) g; \
         INSERT INTO a SELECT g, g, 'mix' FROM generate_series(3001, 3010) g; \
         INSERT INTO b SELECT g, g FROM generate_series(301, 320) g; \
         COMMIT",
    )
    .await
    .unwrap();
    {
        let w = want.get_mut("a").unwrap();
        w.inserts = 1000 + 5 + 10;
    }
    want.get_mut("b").unwrap().inserts = 320;
    wait_tables(&s, "inserts counted per table", &want).await;

    // Rows the publisher will update or delete, missing on the subscriber: conflicts of b, one
    // inside a batched UPDATE and one inside a batched DELETE, and single ones.
    s.batch_execute("DELETE FROM b WHERE id IN (5, 250, 7, 8)").await.unwrap();
    // Batched: 500 updates of a (one statement), 200 of b (three missing: 5, 7, 8).
    p.batch_execute("UPDATE a SET n = n + 1 WHERE id BETWEEN 1001 AND 1500").await.unwrap();
    p.batch_execute("UPDATE b SET n = -n WHERE id BETWEEN 1 AND 200").await.unwrap();
    // Single updates, one of a missing row (7).
    for id in [10, 11, 7] {
        p.batch_execute(&format!("UPDATE b SET n = 0 WHERE id = {id}")).await.unwrap();
    }
    // Batched deletes: 300 of a, 100 of b (one missing: 250); single deletes, one missing (8).
    p.batch_execute("DELETE FROM a WHERE id BETWEEN 1201 AND 1500").await.unwrap();
    p.batch_execute("DELETE FROM b WHERE id BETWEEN 201 AND 300").await.unwrap();
    for id in [1, 8] {
        p.batch_execute(&format!("DELETE FROM b WHERE id = {id}")).await.unwrap();
    }
    // REPLICA IDENTITY FULL: updates and deletes one row at a time, then a truncate and inserts.
    p.batch_execute("UPDATE f SET n = n * 10 WHERE id <= 15").await.unwrap();
    p.batch_execute("DELETE FROM f WHERE id > 30").await.unwrap();
    p.batch_execute("TRUNCATE f").await.unwrap();
    p.batch_execute("INSERT INTO f SELECT g, g FROM generate_series(1, 25) g").await.unwrap();
    {
        let w = want.get_mut("a").unwrap();
        w.updates = 500;
        w.deletes = 300;
    }
    {
        let w = want.get_mut("b").unwrap();
        // The batch of 200 finds 197 (5, 7 and 8 are missing); singles: 10 and 11, not 7.
        w.updates = 197 + 2;
        w.update_missing = 3 + 1;
        // The batch of 100 finds 99 (250 is missing); singles: 1, not 8.
        w.deletes = 99 + 1;
        w.delete_missing = 1 + 1;
        w.conflicts = 6;
    }
    {
        let w = want.get_mut("f").unwrap();
        w.updates = 15;
        w.deletes = 10;
        w.truncates = 1;
        w.inserts = 25;
    }
    wait_tables(&s, "updates, deletes, conflicts and the truncate counted per table", &want).await;
    // A unique violation stops apply (counted as insert_exists at each failed attempt, as
    // natively) until the local row goes.
    s.batch_execute("INSERT INTO a VALUES (9000, 0, 'local')").await.unwrap();
    p.batch_execute("INSERT INTO a VALUES (9000, 9000, 'remote')").await.unwrap();
    wait_value(&s, "SELECT confl_insert_exists >= 2 FROM pgsub.stat_subscription", "t", WAIT).await;
    s.batch_execute("DELETE FROM a WHERE id = 9000").await.unwrap();
    wait_value(&s, "SELECT pad FROM a WHERE id = 9000", "remote", WAIT).await;
    let insert_exists: i64 = one(&s, "SELECT confl_insert_exists FROM pgsub.stat_subscription").await;
    {
        let w = want.get_mut("a").unwrap();
        w.inserts += 1;
        w.insert_exists = insert_exists;
        w.conflicts = insert_exists;
    }
    wait_tables(&s, "the unique violations counted on their table", &want).await;
    let rows = table_rows(&s).await;
    assert_eq!(sum(&rows), totals(&s).await, "the tables add up to the subscription's counters");
    let last_change: i64 = one(
        &s,
        "SELECT count(*) FROM pgsub.stat_subscription_table \
         WHERE last_change_at BETWEEN now() - interval '2 min' AND now()",
    )
    .await;
    assert_eq!(last_change, 3, "every table shows when a change was last applied");

    // A clean restart keeps them.
    nodes.subscriber.restart().expect("restart");
    let s = nodes.subscriber.client("postgres").await.unwrap();
    wait_tables(&s, "the counters back after a clean restart", &want).await;

    // reset_stats zeroes them (rows copied too); counting goes on from zero.
    s.execute("SELECT pgsub.reset_stats('sub')", &[]).await.expect("reset_stats");
    let zero: BTreeMap<String, TableRow> = want.keys().map(|k| (k.clone(), TableRow::default())).collect();
    assert_eq!(table_rows(&s).await, zero, "reset_stats zeroes every table's counters");
    p.batch_execute("INSERT INTO b VALUES (1000, 1); UPDATE a SET n = 0 WHERE id = 1").await.unwrap();
    let mut after = zero.clone();
    after.get_mut("b").unwrap().inserts = 1;
    after.get_mut("a").unwrap().updates = 1;
    wait_tables(&s, "counting from zero after reset_stats", &after).await;
    // A plain role sees the view (its own database's subscriptions, as stat_subscription).
    s.batch_execute("CREATE ROLE plain LOGIN").await.unwrap();
    let plain = nodes.subscriber.client_as("plain", "postgres").await.unwrap();
    let n: i64 = one(&plain, "SELECT count(*) FROM pgsub.stat_subscription_table WHERE inserts + updates > 0").await;
    assert_eq!(n, 2);
    // The rows removed on the subscriber to make conflicts, put back as the publisher has them
    // (updates of missing rows are skipped, as natively): then every table is equal.
    for r in p.query("SELECT id, n FROM b WHERE id IN (5, 7)", &[]).await.unwrap() {
        let (id, n): (i32, i32) = (r.get(0), r.get(1));
        s.execute("INSERT INTO b VALUES ($1, $2)", &[&id, &n]).await.unwrap();
    }
    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn sync_workers_copy_and_catch_up_count_exactly_once() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE c (id int PRIMARY KEY, n int)").await.unwrap();
    }
    p.batch_execute("INSERT INTO c SELECT g, g FROM generate_series(1, 300) g; CREATE PUBLICATION pub FOR TABLE c")
        .await
        .unwrap();
    // The sync worker stays after its copy while the publisher changes the table: those changes
    // are the catch-up's (or, past its end, the apply worker's), each counted once.
    set_sync_hold(&nodes.subscriber, &s, "copied").await;
    s.execute("SELECT pgsub.create_subscription('sub', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create_subscription");
    wait_value(&s, "SELECT sync_state FROM pgsub.stat_subscription_table", "copied", WAIT).await;
    p.batch_execute("INSERT INTO c SELECT g, g FROM generate_series(301, 350) g").await.unwrap();
    p.batch_execute("UPDATE c SET n = 0 WHERE id <= 20").await.unwrap();
    for id in 31..=40 {
        p.batch_execute(&format!("DELETE FROM c WHERE id = {id}")).await.unwrap();
    }
    set_sync_hold(&nodes.subscriber, &s, "").await;
    wait_for_subscription_sync(&s, "sub", WAIT).await;
    let mut want = BTreeMap::new();
    want.insert(
        "c".to_string(),
        TableRow { inserts: 50, updates: 20, deletes: 10, rows_copied: 300, ..TableRow::default() },
    );
    wait_tables(&s, "the copy and the catch-up counted once", &want).await;
    assert_eq!(sum(&table_rows(&s).await), totals(&s).await);
    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn streamed_transactions_count_per_table() {
    // logical_decoding_work_mem = 64kB: the large transactions reach the worker in blocks before
    // they commit (streaming => true), and are applied from its buffer at the stream's commit.
    let nodes = TwoNodes::start_with(
        ClusterOpts::publisher().with_conf("logical_decoding_work_mem = '64kB'"),
        ClusterOpts::subscriber(),
    )
    .expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE x (id int PRIMARY KEY, v text); CREATE TABLE y (id int PRIMARY KEY, v text)")
            .await
            .unwrap();
    }
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE x, y").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('sub', $1, ARRAY['pub'], streaming => true)", &[&nodes.pub_conninfo()])
        .await
        .expect("create_subscription");
    wait_for_subscription_sync(&s, "sub", WAIT).await;
    p.batch_execute(
        "BEGIN; \
         INSERT INTO x SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g; \
         INSERT INTO y SELECT g, 'y' FROM generate_series(1, 3000) g; \
         UPDATE x SET v = 'u' WHERE id <= 2000; \
         DELETE FROM y WHERE id <= 700; \
         COMMIT; \
         BEGIN; INSERT INTO y SELECT g, repeat('z', 200) FROM generate_series(5001, 9000) g; TRUNCATE y; ROLLBACK; \
         INSERT INTO x VALUES (0, 'after')",
    )
    .await
    .unwrap();
    // The row written after the rollback is there: the rolled-back stream went by before it.
    wait_value(&s, "SELECT v FROM x WHERE id = 0", "after", WAIT).await;
    // The large transaction was streamed (the publisher's slot statistics say so). The rolled
    // back one, streamed or not, must count nothing.
    wait_value(
        &p,
        "SELECT stream_txns >= 1 FROM pg_catalog.pg_stat_replication_slots WHERE slot_name = 'sub'",
        "t",
        WAIT,
    )
    .await;
    let mut want = BTreeMap::new();
    want.insert("x".to_string(), TableRow { inserts: 5001, updates: 2000, ..TableRow::default() });
    want.insert("y".to_string(), TableRow { inserts: 3000, deletes: 700, ..TableRow::default() });
    wait_tables(&s, "a streamed transaction counted per table, a rollback not at all", &want).await;
    assert_eq!(sum(&table_rows(&s).await), totals(&s).await);
    assert_eq!(one::<i64>(&s, "SELECT txns_applied FROM pgsub.stat_subscription").await, 2);
    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_transaction_applied_again_after_an_error_counts_once() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE e (id int PRIMARY KEY, v text)").await.unwrap();
    }
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE e").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('sub', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create_subscription");
    wait_for_subscription_sync(&s, "sub", WAIT).await;
    // 200 000 rows (20 COPY runs: longer than the worker's half-second publishing interval),
    // then a row whose key exists here: the transaction fails at its end, again at each retry.
    s.batch_execute("INSERT INTO e VALUES (0, 'local')").await.unwrap();
    p.batch_execute(
        "BEGIN; INSERT INTO e SELECT g, 'r' FROM generate_series(1, 200000) g; INSERT INTO e VALUES (0, 'remote'); COMMIT",
    )
    .await
    .unwrap();
    wait_value(&s, "SELECT confl_insert_exists >= 3 FROM pgsub.stat_subscription", "t", Duration::from_secs(120)).await;
    let during: (i64, i64) = {
        let r = s.query_one("SELECT inserts, txns_applied FROM pgsub.stat_subscription", &[]).await.unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(during, (0, 0), "nothing of the failing transaction is counted");
    s.batch_execute("DELETE FROM e WHERE id = 0").await.unwrap();
    wait_value(&s, "SELECT v FROM e WHERE id = 0", "remote", WAIT).await;
    let insert_exists: i64 = one(&s, "SELECT confl_insert_exists FROM pgsub.stat_subscription").await;
    let mut want = BTreeMap::new();
    want.insert(
        "e".to_string(),
        TableRow { inserts: 200_001, insert_exists, conflicts: insert_exists, ..TableRow::default() },
    );
    wait_tables(&s, "the transaction's rows counted once, its conflicts at each attempt", &want).await;
    assert_eq!(one::<i64>(&s, "SELECT txns_applied FROM pgsub.stat_subscription").await, 1);
    assert_eq!(sum(&table_rows(&s).await), totals(&s).await);
    assert_replicated_equal(&p, &s).await;
}

/// One reading of the counters and the rates, with the subscriber's clock.
#[derive(Clone, Copy, Debug)]
struct Reading {
    at: f64,
    txns: i64,
    rows: i64,
    bytes: i64,
    rates_10s: [f64; 3],
    rates_1m: [f64; 2],
}

async fn read(s: &Client) -> Reading {
    let r = s
        .query_one(
            "SELECT extract(epoch FROM clock_timestamp())::float8, txns_applied, inserts + updates + deletes, \
                    txn_rate_10s, row_rate_10s, recv_bytes_rate_10s, txn_rate_1m, row_rate_1m, recv_bytes \
             FROM pgsub.stat_subscription WHERE subname = 'sub'",
            &[],
        )
        .await
        .expect("stat_subscription");
    Reading {
        at: r.get(0),
        txns: r.get(1),
        rows: r.get(2),
        bytes: r.get(8),
        rates_10s: [r.get(3), r.get(4), r.get(5)],
        rates_1m: [r.get(6), r.get(7)],
    }
}

/// A counter at time `t` (seconds), interpolated between the readings around it; the first
/// reading's value before it (nothing was applied before the load began).
fn counter_at(readings: &[Reading], t: f64, f: impl Fn(&Reading) -> i64) -> f64 {
    let first = &readings[0];
    if t <= first.at {
        return f(first) as f64;
    }
    for w in readings.windows(2) {
        if w[0].at <= t && t <= w[1].at {
            let x = (t - w[0].at) / (w[1].at - w[0].at);
            return f(&w[0]) as f64 + x * (f(&w[1]) - f(&w[0])) as f64;
        }
    }
    panic!("no reading around {t}");
}

fn within_10_percent(what: &str, reported: f64, measured: f64) {
    eprintln!("{what}: reported {reported:.2}, measured {measured:.2}");
    assert!(measured > 0.0, "{what}: nothing measured");
    assert!(
        (reported - measured).abs() <= 0.1 * measured,
        "{what}: the view reports {reported:.2}/s, the counters moved {measured:.2}/s over the same window"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn rates_agree_with_the_counters_over_the_same_window() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE r (id bigint PRIMARY KEY, v text)").await.unwrap();
    }
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE r").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('sub', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create_subscription");
    wait_for_subscription_sync(&s, "sub", WAIT).await;

    // A steady load for 14 s: a transaction of 10 inserts and 5 updates every 50 ms, paced by a
    // timer (the writer's pace, not a wait for a condition). The counters are read every 100 ms.
    let writer = {
        let p = nodes.publisher.client("postgres").await.unwrap();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let start = Instant::now();
            let mut next = 1i64;
            while start.elapsed() < Duration::from_secs(14) {
                tick.tick().await;
                let sql = format!(
                    "BEGIN; INSERT INTO r SELECT g, 'x' FROM generate_series({next}, {}) g; \
                     UPDATE r SET v = 'y' WHERE id BETWEEN {next} AND {}; COMMIT",
                    next + 9,
                    next + 4
                );
                p.batch_execute(&sql).await.expect("load");
                next += 10;
            }
        })
    };
    let mut readings = vec![read(&s).await];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(13) {
        // The sampling interval of the counters (not a wait for a condition).
        tokio::time::sleep(Duration::from_millis(100)).await;
        readings.push(read(&s).await);
    }
    let last = *readings.last().unwrap();
    // The view's window: the 10 (60) complete seconds before the second of the reading.
    let end = last.at.floor();
    let txns = |t: f64| counter_at(&readings, t, |r| r.txns);
    let rows = |t: f64| counter_at(&readings, t, |r| r.rows);
    within_10_percent("txn_rate_10s", last.rates_10s[0], (txns(end) - txns(end - 10.0)) / 10.0);
    within_10_percent("row_rate_10s", last.rates_10s[1], (rows(end) - rows(end - 10.0)) / 10.0);
    within_10_percent("txn_rate_1m", last.rates_1m[0], (txns(end) - txns(end - 60.0)) / 60.0);
    within_10_percent("row_rate_1m", last.rates_1m[1], (rows(end) - rows(end - 60.0)) / 60.0);
    // Bytes received: against their counter over the 10 s window (the minute's began before the
    // first reading, while the subscription was being set up); each applied change arrived in a
    // frame of at least its 25-byte header, plus the transaction's BEGIN and COMMIT frames.
    let bytes = |t: f64| counter_at(&readings, t, |r| r.bytes);
    assert!(end - 10.0 >= readings[0].at, "the 10 s window lies within the readings");
    within_10_percent("recv_bytes_rate_10s", last.rates_10s[2], (bytes(end) - bytes(end - 10.0)) / 10.0);
    let changes_per_s = last.rates_10s[1] + 2.0 * last.rates_10s[0];
    assert!(
        last.rates_10s[2] >= 25.0 * changes_per_s && last.rates_10s[2] <= 1000.0 * changes_per_s,
        "recv_bytes_rate_10s {} for {changes_per_s} frames/s",
        last.rates_10s[2]
    );
    writer.await.expect("writer");
    // Idle: the 10 s rates fall to 0 with no write from the worker.
    wait_value(
        &s,
        "SELECT txn_rate_10s = 0 AND row_rate_10s = 0 AND txn_rate_1m > 0 FROM pgsub.stat_subscription",
        "t",
        Duration::from_secs(20),
    )
    .await;
    assert_replicated_equal(&p, &s).await;
}

/// `pgsub.lag_history`: (seconds since the epoch, lag bytes, apply lag in ms, rows).
async fn history(s: &Client) -> Vec<(f64, i64, f64, i64)> {
    s.query(
        "SELECT extract(epoch FROM sample_time)::float8, lag_bytes, extract(epoch FROM apply_lag)::float8 * 1000, \
                rows_per_s FROM pgsub.lag_history('sub')",
        &[],
    )
    .await
    .expect("lag_history")
    .iter()
    // A NULL apply lag (not known: the worker has not heard from the publisher yet) is NaN.
    .map(|r| (r.get(0), r.get(1), r.get::<_, Option<f64>>(2).unwrap_or(f64::NAN), r.get(3)))
    .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn lag_history_shows_the_rise_while_held_back_and_the_fall() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE h (id bigint PRIMARY KEY, v text)").await.unwrap();
    }
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE h").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('sub', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create_subscription");
    wait_for_subscription_sync(&s, "sub", WAIT).await;
    let e = must_fail(&s, "SELECT * FROM pgsub.lag_history('nope')", &[]).await;
    assert_eq!(e.code, "42704", "{}", e.text());

    // A paced writer: 20 rows in a transaction every 100 ms (the writer's pace).
    let writer = {
        let p = nodes.publisher.client("postgres").await.unwrap();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let start = Instant::now();
            let mut next = 1i64;
            while start.elapsed() < Duration::from_secs(16) {
                tick.tick().await;
                p.batch_execute(&format!("INSERT INTO h SELECT g, 'x' FROM generate_series({next}, {}) g", next + 19))
                    .await
                    .expect("load");
                next += 20;
            }
        })
    };
    // Streaming for 3 s, then held back by a lock for 8 s.
    tokio::time::sleep(Duration::from_secs(3)).await; // the load's first phase (pacing)
    let locker = nodes.subscriber.client("postgres").await.unwrap();
    locker.batch_execute("BEGIN; LOCK TABLE h IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let held_from: f64 = one(&s, "SELECT extract(epoch FROM clock_timestamp())::float8").await;
    // The hold's length (pacing the scenario, not a wait for a condition).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let held_to: f64 = one(&s, "SELECT extract(epoch FROM clock_timestamp())::float8").await;
    locker.batch_execute("COMMIT").await.unwrap();
    writer.await.expect("writer");
    // Caught up: the newest sample shows no lag.
    wait_for("a lag_history sample without lag after the catch-up", WAIT, || {
        let s = &s;
        async move {
            let h = history(s).await;
            Ok(h.last().filter(|x| x.1 == 0 && x.2 == 0.0 && x.0 > held_to + 1.0).map(|_| ()))
        }
    })
    .await
    .expect("caught up");
    let h = history(&s).await;
    for x in &h {
        eprintln!("{:.0} lag_bytes {} apply_lag {:.0} ms rows {}", x.0, x.1, x.2, x.3);
    }
    assert!(h.windows(2).all(|w| w[1].0 > w[0].0), "oldest first, one sample per second at most");
    let before: Vec<_> = h.iter().filter(|x| x.0 < held_from - 0.5).collect();
    let during: Vec<_> = h.iter().filter(|x| x.0 > held_from + 1.5 && x.0 < held_to).collect();
    let after: Vec<_> = h.iter().filter(|x| x.0 > held_to).collect();
    assert!(before.len() >= 2, "samples before the hold: {before:?}");
    // (NaN: not known yet, at the worker's start.)
    assert!(before.iter().all(|x| x.2.is_nan() || x.2 < 2000.0), "little apply lag before the hold: {before:?}");
    assert!(before.iter().any(|x| x.3 > 0), "rows applied per second before the hold: {before:?}");
    // While held back the apply lag grows with the hold, sample after sample.
    assert!(during.len() >= 4, "samples while held back: {during:?}");
    assert!(during.windows(2).all(|w| w[1].2 >= w[0].2), "apply lag never falls while held back: {during:?}");
    let (first, last) = (during[0], during[during.len() - 1]);
    assert!(
        last.2 - first.2 >= 0.7 * 1000.0 * (last.0 - first.0) && last.2 >= 5000.0,
        "apply lag grows by about a second per second while held back: {during:?}"
    );
    assert!(during.iter().all(|x| x.3 == 0), "no rows applied while held back: {during:?}");
    // Released: the backlog is applied faster than it was written, and the lag falls to 0.
    assert!(after.iter().any(|x| x.3 > 200), "a catch-up burst above the writer's 200 rows/s: {after:?}");
    let peak = after.iter().map(|x| x.2).fold(0.0, f64::max);
    assert!(peak < last.2 + 3000.0, "no higher lag after the release than the hold built: {after:?}");
    assert_eq!(after.last().map(|x| (x.1, x.2)), Some((0, 0.0)));
    assert_replicated_equal(&p, &s).await;
}
