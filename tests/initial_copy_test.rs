//! End-to-end: the initial copy of published tables is consistent with the change stream (rows
//! written during the copy are neither lost nor doubled), honours column lists and row filters,
//! survives a crash mid-copy, picks up tables added by refresh, refuses non-empty tables (unless
//! another subscription replicates into them: publishers consolidated into one table), and
//! travels in binary format only where both sides' types match.
use pgsub_tests::{assert_replicated_equal_within, one, wait_for_subscription_sync, wait_value, Cluster, TwoNodes};
use std::time::Duration;
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(120);

/// Every replicated table equal on both nodes (the copies here are large: a longer wait than
/// the harness's default).
async fn assert_equal(p: &Client, s: &Client) {
    assert_replicated_equal_within(p, s, None, &[], WAIT).await
}

const TABLE: &str = "CREATE TABLE big (id int PRIMARY KEY, v text, n int)";

#[tokio::test(flavor = "current_thread")]
async fn copy_is_consistent_with_concurrent_writes() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    p.batch_execute(TABLE).await.unwrap();
    s.batch_execute(TABLE).await.unwrap();
    p.batch_execute(
        "INSERT INTO big SELECT g, md5(g::text), g FROM generate_series(1, 200000) g;
         CREATE PUBLICATION pub FOR TABLE big;",
    )
    .await
    .unwrap();
    // Writes keep coming while the subscription is created and the copy runs.
    let pw = nodes.publisher.client("postgres").await.unwrap();
    let writer = tokio::spawn(async move {
        for i in 0..300 {
            let base = 200000 + i * 10;
            pw.batch_execute(&format!(
                "BEGIN;
                 INSERT INTO big SELECT g, 'new', g FROM generate_series({}, {}) g;
                 UPDATE big SET n = n + 1, v = 'upd' WHERE id % 997 = {};
                 DELETE FROM big WHERE id = {};
                 COMMIT;",
                base + 1,
                base + 10,
                i % 997,
                1 + i * 13
            ))
            .await?;
            // Paces the load (a transaction every 10 ms), not a wait for a condition.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok::<_, tokio_postgres::Error>(())
    });
    // The subscription is created once the writes are flowing.
    wait_value(&p, "SELECT max(id) > 200000 FROM big", "t", WAIT).await;
    s.execute("SELECT pgsub.create_subscription('copy', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    writer.await.unwrap().expect("writer");
    assert_equal(&p, &s).await;
    let r = s
        .query_one("SELECT sync_state, rows_copied FROM pgsub.subscription_table WHERE subname = 'copy'", &[])
        .await
        .unwrap();
    assert!(["synchronized", "ready"].contains(&r.get::<_, String>(0).as_str()));
    assert!(r.get::<_, i64>(1) >= 200000 - 300, "rows_copied {}", r.get::<_, i64>(1));
}

/// The copy uses COPY's binary format where both sides have the same built-in types, and text
/// for a user-defined type or a column whose local type differs; every value arrives intact
/// either way (NULLs, special floats, unicode and control characters, arrays, ranges, json).
#[tokio::test(flavor = "current_thread")]
async fn copy_format_is_binary_only_where_types_match() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    let ddl = r#"
        CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
        CREATE TABLE bt (
            id int PRIMARY KEY, i2 smallint, i8 bigint, num numeric(20,6), f8 float8, f4 real, b bool,
            ts timestamptz, tsn timestamp(3), d date, u uuid, j jsonb, js json, arr int[], tarr text[],
            by bytea, t text, vc varchar(20), ch char(5), iv interval, ip inet, r int4range, pt point
        );
        CREATE TABLE "E t" (id int PRIMARY KEY, m mood, v text);
    "#;
    p.batch_execute(ddl).await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    p.batch_execute("CREATE TABLE dt (id int PRIMARY KEY, n text)").await.unwrap();
    s.batch_execute("CREATE TABLE dt (id int PRIMARY KEY, n bigint)").await.unwrap();
    p.batch_execute(
        r#"INSERT INTO bt SELECT g, (g % 30000)::smallint, g::bigint * 1000003, g / 7.0, g / 3.0, g / 9.0, g % 2 = 0,
               '2024-02-29 12:00:00+00'::timestamptz + g * interval '1 hour', '1999-12-31 23:59:59.123'::timestamp + g * interval '1 day',
               '2000-01-01'::date + g, md5(g::text)::uuid, jsonb_build_object('k', g, 'a', jsonb_build_array(g, 'x')),
               json_build_object('g', g), ARRAY[g, -g, NULL], ARRAY['a' || g, NULL, 'é"'],
               decode(md5(g::text), 'hex'), E'tab	here ' || g || E'
newline \ back ü 日本', 'vc' || g, 'c' || (g % 10),
               g * interval '1 minute', ('10.0.' || (g % 256) || '.1')::inet, int4range(g, g + 10), point(g, -g)
             FROM generate_series(1, 2000) g;
           INSERT INTO bt (id) VALUES (0);
           INSERT INTO bt (id, f8, f4, num) VALUES (-1, 'NaN', '-Infinity', 'NaN'), (-2, '-0', 'Infinity', 0);
           INSERT INTO "E t" SELECT g, (ARRAY['sad', 'ok', 'happy']::mood[])[g % 3 + 1], 'e' || g FROM generate_series(1, 300) g;
           INSERT INTO dt SELECT g, (g * 7)::text FROM generate_series(1, 300) g;
           CREATE PUBLICATION fp FOR TABLE bt, "E t", dt;"#,
    )
    .await
    .unwrap();
    s.execute("SELECT pgsub.create_subscription('fmt', $1, ARRAY['fp'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    wait_for_subscription_sync(&s, "fmt", WAIT).await;
    // dt's n is text there and bigint here: equal as the rows' text.
    assert_equal(&p, &s).await;
    let log = nodes.subscriber.log();
    for (table, rows, format) in [(r#""bt""#, 2003, "binary"), (r#""E t""#, 300, "text"), (r#""dt""#, 300, "text")] {
        let line = format!("{table} for subscription \"fmt\" finished: {rows} rows in {format} format");
        assert!(log.contains(&line), "log should say: {line}\n{log}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn column_lists_and_row_filters_are_honoured() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    let ddl = "CREATE TABLE cl (id int PRIMARY KEY, a text, secret text);
               CREATE TABLE rf (id int PRIMARY KEY, region text, v int);
               -- a row filter on UPDATE/DELETE needs its columns in the replica identity
               ALTER TABLE rf REPLICA IDENTITY FULL;";
    p.batch_execute(ddl).await.unwrap();
    // The subscriber has no `secret` column at all.
    s.batch_execute(
        "CREATE TABLE cl (id int PRIMARY KEY, a text); CREATE TABLE rf (id int PRIMARY KEY, region text, v int);",
    )
    .await
    .unwrap();
    p.batch_execute(
        "INSERT INTO cl SELECT g, 'a' || g, 'hidden' FROM generate_series(1, 100) g;
         INSERT INTO rf SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g FROM generate_series(1, 100) g;
         CREATE PUBLICATION p_cl FOR TABLE cl (id, a);
         CREATE PUBLICATION p_rf FOR TABLE rf WHERE (region = 'eu');",
    )
    .await
    .unwrap();
    s.execute("SELECT pgsub.create_subscription('f', $1, ARRAY['p_cl', 'p_rf'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    wait_for_subscription_sync(&s, "f", WAIT).await;
    p.batch_execute(
        "INSERT INTO cl VALUES (101, 'a101', 'hidden');
         UPDATE cl SET secret = 'changed', a = 'x' WHERE id = 1;
         INSERT INTO rf VALUES (101, 'eu', 1), (102, 'us', 2);
         UPDATE rf SET v = -1 WHERE id = 2;
         UPDATE rf SET region = 'eu' WHERE id = 3;    -- enters the filter: arrives as INSERT
         UPDATE rf SET region = 'us' WHERE id = 4;    -- leaves the filter: arrives as DELETE
         DELETE FROM rf WHERE id = 6;",
    )
    .await
    .unwrap();
    // cl over the published columns (id, a), rf with the row filter applied on the publisher.
    assert_equal(&p, &s).await;
    let us: i64 = s.query_one("SELECT count(*) FROM rf WHERE region <> 'eu'", &[]).await.unwrap().get(0);
    assert_eq!(us, 0, "rows outside the filter are not replicated");
}

#[tokio::test(flavor = "current_thread")]
async fn crash_during_copy_redoes_it_cleanly() {
    let mut nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    p.batch_execute(TABLE).await.unwrap();
    s.batch_execute(TABLE).await.unwrap();
    p.batch_execute(
        "INSERT INTO big SELECT g, repeat(md5(g::text), 4), g FROM generate_series(1, 600000) g;
         CREATE PUBLICATION pub FOR TABLE big;",
    )
    .await
    .unwrap();
    s.execute("SELECT pgsub.create_subscription('crash', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'crash'", "initial_copy", WAIT).await;
    // Mid-copy: the worker's COPY FROM has loaded rows (not committed yet).
    wait_value(&s, "SELECT coalesce(max(tuples_processed), 0) > 0 FROM pg_stat_progress_copy", "t", WAIT).await;
    drop(s);
    nodes.subscriber.kill9().expect("kill -9 mid-copy");
    p.batch_execute("UPDATE big SET v = 'after crash' WHERE id <= 1000").await.unwrap();
    nodes.subscriber.start_again().expect("restart");
    let s = nodes.subscriber.client("postgres").await.unwrap();
    assert_equal(&p, &s).await;
    // Only the subscription's own slot is left on the publisher (the copy's slot was temporary).
    let slots: i64 = p.query_one("SELECT count(*) FROM pg_replication_slots", &[]).await.unwrap().get(0);
    assert_eq!(slots, 1);
}

/// `copy_data => true` into tables that already have rows: one with a key takes the publisher's
/// rows beside its own, as natively (with a NOTICE); one without a key is refused, its rows would
/// be doubled silently (native appends anyway). Then a refresh copies a table added to the
/// publication and stops applying one removed from it.
#[tokio::test(flavor = "current_thread")]
async fn refresh_copies_added_tables_and_non_empty_keyless_tables_are_refused() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let (s, notices) = nodes.subscriber.client_with_notices("postgres").await.unwrap();
    let ddl = "CREATE TABLE t1 (id int PRIMARY KEY, v text); CREATE TABLE t2 (id int PRIMARY KEY, v text);
               CREATE TABLE k (id int, v text)";
    p.batch_execute(ddl).await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    p.batch_execute(
        "INSERT INTO t1 SELECT g, 'a' FROM generate_series(1, 50) g;
         INSERT INTO t2 SELECT g, 'b' FROM generate_series(1, 70) g;
         INSERT INTO k VALUES (1, 'k');
         CREATE PUBLICATION pub FOR TABLE t1, k;",
    )
    .await
    .unwrap();
    // A local table without a key that already has rows is refused, with the documented hint.
    s.batch_execute("INSERT INTO t1 VALUES (999, 'local'); INSERT INTO k VALUES (1, 'k')").await.unwrap();
    let err = s
        .execute("SELECT pgsub.create_subscription('r', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect_err("non-empty table");
    let db = err.as_db_error().expect("db error");
    assert!(db.message().contains("table \"public\".\"k\" is not empty"), "{}", db.message());
    assert!(db.hint().unwrap_or_default().contains("copy_data => false"), "{:?}", db.hint());
    // Emptied, the subscription is made; t1 (a key) takes the copy beside its local row.
    s.batch_execute("TRUNCATE k").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('r', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    let said: Vec<String> = notices.lock().unwrap().iter().map(|n| n.message().to_string()).collect();
    let said = said.join("\n");
    assert!(
        said.contains("table \"public\".\"t1\" already has rows: the publisher's rows are copied in beside them"),
        "{said}"
    );
    wait_for_subscription_sync(&s, "r", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t1").await, 51, "the publisher's 50 rows and the local one");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM k").await, 1);
    s.batch_execute("DELETE FROM t1 WHERE id = 999").await.unwrap();
    assert_equal(&p, &s).await;
    p.batch_execute(
        "ALTER PUBLICATION pub ADD TABLE t2; INSERT INTO t2 VALUES (71, 'added'); INSERT INTO t1 VALUES (51, 'still')",
    )
    .await
    .unwrap();
    s.batch_execute("SELECT pgsub.refresh_subscription('r')").await.expect("refresh");
    p.batch_execute("INSERT INTO t2 VALUES (72, 'after refresh'); UPDATE t1 SET v = 'moved' WHERE id = 1")
        .await
        .unwrap();
    assert_equal(&p, &s).await;
    // Removing a table from the publication stops applying it after refresh.
    p.batch_execute("ALTER PUBLICATION pub DROP TABLE t1").await.unwrap();
    s.batch_execute("SELECT pgsub.refresh_subscription('r')").await.expect("refresh 2");
    let n: i64 =
        s.query_one("SELECT count(*) FROM pgsub.subscription_table WHERE subname = 'r'", &[]).await.unwrap().get(0);
    assert_eq!(n, 2, "k and t2");
    // t2 and k are compared; t1 left the subscription (it is no longer applied).
    assert_equal(&p, &s).await;
}

/// A copy goes in beside a table's rows only when its key stops a row that is there already: a
/// unique index on a nullable column does not (two NULL keys are not equal), nor a key on a
/// column the copy does not fill (a column list without it: each copied row would take a new
/// value from the local default). Both are refused — the first at create, the second by the sync
/// worker, which sees the published columns — until the table is emptied.
#[tokio::test(flavor = "current_thread")]
async fn a_copy_beside_local_rows_needs_a_key_the_copy_fills() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    p.batch_execute(
        "CREATE TABLE nu (id int UNIQUE, v text); CREATE TABLE cl (id int, k int PRIMARY KEY, v text);
         INSERT INTO nu VALUES (1, 'a'); INSERT INTO cl VALUES (1, 100, 'a');
         CREATE PUBLICATION pnu FOR TABLE nu; CREATE PUBLICATION pcl FOR TABLE cl (id, v) WITH (publish = 'insert')",
    )
    .await
    .unwrap();
    s.batch_execute(
        "CREATE TABLE nu (id int UNIQUE, v text); CREATE TABLE cl (id int, k serial PRIMARY KEY, v text);
         INSERT INTO nu VALUES (NULL, 'local'); INSERT INTO cl (id, v) VALUES (1, 'a')",
    )
    .await
    .unwrap();
    let err = s
        .execute("SELECT pgsub.create_subscription('snu', $1, ARRAY['pnu'])", &[&nodes.pub_conninfo()])
        .await
        .expect_err("a nullable unique key does not stop a doubled row");
    assert!(err.as_db_error().is_some_and(|d| d.message().contains("is not empty")), "{err:?}");
    s.execute("SELECT pgsub.create_subscription('scl', $1, ARRAY['pcl'])", &[&nodes.pub_conninfo()])
        .await
        .expect("cl has a key here (the NOTICE says the copy goes beside)");
    wait_value(
        &s,
        "SELECT coalesce(bool_or(last_error LIKE '%is not empty%'), false)::text FROM pgsub.subscription_table WHERE subname = 'scl'",
        "true",
        WAIT,
    )
    .await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM cl").await, 1, "nothing copied beside the local row");
    s.batch_execute("TRUNCATE cl; TRUNCATE nu").await.unwrap();
    wait_for_subscription_sync(&s, "scl", WAIT).await;
    s.execute("SELECT pgsub.create_subscription('snu', $1, ARRAY['pnu'])", &[&nodes.pub_conninfo()])
        .await
        .expect("emptied");
    wait_for_subscription_sync(&s, "snu", WAIT).await;
    p.batch_execute("INSERT INTO cl VALUES (2, 200, 'b'); INSERT INTO nu VALUES (2, 'b')").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM cl", "2", WAIT).await;
    assert_equal(&p, &s).await;
}

/// After the initial copy, with no write on the publisher at all, every table becomes `ready`:
/// the walsender's keepalives tell the worker the stream has passed the copy point (before,
/// tables waited in `synchronized` for the next commit of any transaction).
#[tokio::test(flavor = "current_thread")]
async fn tables_become_ready_while_the_publisher_is_idle() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    let ddl = "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text)";
    p.batch_execute(ddl).await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    p.batch_execute(
        "INSERT INTO a SELECT g, 'a' FROM generate_series(1, 1000) g;
         INSERT INTO b SELECT g, 'b' FROM generate_series(1, 10) g;
         CREATE PUBLICATION pub FOR TABLE a, b;",
    )
    .await
    .unwrap();
    s.execute("SELECT pgsub.create_subscription('idle', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    // No write on the publisher from here on. 20 s: far less than the minute tables used to
    // wait, far more than the keepalive that follows the copy.
    wait_value(
        &s,
        "SELECT string_agg(remote_name || ':' || sync_state, ',' ORDER BY remote_name) FROM pgsub.subscription_table",
        "a:ready,b:ready",
        Duration::from_secs(20),
    )
    .await;
    assert_equal(&p, &s).await;
}

/// The rows of `d` on a node, ordered, as text.
async fn rows_of_d(c: &Client) -> Vec<String> {
    c.query("SELECT d::text FROM d ORDER BY id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

/// Two publishers consolidated into one table (disjoint keys), each subscription with its
/// initial copy, as natively: the second copy goes in beside the rows the first subscription
/// replicates there (a NOTICE says so) instead of being refused as a non-empty table; both
/// streams then apply, and the table holds every row of both publishers.
#[tokio::test(flavor = "current_thread")]
async fn a_table_two_publishers_are_consolidated_into_takes_both_copies() {
    let nodes = TwoNodes::start().expect("start");
    let second = Cluster::publisher().expect("second publisher");
    let p1 = nodes.publisher.client("postgres").await.unwrap();
    let p2 = second.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    let ddl = "CREATE TABLE d (id int PRIMARY KEY, v text)";
    for c in [&p1, &p2, &s] {
        c.batch_execute(ddl).await.unwrap();
    }
    p1.batch_execute(
        "INSERT INTO d SELECT g, 'one' FROM generate_series(1, 1000) g; CREATE PUBLICATION pub FOR TABLE d",
    )
    .await
    .unwrap();
    p2.batch_execute(
        "INSERT INTO d SELECT g, 'two' FROM generate_series(1001, 2000) g; CREATE PUBLICATION pub FOR TABLE d",
    )
    .await
    .unwrap();
    s.execute("SELECT pgsub.create_subscription('from_one', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("first");
    wait_for_subscription_sync(&s, "from_one", WAIT).await;
    s.execute(
        "SELECT pgsub.create_subscription('from_two', $1, ARRAY['pub'])",
        &[&second.connstr("postgres", "postgres")],
    )
    .await
    .expect("the second copy goes in beside the first subscription's rows");
    wait_for_subscription_sync(&s, "from_two", WAIT).await;
    p1.batch_execute("INSERT INTO d VALUES (3000, 'one later'); UPDATE d SET v = 'one updated' WHERE id = 1")
        .await
        .unwrap();
    p2.batch_execute("INSERT INTO d VALUES (4000, 'two later'); DELETE FROM d WHERE id = 2000").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM d WHERE id IN (3000, 4000)", "2", WAIT).await;
    wait_value(&s, "SELECT count(*)::text FROM d", "2001", WAIT).await;
    let mut want = rows_of_d(&p1).await;
    want.extend(rows_of_d(&p2).await);
    want.sort_by_key(|r| {
        r.trim_matches(|c| c == '(' || c == ')').split(',').next().and_then(|n| n.parse::<i32>().ok())
    });
    assert_eq!(rows_of_d(&s).await, want, "the subscriber holds every row of both publishers");
    // A table without a key that no other subscription replicates into is still refused when it
    // has rows.
    let third = Cluster::publisher().expect("third publisher");
    let p3 = third.client("postgres").await.unwrap();
    p3.batch_execute("CREATE TABLE e (id int); CREATE PUBLICATION pub FOR TABLE e").await.unwrap();
    s.batch_execute("CREATE TABLE e (id int); INSERT INTO e VALUES (1)").await.unwrap();
    let err = s
        .execute(
            "SELECT pgsub.create_subscription('from_three', $1, ARRAY['pub'])",
            &[&third.connstr("postgres", "postgres")],
        )
        .await
        .expect_err("a non-empty table of no other subscription");
    assert!(err.as_db_error().is_some_and(|d| d.message().contains("is not empty")), "{err:?}");
}
