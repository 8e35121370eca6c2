//! End-to-end: large transactions streamed before they commit (protocol v2 streaming) are applied
//! with bounded worker memory (as are runs of wide updates), interleaved and aborted
//! (sub)transactions are handled, damaged
//! spill files are detected, and two-phase transactions are followed.
use pgsub_tests::{
    assert_replicated_equal, one, server_major, wait_for_subscription_error, wait_for_subscription_sync, wait_value,
    ClusterOpts, TwoNodes,
};
use std::time::Duration;
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(300);

fn nodes() -> TwoNodes {
    TwoNodes::start_with(
        ClusterOpts::publisher()
            .with_conf("logical_decoding_work_mem = '64kB'")
            .with_conf("max_prepared_transactions = 10"),
        ClusterOpts::subscriber().with_conf("max_prepared_transactions = 10"),
    )
    .expect("start")
}

/// Clients of both nodes; table `big` on each, published as `pub` and followed by the streaming
/// subscription `st` (`extra`: more create_subscription arguments), which has finished its copy.
async fn setup(nodes: &TwoNodes, extra: &str) -> (Client, Client) {
    let (p, s) = nodes.clients().await.expect("clients");
    let ddl = "CREATE TABLE big (id int PRIMARY KEY, v text)";
    p.batch_execute(ddl).await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE big").await.unwrap();
    s.execute(
        &format!("SELECT pgsub.create_subscription('st', $1, ARRAY['pub'], streaming => true{extra})"),
        &[&nodes.pub_conninfo()],
    )
    .await
    .expect("create");
    wait_for_subscription_sync(&s, "st", WAIT).await;
    (p, s)
}

fn rss_anon_kb(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("RssAnon:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The peak `RssAnon` of a process, sampled every 10 ms on a thread until `stop`.
struct PeakRss {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl PeakRss {
    fn start(pid: i32) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(kb) = rss_anon_kb(pid) {
                    peak = peak.max(kb);
                }
                // The sampling interval, not a wait for a condition.
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        PeakRss { stop, thread }
    }

    /// Peak in kB.
    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("sampler thread")
    }
}

#[tokio::test(flavor = "current_thread")]
async fn two_million_row_transaction_with_bounded_memory() {
    let nodes = nodes();
    let (p, s) = setup(&nodes, "").await;
    let pid: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'st'").await;
    let baseline = rss_anon_kb(pid).expect("worker RssAnon");
    // Sample the worker's private memory while the transaction is streamed and applied.
    let sampler = PeakRss::start(pid);
    p.batch_execute("INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 2000000) g").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM big", "2000000", WAIT).await;
    let peak = sampler.stop();
    eprintln!(
        "pgsub apply worker RssAnon: baseline {baseline} kB, peak {peak} kB during a 2M-row streamed transaction"
    );
    assert!(peak < 64 * 1024, "worker private memory peaked at {peak} kB");
    let same: bool = one(&s, "SELECT sum(id)::bigint = 2000001000000 AND bool_and(v = md5(id::text)) FROM big").await;
    assert!(same);
    assert_eq!(one::<i32>(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'st'").await, pid, "no restart");
    // Spill files are gone once the transaction is applied.
    let tmp = nodes.subscriber.data_dir().join("base/pgsql_tmp");
    let left: Vec<_> =
        std::fs::read_dir(&tmp).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "spill files left: {left:?}");
    assert_replicated_equal(&p, &s).await;
}

/// A run of updates with wide rows (300 rows of 150 kB in one transaction, not streamed) is
/// applied in batches small enough that the worker's private memory stays bounded: the batched
/// UPDATE holds each value several times, so a run is cut by bytes as well as by rows.
#[tokio::test(flavor = "current_thread")]
async fn wide_updates_are_applied_with_bounded_memory() {
    let nodes = nodes();
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    let ddl = "CREATE TABLE wide (id int PRIMARY KEY, v text)";
    p.batch_execute(ddl).await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    p.batch_execute(
        "CREATE PUBLICATION wp FOR TABLE wide; INSERT INTO wide SELECT g, 'small' FROM generate_series(1, 300) g",
    )
    .await
    .unwrap();
    s.execute("SELECT pgsub.create_subscription('wd', $1, ARRAY['wp'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    wait_value(&s, "SELECT count(*)::text FROM wide", "300", WAIT).await;
    let pid: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'wd'").await;
    let sampler = PeakRss::start(pid);
    p.batch_execute(
        "UPDATE wide SET v = (SELECT string_agg(md5(id::text || '.' || g), '') FROM generate_series(1, 4700) g)",
    )
    .await
    .unwrap();
    let want: String = one(&p, "SELECT md5(string_agg(v, ',' ORDER BY id)) FROM wide").await;
    wait_value(&s, "SELECT md5(string_agg(v, ',' ORDER BY id)) FROM wide", &want, WAIT).await;
    let peak = sampler.stop();
    eprintln!("pgsub apply worker RssAnon peak {peak} kB while applying 300 updates of 150 kB");
    assert!(peak < 64 * 1024, "worker private memory peaked at {peak} kB");
    assert_eq!(one::<i64>(&s, "SELECT updates FROM pgsub.stat_subscription WHERE subname = 'wd'").await, 300);
    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn interleaved_and_aborted_streamed_transactions() {
    let nodes = nodes();
    let (p, s) = setup(&nodes, "").await;
    let p2 = nodes.publisher.client("postgres").await.unwrap();
    let p3 = nodes.publisher.client("postgres").await.unwrap();
    // A (commits) and B (rolls back) interleave, each far above logical_decoding_work_mem.
    p.batch_execute("BEGIN").await.unwrap();
    p2.batch_execute("BEGIN").await.unwrap();
    for round in 0..4 {
        let a = round * 10000;
        p.batch_execute(&format!("INSERT INTO big SELECT g, 'A' FROM generate_series({}, {}) g", a + 1, a + 10000))
            .await
            .unwrap();
        p2.batch_execute(&format!(
            "INSERT INTO big SELECT g, 'B' FROM generate_series({}, {}) g",
            1_000_000 + a + 1,
            1_000_000 + a + 10000
        ))
        .await
        .unwrap();
    }
    // C: a streamed transaction whose middle subtransaction aborts.
    p3.batch_execute(
        "BEGIN;
         INSERT INTO big SELECT g, 'C1' FROM generate_series(2000001, 2010000) g;
         SAVEPOINT s1;
         INSERT INTO big SELECT g, 'C-aborted' FROM generate_series(2010001, 2020000) g;
         SAVEPOINT s2;
         INSERT INTO big SELECT g, 'C-aborted-nested' FROM generate_series(2020001, 2030000) g;
         ROLLBACK TO SAVEPOINT s1;
         INSERT INTO big SELECT g, 'C2' FROM generate_series(2030001, 2040000) g;
         SAVEPOINT s3;
         INSERT INTO big SELECT g, 'C3' FROM generate_series(2040001, 2045000) g;
         RELEASE SAVEPOINT s3;
         COMMIT;",
    )
    .await
    .unwrap();
    p.batch_execute("COMMIT").await.unwrap();
    p2.batch_execute("ROLLBACK").await.unwrap();
    p.batch_execute("INSERT INTO big VALUES (0, 'marker')").await.unwrap();
    wait_value(&s, "SELECT v FROM big WHERE id = 0", "marker", WAIT).await;
    let counts: String =
        one(&s, "SELECT string_agg(v || '=' || n, ',' ORDER BY v) FROM (SELECT v, count(*) n FROM big GROUP BY v) x")
            .await;
    assert_eq!(counts, "A=40000,C1=10000,C2=10000,C3=5000,marker=1");
    let pub_counts: String =
        one(&p, "SELECT string_agg(v || '=' || n, ',' ORDER BY v) FROM (SELECT v, count(*) n FROM big GROUP BY v) x")
            .await;
    assert_eq!(counts, pub_counts);
    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn corrupted_spill_file_is_an_error_and_applies_nothing() {
    let nodes = nodes();
    let (p, s) = setup(&nodes, "").await;
    for sql in [
        "ALTER SYSTEM SET pgsub.work_mem = '64kB'",
        "ALTER SYSTEM SET pgsub.test_corrupt_spill = on",
        "SELECT pg_reload_conf()",
    ] {
        s.batch_execute(sql).await.unwrap();
    }
    // The running worker would take the settings at its next look at SIGHUP, which nothing
    // reports: a worker started now reads them at its start. Restart it and wait for the new one.
    let old_pid: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'st'").await;
    s.batch_execute("SELECT pgsub.disable_subscription('st')").await.unwrap();
    wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'st'", "disabled", WAIT).await;
    s.batch_execute("SELECT pgsub.enable_subscription('st')").await.unwrap();
    wait_for_subscription_sync(&s, "st", WAIT).await;
    let new_pid: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'st'").await;
    assert_ne!(new_pid, old_pid, "the worker restarted");
    p.batch_execute("INSERT INTO big SELECT g, 'x' FROM generate_series(1, 50000) g").await.unwrap();
    wait_for_subscription_error(&s, "st", &["corrupted", "checksum mismatch"], WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM big").await, 0, "no row of the damaged transaction");
    // Without the hook the worker retries and the transaction arrives whole.
    for sql in ["ALTER SYSTEM RESET pgsub.test_corrupt_spill", "SELECT pg_reload_conf()"] {
        s.batch_execute(sql).await.unwrap();
    }
    wait_value(&s, "SELECT count(*)::text FROM big", "50000", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn two_phase_prepare_commit_and_rollback_are_followed() {
    let nodes = nodes();
    let (p, s) = setup(&nodes, ", two_phase => true").await;
    p.batch_execute("BEGIN; INSERT INTO big VALUES (1, 'prepared'); PREPARE TRANSACTION 'tx1';").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM pg_prepared_xacts WHERE gid LIKE 'pgsub_%'", "1", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM big").await, 0, "not visible before COMMIT PREPARED");
    p.batch_execute("COMMIT PREPARED 'tx1'").await.unwrap();
    wait_value(&s, "SELECT v FROM big WHERE id = 1", "prepared", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pg_prepared_xacts").await, 0);

    p.batch_execute("BEGIN; INSERT INTO big VALUES (2, 'rolled back'); PREPARE TRANSACTION 'tx2';").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM pg_prepared_xacts WHERE gid LIKE 'pgsub_%'", "1", WAIT).await;
    p.batch_execute("ROLLBACK PREPARED 'tx2'").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM pg_prepared_xacts", "0", WAIT).await;
    p.batch_execute("INSERT INTO big VALUES (3, 'after')").await.unwrap();
    wait_value(&s, "SELECT v FROM big WHERE id = 3", "after", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM big WHERE id = 2").await, 0);

    // A large prepared transaction arrives streamed (Stream Prepare).
    p.batch_execute("BEGIN; INSERT INTO big SELECT g, 'streamed prepare' FROM generate_series(100, 30099) g; PREPARE TRANSACTION 'tx3';")
        .await
        .unwrap();
    wait_value(&s, "SELECT count(*)::text FROM pg_prepared_xacts WHERE gid LIKE 'pgsub_%'", "1", WAIT).await;
    p.batch_execute("COMMIT PREPARED 'tx3'").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM big WHERE v = 'streamed prepare'", "30000", WAIT).await;

    // A prepared transaction rolled back by hand here: its COMMIT PREPARED stops apply, naming
    // the transaction and where it finishes (native's context), and skip_transaction with that
    // LSN goes past it.
    p.batch_execute("BEGIN; INSERT INTO big VALUES (4, 'lost here'); PREPARE TRANSACTION 'tx4';").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM pg_prepared_xacts WHERE gid LIKE 'pgsub_%'", "1", WAIT).await;
    let gid: String = one(&s, "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'pgsub_%'").await;
    s.batch_execute(&format!("ROLLBACK PREPARED '{gid}'")).await.unwrap();
    p.batch_execute("COMMIT PREPARED 'tx4'").await.unwrap();
    let err = wait_for_subscription_error(&s, "st", &["does not exist", "COMMIT PREPARED", "finished at"], WAIT).await;
    let lsn = err.split("finished at ").nth(1).and_then(|t| t.split_whitespace().next()).expect("the finish LSN");
    s.execute("SELECT pgsub.skip_transaction('st', $1::text::pg_lsn)", &[&lsn]).await.unwrap();
    p.batch_execute("INSERT INTO big VALUES (5, 'after the skip')").await.unwrap();
    wait_value(&s, "SELECT v FROM big WHERE id = 5", "after the skip", WAIT).await;
    assert!(nodes.subscriber.log_contains("pgsub: skipping COMMIT PREPARED of remote transaction"));
    // Put back by hand, as the skip leaves it.
    s.batch_execute("INSERT INTO big VALUES (4, 'lost here')").await.unwrap();
    assert_replicated_equal(&p, &s).await;
}

/// The origin position of a COMMIT PREPARED goes into its own WAL record, which
/// FinishPreparedTransaction writes and flushes, as native's does. A crash right after it, before
/// anything else reached the disk (the WAL writer stopped, `pgsub.flush_when_idle` off), used to
/// leave the origin one transaction behind: the worker met that COMMIT PREPARED again after the
/// restart and stopped for good on "prepared transaction … does not exist".
#[tokio::test(flavor = "current_thread")]
async fn a_crash_right_after_commit_prepared_does_not_replay_it() {
    let nodes = TwoNodes::start_with(
        ClusterOpts::publisher().with_conf("max_prepared_transactions = 10"),
        ClusterOpts::subscriber().with_conf("max_prepared_transactions = 10").with_conf("pgsub.flush_when_idle = off"),
    )
    .expect("start");
    let (p, _) = setup(&nodes, ", two_phase => true").await;
    for i in 1..=3 {
        let s = nodes.subscriber.client("postgres").await.expect("subscriber");
        wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'st'", "streaming", WAIT).await;
        let walwriter: i32 = one(&s, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'").await;
        // SAFETY: signals to a process of the subscriber this test started.
        unsafe { libc::kill(walwriter, libc::SIGSTOP) };
        p.batch_execute(&format!(
            "BEGIN; INSERT INTO big VALUES ({id}, 'two-phase'); PREPARE TRANSACTION 'c{i}'",
            id = 100_000 + i
        ))
        .await
        .unwrap();
        p.batch_execute(&format!("COMMIT PREPARED 'c{i}'")).await.unwrap();
        wait_value(&s, &format!("SELECT count(*)::text FROM big WHERE id = {}", 100_000 + i), "1", WAIT).await;
        wait_value(&s, "SELECT count(*)::text FROM pg_prepared_xacts", "0", WAIT).await;
        drop(s);
        // The crash: the postmaster takes every process down and recovers from the WAL on disk.
        // SAFETY: as above.
        unsafe { libc::kill(walwriter, libc::SIGKILL) };
        nodes
            .subscriber
            .poll_query_until(
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walwriter' AND pid <> {walwriter}"
                ),
                "1",
                WAIT,
            )
            .await
            .expect("the subscriber restarted after the crash");
        // A plain transaction after it: applied only once the worker is past the COMMIT PREPARED.
        p.batch_execute(&format!("INSERT INTO big VALUES ({}, 'after the crash')", 200_000 + i)).await.unwrap();
        nodes
            .subscriber
            .poll_query_until(
                "postgres",
                &format!("SELECT count(*) FROM big WHERE id = {}", 200_000 + i),
                "1",
                Duration::from_secs(60),
            )
            .await
            .unwrap_or_else(|e| panic!("round {i}: not applied after the crash ({e}): {}", nodes.subscriber.log()));
    }
    let s = nodes.subscriber.client("postgres").await.expect("subscriber");
    let errors: String =
        one(&s, "SELECT coalesce(last_error, '') FROM pgsub.stat_subscription WHERE subname = 'st'").await;
    assert!(!errors.contains("does not exist"), "a COMMIT PREPARED met again: {errors}");
    assert!(nodes.subscriber.log_contains("terminated by signal 9"), "the subscriber crashed");
    assert_replicated_equal(&p, &s).await;
}

/// As native's: a two_phase subscription whose tables are copied first starts with two_phase
/// pending (its slot created without it), and the apply worker enables it once every table is
/// ready, restarting to ask the walsender for prepared transactions. Then a refresh that would
/// copy is refused. PostgreSQL 18's ALTER SUBSCRIPTION … SET (two_phase): only while disabled,
/// off refused while a transaction it prepared is still prepared here, and off altering the slot
/// on the publisher (18), which a publisher before 18 cannot; on again is pending again.
#[tokio::test(flavor = "current_thread")]
async fn two_phase_waits_for_every_table_to_be_ready_and_can_be_altered() {
    let nodes = nodes();
    let (p, s) = nodes.clients().await.expect("clients");
    let ddl = "CREATE TABLE big (id int PRIMARY KEY, v text)";
    p.batch_execute(ddl).await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    p.batch_execute(
        "CREATE PUBLICATION pub FOR TABLE big; INSERT INTO big SELECT g, 'copied' FROM generate_series(1, 1000) g",
    )
    .await
    .unwrap();
    s.execute(
        "SELECT pgsub.create_subscription('st', $1, ARRAY['pub'], two_phase => true, enabled => false)",
        &[&nodes.pub_conninfo()],
    )
    .await
    .expect("create");
    let state = "SELECT two_phase_state FROM pgsub.subscription WHERE subname = 'st'";
    let slot_two_phase = "SELECT two_phase::text FROM pg_replication_slots WHERE slot_name = 'st'";
    assert_eq!(one::<String>(&s, state).await, "pending", "tables to copy first");
    assert_eq!(one::<String>(&p, slot_two_phase).await, "false", "the slot is created without two_phase");
    s.batch_execute("SELECT pgsub.enable_subscription('st')").await.unwrap();
    wait_for_subscription_sync(&s, "st", WAIT).await;
    wait_value(&s, state, "enabled", WAIT).await;
    nodes
        .subscriber
        .wait_for_log("will restart so that two_phase can be enabled", WAIT)
        .await
        .expect("the restart is logged");
    wait_value(&p, slot_two_phase, "true", WAIT).await;
    p.batch_execute("BEGIN; INSERT INTO big VALUES (1001, 'prepared'); PREPARE TRANSACTION 'tx1';").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM pg_prepared_xacts WHERE gid LIKE 'pgsub_%'", "1", WAIT).await;
    let restarts = nodes.subscriber.log().matches("will restart so that two_phase can be enabled").count();
    assert_eq!(restarts, 1, "one restart enables it; the restarted worker knows it is enabled");

    let refused = s.batch_execute("SELECT pgsub.refresh_subscription('st')").await.expect_err("copy under two_phase");
    assert!(refused.as_db_error().unwrap().message().contains("not allowed when two_phase is enabled"), "{refused:?}");
    s.batch_execute("SELECT pgsub.refresh_subscription('st', copy_data => false)").await.expect("refresh without copy");
    let enabled_alter = s
        .batch_execute("SELECT pgsub.alter_subscription_options('st', two_phase => false)")
        .await
        .expect_err("enabled");
    assert!(enabled_alter.as_db_error().unwrap().message().contains("for enabled subscription"), "{enabled_alter:?}");

    s.batch_execute("SELECT pgsub.disable_subscription('st')").await.unwrap();
    wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'st'", "disabled", WAIT).await;
    let prepared = s
        .batch_execute("SELECT pgsub.alter_subscription_options('st', two_phase => false)")
        .await
        .expect_err("prepared");
    assert!(prepared.as_db_error().unwrap().message().contains("prepared transactions are present"), "{prepared:?}");
    s.batch_execute("SELECT pgsub.enable_subscription('st')").await.unwrap();
    p.batch_execute("COMMIT PREPARED 'tx1'").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM pg_prepared_xacts", "0", WAIT).await;
    s.batch_execute("SELECT pgsub.disable_subscription('st')").await.unwrap();
    wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'st'", "disabled", WAIT).await;
    let off = s.batch_execute("SELECT pgsub.alter_subscription_options('st', two_phase => false)").await;
    if server_major() < 18 {
        let e = off.expect_err("a publisher before 18 cannot alter the slot");
        assert!(e.as_db_error().unwrap().message().contains("before PostgreSQL 18"), "{e:?}");
        assert_eq!(one::<String>(&s, state).await, "enabled");
        s.batch_execute("SELECT pgsub.enable_subscription('st')").await.unwrap();
    } else {
        off.expect("off on an 18 publisher");
        assert_eq!(one::<String>(&s, state).await, "disabled");
        assert_eq!(one::<String>(&p, slot_two_phase).await, "false", "the slot was altered");
        // Without two_phase a prepared transaction arrives whole at COMMIT PREPARED.
        s.batch_execute("SELECT pgsub.enable_subscription('st')").await.unwrap();
        p.batch_execute("BEGIN; INSERT INTO big VALUES (1002, 'whole'); PREPARE TRANSACTION 'tx2';").await.unwrap();
        p.batch_execute("INSERT INTO big VALUES (1003, 'after')").await.unwrap();
        wait_value(&s, "SELECT v FROM big WHERE id = 1003", "after", WAIT).await;
        assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pg_prepared_xacts").await, 0, "not prepared here");
        p.batch_execute("COMMIT PREPARED 'tx2'").await.unwrap();
        wait_value(&s, "SELECT v FROM big WHERE id = 1002", "whole", WAIT).await;
        // On again: pending, enabled by the worker (every table is ready).
        s.batch_execute("SELECT pgsub.disable_subscription('st')").await.unwrap();
        wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'st'", "disabled", WAIT).await;
        s.batch_execute("SELECT pgsub.alter_subscription_options('st', two_phase => true)").await.unwrap();
        assert_eq!(one::<String>(&s, state).await, "pending");
        s.batch_execute("SELECT pgsub.enable_subscription('st')").await.unwrap();
        wait_value(&s, state, "enabled", WAIT).await;
        p.batch_execute("BEGIN; INSERT INTO big VALUES (1004, 'prepared again'); PREPARE TRANSACTION 'tx3';")
            .await
            .unwrap();
        wait_value(&s, "SELECT count(*)::text FROM pg_prepared_xacts WHERE gid LIKE 'pgsub_%'", "1", WAIT).await;
        p.batch_execute("COMMIT PREPARED 'tx3'").await.unwrap();
    }
    p.batch_execute("INSERT INTO big VALUES (2000, 'last')").await.unwrap();
    wait_value(&s, "SELECT v FROM big WHERE id = 2000", "last", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn two_phase_needs_prepared_transactions() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    p.batch_execute("CREATE TABLE t (id int primary key); CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    s.batch_execute("CREATE TABLE t (id int primary key)").await.unwrap();
    let err = s
        .execute(
            "SELECT pgsub.create_subscription('tp', $1, ARRAY['pub'], two_phase => true)",
            &[&nodes.pub_conninfo()],
        )
        .await
        .expect_err("max_prepared_transactions = 0");
    let db = err.as_db_error().unwrap();
    assert!(db.message().contains("prepared transactions"), "{}", db.message());
    assert!(db.hint().unwrap_or_default().contains("max_prepared_transactions"));
    // No full comparison: the subscription was refused, nothing replicates.
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pgsub.subscription").await, 0);
}

/// DDL inside a streamed transaction (TAP 017_stream_ddl, 019_stream_subxact_ddl_abort): the
/// RELATION messages it sends describe the table as that transaction sees it, so they take
/// effect where they came between its changes when it is applied — the rows before an `ALTER
/// TABLE` are read with the old layout, those after with the new one — and hold for the
/// transactions after it, which the publisher does not describe them to again. A description sent inside
/// a subtransaction that is rolled back stays for the rest of the transaction. Before the fix:
/// `new tuple has 2 columns but relation … has 3`, or values written into the wrong columns.
#[tokio::test(flavor = "current_thread")]
async fn ddl_inside_a_streamed_transaction_takes_effect_where_it_happened() {
    let nodes = nodes();
    let (p, s) = nodes.clients().await.expect("clients");
    p.batch_execute(
        "CREATE TABLE t (a int PRIMARY KEY, b int, c int); CREATE TABLE t2 (a int PRIMARY KEY, b text);
         CREATE PUBLICATION pub FOR TABLE t, t2",
    )
    .await
    .unwrap();
    s.batch_execute(
        "CREATE TABLE t (a int PRIMARY KEY, b int, c int); CREATE TABLE t2 (a int PRIMARY KEY, b text, c int)",
    )
    .await
    .unwrap();
    s.execute("SELECT pgsub.create_subscription('st', $1, ARRAY['pub'], streaming => true)", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    wait_for_subscription_sync(&s, "st", WAIT).await;
    // The publisher has sent both tables' layouts once, outside any stream.
    p.batch_execute("INSERT INTO t VALUES (-10, 1, 2); INSERT INTO t2 VALUES (-10, 'before')").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t2", "1", WAIT).await;

    let p1 = nodes.publisher.client("postgres").await.unwrap();
    let p2 = nodes.publisher.client("postgres").await.unwrap();
    // Column order changes (b dropped and added again) and a column is added, each in a
    // streamed transaction, the two interleaved.
    p1.batch_execute(
        "BEGIN;
         INSERT INTO t SELECT i, 1, 2 FROM generate_series(1, 3000) i;
         ALTER TABLE t DROP COLUMN b;
         ALTER TABLE t ADD COLUMN b int;
         INSERT INTO t (a, c, b) VALUES (0, 20, 10);",
    )
    .await
    .unwrap();
    p2.batch_execute(
        "BEGIN;
         INSERT INTO t2 SELECT i, md5(i::text) FROM generate_series(1, 3000) i;
         ALTER TABLE t2 ADD COLUMN c int;
         INSERT INTO t2 VALUES (0, 'x', 1);",
    )
    .await
    .unwrap();
    p1.batch_execute("COMMIT").await.unwrap();
    p2.batch_execute("COMMIT").await.unwrap();
    // After both, the publisher does not describe the tables again.
    p.batch_execute("INSERT INTO t (a, b, c) VALUES (-2, 7, 8); INSERT INTO t2 VALUES (-2, 'after', 9)").await.unwrap();
    wait_value(&s, "SELECT b || '/' || c FROM t2 WHERE a = -2", "after/9", WAIT).await;
    assert_eq!(
        one::<String>(
            &s,
            "SELECT count(*) FILTER (WHERE b = 1 AND c = 2) || ',' || (SELECT b || '/' || c FROM t WHERE a = 0) FROM t"
        )
        .await,
        "3001,10/20",
        "the rows before the ALTER keep b = 1, c = 2"
    );

    // A column added in a subtransaction that is rolled back, its description sent meanwhile.
    p.batch_execute(
        "BEGIN;
         INSERT INTO t (a, b, c) SELECT i, 3, 4 FROM generate_series(3001, 6000) i;
         SAVEPOINT s1;
         ALTER TABLE t ADD COLUMN d int;
         INSERT INTO t (a, b, c, d) SELECT i, 5, 6, 7 FROM generate_series(6001, 9000) i;
         ROLLBACK TO SAVEPOINT s1;
         INSERT INTO t (a, b, c) VALUES (-3, 11, 12);
         COMMIT;",
    )
    .await
    .unwrap();
    wait_value(&s, "SELECT b || '/' || c FROM t WHERE a = -3", "11/12", WAIT).await;
    assert_eq!(
        one::<String>(&s, "SELECT count(*) FILTER (WHERE b = 3 AND c = 4) || ' of ' || count(*) FILTER (WHERE a BETWEEN 3001 AND 9000) || ' ' || coalesce(string_agg(DISTINCT b || '/' || c, ',') FILTER (WHERE a BETWEEN 3001 AND 9000), '') FROM t").await,
        "3000 of 3000 3/4"
    );
    let streamed: i64 =
        one(&p, "SELECT coalesce(sum(stream_txns), 0)::int8 FROM pg_stat_replication_slots WHERE slot_name = 'st'")
            .await;
    assert!(streamed >= 3, "the three large transactions were streamed: {streamed}");
    assert_eq!(one::<i64>(&s, "SELECT error_count FROM pgsub.stat_subscription WHERE subname = 'st'").await, 0);
    // DROP COLUMN b emptied b of the publisher's older rows; DDL is not replicated, so the
    // subscriber keeps their b = 1, as natively. Cleared here to compare the rest.
    assert_eq!(one::<i64>(&p, "SELECT count(*) FROM t WHERE b IS NULL AND c = 2").await, 3001);
    s.batch_execute("UPDATE t SET b = NULL WHERE b = 1 AND c = 2").await.unwrap();
    assert_replicated_equal(&p, &s).await;
}
