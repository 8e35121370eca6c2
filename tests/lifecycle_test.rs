//! End-to-end: the life of a subscription — enable/disable/drop, worker slots, conflicts and
//! skip_transaction, privileges, crash recovery without loss or duplication, publisher restarts,
//! altering options and renaming.
use pgsub_tests::{
    assert_replicated_equal, assert_replicated_equal_except, assert_replicated_equal_for, assert_rows_equal, must_fail,
    one, wait_for_subscription_error, wait_for_subscription_sync, wait_value, ClusterOpts, TwoNodes,
};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(60);

/// Clients of both nodes, with `tables` created on each as `(id int PRIMARY KEY, v text)`.
async fn setup(nodes: &TwoNodes, tables: &[&str]) -> (Client, Client) {
    let (p, s) = nodes.clients().await.expect("clients");
    for t in tables {
        let ddl = format!("CREATE TABLE {t} (id int PRIMARY KEY, v text)");
        p.batch_execute(&ddl).await.expect("publisher table");
        s.batch_execute(&ddl).await.expect("subscriber table");
    }
    (p, s)
}

#[tokio::test(flavor = "current_thread")]
async fn enable_disable_drop_and_worker_lifecycle() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = setup(&nodes, &["t"]).await;
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('life', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    // The slot exists on the publisher right after create_subscription.
    assert_eq!(one::<i64>(&p, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'life'").await, 1);

    let t0 = Instant::now();
    wait_for_subscription_sync(&s, "life", WAIT).await;
    eprintln!("streaming after {:?}", t0.elapsed());
    p.batch_execute("INSERT INTO t VALUES (1, 'a')").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 1", "a", WAIT).await;

    // The worker shows in pg_stat_activity and as the walsender's client.
    let pid: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'life'").await;
    let bt: String = one(&s, &format!("SELECT backend_type FROM pg_stat_activity WHERE pid = {pid}")).await;
    assert_eq!(bt, "pgsub apply worker");
    // Like native, the walsender's application_name is the subscription name.
    assert_eq!(one::<i64>(&p, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'life'").await, 1);

    // Disable: the worker stops quickly; changes wait on the publisher.
    s.batch_execute("SELECT pgsub.disable_subscription('life')").await.unwrap();
    let t0 = Instant::now();
    wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'life'", "disabled", WAIT).await;
    assert!(t0.elapsed() < Duration::from_secs(5), "disable took {:?}", t0.elapsed());
    // Nothing streams the slot any more: the worker's walsender is gone — told to go, as
    // native's worker tells it (Terminate): it logged "unexpected EOF on standby connection".
    wait_value(&p, "SELECT active FROM pg_replication_slots WHERE slot_name = 'life'", "f", WAIT).await;
    assert!(!nodes.publisher.log().contains("unexpected EOF"), "the walsender saw the connection just close");
    nodes
        .subscriber
        .wait_for_log(
            "pgsub apply worker for subscription \"life\" will stop because the subscription was disabled",
            WAIT,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    p.batch_execute("INSERT INTO t VALUES (2, 'while disabled')").await.unwrap();
    // A deliberate interval, not a condition: that the row does not arrive is an absence, which
    // only time shows. 1.5 s is three passes of the launcher (pgsub.naptime 500 ms in the
    // harness), in which a worker it wrongly started would have applied the row.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 1);

    // Enable: it resumes and catches up.
    s.batch_execute("SELECT pgsub.enable_subscription('life')").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 2", "while disabled", WAIT).await;
    // A changed option restarts it: a routine stop, logged as such — a stop asked for is never
    // a FATAL line (alerting on FATAL must not fire on administration), nor an exit code 1.
    let before: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'life'").await;
    s.batch_execute("SELECT pgsub.alter_subscription_options('life', streaming => 'on')").await.unwrap();
    wait_value(
        &s,
        &format!("SELECT pid IS NOT NULL AND pid <> {before} FROM pgsub.stat_subscription WHERE subname = 'life'"),
        "t",
        WAIT,
    )
    .await;
    nodes
        .subscriber
        .wait_for_log("pgsub apply worker for subscription \"life\" will restart because of a parameter change", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Changes in quick succession reach a worker that is still starting (connecting, reading
    // the catalog): it is asked to stop, not signalled in the middle of a statement.
    for i in 0..30u64 {
        let mode = ["local", "off", "on", "remote_write"][i as usize % 4];
        s.batch_execute(&format!("SELECT pgsub.alter_subscription_options('life', synchronous_commit => '{mode}')"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(7 * i)).await;
    }
    p.batch_execute("INSERT INTO t VALUES (3, 'after the changes')").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 3", "after the changes", WAIT).await;
    let log = nodes.subscriber.log();
    let noisy: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("FATAL:") || (l.contains("\"pgsub apply worker\"") && l.contains("exit code 1")))
        .collect();
    assert!(noisy.is_empty(), "routine stops logged as failures: {noisy:?}");
    // The full comparison comes before the drop: afterwards there is no subscription to compare.
    assert_replicated_equal(&p, &s).await;

    // Drop: worker, origin and slot go away.
    s.batch_execute("SELECT pgsub.drop_subscription('life')").await.expect("drop");
    assert_eq!(one::<i64>(&p, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'life'").await, 0);
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pgsub.subscription").await, 0);
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pg_replication_origin WHERE roname LIKE 'pgsub_%'").await, 0);
    wait_value(&s, "SELECT count(*)::text FROM pg_stat_activity WHERE backend_type = 'pgsub apply worker'", "0", WAIT)
        .await;
    // Dropping again: error, or a notice with if_exists.
    assert!(s.batch_execute("SELECT pgsub.drop_subscription('life')").await.is_err());
    s.batch_execute("SELECT pgsub.drop_subscription('life', if_exists => true)").await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn create_subscription_validates_and_leaves_nothing_behind() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = setup(&nodes, &["t"]).await;
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t; CREATE TABLE only_remote (id int primary key); CREATE PUBLICATION pub2 FOR TABLE only_remote").await.unwrap();
    // A table the subscriber has as a materialized view, and one it has as a view.
    p.batch_execute("CREATE TABLE mv (id int primary key); CREATE PUBLICATION pub3 FOR TABLE mv; CREATE TABLE v (id int primary key); CREATE PUBLICATION pub4 FOR TABLE v").await.unwrap();
    s.batch_execute("CREATE MATERIALIZED VIEW mv AS SELECT 1 AS id; CREATE VIEW v AS SELECT 1 AS id").await.unwrap();
    let ci = nodes.pub_conninfo();
    let cases: Vec<(String, Vec<String>, &str)> = vec![
        (ci.clone(), vec!["pub2".into()], "42P01"),
        (ci.clone(), vec!["pub3".into()], "42809"),
        (ci.clone(), vec!["pub4".into()], "42809"),
        ("host=127.0.0.1 port=1 dbname=postgres user=postgres connect_timeout=5".into(), vec!["pub".into()], "08"),
        (format!("{ci} dbname=nosuchdb"), vec!["pub".into()], "3D000"),
        ("host=127.0.0.1 port=abc".into(), vec!["pub".into()], "42601"),
    ];
    for (conninfo, pubs, code) in cases {
        let err = s
            .execute("SELECT pgsub.create_subscription('bad', $1, $2)", &[&conninfo, &pubs])
            .await
            .expect_err("must fail");
        let db = err.as_db_error().unwrap_or_else(|| panic!("not a db error: {err}"));
        assert!(db.code().code().starts_with(code), "{conninfo} {pubs:?}: {} {}", db.code().code(), db.message());
        if code == "42809" {
            // Native's words (CheckSubscriptionRelkind).
            let kind = if pubs[0] == "pub3" { "materialized views" } else { "views" };
            assert!(db.message().contains("as logical replication target"), "{}", db.message());
            assert_eq!(db.detail(), Some(format!("This operation is not supported for {kind}.").as_str()));
        }
    }
    // NULL arguments and bad values are errors, not silent NULL results.
    assert!(s.execute("SELECT pgsub.create_subscription(NULL, $1, ARRAY['pub'])", &[&ci]).await.is_err());
    assert!(s
        .execute("SELECT pgsub.create_subscription('x', $1, ARRAY['pub'], origin => 'sometimes')", &[&ci])
        .await
        .is_err());
    // An existing slot name is refused.
    p.batch_execute("SELECT pg_create_logical_replication_slot('taken', 'pgoutput')").await.unwrap();
    let err = s
        .execute("SELECT pgsub.create_subscription('x', $1, ARRAY['pub'], slot_name => 'taken')", &[&ci])
        .await
        .expect_err("existing slot");
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("42710"));
    // Nothing was left behind by any failure.
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pgsub.subscription").await, 0);
    assert_eq!(one::<i64>(&p, "SELECT count(*) FROM pg_replication_slots").await, 1);
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pg_replication_origin").await, 0);
    // A duplicate name is refused.
    s.execute("SELECT pgsub.create_subscription('x', $1, ARRAY['pub'])", &[&ci]).await.expect("create");
    let err = s.execute("SELECT pgsub.create_subscription('x', $1, ARRAY['pub'])", &[&ci]).await.expect_err("dup");
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("42710"));
    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn unique_conflict_is_an_error_until_skipped() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = setup(&nodes, &["t"]).await;
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('c', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "c", WAIT).await;
    // A local row collides with the next remote insert.
    s.batch_execute("INSERT INTO t VALUES (5, 'local')").await.unwrap();
    p.batch_execute("BEGIN; INSERT INTO t VALUES (4, 'r4'); INSERT INTO t VALUES (5, 'r5'); COMMIT;").await.unwrap();
    let finish_lsn: String = one(&p, "SELECT pg_current_wal_lsn()::text").await;
    let _ = finish_lsn;
    // The first attempt's unique violation, or (at once after it) the row-by-row retry's conflict.
    wait_for_subscription_error(&s, "c", &["(id)=(5)"], WAIT).await;
    let err: String = one(&s, "SELECT last_error FROM pgsub.stat_subscription WHERE subname = 'c'").await;
    assert!(err.contains("finished at"), "context with finish LSN: {err}");
    assert!(err.contains("\"public.t\""), "relation named: {err}");
    // Nothing of that transaction was applied (row 4 is not there) and nothing skipped.
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t WHERE id = 4").await, 0);
    // Skip it by its finish LSN, as the error says.
    let lsn = err
        .split("finished at ")
        .nth(1)
        .expect("lsn")
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches(|c: char| !c.is_ascii_hexdigit());
    s.execute("SELECT pgsub.skip_transaction('c', $1::text::pg_lsn)", &[&lsn]).await.expect("skip");
    p.batch_execute("INSERT INTO t VALUES (6, 'after')").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 6", "after", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t WHERE id = 4").await, 0, "skipped txn not applied");
    assert_eq!(one::<String>(&s, "SELECT v FROM t WHERE id = 5").await, "local");
    assert!(one::<i64>(&s, "SELECT txns_skipped FROM pgsub.stat_subscription WHERE subname = 'c'").await >= 1);
    assert!(one::<Option<String>>(&s, "SELECT skip_lsn::text FROM pgsub.subscription WHERE subname = 'c'")
        .await
        .is_none());
    // t differs on purpose in rows 4 (the skipped transaction's) and 5 (the local row it
    // collided with): every other row of it must be equal, and t is its only table.
    assert_rows_equal(&p, &s, "SELECT * FROM t WHERE id NOT IN (4, 5)", WAIT).await;
    assert_replicated_equal_except(&p, &s, None, &["t"]).await;
}

#[tokio::test(flavor = "current_thread")]
async fn non_superusers_cannot_manage_or_see_passwords() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = setup(&nodes, &["t"]).await;
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    s.batch_execute("CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; GRANT pgsub_admin TO bob;").await.unwrap();
    let ci = format!("{} password=s3cr3t-pw", nodes.pub_conninfo());
    s.execute("SELECT pgsub.create_subscription('sec', $1, ARRAY['pub'])", &[&ci]).await.unwrap();
    let alice = nodes.subscriber.client_as("alice", "postgres").await.unwrap();
    let err = alice
        .execute("SELECT pgsub.create_subscription('a', $1, ARRAY['pub'])", &[&ci])
        .await
        .expect_err("alice may not create");
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("42501"));
    assert!(alice.batch_execute("SELECT pgsub.disable_subscription('sec')").await.is_err());
    assert!(alice.query("SELECT * FROM pgsub.sub", &[]).await.is_err(), "catalog table is not readable");
    let shown: String = one(&alice, "SELECT conninfo FROM pgsub.subscription WHERE subname = 'sec'").await;
    assert!(!shown.contains("s3cr3t"), "password masked: {shown}");
    let stats: String = one(&alice, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'sec'").await;
    assert!(!stats.is_empty());
    // A pgsub_admin member may manage, and still does not see the password.
    let bob = nodes.subscriber.client_as("bob", "postgres").await.unwrap();
    bob.batch_execute("SELECT pgsub.disable_subscription('sec')").await.expect("bob may manage");
    let shown: String = one(&bob, "SELECT conninfo FROM pgsub.subscription WHERE subname = 'sec'").await;
    assert!(!shown.contains("s3cr3t"));
    let full: String = one(&s, "SELECT conninfo FROM pgsub.subscription WHERE subname = 'sec'").await;
    assert!(full.contains("s3cr3t"), "superuser sees it");
    assert!(!nodes.subscriber.log().contains("s3cr3t"), "password never logged");
    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn out_of_worker_slots_waits_then_starts() {
    // Supervisor + the database's launcher + 2 apply workers fit; the third subscription waits.
    let sub_opts = ClusterOpts::subscriber()
        .with_conf("max_worker_processes = 4")
        .with_conf("max_parallel_workers = 0")
        .with_conf("max_logical_replication_workers = 0");
    let nodes = TwoNodes::start_with(ClusterOpts::publisher(), sub_opts).expect("start");
    let (p, s) = setup(&nodes, &["t1", "t2", "t3"]).await;
    for i in 1..=3 {
        p.batch_execute(&format!("CREATE PUBLICATION p{i} FOR TABLE t{i}")).await.unwrap();
        // No initial copy (the tables are empty): table synchronization workers would need
        // background worker slots too (tablesync_test covers tables waiting for one).
        s.execute(
            &format!("SELECT pgsub.create_subscription('s{i}', $1, ARRAY['p{i}'], copy_data => false)"),
            &[&nodes.pub_conninfo()],
        )
        .await
        .unwrap();
    }
    let statuses = "SELECT format('%s streaming, %s waiting', count(*) FILTER (WHERE status = 'streaming'), \
                           count(*) FILTER (WHERE status = 'waiting_for_worker')) FROM pgsub.stat_subscription";
    wait_value(&s, statuses, "2 streaming, 1 waiting", WAIT).await;
    assert!(nodes.subscriber.log().contains("is waiting for a worker"), "WARNING logged");
    let waiting: String =
        one(&s, "SELECT subname::text FROM pgsub.stat_subscription WHERE status = 'waiting_for_worker'").await;
    // The launcher learns that no slot is free only when it tries to register the worker, at
    // every pass: the wait is warned about once and keeps its start (it was warned about once a
    // second, and health's `since` was always now).
    let since =
        format!("SELECT since::text FROM pgsub.health WHERE subname = '{waiting}' AND problem = 'waiting_for_worker'");
    let first: String = one(&s, &since).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(one::<String>(&s, &since).await, first, "the wait's start");
    let warnings =
        nodes.subscriber.log().matches(&format!("subscription \"{waiting}\" is waiting for a worker")).count();
    assert_eq!(warnings, 1, "one WARNING per wait");
    let other = if waiting == "s1" { "s2" } else { "s1" };
    s.batch_execute(&format!("SELECT pgsub.drop_subscription('{other}')")).await.unwrap();
    wait_value(
        &s,
        &format!("SELECT status FROM pgsub.stat_subscription WHERE subname = '{waiting}'"),
        "streaming",
        WAIT,
    )
    .await;
    // The two subscriptions left (the dropped one's table is not compared).
    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn kill9_of_subscriber_loses_and_duplicates_nothing() {
    let nodes = TwoNodes::start().expect("start");
    let mut nodes = nodes;
    let (p, s) = setup(&nodes, &["t"]).await;
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('k', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "k", WAIT).await;
    drop(s);
    // 100k single-row transactions, written by a background task while we kill the subscriber.
    let pc = nodes.publisher.client("postgres").await.unwrap();
    pc.batch_execute(
        "CREATE PROCEDURE fill(n int) LANGUAGE plpgsql AS $$
         BEGIN FOR i IN 1..n LOOP INSERT INTO t VALUES (i, 'v' || i); COMMIT; END LOOP; END $$",
    )
    .await
    .unwrap();
    let writer = tokio::spawn(async move { pc.batch_execute("CALL fill(100000)").await });
    // Kill while the stream is flowing: some rows applied, not all.
    let sc = nodes.subscriber.client("postgres").await.unwrap();
    wait_value(&sc, "SELECT count(*) >= 1000 FROM t", "t", WAIT).await;
    drop(sc);
    nodes.subscriber.kill9().expect("kill -9");
    nodes.subscriber.start_again().expect("restart");
    writer.await.unwrap().expect("writer");
    let s = nodes.subscriber.client("postgres").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM t", "100000", WAIT).await;
    let r = s.query_one("SELECT count(DISTINCT id), min(id), max(id), sum(id) FROM t", &[]).await.unwrap();
    assert_eq!(r.get::<_, i64>(0), 100000);
    assert_eq!(r.get::<_, i32>(1), 1);
    assert_eq!(r.get::<_, i32>(2), 100000);
    assert_replicated_equal(&p, &s).await;
}

/// What pg_upgrade does to a subscriber. It starts the clusters in binary-upgrade mode
/// (`postgres -b`, its `--check` too): no pgsub worker runs there (they applied changes into
/// clusters pg_upgrade treats as frozen; native's launcher is not registered either). It carries
/// pgsub's catalog over but no pgsub replication origin: a subscription that finds its origin
/// gone is created again where `disable_subscription` last stopped it (exact, whatever the
/// publisher's slot says: a PostgreSQL 15 or 16 publisher that restarts puts its slots back to
/// their last saved position, and apply from there applied transactions twice — a unique
/// violation forever here); without that record it says so (WARNING) and goes on from the slot.
#[tokio::test(flavor = "current_thread")]
async fn binary_upgrade_mode_runs_no_worker_and_a_lost_origin_is_restored() {
    let mut nodes = TwoNodes::start().expect("start");
    let (p, s) = setup(&nodes, &["t"]).await;
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t; INSERT INTO t SELECT g, 'v' FROM generate_series(1, 10) g")
        .await
        .unwrap();
    s.execute("SELECT pgsub.create_subscription('up', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "up", WAIT).await;
    wait_value(&s, "SELECT count(*) FROM t", "10", WAIT).await;
    // A subscription whose worker never applied anything (no table): its origin is at 0/0.
    p.batch_execute("CREATE PUBLICATION empty").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('idle', $1, ARRAY['empty'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'idle'", "streaming", WAIT).await;
    let idle_origin: String = one(&s, "SELECT 'pgsub_' || subid FROM pgsub.subscription WHERE subname = 'idle'").await;
    let origin: String = one(&s, "SELECT 'pgsub_' || subid FROM pgsub.subscription WHERE subname = 'up'").await;
    p.batch_execute("INSERT INTO t SELECT g, 'applied' FROM generate_series(11, 20) g").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t", "20", WAIT).await;
    drop(s);
    // Stopped cleanly with the subscription enabled (no disable first): the worker records where
    // it stopped as it exits. The publisher restarts meanwhile: a PostgreSQL 15/16 slot goes back
    // to its last saved position, before transactions this server applied.
    nodes.subscriber.stop("fast").expect("stop");
    drop(p);
    nodes.publisher.restart().expect("publisher restart");
    let p = nodes.publisher.client("postgres").await.unwrap();
    p.batch_execute("INSERT INTO t SELECT g, 'while stopped' FROM generate_series(21, 30) g").await.unwrap();
    // In binary-upgrade mode nothing runs, and the origin is lost there (as pg_upgrade loses it).
    nodes.subscriber.start_in_binary_upgrade_mode().expect("start -b");
    let s = nodes.subscriber.client("postgres").await.unwrap();
    assert!(nodes.subscriber.log_contains("pgsub: binary upgrade mode: no pgsub worker runs"));
    let pgsub_backends: i64 = one(&s, "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'pgsub%'").await;
    assert_eq!(pgsub_backends, 0, "no pgsub process in binary-upgrade mode");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 20, "nothing applied");
    let stopped: String = one(
        &s,
        "SELECT coalesce(stop_lsn::text, 'none') || ' ' || pg_replication_origin_progress('pgsub_' || subid, true)::text \
         FROM pgsub.sub WHERE subname = 'up'",
    )
    .await;
    let (recorded, progress) = stopped.split_once(' ').unwrap();
    assert_eq!(recorded, progress, "the worker recorded its origin's position as it stopped");
    let idle: String = one(&s, "SELECT coalesce(stop_lsn::text, 'none') FROM pgsub.sub WHERE subname = 'idle'").await;
    assert_eq!(idle, "0/0", "a worker that applied nothing records 0/0");
    s.execute("SELECT pg_replication_origin_drop($1)", &[&origin]).await.unwrap();
    s.execute("SELECT pg_replication_origin_drop($1)", &[&idle_origin]).await.unwrap();
    drop(s);
    nodes.subscriber.stop("fast").expect("stop");
    nodes.subscriber.start_again().expect("start");
    let s = nodes.subscriber.client("postgres").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t", "30", WAIT).await;
    assert!(nodes.subscriber.log_contains(&format!(
        "pgsub: replication origin \"{origin}\" of subscription \"up\" was missing: created again at {recorded}, where its worker last stopped"
    )));
    nodes
        .subscriber
        .wait_for_log(
            &format!("pgsub: replication origin \"{idle_origin}\" of subscription \"idle\" was missing: created again at 0/0"),
            WAIT,
        )
        .await
        .unwrap();
    assert!(
        !nodes.subscriber.log_contains("subscription \"idle\" was missing and is created again"),
        "no WARNING for 0/0"
    );
    let errors: i64 = one(&s, "SELECT error_count FROM pgsub.stat_subscription WHERE subname = 'up'").await;
    assert_eq!(errors, 0, "nothing applied twice");

    // Stopped by a crash (immediate shutdown): no record (the start forgot the last one); a lost
    // origin is created again where the slot stands, with a WARNING.
    let forgotten = "SELECT coalesce(stop_lsn::text, 'forgotten') FROM pgsub.sub WHERE subname = 'up'";
    wait_value(&s, forgotten, "forgotten", WAIT).await;
    // The slot has what was applied confirmed (a crash must not leave a transaction to send again
    // here: the origin created at the slot's position would apply it twice).
    let end: String = one(&p, "SELECT pg_current_wal_lsn()::text").await;
    wait_value(
        &p,
        &format!(
            "SELECT bool_and(confirmed_flush_lsn >= '{end}')::text FROM pg_replication_slots WHERE slot_name = 'up'"
        ),
        "true",
        WAIT,
    )
    .await;
    drop(s);
    nodes.subscriber.stop("immediate").expect("stop");
    nodes.subscriber.start_in_binary_upgrade_mode().expect("start -b");
    let s = nodes.subscriber.client("postgres").await.unwrap();
    assert_eq!(one::<String>(&s, forgotten).await, "forgotten", "nothing recorded by a crash");
    s.execute("SELECT pg_replication_origin_drop($1)", &[&origin]).await.unwrap();
    drop(s);
    nodes.subscriber.stop("fast").expect("stop");
    nodes.subscriber.start_again().expect("start");
    let s = nodes.subscriber.client("postgres").await.unwrap();
    p.batch_execute("INSERT INTO t SELECT g, 'after' FROM generate_series(31, 40) g").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t", "40", WAIT).await;
    assert!(nodes.subscriber.log_contains(&format!(
        "WARNING:  pgsub: replication origin \"{origin}\" of subscription \"up\" was missing and is created again"
    )));

    // Disabled first (the README's recipe), the origin lost, the publisher restarted: the
    // origin comes back where the worker stopped.
    s.batch_execute("SELECT pgsub.disable_subscription('up')").await.unwrap();
    let stopped: String = one(&s, "SELECT stop_lsn::text FROM pgsub.sub WHERE subname = 'up'").await;
    s.execute("SELECT pg_replication_origin_drop($1)", &[&origin]).await.unwrap();
    drop(p);
    nodes.publisher.restart().expect("publisher restart");
    let p = nodes.publisher.client("postgres").await.unwrap();
    p.batch_execute("INSERT INTO t SELECT g, 'while disabled' FROM generate_series(41, 50) g").await.unwrap();
    s.batch_execute("SELECT pgsub.enable_subscription('up')").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t", "50", WAIT).await;
    assert!(nodes.subscriber.log_contains(&format!(
        "pgsub: replication origin \"{origin}\" of subscription \"up\" was missing: created again at {stopped}"
    )));
    let errors: i64 = one(&s, "SELECT error_count FROM pgsub.stat_subscription WHERE subname = 'up'").await;
    assert_eq!(errors, 0, "nothing applied twice");
    wait_value(
        &s,
        "SELECT coalesce(stop_lsn::text, 'forgotten') FROM pgsub.sub WHERE subname = 'up'",
        "forgotten",
        WAIT,
    )
    .await;
    assert_replicated_equal(&p, &s).await;
}

/// SIGTERM in the middle of a big remote transaction: the worker records where it stopped as it
/// exits (a write of its own, after the remote transaction was abandoned), and that write neither
/// fails nor moves the origin past the abandoned transaction: nothing is lost.
#[tokio::test(flavor = "current_thread")]
async fn a_worker_terminated_mid_transaction_records_its_stop_and_loses_nothing() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = setup(&nodes, &["t"]).await;
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('term', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "term", WAIT).await;
    p.batch_execute("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 200000) g").await.unwrap();
    let mut terminated = 0;
    for _ in 0..3 {
        // A worker that is running (not yet the one that applied the whole transaction).
        let pid: Option<i32> = s
            .query_opt("SELECT pid FROM pgsub.stat_subscription WHERE subname = 'term' AND pid IS NOT NULL", &[])
            .await
            .unwrap()
            .map(|r| r.get(0));
        let applied: i64 = one(&s, "SELECT count(*) FROM t").await;
        if applied == 200000 {
            break;
        }
        if let Some(pid) = pid {
            let ok: bool = one(&s, &format!("SELECT pg_terminate_backend({pid})")).await;
            terminated += usize::from(ok);
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    eprintln!("terminated {terminated} times");
    wait_value(&s, "SELECT count(*) FROM t", "200000", WAIT).await;
    let log = nodes.subscriber.log();
    assert!(!log.contains("could not record where it stopped"), "the record at exit failed");
    for line in log.lines().filter(|l| l.contains("FATAL:") || l.contains("PANIC:")) {
        assert!(line.contains("terminating background worker"), "unexpected: {line}");
    }

    // Another session holds the subscription's row: the record at exit waits for it (here it is
    // released after a second, no WARNING), and says so when it is held past 3 s.
    let pid_sql = "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'term' AND pid IS NOT NULL";
    let held = "could not record where it stopped: another transaction holds its row";
    let locker = nodes.subscriber.client("postgres").await.unwrap();
    for hold_ms in [1000, 4500] {
        let pid: i32 = pgsub_tests::wait_for("a running worker", WAIT, || async {
            Ok(s.query_opt(pid_sql, &[]).await.map_err(|e| e.to_string())?.map(|r| r.get::<_, i32>(0)))
        })
        .await
        .unwrap();
        locker.batch_execute("BEGIN; SELECT 1 FROM pgsub.sub WHERE subname = 'term' FOR UPDATE").await.unwrap();
        assert!(one::<bool>(&s, &format!("SELECT pg_terminate_backend({pid})")).await);
        tokio::time::sleep(Duration::from_millis(hold_ms)).await;
        locker.batch_execute("ROLLBACK").await.unwrap();
        let warned = nodes.subscriber.log().matches(held).count();
        assert_eq!(warned, usize::from(hold_ms > 3000), "held {hold_ms} ms: {warned} WARNING(s)");
    }
    // An idle worker's SIGTERM is said as such (the stop asked by a pgsub function says so).
    assert!(
        nodes.subscriber.log_contains(
            "pgsub apply worker for subscription \"term\" is stopping (SIGTERM: a server shutdown or pg_terminate_backend)"
        ),
        "the reason of the stop is logged"
    );
    p.batch_execute("INSERT INTO t VALUES (200001, 'after')").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t", "200001", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// Another client holding slot `slot` of publication `pub` on the publisher: pg_recvlogical
/// (nothing is written meanwhile: it confirms what it reads), killed when the holder is dropped
/// — also when the test fails while it runs, which would otherwise leave it holding the test's
/// output open.
struct SlotHolder(std::process::Child);

impl SlotHolder {
    /// Lets go of the slot: the process is killed and waited for.
    fn release(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        // Already gone is fine: only its end matters.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for SlotHolder {
    fn drop(&mut self) {
        self.stop();
    }
}

fn hold_slot(nodes: &TwoNodes, slot: &str) -> SlotHolder {
    let child = std::process::Command::new("/usr/lib/postgresql/15/bin/pg_recvlogical")
        .args(["-h", "127.0.0.1", "-p", &nodes.publisher.port().to_string(), "-U", "postgres", "-d", "postgres"])
        .args(["--slot", slot, "--start", "-o", "proto_version=1", "-o", "publication_names=pub", "-f", "/dev/null"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("pg_recvlogical");
    SlotHolder(child)
}

/// The subscription's slot still active on the publisher when the worker starts (here another
/// client streams it; after a refresh it is the previous connection's walsender, busy decoding a
/// large transaction): the worker waits for it, `connecting` with a LOG line, not an error to
/// back off from, and streams once it is free.
#[tokio::test(flavor = "current_thread")]
async fn a_slot_still_active_on_the_publisher_is_waited_for_not_an_error() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = setup(&nodes, &["t"]).await;
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t; INSERT INTO t VALUES (1, 'a')").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('busy', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "busy", WAIT).await;
    s.batch_execute("SELECT pgsub.disable_subscription('busy')").await.unwrap();
    wait_value(&p, "SELECT active::text FROM pg_replication_slots WHERE slot_name = 'busy'", "false", WAIT).await;
    // Another client holds the slot (nothing is written meanwhile: it confirms what it reads).
    let holder = hold_slot(&nodes, "busy");
    wait_value(&p, "SELECT active::text FROM pg_replication_slots WHERE slot_name = 'busy'", "true", WAIT).await;
    s.batch_execute("SELECT pgsub.enable_subscription('busy')").await.unwrap();
    nodes
        .subscriber
        .wait_for_log("pgsub: replication slot \"busy\" is still active on the publisher", WAIT)
        .await
        .unwrap();
    let (status, errors): (String, i64) = {
        let r = s
            .query_one("SELECT status, error_count FROM pgsub.stat_subscription WHERE subname = 'busy'", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((status.as_str(), errors), ("connecting", 0), "waiting for the slot is not an error");
    // Each try is an ERROR line in the publisher's log: after the first quick ones they are 2 s
    // apart (they were 250 ms: 120 lines in the 30 s). Held 8 s (pacing, not a wait for a
    // condition).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let tries = nodes.publisher.log().matches("replication slot \"busy\" is active for PID").count();
    assert!((2..=10).contains(&tries), "{tries} tries in about 8 s");
    holder.release();
    p.batch_execute("INSERT INTO t VALUES (2, 'b')").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t", "2", WAIT).await;
    let errors: i64 = one(&s, "SELECT error_count FROM pgsub.stat_subscription WHERE subname = 'busy'").await;
    assert_eq!(errors, 0, "the wait never counted as an error");
    assert_replicated_equal(&p, &s).await;

    // drop_subscription while another client holds the slot: not a wait for ever (native's
    // DROP_REPLICATION_SLOT … WAIT), an error after 30 s naming the way out, nothing dropped.
    s.batch_execute("SELECT pgsub.disable_subscription('busy')").await.unwrap();
    wait_value(&p, "SELECT active::text FROM pg_replication_slots WHERE slot_name = 'busy'", "false", WAIT).await;
    let holder = hold_slot(&nodes, "busy");
    wait_value(&p, "SELECT active::text FROM pg_replication_slots WHERE slot_name = 'busy'", "true", WAIT).await;
    let e = must_fail(&s, "SELECT pgsub.drop_subscription('busy')", &[]).await;
    assert_eq!(e.code, "55006", "{}", e.text());
    assert!(e.text().contains("Another process uses the slot"), "{}", e.text());
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pgsub.subscription WHERE subname = 'busy'").await, 1);
    // Let go during the drop's wait: the drop goes through.
    let release = tokio::spawn(async move {
        // The holder keeps the slot for 2 s of the drop's wait (pacing, not a wait for a condition).
        tokio::time::sleep(Duration::from_secs(2)).await;
        holder.release();
    });
    s.batch_execute("SELECT pgsub.drop_subscription('busy')").await.expect("dropped once the slot is let go");
    release.await.unwrap();
    // (The tables were compared above, while the subscription existed.)
    assert_eq!(one::<i64>(&p, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'busy'").await, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn publisher_restart_reconnects_and_converges() {
    let mut nodes = TwoNodes::start().expect("start");
    let (p, s) = setup(&nodes, &["t"]).await;
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t; INSERT INTO t SELECT g, 'a' FROM generate_series(1, 100) g")
        .await
        .unwrap();
    s.execute("SELECT pgsub.create_subscription('r', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM t", "100", WAIT).await;
    drop(p);
    nodes.publisher.restart().expect("publisher restart");
    let p = nodes.publisher.client("postgres").await.unwrap();
    p.batch_execute(
        "INSERT INTO t SELECT g, 'b' FROM generate_series(101, 200) g; UPDATE t SET v = 'c' WHERE id <= 50",
    )
    .await
    .unwrap();
    wait_value(&s, "SELECT count(*) FILTER (WHERE v = 'c')::text || '/' || count(*) FROM t", "50/200", WAIT).await;
    let errors: i64 = one(&s, "SELECT error_count FROM pgsub.stat_subscription WHERE subname = 'r'").await;
    assert!(errors >= 1, "the lost connection was recorded");
    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn alter_connection_and_publications() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = setup(&nodes, &["a", "b"]).await;
    p.batch_execute(
        "CREATE PUBLICATION pa FOR TABLE a; CREATE PUBLICATION pb FOR TABLE b; INSERT INTO b VALUES (1, 'b1')",
    )
    .await
    .unwrap();
    s.execute("SELECT pgsub.create_subscription('alt', $1, ARRAY['pa'])", &[&nodes.pub_conninfo()]).await.unwrap();
    p.batch_execute("INSERT INTO a VALUES (1, 'a1')").await.unwrap();
    wait_value(&s, "SELECT v FROM a WHERE id = 1", "a1", WAIT).await;
    let pid1: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'alt'").await;

    // A new connection string is checked on the spot, then the worker restarts with it.
    let bad = s
        .execute("SELECT pgsub.alter_subscription_connection('alt', 'host=127.0.0.1 port=1 connect_timeout=3 dbname=postgres')", &[])
        .await;
    assert!(bad.is_err(), "unreachable conninfo is refused");
    let ci = format!("{} application_name=renamed", nodes.pub_conninfo());
    s.execute("SELECT pgsub.alter_subscription_connection('alt', $1)", &[&ci]).await.expect("alter connection");
    wait_value(&p, "SELECT count(*)::text FROM pg_stat_replication WHERE application_name = 'renamed'", "1", WAIT)
        .await;
    // The worker that streams under the new name is another process than the first one (read
    // by waiting: a worker between two attempts shows no pid for a moment).
    wait_value(
        &s,
        &format!("SELECT (pid IS NOT NULL AND pid <> {pid1})::text FROM pgsub.stat_subscription WHERE subname = 'alt'"),
        "true",
        WAIT,
    )
    .await;

    // New publication list: b is copied and followed, a is no longer applied.
    s.batch_execute("SELECT pgsub.alter_subscription_publications('alt', ARRAY['pb'])")
        .await
        .expect("alter publications");
    wait_value(&s, "SELECT v FROM b WHERE id = 1", "b1", WAIT).await;
    p.batch_execute("INSERT INTO b VALUES (2, 'b2'); INSERT INTO a VALUES (2, 'a2')").await.unwrap();
    wait_value(&s, "SELECT v FROM b WHERE id = 2", "b2", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM a WHERE id = 2").await, 0, "a is not subscribed any more");
    let pubs: Vec<String> = one(&s, "SELECT publications FROM pgsub.subscription WHERE subname = 'alt'").await;
    assert_eq!(pubs, vec!["pb".to_string()]);
    // Only b is compared: a left the subscription and misses its row 2 on purpose.
    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn disable_on_error_and_drop_with_publisher_down() {
    let mut nodes = TwoNodes::start().expect("start");
    let (p, s) = setup(&nodes, &["t"]).await;
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    s.execute(
        "SELECT pgsub.create_subscription('doe', $1, ARRAY['pub'], disable_on_error => true)",
        &[&nodes.pub_conninfo()],
    )
    .await
    .unwrap();
    wait_for_subscription_sync(&s, "doe", WAIT).await;
    s.batch_execute("INSERT INTO t VALUES (1, 'local')").await.unwrap();
    p.batch_execute("INSERT INTO t VALUES (1, 'remote')").await.unwrap();
    wait_value(&s, "SELECT enabled::text FROM pgsub.subscription WHERE subname = 'doe'", "false", WAIT).await;
    wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'doe'", "disabled", WAIT).await;
    let err: String = one(&s, "SELECT last_error FROM pgsub.stat_subscription WHERE subname = 'doe'").await;
    // Disabled on the conflict the row-by-row retry reports, as natively at the first attempt.
    assert!(err.contains("conflict=insert_exists"), "{err}");
    // Compared before the publisher goes down and the subscription is dropped. t, its only
    // table, holds just the conflicting row 1 ('local' here, 'remote' there) on purpose.
    assert_rows_equal(&p, &s, "SELECT * FROM t WHERE id <> 1", WAIT).await;
    assert_replicated_equal_except(&p, &s, None, &["t"]).await;

    // With the publisher down, dropping with the slot fails and says how to proceed.
    drop(p);
    nodes.publisher.stop("fast").expect("stop publisher");
    let e = s.batch_execute("SELECT pgsub.drop_subscription('doe')").await.expect_err("publisher down");
    let db = e.as_db_error().expect("db error");
    assert!(db.hint().unwrap_or_default().contains("drop_slot => false"), "{:?}", db.hint());
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pgsub.subscription").await, 1, "nothing dropped");
    s.batch_execute("SELECT pgsub.drop_subscription('doe', drop_slot => false)").await.expect("drop without slot");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pgsub.subscription").await, 0);
}

/// pgsub.database set to another database, created after the server started (as a DBA would):
/// the launcher retries until the database exists, then the extension there replicates; the
/// functions refuse to create subscriptions in a database the workers do not run in.
#[tokio::test(flavor = "current_thread")]
async fn launcher_in_a_database_created_after_start() {
    let mut nodes = TwoNodes::start_with(
        ClusterOpts::publisher(),
        ClusterOpts::subscriber().with_conf("pgsub.database = 'App DB'"),
    )
    .expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    p.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    // In postgres (where TwoNodes created the extension) a subscription is refused.
    let s0 = nodes.subscriber.client("postgres").await.unwrap();
    let e = s0
        .execute("SELECT pgsub.create_subscription('x', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect_err("subscription outside pgsub.database");
    let msg = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
    assert!(msg.contains("App DB"), "error names pgsub.database: {msg}");
    s0.batch_execute(r#"CREATE DATABASE "App DB""#).await.unwrap();
    let s = nodes.subscriber.client("App DB").await.unwrap();
    s.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE EXTENSION pgsub").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('app', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create in pgsub.database");
    p.batch_execute("INSERT INTO t VALUES (1, 'in app')").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 1", "in app", WAIT).await;
    let db: String = one(&s, "SELECT datname::text FROM pg_stat_activity WHERE backend_type = 'pgsub launcher'").await;
    assert_eq!(db, "App DB");

    // pgsub.database changed to leave the database out: its subscription says it is not served
    // (not `starting` forever), and health reports it; set back, it goes on.
    s.batch_execute("ALTER SYSTEM SET pgsub.database = 'postgres'").await.unwrap();
    drop(s);
    drop(s0);
    nodes.subscriber.restart().expect("restart");
    let s = nodes.subscriber.client("App DB").await.unwrap();
    p.batch_execute("INSERT INTO t VALUES (2, 'while not served')").await.unwrap();
    wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'app'", "not_served", WAIT).await;
    let problem: String = one(&s, "SELECT problem || ' ' || severity || ' ' || detail FROM pgsub.health").await;
    assert!(problem.starts_with("not_served critical pgsub does not serve database App DB"), "{problem}");
    // The server-wide view says so too (it said `starting`).
    wait_value(&s, "SELECT status FROM pgsub.stat_subscription_all WHERE subname = 'app'", "not_served", WAIT).await;
    s.batch_execute("ALTER SYSTEM RESET pgsub.database").await.unwrap();
    drop(s);
    nodes.subscriber.restart().expect("restart");
    let s = nodes.subscriber.client("App DB").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 2", "while not served", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// `alter_subscription_options` (native `ALTER SUBSCRIPTION … SET (…)`) and `rename_subscription`:
/// bad values are refused and change nothing; options given replace the current ones, those not
/// given stay; the worker restarts with them; the slot changes only while disabled; a rename
/// shows as the walsender's application_name.
#[tokio::test(flavor = "current_thread")]
async fn alter_options_and_rename() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = setup(&nodes, &["t"]).await;
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('opt', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    s.execute(
        "SELECT pgsub.create_subscription('other', $1, ARRAY['pub'], enabled => false, create_slot => false)",
        &[&nodes.pub_conninfo()],
    )
    .await
    .unwrap();
    wait_for_subscription_sync(&s, "opt", WAIT).await;
    let options = "SELECT format('%s %s %s %s %s %s', coalesce(left(\"binary\"::text, 1), 'auto'), streaming, synchronous_commit, disable_on_error, origin, slot_name)
                   FROM pgsub.subscription WHERE subname = $1";
    let before: String = s.query_one(options, &[&"opt"]).await.unwrap().get(0);
    assert_eq!(before, "auto off off f any opt");
    for (sql, code) in [
        ("SELECT pgsub.alter_subscription_options('opt', synchronous_commit => 'sometimes')", "22023"),
        ("SELECT pgsub.alter_subscription_options('opt', origin => 'elsewhere')", "22023"),
        ("SELECT pgsub.alter_subscription_options('opt', slot_name => 'opt_b')", "55000"),
        ("SELECT pgsub.alter_subscription_options('nope', streaming => true)", "42704"),
        ("SELECT pgsub.alter_subscription_options('opt', streaming => 'sometimes')", "22023"),
        ("SELECT pgsub.alter_subscription_options('opt', streaming => 3)", "22023"),
        ("SELECT pgsub.rename_subscription('opt', 'other')", "42710"),
        ("SELECT pgsub.rename_subscription('opt', 'opt')", "42710"),
        ("SELECT pgsub.rename_subscription('opt', '')", "22023"),
    ] {
        let err = s.execute(sql, &[]).await.expect_err(sql);
        assert_eq!(err.as_db_error().map(|d| d.code().code()), Some(code), "{sql}: {err}");
    }
    let unchanged: String = s.query_one(options, &[&"opt"]).await.unwrap().get(0);
    assert_eq!(unchanged, before, "refused calls change nothing");

    let pid1: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'opt'").await;
    s.batch_execute(
        "SELECT pgsub.alter_subscription_options('opt', binary => true, streaming => true, synchronous_commit => 'local', disable_on_error => true)",
    )
    .await
    .expect("alter options");
    let after: String = s.query_one(options, &[&"opt"]).await.unwrap().get(0);
    assert_eq!(after, "t on local t any opt", "given options replaced, the others kept");
    // streaming takes PostgreSQL's spellings: a boolean, 'on'/'off', 'parallel'.
    for (value, shown) in [("'parallel'", "parallel"), ("'off'", "off"), ("false", "off"), ("'on'", "on")] {
        s.batch_execute(&format!("SELECT pgsub.alter_subscription_options('opt', streaming => {value})"))
            .await
            .unwrap();
        let got: String = one(&s, "SELECT streaming FROM pgsub.subscription WHERE subname = 'opt'").await;
        assert_eq!(got, shown, "streaming => {value}");
    }
    // The worker restarts with the new options: another pid, streaming.
    let restarted = format!(
        "SELECT count(*) FROM pgsub.stat_subscription WHERE subname = 'opt' AND status = 'streaming' AND pid <> {pid1}"
    );
    wait_value(&s, &restarted, "1", WAIT).await;
    p.batch_execute("INSERT INTO t VALUES (1, 'binary now')").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 1", "binary now", WAIT).await;

    // Another slot, while disabled.
    s.batch_execute("SELECT pgsub.disable_subscription('opt')").await.unwrap();
    p.batch_execute("SELECT pg_create_logical_replication_slot('opt_b', 'pgoutput')").await.unwrap();
    s.batch_execute("SELECT pgsub.alter_subscription_options('opt', slot_name => 'opt_b')")
        .await
        .expect("slot while disabled");
    s.batch_execute("SELECT pgsub.enable_subscription('opt')").await.unwrap();
    wait_value(&p, "SELECT active::text FROM pg_replication_slots WHERE slot_name = 'opt_b'", "true", WAIT).await;
    p.batch_execute("INSERT INTO t VALUES (2, 'through opt_b')").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 2", "through opt_b", WAIT).await;

    // Rename: the slot and the rows stay, the walsender shows the new name.
    s.batch_execute("SELECT pgsub.rename_subscription('opt', 'Opt \"Renamed\"')").await.expect("rename");
    wait_value(
        &p,
        "SELECT count(*)::text FROM pg_stat_replication WHERE application_name = 'Opt \"Renamed\"'",
        "1",
        WAIT,
    )
    .await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pgsub.subscription WHERE subname = 'opt'").await, 0);
    p.batch_execute("INSERT INTO t VALUES (3, 'renamed')").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 3", "renamed", WAIT).await;
    let slot: String =
        one(&s, "SELECT slot_name::text FROM pgsub.subscription WHERE subname = 'Opt \"Renamed\"'").await;
    assert_eq!(slot, "opt_b");
    // `other` was never enabled (and shares t): the renamed subscription is the one compared.
    assert_replicated_equal_for(&p, &s, Some(&["Opt \"Renamed\""])).await;
}

/// Native `connect = false`: a subscription made while the publisher cannot be reached (a
/// restore, a publisher not up yet) — nothing asked of it, no slot, no tables, disabled, with
/// native's WARNING; then the connection is fixed, the slot made by hand, the subscription
/// enabled and refreshed, as native's documentation says, and it replicates. `failover => true`
/// needs the publisher and is refused with it.
#[tokio::test(flavor = "current_thread")]
async fn a_subscription_created_without_connecting_is_started_by_hand() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = setup(&nodes, &["t"]).await;
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t; INSERT INTO t VALUES (1, 'copied')").await.unwrap();
    let unreachable = "host=127.0.0.1 port=1 dbname=postgres user=postgres connect_timeout=2";
    let e = s
        .execute(
            "SELECT pgsub.create_subscription('cs', $1, ARRAY['pub'], connect => false, failover => true)",
            &[&unreachable],
        )
        .await
        .expect_err("failover without connecting");
    assert_eq!(e.code().map(|c| c.code()), Some("42601"), "{e:?}");
    s.execute("SELECT pgsub.create_subscription('cs', $1, ARRAY['pub'], connect => false)", &[&unreachable])
        .await
        .expect("created without connecting");
    assert!(nodes.subscriber.log_contains("subscription \"cs\" was created, but is not connected"));
    assert!(!one::<bool>(&s, "SELECT enabled FROM pgsub.subscription WHERE subname = 'cs'").await);
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pgsub.subscription_table WHERE subname = 'cs'").await, 0);
    assert_eq!(one::<i64>(&p, "SELECT count(*) FROM pg_replication_slots").await, 0, "no slot was made");
    // The documented steps.
    s.execute("SELECT pgsub.alter_subscription_connection('cs', $1)", &[&nodes.pub_conninfo()]).await.unwrap();
    p.batch_execute("SELECT pg_create_logical_replication_slot('cs', 'pgoutput')").await.unwrap();
    s.batch_execute("SELECT pgsub.enable_subscription('cs'); SELECT pgsub.refresh_subscription('cs')").await.unwrap();
    wait_for_subscription_sync(&s, "cs", WAIT).await;
    p.batch_execute("INSERT INTO t VALUES (2, 'streamed')").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM t", "2", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// `pg_cancel_backend` of an idle apply worker is answered at once, as native's: an error in
/// `last_error` ("canceling statement due to user request"), the retry, and changes flow again.
/// It stayed pending until the next remote transaction, which it then failed (an error dated
/// long after the request, on a transaction that had nothing to do with it).
#[tokio::test(flavor = "current_thread")]
async fn a_cancel_of_an_idle_worker_is_answered_at_once() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = setup(&nodes, &["t"]).await;
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t; INSERT INTO t VALUES (1, 'a')").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('c', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "c", WAIT).await;
    wait_value(&s, "SELECT count(*) FROM t", "1", WAIT).await;
    s.batch_execute("SELECT pg_cancel_backend(pid) FROM pgsub.stat_subscription WHERE subname = 'c'").await.unwrap();
    // Nothing is written on the publisher meanwhile.
    let err =
        wait_for_subscription_error(&s, "c", &["canceling statement due to user request"], Duration::from_secs(20))
            .await;
    eprintln!("{err}");
    p.batch_execute("INSERT INTO t VALUES (2, 'b')").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t", "2", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// The error backoff counts from the failed worker's start, as native's launcher counts
/// `wal_retrieve_retry_interval` from the last start: a worker that had streamed for longer than
/// its delay when the publisher ended its connection (here its walsender terminated; a
/// `wal_sender_timeout` while the worker waited on a local lock ends it the same way) reconnects
/// at once — it waited the whole `pgsub.retry_interval` (30 s here) before — while one that fails
/// again moments after its start still waits (10 s had passed between the two; 60 s then).
#[tokio::test(flavor = "current_thread")]
async fn a_connection_lost_after_a_long_run_is_taken_up_again_at_once() {
    let nodes = TwoNodes::start_with(
        ClusterOpts::publisher(),
        ClusterOpts::subscriber().with_conf("pgsub.retry_interval = '30s'"),
    )
    .expect("start");
    let (p, s) = setup(&nodes, &["t"]).await;
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t; INSERT INTO t VALUES (1, 'a')").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('lr', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "lr", WAIT).await;
    let first: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'lr'").await;
    // Streaming for longer than the retry interval.
    tokio::time::sleep(Duration::from_secs(32)).await;
    let kill = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication WHERE application_name = 'lr'";
    assert_eq!(one::<i64>(&p, kill).await, 1);
    let lost = Instant::now();
    // A new worker streams again, well before the 30 s the backoff used to wait.
    let second: i32 = pgsub_tests::wait_for("a new worker", Duration::from_secs(20), || async {
        let r = s
            .query_opt("SELECT pid FROM pgsub.stat_subscription WHERE subname = 'lr' AND status = 'streaming'", &[])
            .await
            .map_err(|e| e.to_string())?;
        Ok(r.and_then(|r| r.get::<_, Option<i32>>(0)).filter(|&pid| pid != first))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(lost.elapsed() < Duration::from_secs(20));
    assert!(one::<i64>(&s, "SELECT error_count FROM pgsub.stat_subscription WHERE subname = 'lr'").await >= 1);
    p.batch_execute("INSERT INTO t VALUES (2, 'b')").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t", "2", WAIT).await;

    // The new worker's connection ends moments after its start: that one waits its backoff.
    wait_value(&p, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'lr'", "1", WAIT).await;
    assert_eq!(one::<i64>(&p, kill).await, 1);
    wait_value(
        &s,
        "SELECT status || ' ' || (pid IS NULL) FROM pgsub.stat_subscription WHERE subname = 'lr'",
        "error true",
        WAIT,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let waiting: String =
        one(&s, "SELECT status || ' ' || (pid IS NULL) FROM pgsub.stat_subscription WHERE subname = 'lr'").await;
    assert_eq!(waiting, "error true", "a worker that failed soon after its start waits before the next");
    assert_ne!(second, 0);
    p.batch_execute("INSERT INTO t VALUES (3, 'c')").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t", "3", Duration::from_secs(120)).await;
    assert_replicated_equal(&p, &s).await;
}

/// PostgreSQL 17's `transaction_timeout` set for the subscriber's database (meant for its users)
/// does not end the workers' transactions: a remote transaction whose apply takes longer (a
/// replica trigger sleeps 1.5 s) is applied, with no error (a FATAL ended the worker every time
/// and it started again into the same transaction for ever, recording nothing; native's loop so).
/// Needs a PostgreSQL 17+ subscriber (CI runs it on 18).
#[tokio::test(flavor = "current_thread")]
async fn a_databases_transaction_timeout_does_not_end_the_workers_transactions() {
    if pgsub_tests::server_major() < 17 {
        eprintln!("skipped: transaction_timeout is PostgreSQL 17's");
        return;
    }
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = setup(&nodes, &["t"]).await;
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    s.batch_execute(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(1.5); RETURN NEW; END $$;
         CREATE TRIGGER slow BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION slow();
         ALTER TABLE t ENABLE REPLICA TRIGGER slow;
         ALTER DATABASE postgres SET transaction_timeout = '1s'",
    )
    .await
    .unwrap();
    s.execute("SELECT pgsub.create_subscription('tt', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "tt", WAIT).await;
    p.batch_execute("INSERT INTO t VALUES (1, 'slow')").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t", "1", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT error_count FROM pgsub.stat_subscription WHERE subname = 'tt'").await, 0);
    assert!(!nodes.subscriber.log_contains("terminating connection due to transaction timeout"));
    assert_replicated_equal(&p, &s).await;
}
