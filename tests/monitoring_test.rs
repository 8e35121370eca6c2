//! End-to-end: monitoring (issue 21). Debian's `prometheus-postgres-exporter` (installed by
//! scripts/setup) runs with the shipped `monitoring/postgres_exporter_queries.yaml` against a
//! subscriber, as a `pg_monitor` role: its /metrics page carries pgsub's metrics with the values
//! the views show, typed as the file says, and `monitoring/grafana-dashboard.json` is valid JSON
//! that refers only to metrics the page has. `pgsub.health` / `pgsub.check_health` raise each
//! problem they document, each provoked here.
use pgsub_tests::{
    assert_replicated_equal, free_port, must_fail, one, wait_for, wait_for_subscription_error,
    wait_for_subscription_sync, wait_value, workspace_root, Cluster, ClusterOpts, TwoNodes,
};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(60);

/// Where Debian's package puts the exporter (PGSUB_POSTGRES_EXPORTER overrides).
fn exporter_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PGSUB_POSTGRES_EXPORTER") {
        return Some(PathBuf::from(p));
    }
    ["/usr/bin/prometheus-postgres-exporter", "/usr/sbin/prometheus-postgres-exporter"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn queries_file() -> PathBuf {
    workspace_root().join("monitoring/postgres_exporter_queries.yaml")
}

fn dashboard_file() -> PathBuf {
    workspace_root().join("monitoring/grafana-dashboard.json")
}

/// The exporter process; killed by its pid (and reaped) on drop.
struct Exporter {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Exporter {
    fn start(bin: &PathBuf, dsn: &str, log: PathBuf) -> Exporter {
        let port = free_port().expect("free port");
        let out = std::fs::File::create(&log).expect("exporter log");
        let err = out.try_clone().expect("exporter log");
        // postgres_exporter does not refuse root; it only needs to read the queries file.
        let child = Command::new(bin)
            .env("DATA_SOURCE_NAME", dsn)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--extend.query-path={}", queries_file().display()))
            // Only pgsub's queries (and the exporter's own pg_up / pg_exporter_* series).
            .args(["--disable-default-metrics", "--disable-settings-metrics"])
            .args(["--no-collector.database", "--no-collector.bgwriter"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        Exporter { child, port, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET /metrics over plain HTTP/1.0 (the server closes the connection after the body).
    fn scrape(&self) -> Result<String, String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n")
            .map_err(|e| format!("send: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header")?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(format!("HTTP status: {}", head.lines().next().unwrap_or("")));
        }
        Ok(body.to_string())
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("===== exporter log =====\n{}\n===== end of exporter log =====", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One scrape: series (`name{labels}` with labels sorted) → value, and name → TYPE.
struct Metrics {
    values: BTreeMap<(String, BTreeMap<String, String>), f64>,
    types: BTreeMap<String, String>,
}

impl Metrics {
    fn parse(body: &str) -> Metrics {
        let mut values = BTreeMap::new();
        let mut types = BTreeMap::new();
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(n), Some(t)) = (it.next(), it.next()) {
                    types.insert(n.to_string(), t.to_string());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("metric line");
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n.to_string(), parse_labels(l.trim_end_matches('}'))),
                None => (series.to_string(), BTreeMap::new()),
            };
            let v = match value {
                "NaN" => f64::NAN,
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|e| panic!("value of {line}: {e}")),
            };
            values.insert((name, labels), v);
        }
        Metrics { values, types }
    }

    fn names(&self) -> BTreeSet<String> {
        self.values.keys().map(|(n, _)| n.clone()).collect()
    }

    /// The value of the one series `name` whose labels include `want`.
    fn get(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .values
            .iter()
            .filter(|((n, l), _)| n == name && want.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(found.len(), 1, "{name}{want:?}: expected one series, found {found:?}");
        found[0]
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((k, r)) = rest.split_once("=\"") {
        let mut val = String::new();
        let mut chars = r.char_indices();
        let mut end = r.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        out.insert(k.trim_start_matches(',').trim().to_string(), val);
        rest = &r[end..];
    }
    out
}

/// The exporter from scripts/setup, or a skip with the reason when it is not installed.
fn exporter_or_skip() -> Option<PathBuf> {
    let bin = exporter_binary();
    if bin.is_none() {
        eprintln!(
            "SKIPPED: prometheus-postgres-exporter is not installed (scripts/setup installs Debian's package; \
             PGSUB_POSTGRES_EXPORTER names another binary)"
        );
    }
    bin
}

/// Numbers of one subscription in pgsub.stat_subscription, as the exporter's query turns them
/// into floats (NaN for NULL).
async fn view_values(s: &Client, sub: &str) -> BTreeMap<&'static str, f64> {
    let r = s
        .query_one(
            "SELECT status, txns_applied, inserts, updates, deletes, truncates, conflicts, error_count, \
                    lag_bytes::float8, extract(epoch FROM apply_lag)::float8, tables_total, tables_ready, \
                    enabled::int, publisher_version::float8, apply_error_count, sync_error_count, \
                    confl_insert_exists, confl_update_exists, confl_update_missing, confl_delete_missing, \
                    confl_update_origin_differs, confl_delete_origin_differs, confl_multiple_unique_conflicts, \
                    txn_rate_10s, row_rate_10s, recv_bytes_rate_10s, txn_rate_1m, row_rate_1m, recv_bytes_rate_1m, \
                    recv_bytes \
             FROM pgsub.stat_subscription WHERE subname = $1",
            &[&sub],
        )
        .await
        .unwrap();
    let status: String = r.get(0);
    let mut m = BTreeMap::new();
    for (i, k) in [
        (1, "txns_applied_total"),
        (2, "inserts_total"),
        (3, "updates_total"),
        (4, "deletes_total"),
        (5, "truncates_total"),
        (6, "conflicts_total"),
        (7, "errors_total"),
        (14, "apply_errors_total"),
        (15, "sync_errors_total"),
        (16, "conflicts_insert_exists_total"),
        (17, "conflicts_update_exists_total"),
        (18, "conflicts_update_missing_total"),
        (19, "conflicts_delete_missing_total"),
        (20, "conflicts_update_origin_differs_total"),
        (21, "conflicts_delete_origin_differs_total"),
        (22, "conflicts_multiple_unique_conflicts_total"),
        (29, "received_bytes_total"),
    ] {
        m.insert(k, r.get::<_, i64>(i) as f64);
    }
    for (i, k) in [
        (23, "txns_per_second_10s"),
        (24, "rows_per_second_10s"),
        (25, "received_bytes_per_second_10s"),
        (26, "txns_per_second_1m"),
        (27, "rows_per_second_1m"),
        (28, "received_bytes_per_second_1m"),
    ] {
        m.insert(k, r.get::<_, f64>(i));
    }
    m.insert("lag_bytes", r.get::<_, Option<f64>>(8).unwrap_or(f64::NAN));
    m.insert("apply_lag_seconds", r.get::<_, Option<f64>>(9).unwrap_or(f64::NAN));
    m.insert("tables", r.get::<_, i32>(10) as f64);
    m.insert("tables_ready", r.get::<_, i32>(11) as f64);
    m.insert("enabled", r.get::<_, i32>(12) as f64);
    m.insert("publisher_version", r.get::<_, Option<f64>>(13).unwrap_or(f64::NAN));
    m.insert(if status == "streaming" { "status_streaming" } else { "status_other" }, 1.0);
    m
}

/// Every table's numbers in pgsub.stat_subscription_table, by (relname, metric suffix).
async fn table_values(s: &Client) -> BTreeMap<(String, &'static str), f64> {
    let rows = s
        .query(
            "SELECT relname::text, (sync_state = 'ready')::int::float8, inserts, updates, deletes, truncates, \
                    conflicts, confl_insert_exists, confl_update_origin_differs, confl_update_exists, \
                    confl_update_missing, confl_delete_origin_differs, confl_delete_missing, \
                    confl_multiple_unique_conflicts, rows_copied, extract(epoch FROM last_change_at)::float8 \
             FROM pgsub.stat_subscription_table WHERE subname = 'msub'",
            &[],
        )
        .await
        .unwrap();
    let mut m = BTreeMap::new();
    for r in rows {
        let rel: String = r.get(0);
        m.insert((rel.clone(), "ready"), r.get::<_, f64>(1));
        for (i, k) in [
            (2, "inserts_total"),
            (3, "updates_total"),
            (4, "deletes_total"),
            (5, "truncates_total"),
            (6, "conflicts_total"),
            (7, "conflicts_insert_exists_total"),
            (8, "conflicts_update_origin_differs_total"),
            (9, "conflicts_update_exists_total"),
            (10, "conflicts_update_missing_total"),
            (11, "conflicts_delete_origin_differs_total"),
            (12, "conflicts_delete_missing_total"),
            (13, "conflicts_multiple_unique_conflicts_total"),
            (14, "rows_copied_total"),
        ] {
            m.insert((rel.clone(), k), r.get::<_, i64>(i) as f64);
        }
        m.insert((rel, "last_change_timestamp_seconds"), r.get::<_, Option<f64>>(15).unwrap_or(f64::NAN));
    }
    m
}

fn same(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b
}

/// Every `pgsub_…` metric name in the dashboard's expressions and variable queries.
fn dashboard_metric_names(v: &serde_norway::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_norway::Value::String(s) => {
            let b = s.as_bytes();
            let mut i = 0;
            while let Some(pos) = s[i..].find("pgsub_") {
                let start = i + pos;
                let before_ok = start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
                let mut end = start;
                while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
                    end += 1;
                }
                if before_ok {
                    out.insert(s[start..end].to_string());
                }
                i = end;
            }
        }
        serde_norway::Value::Sequence(seq) => seq.iter().for_each(|x| dashboard_metric_names(x, out)),
        serde_norway::Value::Mapping(m) => {
            for (k, x) in m {
                // Titles and descriptions are prose; expressions, queries and definitions are not.
                let key = k.as_str().unwrap_or("");
                if key != "title" && key != "description" && key != "uid" && key != "legendFormat" {
                    dashboard_metric_names(x, out);
                }
            }
        }
        _ => {}
    }
}

#[tokio::test(flavor = "current_thread")]
async fn exporter_shows_the_views_values_and_the_dashboard_uses_only_its_metrics() {
    let Some(bin) = exporter_or_skip() else { return };
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u (id int PRIMARY KEY)")
            .await
            .unwrap();
    }
    p.batch_execute(
        "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g; CREATE PUBLICATION pub FOR TABLE t, u",
    )
    .await
    .unwrap();
    s.execute("SELECT pgsub.create_subscription('msub', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    wait_for_subscription_sync(&s, "msub", WAIT).await;
    // Changes of every kind, and one conflict: a row deleted on the subscriber, then updated on
    // the publisher (skipped and counted).
    s.batch_execute("DELETE FROM t WHERE id = 50").await.unwrap();
    for i in 0..5 {
        p.batch_execute(&format!(
            "INSERT INTO t SELECT g, 'n' FROM generate_series({}, {}) g",
            100 + i * 10,
            109 + i * 10
        ))
        .await
        .unwrap();
    }
    p.batch_execute("UPDATE t SET v = 'u' WHERE id <= 20; DELETE FROM t WHERE id BETWEEN 21 AND 25; UPDATE t SET v = 'x' WHERE id = 50; INSERT INTO u VALUES (1)")
        .await
        .unwrap();
    wait_value(&s, "SELECT txns_applied::text FROM pgsub.stat_subscription WHERE subname = 'msub'", "6", WAIT).await;
    wait_value(&s, "SELECT conflicts::text FROM pgsub.stat_subscription WHERE subname = 'msub'", "1", WAIT).await;

    // The exporter logs in as a monitoring role: pg_monitor is all the queries file needs.
    s.batch_execute("CREATE ROLE pgsub_exporter LOGIN IN ROLE pg_monitor").await.unwrap();
    let dsn =
        format!("host=127.0.0.1 port={} user=pgsub_exporter dbname=postgres sslmode=disable", nodes.subscriber.port());
    let exporter = Exporter::start(&bin, &dsn, nodes.subscriber.dir().join("exporter.log"));

    // Scrape until the view reads the same just before and just after the scrape (lag can move
    // with the publisher's keepalives), then every metric must equal the view's value.
    let (metrics, view) = wait_for("a scrape between two equal readings of pgsub.stat_subscription", WAIT, || async {
        let before = view_values(&s, "msub").await;
        let body = match exporter.scrape() {
            Ok(b) => b,
            Err(e) => return Err(e),
        };
        let after = view_values(&s, "msub").await;
        let m = Metrics::parse(&body);
        let stable =
            before.len() == after.len() && before.iter().all(|(k, v)| after.get(k).is_some_and(|w| same(*v, *w)));
        Ok((stable && m.names().contains("pgsub_subscription_txns_applied_total")).then_some((m, after)))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nexporter log:\n{}", exporter.log()));

    assert_eq!(metrics.get("pg_up", &[]), 1.0, "the exporter reached the subscriber");
    assert_eq!(metrics.get("pg_exporter_last_scrape_error", &[]), 0.0, "every query of the file ran");
    let sub = [("datname", "postgres"), ("subname", "msub")];
    for (k, want) in &view {
        if k.starts_with("status_") {
            continue;
        }
        let got = metrics.get(&format!("pgsub_subscription_{k}"), &sub);
        assert!(same(got, *want), "pgsub_subscription_{k}: metric {got}, view {want}");
    }
    // The values themselves, as this test made them.
    // Five INSERT transactions and one of several statements (one simple query, one transaction).
    assert_eq!(view["txns_applied_total"], 6.0);
    assert_eq!(view["inserts_total"], 51.0);
    assert_eq!(view["updates_total"], 20.0);
    assert_eq!(view["deletes_total"], 5.0);
    assert_eq!(view["conflicts_total"], 1.0);
    assert_eq!(
        view["conflicts_update_missing_total"] + view["conflicts_delete_missing_total"],
        1.0,
        "the one conflict is a missing row"
    );
    assert_eq!(view["tables"], 2.0);
    // Status: one series per status, 1 for the current one.
    assert!(view.contains_key("status_streaming"), "msub streams");
    for status in ["streaming", "error", "disabled", "waiting_for_worker", "starting"] {
        let want = if status == "streaming" { 1.0 } else { 0.0 };
        let got = metrics.get("pgsub_subscription_status", &[("subname", "msub"), ("status", status)]);
        assert_eq!(got, want, "pgsub_subscription_status{{status={status}}}");
    }
    // No error yet: the age of the last error is NaN (NULL in the view).
    assert!(metrics.get("pgsub_subscription_last_error_age_seconds", &sub).is_nan());
    // Tables by sync state, rows copied.
    assert_eq!(metrics.get("pgsub_sync_tables", &[("subname", "msub"), ("sync_state", "ready")]), 2.0);
    assert_eq!(metrics.get("pgsub_sync_tables", &[("subname", "msub"), ("sync_state", "copying")]), 0.0);
    let copied: i64 =
        one(&s, "SELECT sum(rows_copied)::int8 FROM pgsub.subscription_table WHERE subname = 'msub'").await;
    assert_eq!(copied, 50);
    assert_eq!(metrics.get("pgsub_sync_rows_copied", &[("subname", "msub"), ("sync_state", "ready")]), copied as f64);
    // Per table: every metric equals the view's value (nothing changes the tables any more).
    let tables = table_values(&s).await;
    assert_eq!(tables.len(), 2 * 15, "two tables: {tables:?}");
    for ((rel, k), want) in &tables {
        let labels =
            [("datname", "postgres"), ("subname", "msub"), ("schemaname", "public"), ("relname", rel.as_str())];
        let got = metrics.get(&format!("pgsub_table_{k}"), &labels);
        assert!(same(got, *want), "pgsub_table_{k}{{relname={rel}}}: metric {got}, view {want}");
    }
    // The values themselves: t took the copy, the changes and the conflict; u one insert.
    let t = |k: &'static str| tables[&("t".to_string(), k)];
    assert_eq!(
        [t("rows_copied_total"), t("inserts_total"), t("updates_total"), t("deletes_total"), t("conflicts_total")],
        [50.0, 50.0, 20.0, 5.0, 1.0]
    );
    assert_eq!(tables[&("u".to_string(), "inserts_total")], 1.0);
    assert!(t("last_change_timestamp_seconds") > 0.0);
    // The server-wide views (pg_monitor may read them).
    assert_eq!(metrics.get("pgsub_server_subscription_txns_applied_total", &sub), 6.0);
    assert_eq!(metrics.get("pgsub_server_subscription_status", &[("subname", "msub"), ("status", "streaming")]), 1.0);
    assert_eq!(metrics.get("pgsub_server_database_info", &[("datname", "postgres"), ("state", "running")]), 1.0);
    assert_eq!(metrics.get("pgsub_server_launcher_running", &[("datname", "postgres")]), 1.0);
    // pgsub.health through the exporter: the conflict counted since the start is a problem.
    assert_eq!(
        metrics.get("pgsub_health_problems", &[("subname", "msub"), ("problem", "conflicts"), ("severity", "warning")]),
        1.0
    );

    // Types: what the queries file declares, and counters end in _total.
    let queries: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(queries_file()).unwrap()).expect("queries file is YAML");
    let mut declared = BTreeSet::new();
    for (ns, q) in queries.as_mapping().expect("a map of queries") {
        let ns = ns.as_str().expect("query name");
        assert!(ns.starts_with("pgsub"), "{ns}: pgsub's metrics are named pgsub_…");
        for m in q["metrics"].as_sequence().expect("metrics") {
            let (col, spec) = m.as_mapping().and_then(|m| m.iter().next()).expect("one column per entry");
            let usage = spec["usage"].as_str().expect("usage");
            let name = format!("{ns}_{}", col.as_str().unwrap());
            match usage {
                "LABEL" => continue,
                "COUNTER" => assert!(name.ends_with("_total"), "{name}: a counter's name ends in _total"),
                "GAUGE" => assert!(!name.ends_with("_total"), "{name}: a gauge's name does not end in _total"),
                other => panic!("{name}: usage {other}"),
            }
            let want = if usage == "COUNTER" { "counter" } else { "gauge" };
            assert_eq!(metrics.types.get(&name).map(String::as_str), Some(want), "# TYPE of {name}");
            declared.insert(name);
        }
    }
    let exposed: BTreeSet<String> = metrics.names().into_iter().filter(|n| n.starts_with("pgsub")).collect();
    assert_eq!(exposed, declared, "the page has every metric of the queries file, and only those");

    // The dashboard: valid JSON (python3's strict parser; scripts/setup installs python3), and
    // every metric it queries is on the page.
    let path = dashboard_file();
    let check = Command::new("python3").args(["-m", "json.tool"]).arg(&path).stdout(Stdio::null()).output();
    match check {
        Ok(o) => {
            assert!(o.status.success(), "{} is not valid JSON: {}", path.display(), String::from_utf8_lossy(&o.stderr))
        }
        Err(e) => panic!("python3 -m json.tool: {e}"),
    }
    let dash: serde_norway::Value = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(dash["panels"].as_sequence().is_some_and(|p| p.len() >= 10), "the dashboard has its panels");
    let mut used = BTreeSet::new();
    dashboard_metric_names(&dash, &mut used);
    assert!(used.len() >= 15, "the dashboard queries pgsub's metrics: {used:?}");
    let missing: Vec<&String> = used.iter().filter(|n| !metrics.names().contains(*n)).collect();
    assert!(missing.is_empty(), "the dashboard refers to metrics the exporter does not have: {missing:?}");

    // The conflict left row 50 missing on the subscriber: put it back as the publisher has it.
    s.batch_execute("INSERT INTO t VALUES (50, 'x')").await.unwrap();
    assert_replicated_equal(&p, &s).await;
}

/// The server's message of a failed statement.
fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string())
}

/// The rows of `sql` (subname, problem, severity, detail, since IS NOT NULL) as text.
async fn health(s: &Client, sql: &str) -> Vec<(String, String, String, String, bool)> {
    s.query(&format!("SELECT subname, problem, severity, detail, since IS NOT NULL FROM {sql}"), &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", db_message(&e)))
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get::<_, Option<String>>(3).unwrap_or_default(), r.get(4)))
        .collect()
}

async fn has_problem(s: &Client, sql: &str, sub: &str, problem: &str) -> bool {
    health(s, sql).await.iter().any(|r| r.0 == sub && r.1 == problem)
}

/// Waits until `sql` lists `problem` for `sub` and returns that row.
async fn wait_problem(s: &Client, sql: &str, sub: &str, problem: &str) -> (String, String, String, String, bool) {
    wait_for(&format!("{problem} of {sub} in {sql}"), WAIT, || async {
        Ok(health(s, sql).await.into_iter().find(|r| r.0 == sub && r.1 == problem))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "current_thread")]
async fn health_raises_each_problem_it_documents() {
    // One apply worker for the whole server: the second subscription waits for it.
    let sub_opts = ClusterOpts::subscriber().with_conf("pgsub.max_apply_workers = 1");
    let mut nodes = TwoNodes::start_with(ClusterOpts::publisher(), sub_opts).expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE w (id int PRIMARY KEY)")
            .await
            .unwrap();
    }
    p.batch_execute("INSERT INTO t SELECT g, 'v' FROM generate_series(1, 100) g; CREATE PUBLICATION pub FOR TABLE t; CREATE PUBLICATION pubw FOR TABLE w")
        .await
        .unwrap();
    s.execute("SELECT pgsub.create_subscription('hsub', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    wait_for_subscription_sync(&s, "hsub", WAIT).await;
    // A healthy subscription: no problem, at the defaults or when any failure would count at once.
    assert_eq!(health(&s, "pgsub.health").await, vec![]);
    assert_eq!(health(&s, "pgsub.check_health(error_minutes => 0)").await, vec![]);
    // Thresholds that cannot mean anything are refused, not taken silently.
    for (args, says) in [
        ("error_minutes => -1", "must not be negative"),
        ("lag_bytes => -5", "must not be negative"),
        ("conflicts_seen => '[1, 2]'", "must be a JSON object"),
        ("conflicts_seen => '{\"hsub\": \"many\"}'", "the value of \"hsub\" is not a number"),
        ("publisher_timeout => '0'", "publisher_timeout must be positive"),
        ("lock_wait => '-1 second'", "must not be negative"),
    ] {
        let (code, text) =
            must_fail(&s, &format!("SELECT * FROM pgsub.check_health({args})"), &[]).await.code_and_text();
        assert_eq!(code, "22023", "{args}: {text}");
        assert!(text.contains(says), "{args}: {text}");
    }
    // A monitoring role may read it; a plain role may not.
    s.batch_execute("CREATE ROLE mon LOGIN IN ROLE pg_monitor; CREATE ROLE plain LOGIN").await.unwrap();
    let mon = nodes.subscriber.client_as("mon", "postgres").await.unwrap();
    assert_eq!(health(&mon, "pgsub.health").await, vec![]);
    let plain = nodes.subscriber.client_as("plain", "postgres").await.unwrap();
    let err = plain.query("SELECT * FROM pgsub.health", &[]).await.expect_err("plain role refused");
    assert!(db_message(&err).contains("permission denied"), "{err:?}");
    let err = plain.query("SELECT * FROM pgsub.publisher_slots()", &[]).await.expect_err("plain role refused");
    assert!(db_message(&err).contains("permission denied"), "{err:?}");

    // lag and slot_retains_wal: the worker is held back by a lock on its table while the
    // publisher writes one large transaction, which the slot must keep.
    let blocker = nodes.subscriber.client("postgres").await.unwrap();
    blocker.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let wal_before: String = one(&p, "SELECT pg_current_wal_lsn()::text").await;
    p.batch_execute("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1001, 21000) g").await.unwrap();
    let written: i64 = one(&p, &format!("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{wal_before}')::int8")).await;
    wait_value(
        &s,
        "SELECT (lag_bytes > 1000000)::text FROM pgsub.stat_subscription WHERE subname = 'hsub'",
        "true",
        WAIT,
    )
    .await;
    let lag = wait_problem(&s, "pgsub.check_health(lag_bytes => 1000000)", "hsub", "lag").await;
    assert_eq!(lag.2, "warning");
    assert!(lag.3.contains("lag_bytes") && lag.3.contains("threshold 1000000"), "{}", lag.3);
    assert!(!has_problem(&s, "pgsub.health", "hsub", "lag").await, "1 GB is not reached");
    let retained: i64 =
        one(&s, "SELECT retained_wal_bytes FROM pgsub.publisher_slots() WHERE slot_name = 'hsub'").await;
    assert!(retained >= written, "the slot retains the unapplied transaction: {retained} < {written} bytes");
    // Its worker streams it (held inside a transaction): the slot is active (it read false always).
    assert!(one::<bool>(&s, "SELECT active FROM pgsub.publisher_slots() WHERE slot_name = 'hsub'").await);
    let slot = wait_problem(
        &s,
        &format!("pgsub.check_health(retained_wal_bytes => {})", written / 2),
        "hsub",
        "slot_retains_wal",
    )
    .await;
    assert_eq!(slot.2, "warning");
    assert!(slot.3.contains("slot hsub") && slot.3.contains("wal_status"), "{}", slot.3);
    assert!(!has_problem(&s, "pgsub.health", "hsub", "slot_retains_wal").await, "10 GB is not reached");
    // The monitoring role sees the same (it reads the publisher through the function).
    assert!(
        has_problem(
            &mon,
            &format!("pgsub.check_health(retained_wal_bytes => {})", written / 2),
            "hsub",
            "slot_retains_wal"
        )
        .await
    );
    blocker.batch_execute("ROLLBACK").await.unwrap();
    wait_value(&s, "SELECT lag_bytes::text FROM pgsub.stat_subscription WHERE subname = 'hsub'", "0", WAIT).await;
    assert!(!has_problem(&s, "pgsub.check_health(lag_bytes => 1000000)", "hsub", "lag").await, "caught up");

    // error: a unique violation stops apply; with error_minutes => 0 it is a problem at once,
    // at the default 5 minutes not yet. It goes away once a transaction applies again.
    s.batch_execute("INSERT INTO t VALUES (-1, 'local')").await.unwrap();
    let errors0: i64 = one(&s, "SELECT error_count FROM pgsub.stat_subscription WHERE subname = 'hsub'").await;
    let t0: String = one(&s, "SELECT now()::text").await;
    p.batch_execute("INSERT INTO t VALUES (-1, 'remote')").await.unwrap();
    wait_for_subscription_error(&s, "hsub", &["(id)=(-1)"], WAIT).await;
    // A few failed runs (the first restart comes at once: the worker had run for long).
    wait_value(
        &s,
        &format!("SELECT (error_count >= {errors0} + 3)::text FROM pgsub.stat_subscription WHERE subname = 'hsub'"),
        "true",
        WAIT,
    )
    .await;
    let e = wait_problem(&s, "pgsub.check_health(error_minutes => 0)", "hsub", "error").await;
    assert_eq!(e.2, "critical");
    // The first attempt's unique violation, or a retry's conflict report (worker/conflict/).
    assert!(e.3.contains("duplicate key") || e.3.contains("conflict=insert_exists"), "{}", e.3);
    assert!(e.4, "since: the estimated start of the failures");
    let since_ok: bool = one(
        &s,
        "SELECT bool_and(h.since <= s.last_error_at) FROM pgsub.check_health(error_minutes => 0) h \
         JOIN pgsub.stat_subscription s USING (subname) WHERE h.problem = 'error'",
    )
    .await;
    assert!(since_ok, "the streak began no later than the last error");
    // Nor before the change that fails was sent (the streak's first failure is its start).
    let not_early: bool = one(
        &s,
        &format!(
            "SELECT bool_and(h.since >= '{t0}'::timestamptz) FROM pgsub.check_health(error_minutes => 0) h \
             WHERE h.subname = 'hsub' AND h.problem = 'error'"
        ),
    )
    .await;
    assert!(not_early, "the streak's start is its first failure, not earlier");
    assert!(!has_problem(&s, "pgsub.health", "hsub", "error").await, "not failing for 5 minutes yet");
    s.batch_execute("DELETE FROM t WHERE id = -1").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = -1", "remote", WAIT).await;
    p.batch_execute("INSERT INTO t VALUES (-2, 'after')").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = -2", "after", WAIT).await;
    assert!(!has_problem(&s, "pgsub.check_health(error_minutes => 0)", "hsub", "error").await, "recovered");

    // conflicts: a row missing locally for an UPDATE. Reported while the count is above the one
    // given in conflicts_seen.
    let before: i64 = one(&s, "SELECT conflicts FROM pgsub.stat_subscription WHERE subname = 'hsub'").await;
    s.batch_execute("DELETE FROM t WHERE id = 7").await.unwrap();
    p.batch_execute("UPDATE t SET v = 'changed' WHERE id = 7").await.unwrap();
    let conflicts: i64 = wait_for("a conflict counted for hsub", WAIT, || async {
        let n: i64 = one(&s, "SELECT conflicts FROM pgsub.stat_subscription WHERE subname = 'hsub'").await;
        Ok((n > before).then_some(n))
    })
    .await
    .unwrap();
    let c = wait_problem(&s, "pgsub.health", "hsub", "conflicts").await;
    assert_eq!(c.2, "warning");
    assert!(c.3.starts_with(&format!("{conflicts} conflicts")), "{}", c.3);
    let seen = |n: i64| format!("pgsub.check_health(conflicts_seen => '{{\"hsub\": {n}}}')");
    assert!(!has_problem(&s, &seen(conflicts), "hsub", "conflicts").await, "no conflict since the count given");
    assert!(has_problem(&s, &seen(conflicts - 1), "hsub", "conflicts").await, "one more than the count given");
    assert!(has_problem(&s, "pgsub.check_health(conflicts_seen => '{\"other\": 99}')", "hsub", "conflicts").await);
    // Put the row back on the subscriber as the publisher has it (the conflict left it missing).
    s.batch_execute("INSERT INTO t VALUES (7, 'changed')").await.unwrap();

    // publisher_unreachable: the publisher is down; the check answers (connect_timeout), with a
    // row instead of an error. slot_missing: the slot is gone from the publisher.
    nodes.publisher.stop("fast").expect("stop publisher");
    let u = wait_problem(&s, "pgsub.check_health(publisher_timeout => '2s')", "hsub", "publisher_unreachable").await;
    assert_eq!(u.2, "warning");
    assert!(u.3.contains("could not connect"), "{}", u.3);
    nodes.publisher.start_again().expect("start publisher");
    let p = nodes.publisher.client("postgres").await.unwrap();
    wait_for_subscription_sync(&s, "hsub", WAIT).await;
    s.batch_execute("SELECT pgsub.disable_subscription('hsub')").await.unwrap();
    wait_value(&p, "SELECT active::text FROM pg_replication_slots WHERE slot_name = 'hsub'", "false", WAIT).await;
    p.batch_execute("SELECT pg_drop_replication_slot('hsub')").await.unwrap();
    // Disabled subscriptions are not read on the publisher.
    assert!(!has_problem(&s, "pgsub.health", "hsub", "slot_missing").await);
    s.batch_execute("SELECT pgsub.enable_subscription('hsub')").await.unwrap();
    let m = wait_problem(&s, "pgsub.health", "hsub", "slot_missing").await;
    assert_eq!(m.2, "critical");
    assert!(m.3.contains("\"hsub\" does not exist"), "{}", m.3);
    // The slot back, nothing written meanwhile: the subscription goes on from where it was.
    p.batch_execute("SELECT pg_create_logical_replication_slot('hsub', 'pgoutput')").await.unwrap();
    wait_for_subscription_sync(&s, "hsub", WAIT).await;
    p.batch_execute("INSERT INTO t VALUES (-3, 'slot back')").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = -3", "slot back", WAIT).await;
    assert!(!has_problem(&s, "pgsub.health", "hsub", "slot_missing").await);

    // waiting_for_worker: the second subscription finds no apply worker slot.
    s.execute(
        "SELECT pgsub.create_subscription('hwait', $1, ARRAY['pubw'], copy_data => false)",
        &[&nodes.pub_conninfo()],
    )
    .await
    .expect("create hwait");
    let wt = wait_problem(&s, "pgsub.health", "hwait", "waiting_for_worker").await;
    assert_eq!(wt.2, "warning");
    assert!(wt.4, "since: when it began to wait");
    p.batch_execute("INSERT INTO w VALUES (1)").await.unwrap();
    // Freed: hsub is disabled (it is caught up), hwait gets the worker and the problem goes.
    s.batch_execute("SELECT pgsub.disable_subscription('hsub')").await.unwrap();
    wait_for_subscription_sync(&s, "hwait", WAIT).await;
    wait_value(&s, "SELECT count(*)::text FROM w", "1", WAIT).await;
    assert!(!has_problem(&s, "pgsub.health", "hwait", "waiting_for_worker").await);

    assert_replicated_equal(&p, &s).await;
}

/// The two problems a subscription's own status does not show: a table whose synchronization
/// fails at every attempt (its sync worker retries; the subscription stays `initial_copy`, its
/// apply worker healthy), `table_error`; and a subscription `disable_on_error` stopped,
/// `disabled_by_error`, until it is enabled — not one disabled by hand. (Both were silent.)
#[tokio::test(flavor = "current_thread")]
async fn health_names_a_failing_table_copy_and_a_subscription_stopped_by_disable_on_error() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    p.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").await.unwrap();
    // The subscriber's table has a NOT NULL column the publisher does not fill: the copy fails.
    s.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text, must int NOT NULL)").await.unwrap();
    p.batch_execute("INSERT INTO t SELECT g, 'v' FROM generate_series(1, 10) g; CREATE PUBLICATION pub FOR TABLE t")
        .await
        .unwrap();
    s.execute("SELECT pgsub.create_subscription('hs', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    let te = wait_problem(&s, "pgsub.check_health(error_minutes => 0)", "hs", "table_error").await;
    assert_eq!(te.2, "critical");
    assert!(te.3.starts_with("table public.t: ") && te.3.contains("\"must\""), "{}", te.3);
    assert!(te.4, "since: the estimated start of the failures");
    assert!(!has_problem(&s, "pgsub.health", "hs", "table_error").await, "not failing for 5 minutes yet");
    assert!(!has_problem(&s, "pgsub.check_health(error_minutes => 0)", "hs", "error").await, "the apply worker runs");
    // The table's error text (it can quote row values) is the owner's, pgsub_admin's and
    // pg_read_all_stats's: a plain role gets NULL from the view and from the function behind it.
    s.batch_execute("CREATE ROLE plain LOGIN").await.unwrap();
    let plain = nodes.subscriber.client_as("plain", "postgres").await.unwrap();
    let sql = "SELECT count(*) FILTER (WHERE last_error IS NOT NULL) FROM pgsub._sync_progress() WHERE failures > 0";
    assert!(one::<i64>(&s, sql).await > 0, "the superuser reads the table's error");
    assert_eq!(one::<i64>(&plain, sql).await, 0, "a plain role reads the table's error");
    let rows: i64 = one(&plain, "SELECT count(*) FROM pgsub._sync_progress() WHERE failures > 0").await;
    assert!(rows > 0, "a plain role sees the table's failures");
    let sql = "SELECT count(*) FROM pgsub.subscription_table WHERE last_error IS NOT NULL";
    assert_eq!(one::<i64>(&plain, sql).await, 0, "a plain role reads it in subscription_table");
    s.batch_execute("GRANT pg_read_all_stats TO plain").await.unwrap();
    assert!(one::<i64>(&plain, sql).await > 0, "pg_read_all_stats reads the table's error");
    s.batch_execute("ALTER TABLE t ALTER COLUMN must DROP NOT NULL").await.unwrap();
    wait_for_subscription_sync(&s, "hs", WAIT).await;
    assert!(!has_problem(&s, "pgsub.check_health(error_minutes => 0)", "hs", "table_error").await, "copied");

    // disable_on_error: a row the subscriber has already stops apply and disables it.
    s.batch_execute("SELECT pgsub.alter_subscription_options('hs', disable_on_error => true)").await.unwrap();
    s.batch_execute("INSERT INTO t VALUES (-1, 'local')").await.unwrap();
    p.batch_execute("INSERT INTO t VALUES (-1, 'remote')").await.unwrap();
    wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'hs'", "disabled", WAIT).await;
    let d = wait_problem(&s, "pgsub.health", "hs", "disabled_by_error").await;
    assert_eq!(d.2, "critical");
    assert!(d.3.starts_with("disabled by disable_on_error at ") && d.3.contains("insert_exists"), "{}", d.3);
    assert!(d.4, "since: when it was disabled");
    // Disabled again by hand: still stopped by that error. Fixed and enabled: gone. Then
    // disabled by hand: no problem.
    s.batch_execute("SELECT pgsub.disable_subscription('hs')").await.unwrap();
    assert!(has_problem(&s, "pgsub.health", "hs", "disabled_by_error").await, "still stopped by the error");
    s.batch_execute("DELETE FROM t WHERE id = -1; SELECT pgsub.enable_subscription('hs')").await.unwrap();
    assert!(!has_problem(&s, "pgsub.health", "hs", "disabled_by_error").await, "enabled");
    wait_value(&s, "SELECT v FROM t WHERE id = -1", "remote", WAIT).await;
    s.batch_execute("SELECT pgsub.disable_subscription('hs')").await.unwrap();
    assert!(!has_problem(&s, "pgsub.health", "hs", "disabled_by_error").await, "disabled by hand");
    s.batch_execute("ALTER TABLE t DROP COLUMN must").await.unwrap();
    assert_replicated_equal(&p, &s).await;
}

/// A remote change that waits for a row a local session holds — and then a prepared transaction
/// here, which `pg_blocking_pids` gives as pid 0 — shows nothing else: the status stays
/// `streaming`, nothing fails. Health's `lock_wait` names the waiting worker, the lock, the
/// session (pid, user, application) and then the prepared transaction by its gid, once the wait
/// has lasted `lock_wait`; ending the holder lets apply go on and the problem goes.
#[tokio::test(flavor = "current_thread")]
async fn health_names_what_an_apply_worker_waits_for() {
    let nodes = TwoNodes::start_with(
        ClusterOpts::publisher(),
        ClusterOpts::subscriber().with_conf("max_prepared_transactions = 10"),
    )
    .expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").await.unwrap();
    }
    p.batch_execute("INSERT INTO t SELECT g, 'v' FROM generate_series(1, 10) g; CREATE PUBLICATION pub FOR TABLE t")
        .await
        .unwrap();
    s.execute("SELECT pgsub.create_subscription('lw', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    wait_for_subscription_sync(&s, "lw", WAIT).await;
    let any_wait = "pgsub.check_health(lock_wait => '0')";
    assert!(!has_problem(&s, any_wait, "lw", "lock_wait").await, "nothing waits yet");

    // A local session holds row 1; the publisher updates it.
    let holder = nodes.subscriber.client("postgres").await.unwrap();
    holder
        .batch_execute("SET application_name = 'row holder'; BEGIN; UPDATE t SET v = 'local' WHERE id = 1")
        .await
        .unwrap();
    let holder_pid: i32 = one(&holder, "SELECT pg_backend_pid()").await;
    p.batch_execute("UPDATE t SET v = 'remote' WHERE id = 1").await.unwrap();
    let w = wait_problem(&s, any_wait, "lw", "lock_wait").await;
    assert_eq!(w.2, "warning");
    assert!(w.4, "since: when the wait began");
    let worker: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'lw'").await;
    assert!(w.3.starts_with(&format!("apply worker (pid {worker}) has waited since ")), "{}", w.3);
    assert!(
        w.3.contains(&format!(
            "held by pid {holder_pid} (user postgres, application 'row holder', idle in transaction"
        )),
        "{}",
        w.3
    );
    assert!(!w.3.contains("PREPARED"), "{}", w.3);
    assert!(!has_problem(&s, "pgsub.health", "lw", "lock_wait").await, "waited less than a minute");
    let status: String = one(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'lw'").await;
    assert_eq!(status, "streaming", "nothing else shows the wait");

    // The session prepares its transaction and goes: the row stays held, by a prepared
    // transaction now.
    holder.batch_execute("PREPARE TRANSACTION 'held here'").await.unwrap();
    drop(holder);
    let w = wait_for("lock_wait naming the prepared transaction", WAIT, || async {
        Ok(health(&s, any_wait)
            .await
            .into_iter()
            .find(|r| r.0 == "lw" && r.1 == "lock_wait" && r.3.contains("prepared transaction 'held here'")))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        w.3.ends_with("COMMIT PREPARED or ROLLBACK PREPARED it, connected to its database, to let apply go on"),
        "{}",
        w.3
    );
    assert_eq!(one::<String>(&s, "SELECT v FROM t WHERE id = 1").await, "v", "not applied while held");

    s.batch_execute("ROLLBACK PREPARED 'held here'").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 1", "remote", WAIT).await;
    assert!(!has_problem(&s, any_wait, "lw", "lock_wait").await, "no longer waiting");
    assert_replicated_equal(&p, &s).await;
}

/// Sends SIGCONT to a stopped process when dropped (a failed assertion must not leave a worker
/// stopped: the cluster could not shut down).
struct Continue(i32);

impl Drop for Continue {
    fn drop(&mut self) {
        // SAFETY: a signal to a pid of the test's cluster.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// A worker that no longer wakes — stopped with SIGSTOP here, as a hang would leave it — showed
/// `streaming`, `lag_bytes` 0 and `apply_lag` 0 on an idle publisher, and health nothing, while
/// nothing was applied. Health's `stalled` names it once it has shown no sign of life for
/// `stalled` (an idle worker wakes each second and is never named), and the problem goes when
/// it runs again.
#[tokio::test(flavor = "current_thread")]
async fn health_names_a_worker_that_no_longer_wakes() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").await.unwrap();
    }
    p.batch_execute("INSERT INTO t SELECT g, 'v' FROM generate_series(1, 10) g; CREATE PUBLICATION pub FOR TABLE t")
        .await
        .unwrap();
    s.execute("SELECT pgsub.create_subscription('st', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    wait_for_subscription_sync(&s, "st", WAIT).await;
    let quick = "pgsub.check_health(stalled => '3 seconds')";
    // Idle for longer than the threshold: an idle worker still shows signs of life.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!has_problem(&s, quick, "st", "stalled").await, "an idle worker is not stalled");

    let pid: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'st'").await;
    // SAFETY: a signal to the cluster's apply worker.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP {pid}");
    let stopped = Continue(pid);
    let w = wait_problem(&s, quick, "st", "stalled").await;
    assert_eq!(w.2, "warning");
    assert!(w.4, "since: its last sign of life");
    assert!(w.3.starts_with(&format!("apply worker (pid {pid}) has shown no sign of life since ")), "{}", w.3);
    assert!(w.3.contains("its last wait event: "), "{}", w.3);
    let status: String = one(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'st'").await;
    assert_eq!(status, "streaming", "the view alone does not show it");
    assert!(!has_problem(&s, "pgsub.health", "st", "stalled").await, "stopped for less than the default minute");
    let bad = s.query("SELECT * FROM pgsub.check_health(stalled => '-1 second')", &[]).await;
    assert!(bad.is_err(), "a negative threshold is refused");

    // Running again: the problem goes and changes are applied.
    drop(stopped);
    p.batch_execute("INSERT INTO t VALUES (11, 'after')").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM t", "11", WAIT).await;
    wait_for("stalled to go", WAIT, || async { Ok((!has_problem(&s, quick, "st", "stalled").await).then_some(())) })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_replicated_equal(&p, &s).await;
}

/// `pg_log_backend_memory_contexts()` of an idle apply worker is answered at once, as native's
/// worker answers it: a pgsub worker waits on its latch and socket, not in CHECK_FOR_INTERRUPTS,
/// and logged its memory contexts only when a change next reached it (minutes later, or never
/// on an idle publisher).
#[tokio::test(flavor = "current_thread")]
async fn an_idle_worker_logs_its_memory_contexts_when_asked() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").await.unwrap();
    }
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('mc', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    wait_for_subscription_sync(&s, "mc", WAIT).await;
    // Idle: its table ready and nothing more to do (the time only makes it idle; the assertion
    // below waits for the log line).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'mc'").await;
    assert!(one::<bool>(&s, &format!("SELECT pg_log_backend_memory_contexts({pid})")).await);
    let line = format!("logging memory contexts of PID {pid}");
    wait_for("the idle worker's memory contexts in the log", Duration::from_secs(10), || async {
        Ok(nodes.subscriber.log().contains(&line).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_replicated_equal(&p, &s).await;
}

/// Idle workers show in `pg_stat_activity` the wait events native's show for the same waits —
/// the apply worker `Activity` / `LogicalApplyMain`, the launcher and supervisor `Activity` /
/// `LogicalLauncherMain` — side by side with a native subscription of the same publisher on the
/// same server, so that what a DBA watches reads the same (they all showed `Extension`); and
/// `pgsub.stat_subscription_workers` has a row per worker with native `pg_stat_subscription`'s
/// columns (17+'s), the apply worker's positions filled as native fills them.
#[tokio::test(flavor = "current_thread")]
async fn idle_workers_show_natives_wait_events_and_a_row_each_as_pg_stat_subscription() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE n (id int PRIMARY KEY)").await.unwrap();
    }
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t; CREATE PUBLICATION npub FOR TABLE n").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('we', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    s.batch_execute(&format!(
        "CREATE SUBSCRIPTION nat CONNECTION '{}' PUBLICATION npub",
        nodes.pub_conninfo().replace('\'', "''")
    ))
    .await
    .expect("native subscription");
    wait_for_subscription_sync(&s, "we", WAIT).await;
    wait_value(&s, "SELECT bool_and(srsubstate = 'r')::text FROM pg_subscription_rel", "true", WAIT).await;
    p.batch_execute("INSERT INTO t SELECT generate_series(1, 100); INSERT INTO n SELECT generate_series(1, 100)")
        .await
        .unwrap();
    wait_value(&s, "SELECT (SELECT count(*) FROM t) + (SELECT count(*) FROM n)", "200", WAIT).await;
    let waits = |types: &str| {
        format!(
            "SELECT string_agg(DISTINCT backend_type || ': ' || coalesce(wait_event_type || ' / ' || wait_event, 'none'), \
                               ', ' ORDER BY backend_type || ': ' || coalesce(wait_event_type || ' / ' || wait_event, 'none')) \
             FROM pg_stat_activity WHERE backend_type IN ({types})"
        )
    };
    // Native 15/16 call the apply worker `logical replication worker`, 17+ `logical replication
    // apply worker`.
    let apply = one::<String>(
        &s,
        "SELECT CASE WHEN current_setting('server_version_num')::int >= 170000 \
                                   THEN 'logical replication apply worker' ELSE 'logical replication worker' END",
    )
    .await;
    wait_value(
        &s,
        &waits(&format!("'pgsub apply worker', '{apply}'")),
        &format!("{apply}: Activity / LogicalApplyMain, pgsub apply worker: Activity / LogicalApplyMain"),
        WAIT,
    )
    .await;
    wait_value(
        &s,
        &waits("'pgsub launcher', 'pgsub supervisor', 'logical replication launcher'"),
        "logical replication launcher: Activity / LogicalLauncherMain, pgsub launcher: Activity / LogicalLauncherMain, \
         pgsub supervisor: Activity / LogicalLauncherMain",
        WAIT,
    )
    .await;
    // The per-worker view: native 17+'s columns, in its order.
    let columns = |rel: &str| {
        format!(
            "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute \
             WHERE attrelid = '{rel}'::regclass AND attnum > 0 AND NOT attisdropped"
        )
    };
    let ours: String = one(&s, &columns("pgsub.stat_subscription_workers")).await;
    assert_eq!(
        ours,
        "subid,subname,worker_type,pid,leader_pid,relid,received_lsn,last_msg_send_time,last_msg_receipt_time,\
         latest_end_lsn,latest_end_time"
    );
    if one::<i32>(&s, "SELECT current_setting('server_version_num')::int").await >= 170000 {
        assert_eq!(ours, one::<String>(&s, &columns("pg_stat_subscription")).await, "native's columns");
    }
    let apply_pid: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'we'").await;
    // The positions native shows for an idle apply worker: its last keepalive's WAL end and
    // time, and what it received.
    wait_value(
        &s,
        &format!(
            "SELECT format('%s %s %s %s', worker_type, pid = {apply_pid}, leader_pid IS NULL AND relid IS NULL, \
                    received_lsn IS NOT NULL AND latest_end_lsn IS NOT NULL AND latest_end_time IS NOT NULL \
                    AND last_msg_send_time IS NOT NULL AND last_msg_receipt_time IS NOT NULL) \
             FROM pgsub.stat_subscription_workers WHERE subname = 'we'"
        ),
        "apply t t t",
        WAIT,
    )
    .await;
    let native_filled: bool = one(
        &s,
        "SELECT received_lsn IS NOT NULL AND latest_end_lsn IS NOT NULL AND latest_end_time IS NOT NULL \
         FROM pg_stat_subscription WHERE subname = 'nat'",
    )
    .await;
    assert!(native_filled, "native fills the same columns");
    s.batch_execute("DROP SUBSCRIPTION nat").await.expect("drop the native subscription");
    assert_replicated_equal(&p, &s).await;
}

/// A worker that connects behind a backlog of WAL it receives nothing from (changes to tables it
/// does not subscribe) shows that backlog as lag at once: the publisher's WAL end is taken from
/// IDENTIFY_SYSTEM when it connects, not only from the changes and keepalives that come later
/// (the walsender sends nothing while it decodes such a backlog).
#[tokio::test(flavor = "current_thread")]
async fn lag_counts_a_backlog_of_unreceived_wal_from_the_start() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.unwrap();
    p.batch_execute(
        "CREATE TABLE small (id int PRIMARY KEY); CREATE TABLE other (id int, pad text);
         CREATE PUBLICATION pub FOR TABLE small",
    )
    .await
    .unwrap();
    s.batch_execute("CREATE TABLE small (id int PRIMARY KEY)").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('s', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "s", WAIT).await;
    s.execute("SELECT pgsub.disable_subscription('s')", &[]).await.unwrap();
    wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 's'", "disabled", WAIT).await;
    p.batch_execute("INSERT INTO other SELECT g, repeat('x', 400) FROM generate_series(1, 400000) g").await.unwrap();
    p.batch_execute("INSERT INTO small VALUES (1)").await.unwrap();
    let end: String = one(&p, "SELECT pg_current_wal_lsn()::text").await;
    s.execute("SELECT pgsub.enable_subscription('s')", &[]).await.unwrap();
    // The first moment the worker shows a position of the publisher's, that position is the
    // publisher's WAL end when it connected: the whole backlog.
    let seen: (String, i64, i64) = wait_for("the worker's first publisher position", WAIT, || async {
        let r = s
            .query_opt(
                "SELECT publisher_wal_end::text, coalesce(lag_bytes, -1), (SELECT count(*) FROM small) \
                 FROM pgsub.stat_subscription WHERE subname = 's' AND publisher_wal_end IS NOT NULL \
                   AND pid IS NOT NULL AND status <> 'connecting' AND publisher_wal_end > applied_lsn",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(r.map(|r| (r.get(0), r.get(1), r.get(2))))
    })
    .await
    .unwrap();
    let ge: bool = one(&p, &format!("SELECT '{}'::pg_lsn >= '{end}'::pg_lsn", seen.0)).await;
    assert!(ge, "publisher_wal_end {} is the WAL end at connect ({end}) or later", seen.0);
    assert!(seen.1 > 50_000_000 || seen.2 == 1, "lag_bytes {} counts the backlog while it is decoded", seen.1);
    wait_value(&s, "SELECT count(*) FROM small", "1", WAIT).await;
    wait_value(&s, "SELECT lag_bytes FROM pgsub.stat_subscription WHERE subname = 's'", "0", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// Apply slower than the publisher writes (a replica trigger that sleeps): the walsender waits on
/// the socket and reports nothing past what it sent, so only the worker's probe of the
/// publisher's WAL position (`pgsub.lag_probe_interval`) shows the backlog still in the
/// publisher's WAL as `lag_bytes` (it stayed at a few kB without it, while the slot was megabytes
/// behind); once caught up it is 0 again.
#[tokio::test(flavor = "current_thread")]
async fn lag_counts_the_publishers_wal_while_apply_is_slower_than_the_publisher() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.unwrap();
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, pad text)";
    p.batch_execute(&format!("{ddl}; CREATE PUBLICATION pub FOR TABLE t")).await.unwrap();
    s.batch_execute(&format!(
        "{ddl};
         CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN PERFORM pg_sleep(0.008); RETURN NEW; END$$;
         CREATE TRIGGER slow BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION slow();
         ALTER TABLE t ENABLE ALWAYS TRIGGER slow"
    ))
    .await
    .unwrap();
    s.batch_execute("ALTER SYSTEM SET pgsub.lag_probe_interval = '1s'").await.unwrap();
    s.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('slow', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "slow", WAIT).await;
    // 1500 transactions of one row each (about 1.5 kB of WAL apiece), written in about a second.
    let txns: String = (1..=1500)
        .map(|i| {
            format!(
                "BEGIN; INSERT INTO t SELECT {i}, string_agg(md5({i}::text || k::text), '') FROM generate_series(1, 45) k; COMMIT;"
            )
        })
        .collect();
    p.batch_execute(&txns).await.unwrap();
    let lag: i64 = wait_for("lag_bytes above 500 kB while the worker is behind", WAIT, || async {
        let r = s
            .query_one(
                "SELECT coalesce(lag_bytes, 0), (SELECT count(*) FROM t) FROM pgsub.stat_subscription WHERE subname = 'slow'",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        let (lag, rows): (i64, i64) = (r.get(0), r.get(1));
        if rows == 1500 {
            return Err(format!("caught up without ever showing the lag (last lag_bytes {lag})"));
        }
        Ok((lag > 500_000).then_some(lag))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("lag_bytes {lag} while behind");
    wait_value(&s, "SELECT count(*) FROM t", "1500", WAIT).await;
    wait_value(&s, "SELECT lag_bytes FROM pgsub.stat_subscription WHERE subname = 'slow'", "0", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// A slot past the publisher's `max_slot_wal_keep_size` (`unreserved`: its next checkpoint may
/// remove WAL the subscription still needs) and a slot that checkpoint made `lost` are critical
/// `slot_retains_wal` problems at the default thresholds, however little WAL they retain.
#[tokio::test(flavor = "current_thread")]
async fn health_reports_a_slot_the_publisher_may_lose_or_has_lost() {
    let pub_opts = ClusterOpts::publisher().with_conf("max_slot_wal_keep_size = '1MB'");
    let nodes = TwoNodes::start_with(pub_opts, ClusterOpts::subscriber()).expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").await.unwrap();
    }
    p.batch_execute("INSERT INTO t VALUES (1, 'one'); CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('lsub', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    wait_for_subscription_sync(&s, "lsub", WAIT).await;
    assert_eq!(health(&s, "pgsub.health").await, vec![]);

    // The worker is held back by a lock on its table while the publisher writes more WAL than
    // max_slot_wal_keep_size.
    let blocker = nodes.subscriber.client("postgres").await.unwrap();
    blocker.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await.unwrap();
    p.batch_execute("INSERT INTO t VALUES (2, 'two')").await.unwrap();
    for _ in 0..3 {
        p.batch_execute("CREATE TEMP TABLE junk AS SELECT g FROM generate_series(1, 20000) g; DROP TABLE junk; SELECT pg_switch_wal()")
            .await
            .unwrap();
    }
    wait_value(&p, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'lsub'", "unreserved", WAIT).await;
    let u = wait_problem(&s, "pgsub.health", "lsub", "slot_retains_wal").await;
    assert_eq!(u.2, "critical", "{}", u.3);
    assert!(u.3.contains("wal_status unreserved") && u.3.contains("max_slot_wal_keep_size"), "{}", u.3);

    // The publisher's checkpoint removes that WAL: the slot is lost.
    p.batch_execute("CHECKPOINT").await.unwrap();
    wait_value(&p, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'lsub'", "lost", WAIT).await;
    let l = wait_for("the lost slot in pgsub.health", WAIT, || async {
        Ok(health(&s, "pgsub.health").await.into_iter().find(|r| r.1 == "slot_retains_wal" && r.3.contains("is lost")))
    })
    .await
    .unwrap();
    assert_eq!((l.0.as_str(), l.2.as_str()), ("lsub", "critical"), "{}", l.3);
    assert!(l.3.contains("dropped and created again"), "{}", l.3);
    blocker.batch_execute("ROLLBACK").await.unwrap();

    // As the problem says: dropped and created again (the table emptied for its copy).
    s.batch_execute("SELECT pgsub.drop_subscription('lsub')").await.unwrap();
    s.batch_execute("TRUNCATE t").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('lsub', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create again");
    wait_for_subscription_sync(&s, "lsub", WAIT).await;
    assert_eq!(health(&s, "pgsub.health").await, vec![]);
    assert_replicated_equal(&p, &s).await;
}

/// The views and health functions are estimated as cheap as they are (a row per subscription or
/// table), below `jit_above_cost`: with `jit = on`, PostgreSQL's default, a view estimated at
/// millions of rows was JIT-compiled on every read and took seconds (an exporter's scrape timed
/// out).
#[tokio::test(flavor = "current_thread")]
async fn views_are_cheap_enough_to_never_be_jit_compiled() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)").await.unwrap();
    }
    p.batch_execute("INSERT INTO a VALUES (1); CREATE PUBLICATION pa FOR TABLE a; CREATE PUBLICATION pb FOR TABLE b")
        .await
        .unwrap();
    for (name, publication) in [("sa", "pa"), ("sb", "pb")] {
        s.execute(
            &format!("SELECT pgsub.create_subscription('{name}', $1, ARRAY['{publication}'])"),
            &[&nodes.pub_conninfo()],
        )
        .await
        .expect("create");
        wait_for_subscription_sync(&s, name, WAIT).await;
    }
    let jit_above: f64 = one(&s, "SELECT current_setting('jit_above_cost')::float8").await;
    for q in [
        "SELECT * FROM pgsub.stat_subscription",
        "SELECT * FROM pgsub.stat_subscription_all",
        "SELECT * FROM pgsub.stat_subscription_table",
        "SELECT * FROM pgsub.subscription_table",
        "SELECT * FROM pgsub.stat_database",
        "SELECT * FROM pgsub.health",
        "SELECT * FROM pgsub.lag_history('sa')",
        "SELECT * FROM pgsub.check_health(retained_wal_bytes => NULL)",
    ] {
        // The top node's line: "… (cost=START..TOTAL rows=… width=…)".
        let top: String = s.query(&format!("EXPLAIN {q}"), &[]).await.unwrap()[0].get(0);
        let cost: f64 = top
            .split("..")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no cost in {top}"));
        assert!(cost < jit_above / 10.0, "{q}: estimated cost {cost}, jit_above_cost {jit_above}: {top}");
    }
    assert_replicated_equal(&p, &s).await;
}

/// The views and the health check read a hot standby of the subscriber (a DBA points monitoring
/// at it): `pgsub.stat_subscription` and `pgsub.health` failed there with "cannot assign
/// TransactionIds during recovery" (a read through pgrx's `Spi::get_*`, which takes one). The
/// standby shows the subscription, and runs no worker of its own.
#[tokio::test(flavor = "current_thread")]
async fn the_views_read_a_hot_standby_of_the_subscriber() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.unwrap();
    p.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION pub FOR TABLE t; INSERT INTO t VALUES (1, 'a')")
        .await
        .unwrap();
    s.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('hs', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    s.execute("SELECT pgsub.create_subscription('off', $1, ARRAY['pub'], connect => false)", &[&nodes.pub_conninfo()])
        .await
        .unwrap();
    wait_for_subscription_sync(&s, "hs", WAIT).await;
    let standby = Cluster::standby_of(&nodes.subscriber, "standby").expect("standby");
    let st = standby.client("postgres").await.expect("connect to the standby");
    assert!(one::<bool>(&st, "SELECT pg_is_in_recovery()").await);
    for q in [
        "SELECT count(*) FROM pgsub.subscription WHERE subname = 'hs'",
        "SELECT count(*) FROM pgsub.stat_subscription WHERE subname = 'hs'",
        "SELECT count(*) FROM pgsub.subscription_table WHERE subname = 'hs'",
        "SELECT count(*) FROM pgsub.stat_subscription_table WHERE subname = 'hs'",
        "SELECT count(*) + 1 FROM pgsub.health",
        "SELECT count(*) + 1 FROM pgsub.check_health(error_minutes => 0)",
        "SELECT count(*) + 1 FROM pgsub.lag_history('hs')",
    ] {
        let n: i64 = st.query_one(q, &[]).await.unwrap_or_else(|e| panic!("{q} on the standby: {e:?}")).get(0);
        assert!(n >= 1, "{q}: {n}");
    }
    let pid: Option<i32> = one(&st, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'hs'").await;
    assert_eq!(pid, None, "no worker runs on the standby");
    // Said as such (it showed `starting`, which never changed).
    assert_eq!(one::<String>(&st, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'hs'").await, "standby");
    // A disabled one says so (it said `standby` too).
    assert_eq!(
        one::<String>(&st, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'off'").await,
        "disabled"
    );
    // The functions that change a subscription or wait on its worker are refused as natively
    // (they failed with "cannot assign TransactionIds during recovery"; wait_for_catchup waited
    // out its timeout); nothing reaches the publisher.
    for q in [
        "SELECT pgsub.disable_subscription('hs')",
        "SELECT pgsub.drop_subscription('hs')",
        "SELECT pgsub.refresh_subscription('hs')",
        "SELECT pgsub.wait_for_catchup('hs', timeout => '10 s')",
        "SELECT pgsub.create_subscription('other', 'host=127.0.0.1', ARRAY['pub'])",
    ] {
        let e = must_fail(&st, q, &[]).await;
        assert_eq!(e.code, "25006", "{q}: {}", e.text());
        assert!(e.text().contains("during recovery"), "{q}: {}", e.text());
    }
    assert_eq!(one::<i64>(&p, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'hs' AND active").await, 1);
    p.batch_execute("INSERT INTO t VALUES (2, 'b')").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM t", "2", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// A failure, then a long healthy run on a quiet publication (no transaction applied, so the
/// failure count is not reset), then failures again: health's `error` since is about the second
/// streak's start, not the first failure's (the recorded streak start is bounded by the last
/// error less the retry delays), so the problem is not raised at once as minutes old.
#[tokio::test(flavor = "current_thread")]
async fn a_failure_long_after_a_healthy_quiet_run_starts_a_new_streak() {
    let mut nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").await.unwrap();
    }
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('q', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    wait_for_subscription_sync(&s, "q", WAIT).await;
    // A first failure: its walsender terminated; taken up again at once, then quiet.
    let kill = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication WHERE application_name = 'q'";
    assert_eq!(one::<i64>(&p, kill).await, 1);
    wait_value(&s, "SELECT (error_count >= 1)::text FROM pgsub.stat_subscription WHERE subname = 'q'", "true", WAIT)
        .await;
    wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'q'", "streaming", WAIT).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    // The publisher goes away: failures again, and the subscription stays failing.
    let t1: String = one(&s, "SELECT now()::text").await;
    drop(p);
    nodes.publisher.stop("fast").expect("stop the publisher");
    let e = wait_problem(&s, "pgsub.check_health(error_minutes => 0, retained_wal_bytes => NULL)", "q", "error").await;
    assert!(e.4, "since");
    let recent: bool = one(
        &s,
        &format!(
            "SELECT bool_and(since >= '{t1}'::timestamptz - interval '15 seconds') \
             FROM pgsub.check_health(error_minutes => 0, retained_wal_bytes => NULL) WHERE subname = 'q' AND problem = 'error'"
        ),
    )
    .await;
    assert!(recent, "the streak is dated from the second failures, not the first: {}", e.3);
    nodes.publisher.start_again().expect("start the publisher again");
    let p = nodes.publisher.client("postgres").await.expect("publisher");
    p.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t", "1", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}
