//! End-to-end: what happens when the subscriber's rows are not what the publisher's changes
//! expect (the "Conflicts" section of PostgreSQL's logical replication chapter): an UPDATE or
//! DELETE whose row is missing is skipped, counted and logged naming the leaf partition where
//! the row was looked for (a row a replica trigger kept from changing is not missing); a transaction that fails at PREPARE (two-phase) is skipped with
//! `skip_transaction` and the pending skip is then cleared, as native clears `subskiplsn`.
use pgsub_tests::{
    assert_replicated_equal, one, set_sync_hold, wait_for_subscription_error, wait_for_subscription_sync, wait_value,
    ClusterOpts, TwoNodes,
};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

/// Waits for a line of the subscriber's log (the failing test prints the whole log).
async fn wait_log(nodes: &TwoNodes, what: &str) {
    nodes.subscriber.wait_for_log(what, WAIT).await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "current_thread")]
async fn conflicts_in_a_partitioned_target_name_the_leaf_and_its_index() {
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
    wait_log(&nodes, &format!("conflict detected on relation \"public.{leaf_2500}\": conflict=update_missing")).await;
    wait_log(&nodes, "conflict detected on relation \"public.\"m a\"\": conflict=delete_missing").await;
    // A run of deletes (applied as one batched statement) with 20 rows missing in both leaves
    // of the hash partitioned m_b.
    p.batch_execute("DELETE FROM m WHERE id BETWEEN 2001 AND 2100").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM m WHERE id BETWEEN 2001 AND 2100", "0", WAIT).await;
    let log = nodes.subscriber.log();
    for leaf in ["m_b0", "m_b1"] {
        assert!(
            log.contains(&format!("conflict detected on relation \"public.{leaf}\": conflict=delete_missing")),
            "batched DELETE names {leaf}:\n{log}"
        );
    }
    let conflicts: i64 = one(&s, "SELECT conflicts FROM pgsub.stat_subscription WHERE subname = 'c'").await;
    assert_eq!(conflicts - conflicts0, 22, "one conflict per missing row");
    // Each is recorded in pgsub.conflict_log too, skipped, naming the leaf and the key.
    let logged: i64 = one(&s, "SELECT count(*) FROM pgsub.conflict_log WHERE resolution = 'skip'").await;
    assert_eq!(logged, 22);
    let in_leaf: i64 = one(
        &s,
        "SELECT count(*) FROM pgsub.conflict_log WHERE conflict_type = 'delete_missing' \
         AND relation LIKE 'public.m_b_' AND key ->> 'id' LIKE '20__'",
    )
    .await;
    assert_eq!(in_leaf, 20, "the batched run's rows, in their leaves");
    // A remote INSERT whose key a local row of a leaf holds: named by that leaf's own index,
    // as natively (it named the partitioned table's index, m_pkey).
    s.batch_execute("INSERT INTO m VALUES (5000, 'local')").await.unwrap();
    let leaf_5000: String = one(&s, &format!("{leaf_of}5000")).await;
    p.batch_execute("INSERT INTO m VALUES (5000, 'remote')").await.unwrap();
    wait_log(&nodes, &format!("conflict detected on relation \"public.{leaf_5000}\": conflict=insert_exists")).await;
    wait_log(&nodes, &format!("Key already exists in unique index \"{leaf_5000}_pkey\"")).await;
    assert!(!nodes.subscriber.log_contains("unique index \"m_pkey\""), "the partitioned index is not named");
    s.batch_execute("DELETE FROM m WHERE id = 5000").await.unwrap();
    wait_value(&s, "SELECT v FROM m WHERE id = 5000", "remote", WAIT).await;
    // An UPDATE that moves a row to another leaf onto a key a local row holds there:
    // `insert_exists` on that leaf's index, as natively (native moves it by a DELETE and an
    // INSERT; it was `update_exists`).
    s.batch_execute("INSERT INTO m VALUES (6000, 'local')").await.unwrap();
    let leaf_6000: String = one(&s, &format!("{leaf_of}6000")).await;
    let inserts_exist = nodes.subscriber.log().matches("conflict=insert_exists").count();
    p.batch_execute("UPDATE m SET id = 6000 WHERE id = 8").await.unwrap();
    wait_log(&nodes, &format!("Key already exists in unique index \"{leaf_6000}_pkey\"")).await;
    let log = nodes.subscriber.log();
    assert!(log.matches("conflict=insert_exists").count() > inserts_exist, "insert_exists for the move");
    assert!(!log.contains("conflict=update_exists"), "not update_exists");
    s.batch_execute("DELETE FROM m WHERE id = 6000").await.unwrap();
    wait_value(&s, "SELECT v FROM m WHERE id = 6000", "v8", WAIT).await;
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
    // The first attempt's unique violation, then at once the row-by-row retry's conflict, whose
    // detail says the transaction was prepared (not committed) at that time.
    let err = wait_for_subscription_error(&s, "tp", &["(id)=(5)", "finished at", ", prepared at "], WAIT).await;
    assert!(!err.contains("committed at"), "the conflict's wording: {err}");
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

/// The counters of one subscription, as `stat_subscription` shows them, in one line.
async fn conflict_counters(s: &tokio_postgres::Client) -> String {
    one(
        s,
        "SELECT format('conflicts=%s insert_exists=%s update_exists=%s update_missing=%s delete_missing=%s \
                        errors=%s apply_errors=%s sync_errors=%s',
                       conflicts, confl_insert_exists, confl_update_exists, confl_update_missing,
                       confl_delete_missing, error_count, apply_error_count, sync_error_count)
         FROM pgsub.stat_subscription WHERE subname = 'k'",
    )
    .await
}

/// Conflicts counted by PostgreSQL 18's type names — single and batched UPDATEs and DELETEs of
/// missing rows exactly, a unique violation applying an INSERT (`insert_exists`) or an UPDATE
/// (`update_exists`) once per attempt that reports it (the row-by-row retry that follows the
/// first, fast attempt at once) — and errors as apply errors; all of it survives a clean
/// restart of the subscriber (as native statistics do; `last_error` too), `reset_stats` zeroes it and stamps
/// `stats_reset`, and after a crash the counters start from zero (as native ones do).
#[tokio::test(flavor = "current_thread")]
async fn conflicts_by_type_survive_a_clean_restart_and_reset() {
    let mut nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text)";
    p.batch_execute(&format!(
        "{ddl}; CREATE PUBLICATION pub FOR TABLE t; INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g"
    ))
    .await
    .unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    s.execute("SELECT pgsub.create_subscription('k', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "k", WAIT).await;
    assert_eq!(
        conflict_counters(&s).await,
        "conflicts=0 insert_exists=0 update_exists=0 update_missing=0 delete_missing=0 errors=0 apply_errors=0 sync_errors=0"
    );

    // Missing rows: one single UPDATE, a run of 19 UPDATEs (batched), a run of 10 DELETEs.
    s.batch_execute("DELETE FROM t WHERE id <= 30").await.unwrap();
    p.batch_execute("UPDATE t SET v = 'one' WHERE id = 1").await.unwrap();
    p.batch_execute("UPDATE t SET v = 'run' WHERE id BETWEEN 2 AND 20").await.unwrap();
    p.batch_execute("DELETE FROM t WHERE id BETWEEN 21 AND 30").await.unwrap();
    p.batch_execute("UPDATE t SET v = 'marker' WHERE id = 100").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 100", "marker", WAIT).await;
    // Each missing row is logged with the key looked for, single or batched.
    let log = nodes.subscriber.log();
    for (op, id) in [("update", 1), ("update", 2), ("update", 20), ("delete", 21), ("delete", 30)] {
        let line = format!("conflict detected on relation \"public.t\": conflict={op}_missing");
        assert!(log.contains(&line), "logged: {line}");
        // An UPDATE's new row too, as native 18 shows it.
        let detail = match (op, id) {
            ("update", 1) => "Remote row (1, one); replica identity (id)=(1).".to_string(),
            ("update", _) => format!("Remote row ({id}, run); replica identity (id)=({id})."),
            _ => format!("Replica identity (id)=({id})."),
        };
        assert!(log.contains(&detail), "row {id} is logged with {detail}:\n{log}");
    }
    assert_eq!(
        one::<String>(
            &s,
            "SELECT string_agg(conflict_type || ' ' || coalesce(remote_row->>'v', '-'), ',' ORDER BY conflict_type) \
             FROM pgsub.conflict_log WHERE key->>'id' IN ('1', '21')"
        )
        .await,
        "delete_missing -,update_missing one",
        "pgsub.conflict_log has an update_missing's remote row"
    );
    assert_eq!(
        conflict_counters(&s).await,
        "conflicts=30 insert_exists=0 update_exists=0 update_missing=20 delete_missing=10 errors=0 apply_errors=0 sync_errors=0"
    );

    // insert_exists: a local row holds the key the publisher inserts; apply stops (native's
    // behaviour) until it is removed.
    s.batch_execute("INSERT INTO t VALUES (1000, 'local')").await.unwrap();
    p.batch_execute("INSERT INTO t VALUES (1000, 'remote')").await.unwrap();
    // The first attempt meets the unique violation; its row-by-row retry reports the conflict.
    wait_for_subscription_error(&s, "k", &["conflict=insert_exists"], WAIT).await;
    s.batch_execute("DELETE FROM t WHERE id = 1000").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 1000", "remote", WAIT).await;
    // update_exists: the publisher moves a row onto a key only the subscriber has.
    s.batch_execute("INSERT INTO t VALUES (2000, 'local')").await.unwrap();
    p.batch_execute("UPDATE t SET id = 2000 WHERE id = 99").await.unwrap();
    wait_for_subscription_error(&s, "k", &["conflict=update_exists"], WAIT).await;
    s.batch_execute("DELETE FROM t WHERE id = 2000").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM t WHERE id = 2000", "1", WAIT).await;
    let counts: (i64, i64, i64, i64, i64) = {
        let r = s
            .query_one(
                "SELECT confl_insert_exists, confl_update_exists, conflicts, error_count, apply_error_count \
                 FROM pgsub.stat_subscription WHERE subname = 'k'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
    };
    let (ins, upd, all, errors, apply_errors) = counts;
    assert!(ins >= 1 && upd >= 1, "each unique violation counted (once per attempt): {counts:?}");
    assert_eq!(all, 30 + ins + upd, "conflicts is the sum of the types");
    assert_eq!(errors, apply_errors, "every error here is the apply worker's");
    assert!(errors >= ins + upd, "each conflict that stopped apply is an error too");

    // A clean restart keeps every counter, and the last error with its time.
    let before = conflict_counters(&s).await;
    let last_error = "SELECT last_error || ' at ' || last_error_at FROM pgsub.stat_subscription WHERE subname = 'k'";
    let error_before: String = one(&s, last_error).await;
    assert!(error_before.contains("update_exists"), "the last error is the update_exists one: {error_before}");
    drop(s);
    nodes.subscriber.restart().expect("restart");
    let s = nodes.subscriber.client("postgres").await.unwrap();
    wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'k'", "streaming", WAIT).await;
    assert_eq!(conflict_counters(&s).await, before, "the counters survived a clean restart");
    assert_eq!(one::<String>(&s, last_error).await, error_before, "the last error survived a clean restart");

    // reset_stats zeroes them and says when.
    s.batch_execute("SELECT pgsub.reset_stats('k')").await.unwrap();
    assert_eq!(
        conflict_counters(&s).await,
        "conflicts=0 insert_exists=0 update_exists=0 update_missing=0 delete_missing=0 errors=0 apply_errors=0 sync_errors=0"
    );
    let reset: bool =
        one(&s, "SELECT stats_reset > now() - interval '1 minute' FROM pgsub.stat_subscription WHERE subname = 'k'")
            .await;
    assert!(reset, "stats_reset is set");

    // After a crash the counters start from zero, as native statistics do.
    s.batch_execute("DELETE FROM t WHERE id = 50").await.unwrap();
    p.batch_execute("DELETE FROM t WHERE id = 50").await.unwrap();
    wait_value(&s, "SELECT confl_delete_missing::text FROM pgsub.stat_subscription WHERE subname = 'k'", "1", WAIT)
        .await;
    // Durable first (pgsub commits with synchronous_commit = off): the crash must not make the
    // worker apply that transaction again, which would count its conflict again.
    s.batch_execute("CHECKPOINT").await.unwrap();
    drop(s);
    nodes.subscriber.kill9().expect("kill -9");
    nodes.subscriber.start_again().expect("start after the crash");
    let s = nodes.subscriber.client("postgres").await.unwrap();
    wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'k'", "streaming", WAIT).await;
    assert_eq!(
        conflict_counters(&s).await,
        "conflicts=0 insert_exists=0 update_exists=0 update_missing=0 delete_missing=0 errors=0 apply_errors=0 sync_errors=0"
    );

    // The rows the subscriber lost on purpose go on the publisher too: both converge.
    p.batch_execute("DELETE FROM t WHERE id <= 30").await.unwrap();
    assert_replicated_equal(&p, &s).await;
}

/// A missing row of a REPLICA IDENTITY FULL table without a key here is logged as native 18 logs
/// it: the UPDATE's new row, then `replica identity full` and the values looked for (a NULL as
/// `null`); a DELETE's values alone.
#[tokio::test(flavor = "current_thread")]
async fn a_missing_row_under_replica_identity_full_is_logged_with_its_values() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    let ddl = "CREATE TABLE f (a int, b text)";
    p.batch_execute(&format!(
        "{ddl}; ALTER TABLE f REPLICA IDENTITY FULL; CREATE PUBLICATION pub FOR TABLE f;
         INSERT INTO f VALUES (25, 'old'), (26, NULL), (27, 'x'), (28, repeat('z', 70))"
    ))
    .await
    .unwrap();
    s.batch_execute(ddl).await.unwrap();
    s.execute("SELECT pgsub.create_subscription('f', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "f", WAIT).await;
    s.batch_execute("DELETE FROM f WHERE a IN (25, 26, 28)").await.unwrap();
    p.batch_execute(
        "UPDATE f SET a = 125 WHERE a = 25; DELETE FROM f WHERE a = 26; DELETE FROM f WHERE a = 28;
         UPDATE f SET b = 'y' WHERE a = 27",
    )
    .await
    .unwrap();
    wait_value(&s, "SELECT b FROM f WHERE a = 27", "y", WAIT).await;
    let log = nodes.subscriber.log();
    // A long value cut as PostgreSQL cuts it (64 bytes and `...`).
    let long = format!("Replica identity full (28, {}...).", "z".repeat(64));
    for detail in
        ["Remote row (125, old); replica identity full (25, old).", "Replica identity full (26, null).", &long]
    {
        assert!(log.contains(detail), "logged: {detail}\n{log}");
    }
    // The row the UPDATE missed, put back by hand: equal again.
    s.batch_execute("INSERT INTO f VALUES (125, 'old')").await.unwrap();
    assert_replicated_equal(&p, &s).await;
}

/// A conflict's rows are shown as PostgreSQL shows a row in its messages
/// (`ExecBuildSlotValueDescription`): values separated by `, `, unquoted, NULL as `null`, each cut
/// to 64 bytes on a whole character and ended with `...`. pgsub showed `ROW(…)::text`
/// (`(1,"a b, c",,…)`), every value whole.
#[tokio::test(flavor = "current_thread")]
async fn a_conflicts_rows_are_shown_as_postgresql_shows_a_row() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    let ddl = "CREATE TABLE r (id int PRIMARY KEY, v text, n int, w text, b bool, ip inet, c char(3))";
    p.batch_execute(&format!("{ddl}; CREATE PUBLICATION pub FOR TABLE r")).await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    s.execute("SELECT pgsub.create_subscription('r', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "r", WAIT).await;
    // 40 two-byte characters (80 bytes) here; 70 one-byte ones there.
    s.batch_execute("INSERT INTO r VALUES (1, 'a b, c', NULL, repeat('é', 40), true, '10.0.0.1', 'x')").await.unwrap();
    p.batch_execute("INSERT INTO r VALUES (1, '(x)', 5, repeat('x', 70), false, '10.0.0.0/8', 'yz')").await.unwrap();
    let err = wait_for_subscription_error(&s, "r", &["conflict=insert_exists"], WAIT).await;
    // Each value by its type's output: `t`, not `true`; `10.0.0.1`, not `10.0.0.1/32`; char(3)
    // padded.
    let local = format!("existing local row (1, a b, c, null, {}..., t, 10.0.0.1, x  )", "é".repeat(32));
    let remote = format!("remote row (1, (x), 5, {}..., f, 10.0.0.0/8, yz )", "x".repeat(64));
    assert!(err.contains(&format!("Key (id)=(1); {local}; {remote}.")), "{err}");
    // The logged rows keep every value whole.
    let logged = "SELECT count(*) > 0 FROM pgsub.conflict_log WHERE conflict_type = 'insert_exists'";
    wait_value(&s, logged, "t", WAIT).await;
    let logged: String = one(
        &s,
        "SELECT (local_row->>'w') || '|' || (remote_row->>'w') FROM pgsub.conflict_log
          WHERE conflict_type = 'insert_exists' LIMIT 1",
    )
    .await;
    assert_eq!(logged, format!("{}|{}", "é".repeat(40), "x".repeat(70)));
    s.batch_execute("DELETE FROM r").await.unwrap();
    wait_value(&s, "SELECT n::text FROM r WHERE id = 1", "5", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// `skip_transaction` as natively: a position before the subscription's origin (already
/// applied) is refused; a position that the next applied transaction does not finish at is
/// cleared at it with a WARNING, and that transaction is applied, not skipped; a transaction
/// that changes nothing here (only a table still being synchronized) leaves it.
#[tokio::test(flavor = "current_thread")]
async fn a_skip_lsn_that_matches_nothing_is_refused_or_cleared() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE t2 (id int PRIMARY KEY)";
    p.batch_execute(&format!("{ddl}; CREATE PUBLICATION pub FOR TABLE t")).await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    s.execute("SELECT pgsub.create_subscription('s', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "s", WAIT).await;
    p.batch_execute("INSERT INTO t VALUES (1, 'a')").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t", "1", WAIT).await;

    // t2 joins and its sync worker stays after the copy: a transaction that changes only t2
    // changes nothing for the apply worker, and a skip_lsn it does not match stays.
    set_sync_hold(&nodes.subscriber, &s, "copied").await;
    p.batch_execute("ALTER PUBLICATION pub ADD TABLE t2").await.unwrap();
    s.batch_execute("SELECT pgsub.refresh_subscription('s')").await.unwrap();
    wait_value(&s, "SELECT sync_state FROM pgsub.stat_subscription_table WHERE relid = 't2'::regclass", "copied", WAIT)
        .await;
    s.execute("SELECT pgsub.skip_transaction('s', 'FE/0')", &[]).await.unwrap();
    let applied: i64 = one(&s, "SELECT txns_applied FROM pgsub.stat_subscription WHERE subname = 's'").await;
    p.batch_execute("INSERT INTO t2 VALUES (1)").await.unwrap();
    wait_value(
        &s,
        &format!("SELECT txns_applied > {applied} FROM pgsub.stat_subscription WHERE subname = 's'"),
        "t",
        WAIT,
    )
    .await;
    let skip: Option<String> = one(&s, "SELECT skip_lsn::text FROM pgsub.subscription WHERE subname = 's'").await;
    assert_eq!(skip.as_deref(), Some("FE/0"), "a transaction that changed nothing here keeps skip_lsn");
    set_sync_hold(&nodes.subscriber, &s, "").await;
    wait_for_subscription_sync(&s, "s", WAIT).await;
    s.execute("SELECT pgsub.skip_transaction('s', NULL)", &[]).await.unwrap();

    let e = s.execute("SELECT pgsub.skip_transaction('s', '0/100')", &[]).await.unwrap_err();
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "22023", "{db:?}");
    assert!(db.message().contains("must be greater than origin LSN"), "{}", db.message());
    let skip: Option<String> = one(&s, "SELECT skip_lsn::text FROM pgsub.subscription WHERE subname = 's'").await;
    assert_eq!(skip, None, "a refused skip_lsn is not recorded");

    // Far ahead: no transaction finishes there.
    s.execute("SELECT pgsub.skip_transaction('s', 'FF/0')", &[]).await.unwrap();
    p.batch_execute("INSERT INTO t VALUES (2, 'b')").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t", "2", WAIT).await;
    wait_value(&s, "SELECT skip_lsn IS NULL FROM pgsub.subscription WHERE subname = 's'", "t", WAIT).await;
    wait_log(&nodes, "skip_lsn of the subscription cleared").await;
    let skipped: i64 = one(&s, "SELECT txns_skipped FROM pgsub.stat_subscription WHERE subname = 's'").await;
    assert_eq!(skipped, 0, "the transaction was applied, not skipped");
    assert_replicated_equal(&p, &s).await;
}

/// The finish LSN `last_error` shows is taken by `skip_transaction` also when it is exactly the
/// origin's position: the failing transaction's commit record starts where the last applied one
/// ends whenever another transaction commits while it is open. Native refuses only positions
/// before the origin; pgsub refused this one, so the shown LSN could not be skipped.
#[tokio::test(flavor = "current_thread")]
async fn the_finish_lsn_shown_is_skipped_also_at_the_origins_position() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let p2 = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    p.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    s.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text CHECK (v <> 'bad'))").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('s', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "s", WAIT).await;
    // The failing transaction is open while another one commits, then commits right after it.
    p2.batch_execute("BEGIN; INSERT INTO t VALUES (1, 'bad')").await.unwrap();
    p.batch_execute("INSERT INTO t VALUES (2, 'other')").await.unwrap();
    p2.batch_execute("COMMIT").await.unwrap();
    let err = wait_for_subscription_error(&s, "s", &["t_v_check", "finished at"], WAIT).await;
    let lsn = err.rsplit("finished at ").next().unwrap_or_default().split_whitespace().next().unwrap_or_default();
    let lsn = lsn.trim_end_matches(|c: char| !c.is_ascii_hexdigit()).to_string();
    let origin: String = one(
        &s,
        "SELECT remote_lsn::text FROM pg_replication_origin_status o JOIN pgsub.subscription s ON o.external_id = 'pgsub_' || s.subid",
    )
    .await;
    eprintln!("finish LSN {lsn}, origin {origin}");
    s.execute("SELECT pgsub.skip_transaction('s', $1::text::pg_lsn)", &[&lsn]).await.expect("the shown LSN is taken");
    p.batch_execute("INSERT INTO t VALUES (3, 'after')").await.unwrap();
    wait_value(&s, "SELECT string_agg(id::text, ',' ORDER BY id) FROM t", "2,3", WAIT).await;
    let skipped: i64 = one(&s, "SELECT txns_skipped FROM pgsub.stat_subscription WHERE subname = 's'").await;
    assert_eq!(skipped, 1);
    // The skipped row goes on the publisher too: both converge.
    p.batch_execute("DELETE FROM t WHERE id = 1").await.unwrap();
    assert_replicated_equal(&p, &s).await;
}

/// A replica trigger that skips a change — a BEFORE ROW trigger returning NULL — is not a
/// conflict: the row is there, so nothing is counted or logged, as natively; single and batched
/// UPDATEs and DELETEs alike. A row that really is missing among them still is one.
#[tokio::test(flavor = "current_thread")]
async fn a_trigger_that_skips_a_change_is_not_a_missing_row() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    p.batch_execute(
        "CREATE TABLE k (id int PRIMARY KEY, v text);
         INSERT INTO k SELECT g, 'v' FROM generate_series(1, 100) g;
         CREATE TABLE ki (id int PRIMARY KEY, n int, v text);
         INSERT INTO ki VALUES (1, 1, 'v'), (2, 2, 'v');
         CREATE PUBLICATION pub FOR TABLE k, ki;",
    )
    .await
    .unwrap();
    s.batch_execute(
        "CREATE TABLE k (id int PRIMARY KEY, v text);
         CREATE TABLE ki (id int PRIMARY KEY, n int GENERATED ALWAYS AS IDENTITY, v text);
         CREATE FUNCTION keep_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF OLD.v = 'frozen' THEN RETURN NULL; END IF;
             IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER keep BEFORE UPDATE OR DELETE ON k FOR EACH ROW EXECUTE FUNCTION keep_frozen();
         ALTER TABLE k ENABLE REPLICA TRIGGER keep;
         CREATE TRIGGER keep BEFORE UPDATE OR DELETE ON ki FOR EACH ROW EXECUTE FUNCTION keep_frozen();
         ALTER TABLE ki ENABLE REPLICA TRIGGER keep;",
    )
    .await
    .unwrap();
    s.execute("SELECT pgsub.create_subscription('k', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "k", WAIT).await;
    assert_replicated_equal(&p, &s).await;
    // Every tenth row is frozen here; row 55 is gone.
    s.batch_execute("UPDATE k SET v = 'frozen' WHERE id % 10 = 0; DELETE FROM k WHERE id = 55").await.unwrap();
    // An UPDATE that changes a GENERATED ALWAYS identity value here replaces the row (DELETE and
    // INSERT): the trigger keeps the frozen one from being deleted, which is not a missing row.
    s.batch_execute("UPDATE ki SET v = 'frozen' WHERE id = 1").await.unwrap();
    p.batch_execute("UPDATE ki SET n = n + 100").await.unwrap();

    // One UPDATE and one DELETE of a frozen row, each a transaction of its own (applied one by one).
    p.batch_execute("UPDATE k SET v = 'single' WHERE id = 10").await.unwrap();
    p.batch_execute("DELETE FROM k WHERE id = 20").await.unwrap();
    // Runs of them (applied as batched statements): frozen rows 30, 40, 50 and 60–100; 55 missing.
    p.batch_execute("UPDATE k SET v = 'batch' WHERE id BETWEEN 21 AND 50").await.unwrap();
    p.batch_execute("DELETE FROM k WHERE id BETWEEN 51 AND 100").await.unwrap();
    p.batch_execute("INSERT INTO k VALUES (1000, 'marker')").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM k WHERE id = 1000", "1", WAIT).await;

    let rows = "SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM k WHERE id % 10 = 0 OR id IN (21, 51, 55)";
    assert_eq!(
        one::<String>(&s, rows).await,
        "10:frozen,20:frozen,21:batch,30:frozen,40:frozen,50:frozen,60:frozen,70:frozen,80:frozen,90:frozen,\
         100:frozen,1000:marker",
        "the trigger kept the frozen rows; the others changed"
    );
    assert_eq!(
        one::<String>(&s, "SELECT string_agg(id || ':' || n || ':' || v, ',' ORDER BY id) FROM ki").await,
        "1:1:frozen,2:102:v",
        "the frozen row kept, the other replaced"
    );
    let counters: String = one(
        &s,
        "SELECT format('conflicts=%s update_missing=%s delete_missing=%s', conflicts, confl_update_missing, \
         confl_delete_missing) FROM pgsub.stat_subscription WHERE subname = 'k'",
    )
    .await;
    assert_eq!(counters, "conflicts=1 update_missing=0 delete_missing=1", "only row 55 is missing");
    let logged: String = one(
        &s,
        "SELECT string_agg(conflict_type || ' ' || relation || ' ' || key::text, ', ') FROM pgsub.conflict_log",
    )
    .await;
    assert_eq!(logged, "delete_missing public.k {\"id\": \"55\"}");
    let log = nodes.subscriber.log();
    assert!(!log.contains("conflict=update_missing"), "no UPDATE was missing a row:\n{log}");
    assert_eq!(log.matches("conflict=delete_missing").count(), 1, "one DELETE was:\n{log}");

    // Without the trigger the tables converge again.
    s.batch_execute("ALTER TABLE k DISABLE TRIGGER keep; ALTER TABLE ki DISABLE TRIGGER keep").await.unwrap();
    p.batch_execute("TRUNCATE k, ki; INSERT INTO k SELECT g, 'end' FROM generate_series(1, 20) g").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM k", "20", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// A unique violation is reported by its type at the first attempt, as natively: an INSERT that
/// collides in three unique indexes (applied as a batch, which finds the violation the fast way)
/// counts one `multiple_unique_conflicts` and no `insert_exists`, is logged and recorded with the
/// local rows, and `disable_on_error` disables the subscription on that report — the row-by-row
/// retry that finds it follows at once, without the backoff.
#[tokio::test(flavor = "current_thread")]
async fn a_unique_violation_is_reported_by_its_type_at_the_first_attempt() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    let ddl = "CREATE TABLE u (a int PRIMARY KEY, b int UNIQUE, c int UNIQUE)";
    p.batch_execute(&format!("{ddl}; CREATE PUBLICATION pub FOR TABLE u")).await.unwrap();
    s.batch_execute(&format!("{ddl}; INSERT INTO u VALUES (2, 2, 2), (3, 3, 3), (4, 4, 4)")).await.unwrap();
    s.execute(
        "SELECT pgsub.create_subscription('u', $1, ARRAY['pub'], copy_data => false, disable_on_error => true)",
        &[&nodes.pub_conninfo()],
    )
    .await
    .unwrap();
    wait_for_subscription_sync(&s, "u", WAIT).await;
    // Rows around it make the transaction's inserts one COPY batch.
    p.batch_execute("INSERT INTO u SELECT g, g, g FROM generate_series(10, 30) g UNION ALL SELECT 2, 3, 4")
        .await
        .unwrap();
    wait_value(&s, "SELECT enabled::text FROM pgsub.subscription WHERE subname = 'u'", "false", WAIT).await;
    let counters: String = one(
        &s,
        "SELECT format('conflicts=%s insert_exists=%s multiple=%s', conflicts, confl_insert_exists, \
         confl_multiple_unique_conflicts) FROM pgsub.stat_subscription WHERE subname = 'u'",
    )
    .await;
    assert_eq!(counters, "conflicts=1 insert_exists=0 multiple=1", "one conflict, by its type");
    // One error, as natively: the batch's plain unique violation, retried at once row by row,
    // is not an error of its own.
    assert_eq!(one::<i64>(&s, "SELECT apply_error_count FROM pgsub.stat_subscription WHERE subname = 'u'").await, 1);
    assert_eq!(
        one::<String>(&s, "SELECT string_agg(conflict_type, ',') FROM pgsub.conflict_log").await,
        "multiple_unique_conflicts"
    );
    let last: String = one(&s, "SELECT last_error FROM pgsub.stat_subscription WHERE subname = 'u'").await;
    assert!(last.contains("conflict=multiple_unique_conflicts"), "last_error is the conflict: {last}");
    wait_log(&nodes, "subscription \"u\" has been disabled because of an error").await;
    // The ERROR line itself comes after that line.
    wait_log(&nodes, "conflict=multiple_unique_conflicts").await;
    // Each colliding row its pair of lines, as native 18 logs them (PostgreSQL's TAP test
    // 035_conflicts expects this shape; pgsub joined the indexes, keys and rows on two lines).
    let log = nodes.subscriber.log();
    let mut at = log.find("conflict=multiple_unique_conflicts").expect("the conflict's line");
    for (index, key, row) in
        [("u_pkey", "(a)=(2)", "(2, 2, 2)"), ("u_b_key", "(b)=(3)", "(3, 3, 3)"), ("u_c_key", "(c)=(4)", "(4, 4, 4)")]
    {
        for want in [
            format!("Key already exists in unique index \"{index}\", modified in transaction "),
            format!("Key {key}; existing local row {row}; remote row (2, 3, 4)."),
        ] {
            let found =
                log[at..].find(&want).unwrap_or_else(|| panic!("{want:?} after the conflict's line:\n{}", &log[at..]));
            at += found + want.len();
        }
    }
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM u WHERE a >= 10").await, 0, "nothing of it applied");

    s.batch_execute("DELETE FROM u; SELECT pgsub.enable_subscription('u')").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM u", "22", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// A unique index on an expression (`lower(b)`) is a unique key like a column one, as natively:
/// an INSERT whose expression value a local row holds is an `insert_exists` conflict naming the
/// index and the local row, and `apply_remote` resolves it (the local row takes the remote
/// values) where the plain unique violation would stop apply under every policy.
#[tokio::test(flavor = "current_thread")]
async fn a_unique_expression_index_is_a_unique_key() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    p.batch_execute("CREATE TABLE ex (a int PRIMARY KEY, b text); CREATE PUBLICATION pub FOR TABLE ex").await.unwrap();
    s.batch_execute(
        "CREATE TABLE ex (a int PRIMARY KEY, b text); CREATE UNIQUE INDEX ex_lower_b ON ex (lower(b));
         INSERT INTO ex VALUES (100, 'ABC')",
    )
    .await
    .unwrap();
    s.execute("SELECT pgsub.create_subscription('x', $1, ARRAY['pub'], copy_data => false)", &[&nodes.pub_conninfo()])
        .await
        .unwrap();
    wait_for_subscription_sync(&s, "x", WAIT).await;
    p.batch_execute("INSERT INTO ex VALUES (1, 'abc'); INSERT INTO ex VALUES (2, 'other')").await.unwrap();
    let err = wait_for_subscription_error(&s, "x", &["conflict=insert_exists"], WAIT).await;
    assert!(err.contains("\"ex_lower_b\""), "the index is named: {err}");
    assert!(err.contains("(100, ABC)"), "the local row is shown: {err}");
    let logged: String =
        one(&s, "SELECT string_agg(DISTINCT conflict_type || ' ' || (local_row ->> 'a'), ',') FROM pgsub.conflict_log")
            .await;
    assert_eq!(logged, "insert_exists 100");
    s.batch_execute("SELECT pgsub.alter_subscription_options('x', conflict_resolution => 'apply_remote')")
        .await
        .unwrap();
    wait_value(&s, "SELECT string_agg(a || b, ',' ORDER BY a) FROM ex", "1abc,2other", WAIT).await;
    assert_eq!(
        one::<i64>(&s, "SELECT count(*) FROM pgsub.conflict_log WHERE resolution = 'apply_remote'").await,
        1,
        "resolved once, by the policy"
    );
    assert_replicated_equal(&p, &s).await;
}

/// A local row last written under a replication origin dropped since — a row the initial copy
/// wrote, under its table synchronization's origin — is "modified by a non-existent origin" in a
/// conflict's detail, as native 18 says; it was "by origin 2", a number another origin may take.
#[tokio::test(flavor = "current_thread")]
async fn a_row_of_a_dropped_origin_is_said_to_be_of_a_non_existent_one() {
    let nodes = TwoNodes::start_with(
        ClusterOpts::publisher(),
        ClusterOpts::subscriber().with_conf("track_commit_timestamp = on"),
    )
    .expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    p.batch_execute(
        "CREATE TABLE d (a int PRIMARY KEY, b text); INSERT INTO d VALUES (1, 'x'); CREATE PUBLICATION pub FOR TABLE d",
    )
    .await
    .unwrap();
    // A unique key only the subscriber has: the publisher's next row collides with the copied one.
    s.batch_execute("CREATE TABLE d (a int PRIMARY KEY, b text UNIQUE)").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('d', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "d", WAIT).await;
    let origins: i64 = one(&s, "SELECT count(*) FROM pg_replication_origin WHERE roname LIKE '%sync%'").await;
    assert_eq!(origins, 0, "the copy's origin is dropped once the table is ready");
    p.batch_execute("INSERT INTO d VALUES (2, 'x')").await.unwrap();
    let err = wait_for_subscription_error(&s, "d", &["conflict=insert_exists"], WAIT).await;
    assert!(err.contains("modified by a non-existent origin in transaction "), "{err}");
    s.batch_execute("UPDATE d SET b = 'local' WHERE a = 1").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM d", "2", WAIT).await;
    // The publisher takes the subscriber's fix: equal again.
    p.batch_execute("UPDATE d SET b = 'local' WHERE a = 1").await.unwrap();
    wait_value(&s, "SELECT txns_applied >= 2 FROM pgsub.stat_subscription WHERE subname = 'd'", "t", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// An operator's fix is not held back by the error backoff: with `pgsub.retry_interval` at ten
/// minutes, a worker stopped by a conflict and waiting out its backoff takes `skip_transaction`
/// at once (native takes `ALTER SUBSCRIPTION … SKIP` at its next attempt, 5 s later by default).
#[tokio::test(flavor = "current_thread")]
async fn skip_transaction_does_not_wait_for_the_error_backoff() {
    let nodes = TwoNodes::start_with(
        ClusterOpts::publisher(),
        ClusterOpts::subscriber().with_conf("pgsub.retry_interval = '10min'"),
    )
    .expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text)";
    p.batch_execute(&format!("{ddl}; CREATE PUBLICATION pub FOR TABLE t")).await.unwrap();
    s.batch_execute(&format!("{ddl}; INSERT INTO t VALUES (1, 'local')")).await.unwrap();
    s.execute("SELECT pgsub.create_subscription('b', $1, ARRAY['pub'], copy_data => false)", &[&nodes.pub_conninfo()])
        .await
        .unwrap();
    wait_for_subscription_sync(&s, "b", WAIT).await;
    p.batch_execute("INSERT INTO t VALUES (1, 'remote')").await.unwrap();
    let err = wait_for_subscription_error(&s, "b", &["conflict=insert_exists", "finished at"], WAIT).await;
    // The row-by-row attempt failed: the next start waits ten minutes.
    wait_value(
        &s,
        "SELECT status || ' ' || (pid IS NULL) FROM pgsub.stat_subscription WHERE subname = 'b'",
        "error true",
        WAIT,
    )
    .await;
    let lsn = err.split("finished at ").nth(1).expect("lsn").split_whitespace().next().unwrap();
    let lsn = lsn.trim_end_matches(|c: char| !c.is_ascii_hexdigit());
    s.execute("SELECT pgsub.skip_transaction('b', $1::text::pg_lsn)", &[&lsn]).await.expect("skip");
    p.batch_execute("INSERT INTO t VALUES (2, 'after')").await.unwrap();
    // Well within the ten minutes.
    wait_value(&s, "SELECT count(*) FROM t WHERE id = 2", "1", Duration::from_secs(60)).await;
    assert_eq!(one::<i64>(&s, "SELECT txns_skipped FROM pgsub.stat_subscription WHERE subname = 'b'").await, 1);
    // The skipped row stays local on purpose; the rest is equal.
    s.batch_execute("UPDATE t SET v = 'remote' WHERE id = 1").await.unwrap();
    assert_replicated_equal(&p, &s).await;
}

/// The same for a change of publications: a worker stopped by what its publications send (here a
/// column the subscriber does not have) and waiting out a ten-minute backoff starts again at
/// once when the publications are changed to ones it can apply.
#[tokio::test(flavor = "current_thread")]
async fn changing_publications_does_not_wait_for_the_error_backoff() {
    let nodes = TwoNodes::start_with(
        ClusterOpts::publisher(),
        ClusterOpts::subscriber().with_conf("pgsub.retry_interval = '10min'"),
    )
    .expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    p.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text, extra text);
         CREATE PUBLICATION wide FOR TABLE t; CREATE PUBLICATION narrow FOR TABLE t (id, v)",
    )
    .await
    .unwrap();
    s.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('b', $1, ARRAY['wide'], copy_data => false)", &[&nodes.pub_conninfo()])
        .await
        .unwrap();
    wait_for_subscription_sync(&s, "b", WAIT).await;
    p.batch_execute("INSERT INTO t VALUES (1, 'one', 'not here')").await.unwrap();
    wait_for_subscription_error(&s, "b", &["\"extra\""], WAIT).await;
    wait_value(
        &s,
        "SELECT status || ' ' || (pid IS NULL) FROM pgsub.stat_subscription WHERE subname = 'b'",
        "error true",
        WAIT,
    )
    .await;
    s.execute("SELECT pgsub.alter_subscription_publications('b', ARRAY['narrow'], copy_data => false)", &[])
        .await
        .expect("alter publications");
    // Well within the ten minutes.
    wait_value(&s, "SELECT v FROM t WHERE id = 1", "one", Duration::from_secs(60)).await;
    p.batch_execute("INSERT INTO t VALUES (2, 'two', 'x')").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 2", "two", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}
