//! End-to-end: when applied commits are confirmed to the publisher (issue 22). With the
//! subscription's default `synchronous_commit = off` an applied commit may be confirmed as
//! flushed only once it is durable on the subscriber. `pgsub.flush_when_idle` (on by default)
//! makes the apply worker flush them itself as soon as its socket is empty instead of waiting for
//! the WAL writer; the publisher then learns at once that it may let the WAL go — and a
//! publisher that names the subscription in `synchronous_standby_names` does not wait for the
//! subscriber's WAL writer at every commit.
use pgsub_tests::{
    assert_replicated_equal, one, server_major, wait_for, wait_for_subscription_sync, ClusterOpts, TwoNodes,
};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(300);

/// A publisher and a subscriber (`sub_opts`, with the WAL writer's longest delay and no
/// autovacuum: nothing else there flushes the WAL) with table t, and subscription `g` streaming.
async fn streaming(sub_opts: ClusterOpts) -> (TwoNodes, Client, Client) {
    let nodes = TwoNodes::start_with(
        ClusterOpts::publisher(),
        sub_opts.with_conf("wal_writer_delay = 10s").with_conf("autovacuum = off"),
    )
    .expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text)";
    p.batch_execute(ddl).await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('g', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    wait_for_subscription_sync(&s, "g", WAIT).await;
    (nodes, p, s)
}

/// The subscriber's WAL writer flushes every 10 s (its longest delay) and nothing else there
/// commits synchronously: a commit confirmed within 5 s was flushed by the apply worker.
#[tokio::test(flavor = "current_thread")]
async fn a_synchronous_publisher_does_not_wait_for_the_subscribers_wal_writer() {
    let (_nodes, p, s) = streaming(ClusterOpts::subscriber()).await;

    // The subscription becomes the publisher's synchronous standby: each commit there returns
    // only once the subscriber has confirmed it as flushed.
    p.batch_execute("ALTER SYSTEM SET synchronous_standby_names = 'g'").await.unwrap();
    p.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    wait_for("the subscription as the publisher's synchronous standby", WAIT, || async {
        let n: i64 =
            one(&p, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'g' AND sync_state = 'sync'")
                .await;
        Ok((n == 1).then_some(()))
    })
    .await
    .unwrap();

    for i in 1..=5i32 {
        let key = i;
        let t0 = Instant::now();
        match tokio::time::timeout(Duration::from_secs(5), p.execute("INSERT INTO t VALUES ($1, 'x')", &[&key])).await {
            Ok(r) => {
                r.expect("insert");
            }
            Err(_) => panic!(
                "commit {i} on the synchronous publisher still waited for the subscriber after {:?}: \
                 the apply worker did not flush its commit when idle",
                t0.elapsed()
            ),
        }
    }
    p.batch_execute("ALTER SYSTEM RESET synchronous_standby_names").await.unwrap();
    p.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    assert_replicated_equal(&p, &s).await;
}

/// `pgsub.flush_when_idle` under a steady stream of small transactions: the socket empties after
/// nearly every one, and a WAL flush at each of those moments would fsync hundreds of times a
/// second; the worker flushes at most every 10 ms (and still confirms every commit). Counted in
/// the subscriber's `pg_stat_wal.wal_sync` (fsync on; the WAL writer's delay is 10 s).
#[tokio::test(flavor = "current_thread")]
async fn a_steady_stream_of_small_transactions_is_flushed_at_most_every_10_ms() {
    let (_nodes, p, s) = streaming(ClusterOpts::subscriber().with_conf("fsync = on")).await;
    // The worker's WAL counters reach pg_stat_wal (PostgreSQL 18: pg_stat_io's WAL rows) with its
    // table statistics: once it is idle they are all there, and the count stands still.
    let wal_syncs = if server_major() >= 18 {
        "SELECT coalesce(sum(fsyncs), 0)::int8 FROM pg_stat_io WHERE object = 'wal'"
    } else {
        "SELECT wal_sync FROM pg_stat_wal"
    };
    let settled = || async {
        let mut last: i64 = -1;
        let mut same = 0;
        loop {
            let n: i64 = one(&s, wal_syncs).await;
            same = if n == last { same + 1 } else { 0 };
            if same >= 3 {
                return n;
            }
            last = n;
            // Polling for the count to stand still, not a wait for a condition of its own.
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    };
    let before = settled().await;
    let n = 400i32;
    let t0 = Instant::now();
    for i in 1..=n {
        p.execute("INSERT INTO t VALUES ($1, 'x')", &[&i]).await.unwrap();
    }
    let elapsed = t0.elapsed();
    wait_for("every row", WAIT, || async {
        let c: i64 = one(&s, "SELECT count(*) FROM t").await;
        Ok((c == i64::from(n)).then_some(()))
    })
    .await
    .unwrap();
    // Every commit is confirmed as flushed all the same.
    wait_for("the publisher's slot confirmed to its WAL end", WAIT, || async {
        let done: bool = one(
            &p,
            "SELECT confirmed_flush_lsn >= pg_current_wal_lsn() FROM pg_replication_slots WHERE slot_name = 'g'",
        )
        .await;
        Ok(done.then_some(()))
    })
    .await
    .unwrap();
    let syncs = settled().await - before;
    let bound = elapsed.as_millis() as i64 / 10 + 20;
    eprintln!("{n} transactions in {elapsed:?}: {syncs} WAL syncs on the subscriber (bound {bound})");
    assert!(syncs <= bound, "{syncs} WAL syncs for {n} transactions in {elapsed:?}: more than one per 10 ms");
    assert_replicated_equal(&p, &s).await;
}
