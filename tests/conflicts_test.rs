//! End-to-end: what happens when the subscriber's rows are not what the publisher's changes
//! expect (the "Conflicts" section of PostgreSQL's logical replication chapter): an UPDATE or
//! DELETE whose row is missing is skipped, counted and logged naming the leaf partition where
//! the row was looked for; a transaction that fails at PREPARE (two-phase) is skipped with
//! `skip_transaction` and the pending skip is then cleared, as native clears `subskiplsn`.
use pgsub_tests::{
    assert_replicated_equal, one, wait_for_subscription_error, wait_for_subscription_sync, wait_value, ClusterOpts,
    TwoNodes,
};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

/// Waits for a line of the subscriber's log (the failing test prints the whole log).
async fn wait_log(nodes: &TwoNodes, what: &str) {
    nodes.subscriber.wait_for_log(what, WAIT).await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "current_thread")]
async fn missing_rows_in_a_partitioned_target_name_the_leaf() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    // The subscriber is partitioned differently from the publisher (and one level deeper).
    p.batch_execute(
        "CREATE TABLE m (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
         CREATE TABLE m_low PARTITION OF m FOR VALUES FROM (0) TO (1000);
         CREATE TABLE m_high PARTITION OF m FOR VALUES FROM (1000) TO (100000);
         CREATE PUBLICATION pub FOR TABLE m WITH (publish_via_partition_root = true);
         INSERT INTO m SELECT g, 'v' || g FROM generate_series(1, 3000) g;",
    )
    .await
    .unwrap();
    s.batch_execute(
        "CREATE TABLE m (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
         CREATE TABLE \"m a\" PARTITION OF m FOR VALUES FROM (0) TO (500);
         CREATE TABLE m_b PARTITION OF m FOR VALUES FROM (500) TO (100000) PARTITION BY HASH (id);
         CREATE TABLE m_b0 PARTITION OF m_b FOR VALUES WITH (MODULUS 2, REMAINDER 0);
         CREATE TABLE m_b1 PARTITION OF m_b FOR VALUES WITH (MODULUS 2, REMAINDER 1);",
    )
    .await
    .unwrap();
    s.execute("SELECT pgsub.create_subscription('c', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "c", WAIT).await;
    assert_replicated_equal(&p, &s).await;
    // Rows that disappear on the subscriber only.
    let leaf_of = "SELECT tableoid::regclass::text FROM m WHERE id = ";
    let leaf_7: String = one(&s, &format!("{leaf_of}7")).await;
    let leaf_2500: String = one(&s, &format!("{leaf_of}2500")).await;
    assert_eq!(leaf_7, "\"m a\"");
    assert!(leaf_2500 == "m_b0" || leaf_2500 == "m_b1", "{leaf_2500}");
    s.batch_execute("DELETE FROM m WHERE id IN (7, 2500) OR id BETWEEN 2001 AND 2020").await.unwrap();
    let conflicts0: i64 = one(&s, "SELECT conflicts FROM pgsub.stat_subscription WHERE subname = 'c'").await;
    // A single UPDATE and a single DELETE of missing rows.
    p.batch_execute("UPDATE m SET v = 'changed' WHERE id = 2500").await.unwrap();
    p.batch_execute("DELETE FROM m WHERE id = 7").await.unwrap();
    wait_log(&nodes, &format!("did not find row to be updated in replication target relation \"public\".\"m\"'s partition public.{leaf_2500}")).await;
    wait_log(
        &nodes,
        "did not find row to be deleted in replication target relation \"public\".\"m\"'s partition public.\"m a\"",
    )
    .await;
    // A run of deletes (applied as one batched statement) with 20 rows missing in both leaves
    // of the hash partitioned m_b.
    p.batch_execute("DELETE FROM m WHERE id BETWEEN 2001 AND 2100").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM m WHERE id BETWEEN 2001 AND 2100", "0", WAIT).await;
    let log = nodes.subscriber.log();
    for leaf in ["m_b0", "m_b1"] {
        assert!(
            log.contains(&format!("did not find row to be deleted in replication target relation \"public\".\"m\"'s partition public.{leaf}")),
            "batched DELETE names {leaf}:\n{log}"
        );
    }
    let conflicts: i64 = one(&s, "SELECT conflicts FROM pgsub.stat_subscription WHERE subname = 'c'").await;
    assert_eq!(conflicts - conflicts0, 22, "one conflict per missing row");
    // The publisher now deletes the row whose update found nothing: both nodes converge.
    p.batch_execute("DELETE FROM m WHERE id = 2500").await.unwrap();
    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn skipping_a_transaction_that_failed_at_prepare_clears_skip_lsn() {
    let nodes = TwoNodes::start_with(
        ClusterOpts::publisher().with_conf("max_prepared_transactions = 10"),
        ClusterOpts::subscriber().with_conf("max_prepared_transactions = 10"),
    )
    .expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text)";
    p.batch_execute(ddl).await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t; INSERT INTO t VALUES (1, 'one')").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('tp', $1, ARRAY['pub'], two_phase => true)", &[&nodes.pub_conninfo()])
        .await
        .unwrap();
    wait_for_subscription_sync(&s, "tp", WAIT).await;
    wait_value(&s, "SELECT v FROM t WHERE id = 1", "one", WAIT).await;
    // A local row collides with the prepared transaction's insert.
    s.batch_execute("INSERT INTO t VALUES (5, 'local')").await.unwrap();
    p.batch_execute("BEGIN; INSERT INTO t VALUES (4, 'r4'), (5, 'r5'); PREPARE TRANSACTION 'gx';").await.unwrap();
    let err = wait_for_subscription_error(&s, "tp", &["duplicate key", "finished at"], WAIT).await;
    let lsn = err.split("finished at ").nth(1).expect("lsn").split_whitespace().next().unwrap();
    let lsn = lsn.trim_end_matches(|c: char| !c.is_ascii_hexdigit());
    s.execute("SELECT pgsub.skip_transaction('tp', $1::text::pg_lsn)", &[&lsn]).await.expect("skip");
    // The transaction is skipped: prepared locally with nothing in it, and the skip is done.
    wait_value(&s, "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'pgsub_%'", "1", WAIT).await;
    wait_value(
        &s,
        "SELECT coalesce(skip_lsn::text, 'cleared') FROM pgsub.subscription WHERE subname = 'tp'",
        "cleared",
        WAIT,
    )
    .await;
    assert!(one::<i64>(&s, "SELECT txns_skipped FROM pgsub.stat_subscription WHERE subname = 'tp'").await >= 1);
    // COMMIT PREPARED finds the (empty) local prepared transaction.
    p.batch_execute("COMMIT PREPARED 'gx'").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM pg_prepared_xacts", "0", WAIT).await;
    p.batch_execute("INSERT INTO t VALUES (6, 'after')").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 6", "after", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t WHERE id = 4").await, 0, "skipped transaction not applied");
    assert_eq!(one::<String>(&s, "SELECT v FROM t WHERE id = 5").await, "local");
    assert_eq!(one::<String>(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'tp'").await, "streaming");
    // The publisher brings the skipped rows to what the subscriber holds: both nodes converge.
    p.batch_execute("DELETE FROM t WHERE id = 4; UPDATE t SET v = 'local' WHERE id = 5").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t", "3", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}
