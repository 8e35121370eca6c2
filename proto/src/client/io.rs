//! Message I/O of the [`Client`]: waiting through the caller's [`Wait`](super::Wait), flushing
//! the write buffer, reading and splitting backend messages (absorbing ParameterStatus and
//! notices on the way), FATAL handling, and the per-command state bookkeeping every command
//! goes through.

use std::time::Instant;

use bytes::{Buf, BytesMut};
use postgres_protocol::message::backend::{Header, Message};
use postgres_protocol::message::frontend;

use super::error::{parse_error_fields, proto_err};
use super::{Client, Error, Interest, Msg, ServerError, State};

const NOTICE_CAP: usize = 1000;
pub(super) const READ_CHUNK: usize = 64 * 1024;
const MAX_READ_CHUNK: usize = 1024 * 1024;
/// PostgreSQL never sends a message longer than 1 GB (MaxAllocSize); anything longer is a
/// corrupted stream, refused before any memory is committed to it.
const MAX_MSG: usize = 0x4000_0000 + 1024;
/// During startup, messages longer than this mean we are not talking to PostgreSQL.
const MAX_STARTUP_MSG: usize = 1 << 20;

/// A message tag as `'Z'`, or `0x07` when not printable.
pub(super) fn tag_name(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}

/// The two NUL-terminated strings of a ParameterStatus body.
fn cstr_pair(body: &[u8]) -> Option<(String, String)> {
    let a = body.iter().position(|&b| b == 0)?;
    let rest = &body[a + 1..];
    let b = rest.iter().position(|&b| b == 0)?;
    Some((String::from_utf8_lossy(&body[..a]).into_owned(), String::from_utf8_lossy(&rest[..b]).into_owned()))
}

/// A regular backend message (anything `try_parse` does not handle itself).
fn parse_backend(tag: u8, frame: &mut BytesMut) -> Result<Msg, Error> {
    match Message::parse(frame) {
        Ok(Some(m)) => Ok(Msg::Proto(m)),
        Ok(None) => Err(proto_err(format!("could not parse message {} from server", tag_name(tag)))),
        Err(e) => Err(proto_err(format!("invalid message {} from server: {e}", tag_name(tag)))),
    }
}

impl Client {
    /// Runs one command: checks that the connection is idle (finishing a pending
    /// ReadyForQuery first), marks it busy, and marks it broken if an error escapes before the
    /// command's ReadyForQuery (or CopyBothResponse) was seen.
    pub(super) fn command<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, Error>) -> Result<T, Error> {
        match &self.state {
            State::Idle => {}
            State::AwaitReady => self.end_copy()?,
            State::CopyBoth | State::CopyBothServerDone => {
                return Err(proto_err("a replication stream is active: call end_copy() first"))
            }
            State::Busy => {
                return Err(proto_err("connection is no longer usable: a previous command did not complete"))
            }
            State::QuerySent => return Err(proto_err("a query's answer is pending: call finish_query() first")),
            State::Broken(why) => return Err(proto_err(format!("connection is no longer usable: {why}"))),
        }
        self.state = State::Busy;
        let r = f(self);
        self.break_if_busy(&r);
        r
    }

    /// After a step of a command: an error that escaped while the command was still in flight
    /// leaves the protocol position unknown, so the connection is broken.
    pub(super) fn break_if_busy<T>(&mut self, r: &Result<T, Error>) {
        if let Err(e) = r {
            if self.state == State::Busy {
                self.state = State::Broken(e.to_string());
            }
        }
    }

    pub(super) fn send_query(&mut self, sql: &str) -> Result<(), Error> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| proto_err(format!("invalid query: {e}")))?;
        self.flush(None)
    }

    /// A protocol error for a message that has no business arriving `when`.
    pub(super) fn unexpected(&self, msg: &Msg, when: &str) -> Error {
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

    pub(super) fn wait(&mut self, interest: Interest, deadline: Option<Instant>) -> Result<(), Error> {
        let fd = self.io.fd();
        self.waiter.wait(fd, interest, deadline)
    }

    /// Writes all of `wbuf` (and any queued TLS records), waiting as needed.
    pub(super) fn flush(&mut self, deadline: Option<Instant>) -> Result<(), Error> {
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
    pub(super) fn next_msg(&mut self, deadline: Option<Instant>) -> Result<Msg, Error> {
        loop {
            if let Some(m) = self.try_parse()? {
                return self.check_fatal(m);
            }
            let max = self.read_size();
            let n = self.io.read_some(&mut self.rbuf, max)?;
            self.bytes_received += n as u64;
            if n == 0 {
                self.wait(Interest::Read, deadline)?;
            }
        }
    }

    /// The next message if one is buffered or readable now (FATAL handled as in `next_msg`).
    pub(super) fn poll_msg(&mut self) -> Result<Option<Msg>, Error> {
        loop {
            if let Some(m) = self.try_parse()? {
                return self.check_fatal(m).map(Some);
            }
            let max = self.read_size();
            let n = self.io.read_some(&mut self.rbuf, max)?;
            self.bytes_received += n as u64;
            if n == 0 {
                return Ok(None);
            }
        }
    }

    pub(super) fn check_fatal(&mut self, m: Msg) -> Result<Msg, Error> {
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
    pub(super) fn try_parse(&mut self) -> Result<Option<Msg>, Error> {
        loop {
            let Some((tag, mut frame)) = self.take_frame()? else {
                return Ok(None);
            };
            let body = &frame[5..];
            match tag {
                b'd' => return Ok(Some(Msg::CopyData(frame.freeze().slice(5..)))),
                b'W' => return Ok(Some(Msg::CopyBothResponse)),
                b'E' => return Ok(Some(Msg::Error(parse_error_fields(body)))),
                b'N' => self.push_notice(parse_error_fields(body)),
                b'S' => {
                    if let Some((k, v)) = cstr_pair(body) {
                        self.params.insert(k, v);
                    }
                }
                b'A' | b'v' => {}
                tag => return parse_backend(tag, &mut frame).map(Some),
            }
        }
    }

    /// Splits the next whole message (header included) off `rbuf`, once its length has been
    /// checked; `None` (with the read-size hint updated) while it is incomplete.
    fn take_frame(&mut self) -> Result<Option<(u8, BytesMut)>, Error> {
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
        Ok(Some((header.tag(), self.rbuf.split_to(total))))
    }

    fn push_notice(&mut self, notice: ServerError) {
        if self.notices.len() >= NOTICE_CAP {
            self.notices.pop_front();
        }
        self.notices.push_back(notice);
    }

    /// Sends Terminate (best effort, without waiting) and closes the socket.
    /// Ends a session that was established but is not the one wanted (another host is tried):
    /// Terminate as [`close`](Self::close) does, handing back the waiter.
    pub(super) fn close_for_next_host(mut self) -> Box<dyn super::Wait> {
        self.wbuf.clear();
        frontend::terminate(&mut self.wbuf);
        let _ = self.io.write_some(&self.wbuf);
        self.io.close_notify();
        std::mem::replace(&mut self.waiter, Box::new(super::PollWait))
    }

    /// Sends Terminate after whatever is still queued (best effort: one non-blocking write) and
    /// a TLS close_notify, for a process about to exit while the client is still borrowed (the
    /// socket closes with the process). A server told so ends the session quietly; a walsender
    /// whose socket just closes logs "unexpected EOF on standby connection". Nothing is to be
    /// sent afterwards.
    pub fn terminate(&mut self) {
        frontend::terminate(&mut self.wbuf);
        if let Ok(n) = self.io.write_some(&self.wbuf) {
            self.wbuf.advance(n);
        }
        self.io.close_notify();
    }

    pub fn close(mut self) {
        self.wbuf.clear();
        frontend::terminate(&mut self.wbuf);
        let _ = self.io.write_some(&self.wbuf);
        self.io.close_notify();
        // Dropping `self` closes the socket.
    }
}
