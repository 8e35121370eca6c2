//! Live tests of `pgsub-proto` against a real PostgreSQL 15 walsender (harness publisher only):
//! trust / md5 / SCRAM authentication and IDENTIFY_SYSTEM; TLS with a self-signed certificate
//! generated here (require, verify-full, wrong name, wrong root, hostssl-only user) and a large
//! stream over TLS; slot creation and a mixed workload (inserts, updates, deletes, truncate,
//! logical messages, many column types, NULLs, TOAST, a rolled-back subtransaction) streamed in
//! text and binary mode, with and without `streaming` for a transaction bigger than
//! logical_decoding_work_mem, each stream compared frame by frame with
//! `pg_logical_slot_peek_binary_changes` on the same slot (peeked before consuming: peek does
//! not advance the slot) and with the rows the workload wrote; standby status updates moving
//! write/flush/replay and the slot's confirmed_flush_lsn; connection errors (wrong password,
//! unknown user, missing database, closed port, unresolvable host, TLS refused, a silent server)
//! that must be clear and arrive within connect_timeout.

use std::collections::{BTreeSet, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pgsub_proto::client::{
    Client, Error, Interest, PgOutputOptions, PollWait, SlotOptions, SnapshotAction, Streaming, Wait,
};
use pgsub_proto::conninfo;
use pgsub_proto::frame::ReplicationFrame;
use pgsub_proto::pgoutput::{Decoder, LogicalMessage, OldTuple, ReplicaIdentity, TupleValue};
use pgsub_proto::Lsn;
use pgsub_tests::{
    openssl_cert, openssl_crl, openssl_server_cert, server_major, tls_publisher_opts, Cluster, ClusterOpts,
};
use tokio_postgres::SimpleQueryMessage;

/// Upper bound for waiting on replication frames or on a server-side effect.
const FRAME_WAIT: Duration = Duration::from_secs(30);

// =============================================================================================
// Small helpers

fn parse_cfg(connstr: &str) -> conninfo::Config {
    // No environment fallbacks (PGPASSWORD, ~/.pgpass, ...): the test says everything.
    conninfo::parse_with_env(connstr, &|_| None).unwrap_or_else(|e| panic!("parse {connstr:?}: {e}"))
}

fn connect(connstr: &str) -> Result<Client, Error> {
    Client::connect(&parse_cfg(connstr), true, Box::new(PollWait))
}

fn must_connect(connstr: &str) -> Client {
    connect(connstr).unwrap_or_else(|e| panic!("connect {connstr:?}: {e}"))
}

fn sh(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex string {s:?}");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit")).collect()
}

async fn one_text(c: &tokio_postgres::Client, sql: &str) -> String {
    for m in c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")) {
        if let SimpleQueryMessage::Row(r) = m {
            return r.get(0).unwrap_or("NULL").to_string();
        }
    }
    panic!("{sql}: no row");
}

async fn one_lsn(c: &tokio_postgres::Client, sql: &str) -> Lsn {
    let s = one_text(c, sql).await;
    s.parse().unwrap_or_else(|_| panic!("{sql}: not an LSN: {s}"))
}

// =============================================================================================
// Replication stream helpers

/// One XLogData frame as received.
struct Frame {
    wal_start: Lsn,
    data: Vec<u8>,
}

/// Waits until the socket is readable or `deadline` passes (a timeout is not an error here).
fn wait_readable(c: &Client, deadline: Instant) {
    let until = deadline.min(Instant::now() + Duration::from_millis(200));
    match PollWait.wait(c.raw_fd(), Interest::Read, Some(until)) {
        Ok(()) | Err(Error::Timeout(_)) => {}
        Err(e) => panic!("poll on the replication socket: {e}"),
    }
}

/// Reads frames until `n` XLogData frames have arrived (bounded by FRAME_WAIT). Keepalives that
/// ask for a reply are answered with `confirmed` as write/flush/apply.
fn recv_xlog(c: &mut Client, n: usize, confirmed: Lsn, keepalives: &mut usize) -> Vec<Frame> {
    let deadline = Instant::now() + FRAME_WAIT;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match c.recv_frame() {
            Ok(Some(ReplicationFrame::XLogData { wal_start, data, .. })) => {
                out.push(Frame { wal_start, data: data.to_vec() })
            }
            Ok(Some(ReplicationFrame::Keepalive { reply_requested, .. })) => {
                *keepalives += 1;
                if reply_requested {
                    c.send_status(confirmed, confirmed, confirmed, false).expect("answer keepalive");
                }
            }
            Ok(None) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {FRAME_WAIT:?} waiting for replication frames: got {} of {n}", out.len());
                }
                wait_readable(c, deadline);
            }
            Err(e) => panic!("recv_frame failed after {} of {n} frames: {e}", out.len()),
        }
    }
    out
}

/// Reads whatever is available now; fails on any XLogData (nothing more is expected). Keepalives
/// asking for a reply get `status` (write, flush, apply).
fn drain_expect_no_data(c: &mut Client, status: (Lsn, Lsn, Lsn), keepalives: &mut usize) {
    loop {
        match c.recv_frame() {
            Ok(Some(ReplicationFrame::XLogData { wal_start, data, .. })) => {
                panic!("unexpected extra XLogData at {wal_start}: {:?}", Decoder::new(4).decode(data.clone()))
            }
            Ok(Some(ReplicationFrame::Keepalive { reply_requested, .. })) => {
                *keepalives += 1;
                if reply_requested {
                    c.send_status(status.0, status.1, status.2, false).expect("answer keepalive");
                }
            }
            Ok(None) => return,
            Err(e) => panic!("recv_frame while idle: {e}"),
        }
    }
}

/// The option list of `pg_logical_slot_peek_binary_changes` equivalent to what
/// `PgOutputOptions::to_sql_options` sends (checked against it below).
fn peek_options(o: &PgOutputOptions) -> Vec<String> {
    let mut v = vec![
        "proto_version".to_string(),
        o.proto_version.to_string(),
        "publication_names".to_string(),
        o.publication_names.iter().map(|p| pgsub_proto::client::quote_ident(p)).collect::<Vec<_>>().join(","),
    ];
    if o.binary {
        v.extend(["binary".into(), "true".into()]);
    }
    if o.messages {
        v.extend(["messages".into(), "true".into()]);
    }
    if o.streaming == Streaming::On {
        v.extend(["streaming".into(), "on".into()]);
    }
    v
}

/// Rows of `pg_logical_slot_peek_binary_changes` (the slot does not move).
async fn peek(c: &tokio_postgres::Client, slot: &str, o: &PgOutputOptions) -> Vec<(Lsn, Vec<u8>)> {
    let rows = c
        .query(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, VARIADIC $2::text[])",
            &[&slot, &peek_options(o)],
        )
        .await
        .unwrap_or_else(|e| panic!("peek {slot}: {e}"));
    rows.iter()
        .map(|r| {
            let lsn: String = r.get(0);
            (lsn.parse().expect("peek lsn"), r.get::<_, Vec<u8>>(1))
        })
        .collect()
}

/// Writes a real captured stream as seeds for the `pgoutput` fuzz target (proto/fuzz), in its
/// input layout: a config byte (bits 0-1 protocol version - 1, bit 2 inside a streamed block),
/// then one message; and `*-seq-*` files of consecutive small messages, each prefixed by its
/// u8 length, which the target replays through a stateful decoder. Up to three samples of each
/// message type per slot, so the corpus stays small. Run explicitly:
/// `PGSUB_WRITE_FUZZ_CORPUS=$PWD/proto/fuzz/corpus/pgoutput cargo test -p pgsub-tests
///  --test proto_live stream_workload`.
fn write_fuzz_corpus(dir: &Path, slot: &str, proto: u32, peeked: &[(Lsn, Vec<u8>)]) {
    std::fs::create_dir_all(dir).expect("corpus dir");
    let mut per_kind: HashMap<u8, usize> = HashMap::new();
    let mut in_stream = false;
    let mut seq: Vec<u8> = Vec::new();
    let (mut seq_start, mut seq_len, mut seqs) = (0usize, 0usize, 0usize);
    for (i, (_, m)) in peeked.iter().enumerate() {
        let Some(&kind) = m.first() else { continue };
        if kind == b'S' {
            in_stream = true;
        }
        let n = per_kind.entry(kind).or_default();
        if *n < 3 && m.len() <= 4096 {
            *n += 1;
            let config = (proto.saturating_sub(1) as u8 & 3) | (u8::from(in_stream && kind != b'S') << 2);
            let mut v = vec![config];
            v.extend_from_slice(m);
            let name = format!("real-{slot}-{i:05}-{}", kind as char);
            std::fs::write(dir.join(name), v).expect("write seed");
        }
        if kind == b'E' {
            in_stream = false;
        }
        // Sequences of up to 16 consecutive messages shorter than 256 bytes.
        if m.len() < 256 {
            if seq.is_empty() {
                seq_start = i;
                seq_len = 0;
                seq.push(proto.saturating_sub(1) as u8 & 3);
            }
            seq.push(m.len() as u8);
            seq.extend_from_slice(m);
            seq_len += 1;
        }
        if !seq.is_empty() && (m.len() >= 256 || seq_len >= 16 || i + 1 == peeked.len()) {
            if seqs < 8 {
                std::fs::write(dir.join(format!("real-{slot}-seq-{seq_start:05}")), &seq).expect("write seq seed");
                seqs += 1;
            }
            seq.clear();
        }
    }
}

/// Decodes payloads with a fresh stateful decoder, panicking with the index on failure.
fn decode_all<'a>(proto: u32, payloads: impl Iterator<Item = &'a [u8]>, what: &str) -> Vec<LogicalMessage> {
    let mut d = Decoder::new(proto);
    payloads
        .enumerate()
        .map(|(i, p)| {
            d.decode(p.to_vec().into())
                .unwrap_or_else(|e| panic!("{what}: message {i} does not decode: {e:?} ({:?})", p))
        })
        .collect()
}

/// The streamed frames must be exactly the peeked rows: same count, same bytes, same decoded
/// messages; XLogData's wal_start is the row's LSN (0/0 for Relation and Type).
fn compare_with_peek(label: &str, proto: u32, frames: &[Frame], peeked: &[(Lsn, Vec<u8>)]) -> Vec<LogicalMessage> {
    assert_eq!(frames.len(), peeked.len(), "{label}: frame count vs peek row count");
    let got = decode_all(proto, frames.iter().map(|f| f.data.as_slice()), &format!("{label} stream"));
    let want = decode_all(proto, peeked.iter().map(|p| p.1.as_slice()), &format!("{label} peek"));
    for (i, (f, p)) in frames.iter().zip(peeked).enumerate() {
        assert!(
            f.data == p.1 && got[i] == want[i],
            "{label}: message {i} differs:\n stream: {:?}\n peek:   {:?}",
            got[i],
            want[i]
        );
        // The walsender puts the LSN in XLogData only for a plugin's "last write" of a change;
        // pgoutput's Relation and Type messages are written ahead of it and carry 0/0.
        let want_start = match got[i] {
            LogicalMessage::Relation(_) | LogicalMessage::Type(_) => Lsn::INVALID,
            _ => p.0,
        };
        assert_eq!(f.wal_start, want_start, "{label}: message {i} ({}) wal_start vs peek lsn {}", got[i].kind(), p.0);
    }
    got
}

// =============================================================================================
// Expected changes

/// A column value as the decoder reports it, normalised for comparison.
#[derive(Clone, Debug, PartialEq)]
enum V {
    Null,
    Unchanged,
    Text(String),
    Bin(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq)]
enum Old {
    Key(Vec<V>),
    Full(Vec<V>),
}

/// A change as a subscriber would apply it.
#[derive(Clone, Debug, PartialEq)]
enum Ev {
    Insert { rel: String, new: Vec<V> },
    Update { rel: String, old: Option<Old>, new: Vec<V> },
    Delete { rel: String, old: Old },
    Truncate { rels: BTreeSet<String>, cascade: bool, restart_identity: bool },
    Message { transactional: bool, prefix: String, content: Vec<u8> },
}

/// One column as SQL reports it: text output and hex of the type's send function.
#[derive(Clone, Debug)]
struct Cell {
    text: Option<String>,
    hex: Option<String>,
}

type SqlRow = Vec<Cell>;

fn render(row: &[Cell], binary: bool, unchanged: &[usize]) -> Vec<V> {
    row.iter()
        .enumerate()
        .map(|(i, c)| {
            if unchanged.contains(&i) {
                V::Unchanged
            } else if binary {
                c.hex.as_deref().map(|h| V::Bin(unhex(h))).unwrap_or(V::Null)
            } else {
                c.text.clone().map(V::Text).unwrap_or(V::Null)
            }
        })
        .collect()
}

fn key_only(row: &[Cell], key: usize) -> Vec<Cell> {
    row.iter().enumerate().map(|(i, c)| if i == key { c.clone() } else { Cell { text: None, hex: None } }).collect()
}

/// Column metadata of a table and the select list giving each column's text and send output.
struct Table {
    name: String,
    cols: Vec<(String, u32, i32)>,
    select_list: String,
}

impl Table {
    async fn load(c: &tokio_postgres::Client, name: &str) -> Table {
        let rows = c
            .query(
                "SELECT a.attname::text, a.atttypid, a.atttypmod, t.typsend::regproc::text \
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
                &[&name],
            )
            .await
            .expect("columns");
        let mut cols = Vec::new();
        let mut list = Vec::new();
        for r in &rows {
            let col: String = r.get(0);
            let send: String = r.get(3);
            list.push(format!("{col}, encode({send}({col}), 'hex')"));
            cols.push((col, r.get::<_, u32>(1), r.get::<_, i32>(2)));
        }
        Table { name: name.to_string(), cols, select_list: list.join(", ") }
    }

    fn index(&self, col: &str) -> usize {
        self.cols.iter().position(|c| c.0 == col).expect("column")
    }

    /// Runs `sql` (a DML statement) with `RETURNING` this table's select list, or a SELECT of it
    /// when `sql` starts with "WHERE".
    async fn rows(&self, c: &tokio_postgres::Client, sql: &str) -> Vec<SqlRow> {
        let q = if sql.starts_with("WHERE") {
            format!("SELECT {} FROM {} {sql}", self.select_list, self.name)
        } else {
            format!("{sql} RETURNING {}", self.select_list)
        };
        let mut out = Vec::new();
        for m in c.simple_query(&q).await.unwrap_or_else(|e| panic!("{q}: {e}")) {
            if let SimpleQueryMessage::Row(r) = m {
                assert_eq!(r.len(), 2 * self.cols.len());
                out.push(
                    (0..self.cols.len())
                        .map(|i| Cell {
                            text: r.get(2 * i).map(str::to_string),
                            hex: r.get(2 * i + 1).map(str::to_string),
                        })
                        .collect(),
                );
            }
        }
        out
    }
}

/// Expected changes, rendered for text and binary mode.
#[derive(Default)]
struct Expected {
    text: Vec<Ev>,
    bin: Vec<Ev>,
}

impl Expected {
    fn push(&mut self, f: impl Fn(bool) -> Ev) {
        self.text.push(f(false));
        self.bin.push(f(true));
    }
    fn for_mode(&self, binary: bool, messages: bool) -> Vec<Ev> {
        let v = if binary { &self.bin } else { &self.text };
        v.iter().filter(|e| messages || !matches!(e, Ev::Message { .. })).cloned().collect()
    }
}

// =============================================================================================
// Interpreting a decoded stream

fn value(v: &TupleValue) -> V {
    match v {
        TupleValue::Null => V::Null,
        TupleValue::UnchangedToast => V::Unchanged,
        TupleValue::Text(b) => V::Text(String::from_utf8(b.to_vec()).expect("text value is UTF-8")),
        TupleValue::Binary(b) => V::Bin(b.to_vec()),
    }
}

fn values(t: &pgsub_proto::pgoutput::TupleData) -> Vec<V> {
    t.columns.iter().map(value).collect()
}

fn old(o: &OldTuple) -> Old {
    match o {
        OldTuple::Key(t) => Old::Key(values(t)),
        OldTuple::Full(t) => Old::Full(values(t)),
    }
}

/// What a decoded stream says beyond its changes.
#[derive(Default, Debug)]
struct Summary {
    /// Applied changes in commit order (rolled-back subtransactions removed).
    events: Vec<Ev>,
    /// Begin/Commit pairs: (xid, end_lsn).
    txns: Vec<(u32, Lsn)>,
    /// Every StreamStart: (xid, first_segment).
    stream_starts: Vec<(u32, bool)>,
    /// StreamCommit: (xid, end_lsn).
    stream_commits: Vec<(u32, Lsn)>,
    /// StreamAbort: (xid, subxid).
    stream_aborts: Vec<(u32, u32)>,
    /// Subtransaction xids carried by streamed changes (xid != top-level xid).
    streamed_subxids: BTreeSet<u32>,
    /// Changes carrying each xid inside stream blocks.
    streamed_changes: HashMap<u32, usize>,
    relations: Vec<pgsub_proto::pgoutput::Relation>,
    types: Vec<pgsub_proto::pgoutput::TypeMsg>,
    /// end LSN of the last Commit / StreamCommit.
    last_end: Lsn,
}

/// Walks the stream like a subscriber: checks the framing rules of pgoutput (Begin/Commit
/// pairing, xids inside and outside stream blocks, Relation before use) and applies changes at
/// commit, dropping those of aborted (sub)transactions.
fn interpret(label: &str, msgs: &[LogicalMessage], streaming: bool) -> Summary {
    let mut s = Summary::default();
    let mut rels: HashMap<u32, String> = HashMap::new();
    let mut txn: Option<(u32, Lsn, i64, Vec<Ev>)> = None;
    let mut stream: Option<u32> = None;
    let mut pending: HashMap<u32, Vec<(u32, Ev)>> = HashMap::new();
    let mut seen_streams: BTreeSet<u32> = BTreeSet::new();
    for (i, m) in msgs.iter().enumerate() {
        let ctx = || format!("{label}: message {i} ({})", m.kind());
        // The xid carried by a change/metadata message: present exactly inside stream blocks.
        let carried = match m {
            LogicalMessage::Relation(r) => Some(r.xid),
            LogicalMessage::Type(t) => Some(t.xid),
            LogicalMessage::Insert(x) => Some(x.xid),
            LogicalMessage::Update(x) => Some(x.xid),
            LogicalMessage::Delete(x) => Some(x.xid),
            LogicalMessage::Truncate(x) => Some(x.xid),
            LogicalMessage::Message(x) if x.transactional => Some(x.xid),
            _ => None,
        };
        if let Some(xid) = carried {
            assert_eq!(xid.is_some(), stream.is_some(), "{}: xid {xid:?} vs in stream {stream:?}", ctx());
            if let (Some(top), Some(x)) = (stream, xid) {
                *s.streamed_changes.entry(x).or_default() += 1;
                if x != top {
                    s.streamed_subxids.insert(x);
                }
            }
        }
        let rel = |oid: u32| -> String {
            rels.get(&oid)
                .cloned()
                .unwrap_or_else(|| panic!("{}: relation {oid} used before its Relation message", ctx()))
        };
        let ev = match m {
            LogicalMessage::Insert(x) => Some(Ev::Insert { rel: rel(x.rel_oid), new: values(&x.new) }),
            LogicalMessage::Update(x) => {
                Some(Ev::Update { rel: rel(x.rel_oid), old: x.old.as_ref().map(old), new: values(&x.new) })
            }
            LogicalMessage::Delete(x) => Some(Ev::Delete { rel: rel(x.rel_oid), old: old(&x.old) }),
            LogicalMessage::Truncate(x) => Some(Ev::Truncate {
                rels: x.rel_oids.iter().map(|o| rel(*o)).collect(),
                cascade: x.cascade,
                restart_identity: x.restart_identity,
            }),
            LogicalMessage::Message(x) => Some(Ev::Message {
                transactional: x.transactional,
                prefix: x.prefix.clone(),
                content: x.content.to_vec(),
            }),
            _ => None,
        };
        if let Some(ev) = ev {
            let xid = carried.flatten();
            if let Some(top) = stream {
                pending.entry(top).or_default().push((xid.unwrap_or(top), ev));
            } else if let Some(t) = txn.as_mut() {
                t.3.push(ev);
            } else {
                assert!(
                    matches!(m, LogicalMessage::Message(x) if !x.transactional),
                    "{}: change outside any transaction",
                    ctx()
                );
                s.events.push(ev);
            }
            continue;
        }
        match m {
            LogicalMessage::Relation(r) => {
                rels.insert(r.oid, r.name.clone());
                s.relations.push(r.clone());
            }
            LogicalMessage::Type(t) => s.types.push(t.clone()),
            LogicalMessage::Begin(b) => {
                assert!(txn.is_none() && stream.is_none(), "{}: nested Begin", ctx());
                txn = Some((b.xid, b.final_lsn, b.commit_time, Vec::new()));
            }
            LogicalMessage::Commit(c) => {
                let (xid, final_lsn, time, evs) =
                    txn.take().unwrap_or_else(|| panic!("{}: Commit without Begin", ctx()));
                assert_eq!(c.commit_lsn, final_lsn, "{}: commit_lsn is Begin's final_lsn", ctx());
                assert_eq!(c.commit_time, time, "{}: commit_time is Begin's", ctx());
                assert!(c.end_lsn > c.commit_lsn, "{}: end_lsn after commit_lsn", ctx());
                s.txns.push((xid, c.end_lsn));
                s.last_end = c.end_lsn;
                s.events.extend(evs);
            }
            LogicalMessage::StreamStart(st) => {
                assert!(streaming, "{}: StreamStart without streaming", ctx());
                assert!(txn.is_none() && stream.is_none(), "{}: StreamStart inside a block", ctx());
                let first = seen_streams.insert(st.xid);
                assert_eq!(st.first_segment, first, "{}: first_segment flag", ctx());
                s.stream_starts.push((st.xid, st.first_segment));
                stream = Some(st.xid);
            }
            LogicalMessage::StreamStop => {
                assert!(stream.take().is_some(), "{}: StreamStop outside a block", ctx());
            }
            LogicalMessage::StreamAbort(a) => {
                assert!(stream.is_none() && txn.is_none(), "{}: StreamAbort inside a block", ctx());
                assert!(seen_streams.contains(&a.xid), "{}: StreamAbort of an unknown xid", ctx());
                s.stream_aborts.push((a.xid, a.subxid));
                if a.subxid == a.xid {
                    pending.remove(&a.xid);
                } else if let Some(p) = pending.get_mut(&a.xid) {
                    p.retain(|(x, _)| *x != a.subxid);
                }
            }
            LogicalMessage::StreamCommit(c) => {
                assert!(stream.is_none() && txn.is_none(), "{}: StreamCommit inside a block", ctx());
                assert!(seen_streams.contains(&c.xid), "{}: StreamCommit of an unknown xid", ctx());
                assert!(c.end_lsn > c.commit_lsn, "{}: end_lsn after commit_lsn", ctx());
                s.stream_commits.push((c.xid, c.end_lsn));
                s.last_end = c.end_lsn;
                s.events.extend(pending.remove(&c.xid).unwrap_or_default().into_iter().map(|(_, e)| e));
            }
            other => panic!("{}: unexpected message {other:?}", ctx()),
        }
    }
    assert!(txn.is_none() && stream.is_none(), "{label}: stream ends inside a transaction");
    assert!(pending.is_empty(), "{label}: streamed transactions never committed: {:?}", pending.keys());
    s
}

fn assert_events_eq(label: &str, got: &[Ev], want: &[Ev]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "{label}: change {i} differs from what the workload wrote");
    }
    assert_eq!(
        got.len(),
        want.len(),
        "{label}: {} changes decoded, {} written; first extra: {:?}",
        got.len(),
        want.len(),
        got.get(want.len()).or(want.get(got.len()))
    );
}

// =============================================================================================
// Status updates

/// Sends a status update and waits (draining frames) until `pg_stat_replication` of this
/// walsender shows it and the slot's confirmed_flush_lsn is `flush`.
async fn send_and_confirm(
    pg: &tokio_postgres::Client,
    repl: &mut Client,
    slot: &str,
    (write, flush, apply): (Lsn, Lsn, Lsn),
    keepalives: &mut usize,
) {
    repl.send_status(write, flush, apply, false).expect("send_status");
    let pid = repl.backend_pid();
    let deadline = Instant::now() + FRAME_WAIT;
    loop {
        drain_expect_no_data(repl, (write, flush, apply), keepalives);
        let rows = pg
            .query(
                "SELECT r.write_lsn::text, r.flush_lsn::text, r.replay_lsn::text, s.confirmed_flush_lsn::text \
                 FROM pg_stat_replication r, pg_replication_slots s \
                 WHERE r.pid = $1 AND s.slot_name = $2 AND s.active_pid = r.pid",
                &[&pid, &slot],
            )
            .await
            .expect("pg_stat_replication");
        let seen: Option<[Option<String>; 4]> = rows.first().map(|r| [r.get(0), r.get(1), r.get(2), r.get(3)]);
        let want = [write, flush, apply, flush].map(|l| Some(l.to_string()));
        if seen.as_ref() == Some(&want) {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "status update ({write}, {flush}, {apply}) of slot {slot} not visible after {FRAME_WAIT:?}: \
                    pg_stat_replication/slot show (write, flush, replay, confirmed_flush) = {seen:?}"
            );
        }
        // The poll interval of this wait (it drains the replication stream between polls, so it
        // is written out here rather than through the kit's `wait_for`).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// =============================================================================================
// The workload test

const SCHEMA: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE t (
    id int PRIMARY KEY, i2 smallint, i8 bigint, f4 real, f8 double precision, n numeric,
    nfix numeric(12,3), b boolean, txt text, vc varchar(20), bt bytea, ts timestamptz, d date,
    iv interval, u uuid, j jsonb, ia int[], ta text[], m mood, big text);
ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE tfull (id int, v text, n numeric, ts timestamptz);
ALTER TABLE tfull REPLICA IDENTITY FULL;
CREATE TABLE t_unpub (id int PRIMARY KEY, v text);
CREATE PUBLICATION pub FOR TABLE t, tfull;
";

/// First id and count of the rows the big transaction inserts (and keeps).
const BIG_FIRST: i32 = 100;
const BIG_ROWS: i32 = 1000;

/// Runs the workload, returning the expected changes and the xid of the big transaction.
async fn workload(pg: &tokio_postgres::Client, t: &Table, tf: &Table) -> (Expected, u32) {
    let mut exp = Expected::default();
    let big = t.index("big");
    let id = t.index("id");

    // Tx1: three rows — every type, all NULLs, edge values; row 1 has a TOASTed value.
    pg.batch_execute("BEGIN").await.unwrap();
    let rows = t
        .rows(
            pg,
            r#"INSERT INTO t VALUES
            (1, 32767, -9223372036854775808, 3.25, 1.5e300, -123456789012345678901234567890.123456789,
             123456789.123, true, E'quote '' dq " backslash \\ newline\n tab\t ünïcödé ✓', 'varchar',
             '\x00ff10'::bytea, '2024-02-29 12:34:56.789012+05:30', '2000-01-01',
             '1 year 2 mons 3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
             '{"a": [1, 2.5, {"b": null}], "ü": "ñ\"q", "n": -0.0001}', '{1,NULL,3}',
             '{"a b","c,d",NULL,"\"q\"",""}', 'happy', repeat('0123456789', 1000)),
            (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
             NULL, NULL, NULL, NULL, NULL),
            (3, -32768, 0, 'NaN', '-Infinity', 'NaN', -0.001, false, '', '', '\x'::bytea, 'infinity',
             '-infinity', '-1 days', '00000000-0000-0000-0000-000000000000', '[]', '{}',
             '{{a,b},{c,d}}', 'sad', '')"#,
        )
        .await;
    assert_eq!(rows.len(), 3);
    assert!(rows[0][big].text.as_ref().unwrap().len() == 10000);
    for r in &rows {
        exp.push(|bin| Ev::Insert { rel: "t".into(), new: render(r, bin, &[]) });
    }
    pg.batch_execute("COMMIT").await.unwrap();

    // Tx2: update that leaves the TOASTed column alone: it is sent as "unchanged".
    let rows = t.rows(pg, "UPDATE t SET i2 = i2 - 1, j = j || '{\"x\": 1}' WHERE id = 1").await;
    exp.push(|bin| Ev::Update { rel: "t".into(), old: None, new: render(&rows[0], bin, &[big]) });

    // Tx3: update of the primary key: the old key is sent.
    let before = t.rows(pg, "WHERE id = 3").await;
    let rows = t.rows(pg, "UPDATE t SET id = 10, txt = 'moved' WHERE id = 3").await;
    exp.push(|bin| Ev::Update {
        rel: "t".into(),
        old: Some(Old::Key(render(&key_only(&before[0], id), bin, &[]))),
        new: render(&rows[0], bin, &[]),
    });

    // Tx4: delete: the old key only.
    let rows = t.rows(pg, "DELETE FROM t WHERE id = 2").await;
    exp.push(|bin| Ev::Delete { rel: "t".into(), old: Old::Key(render(&key_only(&rows[0], id), bin, &[])) });

    // Tx5: a table outside the publication: nothing.
    pg.batch_execute("INSERT INTO t_unpub VALUES (1, 'not published')").await.unwrap();

    // Non-transactional message, outside any transaction.
    pg.batch_execute(r"SELECT pg_logical_emit_message(false, 'nontx', '\x00ff01'::bytea)").await.unwrap();
    exp.push(|_| Ev::Message { transactional: false, prefix: "nontx".into(), content: vec![0, 0xff, 1] });

    // Tx7: REPLICA IDENTITY FULL table: whole old rows; a transactional message.
    pg.batch_execute("BEGIN").await.unwrap();
    let ins = tf.rows(pg, "INSERT INTO tfull VALUES (1, 'a', 1.5, now()), (2, NULL, NULL, NULL)").await;
    for r in &ins {
        exp.push(|bin| Ev::Insert { rel: "tfull".into(), new: render(r, bin, &[]) });
    }
    let before = tf.rows(pg, "WHERE id = 1").await;
    let upd = tf.rows(pg, "UPDATE tfull SET v = 'b', n = n * 2 WHERE id = 1").await;
    exp.push(|bin| Ev::Update {
        rel: "tfull".into(),
        old: Some(Old::Full(render(&before[0], bin, &[]))),
        new: render(&upd[0], bin, &[]),
    });
    let del = tf.rows(pg, "DELETE FROM tfull WHERE id = 2").await;
    exp.push(|bin| Ev::Delete { rel: "tfull".into(), old: Old::Full(render(&del[0], bin, &[])) });
    pg.batch_execute("SELECT pg_logical_emit_message(true, 'tx', 'hello')").await.unwrap();
    exp.push(|_| Ev::Message { transactional: true, prefix: "tx".into(), content: b"hello".to_vec() });
    pg.batch_execute("COMMIT").await.unwrap();

    // Tx8: bigger than logical_decoding_work_mem (64kB): streamed with streaming=on. Contains a
    // transactional message, a rolled-back subtransaction that is itself bigger than the limit,
    // updates of rows with TOASTed values, and deletes.
    pg.batch_execute("BEGIN").await.unwrap();
    let big_xid: u32 =
        (one_text(pg, "SELECT pg_current_xact_id()::text").await.parse::<u64>().unwrap() % (1u64 << 32)) as u32;
    let rows = t
        .rows(
            pg,
            &format!(
                "INSERT INTO t (id, i2, i8, f8, n, b, txt, ts, u, j, ia, m, big) \
                 SELECT g, (g % 100)::smallint, g::bigint * 1000000007, g / 7.0, g::numeric / 3, g % 2 = 0, \
                        'row ' || g || repeat('x', 60), '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 minute', \
                        md5(g::text)::uuid, jsonb_build_object('g', g, 'arr', jsonb_build_array(g, g * 2)), \
                        ARRAY[g, g + 1], (ARRAY['sad', 'ok', 'happy'])[g % 3 + 1]::mood, \
                        CASE WHEN g % 50 = 0 THEN repeat(md5(g::text), 200) END \
                 FROM generate_series({BIG_FIRST}, {}) g",
                BIG_FIRST + BIG_ROWS - 1
            ),
        )
        .await;
    assert_eq!(rows.len(), BIG_ROWS as usize);
    for r in &rows {
        exp.push(|bin| Ev::Insert { rel: "t".into(), new: render(r, bin, &[]) });
    }
    pg.batch_execute("SELECT pg_logical_emit_message(true, 'big', 'inside')").await.unwrap();
    exp.push(|_| Ev::Message { transactional: true, prefix: "big".into(), content: b"inside".to_vec() });
    pg.batch_execute(
        "SAVEPOINT s; \
         INSERT INTO t (id, txt) SELECT g, repeat('y', 300) FROM generate_series(5000, 5599) g; \
         ROLLBACK TO SAVEPOINT s",
    )
    .await
    .unwrap();
    let rows = t.rows(pg, "UPDATE t SET txt = 'updated ' || id WHERE id BETWEEN 100 AND 109").await;
    assert_eq!(rows.len(), 10);
    for r in &rows {
        // Row 100 has a TOASTed `big` that the update does not touch.
        let unchanged: &[usize] = if r[big].text.is_some() { &[big] } else { &[] };
        exp.push(|bin| Ev::Update { rel: "t".into(), old: None, new: render(r, bin, unchanged) });
    }
    let rows = t.rows(pg, "DELETE FROM t WHERE id BETWEEN 110 AND 119").await;
    for r in &rows {
        exp.push(|bin| Ev::Delete { rel: "t".into(), old: Old::Key(render(&key_only(r, id), bin, &[])) });
    }
    pg.batch_execute("COMMIT").await.unwrap();

    // Tx9: truncate of both published tables with both options.
    pg.batch_execute("TRUNCATE tfull, t RESTART IDENTITY CASCADE").await.unwrap();
    exp.push(|_| Ev::Truncate {
        rels: ["t".to_string(), "tfull".to_string()].into_iter().collect(),
        cascade: true,
        restart_identity: true,
    });
    (exp, big_xid)
}

struct SlotRun {
    slot: &'static str,
    opts: PgOutputOptions,
}

#[tokio::test(flavor = "current_thread")]
async fn stream_workload_text_binary_streaming_matches_peek_and_rows() {
    let t0 = Instant::now();
    let cluster = Cluster::start(ClusterOpts::publisher().with_conf("logical_decoding_work_mem = '64kB'"))
        .expect("start publisher");
    let pg = cluster.client("postgres").await.expect("client");
    pg.batch_execute(SCHEMA).await.expect("schema");
    let t = Table::load(&pg, "t").await;
    let tf = Table::load(&pg, "tfull").await;

    let mut slots_conn = must_connect(&cluster.connstr("postgres", "postgres"));
    let repl = &mut slots_conn;
    assert!(!repl.uses_tls(), "the harness cluster has no TLS");
    let v = repl.server_version_num();
    assert_eq!(v / 10000, server_major(), "server_version_num {v} is the server under test's");

    // IDENTIFY_SYSTEM agrees with the server's own view.
    let sys = repl.identify_system().expect("IDENTIFY_SYSTEM");
    assert_eq!(sys.systemid, one_text(&pg, "SELECT system_identifier::text FROM pg_control_system()").await);
    assert_eq!(sys.timeline.to_string(), one_text(&pg, "SELECT timeline_id::text FROM pg_control_checkpoint()").await);
    assert_eq!(sys.dbname.as_deref(), Some("postgres"));
    assert!(sys.xlogpos.is_valid());
    assert!(sys.xlogpos <= one_lsn(&pg, "SELECT pg_current_wal_flush_lsn()").await);

    // Three slots created at the same point, before the workload.
    let runs = [
        SlotRun {
            slot: "s_v1_text",
            opts: PgOutputOptions { proto_version: 1, ..PgOutputOptions::for_server(v, vec!["pub".into()]) },
        },
        SlotRun {
            slot: "s_v2_text_stream",
            opts: PgOutputOptions {
                proto_version: 2,
                messages: true,
                streaming: Streaming::On,
                ..PgOutputOptions::for_server(v, vec!["pub".into()])
            },
        },
        SlotRun {
            slot: "s_v3_binary_stream",
            opts: PgOutputOptions {
                proto_version: 3,
                binary: true,
                messages: true,
                streaming: Streaming::On,
                ..PgOutputOptions::for_server(v, vec!["pub".into()])
            },
        },
    ];
    let expected = if v >= 160000 { 4 } else { 3 };
    assert_eq!(
        PgOutputOptions::for_server(v, vec![]).proto_version,
        expected,
        "for_server picks the newest protocol the server speaks"
    );
    // The peek option list mirrors what START_REPLICATION sends.
    assert_eq!(
        runs[2].opts.to_sql_options(),
        "(proto_version '3', publication_names '\"pub\"', binary 'true', messages 'true', streaming 'on')"
    );
    let mut created = HashMap::new();
    for r in &runs {
        let info = repl
            .create_logical_slot(r.slot, false, SnapshotAction::NoExport, SlotOptions::default())
            .expect("create slot");
        assert_eq!(info.slot_name, r.slot);
        assert!(info.consistent_point.is_valid());
        assert_eq!(info.snapshot_name, None, "SNAPSHOT 'nothing' exports no snapshot");
        let row = pg
            .query_one(
                "SELECT plugin::text, slot_type, confirmed_flush_lsn::text, active FROM pg_replication_slots WHERE slot_name = $1",
                &[&r.slot],
            )
            .await
            .expect("slot row");
        assert_eq!(row.get::<_, String>(0), "pgoutput");
        assert_eq!(row.get::<_, String>(1), "logical");
        assert_eq!(row.get::<_, String>(2), info.consistent_point.to_string());
        assert!(!row.get::<_, bool>(3), "a permanent slot is released after creation");
        created.insert(r.slot, info.consistent_point);
    }

    let (expected, big_xid) = workload(&pg, &t, &tf).await;
    let mood_oid: u32 = pg.query_one("SELECT 'mood'::regtype::oid", &[]).await.unwrap().get(0);
    let t_oid: u32 = pg.query_one("SELECT 't'::regclass::oid", &[]).await.unwrap().get(0);
    let tf_oid: u32 = pg.query_one("SELECT 'tfull'::regclass::oid", &[]).await.unwrap().get(0);

    let mut keepalives = 0usize;
    for r in &runs {
        let o = &r.opts;
        let label = format!("{} (proto {}, binary {}, streaming {:?})", r.slot, o.proto_version, o.binary, o.streaming);
        let streaming = o.streaming == Streaming::On;

        // Peek first: the slot is inactive and peek does not move it.
        let peeked = peek(&pg, r.slot, o).await;
        if let Some(dir) = std::env::var_os("PGSUB_WRITE_FUZZ_CORPUS") {
            write_fuzz_corpus(Path::new(&dir), r.slot, o.proto_version, &peeked);
        }
        assert!(peeked.len() > BIG_ROWS as usize, "{label}: peek returned {} rows", peeked.len());
        assert_eq!(peek(&pg, r.slot, o).await.len(), peeked.len(), "{label}: peek does not consume");

        // One connection per stream: a PostgreSQL 15 walsender ends a second logical
        // START_REPLICATION on the same connection at once (its "streaming done" flags are only
        // reset for physical replication).
        let mut repl = must_connect(&cluster.connstr("postgres", "postgres"));
        repl.start_replication(r.slot, created[r.slot], o).expect("START_REPLICATION");
        let frames = recv_xlog(&mut repl, peeked.len(), created[r.slot], &mut keepalives);
        let msgs = compare_with_peek(&label, o.proto_version, &frames, &peeked);

        // Stream structure.
        let s = interpret(&label, &msgs, streaming);
        if streaming {
            let big_starts = s.stream_starts.iter().filter(|(x, _)| *x == big_xid).count();
            assert!(big_starts >= 2, "{label}: the big transaction is streamed in several blocks ({big_starts})");
            assert!(s.stream_starts.iter().all(|(x, _)| *x == big_xid), "{label}: only the big transaction streams");
            assert_eq!(s.stream_commits.len(), 1, "{label}: one stream commit");
            assert_eq!(s.stream_commits[0].0, big_xid);
            assert_eq!(s.stream_aborts.len(), 1, "{label}: the rolled-back subtransaction: {:?}", s.stream_aborts);
            let (ax, sub) = s.stream_aborts[0];
            assert_eq!(ax, big_xid);
            assert_ne!(sub, big_xid, "{label}: subtransaction abort names the subxact");
            // ROLLBACK TO SAVEPOINT starts a new subtransaction: the later updates/deletes carry
            // its xid and are kept; only the aborted one's changes are dropped.
            assert!(
                s.streamed_subxids.contains(&sub),
                "{label}: streamed changes carry the subxid {sub}: {:?}",
                s.streamed_subxids
            );
            assert!(s.streamed_changes[&sub] >= 100, "{label}: the subxact's rows were streamed before the abort");
            assert!(s.streamed_changes[&big_xid] >= BIG_ROWS as usize);
            assert_eq!(s.txns.len(), 6, "{label}: small transactions as Begin/Commit: {:?}", s.txns);
        } else {
            assert!(s.stream_starts.is_empty() && s.stream_aborts.is_empty() && s.stream_commits.is_empty());
            assert_eq!(s.txns.len(), 7, "{label}: transactions: {:?}", s.txns);
            assert_eq!(s.txns[5].0, big_xid, "{label}: the big transaction's Begin xid");
        }
        // Relation and Type metadata agree with the catalog.
        let ty =
            s.types.iter().find(|x| x.oid == mood_oid).unwrap_or_else(|| panic!("{label}: no Type message for mood"));
        assert_eq!((ty.namespace.as_str(), ty.name.as_str()), ("public", "mood"));
        for (tab, oid, ident) in [(&t, t_oid, ReplicaIdentity::Default), (&tf, tf_oid, ReplicaIdentity::Full)] {
            let rel = s
                .relations
                .iter()
                .find(|x| x.oid == oid)
                .unwrap_or_else(|| panic!("{label}: no Relation for {}", tab.name));
            assert_eq!((rel.namespace.as_str(), rel.name.as_str()), ("public", tab.name.as_str()));
            assert_eq!(rel.replica_identity, ident, "{label}: replica identity of {}", tab.name);
            let cols: Vec<(String, u32, i32, bool)> =
                rel.columns.iter().map(|c| (c.name.clone(), c.type_oid, c.type_modifier, c.is_key)).collect();
            let want: Vec<(String, u32, i32, bool)> = tab
                .cols
                .iter()
                .map(|(n, ty, m)| (n.clone(), *ty, *m, ident == ReplicaIdentity::Full || n == "id"))
                .collect();
            assert_eq!(cols, want, "{label}: columns of {}", tab.name);
        }
        // The changes are exactly what the workload wrote.
        assert_events_eq(&label, &s.events, &expected.for_mode(o.binary, o.messages));

        // Status updates: write/flush/replay land where sent (distinct values show the field
        // order); the flush position becomes the slot's confirmed_flush_lsn.
        let start = created[r.slot];
        let before = one_lsn(
            &pg,
            &format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{}'", r.slot),
        )
        .await;
        assert_eq!(before, start, "{label}: nothing confirmed yet");
        let first_end = s.txns[0].1;
        send_and_confirm(&pg, &mut repl, r.slot, (s.last_end, first_end, start), &mut keepalives).await;
        send_and_confirm(&pg, &mut repl, r.slot, (s.last_end, s.last_end, s.last_end), &mut keepalives).await;
        repl.end_copy().expect("end_copy");
        // The connection is usable again, and the slot really moved: nothing left to peek.
        let rows = repl.simple_query("SELECT 1 AS one").expect("query after end_copy");
        assert_eq!(rows[0].get("one"), Some("1"));
        assert_eq!(peek(&pg, r.slot, o).await.len(), 0, "{label}: slot advanced past the workload");
        repl.close();
        eprintln!("{label}: {} messages, {} changes verified", msgs.len(), s.events.len());
    }
    eprintln!("workload test: {keepalives} keepalives, {:?}", t0.elapsed());
    slots_conn.close();
}

// =============================================================================================
// Authentication

const AUTH_SETUP: &str = "
SET password_encryption = 'md5';
CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5 secret';
SET password_encryption = 'scram-sha-256';
CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'sc''ram \\ secret';
CREATE ROLE trust_user LOGIN REPLICATION;
";
const SCRAM_PASSWORD: &str = "sc'ram \\ secret";

const AUTH_HBA: &str = "
local all all trust
host all trust_user 127.0.0.1/32 trust
host all md5_user 127.0.0.1/32 md5
host all scram_user 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
";

fn auth_cluster(log_connections: bool) -> Cluster {
    let mut opts = ClusterOpts::publisher();
    if log_connections {
        opts = opts.with_conf("log_connections = on");
    }
    let c = Cluster::start(opts).expect("start publisher");
    c.psql("postgres", AUTH_SETUP).expect("roles");
    c.set_hba(AUTH_HBA).expect("hba");
    c
}

fn with_password(connstr: &str, pw: &str) -> String {
    format!("{connstr} password={}", conninfo::quote_value(pw))
}

#[tokio::test(flavor = "current_thread")]
async fn trust_md5_and_scram_users_connect_and_identify() {
    let cluster = auth_cluster(true);
    let pg = cluster.client("postgres").await.expect("client");
    let md5_stored =
        cluster.psql("postgres", "SELECT rolpassword LIKE 'md5%' FROM pg_authid WHERE rolname = 'md5_user'").unwrap();
    assert_eq!(md5_stored, "t", "md5_user has an MD5 verifier, so the server asks for MD5");
    let sysid = one_text(&pg, "SELECT system_identifier::text FROM pg_control_system()").await;

    for (user, pw, method) in [
        ("trust_user", None, None),
        ("trust_user", Some("given but not asked for"), None),
        ("md5_user", Some("md5 secret"), Some("md5")),
        ("scram_user", Some(SCRAM_PASSWORD), Some("scram-sha-256")),
    ] {
        let mut cs = cluster.connstr(user, "postgres");
        if let Some(pw) = pw {
            cs = with_password(&cs, pw);
        }
        let mut c = connect(&cs).unwrap_or_else(|e| panic!("{user}: {e}"));
        let sys = c.identify_system().unwrap_or_else(|e| panic!("{user}: IDENTIFY_SYSTEM: {e}"));
        assert_eq!(sys.systemid, sysid, "{user}");
        assert_eq!(sys.dbname.as_deref(), Some("postgres"), "{user}");
        // A password was used exactly when the server asked for one (not under trust, even
        // when a password is given).
        assert_eq!(c.used_password(), method.is_some(), "{user}: used_password");
        // The server sees a walsender of this user.
        let row = pg
            .query_one("SELECT usename::text, backend_type FROM pg_stat_activity WHERE pid = $1", &[&c.backend_pid()])
            .await
            .unwrap_or_else(|e| panic!("{user}: pg_stat_activity: {e}"));
        assert_eq!(row.get::<_, String>(0), user);
        assert_eq!(row.get::<_, String>(1), "walsender");
        // SQL on the replication connection runs as that user.
        let rows = c.simple_query("SELECT current_user AS u").expect("SELECT current_user");
        assert_eq!(rows[0].get("u"), Some(user));
        c.close();
        // The server log names the authentication method that was used.
        if let Some(m) = method {
            let line = format!("connection authenticated: identity=\"{user}\" method={m}");
            assert!(cluster.log().contains(&line), "{user}: server log lacks {line:?}");
        }
    }
}

/// A loopback TCP port that is bound (so no cluster started meanwhile can take it) but not
/// listening, so connecting to it is refused. The port stays reserved while the fd lives.
fn closed_port() -> (std::os::fd::OwnedFd, u16) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a fd we own; the sockaddr_in is fully initialised.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::bind(fd, &addr as *const libc::sockaddr_in as *const libc::sockaddr, len);
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let mut got = len;
        let rc = libc::getsockname(fd, &mut addr as *mut libc::sockaddr_in as *mut libc::sockaddr, &mut got);
        assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
        (owned, u16::from_be(addr.sin_port))
    }
}

/// Runs a connection attempt that must fail, checking that it fails within `limit`.
fn failing(connstr: &str, limit: Duration) -> (Error, Duration) {
    let t = Instant::now();
    let r = connect(connstr);
    let took = t.elapsed();
    match r {
        Ok(c) => panic!("{connstr:?} connected (pid {}) but should fail", c.backend_pid()),
        Err(e) => {
            assert!(took < limit, "{connstr:?} failed only after {took:?} (limit {limit:?}): {e}");
            (e, took)
        }
    }
}

fn assert_server_error(e: &Error, code: &str, message: &str) {
    match e {
        Error::Server(se) => {
            assert_eq!(se.code, code, "{e}");
            assert_eq!(se.severity, "FATAL", "{e}");
            assert_eq!(se.message, message, "{e}");
            assert_eq!(e.sqlstate(), Some(code));
            let shown = e.to_string();
            assert!(shown.contains(message) && shown.contains(code), "display: {shown}");
        }
        other => panic!("expected server error {code} {message:?}, got {other:?}"),
    }
}

#[test]
fn connection_errors_are_clear_and_within_connect_timeout() {
    const TIMEOUT: u64 = 3;
    let limit = Duration::from_secs(TIMEOUT) + Duration::from_millis(1500);
    let cluster = auth_cluster(false);
    let base = |user: &str, db: &str| format!("{} connect_timeout={TIMEOUT}", cluster.connstr(user, db));

    // Wrong passwords (SCRAM and MD5): 28P01.
    let (e, _) = failing(&with_password(&base("scram_user", "postgres"), "wrong"), limit);
    assert_server_error(&e, "28P01", "password authentication failed for user \"scram_user\"");
    let (e, _) = failing(&with_password(&base("md5_user", "postgres"), "wrong"), limit);
    assert_server_error(&e, "28P01", "password authentication failed for user \"md5_user\"");

    // No password at all for a password user: refused on the client side, naming the user.
    let (e, _) = failing(&base("scram_user", "postgres"), limit);
    match &e {
        Error::Auth(m) => assert!(m.contains("scram_user") && m.contains("no password was supplied"), "{m}"),
        other => panic!("expected Error::Auth, got {other:?}"),
    }

    // Unknown user and missing database.
    let (e, _) = failing(&base("no_such_user", "postgres"), limit);
    assert_server_error(&e, "28000", "role \"no_such_user\" does not exist");
    let (e, _) = failing(&base("postgres", "no_such_db"), limit);
    assert_server_error(&e, "3D000", "database \"no_such_db\" does not exist");

    // TLS required but the server has none.
    let (e, _) = failing(&format!("{} sslmode=require", base("postgres", "postgres")), limit);
    match &e {
        Error::Tls(m) => assert!(m.contains("server does not support SSL"), "{m}"),
        other => panic!("expected Error::Tls, got {other:?}"),
    }

    // A closed loopback port: connection refused, naming the address and port.
    let (_reserved, closed) = closed_port();
    let (e, _) = failing(
        &format!("host=127.0.0.1 port={closed} user=postgres dbname=postgres connect_timeout={TIMEOUT}"),
        limit,
    );
    match &e {
        Error::Io(io) => {
            assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
            let m = e.to_string();
            assert!(m.contains(&format!("connection to server at \"127.0.0.1\", port {closed} failed")), "{m}");
            assert!(m.to_lowercase().contains("refused"), "{m}");
        }
        other => panic!("expected Error::Io, got {other:?}"),
    }

    // A host name that does not resolve.
    let (e, _) = failing(
        &format!("host=nonexistent.invalid port={closed} user=postgres dbname=postgres connect_timeout={TIMEOUT}"),
        limit,
    );
    match &e {
        Error::Io(_) => {
            let m = e.to_string();
            assert!(m.contains("could not translate host name \"nonexistent.invalid\" to address"), "{m}");
        }
        other => panic!("expected Error::Io, got {other:?}"),
    }

    // A server that accepts the TCP connection but never answers: the deadline fires.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let sport = silent.local_addr().unwrap().port();
    let (e, took) = failing(
        &format!("host=127.0.0.1 port={sport} user=postgres dbname=postgres connect_timeout=2"),
        Duration::from_millis(3500),
    );
    assert!(took >= Duration::from_millis(1900), "timed out too early: {took:?}");
    match &e {
        Error::Timeout(m) => {
            assert!(m.contains(&format!("connection to server at \"127.0.0.1\", port {sport} failed")), "{m}");
            assert!(m.contains("timeout"), "{m}");
        }
        other => panic!("expected Error::Timeout, got {other:?}"),
    }
    drop(silent);
}

// =============================================================================================
// TLS

#[tokio::test(flavor = "current_thread")]
async fn tls_connections_and_a_large_stream_over_tls() {
    let t0 = Instant::now();
    // The client's TLS is under test, against a server built with OpenSSL: the system's
    // PostgreSQL 15 whatever the version under test (the 18 used here has no OpenSSL).
    let mut cluster = Cluster::start(tls_publisher_opts()).expect("start publisher");
    let dir = cluster.dir().to_path_buf();
    openssl_cert(&dir, "server", "pgsub.test", None).unwrap();
    openssl_cert(&dir, "other", "other.test", None).unwrap();
    cluster.enable_tls(None, &[]).expect("restart with ssl");
    cluster.psql("postgres", "CREATE ROLE tls_user LOGIN REPLICATION PASSWORD 'tls secret'").unwrap();
    cluster
        .set_hba(
            "local all all trust\n\
             hostssl all tls_user 127.0.0.1/32 scram-sha-256\n\
             hostnossl all tls_user 127.0.0.1/32 reject\n\
             host all postgres 127.0.0.1/32 trust\n",
        )
        .unwrap();
    let pg = cluster.client("postgres").await.expect("client");
    let base = with_password(&format!("{} connect_timeout=5", cluster.connstr("tls_user", "postgres")), "tls secret");
    let rootcert = dir.join("server.crt");
    let ssl_of = |pid: i32| {
        let pg = &pg;
        async move {
            pg.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = $1", &[&pid])
                .await
                .expect("pg_stat_ssl")
                .get::<_, bool>(0)
        }
    };

    // sslmode=prefer (default) and require: encrypted, as the server confirms.
    for mode in ["prefer", "require"] {
        let mut c = must_connect(&format!("{base} sslmode={mode}"));
        assert!(c.uses_tls(), "{mode}");
        assert!(ssl_of(c.backend_pid()).await, "{mode}: pg_stat_ssl.ssl");
        c.identify_system().expect("IDENTIFY_SYSTEM over TLS");
        c.close();
    }
    // verify-full with the certificate as root and its name (reached through hostaddr).
    let c = must_connect(&format!(
        "{base} sslmode=verify-full host=pgsub.test hostaddr=127.0.0.1 sslrootcert={}",
        conninfo::quote_value(&rootcert.display().to_string())
    ));
    assert!(c.uses_tls() && ssl_of(c.backend_pid()).await);
    c.close();

    let limit = Duration::from_secs(5 + 1);
    // SCRAM bound to the TLS connection (SCRAM-SHA-256-PLUS, tls-server-end-point), where psql
    // (libpq) binds it too.
    let bound = format!("{base} sslmode=require channel_binding=require");
    libpq_connects(&bound).unwrap_or_else(|e| panic!("psql with channel_binding=require: {e}"));
    let c = must_connect(&bound);
    assert!(c.uses_tls() && c.used_password());
    c.close();
    // A method that cannot bind (trust): both refuse to go on, in the same words.
    let trust = format!(
        "{} connect_timeout=5 sslmode=require channel_binding=require",
        cluster.connstr("postgres", "postgres")
    );
    let libpq = libpq_connects(&trust).expect_err("psql: trust with channel_binding=require");
    let (e, _) = failing(&trust, limit);
    for text in [libpq.as_str(), &e.to_string()] {
        assert!(text.contains("channel binding required"), "libpq: {libpq}; pgsub: {e}");
    }
    // verify-full against a name the certificate does not carry.
    let (e, _) = failing(
        &format!("{base} sslmode=verify-full sslrootcert={}", conninfo::quote_value(&rootcert.display().to_string())),
        limit,
    );
    assert!(matches!(e, Error::Tls(_)), "wrong name: {e:?}");
    assert!(e.to_string().contains("127.0.0.1"), "names the server: {e}");
    // verify-ca with a root that did not sign the server's certificate.
    let (e, _) = failing(
        &format!(
            "{base} sslmode=verify-ca sslrootcert={}",
            conninfo::quote_value(&dir.join("other.crt").display().to_string())
        ),
        limit,
    );
    assert!(matches!(e, Error::Tls(_)), "wrong root: {e:?}");
    assert!(e.to_string().contains("127.0.0.1") && e.to_string().contains("certificate"), "wrong root: {e}");
    // Without TLS the hostssl-only user is rejected by pg_hba.
    let (e, _) = failing(&format!("{base} sslmode=disable"), limit);
    match &e {
        Error::Server(se) => {
            assert_eq!(se.code, "28000", "{e}");
            assert!(se.message.contains("no encryption") && se.message.contains("tls_user"), "{e}");
        }
        other => panic!("expected a pg_hba rejection, got {other:?}"),
    }

    // A ~2 MB transaction streamed over TLS arrives whole and identical to peek.
    let mut repl = must_connect(&format!("{base} sslmode=require"));
    assert!(repl.uses_tls());
    pg.batch_execute("CREATE TABLE big (id int PRIMARY KEY, v text); CREATE PUBLICATION pub FOR TABLE big")
        .await
        .unwrap();
    let slot =
        repl.create_logical_slot("tls_slot", false, SnapshotAction::NoExport, SlotOptions::default()).expect("slot");
    pg.batch_execute(
        "INSERT INTO big SELECT g, repeat(md5(g::text), 16) FROM generate_series(1, 4000) g; \
         INSERT INTO big VALUES (0, 'last')",
    )
    .await
    .unwrap();
    let opts = PgOutputOptions::for_server(repl.server_version_num(), vec!["pub".into()]);
    let peeked = peek(&pg, "tls_slot", &opts).await;
    assert_eq!(peeked.len(), 4001 + 3, "one transaction: Begin, Relation, 4001 inserts, Commit");
    repl.start_replication("tls_slot", slot.consistent_point, &opts).expect("START_REPLICATION over TLS");
    let mut keepalives = 0;
    let frames = recv_xlog(&mut repl, peeked.len(), slot.consistent_point, &mut keepalives);
    let msgs = compare_with_peek("tls", opts.proto_version, &frames, &peeked);
    let s = interpret("tls", &msgs, false);
    assert_eq!(s.events.len(), 4001);
    assert_eq!(
        s.events.last(),
        Some(&Ev::Insert { rel: "big".into(), new: vec![V::Text("0".into()), V::Text("last".into())] })
    );
    send_and_confirm(&pg, &mut repl, "tls_slot", (s.last_end, s.last_end, s.last_end), &mut keepalives).await;
    repl.end_copy().expect("end_copy over TLS");
    repl.close();
    eprintln!("tls test: {:?}", t0.elapsed());
}

/// What libpq (psql of the Debian PostgreSQL 15, built with OpenSSL) makes of a connection
/// string: Ok, or its error text.
fn libpq_connects(connstr: &str) -> Result<(), String> {
    let out = Command::new("/usr/lib/postgresql/15/bin/psql")
        .args(["-X", "-A", "-t", "-d", connstr, "-c", "SELECT 1"])
        .env_remove("PGPASSWORD")
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Certificate authentication (`cert` in pg_hba) with a client certificate signed by a test CA:
/// pgsub's client connects with `sslcert`/`sslkey` without a password, exactly when libpq (psql)
/// does — with the pair; not without a certificate; not with a key file others may read (refused
/// by both, in libpq's words); and `verify-ca` without any root certificate file is refused by
/// both instead of trusting the system's roots.
#[tokio::test(flavor = "current_thread")]
async fn client_certificate_authentication_as_libpq() {
    let mut cluster = Cluster::start(tls_publisher_opts()).expect("start publisher");
    let dir = cluster.dir().to_path_buf();
    openssl_cert(&dir, "server", "pgsub.test", None).unwrap();
    // A CA, and a client certificate for cert_user signed by it (key mode 0600).
    openssl_cert(&dir, "ca", "pgsub test CA", None).unwrap();
    openssl_cert(&dir, "client", "cert_user", Some("ca")).unwrap();
    let client_key = dir.join("client.key");
    let client_crt = dir.join("client.crt");
    cluster.enable_tls(Some("ca"), &[]).expect("restart with ssl");
    cluster.psql("postgres", "CREATE ROLE cert_user LOGIN REPLICATION").unwrap();
    cluster
        .set_hba(
            "local all all trust\n\
             hostssl all cert_user 127.0.0.1/32 cert\n\
             host all postgres 127.0.0.1/32 trust\n",
        )
        .unwrap();
    let q = |p: &Path| conninfo::quote_value(&p.display().to_string());
    let base = format!("{} connect_timeout=5 sslmode=require", cluster.connstr("cert_user", "postgres"));
    let with_pair = format!("{base} sslcert={} sslkey={}", q(&client_crt), q(&client_key));

    // With the pair: both connect, without a password.
    libpq_connects(&with_pair).unwrap_or_else(|e| panic!("psql with the client certificate: {e}"));
    let mut c = must_connect(&with_pair);
    assert!(c.uses_tls() && !c.used_password(), "certificate authentication, no password");
    c.identify_system().expect("IDENTIFY_SYSTEM as cert_user");
    c.close();

    let limit = Duration::from_secs(5 + 1);
    // Without a certificate: both are turned away by the server.
    let missing = dir.join("no-such.crt");
    let without = format!("{base} sslcert={} sslkey={}", q(&missing), q(&client_key));
    let libpq = libpq_connects(&without).expect_err("psql without a client certificate");
    let (e, _) = failing(&without, limit);
    assert!(libpq.contains("certificate") && e.to_string().contains("certificate"), "libpq: {libpq}; pgsub: {e}");

    // A key others may read: both refuse it before sending anything.
    sh(Command::new("chmod").arg("644").arg(&client_key), "chmod 644 client key");
    let libpq = libpq_connects(&with_pair).expect_err("psql with a world-readable key");
    let (e, _) = failing(&with_pair, limit);
    for text in [libpq.as_str(), &e.to_string()] {
        assert!(text.contains("has group or world access"), "libpq: {libpq}; pgsub: {e}");
    }
    sh(Command::new("chmod").arg("600").arg(&client_key), "chmod 600 client key");

    // verify-ca without any root certificate file (none given, none in this user's
    // ~/.postgresql): both refuse, neither falls back to the system's roots.
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    if !home.join(".postgresql").join("root.crt").exists() {
        let verify = with_pair.replace("sslmode=require", "sslmode=verify-ca");
        let libpq = libpq_connects(&verify).expect_err("psql verify-ca without a root file");
        let (e, _) = failing(&verify, limit);
        for text in [libpq.as_str(), &e.to_string()] {
            assert!(
                text.contains("root certificate file") && text.contains("does not exist"),
                "libpq: {libpq}; pgsub: {e}"
            );
        }
        // With the server's (self-signed) certificate as root, verify-ca passes for both.
        let verify = format!("{verify} sslrootcert={}", q(&dir.join("server.crt")));
        libpq_connects(&verify).unwrap_or_else(|e| panic!("psql verify-ca with the root: {e}"));
        must_connect(&verify).close();
    }
}

/// psql's outcome for a connection string, without a terminal (OpenSSL cannot prompt for a key
/// passphrase, as in a server process): Ok, or its error text.
fn libpq_connects_detached(connstr: &str) -> Result<(), String> {
    let out = Command::new("setsid")
        .args(["-w", "/usr/lib/postgresql/15/bin/psql", "-X", "-A", "-t", "-d", connstr, "-c", "SELECT 1"])
        .env_remove("PGPASSWORD")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The TLS settings libpq has beyond sslmode, each compared with psql (libpq) case by case
/// against a publisher whose certificate a test CA signed: an encrypted client key
/// (`sslpassword`: right, wrong, missing), revocation lists (`sslcrl`, `sslcrldir`: revoked is
/// refused, a list that does not name the certificate passes, a list file that does not exist is
/// ignored), and the protocol version bounds against a server that speaks TLSv1.3 only.
#[tokio::test(flavor = "current_thread")]
async fn encrypted_keys_revocation_lists_and_tls_versions_as_libpq() {
    let mut cluster = Cluster::start(tls_publisher_opts()).expect("start publisher");
    let dir = cluster.dir().to_path_buf();
    openssl_cert(&dir, "ca", "pgsub test CA", None).unwrap();
    openssl_server_cert(&dir, "server", "pgsub.test", "ca").unwrap();
    openssl_server_cert(&dir, "other", "other.test", "ca").unwrap();
    openssl_cert(&dir, "client", "cert_user", Some("ca")).unwrap();
    // The client's key encrypted as `openssl pkcs8 -topk8 -v2 aes256` writes it.
    let enc_key = dir.join("client.enc.key");
    sh(
        Command::new("openssl")
            .args(["pkcs8", "-topk8", "-v2", "aes256", "-passout", "pass:key pass 42", "-in"])
            .arg(dir.join("client.key"))
            .arg("-out")
            .arg(&enc_key),
        "openssl pkcs8 -topk8",
    );
    sh(Command::new("chmod").arg("600").arg(&enc_key), "chmod");
    // Lists: one revoking the server's certificate, one revoking another; a directory holding
    // the first under OpenSSL's hashed name (`openssl rehash`), as sslcrldir wants.
    let revoked = openssl_crl(&dir, "ca", &["server"], "revoked.crl").unwrap();
    let clean = openssl_crl(&dir, "ca", &["other"], "clean.crl").unwrap();
    let crldir = dir.join("crls");
    std::fs::create_dir_all(&crldir).unwrap();
    std::fs::copy(&revoked, crldir.join("revoked.pem")).unwrap();
    sh(Command::new("openssl").arg("rehash").arg(&crldir), "openssl rehash");
    cluster.enable_tls(Some("ca"), &["ssl_min_protocol_version = 'TLSv1.3'"]).expect("restart with ssl");
    cluster.psql("postgres", "CREATE ROLE cert_user LOGIN REPLICATION").unwrap();
    cluster
        .set_hba(
            "local all all trust\n\
             hostssl all cert_user 127.0.0.1/32 cert\n\
             host all postgres 127.0.0.1/32 trust\n",
        )
        .unwrap();
    let q = |p: &Path| conninfo::quote_value(&p.display().to_string());
    let base = format!(
        "{} connect_timeout=5 sslmode=verify-ca sslrootcert={} sslcert={}",
        cluster.connstr("cert_user", "postgres"),
        q(&dir.join("ca.crt")),
        q(&dir.join("client.crt"))
    );
    let limit = Duration::from_secs(5 + 1);
    let both_connect = |label: &str, connstr: &str| {
        libpq_connects_detached(connstr).unwrap_or_else(|e| panic!("{label}: psql: {e}"));
        let mut c = connect(connstr).unwrap_or_else(|e| panic!("{label}: pgsub: {e}"));
        assert!(c.uses_tls() && !c.used_password(), "{label}");
        c.identify_system().unwrap_or_else(|e| panic!("{label}: IDENTIFY_SYSTEM: {e}"));
        c.close();
    };
    let both_fail = |label: &str, connstr: &str, libpq_says: &str, pgsub_says: &str| {
        let libpq = libpq_connects_detached(connstr).expect_err(&format!("{label}: psql connected"));
        let (e, _) = failing(connstr, limit);
        assert!(libpq.contains(libpq_says), "{label}: psql said: {libpq}");
        assert!(e.to_string().to_lowercase().contains(&pgsub_says.to_lowercase()), "{label}: pgsub said: {e}");
    };

    // sslpassword.
    let keyed = format!("{base} sslkey={}", q(&enc_key));
    both_connect("right sslpassword", &format!("{keyed} sslpassword='key pass 42'"));
    both_fail(
        "wrong sslpassword",
        &format!("{keyed} sslpassword=wrong"),
        "could not load private key file",
        "bad decrypt",
    );
    both_fail("no sslpassword", &keyed, "could not load private key file", "could not load private key file");
    let plain = format!("{base} sslkey={}", q(&dir.join("client.key")));

    // Revocation lists: only checked along a root file, as the chain is.
    both_connect("no list", &plain);
    both_fail("revoked (sslcrl)", &format!("{plain} sslcrl={}", q(&revoked)), "certificate", "revoked");
    both_fail("revoked (sslcrldir)", &format!("{plain} sslcrldir={}", q(&crldir)), "certificate", "revoked");
    both_connect("a list revoking another certificate", &format!("{plain} sslcrl={}", q(&clean)));
    both_connect("a list file that does not exist", &format!("{plain} sslcrl={}", q(&dir.join("none.crl"))));
    // require with a root file verifies the chain, so the list applies too.
    both_fail(
        "revoked under require",
        &format!("{} sslcrl={}", plain.replace("sslmode=verify-ca", "sslmode=require"), q(&revoked)),
        "certificate",
        "revoked",
    );

    // Protocol versions: the server speaks TLSv1.3 only.
    both_connect("min TLSv1.3", &format!("{plain} ssl_min_protocol_version=TLSv1.3"));
    both_fail(
        "max TLSv1.2 against a TLSv1.3 server",
        &format!("{plain} ssl_max_protocol_version=TLSv1.2"),
        "SSL error",
        "protocol",
    );
    // An empty range: both refuse the string itself.
    let empty = format!("{plain} ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2");
    let libpq = libpq_connects_detached(&empty).expect_err("psql with an empty range");
    let e = conninfo::parse(&empty).expect_err("pgsub with an empty range").to_string();
    for text in [libpq.as_str(), e.as_str()] {
        assert!(text.contains("invalid SSL protocol version range"), "psql: {libpq}; pgsub: {e}");
    }
}

/// A receive low-water mark raised for the stream (as the apply worker does while a stream is in
/// full flow, `pgsub.receive_batch`) does not hold back the end of the stream: `end_copy` and a
/// query after it complete, over TCP, where the mark holds readiness back. (A table
/// synchronization worker ending its catch-up this way waited for good.)
#[test]
fn a_raised_receive_low_water_mark_does_not_hold_up_the_end_of_a_stream() {
    let cluster = Cluster::start(ClusterOpts::publisher()).expect("start publisher");
    cluster.psql("postgres", "CREATE TABLE lw (id int); CREATE PUBLICATION lwp FOR TABLE lw").unwrap();
    let connstr = cluster.connstr("postgres", "postgres");
    let (tx, rx) = std::sync::mpsc::channel();
    // The client is not Send: all of it on one thread, watched from here.
    std::thread::spawn(move || {
        let mut repl = must_connect(&connstr);
        let v = repl.server_version_num();
        let slot =
            repl.create_logical_slot("lw_slot", false, SnapshotAction::NoExport, SlotOptions::default()).expect("slot");
        repl.start_replication("lw_slot", slot.consistent_point, &PgOutputOptions::for_server(v, vec!["lwp".into()]))
            .expect("START_REPLICATION");
        repl.set_receive_low_water(1 << 20).expect("raise the mark");
        let ended = repl.end_copy().map_err(|e| e.to_string());
        let queried = ended.clone().and_then(|_| {
            repl.simple_query("SELECT 1 AS one")
                .map_err(|e| e.to_string())
                .map(|rows| rows[0].get("one").map(str::to_string))
        });
        let _ = tx.send((ended, queried));
    });
    let (ended, queried) =
        rx.recv_timeout(Duration::from_secs(30)).expect("end_copy waited 30 s for replies held back by the mark");
    assert_eq!(ended, Ok(()));
    assert_eq!(queried, Ok(Some("1".to_string())));
}
