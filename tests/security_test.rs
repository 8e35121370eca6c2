//! End-to-end: security. Who may call pgsub's functions (every function of schema pgsub checked
//! with has_function_privilege), passwords never shown to non-superusers (views, error messages)
//! nor written to the subscriber's log, the apply worker running with the subscription owner's
//! privileges, and hostile table/schema/column names replicating without being executed.
//! (lifecycle_test.rs has the basic non-superuser checks; this file goes through every function,
//! view and message.)
use pgsub_tests::{
    assert_replicated_equal, assert_replicated_equal_except, assert_replicated_equal_for, assert_rows_equal, must_fail,
    one, openssl_cert, query_text, tls_publisher_opts, wait_for, wait_for_repeated_error, wait_for_subscription_error,
    wait_for_subscription_sync, wait_value, ClusterOpts, TwoNodes,
};
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(90);

/// Every row of a query as text, in a stable order.
async fn contents(c: &Client, query: &str) -> String {
    let q = format!("SELECT coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), '') FROM ({query}) r");
    c.query_one(q.as_str(), &[]).await.unwrap_or_else(|e| panic!("{query}: {e}")).get(0)
}

// ---------------------------------------------------------------------------------------------

/// The management functions: revoked from PUBLIC, granted to pgsub_admin (`check_health` and
/// `publisher_slots`, which read the publishers with the stored credentials, also to pg_monitor).
const MANAGEMENT: &[&str] = &[
    "create_subscription",
    "drop_subscription",
    "enable_subscription",
    "disable_subscription",
    "alter_subscription_connection",
    "alter_subscription_publications",
    "alter_subscription_options",
    "rename_subscription",
    "alter_subscription_owner",
    "refresh_subscription",
    "skip_transaction",
    "_skip_transaction",
    "reset_stats",
    "wait_for_catchup",
    "_wait_for_catchup",
    "sync_sequences",
    "_sync_sequences",
    "verify_subscription",
    "_verify_subscription",
    "check_health",
    "publisher_slots",
];

/// Helpers the views call with the caller's privileges, and `lag_history`; read-only, for everyone.
/// (`_preloaded` says whether pgsub is in shared_preload_libraries.)
const VIEW_HELPERS: &[&str] = &[
    "_ts",
    "_current_database_oid",
    "_lsn",
    "_mask_conninfo",
    "_stat_progress",
    "_stat_counters",
    "_sync_progress",
    "_stat_workers",
    "_preloaded",
    "_database_served",
    "_health_arguments",
    "_lock_waits",
    "_stat_names",
    "_stat_databases",
    "_stat_conflicts",
    "_health_state",
    "_stat_tables",
    "_stat_rates",
    "_lag_history",
    "_no_such_subscription",
    "lag_history",
];
/// Run by the extension's own script only: closed to everyone else.
const INTERNAL: &[&str] = &["_extension_created"];
/// Event trigger functions: SECURITY DEFINER (they change pgsub's closed catalog for whoever runs
/// the DDL), closed to every role, run only by their event trigger.
const EVENT_TRIGGER_FUNCTIONS: &[&str] = &["_forget_dropped_tables", "_warn_published_catalog"];

/// A publisher and a subscriber, table `t (id int PRIMARY KEY, v text)` on both, publication
/// `pub` for it.
async fn nodes_with_published_t() -> (TwoNodes, Client, Client) {
    // Prepared transactions on the subscriber: a pgsub_admin member's two_phase subscription.
    let nodes = TwoNodes::start_with(
        ClusterOpts::publisher(),
        ClusterOpts::subscriber().with_conf("max_prepared_transactions = 10"),
    )
    .expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").await.unwrap();
    }
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    (nodes, p, s)
}

#[tokio::test(flavor = "current_thread")]
async fn only_superusers_and_pgsub_admin_may_manage() {
    let (nodes, p, s) = nodes_with_published_t().await;
    s.batch_execute(
        "CREATE ROLE plain LOGIN; CREATE ROLE admin1 LOGIN; GRANT pgsub_admin TO admin1;
         GRANT INSERT, UPDATE, DELETE, SELECT, TRUNCATE ON t TO admin1;",
    )
    .await
    .unwrap();

    // Every function in schema pgsub: management ones are closed to a plain role and open to
    // pgsub_admin; anything else must be one of the known read-only view helpers.
    let rows = s
        .query(
            "SELECT p.oid::regprocedure::text, p.proname::text, p.prosecdef,
                    has_function_privilege('plain', p.oid, 'EXECUTE'),
                    has_function_privilege('admin1', p.oid, 'EXECUTE'),
                    has_function_privilege('public', p.oid, 'EXECUTE')
             FROM pg_proc p WHERE p.pronamespace = 'pgsub'::regnamespace ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    for r in &rows {
        let (sig, name, secdef): (String, String, bool) = (r.get(0), r.get(1), r.get(2));
        let (plain, admin, public): (bool, bool, bool) = (r.get(3), r.get(4), r.get(5));
        seen.push(name.clone());
        if MANAGEMENT.contains(&name.as_str()) {
            assert!(!plain && !public, "{sig}: EXECUTE must be revoked from PUBLIC");
            assert!(admin, "{sig}: pgsub_admin may execute");
        } else if INTERNAL.contains(&name.as_str()) {
            assert!(!plain && !public && !admin && !secdef, "{sig}: internal, closed to every role");
        } else if EVENT_TRIGGER_FUNCTIONS.contains(&name.as_str()) {
            assert!(!plain && !public && !admin, "{sig}: an event trigger's, closed to every role");
        } else {
            assert!(
                VIEW_HELPERS.contains(&name.as_str()),
                "{sig}: a function that is neither management nor a known view helper"
            );
            assert!(!secdef, "{sig}: a helper open to everyone must not be SECURITY DEFINER");
        }
    }
    for f in MANAGEMENT.iter().chain(VIEW_HELPERS.iter()).chain(INTERNAL.iter()).chain(EVENT_TRIGGER_FUNCTIONS.iter()) {
        assert!(seen.iter().any(|n| n == f), "pgsub.{f} exists");
    }
    // The catalog tables themselves are closed; the views are open.
    for (table, who, want) in [
        ("pgsub.sub", "plain", false),
        ("pgsub.sub", "admin1", false),
        ("pgsub.sub_rel", "plain", false),
        ("pgsub.released_origin", "plain", false),
        ("pgsub.released_origin", "admin1", false),
        ("pgsub.conflict_log", "plain", false),
        ("pgsub.conflict_log", "admin1", true),
        ("pgsub.subscription", "plain", true),
        ("pgsub.stat_subscription", "plain", true),
        ("pgsub.subscription_table", "plain", true),
    ] {
        let got: bool =
            s.query_one("SELECT has_table_privilege($1, $2, 'SELECT')", &[&who, &table]).await.unwrap().get(0);
        assert_eq!(got, want, "SELECT on {table} for {who}");
    }

    // The calls themselves: a plain role is refused by the privilege system.
    let ci = nodes.pub_conninfo();
    let plain = nodes.subscriber.client_as("plain", "postgres").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('su_sub', $1, ARRAY['pub'], enabled => false)", &[&ci])
        .await
        .expect("superuser creates");
    let calls: [(&str, &[&(dyn ToSql + Sync)]); 18] = [
        ("SELECT pgsub.create_subscription('p', $1, ARRAY['pub'])", &[&ci]),
        ("SELECT pgsub.drop_subscription('su_sub')", &[]),
        ("SELECT pgsub.enable_subscription('su_sub')", &[]),
        ("SELECT pgsub.disable_subscription('su_sub')", &[]),
        ("SELECT pgsub.alter_subscription_connection('su_sub', $1)", &[&ci]),
        ("SELECT pgsub.alter_subscription_publications('su_sub', ARRAY['pub'])", &[]),
        ("SELECT pgsub.refresh_subscription('su_sub')", &[]),
        ("SELECT pgsub.alter_subscription_options('su_sub', streaming => true)", &[]),
        ("SELECT pgsub.rename_subscription('su_sub', 'x')", &[]),
        ("SELECT pgsub.alter_subscription_owner('su_sub', 'plain')", &[]),
        ("SELECT pgsub.skip_transaction('su_sub', '0/1')", &[]),
        ("SELECT pgsub._skip_transaction('su_sub', '0/1')", &[]),
        ("SELECT pgsub.wait_for_catchup('su_sub')", &[]),
        ("SELECT pgsub._wait_for_catchup('su_sub', NULL, NULL)", &[]),
        ("SELECT * FROM pgsub.sync_sequences('su_sub')", &[]),
        ("SELECT * FROM pgsub._sync_sequences('su_sub', NULL)", &[]),
        ("SELECT * FROM pgsub.verify_subscription('su_sub')", &[]),
        ("SELECT * FROM pgsub._verify_subscription('su_sub', NULL, 'checksum', 100)", &[]),
    ];
    for (sql, params) in calls {
        let (code, text) = must_fail(&plain, sql, params).await.code_and_text();
        assert_eq!(code, "42501", "{sql}: {text}");
        assert!(text.contains("permission denied for function"), "{sql}: {text}");
    }
    // Even with EXECUTE granted by mistake, the functions check the role themselves.
    s.batch_execute("GRANT EXECUTE ON FUNCTION pgsub.disable_subscription(text) TO plain").await.unwrap();
    let (code, text) = must_fail(&plain, "SELECT pgsub.disable_subscription('su_sub')", &[]).await.code_and_text();
    assert_eq!(code, "42501");
    assert!(text.contains("permission denied to manage pgsub subscriptions") && text.contains("pgsub_admin"), "{text}");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pgsub.subscription").await, 1, "nothing changed");

    // A pgsub_admin member (not a superuser) must authenticate to the publisher with a password
    // of its own (PostgreSQL 16's password_required): not without one in the string, and not
    // where the publisher does not ask for it (here: postgres over TCP is trusted), else it would
    // use the subscriber server's own identity or password file.
    let pw_ci = password_conninfo(&nodes, &p).await;
    let admin = nodes.subscriber.client_as("admin1", "postgres").await.unwrap();
    let port = nodes.publisher.port();
    let trusted = format!("host=127.0.0.1 port={port} dbname=postgres user=postgres password=unused");
    for (conninfo, says) in [
        (&ci, "must give a password in the connection string"),
        (&trusted, "does not request a password. | Make the publisher's pg_hba.conf ask this user"),
    ] {
        let (code, text) = must_fail(&admin, "SELECT pgsub.create_subscription('nopw', $1, ARRAY['pub'])", &[conninfo])
            .await
            .code_and_text();
        assert_eq!(code, "2F003", "{text}");
        assert!(text.contains("password is required") && text.contains(says), "{text}");
    }
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pgsub.subscription WHERE subname = 'nopw'").await, 0);
    assert_eq!(one::<i64>(&p, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'nopw'").await, 0);
    // A superuser's subscription needs no password (su_sub above, created with `ci`).
    admin
        .execute(
            "SELECT pgsub.create_subscription('admin_sub', $1, ARRAY['pub'], run_as_owner => true, two_phase => true)",
            &[&pw_ci],
        )
        .await
        .expect("pgsub_admin member creates");
    assert_eq!(
        one::<String>(&s, "SELECT owner::text FROM pgsub.subscription WHERE subname = 'admin_sub'").await,
        "admin1"
    );
    wait_for_subscription_sync(&admin, "admin_sub", WAIT).await;
    // Its worker (running as admin1, who has no privilege on pgsub's catalog) enables the
    // pending two_phase once the table is ready.
    wait_value(&admin, "SELECT two_phase_state FROM pgsub.subscription WHERE subname = 'admin_sub'", "enabled", WAIT)
        .await;
    p.batch_execute("INSERT INTO t VALUES (1, 'via admin1'); UPDATE t SET v = 'updated' WHERE id = 1").await.unwrap();
    wait_value(&admin, "SELECT v FROM t WHERE id = 1", "updated", WAIT).await;
    // It may repoint its own subscription, but not one owned by somebody else (the worker would
    // apply whatever that publisher sends with the other owner's privileges).
    let (code, text) =
        must_fail(&admin, "SELECT pgsub.alter_subscription_connection('admin_sub', $1)", &[&ci]).await.code_and_text();
    assert_eq!(code, "2F003", "repointing to a connection without a password: {text}");
    admin
        .execute("SELECT pgsub.alter_subscription_connection('admin_sub', $1)", &[&pw_ci])
        .await
        .expect("alter own connection");
    // The worker checks too: once the publisher stops asking repl for a password, the
    // subscription errors (and retries) instead of connecting.
    nodes
        .publisher
        .set_hba(&format!("host all repl 127.0.0.1/32 trust\nhost replication repl 127.0.0.1/32 trust\n{PUB_HBA}"))
        .expect("hba");
    // The reload is asynchronous: wait until repl really gets in over TCP without a password.
    let trusted_repl = format!("host=127.0.0.1 port={port} dbname=postgres user=repl");
    wait_for("the publisher to trust repl", Duration::from_secs(30), || {
        let trusted_repl = &trusted_repl;
        async move { Ok(tokio_postgres::connect(trusted_repl, tokio_postgres::NoTls).await.ok().map(|_| ())) }
    })
    .await
    .expect("reloaded hba");
    admin.batch_execute("SELECT pgsub.disable_subscription('admin_sub')").await.expect("disable");
    // The worker must really stop (and reconnect later), not just see the flag flip twice.
    wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'admin_sub'", "disabled", WAIT).await;
    admin.batch_execute("SELECT pgsub.enable_subscription('admin_sub')").await.expect("enable");
    // The worker refuses the password-less connection.
    wait_for_subscription_error(&s, "admin_sub", &["password is required"], Duration::from_secs(60)).await;
    ask_passwords(&nodes).await;
    p.batch_execute("INSERT INTO t VALUES (2, 'after the password is asked again')").await.unwrap();
    wait_value(&admin, "SELECT count(*)::text FROM t WHERE id = 2", "1", WAIT).await;
    // reset_stats() without a name resets what the caller may (its own subscription), and
    // leaves the superuser's alone (named in a NOTICE) instead of failing as a whole.
    admin.batch_execute("SELECT pgsub.reset_stats()").await.expect("reset own statistics");
    let reset: String = one(
        &s,
        "SELECT string_agg(subname || ' ' || (stats_reset IS NOT NULL), ',' ORDER BY subname) FROM pgsub.stat_subscription",
    )
    .await;
    assert_eq!(reset, "admin_sub true,su_sub false");
    admin
        .batch_execute("SELECT pgsub.alter_subscription_publications('admin_sub', ARRAY['pub'], copy_data => false)")
        .await
        .expect("alter own publications");
    let other = format!("{ci} application_name=hijacked");
    for (sql, params) in [
        (
            "SELECT pgsub.alter_subscription_connection('su_sub', $1)",
            &[&other as &(dyn ToSql + Sync)] as &[&(dyn ToSql + Sync)],
        ),
        ("SELECT pgsub.alter_subscription_publications('su_sub', ARRAY['pub'])", &[]),
        ("SELECT pgsub.alter_subscription_options('su_sub', origin => 'none')", &[]),
        ("SELECT pgsub.rename_subscription('su_sub', 'mine now')", &[]),
        ("SELECT pgsub.alter_subscription_owner('su_sub', 'admin1')", &[]),
    ] {
        let (code, text) = must_fail(&admin, sql, params).await.code_and_text();
        assert_eq!(code, "42501", "{sql}: {text}");
        assert!(text.contains("owner of subscription \"su_sub\""), "{text}");
    }
    let su_conninfo: String = one(&s, "SELECT conninfo FROM pgsub.subscription WHERE subname = 'su_sub'").await;
    assert!(!su_conninfo.contains("hijacked"), "{su_conninfo}");
    admin.batch_execute("SELECT pgsub.disable_subscription('admin_sub')").await.expect("disable");
    admin.batch_execute("SELECT pgsub.enable_subscription('admin_sub')").await.expect("enable");
    // Compared before admin_sub, the one subscription that replicates here, is dropped (su_sub
    // is never enabled); nothing is written afterwards.
    assert_replicated_equal_for(&p, &s, Some(&["admin_sub"])).await;
    admin.batch_execute("SELECT pgsub.drop_subscription('admin_sub')").await.expect("pgsub_admin member drops");
    assert_eq!(one::<i64>(&p, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'admin_sub'").await, 0);
    // Revoking the membership takes the right away again.
    s.batch_execute("REVOKE pgsub_admin FROM admin1").await.unwrap();
    let (code, _) = must_fail(&admin, "SELECT pgsub.drop_subscription('su_sub')", &[]).await.code_and_text();
    assert_eq!(code, "42501");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pgsub.subscription WHERE subname = 'su_sub'").await, 1);
}

// ---------------------------------------------------------------------------------------------

const PASSWORD: &str = "Pw-s3cr3t-7731";
const WRONG_PASSWORD: &str = "Wr0ng-pw-4419";

const PUB_HBA: &str = "local all all trust
host all postgres 127.0.0.1/32 trust
host replication postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
";

/// A publisher connection that authenticates with a password, as a subscription owned by a
/// non-superuser must: role `repl` (REPLICATION, SELECT on the tables in public) over TCP with
/// SCRAM (`PUB_HBA`). Call after the published tables exist.
async fn password_conninfo(nodes: &TwoNodes, p: &Client) -> String {
    p.batch_execute(&format!(
        "CREATE ROLE repl LOGIN REPLICATION PASSWORD '{PASSWORD}'; GRANT SELECT ON ALL TABLES IN SCHEMA public TO repl;"
    ))
    .await
    .unwrap();
    ask_passwords(nodes).await;
    format!("host=127.0.0.1 port={} dbname=postgres user=repl password={PASSWORD}", nodes.publisher.port())
}

/// Installs `PUB_HBA` on the publisher and waits until it is in force (a reload is
/// asynchronous): until role `repl` is refused over TCP without a password.
async fn ask_passwords(nodes: &TwoNodes) {
    nodes.publisher.set_hba(PUB_HBA).expect("hba");
    let without = format!("host=127.0.0.1 port={} dbname=postgres user=repl", nodes.publisher.port());
    wait_for("the publisher to ask repl for a password", Duration::from_secs(30), || {
        let without = &without;
        async move { Ok(tokio_postgres::connect(without, tokio_postgres::NoTls).await.is_err().then_some(())) }
    })
    .await
    .expect("reloaded hba");
}

/// Every column of every row a role sees in pgsub's views, as one text.
async fn everything_visible(c: &Client) -> String {
    let mut out = String::new();
    for v in ["pgsub.subscription", "pgsub.stat_subscription", "pgsub.subscription_table"] {
        out.push_str(&contents(c, &format!("SELECT * FROM {v}")).await);
        out.push('\n');
    }
    out
}

#[tokio::test(flavor = "current_thread")]
async fn passwords_never_shown_nor_logged() {
    let sub_opts = ClusterOpts::subscriber().with_conf("log_min_messages = debug1");
    let mut nodes = TwoNodes::start_with(ClusterOpts::publisher(), sub_opts).expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    for c in [&p, &nodes.subscriber.client("postgres").await.unwrap()] {
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").await.unwrap();
    }
    p.batch_execute(&format!(
        "CREATE PUBLICATION pub FOR TABLE t; CREATE ROLE repl LOGIN REPLICATION PASSWORD '{PASSWORD}'; GRANT SELECT ON t TO repl;"
    ))
    .await
    .unwrap();
    ask_passwords(&nodes).await;
    let s = nodes.subscriber.client("postgres").await.unwrap();
    s.batch_execute(
        "CREATE ROLE plain LOGIN; CREATE ROLE admin1 LOGIN; GRANT pgsub_admin TO admin1;
         GRANT SELECT, INSERT, UPDATE, DELETE ON t TO admin1;",
    )
    .await
    .unwrap();
    let port = nodes.publisher.port();
    let good = format!("host=127.0.0.1 port={port} dbname=postgres user=repl password={PASSWORD}");
    let wrong = format!("host=127.0.0.1 port={port} dbname=postgres user=repl password={WRONG_PASSWORD}");
    let admin = nodes.subscriber.client_as("admin1", "postgres").await.unwrap();
    let plain = nodes.subscriber.client_as("plain", "postgres").await.unwrap();

    // Error messages never carry the password, whoever calls.
    for c in [&s, &admin] {
        let (code, text) =
            must_fail(c, "SELECT pgsub.create_subscription('w', $1, ARRAY['pub'])", &[&wrong]).await.code_and_text();
        assert_eq!(code, "28P01", "{text}");
        assert!(text.contains("password authentication failed"), "{text}");
        for bad in [
            format!("host=127.0.0.1 port=abc password={WRONG_PASSWORD}"),
            format!("host=127.0.0.1 password='{WRONG_PASSWORD} unterminated"),
            format!("bogus password={WRONG_PASSWORD}"),
            format!("postgresql://repl:{WRONG_PASSWORD}@127.0.0.1:abc/postgres"),
            format!("postgresql://repl@127.0.0.1:{port}/postgres?password={WRONG_PASSWORD}&bogus=1"),
            // Parse errors that quote the piece of the string holding the password.
            format!("postgresql://repl:{WRONG_PASSWORD}%zz@127.0.0.1:{port}/postgres"),
            format!("postgresql://repl@127.0.0.1:{port}/postgres?password={WRONG_PASSWORD}%00"),
            format!("postgresql://repl:{WRONG_PASSWORD}@[::1/postgres"),
            // A misspelt keyword, a URI prefix in capitals (libpq knows neither).
            format!("host=127.0.0.1 pasword={WRONG_PASSWORD}"),
            format!("POSTGRESQL://repl:{WRONG_PASSWORD}@127.0.0.1:{port}/postgres"),
        ] {
            let (code, text) =
                must_fail(c, "SELECT pgsub.create_subscription('w', $1, ARRAY['pub'])", &[&bad]).await.code_and_text();
            assert_eq!(code, "42601", "{bad}: {text}");
            assert!(!text.contains(WRONG_PASSWORD), "password in the error: {text}");
            assert!(text.contains("********"), "the string is shown masked: {text}");
            assert!(!text.contains("option \"********\""), "only the secret is masked: {text}");
        }
    }

    // A working subscription with a password, created by a pgsub_admin member.
    admin
        .execute("SELECT pgsub.create_subscription('sec', $1, ARRAY['pub'], run_as_owner => true)", &[&good])
        .await
        .expect("create with password");
    wait_for_subscription_sync(&s, "sec", WAIT).await;
    p.batch_execute("INSERT INTO t VALUES (1, 'one')").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 1", "one", WAIT).await;
    for c in [&plain, &admin] {
        let seen = everything_visible(c).await;
        assert!(seen.contains("password=********"), "masked conninfo shown: {seen}");
        assert!(!seen.contains(PASSWORD), "password visible to a non-superuser: {seen}");
    }
    assert!(everything_visible(&s).await.contains(PASSWORD), "a superuser sees the whole conninfo");
    // Altering to a wrong password is refused without echoing it.
    let (code, text) =
        must_fail(&admin, "SELECT pgsub.alter_subscription_connection('sec', $1)", &[&wrong]).await.code_and_text();
    assert_eq!(code, "28P01");
    assert!(!text.contains(WRONG_PASSWORD), "{text}");
    // Option values out of range are refused before they reach the catalog (a year of
    // centuries used to wrap around and fail the table's CHECK constraint, whose DETAIL printed
    // the row with its connection string), and any constraint violation of the catalog row is
    // raised without that DETAIL: a probe constraint stands for one.
    for (arg, says) in [("'1000000 years'", "at most 1 year"), ("'1 microsecond'", "at least 1 millisecond")] {
        let sql = format!("SELECT pgsub.alter_subscription_options('sec', sequence_sync_interval => {arg})");
        let (code, text) = must_fail(&admin, &sql, &[]).await.code_and_text();
        assert_eq!(code, "22023", "{text}");
        assert!(text.contains(says), "{text}");
    }
    s.batch_execute("ALTER TABLE pgsub.sub ADD CONSTRAINT probe CHECK (subname <> 'probe')").await.unwrap();
    let (code, text) = must_fail(&admin, "SELECT pgsub.rename_subscription('sec', 'probe')", &[]).await.code_and_text();
    assert_eq!(code, "23514", "{text}");
    assert!(text.contains("violates check constraint \"probe\""), "{text}");
    assert!(!text.contains(PASSWORD) && !text.contains("Failing row"), "the row in the error: {text}");
    s.batch_execute("ALTER TABLE pgsub.sub DROP CONSTRAINT probe").await.unwrap();

    // Connection failures in the worker: the publisher changes the password; the worker fails to
    // log in again and again, its errors carry no password.
    p.batch_execute(
        "ALTER ROLE repl PASSWORD 'rotated-elsewhere'; SELECT pg_terminate_backend(pid) FROM pg_stat_replication",
    )
    .await
    .unwrap();
    // The worker reports the failed logins.
    wait_for_repeated_error(&s, "sec", &["password authentication failed"], WAIT).await;
    for c in [&plain, &admin, &s] {
        let seen = everything_visible(c).await;
        let last_error: Option<String> =
            one(c, "SELECT string_agg(last_error, E'\\n') FROM pgsub.stat_subscription").await;
        // The function behind the view, called directly, shows no more than the view.
        let direct: Option<String> = one(c, "SELECT string_agg(last_error, E'\\n') FROM pgsub._stat_counters()").await;
        assert_eq!(direct.is_some(), last_error.is_some(), "_stat_counters(): {direct:?}");
        // An error can quote row values: a role without the owner's privileges, pgsub_admin or
        // pg_read_all_stats sees NULL (its count and time stay visible).
        if std::ptr::eq(c, &plain) {
            assert_eq!(last_error, None, "a plain role reads the error text");
            let counted: i64 = one(c, "SELECT sum(error_count)::int8 FROM pgsub.stat_subscription").await;
            assert!(counted > 0);
            continue;
        }
        let last_error = last_error.expect("the error text");
        assert!(last_error.contains("password authentication failed for user \"repl\""), "{last_error}");
        assert!(!last_error.contains(PASSWORD), "password in last_error: {last_error}");
        if !std::ptr::eq(c, &s) {
            assert!(!seen.contains(PASSWORD), "{seen}");
        }
    }
    // Restarts of the subscriber on top, then the password is set back and it resumes.
    drop((plain, admin, s));
    nodes.subscriber.restart().expect("restart subscriber");
    let s = nodes.subscriber.client("postgres").await.unwrap();
    // A failed login after the restart.
    wait_for_subscription_error(&s, "sec", &["password authentication failed"], WAIT).await;
    p.batch_execute(&format!("ALTER ROLE repl PASSWORD '{PASSWORD}'; INSERT INTO t VALUES (2, 'two')")).await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 2", "two", WAIT).await;
    // Compared before the drop, after which no subscription is left.
    assert_replicated_equal(&p, &s).await;
    s.batch_execute("SELECT pgsub.drop_subscription('sec')").await.expect("drop");

    // pgsub never wrote either password to the subscriber's log, at debug1, through all this.
    let log = nodes.subscriber.log();
    assert!(log.contains("password authentication failed"), "the failures are in the log");
    assert!(log.contains("DEBUG"), "debug1 logging was on");
    for pw in [PASSWORD, WRONG_PASSWORD] {
        let hits: Vec<&str> = log.lines().filter(|l| l.contains(pw)).collect();
        assert!(hits.is_empty(), "password {pw} in the subscriber log:\n{}", hits.join("\n"));
    }
}

// ---------------------------------------------------------------------------------------------

/// With `run_as_owner => true` (PostgreSQL 15's behaviour, and 16's opt-out) the apply worker
/// and the initial copy write with the subscription owner's privileges.
#[tokio::test(flavor = "current_thread")]
async fn apply_runs_with_the_subscription_owners_privileges() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    for c in [&p, &s] {
        c.batch_execute(
            "CREATE TABLE allowed (id int PRIMARY KEY, v text); CREATE TABLE denied (id int PRIMARY KEY, v text)",
        )
        .await
        .unwrap();
    }
    p.batch_execute(
        "CREATE PUBLICATION pub FOR TABLE allowed, denied;
         INSERT INTO allowed VALUES (1, 'copied');
         INSERT INTO denied SELECT g, 'initial' FROM generate_series(1, 5) g;",
    )
    .await
    .unwrap();
    // The owner: pgsub_admin member, not a superuser, may write `allowed` but only read `denied`.
    s.batch_execute(
        "CREATE ROLE owner1 LOGIN; GRANT pgsub_admin TO owner1;
         GRANT SELECT, INSERT, UPDATE, DELETE ON allowed TO owner1;
         GRANT SELECT ON denied TO owner1;",
    )
    .await
    .unwrap();
    assert!(!one::<bool>(&s, "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = 'owner1'").await);
    let owner = nodes.subscriber.client_as("owner1", "postgres").await.unwrap();
    let pw_ci = password_conninfo(&nodes, &p).await;
    owner
        .execute("SELECT pgsub.create_subscription('own', $1, ARRAY['pub'], run_as_owner => true)", &[&pw_ci])
        .await
        .expect("create as owner1");

    // The initial copy of `denied` is refused (COPY checks the owner's INSERT privilege too).
    let err = wait_for_repeated_error(&s, "own", &["permission denied for table denied"], WAIT).await;
    eprintln!("initial copy error: {err}");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM denied").await, 0, "nothing copied into denied");
    assert_eq!(one::<String>(&s, "SELECT v FROM allowed WHERE id = 1").await, "copied");
    s.batch_execute("GRANT INSERT ON denied TO owner1").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM denied", "5", WAIT).await;
    wait_for_subscription_sync(&s, "own", WAIT).await;
    // The worker is logged in as owner1.
    let user: String = one(
        &s,
        "SELECT a.usename::text FROM pg_stat_activity a JOIN pgsub.stat_subscription st ON st.pid = a.pid WHERE st.subname = 'own'",
    )
    .await;
    assert_eq!(user, "owner1");

    // Without INSERT again: a run of inserts (loaded with COPY), then a single insert, both in
    // transactions that also write `allowed`: permission errors naming the table, nothing written.
    s.batch_execute("REVOKE INSERT ON denied FROM owner1").await.unwrap();
    p.batch_execute("BEGIN; INSERT INTO allowed VALUES (2, 'same txn'); INSERT INTO denied SELECT g, 'batch' FROM generate_series(10, 40) g; COMMIT")
        .await
        .unwrap();
    p.batch_execute("BEGIN; INSERT INTO denied VALUES (50, 'single'); INSERT INTO allowed VALUES (3, 'later'); COMMIT")
        .await
        .unwrap();
    let err =
        wait_for_repeated_error(&s, "own", &["permission denied for table denied", "\"public.denied\""], WAIT).await;
    eprintln!("apply error: {err}");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM denied").await, 5, "no row written");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM allowed").await, 1, "the failing transaction is not half-applied");

    // The privilege is granted: it resumes and converges.
    s.batch_execute("GRANT INSERT, UPDATE, DELETE ON denied TO owner1").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM denied", "37", WAIT).await;
    wait_value(&s, "SELECT count(*)::text FROM allowed", "3", WAIT).await;
    assert_replicated_equal(&p, &s).await;
    // TRUNCATE needs its own privilege too.
    p.batch_execute("TRUNCATE denied").await.unwrap();
    wait_for_repeated_error(&s, "own", &["permission denied for table denied", "TRUNCATE"], WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM denied").await, 37);
    s.batch_execute("GRANT TRUNCATE ON denied TO owner1").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM denied", "0", WAIT).await;
    // Compared before the drop, after which no subscription is left.
    assert_replicated_equal(&p, &s).await;
    owner.batch_execute("SELECT pgsub.drop_subscription('own')").await.expect("drop");
}

/// PostgreSQL 16's privilege options. `run_as_owner => false` (the default): the initial copy and
/// every change (COPY batch, batched and single UPDATE/DELETE, single INSERT) run as the target
/// table's owner — a trigger of the table sees `current_user` = the table owner — and a
/// subscription owner who cannot SET ROLE to the table owner gets native's error in
/// `last_error` until it is granted the role; `run_as_owner => true` runs as the subscription
/// owner. `password_required => false` is refused for non-superusers (create and alter), a
/// subscription carrying it may then be changed by superusers only, and the password rule
/// honours it (a non-superuser's subscription connects without a password).
#[tokio::test(flavor = "current_thread")]
async fn run_as_owner_and_password_required_as_postgresql_16() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u (id int PRIMARY KEY, v text)")
            .await
            .unwrap();
    }
    p.batch_execute(
        "CREATE PUBLICATION pub FOR TABLE t; CREATE PUBLICATION pub_u FOR TABLE u;
         INSERT INTO t SELECT g, 'copied' FROM generate_series(1, 3) g;",
    )
    .await
    .unwrap();
    // t and u belong to tab_owner; a trigger that fires for replicated rows (ENABLE ALWAYS)
    // records who runs each change.
    s.batch_execute(
        "CREATE ROLE tab_owner NOLOGIN;
         ALTER TABLE t OWNER TO tab_owner; ALTER TABLE u OWNER TO tab_owner;
         CREATE TABLE seen (op text, id int, who text);
         GRANT INSERT ON seen TO PUBLIC;
         CREATE FUNCTION record_user() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO public.seen VALUES (TG_OP, CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END, current_user::text);
             RETURN NULL;
         END $$;
         CREATE TRIGGER rec AFTER INSERT OR UPDATE OR DELETE ON t FOR EACH ROW EXECUTE FUNCTION record_user();
         ALTER TABLE t ENABLE ALWAYS TRIGGER rec;",
    )
    .await
    .unwrap();
    // Owned by a superuser, run_as_owner left at its default (false).
    s.execute("SELECT pgsub.create_subscription('ro', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()])
        .await
        .expect("create");
    assert!(!one::<bool>(&s, "SELECT run_as_owner FROM pgsub.subscription WHERE subname = 'ro'").await);
    assert!(one::<bool>(&s, "SELECT password_required FROM pgsub.subscription WHERE subname = 'ro'").await);
    wait_for_subscription_sync(&s, "ro", WAIT).await;
    // A run of inserts (COPY), a run of updates (one batched UPDATE), a single update, a run of
    // deletes and a single insert.
    p.batch_execute(
        "INSERT INTO t SELECT g, 'run' FROM generate_series(10, 39) g;
         UPDATE t SET v = 'batched' WHERE id BETWEEN 10 AND 19;
         UPDATE t SET v = 'single' WHERE id = 1;
         DELETE FROM t WHERE id BETWEEN 30 AND 39;
         INSERT INTO t VALUES (100, 'single insert');",
    )
    .await
    .unwrap();
    wait_value(&s, "SELECT count(*)::text FROM seen WHERE id = 100", "1", WAIT).await;
    let who = contents(&s, "SELECT op, who, count(*) FROM seen GROUP BY op, who").await;
    // 3 copied + 30 + 1 inserts, 10 + 1 updates, 10 deletes, all as tab_owner.
    assert_eq!(who, "(DELETE,tab_owner,10)\n(INSERT,tab_owner,34)\n(UPDATE,tab_owner,11)", "{who}");

    // run_as_owner => true: the worker restarts and applies as the subscription owner.
    let old_pid: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'ro'").await;
    s.batch_execute("SELECT pgsub.alter_subscription_options('ro', run_as_owner => true)").await.unwrap();
    wait_for("the worker to restart with run_as_owner", WAIT, || {
        let s = &s;
        async move {
            let r = s
                .query_opt(
                    "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'ro' AND pid <> $1 AND status = 'streaming'",
                    &[&old_pid],
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok(r.map(|_| ()))
        }
    })
    .await
    .expect("worker restarted");
    p.batch_execute("INSERT INTO t VALUES (200, 'as the subscription owner')").await.unwrap();
    wait_value(&s, "SELECT who FROM seen WHERE id = 200", "postgres", WAIT).await;

    // A non-superuser owner (password in the string) that is not a member of tab_owner.
    s.batch_execute("CREATE ROLE sub_owner LOGIN; GRANT pgsub_admin TO sub_owner").await.unwrap();
    let pw_ci = password_conninfo(&nodes, &p).await;
    let owner = nodes.subscriber.client_as("sub_owner", "postgres").await.unwrap();
    owner
        .execute("SELECT pgsub.create_subscription('nr', $1, ARRAY['pub_u'], copy_data => false)", &[&pw_ci])
        .await
        .expect("create as sub_owner");
    wait_for_subscription_sync(&s, "nr", WAIT).await;
    p.batch_execute("INSERT INTO u VALUES (1, 'needs tab_owner')").await.unwrap();
    let err = wait_for_repeated_error(&s, "nr", &["role \"sub_owner\" cannot SET ROLE to \"tab_owner\""], WAIT).await;
    eprintln!("run_as_owner error: {err}");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM u").await, 0);
    s.batch_execute("GRANT tab_owner TO sub_owner").await.unwrap();
    wait_value(&s, "SELECT v FROM u WHERE id = 1", "needs tab_owner", WAIT).await;

    // password_required => false: superuser-only, as in 16.
    for (sql, what) in [
        (
            "SELECT pgsub.create_subscription('np', $1, ARRAY['pub_u'], enabled => false, create_slot => false, password_required => false)",
            "create",
        ),
        ("SELECT pgsub.alter_subscription_options('nr', password_required => false)", "alter"),
    ] {
        let params: Vec<&(dyn ToSql + Sync)> = if what == "create" { vec![&pw_ci] } else { vec![] };
        let (code, text) = must_fail(&owner, sql, &params).await.code_and_text();
        assert_eq!(code, "42501", "{what}: {text}");
        assert!(text.contains("password_required=false is superuser-only"), "{what}: {text}");
    }
    s.batch_execute("SELECT pgsub.alter_subscription_options('nr', password_required => false)").await.unwrap();
    // Now only a superuser may change it.
    for sql in [
        "SELECT pgsub.alter_subscription_options('nr', binary => true)",
        "SELECT pgsub.disable_subscription('nr')",
        // It reads the publisher with the connection that sends no password.
        "SELECT * FROM pgsub.sync_sequences('nr')",
    ] {
        let (code, text) = must_fail(&owner, sql, &[]).await.code_and_text();
        assert_eq!(code, "42501", "{sql}: {text}");
        assert!(text.contains("password_required=false is superuser-only"), "{sql}: {text}");
    }
    // And its owner's connection needs no password any more: a trusted login (no password in
    // the string, none asked) is accepted and the worker streams with it.
    s.execute("SELECT pgsub.alter_subscription_connection('nr', $1)", &[&nodes.pub_conninfo()])
        .await
        .expect("a connection without a password");
    p.batch_execute("INSERT INTO u VALUES (2, 'without a password')").await.unwrap();
    wait_value(&s, "SELECT v FROM u WHERE id = 2", "without a password", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// `run_as_owner => false` on PostgreSQL 16+: a subscription owner that may SET ROLE to the
/// table's owner but does not inherit its privileges (`WITH INHERIT FALSE, SET TRUE`), and so
/// cannot read the table itself, copies it all the same, as natively: every statement of the
/// copy — its look for rows already there included — runs as the table's owner. (It failed
/// with "permission denied for table w", retried for good.) PostgreSQL 15 has no such grant.
#[tokio::test(flavor = "current_thread")]
async fn an_owner_that_may_only_set_role_to_the_table_owner_copies_the_table() {
    if pgsub_tests::server_major() < 16 {
        eprintln!("PostgreSQL {}: GRANT … WITH INHERIT FALSE needs 16; nothing to test", pgsub_tests::server_major());
        return;
    }
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE w (id int PRIMARY KEY, v text)").await.unwrap();
    }
    p.batch_execute("INSERT INTO w SELECT g, 'copied' FROM generate_series(1, 7) g; CREATE PUBLICATION pw FOR TABLE w")
        .await
        .unwrap();
    let pw_ci = password_conninfo(&nodes, &p).await;
    s.batch_execute(
        "CREATE ROLE tab_owner NOLOGIN; ALTER TABLE w OWNER TO tab_owner;
         CREATE ROLE set_only LOGIN; GRANT pgsub_admin TO set_only;
         GRANT tab_owner TO set_only WITH INHERIT FALSE, SET TRUE;",
    )
    .await
    .unwrap();
    let owner = nodes.subscriber.client_as("set_only", "postgres").await.unwrap();
    let e = must_fail(&owner, "SELECT count(*) FROM w", &[]).await;
    assert_eq!(e.code, "42501", "set_only cannot read w itself: {}", e.text());
    owner.execute("SELECT pgsub.create_subscription('so', $1, ARRAY['pw'])", &[&pw_ci]).await.expect("create");
    wait_for_subscription_sync(&s, "so", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM w").await, 7);
    p.batch_execute("INSERT INTO w VALUES (8, 'streamed'); UPDATE w SET v = 'changed' WHERE id = 1").await.unwrap();
    wait_value(&s, "SELECT v FROM w WHERE id = 8", "streamed", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT error_count FROM pgsub.stat_subscription WHERE subname = 'so'").await, 0);
    assert_replicated_equal(&p, &s).await;
}

/// TAP 033's last step: a subscription owner that may SET ROLE to the table's owner but has none
/// of its privileges — not even USAGE on the table's schema (a role without INHERIT) — copies
/// the table as its owner, as natively (native's table synchronization opens it by OID). The
/// worker looked the table up by name as the subscription owner: "permission denied for schema
/// s" at start (the automatic format's check), every table left in `init`.
#[tokio::test(flavor = "current_thread")]
async fn an_owner_without_usage_on_the_tables_schema_copies_it_as_its_owner() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    let ddl = "CREATE SCHEMA s; CREATE TABLE s.t (id int PRIMARY KEY, v text); CREATE TABLE ok (id int PRIMARY KEY)";
    for c in [&p, &s] {
        c.batch_execute(ddl).await.unwrap();
    }
    p.batch_execute("INSERT INTO s.t VALUES (1, 'one'), (2, 'two'); INSERT INTO ok VALUES (1); CREATE PUBLICATION ps FOR TABLE s.t, ok")
        .await
        .unwrap();
    let pw_ci = password_conninfo(&nodes, &p).await;
    p.batch_execute("GRANT USAGE ON SCHEMA s TO repl; GRANT SELECT ON s.t TO repl").await.unwrap();
    s.batch_execute(
        "CREATE ROLE tab_owner NOLOGIN; ALTER SCHEMA s OWNER TO tab_owner;
         ALTER TABLE s.t OWNER TO tab_owner; ALTER TABLE ok OWNER TO tab_owner;
         CREATE ROLE sx_owner LOGIN SUPERUSER NOINHERIT;",
    )
    .await
    .unwrap();
    let owner = nodes.subscriber.client_as("sx_owner", "postgres").await.unwrap();
    owner
        .execute("SELECT pgsub.create_subscription('sx', $1, ARRAY['ps'], enabled => false)", &[&pw_ci])
        .await
        .expect("create while a superuser");
    s.batch_execute("ALTER ROLE sx_owner NOSUPERUSER; GRANT pgsub_admin TO sx_owner; GRANT tab_owner TO sx_owner")
        .await
        .unwrap();
    let e = must_fail(&owner, "SELECT count(*) FROM s.t", &[]).await;
    assert_eq!(e.code, "42501", "sx_owner may not look into schema s itself: {}", e.text());
    s.batch_execute("SELECT pgsub.enable_subscription('sx')").await.unwrap();
    wait_for_subscription_sync(&s, "sx", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM s.t").await, 2);
    p.batch_execute("INSERT INTO ok VALUES (2)").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM ok", "2", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// TAP 027: the subscription owner loses SUPERUSER while its worker runs: the worker restarts,
/// saying why in native's words, and as a non-superuser without a password of its own it is
/// refused the connection (native's "password is required"); SUPERUSER given back, it goes on.
#[tokio::test(flavor = "current_thread")]
async fn an_owner_losing_superuser_restarts_the_worker_saying_why() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").await.unwrap();
    }
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t; INSERT INTO t VALUES (1)").await.unwrap();
    s.batch_execute("CREATE ROLE su_owner LOGIN SUPERUSER").await.unwrap();
    let owner = nodes.subscriber.client_as("su_owner", "postgres").await.unwrap();
    owner.execute("SELECT pgsub.create_subscription('su', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "su", WAIT).await;
    s.batch_execute("ALTER ROLE su_owner NOSUPERUSER; GRANT pgsub_admin TO su_owner").await.unwrap();
    nodes
        .subscriber
        .wait_for_log(
            "pgsub apply worker for subscription \"su\" will restart because the subscription owner's superuser privileges have been revoked",
            WAIT,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for_subscription_error(&s, "su", &["password is required"], WAIT).await;
    s.batch_execute("ALTER ROLE su_owner SUPERUSER").await.unwrap();
    p.batch_execute("INSERT INTO t VALUES (2)").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t", "2", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn row_level_security_is_refused_not_bypassed() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE secured (id int PRIMARY KEY, v text)").await.unwrap();
    }
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE secured").await.unwrap();
    // owner1 may write the table, but a policy (of a table it does not own) hides every row.
    s.batch_execute(
        "CREATE ROLE owner1 LOGIN; GRANT pgsub_admin TO owner1;
         GRANT SELECT, INSERT, UPDATE, DELETE ON secured TO owner1;
         ALTER TABLE secured ENABLE ROW LEVEL SECURITY;
         CREATE POLICY ins ON secured FOR INSERT TO owner1 WITH CHECK (true);",
    )
    .await
    .unwrap();
    let owner = nodes.subscriber.client_as("owner1", "postgres").await.unwrap();
    let pw_ci = password_conninfo(&nodes, &p).await;
    owner
        .execute(
            "SELECT pgsub.create_subscription('rls', $1, ARRAY['pub'], copy_data => false, run_as_owner => true)",
            &[&pw_ci],
        )
        .await
        .expect("create as owner1");
    wait_for_subscription_sync(&s, "rls", WAIT).await;
    p.batch_execute("INSERT INTO secured VALUES (1, 'a'); UPDATE secured SET v = 'b' WHERE id = 1; DELETE FROM secured WHERE id = 1")
        .await
        .unwrap();
    let err = wait_for_repeated_error(&s, "rls", &["row-level security", "secured"], WAIT).await;
    eprintln!("rls error: {err}");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM secured").await, 0);
    assert_eq!(
        one::<i64>(&s, "SELECT conflicts FROM pgsub.stat_subscription WHERE subname = 'rls'").await,
        0,
        "nothing skipped as a conflict"
    );
    // With BYPASSRLS the owner's changes apply in full.
    s.batch_execute("ALTER ROLE owner1 BYPASSRLS").await.unwrap();
    p.batch_execute("INSERT INTO secured VALUES (2, 'kept')").await.unwrap();
    wait_value(&s, "SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM secured", "2:kept", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT conflicts FROM pgsub.stat_subscription WHERE subname = 'rls'").await, 0);
    // Losing BYPASSRLS while the worker runs (the table bound long ago) stops apply again at the
    // next change: an UPDATE and a DELETE through the policy would find no row and be lost.
    let errors: i64 = one(&s, "SELECT error_count FROM pgsub.stat_subscription WHERE subname = 'rls'").await;
    s.batch_execute("ALTER ROLE owner1 NOBYPASSRLS").await.unwrap();
    p.batch_execute("UPDATE secured SET v = 'changed' WHERE id = 2; INSERT INTO secured VALUES (3, 'x'); DELETE FROM secured WHERE id = 3")
        .await
        .unwrap();
    wait_value(
        &s,
        &format!("SELECT error_count > {errors} AND last_error LIKE '%row-level security%' FROM pgsub.stat_subscription WHERE subname = 'rls'"),
        "t",
        WAIT,
    )
    .await;
    assert_eq!(
        query_text(&s, "SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM secured").await.unwrap(),
        "2:kept"
    );
    assert_eq!(one::<i64>(&s, "SELECT conflicts FROM pgsub.stat_subscription WHERE subname = 'rls'").await, 0);
    s.batch_execute("ALTER ROLE owner1 BYPASSRLS").await.unwrap();
    wait_value(&s, "SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM secured", "2:changed", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT conflicts FROM pgsub.stat_subscription WHERE subname = 'rls'").await, 0);
    assert_replicated_equal(&p, &s).await;
}

// ---------------------------------------------------------------------------------------------

/// A table owned by another role with FORCE ROW LEVEL SECURITY, a policy that would hide rows
/// from its owner, and a superuser subscription owner with `run_as_owner => true`: the initial
/// copy and the stream write as the subscription owner, who bypasses the policy, as natively —
/// every row arrives. The copy's look for local rows ran as the table's owner and checked
/// row-level security for that owner: the copy was refused for ever ("user \"townr\" cannot
/// replicate into relation with row-level security enabled"). With `run_as_owner => false` the
/// table's owner writes, and the same table is refused, as natively.
#[tokio::test(flavor = "current_thread")]
async fn forced_row_level_security_of_a_table_owner_binds_only_when_the_owner_writes() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.unwrap();
    let ddl = "CREATE TABLE f (id int PRIMARY KEY, v int)";
    p.batch_execute(&format!("{ddl}; INSERT INTO f VALUES (1, 1), (5, 5); CREATE PUBLICATION pub FOR TABLE f"))
        .await
        .unwrap();
    s.batch_execute(&format!(
        "CREATE ROLE townr; {ddl}; ALTER TABLE f OWNER TO townr;
         ALTER TABLE f ENABLE ROW LEVEL SECURITY; ALTER TABLE f FORCE ROW LEVEL SECURITY;
         CREATE POLICY small ON f USING (v < 3) WITH CHECK (v < 3)"
    ))
    .await
    .unwrap();
    s.execute(
        "SELECT pgsub.create_subscription('forced', $1, ARRAY['pub'], run_as_owner => true)",
        &[&nodes.pub_conninfo()],
    )
    .await
    .unwrap();
    wait_for_subscription_sync(&s, "forced", WAIT).await;
    p.batch_execute("INSERT INTO f VALUES (7, 7); UPDATE f SET v = 50 WHERE id = 5; DELETE FROM f WHERE id = 1")
        .await
        .unwrap();
    wait_value(&s, "SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM f", "5:50,7:7", WAIT).await;
    let errors: i64 = one(&s, "SELECT error_count FROM pgsub.stat_subscription WHERE subname = 'forced'").await;
    assert_eq!(errors, 0);
    assert_replicated_equal(&p, &s).await;

    // Conflict detection looks as the writer too: a local row the policy hides from the table's
    // owner is found, and keep_local keeps it (looked up as the owner it was not seen, and the
    // INSERT stopped apply with a plain duplicate key).
    let old: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'forced'").await;
    s.batch_execute(
        "INSERT INTO f VALUES (9, 90);
         SELECT pgsub.alter_subscription_options('forced', conflict_resolution => 'keep_local')",
    )
    .await
    .unwrap();
    wait_value(
        &s,
        &format!("SELECT pid IS DISTINCT FROM {old} AND status = 'streaming' FROM pgsub.stat_subscription WHERE subname = 'forced'"),
        "t",
        WAIT,
    )
    .await;
    p.batch_execute("INSERT INTO f VALUES (9, 9); INSERT INTO f VALUES (10, 10)").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM f WHERE id = 10", "1", WAIT).await;
    assert_eq!(one::<i32>(&s, "SELECT v FROM f WHERE id = 9").await, 90, "the local row kept");
    assert_eq!(
        one::<i64>(&s, "SELECT confl_insert_exists FROM pgsub.stat_subscription WHERE subname = 'forced'").await,
        1
    );
    assert_eq!(one::<i64>(&s, "SELECT error_count FROM pgsub.stat_subscription WHERE subname = 'forced'").await, 0);
    s.batch_execute("UPDATE f SET v = 9 WHERE id = 9").await.unwrap();
    assert_replicated_equal(&p, &s).await;

    // The table's owner writes: its forced policy applies to it, and the change is refused. (The
    // option restarts the worker: the change is written once the new one streams.)
    let old: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'forced'").await;
    s.batch_execute("SELECT pgsub.alter_subscription_options('forced', run_as_owner => false)").await.unwrap();
    wait_value(
        &s,
        &format!("SELECT pid IS DISTINCT FROM {old} AND status = 'streaming' FROM pgsub.stat_subscription WHERE subname = 'forced'"),
        "t",
        WAIT,
    )
    .await;
    p.batch_execute("INSERT INTO f VALUES (8, 8)").await.unwrap();
    let err = wait_for_repeated_error(&s, "forced", &["row-level security", "townr"], WAIT).await;
    // The hint names the way out for an owner bound by its table's FORCE (becoming the owner,
    // the usual advice, is what fails here).
    assert!(err.contains("forces row-level security on its owner"), "{err}");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM f WHERE id = 8").await, 0);
    s.batch_execute("SELECT pgsub.alter_subscription_options('forced', run_as_owner => true)").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM f WHERE id = 8", "1", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

#[tokio::test(flavor = "current_thread")]
async fn hostile_names_replicate_and_are_never_executed() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    // y is the table the hostile name tries to drop; the schema name has quotes, a semicolon,
    // a backslash, a dollar quote and unicode; a column name tries the same.
    let ddl = r#"
        CREATE TABLE y (id int PRIMARY KEY);
        INSERT INTO y VALUES (1);
        CREATE TABLE "x""; DROP TABLE y; --" (id int PRIMARY KEY, "v""; DROP TABLE y; --" text);
        CREATE SCHEMA "sch 'q' ""dq""; $$ \ ü";
        CREATE TABLE "sch 'q' ""dq""; $$ \ ü"."x""; DROP TABLE y; --" (id int PRIMARY KEY, v text);
        ALTER TABLE "sch 'q' ""dq""; $$ \ ü"."x""; DROP TABLE y; --" REPLICA IDENTITY FULL;
    "#;
    p.batch_execute(ddl).await.unwrap();
    s.batch_execute(ddl).await.unwrap();
    p.batch_execute(
        r#"INSERT INTO "x""; DROP TABLE y; --" VALUES (1, 'copied ''; DROP TABLE y; --');
           INSERT INTO "sch 'q' ""dq""; $$ \ ü"."x""; DROP TABLE y; --" VALUES (1, 'copied');
           CREATE PUBLICATION "pub""; DROP TABLE y; --" FOR TABLE
               "x""; DROP TABLE y; --", "sch 'q' ""dq""; $$ \ ü"."x""; DROP TABLE y; --";"#,
    )
    .await
    .unwrap();
    s.execute(
        "SELECT pgsub.create_subscription('hostile', $1, ARRAY[$2])",
        &[&nodes.pub_conninfo(), &r#"pub"; DROP TABLE y; --"#],
    )
    .await
    .expect("create");
    let t1 = r#""x""; DROP TABLE y; --""#;
    let t2 = r#""sch 'q' ""dq""; $$ \ ü"."x""; DROP TABLE y; --""#;
    wait_value(&s, &format!("SELECT count(*)::text FROM {t1}"), "1", WAIT).await;
    wait_value(&s, &format!("SELECT count(*)::text FROM {t2}"), "1", WAIT).await;
    // Streaming: inserts (single and a COPY batch), updates, deletes, truncate.
    p.batch_execute(&format!(
        r#"INSERT INTO {t1} VALUES (2, 'two');
           INSERT INTO {t1} SELECT g, 'g' || g FROM generate_series(10, 40) g;
           UPDATE {t1} SET "v""; DROP TABLE y; --" = 'upd' WHERE id = 2;
           DELETE FROM {t1} WHERE id = 10;
           INSERT INTO {t2} SELECT g, 'h' || g FROM generate_series(2, 20) g;
           UPDATE {t2} SET v = 'upd' WHERE id = 3;
           DELETE FROM {t2} WHERE id = 4;"#
    ))
    .await
    .unwrap();
    // Both tables, read by the harness under their hostile names.
    assert_replicated_equal(&p, &s).await;
    p.batch_execute(&format!("TRUNCATE {t2}")).await.unwrap();
    wait_value(&s, &format!("SELECT count(*)::text FROM {t2}"), "0", WAIT).await;
    // 1 copied + 2 + 10..=40 − the deleted 10.
    assert_eq!(one::<i64>(&s, &format!("SELECT count(*) FROM {t1}")).await, 32);
    // y survived on both nodes, and the tables are known by their exact names.
    for c in [&p, &s] {
        assert_eq!(one::<i64>(c, "SELECT count(*) FROM y").await, 1);
    }
    let schema = r#"sch 'q' "dq"; $$ \ ü"#;
    let table = r#"x"; DROP TABLE y; --"#;
    for (sch, tab) in [("public", table), (schema, table)] {
        let n: i64 = s
            .query_one(
                "SELECT count(*) FROM pgsub.subscription_table WHERE remote_schema = $1 AND remote_name = $2 \
                 AND relid = (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                              WHERE n.nspname = $1 AND c.relname = $2)",
                &[&sch, &tab],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{sch}.{tab} recorded under its exact name and mapped to the local table");
    }
    let status: String = one(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'hostile'").await;
    assert_eq!(status, "streaming");
    assert_eq!(one::<i64>(&s, "SELECT error_count FROM pgsub.stat_subscription WHERE subname = 'hostile'").await, 0);
    // After the TRUNCATE, compared before the drop (afterwards no subscription is left).
    assert_replicated_equal(&p, &s).await;
    s.batch_execute("SELECT pgsub.drop_subscription('hostile')").await.expect("drop");
}

/// Ownership moves like `ALTER SUBSCRIPTION … OWNER TO`: only to a superuser or a pgsub_admin
/// member whose privileges the caller has; a non-superuser new owner needs a password in the
/// connection string; the worker restarts and applies as the new owner.
#[tokio::test(flavor = "current_thread")]
async fn owner_change_follows_the_same_rules_as_creation() {
    let (nodes, p, s) = nodes_with_published_t().await;
    let pw_ci = password_conninfo(&nodes, &p).await;
    s.batch_execute(
        "CREATE ROLE owner1 LOGIN; GRANT pgsub_admin TO owner1; GRANT SELECT, INSERT, UPDATE, DELETE ON t TO owner1;
         CREATE ROLE owner2 LOGIN; GRANT pgsub_admin TO owner2;
         CREATE ROLE outsider LOGIN;",
    )
    .await
    .unwrap();
    s.execute("SELECT pgsub.create_subscription('os', $1, ARRAY['pub'], run_as_owner => true)", &[&pw_ci])
        .await
        .expect("create with password");
    s.execute(
        "SELECT pgsub.create_subscription('nopw', $1, ARRAY['pub'], enabled => false, create_slot => false)",
        &[&nodes.pub_conninfo()],
    )
    .await
    .expect("superuser creates without password");
    wait_for_subscription_sync(&s, "os", WAIT).await;
    let (code, text) =
        must_fail(&s, "SELECT pgsub.alter_subscription_owner('os', 'outsider')", &[]).await.code_and_text();
    assert_eq!(code, "42501", "{text}");
    assert!(text.contains("may not own subscriptions"), "{text}");
    let (code, text) =
        must_fail(&s, "SELECT pgsub.alter_subscription_owner('os', 'nobody')", &[]).await.code_and_text();
    assert_eq!(code, "42704", "{text}");
    let (code, text) =
        must_fail(&s, "SELECT pgsub.alter_subscription_owner('nopw', 'owner1')", &[]).await.code_and_text();
    assert_eq!(code, "2F003", "a non-superuser owner needs a password in the string: {text}");
    let old_pid: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'os'").await;
    s.batch_execute("SELECT pgsub.alter_subscription_owner('os', 'owner1')").await.expect("give to owner1");
    assert_eq!(one::<String>(&s, "SELECT owner::text FROM pgsub.subscription WHERE subname = 'os'").await, "owner1");
    // The worker restarts and now runs as owner1.
    wait_for("the worker to run as owner1", WAIT, || {
        let s = &s;
        async move {
            let r = s
                .query_opt(
                    "SELECT a.usename::text FROM pgsub.stat_subscription st JOIN pg_stat_activity a ON a.pid = st.pid
                     WHERE st.subname = 'os' AND st.pid <> $1 AND st.status = 'streaming'",
                    &[&old_pid],
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok(r.map(|r| r.get::<_, String>(0)).filter(|u| u == "owner1"))
        }
    })
    .await
    .expect("worker as owner1");
    p.batch_execute("INSERT INTO t VALUES (1, 'under owner1')").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 1", "under owner1", WAIT).await;
    // owner1 may not hand it to a role whose privileges it lacks, but a superuser may take it back.
    let owner1 = nodes.subscriber.client_as("owner1", "postgres").await.unwrap();
    let (code, text) =
        must_fail(&owner1, "SELECT pgsub.alter_subscription_owner('os', 'owner2')", &[]).await.code_and_text();
    assert_eq!(code, "42501", "{text}");
    assert!(text.contains("privileges of role \"owner2\""), "{text}");
    s.batch_execute("SELECT pgsub.alter_subscription_owner('os', 'postgres')").await.expect("back to postgres");
    assert_eq!(one::<String>(&s, "SELECT owner::text FROM pgsub.subscription WHERE subname = 'os'").await, "postgres");
    // `nopw` is never enabled (and shares t): the subscription that replicates is compared.
    assert_replicated_equal_for(&p, &s, Some(&["os"])).await;
}

/// A subscription whose owner can no longer log in (made NOLOGIN, or dropped: `DROP ROLE` does not
/// see pgsub's catalog, where native refuses to drop a subscription's owner): its worker cannot
/// connect as the owner. It used to die at once, restarted 60–80 times a second with `status =
/// starting` and no error shown; now it is a failed run — `status = error`, the reason in
/// `last_error`, a WARNING — retried after the error backoff; a new owner fixes it.
#[tokio::test(flavor = "current_thread")]
async fn an_owner_that_cannot_log_in_is_shown_and_retried_with_backoff() {
    let (nodes, p, s) = nodes_with_published_t().await;
    let pw_ci = password_conninfo(&nodes, &p).await;
    s.batch_execute(
        "CREATE ROLE owner3 LOGIN; GRANT pgsub_admin TO owner3; GRANT SELECT, INSERT, UPDATE, DELETE ON t TO owner3;
         CREATE ROLE owner4 LOGIN; GRANT pgsub_admin TO owner4; GRANT SELECT, INSERT, UPDATE, DELETE ON t TO owner4;",
    )
    .await
    .unwrap();
    s.execute("SELECT pgsub.create_subscription('ow', $1, ARRAY['pub'], run_as_owner => true)", &[&pw_ci])
        .await
        .expect("create");
    wait_for_subscription_sync(&s, "ow", WAIT).await;
    for (id, owner, break_it, needle) in [
        (601, "owner3", "ALTER ROLE owner3 NOLOGIN", "is not permitted to log in"),
        (602, "owner4", "REVOKE ALL ON t FROM owner4; DROP ROLE owner4", "no longer exists"),
    ] {
        s.execute(&format!("SELECT pgsub.alter_subscription_owner('ow', '{owner}')"), &[]).await.expect("owner");
        wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'ow'", "streaming", WAIT).await;
        s.batch_execute("SELECT pgsub.disable_subscription('ow')").await.unwrap();
        wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'ow'", "disabled", WAIT).await;
        s.batch_execute(break_it).await.expect(break_it);
        let fatal_before = nodes.subscriber.log().matches("FATAL").count();
        s.batch_execute("SELECT pgsub.enable_subscription('ow')").await.unwrap();
        let e = wait_for_subscription_error(&s, "ow", &[needle], WAIT).await;
        assert!(e.contains("\"ow\""), "{e}");
        wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'ow'", "error", WAIT).await;
        // The retry interval here is 1 s, doubled per failure: a few runs in 4 s, not hundreds.
        let count = "SELECT error_count FROM pgsub.stat_subscription WHERE subname = 'ow'";
        let first: i64 = one(&s, count).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        let errors = one::<i64>(&s, count).await - first;
        assert!((1..=4).contains(&errors), "{owner}: {errors} more failed runs in 4 s");
        let fatal = nodes.subscriber.log().matches("FATAL").count() - fatal_before;
        assert!(fatal <= 1, "{owner}: {fatal} workers died while connecting");
        assert!(nodes.subscriber.log_contains("WARNING:  pgsub: the owner of subscription \"ow\""));
        // A superuser gives it to a role that can log in: it streams again.
        s.batch_execute("SELECT pgsub.alter_subscription_owner('ow', 'postgres')").await.expect("back to postgres");
        wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'ow'", "streaming", WAIT).await;
        p.execute("INSERT INTO t VALUES ($1, 'after the fix')", &[&id]).await.unwrap();
    }
    s.batch_execute("SELECT pgsub.wait_for_catchup('ow')").await.expect("catch up");
    assert_replicated_equal(&p, &s).await;
}

/// The apply worker (and the initial copy) over TLS with `sslmode=verify-full`, the publisher's
/// certificate checked against a root file and its name, and certificate authentication with a
/// client certificate signed by the publisher's CA (pg_hba `cert`, no password): streams, and
/// the publisher's pg_stat_ssl shows the worker's connection encrypted with that client
/// certificate.
#[tokio::test(flavor = "current_thread")]
async fn apply_worker_streams_over_tls_with_verify_full_and_a_client_certificate() {
    let mut nodes = TwoNodes::start_with(tls_publisher_opts(), ClusterOpts::subscriber()).expect("start");
    let dir = nodes.publisher.dir().to_path_buf();
    openssl_cert(&dir, "server", "pgsub.test", None).unwrap();
    openssl_cert(&dir, "ca", "pgsub test CA", None).unwrap();
    openssl_cert(&dir, "client", "repl_cert", Some("ca")).unwrap();
    nodes.publisher.enable_tls(Some("ca"), &[]).expect("restart the publisher with ssl");
    nodes
        .publisher
        .set_hba(
            "local all all trust\n\
             hostssl all repl_cert 127.0.0.1/32 cert\n\
             host all postgres 127.0.0.1/32 trust\n",
        )
        .unwrap();
    nodes.publisher.reload().unwrap();
    let p = nodes.publisher.client("postgres").await.unwrap();
    p.batch_execute(
        "CREATE ROLE repl_cert LOGIN REPLICATION;
         CREATE TABLE t (id int PRIMARY KEY, v text); GRANT SELECT ON t TO repl_cert;
         CREATE PUBLICATION pub FOR TABLE t;
         INSERT INTO t SELECT g, 'before' FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    s.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").await.unwrap();
    let q = |f: &str| pgsub_proto::conninfo::quote_value(&dir.join(f).display().to_string());
    let conninfo = format!(
        "host=pgsub.test hostaddr=127.0.0.1 port={} user=repl_cert dbname=postgres sslmode=verify-full \
         sslrootcert={} sslcert={} sslkey={}",
        nodes.publisher.port(),
        q("server.crt"),
        q("client.crt"),
        q("client.key")
    );
    s.execute("SELECT pgsub.create_subscription('tls', $1, ARRAY['pub'])", &[&conninfo]).await.expect("create");
    wait_for_subscription_sync(&s, "tls", WAIT).await;
    p.batch_execute("INSERT INTO t SELECT g, 'after' FROM generate_series(101, 200) g").await.unwrap();
    wait_value(&s, "SELECT count(*)::text FROM t", "200", WAIT).await;
    // The walsender serving the worker: encrypted, with the client certificate.
    let dn: String = one(
        &p,
        "SELECT coalesce(s.client_dn, '') FROM pg_stat_ssl s JOIN pg_stat_replication r ON r.pid = s.pid \
         WHERE r.application_name = 'tls' AND s.ssl",
    )
    .await;
    assert!(dn.contains("repl_cert"), "the worker authenticated with its certificate: {dn:?}");
    assert_replicated_equal(&p, &s).await;
}

/// Conflicts are shown only in the columns the subscription owner may read: a column it may not
/// read never appears in the LOG line nor in `pgsub.conflict_log` (key, local row, remote row),
/// for a conflict the policy resolves and for one that stops apply; pgsub_admin members read the
/// log table, other roles do not.
#[tokio::test(flavor = "current_thread")]
async fn conflicts_never_show_columns_the_owner_may_not_read() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text, secret text)").await.unwrap();
    }
    p.batch_execute("CREATE PUBLICATION pub FOR TABLE t").await.unwrap();
    s.batch_execute(
        "CREATE ROLE owner1 LOGIN; CREATE ROLE plain LOGIN; GRANT pgsub_admin TO owner1;
         GRANT INSERT, UPDATE, DELETE ON t TO owner1; GRANT SELECT (id, v) ON t TO owner1;",
    )
    .await
    .unwrap();
    let owner = nodes.subscriber.client_as("owner1", "postgres").await.unwrap();
    let pw_ci = password_conninfo(&nodes, &p).await;
    owner
        .execute(
            "SELECT pgsub.create_subscription('own', $1, ARRAY['pub'], run_as_owner => true, conflict_resolution => 'keep_local')",
            &[&pw_ci],
        )
        .await
        .expect("create as owner1");
    wait_for_subscription_sync(&s, "own", WAIT).await;
    s.batch_execute("INSERT INTO t VALUES (1, 'local', 'LOCALSECRET'), (2, 'local', 'LOCALSECRET2')").await.unwrap();
    p.batch_execute("INSERT INTO t VALUES (1, 'remote', 'REMOTESECRET'); INSERT INTO t VALUES (3, 'after', 'x')")
        .await
        .unwrap();
    wait_value(&s, "SELECT count(*) FROM t WHERE id = 3", "1", WAIT).await;
    // Under error the retry logs the rows and stops.
    let old_pid: i32 = one(&s, "SELECT pid FROM pgsub.stat_subscription WHERE subname = 'own'").await;
    owner.execute("SELECT pgsub.alter_subscription_options('own', conflict_resolution => 'error')", &[]).await.unwrap();
    // The change restarts the worker: until the new one runs, the old one applies under keep_local.
    wait_value(
        &s,
        &format!("SELECT pid IS NOT NULL AND pid <> {old_pid} AND status = 'streaming' FROM pgsub.stat_subscription WHERE subname = 'own'"),
        "t",
        WAIT,
    )
    .await;
    p.batch_execute("INSERT INTO t VALUES (2, 'remote', 'REMOTESECRET2')").await.unwrap();
    let err = wait_for_subscription_error(&s, "own", &["conflict=insert_exists", "existing local row"], WAIT).await;
    wait_value(&s, "SELECT count(*) FROM pgsub.conflict_log WHERE resolution = 'error'", "1", WAIT).await;
    let logged: String = one(
        &owner,
        "SELECT string_agg(concat_ws(' ', key, local_row, remote_row), ' | ' ORDER BY id) FROM pgsub.conflict_log",
    )
    .await;
    assert!(logged.contains("\"local\"") && logged.contains("\"remote\""), "readable columns are shown: {logged}");
    for (what, text) in [("last_error", &err), ("conflict_log", &logged), ("server log", &nodes.subscriber.log())] {
        assert!(!text.contains("SECRET"), "{what} shows an unreadable column: {text}");
    }
    let plain = nodes.subscriber.client_as("plain", "postgres").await.unwrap();
    let (code, _) = must_fail(&plain, "SELECT * FROM pgsub.conflict_log", &[]).await.code_and_text();
    assert_eq!(code, "42501");
    // The local row stays, as the policies said: resolved by deleting it, apply resumes.
    s.batch_execute("DELETE FROM t WHERE id = 2").await.unwrap();
    wait_value(&s, "SELECT v FROM t WHERE id = 2", "remote", WAIT).await;
    s.batch_execute("UPDATE t SET v = 'remote', secret = 'REMOTESECRET' WHERE id = 1").await.unwrap();
    assert_replicated_equal(&p, &s).await;
}

/// With `RUST_BACKTRACE=1` in the server's environment, errors carry no Rust backtrace: not a
/// utility statement's (which passes pgsub's DROP DATABASE guard), not pgsub's own, not an apply
/// worker's in `stat_subscription.last_error`, not in the server log.
#[tokio::test(flavor = "current_thread")]
async fn errors_carry_no_rust_backtrace() {
    // Inherited by the servers this test starts (other tests of this binary only print more
    // when they panic).
    std::env::set_var("RUST_BACKTRACE", "1");
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.expect("clients");
    let f = must_fail(&s, "DROP TABLE nosuch", &[]).await;
    assert_eq!((f.code.as_str(), f.detail.as_str()), ("42P01", ""), "{}", f.text());
    let f = must_fail(&s, "SELECT pgsub.drop_subscription('nosuch')", &[]).await;
    assert_eq!((f.code.as_str(), f.detail.as_str()), ("42704", ""), "{}", f.text());
    p.batch_execute("CREATE TABLE c (id int PRIMARY KEY, n int); CREATE PUBLICATION pc FOR TABLE c").await.unwrap();
    s.batch_execute("CREATE TABLE c (id int PRIMARY KEY, n int CHECK (n > 0))").await.unwrap();
    s.execute("SELECT pgsub.create_subscription('cs', $1, ARRAY['pc'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "cs", WAIT).await;
    p.batch_execute("INSERT INTO c VALUES (1, -1)").await.unwrap();
    let err = wait_for_subscription_error(&s, "cs", &["violates check constraint"], WAIT).await;
    assert!(err.contains("Failing row contains"), "the error's own detail: {err}");
    for needle in ["pgrx", ".rs:", "backtrace"] {
        assert!(!err.contains(needle), "last_error shows a Rust backtrace ({needle}): {err}");
        assert!(!nodes.subscriber.log_contains(needle), "the server log shows a Rust backtrace ({needle})");
    }
    s.batch_execute("ALTER TABLE c DROP CONSTRAINT c_n_check").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM c", "1", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// The conflict lookups run the table owner's code — its unique index's expression here — as the
/// table owner in a restricted operation, never as a superuser: a probe function in the index
/// logs which role evaluates it while the worker resolves an `insert_exists` conflict found
/// through that index.
#[tokio::test(flavor = "current_thread")]
async fn conflict_lookups_run_the_table_owners_code_as_the_table_owner() {
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let s = nodes.subscriber.client("postgres").await.unwrap();
    p.batch_execute("CREATE TABLE pr (a int PRIMARY KEY, b text); CREATE PUBLICATION pub FOR TABLE pr").await.unwrap();
    s.batch_execute(
        "CREATE ROLE towner; GRANT CREATE ON SCHEMA public TO towner;
         CREATE FUNCTION public.probe(t text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
         BEGIN
             RAISE LOG 'pgsub-probe user=% super=%', current_user,
                 (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user);
             RETURN lower(t);
         END $$;
         ALTER FUNCTION public.probe(text) OWNER TO towner;
         CREATE TABLE pr (a int PRIMARY KEY, b text);
         ALTER TABLE pr OWNER TO towner;
         SET ROLE towner;
         INSERT INTO pr VALUES (100, 'ABC');
         CREATE UNIQUE INDEX pr_probe ON pr (public.probe(b));
         RESET ROLE;",
    )
    .await
    .unwrap();
    s.execute(
        "SELECT pgsub.create_subscription('pr', $1, ARRAY['pub'], copy_data => false, conflict_resolution => 'keep_local')",
        &[&nodes.pub_conninfo()],
    )
    .await
    .unwrap();
    wait_for_subscription_sync(&s, "pr", WAIT).await;
    p.batch_execute("INSERT INTO pr VALUES (1, 'abc'); INSERT INTO pr VALUES (2, 'marker')").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM pr WHERE a = 2", "1", WAIT).await;
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM pr WHERE a = 1").await, 0, "keep_local kept the local row");
    assert_eq!(
        one::<String>(&s, "SELECT string_agg(conflict_type || ' ' || resolution, ',') FROM pgsub.conflict_log").await,
        "insert_exists keep_local"
    );
    let log = nodes.subscriber.log();
    let probes: Vec<&str> = log.lines().filter(|l| l.contains("LOG:  pgsub-probe user=")).collect();
    assert!(!probes.is_empty(), "the index expression ran:\n{log}");
    for l in &probes {
        assert!(l.contains("pgsub-probe user=towner super=f"), "only as the table owner: {l}");
    }
    // The lookup itself evaluated it (the worker's lines, not only the local INSERT's).
    assert!(probes.iter().any(|l| l.contains("pgsub apply worker")), "{probes:?}");
    // The remote row (1, abc) and the local (100, ABC) differ on purpose (keep_local): the
    // other rows are equal.
    assert_replicated_equal_except(&p, &s, None, &["pr"]).await;
    assert_rows_equal(&p, &s, "SELECT * FROM pr WHERE a NOT IN (1, 100)", WAIT).await;
}

/// The database's and the subscription owner's `search_path` never reach pgsub's processes:
/// the launcher, the apply worker and the sync workers set an empty one before their first
/// query, as native's workers do. Otherwise an operator of a schema first on that path would run
/// inside their catalog queries — which run as superuser — with the superuser's rights (a
/// database owner, or a pgsub_admin member owning a subscription, could make itself superuser).
/// Probe operators `=` on int4, oid, text and name log who calls them.
#[tokio::test(flavor = "current_thread")]
async fn a_search_path_set_for_the_database_or_the_owner_never_reaches_pgsubs_queries() {
    let (nodes, p, s) = nodes_with_published_t().await;
    p.batch_execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g").await.unwrap();
    let mut ddl = String::from("CREATE ROLE mal; CREATE SCHEMA evil AUTHORIZATION mal; SET ROLE mal;");
    for (ty, eq) in [("int4", "int4eq"), ("oid", "oideq"), ("text", "texteq"), ("name", "nameeq")] {
        ddl.push_str(&format!(
            "CREATE FUNCTION evil.eq_{ty}({ty}, {ty}) RETURNS bool LANGUAGE plpgsql AS $$
             BEGIN
                 RAISE LOG 'pgsub-sp-probe user=%', current_user;
                 RETURN pg_catalog.{eq}($1, $2);
             END $$;
             CREATE OPERATOR evil.= (LEFTARG = {ty}, RIGHTARG = {ty}, PROCEDURE = evil.eq_{ty});"
        ));
    }
    ddl.push_str(
        "RESET ROLE;
         ALTER DATABASE postgres SET search_path = evil, pg_catalog, public;
         ALTER ROLE postgres SET search_path = evil, pg_catalog, public;",
    );
    s.batch_execute(&ddl).await.unwrap();
    // The probes work: a session that takes the path calls them.
    let user = nodes.subscriber.client("postgres").await.unwrap();
    user.batch_execute("SELECT 1::int4 = 1").await.unwrap();
    nodes.subscriber.wait_for_log("pgsub-sp-probe user=postgres", WAIT).await.unwrap_or_else(|e| panic!("{e}"));

    // The launcher starts (database setting), the workers run as the owner (role setting):
    // initial copy, stream, a worker restart, a refresh.
    s.execute("SELECT pgsub.create_subscription('sp', $1, ARRAY['pub'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "sp", WAIT).await;
    p.batch_execute("INSERT INTO t VALUES (100, 'streamed'); UPDATE t SET v = 'u' WHERE id = 1").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t WHERE v IN ('streamed', 'u')", "2", WAIT).await;
    s.batch_execute("SELECT pgsub.disable_subscription('sp'); SELECT pgsub.enable_subscription('sp')").await.unwrap();
    s.batch_execute("SELECT pgsub.refresh_subscription('sp')").await.unwrap();
    p.batch_execute("DELETE FROM t WHERE id = 2").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM t WHERE id = 2", "0", WAIT).await;
    wait_for_subscription_sync(&s, "sp", WAIT).await;

    let log = nodes.subscriber.log();
    let from_pgsub: Vec<&str> =
        log.lines().filter(|l| l.contains("pgsub-sp-probe") && l.contains("] pgsub ")).collect();
    assert!(from_pgsub.is_empty(), "a pgsub process called an operator of the search_path: {from_pgsub:?}");
    assert_replicated_equal(&p, &s).await;
}

/// A trigger on the subscription owner's own table changes `search_path` for the session
/// (`set_config(…, false)`) to a schema with its own `=` for integers, which makes its role a
/// superuser when a superuser calls it. pgsub's own statements run as a superuser after apply
/// statements (recording where the worker stopped, clearing `skip_lsn`): the setting must not
/// reach them — each apply statement runs at a GUC nest level rolled back after it. The owner
/// stays what it was; the trigger did run (it logged its setting).
#[tokio::test(flavor = "current_thread")]
async fn a_setting_a_tables_trigger_changes_never_reaches_pgsubs_own_statements() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.unwrap();
    p.batch_execute("CREATE SCHEMA c; CREATE TABLE c.t (id int PRIMARY KEY); CREATE PUBLICATION pc FOR TABLE c.t")
        .await
        .unwrap();
    s.batch_execute(
        "CREATE ROLE carol LOGIN; GRANT pgsub_admin TO carol; CREATE SCHEMA c AUTHORIZATION carol;
         CREATE TABLE c.seen (path text, usr text); ALTER TABLE c.seen OWNER TO carol;",
    )
    .await
    .unwrap();
    let carol = nodes.subscriber.client_as("carol", "postgres").await.unwrap();
    carol
        .batch_execute(
            "CREATE TABLE c.t (id int PRIMARY KEY);
             CREATE FUNCTION c.evil_eq(int, int) RETURNS bool LANGUAGE plpgsql AS $f$
             BEGIN
               IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user) THEN
                 BEGIN EXECUTE 'ALTER ROLE carol SUPERUSER'; EXCEPTION WHEN others THEN NULL; END;
               END IF;
               RETURN $1 OPERATOR(pg_catalog.=) $2;
             END $f$;
             CREATE OPERATOR c.= (FUNCTION = c.evil_eq, LEFTARG = int, RIGHTARG = int);
             CREATE FUNCTION c.trg() RETURNS trigger LANGUAGE plpgsql AS $f$
             BEGIN
               PERFORM pg_catalog.set_config('search_path', 'c, pg_catalog', false);
               INSERT INTO c.seen VALUES (pg_catalog.current_setting('search_path'), current_user);
               RETURN NEW;
             END $f$;
             CREATE TRIGGER trg BEFORE INSERT ON c.t FOR EACH ROW EXECUTE FUNCTION c.trg();
             ALTER TABLE c.t ENABLE ALWAYS TRIGGER trg;
             -- Deferred: it runs at the local commit, outside any statement.
             CREATE FUNCTION c.late() RETURNS trigger LANGUAGE plpgsql AS $f$
             BEGIN PERFORM pg_catalog.set_config('search_path', 'c, pg_catalog', false); RETURN NULL; END $f$;
             CREATE CONSTRAINT TRIGGER late AFTER INSERT ON c.t DEFERRABLE INITIALLY DEFERRED
               FOR EACH ROW EXECUTE FUNCTION c.late();
             ALTER TABLE c.t ENABLE ALWAYS TRIGGER late;",
        )
        .await
        .unwrap();
    let ci = password_conninfo(&nodes, &p).await;
    p.batch_execute("GRANT USAGE ON SCHEMA c TO repl; GRANT SELECT ON c.t TO repl").await.unwrap();
    carol.execute("SELECT pgsub.create_subscription('c1', $1, ARRAY['pc'])", &[&ci]).await.expect("create as carol");
    wait_for_subscription_sync(&s, "c1", WAIT).await;
    p.batch_execute("INSERT INTO c.t VALUES (1); INSERT INTO c.t VALUES (2)").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM c.t", "2", WAIT).await;
    assert_eq!(
        one::<String>(&s, "SELECT string_agg(DISTINCT path || ' ' || usr, ',') FROM c.seen").await,
        "c, pg_catalog carol"
    );
    // The worker exits (it records where it stopped as a superuser), is started again, stops
    // again: every step with pgsub's own statements.
    carol.batch_execute("SELECT pgsub.disable_subscription('c1')").await.unwrap();
    carol.batch_execute("SELECT pgsub.enable_subscription('c1')").await.unwrap();
    p.batch_execute("INSERT INTO c.t VALUES (3)").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM c.t", "3", WAIT).await;
    carol.batch_execute("SELECT pgsub.disable_subscription('c1')").await.unwrap();
    assert!(
        !one::<bool>(&s, "SELECT rolsuper FROM pg_roles WHERE rolname = 'carol'").await,
        "carol became a superuser"
    );
    // The deferred trigger's setting was put back after the commit, and said.
    assert!(nodes.subscriber.log_contains("search_path was changed for this worker's session (to \"c, pg_catalog\")"));
    carol.batch_execute("SELECT pgsub.enable_subscription('c1')").await.unwrap();
    wait_value(&s, "SELECT status FROM pgsub.stat_subscription WHERE subname = 'c1'", "streaming", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// One TRUNCATE of tables of two owners, the subscription owned by a superuser
/// (`run_as_owner => false`): each owner's tables are truncated as that owner, so one owner's
/// TRUNCATE trigger cannot use the subscription owner's rights (as native, which truncates each
/// table as its owner). Before, the one statement ran as the subscription owner.
#[tokio::test(flavor = "current_thread")]
async fn a_truncate_of_tables_of_several_owners_runs_each_owners_triggers_as_that_owner() {
    let nodes = TwoNodes::start().expect("start");
    let (p, s) = nodes.clients().await.unwrap();
    for c in [&p, &s] {
        c.batch_execute("CREATE TABLE tm (id int PRIMARY KEY); CREATE TABLE tp (id int PRIMARY KEY)").await.unwrap();
    }
    p.batch_execute("INSERT INTO tm VALUES (1); INSERT INTO tp VALUES (1); CREATE PUBLICATION ptr FOR TABLE tm, tp")
        .await
        .unwrap();
    s.batch_execute(
        "CREATE ROLE victor LOGIN; ALTER TABLE tm OWNER TO victor;
         CREATE TABLE fired (usr text, super_after boolean); ALTER TABLE fired OWNER TO victor;
         CREATE FUNCTION public.victor_trg() RETURNS trigger LANGUAGE plpgsql AS $f$
         BEGIN
           BEGIN EXECUTE 'ALTER ROLE victor SUPERUSER'; EXCEPTION WHEN others THEN NULL; END;
           INSERT INTO public.fired SELECT current_user, rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'victor';
           RETURN NULL;
         END $f$;
         ALTER FUNCTION public.victor_trg() OWNER TO victor;
         CREATE TRIGGER x BEFORE TRUNCATE ON tm FOR EACH STATEMENT EXECUTE FUNCTION public.victor_trg();
         ALTER TABLE tm ENABLE ALWAYS TRIGGER x;",
    )
    .await
    .unwrap();
    s.execute("SELECT pgsub.create_subscription('str', $1, ARRAY['ptr'])", &[&nodes.pub_conninfo()]).await.unwrap();
    wait_for_subscription_sync(&s, "str", WAIT).await;
    p.batch_execute("TRUNCATE tm, tp").await.unwrap();
    wait_value(&s, "SELECT (SELECT count(*) FROM tm) + (SELECT count(*) FROM tp)", "0", WAIT).await;
    assert_eq!(one::<String>(&s, "SELECT usr || ' ' || super_after FROM fired").await, "victor false");
    assert!(!one::<bool>(&s, "SELECT rolsuper FROM pg_roles WHERE rolname = 'victor'").await);
    p.batch_execute("INSERT INTO tm VALUES (2); INSERT INTO tp VALUES (2)").await.unwrap();
    wait_value(&s, "SELECT (SELECT count(*) FROM tm) + (SELECT count(*) FROM tp)", "2", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}
