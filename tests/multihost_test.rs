//! End-to-end: several hosts in one connection string with `target_session_attrs` (libpq 14+),
//! on a publisher and its physical standby (`Cluster::standby_of`). pgsub's client picks the host
//! psql (libpq) picks, mode by mode and for several host orders; an apply worker whose string
//! lists the standby first connects to the primary with `read-write` and streams from it.
use std::process::Command;
use std::time::Duration;

use pgsub_proto::client::{Client, PollWait};
use pgsub_proto::conninfo;
use pgsub_tests::{
    assert_replicated_equal, one, wait_for_subscription_sync, wait_value, Cluster, ClusterOpts, TwoNodes,
};

const WAIT: Duration = Duration::from_secs(90);

const MODES: [&str; 6] = ["any", "read-write", "read-only", "primary", "standby", "prefer-standby"];

/// The port of the server psql (libpq of the system's PostgreSQL 15) ends up on, or its error.
fn psql_port(connstr: &str) -> Result<u16, String> {
    let out = Command::new("/usr/lib/postgresql/15/bin/psql")
        .args(["-X", "-A", "-t", "-d", connstr, "-c", "SELECT inet_server_port()"])
        .env_remove("PGPASSWORD")
        .env_remove("PGTARGETSESSIONATTRS")
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|e| format!("psql output: {e}"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The same for pgsub's client (a normal connection: logical replication connections to a
/// standby need PostgreSQL 16, the choice of host is the same).
fn pgsub_port(connstr: &str) -> Result<u16, String> {
    let cfg = conninfo::parse(connstr).map_err(|e| e.to_string())?;
    let mut c = Client::connect(&cfg, false, Box::new(PollWait)).map_err(|e| e.to_string())?;
    let rows = c.simple_query("SELECT inet_server_port() AS p").map_err(|e| e.to_string())?;
    c.close();
    rows.first().and_then(|r| r.get("p")).and_then(|p| p.parse().ok()).ok_or_else(|| "no port".to_string())
}

/// For each host list and each mode: pgsub's client connects to the server psql connects to,
/// and fails where psql fails (with libpq's reason).
#[test]
fn target_session_attrs_chooses_the_host_psql_chooses() {
    let primary = Cluster::publisher().expect("primary");
    let standby = Cluster::standby_of(&primary, "standby").expect("standby");
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()").unwrap(), "t");
    let (p, s) = (primary.port(), standby.port());
    let base = |ports: &str| {
        let n = ports.split(',').count();
        format!("host={} port={ports} user=postgres dbname=postgres connect_timeout=5", vec!["127.0.0.1"; n].join(","))
    };
    let mut expected_hits = 0;
    for (ports, want) in [
        // The standby first, then the primary: what the mode asks for.
        (format!("{s},{p}"), [Some(s), Some(p), Some(s), Some(p), Some(s), Some(s)]),
        (format!("{p},{s}"), [Some(p), Some(p), Some(s), Some(p), Some(s), Some(s)]),
        // The primary alone: no standby (prefer-standby falls back to it), nothing read-only.
        (format!("{p}"), [Some(p), Some(p), None, Some(p), None, Some(p)]),
        // The standby alone: nothing writable.
        (format!("{s}"), [Some(s), None, Some(s), None, Some(s), Some(s)]),
    ] {
        for (mode, want) in MODES.iter().zip(want) {
            let connstr = format!("{} target_session_attrs={mode}", base(&ports));
            let libpq = psql_port(&connstr);
            let ours = pgsub_port(&connstr);
            eprintln!("ports {ports}, {mode}: psql {libpq:?}, pgsub {ours:?}");
            match (&libpq, &ours, want) {
                (Ok(a), Ok(b), Some(w)) => {
                    assert_eq!((*a, *b), (w, w), "ports {ports}, {mode}");
                    expected_hits += 1;
                }
                (Err(a), Err(b), None) => {
                    // The same reason: libpq's words.
                    let why = [
                        "session is read-only",
                        "session is not read-only",
                        "server is in hot standby mode",
                        "server is not in hot standby mode",
                    ]
                    .into_iter()
                    .find(|w| a.contains(w))
                    .unwrap_or_else(|| panic!("ports {ports}, {mode}: psql said {a}"));
                    assert!(b.contains(why), "ports {ports}, {mode}: psql {a}; pgsub {b}");
                }
                _ => panic!("ports {ports}, {mode}: psql {libpq:?}, pgsub {ours:?}, expected {want:?}"),
            }
        }
    }
    assert_eq!(expected_hits, 20);
}

/// A subscription whose connection string names the standby first and asks for `read-write`:
/// `create_subscription` and the apply worker both land on the primary (its slot, its
/// walsender), and the worker streams from it.
#[tokio::test(flavor = "current_thread")]
async fn apply_worker_connects_to_the_primary_with_read_write() {
    let nodes = TwoNodes::start_with(ClusterOpts::publisher(), ClusterOpts::subscriber()).expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").await.unwrap();
    }
    p.batch_execute(
        "CREATE PUBLICATION pub FOR TABLE t; INSERT INTO t SELECT g, 'before' FROM generate_series(1, 50) g",
    )
    .await
    .unwrap();
    let standby = Cluster::standby_of(&nodes.publisher, "standby").expect("standby");
    let conninfo = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres target_session_attrs=read-write",
        standby.port(),
        nodes.publisher.port()
    );
    s.execute("SELECT pgsub.create_subscription('rw', $1, ARRAY['pub'])", &[&conninfo]).await.expect("create");
    assert_eq!(one::<i64>(&p, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'rw'").await, 1);
    wait_for_subscription_sync(&s, "rw", WAIT).await;
    p.batch_execute("INSERT INTO t SELECT g, 'after' FROM generate_series(51, 100) g").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM t", "100", WAIT).await;
    // The worker's walsender is the primary's.
    assert_eq!(one::<i64>(&p, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'rw'").await, 1);
    assert_replicated_equal(&p, &s).await;
}
