//! Conformance suite: pgsub judged against what native PostgreSQL 15 logical replication does,
//! case by case in the order of the documentation chapter "Logical Replication" — publication
//! (column types, tables, replica identity), row filters, column lists, generated columns,
//! partitioned and inherited tables, subscriber triggers and foreign keys, conflicts, TRUNCATE
//! and restrictions. Each test starts its own publisher + subscriber (PostgreSQL 15 -> pgsub on
//! PostgreSQL 15), judges every table by its full contents (`assert_replicated_equal`) and checks
//! explicitly what native replication does beyond equal rows (generated values, local defaults,
//! trigger firings, errors). Findings are collected and reported together at the end of a test.
//!
//! `PGSUB_CONFORMANCE_NATIVE=1` runs the very same cases with native `CREATE SUBSCRIPTION` on the
//! subscriber instead of pgsub, to show that what is asserted here is native PostgreSQL 15's
//! behaviour.
use pgsub_tests::{
    assert_replicated_equal, one, quote_ident, quote_literal, server_built_with, server_has_extension, server_major,
    try_wait_for_subscription_sync, wait_for, wait_for_subscription_error, wait_for_subscription_sync,
    wait_native_replicated_equal, wait_replicated_equal, wait_value, ClusterOpts, TwoNodes,
};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(60);

/// Whether this run uses native logical replication (`PGSUB_CONFORMANCE_NATIVE=1`).
fn native() -> bool {
    std::env::var("PGSUB_CONFORMANCE_NATIVE").as_deref() == Ok("1")
}

/// A database error as `SQLSTATE: message (detail)`.
fn pg_err(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => {
            format!("{}: {}{}", d.code().code(), d.message(), d.detail().map(|x| format!(" ({x})")).unwrap_or_default())
        }
        None => e.to_string(),
    }
}

/// One text value (`NULL` for null) of the first row of `sql`; panics on an SQL error.
async fn val(c: &Client, sql: &str) -> String {
    let row = c.query_opt(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)));
    row.and_then(|r| r.get::<_, Option<String>>(0)).unwrap_or_else(|| "NULL".into())
}

/// A publisher and a subscriber with a schema on each, the subscriptions made on them and what
/// was found wrong so far.
struct Case {
    nodes: TwoNodes,
    p: Client,
    s: Client,
    findings: Vec<String>,
}

impl Case {
    async fn start(publisher_sql: &str, subscriber_sql: &str) -> Case {
        let mut sub_opts = ClusterOpts::subscriber();
        if native() {
            sub_opts = sub_opts
                .with_conf("wal_retrieve_retry_interval = '1s'")
                .with_conf("max_logical_replication_workers = 8");
        }
        let nodes = TwoNodes::start_with(ClusterOpts::publisher(), sub_opts).expect("start two nodes");
        let p = nodes.publisher.client("postgres").await.expect("publisher");
        let s = nodes.subscriber.client("postgres").await.expect("subscriber");
        let case = Case { nodes, p, s, findings: Vec::new() };
        case.on_pub(publisher_sql).await;
        case.on_sub(subscriber_sql).await;
        case
    }

    async fn on_pub(&self, sql: &str) {
        self.p.batch_execute(sql).await.unwrap_or_else(|e| panic!("on the publisher: {}\n{sql}", pg_err(&e)));
    }

    async fn on_sub(&self, sql: &str) {
        self.s.batch_execute(sql).await.unwrap_or_else(|e| panic!("on the subscriber: {}\n{sql}", pg_err(&e)));
    }

    /// Creates subscription `name` to `pubs` (pgsub's create_subscription, or CREATE SUBSCRIPTION)
    /// with `binary` set, or with each system's default format when None (native: text; pgsub:
    /// `binary` unset, chosen automatically).
    async fn try_subscribe_with(&self, name: &str, pubs: &[&str], binary: Option<bool>) -> Result<(), String> {
        let conninfo = self.nodes.pub_conninfo();
        if native() {
            let with = binary.map(|b| format!(" WITH (binary = {b})")).unwrap_or_default();
            let sql = format!(
                "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {}{with}",
                quote_ident(name),
                quote_literal(&conninfo),
                pubs.iter().map(|p| quote_ident(p)).collect::<Vec<_>>().join(", ")
            );
            self.s.batch_execute(&sql).await.map_err(|e| pg_err(&e))
        } else {
            let pubs: Vec<String> = pubs.iter().map(|p| p.to_string()).collect();
            self.s
                .execute(
                    "SELECT pgsub.create_subscription($1, $2, $3, binary => $4)",
                    &[&name, &conninfo, &pubs, &binary],
                )
                .await
                .map(|_| ())
                .map_err(|e| pg_err(&e))
        }
    }

    async fn try_subscribe(&self, name: &str, pubs: &[&str], binary: bool) -> Result<(), String> {
        self.try_subscribe_with(name, pubs, Some(binary)).await
    }

    /// [`Case::try_subscribe_with`] with each system's default format; panics on an error.
    async fn subscribe_default(&self, name: &str, pubs: &[&str]) {
        if let Err(e) = self.try_subscribe_with(name, pubs, None).await {
            panic!("creating subscription {name}: {e}");
        }
    }

    async fn subscribe(&self, name: &str, pubs: &[&str], binary: bool) {
        if let Err(e) = self.try_subscribe(name, pubs, binary).await {
            panic!("creating subscription {name}: {e}");
        }
    }

    async fn drop_subscription(&self, name: &str) {
        if native() {
            self.on_sub(&format!("DROP SUBSCRIPTION {}", quote_ident(name))).await;
        } else {
            self.s
                .execute("SELECT pgsub.drop_subscription($1)", &[&name])
                .await
                .unwrap_or_else(|e| panic!("drop_subscription {name}: {}", pg_err(&e)));
        }
    }

    /// The subscription's error count and last error (native: none kept, the log has them).
    async fn errors(&self, name: &str) -> (i64, Option<String>) {
        if native() {
            return (0, None);
        }
        let r = self
            .s
            .query_opt("SELECT error_count, last_error FROM pgsub.stat_subscription WHERE subname = $1", &[&name])
            .await
            .unwrap_or_else(|e| panic!("stat_subscription: {}", pg_err(&e)));
        r.map(|r| (r.get(0), r.get(1))).unwrap_or((0, None))
    }

    /// Waits until every table of subscription `name` is copied and the worker streams (the kit's
    /// `wait_for_subscription_sync`, for pgsub's subscriptions and native ones alike); panics
    /// (with the last error) on timeout or when the same subscription keeps failing.
    async fn wait_synced(&self, name: &str) {
        let deadline = Instant::now() + WAIT;
        let (errors_before, _) = self.errors(name).await;
        loop {
            // In slices, to give up early on a subscription that keeps failing.
            let last = match try_wait_for_subscription_sync(&self.s, name, Duration::from_secs(3)).await {
                Ok(()) => return,
                Err(e) => e,
            };
            let (errors, last_error) = self.errors(name).await;
            if errors >= errors_before + 3 || Instant::now() >= deadline {
                panic!(
                    "subscription {name} did not finish its initial copy ({last}); errors {errors}, last_error: {}",
                    last_error.unwrap_or_else(|| "none".into())
                );
            }
        }
    }

    /// Waits until the replicated tables (of `subs`, or all subscriptions; without `except`)
    /// are equal on both nodes; records a finding for `stage` otherwise. Gives up early when the
    /// subscription keeps failing.
    async fn wait_equal(&mut self, stage: &str, subs: Option<&[&str]>, except: &[&str]) -> bool {
        let deadline = Instant::now() + WAIT;
        let watched: Vec<String> = match subs {
            Some(v) => v.iter().map(|x| x.to_string()).collect(),
            None => self.subscription_names().await,
        };
        let mut errors_before = 0;
        for w in &watched {
            errors_before += self.errors(w).await.0;
        }
        loop {
            let slice = Duration::from_secs(3);
            let r = if native() {
                wait_native_replicated_equal(&self.p, &self.s, subs, except, slice).await
            } else {
                wait_replicated_equal(&self.p, &self.s, subs, except, slice).await
            };
            let e = match r {
                Ok(_) => return true,
                Err(e) => e,
            };
            let mut errors = 0;
            for w in &watched {
                errors += self.errors(w).await.0;
            }
            if errors >= errors_before + 3 || Instant::now() >= deadline {
                let native_log =
                    if native() { format!("\n{}", error_lines(&self.nodes.subscriber.log())) } else { String::new() };
                self.findings.push(format!("{stage}: tables differ: {e}{native_log}"));
                return false;
            }
        }
    }

    async fn subscription_names(&self) -> Vec<String> {
        let sql = if native() {
            "SELECT subname::text FROM pg_subscription"
        } else {
            "SELECT subname::text FROM pgsub.subscription"
        };
        self.s.query(sql, &[]).await.expect("subscriptions").iter().map(|r| r.get(0)).collect()
    }

    /// Records a finding unless `got == want`.
    fn expect(&mut self, what: &str, got: &str, want: &str) {
        if got != want {
            self.findings.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    /// Records a finding unless the subscriber's `sql` returns `want`.
    async fn expect_sub(&mut self, what: &str, sql: &str, want: &str) {
        let got = val(&self.s, sql).await;
        self.expect(what, &got, want);
    }

    /// Records a finding unless `sql` returns the same value on both nodes.
    async fn expect_same(&mut self, what: &str, sql: &str) {
        let want = val(&self.p, sql).await;
        let got = val(&self.s, sql).await;
        self.expect(&format!("{what} (subscriber vs publisher)"), &got, &want);
    }

    /// Waits until subscription `sub` reports an error containing every one of `needles` (native:
    /// the subscriber's log has such an ERROR line); records a finding otherwise.
    async fn wait_error(&mut self, sub: &str, needles: &[&str]) -> bool {
        let seen: std::cell::RefCell<Vec<String>> = Default::default();
        let r = wait_for(&format!("an error of {sub} containing {needles:?}"), Duration::from_secs(30), || {
            let (this, seen) = (&*self, &seen);
            async move {
                let errors: Vec<String> = if native() {
                    this.nodes.subscriber.log().lines().filter(|l| l.contains("ERROR:")).map(str::to_string).collect()
                } else {
                    this.errors(sub).await.1.into_iter().collect()
                };
                let found = errors.iter().any(|e| needles.iter().all(|n| e.contains(n)));
                *seen.borrow_mut() = errors;
                Ok(found.then_some(()))
            }
        })
        .await;
        if r.is_ok() {
            return true;
        }
        let seen = seen.into_inner();
        self.findings.push(format!(
            "subscription {sub}: expected an error containing {needles:?}; seen: {}",
            if seen.is_empty() { "none".to_string() } else { seen.join(" | ") }
        ));
        false
    }

    /// Fails with every finding; otherwise the final full comparison of all replicated tables.
    async fn finish(self) {
        if !self.findings.is_empty() {
            let mut states = String::new();
            for n in self.subscription_names().await {
                let (count, last) = self.errors(&n).await;
                states.push_str(&format!("\n  {n}: error_count {count}, last_error {last:?}"));
            }
            panic!("{} finding(s):\n- {}\nsubscriptions:{states}", self.findings.len(), self.findings.join("\n- "));
        }
        if native() {
            if let Err(e) = wait_native_replicated_equal(&self.p, &self.s, None, &[], WAIT).await {
                panic!("{e}");
            }
        } else {
            assert_replicated_equal(&self.p, &self.s).await;
        }
    }
}

/// The ERROR lines of a server log (with the line after each), for failure messages.
fn error_lines(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.contains("ERROR:") {
            out.push(l.to_string());
            if let Some(next) = lines.get(i + 1) {
                out.push(format!("    {next}"));
            }
        }
    }
    out.into_iter().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
}

// ---------------------------------------------------------------------------------------------
// 1. Column types, in text and binary mode: each as payload, and as the replica identity key
//    where the type has a default equality (primary key, and in a REPLICA IDENTITY FULL table).
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Key {
    /// A primary key of its own (`k_<name>`) and a column of the FULL table.
    Pk,
    /// Has equality but too few values for the key scheme: a column of the FULL table.
    Full,
    /// No equality: a payload column only.
    Payload,
}

struct Ty {
    /// Suffix of the table (`k_<name>`) and column (`c_<name>`) names.
    name: &'static str,
    /// The type as written in DDL.
    sql: &'static str,
    key: Key,
    /// SQL expressions, distinct under the type's equality (at least 5 for `Key::Pk`).
    vals: &'static [&'static str],
    /// What vals[1] is changed to: where the type has one, another spelling of an equal value
    /// (numeric 1.0 -> 1.00, float -0 -> 0, interval 1 day -> 24:00:00, citext world -> WORLD).
    newkey: &'static str,
}

const fn ty(
    name: &'static str,
    sql: &'static str,
    key: Key,
    vals: &'static [&'static str],
    newkey: &'static str,
) -> Ty {
    Ty { name, sql, key, vals, newkey }
}

use Key::{Full, Payload, Pk};

const ALL_TYPES: &[Ty] = &[
    ty("int2", "smallint", Pk, &["-32768", "0", "32767", "1", "-1"], "2"),
    ty("int4", "integer", Pk, &["-2147483648", "0", "2147483647", "42", "-7"], "43"),
    ty("int8", "bigint", Pk, &["-9223372036854775808", "0", "9223372036854775807", "42", "-7"], "43"),
    ty(
        "numeric",
        "numeric",
        Pk,
        &["'NaN'", "'1.0'", "'-0.000001'", "'123456789012345678901234567890.123456789'", "'Infinity'", "'-Infinity'"],
        "'1.00'",
    ),
    ty("numeric_p", "numeric(12,4)", Pk, &["'0'", "'1.5'", "'-99999999.9999'", "'3.14159'", "'NaN'"], "'2'"),
    ty(
        "float4",
        "real",
        Pk,
        &["'NaN'", "'-0'", "'Infinity'", "'-Infinity'", "'1.17549435e-38'", "'3.4028235e+38'", "'0.1'"],
        "'0'",
    ),
    ty(
        "float8",
        "double precision",
        Pk,
        &["'NaN'", "'-0'", "'Infinity'", "'-Infinity'", "'2.2250738585072014e-308'", "'0.1'", "'1e308'"],
        "'0'",
    ),
    ty(
        "money",
        "money",
        Pk,
        &["'0.00'", "'-92233720368547758.08'", "'92233720368547758.07'", "'12.34'", "'0.01'"],
        "'7'",
    ),
    ty("text", "text", Pk, &["''", "'a'", "'ünï©ødé ✓'", r"E'tab\there\nnewline'", r#"'quote''s "dq" \ back'"#], "'A'"),
    ty("varchar", "varchar(20)", Pk, &["''", "' x '", "'abc'", "'ÄÖÜ'", "'1234567890'"], "'xyz'"),
    ty("bpchar", "char(5)", Pk, &["'a'", "'  b'", "'ccccc'", "''", "'ü'"], "'z'"),
    ty("char", "\"char\"", Pk, &["''", "'a'", "'Z'", r"'\200'", "' '"], "'q'"),
    ty(
        "bytea",
        "bytea",
        Pk,
        &[r"'\x'", r"'\x00'", r"'\xdeadbeef'", r"'\x5c2700ff'", "decode(repeat('ab', 1000), 'hex')"],
        r"'\x01'",
    ),
    ty("bool", "boolean", Full, &["true", "false"], "true"),
    ty(
        "date",
        "date",
        Pk,
        &["'2000-01-01'", "'infinity'", "'-infinity'", "'4713-01-01 BC'", "'5874897-12-31'"],
        "'1999-12-31'",
    ),
    ty("time", "time", Pk, &["'00:00'", "'24:00:00'", "'23:59:59.999999'", "'12:34:56.5'", "'01:02:03'"], "'13:00'"),
    ty(
        "timetz",
        "timetz",
        Pk,
        &["'00:00+00'", "'12:00-05:30'", "'23:59:59.999999+14'", "'01:00+01'", "'10:00:00.5-12'"],
        "'11:11:11+03'",
    ),
    ty(
        "timestamp",
        "timestamp",
        Pk,
        &[
            "'2000-01-01 00:00'",
            "'infinity'",
            "'-infinity'",
            "'1999-12-31 23:59:59.999999'",
            "'294276-12-31 23:59:59'",
            "'4713-01-01 00:00 BC'",
        ],
        "'2024-02-29 12:00'",
    ),
    ty(
        "timestamptz",
        "timestamptz",
        Pk,
        &[
            "'2000-01-01 00:00+00'",
            "'infinity'",
            "'-infinity'",
            "'2024-02-29 12:00:00.123456+05:30'",
            "'1970-01-01 00:00:00+00'",
        ],
        "'2030-01-01 00:00+00'",
    ),
    ty(
        "interval",
        "interval",
        Pk,
        &["'0'", "'1 day'", "'-1 mon 2 days 03:04:05.6'", "'178000000 years'", "'1 mon 00:00:00.000001'"],
        "'24:00:00'",
    ),
    ty(
        "uuid",
        "uuid",
        Pk,
        &[
            "'00000000-0000-0000-0000-000000000000'",
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
            "md5('x')::uuid",
            "'{12345678-1234-1234-1234-123456789abc}'",
        ],
        "'11111111-2222-3333-4444-555555555555'",
    ),
    ty(
        "json",
        "json",
        Payload,
        &[r#"'{"b": 1,  "a": [1, 2]}'"#, r#"'"str"'"#, "'null'", "'[]'", r#"'{"a":1,"a":2}'"#],
        r#"'{"new": "ü"}'"#,
    ),
    ty(
        "jsonb",
        "jsonb",
        Pk,
        &["'{}'", "'1.0'", r#"'[1, "a", null]'"#, r#"'{"a": {"b": [1.5, true]}}'"#, r#"'"üé"'"#, "'null'"],
        "'1.00'",
    ),
    ty(
        "xml",
        "xml",
        Payload,
        &["'<a>1</a>'", r#"'<?xml version="1.0"?><b/>'"#, "'text content'", r#"'<c attr="x &amp; y"/>'"#, "''"],
        "'<new/>'",
    ),
    ty(
        "bit",
        "bit(8)",
        Pk,
        &["B'00000000'", "B'11111111'", "B'10101010'", "B'00000001'", "B'10000000'"],
        "B'01010101'",
    ),
    ty("varbit", "varbit", Pk, &["B''", "B'1'", "B'0101010101'", "B'0'", "B'11'"], "B'111'"),
    ty(
        "inet",
        "inet",
        Pk,
        &["'10.0.0.1/8'", "'10.0.0.1'", "'::1'", "'2001:db8::1/64'", "'192.168.0.0/16'"],
        "'0.0.0.0/0'",
    ),
    ty(
        "cidr",
        "cidr",
        Pk,
        &["'10.0.0.0/8'", "'10.0.0.0/16'", "'::/0'", "'2001:db8::/32'", "'192.168.1.0/24'"],
        "'172.16.0.0/12'",
    ),
    ty(
        "macaddr",
        "macaddr",
        Pk,
        &[
            "'08:00:2b:01:02:03'",
            "'00:00:00:00:00:00'",
            "'ff:ff:ff:ff:ff:ff'",
            "'0800.2b01.0204'",
            "'01-02-03-04-05-06'",
        ],
        "'aa:bb:cc:dd:ee:ff'",
    ),
    ty(
        "macaddr8",
        "macaddr8",
        Pk,
        &[
            "'08:00:2b:01:02:03:04:05'",
            "'00:00:00:00:00:00:00:00'",
            "'08:00:2b:01:02:03'",
            "'ff:ff:ff:ff:ff:ff:ff:ff'",
            "'0102030405060708'",
        ],
        "'aa:bb:cc:dd:ee:ff:00:11'",
    ),
    ty("pg_lsn", "pg_lsn", Pk, &["'0/0'", "'16/B374D848'", "'FFFFFFFF/FFFFFFFF'", "'1/1'", "'0/1'"], "'2/2'"),
    ty("tsvector", "tsvector", Pk, &["'a fat cat'", r"'''quoted'' word:1A,2B'", "''", "'ünï:3'", "'x:1 y:2'"], "'new'"),
    ty("tsquery", "tsquery", Pk, &["'a & b'", "'!x | (y <-> z)'", "'ü:*'", "'a'", "'b & c'"], "'q'"),
    ty("point", "point", Payload, &["'(1,2)'", "'(-1.5,1e300)'", "'(0,0)'", "'(NaN,1)'", "'(3,4)'"], "'(9,9)'"),
    ty(
        "line",
        "line",
        Payload,
        &["'{1,-1,0}'", "'{0,1,-5}'", "'[(0,0),(1,2)]'", "'{1,0,3}'", "'{2,3,4}'"],
        "'{5,6,7}'",
    ),
    ty(
        "lseg",
        "lseg",
        Payload,
        &["'[(0,0),(1,1)]'", "'[(-1,2),(3,4)]'", "'[(0,0),(0,0)]'", "'[(1e-10,2),(3,4e10)]'", "'[(5,5),(6,6)]'"],
        "'[(7,7),(8,8)]'",
    ),
    ty(
        "box",
        "box",
        Payload,
        &["'(1,1),(0,0)'", "'(0,0),(2,3)'", "'(-1,-1),(-1,-1)'", "'(1.5,2.5),(3.5,4.5)'", "'(10,10),(20,20)'"],
        "'(9,9),(8,8)'",
    ),
    ty(
        "path",
        "path",
        Payload,
        &[
            "'[(0,0),(1,1),(2,0)]'",
            "'((0,0),(1,1))'",
            "'[(1,1)]'",
            "'((0,0),(1,0),(1,1),(0,1))'",
            "'[(-1,-1),(1e10,1e-10)]'",
        ],
        "'((5,5),(6,6))'",
    ),
    ty(
        "polygon",
        "polygon",
        Payload,
        &[
            "'((0,0),(1,1),(1,0))'",
            "'((0,0))'",
            "'((-1,-1),(1,-1),(1,1),(-1,1))'",
            "'((1.5,2.5),(3.5,4.5),(5,1))'",
            "'((0,0),(0,0),(0,0))'",
        ],
        "'((9,9),(8,8),(9,8))'",
    ),
    ty(
        "circle",
        "circle",
        Payload,
        &["'<(0,0),1>'", "'<(1.5,-2),0.5>'", "'<(0,0),0>'", "'<(1e10,1e-10),3>'", "'<(5,5),5>'"],
        "'<(9,9),9>'",
    ),
    ty(
        "int4_arr",
        "int4[]",
        Pk,
        &["'{}'", "'{1,NULL,3}'", "'{{1,2},{3,NULL}}'", "'[0:1]={5,6}'", "'{-1}'"],
        "'{7,8,9}'",
    ),
    ty(
        "text_arr",
        "text[]",
        Pk,
        &[r#"'{"a b",NULL,"c\"d"}'"#, r#"'{{"x"},{NULL}}'"#, "'{}'", r#"'{"",NULL}'"#, r#"'{ü,"NULL"}'"#],
        "'{z}'",
    ),
    ty(
        "numeric_arr",
        "numeric[]",
        Pk,
        &["'{NaN,-1}'", "'{1.0,2}'", "'{{1,2},{3,4}}'", "'{NULL}'", "'{}'"],
        "'{1.00,2}'",
    ),
    // A composite holding a composite and an array of composites with a NULL element.
    ty(
        "composite",
        "outer_t",
        Pk,
        &[
            "ROW(ROW(1, 'x'), ARRAY[ROW(2, 'y')::inner_t, NULL], 1.5, '{a}')",
            "ROW(ROW(1, 'x'), ARRAY[]::inner_t[], 1.0, NULL)",
            "ROW(NULL, NULL, NULL, NULL)",
            r#"ROW(ROW(NULL, 'q"uote, d'), ARRAY[NULL, ROW(3, NULL)::inner_t], 'NaN', '{NULL,""}')"#,
            "ROW(ROW(-1, ''), ARRAY[ROW(4, 'z')::inner_t, ROW(NULL, NULL)::inner_t], -2, '{b,c}')",
        ],
        "ROW(ROW(1, 'x'), ARRAY[]::inner_t[], 1.00, NULL)",
    ),
    ty("int4range", "int4range", Pk, &["'empty'", "'[1,5)'", "'(,10)'", "'[3,)'", "'[-5,-1]'"], "'[7,8)'"),
    ty("numrange", "numrange", Pk, &["'empty'", "'[1.0,2)'", "'(,)'", "'(0.001,0.002]'", "'[3,)'"], "'[1.00,2)'"),
    ty(
        "tstzrange",
        "tstzrange",
        Pk,
        &[
            "'empty'",
            "'[2000-01-01 00:00+00,2000-01-02 00:00+00)'",
            "'(,infinity)'",
            "'[2020-01-01 00:00+00,)'",
            "'[-infinity,2000-01-01 00:00+00]'",
        ],
        "'[2001-01-01 00:00+00,2001-01-02 00:00+00)'",
    ),
    ty(
        "daterange",
        "daterange",
        Pk,
        &["'empty'", "'[2000-01-01,2000-01-10)'", "'(,2000-01-01]'", "'[2020-02-29,)'", "'[-infinity,infinity]'"],
        "'[1999-01-01,1999-01-02)'",
    ),
    ty(
        "int4multirange",
        "int4multirange",
        Pk,
        &["'{}'", "'{[1,2),[5,9)}'", "'{(,0)}'", "'{[10,20)}'", "'{[3,4)}'"],
        "'{[100,200)}'",
    ),
    ty(
        "nummultirange",
        "nummultirange",
        Pk,
        &["'{}'", "'{[1.0,2)}'", "'{(,)}'", "'{[3,4),[5.5,6)}'", "'{(0,1]}'"],
        "'{[1.00,2)}'",
    ),
    ty("enum", "mood", Pk, &["'sad'", "'ok'", "'happy'", "'meh'", "'glad'"], "'wild'"),
    ty("enum_arr", "mood[]", Pk, &["'{}'", "'{sad,NULL}'", "'{happy,ok}'", "'{{meh},{glad}}'", "'{wild}'"], "'{sad}'"),
    ty("posint", "posint", Pk, &["1", "2", "2147483647", "100", "7"], "3"),
    // A domain whose CHECK calls an SQL function.
    ty("evenint", "evenint", Pk, &["0", "2", "-4", "100", "2147483646"], "8"),
    ty("code", "code", Pk, &["''", "'A'", "'ABC'", "'ZZZ'", "'Q'"], "'B'"),
    ty("hstore", "hstore", Pk, &["''", "'a=>1'", "'a=>1, b=>NULL'", r#"'"k y"=>"v\"q"'"#, "'x=>ü'"], "'n=>0'"),
    ty("citext", "citext", Pk, &["'Hello'", "'world'", "''", "'ÄÖÜ'", "'MiXeD'"], "'WORLD'"),
];

/// Types, extensions and domains the type tables use; the same on both nodes.
const TYPE_SETUP: &str = r#"
CREATE TYPE inner_t AS (a int, b text);
CREATE TYPE outer_t AS (i inner_t, arr inner_t[], n numeric, tags text[]);
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'meh', 'glad', 'wild');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE FUNCTION is_even(int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT $1 % 2 = 0';
CREATE DOMAIN evenint AS int CHECK (public.is_even(VALUE));
CREATE DOMAIN code AS text CHECK (VALUE ~ '^[A-Z]*$');
"#;

fn lit(t: &Ty, v: &str) -> String {
    format!("({v})::{}", t.sql)
}

/// The contrib extensions whose types the matrix has (a type of the same name).
const CONTRIB_TYPES: [&str; 2] = ["hstore", "citext"];

/// The types the server under test has: all of them, but `xml` only where the server was built
/// with libxml (the PostgreSQL 18 used here is not: its input function refuses every value), and
/// hstore and citext only where contrib is installed (the PostgreSQL 16 and 17 used here have
/// none; PostgreSQL 15 and 18 have them, so CI runs them there).
fn types() -> std::slice::Iter<'static, &'static Ty> {
    static HERE: std::sync::OnceLock<Vec<&'static Ty>> = std::sync::OnceLock::new();
    HERE.get_or_init(|| {
        let xml = server_built_with("--with-libxml");
        ALL_TYPES
            .iter()
            .filter(|t| xml || t.name != "xml")
            .filter(|t| !CONTRIB_TYPES.contains(&t.name) || server_has_extension(t.name))
            .collect()
    })
    .iter()
}

/// vals[i % n] of every type in `types`, as a comma-separated list.
fn row_values<'a>(types: impl Iterator<Item = &'a Ty>, i: usize) -> String {
    types.map(|t| lit(t, t.vals[i % t.vals.len()])).collect::<Vec<_>>().join(", ")
}

fn equality_types() -> impl Iterator<Item = &'static Ty> {
    types().copied().filter(|t| t.key != Payload)
}

fn pk_types() -> impl Iterator<Item = &'static Ty> {
    types().copied().filter(|t| t.key == Pk)
}

/// The tables: `payload` (every type as a column, int key), `full_eq` (every type with equality,
/// REPLICA IDENTITY FULL, duplicates allowed) and `k_<type>` (the type as primary key).
fn types_ddl() -> String {
    let mut sql = String::new();
    for t in types().filter(|t| CONTRIB_TYPES.contains(&t.name)) {
        sql += &format!("CREATE EXTENSION {};\n", t.name);
    }
    sql += TYPE_SETUP;
    let cols = types().map(|t| format!("c_{} {}", t.name, t.sql)).collect::<Vec<_>>().join(", ");
    sql += &format!("CREATE TABLE payload (id int PRIMARY KEY, {cols}, big text);\n");
    let cols = equality_types().map(|t| format!("c_{} {}", t.name, t.sql)).collect::<Vec<_>>().join(", ");
    sql += &format!("CREATE TABLE full_eq (rowno int, {cols});\nALTER TABLE full_eq REPLICA IDENTITY FULL;\n");
    for t in pk_types() {
        sql += &format!("CREATE TABLE k_{} (k {} PRIMARY KEY, v int);\n", t.name, t.sql);
    }
    sql
}

fn payload_insert(i: usize) -> String {
    let big = if i.is_multiple_of(2) { format!("repeat(md5('{i}'), 200)") } else { "NULL".into() };
    format!("INSERT INTO payload VALUES ({i}, {}, {big});\n", row_values(types().copied(), i - 1))
}

fn full_insert(rowno: usize, j: usize) -> String {
    format!("INSERT INTO full_eq VALUES ({rowno}, {});\n", row_values(equality_types(), j))
}

/// Rows present before the subscription: the initial copy brings them.
fn types_initial_rows() -> String {
    let mut sql = String::new();
    for i in 1..=4 {
        sql += &payload_insert(i);
    }
    sql += "INSERT INTO payload (id) VALUES (8);\n"; // all NULL
    for j in 0..4 {
        sql += &full_insert(j, j);
    }
    sql += &full_insert(0, 0); // a duplicate of row 0
    sql += &full_insert(3, 3);
    sql += &full_insert(3, 3); // three identical rows 3
    sql += "INSERT INTO full_eq (rowno) VALUES (NULL), (NULL);\n"; // two all-NULL rows
    for t in pk_types() {
        for (i, v) in t.vals.iter().enumerate().take(4) {
            sql += &format!("INSERT INTO k_{} VALUES ({}, {i});\n", t.name, lit(t, v));
        }
    }
    sql
}

/// The first streamed transaction: inserts, updates of payload and key, deletes.
fn types_changes_1() -> String {
    let mut sql = String::from("BEGIN;\n");
    for i in 5..=7 {
        sql += &payload_insert(i);
    }
    let set = |f: &dyn Fn(usize, &Ty) -> String| {
        types().enumerate().map(|(n, t)| format!("c_{} = {}", t.name, f(n, t))).collect::<Vec<_>>().join(", ")
    };
    sql += &format!("UPDATE payload SET {} WHERE id = 1;\n", set(&|_, t| lit(t, t.newkey)));
    // Every other column to NULL; big (TOASTed) is not touched.
    let nulls = types().step_by(2).map(|t| format!("c_{} = NULL", t.name)).collect::<Vec<_>>().join(", ");
    sql += &format!("UPDATE payload SET {nulls} WHERE id = 2;\n");
    sql += "DELETE FROM payload WHERE id = 3;\n";
    sql += "UPDATE payload SET id = 40 WHERE id = 4;\n";
    sql += &format!("UPDATE payload SET {} WHERE id = 8;\n", set(&|_, t| lit(t, t.vals[0])));

    sql += &full_insert(4, 4);
    sql += &full_insert(5, 5);
    // Differs from row 0 in one column only; deleted below, the real row 0 must stay.
    let int4 = types().copied().find(|t| t.name == "int4").expect("int4");
    let near = equality_types()
        .map(|t| if t.name == "int4" { "12345".to_string() } else { lit(t, t.vals[0]) })
        .collect::<Vec<_>>()
        .join(", ");
    sql += &format!("INSERT INTO full_eq VALUES (0, {near});\n");
    let setk = equality_types().map(|t| format!("c_{} = {}", t.name, lit(t, t.newkey))).collect::<Vec<_>>().join(", ");
    sql += &format!("UPDATE full_eq SET {setk} WHERE rowno = 1;\n");
    sql += "DELETE FROM full_eq WHERE rowno = 2;\n";
    sql += &format!(
        "DELETE FROM full_eq WHERE ctid = (SELECT min(ctid) FROM full_eq WHERE rowno = 0 AND c_int4 = {});\n",
        lit(int4, int4.vals[0])
    );
    sql += "UPDATE full_eq SET rowno = 33 WHERE ctid = (SELECT min(ctid) FROM full_eq WHERE rowno = 3);\n";
    sql += "UPDATE full_eq SET rowno = 99 WHERE ctid = (SELECT min(ctid) FROM full_eq WHERE rowno IS NULL);\n";

    for t in pk_types() {
        let k = |i: usize| lit(t, t.vals[i]);
        for (i, v) in t.vals.iter().enumerate().skip(4) {
            sql += &format!("INSERT INTO k_{} VALUES ({}, {i});\n", t.name, lit(t, v));
        }
        sql += &format!("UPDATE k_{} SET v = v + 100 WHERE k = {};\n", t.name, k(0));
        sql += &format!("UPDATE k_{} SET k = {} WHERE k = {};\n", t.name, lit(t, t.newkey), k(1));
        sql += &format!("DELETE FROM k_{} WHERE k IN ({}, {});\n", t.name, k(2), k(3));
    }
    sql + "COMMIT;\n"
}

/// The second streamed transaction: rows found by the values the first one wrote.
fn types_changes_2() -> String {
    let mut sql = String::from("BEGIN;\n");
    sql += "UPDATE payload SET c_int4 = 1 WHERE id = 40;\nDELETE FROM payload WHERE id = 5;\n";
    sql += "UPDATE full_eq SET rowno = 11 WHERE rowno = 1;\n";
    sql += "DELETE FROM full_eq WHERE rowno = 0 AND c_int4 = 12345;\n";
    sql += "DELETE FROM full_eq WHERE rowno IS NULL;\n";
    // Two identical rows: two updates with the same old row, each must change one row.
    sql += "UPDATE full_eq SET c_text = 'both' WHERE rowno = 3;\n";
    for t in pk_types() {
        sql += &format!("DELETE FROM k_{} WHERE k = {};\n", t.name, lit(t, t.vals[4]));
        sql += &format!("UPDATE k_{} SET v = -1 WHERE k = {};\n", t.name, lit(t, t.newkey));
    }
    sql + "COMMIT;\n"
}

async fn type_matrix(binary: bool) {
    let ddl = types_ddl();
    let mut c = Case::start(&ddl, &ddl).await;
    c.on_pub(&types_initial_rows()).await;
    c.on_pub("CREATE PUBLICATION types FOR ALL TABLES").await;
    c.subscribe("types", &["types"], binary).await;
    c.wait_synced("types").await;
    let sql = if native() {
        "SELECT subbinary::text FROM pg_subscription WHERE subname = 'types'"
    } else {
        "SELECT \"binary\"::text FROM pgsub.subscription WHERE subname = 'types'"
    };
    c.expect_sub("the subscription's binary option", sql, &binary.to_string()).await;
    c.wait_equal("after the initial copy", None, &[]).await;

    c.on_pub(&types_changes_1()).await;
    c.wait_equal("after inserts, updates of payload and key, deletes", None, &[]).await;
    c.on_pub(&types_changes_2()).await;
    c.wait_equal("after updates and deletes of the rows changed before", None, &[]).await;
    // The composite primary keys: the deleted rows are gone, the changed ones changed.
    c.expect_same(
        "k_composite after DELETE and UPDATE by composite key",
        "SELECT string_agg(k::text || '=' || v, ' ; ' ORDER BY k::text COLLATE \"C\") FROM k_composite",
    )
    .await;
    c.expect_same(
        "full_eq rows (duplicates included)",
        "SELECT string_agg(coalesce(rowno::text, 'NULL') || '/' || coalesce(c_text, 'NULL'), ',' ORDER BY rowno, c_text) \
         FROM full_eq",
    )
    .await;
    c.finish().await;
}

/// Every type (see ALL_TYPES) in text mode: initial copy, then inserts, payload and key updates
/// (including a key changed to an equal value spelled differently), deletes (batched runs),
/// duplicate rows and near-duplicates under REPLICA IDENTITY FULL, all-NULL rows, TOAST.
#[tokio::test(flavor = "current_thread")]
async fn types_as_payload_and_key_in_text_mode() {
    type_matrix(false).await;
}

/// The same type matrix with `binary => true`.
#[tokio::test(flavor = "current_thread")]
async fn types_as_payload_and_key_in_binary_mode() {
    type_matrix(true).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Tables: no columns, only a key, dropped columns, generated columns, reordered and extra
//    local columns, wider local types; restrictions: sequences are not replicated.
// ---------------------------------------------------------------------------------------------

const TABLES_PUB: &str = r#"
CREATE TABLE no_cols ();
CREATE TABLE only_key (id int PRIMARY KEY);
CREATE TABLE dropped (id int PRIMARY KEY, gone_pub text, a int, b text, c int);
ALTER TABLE dropped DROP COLUMN gone_pub;
CREATE TABLE gen_pub_only (id int PRIMARY KEY, a int, g int GENERATED ALWAYS AS (a * 2) STORED, b text);
CREATE TABLE gen_pub_missing (id int PRIMARY KEY, a int, g int GENERATED ALWAYS AS (a * 2) STORED);
CREATE TABLE gen_pub_null (id int PRIMARY KEY, a int, g int GENERATED ALWAYS AS (a * 2) STORED);
CREATE TABLE gen_sub_only (id int PRIMARY KEY, a int);
CREATE TABLE gen_both (id int PRIMARY KEY, a int, g int GENERATED ALWAYS AS (a * 2) STORED);
CREATE TABLE reordered (id int PRIMARY KEY, a int, b text, c numeric);
CREATE TABLE wider (id int PRIMARY KEY, a int, t varchar(10), r real);
CREATE TABLE seq_t (id serial PRIMARY KEY, v text);
CREATE TABLE gen_conflict (id int PRIMARY KEY, g int);

INSERT INTO no_cols SELECT FROM generate_series(1, 3);
INSERT INTO only_key SELECT generate_series(1, 5);
INSERT INTO dropped SELECT g, g, 'b' || g, g * 10 FROM generate_series(1, 5) g;
INSERT INTO gen_pub_only (id, a, b) SELECT g, g, 'b' FROM generate_series(1, 5) g;
INSERT INTO gen_pub_missing (id, a) SELECT g, g FROM generate_series(1, 5) g;
INSERT INTO gen_pub_null (id, a) SELECT g, g FROM generate_series(1, 5) g;
INSERT INTO gen_sub_only SELECT g, g FROM generate_series(1, 5) g;
INSERT INTO gen_both (id, a) SELECT g, g FROM generate_series(1, 5) g;
INSERT INTO reordered SELECT g, g, 'r' || g, g / 3.0 FROM generate_series(1, 5) g;
INSERT INTO wider SELECT g, g * 1000, 'w' || g, g / 10.0 FROM generate_series(1, 5) g;
INSERT INTO seq_t (v) SELECT 's' || g FROM generate_series(1, 5) g;
INSERT INTO gen_conflict VALUES (1, 1);

CREATE PUBLICATION tabs FOR TABLE no_cols, only_key, dropped, gen_pub_only, gen_pub_missing, gen_pub_null,
    gen_sub_only, gen_both, reordered, wider, seq_t;
CREATE PUBLICATION genconf FOR TABLE gen_conflict;
"#;

const TABLES_SUB: &str = r#"
CREATE TABLE no_cols ();
CREATE TABLE only_key (id int PRIMARY KEY);
CREATE TABLE dropped (id int PRIMARY KEY, a int, gone_sub int, b text, c int);
ALTER TABLE dropped DROP COLUMN gone_sub;
-- generated on the publisher, a plain column with a default here: it gets the default
CREATE TABLE gen_pub_only (id int PRIMARY KEY, a int, g int DEFAULT -1, b text);
CREATE TABLE gen_pub_missing (id int PRIMARY KEY, a int);
-- generated on the publisher, a plain column without a default here: it stays NULL
CREATE TABLE gen_pub_null (id int PRIMARY KEY, a int, g int);
CREATE TABLE gen_sub_only (id int PRIMARY KEY, a int, g int GENERATED ALWAYS AS (a * 3) STORED);
CREATE TABLE gen_both (id int PRIMARY KEY, a int, g int GENERATED ALWAYS AS (a * 10) STORED);
CREATE TABLE reordered (local_extra text DEFAULT 'local', c numeric, b text, local_n int, id int PRIMARY KEY, a int);
CREATE TABLE wider (id bigint PRIMARY KEY, a bigint, t text, r double precision);
CREATE TABLE seq_t (id serial PRIMARY KEY, v text);
-- a plain column on the publisher is generated here: native refuses to apply to it
CREATE TABLE gen_conflict (id int PRIMARY KEY, g int GENERATED ALWAYS AS (id * 2) STORED);
"#;

/// Zero-column table (its row count replicates; with REPLICA IDENTITY FULL a DELETE removes one
/// row), a key-only table, dropped columns on either side and dropped/added mid-stream,
/// generated columns on the publisher only (the subscriber's plain column gets its default or
/// NULL), on the subscriber only and on both (the subscriber computes its own), a publisher's
/// plain column generated on the subscriber (an error naming table and column, as natively),
/// reordered and extra local columns, wider local types, sequences (not replicated).
#[tokio::test(flavor = "current_thread")]
async fn tables_columns_and_generated_columns() {
    let mut c = Case::start(TABLES_PUB, TABLES_SUB).await;
    c.subscribe("tabs", &["tabs"], false).await;
    c.wait_synced("tabs").await;
    c.wait_equal("after the initial copy", Some(&["tabs"]), &[]).await;

    // A publisher's plain column that is generated on the subscriber: the subscription stops.
    c.subscribe("genconf", &["genconf"], false).await;
    // Native 15 counts a local generated column as missing; native 18 names it.
    let gen_error =
        if server_major() >= 18 { "has incompatible generated column" } else { "missing replicated column" };
    c.wait_error("genconf", &[gen_error, "gen_conflict", "\"g\""]).await;
    c.expect_sub("gen_conflict rows applied despite the error", "SELECT count(*)::text FROM gen_conflict", "0").await;
    c.drop_subscription("genconf").await;

    c.on_pub(
        r#"BEGIN;
        INSERT INTO no_cols SELECT FROM generate_series(1, 2);
        INSERT INTO only_key VALUES (6);
        UPDATE only_key SET id = 20 WHERE id = 2;
        DELETE FROM only_key WHERE id IN (3, 4);
        INSERT INTO dropped VALUES (6, 6, 'b6', 60);
        UPDATE dropped SET b = 'changed' WHERE id = 1;
        UPDATE dropped SET id = 10 WHERE id = 2;
        DELETE FROM dropped WHERE id = 3;
        INSERT INTO gen_pub_only (id, a, b) VALUES (6, 6, 'new');
        UPDATE gen_pub_only SET a = a + 100 WHERE id <= 2;
        DELETE FROM gen_pub_only WHERE id = 3;
        INSERT INTO gen_pub_missing (id, a) VALUES (6, 6);
        UPDATE gen_pub_missing SET a = a + 100 WHERE id <= 2;
        DELETE FROM gen_pub_missing WHERE id = 3;
        INSERT INTO gen_pub_null (id, a) VALUES (6, 6);
        UPDATE gen_pub_null SET a = a + 100 WHERE id <= 2;
        DELETE FROM gen_pub_null WHERE id = 3;
        INSERT INTO gen_sub_only VALUES (6, 6);
        UPDATE gen_sub_only SET a = a + 100 WHERE id <= 2;
        DELETE FROM gen_sub_only WHERE id = 3;
        INSERT INTO gen_both (id, a) VALUES (6, 6);
        UPDATE gen_both SET a = a + 100 WHERE id <= 2;
        DELETE FROM gen_both WHERE id = 3;
        INSERT INTO reordered VALUES (6, 6, 'r6', 6.5);
        UPDATE reordered SET b = 'x', c = NULL WHERE id = 1;
        UPDATE reordered SET id = 10 WHERE id = 2;
        DELETE FROM reordered WHERE id = 3;
        INSERT INTO wider VALUES (6, 2147483647, 'ten chars!', 0.1);
        UPDATE wider SET a = -2147483648 WHERE id = 1;
        DELETE FROM wider WHERE id = 2;
        INSERT INTO seq_t (v) VALUES ('s6'), ('s7');
        UPDATE seq_t SET v = 'u' WHERE id = 1;
        COMMIT;"#,
    )
    .await;
    c.wait_equal("after inserts, updates and deletes", None, &[]).await;

    // DDL is not replicated: the subscriber adds the column first; a column dropped on the
    // publisher stays on the subscriber with its values (new rows: NULL).
    c.on_sub("ALTER TABLE dropped ADD COLUMN d int").await;
    c.on_pub(
        "ALTER TABLE dropped DROP COLUMN c;
         ALTER TABLE dropped ADD COLUMN d int;
         INSERT INTO dropped VALUES (7, 7, 'b7', 70);
         UPDATE dropped SET d = id * 2 WHERE id <= 5;",
    )
    .await;
    c.wait_equal("after columns dropped and added on the publisher", None, &[]).await;
    // A zero-column table with REPLICA IDENTITY FULL: a DELETE sends an empty old row, which
    // matches any row; one row goes.
    c.on_pub(
        "ALTER TABLE no_cols REPLICA IDENTITY FULL;
         DELETE FROM no_cols WHERE ctid = (SELECT min(ctid) FROM no_cols);",
    )
    .await;
    c.wait_equal("after a DELETE from the zero-column table", None, &[]).await;

    c.expect_same("rows of the zero-column table", "SELECT count(*)::text FROM no_cols").await;
    c.expect_sub("rows of the zero-column table", "SELECT count(*)::text FROM no_cols", "4").await;
    c.expect_sub(
        "gen_pub_only.g (generated on the publisher, plain with DEFAULT -1 here)",
        "SELECT string_agg(id || ':' || coalesce(g::text, 'NULL'), ',' ORDER BY id) FROM gen_pub_only",
        "1:-1,2:-1,4:-1,5:-1,6:-1",
    )
    .await;
    c.expect_sub(
        "gen_pub_null.g (generated on the publisher, plain without a default here)",
        "SELECT count(*) || ' rows, ' || count(g) || ' not NULL' FROM gen_pub_null",
        "5 rows, 0 not NULL",
    )
    .await;
    c.expect_sub(
        "gen_sub_only.g (computed by the subscriber: a * 3)",
        "SELECT string_agg(id || ':' || a || ':' || g, ',' ORDER BY id) FROM gen_sub_only",
        "1:101:303,2:102:306,4:4:12,5:5:15,6:6:18",
    )
    .await;
    c.expect_sub(
        "gen_both.g (the subscriber's own expression: a * 10)",
        "SELECT string_agg(id || ':' || a || ':' || g, ',' ORDER BY id) FROM gen_both",
        "1:101:1010,2:102:1020,4:4:40,5:5:50,6:6:60",
    )
    .await;
    c.expect_sub(
        "reordered's local columns (default, NULL)",
        "SELECT string_agg(id || ':' || local_extra || ':' || coalesce(local_n::text, 'NULL'), ',' ORDER BY id) FROM reordered",
        "1:local:NULL,4:local:NULL,5:local:NULL,6:local:NULL,10:local:NULL",
    )
    .await;
    c.expect_sub(
        "dropped.c, kept on the subscriber after the publisher dropped it",
        "SELECT string_agg(id || ':' || coalesce(c::text, 'NULL') || ':' || coalesce(d::text, 'NULL'), ',' ORDER BY id) \
         FROM dropped",
        "1:10:2,4:40:8,5:50:10,6:60:NULL,7:NULL:70,10:20:NULL",
    )
    .await;
    c.expect_sub(
        "the subscriber's sequence (sequences are not replicated)",
        "SELECT last_value || ' ' || is_called FROM seq_t_id_seq",
        "1 false",
    )
    .await;
    c.finish().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Replica identity: DEFAULT, USING INDEX (also with INCLUDE columns), FULL (duplicates, TOAST,
//    dropped and generated columns), NOTHING.
// ---------------------------------------------------------------------------------------------

const RI_BOTH: &str = r#"
CREATE TABLE ri_default (id int PRIMARY KEY, v text);
CREATE TABLE ri_index (a int NOT NULL, b text NOT NULL, v text, CONSTRAINT ri_index_ab UNIQUE (a, b));
ALTER TABLE ri_index REPLICA IDENTITY USING INDEX ri_index_ab;
CREATE TABLE ri_include (a int NOT NULL, b int, c text);
CREATE UNIQUE INDEX ri_include_idx ON ri_include (a) INCLUDE (b);
ALTER TABLE ri_include REPLICA IDENTITY USING INDEX ri_include_idx;
CREATE TABLE ri_full_dups (a int, b text);
ALTER TABLE ri_full_dups REPLICA IDENTITY FULL;
CREATE TABLE ri_full_toast (id int, big text, n int);
ALTER TABLE ri_full_toast ALTER COLUMN big SET STORAGE EXTERNAL, REPLICA IDENTITY FULL;
CREATE TABLE ri_nothing (id int PRIMARY KEY, v text);
ALTER TABLE ri_nothing REPLICA IDENTITY NOTHING;
CREATE TABLE ri_none (id int, v text);
"#;

const RI_PUB: &str = r#"
CREATE TABLE ri_full_dropped (a int, x text, b text, y int);
ALTER TABLE ri_full_dropped DROP COLUMN x, REPLICA IDENTITY FULL;
CREATE TABLE ri_full_gen (a int, b int, g int GENERATED ALWAYS AS (a + b) STORED);
ALTER TABLE ri_full_gen REPLICA IDENTITY FULL;
CREATE TABLE ri_full_extra (a int, b text);
ALTER TABLE ri_full_extra REPLICA IDENTITY FULL;

INSERT INTO ri_full_extra SELECT g, 'e' || g FROM generate_series(1, 4) g;
INSERT INTO ri_default SELECT g, 'v' || g FROM generate_series(1, 10) g;
INSERT INTO ri_index SELECT g % 5, 'k' || g, 'v' FROM generate_series(1, 20) g;
INSERT INTO ri_include VALUES (1, 1, 'a'), (2, NULL, 'b'), (3, NULL, 'c'), (4, 4, 'd'), (5, 5, 'e');
INSERT INTO ri_full_dups VALUES (1, 'x'), (1, 'x'), (1, 'x'), (2, 'y'), (2, 'y'), (NULL, NULL), (NULL, NULL), (3, 'z');
INSERT INTO ri_full_toast
    SELECT g, (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 100) i), g FROM generate_series(1, 5) g;
INSERT INTO ri_full_dropped (a, b, y) SELECT g, 'b' || g, g FROM generate_series(1, 5) g;
INSERT INTO ri_full_gen (a, b) SELECT g, g + 1 FROM generate_series(1, 5) g;
INSERT INTO ri_nothing SELECT g, 'n' FROM generate_series(1, 3) g;
INSERT INTO ri_none SELECT g, 'n' FROM generate_series(1, 3) g;
CREATE PUBLICATION ri FOR TABLE ri_default, ri_index, ri_include, ri_full_dups, ri_full_toast, ri_full_dropped,
    ri_full_gen, ri_nothing, ri_none, ri_full_extra;
"#;

const RI_SUB: &str = r#"
CREATE TABLE ri_full_dropped (z int, a int, b text, y int);
ALTER TABLE ri_full_dropped DROP COLUMN z, REPLICA IDENTITY FULL;
CREATE TABLE ri_full_gen (a int, b int, g int GENERATED ALWAYS AS (a * b) STORED);
ALTER TABLE ri_full_gen REPLICA IDENTITY FULL;
CREATE TABLE ri_full_extra (a int, b text, here text DEFAULT 'here');
"#;

/// Every kind of replica identity: key updates and deletes under DEFAULT and USING INDEX (an
/// index with an INCLUDE column that is NULL or changes), FULL with duplicate rows (each remote
/// change touches exactly one of them), with TOAST values > 2 kB (unchanged in an update, then
/// matched by a delete), with dropped and generated columns; NOTHING and no key at all: inserts
/// replicate, the publisher itself refuses UPDATE and DELETE.
#[tokio::test(flavor = "current_thread")]
async fn replica_identity_kinds() {
    let mut c = Case::start(&format!("{RI_BOTH}{RI_PUB}"), &format!("{RI_BOTH}{RI_SUB}")).await;
    c.subscribe("ri", &["ri"], false).await;
    c.wait_synced("ri").await;
    c.wait_equal("after the initial copy", None, &[]).await;
    // PostgreSQL 18's publisher refuses to update or delete a row whose REPLICA IDENTITY FULL
    // includes a generated column it does not publish (checked below); before 18 it sends them.
    let pub18 = server_major() >= 18;
    let gen_changes = if pub18 {
        ""
    } else {
        "UPDATE ri_full_gen SET a = a * 10 WHERE a <= 2;\n         DELETE FROM ri_full_gen WHERE a = 3;"
    };
    // A FULL row is found by the columns sent: one only the subscriber has is not compared
    // (PostgreSQL 15's native apply compares it with NULL, misses the row and logs that at
    // DEBUG1 only: not run against it).
    let extra_changes = if native() {
        ""
    } else {
        "UPDATE ri_full_extra SET b = 'u' WHERE a <= 2;\n         DELETE FROM ri_full_extra WHERE a = 3;"
    };

    c.on_pub(&format!(
        "BEGIN;
         UPDATE ri_default SET v = 'u' WHERE id <= 3;
         UPDATE ri_default SET id = id + 100 WHERE id BETWEEN 4 AND 5;
         DELETE FROM ri_default WHERE id IN (6, 7);
         INSERT INTO ri_default VALUES (11, 'new');
         UPDATE ri_index SET v = 'changed' WHERE a = 1;
         UPDATE ri_index SET b = b || '!' WHERE a = 2;
         DELETE FROM ri_index WHERE a = 3;
         UPDATE ri_include SET c = 'x' WHERE a IN (1, 2);
         UPDATE ri_include SET b = 10 WHERE a = 2;
         DELETE FROM ri_include WHERE a = 3;
         UPDATE ri_include SET a = 40 WHERE a = 4;
         UPDATE ri_full_dups SET b = 'x1' WHERE ctid = (SELECT min(ctid) FROM ri_full_dups WHERE a = 1);
         DELETE FROM ri_full_dups WHERE ctid = (SELECT min(ctid) FROM ri_full_dups WHERE a = 2);
         DELETE FROM ri_full_dups WHERE ctid = (SELECT min(ctid) FROM ri_full_dups WHERE a IS NULL);
         INSERT INTO ri_full_dups VALUES (3, 'z');
         UPDATE ri_full_toast SET n = -n WHERE id <= 3;
         UPDATE ri_full_toast SET big = big || 'tail' WHERE id = 4;
         DELETE FROM ri_full_toast WHERE id = 5;
         INSERT INTO ri_full_toast VALUES (6, repeat('q', 5000), 6);
         UPDATE ri_full_dropped SET b = 'u' WHERE a <= 2;
         DELETE FROM ri_full_dropped WHERE a = 3;
         {gen_changes}
         {extra_changes}
         INSERT INTO ri_nothing VALUES (4, 'n');
         INSERT INTO ri_none VALUES (4, 'n');
         COMMIT;"
    ))
    .await;
    c.wait_equal("after the first changes", None, &[]).await;
    c.on_pub(
        "BEGIN;
         UPDATE ri_full_dups SET b = 'all' WHERE a = 1 AND b = 'x';  -- two identical rows
         DELETE FROM ri_full_dups WHERE a = 3;                       -- two identical rows
         DELETE FROM ri_full_toast WHERE id = 1;                     -- found by its TOASTed value
         UPDATE ri_full_toast SET n = 0 WHERE id = 2;
         COMMIT;",
    )
    .await;
    c.wait_equal("after changes to duplicate and TOASTed rows", None, &[]).await;

    // Without a replica identity the publisher refuses to UPDATE or DELETE a published table.
    for (sql, want) in [
        (
            "UPDATE ri_nothing SET v = 'x'",
            "cannot update table \"ri_nothing\" because it does not have a replica identity and publishes updates",
        ),
        (
            "DELETE FROM ri_nothing",
            "cannot delete from table \"ri_nothing\" because it does not have a replica identity and publishes deletes",
        ),
        (
            "UPDATE ri_none SET v = 'x'",
            "cannot update table \"ri_none\" because it does not have a replica identity and publishes updates",
        ),
    ] {
        let got = match c.p.batch_execute(sql).await {
            Ok(()) => "succeeded".to_string(),
            Err(e) => pg_err(&e),
        };
        if !got.contains(want) {
            c.findings.push(format!("publisher: {sql}: got {got:?}, want an error {want:?}"));
        }
    }
    if pub18 {
        let sql = "UPDATE ri_full_gen SET a = a";
        let want = "Replica identity must not contain unpublished generated columns";
        let got = match c.p.batch_execute(sql).await {
            Ok(()) => "succeeded".to_string(),
            Err(e) => pg_err(&e),
        };
        if !got.contains(want) {
            c.findings.push(format!("publisher: {sql}: got {got:?}, want an error {want:?}"));
        }
    }
    c.expect_sub(
        "ri_full_gen.g (the subscriber's own expression: a * b)",
        "SELECT string_agg(a || ':' || b || ':' || g, ',' ORDER BY a) FROM ri_full_gen",
        if pub18 { "1:2:2,2:3:6,3:4:12,4:5:20,5:6:30" } else { "4:5:20,5:6:30,10:2:20,20:3:60" },
    )
    .await;
    c.expect_same(
        "ri_full_dups (multiset)",
        "SELECT string_agg(coalesce(a::text, 'NULL') || coalesce(b, 'NULL'), ',' ORDER BY a, b) FROM ri_full_dups",
    )
    .await;
    c.expect_same(
        "ri_full_toast (lengths and md5 of the TOASTed values)",
        "SELECT string_agg(id || ':' || length(big) || ':' || md5(big) || ':' || n, ',' ORDER BY id) FROM ri_full_toast",
    )
    .await;
    c.finish().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Partitioned and inherited tables.
// ---------------------------------------------------------------------------------------------

const PART_PUB: &str = r#"
CREATE TABLE pa (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE pa_1 PARTITION OF pa FOR VALUES FROM (0) TO (100);
CREATE TABLE pa_2 PARTITION OF pa FOR VALUES FROM (100) TO (1000);
CREATE TABLE pb (id int, k text, v text, PRIMARY KEY (id, k)) PARTITION BY LIST (k);
CREATE TABLE pb_x PARTITION OF pb FOR VALUES IN ('x');
CREATE TABLE pb_yz PARTITION OF pb FOR VALUES IN ('y', 'z') PARTITION BY RANGE (id);
CREATE TABLE pb_yz_lo PARTITION OF pb_yz FOR VALUES FROM (MINVALUE) TO (100);
CREATE TABLE pb_yz_hi PARTITION OF pb_yz FOR VALUES FROM (100) TO (MAXVALUE);
CREATE TABLE pc (id int PRIMARY KEY, v text) PARTITION BY HASH (id);
CREATE TABLE pc_0 PARTITION OF pc FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE pc_1 PARTITION OF pc FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE pd (id int PRIMARY KEY, v text);
CREATE TABLE pe (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE pe_1 PARTITION OF pe FOR VALUES FROM (0) TO (100);
CREATE TABLE pe_2 PARTITION OF pe FOR VALUES FROM (100) TO (1000);
CREATE TABLE inh_p (id int PRIMARY KEY, v text);
CREATE TABLE inh_c (extra text) INHERITS (inh_p);
ALTER TABLE inh_c ADD PRIMARY KEY (id);
CREATE TABLE inh_c2 () INHERITS (inh_p);
ALTER TABLE inh_c2 ADD PRIMARY KEY (id);

INSERT INTO pa SELECT g, 'a' || g FROM generate_series(1, 150) g;
INSERT INTO pb SELECT g, (ARRAY['x', 'y', 'z'])[1 + g % 3], 'b' || g FROM generate_series(1, 150) g;
INSERT INTO pc SELECT g, 'c' || g FROM generate_series(1, 50) g;
INSERT INTO pd SELECT g, 'd' || g FROM generate_series(1, 150) g;
INSERT INTO pe SELECT g, 'e' || g FROM generate_series(1, 200) g;
INSERT INTO inh_p SELECT g, 'p' || g FROM generate_series(1, 20) g;
INSERT INTO inh_c SELECT g, 'c' || g, 'x' FROM generate_series(5, 25) g;
INSERT INTO inh_c2 SELECT g, 'c2' FROM generate_series(8, 14) g;

-- leaves published one by one (pa's partitions, pe's with a row filter each) and an
-- inheritance parent with its children under a row filter
CREATE PUBLICATION leafs FOR TABLE pa, pe_1 WHERE (id % 2 = 0), pe_2 WHERE (id > 150), inh_p WHERE (id > 10);
-- through their roots
CREATE PUBLICATION roots FOR TABLE pb WHERE (id % 5 <> 0), pc, pd WITH (publish_via_partition_root = true);
"#;

const PART_SUB: &str = r#"
CREATE TABLE pa (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE pa_1 PARTITION OF pa FOR VALUES FROM (0) TO (100);
CREATE TABLE pa_2 PARTITION OF pa FOR VALUES FROM (100) TO (1000);
-- partitioned differently from the publisher
CREATE TABLE pb (id int, k text, v text, PRIMARY KEY (id, k)) PARTITION BY RANGE (id);
CREATE TABLE pb_lo PARTITION OF pb FOR VALUES FROM (MINVALUE) TO (50);
CREATE TABLE pb_hi PARTITION OF pb FOR VALUES FROM (50) TO (MAXVALUE);
-- partitioned on the publisher only
CREATE TABLE pc (id int PRIMARY KEY, v text);
-- partitioned on the subscriber only
CREATE TABLE pd (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE pd_1 PARTITION OF pd FOR VALUES FROM (MINVALUE) TO (100);
CREATE TABLE pd_2 PARTITION OF pd FOR VALUES FROM (100) TO (MAXVALUE);
-- the publisher's partitions as plain tables
CREATE TABLE pe_1 (id int PRIMARY KEY, v text);
CREATE TABLE pe_2 (id int PRIMARY KEY, v text);
CREATE TABLE inh_p (id int PRIMARY KEY, v text);
CREATE TABLE inh_c (extra text) INHERITS (inh_p);
ALTER TABLE inh_c ADD PRIMARY KEY (id);
CREATE TABLE inh_c2 () INHERITS (inh_p);
ALTER TABLE inh_c2 ADD PRIMARY KEY (id);
"#;

const ROOT_AND_LEAVES: &str = "
CREATE TABLE rp (a int PRIMARY KEY, b int) PARTITION BY RANGE (a);
CREATE TABLE rp1 PARTITION OF rp FOR VALUES FROM (0) TO (100);
CREATE TABLE rp2 PARTITION OF rp FOR VALUES FROM (100) TO (200);
CREATE TABLE other (id int PRIMARY KEY);
";

/// A partitioned table published through its root (`publish_via_partition_root`) in one
/// publication while another (`FOR ALL TABLES`) lists its partitions: the subscription's table
/// list has the root and not the partitions, as PostgreSQL 16's has (the walsender sends the
/// partitions' changes as the root's), so the initial copy takes each row once and the stream
/// applies. (Native 15 lists both and copies the rows twice: not run natively.)
#[tokio::test(flavor = "current_thread")]
async fn a_root_published_via_root_and_its_partitions_by_another_publication() {
    if native() {
        return;
    }
    let mut c = Case::start(
        &format!(
            "{ROOT_AND_LEAVES} INSERT INTO rp VALUES (1, 1), (150, 150); INSERT INTO other VALUES (1);
             CREATE PUBLICATION pall FOR ALL TABLES;
             CREATE PUBLICATION proot FOR TABLE rp WITH (publish_via_partition_root = true);"
        ),
        ROOT_AND_LEAVES,
    )
    .await;
    c.subscribe_default("sroot", &["pall", "proot"]).await;
    c.wait_synced("sroot").await;
    c.expect_sub(
        "the subscription's tables",
        "SELECT string_agg(remote_name, ',' ORDER BY remote_name) FROM pgsub.subscription_table",
        "other,rp",
    )
    .await;
    c.on_pub(
        "INSERT INTO rp VALUES (2, 2), (151, 151); UPDATE rp SET b = 0 WHERE a = 1; UPDATE rp SET a = 120 WHERE a = 2;
         DELETE FROM rp WHERE a = 150; INSERT INTO other VALUES (2);",
    )
    .await;
    c.wait_equal("after changes through the root", None, &[]).await;
    c.expect_sub("rp", "SELECT string_agg(a || ':' || b, ',' ORDER BY a) FROM rp", "1:0,120:2,151:151").await;
    c.finish().await;
}

/// Partitioned tables on either side: leaves published one by one (same layout on the
/// subscriber, and as plain tables each with its own row filter), roots published with
/// publish_via_partition_root into a subscriber partitioned differently, into a plain table, and
/// a plain table into a partitioned one; updates that move rows between partitions on either
/// side or in and out of row filters; TRUNCATE through a root, of a leaf, into a partitioned
/// table. An inheritance parent with two children under one row filter: the copy takes the
/// parent ONLY, changes to the children go to the children.
#[tokio::test(flavor = "current_thread")]
async fn partitioned_and_inherited_tables() {
    let mut c = Case::start(PART_PUB, PART_SUB).await;
    c.subscribe("parts", &["leafs", "roots"], false).await;
    c.wait_synced("parts").await;
    c.wait_equal("after the initial copy", None, &[]).await;
    let only_parent = "SELECT count(*)::text FROM ONLY inh_p";
    c.expect_sub("rows of ONLY inh_p after the copy (parent rows with id > 10)", only_parent, "10").await;

    c.on_pub(
        "BEGIN;
         INSERT INTO pa VALUES (151, 'new'), (999, 'edge');
         UPDATE pa SET id = id + 500 WHERE id BETWEEN 50 AND 55;   -- pa_1 -> pa_2
         UPDATE pa SET v = 'u' WHERE id % 10 = 0;
         DELETE FROM pa WHERE id % 7 = 0;
         UPDATE pb SET k = 'y' WHERE k = 'x' AND id <= 30;         -- between the publisher's partitions
         UPDATE pb SET id = id + 100 WHERE id BETWEEN 40 AND 45;   -- between both sides' partitions
         UPDATE pb SET id = 15 WHERE id = 11;                      -- leaves the row filter
         UPDATE pb SET id = 21 WHERE id = 20;                      -- enters the row filter
         DELETE FROM pb WHERE id % 9 = 0;
         INSERT INTO pc SELECT g, 'c' FROM generate_series(51, 60) g;
         UPDATE pc SET id = id + 1000 WHERE id <= 5;
         UPDATE pc SET v = 'u' WHERE id % 3 = 0;
         DELETE FROM pc WHERE id % 4 = 0;
         UPDATE pd SET id = id + 100 WHERE id BETWEEN 90 AND 95;   -- between the subscriber's partitions
         UPDATE pd SET v = 'u' WHERE id % 3 = 0;
         DELETE FROM pd WHERE id % 4 = 0;
         DELETE FROM pe WHERE id = 3;
         UPDATE pe SET id = 3 WHERE id = 4;                        -- leaves pe_1's filter
         DELETE FROM pe WHERE id = 8;
         UPDATE pe SET id = 8 WHERE id = 7;                        -- enters pe_1's filter
         UPDATE pe SET v = 'u' WHERE id IN (120, 160);
         DELETE FROM pe WHERE id = 140;
         UPDATE pe SET id = 140 WHERE id = 199;                    -- leaves pe_2's filter
         UPDATE pe SET id = 250 WHERE id = 10;                     -- pe_1 -> pe_2, in both filters
         INSERT INTO pe VALUES (500, 'e'), (7, 'odd');
         INSERT INTO inh_p VALUES (30, 'p'), (0, 'p-no');
         INSERT INTO inh_c VALUES (40, 'c', 'x'), (2, 'c-no', 'x');
         UPDATE inh_p SET v = v || '!' WHERE id BETWEEN 12 AND 22; -- parent and children rows
         DELETE FROM inh_p WHERE id % 3 = 0;                       -- parent and children rows
         UPDATE inh_c SET id = 9 WHERE id = 25;                    -- leaves the filter
         UPDATE ONLY inh_p SET id = 31 WHERE id = 8;               -- enters the filter
         COMMIT;",
    )
    .await;
    c.wait_equal("after changes", None, &[]).await;
    c.on_pub(
        "TRUNCATE pc;
         INSERT INTO pc VALUES (1, 'after truncate');
         TRUNCATE pd;
         INSERT INTO pd VALUES (1, 'after'), (101, 'after');
         TRUNCATE pa_1;
         TRUNCATE inh_c2;",
    )
    .await;
    c.wait_equal("after TRUNCATE", None, &[]).await;
    let want = val(&c.p, &format!("{only_parent} WHERE id > 10")).await;
    c.expect_sub("rows of ONLY inh_p (the publisher's parent rows with id > 10)", only_parent, &want).await;
    c.finish().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Row filters and column lists; different column lists for one table are refused.
// ---------------------------------------------------------------------------------------------

const FILTERS_BOTH: &str = r#"
CREATE TABLE rf (id int PRIMARY KEY, v int, t text);
CREATE TABLE rf_full (id int, v int, t text);
ALTER TABLE rf_full REPLICA IDENTITY FULL;
CREATE TABLE rf_two (id int PRIMARY KEY, t text);
CREATE TABLE rf_nofilter (id int PRIMARY KEY, t text);
CREATE TABLE cl_rf (id int PRIMARY KEY, a int, b text);
CREATE TABLE cl_same (id int PRIMARY KEY, a int, b text);
CREATE TABLE cl_diff (id int PRIMARY KEY, a int, b int);
"#;

const FILTERS_PUB: &str = r#"
CREATE TABLE cl (id int PRIMARY KEY, a int, b text, secret text);
INSERT INTO rf SELECT g, g, 't' || g FROM generate_series(1, 30) g;
INSERT INTO rf_full SELECT g, g, CASE WHEN g % 4 <> 0 THEN 't' END FROM generate_series(1, 30) g;
INSERT INTO rf_two SELECT g, 't' FROM generate_series(1, 30) g;
INSERT INTO rf_nofilter SELECT g, 't' FROM generate_series(1, 30) g;
INSERT INTO cl SELECT g, g, 'b' || g, 's' || g FROM generate_series(1, 10) g;
INSERT INTO cl_rf SELECT g, g, 'b' FROM generate_series(1, 10) g;
INSERT INTO cl_same SELECT g, g, 'b' FROM generate_series(1, 10) g;
INSERT INTO cl_diff SELECT g, g, g FROM generate_series(1, 3) g;
CREATE PUBLICATION f1 FOR TABLE rf WHERE (id > 10), rf_full WHERE (v > 10 AND t IS NOT NULL), rf_two WHERE (id < 10),
    rf_nofilter WHERE (id < 10), cl (id, a, b), cl_rf (id, a) WHERE (id % 2 = 0), cl_same (id, a);
-- rf_two: the filters of both publications apply (OR); rf_nofilter: one publication without a
-- filter publishes every row; cl_same: the same column list, written in another order
CREATE PUBLICATION f2 FOR TABLE rf_two WHERE (id > 20), rf_nofilter, cl_same (a, id);
CREATE PUBLICATION d1 FOR TABLE cl_diff (id, a);
CREATE PUBLICATION d2 FOR TABLE cl_diff (id, b);
"#;

const FILTERS_SUB: &str = r#"
CREATE TABLE cl (id int PRIMARY KEY, a int, b text, secret text DEFAULT 'sub default');
"#;

/// Row filters: updates that enter a filter become inserts, updates that leave it deletes (also
/// under REPLICA IDENTITY FULL with a filter on non-key columns); two publications' filters are
/// ORed and a publication without one publishes every row. Column lists: unpublished columns
/// keep their local default or NULL, also with a row filter, and the same list in two
/// publications is accepted. Two publications giving one table different column lists are
/// refused when the subscription is created, leaving nothing behind.
#[tokio::test(flavor = "current_thread")]
async fn row_filters_and_column_lists() {
    let mut c = Case::start(&format!("{FILTERS_BOTH}{FILTERS_PUB}"), &format!("{FILTERS_BOTH}{FILTERS_SUB}")).await;

    // Different column lists for cl_diff in d1 and d2: refused, and nothing is left behind.
    match c.try_subscribe("bad", &["d1", "d2"], false).await {
        Ok(()) => {
            c.findings.push("a subscription to d1 and d2 (different column lists for cl_diff) was created".into())
        }
        Err(e) => {
            let want = "cannot use different column lists for table \"public.cl_diff\" in different publications";
            if !e.contains(want) {
                c.findings.push(format!("refusal of different column lists: got {e:?}, want {want:?}"));
            }
        }
    }
    let catalog = if native() {
        "SELECT count(*)::text FROM pg_subscription WHERE subname = 'bad'"
    } else {
        "SELECT count(*)::text FROM pgsub.subscription WHERE subname = 'bad'"
    };
    c.expect_sub("subscription 'bad' in the catalog after the refusal", catalog, "0").await;
    c.expect_sub("replication origins after the refusal", "SELECT count(*)::text FROM pg_replication_origin", "0")
        .await;
    let slots = val(&c.p, "SELECT coalesce(string_agg(slot_name, ','), '') FROM pg_replication_slots").await;
    c.expect("slots on the publisher after the refusal", &slots, "");

    c.subscribe("filters", &["f1", "f2"], false).await;
    c.wait_synced("filters").await;
    c.wait_equal("after the initial copy", None, &[]).await;
    c.on_pub(
        "BEGIN;
         UPDATE rf SET id = 105 WHERE id = 5;        -- enters the filter: an insert
         UPDATE rf SET id = -20 WHERE id = 20;       -- leaves it: a delete
         UPDATE rf SET v = -1 WHERE id = 25;         -- stays in: an update
         UPDATE rf SET v = -1 WHERE id = 3;          -- stays out: nothing
         DELETE FROM rf WHERE id IN (12, 2);
         INSERT INTO rf VALUES (1000, 0, 'n'), (0, 0, 'n');
         UPDATE rf_full SET v = 50 WHERE id = 5;     -- enters
         UPDATE rf_full SET v = 5 WHERE id = 15;     -- leaves
         UPDATE rf_full SET t = NULL WHERE id = 17;  -- leaves
         UPDATE rf_full SET t = 'back' WHERE id = 16;-- enters
         DELETE FROM rf_full WHERE id IN (2, 22);
         UPDATE rf_two SET t = 'u' WHERE id IN (5, 15, 25);
         DELETE FROM rf_two WHERE id IN (6, 16, 26);
         UPDATE rf_nofilter SET t = 'u' WHERE id % 2 = 0;
         DELETE FROM rf_nofilter WHERE id > 25;
         UPDATE cl SET b = 'changed' WHERE id <= 3;
         UPDATE cl SET secret = 'not sent' WHERE id = 4;
         DELETE FROM cl WHERE id = 5;
         INSERT INTO cl VALUES (11, 11, 'b11', 'secret');
         UPDATE cl_rf SET a = -a WHERE id <= 4;
         UPDATE cl_rf SET b = 'unpublished' WHERE id = 6;
         UPDATE cl_rf SET id = 11 WHERE id = 10;     -- leaves the filter
         UPDATE cl_rf SET id = 12 WHERE id = 9;      -- enters the filter
         DELETE FROM cl_rf WHERE id IN (7, 8);
         UPDATE cl_same SET a = 0 WHERE id <= 5;
         DELETE FROM cl_same WHERE id = 10;
         COMMIT;",
    )
    .await;
    c.wait_equal("after changes", None, &[]).await;
    c.expect_sub(
        "rf ids (id > 10)",
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM rf",
        "11,13,14,15,16,17,18,19,21,22,23,24,25,26,27,28,29,30,105,1000",
    )
    .await;
    c.expect_sub(
        "rf_full ids (v > 10 AND t IS NOT NULL)",
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM rf_full",
        "5,11,13,14,16,18,19,21,23,25,26,27,29,30",
    )
    .await;
    c.expect_sub(
        "rf_two ids (id < 10 OR id > 20)",
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM rf_two",
        "1,2,3,4,5,7,8,9,21,22,23,24,25,27,28,29,30",
    )
    .await;
    c.expect_sub("rf_nofilter rows (every row)", "SELECT count(*)::text FROM rf_nofilter", "25").await;
    c.expect_sub(
        "cl.secret (not in the column list: the local default)",
        "SELECT string_agg(id || ':' || coalesce(secret, 'NULL'), ',' ORDER BY id) FROM cl WHERE id IN (1, 4, 11)",
        "1:sub default,4:sub default,11:sub default",
    )
    .await;
    c.expect_sub(
        "cl_rf (id, a) with id % 2 = 0; b not published",
        "SELECT string_agg(id || ':' || a || ':' || coalesce(b, 'NULL'), ',' ORDER BY id) FROM cl_rf",
        "2:-2:NULL,4:-4:NULL,6:6:NULL,12:9:NULL",
    )
    .await;
    c.expect_sub("cl_same.b (not published)", "SELECT count(*)::text FROM cl_same WHERE b IS NOT NULL", "0").await;
    if !native() {
        // pgsub also refuses a clash when publications are changed or refreshed (PostgreSQL 16
        // does at ALTER SUBSCRIPTION … REFRESH; 15 only when the table is copied or changed).
        let want = "cannot use different column lists for table \"public.cl_diff\" in different publications";
        let r =
            c.s.execute("SELECT pgsub.alter_subscription_publications('filters', ARRAY['f1', 'f2', 'd1', 'd2'])", &[])
                .await;
        match r {
            Ok(_) => c.findings.push("alter_subscription_publications accepted d1 and d2".into()),
            Err(e) => {
                let msg = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
                c.expect("alter_subscription_publications refusal", &msg, want);
            }
        }
        c.expect_sub(
            "publications after the refused alter",
            "SELECT array_to_string(publications, ',') FROM pgsub.subscription WHERE subname = 'filters'",
            "f1,f2",
        )
        .await;
        // cl gets a second, different column list in f2: refresh refuses it (no change to cl
        // follows, so the running worker never meets the clash).
        c.on_pub("ALTER PUBLICATION f2 ADD TABLE cl (id, a)").await;
        let r = c.s.execute("SELECT pgsub.refresh_subscription('filters')", &[]).await;
        let want = "cannot use different column lists for table \"public.cl\" in different publications";
        match r {
            Ok(_) => c.findings.push("refresh_subscription accepted two column lists for cl".into()),
            Err(e) => {
                let msg = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
                c.expect("refresh_subscription refusal", &msg, want);
            }
        }
        c.on_pub("ALTER PUBLICATION f2 DROP TABLE cl").await;
    }
    c.finish().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Subscriber triggers, foreign keys and conflicts.
// ---------------------------------------------------------------------------------------------

const TRIGGERS_PUB: &str = r#"
CREATE TABLE trg (id int PRIMARY KEY, v int);
CREATE TABLE fk_parent (id int PRIMARY KEY);
CREATE TABLE fk_child (id int PRIMARY KEY, pid int);
CREATE TABLE conf (id int PRIMARY KEY, v text);
INSERT INTO trg VALUES (1, 1), (2, 2), (3, 3);
INSERT INTO fk_parent VALUES (1), (2);
INSERT INTO fk_child VALUES (1, 1), (2, 2), (3, 99);
INSERT INTO conf SELECT g, 'c' FROM generate_series(1, 5) g;
CREATE PUBLICATION tp FOR TABLE trg, fk_parent, fk_child, conf;
"#;

const TRIGGERS_SUB: &str = r#"
CREATE TABLE trg (id int PRIMARY KEY, v int, touched int);
CREATE TABLE fk_parent (id int PRIMARY KEY);
CREATE TABLE fk_child (id int PRIMARY KEY, pid int REFERENCES fk_parent ON DELETE CASCADE);
CREATE TABLE conf (id int PRIMARY KEY, v text);
CREATE TABLE trg_log (tg text, op text, lvl text, id int);
CREATE FUNCTION log_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE k int;
BEGIN
    IF TG_OP = 'DELETE' THEN k := OLD.id; ELSE k := NEW.id; END IF;
    INSERT INTO public.trg_log VALUES (TG_NAME, TG_OP, TG_LEVEL, k);
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    IF TG_WHEN = 'BEFORE' THEN NEW.touched := coalesce(NEW.touched, 0) + 1; END IF;
    RETURN NEW;
END $$;
CREATE FUNCTION log_stmt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.trg_log VALUES (TG_NAME, TG_OP, TG_LEVEL, NULL);
    RETURN NULL;
END $$;
CREATE TRIGGER a_ordinary AFTER INSERT OR UPDATE OR DELETE ON trg FOR EACH ROW EXECUTE FUNCTION log_row();
CREATE TRIGGER b_replica AFTER INSERT OR UPDATE OR DELETE ON trg FOR EACH ROW EXECUTE FUNCTION log_row();
ALTER TABLE trg ENABLE REPLICA TRIGGER b_replica;
CREATE TRIGGER c_always BEFORE INSERT OR UPDATE ON trg FOR EACH ROW EXECUTE FUNCTION log_row();
ALTER TABLE trg ENABLE ALWAYS TRIGGER c_always;
CREATE TRIGGER d_stmt AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON trg FOR EACH STATEMENT EXECUTE FUNCTION log_stmt();
ALTER TABLE trg ENABLE ALWAYS TRIGGER d_stmt;
"#;

/// A row-level AFTER trigger enabled for replication on the subscriber fires right after its own
/// row, as native apply runs each row as a statement of its own: one that reads the table sees it
/// as the rows before left it (row count and sum of `v` per INSERT, UPDATE and DELETE of runs of
/// 100, 6 and 5 rows). pgsub applied such runs as one COPY, UPDATE or DELETE statement, and every
/// row's trigger saw the whole run applied (`sumv` 109, 109, 109, 109 where native logged 106, 107,
/// 108, 109).
#[tokio::test(flavor = "current_thread")]
async fn after_row_triggers_see_the_table_as_each_row_left_it() {
    let table = "CREATE TABLE ar (id int PRIMARY KEY, v int);";
    let mut c = Case::start(
        &format!("{table} CREATE PUBLICATION arp FOR TABLE ar;"),
        &format!(
            "{table}
             CREATE TABLE ar_log (n serial PRIMARY KEY, op text, id int, cnt bigint, sumv bigint);
             CREATE FUNCTION ar_audit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO public.ar_log (op, id, cnt, sumv)
                 SELECT TG_OP, CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END, count(*), sum(v)
                 FROM public.ar;
                 RETURN NULL;
             END $$;
             CREATE TRIGGER ar_after AFTER INSERT OR UPDATE OR DELETE ON ar FOR EACH ROW EXECUTE FUNCTION ar_audit();
             ALTER TABLE ar ENABLE REPLICA TRIGGER ar_after;"
        ),
    )
    .await;
    c.subscribe_default("ar", &["arp"]).await;
    c.wait_synced("ar").await;
    c.on_pub("INSERT INTO ar SELECT g, g FROM generate_series(1, 100) g").await;
    c.on_pub("UPDATE ar SET v = v + 1 WHERE id <= 6").await;
    c.on_pub("DELETE FROM ar WHERE id IN (3, 4, 5, 6, 7)").await;
    c.wait_equal("after the runs", None, &[]).await;
    c.expect_sub(
        "each INSERT's trigger saw the rows up to its own",
        "SELECT count(*) FILTER (WHERE cnt = id AND sumv = id * (id + 1) / 2) || '/' || count(*) FROM ar_log WHERE op = 'INSERT'",
        "100/100",
    )
    .await;
    c.expect_sub(
        "each UPDATE's and DELETE's trigger saw the rows before it applied",
        "SELECT string_agg(op || ' ' || id || ' ' || cnt || ' ' || sumv, ', ' ORDER BY n) FROM ar_log WHERE op <> 'INSERT'",
        "UPDATE 1 100 5051, UPDATE 2 100 5052, UPDATE 3 100 5053, UPDATE 4 100 5054, UPDATE 5 100 5055, \
         UPDATE 6 100 5056, DELETE 3 99 5052, DELETE 4 98 5047, DELETE 5 97 5041, DELETE 6 96 5034, DELETE 7 95 5027",
    )
    .await;
    c.finish().await;
}

/// The same for a trigger created on one partition of a partitioned target while changes are
/// applied: the next run sees it (the binding of the partitioned table read its partitions'
/// triggers, but only a change of the table itself dropped it; runs went on batched).
#[tokio::test(flavor = "current_thread")]
async fn a_row_trigger_added_to_a_partition_while_applying_fires_after_each_row() {
    let mut c = Case::start(
        "CREATE TABLE pr (id int PRIMARY KEY, v int); CREATE PUBLICATION prp FOR TABLE pr;",
        "CREATE TABLE pr (id int PRIMARY KEY, v int) PARTITION BY RANGE (id);
         CREATE TABLE pr_1 PARTITION OF pr FOR VALUES FROM (0) TO (1000);
         CREATE TABLE pr_2 PARTITION OF pr FOR VALUES FROM (1000) TO (2000);
         CREATE TABLE pr_log (n serial PRIMARY KEY, id int, sumv bigint);
         CREATE FUNCTION pr_audit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO public.pr_log (id, sumv) SELECT NEW.id, sum(v) FROM public.pr;
             RETURN NULL;
         END $$;",
    )
    .await;
    c.subscribe_default("pr", &["prp"]).await;
    c.wait_synced("pr").await;
    c.on_pub("INSERT INTO pr SELECT g, g FROM generate_series(1, 20) g").await;
    c.on_pub("UPDATE pr SET v = v + 1 WHERE id <= 6").await;
    c.wait_equal("a first run, no trigger yet", None, &[]).await;
    c.on_sub(
        "CREATE TRIGGER pr_after AFTER UPDATE ON pr_1 FOR EACH ROW EXECUTE FUNCTION pr_audit();
         ALTER TABLE pr_1 ENABLE REPLICA TRIGGER pr_after;",
    )
    .await;
    c.on_pub("UPDATE pr SET v = v + 1 WHERE id <= 6").await;
    c.wait_equal("after the second run", None, &[]).await;
    // The sum was 210 + 6 after the first run; each update adds 1.
    c.expect_sub(
        "each UPDATE's trigger saw the rows before it applied",
        "SELECT string_agg(id || ' ' || sumv, ', ' ORDER BY n) FROM pr_log",
        "1 217, 2 218, 3 219, 4 220, 5 221, 6 222",
    )
    .await;
    c.finish().await;
}

/// Triggers on the subscriber: an ordinary trigger never fires for replicated changes; ENABLE
/// REPLICA and ENABLE ALWAYS row triggers fire for the initial copy and for every applied
/// change (a BEFORE trigger's change to NEW is kept); statement triggers fire for the initial
/// copy (it is a COPY) and for TRUNCATE, not for applied inserts, updates and deletes (the
/// apply process fires row triggers only). Foreign keys on the subscriber are not enforced
/// (their triggers are ordinary ones): orphans arrive, ON DELETE CASCADE does not run.
/// Conflicts: updates and deletes of rows missing locally are skipped; an insert that violates
/// a local unique key stops the subscription until the local row is removed.
#[tokio::test(flavor = "current_thread")]
async fn subscriber_triggers_foreign_keys_and_conflicts() {
    let mut c = Case::start(TRIGGERS_PUB, TRIGGERS_SUB).await;
    c.subscribe("trg", &["tp"], false).await;
    c.wait_synced("trg").await;
    c.wait_equal("after the initial copy", None, &[]).await;

    c.on_pub(
        "BEGIN;
         INSERT INTO trg VALUES (4, 4), (5, 5);
         UPDATE trg SET v = 10 WHERE id = 1;
         DELETE FROM trg WHERE id = 2;
         UPDATE trg SET id = 30 WHERE id = 3;
         INSERT INTO fk_child VALUES (4, 77);   -- no such parent anywhere
         DELETE FROM fk_parent WHERE id = 1;    -- the subscriber's ON DELETE CASCADE must not run
         COMMIT;",
    )
    .await;
    c.wait_equal("after changes", None, &[]).await;
    c.expect_sub(
        "trg.touched (set by the ALWAYS BEFORE trigger: +1 per insert or update)",
        "SELECT string_agg(id || '=' || coalesce(touched::text, 'NULL'), ',' ORDER BY id) FROM trg",
        "1=2,4=1,5=1,30=2",
    )
    .await;
    c.expect_sub(
        "fk_child (foreign key not enforced, no cascade)",
        "SELECT string_agg(id || ':' || pid, ',' ORDER BY id) FROM fk_child",
        "1:1,2:2,3:99,4:77",
    )
    .await;

    c.on_pub("TRUNCATE trg; INSERT INTO trg VALUES (7, 7);").await;
    c.wait_equal("after TRUNCATE", None, &[]).await;
    let expected = [
        "b_replica DELETE ROW 2",
        "b_replica INSERT ROW 1",
        "b_replica INSERT ROW 2",
        "b_replica INSERT ROW 3",
        "b_replica INSERT ROW 4",
        "b_replica INSERT ROW 5",
        "b_replica INSERT ROW 7",
        "b_replica UPDATE ROW 1",
        "b_replica UPDATE ROW 30",
        "c_always INSERT ROW 1",
        "c_always INSERT ROW 2",
        "c_always INSERT ROW 3",
        "c_always INSERT ROW 4",
        "c_always INSERT ROW 5",
        "c_always INSERT ROW 7",
        "c_always UPDATE ROW 1",
        "c_always UPDATE ROW 30",
        "d_stmt INSERT STATEMENT -",
        "d_stmt TRUNCATE STATEMENT -",
    ];
    c.expect_sub(
        "trigger firings (ordinary never; row triggers for copy and apply; statement triggers for copy and TRUNCATE)",
        "SELECT string_agg(concat_ws(' ', tg, op, lvl, coalesce(id::text, '-')), ', ' ORDER BY tg, op, lvl, id) FROM trg_log",
        &expected.join(", "),
    )
    .await;

    // Updates and deletes of a row missing locally are skipped.
    c.on_sub("DELETE FROM conf WHERE id = 2").await;
    c.on_pub("BEGIN; UPDATE conf SET v = 'u' WHERE id IN (1, 2); DELETE FROM conf WHERE id = 2; COMMIT;").await;
    c.wait_equal("after changes to a row missing on the subscriber", None, &[]).await;
    // An insert that violates a local unique key stops the subscription, until the local row goes.
    c.on_sub("INSERT INTO conf VALUES (6, 'local')").await;
    c.on_pub("INSERT INTO conf VALUES (6, 'remote')").await;
    c.on_pub("INSERT INTO conf VALUES (7, 'after')").await;
    // Native 15's unique violation; pgsub's conflict report names the index the same.
    c.wait_error("trg", &["\"conf_pkey\""]).await;
    let sql = "SELECT string_agg(id || v, ',' ORDER BY id) FROM conf WHERE id >= 6";
    c.expect_sub("conf rows after the failing transaction (nothing later applied)", sql, "6local").await;
    c.on_sub("DELETE FROM conf WHERE id = 6").await;
    c.wait_equal("after the conflicting local row was removed", None, &[]).await;
    c.finish().await;
}

// ---------------------------------------------------------------------------------------------
// 7. TRUNCATE.
// ---------------------------------------------------------------------------------------------

const TRUNCATE_PUB: &str = r#"
CREATE TABLE t_a (id int PRIMARY KEY, v text);
CREATE TABLE t_parent (id int PRIMARY KEY);
CREATE TABLE t_child (id int PRIMARY KEY, pid int REFERENCES t_parent);
CREATE TABLE t_ref (id int PRIMARY KEY);
CREATE TABLE t_refing (id int PRIMARY KEY, rid int);
CREATE TABLE t_seq (id int PRIMARY KEY);
CREATE TABLE t_notrunc (id int PRIMARY KEY);
INSERT INTO t_a SELECT g, 'a' FROM generate_series(1, 10) g;
INSERT INTO t_parent SELECT generate_series(1, 5);
INSERT INTO t_child SELECT g, g FROM generate_series(1, 5) g;
INSERT INTO t_ref SELECT generate_series(1, 5);
INSERT INTO t_refing SELECT g, g FROM generate_series(1, 5) g;
INSERT INTO t_seq SELECT generate_series(1, 3);
INSERT INTO t_notrunc SELECT generate_series(1, 3);
CREATE PUBLICATION tr FOR TABLE t_a, t_parent, t_child, t_ref, t_refing, t_seq;
CREATE PUBLICATION tr_nt FOR TABLE t_notrunc WITH (publish = 'insert, update, delete');
"#;

const TRUNCATE_SUB: &str = r#"
CREATE TABLE t_a (id int PRIMARY KEY, v text);
CREATE TABLE t_parent (id int PRIMARY KEY);
CREATE TABLE t_child (id int PRIMARY KEY, pid int REFERENCES t_parent);
CREATE TABLE t_ref (id int PRIMARY KEY);
-- a foreign key on the subscriber only
CREATE TABLE t_refing (id int PRIMARY KEY, rid int CONSTRAINT t_refing_rid_fkey REFERENCES t_ref);
-- a local identity column: TRUNCATE ... RESTART IDENTITY restarts it
CREATE TABLE t_seq (id int PRIMARY KEY, lid serial);
CREATE TABLE t_notrunc (id int PRIMARY KEY);
"#;

/// TRUNCATE between other changes of one transaction, with CASCADE over a foreign key present
/// on both sides, of two tables linked by a subscriber-only foreign key, RESTART IDENTITY (the
/// subscriber's own sequence restarts), a publication that does not publish truncate; truncating
/// only the referenced table of a subscriber-only foreign key stops the subscription (as
/// natively: "cannot truncate a table referenced in a foreign key constraint") until the key is
/// dropped, and nothing after it is applied meanwhile.
#[tokio::test(flavor = "current_thread")]
async fn truncate_replication() {
    let mut c = Case::start(TRUNCATE_PUB, TRUNCATE_SUB).await;
    c.subscribe("trunc", &["tr", "tr_nt"], false).await;
    c.wait_synced("trunc").await;
    c.wait_equal("after the initial copy", None, &[]).await;

    c.on_pub(
        "BEGIN;
         INSERT INTO t_a VALUES (11, 'b');
         TRUNCATE t_a;
         INSERT INTO t_a VALUES (1, 'after');
         COMMIT;
         TRUNCATE t_parent CASCADE;
         INSERT INTO t_parent VALUES (10);
         INSERT INTO t_child VALUES (10, 10);
         TRUNCATE t_ref, t_refing;
         INSERT INTO t_ref VALUES (1);
         INSERT INTO t_refing VALUES (1, 1);
         TRUNCATE t_seq RESTART IDENTITY;
         INSERT INTO t_seq VALUES (100);
         TRUNCATE t_notrunc;
         INSERT INTO t_notrunc VALUES (50);",
    )
    .await;
    // t_notrunc keeps its rows: its publication does not publish TRUNCATE.
    c.wait_equal("after TRUNCATEs", None, &["t_notrunc"]).await;
    c.expect_sub("t_a", "SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM t_a", "1:after").await;
    let sql = "SELECT string_agg(id || ':' || lid, ',' ORDER BY id) FROM t_seq";
    c.expect_sub("t_seq with its local identity restarted", sql, "100:1").await;
    c.expect_sub(
        "t_notrunc (TRUNCATE not published)",
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM t_notrunc",
        "1,2,3,50",
    )
    .await;
    c.on_sub("DELETE FROM t_notrunc WHERE id < 50").await;

    // Only the referenced table of the subscriber's foreign key: refused as natively.
    c.on_pub("TRUNCATE t_ref").await;
    c.on_pub("INSERT INTO t_a VALUES (2, 'blocked')").await;
    c.wait_error("trunc", &["cannot truncate a table referenced in a foreign key constraint"]).await;
    c.expect_sub("t_a while the TRUNCATE fails", "SELECT string_agg(id::text, ',' ORDER BY id) FROM t_a", "1").await;
    c.expect_sub("t_ref while the TRUNCATE fails", "SELECT count(*)::text FROM t_ref", "1").await;
    c.on_sub("ALTER TABLE t_refing DROP CONSTRAINT t_refing_rid_fkey").await;
    c.wait_equal("after the subscriber's foreign key was dropped", None, &[]).await;
    c.finish().await;
}

// ------------------------------------------------------------------ keys the subscriber has
const KEYS_PUB: &str = "
CREATE TABLE kf_part (id int, v text);
ALTER TABLE kf_part REPLICA IDENTITY FULL;
INSERT INTO kf_part SELECT g, 'v' || g FROM generate_series(1, 9) g;
CREATE TABLE kf_root (id int, v text) PARTITION BY RANGE (id);
CREATE TABLE kf_root_a PARTITION OF kf_root FOR VALUES FROM (0) TO (5);
CREATE TABLE kf_root_b PARTITION OF kf_root FOR VALUES FROM (5) TO (100);
ALTER TABLE kf_root REPLICA IDENTITY FULL;
ALTER TABLE kf_root_a REPLICA IDENTITY FULL;
ALTER TABLE kf_root_b REPLICA IDENTITY FULL;
INSERT INTO kf_root SELECT g, 'r' || g FROM generate_series(1, 9) g;
CREATE TABLE kf_pk (a int, t text, f float8, j json);
ALTER TABLE kf_pk REPLICA IDENTITY FULL;
INSERT INTO kf_pk SELECT g, 't' || g, g, '{\"g\": 1}' FROM generate_series(1, 5) g;
CREATE TABLE id_always (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
INSERT INTO id_always (v) VALUES ('a'), ('b');
CREATE TABLE id_always_col (k int PRIMARY KEY, n int GENERATED ALWAYS AS IDENTITY, v text);
INSERT INTO id_always_col (k, v) SELECT g, 'v' || g FROM generate_series(1, 6) g;
CREATE TABLE id_plain (k int PRIMARY KEY, n int, big text);
ALTER TABLE id_plain ALTER COLUMN big SET STORAGE EXTERNAL;
INSERT INTO id_plain SELECT g, g, repeat(g::text, 5000) FROM generate_series(1, 4) g;
CREATE PUBLICATION keys FOR TABLE kf_part, kf_pk, id_always, id_always_col, id_plain;
CREATE PUBLICATION keys_root FOR TABLE kf_root WITH (publish_via_partition_root = true);
";
const KEYS_SUB: &str = "
CREATE TABLE kf_part (id int, v text) PARTITION BY RANGE (id);
CREATE TABLE kf_part_0 PARTITION OF kf_part FOR VALUES FROM (0) TO (4);
CREATE TABLE kf_part_1 PARTITION OF kf_part FOR VALUES FROM (4) TO (7);
CREATE TABLE kf_part_2 PARTITION OF kf_part FOR VALUES FROM (7) TO (100);
CREATE TABLE kf_root (id int, v text) PARTITION BY LIST ((id % 3));
CREATE TABLE kf_root_0 PARTITION OF kf_root FOR VALUES IN (0);
CREATE TABLE kf_root_1 PARTITION OF kf_root FOR VALUES IN (1);
CREATE TABLE kf_root_2 PARTITION OF kf_root FOR VALUES IN (2);
CREATE TABLE kf_pk (a int PRIMARY KEY, t text, f float8, j json);
CREATE TABLE id_always (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
CREATE TABLE id_always_col (k int PRIMARY KEY, n int GENERATED ALWAYS AS IDENTITY, v text);
CREATE TABLE id_plain (k int PRIMARY KEY, n int GENERATED ALWAYS AS IDENTITY, big text, here text DEFAULT 'here');
";

/// What the subscriber's own keys change (as native apply, which finds rows through the local
/// table): REPLICA IDENTITY FULL into a partitioned table (one row changes, not the row at the
/// same ctid in every partition); FULL into a table with a primary key (the row is found by that
/// key, even when another column differs here or has no equality operator, json); GENERATED
/// ALWAYS identity columns, which SQL would not let an INSERT or UPDATE set: an UPDATE that
/// changes one (`SET id = DEFAULT` on the publisher, or a plain column there) writes the new
/// value as native apply does, the row's TOAST value left unchanged and its subscriber-only
/// column kept.
#[tokio::test(flavor = "current_thread")]
async fn subscriber_keys_partitions_and_identity_columns() {
    let mut c = Case::start(KEYS_PUB, KEYS_SUB).await;
    c.subscribe("keys", &["keys", "keys_root"], false).await;
    c.wait_synced("keys").await;
    c.wait_equal("after the initial copy", None, &[]).await;

    c.on_pub(
        "UPDATE kf_part SET v = v || 'u' WHERE id = 5;
         DELETE FROM kf_part WHERE id = 9;
         UPDATE kf_root SET v = v || 'u' WHERE id IN (2, 7);
         DELETE FROM kf_root WHERE id = 4;
         UPDATE kf_root SET id = 8 WHERE id = 1;",
    )
    .await;
    c.wait_equal("after updates and deletes of FULL rows in partitions", None, &[]).await;
    c.expect_sub(
        "kf_part after one UPDATE and one DELETE",
        "SELECT string_agg(id || v, ',' ORDER BY id, v) FROM kf_part",
        "1v1,2v2,3v3,4v4,5v5u,6v6,7v7,8v8",
    )
    .await;

    // A local change to a non-key column: the remote row is still found by the local key (and
    // takes the publisher's values of every column, as natively).
    c.on_sub("UPDATE kf_pk SET t = 'local' WHERE a = 1").await;
    c.on_pub("UPDATE kf_pk SET f = 10 WHERE a = 1; UPDATE kf_pk SET j = '{\"g\": 2}' WHERE a = 2; DELETE FROM kf_pk WHERE a = 3")
        .await;
    let cond = "SELECT f || '/' || t FROM kf_pk WHERE a = 1";
    let _ = wait_for("kf_pk row 1 updated by its key", WAIT, || async {
        Ok((val(&c.s, cond).await == "10/t1").then_some(()))
    })
    .await;
    c.expect_sub("kf_pk row 1: found by its key despite the local change", cond, "10/t1").await;
    c.on_pub("UPDATE kf_pk SET t = 'p' WHERE a = 1").await;
    c.wait_equal("after FULL updates found by the subscriber's primary key", None, &[]).await;

    c.on_pub(
        "INSERT INTO id_always (v) VALUES ('c');
         INSERT INTO id_always (v) SELECT 'm' || g FROM generate_series(1, 20) g;
         UPDATE id_always SET v = v || '!' WHERE id <= 2;
         UPDATE id_always SET v = v || '?' WHERE id > 2;
         DELETE FROM id_always WHERE id = 3;
         INSERT INTO id_always_col (k, v) VALUES (7, 'v7');
         UPDATE id_always_col SET v = 'u' WHERE k = 1;
         UPDATE id_always_col SET v = v || '!' WHERE k > 1;
         UPDATE id_always_col SET k = 100 WHERE k = 2;",
    )
    .await;
    c.wait_equal("after changes to GENERATED ALWAYS identity columns", None, &[]).await;
    c.expect_same("id_always ids", "SELECT string_agg(id::text, ',' ORDER BY id) FROM id_always").await;
    c.expect_same("id_always_col identities", "SELECT string_agg(k || ':' || n, ',' ORDER BY k) FROM id_always_col")
        .await;

    // The identity value itself changed by the publisher.
    c.on_sub("UPDATE id_plain SET here = 'mine' WHERE k IN (1, 3)").await;
    c.on_pub(
        "UPDATE id_always SET id = DEFAULT WHERE id = 1;
         UPDATE id_always SET id = DEFAULT, v = 'moved' WHERE id = 2;
         UPDATE id_always_col SET n = DEFAULT WHERE k = 3;
         UPDATE id_plain SET n = n + 100 WHERE k <= 2;
         UPDATE id_plain SET n = 30 WHERE k = 3;
         UPDATE id_plain SET n = n, big = 'b' WHERE k = 4;",
    )
    .await;
    c.wait_equal("after UPDATEs that change GENERATED ALWAYS identity values", None, &[]).await;
    c.expect_same("id_always ids changed there", "SELECT string_agg(id || v, ',' ORDER BY id) FROM id_always").await;
    c.expect_same(
        "id_always_col identity changed there",
        "SELECT string_agg(k || ':' || n, ',' ORDER BY k) FROM id_always_col",
    )
    .await;
    c.expect_same(
        "id_plain values and unchanged TOAST values",
        "SELECT string_agg(k || ':' || n || ':' || md5(big), ',' ORDER BY k) FROM id_plain",
    )
    .await;
    c.expect_sub(
        "id_plain's subscriber-only column kept",
        "SELECT string_agg(k || ':' || here, ',' ORDER BY k) FROM id_plain",
        "1:mine,2:here,3:mine,4:here",
    )
    .await;
    c.finish().await;
}

const NO_EQ: &str = "
CREATE TABLE fa (a int, p point);
CREATE TABLE fj (a int, j json);
";

/// REPLICA IDENTITY FULL with a column whose type has no equality operator (point, json), as
/// natively: a NULL there matches NULL; a value there can never be compared, so an UPDATE or
/// DELETE of such a row stops with "could not identify an equality operator" only when a local
/// row matches the other columns and holds a value there too — a row changed here (no such
/// local row) is a missing row, skipped, and apply goes on. A local primary key identifies the
/// row instead.
#[tokio::test(flavor = "current_thread")]
async fn full_identity_with_a_type_without_equality() {
    let mut c = Case::start(
        &format!(
            "{NO_EQ} ALTER TABLE fa REPLICA IDENTITY FULL; ALTER TABLE fj REPLICA IDENTITY FULL;
             INSERT INTO fa VALUES (1, '(1,2)'), (2, NULL); INSERT INTO fj VALUES (1, '{{}}'), (2, NULL);
             CREATE PUBLICATION ne FOR TABLE fa, fj;"
        ),
        NO_EQ,
    )
    .await;
    c.subscribe("ne", &["ne"], false).await;
    c.wait_synced("ne").await;
    c.wait_equal("after the initial copy", None, &[]).await;
    // NULL in the uncomparable column: found.
    c.on_pub("UPDATE fa SET a = 20 WHERE a = 2; DELETE FROM fj WHERE a = 2").await;
    c.wait_equal("after changes of rows with NULL there", None, &[]).await;
    // Rows changed here: no local row matches the other columns, so the changes are missing
    // rows and what follows applies.
    c.on_sub("UPDATE fa SET a = 99 WHERE a = 1; UPDATE fj SET a = 98 WHERE a = 1").await;
    c.on_pub(
        "UPDATE fa SET p = '(5,5)' WHERE a = 1; DELETE FROM fj WHERE a = 1;
         INSERT INTO fa VALUES (3, '(0,0)'); INSERT INTO fj VALUES (3, '[3]');",
    )
    .await;
    let rows = "SELECT string_agg(a || ':' || coalesce(p::text, '-'), ',' ORDER BY a) FROM fa";
    let _ = wait_for("the inserts after the skipped changes", WAIT, || async {
        Ok((val(&c.s, rows).await == "3:(0,0),20:-,99:(1,2)").then_some(()))
    })
    .await;
    c.expect_sub("fa: the drifted row left alone, the later insert applied", rows, "3:(0,0),20:-,99:(1,2)").await;
    c.expect_sub("fj", "SELECT string_agg(a || ':' || j::text, ',' ORDER BY a) FROM fj", "3:[3],98:{}").await;
    // A local row that matches: the value cannot be compared, apply stops as natively.
    c.on_pub("DELETE FROM fa WHERE a = 3").await;
    c.wait_error("ne", &["could not identify an equality operator for type point"]).await;
    // A primary key here identifies the row instead; the drift is repaired by hand.
    c.on_sub(
        "ALTER TABLE fa ADD PRIMARY KEY (a); ALTER TABLE fj ADD PRIMARY KEY (a);
         UPDATE fa SET a = 1, p = '(5,5)' WHERE a = 99; DELETE FROM fj WHERE a = 98;",
    )
    .await;
    c.wait_equal("after the local keys", None, &[]).await;
    c.finish().await;
}

const COMPOSITES: &str = "
CREATE TYPE pair AS (a int, b text);
CREATE TYPE ptag AS (n int, p point);
CREATE TABLE cn (id int, v pair);
CREATE TABLE cp (id int, v ptag);
";

/// REPLICA IDENTITY FULL with a composite column: a NULL and a composite whose fields are all
/// NULL, `(,)`, are different rows (SQL's `IS NULL` is true for both): an UPDATE or DELETE of
/// one changes that one, whichever comes first in the table. A composite type without equality
/// (`ptag` holds a point) with some fields NULL, `(1,)`, is a value that cannot be compared:
/// apply stops as natively, not a missing row skipped.
#[tokio::test(flavor = "current_thread")]
async fn full_identity_tells_a_null_composite_from_one_of_null_fields() {
    let mut c = Case::start(
        &format!(
            "{COMPOSITES} ALTER TABLE cn REPLICA IDENTITY FULL; ALTER TABLE cp REPLICA IDENTITY FULL;
             CREATE PUBLICATION comp FOR TABLE cn, cp;"
        ),
        COMPOSITES,
    )
    .await;
    c.subscribe("comp", &["comp"], false).await;
    c.wait_synced("comp").await;
    // Both orders: the all-NULL-fields row first, then the NULL row first.
    c.on_pub(
        "INSERT INTO cn VALUES (1, '(,)'); INSERT INTO cn VALUES (1, NULL);
         DELETE FROM cn WHERE id = 1 AND v::text IS NULL;
         INSERT INTO cn VALUES (2, '(,)'); INSERT INTO cn VALUES (2, NULL);
         UPDATE cn SET id = 3 WHERE id = 2 AND v::text IS NULL;
         INSERT INTO cn VALUES (4, NULL); INSERT INTO cn VALUES (4, '(,)');
         DELETE FROM cn WHERE id = 4 AND v::text = '(,)';
         INSERT INTO cn VALUES (5, NULL); INSERT INTO cn VALUES (5, '(,)');
         UPDATE cn SET id = 6 WHERE id = 5 AND v::text = '(,)';",
    )
    .await;
    c.wait_equal("after changes of NULL and (,) rows", None, &[]).await;
    c.expect_sub(
        "each change found its own row",
        "SELECT string_agg(id || ':' || coalesce(v::text, 'NULL'), ',' ORDER BY id, v::text) FROM cn",
        "1:(,),2:(,),3:NULL,4:NULL,5:NULL,6:(,)",
    )
    .await;
    // ptag has no equality: a NULL there is found; `(1,)` holds a value that cannot be compared.
    c.on_pub("INSERT INTO cp VALUES (1, '(1,)'), (2, NULL); UPDATE cp SET id = 20 WHERE id = 2").await;
    c.wait_equal("after the change of a row with NULL there", None, &[]).await;
    c.on_pub("UPDATE cp SET id = 10 WHERE id = 1").await;
    c.wait_error("comp", &["could not identify an equality operator for type", "ptag"]).await;
    // A primary key here identifies the row instead.
    c.on_sub("ALTER TABLE cp ADD PRIMARY KEY (id)").await;
    c.wait_equal("after the local key", None, &[]).await;
    c.finish().await;
}

/// pgsub's choice where native stops: a published key the subscriber's table has no unique index
/// for. Native apply refuses the table ("has neither REPLICA IDENTITY index nor PRIMARY KEY");
/// pgsub applies an UPDATE or DELETE to one of the rows with that key, as under REPLICA IDENTITY
/// FULL, never to all of them (README, "Behaviour on every schema").
#[tokio::test(flavor = "current_thread")]
async fn a_published_key_without_a_local_index_changes_one_row() {
    if native() {
        return; // native stops with an error here: not a behaviour to compare
    }
    let mut c = Case::start(
        "CREATE TABLE nk (id int PRIMARY KEY, v text);
         INSERT INTO nk SELECT g, 'v' || g FROM generate_series(1, 10) g;
         CREATE PUBLICATION nk FOR TABLE nk;",
        "CREATE TABLE nk (id int, v text);",
    )
    .await;
    c.subscribe("nk", &["nk"], false).await;
    c.wait_synced("nk").await;
    c.wait_equal("after the initial copy", None, &[]).await;
    c.on_sub("INSERT INTO nk VALUES (2, 'localdup'), (3, 'localdup')").await;
    c.on_pub(
        "UPDATE nk SET v = 'P' WHERE id = 2; DELETE FROM nk WHERE id = 3; UPDATE nk SET v = v || '!' WHERE id > 3",
    )
    .await;
    let done = "SELECT count(*) FILTER (WHERE v LIKE '%!')::text FROM nk";
    let _ = wait_for("the run of updates applied", WAIT, || async { Ok((val(&c.s, done).await == "7").then_some(())) })
        .await;
    c.expect_sub(
        "rows with id 2",
        "SELECT count(*) || '/' || count(*) FILTER (WHERE v = 'P') FROM nk WHERE id = 2",
        "2/1",
    )
    .await;
    c.expect_sub("rows with id 3", "SELECT count(*)::text FROM nk WHERE id = 3", "1").await;
    c.expect_sub("updated rows", done, "7").await;
    c.on_sub("DELETE FROM nk WHERE id = 2 AND v <> 'P'; DELETE FROM nk WHERE id = 3").await;
    c.finish().await;
}

const OUTPUT_TABLE: &str = "CREATE TABLE fmt (id int PRIMARY KEY, d date, ts timestamp, tz timestamptz, tt timetz,
                         iv interval, f8 float8, f4 float4, a8 float8[], rg tstzrange);";

/// The values of `fmt`, each in a form no session setting changes (the day number, the epoch,
/// the float's bits, the interval's fields), so that both nodes can be compared on them.
const OUTPUT_VALUES: &str = "SELECT string_agg(concat_ws('|', id, d - date '2000-01-01',
             extract(epoch FROM ts), extract(epoch FROM tz), extract(epoch FROM tt), extract(timezone FROM tt),
             extract(epoch FROM iv), float8send(f8), float4send(f4), (SELECT string_agg(float8send(x)::text, ';') FROM unnest(a8) x),
             extract(epoch FROM lower(rg)), extract(epoch FROM upper(rg))), ',' ORDER BY id) FROM fmt";

/// Values whose text form depends on the publisher's session settings: a publisher database (or
/// role) with `DateStyle` `SQL, DMY`, `IntervalStyle` `sql_standard`, `extra_float_digits` 0 and
/// a time zone whose abbreviation means something else elsewhere (IST) must still deliver exact
/// values, in the initial copy and in the stream, as native does: its walreceiver pins ISO dates,
/// `postgres` intervals and every float digit on the connection.
#[tokio::test(flavor = "current_thread")]
async fn a_publisher_database_with_other_output_settings_delivers_exact_values() {
    let rows = |from: i32, to: i32| {
        format!(
            "INSERT INTO fmt SELECT g, date '2024-02-03' + g, timestamp '2024-02-03 10:20:30.123456' + g * interval '1 day',
                    timestamptz '2024-02-03 10:00:00+00' + g * interval '37 min', timetz '10:11:12+03',
                    interval '-1 days -02:03:04' * g, 1.0 / (3 * g), 1.0 / (7 * g), ARRAY[1.0 / (3 * g), pi() * g],
                    tstzrange(timestamptz '2024-05-06 07:08:09+00' + g * interval '1 h', NULL)
               FROM generate_series({from}, {to}) g;"
        )
    };
    let mut c = Case::start(
        &format!(
            "ALTER DATABASE postgres SET datestyle = 'SQL, DMY';
             ALTER DATABASE postgres SET intervalstyle = 'sql_standard';
             ALTER DATABASE postgres SET extra_float_digits = 0;
             ALTER DATABASE postgres SET timezone = 'Asia/Kolkata';
             {OUTPUT_TABLE} {}
             CREATE PUBLICATION fmt FOR TABLE fmt;",
            rows(1, 5)
        ),
        OUTPUT_TABLE,
    )
    .await;
    c.subscribe("fmt", &["fmt"], false).await;
    c.wait_synced("fmt").await;
    c.expect_same("values after the initial copy", OUTPUT_VALUES).await;
    c.on_pub(&format!("{} UPDATE fmt SET f8 = f8 / 11, d = d + 9 WHERE id = 1;", rows(6, 10))).await;
    let done = "SELECT count(*)::text FROM fmt";
    let _ = wait_for("the streamed rows", WAIT, || async { Ok((val(&c.s, done).await == "10").then_some(())) }).await;
    c.wait_equal("after streamed inserts and an update", None, &[]).await;
    c.expect_same("values after the stream", OUTPUT_VALUES).await;
    c.finish().await;
}

/// A type without send/receive functions (TAP 014_binary's `myvarchar`) in a subscription with
/// `binary => true`: pgoutput sends its values as text, and they are applied (native does so),
/// in the initial copy and in the stream.
#[tokio::test(flavor = "current_thread")]
async fn binary_subscription_with_a_type_without_binary_io() {
    let ddl = "CREATE TYPE myvarchar;
         CREATE FUNCTION myvarcharin(cstring, oid, integer) RETURNS myvarchar
             LANGUAGE internal IMMUTABLE PARALLEL SAFE STRICT AS 'varcharin';
         CREATE FUNCTION myvarcharout(myvarchar) RETURNS cstring
             LANGUAGE internal IMMUTABLE PARALLEL SAFE STRICT AS 'varcharout';
         CREATE TYPE myvarchar (input = myvarcharin, output = myvarcharout);
         CREATE TYPE e AS ENUM ('x', 'y');
         CREATE TABLE tm (id int PRIMARY KEY, a myvarchar, b e, n numeric);";
    let mut c = Case::start(
        &format!("{ddl} INSERT INTO tm VALUES (1, 'a', 'x', 1.5); CREATE PUBLICATION pm FOR TABLE tm;"),
        ddl,
    )
    .await;
    c.subscribe("sbin", &["pm"], true).await;
    c.wait_synced("sbin").await;
    c.on_pub("INSERT INTO tm VALUES (2, 'b', 'y', 2.5); UPDATE tm SET b = 'y', a = 'a2' WHERE id = 1; DELETE FROM tm WHERE id = 2;")
        .await;
    c.on_pub("INSERT INTO tm VALUES (3, 'c', 'x', 3.5)").await;
    let done = "SELECT string_agg(id || ':' || a::text || ':' || b, ',' ORDER BY id) FROM tm";
    let _ =
        wait_for("the changes applied", WAIT, || async { Ok((val(&c.s, done).await == "1:a2:y,3:c:x").then_some(())) })
            .await;
    c.expect_sub("rows", done, "1:a2:y,3:c:x").await;
    let (errors, last) = c.errors("sbin").await;
    c.expect("errors", &format!("{errors} {last:?}"), "0 None");
    c.finish().await;
}

const REG_DDL: &str = "
CREATE SCHEMA app;
CREATE TABLE app.target (i int);
CREATE TYPE app.mood AS ENUM ('ok');
CREATE FUNCTION app.f(int) RETURNS int LANGUAGE sql AS 'SELECT $1';
CREATE OPERATOR app.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = int4eq);
CREATE ROLE reg_role;
CREATE TEXT SEARCH CONFIGURATION app.cfg (COPY = simple);
CREATE COLLATION app.coll (provider = libc, locale = 'C');
CREATE TABLE regs (id int PRIMARY KEY, c regclass, t regtype, p regproc, pp regprocedure, o regoper,
                   oo regoperator, r regrole, n regnamespace, cfg regconfig, co regcollation, ca regclass[]);
CREATE TABLE plain (id int PRIMARY KEY, v text);
";

/// `(id, values of every OID alias column)` naming the objects of [`REG_DDL`] and public ones.
fn reg_row(id: i32) -> String {
    format!(
        "({id}, 'app.target', 'app.mood', 'app.f', 'app.f(integer)', 'app.===', 'app.===(integer,integer)', \
         'reg_role', 'app', 'app.cfg', 'app.coll', '{{app.target,regs,plain}}')"
    )
}

/// OID alias columns (regclass, regtype, regproc, regprocedure, regoper, regoperator, regrole,
/// regnamespace, regconfig, regcollation, regclass[]) naming objects that have other OIDs on the
/// subscriber, some in a schema off the search path and some in public: they arrive naming the
/// same objects — in the initial copy and the stream, with the format chosen automatically (text
/// for such a table, whose binary form would be the publisher's OIDs) and in text, whose values
/// the publisher prints schema-qualified (an empty search_path, as natively) for the subscriber,
/// which applies with an empty search_path, to read back.
#[tokio::test(flavor = "current_thread")]
async fn oid_alias_values_arrive_naming_the_same_objects() {
    // The subscriber's objects get other OIDs than the publisher's.
    let shift = "CREATE TABLE shift_a (i int); CREATE TABLE shift_b (i int); CREATE TYPE shift_e AS ENUM ('x');";
    let mut c = Case::start(
        &format!(
            "{REG_DDL} INSERT INTO regs VALUES {}; INSERT INTO plain VALUES (1, 'a');
             CREATE PUBLICATION pr FOR TABLE regs, plain;",
            reg_row(1)
        ),
        &format!("{shift} {REG_DDL}"),
    )
    .await;
    let oid = "SELECT 'app.target'::regclass::oid::text";
    let (po, so) = (val(&c.p, oid).await, val(&c.s, oid).await);
    c.expect("the table's OID differs between the nodes", &(po != so).to_string(), "true");
    c.subscribe_default("sauto", &["pr"]).await;
    c.wait_synced("sauto").await;
    c.on_pub(&format!(
        "INSERT INTO regs VALUES {}, {}; UPDATE regs SET c = 'plain', ca = '{{plain}}' WHERE id = 1;
         DELETE FROM regs WHERE id = 3; INSERT INTO plain VALUES (2, 'b');",
        reg_row(2),
        reg_row(3)
    ))
    .await;
    c.wait_equal("automatic format", None, &[]).await;
    let names =
        "SELECT string_agg(concat_ws(' ', id, c, t, p, pp, o, oo, r, n, cfg, co, ca), '; ' ORDER BY id) FROM regs";
    c.expect_same("the objects named", names).await;
    c.expect_sub(
        "row 2 as the subscriber reads it",
        "SELECT concat_ws(' ', c, t, p, pp, o, oo, r, n, cfg, co, ca) FROM regs WHERE id = 2",
        "app.target app.mood app.f app.f(integer) app.=== app.===(integer,integer) reg_role app app.cfg app.coll \
         {app.target,regs,plain}",
    )
    .await;
    c.drop_subscription("sauto").await;

    // Text, explicitly: public objects too come schema-qualified from the publisher.
    c.on_sub("TRUNCATE regs, plain").await;
    c.subscribe("stext", &["pr"], false).await;
    c.wait_synced("stext").await;
    c.on_pub(&format!("INSERT INTO regs VALUES {}; UPDATE regs SET t = 'plain' WHERE id = 2;", reg_row(4))).await;
    c.wait_equal("text format", None, &[]).await;
    c.expect_same("the objects named", names).await;
    c.finish().await;
}

/// A subscriber database in LATIN1 fed by a UTF8 publisher (TAP 005_encoding): the values are
/// converted in the stream as in the initial copy — stored as LATIN1, found again by UPDATE and
/// DELETE through their key — for an automatically chosen and an explicitly binary subscription;
/// a character LATIN1 cannot hold stops apply with the conversion error, as natively.
#[tokio::test(flavor = "current_thread")]
async fn a_latin1_subscriber_database_receives_converted_text() {
    if native() {
        return; // one database per case here; TAP 005 covers native
    }
    let nodes = TwoNodes::start().expect("start");
    let p = nodes.publisher.client("postgres").await.unwrap();
    let admin = nodes.subscriber.client("postgres").await.unwrap();
    admin.batch_execute("CREATE DATABASE lat TEMPLATE template0 ENCODING 'LATIN1' LOCALE 'C'").await.unwrap();
    let s = nodes.subscriber.client("lat").await.unwrap();
    let ddl = "CREATE TABLE tk (k text PRIMARY KEY, v int, j jsonb, a text[]);
               CREATE TABLE tb (k text PRIMARY KEY, v int, j jsonb, a text[]);";
    s.batch_execute(&format!("CREATE EXTENSION pgsub; {ddl}")).await.unwrap();
    p.batch_execute(&format!(
        "{ddl}
         INSERT INTO tk VALUES ('café', 1, '{{\"é\": \"à\"}}', ARRAY['ü', 'ß']);
         INSERT INTO tb VALUES ('café', 1, '{{\"é\": \"à\"}}', ARRAY['ü', 'ß']);
         CREATE PUBLICATION pk FOR TABLE tk; CREATE PUBLICATION pb FOR TABLE tb;"
    ))
    .await
    .unwrap();
    let ci = nodes.pub_conninfo();
    s.execute("SELECT pgsub.create_subscription('sk', $1, ARRAY['pk'])", &[&ci]).await.unwrap();
    s.execute("SELECT pgsub.create_subscription('sb', $1, ARRAY['pb'], binary => true)", &[&ci]).await.unwrap();
    wait_for_subscription_sync(&s, "sk", WAIT).await;
    wait_for_subscription_sync(&s, "sb", WAIT).await;
    for t in ["tk", "tb"] {
        p.batch_execute(&format!(
            "INSERT INTO {t} VALUES ('rôle', 3, '{{\"ô\": 1}}', ARRAY['é']), ('Motörhead', 4, NULL, NULL);
             UPDATE {t} SET v = 11 WHERE k = 'café';
             UPDATE {t} SET v = 30 WHERE k = 'rôle';
             DELETE FROM {t} WHERE k = 'Motörhead';"
        ))
        .await
        .unwrap();
    }
    for t in ["tk", "tb"] {
        let sql =
            format!("SELECT string_agg(encode(convert_to(k, 'LATIN1'), 'hex') || '=' || v, ',' ORDER BY k) FROM {t}");
        wait_value(&s, &sql, "636166e9=11,72f46c65=30", WAIT).await;
        let jsonb = format!("SELECT j->>'é' || a[1] FROM {t} WHERE k = 'café'");
        assert_eq!(one::<String>(&s, &jsonb).await, "àü", "{t}: jsonb and array values converted");
    }
    for sub in ["sk", "sb"] {
        let row = s
            .query_one("SELECT conflicts, binary_in_use FROM pgsub.stat_subscription WHERE subname = $1", &[&sub])
            .await
            .unwrap();
        let (conflicts, binary): (i64, Option<bool>) = (row.get(0), row.get(1));
        assert_eq!(conflicts, 0, "{sub}: every UPDATE and DELETE found its row");
        assert_eq!(binary, Some(false), "{sub}: text into a LATIN1 database");
    }
    assert_replicated_equal(&p, &s).await;

    // A character LATIN1 cannot hold: apply stops with the conversion error, nothing is stored.
    p.batch_execute("INSERT INTO tk VALUES ('€uro', 5, NULL, NULL)").await.unwrap();
    let err = wait_for_subscription_error(&s, "sk", &["has no equivalent in encoding"], WAIT).await;
    assert!(err.contains("LATIN1"), "{err}");
    assert_eq!(one::<i64>(&s, "SELECT count(*) FROM tk WHERE v = 5").await, 0);
    // Skipped; the row's DELETE on the publisher cannot be read here either and is skipped too:
    // then the tables converge.
    skip_failed(&s, "sk", &err).await;
    p.batch_execute("DELETE FROM tk WHERE v = 5").await.unwrap();
    let err = wait_for_subscription_error(&s, "sk", &["has no equivalent in encoding", "\"DELETE\""], WAIT).await;
    skip_failed(&s, "sk", &err).await;
    p.batch_execute("INSERT INTO tk VALUES ('fin', 6, NULL, NULL)").await.unwrap();
    wait_value(&s, "SELECT count(*) FROM tk WHERE k = 'fin'", "1", WAIT).await;
    assert_replicated_equal(&p, &s).await;
}

/// `skip_transaction` of subscription `sub` at the finish LSN its error `err` names.
async fn skip_failed(s: &Client, sub: &str, err: &str) {
    let lsn = err.split("finished at ").nth(1).map(|l| l.trim().to_string()).expect("the failed transaction's LSN");
    s.execute("SELECT pgsub.skip_transaction($1, $2::text::pg_lsn)", &[&sub, &lsn])
        .await
        .unwrap_or_else(|e| panic!("skip_transaction {sub} {lsn}: {}", pg_err(&e)));
}

/// A subscriber database whose defaults make its users' transactions read-only and serializable
/// (`ALTER DATABASE … SET default_transaction_read_only = on`, a common guard on a replica):
/// native apply writes below those checks and replicates as usual — the initial copy, the
/// stream and TRUNCATE. So does pgsub, whose own transactions are read-write and read committed
/// (a serializable snapshot would hide rows committed locally meanwhile from its lookups).
#[tokio::test(flavor = "current_thread")]
async fn a_read_only_serializable_subscriber_database_still_receives_changes() {
    let table = "CREATE TABLE ro (id int PRIMARY KEY, v text);";
    let mut c = Case::start(
        &format!(
            "{table} INSERT INTO ro SELECT g, 'v' || g FROM generate_series(1, 100) g;
             CREATE PUBLICATION ro FOR TABLE ro;"
        ),
        &format!(
            "{table} CREATE TABLE seen (iso text, ro text);
             ALTER DATABASE postgres SET default_transaction_read_only = on;
             ALTER DATABASE postgres SET default_transaction_isolation = 'serializable';"
        ),
    )
    .await;
    if !native() {
        // What pgsub's apply and copy transactions are. (Not with native: its transactions take
        // the database's defaults — only its own writes go below the check — so the trigger's
        // INSERT would be refused there.)
        c.on_sub(
            "CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               INSERT INTO public.seen VALUES (current_setting('transaction_isolation'),
                                               current_setting('transaction_read_only'));
               RETURN NEW;
             END $$;
             CREATE TRIGGER note BEFORE INSERT OR UPDATE ON ro FOR EACH ROW EXECUTE FUNCTION note();
             ALTER TABLE ro ENABLE ALWAYS TRIGGER note;",
        )
        .await;
    }
    // A new session of the database is read-only and serializable (the case's own session was
    // opened before).
    let fresh = c.nodes.subscriber.client("postgres").await.expect("subscriber");
    let defaults = val(
        &fresh,
        "SELECT current_setting('transaction_read_only') || '/' || current_setting('transaction_isolation')",
    )
    .await;
    c.expect("a new session's defaults", &defaults, "on/serializable");
    let refused = fresh.batch_execute("INSERT INTO ro VALUES (0, 'local')").await.map_err(|e| pg_err(&e));
    c.expect(
        "a user's write",
        &format!("{:?}", refused.err().map(|e| e.contains("read-only transaction"))),
        "Some(true)",
    );

    c.subscribe_default("ro", &["ro"]).await;
    c.wait_synced("ro").await;
    c.wait_equal("after the initial copy", None, &[]).await;
    c.on_pub(
        "INSERT INTO ro SELECT g, 'w' || g FROM generate_series(101, 200) g;
         UPDATE ro SET v = v || '!' WHERE id % 3 = 0;
         DELETE FROM ro WHERE id % 7 = 0;",
    )
    .await;
    c.wait_equal("after inserts, updates and deletes", None, &[]).await;
    c.on_pub("TRUNCATE ro; INSERT INTO ro VALUES (1, 'after truncate');").await;
    c.wait_equal("after TRUNCATE", None, &[]).await;
    if !native() {
        c.expect_sub(
            "isolation and read-only state of the apply and copy transactions",
            "SELECT string_agg(DISTINCT iso || '/' || ro, ',') FROM seen",
            "read committed/off",
        )
        .await;
    }
    c.finish().await;
}

/// Runs of UPDATEs that set a column a unique or exclusion index covers, valid in the publisher's
/// order (a value given up by one row before another takes it, a swap through a free value):
/// applied without an error, as natively. pgsub applied such a run with one statement, whose row
/// order is the plan's, so a row could take a value before another had given it up — a
/// duplicate-key or exclusion error the publisher never had, retried (or, under
/// `disable_on_error`, the subscription disabled).
#[tokio::test(flavor = "current_thread")]
async fn runs_of_updates_that_move_unique_values_apply_in_the_publishers_order() {
    let ddl = "CREATE TABLE t_sw (id int PRIMARY KEY, u int UNIQUE, v text);
               CREATE TABLE t_ex (id int PRIMARY KEY, r int4range, note text);";
    let mut c = Case::start(
        &format!(
            "{ddl}
             INSERT INTO t_sw SELECT g, g, 'v' FROM generate_series(1, 1000) g;
             INSERT INTO t_ex SELECT g, int4range(g * 10, g * 10 + 5), 'n' FROM generate_series(1, 20) g;
             CREATE PUBLICATION moves FOR TABLE t_sw, t_ex;"
        ),
        "CREATE TABLE t_sw (id int PRIMARY KEY, u int UNIQUE, v text);
         CREATE TABLE t_ex (id int PRIMARY KEY, r int4range, note text, EXCLUDE USING gist (r WITH &&));",
    )
    .await;
    c.subscribe("moves", &["moves"], false).await;
    c.wait_synced("moves").await;
    c.on_sub("ANALYZE t_sw; ANALYZE t_ex").await;
    for k in 0..10 {
        let (a, b) = (20 + k, 800 + k);
        c.on_pub(&format!(
            "BEGIN;
             UPDATE t_sw SET v = 'f1' WHERE id = 1;
             UPDATE t_sw SET v = 'f2' WHERE id = 2;
             UPDATE t_sw SET u = -1 WHERE id = {b};
             UPDATE t_sw SET u = {b} WHERE id = {a};
             UPDATE t_sw SET u = {a} WHERE id = {b};
             COMMIT;"
        ))
        .await;
    }
    c.on_pub(
        "BEGIN;
         UPDATE t_ex SET note = 'a' WHERE id = 1;
         UPDATE t_ex SET note = 'b' WHERE id = 2;
         UPDATE t_ex SET r = int4range(1000, 1005) WHERE id = 15;
         UPDATE t_ex SET r = int4range(150, 155) WHERE id = 3;
         COMMIT;",
    )
    .await;
    c.wait_equal("after runs of updates moving unique and exclusive values", None, &[]).await;
    let (errors, last) = c.errors("moves").await;
    assert_eq!(errors, 0, "an error the publisher's order never had: {last:?}");
    c.finish().await;
}
