//! The walsender client's errors: [`Error`] (everything that can go wrong talking to a server),
//! [`ServerError`] (an ErrorResponse or NoticeResponse) and the parsing of their wire fields.

use std::fmt;
use std::io;

use crate::conninfo::ConnInfoError;

/// A server `ErrorResponse` or `NoticeResponse`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{severity}: {message} (SQLSTATE {code}){}{}", line("DETAIL", .detail), line("HINT", .hint))]
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

/// `\nLABEL: text` for a field that is present.
fn line(label: &str, field: &Option<String>) -> String {
    field.as_ref().map(|v| format!("\n{label}: {v}")).unwrap_or_default()
}

/// Everything that can go wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection string is invalid.
    #[error("invalid connection string: {0}")]
    Config(#[from] ConnInfoError),
    /// A socket operation failed; the message says which and with whom.
    #[error("{0}")]
    Io(#[source] io::Error),
    /// TLS negotiation or certificate verification failed, or TLS was required but refused.
    #[error("TLS error: {0}")]
    Tls(String),
    /// Authentication could not be carried out on the client side (no password, unsupported
    /// method, bad SCRAM server signature). A password the server rejects is `Server` (28P01).
    #[error("authentication error: {0}")]
    Auth(String),
    /// The server sent an ErrorResponse.
    #[error("{0}")]
    Server(#[source] ServerError),
    /// The server sent something this client does not understand, or the API was misused
    /// (e.g. a query while a replication stream is active).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A deadline passed while waiting (connect_timeout).
    #[error("{0}")]
    Timeout(String),
    /// The waiter was interrupted (e.g. SIGTERM of the worker).
    #[error("interrupted while waiting for the server")]
    Interrupted,
    /// The server is not of the kind `target_session_attrs` asks for ("session is read-only",
    /// "server is not in hot standby mode", naming the server), and no later host was.
    #[error("{0}")]
    NotTarget(String),
    /// The server closed the connection — or, in the replication stream, ended it with CopyDone
    /// (then [`Client::end_copy`](super::Client::end_copy) can still finish the exchange cleanly).
    #[error("server closed the connection")]
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

/// A protocol violation (or API misuse) described by `what`.
pub(super) fn proto_err(what: impl fmt::Display) -> Error {
    Error::Protocol(what.to_string())
}

/// An I/O error with what was being done prefixed to its message.
pub(super) fn io_ctx(context: &str, e: io::Error) -> Error {
    Error::Io(io::Error::new(e.kind(), format!("{context}: {e}")))
}

/// Parses the fields of an ErrorResponse/NoticeResponse body (after the 5-byte header).
pub(super) fn parse_error_fields(body: &[u8]) -> ServerError {
    let mut e =
        ServerError { severity: String::new(), code: String::new(), message: String::new(), detail: None, hint: None };
    let mut localized_severity = String::new();
    let mut i = 0;
    while i < body.len() && body[i] != 0 {
        let t = body[i];
        i += 1;
        let end = body[i..].iter().position(|&b| b == 0).map(|p| i + p).unwrap_or(body.len());
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
