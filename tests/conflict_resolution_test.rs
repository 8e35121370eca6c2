//! End-to-end: conflicts by PostgreSQL 18's types, resolved by the subscription's
//! `conflict_resolution` (src/worker/conflict/). Each type is provoked on purpose, under the
//! policies that decide it differently; each test checks the local row the policy promises, the
//! `confl_*` counter, the LOG line and the `pgsub.conflict_log` row (key, local and remote rows,
//! resolution, remote finish LSN). The bidirectional test runs two nodes that publish and
//! subscribe to each other (`origin => 'none'`) under `last_update_wins` with concurrent updates
//! of the same keys, and checks that they converge and that every local version overwritten by
//! the other node's is in the log.
use pgsub_tests::{
    assert_replicated_equal, assert_replicated_equal_except, one, query_text, wait_for, wait_for_subscription_error,
    wait_for_subscription_sync, wait_value, Cluster, ClusterOpts, TwoNodes,
};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

fn nodes() -> TwoNodes {
    TwoNodes::start_with(ClusterOpts::publisher(), ClusterOpts::subscriber().with_conf("track_commit_timestamp = on"))
        .expect("start")
}

/// Subscription `c` of publication `pub` under conflict policy `policy`, its tables synchronized.
async fn subscribe(nodes: &TwoNodes, s: &tokio_postgres::Client, policy: &str) {
    s.execute(
        "SELECT pgsub.create_subscription('c', $1, ARRAY['pub'], conflict_resolution => $2)",
        &[&nodes.pub_conninfo(), &policy],
    )
    .await
    .unwrap();
    wait_for_subscription_sync(s, "c", WAIT).await;
}

/// Changes the policy and waits until a worker started with it runs (the change restarts the
/// worker; until then the old one may still apply under the old policy).
async fn set_policy(s: &tokio_postgres::Client, policy: &str) {
    let current: String = one(s, "SELECT conflict_resolution FROM pgsub.subscription WHERE subname = 'c'").await;
    if current == policy {
        return;
    }
    let old: Option<i32> = one(s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'c'").await;
    s.execute("SELECT pgsub.alter_subscription_options('c', conflict_resolution => $1)", &[&policy]).await.unwrap();
    let sql = format!(
        "SELECT pid IS NOT NULL AND pid IS DISTINCT FROM {} AND status = 'streaming' \
         FROM pgsub.stat_subscription WHERE subname = 'c'",
        old.map_or("NULL".to_string(), |p| p.to_string())
    );
    wait_value(s, &sql, "t", WAIT).await;
}

async fn counter(s: &tokio_postgres::Client, col: &str) -> i64 {
    one(s, &format!("SELECT {col} FROM pgsub.stat_subscription WHERE subname = 'c'")).await
}

/// The newest conflict_log row of a type: (resolution, key, local row, remote row, finish LSN set).
async fn last_logged(s: &tokio_postgres::Client, ctype: &str) -> (String, String, String, String, bool) {
    let row = s
        .query_one(
            "SELECT resolution, coalesce(key::text, ''), coalesce(local_row::text, ''), coalesce(remote_row::text, ''), \
                    remote_finish_lsn IS NOT NULL AND remote_commit_time IS NOT NULL \
             FROM pgsub.conflict_log WHERE conflict_type = $1 ORDER BY id DESC LIMIT 1",
            &[&ctype],
        )
        .await
        .unwrap_or_else(|e| panic!("no {ctype} row in pgsub.conflict_log: {e}"));
    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
}

async fn wait_logged(s: &tokio_postgres::Client, ctype: &str, n: i64) {
    wait_value(
        s,
        &format!("SELECT count(*) >= {n} FROM pgsub.conflict_log WHERE conflict_type = '{ctype}'"),
        "t",
        WAIT,
    )
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn insert_exists_stops_apply_under_error_and_each_policy_decides_it() {
    let nodes = nodes();
    let (p, s) = nodes.clients().await.unwrap();
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text)";
    p.batch_execute(&format!("{ddl}; CREATE PUBLICATION pub FOR TABLE t")).await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    subscribe(&nodes, &s, "error").await;

    // error (the default): apply stops with the conflict, nothing of the transaction applied.
    s.batch_execute("INSERT INTO t VALUES (1, 'local')").await.unwrap();
    p.batch_execute("BEGIN; INSERT INTO t VALUES (100, 'before'); INSERT INTO t VALUES (1, 'remote'); COMMIT")
        .await
        .unwrap();
    let err = wait_for_subscription_error(&s, "c", &["conflict=insert_exists", "existing local row"], WAIT).await;
    assert!(
        err.contains("Key (id)=(1); existing local row (1, local); remote row (1, remote).")
            && err.contains("conflict detected on relation \"public.t\": conflict=insert_exists")
            && err.contains("Key already exists in unique index \"t_pkey\", modified locally in transaction"),
        "PostgreSQL 18's words: {err}"
    );
    assert!(err.contains("finishing at"), "the finish LSN is given: {err}");
    wait_logged(&s, "insert_exists", 1).await;
    let (res, key, local, remote, txn) = last_logged(&s, "insert_exists").await;
    assert_eq!(res, "error");
    assert_eq!(key, "{\"id\": 1}");
    assert!(local.contains("\"local\"") && remote.contains("\"remote\"") && txn, "{local} {remote}");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t WHERE id = 100").await, 0, "nothing of it applied");
    assert!(counter(&s, "confl_insert_exists").await >= 1);
    assert!(nodes.subscriber.log_contains("conflict detected on relation"));

    // keep_local: the transaction goes through, the local row stays.
    set_policy(&s, "keep_local").await;
    wait_value(&s, "SELECT count(*) FROM t WHERE id = 100", "1", WAIT).await;
    assert_eq!(one::<String>(&s, "SELECT v FROM t WHERE id = 1").await, "local");
    assert_eq!(last_logged(&s, "insert_exists").await.0, "keep_local");
    // Only the row that went in counts as inserted (the failed attempts counted nothing).
    wait_value(&s, "SELECT inserts::text FROM pgsub.stat_subscription WHERE subname = 'c'", "1", WAIT).await;

    // apply_remote: the remote row replaces the local one.
    s.batch_execute("INSERT INTO t VALUES (2, 'local')").await.unwrap();
    set_policy(&s, "apply_remote").await;
    p.batch_execute("INSERT INTO t VALUES (2, 'remote')").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 2", "remote", WAIT).await;
    let (res, _, local, remote, _) = last_logged(&s, "insert_exists").await;
    assert_eq!(res, "apply_remote");
    assert!(local.contains("\"local\"") && remote.contains("\"remote\""));

    // last_update_wins / first_update_wins compare commit times: a remote row committed before
    // the local one (the subscription disabled meanwhile) and one committed after it.
    for (policy, older_wins) in [("last_update_wins", false), ("first_update_wins", true)] {
        set_policy(&s, policy).await;
        let (a, b) = if older_wins { (5, 6) } else { (3, 4) };
        s.execute("SELECT pgsub.disable_subscription('c')", &[]).await.unwrap();
        wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'c'", "disabled", WAIT).await;
        p.execute("INSERT INTO t VALUES ($1, 'remote')", &[&a]).await.unwrap();
        s.execute("INSERT INTO t VALUES ($1, 'local'), ($2, 'local')", &[&a, &b]).await.unwrap();
        s.execute("SELECT pgsub.enable_subscription('c')", &[]).await.unwrap();
        wait_for_subscription_sync(&s, "c", WAIT).await;
        p.execute("INSERT INTO t VALUES ($1, 'remote')", &[&b]).await.unwrap();
        p.batch_execute("INSERT INTO t VALUES (1000, 'marker') ON CONFLICT (id) DO UPDATE SET v = t.v || '+'")
            .await
            .unwrap();
        let marker: String = one(&p, "SELECT v FROM t WHERE id = 1000").await;
        wait_value(&s, "SELECT v FROM t WHERE id = 1000", &marker, WAIT).await;
        let v_a: String = one(&s, &format!("SELECT v FROM t WHERE id = {a}")).await;
        let v_b: String = one(&s, &format!("SELECT v FROM t WHERE id = {b}")).await;
        if older_wins {
            assert_eq!((v_a.as_str(), v_b.as_str()), ("remote", "local"), "{policy}");
        } else {
            assert_eq!((v_a.as_str(), v_b.as_str()), ("local", "remote"), "{policy}");
        }
    }
    // Rows left different on purpose: the local versions kept by keep_local and the policies.
    assert_replicated_equal_except(&p, &s, None, &["t"]).await;
    pgsub_tests::assert_rows_equal(&p, &s, "SELECT * FROM t WHERE id >= 100 ORDER BY id", WAIT).await;
}

/// `apply_remote` on a table whose key here is `GENERATED ALWAYS AS IDENTITY` (a plain column on
/// the publisher): the colliding local row (same `u`, another id) becomes the remote row, its id
/// included — replaced, since UPDATE cannot set such a column — and the publisher's later changes
/// of the row find it. It kept its local id, and they were all `update_missing` from then on.
#[tokio::test(flavor = "current_thread")]
async fn apply_remote_takes_the_remote_key_into_a_generated_always_identity_column() {
    let nodes = nodes();
    let (p, s) = nodes.clients().await.unwrap();
    p.batch_execute("CREATE TABLE ar (id int PRIMARY KEY, u int UNIQUE, a text); CREATE PUBLICATION pub FOR TABLE ar")
        .await
        .unwrap();
    s.batch_execute(
        "CREATE TABLE ar (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, u int UNIQUE, a text, \
                          here text DEFAULT 'kept')",
    )
    .await
    .unwrap();
    subscribe(&nodes, &s, "error").await;
    set_policy(&s, "apply_remote").await;
    s.batch_execute("INSERT INTO ar (id, u, a, here) OVERRIDING SYSTEM VALUE VALUES (2, 20, 'local', 'mine')")
        .await
        .unwrap();
    p.batch_execute("INSERT INTO ar VALUES (9, 20, 'remote')").await.unwrap();
    wait_logged(&s, "insert_exists", 1).await;
    assert_eq!(last_logged(&s, "insert_exists").await.0, "apply_remote");
    assert_eq!(
        query_text(&s, "SELECT id, u, a, here FROM ar ORDER BY id").await.unwrap(),
        "9|20|remote|mine",
        "the local row became the remote one, id included, its own column kept"
    );
    p.batch_execute("UPDATE ar SET a = 'remote2' WHERE id = 9").await.unwrap();
    wait_value(&s, "SELECT a FROM ar WHERE id = 9", "remote2", WAIT).await;
    assert_eq!(counter(&s, "confl_update_missing").await, 0, "the later UPDATE found the row");
    assert_replicated_equal(&p, &s).await;
}

/// One local row holding the remote row's key in two unique indexes (the same user, by id and by
/// email): `multiple_unique_conflicts`, as native 18 names it, and under a policy that lets the
/// remote row win that one row becomes it. It was listed once per index and then deleted as "the
/// other" row: neither row was left.
#[tokio::test(flavor = "current_thread")]
async fn a_row_colliding_in_two_unique_indexes_is_replaced_not_lost() {
    let nodes = nodes();
    let (p, s) = nodes.clients().await.unwrap();
    let ddl = "CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE, name text)";
    p.batch_execute(&format!("{ddl}; CREATE PUBLICATION pub FOR TABLE users")).await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    subscribe(&nodes, &s, "error").await;
    set_policy(&s, "apply_remote").await;
    s.batch_execute("INSERT INTO users VALUES (1, 'a@x', 'local'), (3, 'c@x', 'local')").await.unwrap();
    p.batch_execute("INSERT INTO users VALUES (1, 'a@x', 'remote'), (2, 'b@x', 'remote2')").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM users WHERE id = 2", "1", WAIT).await;
    assert_eq!(
        one::<String>(&s, "SELECT name FROM users WHERE id = 1").await,
        "remote",
        "the local row became the remote one"
    );
    wait_logged(&s, "multiple_unique_conflicts", 1).await;
    assert_eq!(last_logged(&s, "multiple_unique_conflicts").await.0, "apply_remote");
    // The message names the key in each index, a pair of lines each, as native 18's.
    for key in ["(id)=(1)", "(email)=(a@x)"] {
        let line = format!("Key {key}; existing local row (1, a@x, local); remote row (1, a@x, remote).");
        assert!(nodes.subscriber.log_contains(&line), "{line} in the LOG line");
    }
    // Two different local rows, one per index: the first becomes the remote row, the other goes.
    s.batch_execute("INSERT INTO users VALUES (4, 'e@x', 'local4')").await.unwrap();
    p.batch_execute("INSERT INTO users VALUES (4, 'c@x', 'remote4')").await.unwrap();
    wait_value(&s, "SELECT name FROM users WHERE id = 4", "remote4", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM users WHERE email IN ('c@x', 'e@x')").await, 1);
    // The local row 3 (c@x) was the other one; the publisher never had it.
    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn update_and_delete_conflicts_by_type_and_policy() {
    let mut nodes = nodes();
    let (p, s) = nodes.clients().await.unwrap();
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, u int UNIQUE, w int UNIQUE, v text)";
    p.batch_execute(&format!(
        "{ddl}; CREATE PUBLICATION pub FOR TABLE t;
         INSERT INTO t SELECT g, g, g, 'v' || g FROM generate_series(1, 100) g"
    ))
    .await
    .unwrap();
    s.batch_execute(ddl).await.unwrap();
    subscribe(&nodes, &s, "apply_remote").await;
    assert_replicated_equal(&p, &s).await;

    // update_origin_differs: the row was last changed here. apply_remote (and error, natively)
    // apply the update; keep_local leaves the local row.
    s.batch_execute("UPDATE t SET v = 'local' WHERE id IN (1, 2)").await.unwrap();
    p.batch_execute("UPDATE t SET v = 'remote' WHERE id = 1").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 1", "remote", WAIT).await;
    let (res, _, local, remote, _) = last_logged(&s, "update_origin_differs").await;
    assert_eq!(res, "apply_remote");
    assert!(local.contains("\"local\"") && remote.contains("\"remote\""), "{local} {remote}");
    assert_eq!(counter(&s, "confl_update_origin_differs").await, 1);
    // In PostgreSQL 18's words.
    nodes.subscriber.wait_for_log("conflict=update_origin_differs", WAIT).await.unwrap_or_else(|e| panic!("{e}"));
    let log = nodes.subscriber.log();
    assert!(
        log.contains("DETAIL:  Updating the row that was modified locally in transaction"),
        "the LOG line's detail"
    );
    // Its second line as native 18's: the local row, the remote row, the replica identity.
    assert!(
        log.contains("Existing local row (1, 1, 1, local); remote row (1, 1, 1, remote); replica identity (id)=(1)."),
        "{log}"
    );
    set_policy(&s, "keep_local").await;
    p.batch_execute("UPDATE t SET v = 'remote' WHERE id = 2; UPDATE t SET v = 'marker' WHERE id = 99").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 99", "marker", WAIT).await;
    assert_eq!(one::<String>(&s, "SELECT v FROM t WHERE id = 2").await, "local");
    assert_eq!(last_logged(&s, "update_origin_differs").await.0, "keep_local");

    // delete_origin_differs under keep_local: the locally changed row stays; under apply_remote it goes.
    s.batch_execute("UPDATE t SET v = 'local' WHERE id IN (3, 4)").await.unwrap();
    p.batch_execute("DELETE FROM t WHERE id = 3; UPDATE t SET v = 'marker2' WHERE id = 99").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 99", "marker2", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t WHERE id = 3").await, 1);
    let (res, _, _, remote, _) = last_logged(&s, "delete_origin_differs").await;
    assert_eq!(res, "keep_local");
    // A DELETE sends its key only: the remote row is the key, not the other columns as NULLs.
    assert_eq!(remote, "{\"id\": 3}", "the remote row of a DELETE");
    set_policy(&s, "apply_remote").await;
    p.batch_execute("DELETE FROM t WHERE id = 4").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t WHERE id = 4", "0", WAIT).await;
    assert_eq!(counter(&s, "confl_delete_origin_differs").await, 2);
    // A DELETE has no remote row to show: the local row and the replica identity.
    assert!(
        nodes.subscriber.log().contains("Existing local row (4, 4, 4, local); replica identity (id)=(4)."),
        "the delete_origin_differs line"
    );

    // update_exists: the new value of u is held here by a row the publisher does not have.
    s.batch_execute("INSERT INTO t VALUES (500, 555, 500, 'local only')").await.unwrap();
    p.batch_execute("UPDATE t SET u = 555 WHERE id = 10").await.unwrap();
    wait_value(&s, "SELECT u FROM t WHERE id = 10", "555", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t WHERE id = 500").await, 0, "apply_remote removed it");
    let (res, key, local, _, _) = last_logged(&s, "update_exists").await;
    assert_eq!(res, "apply_remote");
    assert_eq!(key, "{\"u\": 555}");
    assert!(local.contains("local only"), "{local}");
    assert_eq!(counter(&s, "confl_update_exists").await, 1);
    // Native 18's words: the key that exists, the rows, and the replica identity of the row
    // being updated.
    let log = nodes.subscriber.log();
    assert!(log.contains("Key already exists in unique index \"t_u_key\", modified locally in transaction"), "{log}");
    assert!(
        log.contains(
            "Key (u)=(555); existing local row (500, 555, 500, local only); remote row (10, 555, 10, v10); replica identity (id)=(10)."
        ),
        "{log}"
    );

    // multiple_unique_conflicts: the remote INSERT collides with two local rows in two indexes.
    set_policy(&s, "keep_local").await;
    s.batch_execute("INSERT INTO t VALUES (600, 600, 600, 'a'), (601, 601, 666, 'b')").await.unwrap();
    p.batch_execute("INSERT INTO t VALUES (600, 601, 601, 'remote'); UPDATE t SET v = 'marker3' WHERE id = 99")
        .await
        .unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 99", "marker3", WAIT).await;
    assert_eq!(one::<String>(&s, "SELECT v FROM t WHERE id = 600").await, "a");
    let (res, _, local, _, _) = last_logged(&s, "multiple_unique_conflicts").await;
    assert_eq!(res, "keep_local");
    assert!(local.starts_with('[') && local.contains("\"b\""), "both local rows: {local}");
    assert_eq!(counter(&s, "confl_multiple_unique_conflicts").await, 1);

    // Missing rows (a batched run of deletes, 3 of them missing here) are recorded and skipped.
    s.batch_execute("DELETE FROM t WHERE id IN (50, 51, 52)").await.unwrap();
    p.batch_execute("DELETE FROM t WHERE id BETWEEN 40 AND 60; UPDATE t SET v = 'gone' WHERE id = 70").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 70", "gone", WAIT).await;
    wait_logged(&s, "delete_missing", 3).await;
    assert_eq!(last_logged(&s, "delete_missing").await.0, "skip");
    assert_eq!(counter(&s, "confl_delete_missing").await, 3);
    let total: i64 = one(&s, "SELECT count(*) FROM pgsub.conflict_log").await;
    assert_eq!(total, counter(&s, "conflicts").await, "one record per counted conflict");
    assert_replicated_equal_except(&p, &s, None, &["t"]).await;
    pgsub_tests::assert_rows_equal(&p, &s, "SELECT * FROM t WHERE id BETWEEN 5 AND 99 ORDER BY id", WAIT).await;

    // Every type's counter survives a clean restart and is zeroed by reset_stats.
    let all = "SELECT concat_ws(' ', conflicts, confl_insert_exists, confl_update_origin_differs, confl_update_exists, \
               confl_update_missing, confl_delete_origin_differs, confl_delete_missing, confl_multiple_unique_conflicts) \
               FROM pgsub.stat_subscription WHERE subname = 'c'";
    let before: String = one(&s, all).await;
    assert_eq!(before, "9 0 2 1 0 2 3 1", "conflicts, then each type in the view's order");
    drop(s);
    nodes.subscriber.restart().expect("clean restart");
    let s = nodes.subscriber.client("postgres").await.unwrap();
    assert_eq!(one::<String>(&s, all).await, before, "counters after a clean restart");
    s.execute("SELECT pgsub.reset_stats('c')", &[]).await.unwrap();
    assert_eq!(one::<String>(&s, all).await, "0 0 0 0 0 0 0 0");
}

/// Runs `sql` in one transaction committed with the commit time `ts`, under replication origin
/// `origin` (created if needed) — how a test sets a transaction's commit timestamp to the
/// microsecond (`pg_replication_origin_xact_setup`; logical decoding sends it as the commit time).
async fn commit_at(c: &tokio_postgres::Client, origin: &str, ts: &str, sql: &str) {
    c.execute("SELECT pg_replication_origin_create($1) WHERE pg_replication_origin_oid($1) IS NULL", &[&origin])
        .await
        .unwrap();
    c.execute("SELECT pg_replication_origin_session_setup($1)", &[&origin]).await.unwrap();
    c.batch_execute(&format!(
        "BEGIN; SELECT pg_replication_origin_xact_setup('0/1', '{ts}'); {sql}; COMMIT; \
         SELECT pg_replication_origin_session_reset()"
    ))
    .await
    .unwrap();
}

/// last_update_wins compares commit times to the microsecond: a local version 1 µs older than the
/// remote one loses and one 1 µs newer wins, including where rounding to 10 µs (what a float
/// epoch gives) would turn the order around or make it a tie. The times are set exactly with
/// replication-origin commit timestamps on both sides.
#[tokio::test(flavor = "current_thread")]
async fn last_update_wins_tells_commit_times_one_microsecond_apart() {
    let nodes = nodes();
    let (p, s) = nodes.clients().await.unwrap();
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text)";
    p.batch_execute(&format!(
        "{ddl}; CREATE PUBLICATION pub FOR TABLE t; INSERT INTO t VALUES (1, 'init'), (2, 'init')"
    ))
    .await
    .unwrap();
    s.batch_execute(ddl).await.unwrap();
    subscribe(&nodes, &s, "last_update_wins").await;

    // Row 1: local .123458, remote .123459 (a float epoch rounds the local one up to .12346).
    // Row 2: local .223461, remote .223460 (a float epoch rounds the local one down to a tie).
    for (id, local, remote) in [
        (1, "2026-01-01 00:00:00.123458+00", "2026-01-01 00:00:00.123459+00"),
        (2, "2026-01-01 00:00:00.223461+00", "2026-01-01 00:00:00.223460+00"),
    ] {
        commit_at(&s, "test_local", local, &format!("UPDATE t SET v = 'local' WHERE id = {id}")).await;
        commit_at(&p, "test_remote", remote, &format!("UPDATE t SET v = 'remote' WHERE id = {id}")).await;
    }
    wait_logged(&s, "update_origin_differs", 2).await;
    let got = query_text(&s, "SELECT string_agg(format('%s=%s', id, v), ',' ORDER BY id) FROM t").await.unwrap();
    assert_eq!(got, "1=remote,2=local", "the newer version of each row wins");
    // The log shows both commit times as they are.
    let logged = query_text(
        &s,
        "SELECT string_agg(format('%s %s %s', resolution, \
                 to_char(local_commit_time AT TIME ZONE 'UTC', 'SS.US'), to_char(remote_commit_time AT TIME ZONE 'UTC', 'SS.US')), \
                 ',' ORDER BY id) FROM pgsub.conflict_log WHERE conflict_type = 'update_origin_differs'",
    )
    .await
    .unwrap();
    assert_eq!(logged, "apply_remote 00.123458 00.123459,keep_local 00.223461 00.223460");

    // A later publisher change makes the tables equal: row 1 was last applied from the
    // publisher (no conflict), row 2's local version is older than it (applied as the newer).
    p.batch_execute("UPDATE t SET v = 'final'").await.unwrap();
    wait_value(&s, "SELECT string_agg(v, ',' ORDER BY id) FROM t", "final,final", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// A node that publishes and subscribes (both ends of a bidirectional pair).
fn both_ways_node() -> Cluster {
    let n = Cluster::start(
        ClusterOpts::subscriber().with_conf("wal_level = logical").with_conf("track_commit_timestamp = on"),
    )
    .expect("start");
    n.psql("postgres", "CREATE EXTENSION pgsub").expect("extension");
    n
}

#[tokio::test(flavor = "current_thread")]
async fn bidirectional_pair_converges_under_last_update_wins() {
    let a = both_ways_node();
    let b = both_ways_node();
    let ca = a.client("postgres").await.unwrap();
    let cb = b.client("postgres").await.unwrap();
    for c in [&ca, &cb] {
        c.batch_execute(
            "CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL);
             INSERT INTO kv SELECT g, 'init' FROM generate_series(1, 20) g;
             CREATE PUBLICATION pub FOR TABLE kv",
        )
        .await
        .unwrap();
    }
    for (c, other) in [(&ca, &b), (&cb, &a)] {
        c.execute(
            "SELECT pgsub.create_subscription('c', $1, ARRAY['pub'], copy_data => false, origin => 'none', \
             conflict_resolution => 'last_update_wins')",
            &[&other.connstr("postgres", "postgres")],
        )
        .await
        .unwrap();
    }
    wait_for_subscription_sync(&ca, "c", WAIT).await;
    wait_for_subscription_sync(&cb, "c", WAIT).await;

    // 30 s of updates of the same 20 keys on both nodes, each version unique.
    let writer = |c: tokio_postgres::Client, node: &'static str| async move {
        let start = std::time::Instant::now();
        let mut n = 0u64;
        let mut last = std::collections::HashMap::new();
        while start.elapsed() < Duration::from_secs(30) {
            n += 1;
            let k = ((n * 7 + if node == "a" { 0 } else { 3 }) % 20 + 1) as i32;
            let v = format!("{node}-{n}");
            c.execute("UPDATE kv SET v = $2 WHERE k = $1", &[&k, &v]).await.unwrap();
            last.insert(k, v);
            tokio::time::sleep(Duration::from_millis(5)).await; // pacing the load, not a wait
        }
        last
    };
    let (wa, wb) = (a.client("postgres").await.unwrap(), b.client("postgres").await.unwrap());
    let (last_a, last_b) = tokio::join!(writer(wa, "a"), writer(wb, "b"));

    // Quiet: both nodes converge.
    let table = "SELECT string_agg(k || '=' || v, ',' ORDER BY k) FROM kv";
    if let Err(e) = wait_for("both nodes hold the same rows", WAIT, || async {
        let (x, y) = (query_text(&ca, table).await?, query_text(&cb, table).await?);
        Ok((x == y).then_some(()))
    })
    .await
    {
        // What each node holds, with the commit time and origin of each row's version, and
        // where each node's subscription stands.
        let rows = "SELECT string_agg(format('%s=%s @%s o%s', k, v, c.timestamp, c.roident), E'\\n' ORDER BY k) \
                    FROM kv, pg_xact_commit_timestamp_origin(kv.xmin) c";
        let stat = "SELECT row_to_json(s)::text FROM pgsub.stat_subscription s";
        for (c, name) in [(&ca, "a"), (&cb, "b")] {
            eprintln!(
                "node {name}:\n{}\n{}",
                query_text(c, rows).await.unwrap_or_default(),
                query_text(c, stat).await.unwrap_or_default()
            );
        }
        panic!("{e}");
    }
    // Every node's last local version of a key is either the final value or was overwritten by
    // the other node's newer one, recorded in that node's conflict log.
    for (c, last, name) in [(&ca, &last_a, "a"), (&cb, &last_b, "b")] {
        for (k, v) in last {
            let kept: bool = c
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM kv WHERE k = $1 AND v = $2) \
                     OR EXISTS (SELECT 1 FROM pgsub.conflict_log WHERE local_row ->> 'v' = $2 AND resolution = 'apply_remote')",
                    &[k, v],
                )
                .await
                .unwrap()
                .get(0);
            assert!(kept, "node {name}: version {v} of key {k} is neither final nor in the conflict log");
        }
        let n: i64 =
            one(c, "SELECT count(*) FROM pgsub.conflict_log WHERE conflict_type = 'update_origin_differs'").await;
        assert!(n > 0, "node {name} saw conflicts");
    }
    assert_replicated_equal(&ca, &cb).await;
    assert_replicated_equal(&cb, &ca).await;
}

/// What each policy promises for each type, provoked with the remote change newer than the local
/// one: (policy, remote change applied?). Under `error` an origin difference is applied (as
/// natively) and a unique conflict stops apply until the local row is removed.
#[tokio::test(flavor = "current_thread")]
async fn every_policy_on_every_type() {
    let nodes = nodes();
    let (p, s) = nodes.clients().await.unwrap();
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, u int UNIQUE, v text)";
    p.batch_execute(&format!(
        "{ddl}; CREATE PUBLICATION pub FOR TABLE t;
         INSERT INTO t SELECT g, g, 'v' || g FROM generate_series(1, 1000) g"
    ))
    .await
    .unwrap();
    s.batch_execute(ddl).await.unwrap();
    subscribe(&nodes, &s, "error").await;
    let mut marker = 0;
    // Applies a publisher change and waits until the subscriber has applied everything before it.
    async fn publish(p: &tokio_postgres::Client, s: &tokio_postgres::Client, sql: &str, marker: &mut i32) {
        *marker += 1;
        p.batch_execute(&format!("{sql}; UPDATE t SET v = 'marker {marker}' WHERE id = 1000")).await.unwrap();
        wait_value(s, "SELECT v FROM t WHERE id = 1000", &format!("marker {marker}"), WAIT).await;
    }
    let policies = ["error", "apply_remote", "keep_local", "last_update_wins", "first_update_wins"];
    for (n, policy) in policies.iter().enumerate() {
        set_policy(&s, policy).await;
        let base = 100 + 100 * n as i32;
        let remote_wins = matches!(*policy, "error" | "apply_remote" | "last_update_wins");

        // update_origin_differs: changed here, then (later) on the publisher.
        let k = base + 1;
        s.execute("UPDATE t SET v = 'local' WHERE id = $1", &[&k]).await.unwrap();
        publish(&p, &s, &format!("UPDATE t SET v = 'remote' WHERE id = {k}"), &mut marker).await;
        let v: String = one(&s, &format!("SELECT v FROM t WHERE id = {k}")).await;
        assert_eq!(v, if remote_wins { "remote" } else { "local" }, "{policy}: update_origin_differs");

        // delete_origin_differs.
        let k = base + 2;
        s.execute("UPDATE t SET v = 'local' WHERE id = $1", &[&k]).await.unwrap();
        publish(&p, &s, &format!("DELETE FROM t WHERE id = {k}"), &mut marker).await;
        let left: i64 = one(&s, &format!("SELECT count(*) FROM t WHERE id = {k}")).await;
        assert_eq!(left, if remote_wins { 0 } else { 1 }, "{policy}: delete_origin_differs");

        // update_exists: the new u is held here by a local-only row.
        let (k, clash) = (base + 3, 50_000 + base);
        s.execute("INSERT INTO t VALUES ($1, $2, 'local only')", &[&(clash), &(clash)]).await.unwrap();
        if *policy == "error" {
            p.execute("UPDATE t SET u = $2 WHERE id = $1", &[&k, &clash]).await.unwrap();
            wait_for_subscription_error(&s, "c", &["conflict=update_exists"], WAIT).await;
            s.execute("DELETE FROM t WHERE id = $1", &[&clash]).await.unwrap();
            publish(&p, &s, "SELECT 1", &mut marker).await;
        } else {
            publish(&p, &s, &format!("UPDATE t SET u = {clash} WHERE id = {k}"), &mut marker).await;
        }
        let u: i32 = one(&s, &format!("SELECT u FROM t WHERE id = {k}")).await;
        let local_only: i64 = one(&s, &format!("SELECT count(*) FROM t WHERE id = {clash}")).await;
        if remote_wins {
            assert_eq!((u, local_only), (clash, 0), "{policy}: update_exists");
        } else {
            assert_eq!((u, local_only), (k, 1), "{policy}: update_exists");
        }

        // multiple_unique_conflicts: a remote INSERT whose id and u are held by two local rows.
        let (a, b) = (60_000 + base, 70_000 + base);
        s.execute("INSERT INTO t VALUES ($1, $1, 'local a'), ($2, $2, 'local b')", &[&a, &b]).await.unwrap();
        if *policy == "error" {
            p.execute("INSERT INTO t VALUES ($1, $2, 'remote')", &[&a, &b]).await.unwrap();
            wait_for_subscription_error(&s, "c", &["conflict=multiple_unique_conflicts"], WAIT).await;
            s.execute("DELETE FROM t WHERE id IN ($1, $2)", &[&a, &b]).await.unwrap();
            publish(&p, &s, "SELECT 1", &mut marker).await;
        } else {
            publish(&p, &s, &format!("INSERT INTO t VALUES ({a}, {b}, 'remote')"), &mut marker).await;
        }
        let rows = query_text(
            &s,
            &format!("SELECT string_agg(id || ':' || u || ':' || v, ',' ORDER BY id) FROM t WHERE id IN ({a}, {b})"),
        )
        .await
        .unwrap();
        if remote_wins {
            assert_eq!(rows, format!("{a}:{b}:remote"), "{policy}: multiple_unique_conflicts");
        } else {
            assert_eq!(rows, format!("{a}:{a}:local a,{b}:{b}:local b"), "{policy}: multiple_unique_conflicts");
        }
    }
    // Each provocation counted once per type (error's stop counted on each failed attempt: at
    // least once).
    for t in ["update_origin_differs", "delete_origin_differs"] {
        assert_eq!(counter(&s, &format!("confl_{t}")).await, 5, "{t}");
    }
    for t in ["update_exists", "multiple_unique_conflicts"] {
        assert!(counter(&s, &format!("confl_{t}")).await >= 5, "{t}");
    }
    // The rows left different on purpose are those the local-winning policies kept.
    assert_replicated_equal_except(&p, &s, None, &["t"]).await;
    pgsub_tests::assert_rows_equal(&p, &s, "SELECT * FROM t WHERE id < 100 OR id = 1000 ORDER BY id", WAIT).await;
}

/// On a partitioned target the conflicts name the leaf partition that holds the local row, and
/// the policy applies there as on a plain table. An UPDATE that moves a row to another partition
/// onto a key a local row holds there is `insert_exists`, as natively (native applies the move as
/// a DELETE and an INSERT; it was `update_exists`).
#[tokio::test(flavor = "current_thread")]
async fn conflicts_on_a_partitioned_target_name_the_leaf() {
    let nodes = nodes();
    let (p, s) = nodes.clients().await.unwrap();
    p.batch_execute(
        "CREATE TABLE m (id int PRIMARY KEY, v text);
         CREATE PUBLICATION pub FOR TABLE m;
         INSERT INTO m SELECT g, 'v' || g FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    s.batch_execute(
        "CREATE TABLE m (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
         CREATE TABLE m_low PARTITION OF m FOR VALUES FROM (0) TO (50);
         CREATE TABLE m_high PARTITION OF m FOR VALUES FROM (50) TO (100000);",
    )
    .await
    .unwrap();
    subscribe(&nodes, &s, "keep_local").await;
    s.batch_execute(
        "INSERT INTO m VALUES (200, 'local'), (201, 'local'); UPDATE m SET v = 'local' WHERE id IN (10, 60)",
    )
    .await
    .unwrap();
    p.batch_execute(
        "INSERT INTO m VALUES (200, 'remote'); UPDATE m SET v = 'remote' WHERE id = 10; DELETE FROM m WHERE id = 60;
         UPDATE m SET id = 201 WHERE id = 20; UPDATE m SET v = 'marker' WHERE id = 99",
    )
    .await
    .unwrap();
    wait_value(&s, "SELECT v FROM m WHERE id = 99", "marker", WAIT).await;
    let logged = query_text(
        &s,
        "SELECT string_agg(conflict_type || '@' || relation || '=' || resolution, ',' ORDER BY id) FROM pgsub.conflict_log",
    )
    .await
    .unwrap();
    assert_eq!(
        logged,
        "insert_exists@public.m_high=keep_local,update_origin_differs@public.m_low=keep_local,delete_origin_differs@public.m_high=keep_local,\
         insert_exists@public.m_high=keep_local"
    );
    let kept =
        query_text(&s, "SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM m WHERE id IN (10, 20, 60, 200, 201)")
            .await
            .unwrap();
    assert_eq!(kept, "10:local,20:v20,60:local,200:local,201:local");
    let moved: i64 = one(&s, "SELECT confl_insert_exists FROM pgsub.stat_subscription WHERE subname = 'c'").await;
    assert_eq!(moved, 2, "the INSERT and the moving UPDATE");
    assert_replicated_equal_except(&p, &s, None, &["m"]).await;
    pgsub_tests::assert_rows_equal(&p, &s, "SELECT * FROM m WHERE id NOT IN (10, 20, 60, 200, 201) ORDER BY id", WAIT)
        .await;
}

/// An exclusion constraint is not a key: no policy resolves a row it refuses (native apply has
/// none either). Under `apply_remote` and `keep_local` the remote INSERT stops apply with the
/// constraint's error, as under `error`, instead of being taken for `insert_exists` and dropped;
/// once the local row is gone the retry applies it.
#[tokio::test(flavor = "current_thread")]
async fn an_exclusion_violation_stops_apply_under_every_policy() {
    let nodes = nodes();
    let (p, s) = nodes.clients().await.unwrap();
    p.batch_execute("CREATE TABLE ex (id int PRIMARY KEY, during int4range); CREATE PUBLICATION pub FOR TABLE ex")
        .await
        .unwrap();
    s.batch_execute("CREATE TABLE ex (id int PRIMARY KEY, during int4range, EXCLUDE USING gist (during WITH &&))")
        .await
        .unwrap();
    subscribe(&nodes, &s, "error").await;
    for (i, policy) in ["apply_remote", "keep_local"].into_iter().enumerate() {
        set_policy(&s, policy).await;
        let local = 1000 + i as i32;
        let remote = i as i32 + 1;
        s.execute("INSERT INTO ex VALUES ($1, '[1,10)')", &[&local]).await.unwrap();
        p.execute("INSERT INTO ex VALUES ($1, '[5,15)')", &[&remote]).await.unwrap();
        let e = wait_for_subscription_error(&s, "c", &["exclusion constraint"], WAIT).await;
        assert!(e.contains("ex_during_excl"), "{policy}: {e}");
        let logged: i64 = one(&s, "SELECT count(*) FROM pgsub.conflict_log").await;
        assert_eq!(logged, 0, "{policy}: an exclusion violation is no insert_exists conflict");
        s.execute("DELETE FROM ex WHERE id = $1", &[&local]).await.unwrap();
        let applied = format!("SELECT count(*) = 1 FROM ex WHERE id = {remote}");
        wait_value(&s, &applied, "t", WAIT).await;
        // The next policy starts from an empty table on both sides.
        p.execute("DELETE FROM ex", &[]).await.unwrap();
        wait_value(&s, "SELECT count(*) = 0 FROM ex", "t", WAIT).await;
    }
    assert_replicated_equal(&p, &s).await;
}

/// A table with a `DEFERRABLE` key: `INSERT … ON CONFLICT` refuses it ("does not support
/// deferrable unique constraints"), so its conflicts are looked up before a plain INSERT. Under
/// `error`, the retry of a transaction that failed on another table applies it once the cause is
/// gone (it used to fail there for good); under `apply_remote` a collision in its immediate unique
/// index is resolved and other rows apply (it used to stop apply). The deferrable key itself is
/// no conflict key (native 18 skips such indexes too).
#[tokio::test(flavor = "current_thread")]
async fn a_table_with_a_deferrable_key_is_applied_under_every_policy() {
    let nodes = nodes();
    let (p, s) = nodes.clients().await.unwrap();
    let ddl = "CREATE TABLE d (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, email text UNIQUE, v text); \
               CREATE TABLE e (id int PRIMARY KEY)";
    p.batch_execute(&format!("{ddl}; CREATE PUBLICATION pub FOR TABLE d, e")).await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    subscribe(&nodes, &s, "error").await;

    // error: the transaction fails on e; the retry (which looks for conflicts) applies d's row.
    s.batch_execute("INSERT INTO e VALUES (1)").await.unwrap();
    p.batch_execute("BEGIN; INSERT INTO d VALUES (1, 'a@x', 'remote'); INSERT INTO e VALUES (1); COMMIT")
        .await
        .unwrap();
    let e = wait_for_subscription_error(&s, "c", &["e_pkey"], WAIT).await;
    assert!(e.contains("duplicate key") || e.contains("insert_exists"), "{e}");
    s.batch_execute("DELETE FROM e WHERE id = 1").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM d WHERE id = 1", "1", WAIT).await;
    wait_value(&s, "SELECT count(*)::text FROM e WHERE id = 1", "1", WAIT).await;

    // apply_remote: a collision in the immediate unique index is resolved, the next row applies.
    set_policy(&s, "apply_remote").await;
    s.batch_execute("INSERT INTO d VALUES (2, 'b@x', 'local')").await.unwrap();
    p.batch_execute("INSERT INTO d VALUES (3, 'b@x', 'remote'); INSERT INTO d VALUES (4, 'c@x', 'remote')")
        .await
        .unwrap();
    wait_value(&s, "SELECT count(*)::text FROM d WHERE id = 4", "1", WAIT).await;
    assert_eq!(one::<String>(&s, "SELECT v || ':' || id FROM d WHERE email = 'b@x'").await, "remote:3");
    wait_logged(&s, "insert_exists", 1).await;
    assert_eq!(last_logged(&s, "insert_exists").await.0, "apply_remote");

    assert_replicated_equal(&p, &s).await;
}

/// A copied row is never an origin conflict, also after the id of the table synchronization
/// origin that copied it (dropped when the copy is done) is given to another subscription's
/// origin: under `keep_local` the first remote update of a copied row is applied, not kept out
/// as `update_origin_differs` blamed on that other subscription.
#[tokio::test(flavor = "current_thread")]
async fn a_copied_row_is_not_blamed_on_an_origin_that_reuses_the_copy_origins_id() {
    let nodes = nodes();
    let (p, s) = nodes.clients().await.unwrap();
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE other (id int PRIMARY KEY)";
    p.batch_execute(&format!(
        "{ddl}; INSERT INTO t VALUES (1, 'a'), (2, 'b');
         CREATE PUBLICATION pub FOR TABLE t; CREATE PUBLICATION pub_other FOR TABLE other"
    ))
    .await
    .unwrap();
    s.batch_execute(ddl).await.unwrap();
    subscribe(&nodes, &s, "keep_local").await;
    // The copy's origin is gone once the table is ready; its id is the lowest free one.
    wait_value(&s, "SELECT count(*) FROM pg_replication_origin WHERE roname LIKE 'pgsub\\_%\\_sync\\_%'", "0", WAIT)
        .await;
    let copy_origin: i64 =
        one(&s, "SELECT (pg_xact_commit_timestamp_origin(xmin)).roident::bigint FROM t WHERE id = 2").await;
    s.execute(
        "SELECT pgsub.create_subscription('other', $1, ARRAY['pub_other'], copy_data => false)",
        &[&nodes.pub_conninfo()],
    )
    .await
    .unwrap();
    let reused: i64 = one(
        &s,
        "SELECT roident::bigint FROM pg_replication_origin WHERE roname LIKE 'pgsub\\_%' ORDER BY roident DESC LIMIT 1",
    )
    .await;
    assert_eq!(reused, copy_origin, "the new subscription's origin took the copy origin's id");
    p.batch_execute("UPDATE t SET v = 'remote' WHERE id = 2").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 2", "remote", WAIT).await;
    assert_eq!(counter(&s, "confl_update_origin_differs").await, 0);
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pgsub.conflict_log").await, 0);
    assert_replicated_equal(&p, &s).await;
}

/// Tables `c`, 300 rows written by the initial copy (whose origin is gone once it is done), and
/// `t`, `streamed` rows applied by the stream; subscription `c` under `track_commit_timestamp`.
async fn copied_and_streamed_rows(streamed: i64) -> (TwoNodes, tokio_postgres::Client, tokio_postgres::Client) {
    let nodes = nodes();
    let (p, s) = nodes.clients().await.unwrap();
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE c (id int PRIMARY KEY, v text)";
    p.batch_execute(&format!(
        "{ddl}; INSERT INTO c SELECT g, 'copied' FROM generate_series(1, 300) g; CREATE PUBLICATION pub FOR TABLE t, c"
    ))
    .await
    .unwrap();
    s.batch_execute(ddl).await.unwrap();
    subscribe(&nodes, &s, "error").await;
    wait_value(&s, "SELECT count(*) FROM pg_replication_origin WHERE roname LIKE 'pgsub\\_%\\_sync\\_%'", "0", WAIT)
        .await;
    p.batch_execute(&format!("INSERT INTO t SELECT g, 'streamed' FROM generate_series(1, {streamed}) g"))
        .await
        .unwrap();
    wait_value(&s, "SELECT count(*) FROM t", &streamed.to_string(), WAIT).await;
    (nodes, p, s)
}

/// With `track_commit_timestamp` under `error`, a run of UPDATEs is still applied as one batched
/// statement when none of its rows was last written by another origin (their origins are asked
/// for at once), and goes one by one — each row's origin looked at — when one was: the row
/// changed here is reported as `update_origin_differs` and updated all the same, as natively;
/// rows the initial copy wrote (its origin is gone since) are not a conflict, in a run too.
#[tokio::test(flavor = "current_thread")]
async fn runs_of_updates_check_their_rows_origins_at_once() {
    let (_nodes, p, s) = copied_and_streamed_rows(300).await;

    // Runs of this subscription's own rows, and of the copied ones.
    p.batch_execute("UPDATE t SET v = 'run 1' WHERE id <= 200; UPDATE c SET v = 'run 1'").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM c WHERE v = 'run 1'", "300", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t WHERE v = 'run 1'").await, 200);
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pgsub.conflict_log").await, 0, "no conflict in those runs");

    // A run with one row changed here.
    s.batch_execute("UPDATE t SET v = 'local' WHERE id = 150").await.unwrap();
    p.batch_execute("UPDATE t SET v = 'run 2' WHERE id > 100").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t WHERE v = 'run 2'", "200", WAIT).await;
    assert_eq!(
        one::<String>(&s, "SELECT string_agg(conflict_type || ' ' || (key ->> 'id'), ',') FROM pgsub.conflict_log")
            .await,
        "update_origin_differs 150"
    );
    assert_eq!(counter(&s, "confl_update_origin_differs").await, 1);
    // Every update counted once, batched or one by one (200 + 200 applied, 1 local).
    wait_value(&s, "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 't'", "401", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// With `track_commit_timestamp` under `error`, runs of DELETEs are batched as UPDATEs are: a run
/// of this subscription's own rows or of copied rows is deleted with no conflict, and a run with
/// one row changed here goes one by one — that row reported as `delete_origin_differs` and
/// deleted all the same, as natively — while a row missing here is still `delete_missing`.
#[tokio::test(flavor = "current_thread")]
async fn runs_of_deletes_check_their_rows_origins_at_once() {
    let (_nodes, p, s) = copied_and_streamed_rows(400).await;

    // Runs of this subscription's own rows, and of the copied ones.
    p.batch_execute("DELETE FROM t WHERE id <= 100; DELETE FROM c WHERE id <= 200").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM c", "100", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 300);
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pgsub.conflict_log").await, 0, "no conflict in those runs");

    // A run with one row changed here and one row missing here.
    s.batch_execute("UPDATE t SET v = 'local' WHERE id = 250; DELETE FROM t WHERE id = 260").await.unwrap();
    p.batch_execute("DELETE FROM t WHERE id > 200").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t", "100", WAIT).await;
    assert_eq!(
        one::<String>(
            &s,
            "SELECT string_agg(conflict_type || ' ' || (key ->> 'id'), ',' ORDER BY conflict_type) FROM pgsub.conflict_log"
        )
        .await,
        "delete_missing 260,delete_origin_differs 250"
    );
    assert_eq!(counter(&s, "confl_delete_origin_differs").await, 1);
    assert_eq!(counter(&s, "confl_delete_missing").await, 1);
    // 100 + 200 deleted in runs, 199 one by one, and the local one.
    wait_value(&s, "SELECT n_tup_del FROM pg_stat_user_tables WHERE relname = 't'", "300", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// `last_update_wins` set while `track_commit_timestamp` was on, then the server restarted with
/// it off: no local row has a commit time any more, so every remote change would win — the
/// policy silently turned into `apply_remote`. The worker now stops with a clear error until the
/// setting is back (or the policy changed), then goes on.
#[tokio::test(flavor = "current_thread")]
async fn a_commit_time_policy_without_track_commit_timestamp_stops_instead_of_always_applying() {
    let mut nodes = nodes();
    let (p, s) = nodes.clients().await.unwrap();
    p.batch_execute("CREATE TABLE lw (id int PRIMARY KEY, v text); CREATE PUBLICATION pub FOR TABLE lw").await.unwrap();
    s.batch_execute("CREATE TABLE lw (id int PRIMARY KEY, v text)").await.unwrap();
    subscribe(&nodes, &s, "error").await;
    set_policy(&s, "last_update_wins").await;
    s.batch_execute("ALTER SYSTEM SET track_commit_timestamp = off").await.unwrap();
    drop(s);
    nodes.subscriber.restart().expect("restart without track_commit_timestamp");
    let s = nodes.subscriber.client("postgres").await.unwrap();
    p.batch_execute("INSERT INTO lw VALUES (1, 'remote')").await.unwrap();
    let e =
        wait_for_subscription_error(&s, "c", &["last_update_wins", "track_commit_timestamp, which is off"], WAIT).await;
    assert!(e.contains("\"c\""), "{e}");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM lw").await, 0, "nothing applied meanwhile");
    s.batch_execute("ALTER SYSTEM RESET track_commit_timestamp").await.unwrap();
    drop(s);
    nodes.subscriber.restart().expect("restart with the setting back");
    let s = nodes.subscriber.client("postgres").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM lw", "1", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// A subscriber database in LATIN1 (TAP 005_encoding's) under `track_commit_timestamp`: UPDATEs
/// and DELETEs of rows holding non-ASCII text are applied (every one is looked up with who last
/// changed it, and reading the local row failed on its first non-ASCII character: "datums
/// converted to &str should be valid UTF-8", apply stopped for good), and conflicts on such rows
/// are found — a non-ASCII key looked up in LATIN1, not as its UTF-8 bytes — resolved by the
/// policy and recorded with the local and remote rows as they read (`insert_exists` under
/// `error` was not even counted).
#[tokio::test(flavor = "current_thread")]
async fn a_latin1_subscriber_database_applies_and_resolves_conflicts_on_non_ascii_rows() {
    let nodes = nodes();
    let p = nodes.publisher.client("postgres").await.unwrap();
    let admin = nodes.subscriber.client("postgres").await.unwrap();
    admin.batch_execute("CREATE DATABASE lat TEMPLATE template0 ENCODING 'LATIN1' LOCALE 'C'").await.unwrap();
    let s = nodes.subscriber.client("lat").await.unwrap();
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE tk (k text PRIMARY KEY, v text);";
    s.batch_execute(&format!("CREATE EXTENSION pgsub; {ddl}")).await.unwrap();
    p.batch_execute(&format!(
        "{ddl} INSERT INTO t VALUES (1, 'café'), (2, 'Motörhead'), (3, 'plain');
         INSERT INTO tk VALUES ('clé', 'été');
         CREATE PUBLICATION pub FOR TABLE t, tk;"
    ))
    .await
    .unwrap();
    subscribe(&nodes, &s, "error").await;

    p.batch_execute(
        "UPDATE t SET v = 'crème' WHERE id = 1; DELETE FROM t WHERE id = 2; UPDATE tk SET v = 'hiver' WHERE k = 'clé'",
    )
    .await
    .unwrap();
    wait_value(&s, "SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM t", "1=crème,3=plain", WAIT).await;
    wait_value(&s, "SELECT v FROM tk WHERE k = 'clé'", "hiver", WAIT).await;
    assert_eq!(counter(&s, "error_count").await, 0, "no error on the way");

    // insert_exists on a non-ASCII row under error: counted and logged, apply stops.
    s.batch_execute("INSERT INTO t VALUES (5, 'é ici'); INSERT INTO tk VALUES ('ñu', 'local ü')").await.unwrap();
    p.batch_execute("INSERT INTO t VALUES (5, 'ü là-bas')").await.unwrap();
    let err = wait_for_subscription_error(&s, "c", &["conflict=insert_exists"], WAIT).await;
    assert!(err.contains("existing local row (5, é ici); remote row (5, ü là-bas)"), "{err}");
    assert!(counter(&s, "confl_insert_exists").await >= 1);
    // The policy decides it: the remote row replaces the local one, both as they read.
    set_policy(&s, "apply_remote").await;
    wait_value(&s, "SELECT v FROM t WHERE id = 5", "ü là-bas", WAIT).await;
    let (resolution, key, local, remote, _) = last_logged(&s, "insert_exists").await;
    assert_eq!(resolution, "apply_remote");
    assert_eq!(key, r#"{"id": 5}"#);
    assert_eq!(local, r#"{"v": "é ici", "id": 5}"#);
    assert_eq!(remote, r#"{"v": "ü là-bas", "id": 5}"#);
    // A non-ASCII key: found in LATIN1 and replaced.
    p.batch_execute("INSERT INTO tk VALUES ('ñu', 'remote ö')").await.unwrap();
    wait_value(&s, "SELECT v FROM tk WHERE k = 'ñu'", "remote ö", WAIT).await;
    let (_, key, local, _, _) = last_logged(&s, "insert_exists").await;
    assert_eq!((key.as_str(), local.as_str()), (r#"{"k": "ñu"}"#, r#"{"k": "ñu", "v": "local ü"}"#));
    assert_replicated_equal(&p, &s).await;
}

/// A partitioned target with a foreign-table partition (postgres_fdw, here into another database
/// of the subscriber) under `track_commit_timestamp`: rows that route to it are written through
/// the foreign table, and their UPDATE and DELETE find them there. The look-up of who last
/// changed such a row asked for the commit timestamp of its transaction 0 and stopped apply for
/// good ("cannot retrieve commit timestamp for transaction 0"). (Native stops at the first change
/// that routes to a foreign partition: README, where pgsub differs.)
#[tokio::test(flavor = "current_thread")]
async fn rows_of_a_foreign_table_partition_are_updated_and_deleted_under_commit_timestamps() {
    if !pgsub_tests::server_has_extension("postgres_fdw") {
        eprintln!("skipped: no postgres_fdw in this installation");
        return;
    }
    let nodes = nodes();
    let (p, s) = nodes.clients().await.unwrap();
    p.batch_execute("CREATE TABLE t (id int PRIMARY KEY, k int, v text); CREATE PUBLICATION pub FOR TABLE t")
        .await
        .unwrap();
    s.batch_execute("CREATE DATABASE remote").await.unwrap();
    let r = nodes.subscriber.client("remote").await.unwrap();
    r.batch_execute("CREATE TABLE ft (id int, k int, v text)").await.unwrap();
    s.batch_execute(&format!(
        "CREATE EXTENSION postgres_fdw;
         CREATE SERVER rs FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', port '{}', dbname 'remote');
         CREATE USER MAPPING FOR CURRENT_USER SERVER rs OPTIONS (user 'postgres');
         CREATE TABLE t (id int, k int, v text) PARTITION BY LIST (k);
         CREATE TABLE t0 PARTITION OF t FOR VALUES IN (0);
         CREATE FOREIGN TABLE t1 PARTITION OF t FOR VALUES IN (1) SERVER rs OPTIONS (schema_name 'public', table_name 'ft');",
        nodes.subscriber.port()
    ))
    .await
    .unwrap();
    subscribe(&nodes, &s, "error").await;
    p.batch_execute(
        "INSERT INTO t VALUES (1, 1, 'far'), (2, 0, 'near'), (3, 1, 'far too');
         UPDATE t SET v = 'far, changed' WHERE id = 1; DELETE FROM t WHERE id = 3; UPDATE t SET v = 'near, changed' WHERE id = 2",
    )
    .await
    .unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 2", "near, changed", WAIT).await;
    assert_eq!(one::<String>(&r, "SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM ft").await, "1:far, changed");
    assert_eq!(counter(&s, "error_count").await, 0, "no error on the way");
    assert_replicated_equal(&p, &s).await;
}

/// Keys of types whose cast without a modifier means another type: `character` is
/// `character(1)`, `bit` is `bit(1)`. The looked-up key was cast so (`'ab '::character` is `a`):
/// a local row holding a remote INSERT's `char(3)` or `bit(4)` key was not found, so under
/// `apply_remote` the INSERT stopped apply with a plain duplicate-key error, and the remote row
/// showed `a`. Now the column's own type and modifier are used.
#[tokio::test(flavor = "current_thread")]
async fn keys_of_char_and_bit_columns_are_found() {
    let nodes = nodes();
    let (p, s) = nodes.clients().await.unwrap();
    let ddl = "CREATE TABLE ch (code char(3) PRIMARY KEY, v text); CREATE TABLE bi (b bit(4) PRIMARY KEY, v text);
               CREATE TABLE vc (k varchar(3) PRIMARY KEY, v text)";
    p.batch_execute(&format!("{ddl}; CREATE PUBLICATION pub FOR TABLE ch, bi, vc")).await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    subscribe(&nodes, &s, "apply_remote").await;
    s.batch_execute(
        "INSERT INTO ch VALUES ('ab', 'local'); INSERT INTO bi VALUES (B'1010', 'local'); INSERT INTO vc VALUES ('xy', 'local')",
    )
    .await
    .unwrap();
    p.batch_execute(
        "INSERT INTO ch VALUES ('ab', 'remote'); INSERT INTO bi VALUES (B'1010', 'remote'); INSERT INTO vc VALUES ('xy', 'remote')",
    )
    .await
    .unwrap();
    wait_value(&s, "SELECT v FROM ch WHERE code = 'ab'", "remote", WAIT).await;
    wait_value(&s, "SELECT v FROM bi WHERE b = B'1010'", "remote", WAIT).await;
    wait_value(&s, "SELECT v FROM vc WHERE k = 'xy'", "remote", WAIT).await;
    wait_logged(&s, "insert_exists", 3).await;
    let keys: String = one(
        &s,
        "SELECT string_agg(key::text, ' ' ORDER BY key::text) FROM pgsub.conflict_log WHERE conflict_type = 'insert_exists'",
    )
    .await;
    assert_eq!(keys, r#"{"b": "1010"} {"code": "ab "} {"k": "xy"}"#, "the keys as the columns hold them");
    assert_eq!(counter(&s, "error_count").await, 0, "no error on the way");
    assert_replicated_equal(&p, &s).await;
}
