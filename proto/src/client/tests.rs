//! Unit tests of the walsender client without PostgreSQL: option rendering, quoting, version
//! parsing, and the message flow against a scripted fake server on a Unix socket.

use super::error::parse_error_fields;
use super::quote::repl_literal;
use super::*;
use crate::conninfo::{self, Config};
use crate::frame::ReplicationFrame;
use crate::lsn::Lsn;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Pure functions

#[test]
fn quoting() {
    assert_eq!(quote_ident("a"), "\"a\"");
    assert_eq!(quote_ident("b\"c"), "\"b\"\"c\"");
    assert_eq!(quote_literal("it's"), "'it''s'");
    // SQL: backslashes make an escape string, correct whatever standard_conforming_strings is.
    assert_eq!(quote_literal(r"a\b"), r" E'a\\b'");
    // The replication command grammar has no E'' form: backslashes stay literal there.
    assert_eq!(repl_literal("it's"), "'it''s'");
    assert_eq!(repl_literal(r"a\b"), r"'a\b'");
}

#[test]
fn server_versions() {
    assert_eq!(parse_server_version("15.4 (Debian 15.4-1.pgdg120+1)"), 150004);
    assert_eq!(parse_server_version("16.0"), 160000);
    assert_eq!(parse_server_version("16beta1"), 160000);
    assert_eq!(parse_server_version("17devel"), 170000);
    assert_eq!(parse_server_version("9.6.24"), 90624);
    assert_eq!(parse_server_version("10.5"), 100005);
    assert_eq!(parse_server_version(""), 0);
    assert_eq!(parse_server_version("garbage"), 0);
    assert_eq!(version_string(150004), "15.4");
    assert_eq!(version_string(180001), "18.1");
    assert_eq!(version_string(100023), "10.23");
    assert_eq!(version_string(90624), "9.6.24");
    for v in ["10.23", "14.0", "18.4"] {
        assert_eq!(version_string(parse_server_version(v)), v);
    }
}

#[test]
fn pgoutput_options() {
    let o = PgOutputOptions::for_server(150004, vec!["a".into(), "b\"c".into()]);
    assert_eq!(o.proto_version, 3);
    assert_eq!(o.to_sql_options(), r#"(proto_version '3', publication_names '"a","b""c"')"#);
    assert_eq!(PgOutputOptions::for_server(160001, vec![]).proto_version, 4);
    assert_eq!(PgOutputOptions::for_server(140010, vec![]).proto_version, 2);
    assert_eq!(PgOutputOptions::for_server(130000, vec![]).proto_version, 1);

    let mut o = PgOutputOptions::for_server(160000, vec!["it's".into()]);
    o.binary = true;
    o.messages = true;
    o.streaming = Streaming::Parallel;
    o.two_phase = true;
    o.origin = Some("none".into());
    assert_eq!(
        o.to_sql_options(),
        r#"(proto_version '4', publication_names '"it''s"', binary 'true', messages 'true', streaming 'parallel', two_phase 'true', origin 'none')"#
    );
    // Version gating: PG15 (proto 3) gets no origin and parallel degrades to on.
    o.proto_version = 3;
    assert_eq!(
        o.to_sql_options(),
        r#"(proto_version '3', publication_names '"it''s"', binary 'true', messages 'true', streaming 'on', two_phase 'true')"#
    );
    // PG13 (proto 1): only the mandatory options.
    o.proto_version = 1;
    assert_eq!(o.to_sql_options(), r#"(proto_version '1', publication_names '"it''s"')"#);
}

#[test]
fn binary_in_use_only_when_asked_and_carried() {
    for (server, carried) in [(130000, false), (140000, true), (180000, true)] {
        let mut o = PgOutputOptions::for_server(server, vec!["p".into()]);
        assert!(!o.binary_in_use(), "{server}: not asked");
        o.binary = true;
        assert_eq!(o.binary_in_use(), carried, "{server}: asked");
        assert_eq!(o.to_sql_options().contains("binary 'true'"), carried, "{server}: sent");
    }
}

#[test]
fn error_display_and_sqlstate() {
    let e = Error::Server(ServerError {
        severity: "FATAL".into(),
        code: "28P01".into(),
        message: "password authentication failed for user \"u\"".into(),
        detail: Some("d".into()),
        hint: None,
    });
    assert_eq!(e.sqlstate(), Some("28P01"));
    assert_eq!(e.to_string(), "FATAL: password authentication failed for user \"u\" (SQLSTATE 28P01)\nDETAIL: d");
    assert_eq!(Error::Closed.sqlstate(), None);
}

#[test]
fn error_fields_are_lossy_and_safe() {
    let mut body = Vec::new();
    body.extend_from_slice(b"SERREUR\0VERROR\0C42P01\0Mbad \xff name\0Hhint\0\0");
    let e = parse_error_fields(&body);
    assert_eq!(e.severity, "ERROR");
    assert_eq!(e.code, "42P01");
    assert_eq!(e.message, "bad \u{fffd} name");
    assert_eq!(e.hint.as_deref(), Some("hint"));
    // Truncated / garbage input never panics.
    for cut in 0..body.len() {
        let _ = parse_error_fields(&body[..cut]);
    }
    let _ = parse_error_fields(b"M");
}

#[test]
fn poll_wait_times_out() {
    let (a, _b) = UnixStream::pair().unwrap();
    let t0 = Instant::now();
    let r = PollWait.wait(a.as_raw_fd(), Interest::Read, Some(Instant::now() + Duration::from_millis(50)));
    assert!(matches!(r, Err(Error::Timeout(_))));
    assert!(t0.elapsed() >= Duration::from_millis(50));
    // Writable immediately.
    PollWait.wait(a.as_raw_fd(), Interest::Write, None).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Fake server

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn auth(code: i32, extra: &[u8]) -> Vec<u8> {
    let mut b = code.to_be_bytes().to_vec();
    b.extend_from_slice(extra);
    msg(b'R', &b)
}

fn param(k: &str, v: &str) -> Vec<u8> {
    let mut b = cstr(k);
    b.extend(cstr(v));
    msg(b'S', &b)
}

fn error(sev: &str, code: &str, m: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (t, v) in [(b'S', sev), (b'V', sev), (b'C', code), (b'M', m)] {
        b.push(t);
        b.extend(cstr(v));
    }
    b.push(0);
    msg(b'E', &b)
}

fn notice(m: &str) -> Vec<u8> {
    let mut e = error("NOTICE", "00000", m);
    e[0] = b'N';
    e
}

fn rfq() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn row_description(cols: &[&str]) -> Vec<u8> {
    let mut b = (cols.len() as i16).to_be_bytes().to_vec();
    for c in cols {
        b.extend(cstr(c));
        b.extend_from_slice(&0i32.to_be_bytes()); // table oid
        b.extend_from_slice(&0i16.to_be_bytes()); // column
        b.extend_from_slice(&25i32.to_be_bytes()); // type oid
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
    }
    msg(b'T', &b)
}

fn data_row(vals: &[Option<&str>]) -> Vec<u8> {
    let mut b = (vals.len() as i16).to_be_bytes().to_vec();
    for v in vals {
        match v {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(s) => {
                b.extend_from_slice(&(s.len() as i32).to_be_bytes());
                b.extend_from_slice(s.as_bytes());
            }
        }
    }
    msg(b'D', &b)
}

fn command_complete(tag: &str) -> Vec<u8> {
    msg(b'C', &cstr(tag))
}

fn xlogdata(start: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![b'w'];
    b.extend_from_slice(&start.to_be_bytes());
    b.extend_from_slice(&(start + 100).to_be_bytes());
    b.extend_from_slice(&42i64.to_be_bytes());
    b.extend_from_slice(payload);
    msg(b'd', &b)
}

fn keepalive(end: u64, reply: bool) -> Vec<u8> {
    let mut b = vec![b'k'];
    b.extend_from_slice(&end.to_be_bytes());
    b.extend_from_slice(&7i64.to_be_bytes());
    b.push(reply as u8);
    msg(b'd', &b)
}

/// Reads the length-prefixed startup packet; returns its key/value pairs.
fn read_startup(s: &mut UnixStream) -> HashMap<String, String> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let len = i32::from_be_bytes(len) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).unwrap();
    assert_eq!(&body[..4], &196608i32.to_be_bytes());
    let mut out = HashMap::new();
    let parts: Vec<&[u8]> = body[4..].split(|&b| b == 0).collect();
    let mut i = 0;
    while i + 1 < parts.len() && !parts[i].is_empty() {
        out.insert(String::from_utf8(parts[i].to_vec()).unwrap(), String::from_utf8(parts[i + 1].to_vec()).unwrap());
        i += 2;
    }
    out
}

fn read_msg(s: &mut UnixStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 5];
    s.read_exact(&mut h).unwrap();
    let len = i32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).unwrap();
    (h[0], body)
}

struct Fake {
    dir: PathBuf,
    port: u16,
    listener: UnixListener,
}

impl Fake {
    fn new(tag: &str) -> Fake {
        let dir = std::env::temp_dir().join(format!("pgsub-fake-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = 5999;
        let listener = UnixListener::bind(dir.join(format!(".s.PGSQL.{port}"))).unwrap();
        Fake { dir, port, listener }
    }

    fn config(&self, extra: &str) -> Config {
        conninfo::parse_with_env(
            &format!("host='{}' port={} user=u dbname=d {extra}", self.dir.display(), self.port),
            &|_| None,
        )
        .unwrap()
    }

    fn serve(self, f: impl FnOnce(UnixStream) + Send + 'static) -> (thread::JoinHandle<()>, PathBuf, Fake2) {
        let dir = self.dir.clone();
        let Fake { listener, port, .. } = self;
        let h = thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            f(s);
        });
        (h, dir, Fake2 { port })
    }
}

struct Fake2 {
    #[allow(dead_code)]
    port: u16,
}

fn startup_ok(s: &mut UnixStream) {
    startup_ok_version(s, "15.4 (Debian 15.4-1.pgdg120+1)")
}

fn startup_ok_version(s: &mut UnixStream, version: &str) {
    s.write_all(&auth(0, &[])).unwrap();
    let mut out = Vec::new();
    out.extend(param("server_version", version));
    out.extend(param("server_encoding", "UTF8"));
    let mut kd = 1234i32.to_be_bytes().to_vec();
    kd.extend_from_slice(&99i32.to_be_bytes());
    out.extend(msg(b'K', &kd));
    out.extend(notice("hello"));
    out.extend(rfq());
    s.write_all(&out).unwrap();
}

#[test]
fn fake_server_full_flow() {
    let fake = Fake::new("flow");
    let cfg = fake.config("password=secret application_name=app");
    let (h, dir, _) = fake.serve(|mut s| {
        let p = read_startup(&mut s);
        assert_eq!(p.get("user").map(String::as_str), Some("u"));
        assert_eq!(p.get("database").map(String::as_str), Some("d"));
        assert_eq!(p.get("replication").map(String::as_str), Some("database"));
        assert_eq!(p.get("application_name").map(String::as_str), Some("app"));
        // MD5 authentication.
        s.write_all(&auth(5, &[1, 2, 3, 4])).unwrap();
        let (t, body) = read_msg(&mut s);
        assert_eq!(t, b'p');
        let expect = postgres_protocol::authentication::md5_hash(b"u", b"secret", [1, 2, 3, 4]);
        assert_eq!(body, cstr(&expect));
        startup_ok(&mut s);

        // A query with two result sets and a NULL.
        let (t, body) = read_msg(&mut s);
        assert_eq!((t, body), (b'Q', cstr("SELECT 1; SELECT 2")));
        let mut out = Vec::new();
        out.extend(row_description(&["a", "b"]));
        out.extend(data_row(&[Some("1"), None]));
        out.extend(command_complete("SELECT 1"));
        out.extend(row_description(&["c"]));
        out.extend(data_row(&[Some("x")]));
        out.extend(command_complete("SELECT 1"));
        out.extend(rfq());
        s.write_all(&out).unwrap();

        // An error; the connection stays usable.
        let (t, _) = read_msg(&mut s);
        assert_eq!(t, b'Q');
        let mut out = error("ERROR", "42P01", "relation \"nope\" does not exist");
        out.extend(rfq());
        s.write_all(&out).unwrap();

        // IDENTIFY_SYSTEM
        let (t, body) = read_msg(&mut s);
        assert_eq!((t, body), (b'Q', cstr("IDENTIFY_SYSTEM")));
        let mut out = row_description(&["systemid", "timeline", "xlogpos", "dbname"]);
        out.extend(data_row(&[Some("7300000000000000001"), Some("1"), Some("0/16B3748"), Some("d")]));
        out.extend(command_complete("IDENTIFY_SYSTEM"));
        out.extend(rfq());
        s.write_all(&out).unwrap();

        // CREATE_REPLICATION_SLOT, PG15 syntax.
        let (t, body) = read_msg(&mut s);
        assert_eq!(t, b'Q');
        assert_eq!(
            body,
            cstr("CREATE_REPLICATION_SLOT \"s1\" TEMPORARY LOGICAL pgoutput (SNAPSHOT 'nothing', TWO_PHASE)")
        );
        let mut out = row_description(&["slot_name", "consistent_point", "snapshot_name", "output_plugin"]);
        out.extend(data_row(&[Some("s1"), Some("0/16B3780"), None, Some("pgoutput")]));
        out.extend(command_complete("CREATE_REPLICATION_SLOT"));
        out.extend(rfq());
        s.write_all(&out).unwrap();

        // COPY TO STDOUT, streamed.
        let (t, _) = read_msg(&mut s);
        assert_eq!(t, b'Q');
        let mut out = msg(b'H', &[0, 0, 1, 0, 0]);
        for chunk in ["1\ta\n", "2\tb\n", "3\tc\n"] {
            out.extend(msg(b'd', chunk.as_bytes()));
        }
        out.extend(msg(b'c', &[]));
        out.extend(command_complete("COPY 3"));
        out.extend(rfq());
        s.write_all(&out).unwrap();

        // START_REPLICATION, frames delivered in awkward fragments.
        let (t, body) = read_msg(&mut s);
        assert_eq!(t, b'Q');
        let sql = String::from_utf8(body).unwrap();
        assert!(
            sql.starts_with(
                "START_REPLICATION SLOT \"s1\" LOGICAL 0/16B3780 (proto_version '3', publication_names '\"pub\"')"
            ),
            "{sql}"
        );
        s.write_all(&msg(b'W', &[0, 0, 0])).unwrap();
        let mut stream = Vec::new();
        stream.extend(xlogdata(0x16B3780, b"BEGIN-ish"));
        stream.extend(keepalive(0x16B3800, true));
        stream.extend(notice("in-stream notice"));
        stream.extend(xlogdata(0x16B3790, &vec![b'x'; 100_000]));
        for piece in stream.chunks(7_000) {
            s.write_all(piece).unwrap();
            thread::sleep(Duration::from_millis(2));
        }
        // Standby status from the client.
        let (t, body) = read_msg(&mut s);
        assert_eq!(t, b'd');
        assert_eq!(body.len(), 34);
        assert_eq!(body[0], b'r');
        assert_eq!(&body[1..9], &0x16B3800u64.to_be_bytes());
        assert_eq!(body[33], 0);
        // The client ends the stream.
        let (t, _) = read_msg(&mut s);
        assert_eq!(t, b'c');
        let mut out = xlogdata(0x16B3900, b"late frame, discarded");
        out.extend(msg(b'c', &[]));
        out.extend(command_complete("COPY 0"));
        out.extend(command_complete("START_REPLICATION"));
        out.extend(rfq());
        s.write_all(&out).unwrap();
        let (t, _) = read_msg(&mut s);
        assert_eq!(t, b'X');
    });

    let mut c = Client::connect(&cfg, true, Box::new(PollWait)).unwrap();
    assert_eq!(c.server_version_num(), 150004);
    assert_eq!(c.parameter("server_encoding"), Some("UTF8"));
    assert_eq!(c.backend_pid(), 1234);
    assert!(!c.uses_tls());
    let n = c.notices();
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].message, "hello");

    let rows = c.simple_query("SELECT 1; SELECT 2").unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].columns, vec!["a", "b"]);
    assert_eq!(rows[0].values, vec![Some("1".to_string()), None]);
    assert_eq!(rows[1].get("c"), Some("x"));

    // Sent without waiting: another command is refused (nothing is sent) until the answer is
    // read, which is what simple_query would have returned; the connection stays usable.
    assert!(!c.query_in_flight());
    c.start_query("SELECT * FROM nope").unwrap();
    assert!(c.query_in_flight());
    let refused = c.simple_query("SELECT 3").unwrap_err();
    assert!(refused.to_string().contains("finish_query"), "{refused}");
    let e = c.finish_query().unwrap_err();
    assert_eq!(e.sqlstate(), Some("42P01"));
    assert!(!c.query_in_flight());
    assert!(!c.is_broken(), "a server's error leaves the connection usable");
    assert!(c.finish_query().is_err(), "nothing pending any more");

    let sys = c.identify_system().unwrap();
    assert_eq!(sys.systemid, "7300000000000000001");
    assert_eq!(sys.timeline, 1);
    assert_eq!(sys.xlogpos, Lsn(0x16B3748));
    assert_eq!(sys.dbname.as_deref(), Some("d"));

    // FAILOVER needs 17 (this server is 15): refused before anything is sent.
    let failover = SlotOptions { two_phase: false, failover: true };
    assert!(c.create_logical_slot("s1", true, SnapshotAction::NoExport, failover).is_err());
    assert!(c.alter_slot_failover("s1", true).is_err());
    assert!(c.alter_slot_two_phase("s1", false).is_err(), "TWO_PHASE of an existing slot needs 18");
    let two_phase = SlotOptions { two_phase: true, failover: false };
    let slot = c.create_logical_slot("s1", true, SnapshotAction::NoExport, two_phase).unwrap();
    assert_eq!(slot.slot_name, "s1");
    assert_eq!(slot.consistent_point, Lsn(0x16B3780));
    assert_eq!(slot.snapshot_name, None);

    let mut got = Vec::new();
    let rows = c
        .copy_out("COPY t TO STDOUT", &mut |d: &[u8]| {
            got.push(d.to_vec());
            Ok(())
        })
        .unwrap();
    assert_eq!(rows, 3);
    assert_eq!(got.len(), 3);
    assert_eq!(got.concat(), b"1\ta\n2\tb\n3\tc\n");

    let opts = PgOutputOptions::for_server(c.server_version_num(), vec!["pub".into()]);
    c.start_replication("s1", slot.consistent_point, &opts).unwrap();
    assert!(c.simple_query("SELECT 1").is_err()); // refused while streaming, not fatal

    let mut frames = Vec::new();
    let mut nones = 0;
    while frames.len() < 3 {
        match c.recv_frame().unwrap() {
            Some(f) => frames.push(f),
            None => {
                nones += 1;
                PollWait.wait(c.raw_fd(), Interest::Read, Some(Instant::now() + Duration::from_secs(5))).unwrap();
            }
        }
    }
    assert!(nones > 0, "fragments should have produced would-block returns");
    match &frames[0] {
        ReplicationFrame::XLogData { wal_start, data, send_time, .. } => {
            assert_eq!(*wal_start, Lsn(0x16B3780));
            assert_eq!(&data[..], b"BEGIN-ish");
            assert_eq!(*send_time, 42);
        }
        f => panic!("unexpected {f:?}"),
    }
    match &frames[1] {
        ReplicationFrame::Keepalive { wal_end, reply_requested, .. } => {
            assert_eq!(*wal_end, Lsn(0x16B3800));
            assert!(*reply_requested);
        }
        f => panic!("unexpected {f:?}"),
    }
    match &frames[2] {
        ReplicationFrame::XLogData { data, .. } => assert_eq!(data.len(), 100_000),
        f => panic!("unexpected {f:?}"),
    }
    assert_eq!(c.notices()[0].message, "in-stream notice");
    c.send_status(Lsn(0x16B3800), Lsn(0x16B3780), Lsn(0x16B3780), false).unwrap();
    c.end_copy().unwrap();
    // Usable again after the stream.
    assert!(matches!(c.recv_frame(), Err(Error::Protocol(_))));
    c.close();
    h.join().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fake_server_wrong_password_is_server_error() {
    let fake = Fake::new("badpw");
    let cfg = fake.config("password=wrong");
    let (h, dir, _) = fake.serve(|mut s| {
        read_startup(&mut s);
        s.write_all(&auth(3, &[])).unwrap(); // cleartext
        let (t, body) = read_msg(&mut s);
        assert_eq!((t, body), (b'p', cstr("wrong")));
        s.write_all(&error("FATAL", "28P01", "password authentication failed for user \"u\"")).unwrap();
    });
    let e = Client::connect(&cfg, false, Box::new(PollWait)).unwrap_err();
    assert_eq!(e.sqlstate(), Some("28P01"), "{e}");
    h.join().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fake_server_password_missing() {
    let fake = Fake::new("nopw");
    let cfg = fake.config("");
    let (h, dir, _) = fake.serve(|mut s| {
        read_startup(&mut s);
        s.write_all(&auth(5, &[0, 0, 0, 0])).unwrap();
        let mut b = [0u8; 1];
        let _ = s.read(&mut b); // client hangs up
    });
    let e = Client::connect(&cfg, false, Box::new(PollWait)).unwrap_err();
    assert!(matches!(e, Error::Auth(_)), "{e}");
    h.join().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fake_server_connect_timeout() {
    let fake = Fake::new("timeout");
    let mut cfg = fake.config("");
    cfg.connect_timeout = Some(Duration::from_millis(200));
    let (h, dir, _) = fake.serve(|mut s| {
        read_startup(&mut s);
        let mut b = [0u8; 1];
        let _ = s.read(&mut b); // never answers; returns when the client closes
    });
    let t0 = Instant::now();
    let e = Client::connect(&cfg, false, Box::new(PollWait)).unwrap_err();
    assert!(matches!(e, Error::Timeout(_)), "{e}");
    assert!(e.to_string().contains("timeout expired"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    h.join().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fake_server_garbage_and_eof() {
    // Not a PostgreSQL server: an HTTP answer. Must be a clean error, not a panic.
    let fake = Fake::new("garbage");
    let cfg = fake.config("");
    let (h, dir, _) = fake.serve(|mut s| {
        read_startup(&mut s);
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    let e = Client::connect(&cfg, false, Box::new(PollWait)).unwrap_err();
    assert!(matches!(e, Error::Protocol(_) | Error::Closed), "{e}");
    h.join().unwrap();
    let _ = std::fs::remove_dir_all(dir);

    // Server hangs up during authentication.
    let fake = Fake::new("eof");
    let cfg = fake.config("");
    let (h, dir, _) = fake.serve(|mut s| {
        read_startup(&mut s);
    });
    let e = Client::connect(&cfg, false, Box::new(PollWait)).unwrap_err();
    assert!(matches!(e, Error::Closed | Error::Io(_)), "{e}");
    h.join().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fake_server_stream_error_and_server_copydone() {
    let fake = Fake::new("streamerr");
    let cfg = fake.config("");
    let (h, dir, _) = fake.serve(|mut s| {
        read_startup(&mut s);
        startup_ok(&mut s);
        // First stream: aborted by an ERROR.
        let _ = read_msg(&mut s);
        s.write_all(&msg(b'W', &[0, 0, 0])).unwrap();
        let mut out = keepalive(1, false);
        out.extend(error("ERROR", "55000", "replication slot is active"));
        out.extend(rfq());
        s.write_all(&out).unwrap();
        // The connection is usable again: a query.
        let (t, _) = read_msg(&mut s);
        assert_eq!(t, b'Q');
        let mut out = command_complete("SET");
        out.extend(rfq());
        s.write_all(&out).unwrap();
        // Second stream: ended by the server with CopyDone.
        let _ = read_msg(&mut s);
        s.write_all(&msg(b'W', &[0, 0, 0])).unwrap();
        s.write_all(&msg(b'c', &[])).unwrap();
        let (t, _) = read_msg(&mut s);
        assert_eq!(t, b'c');
        let mut out = command_complete("COPY 0");
        out.extend(rfq());
        s.write_all(&out).unwrap();
        // Then EOF in the middle of a third stream.
        let _ = read_msg(&mut s);
        s.write_all(&msg(b'W', &[0, 0, 0])).unwrap();
        s.write_all(&xlogdata(5, b"abc")[..10]).unwrap();
    });
    let mut c = Client::connect(&cfg, true, Box::new(PollWait)).unwrap();
    let opts = PgOutputOptions::for_server(150000, vec!["p".into()]);
    let wait =
        |c: &Client| PollWait.wait(c.raw_fd(), Interest::Read, Some(Instant::now() + Duration::from_secs(5))).unwrap();

    c.start_replication("s", Lsn(0), &opts).unwrap();
    let e = loop {
        match c.recv_frame() {
            Ok(Some(_)) => {}
            Ok(None) => wait(&c),
            Err(e) => break e,
        }
    };
    assert_eq!(e.sqlstate(), Some("55000"));
    c.execute("SET x = 1").unwrap();

    c.start_replication("s", Lsn(0), &opts).unwrap();
    let e = loop {
        match c.recv_frame() {
            Ok(Some(_)) => {}
            Ok(None) => wait(&c),
            Err(e) => break e,
        }
    };
    assert!(matches!(e, Error::Closed));
    assert!(c.server_ended_stream(), "CopyDone from the server is an orderly end");
    c.end_copy().unwrap();

    c.start_replication("s", Lsn(0), &opts).unwrap();
    let e = loop {
        match c.recv_frame() {
            Ok(Some(f)) => panic!("unexpected frame {f:?}"),
            Ok(None) => wait(&c),
            Err(e) => break e,
        }
    };
    assert!(matches!(e, Error::Closed), "{e}");
    assert!(!c.server_ended_stream(), "end of file is not an orderly end");
    // Unusable afterwards.
    assert!(c.simple_query("SELECT 1").is_err());
    h.join().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// A waiter that reports an interrupt: every protocol step must surface it.
struct Interrupting;
impl Wait for Interrupting {
    fn wait(&mut self, _: RawFd, _: Interest, _: Option<Instant>) -> Result<(), Error> {
        Err(Error::Interrupted)
    }
}

#[test]
fn interrupted_waiter_aborts_connect() {
    let fake = Fake::new("intr");
    let cfg = fake.config("");
    let (h, dir, _) = fake.serve(|mut s| {
        read_startup(&mut s);
        let mut b = [0u8; 1];
        let _ = s.read(&mut b);
    });
    let e = Client::connect(&cfg, false, Box::new(Interrupting)).unwrap_err();
    assert!(matches!(e, Error::Interrupted), "{e}");
    h.join().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tcp_connection_refused_names_the_server() {
    // Bind then drop a listener to get a port that refuses.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg =
        conninfo::parse_with_env(&format!("host=127.0.0.1 port={port} user=u sslmode=disable"), &|_| None).unwrap();
    let e = Client::connect(&cfg, false, Box::new(PollWait)).unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, Error::Io(_)), "{s}");
    assert!(s.contains("connection to server at \"127.0.0.1\""), "{s}");
    assert!(s.contains(&port.to_string()), "{s}");
}

#[test]
fn fake_server_fatal_mid_command_and_shutdown_stream() {
    let fake = Fake::new("fatal");
    let cfg = fake.config("");
    let (h, dir, _) = fake.serve(|mut s| {
        read_startup(&mut s);
        startup_ok(&mut s);
        // A stream that the server finishes at shutdown: CommandComplete, then exit.
        let _ = read_msg(&mut s);
        s.write_all(&msg(b'W', &[0, 0, 0])).unwrap();
        let mut out = keepalive(9, false);
        out.extend(command_complete("COPY 0"));
        s.write_all(&out).unwrap();
    });
    let mut c = Client::connect(&cfg, true, Box::new(PollWait)).unwrap();
    c.start_replication("s", Lsn(0), &PgOutputOptions::for_server(150000, vec!["p".into()])).unwrap();
    let e = loop {
        match c.recv_frame() {
            Ok(Some(_)) => {}
            Ok(None) => PollWait.wait(c.raw_fd(), Interest::Read, None).unwrap(),
            Err(e) => break e,
        }
    };
    assert!(matches!(e, Error::Closed), "{e}");
    h.join().unwrap();
    let _ = std::fs::remove_dir_all(dir);

    // FATAL in the middle of a COPY, then EOF: the FATAL must be what the caller sees.
    let fake = Fake::new("fatal2");
    let cfg = fake.config("");
    let (h, dir, _) = fake.serve(|mut s| {
        read_startup(&mut s);
        startup_ok(&mut s);
        let _ = read_msg(&mut s);
        let mut out = msg(b'H', &[0, 0, 0]);
        out.extend(msg(b'd', b"1\n"));
        out.extend(error("FATAL", "57P01", "terminating connection due to administrator command"));
        s.write_all(&out).unwrap();
    });
    let mut c = Client::connect(&cfg, false, Box::new(PollWait)).unwrap();
    let mut chunks = 0;
    let e = c
        .copy_out("COPY t TO STDOUT", &mut |_d: &[u8]| {
            chunks += 1;
            Ok(())
        })
        .unwrap_err();
    assert_eq!(e.sqlstate(), Some("57P01"), "{e}");
    assert_eq!(chunks, 1);
    assert!(c.is_broken(), "a FATAL ends the connection");
    let e = c.simple_query("SELECT 1").unwrap_err();
    assert!(e.to_string().contains("no longer usable"), "{e}");
    h.join().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fake_server_absurd_length_is_refused() {
    let fake = Fake::new("huge");
    let cfg = fake.config("");
    let (h, dir, _) = fake.serve(|mut s| {
        read_startup(&mut s);
        startup_ok(&mut s);
        let _ = read_msg(&mut s);
        let mut out = vec![b'D'];
        out.extend_from_slice(&0x7FFF_FFF0i32.to_be_bytes());
        out.extend_from_slice(&[0u8; 64]);
        let _ = s.write_all(&out);
        let mut b = [0u8; 1];
        let _ = s.read(&mut b);
    });
    let mut c = Client::connect(&cfg, false, Box::new(PollWait)).unwrap();
    let e = c.simple_query("SELECT 1").unwrap_err();
    assert!(matches!(e, Error::Protocol(_)) && e.to_string().contains("too long"), "{e}");
    drop(c);
    h.join().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fake_server_pg14_slot_syntax() {
    let fake = Fake::new("pg14");
    let cfg = fake.config("");
    let (h, dir, _) = fake.serve(|mut s| {
        read_startup(&mut s);
        startup_ok_version(&mut s, "14.9");
        let (t, body) = read_msg(&mut s);
        assert_eq!(t, b'Q');
        assert_eq!(body, cstr("CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput USE_SNAPSHOT"));
        let mut out = row_description(&["slot_name", "consistent_point", "snapshot_name", "output_plugin"]);
        out.extend(data_row(&[Some("s"), Some("1/0"), None, Some("pgoutput")]));
        out.extend(command_complete("CREATE_REPLICATION_SLOT"));
        out.extend(rfq());
        s.write_all(&out).unwrap();
        let (t, body) = read_msg(&mut s);
        assert_eq!(t, b'Q');
        assert_eq!(body, cstr("DROP_REPLICATION_SLOT \"s\" WAIT"));
        let mut out = command_complete("DROP_REPLICATION_SLOT");
        out.extend(rfq());
        s.write_all(&out).unwrap();
    });
    let mut c = Client::connect(&cfg, true, Box::new(PollWait)).unwrap();
    assert_eq!(c.server_version_num(), 140009);
    let two_phase = SlotOptions { two_phase: true, failover: false };
    assert!(c.create_logical_slot("s", false, SnapshotAction::Use, two_phase).is_err());
    let slot = c.create_logical_slot("s", false, SnapshotAction::Use, SlotOptions::default()).unwrap();
    assert_eq!(slot.consistent_point, Lsn(1 << 32));
    c.drop_slot("s", true).unwrap();
    c.close();
    h.join().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fake_server_pg17_failover_slot_syntax() {
    let fake = Fake::new("pg17");
    let cfg = fake.config("");
    let (h, dir, _) = fake.serve(|mut s| {
        read_startup(&mut s);
        startup_ok_version(&mut s, "17.6");
        let (t, body) = read_msg(&mut s);
        assert_eq!(t, b'Q');
        assert_eq!(
            body,
            cstr("CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput (SNAPSHOT 'nothing', TWO_PHASE, FAILOVER)")
        );
        let mut out = row_description(&["slot_name", "consistent_point", "snapshot_name", "output_plugin"]);
        out.extend(data_row(&[Some("s"), Some("1/0"), None, Some("pgoutput")]));
        out.extend(command_complete("CREATE_REPLICATION_SLOT"));
        out.extend(rfq());
        s.write_all(&out).unwrap();
        let (t, body) = read_msg(&mut s);
        assert_eq!(t, b'Q');
        assert_eq!(body, cstr("ALTER_REPLICATION_SLOT \"s\" (FAILOVER false)"));
        let mut out = command_complete("ALTER_REPLICATION_SLOT");
        out.extend(rfq());
        s.write_all(&out).unwrap();
    });
    let mut c = Client::connect(&cfg, true, Box::new(PollWait)).unwrap();
    let opts = SlotOptions { two_phase: true, failover: true };
    let slot = c.create_logical_slot("s", false, SnapshotAction::NoExport, opts).unwrap();
    assert_eq!(slot.consistent_point, Lsn(1 << 32));
    c.alter_slot_failover("s", false).unwrap();
    c.close();
    h.join().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fake_server_pg18_alters_a_slots_two_phase() {
    let fake = Fake::new("pg18");
    let cfg = fake.config("");
    let (h, dir, _) = fake.serve(|mut s| {
        read_startup(&mut s);
        startup_ok_version(&mut s, "18.1");
        let (t, body) = read_msg(&mut s);
        assert_eq!(t, b'Q');
        assert_eq!(body, cstr("ALTER_REPLICATION_SLOT \"my \"\"slot\"\"\" (TWO_PHASE false)"));
        let mut out = command_complete("ALTER_REPLICATION_SLOT");
        out.extend(rfq());
        s.write_all(&out).unwrap();
    });
    let mut c = Client::connect(&cfg, true, Box::new(PollWait)).unwrap();
    c.alter_slot_two_phase("my \"slot\"", false).unwrap();
    c.close();
    h.join().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn pgoutput_options_use_the_replication_grammar() {
    // No E'' form in START_REPLICATION: backslashes are literal there.
    let mut o = PgOutputOptions::for_server(160000, vec![r"a\b".into()]);
    o.origin = Some(r"x\y".into());
    assert_eq!(o.to_sql_options(), r#"(proto_version '4', publication_names '"a\b"', origin 'x\y')"#);
}
