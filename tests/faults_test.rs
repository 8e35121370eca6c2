//! End-to-end fault injection (issue 9, "Faults"): kill -9 of the apply worker, the launcher and
//! the subscriber postmaster at seeded random moments of a mixed workload (also with streamed,
//! spilled transactions); publisher fast and immediate shutdowns and a network path that goes
//! silent for longer than pgsub.receiver_timeout; a publisher that accepts TCP and never answers,
//! one that never answers START_REPLICATION and one whose stream stays silent (timeouts, retries,
//! prompt SIGTERM); a replayed real pgoutput stream with flipped bytes (errors, never a crash).
//! Every scenario ends with the publisher's and the subscriber's tables compared row by row:
//! nothing lost, nothing applied twice.
//!
//! The seed is printed by every test; `PGSUB_TEST_SEED=<n>` replays it.
#[path = "fake_publisher.rs"]
mod fake_publisher;

use fake_publisher::{capture, xlog_data, FakePublisher, Proxy, Rng, Script, SilentServer, Step};
use pgsub_proto::client::PgOutputOptions;
use pgsub_proto::Lsn;
use pgsub_tests::{
    assert_replicated_equal_for, connect, pid_alive, wait_for, wait_replicated_equal, Cluster, ClusterOpts, TwoNodes,
};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

/// Generous bound for anything that waits on replication (other tests share the two cores).
const WAIT: Duration = Duration::from_secs(120);

const DDL: &str = "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL, v text);
                   CREATE TABLE hist (seq bigint NOT NULL, tid bigint, note text);
                   ALTER TABLE hist REPLICA IDENTITY FULL;";

fn test_seed(name: &str) -> u64 {
    let seed = fake_publisher::seed();
    eprintln!("{name}: seed {seed} (PGSUB_TEST_SEED={seed} replays it)");
    seed
}

// =============================================================================================
// Connections that survive restarts of the node they talk to

/// A client that reconnects on the next use after its server went away (crash restart, kill -9).
/// The client is shared (`Rc`), so that no borrow is held while a query runs and the waits of
/// the kit can poll through `&Conn`.
struct Conn {
    connstr: String,
    client: RefCell<Option<Rc<Client>>>,
}

impl Conn {
    fn new(c: &Cluster) -> Conn {
        Conn { connstr: c.connstr("postgres", "postgres"), client: RefCell::new(None) }
    }

    async fn get(&self) -> Result<Rc<Client>, String> {
        let current = self.client.borrow().clone();
        if let Some(c) = current.filter(|c| !c.is_closed()) {
            return Ok(c);
        }
        let c = Rc::new(connect(&self.connstr).await?);
        *self.client.borrow_mut() = Some(c.clone());
        Ok(c)
    }

    /// Forgets the client after an error: the next use connects again.
    fn reset(&self) {
        *self.client.borrow_mut() = None;
    }

    /// First column of the first row as text (None for no row or NULL); errors drop the client.
    async fn value(&self, sql: &str) -> Result<Option<String>, String> {
        let r = match self.get().await {
            Ok(c) => c.query_opt(sql, &[]).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match r {
            Ok(row) => Ok(row.and_then(|r| r.get::<_, Option<String>>(0))),
            Err(e) => {
                self.reset();
                Err(e)
            }
        }
    }

    /// Every row's first column, as text.
    async fn column(&self, sql: &str) -> Result<Vec<String>, String> {
        let r = match self.get().await {
            Ok(c) => c.query(sql, &[]).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match r {
            Ok(rows) => Ok(rows.iter().map(|r| r.get::<_, Option<String>>(0).unwrap_or_default()).collect()),
            Err(e) => {
                self.reset();
                Err(e)
            }
        }
    }

    async fn exec(&self, sql: &str) -> Result<(), String> {
        let r = match self.get().await {
            Ok(c) => c.batch_execute(sql).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        if r.is_err() {
            self.reset();
        }
        r
    }

    /// Polls `sql` (the kit's `wait_for`, reconnecting after errors) until its value satisfies
    /// `ok`; returns it. Panics with the last value and the subscriptions after `timeout`.
    async fn wait_until(&self, what: &str, sql: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let last = RefCell::new(String::new());
        let r = wait_for(&format!("{what} ({sql})"), timeout, || {
            let (last, ok) = (&last, &ok);
            async move {
                let v = self.value(sql).await?;
                match v {
                    Some(v) if ok(&v) => Ok(Some(v)),
                    v => {
                        *last.borrow_mut() = v.unwrap_or_else(|| "no row / NULL".into());
                        Ok(None)
                    }
                }
            }
        })
        .await;
        match r {
            Ok(v) => v,
            Err(e) => {
                let stats = self
                    .column(
                        "SELECT format('%s %s pid=%s errors=%s last_error=%s', subname, status, pid, error_count, \
                         last_error) FROM pgsub.stat_subscription",
                    )
                    .await
                    .unwrap_or_default();
                panic!("{e}; last value: {}\n{}", last.borrow(), stats.join("\n"))
            }
        }
    }
}

async fn stat_i64(s: &Conn, sub: &str, col: &str) -> Option<i64> {
    s.value(&format!("SELECT {col}::text FROM pgsub.stat_subscription WHERE subname = '{sub}'"))
        .await
        .ok()
        .flatten()
        .and_then(|v| v.parse().ok())
}

async fn last_error(s: &Conn, sub: &str) -> String {
    s.value(&format!("SELECT last_error FROM pgsub.stat_subscription WHERE subname = '{sub}'"))
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Pid of the one process of `backend_type` on the subscriber.
async fn backend_pid(s: &Conn, backend_type: &str, timeout: Duration) -> i32 {
    // This database's (a launcher probing another database may be running for a moment); the
    // supervisor has no database.
    let sql = format!(
        "SELECT pid::text FROM pg_stat_activity WHERE backend_type = '{backend_type}' \
         AND (datname IS NULL OR datname = current_database())"
    );
    s.wait_until(&format!("a running {backend_type}"), &sql, timeout, |_| true).await.parse().expect("pid")
}

/// Sends `sig` to `pid`; false when the process no longer exists.
fn try_signal(pid: i32, sig: i32) -> bool {
    // SAFETY: a pid of the subscriber cluster this test started, looked up just before.
    unsafe { libc::kill(pid, sig) == 0 }
}

fn signal(pid: i32, sig: i32) {
    assert!(try_signal(pid, sig), "kill({pid}, {sig}) failed: {}", std::io::Error::last_os_error());
}

/// Waits until `pid` has exited; returns how long that took from `since`. Polls every 5 ms, not
/// through the kit's 100 ms `wait_for`: the time it took is what the tests assert.
async fn wait_gone(pid: i32, since: Instant, timeout: Duration) -> Duration {
    while pid_alive(pid) {
        assert!(since.elapsed() < timeout, "process {pid} still alive after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    since.elapsed()
}

// =============================================================================================
// Workload and comparison

/// A mixed write load on the publisher in a thread of its own (so that blocking harness calls in
/// the test do not pause it): single-row and 1000-row transactions of inserts, updates and
/// deletes on `t` (primary key) and `hist` (no key, replica identity full). It reconnects when the
/// publisher goes away; a transaction whose outcome was lost with the connection is not retried,
/// so the publisher's tables are the reference, whatever they hold.
struct Workload {
    stop: Arc<AtomicBool>,
    txns: Arc<AtomicU64>,
    /// Statements that failed (the publisher went away, or a bug in the workload).
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Workload {
    fn start(connstr: String, seed: u64) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let txns = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, txns, failed) = (stop.clone(), txns.clone(), failed.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                rt.block_on(workload(connstr, seed, stop, txns, failed));
            })
        };
        Workload { stop, txns, failed, thread: Some(thread) }
    }

    fn txns(&self) -> u64 {
        self.txns.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` more transactions committed.
    async fn wait_progress(&self, n: u64) {
        let start = self.txns();
        wait_for(&format!("{n} more workload transactions"), WAIT, || async {
            Ok((self.txns() >= start + n).then_some(()))
        })
        .await
        .unwrap_or_else(|e| panic!("the workload made no progress: {e}"));
    }

    /// Stops the load; returns (committed, failed) statements.
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.thread.take() {
            h.join().expect("workload thread");
        }
        let r = (self.txns(), self.failed.load(Ordering::SeqCst));
        eprintln!("workload: {} transactions committed, {} failed", r.0, r.1);
        r
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

async fn workload(connstr: String, seed: u64, stop: Arc<AtomicBool>, txns: Arc<AtomicU64>, failed: Arc<AtomicU64>) {
    let mut rng = Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut client: Option<Client> = None;
    let (mut next_id, mut next_seq) = (1i64, 1i64);
    while !stop.load(Ordering::SeqCst) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match tokio_postgres::connect(&connstr, NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    client = Some(c);
                }
                Err(_) => {
                    // The publisher is down: retry the connection at a steady pace (not a wait
                    // for a condition; the load just goes on once it is back).
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        let some_id = 1 + rng.between(0, next_id as u64) as i64;
        let some_seq = 1 + rng.between(0, next_seq as u64) as i64;
        let roll = rng.below(100);
        let bulk = roll >= 88;
        let r = match roll {
            0..=29 => {
                next_id += 1;
                c.execute("INSERT INTO t VALUES ($1, 0, $2)", &[&(next_id - 1), &format!("v{next_id}")]).await
            }
            30..=49 => c.execute("UPDATE t SET n = n + 1, v = md5(v) WHERE id = $1", &[&some_id]).await,
            50..=59 => c.execute("DELETE FROM t WHERE id = $1", &[&some_id]).await,
            60..=77 => {
                next_seq += 1;
                c.execute("INSERT INTO hist VALUES ($1, $2, 'one')", &[&(next_seq - 1), &some_id]).await
            }
            78..=82 => c.execute("UPDATE hist SET note = note || '+' WHERE seq = $1", &[&some_seq]).await,
            83..=87 => c.execute("DELETE FROM hist WHERE seq = $1", &[&some_seq]).await,
            88..=91 => {
                next_id += 1000;
                c.execute(
                    "INSERT INTO t SELECT g, 0, md5(g::text) FROM generate_series($1::bigint, $1::bigint + 999) g",
                    &[&(next_id - 1000)],
                )
                .await
            }
            92..=94 => {
                c.execute("UPDATE t SET n = n + 1, v = md5(v) WHERE id >= $1 AND id < $1 + 1000", &[&(some_id - 500)])
                    .await
            }
            95..=96 => c.execute("DELETE FROM t WHERE id >= $1 AND id < $1 + 1000", &[&some_id]).await,
            _ => {
                next_seq += 1000;
                c.execute(
                    "INSERT INTO hist SELECT g, g % 997, 'bulk' FROM generate_series($1::bigint, $1::bigint + 999) g",
                    &[&(next_seq - 1000)],
                )
                .await
            }
        };
        match r {
            Ok(_) => {
                txns.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                if failed.fetch_add(1, Ordering::SeqCst) < 5 {
                    eprintln!("workload: {e}: {:?}", e.as_db_error().map(|d| d.message()));
                }
                if c.is_closed() {
                    client = None;
                }
                // A pause after a failed statement (the publisher going away), as above.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // A steady, moderate rate: the point is faults during a flowing stream, not throughput.
        // (Pacing the load, not waiting for a condition.)
        tokio::time::sleep(Duration::from_millis(if bulk { 20 } else { 2 })).await;
    }
}

/// Full contents of the two tables as ordered text rows, compared row by row to say what is
/// missing, extra or doubled.
const DUMPS: [(&str, &str); 2] = [
    ("t", "SELECT format('%s|%s|%s', id, n, v) FROM t ORDER BY id"),
    ("hist", "SELECT format('%s|%s|%s', seq, tid, note) FROM hist ORDER BY seq, tid, note"),
];

/// Waits until the subscriber holds what the publisher holds (the publisher must be quiet): the
/// harness's comparison of every table of `sub` (count and md5); then compares both tables row
/// by row, which says what differs if they did not converge.
async fn assert_converged(publisher: &Cluster, subscriber: &Cluster, sub: &str) {
    let p = Conn::new(publisher);
    let s = Conn::new(subscriber);
    let t0 = Instant::now();
    let converged = {
        let (pc, sc) = (p.get().await.expect("publisher"), s.get().await.expect("subscriber"));
        wait_replicated_equal(&pc, &sc, Some(&[sub]), &[], WAIT + WAIT / 2).await
    };
    match &converged {
        Ok(tables) => {
            for c in tables {
                eprintln!("converged after {:?}: {c}", t0.elapsed());
            }
        }
        // The row-by-row comparison below says what differs.
        Err(e) => eprintln!("not converged: {e}"),
    }
    for (table, sql) in DUMPS {
        let a = p.column(sql).await.expect("publisher dump");
        let b = s.column(sql).await.expect("subscriber dump");
        if a != b {
            let (sa, sb): (std::collections::BTreeSet<_>, std::collections::BTreeSet<_>) =
                (a.iter().collect(), b.iter().collect());
            let missing: Vec<_> = sa.difference(&sb).take(10).collect();
            let extra: Vec<_> = sb.difference(&sa).take(10).collect();
            let mut dups = b.clone();
            dups.dedup();
            panic!(
                "{table}: publisher has {} rows, subscriber {} ({} duplicated on the subscriber)\n\
                 missing on the subscriber (first 10): {missing:?}\nonly on the subscriber (first 10): {extra:?}",
                a.len(),
                b.len(),
                b.len() - dups.len()
            );
        }
        eprintln!("{table}: {} rows equal on both nodes", a.len());
    }
    if converged.is_err() {
        // Equal row by row now, after the wait above gave up: it must hold for the harness too.
        let (pc, sc) = (p.get().await.expect("publisher"), s.get().await.expect("subscriber"));
        assert_replicated_equal_for(&pc, &sc, Some(&[sub])).await;
    }
}

async fn setup_tables(nodes: &TwoNodes) {
    let p = Conn::new(&nodes.publisher);
    let s = Conn::new(&nodes.subscriber);
    p.exec(&format!("{DDL} CREATE PUBLICATION pub FOR TABLE t, hist")).await.expect("publisher tables");
    s.exec(DDL).await.expect("subscriber tables");
}

async fn create_sub(s: &Conn, sub: &str, conninfo: &str, extra: &str) {
    let client = s.get().await.expect("subscriber");
    client
        .execute(&format!("SELECT pgsub.create_subscription('{sub}', $1, ARRAY['pub']{extra})"), &[&conninfo])
        .await
        .unwrap_or_else(|e| panic!("create_subscription {sub}: {e}"));
}

fn status_sql(sub: &str) -> String {
    format!("SELECT status FROM pgsub.stat_subscription WHERE subname = '{sub}'")
}

/// The log must show no crash of any server process (a crash means crash recovery for all).
fn assert_no_crash_in_log(c: &Cluster) {
    let log = c.log();
    for needle in ["terminated by signal", "was terminated", "terminating any other active server processes"] {
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            panic!("the subscriber went through crash recovery: {line}");
        }
    }
}

// =============================================================================================
// 1. kill -9 at random moments

#[derive(Clone, Copy, Debug, PartialEq)]
enum Victim {
    ApplyWorker,
    Launcher,
    Postmaster,
}

/// `streamed`: large transactions reach the worker while in progress (protocol streaming, a small
/// logical_decoding_work_mem) and are buffered in spill files (a small pgsub.work_mem).
async fn kill9_during_workload(victim: Victim, streamed: bool, seed: u64) {
    let (mut p_opts, mut s_opts) = (ClusterOpts::publisher(), ClusterOpts::subscriber());
    if streamed {
        p_opts = p_opts.with_conf("logical_decoding_work_mem = '64kB'");
        s_opts = s_opts.with_conf("pgsub.work_mem = '64kB'");
    }
    let mut nodes = TwoNodes::start_with(p_opts, s_opts).expect("start");
    setup_tables(&nodes).await;
    let s = Conn::new(&nodes.subscriber);
    create_sub(&s, "k", &nodes.pub_conninfo(), if streamed { ", streaming => true" } else { "" }).await;
    s.wait_until("streaming", &status_sql("k"), WAIT, |v| v == "streaming").await;
    let load = Workload::start(nodes.publisher.connstr("postgres", "postgres"), seed);
    load.wait_progress(50).await;
    let postmaster = nodes.subscriber.pid().expect("postmaster pid");
    let mut rng = Rng::new(seed);
    let (mut in_txn, mut misses, mut round) = (0, 0, 0);
    while round < 10 {
        round += 1;
        // The view's pid is the apply worker's in pg_stat_activity.
        let worker: i32 = s
            .wait_until(
                "the apply worker in pg_stat_activity and pgsub.stat_subscription",
                "SELECT a.pid::text FROM pg_stat_activity a JOIN pgsub.stat_subscription s ON s.pid = a.pid \
                 WHERE a.backend_type = 'pgsub apply worker' AND s.subname = 'k'",
                WAIT,
                |_| true,
            )
            .await
            .parse()
            .expect("pid");
        let launcher = backend_pid(&s, "pgsub launcher", WAIT).await;
        let delay = Duration::from_millis(rng.between(100, 2000));
        let before = load.txns();
        // The seeded random kill moment: a deliberate interval, not a condition.
        tokio::time::sleep(delay).await;
        // Two rounds in three aim at a moment inside a local transaction of the worker (the next
        // one within 2 s); whether a kill landed there is reported, not asserted.
        let aim = rng.below(3) != 0;
        let busy_sql = format!("SELECT (xact_start IS NOT NULL)::text FROM pg_stat_activity WHERE pid = {worker}");
        let aim_until = Instant::now() + Duration::from_secs(2);
        let busy = loop {
            let busy = s.value(&busy_sql).await.ok().flatten().unwrap_or_default() == "true";
            if busy || !aim || Instant::now() >= aim_until {
                break busy;
            }
            // Aiming, not waiting: a 2 ms poll to catch a short transaction (the kit polls every
            // 100 ms), and a miss after 2 s is fine.
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        in_txn += usize::from(busy);
        let t0 = Instant::now();
        match victim {
            Victim::ApplyWorker | Victim::Launcher => {
                let pid = if victim == Victim::ApplyWorker { worker } else { launcher };
                if !try_signal(pid, libc::SIGKILL) {
                    // It exited by itself between the lookup and the kill: a worker that keeps
                    // failing is a finding, not a kill moment.
                    let err = last_error(&s, "k").await;
                    misses += 1;
                    assert!(misses < 5, "{victim:?} {pid} keeps exiting by itself; last_error: {err}");
                    eprintln!("round {round}: {victim:?} {pid} already gone (last_error: {err}); again");
                    round -= 1;
                    continue;
                }
                wait_gone(pid, t0, Duration::from_secs(30)).await;
                // PostgreSQL treats any child killed by a signal as a crash: every backend is
                // restarted, the postmaster stays.
                assert_eq!(nodes.subscriber.pid(), Some(postmaster));
                assert!(pid_alive(postmaster), "the subscriber postmaster died");
            }
            Victim::Postmaster => {
                nodes.subscriber.kill9().expect("kill -9");
                nodes.subscriber.start_again().expect("restart the subscriber");
            }
        }
        // Back in business: a new worker streams again.
        let sql = format!(
            "SELECT status FROM pgsub.stat_subscription WHERE subname = 'k' AND pid IS DISTINCT FROM {worker} AND pid > 0"
        );
        s.wait_until("a new worker streaming", &sql, WAIT, |v| v == "streaming").await;
        let new_launcher = backend_pid(&s, "pgsub launcher", WAIT).await;
        eprintln!(
            "round {round}: {victim:?} killed after {delay:?} ({} publisher transactions in between, worker \
             {} a transaction); streaming again after {:?}; launcher {launcher} -> {new_launcher}",
            load.txns() - before,
            if busy { "inside" } else { "outside" },
            t0.elapsed()
        );
        load.wait_progress(20).await;
    }
    eprintln!("{in_txn} of 10 kills while the worker was inside a transaction");
    let (_, failed) = load.finish();
    assert_eq!(failed, 0, "the publisher stayed up: every workload statement must succeed");
    assert_converged(&nodes.publisher, &nodes.subscriber, "k").await;
    if streamed {
        let p = Conn::new(&nodes.publisher);
        let n = p
            .wait_until(
                "streamed transactions on the publisher's slot",
                "SELECT stream_txns::text FROM pg_stat_replication_slots WHERE slot_name = 'k'",
                WAIT,
                |v| v != "0",
            )
            .await;
        // Nothing is left buffered once every transaction is applied.
        let tmp = nodes.subscriber.data_dir().join("base/pgsql_tmp");
        let left: Vec<String> = std::fs::read_dir(&tmp)
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        eprintln!("{n} transactions streamed by the publisher; spill files left: {left:?}");
        assert!(left.iter().all(|f| !f.contains("pgsub")), "leftover spill files: {left:?}");
    }
    if victim != Victim::Postmaster {
        assert_eq!(nodes.subscriber.pid(), Some(postmaster));
        let restarts = nodes.subscriber.log().matches("all server processes terminated; reinitializing").count();
        eprintln!("{restarts} crash restarts of the subscriber's backends (PostgreSQL's answer to a child killed by a signal)");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn kill9_apply_worker_at_random_moments() {
    kill9_during_workload(Victim::ApplyWorker, false, test_seed("kill9_apply_worker")).await;
}

#[tokio::test(flavor = "current_thread")]
async fn kill9_apply_worker_with_streamed_transactions() {
    kill9_during_workload(Victim::ApplyWorker, true, test_seed("kill9_apply_worker_streamed")).await;
}

#[tokio::test(flavor = "current_thread")]
async fn kill9_launcher_at_random_moments() {
    kill9_during_workload(Victim::Launcher, false, test_seed("kill9_launcher")).await;
}

#[tokio::test(flavor = "current_thread")]
async fn kill9_subscriber_postmaster_at_random_moments() {
    kill9_during_workload(Victim::Postmaster, false, test_seed("kill9_postmaster")).await;
}

// =============================================================================================
// 2. Publisher shutdowns and a silent network path

/// Waits until error_count is above `before` and last_error `matches`; returns (new count,
/// last_error).
async fn wait_error(s: &Conn, sub: &str, before: i64, what: &str, matches: impl Fn(&str) -> bool) -> (i64, String) {
    let last = RefCell::new((0, String::new()));
    let r = wait_for(&format!("{what}: an error of {sub}"), WAIT, || {
        let (last, matches) = (&last, &matches);
        async move {
            let n = stat_i64(s, sub, "error_count").await.unwrap_or(0);
            let e = last_error(s, sub).await;
            *last.borrow_mut() = (n, e.clone());
            Ok((n > before && matches(&e)).then_some((n, e)))
        }
    })
    .await;
    let (n, e) = r.unwrap_or_else(|err| {
        let (n, e) = last.borrow().clone();
        panic!("{what}: no matching error reported (error_count {n}, last_error {e:?}): {err}")
    });
    // Network failures are not blamed on the transaction being received.
    assert!(!e.contains("finished at"), "{what}: a connection error blames a transaction:\n{e}");
    (n, e)
}

#[tokio::test(flavor = "current_thread")]
async fn publisher_shutdowns_and_silent_network_converge() {
    let seed = test_seed("publisher_faults");
    let mut nodes = TwoNodes::start_with(
        ClusterOpts::publisher(),
        ClusterOpts::subscriber().with_conf("pgsub.receiver_timeout = '3s'"),
    )
    .expect("start");
    setup_tables(&nodes).await;
    let proxy = Proxy::start(nodes.publisher.port());
    let via_proxy = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", proxy.port());
    let s = Conn::new(&nodes.subscriber);
    create_sub(&s, "pf", &via_proxy, "").await;
    s.wait_until("streaming", &status_sql("pf"), WAIT, |v| v == "streaming").await;
    let load = Workload::start(nodes.publisher.connstr("postgres", "postgres"), seed);
    let mut rng = Rng::new(seed);

    for mode in ["fast", "immediate"] {
        load.wait_progress(100).await;
        // A seeded random moment to stop the publisher: a deliberate interval.
        tokio::time::sleep(Duration::from_millis(rng.between(0, 1000))).await;
        let before = stat_i64(&s, "pf", "error_count").await.expect("error_count");
        nodes.publisher.stop(mode).expect("stop the publisher");
        // Down for longer than the receiver timeout (3 s): a deliberate interval, not a
        // condition; the worker's reconnection attempts meet a closed port meanwhile.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let (n, err) = wait_error(&s, "pf", before, mode, |e| !e.is_empty()).await;
        eprintln!("{mode} shutdown: error_count {before} -> {n}, last_error: {err}");
        nodes.publisher.start_again().expect("start the publisher again");
        let applied = stat_i64(&s, "pf", "txns_applied").await.unwrap_or(0);
        load.wait_progress(50).await;
        s.wait_until(
            "transactions applied after the publisher came back",
            "SELECT txns_applied::text FROM pgsub.stat_subscription WHERE subname = 'pf'",
            WAIT,
            |v| v.parse::<i64>().is_ok_and(|n| n > applied),
        )
        .await;
    }

    // The network path goes silent: the TCP connection stays open, nothing arrives.
    load.wait_progress(100).await;
    let before = stat_i64(&s, "pf", "error_count").await.expect("error_count");
    let frozen_at = Instant::now();
    proxy.freeze();
    let (n, err) = wait_error(&s, "pf", before, "silent network", |e| e.contains("timeout")).await;
    eprintln!(
        "silent network: reported after {:?}: error_count {before} -> {n}, last_error: {err}",
        frozen_at.elapsed()
    );
    assert!(
        frozen_at.elapsed() >= Duration::from_secs(2),
        "timed out before receiver_timeout: {:?}",
        frozen_at.elapsed()
    );
    // Reconnection attempts through the frozen path time out too.
    let (n2, err2) = wait_error(&s, "pf", n, "silent network, retry", |e| e.contains("timeout")).await;
    eprintln!("retry while silent: error_count {n} -> {n2}, last_error: {err2}");
    proxy.thaw();
    let applied = stat_i64(&s, "pf", "txns_applied").await.unwrap_or(0);
    s.wait_until(
        "transactions applied after the network came back",
        "SELECT txns_applied::text FROM pgsub.stat_subscription WHERE subname = 'pf'",
        WAIT,
        |v| v.parse::<i64>().is_ok_and(|n| n > applied),
    )
    .await;
    load.finish();
    assert_converged(&nodes.publisher, &nodes.subscriber, "pf").await;
    assert_no_crash_in_log(&nodes.subscriber);
}

// =============================================================================================
// 3. A publisher that accepts and says nothing (at connect, at START_REPLICATION, in the stream)

#[tokio::test(flavor = "current_thread")]
async fn silent_publisher_times_out_retries_and_sigterm_is_prompt() {
    let nodes = TwoNodes::start_with(
        ClusterOpts::publisher(),
        ClusterOpts::subscriber().with_conf("pgsub.receiver_timeout = '2s'"),
    )
    .expect("start");
    setup_tables(&nodes).await;
    let silent = SilentServer::start();
    let s = Conn::new(&nodes.subscriber);
    create_sub(&s, "sl", &nodes.pub_conninfo(), ", enabled => false, copy_data => false").await;
    // The API checks a new connection string by connecting, which a silent server never allows;
    // write the catalog the way alter_subscription_connection does after its check.
    let silent_ci = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", silent.port());
    s.get()
        .await
        .unwrap()
        .execute("UPDATE pgsub.sub SET conninfo = $1 WHERE subname = 'sl'", &[&silent_ci])
        .await
        .expect("point the subscription at the silent server");
    s.exec("SELECT pgsub.enable_subscription('sl')").await.expect("enable");

    let (n, err) = wait_error(&s, "sl", 0, "silent publisher", |e| e.contains("timeout")).await;
    eprintln!("silent publisher: error_count {n}, last_error: {err}");
    assert!(err.contains("\"sl\""), "the error names the subscription: {err}");
    // It retries: more connections arrive, each one given up with an error.
    wait_for("three connections to the silent server", WAIT, || async { Ok((silent.accepted() >= 3).then_some(())) })
        .await
        .unwrap_or_else(|e| panic!("no retries: {e} ({} connections)", silent.accepted()));
    let (n2, _) = wait_error(&s, "sl", n, "silent publisher, retry", |e| e.contains("timeout")).await;
    eprintln!("retries: {} connections accepted, error_count {n2}", silent.accepted());

    // SIGTERM while the worker waits on the silent server ends it within about a second, once by
    // pg_terminate_backend and once by kill -TERM.
    for how in ["pg_terminate_backend", "kill -TERM"] {
        // The worker is connected to the silent server and waits for its answer, with most of
        // receiver_timeout (2 s) still ahead: the last connection was accepted less than a second
        // ago (the previous worker's is at least 2 s old by the time the next one runs), and the
        // worker sits in its latch and socket wait on the publisher's connection start-up (native's
        // LibPQWalReceiverConnect, spelled LibpqwalreceiverConnect from 17 on).
        let waiting = "SELECT pid::text FROM pg_stat_activity \
                       WHERE backend_type = 'pgsub apply worker' \
                       AND lower(wait_event) = 'libpqwalreceiverconnect'";
        let (pid, accepted_before) =
            wait_for("the worker waiting on a fresh connection to the silent server", WAIT, || {
                let (s, silent) = (&s, &silent);
                async move {
                    let pid = s.value(waiting).await?.and_then(|v| v.parse::<i32>().ok());
                    let recent =
                        silent.last_accept.lock().unwrap().is_some_and(|t| t.elapsed() < Duration::from_millis(1000));
                    Ok(pid.filter(|p| recent && pid_alive(*p)).map(|p| (p, silent.accepted())))
                }
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let t0 = Instant::now();
        if how == "kill -TERM" {
            signal(pid, libc::SIGTERM);
        } else {
            let ok = s.value(&format!("SELECT pg_terminate_backend({pid})::text")).await.expect("terminate");
            assert_eq!(ok.as_deref(), Some("true"));
        }
        let took = wait_gone(pid, t0, Duration::from_secs(10)).await;
        eprintln!("{how}: worker {pid} (waiting on connection #{accepted_before}) gone after {took:?}");
        assert!(took <= Duration::from_millis(1500), "{how}: worker {pid} took {took:?} to stop");
    }

    // A publisher that logs the worker in and then never answers START_REPLICATION (first two
    // sessions), then one that starts the stream and says nothing (later sessions).
    let fake = FakePublisher::start(Arc::new(|n: usize| vec![if n < 2 { Step::Unanswered } else { Step::Hold }]));
    s.get()
        .await
        .unwrap()
        .execute("SELECT pgsub.alter_subscription_connection('sl', $1)", &[&fake.conninfo()])
        .await
        .expect("alter connection to the fake publisher");
    let errors = stat_i64(&s, "sl", "error_count").await.unwrap_or(0);
    let (n, err) =
        wait_error(&s, "sl", errors, "unanswered START_REPLICATION", |e| e.contains("START_REPLICATION")).await;
    eprintln!("unanswered START_REPLICATION: error_count {errors} -> {n}: {}", err.lines().next().unwrap_or(""));
    assert!(err.contains("within 2000 ms"), "{err}");
    // The retry waits for its answer too; SIGTERM ends that wait at once.
    wait_for("a retry after the unanswered START_REPLICATION", WAIT, || async {
        Ok((fake.sessions() >= 2).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let pid = backend_pid(&s, "pgsub apply worker", WAIT).await;
    let t0 = Instant::now();
    signal(pid, libc::SIGTERM);
    let took = wait_gone(pid, t0, Duration::from_secs(10)).await;
    eprintln!("kill -TERM: worker {pid} (waiting for the answer to START_REPLICATION) gone after {took:?}");
    assert!(took <= Duration::from_millis(1500), "worker {pid} took {took:?} to stop");
    // The next session streams nothing at all: the receive loop gives up after receiver_timeout.
    let errors = stat_i64(&s, "sl", "error_count").await.unwrap_or(0);
    let (n, err) = wait_error(&s, "sl", errors, "silent stream", |e| e.contains("due to timeout")).await;
    eprintln!(
        "silent stream: error_count {errors} -> {n} after {} sessions: {}",
        fake.sessions(),
        err.lines().next().unwrap_or("")
    );
    assert!(fake.sessions() >= 3);

    // Pointed at the real publisher again (the API checks it), it converges.
    s.get()
        .await
        .unwrap()
        .execute("SELECT pgsub.alter_subscription_connection('sl', $1)", &[&nodes.pub_conninfo()])
        .await
        .expect("alter connection back to the publisher");
    let p = Conn::new(&nodes.publisher);
    p.exec("INSERT INTO t SELECT g, g, 'x' || g FROM generate_series(1, 500) g; INSERT INTO hist SELECT g, g, 'h' FROM generate_series(1, 100) g; UPDATE t SET n = n + 1 WHERE id % 3 = 0; DELETE FROM t WHERE id % 7 = 0")
        .await
        .expect("publisher writes");
    assert_converged(&nodes.publisher, &nodes.subscriber, "sl").await;
    assert_no_crash_in_log(&nodes.subscriber);
}

// =============================================================================================
// 4. A real stream, replayed with flipped bytes

/// Transactions of a captured stream: frame ranges and the commit LSN each one finishes at.
struct Txn {
    /// Index of BEGIN.
    first: usize,
    /// Index of COMMIT.
    commit: usize,
    final_lsn: u64,
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

fn transactions(frames: &[fake_publisher::CapturedFrame]) -> Vec<Txn> {
    let mut out = Vec::new();
    let mut open: Option<(usize, u64)> = None;
    for (i, f) in frames.iter().enumerate() {
        match f.data.first() {
            Some(b'B') => open = Some((i, be_u64(&f.data[1..]))),
            Some(b'C') => {
                let (first, final_lsn) = open.take().expect("COMMIT without BEGIN in the capture");
                out.push(Txn { first, commit: i, final_lsn });
            }
            _ => {}
        }
    }
    out
}

/// The start LSN of the last START_REPLICATION the fake publisher was sent.
fn requested_start(stats: &fake_publisher::Stats) -> u64 {
    let queries = stats.queries.lock().unwrap();
    queries
        .iter()
        .rev()
        .find(|q| q.to_ascii_uppercase().starts_with("START_REPLICATION"))
        .and_then(|q| q.split_whitespace().nth(4).map(str::to_string))
        .and_then(|l| l.parse::<Lsn>().ok())
        .map(|l| l.0)
        .unwrap_or(0)
}

#[tokio::test(flavor = "current_thread")]
async fn corrupted_stream_never_crashes_the_worker() {
    const MUTATED_SESSIONS: usize = 12;
    let seed = test_seed("corrupted_stream");
    let nodes = TwoNodes::start_with(
        ClusterOpts::publisher(),
        ClusterOpts::subscriber().with_conf("pgsub.retry_interval = '200ms'"),
    )
    .expect("start");
    setup_tables(&nodes).await;
    let p = Conn::new(&nodes.publisher);
    let s = Conn::new(&nodes.subscriber);
    create_sub(&s, "fz", &nodes.pub_conninfo(), ", enabled => false, copy_data => false").await;

    // Record a real stream of a mixed workload.
    let start: Lsn = p
        .value("SELECT lsn::text FROM pg_create_logical_replication_slot('cap', 'pgoutput')")
        .await
        .expect("capture slot")
        .expect("lsn")
        .parse()
        .expect("lsn");
    let mut steps = vec![
        "INSERT INTO t VALUES (1, 0, 'one'), (2, 0, NULL)".to_string(),
        "INSERT INTO t SELECT g, g % 5, repeat('x', g % 40) FROM generate_series(10, 400) g".to_string(),
        "BEGIN; UPDATE t SET n = n + 1 WHERE id < 100; DELETE FROM t WHERE id % 10 = 3; COMMIT".to_string(),
        "INSERT INTO hist SELECT g, g % 17, 'h' || g FROM generate_series(1, 200) g".to_string(),
        "UPDATE hist SET note = note || '!' WHERE seq % 9 = 0".to_string(),
        "DELETE FROM hist WHERE seq % 11 = 0".to_string(),
    ];
    for i in 0..30 {
        steps.push(match i % 5 {
            0 => format!("INSERT INTO t VALUES ({}, {i}, 'single {i}')", 1000 + i),
            1 => format!("UPDATE t SET v = 'upd {i}', n = n + 1 WHERE id = {}", 1000 + i - 1),
            2 => format!("DELETE FROM t WHERE id = {}", 10 + i * 3),
            3 => format!("INSERT INTO hist VALUES ({}, {i}, 'single')", 1000 + i),
            _ => format!(
                "BEGIN; INSERT INTO t VALUES ({}, 1, 'pair'); UPDATE hist SET tid = {i} WHERE seq = {i}; COMMIT",
                2000 + i
            ),
        });
    }
    for sql in &steps {
        p.exec(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    p.exec("SELECT pg_logical_emit_message(false, 'pgsub-faults-end', '')").await.expect("sentinel");
    let mut opts = PgOutputOptions::for_server(150000, vec!["pub".into()]);
    opts.messages = true;
    let connstr = nodes.publisher.connstr("postgres", "postgres");
    let cap = tokio::task::spawn_blocking(move || {
        capture(&connstr, "cap", start, &opts, "pgsub-faults-end", Duration::from_secs(60))
    })
    .await
    .expect("capture");
    p.exec("SELECT pg_drop_replication_slot('cap')").await.expect("drop capture slot");
    let frames = Arc::new(cap.frames);
    let txns = Arc::new(transactions(&frames));
    eprintln!("captured {} frames in {} transactions", frames.len(), txns.len());
    assert!(txns.len() >= steps.len(), "every workload transaction captured");

    // The fake publisher plays the walsender: each session starts after what the worker says it
    // has applied (START_REPLICATION's LSN). Sessions 0..MUTATED_SESSIONS send the transactions
    // before a randomly chosen one cleanly, then that one with bytes flipped in its frames and
    // without its COMMIT, then hang up, so damaged data never commits. Later sessions send the
    // rest cleanly and stay connected.
    let stats_cell: Arc<OnceLock<Arc<fake_publisher::Stats>>> = Arc::new(OnceLock::new());
    let mutations: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let relations: Arc<Vec<usize>> =
        Arc::new((0..frames.len()).filter(|&i| frames[i].data.first() == Some(&b'R')).collect());
    let script: Script = {
        let (frames, txns, stats_cell, mutations) =
            (frames.clone(), txns.clone(), stats_cell.clone(), mutations.clone());
        let relations = relations.clone();
        Arc::new(move |n: usize| {
            let start = stats_cell.get().map(|s| requested_start(s)).unwrap_or(0);
            let pending: Vec<&Txn> = txns.iter().filter(|t| t.final_lsn >= start).collect();
            let first_pending = pending.first().map(|t| t.first).unwrap_or(frames.len());
            let mut rng = Rng::new(seed ^ (n as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
            let send = |i: usize| {
                let f = &frames[i];
                xlog_data(f.wal_start.0, f.wal_end.0, &f.data)
            };
            // Like a walsender, describe the relations again in each session: after the first
            // BEGIN sent, every RELATION message of the capture.
            let with_relations = |range: std::ops::Range<usize>| {
                let mut seq = Vec::new();
                let mut described = false;
                for i in range {
                    seq.push(i);
                    if !described && frames[i].data.first() == Some(&b'B') {
                        seq.extend(relations.iter().copied());
                        described = true;
                    }
                }
                seq
            };
            let mut steps = Vec::new();
            if n >= MUTATED_SESSIONS || pending.is_empty() {
                // Clean: everything not applied yet (and the sentinel message), then stay.
                steps.extend(with_relations(first_pending..frames.len()).into_iter().map(|i| Step::Send(send(i))));
                steps.push(Step::Hold);
                return steps;
            }
            let victim = pending[rng.below(pending.len().min(5))];
            // Up to the victim's COMMIT, which is never sent.
            let seq = with_relations(first_pending..victim.commit);
            let cut = seq.iter().position(|&i| i == victim.first).unwrap_or(0);
            steps.extend(seq[..cut].iter().map(|&i| Step::Send(send(i))));
            let mut damaged: Vec<(usize, Vec<u8>)> = seq[cut..].iter().map(|&i| (i, send(i))).collect();
            let flips = 1 + rng.below(3);
            let mut what = Vec::new();
            for _ in 0..flips {
                let k = rng.below(damaged.len());
                let (idx, msg) = &mut damaged[k];
                // Mostly inside the pgoutput message (after the 1+4 CopyData and 25 XLogData
                // header bytes), sometimes in the headers.
                let pos = if rng.below(5) == 0 { rng.below(msg.len()) } else { 30 + rng.below(msg.len() - 30) };
                let mask = 1 + rng.below(255) as u8;
                let tag = msg.get(30).map(|b| *b as char).unwrap_or('?');
                msg[pos] ^= mask;
                what.push(format!("frame {idx} ('{tag}') byte {pos} ^= {mask:#04x}"));
            }
            mutations.lock().unwrap().push(format!("session {n}: {}", what.join(", ")));
            steps.extend(damaged.into_iter().map(|(_, m)| Step::Send(m)));
            steps.push(Step::Sleep(Duration::from_millis(300)));
            steps.push(Step::Close);
            steps
        })
    };
    let fake = FakePublisher::start(script);
    let _ = stats_cell.set(fake.stats.clone());

    let postmaster = nodes.subscriber.pid().expect("postmaster");
    // The supervisor (the database's launcher may come and go: it leaves while nothing is enabled).
    let supervisor = backend_pid(&s, "pgsub supervisor", WAIT).await;
    s.get()
        .await
        .unwrap()
        .execute("SELECT pgsub.alter_subscription_connection('fz', $1)", &[&fake.conninfo()])
        .await
        .expect("point the subscription at the fake publisher");
    s.exec("SELECT pgsub.enable_subscription('fz')").await.expect("enable");

    // Collect the distinct errors while the damaged sessions run.
    let seen: RefCell<Vec<String>> = RefCell::new(Vec::new());
    wait_for("the damaged sessions to pass", WAIT, || {
        let (s, seen, fake) = (&s, &seen, &fake);
        async move {
            let e = last_error(s, "fz").await;
            if !e.is_empty() && !seen.borrow().contains(&e) {
                seen.borrow_mut().push(e);
            }
            Ok((fake.sessions() > MUTATED_SESSIONS).then_some(()))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: only {} sessions so far", fake.sessions()));
    let seen = seen.into_inner();
    for m in mutations.lock().unwrap().iter() {
        eprintln!("mutation {m}");
    }
    for e in &seen {
        eprintln!("reported: {}", e.lines().next().unwrap_or(""));
    }
    // A lost connection is no fault of the transaction being received: its error must not offer
    // that transaction's finish LSN (which skip_transaction would take) as if it were.
    for e in seen.iter().filter(|e| {
        e.contains("lost the replication connection") || e.contains("could not receive data from WAL stream")
    }) {
        assert!(!e.contains("finished at"), "a connection error blames a transaction:\n{e}");
    }
    let errors = s
        .wait_until(
            "an error per damaged session",
            "SELECT error_count::text FROM pgsub.stat_subscription WHERE subname = 'fz'",
            WAIT,
            |v| v.parse::<usize>().is_ok_and(|n| n >= MUTATED_SESSIONS),
        )
        .await;
    eprintln!("error_count {errors} after {} sessions", fake.sessions());
    assert!(!seen.is_empty(), "errors were shown in last_error");

    // The clean session brings the subscriber to exactly the publisher's contents.
    assert_converged(&nodes.publisher, &nodes.subscriber, "fz").await;
    s.wait_until("streaming from the fake publisher", &status_sql("fz"), WAIT, |v| v == "streaming").await;

    // Nothing crashed: same postmaster, same supervisor, no crash recovery in the log.
    assert_eq!(nodes.subscriber.pid(), Some(postmaster));
    assert!(pid_alive(postmaster));
    assert_eq!(backend_pid(&s, "pgsub supervisor", WAIT).await, supervisor, "the supervisor was not restarted");
    assert_no_crash_in_log(&nodes.subscriber);

    // SIGTERM while the worker waits on a connected, silent stream: gone within about a second.
    let pid = backend_pid(&s, "pgsub apply worker", WAIT).await;
    let t0 = Instant::now();
    signal(pid, libc::SIGTERM);
    let took = wait_gone(pid, t0, Duration::from_secs(10)).await;
    eprintln!("SIGTERM while streaming: worker {pid} gone after {took:?}");
    assert!(took <= Duration::from_millis(1500), "worker {pid} took {took:?} to stop");
}
