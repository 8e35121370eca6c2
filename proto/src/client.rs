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
//!
//! # Layout
//!
//! This file owns [`Client`] itself (its fields and connection state) and its accessors; the
//! rest is split by concern: `error.rs` (errors), `wait.rs` ([`Wait`]), `io.rs` (message I/O:
//! reading, parsing, flushing, command bookkeeping), `connect.rs` (sockets, TLS negotiation,
//! startup), `auth.rs` (authentication), `query.rs` (simple queries, replication commands,
//! COPY), `replication.rs` (START_REPLICATION and the CopyBoth stream), `quote.rs` (quoting),
//! `tls.rs` (TLS policy), `keyfile.rs` (client certificate and key) and `transport.rs` (the non-blocking byte pipe).

mod auth;
mod connect;
mod error;
mod io;
mod keyfile;
mod query;
mod quote;
mod replication;
mod target;
mod tls;
mod transport;
mod wait;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::os::fd::RawFd;

use bytes::{Bytes, BytesMut};
use postgres_protocol::message::backend::Message;

pub use connect::{parse_server_version, version_string};
pub use error::{Error, ServerError};
pub use query::{CopyOut, Row, SlotInfo, SlotOptions, SnapshotAction, SystemInfo};
pub use quote::{quote_ident, quote_literal};
pub use replication::{PgOutputOptions, Streaming};
pub use wait::{Interest, PollWait, Wait};

use transport::Transport;

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
    /// Bytes read from the connection so far (after TLS decryption: the protocol's own bytes).
    bytes_received: u64,
}

/// Backend messages as the client consumes them.
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
    /// A simple query was sent with [`Client::start_query`]; [`Client::finish_query`] reads its
    /// answer.
    QuerySent,
    /// START_REPLICATION succeeded; CopyBoth.
    CopyBoth,
    /// The server ended CopyBoth with CopyDone; we have not sent ours yet.
    CopyBothServerDone,
    /// The server aborted CopyBoth with an ErrorResponse; a ReadyForQuery is still to come.
    AwaitReady,
    Broken(String),
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

impl Client {
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

    /// How much must be queued on a TCP connection before the socket shows as readable to a
    /// waiter (SO_RCVLOWAT; 1, the default, is the first byte). [`recv_frame`](Self::recv_frame)
    /// still returns what has arrived, so a waiter that raises it must bound its wait. No effect
    /// on a Unix-domain socket.
    pub fn set_receive_low_water(&mut self, bytes: u32) -> Result<(), Error> {
        self.io.set_recv_low_water(bytes).map_err(|e| error::io_ctx("could not set the receive low-water mark", e))
    }

    /// Whether the server ended the replication stream in order (CopyDone), as opposed to the
    /// connection ending under it; for messages.
    pub fn server_ended_stream(&self) -> bool {
        matches!(self.state, State::CopyBothServerDone)
    }

    /// Bytes of protocol messages received from the server so far (start-up included), for
    /// callers that account for what crossed the wire.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// The server process id (BackendKeyData).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Whether the connection is encrypted.
    pub fn uses_tls(&self) -> bool {
        self.io.is_tls()
    }

    /// Whether a query sent with [`Client::start_query`] still waits for
    /// [`Client::finish_query`].
    pub fn query_in_flight(&self) -> bool {
        self.state == State::QuerySent
    }

    /// Whether the connection can no longer be used (an error left the protocol position
    /// unknown, or the connection was lost).
    pub fn is_broken(&self) -> bool {
        matches!(self.state, State::Broken(_))
    }

    /// NoticeResponses received so far (oldest first; at most the last 1000 are kept).
    pub fn notices(&mut self) -> Vec<ServerError> {
        self.notices.drain(..).collect()
    }
}

#[cfg(test)]
mod tests;
