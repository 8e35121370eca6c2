//! End-to-end: cutting over to the subscriber (issue 20) — `pgsub.wait_for_catchup` returns once
//! everything the publisher wrote up to a position is applied (under load, with an explicit or
//! the current position, past WAL that holds nothing published) and fails clearly when the
//! subscription is disabled, its worker fails, or it is held back past the timeout;
//! `pgsub.sync_sequences` sets the subscriber's sequences beyond every value the publisher
//! handed out (serial, identity, cached, descending, never used, named explicitly) and refuses
//! sequences missing on the publisher without changing anything.
use pgsub_tests::{
    assert_replicated_equal, compare_replicated, must_fail, one, set_sync_hold, wait_for_subscription_error,
    wait_for_subscription_sync, wait_value, TwoNodes,
};
use std::time::Duration;
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(60);

/// A row of `pgsub.sync_sequences`: sequence, publisher_value, previous_value, next_value.
type SyncRow = (String, Option<i64>, Option<i64>, Option<i64>);

/// Every replicated table equal right now, without waiting for the subscriber: what
/// `wait_for_catchup` promises when it returns after the writes stopped.
async fn assert_equal_now(p: &Client, s: &Client, what: &str) {
    let cmp = compare_replicated(p, s, None).await.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(!cmp.is_empty(), "{what}: no table compared");
    for c in &cmp {
        assert!(c.equal(), "{what}: not equal at once: {c}");
    }
}

/// Creates subscription `cut` for publication `pub` and waits for its initial copy.
async fn subscribe(nodes: &TwoNodes, s: &Client) {
    s.execute("SELECT pgsub.create_subscription('cut', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create_subscription");
    wait_for_subscription_sync(s, "cut", WAIT).await;
}

#[tokio::test(flavor = "current_thread")]
async fn sync_sequences_puts_serial_identity_and_descending_sequences_beyond_the_publisher() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.unwrap();
    // The publisher's identity is ALWAYS, the subscriber's BY DEFAULT (the apply writes ids).
    // `down` takes its ids from a descending sequence owned by its column.
    let ddl = |identity: &str| {
        format!(
            "CREATE TABLE ser (id serial PRIMARY KEY, v text);
             CREATE TABLE ident (id bigint GENERATED {identity} AS IDENTITY (CACHE 20) PRIMARY KEY, v text);
             CREATE SEQUENCE down_seq INCREMENT BY -3 START WITH -1 MAXVALUE -1;
             CREATE TABLE down (id bigint PRIMARY KEY DEFAULT nextval('down_seq'), v text);
             ALTER SEQUENCE down_seq OWNED BY down.id;
             CREATE SEQUENCE other_seq;
             CREATE SEQUENCE fresh_seq;"
        )
    };
    p.batch_execute(&ddl("ALWAYS")).await.unwrap();
    s.batch_execute(&ddl("BY DEFAULT")).await.unwrap();
    // Cached values: each publisher session reserves 50 at a time.
    p.batch_execute("ALTER SEQUENCE ser_id_seq CACHE 50; CREATE PUBLICATION pub FOR TABLE ser, ident, down")
        .await
        .unwrap();
    s.batch_execute("CREATE SEQUENCE only_here").await.unwrap();
    subscribe(&nodes, &s).await;

    // 10 020 rows in each table from two sessions taking turns; 501 rows per statement (the
    // cache is 50) leave unused values in each session's cache of ser_id_seq.
    let p2 = nodes.publisher.client("postgres").await.unwrap();
    for round in 0..10 {
        for c in [&p, &p2] {
            c.batch_execute(&format!(
                "INSERT INTO ser (v) SELECT 'r{round}' FROM generate_series(1, 501);
                 INSERT INTO ident (v) SELECT 'r{round}' FROM generate_series(1, 501);
                 INSERT INTO down (v) SELECT 'r{round}' FROM generate_series(1, 501);"
            ))
            .await
            .unwrap();
        }
    }
    p.batch_execute("SELECT nextval('other_seq') FROM generate_series(1, 42)").await.unwrap();
    // Used on the subscriber only: sync_sequences resets it to the publisher's never-used state.
    s.batch_execute("SELECT nextval('fresh_seq') FROM generate_series(1, 5)").await.unwrap();
    assert_eq!(one::<i64>(&p, "SELECT count(*) FROM ser").await, 10_020);

    let lsn: String = one(&s, "SELECT pgsub.wait_for_catchup('cut')::text").await;
    eprintln!("caught up to {lsn}");
    assert_equal_now(&p, &s, "after wait_for_catchup").await;
    // Without the sync, the subscriber's sequences would hand out ids the publisher used.
    assert_eq!(one::<i64>(&s, "SELECT last_value FROM ser_id_seq").await, 1);

    // The default set: the sequences owned by the subscription's tables' columns, by name.
    let rows = s
        .query(
            "SELECT sequence::text, publisher_value, previous_value, next_value FROM pgsub.sync_sequences('cut')",
            &[],
        )
        .await
        .expect("sync_sequences");
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, ["down_seq", "ident_id_seq", "ser_id_seq"], "{rows:?}");
    for r in &rows {
        let (seq, pub_value, previous, next): SyncRow = (r.get(0), r.get(1), r.get(2), r.get(3));
        eprintln!("{seq}: publisher {pub_value:?}, before {previous:?}, next {next:?}");
        // The publisher's own row of the sequence (its cache included).
        let on_pub: i64 = one(&p, &format!("SELECT last_value FROM {seq}")).await;
        assert_eq!(pub_value, Some(on_pub), "{seq}: the publisher's last_value");
        assert_eq!(previous, None, "{seq}: never used on the subscriber before");
        let table = seq.trim_end_matches("_seq").trim_end_matches("_id");
        let next = next.unwrap_or_else(|| panic!("{seq}: no next value"));
        // What nextval() gives on the subscriber now is beyond every id the publisher used.
        let got: i64 = one(&s, &format!("SELECT nextval('{seq}')")).await;
        assert_eq!(got, next, "{seq}: next_value is what nextval returns");
        if seq == "down_seq" {
            let min: i64 = one(&p, &format!("SELECT min(id)::int8 FROM {table}")).await;
            assert!(got < min, "{seq}: {got} must be below every id used on the publisher (min {min})");
            assert_eq!(got, on_pub - 3);
        } else {
            let max: i64 = one(&p, &format!("SELECT max(id)::int8 FROM {table}")).await;
            assert!(got > max, "{seq}: {got} must be above every id used on the publisher (max {max})");
            assert_eq!(got, on_pub + 1);
        }
    }
    // Values a publisher session still holds in its cache are below the subscriber's too.
    for c in [&p, &p2] {
        let cached: i64 = one(c, "SELECT nextval('ser_id_seq')").await;
        let here: i64 = one(&s, "SELECT last_value FROM ser_id_seq").await;
        assert!(cached < here, "a cached publisher value {cached} must be below the subscriber's {here}");
    }

    // Named sequences: one used (42 values), one never used on the publisher.
    let rows = s
        .query(
            "SELECT sequence::text, publisher_value, previous_value, next_value
             FROM pgsub.sync_sequences('cut', ARRAY['other_seq', 'fresh_seq']::regclass[])",
            &[],
        )
        .await
        .expect("sync_sequences with a list");
    let got: Vec<SyncRow> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    assert_eq!(
        got,
        [("other_seq".to_string(), Some(42), None, Some(43)), ("fresh_seq".to_string(), None, Some(5), Some(1))]
    );
    assert_eq!(one::<i64>(&s, "SELECT nextval('other_seq')").await, 43);
    assert_eq!(one::<i64>(&s, "SELECT nextval('fresh_seq')").await, 1);

    // A sequence missing on the publisher: an error naming it, and nothing set (other_seq keeps
    // the value it has here although the publisher's moved on).
    p.batch_execute("SELECT nextval('other_seq') FROM generate_series(1, 100)").await.unwrap();
    let e =
        must_fail(&s, "SELECT * FROM pgsub.sync_sequences('cut', ARRAY['other_seq', 'only_here']::regclass[])", &[])
            .await;
    assert_eq!(e.code, "42P01", "{}", e.text());
    assert!(e.message.contains("only_here") && e.message.contains("does not exist on the publisher"), "{}", e.text());
    assert_eq!(one::<i64>(&s, "SELECT last_value FROM other_seq").await, 43);
    // Not a sequence.
    let e = must_fail(&s, "SELECT * FROM pgsub.sync_sequences('cut', ARRAY['ser']::regclass[])", &[]).await;
    assert_eq!(e.code, "42809", "{}", e.text());
    // An unknown subscription.
    let e = must_fail(&s, "SELECT * FROM pgsub.sync_sequences('nope')", &[]).await;
    assert_eq!(e.code, "42704", "{}", e.text());

    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn wait_for_catchup_returns_with_everything_applied_under_load() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.unwrap();
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").await.unwrap();
    }
    // Written on the publisher only and published nowhere: WAL that holds nothing for pgsub.
    p.batch_execute("CREATE TABLE noise (id serial, pad text); CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    subscribe(&nodes, &s).await;

    // A writer commits batches of 100 rows until told to stop.
    let writer = nodes.publisher.client("postgres").await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_w = stop.clone();
    let load = tokio::spawn(async move {
        let mut next = 1;
        while !stop_w.load(std::sync::atomic::Ordering::Relaxed) {
            writer
                .execute(
                    "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series($1::int, $1::int + 99) g",
                    &[&next],
                )
                .await
                .expect("load");
            next += 100;
        }
        next - 1
    });

    // While the load goes on: a marker row, the publisher's position after its commit, and the
    // wait for that position; when it returns the marker is there.
    let marker = nodes.publisher.client("postgres").await.unwrap();
    for i in 1..=5 {
        marker.execute("INSERT INTO t VALUES ($1, 'marker')", &[&-i]).await.unwrap();
        let target: String = one(&marker, "SELECT pg_current_wal_lsn()::text").await;
        let got: String = s
            .query_one("SELECT pgsub.wait_for_catchup('cut', $1::text::pg_lsn)::text", &[&target])
            .await
            .expect("wait_for_catchup")
            .get(0);
        assert_eq!(got, target, "returns the position waited for");
        let here: i64 = s.query_one("SELECT count(*) FROM t WHERE id = $1", &[&-i]).await.unwrap().get(0);
        assert_eq!(here, 1, "marker {i} (committed before {target}) must be applied when the wait returns");
    }
    assert!(one::<i64>(&s, "SELECT count(*) FROM t WHERE id > 0").await > 0, "the load was applied meanwhile");

    // Writes stop; the default position is the publisher's current one: everything is there.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let last = load.await.unwrap();
    let stopped_at: String = one(&p, "SELECT pg_current_wal_lsn()::text").await;
    let lsn: String = one(&s, "SELECT pgsub.wait_for_catchup('cut')::text").await;
    eprintln!("{last} rows written, caught up to {lsn}");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t WHERE id > 0").await, i64::from(last));
    assert_equal_now(&p, &s, "after the load").await;
    assert!(
        one::<bool>(&p, &format!("SELECT '{lsn}'::pg_lsn >= '{stopped_at}'::pg_lsn")).await,
        "waited for {lsn}, the load ended at {stopped_at}"
    );

    // 20 MB of WAL nothing of which is published: the worker only hears keepalives. The wait
    // ends there too, at or past the publisher's position after that WAL.
    p.batch_execute("INSERT INTO noise (pad) SELECT repeat('n', 1000) FROM generate_series(1, 20000)").await.unwrap();
    let after_noise: String = one(&p, "SELECT pg_current_wal_lsn()::text").await;
    let lsn: String = one(&s, "SELECT pgsub.wait_for_catchup('cut', timeout => '60 s')::text").await;
    assert!(
        one::<bool>(&p, &format!("SELECT '{lsn}'::pg_lsn >= '{after_noise}'::pg_lsn")).await,
        "waited for {lsn}, the noise ended at {after_noise}"
    );
    // A position already applied returns at once.
    let again: String = s
        .query_one("SELECT pgsub.wait_for_catchup('cut', $1::text::pg_lsn)::text", &[&after_noise])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, after_noise);

    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn wait_for_catchup_fails_clearly_when_disabled_held_back_or_failing() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.unwrap();
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").await.unwrap();
    }
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('cut', $1, ARRAY['pub'], enabled => false)", &[&nodes.pub_conninfo()])
        .await
        .unwrap();

    // Disabled: at once, whatever the timeout.
    let e = must_fail(&s, "SELECT pgsub.wait_for_catchup('cut', timeout => '1 h')", &[]).await;
    assert_eq!(e.code, "55000", "{}", e.text());
    assert!(e.message.contains("subscription \"cut\" is disabled"), "{}", e.text());
    assert!(e.hint.contains("enable_subscription"), "{}", e.text());
    // Arguments.
    let e = must_fail(&s, "SELECT pgsub.wait_for_catchup('nope')", &[]).await;
    assert_eq!(e.code, "42704", "{}", e.text());
    s.batch_execute("SELECT pgsub.enable_subscription('cut')").await.unwrap();
    wait_for_subscription_sync(&s, "cut", WAIT).await;
    let e = must_fail(&s, "SELECT pgsub.wait_for_catchup('cut', timeout => '-1 s')", &[]).await;
    assert_eq!(e.code, "22023", "{}", e.text());

    // Held back by a lock on the subscriber's table: the timeout passes, with the positions.
    p.batch_execute("INSERT INTO t VALUES (1, 'one')").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 1", "one", WAIT).await;
    let locker = nodes.subscriber.client("postgres").await.unwrap();
    locker.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await.unwrap();
    p.batch_execute("INSERT INTO t VALUES (2, 'two')").await.unwrap();
    let target: String = one(&p, "SELECT pg_current_wal_lsn()::text").await;
    let e = must_fail(&s, "SELECT pgsub.wait_for_catchup('cut', timeout => '1 s')", &[]).await;
    assert_eq!(e.code, "57014", "{}", e.text());
    assert!(e.message.contains("timed out after") && e.message.contains("\"cut\""), "{}", e.text());
    assert!(e.detail.contains("Target ") && e.detail.contains("durably applied up to"), "{}", e.text());
    // The default target is the publisher's insert position: at or past what pg_current_wal_lsn
    // (the write position) said after the insert.
    let shown = e.detail.trim_start_matches("Target ").split(';').next().unwrap_or_default().to_string();
    assert!(one::<bool>(&p, &format!("SELECT '{shown}'::pg_lsn >= '{target}'::pg_lsn")).await, "{}", e.text());
    // A cancel ends the wait (no timeout: it would wait forever).
    let waiter = nodes.subscriber.client("postgres").await.unwrap();
    let cancel = waiter.cancel_token();
    let wait =
        tokio::spawn(async move { waiter.execute("SELECT pgsub.wait_for_catchup('cut', timeout => NULL)", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The wait holds no transaction id: creating a logical slot on this server (a publisher
    // database here, a downstream subscriber's table sync) waits for every transaction that has
    // one, and used to wait for the whole wait.
    let (waiting, with_xid): (i64, i64) = {
        let r = s
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE backend_xid IS NOT NULL) FROM pg_stat_activity \
                 WHERE state = 'active' AND query = 'SELECT pgsub.wait_for_catchup(''cut'', timeout => NULL)'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((waiting, with_xid), (1, 0), "the waiting backend, and how many of them hold an xid");
    cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), wait).await.expect("the cancel is served within seconds");
    let err = r.unwrap().expect_err("cancelled");
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("57014"), "{err}");
    // Released: the same wait returns and the row is there.
    locker.batch_execute("ROLLBACK").await.unwrap();
    let _: String =
        s.query_one("SELECT pgsub.wait_for_catchup('cut', $1::text::pg_lsn)::text", &[&target]).await.unwrap().get(0);
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 2);

    // Disabled while waiting: the wait ends with that error.
    locker.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await.unwrap();
    p.batch_execute("INSERT INTO t VALUES (3, 'three')").await.unwrap();
    let waiter = nodes.subscriber.client("postgres").await.unwrap();
    let wait =
        tokio::spawn(
            async move { waiter.execute("SELECT pgsub.wait_for_catchup('cut', timeout => '60 s')", &[]).await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.batch_execute("SELECT pgsub.disable_subscription('cut')").await.unwrap();
    let err = wait.await.unwrap().expect_err("disabled while waiting");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(db.code().code(), "55000", "{db:?}");
    assert!(db.message().contains("was disabled while waiting"), "{db:?}");
    locker.batch_execute("ROLLBACK").await.unwrap();
    s.batch_execute("SELECT pgsub.enable_subscription('cut')").await.unwrap();
    let _: String = one(&s, "SELECT pgsub.wait_for_catchup('cut')::text").await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 3);

    // The worker fails (a row the subscriber has already): a wait that begins while it waits to
    // retry ends when the retry fails, with the worker's error; once the cause is gone the same
    // wait returns.
    s.batch_execute("INSERT INTO t VALUES (4, 'local')").await.unwrap();
    p.batch_execute("INSERT INTO t VALUES (4, 'remote')").await.unwrap();
    wait_for_subscription_error(&s, "cut", &["(id)=(4)"], WAIT).await;
    let e = must_fail(&s, "SELECT pgsub.wait_for_catchup('cut', timeout => '60 s')", &[]).await;
    assert_eq!(e.code, "55000", "{}", e.text());
    assert!(e.message.contains("failed while waiting"), "{}", e.text());
    // The retry finds the local row and reports the conflict (the first attempt's plain unique
    // violation led it to apply the transaction row by row).
    assert!(e.detail.contains("conflict=insert_exists"), "{}", e.text());
    // A restarting worker has published no position yet: the origin's durable one is given.
    assert!(!e.detail.contains("durably applied up to none"), "{}", e.text());
    s.batch_execute("DELETE FROM t WHERE id = 4").await.unwrap();
    let _: String = one(&s, "SELECT pgsub.wait_for_catchup('cut')::text").await;
    assert_eq!(one::<String>(&s, "SELECT v FROM t WHERE id = 4").await, "remote");

    // A table whose synchronization is held (testing GUC): the timeout's detail names it.
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE \"Late Table\" (id int PRIMARY KEY)").await.unwrap();
    }
    p.batch_execute("INSERT INTO \"Late Table\" VALUES (1); ALTER PUBLICATION pub ADD TABLE \"Late Table\"")
        .await
        .unwrap();
    set_sync_hold(&nodes.subscriber, &s, "copied").await;
    s.batch_execute("SELECT pgsub.refresh_subscription('cut')").await.unwrap();
    let e = must_fail(&s, "SELECT pgsub.wait_for_catchup('cut', timeout => '1 s')", &[]).await;
    assert_eq!(e.code, "57014", "{}", e.text());
    assert!(
        e.detail.contains("1 of 2 tables have not finished their initial copy: public.\"Late Table\" (copied)."),
        "{}",
        e.text()
    );
    set_sync_hold(&nodes.subscriber, &s, "").await;
    let _: String = one(&s, "SELECT pgsub.wait_for_catchup('cut')::text").await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM \"Late Table\"").await, 1);

    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn periodic_sequence_sync_keeps_the_subscribers_sequences_ahead() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.unwrap();
    let ddl = |identity: &str| {
        format!(
            "CREATE TABLE ser (id serial PRIMARY KEY, v text);
             CREATE TABLE ident (id bigint GENERATED {identity} AS IDENTITY PRIMARY KEY, v text);"
        )
    };
    p.batch_execute(&ddl("ALWAYS")).await.unwrap();
    s.batch_execute(&ddl("BY DEFAULT")).await.unwrap();
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE ser, ident").await.unwrap();
    s.execute(
        "SELECT pgsub.create_subscription('cut', $1, ARRAY['pub'], sequence_sync_interval => '200 ms')",
        &[&nodes.pub_conninfo()],
    )
    .await
    .expect("create_subscription");
    wait_for_subscription_sync(&s, "cut", WAIT).await;
    assert_eq!(
        one::<String>(&s, "SELECT sequence_sync_interval::text || ' ' || sequence_sync_margin FROM pgsub.subscription")
            .await,
        "00:00:00.2 1000"
    );

    // 10 000 rows in each table; sync_sequences is never called.
    for round in 0..10 {
        p.batch_execute(&format!(
            "INSERT INTO ser (v) SELECT 'r{round}' FROM generate_series(1, 1000);
             INSERT INTO ident (v) SELECT 'r{round}' FROM generate_series(1, 1000);"
        ))
        .await
        .unwrap();
    }
    for (seq, table) in [("ser_id_seq", "ser"), ("ident_id_seq", "ident")] {
        let used: i64 = one(&p, &format!("SELECT max(id)::int8 FROM {table}")).await;
        assert_eq!(used, 10_000);
        // The default margin: 1000 increments beyond the publisher's last value.
        wait_value(&s, &format!("SELECT last_value FROM {seq}"), &(used + 1000).to_string(), WAIT).await;
        let next: i64 = one(&s, &format!("SELECT nextval('{seq}')")).await;
        assert!(next > used, "{seq}: the subscriber's next value {next} must be beyond {used}");
    }

    // Margin 0: the next sync sets the publisher's own state once the publisher has gone past
    // the margin left before; a sequence is never moved back.
    s.execute("SELECT pgsub.alter_subscription_options('cut', sequence_sync_margin => 0)", &[]).await.unwrap();
    p.batch_execute("INSERT INTO ser (v) SELECT 'more' FROM generate_series(1, 2000)").await.unwrap();
    wait_value(&s, "SELECT last_value FROM ser_id_seq", "12000", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT last_value FROM ident_id_seq").await, 11_001, "not moved back");

    // A sync that fails (a sequence owned by a subscribed table here that the publisher does
    // not have) is recorded in the stats, and apply goes on.
    s.batch_execute("CREATE SEQUENCE only_here OWNED BY ser.v").await.unwrap();
    wait_value(
        &s,
        "SELECT last_error LIKE 'periodic sequence sync of subscription \"cut\" failed: sequence %only_here% does not exist on the publisher%'
         FROM pgsub.stat_subscription",
        "t",
        WAIT,
    )
    .await;
    p.batch_execute("INSERT INTO ser (v) VALUES ('still applied')").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM ser WHERE v = 'still applied'", "1", WAIT).await;
    assert_eq!(one::<String>(&s, "SELECT status FROM pgsub.stat_subscription").await, "streaming");
    s.execute("SELECT pgsub.alter_subscription_options('cut', sequence_sync_interval => '0')", &[]).await.unwrap();
    assert_eq!(
        one::<Option<String>>(&s, "SELECT sequence_sync_interval::text FROM pgsub.subscription").await,
        None,
        "'0' turns the periodic sync off"
    );
    p.batch_execute("INSERT INTO ident (v) VALUES ('last')").await.unwrap();
    assert_replicated_equal(&p, &s).await;
}

/// The README's takeover of a native subscription by pgsub, and back, under a write load: each
/// side goes on from the other's slot and from the other's origin position (the slot's
/// confirmed_flush_lsn may be behind it), so that no transaction is applied twice — a keyed
/// table would stop on a duplicate key, a table without a key would get duplicate rows — and
/// none is lost.
#[tokio::test(flavor = "current_thread")]
async fn a_native_subscription_is_taken_over_and_given_back_under_load() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    let ddl = "CREATE TABLE t (id bigserial PRIMARY KEY, v text); CREATE TABLE nk (v bigint)";
    p.batch_execute(&format!("{ddl}; CREATE PUBLICATION pub FOR TABLE t, nk")).await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    let conninfo = nodes.pub_conninfo();
    let q = |v: &str| format!("'{}'", v.replace('\'', "''"));
    s.batch_execute(&format!("CREATE SUBSCRIPTION mysub CONNECTION {} PUBLICATION pub", q(&conninfo))).await.unwrap();

    // The writer: a row in each table every few milliseconds, until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let w = nodes.publisher.client("postgres").await.unwrap();
        tokio::spawn(async move {
            let mut n = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                w.batch_execute(&format!("INSERT INTO t (v) VALUES ('w{n}'); INSERT INTO nk VALUES ({n})"))
                    .await
                    .expect("write");
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            n
        })
    };
    wait_value(&s, "SELECT count(*) > 50 FROM nk", "t", WAIT).await;

    let origin_lsn = |external: String| {
        let s = &s;
        async move {
            one::<String>(
                s,
                &format!("SELECT remote_lsn::text FROM pg_replication_origin_status WHERE external_id = ({external})"),
            )
            .await
        }
    };
    for round in 0..2 {
        // Native to pgsub.
        s.batch_execute("ALTER SUBSCRIPTION mysub DISABLE").await.unwrap();
        wait_value(
            &s,
            "SELECT count(*) FROM pg_stat_subscription WHERE subname = 'mysub' AND pid IS NOT NULL",
            "0",
            WAIT,
        )
        .await;
        let lsn = origin_lsn("SELECT 'pg_' || oid FROM pg_subscription WHERE subname = 'mysub'".into()).await;
        s.batch_execute("ALTER SUBSCRIPTION mysub SET (slot_name = NONE)").await.unwrap();
        s.batch_execute("DROP SUBSCRIPTION mysub").await.unwrap();
        s.execute(
            "SELECT pgsub.create_subscription('mysub', $1, ARRAY['pub'], enabled => false, create_slot => false, \
             slot_name => 'mysub', copy_data => false)",
            &[&conninfo],
        )
        .await
        .expect("create_subscription on the native slot");
        s.execute(
            "SELECT pg_replication_origin_advance('pgsub_' || subid, $1::text::pg_lsn) FROM pgsub.subscription \
             WHERE subname = 'mysub'",
            &[&lsn],
        )
        .await
        .unwrap();
        s.batch_execute("SELECT pgsub.enable_subscription('mysub')").await.unwrap();
        let applied = one::<i64>(&s, "SELECT count(*) FROM nk").await;
        wait_value(&s, &format!("SELECT count(*) > {} FROM nk", applied + 50), "t", WAIT).await;
        if round == 1 {
            break;
        }
        // pgsub to native.
        s.batch_execute("SELECT pgsub.disable_subscription('mysub')").await.unwrap();
        let lsn = origin_lsn("SELECT 'pgsub_' || subid FROM pgsub.subscription WHERE subname = 'mysub'".into()).await;
        s.batch_execute("SELECT pgsub.drop_subscription('mysub', drop_slot => false)").await.unwrap();
        s.batch_execute(&format!(
            "CREATE SUBSCRIPTION mysub CONNECTION {} PUBLICATION pub \
             WITH (create_slot = false, slot_name = 'mysub', enabled = false, copy_data = false)",
            q(&conninfo)
        ))
        .await
        .unwrap();
        s.execute(
            "SELECT pg_replication_origin_advance((SELECT 'pg_' || oid FROM pg_subscription WHERE subname = 'mysub'), \
             $1::text::pg_lsn)",
            &[&lsn],
        )
        .await
        .unwrap();
        s.batch_execute("ALTER SUBSCRIPTION mysub ENABLE").await.unwrap();
        let applied = one::<i64>(&s, "SELECT count(*) FROM nk").await;
        wait_value(&s, &format!("SELECT count(*) > {} FROM nk", applied + 50), "t", WAIT).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.unwrap();
    s.execute("SELECT pgsub.wait_for_catchup('mysub')", &[]).await.expect("caught up");
    assert_eq!(one::<i64>(&s, "SELECT count(DISTINCT v) FROM nk").await, written, "every row, once");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM nk").await, written, "no row twice");
    assert_replicated_equal(&p, &s).await;
}

/// `disable_subscription` returns once the worker has exited, so the origin's position read next
/// is final (the pgsub-to-native handover reads it and advances the native origin to it). Here the
/// worker is held inside a transaction by a lock when it is disabled: it used to apply that
/// transaction after the function returned, moving the origin past the position read (the
/// native side would then apply it again).
#[tokio::test(flavor = "current_thread")]
async fn disable_returns_after_the_worker_has_exited_and_the_origin_stays() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.unwrap();
    p.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    s.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").await.unwrap();
    subscribe(&nodes, &s).await;
    p.batch_execute("INSERT INTO t VALUES (1, 'before')").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM t", "1", WAIT).await;
    // Another session holds the table: the worker waits for it inside the remote transaction.
    let locker = nodes.subscriber.client("postgres").await.unwrap();
    locker.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await.unwrap();
    p.batch_execute("INSERT INTO t VALUES (2, 'held')").await.unwrap();
    wait_value(
        &s,
        "SELECT count(*) > 0 FROM pg_locks l JOIN pgsub.stat_subscription st ON st.pid = l.pid \
         WHERE st.subname = 'cut' AND NOT l.granted",
        "t",
        WAIT,
    )
    .await;
    s.batch_execute("SELECT pgsub.disable_subscription('cut')").await.unwrap();
    let pid: Option<i32> = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'cut'").await;
    assert_eq!(pid, None, "the worker has exited when disable_subscription returns");
    let origin = "SELECT remote_lsn::text FROM pg_replication_origin_status \
                  WHERE external_id = (SELECT 'pgsub_' || subid FROM pgsub.subscription WHERE subname = 'cut')";
    let read: String = one(&s, origin).await;
    locker.batch_execute("COMMIT").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(one::<String>(&s, origin).await, read, "the origin moved after disable_subscription returned");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM t").await, 1, "nothing applied after it returned");
    assert_eq!(one::<String>(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'cut'").await, "disabled");
    s.batch_execute("SELECT pgsub.enable_subscription('cut')").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM t", "2", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}
