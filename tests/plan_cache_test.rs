//! End-to-end: the apply worker's plan cache is bounded (`pgsub.max_cached_relations`). With a
//! bound of 2 and seven tables changed in every transaction (inserts through COPY and one by
//! one, batched and single updates and deletes, a table with REPLICA IDENTITY FULL, a column
//! added mid-way so that a new RELATION message replaces a relation's plans), the least recently
//! used relations' statements are freed and prepared again, never more than the bound are kept,
//! every row still arrives, and every change is still counted on its table.
use pgsub_tests::{assert_replicated_equal, wait_for_subscription_sync, wait_value, ClusterOpts, TwoNodes};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);
const TABLES: usize = 6;

fn schema() -> String {
    let mut s = String::new();
    for i in 1..=TABLES {
        s.push_str(&format!("CREATE TABLE t{i} (id int PRIMARY KEY, v text, n int);\n"));
    }
    s.push_str("CREATE TABLE tfull (a int, b text);\nALTER TABLE tfull REPLICA IDENTITY FULL;\n");
    s
}

/// One transaction that changes every table: `rows` inserts (COPY from 8 rows on), then updates
/// of some of them (a batch of 10 and a single one), then deletes (a batch of 5 and a single
/// one), table after table, so that each table's turn comes after the others' plans.
fn round(r: usize) -> String {
    let base = r * 1000;
    let mut s = String::from("BEGIN;\n");
    for i in 1..=TABLES {
        s.push_str(&format!(
            "INSERT INTO t{i} SELECT g, 'r{r} ' || g, g FROM generate_series({}, {}) g;\n\
             INSERT INTO t{i} VALUES ({}, 'single', 0);\n",
            base + 1,
            base + 30,
            base + 31
        ));
    }
    s.push_str(&format!("INSERT INTO tfull SELECT g, 'f' || g FROM generate_series({}, {}) g;\n", base + 1, base + 20));
    for i in 1..=TABLES {
        s.push_str(&format!(
            "UPDATE t{i} SET n = n + {i} WHERE id BETWEEN {} AND {};\nUPDATE t{i} SET v = 'one' WHERE id = {};\n",
            base + 1,
            base + 10,
            base + 20
        ));
    }
    s.push_str(&format!("UPDATE tfull SET b = 'u' WHERE a = {};\n", base + 3));
    for i in 1..=TABLES {
        s.push_str(&format!(
            "DELETE FROM t{i} WHERE id BETWEEN {} AND {};\nDELETE FROM t{i} WHERE id = {};\n",
            base + 21,
            base + 25,
            base + 31
        ));
    }
    s.push_str(&format!("DELETE FROM tfull WHERE a = {};\nCOMMIT;\n", base + 4));
    s
}

#[tokio::test(flavor = "current_thread")]
async fn eviction_of_prepared_statements_keeps_applying_every_change() {
    let nodes = TwoNodes::start_with(
        ClusterOpts::publisher(),
        ClusterOpts::subscriber().with_conf("pgsub.max_cached_relations = 2").with_conf("log_min_messages = debug1"),
    )
    .expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    p.batch_execute(&schema()).await.expect("publisher schema");
    s.batch_execute(&schema()).await.expect("subscriber schema");
    p.batch_execute("CREATE PUBLICATION allpub FOR ALL TABLES").await.expect("publication");
    s.execute("SELECT pgsub.create_subscription('sub', $1, ARRAY['allpub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create_subscription");
    wait_for_subscription_sync(&s, "sub", WAIT).await;

    for r in 1..=3 {
        p.batch_execute(&round(r)).await.expect("round");
    }
    // A new column: the next RELATION message of t3 replaces its binding and plans.
    s.batch_execute("ALTER TABLE t3 ADD COLUMN extra text").await.expect("subscriber column");
    p.batch_execute("ALTER TABLE t3 ADD COLUMN extra text").await.expect("publisher column");
    p.batch_execute("UPDATE t3 SET extra = 'x' || id WHERE id % 3 = 0").await.expect("extra");
    for r in 4..=5 {
        p.batch_execute(&round(r)).await.expect("round");
    }
    assert_replicated_equal(&p, &s).await;

    // A relation whose statements were freed keeps its binding: its changes are still counted
    // on its table (per round 31 inserts, 10 + 1 updates, 5 + 1 deletes; t3 had one more update).
    let expect = (1..=TABLES).filter(|i| *i != 3).map(|i| format!("t{i} 155 55 30")).collect::<Vec<_>>().join(",");
    wait_value(
        &s,
        "SELECT string_agg(format('%s %s %s %s', relname, inserts, updates, deletes), ',' ORDER BY relname) \
         FROM pgsub.stat_subscription_table WHERE subname = 'sub' AND relname ~ '^t[0-9]$' AND relname <> 't3'",
        &expect,
        WAIT,
    )
    .await;

    // Statements were freed, and never more than the bound kept: each line says how many
    // relations kept theirs after the eviction and the bound.
    let needle = "pgsub: freed the prepared statements of relation";
    nodes.subscriber.wait_for_log(needle, WAIT).await.expect("an eviction was logged");
    let log = nodes.subscriber.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
    assert!(lines.len() >= 20, "7 tables through a bound of 2 for 5 rounds evict often: {lines:#?}");
    for l in &lines {
        let tail = l.split(" (").last().unwrap_or_default();
        let nums: Vec<usize> = tail
            .split(|c: char| !c.is_ascii_digit())
            .filter(|t| !t.is_empty())
            .filter_map(|t| t.parse().ok())
            .collect();
        assert_eq!(nums.len(), 2, "count and bound in {l:?}");
        assert!(nums[0] <= nums[1] && nums[1] <= 2, "at most the bound keep plans: {l:?}");
    }
}

/// A REPLICA IDENTITY FULL table (no key here) whose rows have NULLs in many columns: each
/// row's UPDATE and DELETE are prepared for its pattern of NULLs, up to a bound per relation
/// (`relation.rs`, 64 statements), and by the statement that matches any row beyond it. 256
/// patterns (8 nullable columns), each row updated then deleted: every change applied, equal.
#[tokio::test(flavor = "current_thread")]
async fn full_identity_rows_of_many_null_patterns_are_all_found() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    let cols: Vec<String> = (0..8).map(|b| format!("c{b} int")).collect();
    let ddl = format!("CREATE TABLE f (id int, {}, v text)", cols.join(", "));
    p.batch_execute(&format!("{ddl}; ALTER TABLE f REPLICA IDENTITY FULL; CREATE PUBLICATION fp FOR TABLE f"))
        .await
        .expect("publisher");
    s.batch_execute(&ddl).await.expect("subscriber");
    s.execute("SELECT pgsub.create_subscription('f', $1, ARRAY['fp'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create_subscription");
    wait_for_subscription_sync(&s, "f", WAIT).await;
    // Row g has column cb NULL where bit b of g is set.
    let values: Vec<String> = (0..8).map(|b| format!("CASE WHEN g & {} = 0 THEN g END", 1 << b)).collect();
    p.batch_execute(&format!("INSERT INTO f SELECT g, {}, 'new' FROM generate_series(0, 255) g", values.join(", ")))
        .await
        .expect("rows");
    p.batch_execute(
        "UPDATE f SET v = 'updated'; DELETE FROM f WHERE id % 3 = 0; INSERT INTO f (id, v) VALUES (1000, 'last')",
    )
    .await
    .expect("changes");
    wait_value(&s, "SELECT count(*) FROM f WHERE id = 1000", "1", WAIT).await;
    let counts: String =
        pgsub_tests::one(&s, "SELECT format('%s %s', count(*), count(*) FILTER (WHERE v = 'updated')) FROM f").await;
    assert_eq!(counts, "171 170", "170 rows updated and kept, 86 deleted, one inserted");
    let missing: i64 = pgsub_tests::one(
        &s,
        "SELECT coalesce(sum(confl_update_missing + confl_delete_missing), 0)::int8 FROM pgsub.stat_subscription",
    )
    .await;
    assert_eq!(missing, 0, "no row was missed");
    assert_replicated_equal(&p, &s).await;
}
