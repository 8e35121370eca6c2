//! End-to-end: grouped commits (issue 22). Remote transactions already waiting in the apply
//! worker's socket share one local transaction (`pgsub.group_commit_time`): a backlog of
//! single-row transactions is applied in far fewer local commits than remote ones, and with the
//! setting at 0 in one each; kill -9 of the apply worker in the middle of a backlog loses and
//! duplicates nothing (a group commits whole or not at all, with the last transaction's origin
//! position); a transaction that fails in a group is retried with every transaction before it
//! committed on its own, so the subscriber stands where one commit per transaction would leave
//! it; a run of inserts loaded with one COPY across grouped commits fails naming the range of
//! transactions, and the retry names the failing one with its finish LSN.
use pgsub_tests::{
    assert_replicated_equal, one, wait_for, wait_for_repeated_error, wait_for_subscription_sync, wait_value, TwoNodes,
};
use std::time::Duration;
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(300);

/// Table `t` (key) and `log` (no key: a row applied twice would show) on both nodes, published
/// as `pub`, and subscription `g` (synchronized, then disabled so that a backlog builds up).
async fn setup(nodes: &TwoNodes) -> (Client, Client) {
    let (p, s) = nodes.clients().await.expect("clients");
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE log (n int, v text);";
    p.batch_execute(ddl).await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t, log").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('g', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    wait_for_subscription_sync(&s, "g", WAIT).await;
    set_enabled(&s, false).await;
    (p, s)
}

async fn set_enabled(s: &Client, on: bool) {
    let (f, status) = if on { ("enable", "streaming") } else { ("disable", "disabled") };
    s.batch_execute(&format!("SELECT pgsub.{f}_subscription('g')")).await.unwrap();
    wait_value(s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'g'", status, WAIT).await;
}

/// `n` single-row transactions on the publisher, each inserting into `t` and `log`, from `from`.
async fn single_row_txns(p: &Client, from: i32, n: i32) {
    p.batch_execute(&format!(
        "DO $$ BEGIN FOR i IN {from}..{} LOOP
             INSERT INTO t VALUES (i, 'v' || i); INSERT INTO log VALUES (i, 'x'); COMMIT;
         END LOOP; END $$",
        from + n - 1
    ))
    .await
    .unwrap();
}

/// Long groups (`pgsub.group_commit_time = 10s`): a backlog waiting in the socket is applied in
/// few local transactions.
async fn long_groups(s: &Client) {
    s.batch_execute("ALTER SYSTEM SET pgsub.group_commit_time = '10s'").await.unwrap();
    s.batch_execute("SELECT pg_reload_conf()").await.unwrap();
}

/// Enables `g` and waits for an error that names a range of transactions applied together.
async fn enable_until_the_range_error(nodes: &TwoNodes, s: &Client) {
    s.batch_execute("SELECT pgsub.enable_subscription('g')").await.unwrap();
    nodes
        .subscriber
        .wait_for_log("applied together (the retry applies them one by one)", WAIT)
        .await
        .expect("an error naming the range of transactions applied together");
}

/// The subscriber database's committed transactions (every process's, as the statistics
/// system has them; the apply worker's are reported when it exits).
async fn xact_commits(s: &Client) -> i64 {
    s.batch_execute("SELECT pg_stat_clear_snapshot()").await.unwrap();
    one(s, "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").await
}

/// Catches up a backlog of `n` single-row transactions with the worker enabled, then disabled
/// again (so that its statistics are reported); returns the local commits it took.
async fn catch_up_backlog(p: &Client, s: &Client, from: i32, n: i32) -> i64 {
    single_row_txns(p, from, n).await;
    let before = xact_commits(s).await;
    set_enabled(s, true).await;
    wait_value(s, "SELECT count(*)::text FROM log", &(from + n - 1).to_string(), WAIT).await;
    set_enabled(s, false).await;
    // The exiting worker's counts reach the statistics system as it leaves.
    wait_for("the apply worker's exit", WAIT, || async {
        let n: i64 = one(s, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pgsub apply worker'").await;
        Ok((n == 0).then_some(()))
    })
    .await
    .unwrap();
    xact_commits(s).await - before
}

#[tokio::test(flavor = "current_thread")]
async fn a_backlog_of_small_transactions_commits_in_groups_and_not_with_group_commit_time_0() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = setup(&nodes).await;
    let n = 3000;
    let grouped = catch_up_backlog(&p, &s, 1, n).await;
    eprintln!("{n} remote transactions: {grouped} local commits on the subscriber with grouping");
    // Every other process's commits are counted too (the launcher's, these queries'): far
    // fewer than one per remote transaction all the same.
    assert!(grouped < i64::from(n) / 3, "{grouped} local commits for {n} remote transactions");
    // Each remote transaction's rows are counted once, when its group commits.
    assert_eq!(
        one::<i64>(&s, "SELECT inserts FROM pgsub.stat_subscription WHERE subname = 'g'").await,
        2 * i64::from(n)
    );

    s.batch_execute("ALTER SYSTEM SET pgsub.group_commit_time = 0").await.unwrap();
    s.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let single = catch_up_backlog(&p, &s, n + 1, n).await;
    eprintln!("{n} remote transactions: {single} local commits with pgsub.group_commit_time = 0");
    assert!(single >= i64::from(n), "{single} local commits for {n} remote transactions");
    set_enabled(&s, true).await;
    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn kill_9_of_the_apply_worker_in_a_grouped_backlog_is_exactly_once() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = setup(&nodes).await;
    // A subscriber-side trigger (fired by apply too) slows each row down, so that the backlog
    // takes seconds and the kill lands inside a group.
    s.batch_execute(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM pg_sleep(0.0005); RETURN NEW; END $$;
         CREATE TRIGGER slow BEFORE INSERT ON log FOR EACH ROW EXECUTE FUNCTION slow();
         ALTER TABLE log ENABLE ALWAYS TRIGGER slow",
    )
    .await
    .unwrap();
    let n = 10000;
    single_row_txns(&p, 1, n).await;
    // (Not set_enabled: the worker shows streaming only once it has caught up.)
    s.batch_execute("SELECT pgsub.enable_subscription('g')").await.unwrap();
    // Somewhere in the backlog: some of it applied, not all.
    wait_for("part of the backlog applied", WAIT, || async {
        let got: i64 = one(&s, "SELECT count(*) FROM log").await;
        Ok((got > 1000).then_some(got))
    })
    .await
    .unwrap();
    let pid: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'g'").await;
    let at: i64 = one(&s, "SELECT count(*) FROM log").await;
    eprintln!("kill -9 of the apply worker ({pid}) with {at} of {n} rows applied");
    nodes.subscriber.kill9_child(pid, WAIT).await.expect("kill -9");
    let s = nodes.subscriber.client("postgres").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM t", &n.to_string(), WAIT).await;
    let dups: i64 = one(&s, "SELECT count(*) - count(DISTINCT n) FROM log").await;
    assert_eq!(dups, 0, "rows applied twice after kill -9");
    assert!(at < i64::from(n), "the kill came before the end of the backlog");
    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_failing_transaction_in_a_group_is_retried_with_the_ones_before_it_committed() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = setup(&nodes).await;
    // A row only the subscriber has: the 501st remote transaction's INSERT hits its key.
    s.batch_execute("INSERT INTO t VALUES (501, 'local')").await.unwrap();
    single_row_txns(&p, 1, 1000).await;
    s.batch_execute("SELECT pgsub.enable_subscription('g')").await.unwrap();
    wait_for_repeated_error(&s, "g", &["insert_exists", "t_pkey", "(501, local)"], WAIT).await;
    // The 500 transactions before the failing one are committed (as with one local commit per
    // remote transaction) by the first retry, not rolled back with it in a group at every retry.
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM log").await, 500, "applied before the failing transaction");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 501, "500 applied and the local row");
    s.batch_execute("DELETE FROM t WHERE id = 501").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM log", "1000", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_run_of_inserts_carried_over_grouped_commits_fails_as_a_range_then_by_its_own_transaction() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = setup(&nodes).await;
    // Long groups: the whole backlog is in the socket, so the 501st transaction's commit is
    // deferred and its insert loaded in one COPY with those of the transactions around it.
    long_groups(&s).await;
    s.batch_execute("INSERT INTO t VALUES (501, 'local')").await.unwrap();
    // Single-row transactions into one table: one run of inserts across their commits.
    p.batch_execute("DO $$ BEGIN FOR i IN 1..1000 LOOP INSERT INTO t VALUES (i, 'v' || i); COMMIT; END LOOP; END $$")
        .await
        .unwrap();
    let xid_501: String = one(&p, "SELECT xmin::text FROM t WHERE id = 501").await;
    // The COPY's error cannot tell which transaction's row failed: it names the range, and no
    // finish LSN that skip_transaction would take for one of them.
    enable_until_the_range_error(&nodes, &s).await;
    // The retry applies them one by one: the error then names the 501st transaction itself.
    wait_for_repeated_error(&s, "g", &["t_pkey", &format!("in transaction {xid_501}, finished at")], WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 501, "the 500 before it and the local row");
    s.batch_execute("DELETE FROM t WHERE id = 501").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM t", "1000", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// A deferred constraint trigger of the subscriber that fails at COMMIT, in a long group, under
/// `disable_on_error`: the group's error names the range and neither disables the subscription
/// nor moves its origin; the retry applies the transactions one by one, the failing one's error
/// names it and disables the subscription — and the origin stays before it, so that nothing is
/// lost once the cause is fixed (an origin position set for a commit that failed used to be
/// carried by the commit that disabled the subscription: the whole group was skipped).
#[tokio::test(flavor = "current_thread")]
async fn a_commit_that_fails_in_a_group_under_disable_on_error_loses_no_transaction() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = setup(&nodes).await;
    long_groups(&s).await;
    s.batch_execute(
        "CREATE FUNCTION no_bad() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.v = 'bad' THEN RAISE EXCEPTION 'bad row %', NEW.n; END IF; RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER no_bad AFTER INSERT ON log DEFERRABLE INITIALLY DEFERRED
           FOR EACH ROW EXECUTE FUNCTION no_bad();
         ALTER TABLE log ENABLE ALWAYS TRIGGER no_bad;
         SELECT pgsub.alter_subscription_options('g', disable_on_error => true);",
    )
    .await
    .unwrap();
    p.batch_execute(
        "DO $$ BEGIN FOR i IN 1..1000 LOOP
             INSERT INTO t VALUES (i, 'v' || i);
             INSERT INTO log VALUES (i, CASE WHEN i = 501 THEN 'bad' ELSE 'x' END);
             COMMIT;
         END LOOP; END $$",
    )
    .await
    .unwrap();
    let xid_501: String = one(&p, "SELECT xmin::text FROM t WHERE id = 501").await;
    enable_until_the_range_error(&nodes, &s).await;
    // The retry pins it to the 501st transaction, whose error disables the subscription.
    wait_value(&s, "SELECT enabled::text FROM pgsub.subscription WHERE subname = 'g'", "false", WAIT).await;
    let err: String = one(&s, "SELECT last_error FROM pgsub.stat_subscription WHERE subname = 'g'").await;
    assert!(err.contains("bad row 501") && err.contains(&format!("in transaction {xid_501}, finished at")), "{err}");
    assert!(!err.contains("replication target relation"), "a COMMIT's error names no relation: {err}");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM log").await, 500, "the 500 before it, each committed");
    s.batch_execute("ALTER TABLE log DISABLE TRIGGER no_bad").await.unwrap();
    set_enabled(&s, true).await;
    wait_value(&s, "SELECT count(*)::text FROM log", "1000", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}
