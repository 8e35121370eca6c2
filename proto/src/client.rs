//! The walsender client: connect (TCP or Unix socket, TLS via rustls), authenticate (trust,
//! cleartext, MD5, SCRAM-SHA-256), run plain SQL and replication commands (IDENTIFY_SYSTEM,
//! CREATE/DROP_REPLICATION_SLOT), stream `COPY ... TO STDOUT`, and run the CopyBoth phase of
//! START_REPLICATION. Owns [`Client`], [`Error`], the [`Wait`] abstraction and the pgoutput
//! option rendering; the CopyBoth payload format is `crate::frame`, the connection string is
//! `crate::conninfo`.
//!
//! # Non-blocking design
//!
//! The socket is put in non-blocking mode when it is created and stays that way. No call in
//! this module ever blocks in the kernel: every read or write that would block instead calls
//! the caller's [`Wait`] implementation with the socket's fd, the readiness needed
//! ([`Interest::Read`]/[`Interest::Write`]) and a deadline, then retries. So the *waiter* is the
//! only place where time passes, and it decides how:
//!
//! * [`PollWait`] uses poll(2) — for tools, examples and tests;
//! * the background worker supplies a waiter built on `WaitLatchOrSocket` that returns
//!   [`Error::Interrupted`] when the process is asked to stop, which then surfaces from whatever
//!   protocol step was waiting (connect, TLS handshake, authentication, a query, COPY).
//!
//! The deadline is `connect_timeout` during connect/TLS/authentication, the caller's timeout
//! for the answer to START_REPLICATION ([`Client::start_replication_within`]) and `None`
//! otherwise (commands are bounded by the waiter's own interrupt handling, as in walreceiver).
//!
//! In the streaming phase [`Client::recv_frame`] does not wait at all: it parses what is already
//! buffered, reads what the socket (and, with TLS, rustls's decrypted buffer) has right now, and
//! returns `Ok(None)` only when neither holds a complete message. The worker then waits on its
//! latch and [`Client::raw_fd`] itself. Because TLS plaintext may sit inside rustls while the
//! socket is empty, callers must keep calling `recv_frame` until it returns `None` before
//! waiting on the socket.
//!
//! # Connection state
//!
//! A command that fails with anything other than a server `ErrorResponse` (I/O, TLS, timeout,
//! interrupt, protocol violation, or an error returned by a `copy_out` callback) can leave the
//! protocol mid-message; the client then refuses further commands ("connection is no longer
//! usable") and must be dropped. A server `ErrorResponse` is read through to ReadyForQuery, so
//! the connection stays usable.

mod tls;
mod transport;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{Header, Message};
use postgres_protocol::message::frontend;

use crate::conninfo::{Config, ConnInfoError, Host, SslMode};
use crate::frame::{encode_standby_status, now_pg_micros, parse_frame, ReplicationFrame};
use crate::lsn::Lsn;
use transport::{Sock, Started, Transport};

// =============================================================================================
// Errors

/// A server `ErrorResponse` or `NoticeResponse`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    /// Non-localized severity (`ERROR`, `FATAL`, `PANIC`, `WARNING`, `NOTICE`, ...) when the
    /// server sends it (9.6+), else the localized one.
    pub severity: String,
    /// SQLSTATE (e.g. `28P01`).
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )?;
        if let Some(d) = &self.detail {
            write!(f, "\nDETAIL: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\nHINT: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}

/// Everything that can go wrong talking to a server.
#[derive(Debug)]
pub enum Error {
    /// The connection string is invalid.
    Config(ConnInfoError),
    /// A socket operation failed; the message says which and with whom.
    Io(io::Error),
    /// TLS negotiation or certificate verification failed, or TLS was required but refused.
    Tls(String),
    /// Authentication could not be carried out on the client side (no password, unsupported
    /// method, bad SCRAM server signature). A password the server rejects is `Server` (28P01).
    Auth(String),
    /// The server sent an ErrorResponse.
    Server(ServerError),
    /// The server sent something this client does not understand, or the API was misused
    /// (e.g. a query while a replication stream is active).
    Protocol(String),
    /// A deadline passed while waiting (connect_timeout).
    Timeout(String),
    /// The waiter was interrupted (e.g. SIGTERM of the worker).
    Interrupted,
    /// The server closed the connection — or, in the replication stream, ended it with CopyDone
    /// (then [`Client::end_copy`] can still finish the exchange cleanly).
    Closed,
}

impl Error {
    /// The SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "invalid connection string: {e}"),
            Error::Io(e) => write!(f, "{e}"),
            Error::Tls(m) => write!(f, "TLS error: {m}"),
            Error::Auth(m) => write!(f, "authentication error: {m}"),
            Error::Server(e) => write!(f, "{e}"),
            Error::Protocol(m) => write!(f, "protocol error: {m}"),
            Error::Timeout(m) => write!(f, "{m}"),
            Error::Interrupted => write!(f, "interrupted while waiting for the server"),
            Error::Closed => write!(f, "server closed the connection"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::Io(e) => Some(e),
            Error::Server(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ConnInfoError> for Error {
    fn from(e: ConnInfoError) -> Self {
        Error::Config(e)
    }
}

// =============================================================================================
// Waiting

/// The readiness a blocked operation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interest {
    Read,
    Write,
}

/// Blocks until `fd` is ready for `interest`, the deadline passes ([`Error::Timeout`]) or the
/// waiter decides to give up ([`Error::Interrupted`]). Spurious returns are fine: the client
/// retries the operation and calls again if it still would block.
pub trait Wait {
    fn wait(
        &mut self,
        fd: RawFd,
        interest: Interest,
        deadline: Option<Instant>,
    ) -> Result<(), Error>;
}

/// A [`Wait`] on poll(2). Retries on EINTR, so it is never interrupted.
#[derive(Clone, Copy, Debug, Default)]
pub struct PollWait;

impl Wait for PollWait {
    fn wait(
        &mut self,
        fd: RawFd,
        interest: Interest,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        loop {
            let timeout_ms: libc::c_int = match deadline {
                None => -1,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(Error::Timeout("timeout expired".into()));
                    }
                    let left = d - now;
                    // Round up so that we never wake just before the deadline and spin.
                    let ms = left.as_micros().div_ceil(1000);
                    ms.min(i32::MAX as u128) as libc::c_int
                }
            };
            let mut pfd = libc::pollfd {
                fd,
                events: match interest {
                    Interest::Read => libc::POLLIN,
                    Interest::Write => libc::POLLOUT,
                },
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::Io(io::Error::new(
                    e.kind(),
                    format!("poll() failed: {e}"),
                )));
            }
            if rc > 0 {
                // Readable/writable, or POLLERR/POLLHUP: the retried operation will report it.
                return Ok(());
            }
            // rc == 0: timeout; the loop re-checks the deadline.
        }
    }
}

// =============================================================================================
// Results and options

/// One row of a simple-query result, all values in text format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub columns: Vec<String>,
    pub values: Vec<Option<String>>,
}

impl Row {
    /// The value of the first column called `name` (`None` if NULL or no such column).
    pub fn get(&self, name: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == name)?;
        self.values.get(i)?.as_deref()
    }
}

/// Result of IDENTIFY_SYSTEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemInfo {
    pub systemid: String,
    pub timeline: u32,
    pub xlogpos: Lsn,
    /// `None` for a physical replication connection.
    pub dbname: Option<String>,
}

/// Result of CREATE_REPLICATION_SLOT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    pub slot_name: String,
    pub consistent_point: Lsn,
    pub snapshot_name: Option<String>,
}

/// What CREATE_REPLICATION_SLOT does with the snapshot it builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotAction {
    /// Export it (usable by other sessions with SET TRANSACTION SNAPSHOT until the next
    /// command on this connection).
    Export,
    /// Use it in the current transaction (must be the first command of a REPEATABLE READ
    /// transaction on this connection).
    Use,
    /// Neither.
    NoExport,
}

/// pgoutput's `streaming` option.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Streaming {
    #[default]
    Off,
    On,
    Parallel,
}

/// Options for START_REPLICATION with pgoutput.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgOutputOptions {
    pub proto_version: u32,
    pub publication_names: Vec<String>,
    pub binary: bool,
    pub messages: bool,
    pub streaming: Streaming,
    pub two_phase: bool,
    /// `none` or `any` (PostgreSQL 16+).
    pub origin: Option<String>,
}

impl PgOutputOptions {
    /// The newest protocol the server speaks, every optional feature off.
    pub fn for_server(server_version_num: u32, publications: Vec<String>) -> Self {
        let proto_version = match server_version_num {
            v if v >= 160000 => 4,
            v if v >= 150000 => 3,
            v if v >= 140000 => 2,
            _ => 1,
        };
        PgOutputOptions {
            proto_version,
            publication_names: publications,
            binary: false,
            messages: false,
            streaming: Streaming::Off,
            two_phase: false,
            origin: None,
        }
    }

    /// The parenthesised option list of START_REPLICATION, e.g.
    /// `(proto_version '3', publication_names '"a","b""c"')`.
    ///
    /// Options are only sent when set and when the protocol version (which
    /// [`PgOutputOptions::for_server`] derives from the server version) implies server support:
    /// `binary`, `messages`, `streaming` need version ≥ 2 (PostgreSQL 14), `two_phase` ≥ 3 (15),
    /// `origin` and `streaming 'parallel'` ≥ 4 (16); `parallel` degrades to `on` below 4.
    pub fn to_sql_options(&self) -> String {
        let pubs = self
            .publication_names
            .iter()
            .map(|p| quote_ident(p))
            .collect::<Vec<_>>()
            .join(",");
        let mut opts = vec![
            format!("proto_version '{}'", self.proto_version),
            format!("publication_names {}", quote_literal(&pubs)),
        ];
        let v = self.proto_version;
        if v >= 2 && self.binary {
            opts.push("binary 'true'".into());
        }
        if v >= 2 && self.messages {
            opts.push("messages 'true'".into());
        }
        if v >= 2 {
            match self.streaming {
                Streaming::Off => {}
                Streaming::On => opts.push("streaming 'on'".into()),
                Streaming::Parallel if v >= 4 => opts.push("streaming 'parallel'".into()),
                Streaming::Parallel => opts.push("streaming 'on'".into()),
            }
        }
        if v >= 3 && self.two_phase {
            opts.push("two_phase 'true'".into());
        }
        if v >= 4 {
            if let Some(o) = &self.origin {
                opts.push(format!("origin {}", quote_literal(o)));
            }
        }
        format!("({})", opts.join(", "))
    }
}

/// Double-quotes an identifier (always), doubling inner double quotes.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Single-quotes a string literal, doubling inner single quotes. Backslashes are left alone:
/// correct for the replication command grammar and for SQL with `standard_conforming_strings`
/// on (the default since 9.1).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `server_version` → `server_version_num`: "15.4 (Debian 15.4-1)" → 150004, "9.6.24" → 90624,
/// "16beta1" → 160000. 0 when unparseable.
pub fn parse_server_version(s: &str) -> u32 {
    let numeric: String = s
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = numeric.split('.').map(|p| p.parse::<u32>().ok());
    let major = match parts.next().flatten() {
        Some(m) => m,
        None => return 0,
    };
    let minor = parts.next().flatten().unwrap_or(0);
    if major >= 10 {
        major.saturating_mul(10000).saturating_add(minor.min(9999))
    } else {
        let patch = parts.next().flatten().unwrap_or(0);
        major * 10000 + minor.min(99) * 100 + patch.min(99)
    }
}

// =============================================================================================
// Client

/// Backend messages as the client consumes them.
/// A `COPY … TO STDOUT` in progress (see [`Client::copy_out_reader`]).
pub struct CopyOut<'c> {
    c: &'c mut Client,
    err: Option<Error>,
    started: bool,
    rows: u64,
    done: bool,
}

impl CopyOut<'_> {
    /// The next CopyData payload, or `Ok(None)` once the command has completed and the
    /// connection is ready for the next command. A server error ends the COPY with `Err` (after
    /// the server's ReadyForQuery, so the connection stays usable).
    pub fn next_data(&mut self) -> Result<Option<Bytes>, Error> {
        self.next(true)
    }

    /// Like [`next_data`](Self::next_data), but only from what has already been received:
    /// `Ok(None)` when no whole message is buffered (or the COPY has ended). Lets a consumer
    /// take everything at hand in one go before it blocks again.
    pub fn next_buffered(&mut self) -> Result<Option<Bytes>, Error> {
        self.next(false)
    }

    fn next(&mut self, wait: bool) -> Result<Option<Bytes>, Error> {
        if self.done {
            return Ok(None);
        }
        let r = self.step(wait);
        if let Err(e) = &r {
            self.done = true;
            if self.c.state == State::Busy {
                self.c.state = State::Broken(e.to_string());
            }
        }
        r
    }

    /// Rows the server reported in CommandComplete (known once `next_data` returned `None`).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The caller gives up mid-COPY: the connection is unusable from now on.
    pub fn abandon(&mut self, why: &Error) {
        self.done = true;
        if self.c.state == State::Busy {
            self.c.state = State::Broken(format!("COPY abandoned: {why}"));
        }
    }

    fn step(&mut self, wait: bool) -> Result<Option<Bytes>, Error> {
        let c = &mut *self.c;
        loop {
            let msg = if wait {
                c.next_msg(None)?
            } else {
                match c.try_parse()? {
                    Some(m) => c.check_fatal(m)?,
                    None => return Ok(None),
                }
            };
            match msg {
                Msg::Proto(Message::CopyOutResponse(_)) => self.started = true,
                Msg::CopyData(data) => return Ok(Some(data)),
                Msg::Proto(Message::CopyDone) => {}
                Msg::Proto(Message::CommandComplete(body)) => {
                    let tag = body.tag().map_err(proto_err)?;
                    if let Some(n) = tag.strip_prefix("COPY ") {
                        self.rows = n.trim().parse().unwrap_or(0);
                    }
                }
                Msg::Proto(Message::RowDescription(_))
                | Msg::Proto(Message::DataRow(_))
                | Msg::Proto(Message::EmptyQueryResponse) => {
                    self.err
                        .get_or_insert(proto_err("copy_out: the statement is not COPY ... TO STDOUT"));
                }
                Msg::Proto(Message::CopyInResponse(_)) => {
                    frontend::copy_fail("COPY FROM STDIN is not supported by this client", &mut c.wbuf)
                        .map_err(proto_err)?;
                    c.flush(None)?;
                }
                Msg::Error(e) => {
                    self.err.get_or_insert(Error::Server(e));
                }
                Msg::Proto(Message::ReadyForQuery(_)) => {
                    c.state = State::Idle;
                    self.done = true;
                    return match self.err.take() {
                        Some(e) => Err(e),
                        None if !self.started => Err(proto_err("copy_out: no COPY was started")),
                        None => Ok(None),
                    };
                }
                other => return Err(c.unexpected(&other, "in a COPY response")),
            }
        }
    }
}

enum Msg {
    Proto(Message),
    CopyData(Bytes),
    CopyBothResponse,
    Error(ServerError),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Ready for a command.
    Idle,
    /// A command is in flight; if an error escapes while in this state the protocol position is
    /// unknown and the state becomes `Broken`.
    Busy,
    /// START_REPLICATION succeeded; CopyBoth.
    CopyBoth,
    /// The server ended CopyBoth with CopyDone; we have not sent ours yet.
    CopyBothServerDone,
    /// The server aborted CopyBoth with an ErrorResponse; a ReadyForQuery is still to come.
    AwaitReady,
    Broken(String),
}

/// How one connection attempt negotiates TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    Plain,
    /// SSLRequest; plaintext if the server says 'N'.
    TlsPreferred,
    /// SSLRequest; fail if the server says 'N'.
    TlsRequired,
}

const NOTICE_CAP: usize = 1000;
const READ_CHUNK: usize = 64 * 1024;
const MAX_READ_CHUNK: usize = 1024 * 1024;
/// PostgreSQL never sends a message longer than 1 GB (MaxAllocSize); anything longer is a
/// corrupted stream, refused before any memory is committed to it.
const MAX_MSG: usize = 0x4000_0000 + 1024;
/// During startup, messages longer than this mean we are not talking to PostgreSQL.
const MAX_STARTUP_MSG: usize = 1 << 20;

/// A connection to a PostgreSQL server (normal or walsender).
pub struct Client {
    io: Transport,
    waiter: Box<dyn Wait>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Bytes still missing for the message at the head of `rbuf` (read-size hint).
    want: usize,
    params: HashMap<String, String>,
    notices: VecDeque<ServerError>,
    server_version_num: u32,
    backend_pid: i32,
    state: State,
    in_startup: bool,
    peer: String,
    /// The server asked for a password and got one (cleartext, MD5 or SCRAM).
    used_password: bool,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.peer)
            .field("tls", &self.io.is_tls())
            .field("server_version_num", &self.server_version_num)
            .field("backend_pid", &self.backend_pid)
            .field("state", &self.state)
            .finish()
    }
}

fn tag_name(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}

/// Parses the fields of an ErrorResponse/NoticeResponse body (after the 5-byte header).
fn parse_error_fields(body: &[u8]) -> ServerError {
    let mut e = ServerError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    let mut localized_severity = String::new();
    let mut i = 0;
    while i < body.len() && body[i] != 0 {
        let t = body[i];
        i += 1;
        let end = body[i..]
            .iter()
            .position(|&b| b == 0)
            .map(|p| i + p)
            .unwrap_or(body.len());
        let v = String::from_utf8_lossy(&body[i..end]).into_owned();
        i = end + 1;
        match t {
            b'V' => e.severity = v,
            b'S' => localized_severity = v,
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            _ => {}
        }
    }
    if e.severity.is_empty() {
        e.severity = localized_severity;
    }
    e
}

fn cstr_pair(body: &[u8]) -> Option<(String, String)> {
    let a = body.iter().position(|&b| b == 0)?;
    let rest = &body[a + 1..];
    let b = rest.iter().position(|&b| b == 0)?;
    Some((
        String::from_utf8_lossy(&body[..a]).into_owned(),
        String::from_utf8_lossy(&rest[..b]).into_owned(),
    ))
}

fn proto_err(what: impl fmt::Display) -> Error {
    Error::Protocol(what.to_string())
}

fn io_ctx(context: &str, e: io::Error) -> Error {
    Error::Io(io::Error::new(e.kind(), format!("{context}: {e}")))
}

impl Client {
    // ---------------------------------------------------------------------------------------
    // Connect

    /// Connects and authenticates, trying each host of `cfg` in turn. With `replication` the
    /// startup packet carries `replication=database` (a logical walsender that also accepts
    /// SQL). TLS follows `cfg.sslmode` like libpq (Unix sockets never use TLS).
    pub fn connect(
        cfg: &Config,
        replication: bool,
        waiter: Box<dyn Wait>,
    ) -> Result<Client, Error> {
        let mut waiter = waiter;
        let mut last: Option<Error> = None;
        for host in &cfg.hosts {
            // libpq: hostaddr, when given, decides where to connect (even if host is a socket
            // directory); the host name is kept for verification and messages.
            let effective;
            let host = match (&cfg.hostaddr, host) {
                (Some(a), Host::Unix(_)) => {
                    effective = Host::Tcp(a.clone());
                    &effective
                }
                _ => host,
            };
            let mut plan = match (host, cfg.sslmode) {
                (Host::Unix(_), _) => Plan::Plain,
                (_, SslMode::Disable) | (_, SslMode::Allow) => Plan::Plain,
                (_, SslMode::Prefer) => Plan::TlsPreferred,
                _ => Plan::TlsRequired,
            };
            let mut retried = false;
            loop {
                match Self::attempt(cfg, host, replication, waiter, plan) {
                    Ok(c) => return Ok(c),
                    Err((e, w, tls_used)) => {
                        waiter = w;
                        if matches!(e, Error::Interrupted | Error::Config(_)) {
                            return Err(e);
                        }
                        let auth_class = |e: &Error| {
                            e.sqlstate()
                                .is_some_and(|s| s.starts_with("28") && s != "28P01")
                        };
                        let next = match (cfg.sslmode, plan, &e) {
                            // prefer: TLS failed or the server refused the TLS session → plain.
                            (SslMode::Prefer, Plan::TlsPreferred, Error::Tls(_)) => {
                                Some(Plan::Plain)
                            }
                            // A refused login is retried in plaintext only when it really ran
                            // over TLS (libpq's rule); otherwise it would just be repeated.
                            (SslMode::Prefer, Plan::TlsPreferred, e) if auth_class(e) && tls_used => {
                                Some(Plan::Plain)
                            }
                            // allow: the plaintext attempt was refused → TLS.
                            (SslMode::Allow, Plan::Plain, e)
                                if auth_class(e) && matches!(host, Host::Tcp(_)) =>
                            {
                                Some(Plan::TlsRequired)
                            }
                            _ => None,
                        };
                        match next {
                            Some(p) if !retried => {
                                retried = true;
                                plan = p;
                            }
                            _ => {
                                last = Some(e);
                                break;
                            }
                        }
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| proto_err("no host to connect to")))
    }

    #[allow(clippy::result_large_err)]
    fn attempt(
        cfg: &Config,
        host: &Host,
        replication: bool,
        mut waiter: Box<dyn Wait>,
        plan: Plan,
    ) -> Result<Client, (Error, Box<dyn Wait>, bool)> {
        let deadline = cfg.connect_timeout.map(|t| Instant::now() + t);
        let (sock, peer) = match open_socket(cfg, host, &mut *waiter, deadline) {
            Ok(x) => x,
            Err(e) => return Err((e, waiter, false)),
        };
        let mut client = Client {
            io: Transport::plain(sock),
            waiter,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(1024),
            want: 0,
            params: HashMap::new(),
            notices: VecDeque::new(),
            server_version_num: 0,
            used_password: false,
            backend_pid: 0,
            state: State::Busy,
            in_startup: true,
            peer,
        };
        match client.startup(cfg, host, replication, plan, deadline) {
            Ok(()) => {
                client.in_startup = false;
                client.state = State::Idle;
                Ok(client)
            }
            Err(e) => {
                let e = match e {
                    Error::Timeout(m) => {
                        Error::Timeout(format!("connection to {} failed: {m}", client.peer))
                    }
                    Error::Io(io) => Error::Io(io::Error::new(
                        io.kind(),
                        format!("connection to {} failed: {io}", client.peer),
                    )),
                    Error::Tls(m) => {
                        Error::Tls(format!("connection to {} failed: {m}", client.peer))
                    }
                    other => other,
                };
                let tls = client.io.is_tls();
                let Client { waiter, .. } = client;
                Err((e, waiter, tls))
            }
        }
    }

    fn startup(
        &mut self,
        cfg: &Config,
        host: &Host,
        replication: bool,
        plan: Plan,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        if plan != Plan::Plain {
            frontend::ssl_request(&mut self.wbuf);
            self.flush(deadline)?;
            let answer = loop {
                match self.io.read_byte_raw()? {
                    Some(b) => break b,
                    None => self.wait(Interest::Read, deadline)?,
                }
            };
            match answer {
                b'S' => self.start_tls(cfg, host, deadline)?,
                b'N' if plan == Plan::TlsRequired => {
                    return Err(Error::Tls(
                        "server does not support SSL, but SSL was required".into(),
                    ))
                }
                b'N' => {}
                b'E' => {
                    return Err(Error::Tls(
                        "server answered the SSL request with an error".into(),
                    ))
                }
                other => {
                    return Err(proto_err(format!(
                        "received invalid response to SSL negotiation: {}",
                        tag_name(other)
                    )))
                }
            }
        }

        // StartupMessage
        let mut params: Vec<(&str, &str)> = vec![
            ("user", cfg.user.as_str()),
            ("database", cfg.dbname.as_str()),
            ("client_encoding", "UTF8"),
        ];
        if let Some(a) = &cfg.application_name {
            params.push(("application_name", a));
        }
        if let Some(o) = &cfg.options {
            params.push(("options", o));
        }
        if replication {
            params.push(("replication", "database"));
        }
        frontend::startup_message(params.iter().copied(), &mut self.wbuf)
            .map_err(|e| proto_err(format!("invalid startup parameter: {e}")))?;
        self.flush(deadline)?;

        self.authenticate(cfg, deadline)?;

        // Until ReadyForQuery: BackendKeyData, ParameterStatus (handled in try_parse), notices.
        loop {
            match self.next_msg(deadline)? {
                Msg::Proto(Message::BackendKeyData(b)) => self.backend_pid = b.process_id(),
                Msg::Proto(Message::ReadyForQuery(_)) => break,
                Msg::Error(e) => return Err(Error::Server(e)),
                other => return Err(self.unexpected(&other, "during connection startup")),
            }
        }
        self.server_version_num = self
            .params
            .get("server_version")
            .map(|v| parse_server_version(v))
            .unwrap_or(0);
        Ok(())
    }

    fn start_tls(
        &mut self,
        cfg: &Config,
        host: &Host,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        let rootcert = cfg.sslrootcert.as_deref();
        let level = tls::verify_level(cfg.sslmode, rootcert);
        let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
        let config = tls::client_config(cfg.sslmode, rootcert, home)?;
        let name = match host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(_) => "localhost".to_string(),
        };
        let server_name = tls::server_name(&name, level)?;
        let conn = rustls::ClientConnection::new(config, server_name)
            .map_err(|e| Error::Tls(e.to_string()))?;
        self.io.tls = Some(Box::new(conn));
        while let Some(interest) = self.io.handshake_step()? {
            self.wait(interest, deadline)?;
        }
        Ok(())
    }

    fn authenticate(&mut self, cfg: &Config, deadline: Option<Instant>) -> Result<(), Error> {
        let password = || -> Result<&str, Error> {
            cfg.password.as_deref().ok_or_else(|| {
                Error::Auth(format!(
                    "the server requested password authentication for user \"{}\", but no password was supplied",
                    cfg.user
                ))
            })
        };
        let mut scram: Option<ScramSha256> = None;
        let mut scram_done = false;
        loop {
            let msg = self.next_msg(deadline)?;
            match msg {
                Msg::Proto(Message::AuthenticationOk) => {
                    if scram.is_some() && !scram_done {
                        return Err(Error::Auth(
                            "server accepted the connection before completing SCRAM authentication".into(),
                        ));
                    }
                    return Ok(());
                }
                Msg::Proto(Message::AuthenticationCleartextPassword) => {
                    frontend::password_message(password()?.as_bytes(), &mut self.wbuf)
                        .map_err(|e| Error::Auth(format!("invalid password: {e}")))?;
                    self.used_password = true;
                    self.flush(deadline)?;
                }
                Msg::Proto(Message::AuthenticationMd5Password(body)) => {
                    let hash = postgres_protocol::authentication::md5_hash(
                        cfg.user.as_bytes(),
                        password()?.as_bytes(),
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                        .map_err(|e| Error::Auth(e.to_string()))?;
                    self.used_password = true;
                    self.flush(deadline)?;
                }
                Msg::Proto(Message::AuthenticationSasl(body)) => {
                    let mut mechs = body.mechanisms();
                    let mut has_scram = false;
                    let mut offered = Vec::new();
                    while let Some(m) = mechs.next().map_err(proto_err)? {
                        offered.push(m.to_string());
                        if m == SCRAM_SHA_256 {
                            has_scram = true;
                        }
                    }
                    if !has_scram {
                        return Err(Error::Auth(format!(
                            "none of the server's SASL authentication mechanisms are supported (offered: {})",
                            offered.join(", ")
                        )));
                    }
                    // Channel binding is not implemented; "n" (client does not support it) is
                    // accepted by servers whether or not they offer SCRAM-SHA-256-PLUS.
                    let s = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.wbuf)
                        .map_err(|e| Error::Auth(e.to_string()))?;
                    scram = Some(s);
                    self.used_password = true;
                    self.flush(deadline)?;
                }
                Msg::Proto(Message::AuthenticationSaslContinue(body)) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| proto_err("SASL continuation without SASL start"))?;
                    s.update(body.data())
                        .map_err(|e| Error::Auth(format!("SCRAM exchange failed: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.wbuf)
                        .map_err(|e| Error::Auth(e.to_string()))?;
                    self.flush(deadline)?;
                }
                Msg::Proto(Message::AuthenticationSaslFinal(body)) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| proto_err("SASL final message without SASL start"))?;
                    s.finish(body.data()).map_err(|e| {
                        Error::Auth(format!("SCRAM server signature verification failed: {e}"))
                    })?;
                    scram_done = true;
                }
                Msg::Proto(Message::AuthenticationKerberosV5)
                | Msg::Proto(Message::AuthenticationScmCredential)
                | Msg::Proto(Message::AuthenticationGss)
                | Msg::Proto(Message::AuthenticationGssContinue(_))
                | Msg::Proto(Message::AuthenticationSspi) => {
                    return Err(Error::Auth(
                        "the server requested an authentication method this client does not support (GSSAPI/SSPI/Kerberos/SCM)".into(),
                    ))
                }
                Msg::Error(e) => return Err(Error::Server(e)),
                other => return Err(self.unexpected(&other, "during authentication")),
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Accessors

    /// `server_version_num` computed from the `server_version` parameter (e.g. 150004).
    pub fn server_version_num(&self) -> u32 {
        self.server_version_num
    }

    /// Whether the server requested a password and this client sent one (libpq's
    /// `PQconnectionUsedPassword`): false after trust, peer or certificate authentication.
    pub fn used_password(&self) -> bool {
        self.used_password
    }

    /// A parameter the server reported with ParameterStatus (`server_version`,
    /// `server_encoding`, `integer_datetimes`, `TimeZone`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(|s| s.as_str())
    }

    /// The socket, for waiting on readability in the streaming phase.
    pub fn raw_fd(&self) -> RawFd {
        self.io.fd()
    }

    /// The server process id (BackendKeyData).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Whether the connection is encrypted.
    pub fn uses_tls(&self) -> bool {
        self.io.is_tls()
    }

    /// NoticeResponses received so far (oldest first; at most the last 1000 are kept).
    pub fn notices(&mut self) -> Vec<ServerError> {
        self.notices.drain(..).collect()
    }

    // ---------------------------------------------------------------------------------------
    // Commands

    /// Runs `sql` (one or more statements) with the simple-query protocol and returns the rows
    /// of all statements, in order, as text. An ErrorResponse is returned as [`Error::Server`]
    /// after the server is ready again (the connection stays usable).
    pub fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, Error> {
        self.command(|c| {
            c.send_query(sql)?;
            let mut rows = Vec::new();
            let mut columns: Vec<String> = Vec::new();
            let mut err: Option<Error> = None;
            loop {
                match c.next_msg(None)? {
                    Msg::Proto(Message::RowDescription(body)) => {
                        columns.clear();
                        let mut fields = body.fields();
                        while let Some(f) = fields.next().map_err(proto_err)? {
                            columns.push(f.name().to_string());
                        }
                    }
                    Msg::Proto(Message::DataRow(body)) => {
                        let mut values = Vec::with_capacity(columns.len());
                        let buf = body.buffer();
                        let mut ranges = body.ranges();
                        while let Some(r) = ranges.next().map_err(proto_err)? {
                            values.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                        }
                        if values.len() != columns.len() {
                            return Err(proto_err(format!(
                                "DataRow has {} values but RowDescription has {} columns",
                                values.len(),
                                columns.len()
                            )));
                        }
                        rows.push(Row {
                            columns: columns.clone(),
                            values,
                        });
                    }
                    Msg::Proto(Message::CommandComplete(_))
                    | Msg::Proto(Message::EmptyQueryResponse) => {}
                    Msg::Proto(Message::CopyInResponse(_)) => {
                        frontend::copy_fail(
                            "COPY FROM STDIN is not supported by this client",
                            &mut c.wbuf,
                        )
                        .map_err(proto_err)?;
                        c.flush(None)?;
                    }
                    Msg::Proto(Message::CopyOutResponse(_)) => {
                        err.get_or_insert(proto_err(
                            "COPY TO STDOUT in simple_query: use copy_out() (output discarded)",
                        ));
                    }
                    Msg::CopyData(_) | Msg::Proto(Message::CopyDone) => {}
                    Msg::CopyBothResponse => {
                        return Err(proto_err(
                            "the command started a replication stream: use start_replication()",
                        ))
                    }
                    Msg::Error(e) => {
                        err.get_or_insert(Error::Server(e));
                    }
                    Msg::Proto(Message::ReadyForQuery(_)) => {
                        c.state = State::Idle;
                        return match err {
                            Some(e) => Err(e),
                            None => Ok(rows),
                        };
                    }
                    other => return Err(c.unexpected(&other, "in a query response")),
                }
            }
        })
    }

    /// Runs `sql` and discards any rows.
    pub fn execute(&mut self, sql: &str) -> Result<(), Error> {
        self.simple_query(sql).map(|_| ())
    }

    /// IDENTIFY_SYSTEM (replication connections).
    pub fn identify_system(&mut self) -> Result<SystemInfo, Error> {
        let rows = self.simple_query("IDENTIFY_SYSTEM")?;
        let row = rows
            .first()
            .ok_or_else(|| proto_err("IDENTIFY_SYSTEM returned no row"))?;
        let col = |i: usize| row.values.get(i).cloned().flatten();
        let systemid = col(0).ok_or_else(|| proto_err("IDENTIFY_SYSTEM: systemid missing"))?;
        let timeline = col(1)
            .and_then(|t| t.parse::<u32>().ok())
            .ok_or_else(|| proto_err("IDENTIFY_SYSTEM: invalid timeline"))?;
        let xlogpos = col(2)
            .and_then(|x| x.parse::<Lsn>().ok())
            .ok_or_else(|| proto_err("IDENTIFY_SYSTEM: invalid xlogpos"))?;
        Ok(SystemInfo {
            systemid,
            timeline,
            xlogpos,
            dbname: col(3),
        })
    }

    /// CREATE_REPLICATION_SLOT for pgoutput. PostgreSQL 15+ gets the parenthesised syntax
    /// (`(SNAPSHOT 'use', TWO_PHASE)`), older servers the keyword syntax (`USE_SNAPSHOT`, ...);
    /// `two_phase` needs 15+.
    pub fn create_logical_slot(
        &mut self,
        name: &str,
        temporary: bool,
        snapshot: SnapshotAction,
        two_phase: bool,
    ) -> Result<SlotInfo, Error> {
        let mut sql = format!("CREATE_REPLICATION_SLOT {}", quote_ident(name));
        if temporary {
            sql.push_str(" TEMPORARY");
        }
        sql.push_str(" LOGICAL pgoutput");
        if self.server_version_num >= 150000 {
            let snap = match snapshot {
                SnapshotAction::Export => "export",
                SnapshotAction::Use => "use",
                SnapshotAction::NoExport => "nothing",
            };
            sql.push_str(&format!(" (SNAPSHOT '{snap}'"));
            if two_phase {
                sql.push_str(", TWO_PHASE");
            }
            sql.push(')');
        } else {
            if two_phase {
                return Err(proto_err(format!(
                    "two-phase replication slots need PostgreSQL 15 or later (server is {})",
                    self.server_version_num
                )));
            }
            sql.push_str(match snapshot {
                SnapshotAction::Export => " EXPORT_SNAPSHOT",
                SnapshotAction::Use => " USE_SNAPSHOT",
                SnapshotAction::NoExport => " NOEXPORT_SNAPSHOT",
            });
        }
        let rows = self.simple_query(&sql)?;
        let row = rows
            .first()
            .ok_or_else(|| proto_err("CREATE_REPLICATION_SLOT returned no row"))?;
        let col = |i: usize| row.values.get(i).cloned().flatten();
        let slot_name =
            col(0).ok_or_else(|| proto_err("CREATE_REPLICATION_SLOT: slot_name missing"))?;
        let consistent_point = col(1)
            .and_then(|x| x.parse::<Lsn>().ok())
            .ok_or_else(|| proto_err("CREATE_REPLICATION_SLOT: invalid consistent_point"))?;
        Ok(SlotInfo {
            slot_name,
            consistent_point,
            snapshot_name: col(2),
        })
    }

    /// DROP_REPLICATION_SLOT, optionally WAIT-ing for an active slot to be released.
    pub fn drop_slot(&mut self, name: &str, wait: bool) -> Result<(), Error> {
        let mut sql = format!("DROP_REPLICATION_SLOT {}", quote_ident(name));
        if wait {
            sql.push_str(" WAIT");
        }
        self.execute(&sql)
    }

    /// Runs a `COPY ... TO STDOUT` and hands every CopyData chunk to `on_data` as it arrives
    /// (never buffering the whole result). Returns the row count of the CommandComplete tag.
    /// If `on_data` fails, its error is returned at once and the connection is left unusable.
    pub fn copy_out(
        &mut self,
        sql: &str,
        on_data: &mut dyn FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        let mut reader = self.copy_out_reader(sql)?;
        while let Some(data) = reader.next_data()? {
            if let Err(e) = on_data(&data) {
                reader.abandon(&e);
                return Err(e);
            }
        }
        Ok(reader.rows())
    }

    /// Sends `COPY … TO STDOUT` and returns a reader that hands out its data one CopyData
    /// payload at a time ([`CopyOut::next_data`]), so that the caller pulls the rows as it
    /// consumes them (the server keeps producing meanwhile, up to the socket buffers). The
    /// connection is busy until `next_data` returns `Ok(None)`; a reader dropped before that
    /// leaves the connection unusable for further commands.
    pub fn copy_out_reader(&mut self, sql: &str) -> Result<CopyOut<'_>, Error> {
        self.command(|c| c.send_query(sql))?;
        self.state = State::Busy;
        Ok(CopyOut { c: self, err: None, started: false, rows: 0, done: false })
    }

    /// Sends `START_REPLICATION SLOT "slot" LOGICAL X/Y (options)` and waits for the
    /// CopyBothResponse. Afterwards use [`recv_frame`](Self::recv_frame),
    /// [`send_status`](Self::send_status) and [`end_copy`](Self::end_copy).
    pub fn start_replication(
        &mut self,
        slot: &str,
        start: Lsn,
        opts: &PgOutputOptions,
    ) -> Result<(), Error> {
        self.start_replication_within(slot, start, opts, None)
    }

    /// [`start_replication`](Self::start_replication), giving up with [`Error::Timeout`] (and a
    /// broken connection) when the server has not answered within `timeout`. A walsender answers
    /// at once (the stream starts after the CopyBothResponse), so silence means a dead peer.
    pub fn start_replication_within(
        &mut self,
        slot: &str,
        start: Lsn,
        opts: &PgOutputOptions,
        timeout: Option<Duration>,
    ) -> Result<(), Error> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} {}",
            quote_ident(slot),
            start,
            opts.to_sql_options()
        );
        let deadline = timeout.map(|t| Instant::now() + t);
        let timed_out = |e: Error| match (e, timeout) {
            (Error::Timeout(_), Some(t)) => Error::Timeout(format!(
                "no answer to START_REPLICATION within {} ms",
                t.as_millis()
            )),
            (e, _) => e,
        };
        self.command(|c| {
            frontend::query(&sql, &mut c.wbuf)
                .map_err(|e| proto_err(format!("invalid query: {e}")))?;
            c.flush(deadline).map_err(timed_out)?;
            let mut err: Option<Error> = None;
            loop {
                match c.next_msg(deadline).map_err(timed_out)? {
                    Msg::CopyBothResponse => {
                        c.state = State::CopyBoth;
                        return Ok(());
                    }
                    Msg::Error(e) => {
                        err.get_or_insert(Error::Server(e));
                    }
                    Msg::Proto(Message::CommandComplete(_)) => {}
                    Msg::Proto(Message::ReadyForQuery(_)) => {
                        c.state = State::Idle;
                        return Err(err.unwrap_or_else(|| {
                            proto_err("START_REPLICATION completed without starting a stream")
                        }));
                    }
                    other => return Err(c.unexpected(&other, "in response to START_REPLICATION")),
                }
            }
        })
    }

    /// Non-blocking: returns the next replication message if a whole one is buffered or can be
    /// read without waiting, `Ok(None)` otherwise.
    ///
    /// * ErrorResponse → `Err(Server)`. After an ERROR the connection returns to normal mode
    ///   (the next command or [`end_copy`](Self::end_copy) reads the pending ReadyForQuery);
    ///   after FATAL (e.g. 57P01, walsender terminated) it is unusable.
    /// * CopyDone → `Err(Closed)`; [`end_copy`](Self::end_copy) finishes the exchange.
    /// * CommandComplete (a walsender finishing at server shutdown) or end of connection →
    ///   `Err(Closed)`, connection unusable.
    pub fn recv_frame(&mut self) -> Result<Option<ReplicationFrame>, Error> {
        match &self.state {
            State::CopyBoth => {}
            State::CopyBothServerDone => return Err(Error::Closed),
            State::Broken(why) => {
                return Err(proto_err(format!("connection is no longer usable: {why}")))
            }
            _ => return Err(proto_err("recv_frame: no replication stream is active")),
        }
        let r = self.poll_msg();
        match r {
            Ok(None) => Ok(None),
            Ok(Some(Msg::CopyData(data))) => parse_frame(data)
                .map(Some)
                .map_err(|e| proto_err(format!("invalid replication message: {e}"))),
            Ok(Some(Msg::Proto(Message::CopyDone))) => {
                self.state = State::CopyBothServerDone;
                Err(Error::Closed)
            }
            Ok(Some(Msg::Error(e))) => {
                self.state = State::AwaitReady;
                Err(Error::Server(e))
            }
            Ok(Some(Msg::Proto(Message::CommandComplete(_)))) => {
                // A walsender that finished streaming at shutdown sends CommandComplete and
                // exits without waiting for our CopyDone.
                self.state = State::Broken("the server ended the replication stream".into());
                Err(Error::Closed)
            }
            Ok(Some(other)) => {
                let e = self.unexpected(&other, "in the replication stream");
                self.state = State::Broken(e.to_string());
                Err(e)
            }
            Err(e) => {
                if !matches!(self.state, State::Broken(_)) {
                    self.state = State::Broken(e.to_string());
                }
                Err(e)
            }
        }
    }

    /// Sends a standby status update (positions are "last byte + 1" of what was written,
    /// flushed and applied). Waits (through the waiter) only if the socket buffer is full.
    pub fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), Error> {
        if self.state != State::CopyBoth {
            return Err(proto_err("send_status: no replication stream is active"));
        }
        let payload = encode_standby_status(write, flush, apply, now_pg_micros(), reply_requested);
        let r = frontend::CopyData::new(payload)
            .map_err(proto_err)
            .map(|d| d.write(&mut self.wbuf))
            .and_then(|_| self.flush(None));
        if let Err(e) = &r {
            self.state = State::Broken(e.to_string());
        }
        r
    }

    /// Ends the replication stream: sends CopyDone and reads until ReadyForQuery (discarding
    /// any frames still in flight). Also completes the exchange after the server ended the
    /// stream (CopyDone or ErrorResponse). A no-op when no stream is active.
    pub fn end_copy(&mut self) -> Result<(), Error> {
        match &self.state {
            State::Idle => return Ok(()),
            State::CopyBoth | State::CopyBothServerDone | State::AwaitReady => {}
            State::Busy => {
                return Err(proto_err(
                    "connection is no longer usable: a previous command did not complete",
                ))
            }
            State::Broken(why) => {
                return Err(proto_err(format!("connection is no longer usable: {why}")))
            }
        }
        let was = std::mem::replace(&mut self.state, State::Busy);
        let r = (|| {
            if was != State::AwaitReady {
                frontend::copy_done(&mut self.wbuf);
                self.flush(None)?;
            }
            let mut err: Option<Error> = None;
            loop {
                match self.next_msg(None)? {
                    Msg::CopyData(_)
                    | Msg::Proto(Message::CopyDone)
                    | Msg::Proto(Message::CommandComplete(_)) => {}
                    Msg::Error(e) => {
                        err.get_or_insert(Error::Server(e));
                    }
                    Msg::Proto(Message::ReadyForQuery(_)) => {
                        self.state = State::Idle;
                        return match err {
                            Some(e) => Err(e),
                            None => Ok(()),
                        };
                    }
                    other => {
                        return Err(self.unexpected(&other, "while ending the replication stream"))
                    }
                }
            }
        })();
        if let Err(e) = &r {
            if self.state == State::Busy {
                self.state = State::Broken(e.to_string());
            }
        }
        r
    }

    /// Sends Terminate (best effort, without waiting) and closes the socket.
    pub fn close(mut self) {
        self.wbuf.clear();
        frontend::terminate(&mut self.wbuf);
        let _ = self.io.write_some(&self.wbuf);
        self.io.close_notify();
        // Dropping `self` closes the socket.
    }

    // ---------------------------------------------------------------------------------------
    // Internals

    /// Runs one command: checks that the connection is idle (finishing a pending
    /// ReadyForQuery first), marks it busy, and marks it broken if an error escapes before the
    /// command's ReadyForQuery (or CopyBothResponse) was seen.
    fn command<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, Error>) -> Result<T, Error> {
        match &self.state {
            State::Idle => {}
            State::AwaitReady => self.end_copy()?,
            State::CopyBoth | State::CopyBothServerDone => {
                return Err(proto_err(
                    "a replication stream is active: call end_copy() first",
                ))
            }
            State::Busy => {
                return Err(proto_err(
                    "connection is no longer usable: a previous command did not complete",
                ))
            }
            State::Broken(why) => {
                return Err(proto_err(format!("connection is no longer usable: {why}")))
            }
        }
        self.state = State::Busy;
        let r = f(self);
        if let Err(e) = &r {
            if self.state == State::Busy {
                self.state = State::Broken(e.to_string());
            }
        }
        r
    }

    fn send_query(&mut self, sql: &str) -> Result<(), Error> {
        frontend::query(sql, &mut self.wbuf)
            .map_err(|e| proto_err(format!("invalid query: {e}")))?;
        self.flush(None)
    }

    fn unexpected(&self, msg: &Msg, when: &str) -> Error {
        let what = match msg {
            Msg::CopyData(_) => "CopyData".to_string(),
            Msg::CopyBothResponse => "CopyBothResponse".to_string(),
            Msg::Error(e) => format!("ErrorResponse ({e})"),
            Msg::Proto(m) => match m {
                Message::AuthenticationOk
                | Message::AuthenticationCleartextPassword
                | Message::AuthenticationMd5Password(_)
                | Message::AuthenticationSasl(_)
                | Message::AuthenticationSaslContinue(_)
                | Message::AuthenticationSaslFinal(_) => "an authentication request".to_string(),
                Message::BackendKeyData(_) => "BackendKeyData".to_string(),
                Message::CommandComplete(_) => "CommandComplete".to_string(),
                Message::CopyDone => "CopyDone".to_string(),
                Message::CopyInResponse(_) => "CopyInResponse".to_string(),
                Message::CopyOutResponse(_) => "CopyOutResponse".to_string(),
                Message::DataRow(_) => "DataRow".to_string(),
                Message::ReadyForQuery(_) => "ReadyForQuery".to_string(),
                Message::RowDescription(_) => "RowDescription".to_string(),
                _ => "an unexpected message".to_string(),
            },
        };
        proto_err(format!("unexpected {what} {when}"))
    }

    fn wait(&mut self, interest: Interest, deadline: Option<Instant>) -> Result<(), Error> {
        let fd = self.io.fd();
        self.waiter.wait(fd, interest, deadline)
    }

    /// Writes all of `wbuf` (and any queued TLS records), waiting as needed.
    fn flush(&mut self, deadline: Option<Instant>) -> Result<(), Error> {
        loop {
            let mut progressed = false;
            if !self.wbuf.is_empty() {
                let n = self.io.write_some(&self.wbuf)?;
                if n > 0 {
                    self.wbuf.advance(n);
                    progressed = true;
                }
            } else {
                self.io.flush_pending()?;
            }
            if self.wbuf.is_empty() && !self.io.has_pending_output() {
                return Ok(());
            }
            if !progressed {
                self.wait(Interest::Write, deadline)?;
            }
        }
    }

    fn read_size(&self) -> usize {
        self.want.clamp(READ_CHUNK, MAX_READ_CHUNK)
    }

    /// The next message, waiting as needed. A FATAL/PANIC ErrorResponse is returned as
    /// `Err(Server)` at once (the server closes the connection right after it, so waiting for
    /// ReadyForQuery would only turn it into `Closed`) and marks the connection broken.
    fn next_msg(&mut self, deadline: Option<Instant>) -> Result<Msg, Error> {
        loop {
            if let Some(m) = self.try_parse()? {
                return self.check_fatal(m);
            }
            let max = self.read_size();
            let n = self.io.read_some(&mut self.rbuf, max)?;
            if n == 0 {
                self.wait(Interest::Read, deadline)?;
            }
        }
    }

    /// The next message if one is buffered or readable now (FATAL handled as in `next_msg`).
    fn poll_msg(&mut self) -> Result<Option<Msg>, Error> {
        loop {
            if let Some(m) = self.try_parse()? {
                return self.check_fatal(m).map(Some);
            }
            let max = self.read_size();
            if self.io.read_some(&mut self.rbuf, max)? == 0 {
                return Ok(None);
            }
        }
    }

    fn check_fatal(&mut self, m: Msg) -> Result<Msg, Error> {
        match m {
            Msg::Error(e) if matches!(e.severity.as_str(), "FATAL" | "PANIC") => {
                if !self.in_startup {
                    self.state = State::Broken(format!("the server terminated the session: {e}"));
                }
                Err(Error::Server(e))
            }
            m => Ok(m),
        }
    }

    /// Takes one whole message off `rbuf`; absorbs ParameterStatus, NoticeResponse,
    /// NotificationResponse and NegotiateProtocolVersion.
    fn try_parse(&mut self) -> Result<Option<Msg>, Error> {
        loop {
            let header = match Header::parse(&self.rbuf) {
                Ok(Some(h)) => h,
                Ok(None) => {
                    self.want = 5 - self.rbuf.len();
                    return Ok(None);
                }
                Err(e) => return Err(proto_err(format!("invalid message from server: {e}"))),
            };
            let total = header.len() as usize + 1;
            if self.in_startup && total > MAX_STARTUP_MSG {
                return Err(proto_err(format!(
                    "expected an authentication request from the server, but received {} with length {}",
                    tag_name(header.tag()),
                    header.len()
                )));
            }
            if total > MAX_MSG {
                return Err(proto_err(format!(
                    "message {} from server is too long ({} bytes)",
                    tag_name(header.tag()),
                    header.len()
                )));
            }
            if self.rbuf.len() < total {
                // No reserve(total): the buffer grows with what actually arrives.
                self.want = total - self.rbuf.len();
                return Ok(None);
            }
            self.want = 0;
            let mut frame = self.rbuf.split_to(total);
            let body = &frame[5..];
            match header.tag() {
                b'd' => return Ok(Some(Msg::CopyData(frame.freeze().slice(5..)))),
                b'W' => return Ok(Some(Msg::CopyBothResponse)),
                b'E' => return Ok(Some(Msg::Error(parse_error_fields(body)))),
                b'N' => {
                    if self.notices.len() >= NOTICE_CAP {
                        self.notices.pop_front();
                    }
                    self.notices.push_back(parse_error_fields(body));
                }
                b'S' => {
                    if let Some((k, v)) = cstr_pair(body) {
                        self.params.insert(k, v);
                    }
                }
                b'A' | b'v' => {}
                tag => {
                    return match Message::parse(&mut frame) {
                        Ok(Some(m)) => Ok(Some(Msg::Proto(m))),
                        Ok(None) => Err(proto_err(format!(
                            "could not parse message {} from server",
                            tag_name(tag)
                        ))),
                        Err(e) => Err(proto_err(format!(
                            "invalid message {} from server: {e}",
                            tag_name(tag)
                        ))),
                    };
                }
            }
        }
    }
}

/// Opens the socket for one host: TCP (resolving the name, or `hostaddr`) or Unix.
fn open_socket(
    cfg: &Config,
    host: &Host,
    waiter: &mut dyn Wait,
    deadline: Option<Instant>,
) -> Result<(Sock, String), Error> {
    match host {
        Host::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{}", cfg.port));
            let peer = format!("server on socket \"{}\"", path.display());
            let fail = |e: io::Error| io_ctx(&format!("connection to {peer} failed"), e);
            let fd = match transport::start_unix(&path).map_err(fail)? {
                Started::Done(fd) => fd,
                Started::Pending(fd) => {
                    waiter
                        .wait(fd.as_raw_fd(), Interest::Write, deadline)
                        .map_err(|e| with_peer(e, &peer))?;
                    transport::finish_connect(&fd).map_err(fail)?;
                    fd
                }
            };
            Ok((transport::unix_sock(fd), peer))
        }
        Host::Tcp(name) => {
            let addrs: Vec<SocketAddr> = match &cfg.hostaddr {
                Some(a) => {
                    let ip: IpAddr = a.parse().map_err(|_| {
                        proto_err(format!("could not parse network address \"{a}\""))
                    })?;
                    vec![SocketAddr::new(ip, cfg.port)]
                }
                None => match name.parse::<IpAddr>() {
                    Ok(ip) => vec![SocketAddr::new(ip, cfg.port)],
                    // getaddrinfo blocks; there is no non-blocking resolver in std.
                    Err(_) => (name.as_str(), cfg.port)
                        .to_socket_addrs()
                        .map_err(|e| {
                            io_ctx(
                                &format!("could not translate host name \"{name}\" to address"),
                                e,
                            )
                        })?
                        .collect(),
                },
            };
            let mut last: Option<Error> = None;
            for addr in addrs {
                let peer = if addr.ip().to_string() == *name {
                    format!("server at \"{name}\", port {}", cfg.port)
                } else {
                    format!("server at \"{name}\" ({}), port {}", addr.ip(), cfg.port)
                };
                let fail = |e: io::Error| io_ctx(&format!("connection to {peer} failed"), e);
                let r = match transport::start_tcp(&addr) {
                    Err(e) => Err(fail(e)),
                    Ok(Started::Done(fd)) => Ok(fd),
                    Ok(Started::Pending(fd)) => {
                        match waiter.wait(fd.as_raw_fd(), Interest::Write, deadline) {
                            Err(e @ Error::Interrupted) => return Err(e),
                            Err(e) => Err(with_peer(e, &peer)),
                            Ok(()) => transport::finish_connect(&fd).map(|_| fd).map_err(fail),
                        }
                    }
                };
                match r {
                    Ok(fd) => return Ok((transport::tcp_sock(fd), peer)),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                io_ctx(
                    &format!("could not translate host name \"{name}\" to address"),
                    io::Error::new(io::ErrorKind::NotFound, "no addresses"),
                )
            }))
        }
    }
}

fn with_peer(e: Error, peer: &str) -> Error {
    match e {
        Error::Timeout(m) => Error::Timeout(format!("connection to {peer} failed: {m}")),
        other => other,
    }
}

// =============================================================================================

#[cfg(test)]
mod tests;
