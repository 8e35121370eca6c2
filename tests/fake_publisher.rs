//! Hostile and broken peers for pgsub's apply worker, in plain std::net with threads:
//!
//! * [`FakePublisher`] — a tiny server that speaks just enough of the PostgreSQL protocol for the
//!   worker: answers SSLRequest/GSSENCRequest with 'N', sends AuthenticationOk, ParameterStatus
//!   (`server_version` 15.x), BackendKeyData and ReadyForQuery, answers `START_REPLICATION` with
//!   CopyBothResponse followed by whatever a [`Script`] returns for that session (recorded frames
//!   with flipped bytes, hand-made hostile messages, …), and any other query with an ERROR.
//! * [`SilentServer`] — accepts TCP connections and never says a word.
//! * [`Proxy`] — forwards TCP to a real server and can be frozen (accepts, forwards nothing, keeps
//!   every socket open: the network went quiet) and thawed.
//! * [`capture`] — records a real pgoutput stream from a publisher with `pgsub_proto::client`.
//!
//! Every server runs on 127.0.0.1 on a port of its own; dropping it stops its threads (they poll
//! a stop flag at least every 100 ms) and joins them, so nothing outlives the test.
//!
//! The `sleep`s in this file are the poll intervals of the peers' own non-blocking loops (accept,
//! drain, frozen proxy) and the pauses a [`Script`] asks for (`Step::Sleep`): how the fake peers
//! behave, not a test waiting for a condition (the tests wait through the kit in harness.rs).
#![allow(dead_code)]

use pgsub_proto::client::{Client, Interest, PgOutputOptions, PollWait, Wait};
use pgsub_proto::frame::ReplicationFrame;
use pgsub_proto::pgoutput::{Decoder, LogicalMessage};
use pgsub_proto::Lsn;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(100);

// =============================================================================================
// Backend message encoding

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 5);
    v.push(tag);
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cstr(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(s.as_bytes());
    v.push(0);
}

pub fn auth_ok() -> Vec<u8> {
    msg(b'R', &0u32.to_be_bytes())
}

pub fn parameter_status(name: &str, value: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, value);
    msg(b'S', &b)
}

pub fn backend_key_data(pid: u32) -> Vec<u8> {
    let mut b = pid.to_be_bytes().to_vec();
    b.extend_from_slice(&0x5ec2e7u32.to_be_bytes());
    msg(b'K', &b)
}

pub fn ready_for_query() -> Vec<u8> {
    msg(b'Z', b"I")
}

pub fn error_response(code: &str, message: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (t, v) in [(b'S', "ERROR"), (b'V', "ERROR"), (b'C', code), (b'M', message)] {
        b.push(t);
        cstr(&mut b, v);
    }
    b.push(0);
    msg(b'E', &b)
}

pub fn command_complete(tag: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, tag);
    msg(b'C', &b)
}

pub fn copy_both_response() -> Vec<u8> {
    msg(b'W', &[0, 0, 0])
}

/// A CopyData message carrying `payload`.
pub fn copy_data(payload: &[u8]) -> Vec<u8> {
    msg(b'd', payload)
}

/// The CopyData payload of an XLogData frame.
pub fn xlog_payload(wal_start: u64, wal_end: u64, data: &[u8]) -> Vec<u8> {
    let mut v = vec![b'w'];
    v.extend_from_slice(&wal_start.to_be_bytes());
    v.extend_from_slice(&wal_end.to_be_bytes());
    v.extend_from_slice(&pg_now().to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// A whole CopyData(XLogData) message.
pub fn xlog_data(wal_start: u64, wal_end: u64, data: &[u8]) -> Vec<u8> {
    copy_data(&xlog_payload(wal_start, wal_end, data))
}

/// A whole CopyData(keepalive) message.
pub fn keepalive(wal_end: u64, reply: bool) -> Vec<u8> {
    let mut v = vec![b'k'];
    v.extend_from_slice(&wal_end.to_be_bytes());
    v.extend_from_slice(&pg_now().to_be_bytes());
    v.push(u8::from(reply));
    copy_data(&v)
}

/// Now in PostgreSQL's clock: µs since 2000-01-01 UTC.
pub fn pg_now() -> i64 {
    let unix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
    unix - 946_684_800_000_000
}

// =============================================================================================
// pgoutput message builders (protocol version 1–3 layouts, not streamed)

#[derive(Default, Clone)]
pub struct W(pub Vec<u8>);

impl W {
    pub fn tag(t: u8) -> Self {
        W(vec![t])
    }
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn s(mut self, v: &str) -> Self {
        self.0.extend_from_slice(v.as_bytes());
        self.0.push(0);
        self
    }
    pub fn raw(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    /// A text value ('t', length, bytes).
    pub fn text(self, v: &[u8]) -> Self {
        self.u8(b't').i32(v.len() as i32).raw(v)
    }
    pub fn done(self) -> Vec<u8> {
        self.0
    }
}

pub fn begin(final_lsn: u64, xid: u32) -> Vec<u8> {
    W::tag(b'B').u64(final_lsn).u64(pg_now() as u64).u32(xid).done()
}

pub fn commit(commit_lsn: u64, end_lsn: u64) -> Vec<u8> {
    W::tag(b'C').u8(0).u64(commit_lsn).u64(end_lsn).u64(pg_now() as u64).done()
}

/// RELATION for `schema.name` with columns (name, type oid, is_key), replica identity default.
pub fn relation(oid: u32, schema: &str, name: &str, cols: &[(&str, u32, bool)]) -> Vec<u8> {
    let mut w = W::tag(b'R').u32(oid).s(schema).s(name).u8(b'd').u16(cols.len() as u16);
    for (n, t, key) in cols {
        w = w.u8(u8::from(*key)).s(n).u32(*t).i32(-1);
    }
    w.done()
}

/// INSERT of a tuple of text values (None = NULL).
pub fn insert_text(oid: u32, vals: &[Option<&[u8]>]) -> Vec<u8> {
    let mut w = W::tag(b'I').u32(oid).u8(b'N').u16(vals.len() as u16);
    for v in vals {
        w = match v {
            Some(b) => w.text(b),
            None => w.u8(b'n'),
        };
    }
    w.done()
}

// =============================================================================================
// The fake publisher

/// What one replication session sends after CopyBothResponse: raw protocol bytes (already
/// framed, e.g. from [`xlog_data`]), pauses, and how it ends.
#[derive(Clone, Debug)]
pub enum Step {
    Send(Vec<u8>),
    Sleep(Duration),
    /// Close the socket (the default when the steps run out).
    Close,
    /// Keep the socket open, sending nothing more, until the client goes away or the server stops.
    Hold,
    /// As the first step: START_REPLICATION is never answered (no CopyBothResponse); the socket
    /// stays open, silent, like [`Step::Hold`]. Elsewhere it is the same as `Hold`.
    Unanswered,
}

/// Steps for the n-th START_REPLICATION session (0-based).
pub type Script = Arc<dyn Fn(usize) -> Vec<Step> + Send + Sync>;

#[derive(Default)]
pub struct Stats {
    /// TCP connections accepted.
    pub connections: AtomicUsize,
    /// START_REPLICATION sessions served.
    pub sessions: AtomicUsize,
    /// Every query the clients sent, in order.
    pub queries: Mutex<Vec<String>>,
    /// Frames a client sent inside CopyBoth (standby status updates) — counted only.
    pub copy_data_in: AtomicUsize,
}

pub struct FakePublisher {
    port: u16,
    stop: Arc<AtomicBool>,
    pub stats: Arc<Stats>,
    accept: Option<JoinHandle<()>>,
}

impl FakePublisher {
    /// Starts a fake publisher whose replication sessions follow `script`.
    pub fn start(script: Script) -> FakePublisher {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake publisher");
        let port = listener.local_addr().expect("local_addr").port();
        listener.set_nonblocking(true).expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let accept = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::spawn(move || {
                let mut handlers: Vec<JoinHandle<()>> = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((sock, _)) => {
                            stats.connections.fetch_add(1, Ordering::SeqCst);
                            let (stop, stats, script) = (stop.clone(), stats.clone(), script.clone());
                            handlers.push(std::thread::spawn(move || {
                                let _ = serve(sock, &stop, &stats, &script);
                            }));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                    handlers.retain(|h| !h.is_finished());
                }
                for h in handlers {
                    let _ = h.join();
                }
            })
        };
        FakePublisher { port, stop, stats, accept: Some(accept) }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A conninfo for the worker (no TLS negotiation needed, but `prefer` works too).
    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} dbname=postgres user=postgres", self.port)
    }

    pub fn sessions(&self) -> usize {
        self.stats.sessions.load(Ordering::SeqCst)
    }
}

impl Drop for FakePublisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Reads exactly `buf.len()` bytes, giving up when the server is stopping.
fn read_exact_stoppable(sock: &mut TcpStream, buf: &mut [u8], stop: &AtomicBool) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        if stop.load(Ordering::SeqCst) {
            return Err(std::io::Error::new(ErrorKind::Interrupted, "stopping"));
        }
        match sock.read(&mut buf[got..]) {
            Ok(0) => return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "client went away")),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One frontend message after startup: (tag, body).
fn read_msg(sock: &mut TcpStream, stop: &AtomicBool) -> std::io::Result<(u8, Vec<u8>)> {
    let mut hdr = [0u8; 5];
    read_exact_stoppable(sock, &mut hdr, stop)?;
    let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
    if !(4..=(1 << 24)).contains(&len) {
        return Err(std::io::Error::new(ErrorKind::InvalidData, "bad frontend message length"));
    }
    let mut body = vec![0u8; len - 4];
    read_exact_stoppable(sock, &mut body, stop)?;
    Ok((hdr[0], body))
}

fn serve(mut sock: TcpStream, stop: &AtomicBool, stats: &Stats, script: &Script) -> std::io::Result<()> {
    sock.set_read_timeout(Some(POLL))?;
    sock.set_nodelay(true)?;
    // Startup: SSLRequest / GSSENCRequest are refused with 'N', then the StartupMessage.
    loop {
        let mut len = [0u8; 4];
        read_exact_stoppable(&mut sock, &mut len, stop)?;
        let len = u32::from_be_bytes(len) as usize;
        if !(8..=10_000).contains(&len) {
            return Err(std::io::Error::new(ErrorKind::InvalidData, "bad startup length"));
        }
        let mut body = vec![0u8; len - 4];
        read_exact_stoppable(&mut sock, &mut body, stop)?;
        let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        if code == 80877103 || code == 80877104 {
            sock.write_all(b"N")?;
            continue;
        }
        break;
    }
    let mut hello = auth_ok();
    for (k, v) in [
        ("server_version", "15.4"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        hello.extend(parameter_status(k, v));
    }
    hello.extend(backend_key_data(4242));
    hello.extend(ready_for_query());
    sock.write_all(&hello)?;
    loop {
        let (tag, body) = read_msg(&mut sock, stop)?;
        match tag {
            b'Q' => {
                let q = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned();
                if let Ok(mut g) = stats.queries.lock() {
                    g.push(q.clone());
                }
                if q.trim_start().to_ascii_uppercase().starts_with("START_REPLICATION") {
                    let n = stats.sessions.fetch_add(1, Ordering::SeqCst);
                    let steps = script(n);
                    if !matches!(steps.first(), Some(Step::Unanswered)) {
                        sock.write_all(&copy_both_response())?;
                    }
                    return run_session(sock, stop, stats, &steps);
                }
                let mut out = error_response("0A000", "the fake publisher only streams");
                out.extend(ready_for_query());
                sock.write_all(&out)?;
            }
            b'X' => return Ok(()),
            _ => {
                let mut out = error_response("08P01", "unexpected message");
                out.extend(ready_for_query());
                sock.write_all(&out)?;
            }
        }
    }
}

/// Drains what the client sent (status updates) without blocking.
fn drain_client(sock: &mut TcpStream, stats: &Stats) -> std::io::Result<bool> {
    sock.set_nonblocking(true)?;
    let mut buf = [0u8; 4096];
    let mut open = true;
    loop {
        match sock.read(&mut buf) {
            Ok(0) => {
                open = false;
                break;
            }
            Ok(n) => {
                stats.copy_data_in.fetch_add(buf[..n].iter().filter(|b| **b == b'd').count().min(1), Ordering::SeqCst);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => {
                open = false;
                break;
            }
        }
    }
    sock.set_nonblocking(false)?;
    Ok(open)
}

fn run_session(mut sock: TcpStream, stop: &AtomicBool, stats: &Stats, steps: &[Step]) -> std::io::Result<()> {
    for step in steps {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        match step {
            Step::Send(bytes) => {
                sock.set_write_timeout(Some(Duration::from_secs(10)))?;
                if sock.write_all(bytes).is_err() {
                    return Ok(()); // the worker hung up (it refused what we sent): fine
                }
            }
            Step::Sleep(d) => {
                let until = Instant::now() + *d;
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    if !drain_client(&mut sock, stats)? {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Step::Close => {
                let _ = sock.shutdown(Shutdown::Both);
                return Ok(());
            }
            Step::Hold | Step::Unanswered => {
                while !stop.load(Ordering::SeqCst) {
                    if !drain_client(&mut sock, stats)? {
                        return Ok(());
                    }
                    std::thread::sleep(POLL);
                }
                return Ok(());
            }
        }
    }
    let _ = sock.shutdown(Shutdown::Both);
    Ok(())
}

// =============================================================================================
// A server that accepts and then says nothing

pub struct SilentServer {
    port: u16,
    stop: Arc<AtomicBool>,
    pub accepted: Arc<AtomicUsize>,
    /// When the latest connection was accepted.
    pub last_accept: Arc<Mutex<Option<Instant>>>,
    thread: Option<JoinHandle<()>>,
}

impl SilentServer {
    pub fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind silent server");
        let port = listener.local_addr().expect("local_addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let last_accept = Arc::new(Mutex::new(None));
        let thread = {
            let (stop, accepted, last_accept) = (stop.clone(), accepted.clone(), last_accept.clone());
            std::thread::spawn(move || {
                let mut held: Vec<TcpStream> = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            if let Ok(mut g) = last_accept.lock() {
                                *g = Some(Instant::now());
                            }
                            held.push(s);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
                drop(held);
            })
        };
        SilentServer { port, stop, accepted, last_accept, thread: Some(thread) }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

// =============================================================================================
// A TCP proxy that can be frozen

pub struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    pub accepted: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Forwards 127.0.0.1:<port()> to 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("local_addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, frozen, accepted) = (stop.clone(), frozen.clone(), accepted.clone());
            std::thread::spawn(move || {
                let mut pumps: Vec<JoinHandle<()>> = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            let (stop, frozen) = (stop.clone(), frozen.clone());
                            pumps.push(std::thread::spawn(move || proxy_conn(client, upstream, &stop, &frozen)));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                    pumps.retain(|h| !h.is_finished());
                }
                for h in pumps {
                    let _ = h.join();
                }
            })
        };
        Proxy { port, stop, frozen, accepted, thread: Some(thread) }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// From now on nothing is forwarded in either direction and no upstream connection is made;
    /// every socket stays open (packets vanish, as on a broken network path).
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

fn proxy_conn(mut client: TcpStream, upstream: u16, stop: &AtomicBool, frozen: &AtomicBool) {
    // A connection made while frozen waits (silently) for the thaw before going upstream.
    while frozen.load(Ordering::SeqCst) {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let _ = client.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = server.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    // One thread, two directions, polling with short read timeouts: simple and bounded.
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if frozen.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let mut moved = false;
        for dir in 0..2 {
            let (src, dst) = if dir == 0 { (&mut client, &mut server) } else { (&mut server, &mut client) };
            match src.read(&mut buf) {
                Ok(0) => {
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                    return;
                }
                Ok(n) => {
                    moved = true;
                    if dst.write_all(&buf[..n]).is_err() {
                        let _ = client.shutdown(Shutdown::Both);
                        let _ = server.shutdown(Shutdown::Both);
                        return;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
                Err(_) => {
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
        let _ = moved;
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

// =============================================================================================
// Capturing a real stream

/// One XLogData frame of a real stream.
#[derive(Clone, Debug)]
pub struct CapturedFrame {
    pub wal_start: Lsn,
    pub wal_end: Lsn,
    /// The pgoutput message.
    pub data: Vec<u8>,
    /// The message sits inside a Stream Start … Stream Stop block.
    pub in_stream: bool,
}

/// Everything a capture saw: the XLogData frames and the raw CopyData payloads of keepalives.
#[derive(Clone, Debug, Default)]
pub struct Capture {
    pub frames: Vec<CapturedFrame>,
    pub keepalives: Vec<Vec<u8>>,
}

/// Streams `slot` from `start` with `opts` and records every frame until a non-transactional
/// logical message with prefix `sentinel` arrives (the caller emits it with
/// `pg_logical_emit_message(false, sentinel, '')` after its workload; `opts.messages` must be
/// on). Panics after `limit`.
pub fn capture(
    connstr: &str,
    slot: &str,
    start: Lsn,
    opts: &PgOutputOptions,
    sentinel: &str,
    limit: Duration,
) -> Capture {
    let cfg = pgsub_proto::conninfo::parse_with_env(connstr, &|_| None).expect("capture conninfo");
    let mut c = Client::connect(&cfg, true, Box::new(PollWait)).expect("capture: connect");
    c.start_replication(slot, start, opts).expect("capture: START_REPLICATION");
    let mut dec = Decoder::new(opts.proto_version);
    let mut out = Capture::default();
    let deadline = Instant::now() + limit;
    let mut last = Lsn(0);
    loop {
        assert!(Instant::now() < deadline, "capture: sentinel {sentinel:?} not seen within {limit:?}");
        match c.recv_frame().expect("capture: recv_frame") {
            Some(ReplicationFrame::XLogData { wal_start, wal_end, data, .. }) => {
                let in_stream_before = dec.in_stream();
                let m = dec.decode(data.clone()).expect("capture: a real message decodes");
                let in_stream = in_stream_before || dec.in_stream();
                if wal_start.0 > last.0 {
                    last = wal_start;
                }
                out.frames.push(CapturedFrame { wal_start, wal_end, data: data.to_vec(), in_stream });
                if let LogicalMessage::Message(m) = &m {
                    if m.prefix == sentinel && !m.transactional {
                        break;
                    }
                }
            }
            Some(ReplicationFrame::Keepalive { wal_end, send_time, reply_requested }) => {
                let mut k = vec![b'k'];
                k.extend_from_slice(&wal_end.0.to_be_bytes());
                k.extend_from_slice(&send_time.to_be_bytes());
                k.push(u8::from(reply_requested));
                out.keepalives.push(k);
                if reply_requested {
                    let _ = c.send_status(last, last, last, false);
                }
            }
            None => {
                let _ = PollWait.wait(c.raw_fd(), Interest::Read, Some(Instant::now() + Duration::from_millis(200)));
            }
        }
    }
    // Confirm what we consumed so a later START_REPLICATION does not resend it.
    let _ = c.send_status(last, last, last, false);
    let _ = c.end_copy();
    c.close();
    out
}

/// A deterministic xorshift generator (seeded per test; printed so a failure can be replayed).
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    /// Uniform in [lo, hi).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

/// A seed from the clock unless `PGSUB_TEST_SEED` is set.
pub fn seed() -> u64 {
    std::env::var("PGSUB_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    })
}
