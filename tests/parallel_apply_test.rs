//! End-to-end: `streaming => 'parallel'` (issue 22, part 1). A large transaction the publisher
//! streams while it is still open is applied as it arrives by a parallel apply worker — its
//! rows are written (and locked) on the subscriber before the publisher commits — and becomes
//! visible when it commits, in commit order with the ordinary transactions the leader applies
//! meanwhile; aborted transactions and rolled-back subtransactions leave nothing; an error in
//! the parallel worker is the subscription's last_error with its context and the retry spills;
//! a deadlock between the leader and a parallel worker is detected; kill -9 of the parallel
//! worker or of the leader mid-stream loses and duplicates nothing; with no free worker a streamed
//! transaction is spilled; the apply worker asks a publisher left at the default
//! logical_decoding_work_mem to stream early (`pgsub.parallel_streaming_decoding_work_mem`).
use pgsub_tests::{
    assert_replicated_equal, one, wait_for, wait_for_subscription_error, wait_for_subscription_sync, wait_value,
    ClusterOpts, TwoNodes,
};
use std::time::Duration;
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(300);

fn nodes() -> TwoNodes {
    TwoNodes::start_with(
        ClusterOpts::publisher().with_conf("logical_decoding_work_mem = '64kB'"),
        ClusterOpts::subscriber().with_conf("deadlock_timeout = '200ms'"),
    )
    .expect("start")
}

/// Tables `big` (key) and `small` (key) and `trail` (no key: a duplicate would show) on both
/// nodes, published as `pub`, followed by subscription `pa` with streaming => 'parallel'.
async fn setup(nodes: &TwoNodes) -> (Client, Client) {
    let (p, s) = nodes.clients().await.expect("clients");
    let ddl = "CREATE TABLE big (id int PRIMARY KEY, u int, v text);
               CREATE TABLE small (id int PRIMARY KEY, v text);
               CREATE TABLE trail (n int, v text);
               ALTER TABLE trail REPLICA IDENTITY FULL;";
    p.batch_execute(ddl).await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE big, small, trail").await.unwrap();
    s.execute(
        "SELECT pgsub.create_subscription('pa', $1, ARRAY['pub'], streaming => 'parallel')",
        &[&nodes.pub_conninfo()],
    )
    .await
    .expect("create");
    wait_for_subscription_sync(&s, "pa", WAIT).await;
    (p, s)
}

/// Pids of the subscriber's parallel apply workers.
async fn parallel_pids(s: &Client) -> Vec<i32> {
    s.query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pgsub parallel apply worker' ORDER BY pid", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Waits until a parallel apply worker holds a lock on table `t` (it is writing rows of an open
/// transaction there); returns its pid.
async fn wait_parallel_writing(s: &Client, t: &str) -> i32 {
    let sql = format!(
        "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE a.backend_type = 'pgsub parallel apply worker' AND l.locktype = 'relation'
           AND l.relation = '{t}'::regclass AND l.mode = 'RowExclusiveLock' LIMIT 1"
    );
    wait_for(&format!("a parallel apply worker writing {t}"), WAIT, || async {
        Ok(s.query_opt(&sql, &[]).await.map_err(|e| e.to_string())?.map(|r| r.get::<_, i32>(0)))
    })
    .await
    .expect("parallel apply worker")
}

#[tokio::test(flavor = "current_thread")]
async fn streamed_transactions_are_applied_in_parallel_and_commit_in_order() {
    let mut nodes = nodes();
    let (p, s) = setup(&nodes).await;
    let leader: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'pa'").await;
    let p2 = nodes.publisher.client("postgres").await.unwrap();

    // Transaction A: 100k rows, a rolled-back subtransaction, a released one, still open.
    p.batch_execute(
        "BEGIN;
         INSERT INTO big SELECT g, g, md5(g::text) FROM generate_series(1, 50000) g;
         SAVEPOINT s1;
         INSERT INTO big SELECT g, g, 'rolled back' FROM generate_series(50001, 60000) g;
         ROLLBACK TO SAVEPOINT s1;
         SAVEPOINT s2;
         INSERT INTO big SELECT g, g, md5(g::text) FROM generate_series(60001, 100000) g;
         RELEASE SAVEPOINT s2;
         INSERT INTO trail VALUES (1, 'in A');",
    )
    .await
    .unwrap();
    // A's changes are applied before it commits: a parallel worker writes big.
    let pa = wait_parallel_writing(&s, "big").await;
    assert_ne!(pa, leader);
    // Each worker a row of pgsub.stat_subscription_workers, as native's pg_stat_subscription.
    let workers: String = one(
        &s,
        "SELECT string_agg(format('%s %s %s', worker_type, pid, coalesce(leader_pid::text, '-')), ', ' \
                           ORDER BY worker_type) FROM pgsub.stat_subscription_workers WHERE subname = 'pa'",
    )
    .await;
    assert_eq!(workers, format!("apply {leader} -, parallel apply {pa} {leader}"));
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM big").await, 0, "not visible before the commit");
    let tmp = nodes.subscriber.data_dir().join("base/pgsql_tmp");
    let spilled: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(spilled.iter().all(|f| !f.contains("pgsub")), "nothing spilled: {spilled:?}");
    assert_eq!(
        one::<i32>(&s, "SELECT parallel_apply_workers FROM pgsub.stat_subscription WHERE subname = 'pa'").await,
        1
    );
    // Between the pieces of A the parallel worker waits for the leader's stream lock, as
    // designed: not a `lock_wait` of health (it was one, naming the leader as the holder).
    let waiting =
        format!("SELECT (count(*) > 0)::text FROM pg_locks WHERE pid = {pa} AND NOT granted AND locktype = 'advisory'");
    wait_value(&s, &waiting, "true", WAIT).await;
    let waits = "SELECT count(*) FROM pgsub.check_health(lock_wait => '0') WHERE problem = 'lock_wait'";
    assert_eq!(one::<i64>(&s, waits).await, 0, "the parallel worker's wait for the leader is no problem");

    // Ordinary transactions committed meanwhile are applied by the leader and visible at once.
    p2.batch_execute("INSERT INTO small VALUES (1, 'between'); INSERT INTO trail VALUES (2, 'small')").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM small", "1", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM big").await, 0);

    // Transaction B (another session, interleaved with A): streamed too, then rolled back.
    p2.batch_execute(
        "BEGIN; INSERT INTO big SELECT g, g, 'aborted' FROM generate_series(200001, 260000) g;
         INSERT INTO trail VALUES (3, 'aborted')",
    )
    .await
    .unwrap();
    p.batch_execute("INSERT INTO big SELECT g, g, md5(g::text) FROM generate_series(100001, 120000) g").await.unwrap();
    p2.batch_execute("ROLLBACK").await.unwrap();
    p.batch_execute("COMMIT").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM big", "110000", WAIT).await;
    let ok: bool = one(&s, "SELECT bool_and(v = md5(id::text)) AND bool_and(id <= 50000 OR id > 60000) FROM big").await;
    assert!(ok, "A's rows, without its rolled-back subtransaction or B's rows");
    // Counted once each: A's 110000 + 1 rows and the leader's 2, not the 10000 rows of A's
    // rolled-back subtransaction nor B's.
    wait_value(&s, "SELECT inserts::text FROM pgsub.stat_subscription WHERE subname = 'pa'", "110003", WAIT).await;
    let txns: i64 = one(&s, "SELECT parallel_txns FROM pgsub.stat_subscription WHERE subname = 'pa'").await;
    assert!(txns >= 1, "parallel_txns {txns}");
    assert_eq!(one::<i32>(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'pa'").await, leader);

    // Exactly once across a restart: the subscriber restarts, nothing is applied twice.
    p.batch_execute("INSERT INTO trail VALUES (4, 'after')").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM trail", "3", WAIT).await;
    drop(s);
    nodes.subscriber.restart().expect("restart");
    let s = nodes.subscriber.client("postgres").await.unwrap();
    p.batch_execute("INSERT INTO trail VALUES (5, 'after restart')").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM trail", "4", WAIT).await;
    // parallel_txns is kept across a clean restart like the other counters (it started from 0).
    let kept: i64 = one(&s, "SELECT parallel_txns FROM pgsub.stat_subscription WHERE subname = 'pa'").await;
    assert_eq!(kept, txns, "parallel_txns after a clean restart");
    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_error_in_the_parallel_worker_is_the_subscriptions_and_the_retry_spills() {
    let nodes = nodes();
    let (p, s) = setup(&nodes).await;
    // A local row the streamed transaction will collide with.
    s.batch_execute("INSERT INTO big VALUES (40000, 0, 'local')").await.unwrap();
    p.batch_execute(
        "BEGIN; INSERT INTO big SELECT g, g, md5(g::text) FROM generate_series(1, 80000) g;
         INSERT INTO trail VALUES (1, 'x'); COMMIT",
    )
    .await
    .unwrap();
    // The parallel worker's COPY batch meets the unique violation the fast way; the retry
    // applies the transaction by spilling, row by row, and reports the conflict with its rows.
    let err = wait_for_subscription_error(
        &s,
        "pa",
        &["conflict=insert_exists", "Key (id)=(40000)", "processing remote data for subscription \"pa\""],
        WAIT,
    )
    .await;
    eprintln!("last_error: {err}");
    assert!(err.contains("public.big"), "the message names the relation: {err}");
    // The retry applies the transaction by spilling; with the local row gone it goes through.
    s.batch_execute("DELETE FROM big WHERE id = 40000").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM big", "80000", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// A unique violation in a parallel worker under `disable_on_error` (found by a DBA's run of
/// the 18 documentation): the subscription was disabled on the parallel worker's plain
/// duplicate-key error, with no conflict reported or recorded. As natively, the conflict is
/// reported (its type, key and rows, in `pgsub.conflict_log`), counted once, then the
/// subscription is disabled.
#[tokio::test(flavor = "current_thread")]
async fn a_unique_violation_in_a_parallel_worker_is_reported_as_a_conflict_before_disabling() {
    let nodes = nodes();
    let (p, s) = setup(&nodes).await;
    s.batch_execute(
        "SELECT pgsub.alter_subscription_options('pa', disable_on_error => true); INSERT INTO big VALUES (40000, 0, 'local')",
    )
    .await
    .unwrap();
    wait_for_subscription_sync(&s, "pa", WAIT).await;
    p.batch_execute("BEGIN; INSERT INTO big SELECT g, g, md5(g::text) FROM generate_series(1, 80000) g; COMMIT")
        .await
        .unwrap();
    wait_value(&s, "SELECT enabled::text FROM pgsub.subscription WHERE subname = 'pa'", "false", WAIT).await;
    let err: String = one(&s, "SELECT last_error FROM pgsub.stat_subscription WHERE subname = 'pa'").await;
    assert!(err.contains("conflict=insert_exists") && err.contains("Key (id)=(40000)"), "{err}");
    let logged: String =
        one(&s, "SELECT string_agg(conflict_type || ' ' || key::text, ',') FROM pgsub.conflict_log").await;
    assert_eq!(logged, r#"insert_exists {"id": 40000}"#);
    let counts: String = one(
        &s,
        "SELECT apply_error_count || ' ' || confl_insert_exists FROM pgsub.stat_subscription WHERE subname = 'pa'",
    )
    .await;
    assert_eq!(counts, "1 1", "one error, one conflict");
    s.batch_execute("DELETE FROM big WHERE id = 40000; SELECT pgsub.enable_subscription('pa')").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM big", "80000", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// A column type changed on the publisher after the leader chose binary by itself (`binary`
/// unset): a streamed transaction applied by a parallel worker used to read the new type's binary
/// values as the local type's (real's bytes as integers: 2 became 1073741824), with no error. The
/// parallel worker checks each relation as the leader does: the transaction is applied again in
/// text, not counted as an error.
#[tokio::test(flavor = "current_thread")]
async fn a_column_type_changed_on_the_publisher_is_not_read_in_binary_by_a_parallel_worker() {
    let nodes = nodes();
    let (p, s) = setup(&nodes).await;
    let binary: bool = one(&s, "SELECT binary_in_use FROM pgsub.stat_subscription WHERE subname = 'pa'").await;
    assert!(binary, "the automatic choice is binary (same major version, built-in types)");
    p.batch_execute(
        "INSERT INTO big VALUES (1, 1, 'one');
         ALTER TABLE big ALTER COLUMN u TYPE real;
         INSERT INTO big SELECT g, g, md5(g::text) FROM generate_series(2, 20000) g;
         INSERT INTO small VALUES (1, 'after')",
    )
    .await
    .unwrap();
    wait_value(&s, "SELECT v FROM small WHERE id = 1", "after", WAIT).await;
    let wrong: i64 = one(&s, "SELECT count(*) FROM big WHERE u <> id").await;
    assert_eq!(wrong, 0, "values read in the wrong type");
    assert!(nodes.subscriber.log_contains(
        "binary transfer cannot carry relation \"public.big\": column \"u\" has type real on the publisher and integer here"
    ));
    let errors: i64 = one(&s, "SELECT error_count FROM pgsub.stat_subscription WHERE subname = 'pa'").await;
    assert_eq!(errors, 0, "the binary attempt is not an error");
    s.batch_execute("ALTER TABLE big ALTER COLUMN u TYPE real").await.unwrap();
    p.batch_execute("UPDATE big SET u = u + 0.5 WHERE id <= 10").await.unwrap();
    wait_value(&s, "SELECT u::text FROM big WHERE id = 10", "10.5", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// A parallel apply worker whose COMMIT fails (a deferred constraint trigger of the subscriber)
/// under `disable_on_error`: the leader, which had handed the replication origin to the worker,
/// disables the subscription without naming that origin in its own commit (which crashed the
/// leader, and with it the whole server, in a loop); after the fix the transaction applies.
#[tokio::test(flavor = "current_thread")]
async fn a_parallel_worker_failing_at_commit_disables_the_subscription_cleanly() {
    let nodes = nodes();
    let (p, s) = setup(&nodes).await;
    s.batch_execute(
        "CREATE FUNCTION no_boom() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.v = 'boom' THEN RAISE EXCEPTION 'boom at commit for %', NEW.id; END IF; RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER no_boom AFTER INSERT ON big DEFERRABLE INITIALLY DEFERRED
           FOR EACH ROW EXECUTE FUNCTION no_boom();
         ALTER TABLE big ENABLE ALWAYS TRIGGER no_boom;
         SELECT pgsub.alter_subscription_options('pa', disable_on_error => true);",
    )
    .await
    .unwrap();
    wait_for_subscription_sync(&s, "pa", WAIT).await;
    p.batch_execute(
        "BEGIN; INSERT INTO big SELECT g, g, 'x' FROM generate_series(1, 20000) g;
         INSERT INTO big VALUES (0, 0, 'boom'); COMMIT",
    )
    .await
    .unwrap();
    wait_value(&s, "SELECT enabled::text FROM pgsub.subscription WHERE subname = 'pa'", "false", WAIT).await;
    let err: String = one(&s, "SELECT last_error FROM pgsub.stat_subscription WHERE subname = 'pa'").await;
    assert!(err.contains("boom at commit for 0"), "{err}");
    assert!(err.contains("during message type \"STREAM COMMIT\""), "native's name of the message: {err}");
    let log = nodes.subscriber.log();
    assert!(!log.contains("terminated by signal"), "no process crashed:\n{log}");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM big").await, 0, "nothing of the failed transaction");
    s.batch_execute("ALTER TABLE big DISABLE TRIGGER no_boom; SELECT pgsub.enable_subscription('pa')").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM big", "20001", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// The leader waits for a row the parallel worker's open transaction inserted (a unique index
/// only the subscriber has), while the worker waits for the leader's next block: the deadlock
/// detector sees the cycle through the stream lock and ends it with an error; once the
/// publisher rolls its transaction back everything applies.
#[tokio::test(flavor = "current_thread")]
async fn a_deadlock_between_leader_and_parallel_worker_is_detected() {
    let nodes = nodes();
    let (p, s) = setup(&nodes).await;
    s.batch_execute("CREATE UNIQUE INDEX big_u ON big (u)").await.unwrap();
    let p2 = nodes.publisher.client("postgres").await.unwrap();
    p.batch_execute("BEGIN; INSERT INTO big SELECT g, g, md5(g::text) FROM generate_series(1, 50000) g").await.unwrap();
    wait_parallel_writing(&s, "big").await;
    // Wait until the worker has applied u = 1 (its transaction is the one holding it).
    p2.batch_execute("INSERT INTO big VALUES (100001, 1, 'same u')").await.unwrap();
    let err = wait_for_subscription_error(&s, "pa", &["deadlock detected"], WAIT).await;
    eprintln!("last_error: {err}");
    p.batch_execute("ROLLBACK").await.unwrap();
    p2.batch_execute("INSERT INTO small VALUES (1, 'after')").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM small", "1", WAIT).await;
    wait_value(&s, "SELECT string_agg(id::text, ',') FROM big", "100001", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// kill -9 of the parallel worker, then of the leader, while a streamed transaction is half
/// applied: the server restarts, the transaction is sent again and applied once.
#[tokio::test(flavor = "current_thread")]
async fn kill_9_of_the_parallel_worker_or_the_leader_mid_stream_is_exactly_once() {
    let nodes = nodes();
    let (p, mut s) = setup(&nodes).await;
    for (round, victim) in ["parallel worker", "leader"].into_iter().enumerate() {
        let base = round as i32 * 100000;
        p.batch_execute(&format!(
            "BEGIN; INSERT INTO big SELECT g, g, md5(g::text) FROM generate_series({}, {}) g;
             INSERT INTO trail SELECT g, 'killed' FROM generate_series(1, 1000) g",
            base + 1,
            base + 60000
        ))
        .await
        .unwrap();
        let pa = wait_parallel_writing(&s, "big").await;
        let leader: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'pa'").await;
        let pid = if victim == "leader" { leader } else { pa };
        eprintln!("kill -9 of the {victim} ({pid})");
        nodes.subscriber.kill9_child(pid, WAIT).await.expect("kill -9");
        // More of the transaction after the crash, then the commit.
        p.batch_execute(&format!(
            "INSERT INTO big SELECT g, g, md5(g::text) FROM generate_series({}, {}) g; COMMIT",
            base + 60001,
            base + 80000
        ))
        .await
        .unwrap();
        s = nodes.subscriber.client("postgres").await.unwrap();
        let want = ((round + 1) * 80000).to_string();
        wait_value(&s, "SELECT count(*)::text FROM big", &want, WAIT).await;
        let trail = ((round + 1) * 1000).to_string();
        assert_eq!(one::<i64>(&s, "SELECT count(*) FROM trail").await.to_string(), trail, "no duplicate");
        assert!(parallel_pids(&s).await.len() <= 2);
    }
    assert_replicated_equal(&p, &s).await;
}

/// With `pgsub.max_parallel_apply_workers_per_subscription = 1`, a second streamed transaction
/// open at the same time as the first finds no free worker: it is spilled (a spill file shows)
/// and applied at its commit, while the first is applied in parallel; both are exact.
#[tokio::test(flavor = "current_thread")]
async fn with_no_free_worker_a_streamed_transaction_is_spilled() {
    let nodes = nodes();
    let (p, s) = setup(&nodes).await;
    s.batch_execute("ALTER SYSTEM SET pgsub.max_parallel_apply_workers_per_subscription = 1").await.unwrap();
    // A spilled transaction goes to a file past pgsub.work_mem.
    s.batch_execute("ALTER SYSTEM SET pgsub.work_mem = '64kB'").await.unwrap();
    s.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let p2 = nodes.publisher.client("postgres").await.unwrap();
    p.batch_execute("BEGIN; INSERT INTO big SELECT g, g, md5(g::text) FROM generate_series(1, 40000) g").await.unwrap();
    wait_parallel_writing(&s, "big").await;
    p2.batch_execute("BEGIN; INSERT INTO big SELECT g, g, md5(g::text) FROM generate_series(100001, 140000) g")
        .await
        .unwrap();
    // The second transaction's changes go to a spill file of this subscription.
    let tmp = nodes.subscriber.data_dir().join("base/pgsql_tmp");
    wait_for("a spill file of the second transaction", WAIT, || async {
        let spilled = std::fs::read_dir(&tmp)
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("pgsql_tmp_pgsub_")))
            .unwrap_or(false);
        Ok(spilled.then_some(()))
    })
    .await
    .expect("spill file");
    assert_eq!(
        one::<i32>(&s, "SELECT parallel_apply_workers FROM pgsub.stat_subscription WHERE subname = 'pa'").await,
        1
    );
    p2.batch_execute("COMMIT").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM big", "40000", WAIT).await;
    p.batch_execute("COMMIT").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM big", "80000", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// The publisher's streamed-transaction count (its `pg_stat_replication_slots` of slot `pa`).
async fn stream_txns(p: &Client) -> i64 {
    one(p, "SELECT coalesce(sum(stream_txns), 0)::int8 FROM pg_stat_replication_slots WHERE slot_name = 'pa'").await
}

/// A publisher left at its default `logical_decoding_work_mem` (64MB) would send a transaction of
/// a few megabytes whole at its commit: with `streaming => 'parallel'` the apply worker asks its
/// walsender for `pgsub.parallel_streaming_decoding_work_mem` (here 256kB), so the open
/// transaction is streamed and written by a parallel apply worker before it commits; with the
/// setting at -1 the publisher's own setting holds and the same transaction is not streamed.
#[tokio::test(flavor = "current_thread")]
async fn the_publisher_is_asked_to_stream_early_for_parallel_apply() {
    let nodes = TwoNodes::start_with(
        ClusterOpts::publisher(),
        ClusterOpts::subscriber().with_conf("pgsub.parallel_streaming_decoding_work_mem = '256kB'"),
    )
    .expect("start");
    let (p, s) = setup(&nodes).await;
    assert_eq!(one::<String>(&p, "SHOW logical_decoding_work_mem").await, "64MB", "the publisher's default");
    let txn = |from: i32| {
        format!("BEGIN; INSERT INTO big SELECT g, g, md5(g::text) FROM generate_series({from}, {}) g", from + 19999)
    };
    let before = stream_txns(&p).await;
    p.batch_execute(&txn(1)).await.unwrap();
    wait_parallel_writing(&s, "big").await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM big").await, 0, "not visible before its commit");
    p.batch_execute("COMMIT").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM big", "20000", WAIT).await;
    assert!(stream_txns(&p).await > before, "the transaction was streamed");

    // -1: the publisher's 64MB holds again once the worker reconnects.
    s.batch_execute("ALTER SYSTEM SET pgsub.parallel_streaming_decoding_work_mem = -1").await.unwrap();
    s.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    s.batch_execute("SELECT pgsub.disable_subscription('pa')").await.unwrap();
    wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'pa'", "disabled", WAIT).await;
    s.batch_execute("SELECT pgsub.enable_subscription('pa')").await.unwrap();
    wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'pa'", "streaming", WAIT).await;
    let before = stream_txns(&p).await;
    p.batch_execute(&format!("{}; COMMIT", txn(100001))).await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM big", "40000", WAIT).await;
    assert_eq!(stream_txns(&p).await, before, "sent whole at its commit, not streamed");
    assert_replicated_equal(&p, &s).await;
}

/// A parallel apply worker stopped between transactions (a DBA's pg_terminate_backend) leaves
/// `parallel_apply_workers` at once, and the next streamed transaction gets a new worker.
#[tokio::test(flavor = "current_thread")]
async fn a_parallel_worker_stopped_between_transactions_is_not_counted_and_is_replaced() {
    let nodes = nodes();
    let (p, s) = setup(&nodes).await;
    let count = "SELECT parallel_apply_workers::text FROM pgsub.stat_subscription WHERE subname = 'pa'";
    let txn = |from: i32| {
        format!("INSERT INTO big SELECT g, g, md5(g::text) FROM generate_series({from}, {}) g", from + 29999)
    };
    p.batch_execute(&format!("BEGIN; {}", txn(1))).await.unwrap();
    let first = wait_parallel_writing(&s, "big").await;
    p.batch_execute("COMMIT").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM big", "30000", WAIT).await;
    wait_value(&s, count, "1", WAIT).await;
    s.execute("SELECT pg_terminate_backend($1)", &[&first]).await.unwrap();
    wait_value(&s, count, "0", WAIT).await;
    p.batch_execute(&format!("BEGIN; {}", txn(30001))).await.unwrap();
    let second = wait_parallel_writing(&s, "big").await;
    assert_ne!(second, first, "a new worker");
    p.batch_execute("COMMIT").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM big", "60000", WAIT).await;
    wait_value(&s, count, "1", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// A conflict met by a parallel apply worker, which applies a streamed transaction before its
/// commit time and finish LSN are known: its `pgsub.conflict_log` row gets both at Stream Commit
/// (the publisher's commit LSN of that transaction), never 2000-01-01 or 0/0.
#[tokio::test(flavor = "current_thread")]
async fn a_conflict_in_a_parallel_worker_gets_the_commit_time_and_finish_lsn() {
    let nodes = nodes();
    let (p, s) = setup(&nodes).await;
    p.batch_execute("INSERT INTO small VALUES (1, 'only on the publisher')").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM small", "1", WAIT).await;
    s.batch_execute("DELETE FROM small WHERE id = 1").await.unwrap();
    // A large transaction (streamed to a parallel worker) that also updates the missing row;
    // its xid and the WAL positions around its commit record.
    p.batch_execute("BEGIN; INSERT INTO big SELECT g, g, md5(g::text) FROM generate_series(1, 50000) g").await.unwrap();
    wait_parallel_writing(&s, "big").await;
    p.batch_execute(
        "UPDATE small SET v = 'updated' WHERE id = 1;
         INSERT INTO big SELECT g, g, md5(g::text) FROM generate_series(50001, 60000) g;",
    )
    .await
    .unwrap();
    let xid: i64 = one(&p, "SELECT txid_current()").await;
    let before: String = one(&p, "SELECT pg_current_wal_insert_lsn()::text").await;
    p.batch_execute("COMMIT").await.unwrap();
    let after: String = one(&p, "SELECT pg_current_wal_insert_lsn()::text").await;
    wait_value(&s, "SELECT count(*)::text FROM big", "60000", WAIT).await;
    wait_value(&s, "SELECT parallel_txns >= 1 FROM pgsub.stat_subscription WHERE subname = 'pa'", "t", WAIT).await;
    let row = s
        .query_one(
            "SELECT remote_xid, remote_commit_time > now() - interval '5 min' AND remote_commit_time <= now(),
                    remote_finish_lsn >= $1::text::pg_lsn AND remote_finish_lsn <= $2::text::pg_lsn,
                    remote_finish_lsn::text
             FROM pgsub.conflict_log WHERE conflict_type = 'update_missing' AND relation LIKE '%small%'",
            &[&before, &after],
        )
        .await
        .expect("one update_missing record");
    let (rxid, recent, within, lsn): (Option<i64>, Option<bool>, Option<bool>, Option<String>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(rxid, Some(xid), "the remote transaction's xid");
    assert_eq!(recent, Some(true), "remote_commit_time is the transaction's commit time");
    assert_eq!(within, Some(true), "remote_finish_lsn {lsn:?} is the commit record's, between {before} and {after}");
    // The row goes on the publisher too (a delete_missing here): the tables converge.
    p.batch_execute("DELETE FROM small WHERE id = 1").await.unwrap();
    assert_replicated_equal(&p, &s).await;
}
