//! End-to-end: table synchronization workers (issue 15). One sync worker per table that needs its
//! initial copy, at most `pgsub.max_sync_workers_per_subscription` at once: tables copy in
//! parallel while the apply worker already streams the tables that are ready (also after a
//! refresh adds a big table); each table has a slot and a snapshot of its own, so the
//! publisher's oldest snapshot moves on as tables finish, and no sync slot is left behind; a
//! table whose copy fails records its own error, retries and recovers without holding the others
//! back; kill -9 of the sync worker, the apply worker or the postmaster in every sync state
//! (held there with `pgsub.sync_hold_state`) loses and doubles nothing; tables wait visibly for
//! a background worker slot when max_worker_processes is exhausted; tables become ready on an
//! idle publisher. Every test ends with the harness's full comparison of all replicated tables.
use pgsub_tests::{
    assert_replicated_equal, assert_replicated_equal_within, connect, one, poll_query_until, set_sync_hold, wait_for,
    wait_for_subscription_sync, wait_value, Cluster, ClusterOpts, TwoNodes,
};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// Generous bound for anything that waits on replication (the copies here are large and other
/// tests share the cores).
const WAIT: Duration = Duration::from_secs(120);

/// Sync slots on the publisher: `pgsub_<subid>_sync_<relid>_<sysid>`.
const SYNC_SLOTS: &str = r"SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pgsub\_%\_sync\_%'";

/// The application_name of the test's own sessions on the publisher, so that sampling the
/// publisher's sessions can tell them from pgsub's.
const TEST_APP: &str = "tablesync_test";

/// Every replicated table equal on both nodes (large copies: a longer wait than the default).
async fn assert_equal(p: &Client, s: &Client) {
    assert_replicated_equal_within(p, s, None, &[], WAIT).await
}

/// A client of the publisher whose session is marked as the test's own ([`TEST_APP`]).
async fn test_client(c: &Cluster) -> Client {
    let connstr = format!("{} application_name={TEST_APP}", c.connstr("postgres", "postgres"));
    connect(&connstr).await.unwrap_or_else(|e| panic!("{} as {TEST_APP}: {e}", c.name()))
}

/// `CREATE TABLE <name> (id int PRIMARY KEY, v text, n int)` with `rows` rows (ids 1..rows), on
/// the publisher.
fn table_with_rows(name: &str, rows: i64) -> String {
    format!(
        "CREATE TABLE {name} (id int PRIMARY KEY, v text, n int);
         INSERT INTO {name} SELECT g, md5(g::text), g FROM generate_series(1, {rows}) g;"
    )
}

/// `sync_state` of table `table` in pgsub.subscription_table.
fn state_sql(table: &str) -> String {
    format!("SELECT sync_state FROM pgsub.subscription_table WHERE relid = '{table}'::regclass")
}

/// Waits until no sync slot is left on the publisher.
async fn assert_no_sync_slot_left(p: &Client) {
    if let Err(e) = poll_query_until(p, SYNC_SLOTS, "0", WAIT).await {
        let left: String = one(
            p,
            r"SELECT coalesce(string_agg(slot_name::text, ', '), '') FROM pg_replication_slots
              WHERE slot_name LIKE 'pgsub\_%\_sync\_%'",
        )
        .await;
        panic!("sync slots left on the publisher ({left}): {e}");
    }
}

// =============================================================================================
// A write load on the publisher

/// Inserts, updates and deletes on the publisher in a background task, one transaction at a time
/// over `tables` in turn (each `(name, rows it was created with)`), until [`Writer::finish`].
struct Writer {
    stop: Arc<AtomicBool>,
    txns: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<Result<u64, String>>>,
}

impl Writer {
    /// `first_id`: the ids the writer inserts start there (above every existing id).
    fn start(c: Client, tables: Vec<(String, i64)>, first_id: i64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let txns = Arc::new(AtomicU64::new(0));
        let task = {
            let (stop, txns) = (stop.clone(), txns.clone());
            tokio::spawn(async move {
                let n = tables.len() as i64;
                let mut k: i64 = 0;
                while !stop.load(Ordering::SeqCst) {
                    let (t, rows) = &tables[(k % n) as usize];
                    let new_id = first_id + k;
                    // One of the initial rows and the row inserted into this table last round.
                    let upd = 1 + (k * 7919) % rows;
                    let del = 1 + (k * 104_729 + 13) % rows;
                    let sql = format!(
                        "BEGIN;
                         INSERT INTO {t} VALUES ({new_id}, md5('{new_id}'), {k});
                         UPDATE {t} SET n = n + 1, v = 'upd {k}' WHERE id IN ({upd}, {});
                         DELETE FROM {t} WHERE id = {del};
                         COMMIT;",
                        new_id - n
                    );
                    c.batch_execute(&sql).await.map_err(|e| format!("writer on {t}: {e}"))?;
                    k += 1;
                    txns.store(k as u64, Ordering::SeqCst);
                    // Paces the load (a transaction every 5 ms), not a wait for a condition.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok(k as u64)
            })
        };
        Writer { stop, txns, task: Some(task) }
    }

    fn txns(&self) -> u64 {
        self.txns.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` more transactions committed.
    async fn wait_progress(&self, n: u64) {
        let start = self.txns();
        wait_for(&format!("{n} more writer transactions"), WAIT, || async {
            Ok((self.txns() >= start + n).then_some(()))
        })
        .await
        .unwrap_or_else(|e| panic!("the writer made no progress: {e}"));
    }

    /// Stops the load; panics if a statement failed. Returns the transactions committed.
    async fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let task = self.task.take().expect("writer task");
        let n = task.await.expect("writer task panicked").unwrap_or_else(|e| panic!("{e}"));
        eprintln!("writer: {n} transactions committed");
        n
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// =============================================================================================
// 1. Twenty tables in parallel while the publisher writes

/// What the sampler saw while the tables synchronized.
#[derive(Default, Debug)]
struct Observed {
    samples: u32,
    /// Largest `count(sync_worker_pid)` of the subscription in pgsub.subscription_table.
    max_sync_pids: i64,
    /// Largest number of sync workers in the subscriber's pg_stat_activity.
    max_sync_backends: i64,
    /// Sync slots seen on the publisher and their catalog_xmin.
    slots: BTreeMap<String, i64>,
    /// The xmins of pgsub's sessions on the publisher (their snapshots).
    backend_xmins: BTreeSet<i64>,
    /// Age of the oldest snapshot pgsub held on the publisher, at each sample where it held one.
    oldest_ages: Vec<i32>,
    marker: Marker,
}

/// The row written into `hot` once it is ready, while other tables still copy.
#[derive(Default, Debug, Clone, Copy, PartialEq)]
enum Marker {
    /// `hot` is not ready yet (or every table is done already).
    #[default]
    NotSent,
    /// Inserted on the publisher at this moment.
    Sent(Instant),
    /// Seen on the subscriber `after` it was sent, while `pending` tables were not synchronized.
    Arrived { after: Duration, pending: i64 },
}

/// One sample of the subscription `par` (test 1); Some once every table is synchronized and
/// the worker streams.
async fn sample_parallel_sync(p: &Client, s: &Client, obs: &RefCell<Observed>) -> Result<Option<()>, String> {
    let r = s
        .query_one(
            "SELECT count(t.sync_worker_pid),
                    count(*) FILTER (WHERE t.sync_state NOT IN ('synchronized', 'ready')),
                    coalesce(max(t.sync_state) FILTER (WHERE t.remote_name = 'hot'), ''),
                    (SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'pgsub sync worker%'),
                    (SELECT status FROM pgsub.stat_subscription WHERE subname = 'par'),
                    (SELECT count(*) FROM hot WHERE id = -1)
             FROM pgsub.subscription_table t WHERE t.subname = 'par'",
            &[],
        )
        .await
        .map_err(|e| format!("subscriber sample: {e}"))?;
    let (pids, pending, hot, backends, status, marker_rows): (i64, i64, String, i64, String, i64) =
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
    let slots = p
        .query(
            r"SELECT slot_name::text, catalog_xmin::text::bigint FROM pg_replication_slots
              WHERE slot_name LIKE 'pgsub\_%\_sync\_%' AND catalog_xmin IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| format!("publisher slots: {e}"))?;
    // pgsub's sessions on the publisher: every client backend and walsender but the test's own.
    let xmins = p
        .query(
            "SELECT backend_xmin::text::bigint, age(backend_xmin) FROM pg_stat_activity
             WHERE backend_xmin IS NOT NULL AND backend_type IN ('client backend', 'walsender')
               AND application_name IS DISTINCT FROM $1 AND pid <> pg_backend_pid()",
            &[&TEST_APP],
        )
        .await
        .map_err(|e| format!("publisher snapshots: {e}"))?;
    let marker = obs.borrow().marker;
    let marker = match marker {
        Marker::NotSent if hot == "ready" && pending > 0 => {
            p.batch_execute("INSERT INTO hot VALUES (-1, 'after hot became ready', -1)")
                .await
                .map_err(|e| format!("marker row: {e}"))?;
            Marker::Sent(Instant::now())
        }
        Marker::Sent(at) if marker_rows == 1 => Marker::Arrived { after: at.elapsed(), pending },
        m => m,
    };
    let mut o = obs.borrow_mut();
    o.samples += 1;
    o.max_sync_pids = o.max_sync_pids.max(pids);
    o.max_sync_backends = o.max_sync_backends.max(backends);
    for row in &slots {
        o.slots.entry(row.get(0)).or_insert(row.get(1));
    }
    for row in &xmins {
        o.backend_xmins.insert(row.get(0));
    }
    if let Some(age) = xmins.iter().map(|r| r.get::<_, i32>(1)).max() {
        o.oldest_ages.push(age);
    }
    o.marker = marker;
    Ok((status == "streaming" && pending == 0).then_some(()))
}

#[tokio::test(flavor = "current_thread")]
async fn twenty_tables_sync_in_parallel_while_the_publisher_writes() {
    let nodes = TwoNodes::start_with(
        ClusterOpts::publisher(),
        ClusterOpts::subscriber().with_conf("pgsub.max_sync_workers_per_subscription = 2"),
    )
    .expect("start");
    let p = test_client(&nodes.publisher).await;
    let s = nodes.subscriber.client("postgres").await.expect("subscriber");
    assert_eq!(one::<String>(&s, "SHOW pgsub.max_sync_workers_per_subscription").await, "2");
    // `hot` first (lowest oid, first by name); t01 is twenty times bigger than the others.
    let mut tables: Vec<(String, i64)> = vec![("hot".into(), 200)];
    for i in 1..=20 {
        tables.push((format!("t{i:02}"), if i == 1 { 600_000 } else { 30_000 }));
    }
    for (t, rows) in &tables {
        p.batch_execute(&table_with_rows(t, *rows)).await.unwrap_or_else(|e| panic!("publisher {t}: {e}"));
        s.batch_execute(&format!("CREATE TABLE {t} (id int PRIMARY KEY, v text, n int)"))
            .await
            .unwrap_or_else(|e| panic!("subscriber {t}: {e}"));
    }
    p.batch_execute("CREATE PUBLICATION pub FOR ALL TABLES").await.expect("publication");
    let writer = Writer::start(test_client(&nodes.publisher).await, tables.clone(), 10_000_000);
    // The subscription is created once the writes are flowing.
    writer.wait_progress(50).await;
    s.execute("SELECT pgsub.create_subscription('par', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create_subscription");
    let t0 = Instant::now();
    let obs = RefCell::new(Observed::default());
    // Sampled every 10 ms (not wait_for's 100 ms): on a fast machine the whole synchronization
    // takes about a second and the small tables' copies tens of milliseconds each.
    let deadline = Instant::now() + WAIT + WAIT;
    loop {
        match sample_parallel_sync(&p, &s, &obs).await {
            Ok(Some(())) => break,
            Ok(None) => {}
            Err(e) => panic!("{e}\nobserved: {:?}", obs.borrow()),
        }
        assert!(Instant::now() < deadline, "every table of par synchronized: timed out\nobserved: {:?}", obs.borrow());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let obs = obs.into_inner();
    eprintln!(
        "synchronized after {:?}: {} samples, at most {} sync workers in the view and {} in pg_stat_activity, \
         {} sync slots seen with catalog_xmin {:?}, {} distinct pgsub snapshot xmins, oldest snapshot ages {:?}, \
         marker {:?}",
        t0.elapsed(),
        obs.samples,
        obs.max_sync_pids,
        obs.max_sync_backends,
        obs.slots.len(),
        obs.slots,
        obs.backend_xmins.len(),
        obs.oldest_ages,
        obs.marker
    );
    // (a) Changes of a ready table arrive while other tables still copy.
    match obs.marker {
        Marker::Arrived { pending, after } => assert!(
            pending > 0,
            "the row written into the ready table hot arrived only after every copy was done ({after:?} later)"
        ),
        Marker::Sent(at) => {
            panic!(
                "the row written into the ready table hot {:?} ago had not arrived when every copy was done",
                at.elapsed()
            )
        }
        Marker::NotSent => panic!("hot was never ready while other tables still copied"),
    }
    // (b) Never more than pgsub.max_sync_workers_per_subscription at once, and that many at times.
    assert_eq!(obs.max_sync_pids, 2, "sync workers at once in pgsub.subscription_table (limit 2)");
    assert!(obs.max_sync_backends <= 2, "{} sync workers at once in pg_stat_activity (limit 2)", obs.max_sync_backends);
    // (c) Each table's copy has a slot and a snapshot of its own, taken as the tables proceed
    // (the writer consumes xids meanwhile): one snapshot for every table would show one xmin.
    let xmins: BTreeSet<i64> = obs.slots.values().copied().collect();
    assert!(obs.slots.len() >= 2 && xmins.len() >= 2, "the sync slots seen do not move forward: {:?}", obs.slots);
    assert!(
        obs.backend_xmins.len() >= 2,
        "pgsub's snapshots on the publisher never moved on: xmins {:?}",
        obs.backend_xmins
    );
    writer.finish().await;
    wait_for_subscription_sync(&s, "par", WAIT).await;
    assert_equal(&p, &s).await;
    assert_no_sync_slot_left(&p).await;
    // No snapshot of pgsub is left open on the publisher either.
    if let Err(e) = poll_query_until(
        &p,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid() \
             AND backend_type IN ('client backend', 'walsender') AND application_name IS DISTINCT FROM '{TEST_APP}'"
        ),
        "0",
        WAIT,
    )
    .await
    {
        panic!("a snapshot of pgsub stays open on the publisher after the sync: {e}");
    }
}

// =============================================================================================
// 2. Refresh adding a big table

#[tokio::test(flavor = "current_thread")]
async fn refresh_adding_a_big_table_does_not_stop_other_tables() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    p.batch_execute(&format!("{} CREATE PUBLICATION pub FOR TABLE a;", table_with_rows("a", 1000)))
        .await
        .expect("publisher a");
    // b: 800k rows of about 170 bytes, a copy of several seconds. Written before the subscription's
    // slot exists: its walsender then has no big transaction to decode before a's next change
    // (that would delay a's row on the publisher's side, for any subscriber).
    p.batch_execute(
        "CREATE TABLE b (id int PRIMARY KEY, v text, n int);
         INSERT INTO b SELECT g, repeat(md5(g::text), 4), g FROM generate_series(1, 800000) g;",
    )
    .await
    .expect("publisher b");
    s.batch_execute("CREATE TABLE a (id int PRIMARY KEY, v text, n int)").await.expect("subscriber a");
    s.execute("SELECT pgsub.create_subscription('rb', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create_subscription");
    wait_for_subscription_sync(&s, "rb", WAIT).await;
    p.batch_execute("ALTER PUBLICATION pub ADD TABLE b").await.expect("publish b");
    s.batch_execute("CREATE TABLE b (id int PRIMARY KEY, v text, n int)").await.expect("subscriber b");
    s.batch_execute("SELECT pgsub.refresh_subscription('rb')").await.expect("refresh_subscription");
    wait_value(&s, &state_sql("b"), "copying", WAIT).await;
    // b is being copied: a change of the ready table a still arrives.
    let t0 = Instant::now();
    p.batch_execute("INSERT INTO a VALUES (1000001, 'while b copies', 1)").await.expect("insert into a");
    wait_value(&s, "SELECT count(*) FROM a WHERE id = 1000001", "1", WAIT).await;
    let r = s
        .query_one("SELECT sync_state, rows_copied FROM pgsub.subscription_table WHERE relid = 'b'::regclass", &[])
        .await
        .expect("b's state");
    let (state, rows): (String, i64) = (r.get(0), r.get(1));
    eprintln!("a's row arrived after {:?}; b is {state} with {rows} rows copied", t0.elapsed());
    assert!(
        ["copying", "copied"].contains(&state.as_str()),
        "a's row arrived only once b was {state}: the apply worker waited for b's copy"
    );
    // Progress is live while b copies: rows and bytes so far, when it started, the rate, and the
    // subscription's table counts.
    wait_value(
        &s,
        "SELECT t.sync_state = 'copying' AND t.rows_copied > 0 AND t.rows_copied < 800000 AND t.bytes_copied > 0
                AND t.copy_started_at IS NOT NULL AND t.sync_worker_pid IS NOT NULL
                AND st.tables_total = 2 AND st.tables_ready = 1 AND st.copy_rows_per_sec > 0
         FROM pgsub.subscription_table t JOIN pgsub.stat_subscription st USING (subname)
         WHERE t.relid = 'b'::regclass",
        "t",
        WAIT,
    )
    .await;
    wait_for_subscription_sync(&s, "rb", WAIT).await;
    let (total, ready): (i32, i32) = {
        wait_value(&s, &state_sql("b"), "ready", WAIT).await;
        let r = s
            .query_one("SELECT tables_total, tables_ready FROM pgsub.stat_subscription WHERE subname = 'rb'", &[])
            .await
            .expect("table counts");
        (r.get(0), r.get(1))
    };
    assert_eq!((total, ready), (2, 2));
    assert_eq!(
        one::<i64>(&s, "SELECT rows_copied FROM pgsub.subscription_table WHERE relid = 'b'::regclass").await,
        800000
    );
    // The byte count lives only while a copy runs: NULL once done, not a misleading 0.
    assert!(one::<Option<i64>>(&s, "SELECT bytes_copied FROM pgsub.subscription_table WHERE relid = 'b'::regclass")
        .await
        .is_none());
    p.batch_execute("INSERT INTO a VALUES (1000002, 'after', 2); UPDATE b SET n = -n WHERE id % 1000 = 0")
        .await
        .expect("writes after the copy");
    wait_value(&s, &state_sql("b"), "ready", WAIT).await;
    assert_equal(&p, &s).await;
    assert_no_sync_slot_left(&p).await;
}

// =============================================================================================
// 3. A failing table

#[tokio::test(flavor = "current_thread")]
async fn a_failing_table_does_not_block_the_others_and_recovers() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    for t in ["good1", "good2", "bad"] {
        p.batch_execute(&table_with_rows(t, 5000)).await.unwrap_or_else(|e| panic!("publisher {t}: {e}"));
    }
    // One row of the publisher's bad (n = 5000) violates the subscriber's constraint.
    s.batch_execute(
        "CREATE TABLE good1 (id int PRIMARY KEY, v text, n int);
         CREATE TABLE good2 (id int PRIMARY KEY, v text, n int);
         CREATE TABLE bad (id int PRIMARY KEY, v text, n int, CONSTRAINT bad_n_small CHECK (n < 5000));",
    )
    .await
    .expect("subscriber tables");
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE good1, good2, bad").await.expect("publication");
    s.execute("SELECT pgsub.create_subscription('fail', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create_subscription");
    let bad_error = "SELECT coalesce(last_error, '') FROM pgsub.subscription_table WHERE relid = 'bad'::regclass";
    let first_error = wait_for("bad's copy error in its last_error", WAIT, || async {
        let e: String = one(&s, bad_error).await;
        Ok(e.contains("bad_n_small").then_some(e))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("bad: {first_error}");
    // The other two are copied all the same; their changes flow while bad keeps failing.
    wait_value(
        &s,
        "SELECT count(*) FROM pgsub.subscription_table
         WHERE subname = 'fail' AND remote_name IN ('good1', 'good2') AND sync_state IN ('synchronized', 'ready')",
        "2",
        WAIT,
    )
    .await;
    p.batch_execute("INSERT INTO good1 VALUES (-1, 'while bad fails', 0); UPDATE good2 SET n = -1 WHERE id = 1")
        .await
        .expect("writes to the good tables");
    wait_value(&s, "SELECT count(*) FROM good1 WHERE id = -1", "1", WAIT).await;
    wait_value(&s, "SELECT n FROM good2 WHERE id = 1", "-1", WAIT).await;
    wait_value(
        &s,
        "SELECT string_agg(remote_name || ':' || sync_state, ',' ORDER BY remote_name) FROM pgsub.subscription_table
         WHERE subname = 'fail' AND remote_name IN ('good1', 'good2')",
        "good1:ready,good2:ready",
        WAIT,
    )
    .await;
    // bad retries (its last_error_at moves on) and stays back in init meanwhile; the
    // subscription itself is not in error.
    let first_at: String = one::<Option<String>>(
        &s,
        "SELECT last_error_at::text FROM pgsub.subscription_table WHERE relid = 'bad'::regclass",
    )
    .await
    .expect("bad's last_error_at is set with its last_error");
    let seen = RefCell::new(BTreeSet::new());
    wait_for("bad's copy failing again (a retry)", WAIT, || async {
        let r = s
            .query_one(
                "SELECT t.sync_state, coalesce(t.last_error, ''), t.last_error_at > $1::text::timestamptz,
                        (SELECT status FROM pgsub.stat_subscription WHERE subname = 'fail')
                 FROM pgsub.subscription_table t WHERE t.relid = 'bad'::regclass",
                &[&first_at],
            )
            .await
            .map_err(|e| e.to_string())?;
        let (state, error, again, status): (String, String, bool, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
        assert!(["init", "copying"].contains(&state.as_str()), "bad is {state} while its copy fails");
        assert!(
            ["initial_copy", "streaming"].contains(&status.as_str()),
            "the subscription is {status} while only bad's copy fails"
        );
        seen.borrow_mut().insert(format!("bad {state}, subscription {status}"));
        Ok((again && error.contains("bad_n_small")).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("while bad failed: {:?}", seen.borrow());
    p.batch_execute("INSERT INTO bad VALUES (-1, 'while it fails', 1)").await.expect("insert into bad");
    // Fixed: bad is copied by itself (the next retry) and becomes ready.
    s.batch_execute("ALTER TABLE bad DROP CONSTRAINT bad_n_small").await.expect("drop the constraint");
    wait_value(
        &s,
        "SELECT sync_state IN ('synchronized', 'ready') FROM pgsub.subscription_table WHERE relid = 'bad'::regclass",
        "t",
        WAIT,
    )
    .await;
    p.batch_execute("INSERT INTO bad VALUES (-2, 'after the fix', 2); UPDATE good1 SET n = 7 WHERE id = 2")
        .await
        .expect("writes after the fix");
    wait_value(&s, &state_sql("bad"), "ready", WAIT).await;
    eprintln!(
        "bad ready; last_error now {:?}",
        one::<Option<String>>(&s, "SELECT last_error FROM pgsub.subscription_table WHERE relid = 'bad'::regclass")
            .await
    );
    assert_equal(&p, &s).await;
    assert_no_sync_slot_left(&p).await;
}

/// disable_on_error: a table whose copy fails disables the subscription (as natively, where a
/// tablesync worker's error does too); the error is in the table's and the subscription's
/// last_error; once fixed and enabled again, the table is copied.
#[tokio::test(flavor = "current_thread")]
async fn a_failing_copy_disables_the_subscription_with_disable_on_error() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    p.batch_execute(&table_with_rows("strict", 2000)).await.expect("publisher strict");
    s.batch_execute("CREATE TABLE strict (id int PRIMARY KEY, v text, n int, CONSTRAINT strict_n CHECK (n < 2000))")
        .await
        .expect("subscriber strict");
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE strict").await.expect("publication");
    s.execute(
        "SELECT pgsub.create_subscription('doe', $1, ARRAY['pub'], disable_on_error => true)",
        &[&nodes.pub_conninfo()],
    )
    .await
    .expect("create_subscription");
    wait_value(&s, "SELECT enabled FROM pgsub.subscription WHERE subname = 'doe'", "f", WAIT).await;
    let (table_error, sub_error): (Option<String>, Option<String>) = {
        let r = s
            .query_one(
                "SELECT t.last_error, st.last_error FROM pgsub.subscription_table t
                 JOIN pgsub.stat_subscription st USING (subname) WHERE t.relid = 'strict'::regclass",
                &[],
            )
            .await
            .expect("errors");
        (r.get(0), r.get(1))
    };
    assert!(table_error.unwrap_or_default().contains("strict_n"), "the table's last_error names the constraint");
    assert!(sub_error.unwrap_or_default().contains("strict_n"), "the subscription's last_error too");
    wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'doe'", "disabled", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM strict").await, 0, "nothing of the failed copy is left");
    s.batch_execute("ALTER TABLE strict DROP CONSTRAINT strict_n; SELECT pgsub.enable_subscription('doe')")
        .await
        .expect("fix and enable");
    wait_value(&s, &state_sql("strict"), "ready", WAIT).await;
    assert_equal(&p, &s).await;
    assert_no_sync_slot_left(&p).await;
}

// =============================================================================================
// 4. kill -9 in every sync state

#[derive(Clone, Copy, Debug, PartialEq)]
enum Victim {
    SyncWorker,
    ApplyWorker,
    Postmaster,
}

/// The states a sync worker can be held in, in order.
const HOLD_STATES: [&str; 4] = ["copying", "copied", "catchup", "synchronized"];

/// Rows of each table added per case.
const CASE_ROWS: i64 = 20_000;

/// Waits until the sync worker of `table` is held in `state` (its slot `slot` still on the
/// publisher); returns the sync worker's pid.
async fn wait_held(p: &Client, s: &Client, table: &str, state: &str, slot: &str) -> i32 {
    let sql =
        format!("SELECT sync_state, sync_worker_pid FROM pgsub.subscription_table WHERE relid = '{table}'::regclass");
    let last = RefCell::new(String::new());
    let pid = wait_for(&format!("{table}'s sync worker held in {state}"), WAIT, || {
        let (last, sql) = (&last, &sql);
        async move {
            let r = s.query_one(sql.as_str(), &[]).await.map_err(|e| e.to_string())?;
            let (st, pid): (String, Option<i32>) = (r.get(0), r.get(1));
            *last.borrow_mut() = format!("{st} pid {pid:?}");
            // Held after SYNCDONE, the table may already show ready: the apply worker took it
            // over while its sync worker waits to drop its slot.
            let at = st == state || (state == "synchronized" && st == "ready");
            Ok(pid.filter(|_| at))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e} (last: {})", last.borrow()));
    // Every hold point comes before the sync worker drops its slot.
    let n: i64 = p
        .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await
        .expect("slot lookup")
        .get(0);
    assert_eq!(n, 1, "{table} held in {state}: its sync slot {slot} should exist on the publisher");
    let backend: String = one(s, &format!("SELECT backend_type FROM pg_stat_activity WHERE pid = {pid}")).await;
    assert!(backend.starts_with("pgsub sync worker"), "sync_worker_pid {pid} is a {backend}");
    pid
}

async fn kill9_in_every_sync_state(victim: Victim) {
    let mut nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.expect("publisher");
    let mut s = nodes.subscriber.client("postgres").await.expect("subscriber");
    p.batch_execute(&format!("{} CREATE PUBLICATION pub FOR TABLE base;", table_with_rows("base", 1000)))
        .await
        .expect("publisher base");
    s.batch_execute("CREATE TABLE base (id int PRIMARY KEY, v text, n int)").await.expect("subscriber base");
    s.execute("SELECT pgsub.create_subscription('k', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create_subscription");
    wait_for_subscription_sync(&s, "k", WAIT).await;
    for (case, state) in HOLD_STATES.into_iter().enumerate() {
        let t0 = Instant::now();
        let table = format!("t_{state}");
        p.batch_execute(&format!("{} ALTER PUBLICATION pub ADD TABLE {table};", table_with_rows(&table, CASE_ROWS)))
            .await
            .unwrap_or_else(|e| panic!("publisher {table}: {e}"));
        // No unique key on the subscriber: a row applied twice would show as a second row, not
        // stop apply with a unique violation.
        s.batch_execute(&format!(
            "CREATE TABLE {table} (id int NOT NULL, v text, n int); CREATE INDEX ON {table} (id)"
        ))
        .await
        .unwrap_or_else(|e| panic!("subscriber {table}: {e}"));
        set_sync_hold(&nodes.subscriber, &s, state).await;
        let writer = Writer::start(
            nodes.publisher.client("postgres").await.expect("writer"),
            vec![(table.clone(), CASE_ROWS), ("base".into(), 1000)],
            1_000_000 * (case as i64 + 1),
        );
        writer.wait_progress(10).await;
        s.batch_execute("SELECT pgsub.refresh_subscription('k')").await.expect("refresh_subscription");
        let slot: String = one(
            &s,
            &format!(
                "SELECT format('pgsub_%s_sync_%s_%s', subid, '{table}'::regclass::oid, \
                        (SELECT system_identifier FROM pg_control_system())) FROM pgsub.subscription \
                 WHERE subname = 'k'"
            ),
        )
        .await;
        let sync_pid = wait_held(&p, &s, &table, state, &slot).await;
        writer.wait_progress(20).await;
        match victim {
            Victim::SyncWorker | Victim::ApplyWorker => {
                let pid = if victim == Victim::SyncWorker {
                    sync_pid
                } else {
                    one::<Option<i32>>(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'k'")
                        .await
                        .expect("the apply worker's pid")
                };
                nodes
                    .subscriber
                    .kill9_child(pid, WAIT)
                    .await
                    .unwrap_or_else(|e| panic!("kill -9 of the {victim:?} in {state}: {e}"));
            }
            Victim::Postmaster => {
                drop(s);
                nodes.subscriber.kill9().expect("kill -9 of the subscriber postmaster");
                nodes.subscriber.start_again().expect("start the subscriber again");
            }
        }
        s = nodes.subscriber.client("postgres").await.expect("subscriber after the kill");
        set_sync_hold(&nodes.subscriber, &s, "").await;
        writer.wait_progress(20).await;
        p.batch_execute(&format!(
            "INSERT INTO {table} SELECT g, 'after the kill', g FROM generate_series({0} + 1, {0} + 1000) g",
            500_000 + 1_000_000 * case as i64
        ))
        .await
        .expect("rows after the kill");
        // The writer keeps writing until the table is ready: the apply worker's stream passes its
        // copy point.
        wait_value(&s, &state_sql(&table), "ready", WAIT).await;
        writer.finish().await;
        assert_equal(&p, &s).await;
        let dups: i64 = one(&s, &format!("SELECT count(*) - count(DISTINCT id) FROM {table}")).await;
        assert_eq!(dups, 0, "{table}: rows applied twice after kill -9 of the {victim:?} in {state}");
        assert_no_sync_slot_left(&p).await;
        eprintln!("{victim:?} killed with {table} held in {state}: equal after {:?}", t0.elapsed());
    }
    if victim != Victim::Postmaster {
        let restarts = nodes.subscriber.log().matches("all server processes terminated; reinitializing").count();
        assert_eq!(restarts, HOLD_STATES.len(), "one crash restart per kill");
    }
}

/// Nodes with table `base` (`base_rows` rows) subscribed as `sub` and synchronized, then table
/// `t` (`t_rows` rows; `t_ddl` here) added to the publication and the sync worker held in `hold`
/// by a refresh; returns the clients once `t`'s sync worker is held there.
async fn held_in(
    nodes: &TwoNodes,
    sub: &str,
    base_rows: i64,
    t_rows: i64,
    t_ddl: &str,
    hold: &str,
) -> (Client, Client) {
    let p = nodes.publisher.client("postgres").await.expect("publisher");
    let s = nodes.subscriber.client("postgres").await.expect("subscriber");
    p.batch_execute(&format!("{} CREATE PUBLICATION pub FOR TABLE base;", table_with_rows("base", base_rows)))
        .await
        .expect("publisher base");
    s.batch_execute("CREATE TABLE base (id int PRIMARY KEY, v text, n int)").await.expect("subscriber base");
    s.execute("SELECT pgsub.create_subscription($1, $2, ARRAY['pub'])", &[&sub, &nodes.pub_conninfo()])
        .await
        .expect("create_subscription");
    wait_for_subscription_sync(&s, sub, WAIT).await;
    p.batch_execute(&format!("{} ALTER PUBLICATION pub ADD TABLE t;", table_with_rows("t", t_rows)))
        .await
        .expect("publisher t");
    s.batch_execute(t_ddl).await.expect("subscriber t");
    set_sync_hold(&nodes.subscriber, &s, hold).await;
    s.execute("SELECT pgsub.refresh_subscription($1)", &[&sub]).await.expect("refresh_subscription");
    let slot: String = one(
        &s,
        &format!(
            "SELECT format('pgsub_%s_sync_%s_%s', subid, 't'::regclass::oid, \
                    (SELECT system_identifier FROM pg_control_system())) FROM pgsub.subscription \
             WHERE subname = '{sub}'"
        ),
    )
    .await;
    wait_held(&p, &s, "t", hold, &slot).await;
    (p, s)
}

/// A table removed from the publication while it waited for its sync worker (no worker may
/// start: `pgsub.max_sync_workers_per_subscription = 0`) is copied whole when its worker comes,
/// as native's tablesync copies a table the publications no longer list (no column list, no
/// filter); pgsub read no columns and copied a row of local defaults (NULLs) for each remote row.
#[tokio::test(flavor = "current_thread")]
async fn a_table_removed_from_the_publication_before_its_copy_is_copied_whole() {
    let nodes = TwoNodes::start_with(
        ClusterOpts::publisher(),
        ClusterOpts::subscriber().with_conf("pgsub.max_sync_workers_per_subscription = 0"),
    )
    .expect("start");
    let p = nodes.publisher.client("postgres").await.expect("publisher");
    let s = nodes.subscriber.client("postgres").await.expect("subscriber");
    p.batch_execute(&format!(
        "{} {} CREATE PUBLICATION pub FOR TABLE t, other;",
        table_with_rows("t", 100),
        table_with_rows("other", 10)
    ))
    .await
    .expect("publisher");
    // No key here: rows of defaults would be taken without an error.
    s.batch_execute("CREATE TABLE t (id int, v text, n int); CREATE TABLE other (id int PRIMARY KEY, v text, n int)")
        .await
        .expect("subscriber");
    s.execute("SELECT pgsub.create_subscription('w', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create_subscription");
    wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'w'", "initial_copy", WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let init: i64 = one(
        &s,
        "SELECT count(*) FROM pgsub.subscription_table WHERE subname = 'w' AND sync_state = 'init' \
         AND sync_worker_pid IS NULL",
    )
    .await;
    assert_eq!(init, 2, "no table's copy has started");
    p.batch_execute("ALTER PUBLICATION pub DROP TABLE t").await.expect("drop t from the publication");
    s.batch_execute("ALTER SYSTEM SET pgsub.max_sync_workers_per_subscription = 2").await.unwrap();
    s.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    wait_for_subscription_sync(&s, "w", WAIT).await;
    let nulls: i64 = one(&s, "SELECT count(*) FROM t WHERE id IS NULL").await;
    assert_eq!(nulls, 0, "rows of defaults copied");
    assert_equal(&p, &s).await;
}

/// After the copy of a held table: rows under its old name, the rename on the publisher and here,
/// rows and an UPDATE under the new name, and a change the apply worker applies (it is past them
/// all when the catch-up starts, and has recorded the new name).
async fn rename_on_both_sides_after_the_copy(nodes: &TwoNodes, sub: &str) -> (Client, Client) {
    let (p, s) = held_in(nodes, sub, 10, 100, "CREATE TABLE t (id int PRIMARY KEY, v text, n int)", "copied").await;
    p.batch_execute("INSERT INTO t SELECT g, 'before', g FROM generate_series(101, 150) g").await.unwrap();
    p.batch_execute("ALTER TABLE t RENAME TO t2").await.unwrap();
    s.batch_execute("ALTER TABLE t RENAME TO t2").await.unwrap();
    p.batch_execute(
        "INSERT INTO t2 SELECT g, 'after', g FROM generate_series(151, 200) g;
         UPDATE t2 SET v = 'updated' WHERE id <= 10;
         INSERT INTO base VALUES (11, 'after', 11)",
    )
    .await
    .unwrap();
    wait_value(&s, "SELECT count(*) FROM base WHERE id = 11", "1", WAIT).await;
    (p, s)
}

/// Lifts the hold of `rename_on_both_sides_after_the_copy`'s table: it becomes ready with all
/// 200 rows, equal, and its sync slot is gone.
async fn release_renamed_table(nodes: &TwoNodes, p: &Client, s: &Client) {
    set_sync_hold(&nodes.subscriber, s, "").await;
    wait_value(s, &state_sql("t2"), "ready", WAIT).await;
    assert_eq!(one::<i64>(s, "SELECT count(*) FROM t2").await, 200);
    assert_equal(p, s).await;
    assert_no_sync_slot_left(p).await;
}

/// A table renamed on the publisher and here between its copy and the end of its catch-up: the
/// sync worker applies the changes under the old name (which no local table has any more) and
/// those under the new one to its table. It failed on the old name's (`does not exist`), and
/// its next attempt, started under the new name the apply worker had recorded meanwhile, took
/// them for another table's and skipped them, while the apply worker skipped them as the table's
/// sync worker's: lost.
#[tokio::test(flavor = "current_thread")]
async fn a_table_renamed_on_both_sides_during_its_catch_up_loses_nothing() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = rename_on_both_sides_after_the_copy(&nodes, "r").await;
    release_renamed_table(&nodes, &p, &s).await;
}

/// The same, with the sync worker started again after the apply worker recorded the new name:
/// it knows its table by the publisher's OID (looked up under the recorded name), so the changes
/// still coming under the old name are its table's.
#[tokio::test(flavor = "current_thread")]
async fn a_sync_worker_started_after_a_rename_on_both_sides_applies_the_old_names_changes() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = rename_on_both_sides_after_the_copy(&nodes, "rr").await;
    wait_value(
        &s,
        "SELECT remote_name::text FROM pgsub.subscription_table WHERE subname = 'rr' AND relid = 't2'::regclass",
        "t2",
        WAIT,
    )
    .await;
    let first: i32 = one(&s, "SELECT sync_worker_pid FROM pgsub.subscription_table WHERE relid = 't2'::regclass").await;
    assert!(one::<bool>(&s, &format!("SELECT pg_terminate_backend({first})")).await);
    wait_for("another sync worker held after the copy", WAIT, || async {
        let pid: Option<i32> =
            one(&s, "SELECT sync_worker_pid FROM pgsub.subscription_table WHERE relid = 't2'::regclass").await;
        Ok(pid.filter(|&p| p != first).map(|_| ()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    release_renamed_table(&nodes, &p, &s).await;
}

/// The apply worker whose position is a table's catch-up end (X) exits while the table's sync
/// worker catches up (here held in CATCHUP; a `pg_terminate_backend`, not a crash restart of the
/// whole server). Its successor starts from the subscription's origin and skips the table's
/// changes until the table is synchronized, so it passes X: a sync worker that went on to
/// SYNCDONE at X lost the table's changes the successor had skipped beyond it (100 rows here).
/// The catch-up is given up and done again with the running apply worker's position: nothing lost
/// or doubled.
#[tokio::test(flavor = "current_thread")]
async fn an_apply_worker_exiting_during_a_catch_up_loses_none_of_the_tables_changes() {
    let nodes = TwoNodes::start().expect("start");
    // No unique key here: a row applied twice shows as a second row.
    let (p, s) = held_in(
        &nodes,
        "k",
        100,
        1000,
        "CREATE TABLE t (id int NOT NULL, v text, n int); CREATE INDEX ON t (id)",
        "catchup",
    )
    .await;
    let first: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'k'").await;
    assert!(one::<bool>(&s, &format!("SELECT pg_terminate_backend({first})")).await);
    wait_for("another apply worker", WAIT, || async {
        let pid: Option<i32> = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'k'").await;
        Ok(pid.filter(|&p| p != first).map(|_| ()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // Changes of t the new apply worker receives and skips (t is not synchronized), then one of
    // base it applies: it is past them.
    p.batch_execute(
        "INSERT INTO t SELECT g, 'after the exit', g FROM generate_series(2001, 2100) g;
         INSERT INTO base VALUES (1001, 'after', 1001)",
    )
    .await
    .expect("rows after the exit");
    wait_value(&s, "SELECT count(*) FROM base WHERE id = 1001", "1", WAIT).await;
    set_sync_hold(&nodes.subscriber, &s, "").await;
    wait_value(&s, &state_sql("t"), "ready", WAIT).await;
    assert_equal(&p, &s).await;
    let dups: i64 = one(&s, "SELECT count(*) - count(DISTINCT id) FROM t").await;
    assert_eq!(dups, 0, "rows applied twice");
    assert_no_sync_slot_left(&p).await;
    assert!(
        nodes.subscriber.log_contains("the apply worker that set the catch-up end has exited"),
        "the catch-up was given up"
    );
}

/// A change of the subscription's options, its name or a refresh while a table is being copied
/// restarts the apply worker only: the sync worker goes on with its copy, as native's tablesync
/// does, and the next apply worker answers it. pgsub stopped the sync workers with the apply
/// worker (a FATAL line) and the copy started over from its first row.
#[tokio::test(flavor = "current_thread")]
async fn an_option_change_a_rename_or_a_refresh_during_a_copy_lets_the_copy_go_on() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) =
        held_in(&nodes, "k", 100, 20_000, "CREATE TABLE t (id int PRIMARY KEY, v text, n int)", "copying").await;
    let sync_pid: i32 =
        one(&s, "SELECT sync_worker_pid FROM pgsub.subscription_table WHERE relid = 't'::regclass").await;
    let listed: String = one(
        &s,
        "SELECT string_agg(format('%s %s', pid, relid::regclass), ', ') FROM pgsub.stat_subscription_workers \
         WHERE worker_type = 'table synchronization'",
    )
    .await;
    assert_eq!(listed, format!("{sync_pid} t"), "the sync worker's row of pgsub.stat_subscription_workers");
    let apply_pid = || async { one::<Option<i32>>(&s, "SELECT pid FROM pgsub.stat_subscription").await };
    let changes = [
        (
            "SELECT pgsub.alter_subscription_options('k', synchronous_commit => 'on')",
            "will restart because of a parameter change",
        ),
        ("SELECT pgsub.rename_subscription('k', 'k2')", "will restart because of a parameter change"),
        (
            "SELECT pgsub.refresh_subscription('k2')",
            "will restart because the subscription's tables are being refreshed",
        ),
    ];
    for (sql, says) in changes {
        // A worker still starting when the change comes leaves without a word (the change's
        // transaction holds it off): the change is made to a running one.
        wait_value(&s, "SELECT status IN ('initial_copy', 'streaming') FROM pgsub.stat_subscription", "t", WAIT).await;
        let before = apply_pid().await.expect("an apply worker runs");
        let logged = nodes.subscriber.log().matches(says).count();
        s.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        wait_for(&format!("a new apply worker after {sql}"), WAIT, || async {
            let now = apply_pid().await;
            Ok(now.filter(|&p| p != before).map(|_| ()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        // The old worker's line may reach the log file after the new worker shows.
        wait_for(&format!("{sql}: the apply worker says \"{says}\""), WAIT, || async {
            Ok((nodes.subscriber.log().matches(says).count() > logged).then_some(()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let now: Option<i32> =
            one(&s, "SELECT sync_worker_pid FROM pgsub.subscription_table WHERE relid = 't'::regclass").await;
        assert_eq!(now, Some(sync_pid), "{sql}: the table's sync worker goes on");
        let alive: bool =
            one(&s, &format!("SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = {sync_pid})")).await;
        assert!(alive, "{sql}: sync worker {sync_pid} still runs");
    }
    p.batch_execute("INSERT INTO t SELECT g, 'during the copy', g FROM generate_series(30001, 30100) g")
        .await
        .expect("rows during the copy");
    set_sync_hold(&nodes.subscriber, &s, "").await;
    wait_value(&s, &state_sql("t"), "ready", WAIT).await;
    p.batch_execute("INSERT INTO base VALUES (1001, 'after', 1001)").await.expect("a row after");
    wait_value(&s, "SELECT count(*) FROM base WHERE id = 1001", "1", WAIT).await;
    assert_equal(&p, &s).await;
    assert_no_sync_slot_left(&p).await;
    let log = nodes.subscriber.log();
    assert!(!log.contains("of an interrupted copy"), "the copy was not started over");
    assert!(!log.contains("terminating background worker \"pgsub sync worker"), "no sync worker was terminated");
}

/// A sync worker whose copy is done when the subscription's options change catches up with the
/// new ones, as native's tablesync restarts on seeing the change: it exits before its catch-up,
/// saying why, and the next one catches up from the copy (not copied again).
#[tokio::test(flavor = "current_thread")]
async fn a_sync_worker_past_its_copy_catches_up_with_the_changed_options() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) =
        held_in(&nodes, "k", 100, 20_000, "CREATE TABLE t (id int PRIMARY KEY, v text, n int)", "copied").await;
    let sync_pid: i32 =
        one(&s, "SELECT sync_worker_pid FROM pgsub.subscription_table WHERE relid = 't'::regclass").await;
    s.batch_execute("SELECT pgsub.alter_subscription_options('k', synchronous_commit => 'on')")
        .await
        .expect("alter_subscription_options");
    p.batch_execute("INSERT INTO t SELECT g, 'after the copy', g FROM generate_series(30001, 30100) g")
        .await
        .expect("rows after the copy");
    set_sync_hold(&nodes.subscriber, &s, "").await;
    wait_value(&s, &state_sql("t"), "ready", WAIT).await;
    let said = "table synchronization worker for subscription \"k\", table \"public\".\"t\" will restart because of a parameter change";
    nodes.subscriber.wait_for_log(said, WAIT).await.unwrap_or_else(|e| panic!("{e}"));
    let alive: bool = one(&s, &format!("SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = {sync_pid})")).await;
    assert!(!alive, "the first sync worker exited");
    assert_eq!(nodes.subscriber.log().matches("initial copy of \"public\".\"t\" ").count(), 1, "copied once");
    p.batch_execute("INSERT INTO base VALUES (1001, 'after', 1001)").await.expect("a row after");
    wait_value(&s, "SELECT count(*) FROM base WHERE id = 1001", "1", WAIT).await;
    assert_equal(&p, &s).await;
    assert_no_sync_slot_left(&p).await;
}

/// A table removed from the subscription by a change of its publications while it is being
/// copied has its sync worker stopped and its sync slot dropped, as native's ALTER SUBSCRIPTION
/// … SET PUBLICATION does; the other tables go on. (With the apply worker restarted alone on a
/// changed option, that sync worker went on copying a table no longer subscribed and then
/// waited for an answer for ever, its slot holding the publisher's WAL.)
#[tokio::test(flavor = "current_thread")]
async fn a_table_removed_by_a_change_of_publications_during_its_copy_stops_its_sync_worker() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) =
        held_in(&nodes, "k", 100, 20_000, "CREATE TABLE t (id int PRIMARY KEY, v text, n int)", "copying").await;
    let sync_pid: i32 =
        one(&s, "SELECT sync_worker_pid FROM pgsub.subscription_table WHERE relid = 't'::regclass").await;
    p.batch_execute("CREATE PUBLICATION pub_base FOR TABLE base").await.expect("publication of base only");
    s.batch_execute("SELECT pgsub.alter_subscription_publications('k', ARRAY['pub_base'])")
        .await
        .expect("alter_subscription_publications");
    wait_value(&s, &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {sync_pid}"), "0", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pgsub.subscription_table WHERE relid = 't'::regclass").await, 0);
    set_sync_hold(&nodes.subscriber, &s, "").await;
    assert_no_sync_slot_left(&p).await;
    p.batch_execute("INSERT INTO base VALUES (1001, 'after', 1001)").await.expect("a row after");
    wait_value(&s, "SELECT count(*) FROM base WHERE id = 1001", "1", WAIT).await;
    let workers: i64 =
        one(&s, "SELECT count(*) FROM pgsub.stat_subscription_workers WHERE worker_type = 'table synchronization'")
            .await;
    assert_eq!(workers, 0, "no sync worker left");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 0, "t, no longer subscribed, got nothing");
    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn kill_9_of_the_sync_worker_in_every_sync_state_loses_and_duplicates_nothing() {
    kill9_in_every_sync_state(Victim::SyncWorker).await;
}

#[tokio::test(flavor = "current_thread")]
async fn kill_9_of_the_apply_worker_in_every_sync_state_loses_and_duplicates_nothing() {
    kill9_in_every_sync_state(Victim::ApplyWorker).await;
}

#[tokio::test(flavor = "current_thread")]
async fn kill_9_of_the_postmaster_in_every_sync_state_loses_and_duplicates_nothing() {
    kill9_in_every_sync_state(Victim::Postmaster).await;
}

// =============================================================================================
// 5. No background worker slot

/// One sample of the tables of subscription `few`.
#[derive(Debug)]
struct FewSample {
    /// Tables with a sync worker (`sync_worker_pid`).
    workers: i64,
    /// Tables with `waiting_for_worker`.
    waiting: i64,
    /// Tables held in `copied` with their sync worker.
    held: i64,
    /// Tables not synchronized yet.
    pending: i64,
    /// The subscription's status.
    status: String,
}

#[tokio::test(flavor = "current_thread")]
async fn tables_wait_visibly_when_worker_processes_are_exhausted() {
    // The supervisor, the database's launcher, the apply worker and one sync worker fit; nothing
    // else takes a slot (no parallel workers, no native logical replication launcher).
    let sub_opts = ClusterOpts::subscriber()
        .with_conf("max_worker_processes = 4")
        .with_conf("max_parallel_workers = 0")
        .with_conf("max_logical_replication_workers = 0");
    let nodes = TwoNodes::start_with(ClusterOpts::publisher(), sub_opts).expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    for t in ["w1", "w2", "w3"] {
        p.batch_execute(&table_with_rows(t, 5000)).await.unwrap_or_else(|e| panic!("publisher {t}: {e}"));
        s.batch_execute(&format!("CREATE TABLE {t} (id int PRIMARY KEY, v text, n int)"))
            .await
            .unwrap_or_else(|e| panic!("subscriber {t}: {e}"));
    }
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE w1, w2, w3").await.expect("publication");
    // The one sync worker that fits stays after its copy, so that the next table must wait.
    set_sync_hold(&nodes.subscriber, &s, "copied").await;
    s.execute("SELECT pgsub.create_subscription('few', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create_subscription");
    let sample = "SELECT count(sync_worker_pid),
                         count(*) FILTER (WHERE waiting_for_worker),
                         count(*) FILTER (WHERE waiting_for_worker AND sync_state <> 'init'),
                         count(*) FILTER (WHERE sync_state = 'copied' AND sync_worker_pid IS NOT NULL),
                         count(*) FILTER (WHERE sync_state NOT IN ('synchronized', 'ready')),
                         (SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'pgsub sync worker%'),
                         (SELECT status FROM pgsub.stat_subscription WHERE subname = 'few')
                  FROM pgsub.subscription_table WHERE subname = 'few'";
    let max_workers = std::cell::Cell::new(0i64);
    // Samples the tables, asserting at most one sync worker ever; Some(the sample) once `until`
    // holds for it.
    let check = |until: fn(&FewSample) -> bool| {
        let max_workers = &max_workers;
        let s = &s;
        async move {
            let r = s.query_one(sample, &[]).await.map_err(|e| e.to_string())?;
            let (waiting_not_init, backends): (i64, i64) = (r.get(2), r.get(5));
            let x =
                FewSample { workers: r.get(0), waiting: r.get(1), held: r.get(3), pending: r.get(4), status: r.get(6) };
            assert!(
                x.workers <= 1 && backends <= 1,
                "{} sync workers in the view, {backends} running: only 1 fits",
                x.workers
            );
            assert_eq!(waiting_not_init, 0, "a table waiting for a worker is past init");
            assert_ne!(x.status, "waiting_for_worker", "the apply worker had its slot");
            max_workers.set(max_workers.get().max(x.workers));
            Ok(until(&x).then_some(x))
        }
    };
    let x = wait_for("a table waiting for a background worker while the one sync worker is held", WAIT, || {
        check(|x| x.workers == 1 && x.held == 1 && x.waiting >= 1)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{x:?}");
    assert_eq!(x.pending, 3, "no table is synchronized while the only sync worker is held after its copy");
    // Said once per table and wait, not at every try (about 90 lines a second before): a
    // deliberate interval, as the absence of repeats only shows over time.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let warned =
        nodes.subscriber.log().matches("is waiting for a background worker for its initial synchronization").count();
    assert!((1..=2).contains(&warned), "{warned} WARNINGs for 2 waiting tables");
    // Released: the tables go through the one worker slot one after the other.
    set_sync_hold(&nodes.subscriber, &s, "").await;
    wait_for("every table of few synchronized, with one sync worker at a time", WAIT, || {
        check(|x| x.pending == 0 && x.status == "streaming")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for_subscription_sync(&s, "few", WAIT).await;
    assert_eq!(max_workers.get(), 1);
    p.batch_execute(
        "INSERT INTO w1 VALUES (-1, 'x', 0); INSERT INTO w2 VALUES (-1, 'x', 0); INSERT INTO w3 VALUES (-1, 'x', 0)",
    )
    .await
    .expect("writes after the sync");
    wait_value(
        &s,
        "SELECT string_agg(remote_name || ':' || sync_state || ':' || waiting_for_worker, ',' ORDER BY remote_name)
         FROM pgsub.subscription_table WHERE subname = 'few'",
        "w1:ready:false,w2:ready:false,w3:ready:false",
        WAIT,
    )
    .await;
    assert_equal(&p, &s).await;
    assert_no_sync_slot_left(&p).await;
}

// =============================================================================================
// 6. An idle publisher

/// After the copy, with no write on the publisher at all, every table reaches `ready` (not just
/// `synchronized`) within 30 s: three tables, each copied by a sync worker of its own (two may
/// run at once), which catches up and hands over to the apply worker on an idle stream.
#[tokio::test(flavor = "current_thread")]
async fn tables_become_ready_while_the_publisher_is_idle() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    for t in ["i1", "i2", "i3"] {
        p.batch_execute(&table_with_rows(t, 20_000)).await.unwrap_or_else(|e| panic!("publisher {t}: {e}"));
        s.batch_execute(&format!("CREATE TABLE {t} (id int PRIMARY KEY, v text, n int)"))
            .await
            .unwrap_or_else(|e| panic!("subscriber {t}: {e}"));
    }
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE i1, i2, i3").await.expect("publication");
    let t0 = Instant::now();
    s.execute("SELECT pgsub.create_subscription('idle', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create_subscription");
    // No write on the publisher from here on.
    wait_value(
        &s,
        "SELECT string_agg(remote_name || ':' || sync_state, ',' ORDER BY remote_name) FROM pgsub.subscription_table",
        "i1:ready,i2:ready,i3:ready",
        Duration::from_secs(30),
    )
    .await;
    eprintln!("every table ready after {:?}", t0.elapsed());
    // Each table was copied whole by its sync worker, and every sync worker is gone (it may exit
    // just after its table became ready).
    wait_value(
        &s,
        "SELECT string_agg(remote_name || ':' || rows_copied || ':' || (sync_worker_pid IS NULL), ',' \
         ORDER BY remote_name) FROM pgsub.subscription_table",
        "i1:20000:true,i2:20000:true,i3:20000:true",
        WAIT,
    )
    .await;
    wait_value(&s, "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'pgsub sync worker%'", "0", WAIT)
        .await;
    assert_equal(&p, &s).await;
    assert_no_sync_slot_left(&p).await;
}

/// A subscribed table dropped and created again on the subscriber is another table: as natively
/// (where DROP TABLE takes its pg_subscription_rel row), `refresh_subscription` copies it again
/// instead of keeping the old table's `ready`. One that took a row the publisher has meanwhile
/// takes the copy beside it and stops on its unique violation, as natively, until it is removed.
#[tokio::test(flavor = "current_thread")]
async fn a_table_created_again_is_copied_again_at_refresh() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.unwrap();
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text)";
    p.batch_execute(&format!("{ddl}; INSERT INTO t VALUES (1, 'a'), (2, 'b'); CREATE PUBLICATION pub FOR TABLE t"))
        .await
        .unwrap();
    s.batch_execute(ddl).await.unwrap();
    s.execute("SELECT pgsub.create_subscription('s', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "s", WAIT).await;
    assert_replicated_equal(&p, &s).await;

    s.batch_execute(&format!("DROP TABLE t; {ddl}")).await.unwrap();
    s.batch_execute("SELECT pgsub.refresh_subscription('s')").await.expect("refresh_subscription");
    wait_for_subscription_sync(&s, "s", WAIT).await;
    assert_replicated_equal(&p, &s).await;

    // Created again, and a row the publisher has put in before the refresh: as natively, the
    // copy goes in beside it (the table has a key) and stops on that row's unique violation,
    // shown on the table, until the row is removed.
    s.batch_execute(&format!("DROP TABLE t; {ddl}; INSERT INTO t VALUES (2, 'b')")).await.unwrap();
    s.batch_execute("SELECT pgsub.refresh_subscription('s')").await.expect("refresh_subscription");
    wait_value(
        &s,
        "SELECT coalesce(bool_or(last_error LIKE '%duplicate key value violates unique constraint%'), false)::text
           FROM pgsub.subscription_table WHERE subname = 's'",
        "true",
        WAIT,
    )
    .await;
    s.batch_execute("DELETE FROM t WHERE id = 2").await.unwrap();
    wait_for_subscription_sync(&s, "s", WAIT).await;
    p.batch_execute("INSERT INTO t VALUES (3, 'c')").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t", "3", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// `drop_subscription(drop_slot => false)` keeps the subscription's slot but, as native does,
/// not the table synchronization slots of tables still being copied: they are dropped too (they
/// were left on the publisher, holding WAL, with nothing in pgsub naming them any more).
#[tokio::test(flavor = "current_thread")]
async fn dropping_without_the_slot_drops_the_sync_slots() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.unwrap();
    p.batch_execute(
        "CREATE TABLE big (id int PRIMARY KEY, v text); INSERT INTO big SELECT g, 'x' FROM generate_series(1, 1000) g;
         CREATE PUBLICATION pub FOR TABLE big",
    )
    .await
    .unwrap();
    s.batch_execute("CREATE TABLE big (id int PRIMARY KEY, v text)").await.unwrap();
    set_sync_hold(&nodes.subscriber, &s, "copied").await;
    s.execute("SELECT pgsub.create_subscription('ds', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    let sync_slots = "SELECT count(*)::text FROM pg_replication_slots WHERE slot_name LIKE 'pgsub\\_%\\_sync\\_%'";
    wait_value(&p, sync_slots, "1", WAIT).await;
    wait_value(&s, "SELECT count(*)::text FROM big", "1000", WAIT).await;
    s.batch_execute("SELECT pgsub.drop_subscription('ds', drop_slot => false)").await.expect("drop");
    assert_eq!(one::<String>(&p, sync_slots).await, "0", "a sync slot was left on the publisher");
    assert_eq!(
        one::<i64>(&p, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ds'").await,
        1,
        "the subscription's own slot is kept"
    );
    p.batch_execute("SELECT pg_drop_replication_slot('ds')").await.unwrap();
    set_sync_hold(&nodes.subscriber, &s, "").await;
    // No subscription is left to compare through: the copied table against the publisher's.
    let rows = "SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM big";
    assert_eq!(one::<String>(&s, rows).await, one::<String>(&p, rows).await);
}

/// As natively, a table whose synchronization is in progress cannot be dropped on the subscriber
/// (`could not drop relation mapping …`, 55000): pgsub let it go, leaving its sync slot on the
/// publisher and the subscription in `initial_copy`, its changes skipped. Once the table is
/// ready, the drop is allowed.
#[tokio::test(flavor = "current_thread")]
async fn a_table_being_synchronized_cannot_be_dropped() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.unwrap();
    p.batch_execute(
        "CREATE TABLE big (id int PRIMARY KEY, v text); INSERT INTO big SELECT g, 'x' FROM generate_series(1, 1000) g;
         CREATE TABLE other (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE big, other",
    )
    .await
    .unwrap();
    s.batch_execute("CREATE TABLE big (id int PRIMARY KEY, v text); CREATE TABLE other (id int PRIMARY KEY)")
        .await
        .unwrap();
    set_sync_hold(&nodes.subscriber, &s, "copied").await;
    s.execute("SELECT pgsub.create_subscription('dt', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM big", "1000", WAIT).await;
    let e = s.batch_execute("DROP TABLE big").await.expect_err("a table being synchronized");
    let db = e.as_db_error().expect("db error");
    assert_eq!(db.code().code(), "55000", "{db:?}");
    assert!(db.message().contains("could not drop relation mapping for subscription \"dt\""), "{db:?}");
    assert!(db.detail().unwrap_or_default().contains("is in progress"), "{db:?}");
    set_sync_hold(&nodes.subscriber, &s, "").await;
    wait_for_subscription_sync(&s, "dt", WAIT).await;
    p.batch_execute("INSERT INTO big VALUES (1001, 'y'); INSERT INTO other VALUES (1)").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM big", "1001", WAIT).await;
    assert_replicated_equal(&p, &s).await;
    // Ready now: it may go.
    s.batch_execute("DROP TABLE other").await.expect("a ready table is dropped");
}

/// Two subscriber servers on one publisher, each with its first subscription (the same id, 1): the
/// second one's apply worker, starting while the first server's table is held between its copy
/// and its catch-up (its sync slot inactive), leaves that slot alone — sync slots carry the
/// server's system identifier, as native's do. (It used to drop it as a slot of its own left
/// behind: the first server's table then failed its catch-up for good, `slot does not exist`.)
#[tokio::test(flavor = "current_thread")]
async fn another_servers_subscription_of_the_same_id_leaves_our_sync_slot_alone() {
    let nodes = TwoNodes::start().expect("start");
    let (p, a) = nodes.clients().await.expect("clients");
    p.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u (id int PRIMARY KEY);
         INSERT INTO t SELECT g, 'copied' FROM generate_series(1, 1000) g; INSERT INTO u VALUES (1);
         CREATE PUBLICATION pt FOR TABLE t; CREATE PUBLICATION pu FOR TABLE u",
    )
    .await
    .unwrap();
    a.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").await.unwrap();
    set_sync_hold(&nodes.subscriber, &a, "copied").await;
    let ci = nodes.pub_conninfo();
    a.execute("SELECT pgsub.create_subscription('first', $1, ARRAY['pt'])", &[&ci]).await.unwrap();
    wait_value(&a, "SELECT sync_state FROM pgsub.subscription_table WHERE subname = 'first'", "copied", WAIT).await;
    assert_eq!(one::<i64>(&p, SYNC_SLOTS).await, 1, "the first server's table has its sync slot");

    let other = Cluster::subscriber().expect("second subscriber");
    let b = other.client("postgres").await.unwrap();
    b.batch_execute("CREATE TABLE u (id int PRIMARY KEY); CREATE EXTENSION pgsub").await.unwrap();
    b.execute("SELECT pgsub.create_subscription('second', $1, ARRAY['pu'])", &[&ci]).await.unwrap();
    wait_for_subscription_sync(&b, "second", WAIT).await;
    let ids: (i32, i32) = (
        one(&a, "SELECT subid FROM pgsub.sub WHERE subname = 'first'").await,
        one(&b, "SELECT subid FROM pgsub.sub WHERE subname = 'second'").await,
    );
    assert_eq!(ids.0, ids.1, "both servers' first subscriptions have the same id");
    // The second server's worker has started (and cleaned up its own leftovers) by now.
    p.batch_execute("INSERT INTO u VALUES (2)").await.unwrap();
    wait_value(&b, "SELECT count(*)::text FROM u", "2", WAIT).await;
    assert_eq!(one::<i64>(&p, SYNC_SLOTS).await, 1, "the first server's sync slot is still there");

    set_sync_hold(&nodes.subscriber, &a, "").await;
    wait_for_subscription_sync(&a, "first", WAIT).await;
    p.batch_execute("INSERT INTO t VALUES (1001, 'streamed')").await.unwrap();
    wait_value(&a, "SELECT v FROM t WHERE id = 1001", "streamed", WAIT).await;
    let errors: i64 = one(&a, "SELECT error_count FROM pgsub.stat_subscription WHERE subname = 'first'").await;
    assert_eq!(errors, 0, "the first server's table caught up without an error");
    assert_no_sync_slot_left(&p).await;
    assert_replicated_equal(&p, &a).await;
    assert_replicated_equal(&p, &b).await;
}
