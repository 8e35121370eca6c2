//! End-to-end: bad input. create_subscription refuses bad arguments and unreachable or wrong
//! publishers with a clear SQLSTATE and message and leaves nothing behind (no catalog row, no
//! slot on the publisher, no replication origin); a missing publication is only a WARNING, as
//! natively; names that need quoting work. Schema drift while streaming (missing column, local
//! NOT NULL column, incompatible type, dropped or renamed table) is reported with the exact
//! table/column in last_error, retried, and applied without loss once the user fixes the local
//! schema.
//! (lifecycle_test.rs owns the basic validation codes; this file adds messages, more inputs and
//! the leftovers check.)
use pgsub_tests::{
    assert_replicated_equal, assert_replicated_equal_for, assert_replicated_equal_within, must_fail, one,
    quote_literal, wait_for_repeated_error, wait_for_subscription_sync, wait_value, warning_messages, ClusterOpts,
    SqlError, TwoNodes,
};
use std::time::Duration;
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(90);

/// Asserts the error's SQLSTATE (a full code, or a two-character class) and that its message
/// contains every one of `words`.
fn check(f: &SqlError, code: &str, words: &[&str]) {
    assert!(f.code.starts_with(code), "expected SQLSTATE {code}, got {}", f.text());
    for w in words {
        assert!(f.message.contains(w), "message lacks {w:?}: {}", f.text());
    }
}

/// No subscription, no table row, no origin on the subscriber; exactly `slots` on the publisher.
async fn assert_nothing_left(p: &Client, s: &Client, slots: &[&str], after: &str) {
    assert_eq!(one::<i64>(s, "SELECT count(*) FROM pgsub.subscription").await, 0, "catalog row left after {after}");
    assert_eq!(one::<i64>(s, "SELECT count(*) FROM pgsub.subscription_table").await, 0, "table row left after {after}");
    let origins: String = one(s, "SELECT coalesce(string_agg(roname, ', '), '') FROM pg_replication_origin").await;
    assert_eq!(origins, "", "origin left after {after}");
    assert_eq!(one::<i64>(s, "SELECT count(*) FROM pgsub.stat_subscription").await, 0, "stats row left after {after}");
    let have: Vec<String> = p
        .query("SELECT slot_name::text FROM pg_replication_slots ORDER BY 1", &[])
        .await
        .expect("slots")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let want: Vec<String> = slots.iter().map(|s| s.to_string()).collect();
    assert_eq!(have, want, "publisher slots after {after}");
}

const PUB_HBA: &str = "local all all trust
host all postgres 127.0.0.1/32 trust
host replication postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
";

#[tokio::test(flavor = "current_thread")]
async fn create_subscription_refuses_bad_input_and_leaves_nothing() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").await.unwrap();
    }
    p.batch_execute(
        "CREATE PUBLICATION pub FOR TABLE t;
         CREATE ROLE repl LOGIN REPLICATION PASSWORD 'right-pw';
         GRANT SELECT ON t TO repl;",
    )
    .await
    .unwrap();
    p.batch_execute("SELECT pg_create_logical_replication_slot('taken', 'pgoutput')").await.unwrap();
    nodes.publisher.set_hba(PUB_HBA).expect("hba");
    let port = nodes.publisher.port();
    let ci = nodes.pub_conninfo();
    let pubs = vec!["pub".to_string()];
    let create = "SELECT pgsub.create_subscription('bad', $1, $2)";

    // Malformed connection strings: a syntax error that quotes the (masked) string.
    for bad in [
        "host=127.0.0.1 port=abc".to_string(),
        "this is not a conninfo".to_string(),
        format!("host=127.0.0.1 port={port} nosuchoption=1"),
        "host=127.0.0.1 password='unterminated".to_string(),
        "postgresql://[::1".to_string(),
    ] {
        let f = must_fail(&s, create, &[&bad, &pubs]).await;
        check(&f, "42601", &["invalid connection string"]);
        assert_nothing_left(&p, &s, &["taken"], &bad).await;
    }

    // Unreachable publishers: connection-class errors that say what could not be reached.
    let f = must_fail(&s, create, &[&"host=no-such-host.invalid dbname=postgres connect_timeout=10", &pubs]).await;
    check(&f, "08", &["could not connect to the publisher", "no-such-host.invalid"]);
    let refused = free_port_nobody_listens_on();
    let f =
        must_fail(&s, create, &[&format!("host=127.0.0.1 port={refused} dbname=postgres connect_timeout=10"), &pubs])
            .await;
    check(&f, "08", &["could not connect to the publisher"]);
    assert!(f.message.to_lowercase().contains("refused"), "says refused: {}", f.text());
    assert!(f.hint.contains("publisher is running"), "hint: {}", f.text());

    // The publisher says no: wrong password, missing database. (A missing publication is a
    // WARNING, as natively: `a_missing_publication_is_a_warning_as_natively`.)
    let f = must_fail(
        &s,
        create,
        &[&format!("host=127.0.0.1 port={port} dbname=postgres user=repl password=wrong-pw"), &pubs],
    )
    .await;
    check(&f, "28P01", &["password authentication failed", "\"repl\""]);
    let f = must_fail(&s, create, &[&format!("{ci} dbname=nosuchdb"), &pubs]).await;
    check(&f, "3D000", &["database \"nosuchdb\" does not exist"]);
    assert_nothing_left(&p, &s, &["taken"], "connection failures").await;

    // An existing slot: refused with a hint, and the origin created just before is gone too.
    let f = must_fail(&s, "SELECT pgsub.create_subscription('bad', $1, $2, slot_name => 'taken')", &[&ci, &pubs]).await;
    check(&f, "42710", &["taken", "already exists"]);
    assert!(f.hint.contains("create_slot => false"), "hint: {}", f.text());
    assert_nothing_left(&p, &s, &["taken"], "existing slot").await;
    // An invalid explicit slot name is refused before anything happens.
    let f =
        must_fail(&s, "SELECT pgsub.create_subscription('bad', $1, $2, slot_name => 'Bad Slot')", &[&ci, &pubs]).await;
    check(&f, "42602", &["Bad Slot", "invalid character"]);

    // NULL and empty arguments.
    let null_text: Option<String> = None;
    let null_pubs: Option<Vec<String>> = None;
    let f = must_fail(&s, "SELECT pgsub.create_subscription($1, $2, $3)", &[&null_text, &ci, &pubs]).await;
    check(&f, "22004", &["name must not be NULL"]);
    let f = must_fail(&s, "SELECT pgsub.create_subscription('bad', $1, $2)", &[&null_text, &pubs]).await;
    check(&f, "22004", &["conninfo must not be NULL"]);
    let f = must_fail(&s, "SELECT pgsub.create_subscription('bad', $1, $2)", &[&ci, &null_pubs]).await;
    check(&f, "22004", &["publications must not be NULL"]);
    let f = must_fail(&s, "SELECT pgsub.create_subscription('', $1, $2)", &[&ci, &pubs]).await;
    check(&f, "22023", &["subscription name must not be empty"]);
    for empty in ["", "   "] {
        let f = must_fail(&s, create, &[&empty, &pubs]).await;
        check(&f, "22023", &["connection string must not be empty"]);
    }
    let f = must_fail(&s, create, &[&ci, &Vec::<String>::new()]).await;
    check(&f, "22023", &["publications must be a non-empty array"]);
    let f = must_fail(&s, create, &[&ci, &vec![Some("pub".to_string()), None]]).await;
    check(&f, "22023", &["without NULLs"]);
    let f = must_fail(&s, create, &[&ci, &vec![String::new()]]).await;
    check(&f, "22023", &["publications must be a non-empty array"]);
    // Native: `publication name "pub" used more than once` (it was silently taken once).
    let f = must_fail(&s, create, &[&ci, &vec!["pub".to_string(), "pub".to_string()]]).await;
    check(&f, "42710", &["publication name \"pub\" used more than once"]);
    let f = must_fail(&s, "SELECT pgsub.create_subscription('bad', $1, $2, enabled => NULL)", &[&ci, &pubs]).await;
    check(&f, "22004", &["enabled must not be NULL"]);
    let long = "n".repeat(64);
    let f = must_fail(&s, "SELECT pgsub.create_subscription($1, $2, $3)", &[&long, &ci, &pubs]).await;
    check(&f, "42622", &["too long"]);

    // Bad option values.
    let f =
        must_fail(&s, "SELECT pgsub.create_subscription('bad', $1, $2, origin => 'sometimes')", &[&ci, &pubs]).await;
    check(&f, "22023", &["unrecognized origin value", "sometimes"]);
    assert!(f.hint.contains("'any'") && f.hint.contains("'none'"), "hint lists the values: {}", f.text());
    let f = must_fail(&s, "SELECT pgsub.create_subscription('bad', $1, $2, origin => NULL)", &[&ci, &pubs]).await;
    check(&f, "22004", &["origin must not be NULL"]);
    // Case-insensitive, as natively.
    s.execute("SELECT pgsub.create_subscription('cased', $1, $2, origin => 'NONE', connect => false)", &[&ci, &pubs])
        .await
        .expect("origin 'NONE'");
    assert_eq!(one::<String>(&s, "SELECT origin FROM pgsub.subscription WHERE subname = 'cased'").await, "none");
    s.batch_execute("SELECT pgsub.alter_subscription_options('cased', origin => 'Any')").await.expect("origin 'Any'");
    assert_eq!(one::<String>(&s, "SELECT origin FROM pgsub.subscription WHERE subname = 'cased'").await, "any");
    s.batch_execute("SELECT pgsub.drop_subscription('cased')").await.unwrap();
    let f =
        must_fail(&s, "SELECT pgsub.create_subscription('bad', $1, $2, synchronous_commit => 'maybe')", &[&ci, &pubs])
            .await;
    check(&f, "22023", &["synchronous_commit", "maybe"]);
    assert_nothing_left(&p, &s, &["taken"], "argument errors").await;

    // A name already in use: refused, and the existing subscription is untouched.
    s.execute("SELECT pgsub.create_subscription('dup', $1, $2)", &[&ci, &pubs]).await.expect("create dup");
    let f = must_fail(&s, "SELECT pgsub.create_subscription('dup', $1, $2, slot_name => 'other')", &[&ci, &pubs]).await;
    check(&f, "42710", &["subscription \"dup\" already exists"]);
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pgsub.subscription WHERE subname = 'dup'").await, 1);
    assert_eq!(
        one::<i64>(&p, "SELECT count(*) FROM pg_replication_slots WHERE slot_name IN ('dup', 'other')").await,
        1
    );
    // The one subscription of this test that runs: its tables are compared before it is dropped.
    assert_replicated_equal_for(&p, &s, Some(&["dup"])).await;
    s.batch_execute("SELECT pgsub.drop_subscription('dup')").await.expect("drop dup");

    // (as an SQL literal: the conninfo quotes its values)
    let ci_lit = format!("'{}'", ci.replace('\'', "''"));
    // Inside a transaction block a later ROLLBACK could not take the slot back: refused, as
    // native CREATE SUBSCRIPTION with create_slot is.
    let e = s
        .batch_execute(&format!("BEGIN; SELECT pgsub.create_subscription('rolled', {ci_lit}, ARRAY['pub']); ROLLBACK;"))
        .await
        .expect_err("create_slot inside a transaction block");
    let _ = s.batch_execute("ROLLBACK").await;
    let db = e.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "25001", "{db:?}");
    assert!(db.message().contains("cannot run inside a transaction block"), "{db:?}");
    assert!(db.hint().unwrap_or_default().contains("create_slot => false"), "{db:?}");
    assert_nothing_left(&p, &s, &["taken"], "a create inside a transaction block").await;
    // Without a slot it may run inside a transaction block.
    s.batch_execute(&format!(
        "BEGIN; SELECT pgsub.create_subscription('noslot', {ci_lit}, ARRAY['pub'], create_slot => false, enabled => false); ROLLBACK;"
    ))
    .await
    .expect("create_slot => false in a transaction block");
    assert_nothing_left(&p, &s, &["taken"], "everything").await;
    // Likewise dropping with the slot: refused in a block, and nothing is dropped.
    s.execute("SELECT pgsub.create_subscription('kept', $1, $2, enabled => false)", &[&ci, &pubs]).await.unwrap();
    let e = s
        .batch_execute("BEGIN; SELECT pgsub.drop_subscription('kept'); ROLLBACK;")
        .await
        .expect_err("drop_slot inside a transaction block");
    let _ = s.batch_execute("ROLLBACK").await;
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("25001"), "{e:?}");
    assert_eq!(one::<i64>(&p, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'kept'").await, 1);
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pgsub.subscription WHERE subname = 'kept'").await, 1);
    s.batch_execute("SELECT pgsub.drop_subscription('kept')").await.expect("drop on its own");
    assert_nothing_left(&p, &s, &["taken"], "the final drop").await;
    // The full comparison came with `dup` above: every other subscription of this test is
    // refused, or never enabled and dropped (assert_nothing_left); none is left to compare.
}

/// A loopback port with no listener (bound and released: nothing listens there afterwards).
fn free_port_nobody_listens_on() -> u16 {
    pgsub_tests::free_port().expect("free port")
}

/// A publication the publisher does not have: like native `CREATE SUBSCRIPTION`, a WARNING with
/// native's words, and the subscription is created with the tables of the others. Its worker then
/// reports the publisher's own answer (before PostgreSQL 18 pgoutput stops at the first change
/// with "publication … does not exist"; 18 skips the publication with a warning of its own) until
/// the publication list is fixed; nothing is lost meanwhile.
#[tokio::test(flavor = "current_thread")]
async fn a_missing_publication_is_a_warning_as_natively() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let (s, notices) = nodes.subscriber.client_with_notices("postgres").await.unwrap();
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").await.unwrap();
    }
    p.batch_execute(
        "CREATE PUBLICATION pub FOR TABLE t; INSERT INTO t SELECT g, 'before' FROM generate_series(1, 5) g",
    )
    .await
    .unwrap();
    s.execute(
        "SELECT pgsub.create_subscription('miss', $1, ARRAY['pub', 'nopub', 'nopub2'])",
        &[&nodes.pub_conninfo()],
    )
    .await
    .expect("created despite the missing publications");
    let warned: Vec<(String, String)> = notices
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|n| n.severity() == "WARNING")
        .map(|n| (n.code().code().to_string(), n.message().to_string()))
        .collect();
    assert_eq!(
        warned,
        vec![("42704".to_string(), "publications \"nopub\", \"nopub2\" do not exist on the publisher".to_string())],
        "one WARNING naming only the missing publications"
    );
    assert_eq!(
        one::<String>(&s, "SELECT array_to_string(publications, ',') FROM pgsub.subscription WHERE subname = 'miss'")
            .await,
        "pub,nopub,nopub2",
        "the publication list is kept as given"
    );
    // The table of the existing publication is copied.
    wait_for_subscription_sync(&s, "miss", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 5);

    p.batch_execute("INSERT INTO t SELECT g, 'after' FROM generate_series(6, 10) g").await.unwrap();
    let version: i32 = one(&p, "SELECT current_setting('server_version_num')::int").await;
    if version < 180000 {
        // The publisher's pgoutput refuses the change; the worker says so and retries.
        // In native's words: the walsender's error, not a lost connection.
        wait_for_repeated_error(
            &s,
            "miss",
            &["could not receive data from WAL stream: publication \"nopub\" does not exist"],
            WAIT,
        )
        .await;
        assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 5, "nothing applied past the error");
        s.execute("SELECT pgsub.alter_subscription_publications('miss', ARRAY['pub'])", &[]).await.expect("fix");
        let left = warning_messages(&notices);
        assert_eq!(left.len(), 1, "no new warning once every publication exists: {left:?}");
    }
    wait_value(&s, "SELECT count(*) FROM t", "10", WAIT).await;
    assert_replicated_equal_for(&p, &s, Some(&["miss"])).await;
}

#[tokio::test(flavor = "current_thread")]
async fn names_that_need_quoting_work() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").await.unwrap();
    }
    // A publication whose name needs quoting: capitals, space, double quote, unicode.
    p.batch_execute(r#"CREATE PUBLICATION "My ""Pub"" ü" FOR TABLE t"#).await.unwrap();
    let pubs = vec![r#"My "Pub" ü"#.to_string()];
    let ci = nodes.pub_conninfo();
    let names = ["MySub", "my sub", r#"sub "quoted" 'x'"#, "süb_ünï", "mysub"];
    // Only the one with quotes runs (they all publish the same table).
    let running = names[2];
    for n in names {
        let enabled = n == running;
        s.execute(
            "SELECT pgsub.create_subscription($1, $2, $3, copy_data => false, enabled => $4)",
            &[&n, &ci, &pubs, &enabled],
        )
        .await
        .unwrap_or_else(|e| panic!("create {n:?}: {e}"));
    }
    // Each got its own valid slot; "mysub" keeps its own name, the others are sanitized.
    let slots: Vec<String> = s
        .query("SELECT slot_name::text FROM pgsub.subscription ORDER BY subname", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut distinct = slots.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), names.len(), "distinct slots: {slots:?}");
    assert_eq!(
        one::<String>(&s, "SELECT slot_name::text FROM pgsub.subscription WHERE subname = 'mysub'").await,
        "mysub"
    );
    for slot in &slots {
        assert!(slot.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{slot}");
        let n: i64 = p
            .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", &[slot])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "slot {slot} on the publisher");
    }
    // The quoted one streams.
    wait_for_subscription_sync(&s, running, WAIT).await;
    p.batch_execute("INSERT INTO t VALUES (1, 'quoted names work')").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t", "1", WAIT).await;
    // The walsender knows it by its name too.
    let n: i64 = p
        .query_one("SELECT count(*) FROM pg_stat_replication WHERE application_name = $1", &[&running])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "walsender's application_name");
    // Compared before the drops (afterwards no subscription is left): the running one; the others
    // were never enabled and would only compare the same t again.
    assert_replicated_equal_for(&p, &s, Some(&[running])).await;
    for n in names {
        s.execute("SELECT pgsub.drop_subscription($1)", &[&n]).await.unwrap_or_else(|e| panic!("drop {n:?}: {e}"));
    }
    assert_nothing_left(&p, &s, &[], "dropping the quoted names").await;
}

// ---------------------------------------------------------------------------------------------
// Schema drift while streaming

/// Waits until every replicated table is equal on both nodes (the harness's full comparison).
async fn converge(p: &Client, s: &Client) {
    assert_replicated_equal_within(p, s, None, &[], WAIT).await
}

/// A publisher and a subscriber with `ddl` on both, the publication `pub` FOR ALL TABLES and a
/// streaming subscription `drift`.
async fn drift_setup(nodes: &TwoNodes, ddl: &str) -> (Client, Client) {
    let (p, s) = nodes.clients().await.expect("clients");
    p.batch_execute(ddl).await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    p.batch_execute("CREATE PUBLICATION pub FOR ALL TABLES").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('drift', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    wait_for_subscription_sync(&s, "drift", WAIT).await;
    (p, s)
}

/// One transaction of `n` inserts into t starting at `from` (n >= 8 goes through the COPY batch
/// path, fewer through single INSERTs).
fn inserts(from: i32, n: i32) -> String {
    format!("INSERT INTO t SELECT g, 'v' || g FROM generate_series({from}, {}) g", from + n - 1)
}

#[tokio::test(flavor = "current_thread")]
async fn drift_remote_column_missing_locally() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = drift_setup(&nodes, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    p.batch_execute(&inserts(1, 20)).await.unwrap();
    converge(&p, &s).await;
    // The publisher gains columns the subscriber does not have: the error names all of them,
    // as native's does, so that one fix is enough.
    p.batch_execute("ALTER TABLE t ADD COLUMN extra text, ADD COLUMN more int").await.unwrap();
    p.batch_execute("BEGIN; UPDATE t SET extra = 'upd' WHERE id <= 5; INSERT INTO t VALUES (100, 'a', 'x1'); COMMIT")
        .await
        .unwrap();
    p.batch_execute(&format!("{}; UPDATE t SET extra = 'batch' WHERE id > 200", inserts(200, 30))).await.unwrap();
    let err = wait_for_repeated_error(
        &s,
        "drift",
        &["\"public.t\"", "missing replicated columns: \"extra\", \"more\""],
        WAIT,
    )
    .await;
    assert!(err.contains("HINT: Add the columns"), "{err}");
    assert!(err.contains("finished at"), "context: {err}");
    assert!(err.contains("during message type \"UPDATE\""), "the context names the change being applied: {err}");
    // Nothing of the failing transaction (nor later ones) was applied.
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 20);
    s.batch_execute("ALTER TABLE t ADD COLUMN extra text, ADD COLUMN more int").await.unwrap();
    converge(&p, &s).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 51);
    wait_for_subscription_sync(&s, "drift", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT txns_skipped FROM pgsub.stat_subscription").await, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn drift_local_not_null_column_without_default() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = drift_setup(&nodes, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    p.batch_execute(&inserts(1, 3)).await.unwrap();
    converge(&p, &s).await;
    // A local-only NOT NULL column without a default: remote rows cannot fill it.
    s.batch_execute(
        "ALTER TABLE t ADD COLUMN must int NOT NULL DEFAULT 0; ALTER TABLE t ALTER COLUMN must DROP DEFAULT",
    )
    .await
    .unwrap();
    p.batch_execute("INSERT INTO t VALUES (10, 'single')").await.unwrap();
    let err = wait_for_repeated_error(&s, "drift", &["\"must\"", "not-null", "\"t\""], WAIT).await;
    assert!(err.contains("\"public.t\""), "context names the table: {err}");
    p.batch_execute(&inserts(20, 40)).await.unwrap();
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 3);
    // The fix: a default for the local column.
    s.batch_execute("ALTER TABLE t ALTER COLUMN must SET DEFAULT 7").await.unwrap();
    converge(&p, &s).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t WHERE must = 7").await, 41);
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 44);
}

#[tokio::test(flavor = "current_thread")]
async fn drift_incompatible_types() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    // Remote text, local integer: fine while the values parse.
    p.batch_execute("CREATE TABLE t (id int PRIMARY KEY, n text)").await.unwrap();
    s.batch_execute("CREATE TABLE t (id int PRIMARY KEY, n int)").await.unwrap();
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t; INSERT INTO t VALUES (1, '11'), (2, '22')").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('drift', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    converge(&p, &s).await;
    wait_for_subscription_sync(&s, "drift", WAIT).await;
    // A single-row change that does not parse: the column is named.
    p.batch_execute("UPDATE t SET n = 'abc' WHERE id = 2").await.unwrap();
    let err = wait_for_repeated_error(
        &s,
        "drift",
        &["invalid input syntax for type integer", "\"abc\"", "\"public.t\" column \"n\""],
        WAIT,
    )
    .await;
    assert!(err.contains("UPDATE"), "message type: {err}");
    assert_eq!(one::<String>(&s, "SELECT n::text FROM t WHERE id = 2").await, "22");
    // The user changes the local type; the update goes through.
    s.batch_execute("ALTER TABLE t ALTER COLUMN n TYPE text").await.unwrap();
    converge(&p, &s).await;
    wait_for_subscription_sync(&s, "drift", WAIT).await;
    // And back to a local integer once the values parse again; then a batch of rows (the COPY
    // path) with one bad value.
    p.batch_execute("UPDATE t SET n = '22' WHERE id = 2").await.unwrap();
    converge(&p, &s).await;
    s.batch_execute("ALTER TABLE t ALTER COLUMN n TYPE int USING n::int").await.unwrap();
    p.batch_execute(
        "INSERT INTO t SELECT g, CASE WHEN g = 57 THEN 'x57' ELSE g::text END FROM generate_series(50, 80) g",
    )
    .await
    .unwrap();
    let err = wait_for_repeated_error(
        &s,
        "drift",
        &["invalid input syntax for type integer", "\"x57\"", "\"public.t\"", "\"n\""],
        WAIT,
    )
    .await;
    eprintln!("batch error: {err}");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 2, "no row of the failing batch applied");
    s.batch_execute("ALTER TABLE t ALTER COLUMN n TYPE text").await.unwrap();
    converge(&p, &s).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 33);
}

/// A table dropped here and created again: as natively the dropped table leaves the
/// subscription (its `pg_subscription_rel` row goes with it), its changes stop the worker while
/// no table has the name (a remote transaction touching it is applied all or nothing), and the
/// new table is not applied to — it would get the changes of rows it never had — until a
/// refresh copies it.
#[tokio::test(flavor = "current_thread")]
async fn drift_table_dropped_then_recreated() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = drift_setup(
        &nodes,
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE t2 (id int PRIMARY KEY, w text)",
    )
    .await;
    p.batch_execute(&inserts(1, 5)).await.unwrap();
    p.batch_execute("INSERT INTO t2 VALUES (100, 'before the drop')").await.unwrap();
    converge(&p, &s).await;
    s.batch_execute("DROP TABLE t2").await.unwrap();
    assert_eq!(
        one::<String>(&s, "SELECT string_agg(remote_name::text, ',') FROM pgsub.subscription_table").await,
        "t",
        "the dropped table left the subscription"
    );
    // One remote transaction touching both tables: all or nothing.
    p.batch_execute("BEGIN; INSERT INTO t VALUES (10, 'with t2'); INSERT INTO t2 VALUES (1, 'w1'); COMMIT")
        .await
        .unwrap();
    p.batch_execute(&format!(
        "{}; INSERT INTO t2 SELECT g, 'w' || g FROM generate_series(2, 30) g; UPDATE t2 SET w = 'u' WHERE id = 100",
        inserts(20, 10)
    ))
    .await
    .unwrap();
    let err = wait_for_repeated_error(&s, "drift", &["\"public.t2\"", "does not exist"], WAIT).await;
    assert!(err.contains("HINT: Create"), "{err}");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 5, "the failing transaction is not half-applied");

    s.batch_execute("CREATE TABLE t2 (id int PRIMARY KEY, w text)").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t", "16", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t2").await, 0, "no change applied to the new table");
    nodes
        .subscriber
        .wait_for_log("changes of relation \"public\".\"t2\" are not applied", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.batch_execute("SELECT pgsub.refresh_subscription('drift')").await.unwrap();
    wait_for_subscription_sync(&s, "drift", WAIT).await;
    converge(&p, &s).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t2").await, 31);
    assert_eq!(one::<String>(&s, "SELECT w FROM t2 WHERE id = 100").await, "u");
}

/// The publisher renames a subscribed table: its changes now come under a name that is not the
/// subscription's. As natively the worker stops with `logical replication target relation … does
/// not exist` (not a silent loss of the changes); renaming the table here and refreshing the
/// subscription in one transaction applies them. A table of that name that exists here but is
/// not the subscription's gets a WARNING and, as natively, not the changes.
#[tokio::test(flavor = "current_thread")]
async fn drift_table_renamed_on_the_publisher() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = drift_setup(&nodes, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    p.batch_execute(&inserts(1, 10)).await.unwrap();
    converge(&p, &s).await;
    p.batch_execute("ALTER TABLE t RENAME TO t2").await.unwrap();
    p.batch_execute("INSERT INTO t2 VALUES (100, 'after rename'); UPDATE t2 SET v = 'u' WHERE id = 1").await.unwrap();
    let err = wait_for_repeated_error(&s, "drift", &["\"public.t2\"", "does not exist"], WAIT).await;
    assert!(err.contains("refresh the subscription"), "the hint says what to do: {err}");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 10, "nothing applied past the error");
    assert_eq!(one::<String>(&s, "SELECT v FROM t WHERE id = 1").await, "v1");
    s.batch_execute(
        "BEGIN; ALTER TABLE t RENAME TO t2; SELECT pgsub.refresh_subscription('drift', copy_data => false); COMMIT",
    )
    .await
    .unwrap();
    converge(&p, &s).await;
    assert_eq!(
        one::<String>(&s, "SELECT string_agg(id || v, ',' ORDER BY id) FROM t2 WHERE id IN (1, 100)").await,
        "1u,100after rename"
    );
    assert_eq!(
        one::<String>(&s, "SELECT string_agg(remote_name::text, ',') FROM pgsub.subscription_table").await,
        "t2",
        "the table list follows the publication"
    );

    // A local table of the name the publisher now uses, but not the subscription's: WARNING,
    // its changes are not applied (as natively: a refresh with copy_data brings its rows).
    p.batch_execute("CREATE TABLE t3 (id int PRIMARY KEY, v text)").await.unwrap();
    s.batch_execute("CREATE TABLE t3 (id int PRIMARY KEY, v text)").await.unwrap();
    p.batch_execute("INSERT INTO t3 VALUES (1, 'x'); INSERT INTO t2 VALUES (101, 'marker')").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t2 WHERE id = 101", "1", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t3").await, 0);
    nodes
        .subscriber
        .wait_for_log(
            "changes of relation \"public\".\"t3\" are not applied: it is not among the subscription's tables",
            WAIT,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.batch_execute("SELECT pgsub.refresh_subscription('drift')").await.unwrap();
    converge(&p, &s).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t3").await, 1);
}

/// Waits for the marker row (the changes before it are applied or passed over) and the WARNING
/// that a table of the subscription's name is not the one it copied.
async fn wait_marker_and_replaced_warning(nodes: &TwoNodes, s: &Client) {
    wait_value(s, "SELECT count(*) FROM marker", "1", WAIT).await;
    nodes
        .subscriber
        .wait_for_log("the local table of that name is not the one the subscription copied", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A table swapped here by renames (a new table takes the subscription's table's name, as a
/// repack by hand does): the subscription's table is the old one, so the new one is not applied
/// to, with a WARNING that says why, until a refresh takes it (natively: silently skipped).
#[tokio::test(flavor = "current_thread")]
async fn drift_table_swapped_by_renames_locally() {
    let nodes = TwoNodes::start().expect("start");
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE marker (id int PRIMARY KEY)";
    let (p, s) = drift_setup(&nodes, ddl).await;
    p.batch_execute(&inserts(1, 10)).await.unwrap();
    converge(&p, &s).await;
    s.batch_execute(
        "BEGIN; CREATE TABLE t_new (LIKE t INCLUDING ALL); INSERT INTO t_new SELECT * FROM t;
         ALTER TABLE t RENAME TO t_old; ALTER TABLE t_new RENAME TO t; COMMIT",
    )
    .await
    .unwrap();
    p.batch_execute(&format!("{}; UPDATE t SET v = 'u' WHERE id = 1; INSERT INTO marker VALUES (1)", inserts(11, 10)))
        .await
        .unwrap();
    wait_marker_and_replaced_warning(&nodes, &s).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 10, "the new table got no change");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t_old").await, 10, "nor the old one");
    // Copying it again takes the new table into the subscription.
    s.batch_execute("BEGIN; TRUNCATE t; SELECT pgsub.refresh_subscription('drift'); COMMIT").await.unwrap();
    wait_for_subscription_sync(&s, "drift", WAIT).await;
    converge(&p, &s).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 20);
    assert_eq!(
        one::<String>(&s, "SELECT relid::text FROM pgsub.subscription_table WHERE remote_name = 't'").await,
        "t",
        "the subscription's table is the new one"
    );
}

/// A schema swapped here by renames (`ALTER SCHEMA … RENAME`, which invalidates none of its
/// tables): the worker's statements went on naming the old schema, so a table created under the
/// old name received the changes (and the subscription's table none, its UPDATEs and DELETEs
/// counted as missing rows). Now the worker looks its tables up again: the new table is not the
/// subscription's, as for a table swapped by renames; renamed back, everything applies again.
#[tokio::test(flavor = "current_thread")]
async fn drift_schema_swapped_by_renames_locally() {
    let nodes = TwoNodes::start().expect("start");
    let ddl = "CREATE SCHEMA sch1; CREATE TABLE sch1.t1 (id int PRIMARY KEY, v text);
               CREATE TABLE marker (id int PRIMARY KEY)";
    let (p, s) = drift_setup(&nodes, ddl).await;
    p.batch_execute("INSERT INTO sch1.t1 VALUES (1, 'a'), (10, 'b')").await.unwrap();
    converge(&p, &s).await;
    s.batch_execute(
        "BEGIN; ALTER SCHEMA sch1 RENAME TO schx; CREATE SCHEMA sch1;
         CREATE TABLE sch1.t1 (id int PRIMARY KEY, v text); COMMIT",
    )
    .await
    .unwrap();
    p.batch_execute(
        "INSERT INTO sch1.t1 VALUES (2, 'c'); UPDATE sch1.t1 SET v = 'b2' WHERE id = 10;
         DELETE FROM sch1.t1 WHERE id = 1; INSERT INTO marker VALUES (1)",
    )
    .await
    .unwrap();
    wait_marker_and_replaced_warning(&nodes, &s).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM sch1.t1").await, 0, "the new table got no change");
    let conflicts: i64 = one(&s, "SELECT conflicts FROM pgsub.stat_subscription WHERE subname = 'drift'").await;
    assert_eq!(conflicts, 0, "no missing rows counted on the subscription's table");
    assert_eq!(
        one::<String>(&s, "SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM schx.t1").await,
        "1:a,10:b",
        "nor the subscription's table"
    );
    // Renamed back, the changes in between repaired by hand: what follows applies.
    s.batch_execute(
        "BEGIN; DROP TABLE sch1.t1; DROP SCHEMA sch1; ALTER SCHEMA schx RENAME TO sch1;
         INSERT INTO sch1.t1 VALUES (2, 'c'); UPDATE sch1.t1 SET v = 'b2' WHERE id = 10;
         DELETE FROM sch1.t1 WHERE id = 1; COMMIT",
    )
    .await
    .unwrap();
    p.batch_execute("INSERT INTO sch1.t1 VALUES (3, 'd'); UPDATE sch1.t1 SET v = 'b3' WHERE id = 10").await.unwrap();
    wait_value(&s, "SELECT v FROM sch1.t1 WHERE id = 10", "b3", WAIT).await;
    converge(&p, &s).await;
}

/// A partitioned table whose partitions the subscription holds, published via its root since:
/// its changes come under the root's name, which is not among the subscription's tables. They
/// are not applied (as natively, until a refresh), and the WARNING says so once — not again for
/// each partition whose first change describes the root anew.
#[tokio::test(flavor = "current_thread")]
async fn drift_root_published_via_root_later_is_warned_about_once() {
    let nodes = TwoNodes::start().expect("start");
    let ddl = "CREATE TABLE pr (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
               CREATE TABLE pr_1 PARTITION OF pr FOR VALUES FROM (0) TO (100);
               CREATE TABLE pr_2 PARTITION OF pr FOR VALUES FROM (100) TO (200);
               CREATE TABLE pr_3 PARTITION OF pr FOR VALUES FROM (200) TO (300);
               CREATE TABLE marker (id int PRIMARY KEY)";
    let (p, s) = drift_setup(&nodes, ddl).await;
    p.batch_execute("INSERT INTO pr VALUES (1, 'a'), (101, 'b'), (201, 'c')").await.unwrap();
    converge(&p, &s).await;
    p.batch_execute("ALTER PUBLICATION pub SET (publish_via_partition_root = true)").await.unwrap();
    p.batch_execute("INSERT INTO pr VALUES (2, 'x'), (102, 'y'), (202, 'z'); INSERT INTO marker VALUES (1)")
        .await
        .unwrap();
    wait_value(&s, "SELECT count(*) FROM marker", "1", WAIT).await;
    let warning = "changes of relation \"public\".\"pr\" are not applied: it is not among the subscription's tables";
    nodes.subscriber.wait_for_log(warning, WAIT).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(nodes.subscriber.log().matches(warning).count(), 1, "warned once");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pr").await, 3, "not applied, as natively");
    // The refresh takes the root instead of its partitions; its rows come with the copy.
    s.batch_execute("TRUNCATE pr; SELECT pgsub.refresh_subscription('drift')").await.unwrap();
    wait_for_subscription_sync(&s, "drift", WAIT).await;
    converge(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn drift_table_renamed_locally() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = drift_setup(&nodes, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    p.batch_execute(&inserts(1, 10)).await.unwrap();
    converge(&p, &s).await;
    // Renamed while the worker has it mapped (and its statements prepared).
    s.batch_execute("ALTER TABLE t RENAME TO t_renamed").await.unwrap();
    p.batch_execute(
        "INSERT INTO t VALUES (100, 'after rename'); UPDATE t SET v = 'u' WHERE id = 1; DELETE FROM t WHERE id = 2",
    )
    .await
    .unwrap();
    let err = wait_for_repeated_error(&s, "drift", &["\"public.t\"", "does not exist"], WAIT).await;
    eprintln!("rename error: {err}");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t_renamed").await, 10, "nothing written to the renamed table");
    assert_eq!(one::<String>(&s, "SELECT v FROM t_renamed WHERE id = 1").await, "v1");
    s.batch_execute("ALTER TABLE t_renamed RENAME TO t").await.unwrap();
    converge(&p, &s).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 10);
    wait_for_subscription_sync(&s, "drift", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT txns_skipped FROM pgsub.stat_subscription").await, 0);
}

/// `create_subscription` called where a rollback follows it — a DO block that raises afterwards,
/// or a statement that calls it twice and fails on the second — cannot take back the slot it made
/// on the publisher (native refuses such calls; a function cannot tell them from a plain
/// statement): the slot is dropped again as the transaction aborts, with a WARNING, so nothing
/// is left holding WAL there. They used to be left behind, named nowhere.
#[tokio::test(flavor = "current_thread")]
async fn a_slot_created_by_a_rolled_back_call_is_dropped_again() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.unwrap();
    p.batch_execute("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    s.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").await.unwrap();
    let ci = nodes.pub_conninfo();
    let do_block = format!(
        "DO $$ BEGIN PERFORM pgsub.create_subscription('do1', {}, ARRAY['pub'], copy_data => false); \
         RAISE EXCEPTION 'provisioning failed'; END $$",
        quote_literal(&ci)
    );
    let e = s.batch_execute(&do_block).await.expect_err("the DO block fails");
    assert!(format!("{e:?}").contains("provisioning failed"), "{e:?}");
    assert_nothing_left(&p, &s, &[], "a DO block that failed after the create").await;
    assert!(nodes.subscriber.log_contains("dropped replication slot \"do1\" on the publisher"));
    let twice = format!(
        "SELECT pgsub.create_subscription('gs', {}, ARRAY['pub'], copy_data => false) FROM generate_series(1, 2)",
        quote_literal(&ci)
    );
    let f = must_fail(&s, &twice, &[]).await;
    check(&f, "42710", &["\"gs\""]);
    assert_nothing_left(&p, &s, &[], "a statement whose second call failed").await;
    // And a create that commits keeps its slot and replicates.
    s.execute("SELECT pgsub.create_subscription('ok', $1, ARRAY['pub'])", &[&ci]).await.unwrap();
    wait_for_subscription_sync(&s, "ok", Duration::from_secs(60)).await;
    p.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM t", "1", Duration::from_secs(60)).await;
    assert_replicated_equal(&p, &s).await;
}

/// A publisher with no WAL sender to spare refuses the replication connection for lack of room
/// (53300), not of access: the hint names max_wal_senders, not pg_hba.conf (it did). Nothing is
/// left behind (no subscription is made, so there is nothing to compare).
#[tokio::test(flavor = "current_thread")]
async fn a_publisher_out_of_wal_senders_is_named_as_such() {
    let nodes =
        TwoNodes::start_with(ClusterOpts::publisher().with_conf("max_wal_senders = 0"), ClusterOpts::subscriber())
            .expect("start");
    let (p, s) = nodes.clients().await.unwrap();
    p.batch_execute("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    s.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").await.unwrap();
    let f = must_fail(&s, "SELECT pgsub.create_subscription('ws', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await;
    check(&f, "53300", &["max_wal_senders"]);
    assert!(f.hint.contains("raise max_wal_senders") && !f.hint.contains("pg_hba"), "{}", f.text());
    assert_nothing_left(&p, &s, &[], "a refused connection").await;
}

/// A table (and a schema) renamed on the publisher and here alike, then a refresh before any
/// change of it arrived: the refresh follows the rename — the table keeps its state, nothing is
/// copied again — as native's REFRESH PUBLICATION is a no-op there (it took the table for a new
/// one: "is not empty; pgsub will not copy into a table that already has rows", failing the whole
/// refresh). Changes go on under the new names.
#[tokio::test(flavor = "current_thread")]
async fn a_refresh_after_a_rename_on_both_sides_keeps_the_table() {
    let nodes = TwoNodes::start().expect("start");
    let ddl = "CREATE SCHEMA sc; CREATE TABLE sc.m (id int PRIMARY KEY, v text); CREATE TABLE rn (id int PRIMARY KEY, v text)";
    let (p, s) = drift_setup(&nodes, ddl).await;
    p.batch_execute("INSERT INTO rn VALUES (1, 'a'); INSERT INTO sc.m VALUES (1, 'm')").await.unwrap();
    converge(&p, &s).await;
    for c in [&p, &s] {
        c.batch_execute("ALTER TABLE rn RENAME TO rn2; ALTER SCHEMA sc RENAME TO sc2").await.unwrap();
    }
    s.batch_execute("SELECT pgsub.refresh_subscription('drift')").await.expect("the refresh follows the renames");
    assert_eq!(
        one::<String>(
            &s,
            "SELECT string_agg(remote_schema || '.' || remote_name || ' ' || sync_state, ',' ORDER BY remote_name) \
             FROM pgsub.subscription_table"
        )
        .await,
        "sc2.m ready,public.rn2 ready",
        "renamed, still ready"
    );
    assert!(nodes.subscriber.log_contains("renamed on the publisher and here: it keeps its state"));
    p.batch_execute("INSERT INTO rn2 VALUES (2, 'b'); UPDATE sc2.m SET v = 'm2'").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM rn2", "2", WAIT).await;
    wait_value(&s, "SELECT v FROM sc2.m", "m2", WAIT).await;
    converge(&p, &s).await;
}

/// A table renamed on the publisher and then here to the same name (or here first): native keeps
/// tables by their local OID, so its changes go on being applied without a refresh. pgsub kept
/// them by the publisher's old name and dropped the renamed table's changes with only a WARNING
/// (`wait_for_catchup` saying caught up). It now follows the rename: recorded under the new name,
/// applied, said in the log.
#[tokio::test(flavor = "current_thread")]
async fn a_table_renamed_on_both_sides_goes_on_without_a_refresh() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = drift_setup(
        &nodes,
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u (id int PRIMARY KEY, v text); CREATE TABLE nokey (v text)",
    )
    .await;
    p.batch_execute(&format!("{}; INSERT INTO u VALUES (1, 'u1'); INSERT INTO nokey VALUES ('a')", inserts(1, 10)))
        .await
        .unwrap();
    converge(&p, &s).await;
    // The publisher first, while changes keep coming (the worker stops on the missing name).
    p.batch_execute(
        "ALTER TABLE t RENAME TO t2; INSERT INTO t2 VALUES (100, 'after'); UPDATE t2 SET v = 'x' WHERE id = 1",
    )
    .await
    .unwrap();
    wait_for_repeated_error(&s, "drift", &["\"public.t2\"", "does not exist"], WAIT).await;
    s.batch_execute("ALTER TABLE t RENAME TO t2").await.unwrap();
    // Here first, then the publisher: the worker stops on the name it has, then goes on.
    s.batch_execute("ALTER TABLE u RENAME TO u2; ALTER TABLE nokey RENAME TO nokey2").await.unwrap();
    p.batch_execute(
        "ALTER TABLE u RENAME TO u2; ALTER TABLE nokey RENAME TO nokey2;
         INSERT INTO u2 VALUES (2, 'u2'); INSERT INTO nokey2 VALUES ('b'); INSERT INTO t2 VALUES (101, 'marker')",
    )
    .await
    .unwrap();
    wait_value(&s, "SELECT count(*)::text FROM t2 WHERE id = 101", "1", WAIT).await;
    assert_eq!(one::<String>(&s, "SELECT v FROM t2 WHERE id = 1").await, "x");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM u2").await, 2);
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM nokey2").await, 2);
    assert_eq!(
        one::<String>(
            &s,
            "SELECT string_agg(remote_name::text, ',' ORDER BY remote_name) FROM pgsub.subscription_table"
        )
        .await,
        "nokey2,t2,u2",
        "the table list follows the renames"
    );
    assert!(nodes
        .subscriber
        .log_contains("renamed on the publisher and here: its changes are applied under the new name"));
    s.batch_execute("SELECT pgsub.wait_for_catchup('drift')").await.unwrap();
    let unequal: i64 = one(&s, "SELECT count(*) FROM pgsub.verify_subscription('drift') WHERE NOT equal").await;
    assert_eq!(unequal, 0, "verify_subscription compares the renamed tables");
    converge(&p, &s).await;
}

/// Two of the subscription's tables whose names are swapped on the publisher and here (through a
/// third name, in one transaction on each side). Native binds each remote table to the local
/// table of its name and keeps the state by local table, so both go on. pgsub found the local
/// table of each name to be another than the one recorded under it and skipped both tables'
/// changes with a WARNING ("not the one the subscription copied"); the records now swap too.
#[tokio::test(flavor = "current_thread")]
async fn two_tables_swapped_on_both_sides_go_on_without_a_refresh() {
    let nodes = TwoNodes::start().expect("start");
    let ddl = "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, w int);
               CREATE TABLE marker (id int PRIMARY KEY)";
    let (p, s) = drift_setup(&nodes, ddl).await;
    p.batch_execute("INSERT INTO a VALUES (1, 'a1'), (2, 'a2'); INSERT INTO b VALUES (1, 10), (2, 20)").await.unwrap();
    converge(&p, &s).await;
    let swap = "BEGIN; ALTER TABLE a RENAME TO tmp; ALTER TABLE b RENAME TO a; ALTER TABLE tmp RENAME TO b; COMMIT";
    s.batch_execute(swap).await.unwrap();
    p.batch_execute(swap).await.unwrap();
    // "a" is the old b now (id, w) and "b" the old a (id, v), on both sides.
    p.batch_execute(
        "INSERT INTO a VALUES (3, 30); UPDATE a SET w = 11 WHERE id = 1; DELETE FROM a WHERE id = 2;
         INSERT INTO b VALUES (3, 'a3'); UPDATE b SET v = 'x' WHERE id = 1; DELETE FROM b WHERE id = 2;
         INSERT INTO marker VALUES (1)",
    )
    .await
    .unwrap();
    wait_value(&s, "SELECT count(*) FROM marker", "1", WAIT).await;
    assert_eq!(one::<String>(&s, "SELECT string_agg(id || ':' || w, ',' ORDER BY id) FROM a").await, "1:11,3:30");
    assert_eq!(one::<String>(&s, "SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM b").await, "1:x,3:a3");
    assert!(!nodes.subscriber.log_contains("not the one the subscription copied"), "no table skipped");
    assert!(nodes.subscriber.log_contains("swapped names on the publisher and here"));
    assert_eq!(
        one::<String>(
            &s,
            "SELECT string_agg(remote_name || '=' || relid::regclass::text, ',' ORDER BY remote_name) FROM pgsub.subscription_table"
        )
        .await,
        "a=a,b=b,marker=marker",
        "the table list follows the swap"
    );
    // A restart reads the records back: the changes still go by the new names.
    s.batch_execute("SELECT pgsub.disable_subscription('drift'); SELECT pgsub.enable_subscription('drift')")
        .await
        .unwrap();
    p.batch_execute("INSERT INTO a VALUES (4, 40); INSERT INTO b VALUES (4, 'a4')").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM a WHERE id = 4", "1", WAIT).await;
    s.batch_execute("SELECT pgsub.wait_for_catchup('drift')").await.unwrap();
    let unequal: i64 = one(&s, "SELECT count(*) FROM pgsub.verify_subscription('drift') WHERE NOT equal").await;
    assert_eq!(unequal, 0, "verify_subscription compares the swapped tables");
    converge(&p, &s).await;
}

/// A swap of two tables found while applying a prepared transaction (`two_phase`): the records
/// swap between transactions, not inside the prepared one, which would hold `pgsub.sub_rel`'s
/// rows until COMMIT PREPARED (a refresh or drop waiting on it) and undo the swap at a ROLLBACK
/// PREPARED while the worker went on with the new names.
#[tokio::test(flavor = "current_thread")]
async fn a_swap_found_in_a_prepared_transaction_leaves_the_catalog_free() {
    let nodes = TwoNodes::start_with(
        ClusterOpts::publisher().with_conf("max_prepared_transactions = 10"),
        ClusterOpts::subscriber().with_conf("max_prepared_transactions = 10"),
    )
    .expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    let ddl = "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, w int)";
    p.batch_execute(ddl).await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    p.batch_execute(
        "CREATE PUBLICATION pub FOR ALL TABLES; INSERT INTO a VALUES (1, 'a1'); INSERT INTO b VALUES (1, 10)",
    )
    .await
    .unwrap();
    s.execute("SELECT pgsub.create_subscription('tp', $1, ARRAY['pub'], two_phase => true)", &[&nodes.pub_conninfo()])
        .await
        .unwrap();
    wait_for_subscription_sync(&s, "tp", WAIT).await;
    wait_value(&s, "SELECT two_phase_state FROM pgsub.subscription WHERE subname = 'tp'", "enabled", WAIT).await;
    let swap = "BEGIN; ALTER TABLE a RENAME TO tmp; ALTER TABLE b RENAME TO a; ALTER TABLE tmp RENAME TO b; COMMIT";
    s.batch_execute(swap).await.unwrap();
    p.batch_execute(swap).await.unwrap();
    p.batch_execute("BEGIN; INSERT INTO a VALUES (2, 20); INSERT INTO b VALUES (2, 'a2'); PREPARE TRANSACTION 'g1'")
        .await
        .unwrap();
    wait_value(&s, "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'pgsub_%'", "1", WAIT).await;
    wait_value(
        &s,
        "SELECT string_agg(remote_name || '=' || relid::regclass::text, ',' ORDER BY remote_name) FROM pgsub.subscription_table",
        "a=a,b=b",
        WAIT,
    )
    .await;
    // No prepared transaction holds the catalog's rows.
    s.batch_execute("BEGIN; SET LOCAL lock_timeout = '5s'; SELECT * FROM pgsub.sub_rel FOR UPDATE; COMMIT")
        .await
        .expect("pgsub.sub_rel's rows are not locked by the prepared transaction");
    p.batch_execute("COMMIT PREPARED 'g1'").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM pg_prepared_xacts", "0", WAIT).await;
    assert_eq!(one::<String>(&s, "SELECT string_agg(id || ':' || w, ',' ORDER BY id) FROM a").await, "1:10,2:20");
    assert_eq!(one::<String>(&s, "SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM b").await, "1:a1,2:a2");
    assert_replicated_equal(&p, &s).await;
}

/// `create_slot => false` with a slot the publisher does not have, or one pgsub cannot stream
/// from (physical): a WARNING saying so at once (native says nothing; its worker fails at start),
/// and none for a logical pgoutput slot of the database. Once the slot exists, replication runs.
#[tokio::test(flavor = "current_thread")]
async fn an_existing_slot_that_is_missing_or_unusable_is_warned_about() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let (s, notices) = nodes.subscriber.client_with_notices("postgres").await.unwrap();
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").await.unwrap();
    }
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t; SELECT pg_create_physical_replication_slot('phys')")
        .await
        .unwrap();
    let warnings = || warning_messages(&notices);
    let create = |name: &'static str, slot: &'static str| {
        let (s, conninfo) = (&s, nodes.pub_conninfo());
        async move {
            s.execute(
                "SELECT pgsub.create_subscription($1, $2, ARRAY['pub'], enabled => false, create_slot => false, \
                 slot_name => $3, copy_data => false)",
                &[&name, &conninfo, &slot],
            )
            .await
            .expect("created all the same");
        }
    };
    create("nos", "nosuch").await;
    assert_eq!(warnings(), vec!["replication slot \"nosuch\" does not exist on the publisher".to_string()]);
    create("physical", "phys").await;
    assert_eq!(
        warnings().last().map(String::as_str),
        Some("replication slot \"phys\" is not a logical replication slot")
    );
    s.batch_execute("SELECT pgsub.drop_subscription('physical', drop_slot => false)").await.unwrap();
    p.batch_execute("SELECT pg_create_logical_replication_slot('ready', 'pgoutput')").await.unwrap();
    create("ok", "ready").await;
    assert_eq!(warnings().len(), 2, "no warning for a logical pgoutput slot: {:?}", warnings());
    s.batch_execute("SELECT pgsub.drop_subscription('ok')").await.unwrap();

    // Created as the hint says, the slot is used.
    p.batch_execute("SELECT pg_create_logical_replication_slot('nosuch', 'pgoutput')").await.unwrap();
    s.batch_execute("SELECT pgsub.enable_subscription('nos')").await.unwrap();
    wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'nos'", "streaming", WAIT).await;
    p.batch_execute("INSERT INTO t VALUES (1, 'through the slot made by hand')").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 1", "through the slot made by hand", WAIT).await;
    assert_replicated_equal_for(&p, &s, Some(&["nos"])).await;
}

/// A view put in the place of a subscribed table here (the table dropped, a view of its name
/// created): changes for it stop the worker with native's error, `cannot use relation … as
/// logical replication target` (they were skipped with a WARNING that called the view a table);
/// once a table is back and the subscription refreshed, it is copied and the tables converge.
#[tokio::test(flavor = "current_thread")]
async fn drift_table_replaced_by_a_view_locally() {
    let nodes = TwoNodes::start().expect("start");
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text)";
    let (p, s) = drift_setup(&nodes, ddl).await;
    p.batch_execute(&inserts(1, 3)).await.unwrap();
    converge(&p, &s).await;
    s.batch_execute("DROP TABLE t; CREATE VIEW t AS SELECT 1 AS id, 'view'::text AS v").await.unwrap();
    p.batch_execute(&inserts(4, 2)).await.unwrap();
    let needle = "cannot use relation \"public.t\" as logical replication target";
    let err = pgsub_tests::wait_for_subscription_error(&s, "drift", &[needle], WAIT).await;
    assert!(err.contains("This operation is not supported for views."), "{err}");
    // Retried, not skipped: the worker fails again on the same change.
    let again = wait_for_repeated_error(&s, "drift", &[needle], WAIT).await;
    assert!(again.contains("This operation is not supported for views."), "{again}");
    s.batch_execute(&format!("DROP VIEW t; {ddl}; SELECT pgsub.refresh_subscription('drift')")).await.unwrap();
    converge(&p, &s).await;
}
