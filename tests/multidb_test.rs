//! End-to-end: subscriptions in every database of the subscriber (issue 17). A `pgsub supervisor`
//! keeps one `pgsub launcher` per database that has the extension and an enabled subscription;
//! `pgsub.max_apply_workers` is server-wide; `pgsub.stat_subscription_all` and
//! `pgsub.stat_database` show the whole server from any database with the extension. Databases
//! created after start, DROP DATABASE / DROP EXTENSION, kill -9 of each process level, a server
//! without the preload, and bounded probing of many databases without the extension.
use pgsub_tests::tokio_postgres::types::PgLsn;
use pgsub_tests::{
    assert_replicated_equal_for, must_fail, one, pid_alive, query_text, quote_ident, quote_literal, wait_for,
    wait_for_subscription_sync, wait_value, Cluster, ClusterOpts, Notices, TwoNodes,
};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(60);

/// Creates database `db` on `node` (from `postgres`), runs `ddl` in it and, with `extension`,
/// `CREATE EXTENSION pgsub`; returns a client of it.
async fn create_database(node: &Cluster, db: &str, ddl: &str, extension: bool) -> Client {
    let admin = node.client("postgres").await.expect("client of postgres");
    admin.batch_execute(&format!("CREATE DATABASE {}", quote_ident(db))).await.unwrap_or_else(|e| panic!("{db}: {e}"));
    let c = node.client(db).await.unwrap_or_else(|e| panic!("client of {db}: {e}"));
    if !ddl.is_empty() {
        c.batch_execute(ddl).await.unwrap_or_else(|e| panic!("{db}: {ddl}: {e}"));
    }
    if extension {
        c.batch_execute("CREATE EXTENSION pgsub").await.unwrap_or_else(|e| panic!("CREATE EXTENSION in {db}: {e}"));
    }
    c
}

/// `pgsub.create_subscription(name, conninfo, ARRAY[publication] <options>)` on `s`; `options`
/// is SQL appended to the arguments (", copy_data => false").
async fn create_sub(s: &Client, name: &str, conninfo: &str, publication: &str, options: &str) {
    let sql = format!("SELECT pgsub.create_subscription($1, $2, $3::text[]{options})");
    s.execute(&sql, &[&name, &conninfo, &vec![publication]])
        .await
        .unwrap_or_else(|e| panic!("create_subscription {name}: {e}"));
}

/// The status of subscription `sub` in the database of the client it runs on.
fn status_sql(sub: &str) -> String {
    format!("SELECT status FROM pgsub.stat_subscription WHERE subname = {}", quote_literal(sub))
}

/// How many processes of `backend_type` are connected to database `db`.
fn backends_in(backend_type: &str, db: &str) -> String {
    format!(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = {} AND datname = {}",
        quote_literal(backend_type),
        quote_literal(db)
    )
}

/// A table of the tests: a primary key and a text value.
const TABLE: &str = "(id int PRIMARY KEY, v text)";

/// Three databases on the subscriber, one of them named with a quote, a space, an accent and a
/// dash; two publishers; the same subscription name in two databases (each to another database
/// of the same publisher, with the same table and publication names) and one database following
/// two publishers. All four subscriptions stream at once; each publisher database is compared
/// with each subscriber database it feeds, and the server-wide views list every subscription
/// and database from whichever database they are read.
#[tokio::test(flavor = "current_thread")]
async fn three_databases_two_publishers_replicate_at_once() {
    let pub1 = Cluster::start(ClusterOpts { name: "publisher1".into(), ..ClusterOpts::publisher() }).expect("pub1");
    let pub2 = Cluster::start(ClusterOpts { name: "publisher2".into(), ..ClusterOpts::publisher() }).expect("pub2");
    let sub = Cluster::subscriber().expect("subscriber");
    const APP: &str = "App \"DB\" é-1";

    // pub1/postgres: t (→ db_a) and app1 (→ APP); pub1/"src b": its own t (→ db_b), with other
    // rows, so that a subscription reading the wrong database shows; pub2/postgres: app2 (→ APP).
    let p1 = pub1.client("postgres").await.unwrap();
    p1.batch_execute(&format!(
        "CREATE TABLE t {TABLE}; CREATE TABLE app1 {TABLE};
         CREATE PUBLICATION p1 FOR TABLE t; CREATE PUBLICATION p_app FOR TABLE app1;
         INSERT INTO t SELECT g, 'postgres ' || g FROM generate_series(1, 100) g;
         INSERT INTO app1 SELECT g, 'app1 ' || g FROM generate_series(1, 50) g;"
    ))
    .await
    .unwrap();
    let p1b = create_database(
        &pub1,
        "src b",
        &format!(
            "CREATE TABLE t {TABLE}; CREATE PUBLICATION p1 FOR TABLE t;
             INSERT INTO t SELECT g, 'src b ' || g FROM generate_series(1, 70) g;"
        ),
        false,
    )
    .await;
    let p2 = pub2.client("postgres").await.unwrap();
    p2.batch_execute(&format!(
        "CREATE TABLE app2 {TABLE}; CREATE PUBLICATION p2 FOR TABLE app2;
         INSERT INTO app2 SELECT g, 'app2 ' || g FROM generate_series(1, 30) g;"
    ))
    .await
    .unwrap();

    let sa = create_database(&sub, "db_a", &format!("CREATE TABLE t {TABLE}"), true).await;
    let sb = create_database(&sub, "db_b", &format!("CREATE TABLE t {TABLE}"), true).await;
    let sapp = create_database(&sub, APP, &format!("CREATE TABLE app1 {TABLE}; CREATE TABLE app2 {TABLE}"), true).await;
    // The same subscription name in db_a and db_b: their slots on pub1 need names of their own.
    create_sub(&sa, "main", &pub1.connstr("postgres", "postgres"), "p1", ", slot_name => 'main_a'").await;
    create_sub(&sb, "main", &pub1.connstr("postgres", "src b"), "p1", ", slot_name => 'main_b'").await;
    create_sub(&sapp, "one", &pub1.connstr("postgres", "postgres"), "p_app", "").await;
    create_sub(&sapp, "two", &pub2.connstr("postgres", "postgres"), "p2", "").await;
    wait_for_subscription_sync(&sa, "main", WAIT).await;
    wait_for_subscription_sync(&sb, "main", WAIT).await;
    wait_for_subscription_sync(&sapp, "one", WAIT).await;
    wait_for_subscription_sync(&sapp, "two", WAIT).await;

    // Changes on all three publisher databases while all four subscriptions stream.
    for round in 0..3 {
        let base = 1000 + round * 100;
        let change = |table: &str, tag: &str| {
            format!(
                "INSERT INTO {table} SELECT g, '{tag} ' || g FROM generate_series({base}, {base} + 49) g;
                 UPDATE {table} SET v = v || ' round {round}' WHERE id % 7 = {round};
                 DELETE FROM {table} WHERE id % 11 = {round};"
            )
        };
        p1.batch_execute(&(change("t", "postgres") + &change("app1", "app1"))).await.unwrap();
        p1b.batch_execute(&change("t", "src b")).await.unwrap();
        p2.batch_execute(&change("app2", "app2")).await.unwrap();
    }
    // A last row in each table, written after all the changes above: once it is there, they are.
    let last = "INSERT INTO {t} VALUES (99999, 'last of {db}')";
    let last = |t: &str, db: &str| last.replace("{t}", t).replace("{db}", db);
    p1.batch_execute(&format!("{}; {}", last("t", "postgres"), last("app1", "postgres"))).await.unwrap();
    p1b.batch_execute(&last("t", "src b")).await.unwrap();
    p2.batch_execute(&last("app2", "pub2")).await.unwrap();
    wait_value(&sa, "SELECT v FROM t WHERE id = 99999", "last of postgres", WAIT).await;
    wait_value(&sb, "SELECT v FROM t WHERE id = 99999", "last of src b", WAIT).await;
    wait_value(&sapp, "SELECT v FROM app1 WHERE id = 99999", "last of postgres", WAIT).await;
    wait_value(&sapp, "SELECT v FROM app2 WHERE id = 99999", "last of pub2", WAIT).await;

    // Processes: one supervisor without a database, one launcher in each database with
    // subscriptions (none in postgres or the templates, which have no extension), one apply worker
    // per subscription, connected to its own database.
    wait_value(
        &sa,
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pgsub supervisor' AND datname IS NULL",
        "1",
        WAIT,
    )
    .await;
    let per_db = |backend_type: &str| {
        format!(
            "SELECT datname, count(*) FROM pg_stat_activity WHERE backend_type = {} \
             GROUP BY datname ORDER BY datname COLLATE \"C\"",
            quote_literal(backend_type)
        )
    };
    let app_rows = |n: i32| format!("{APP}|{n}\ndb_a|1\ndb_b|1");
    wait_value(&sa, &per_db("pgsub launcher"), &app_rows(1), WAIT).await;
    wait_value(&sa, &per_db("pgsub apply worker"), &app_rows(2), WAIT).await;

    // stat_subscription_all: the same four rows from each of the three databases.
    let all = "SELECT datname, subname, status FROM pgsub.stat_subscription_all \
               ORDER BY datname COLLATE \"C\", subname COLLATE \"C\"";
    let expected_all = format!("{APP}|one|streaming\n{APP}|two|streaming\ndb_a|main|streaming\ndb_b|main|streaming");
    for c in [&sa, &sb, &sapp] {
        wait_value(c, all, &expected_all, WAIT).await;
    }
    // Each row's pid is an apply worker connected to that row's database, and each has
    // received and applied something.
    wait_value(
        &sb,
        "SELECT count(*) FROM pgsub.stat_subscription_all s JOIN pg_stat_activity a \
         ON a.pid = s.pid AND a.datname = s.datname AND a.backend_type = 'pgsub apply worker' \
         WHERE s.received_lsn IS NOT NULL AND s.applied_lsn IS NOT NULL",
        "4",
        WAIT,
    )
    .await;
    // The columns and their types, and subid as the subscription's own database numbers it.
    let rows = sapp
        .query(
            "SELECT datname, subid, subname, status, pid, received_lsn, applied_lsn, last_error, error_count \
             FROM pgsub.stat_subscription_all",
            &[],
        )
        .await
        .expect("stat_subscription_all");
    assert_eq!(rows.len(), 4);
    for r in &rows {
        let datname: String = r.try_get(0).expect("datname (name)");
        let subid: i32 = r.try_get(1).expect("subid (int)");
        let subname: String = r.try_get(2).expect("subname (text)");
        let _status: String = r.try_get(3).expect("status (text)");
        let pid: Option<i32> = r.try_get(4).expect("pid (int)");
        let _received: Option<PgLsn> = r.try_get(5).expect("received_lsn (pg_lsn)");
        let _applied: Option<PgLsn> = r.try_get(6).expect("applied_lsn (pg_lsn)");
        let _last_error: Option<String> = r.try_get(7).expect("last_error (text)");
        let _errors: i64 = r.try_get(8).expect("error_count (bigint)");
        assert!(pid.is_some(), "{datname}/{subname}: no pid");
        let own = match datname.as_str() {
            "db_a" => &sa,
            "db_b" => &sb,
            APP => &sapp,
            other => panic!("unexpected database {other:?} in stat_subscription_all"),
        };
        let own_subid: i32 =
            one(own, &format!("SELECT subid FROM pgsub.stat_subscription WHERE subname = {}", quote_literal(&subname)))
                .await;
        assert_eq!(subid, own_subid, "{datname}/{subname}: subid differs from its database's stat_subscription");
    }

    // stat_database: every database of the server, the three with subscriptions running with
    // the launcher seen in pg_stat_activity, the others with none. template1 is either
    // no_extension or excluded (the issue leaves templates open; a launcher connected to it
    // would make CREATE DATABASE fail), never with a launcher.
    let databases = "SELECT datname, CASE WHEN datname = 'template1' AND state IN ('no_extension', 'excluded') \
                            THEN 'no launcher' ELSE state END, launcher_pid IS NOT NULL \
                     FROM pgsub.stat_database ORDER BY datname COLLATE \"C\"";
    let expected_databases = format!(
        "{APP}|running|t\ndb_a|running|t\ndb_b|running|t\npostgres|no_extension|f\n\
         template0|not_connectable|f\ntemplate1|no launcher|f"
    );
    wait_value(&sb, databases, &expected_databases, WAIT).await;
    wait_value(
        &sapp,
        "SELECT count(*) FROM pgsub.stat_database d JOIN pg_stat_activity a \
         ON a.pid = d.launcher_pid AND a.datname = d.datname AND a.backend_type = 'pgsub launcher' \
         WHERE d.state = 'running'",
        "3",
        WAIT,
    )
    .await;
    let probes: i64 = one(&sa, "SELECT min(probes) FROM pgsub.stat_database WHERE state = 'running'").await;
    assert!(probes >= 1, "a running database was probed {probes} times");

    // A role without pg_monitor or pgsub_admin sees its own database's subscriptions only: the
    // server-wide views are closed to it, the shared-memory helpers filter by database.
    sa.batch_execute("CREATE ROLE plain LOGIN").await.unwrap();
    let plain = sub.client_as("plain", "db_a").await.unwrap();
    let own: i64 = one(&plain, "SELECT count(*) FROM pgsub._stat_progress()").await;
    assert_eq!(own, 1, "plain in db_a sees db_a's one subscription in shared memory");
    let own: i64 = one(&plain, "SELECT count(*) FROM pgsub._stat_counters()").await;
    assert_eq!(own, 1, "and its counters only");
    for view in ["pgsub.stat_subscription_all", "pgsub.stat_database"] {
        let e = plain.query(&format!("SELECT * FROM {view}"), &[]).await.expect_err("closed to plain");
        assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{view}: {e}");
    }
    sa.batch_execute("GRANT pg_monitor TO plain").await.unwrap();
    let seen: i64 = one(&plain, "SELECT count(*) FROM pgsub.stat_subscription_all").await;
    assert_eq!(seen, 4, "with pg_monitor, every database's");

    // Each publisher database against each subscriber database it feeds.
    assert_replicated_equal_for(&p1, &sa, Some(&["main"])).await;
    assert_replicated_equal_for(&p1b, &sb, Some(&["main"])).await;
    assert_replicated_equal_for(&p1, &sapp, Some(&["one"])).await;
    assert_replicated_equal_for(&p2, &sapp, Some(&["two"])).await;
}

/// A database created after the server started: the supervisor finds it on its own and probes it
/// (no extension yet); then CREATE EXTENSION pgsub and create_subscription there wake it, and
/// the subscription applies a row within 5 s of being created. The postgres database, with the
/// extension but no subscription, is idle and has no launcher.
#[tokio::test(flavor = "current_thread")]
async fn extension_in_a_database_created_after_start_replicates_within_5_s() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    p.batch_execute(&format!("CREATE TABLE t {TABLE}; CREATE PUBLICATION pub FOR TABLE t")).await.unwrap();
    let s0 = nodes.subscriber.client("postgres").await.unwrap();
    wait_value(
        &s0,
        "SELECT state || ' ' || (launcher_pid IS NULL) FROM pgsub.stat_database WHERE datname = 'postgres'",
        "idle true",
        WAIT,
    )
    .await;
    wait_value(&s0, &backends_in("pgsub launcher", "postgres"), "0", WAIT).await;

    let s = create_database(&nodes.subscriber, "late", &format!("CREATE TABLE t {TABLE}"), false).await;
    // Found without any pgsub function being called: probed once, no extension.
    wait_value(
        &s0,
        "SELECT state || ' ' || probes || ' ' || (launcher_pid IS NULL) || ' ' || (last_probe_at IS NOT NULL) \
         FROM pgsub.stat_database WHERE datname = 'late'",
        "no_extension 1 true true",
        WAIT,
    )
    .await;

    s.batch_execute("CREATE EXTENSION pgsub").await.expect("CREATE EXTENSION in late");
    // No initial copy: the first row must come through the stream of a worker started for it.
    create_sub(&s, "late_sub", &nodes.pub_conninfo(), "pub", ", copy_data => false").await;
    let created = Instant::now();
    p.batch_execute("INSERT INTO t VALUES (1, 'first')").await.unwrap();
    let left = Duration::from_secs(5).saturating_sub(created.elapsed());
    wait_value(&s, "SELECT v FROM t WHERE id = 1", "first", left).await;
    eprintln!("the first row arrived {:?} after create_subscription returned", created.elapsed());

    wait_value(&s, &status_sql("late_sub"), "streaming", WAIT).await;
    wait_value(
        &s0,
        "SELECT state || ' ' || (launcher_pid IS NOT NULL) || ' ' || (probes >= 2) \
         FROM pgsub.stat_database WHERE datname = 'late'",
        "running true true",
        WAIT,
    )
    .await;
    wait_value(&s0, &backends_in("pgsub launcher", "late"), "1", WAIT).await;
    p.batch_execute("INSERT INTO t SELECT g, 'more ' || g FROM generate_series(2, 200) g; DELETE FROM t WHERE id = 7")
        .await
        .unwrap();
    // Rows 1..=200 less row 7.
    wait_value(&s, "SELECT count(*) FROM t", "199", WAIT).await;
    assert_replicated_equal_for(&p, &s, None).await;
}

/// Every row of stat_subscription_all as `datname/subname`, comma-separated (`?` for a row whose
/// database is not in pg_database).
const SUBSCRIPTIONS_ALL: &str = "SELECT string_agg(coalesce(datname::text, '?') || '/' || subname, ', ' \
                                 ORDER BY datname, subname) FROM pgsub.stat_subscription_all";

/// DROP DATABASE of a database with a subscription is refused (55006, as natively), with FORCE
/// and with the subscription disabled too; once the subscription is dropped it completes (its
/// launcher leaves), with no origin or slot left behind; DROP EXTENSION pgsub in another database refused while its subscription is there (enabled and streaming), then after drop_subscription,
/// succeeds and its apply worker and launcher go away; the subscription of a third database keeps
/// the same worker and keeps replicating throughout.
#[tokio::test(flavor = "current_thread")]
async fn drop_database_and_drop_extension_leave_other_databases_replicating() {
    let nodes = TwoNodes::start().expect("start");
    let ci = nodes.pub_conninfo();
    let p = nodes.publisher.client("postgres").await.unwrap();
    p.batch_execute(&format!(
        "CREATE TABLE t_drop {TABLE}; CREATE TABLE t_ext {TABLE}; CREATE TABLE t_keep {TABLE};
         CREATE PUBLICATION pub_drop FOR TABLE t_drop; CREATE PUBLICATION pub_ext FOR TABLE t_ext;
         CREATE PUBLICATION pub_keep FOR TABLE t_keep;
         INSERT INTO t_drop SELECT g, 'd' FROM generate_series(1, 20) g;
         INSERT INTO t_ext SELECT g, 'e' FROM generate_series(1, 20) g;
         INSERT INTO t_keep SELECT g, 'k' FROM generate_series(1, 20) g;"
    ))
    .await
    .unwrap();
    // postgres (extension made by TwoNodes) keeps its subscription to the end.
    let s0 = nodes.subscriber.client("postgres").await.unwrap();
    s0.batch_execute(&format!("CREATE TABLE t_keep {TABLE}")).await.unwrap();
    let sd = create_database(&nodes.subscriber, "d_drop", &format!("CREATE TABLE t_drop {TABLE}"), true).await;
    let se = create_database(&nodes.subscriber, "d_ext", &format!("CREATE TABLE t_ext {TABLE}"), true).await;
    create_sub(&s0, "s_keep", &ci, "pub_keep", "").await;
    create_sub(&sd, "s_drop", &ci, "pub_drop", "").await;
    create_sub(&se, "s_ext", &ci, "pub_ext", "").await;
    wait_for_subscription_sync(&s0, "s_keep", WAIT).await;
    wait_for_subscription_sync(&sd, "s_drop", WAIT).await;
    wait_for_subscription_sync(&se, "s_ext", WAIT).await;
    p.batch_execute(
        "INSERT INTO t_drop VALUES (21, 'd'); INSERT INTO t_ext VALUES (21, 'e'); INSERT INTO t_keep VALUES (21, 'k')",
    )
    .await
    .unwrap();
    // The two databases that go away are compared while they still can be.
    assert_replicated_equal_for(&p, &sd, None).await;
    assert_replicated_equal_for(&p, &se, None).await;
    wait_value(&s0, "SELECT count(*) FROM t_keep", "21", WAIT).await;
    let keep_pid: i32 = one(&s0, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 's_keep'").await;

    // As natively, a database with subscriptions cannot be dropped, not even WITH (FORCE) and
    // not with its subscriptions disabled: their origins (server-wide) and publisher slots would
    // be left behind.
    let drop_subid: i32 = one(&sd, "SELECT subid FROM pgsub.subscription WHERE subname = 's_drop'").await;
    let origin = format!("SELECT count(*) FROM pg_replication_origin WHERE roname = 'pgsub_{drop_subid}'");
    let slot = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 's_drop'";
    assert_eq!(one::<i64>(&s0, &origin).await, 1);
    for sql in ["DROP DATABASE d_drop WITH (FORCE)", "DROP DATABASE d_drop"] {
        let f = must_fail(&s0, sql, &[]).await;
        assert_eq!(f.code, "55006", "{sql}: {}", f.text());
        assert!(
            f.message.contains("database \"d_drop\" is being used by logical replication subscription"),
            "{}",
            f.text()
        );
        assert_eq!(f.detail, "There is 1 pgsub subscription.", "{}", f.text());
    }
    sd.batch_execute("SELECT pgsub.disable_subscription('s_drop')").await.unwrap();
    wait_value(&sd, &status_sql("s_drop"), "disabled", WAIT).await;
    let f = must_fail(&s0, "DROP DATABASE d_drop WITH (FORCE)", &[]).await;
    assert_eq!(f.code, "55006", "disabled: {}", f.text());
    assert_eq!(one::<String>(&sd, &status_sql("s_drop")).await, "disabled", "the refused drop stopped nothing");
    // Drop the subscription, then DROP DATABASE right away: it waits for the launcher to leave,
    // not forever, and nothing of the subscription is left on either side.
    sd.batch_execute("SELECT pgsub.drop_subscription('s_drop')").await.unwrap();
    drop(sd);
    assert_eq!(one::<i64>(&s0, &origin).await, 0, "the origin is dropped with the subscription");
    assert_eq!(one::<i64>(&p, slot).await, 0, "the slot is dropped with the subscription");
    s0.batch_execute("SET statement_timeout = '60s'").await.unwrap();
    let t0 = Instant::now();
    s0.batch_execute("DROP DATABASE d_drop")
        .await
        .unwrap_or_else(|e| panic!("DROP DATABASE d_drop failed after {:?}: {e}", t0.elapsed()));
    eprintln!("DROP DATABASE took {:?}", t0.elapsed());
    s0.batch_execute("RESET statement_timeout").await.unwrap();
    wait_value(&s0, "SELECT count(*) FROM pgsub.stat_database WHERE datname = 'd_drop'", "0", WAIT).await;
    // (A subscription of a database gone from pg_database would show without a datname.)
    wait_value(&s0, SUBSCRIPTIONS_ALL, "d_ext/s_ext, postgres/s_keep", WAIT).await;
    p.batch_execute("INSERT INTO t_keep VALUES (22, 'after drop database')").await.unwrap();
    wait_value(&s0, "SELECT v FROM t_keep WHERE id = 22", "after drop database", WAIT).await;

    // DROP EXTENSION is refused while the database has a subscription (its origin and slot would
    // stay behind), then goes through once the subscription is dropped.
    let ext_pid: i32 = one(&se, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 's_ext'").await;
    let e = must_fail(&se, "DROP EXTENSION pgsub", &[]).await;
    assert_eq!(e.code, "55006", "{}", e.text());
    assert_eq!(e.message, "cannot drop extension pgsub because this database has subscriptions");
    assert_eq!(e.detail, "There is 1 pgsub subscription.");
    assert!(e.hint.contains("pgsub.drop_subscription()"), "{}", e.text());
    let e = must_fail(&se, "DROP EXTENSION IF EXISTS plpgsql, pgsub CASCADE", &[]).await;
    assert_eq!(e.code, "55006", "also with CASCADE and in a list: {}", e.text());
    let e = must_fail(&se, "DROP SCHEMA pgsub CASCADE", &[]).await;
    assert_eq!(e.code, "55006", "the schema's CASCADE would drop the extension: {}", e.text());
    assert_eq!(one::<i32>(&se, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 's_ext'").await, ext_pid);
    se.batch_execute("SELECT pgsub.drop_subscription('s_ext')").await.expect("drop_subscription");
    se.batch_execute("DROP EXTENSION pgsub").await.expect("DROP EXTENSION pgsub after drop_subscription");
    assert_eq!(
        one::<i64>(&p, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 's_ext'").await,
        0,
        "no slot left behind"
    );
    wait_for("the apply worker of d_ext to exit", WAIT, || async { Ok((!pid_alive(ext_pid)).then_some(())) })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_value(&s0, &backends_in("pgsub apply worker", "d_ext"), "0", WAIT).await;
    wait_value(&s0, &backends_in("pgsub launcher", "d_ext"), "0", WAIT).await;
    wait_value(
        &s0,
        "SELECT state || ' ' || (launcher_pid IS NULL) FROM pgsub.stat_database WHERE datname = 'd_ext'",
        "no_extension true",
        WAIT,
    )
    .await;
    wait_value(&s0, SUBSCRIPTIONS_ALL, "postgres/s_keep", WAIT).await;
    // Changes to the table of the dropped extension's subscription do not restart anything there.
    p.batch_execute("INSERT INTO t_ext VALUES (22, 'after drop extension'); INSERT INTO t_keep VALUES (23, 'k')")
        .await
        .unwrap();
    wait_value(&s0, "SELECT v FROM t_keep WHERE id = 23", "k", WAIT).await;
    assert_eq!(one::<i64>(&s0, &backends_in("pgsub apply worker", "d_ext")).await, 0);
    assert_eq!(one::<i64>(&s0, &backends_in("pgsub launcher", "d_ext")).await, 0);

    // The third database's worker was never restarted by either drop.
    let now_pid: i32 = one(&s0, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 's_keep'").await;
    assert_eq!(now_pid, keep_pid, "the worker of s_keep was restarted");
    assert_eq!(one::<String>(&s0, &status_sql("s_keep")).await, "streaming");
    assert_eq!(query_text(&s0, SUBSCRIPTIONS_ALL).await.unwrap(), "postgres/s_keep");
    assert_replicated_equal_for(&p, &s0, None).await;
}

/// `CREATE DATABASE … TEMPLATE` of a database with a subscription copies its catalog row, with
/// the original's id (and so its origin and slot): in the copy the subscription shows `copied`,
/// is never run, cannot be enabled or altered (55000), and dropping it there removes only the
/// row; the original keeps its origin and slot and keeps replicating; a subscription created
/// anew in the copy runs on its own.
#[tokio::test(flavor = "current_thread")]
async fn a_database_copied_from_a_template_does_not_share_its_subscriptions() {
    let nodes = TwoNodes::start().expect("start");
    let ci = nodes.pub_conninfo();
    let p = nodes.publisher.client("postgres").await.unwrap();
    p.batch_execute(&format!(
        "CREATE TABLE t_orig {TABLE}; CREATE PUBLICATION pub_orig FOR TABLE t_orig;
         INSERT INTO t_orig SELECT g, 'o' FROM generate_series(1, 20) g;"
    ))
    .await
    .unwrap();
    let s0 = nodes.subscriber.client("postgres").await.unwrap();
    let so = create_database(&nodes.subscriber, "d_orig", &format!("CREATE TABLE t_orig {TABLE}"), true).await;
    create_sub(&so, "s_t", &ci, "pub_orig", "").await;
    wait_for_subscription_sync(&so, "s_t", WAIT).await;
    let subid: i32 = one(&so, "SELECT subid FROM pgsub.subscription WHERE subname = 's_t'").await;
    let origin = format!("SELECT count(*) FROM pg_replication_origin WHERE roname = 'pgsub_{subid}'");
    let slot = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 's_t'";

    // A template may have no other sessions: disable, and wait for the launcher to leave.
    so.batch_execute("SELECT pgsub.disable_subscription('s_t')").await.unwrap();
    drop(so);
    wait_value(&s0, &backends_in("pgsub launcher", "d_orig"), "0", WAIT).await;
    s0.batch_execute("CREATE DATABASE d_copy TEMPLATE d_orig").await.expect("CREATE DATABASE … TEMPLATE");
    let so = nodes.subscriber.client("d_orig").await.unwrap();
    so.batch_execute("SELECT pgsub.enable_subscription('s_t')").await.unwrap();
    wait_value(&so, &status_sql("s_t"), "streaming", WAIT).await;

    let sc = nodes.subscriber.client("d_copy").await.unwrap();
    wait_value(&sc, &status_sql("s_t"), "copied", WAIT).await;
    for sql in [
        "SELECT pgsub.enable_subscription('s_t')",
        "SELECT pgsub.disable_subscription('s_t')",
        "SELECT pgsub.refresh_subscription('s_t')",
    ] {
        let f = must_fail(&sc, sql, &[]).await;
        assert_eq!(f.code, "55000", "{sql}: {}", f.text());
        assert!(f.message.contains("was copied from another database"), "{sql}: {}", f.text());
    }
    let (sc, notices) = nodes.subscriber.client_with_notices("d_copy").await.unwrap();
    sc.batch_execute("SELECT pgsub.drop_subscription('s_t')").await.expect("drop the copy");
    assert!(
        notices.lock().unwrap().iter().any(|n| n.message().contains("only its row here was removed")),
        "{:?}",
        notices.lock().unwrap()
    );
    assert_eq!(one::<i64>(&sc, "SELECT count(*) FROM pgsub.subscription").await, 0);
    assert_eq!(one::<i64>(&s0, &origin).await, 1, "the original's origin is kept");
    assert_eq!(one::<i64>(&p, slot).await, 1, "the original's slot is kept");
    assert_eq!(one::<String>(&so, &status_sql("s_t")).await, "streaming", "the original runs on");

    // Created anew in the copy, the subscription gets its own id and slot and runs.
    create_sub(&sc, "s_new", &ci, "pub_orig", ", copy_data => false").await;
    wait_value(&sc, &status_sql("s_new"), "streaming", WAIT).await;
    let new_id: i32 = one(&sc, "SELECT subid FROM pgsub.subscription WHERE subname = 's_new'").await;
    assert_ne!(new_id, subid);
    p.batch_execute(
        "INSERT INTO t_orig SELECT g, 'after' FROM generate_series(21, 30) g; UPDATE t_orig SET v = 'u' WHERE id = 1",
    )
    .await
    .unwrap();
    assert_replicated_equal_for(&p, &so, None).await;
    assert_replicated_equal_for(&p, &sc, None).await;
    assert_eq!(one::<i64>(&s0, &backends_in("pgsub apply worker", "d_copy")).await, 1, "only s_new runs in the copy");
}

/// `pgsub.max_apply_workers = 2` across four databases with one subscription each: two stream,
/// the later ones show `waiting_for_worker` (in their own database's stat_subscription and in
/// stat_subscription_all) and start in the order they began to wait as running ones are
/// disabled; never more than two apply workers.
#[tokio::test(flavor = "current_thread")]
async fn apply_worker_slots_are_shared_by_all_databases() {
    let nodes = TwoNodes::start_with(
        ClusterOpts::publisher(),
        ClusterOpts::subscriber().with_conf("pgsub.max_apply_workers = 2"),
    )
    .expect("start");
    let ci = nodes.pub_conninfo();
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s0 = nodes.subscriber.client("postgres").await.unwrap();
    let mut dbs = Vec::new();
    for i in 1..=4 {
        p.batch_execute(&format!(
            "CREATE TABLE t{i} {TABLE}; CREATE PUBLICATION p{i} FOR TABLE t{i};
             INSERT INTO t{i} SELECT g, 'initial' FROM generate_series(1, 10) g;"
        ))
        .await
        .unwrap();
        dbs.push(
            create_database(&nodes.subscriber, &format!("d{i}"), &format!("CREATE TABLE t{i} {TABLE}"), true).await,
        );
    }
    let all = "SELECT datname, subname, status, pid IS NOT NULL FROM pgsub.stat_subscription_all ORDER BY datname";
    let workers = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pgsub apply worker'";

    create_sub(&dbs[0], "w1", &ci, "p1", "").await;
    create_sub(&dbs[1], "w2", &ci, "p2", "").await;
    wait_for_subscription_sync(&dbs[0], "w1", WAIT).await;
    wait_for_subscription_sync(&dbs[1], "w2", WAIT).await;

    // The third database's subscription waits: exactly one waiting, server-wide.
    create_sub(&dbs[2], "w3", &ci, "p3", "").await;
    wait_value(&dbs[2], &status_sql("w3"), "waiting_for_worker", WAIT).await;
    wait_value(&s0, all, "d1|w1|streaming|t\nd2|w2|streaming|t\nd3|w3|waiting_for_worker|f", WAIT).await;
    assert_eq!(one::<i64>(&s0, workers).await, 2);
    assert_eq!(one::<String>(&dbs[0], &status_sql("w1")).await, "streaming");
    assert_eq!(one::<String>(&dbs[1], &status_sql("w2")).await, "streaming");
    // A fourth begins to wait after it.
    create_sub(&dbs[3], "w4", &ci, "p4", "").await;
    wait_value(&dbs[3], &status_sql("w4"), "waiting_for_worker", WAIT).await;
    wait_value(
        &s0,
        all,
        "d1|w1|streaming|t\nd2|w2|streaming|t\nd3|w3|waiting_for_worker|f\nd4|w4|waiting_for_worker|f",
        WAIT,
    )
    .await;
    // The running ones apply; their last changes arrive before they are disabled below.
    p.batch_execute("INSERT INTO t1 VALUES (11, 'w1'); INSERT INTO t2 VALUES (11, 'w2')").await.unwrap();
    wait_value(&dbs[0], "SELECT v FROM t1 WHERE id = 11", "w1", WAIT).await;
    wait_value(&dbs[1], "SELECT v FROM t2 WHERE id = 11", "w2", WAIT).await;
    assert_replicated_equal_for(&p, &dbs[0], None).await;
    assert_replicated_equal_for(&p, &dbs[1], None).await;

    // One slot frees: the subscription that waited first (w3) gets it, w4 still waits.
    dbs[0].batch_execute("SELECT pgsub.disable_subscription('w1')").await.unwrap();
    wait_for_subscription_sync(&dbs[2], "w3", WAIT).await;
    wait_value(&s0, all, "d1|w1|disabled|f\nd2|w2|streaming|t\nd3|w3|streaming|t\nd4|w4|waiting_for_worker|f", WAIT)
        .await;
    assert_eq!(one::<String>(&dbs[3], &status_sql("w4")).await, "waiting_for_worker");
    assert_eq!(one::<i64>(&s0, workers).await, 2);

    // The second slot frees: w4 starts.
    dbs[1].batch_execute("SELECT pgsub.disable_subscription('w2')").await.unwrap();
    wait_for_subscription_sync(&dbs[3], "w4", WAIT).await;
    wait_value(&s0, all, "d1|w1|disabled|f\nd2|w2|disabled|f\nd3|w3|streaming|t\nd4|w4|streaming|t", WAIT).await;
    assert_eq!(one::<i64>(&s0, workers).await, 2);

    // Enabling w1 again while both slots are taken: it waits.
    dbs[0].batch_execute("SELECT pgsub.enable_subscription('w1')").await.unwrap();
    wait_value(&dbs[0], &status_sql("w1"), "waiting_for_worker", WAIT).await;
    p.batch_execute("INSERT INTO t3 VALUES (11, 'w3'); INSERT INTO t4 VALUES (11, 'w4')").await.unwrap();
    wait_value(&dbs[2], "SELECT v FROM t3 WHERE id = 11", "w3", WAIT).await;
    wait_value(&dbs[3], "SELECT v FROM t4 WHERE id = 11", "w4", WAIT).await;
    assert_eq!(one::<i64>(&s0, workers).await, 2);
    // Every database against the publisher: t1 and t2 got no change after their last one
    // arrived, t3 and t4 were copied and then streamed once their subscriptions started.
    for (i, s) in dbs.iter().enumerate() {
        eprintln!("d{}:", i + 1);
        assert_replicated_equal_for(&p, s, None).await;
    }
}

/// Row counts in `table` on the subscriber client `s`: `(rows, distinct ids)`.
async fn counts(s: &Client, table: &str) -> (i64, i64) {
    let r = s.query_one(&format!("SELECT count(*), count(DISTINCT id) FROM {table}"), &[]).await.expect("counts");
    (r.get(0), r.get(1))
}

/// kill -9 of the supervisor, then of one database's launcher, then SIGTERM to both
/// (`pg_terminate_backend`), then kill -9 of the postmaster (started again), while a paced writer commits one row at a time into the tables of two databases'
/// subscriptions, and with a batch written just before each kill: after each, everything comes
/// back (supervisor, both launchers, streaming) and the batch arrives; at the end every row is
/// there exactly once. The subscriber's tables have no unique key, so a duplicate would show.
#[tokio::test(flavor = "current_thread")]
async fn kills_of_supervisor_launcher_and_postmaster_lose_and_duplicate_nothing() {
    let mut nodes = TwoNodes::start().expect("start");
    let ci = nodes.pub_conninfo();
    let p = nodes.publisher.client("postgres").await.unwrap();
    p.batch_execute(
        "CREATE TABLE t1 (id bigint PRIMARY KEY, v text); CREATE TABLE t2 (id bigint PRIMARY KEY, v text);
         CREATE PUBLICATION p1 FOR TABLE t1; CREATE PUBLICATION p2 FOR TABLE t2;
         CREATE TABLE writer_stop (x int);
         INSERT INTO t1 SELECT g, 'initial' FROM generate_series(-100, -1) g;
         INSERT INTO t2 SELECT g, 'initial' FROM generate_series(-100, -1) g;
         CREATE PROCEDURE write_until_stopped() LANGUAGE plpgsql AS $$
         DECLARE i bigint := 1;
         BEGIN
           LOOP
             EXIT WHEN EXISTS (SELECT 1 FROM writer_stop);
             INSERT INTO t1 VALUES (i, 'w' || i);
             INSERT INTO t2 VALUES (i, 'w' || i);
             COMMIT;
             i := i + 1;
             -- Pacing of the write load (a few hundred transactions a second), not a wait.
             PERFORM pg_sleep(0.002);
           END LOOP;
         END $$;",
    )
    .await
    .unwrap();
    let table = "(id bigint, v text)";
    let k1 = create_database(&nodes.subscriber, "k1", &format!("CREATE TABLE t1 {table}"), true).await;
    let k2 = create_database(&nodes.subscriber, "k2", &format!("CREATE TABLE t2 {table}"), true).await;
    create_sub(&k1, "k1", &ci, "p1", "").await;
    create_sub(&k2, "k2", &ci, "p2", "").await;
    wait_for_subscription_sync(&k1, "k1", WAIT).await;
    wait_for_subscription_sync(&k2, "k2", WAIT).await;
    drop((k1, k2));

    let pw = nodes.publisher.client("postgres").await.unwrap();
    let writer = tokio::spawn(async move { pw.batch_execute("CALL write_until_stopped()").await });
    let sub = &nodes.subscriber;
    let k1 = sub.client("k1").await.unwrap();
    wait_value(&k1, "SELECT count(*) >= 200 FROM t1", "t", WAIT).await;
    drop(k1);

    // Batch n: 1000 rows per table in one transaction, ids from 1_000_000 * n (the writer's are
    // far below).
    let batch = |n: i64| {
        format!(
            "INSERT INTO t1 SELECT g, 'batch {n}' FROM generate_series({a}, {b}) g;
             INSERT INTO t2 SELECT g, 'batch {n}' FROM generate_series({a}, {b}) g;",
            a = n * 1_000_000,
            b = n * 1_000_000 + 999
        )
    };
    /// After a kill: a new supervisor, a launcher in each database, both subscriptions streaming,
    /// batch `n` complete in both, and no id twice so far.
    async fn recovered(sub: &Cluster, n: i64, old_supervisor: i32) {
        let s0 = sub.client("postgres").await.expect("client after the kill");
        wait_value(
            &s0,
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pgsub supervisor' \
                 AND pid <> {old_supervisor}"
            ),
            "1",
            WAIT,
        )
        .await;
        wait_value(
            &s0,
            "SELECT string_agg(datname || ' ' || state || ' ' || (launcher_pid IS NOT NULL), ', ' ORDER BY datname) \
             FROM pgsub.stat_database WHERE datname IN ('k1', 'k2')",
            "k1 running true, k2 running true",
            WAIT,
        )
        .await;
        for (db, table) in [("k1", "t1"), ("k2", "t2")] {
            let c = sub.client(db).await.expect("client after the kill");
            wait_value(&c, &status_sql(db), "streaming", WAIT).await;
            let range = format!("id BETWEEN {} AND {}", n * 1_000_000, n * 1_000_000 + 999);
            wait_value(&c, &format!("SELECT count(*) FROM {table} WHERE {range}"), "1000", WAIT).await;
            let (rows, ids) = counts(&c, table).await;
            assert_eq!(rows, ids, "{db}.{table}: {} duplicate rows after kill {n}", rows - ids);
        }
    }
    let supervisor_pid = |c: Client| async move {
        one::<i32>(&c, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pgsub supervisor'").await
    };

    // 1. The supervisor.
    let s0 = sub.client("postgres").await.unwrap();
    let sup1 = supervisor_pid(s0).await;
    p.batch_execute(&batch(1)).await.unwrap();
    sub.kill9_child(sup1, WAIT).await.expect("kill -9 of the supervisor");
    recovered(sub, 1, sup1).await;

    // 2. The launcher of k1.
    let s0 = sub.client("postgres").await.unwrap();
    wait_value(&s0, &backends_in("pgsub launcher", "k1"), "1", WAIT).await;
    let launcher: i32 =
        one(&s0, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pgsub launcher' AND datname = 'k1'").await;
    let sup2 = supervisor_pid(s0).await;
    p.batch_execute(&batch(2)).await.unwrap();
    sub.kill9_child(launcher, WAIT).await.expect("kill -9 of the launcher of k1");
    recovered(sub, 2, sup2).await;
    let s0 = sub.client("postgres").await.unwrap();
    wait_value(
        &s0,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pgsub launcher' AND datname = 'k1' \
             AND pid <> {launcher}"
        ),
        "1",
        WAIT,
    )
    .await;

    // 3. SIGTERM (pg_terminate_backend, as a "terminate every other session" sweep does) to the
    // supervisor, then to the launcher of k1: a supervisor is started again (it exits with 1,
    // as native's launcher: a worker that exits with 0 is never restarted), and it starts the
    // launcher again.
    let sup3 = supervisor_pid(s0).await;
    let s0 = sub.client("postgres").await.unwrap();
    p.batch_execute(&batch(5)).await.unwrap();
    assert!(one::<bool>(&s0, &format!("SELECT pg_terminate_backend({sup3})")).await);
    let launcher: i32 =
        one(&s0, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pgsub launcher' AND datname = 'k1'").await;
    assert!(one::<bool>(&s0, &format!("SELECT pg_terminate_backend({launcher})")).await);
    recovered(sub, 5, sup3).await;

    // 4. The postmaster, then started again.
    let s0 = sub.client("postgres").await.unwrap();
    let sup3 = supervisor_pid(s0).await;
    p.batch_execute(&batch(3)).await.unwrap();
    nodes.subscriber.kill9().expect("kill -9 of the postmaster");
    nodes.subscriber.start_again().expect("start again");
    recovered(&nodes.subscriber, 3, sup3).await;

    // A last batch, then the writer stops; every row exactly once.
    p.batch_execute(&batch(4)).await.unwrap();
    p.batch_execute("INSERT INTO writer_stop VALUES (1)").await.unwrap();
    writer.await.expect("writer task").expect("writer");
    let written: i64 = one(&p, "SELECT count(*) FROM t1 WHERE id > 0 AND id < 1000000").await;
    eprintln!("the writer committed {written} transactions");
    assert!(written >= 200, "the writer wrote {written} rows");
    let total: i64 = one(&p, "SELECT count(*) FROM t1").await;
    assert_eq!(total, one::<i64>(&p, "SELECT count(*) FROM t2").await);
    for (db, table, sub_name) in [("k1", "t1", "k1"), ("k2", "t2", "k2")] {
        let c = nodes.subscriber.client(db).await.unwrap();
        wait_value(&c, &format!("SELECT count(*) FROM {table}"), &total.to_string(), WAIT).await;
        assert_eq!(counts(&c, table).await, (total, total), "{db}.{table}: rows and distinct ids");
        assert_replicated_equal_for(&p, &c, Some(&[sub_name])).await;
    }
}

/// The WARNING and error texts of notices kept on a connection.
fn warnings(notices: &Notices) -> Vec<String> {
    notices
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|n| n.severity() == "WARNING")
        .map(|n| format!("{} (hint: {})", n.message(), n.hint().unwrap_or_default()))
        .collect()
}

/// A server without pgsub in shared_preload_libraries: CREATE EXTENSION pgsub succeeds with a
/// WARNING naming the setting (the session goes on); create_subscription and
/// enable_subscription are refused with SQLSTATE 55000 and a hint to add it and restart
/// (disable_subscription is done); a
/// subscription made while the server preloaded pgsub shows `not_preloaded`; no pgsub process
/// runs.
#[tokio::test(flavor = "current_thread")]
async fn without_preload_create_extension_warns_and_subscriptions_are_refused() {
    let publisher = Cluster::publisher().expect("publisher");
    let p = publisher.client("postgres").await.unwrap();
    p.batch_execute(&format!(
        "CREATE TABLE t {TABLE}; CREATE PUBLICATION pub FOR TABLE t;
         INSERT INTO t SELECT g, 'before' FROM generate_series(1, 10) g;"
    ))
    .await
    .unwrap();
    let ci = publisher.connstr("postgres", "postgres");

    // First with the preload: no warning; one enabled subscription that streams, one created
    // disabled without a slot.
    let mut sub = Cluster::subscriber().expect("subscriber");
    let (s, notices) = sub.client_with_notices("postgres").await.unwrap();
    s.batch_execute(&format!("CREATE TABLE t {TABLE}; CREATE EXTENSION pgsub")).await.unwrap();
    assert!(
        !warnings(&notices).iter().any(|w| w.contains("shared_preload_libraries")),
        "warning with pgsub preloaded: {:?}",
        warnings(&notices)
    );
    create_sub(&s, "on", &ci, "pub", "").await;
    create_sub(&s, "off", &ci, "pub", ", enabled => false, create_slot => false").await;
    wait_for_subscription_sync(&s, "on", WAIT).await;
    p.batch_execute("INSERT INTO t VALUES (11, 'streamed')").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 11", "streamed", WAIT).await;
    drop(s);

    // Then without it.
    sub.stop("fast").expect("stop");
    sub.opts.preload_pgsub = false;
    sub.start_again().expect("start without the preload");
    let s = sub.client("postgres").await.unwrap();
    assert_eq!(one::<String>(&s, "SHOW shared_preload_libraries").await, "");
    wait_value(
        &s,
        "SELECT subname || ' ' || status FROM pgsub.stat_subscription ORDER BY subname",
        "off not_preloaded\non not_preloaded",
        WAIT,
    )
    .await;
    let pid: i32 = one(&s, "SELECT pg_backend_pid()").await;
    let e = must_fail(&s, "SELECT pgsub.enable_subscription('off')", &[]).await;
    assert_eq!(e.code, "55000", "{}", e.text());
    assert!(e.hint.contains("shared_preload_libraries") && e.hint.contains("restart"), "hint: {}", e.text());
    assert_eq!(one::<i32>(&s, "SELECT pg_backend_pid()").await, pid, "the session went on");
    assert!(!one::<bool>(&s, "SELECT enabled FROM pgsub.subscription WHERE subname = 'off'").await);
    // Disabling needs no worker: it is done (no shared memory to reach).
    s.batch_execute("SELECT pgsub.disable_subscription('on')").await.expect("disable without the preload");
    assert!(!one::<bool>(&s, "SELECT enabled FROM pgsub.subscription WHERE subname = 'on'").await);

    // CREATE EXTENSION in a new database: a WARNING, and the same session goes on.
    let admin = sub.client("postgres").await.unwrap();
    admin.batch_execute("CREATE DATABASE fresh").await.unwrap();
    let (f, notices) = sub.client_with_notices("fresh").await.unwrap();
    let fresh_pid: i32 = one(&f, "SELECT pg_backend_pid()").await;
    f.batch_execute(&format!("CREATE TABLE t {TABLE}")).await.unwrap();
    f.batch_execute("CREATE EXTENSION pgsub").await.expect("CREATE EXTENSION without the preload");
    wait_for("a WARNING naming shared_preload_libraries", Duration::from_secs(5), || async {
        Ok(warnings(&notices)
            .iter()
            .any(|w| w.split(" (hint: ").next().unwrap_or("").contains("shared_preload_libraries"))
            .then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; warnings: {:?}", warnings(&notices)));
    eprintln!("CREATE EXTENSION warned: {:?}", warnings(&notices));
    assert_eq!(one::<i32>(&f, "SELECT pg_backend_pid()").await, fresh_pid, "the session went on");
    // create_subscription is refused before anything is made, here or on the publisher.
    let e = must_fail(&f, "SELECT pgsub.create_subscription('x', $1, ARRAY['pub'])", &[&ci]).await;
    assert_eq!(e.code, "55000", "{}", e.text());
    assert!(e.hint.contains("shared_preload_libraries") && e.hint.contains("restart"), "hint: {}", e.text());
    assert_eq!(one::<i32>(&f, "SELECT pg_backend_pid()").await, fresh_pid, "the session went on");
    assert_eq!(one::<i64>(&f, "SELECT count(*) FROM pgsub.subscription").await, 0);
    assert_eq!(one::<i64>(&p, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'x'").await, 0);

    // Nothing of pgsub runs.
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'pgsub%'").await, 0);
    // What "on" replicated while pgsub was preloaded (the publisher has not changed since).
    assert_replicated_equal_for(&p, &s, Some(&["on"])).await;
}

/// Fifty databases without the extension, created after start: the supervisor probes each once
/// (state no_extension), and ten seconds later none was probed again, no launcher is connected to
/// any of them and the log has at most one line naming each. The postgres database's
/// subscription replicates throughout.
#[tokio::test(flavor = "current_thread")]
async fn fifty_databases_without_the_extension_are_probed_once() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    p.batch_execute(&format!("CREATE TABLE t {TABLE}; CREATE PUBLICATION pub FOR TABLE t")).await.unwrap();
    s.batch_execute(&format!("CREATE TABLE t {TABLE}")).await.unwrap();
    create_sub(&s, "main", &nodes.pub_conninfo(), "pub", "").await;
    wait_for_subscription_sync(&s, "main", WAIT).await;

    // Two digits each: no name is part of another, for the log count below.
    let names: Vec<String> = (1..=50).map(|i| format!("noext_{i:02}")).collect();
    let t0 = Instant::now();
    for n in &names {
        s.batch_execute(&format!("CREATE DATABASE {n}")).await.unwrap_or_else(|e| panic!("{n}: {e}"));
    }
    eprintln!("50 databases created in {:?}", t0.elapsed());
    p.batch_execute("INSERT INTO t SELECT g, 'while probing' FROM generate_series(1, 100) g").await.unwrap();
    let probed = "SELECT count(*) FROM pgsub.stat_database WHERE datname LIKE 'noext\\_%' AND state = 'no_extension' \
                  AND launcher_pid IS NULL AND last_probe_at IS NOT NULL";
    wait_value(&s, probed, "50", Duration::from_secs(120)).await;
    eprintln!("all 50 probed {:?} after the first was created", t0.elapsed());

    // A deliberate interval, not a condition: that nothing probes them again is an absence,
    // which only time shows. 10 s is twenty passes at pgsub.naptime (500 ms in the harness) and
    // ten at its retry_interval (1 s): a launcher restarted in a loop would have shown.
    tokio::time::sleep(Duration::from_secs(10)).await;

    let rows = s
        .query(
            "SELECT datname::text, state, probes, launcher_pid FROM pgsub.stat_database \
             WHERE datname LIKE 'noext\\_%' ORDER BY datname",
            &[],
        )
        .await
        .expect("stat_database");
    assert_eq!(rows.len(), 50, "rows of stat_database for the 50 databases");
    let odd: Vec<String> = rows
        .iter()
        .filter(|r| {
            r.get::<_, String>(1) != "no_extension" || r.get::<_, i64>(2) != 1 || r.get::<_, Option<i32>>(3).is_some()
        })
        .map(|r| {
            format!(
                "{} {} probes {} launcher {:?}",
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, i64>(2),
                r.get::<_, Option<i32>>(3)
            )
        })
        .collect();
    assert!(odd.is_empty(), "databases probed more than once or with a launcher:\n{}", odd.join("\n"));
    assert_eq!(
        one::<i64>(
            &s,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pgsub launcher' AND datname LIKE 'noext\\_%'"
        )
        .await,
        0
    );
    let log = nodes.subscriber.log();
    let noisy: Vec<String> = names
        .iter()
        .filter_map(|n| {
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(n.as_str())).collect();
            (lines.len() > 1).then(|| format!("{n}: {} lines\n  {}", lines.len(), lines.join("\n  ")))
        })
        .collect();
    assert!(noisy.is_empty(), "more than one log line for a database:\n{}", noisy.join("\n"));

    // The subscription of postgres kept its worker running and applying.
    assert_eq!(one::<String>(&s, &status_sql("main")).await, "streaming");
    p.batch_execute("INSERT INTO t VALUES (101, 'after'); UPDATE t SET v = 'updated' WHERE id <= 10").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 101", "after", WAIT).await;
    assert_replicated_equal_for(&p, &s, None).await;
}

/// The whole server's view read from a LATIN1 database while a UTF8 database's subscription
/// fails with an error that quotes characters LATIN1 cannot hold (a CHECK violation's failing
/// row, `日本`): the view shows the error with those characters as `?` (converting it failed the
/// whole view with "has no equivalent in encoding \"LATIN1\""); the LATIN1 database's own
/// characters (`é`) come through. Once the row is allowed, the subscription replicates.
#[tokio::test(flavor = "current_thread")]
async fn the_servers_view_reads_in_a_latin1_database_whatever_the_errors_quote() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.unwrap();
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text)";
    p.batch_execute(&format!("{ddl}; CREATE PUBLICATION pub FOR TABLE t")).await.unwrap();
    s.batch_execute(&format!("{ddl}; ALTER TABLE t ADD CONSTRAINT no_far CHECK (v <> '日本 é')")).await.unwrap();
    create_sub(&s, "u", &nodes.pub_conninfo(), "pub", "").await;
    wait_for_subscription_sync(&s, "u", WAIT).await;
    p.batch_execute("INSERT INTO t VALUES (1, '日本 é')").await.unwrap();
    wait_value(&s, "SELECT last_error LIKE '%no_far%' FROM pgsub.stat_subscription WHERE subname = 'u'", "t", WAIT)
        .await;
    let admin = nodes.subscriber.client("postgres").await.unwrap();
    admin.batch_execute("CREATE DATABASE lat TEMPLATE template0 ENCODING 'LATIN1' LOCALE 'C'").await.unwrap();
    let lat = nodes.subscriber.client("lat").await.unwrap();
    lat.batch_execute("CREATE EXTENSION pgsub").await.unwrap();
    let err: String = lat
        .query_one("SELECT last_error FROM pgsub.stat_subscription_all WHERE subname = 'u'", &[])
        .await
        .unwrap_or_else(|e| panic!("the view from LATIN1: {e:?}"))
        .get(0);
    assert!(err.contains("(1, ?? é)"), "{err}");
    s.batch_execute("ALTER TABLE t DROP CONSTRAINT no_far").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t", "1", WAIT).await;
    assert_replicated_equal_for(&p, &s, Some(&["u"])).await;
}

/// A restored copy of a database: the same subscription name and slot, the copy disabled and
/// never run here, the original streaming. Dropping the copy with its slot fails after the
/// 30-s wait with 55006 (the slot in use), leaving the original's slot and stream alone: it
/// waited for ever, taking the original's walsender (same application_name) for a worker of its
/// own still letting go.
#[tokio::test(flavor = "current_thread")]
async fn dropping_a_restored_copy_does_not_wait_for_ever_on_the_originals_slot() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").await.unwrap();
    }
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    create_sub(&s, "same", &nodes.pub_conninfo(), "pub", "").await;
    wait_for_subscription_sync(&s, "same", WAIT).await;
    let copy = create_database(&nodes.subscriber, "restored", "CREATE TABLE t (id int PRIMARY KEY)", true).await;
    create_sub(
        &copy,
        "same",
        &nodes.pub_conninfo(),
        "pub",
        ", create_slot => false, slot_name => 'same', copy_data => false, enabled => false",
    )
    .await;
    let t0 = Instant::now();
    let e = must_fail(&copy, "SELECT pgsub.drop_subscription('same')", &[]).await;
    assert_eq!(e.code, "55006", "{}", e.text());
    assert!(t0.elapsed() < Duration::from_secs(50), "{:?}", t0.elapsed());
    // The original goes on.
    p.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t", "1", WAIT).await;
    assert_replicated_equal_for(&p, &s, Some(&["same"])).await;
}
