//! The harness itself: two clusters start, pgsub loads on the subscriber (its supervisor shows in
//! pg_stat_activity), the publisher accepts a logical replication connection, and dropping the
//! clusters leaves no process and no directory behind.
use pgsub_tests::{pid_alive, psql_bin, wait_for, TwoNodes};
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "current_thread")]
async fn two_nodes_start_load_pgsub_and_clean_up() {
    let nodes = TwoNodes::start().expect("start two nodes");
    let sub = nodes.subscriber.client("postgres").await.expect("subscriber client");

    // The extension is created (TwoNodes::start ran CREATE EXTENSION) and is pgsub's.
    let ext: String = sub
        .query_one("SELECT extversion FROM pg_extension WHERE extname = 'pgsub'", &[])
        .await
        .expect("pg_extension")
        .get(0);
    assert!(!ext.is_empty());

    // The supervisor runs as a background worker whose backend_type names pgsub (launchers only
    // run in databases with enabled subscriptions).
    let supervisor_pid: i32 = wait_for("the pgsub supervisor in pg_stat_activity", Duration::from_secs(30), || {
        let sub = &sub;
        async move {
            let rows = sub
                .query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pgsub supervisor'", &[])
                .await
                .map_err(|e| e.to_string())?;
            Ok(rows.first().map(|r| r.get::<_, i32>(0)))
        }
    })
    .await
    .expect("supervisor visible");
    assert!(pid_alive(supervisor_pid));

    // The publisher accepts a logical replication connection (replication=database).
    let conn =
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres replication=database", nodes.publisher.port());
    let out = Command::new(psql_bin().expect("psql"))
        .args(["-X", "-A", "-t", "-d", &conn, "-c", "IDENTIFY_SYSTEM"])
        .output()
        .expect("run psql");
    assert!(out.status.success(), "IDENTIFY_SYSTEM failed: {}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = line.trim().split('|').collect();
    assert_eq!(fields.len(), 4, "IDENTIFY_SYSTEM row: {line}");
    assert_eq!(fields[3], "postgres", "replication=database connects to the database");
    let wal_level = nodes.publisher.psql("postgres", "SHOW wal_level").expect("show");
    assert_eq!(wal_level, "logical");

    // Cleanup: every process of both clusters and both directories are gone after drop.
    let mut pids = nodes.publisher.process_pids();
    pids.extend(nodes.subscriber.process_pids());
    assert!(pids.contains(&supervisor_pid), "supervisor is a child of the subscriber");
    let dirs = [nodes.publisher.dir().to_path_buf(), nodes.subscriber.dir().to_path_buf()];
    drop(sub);
    drop(nodes);
    for p in pids {
        assert!(!pid_alive(p), "process {p} survived the harness");
    }
    for d in dirs {
        assert!(!d.exists(), "{} survived the harness", d.display());
    }
}
