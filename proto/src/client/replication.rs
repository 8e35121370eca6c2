//! The replication stream: pgoutput's START_REPLICATION options ([`PgOutputOptions`]),
//! starting the stream, the CopyBoth phase (non-blocking [`Client::recv_frame`],
//! [`Client::send_status`]) and ending it ([`Client::end_copy`]).

use std::time::{Duration, Instant};

use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::error::proto_err;
use super::quote::repl_literal;
use super::{quote_ident, Client, Error, Msg, State};
use crate::frame::{encode_standby_status, now_pg_micros, parse_frame, ReplicationFrame};
use crate::lsn::Lsn;

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

    /// Whether the publisher sends binary tuples: `binary` asked and a protocol that carries it
    /// (publishers before 14 send text whatever is asked).
    pub fn binary_in_use(&self) -> bool {
        self.binary && self.proto_version >= 2
    }

    /// The parenthesised option list of START_REPLICATION, e.g.
    /// `(proto_version '3', publication_names '"a","b""c"')`.
    ///
    /// Options are only sent when set and when the protocol version (which
    /// [`PgOutputOptions::for_server`] derives from the server version) implies server support:
    /// `binary`, `messages`, `streaming` need version ≥ 2 (PostgreSQL 14), `two_phase` ≥ 3 (15),
    /// `origin` and `streaming 'parallel'` ≥ 4 (16); `parallel` degrades to `on` below 4.
    pub fn to_sql_options(&self) -> String {
        let pubs = self.publication_names.iter().map(|p| quote_ident(p)).collect::<Vec<_>>().join(",");
        let mut opts = vec![
            format!("proto_version '{}'", self.proto_version),
            format!("publication_names {}", repl_literal(&pubs)),
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
                opts.push(format!("origin {}", repl_literal(o)));
            }
        }
        format!("({})", opts.join(", "))
    }
}

impl Client {
    /// Sends `START_REPLICATION SLOT "slot" LOGICAL X/Y (options)` and waits for the
    /// CopyBothResponse. Afterwards use [`recv_frame`](Self::recv_frame),
    /// [`send_status`](Self::send_status) and [`end_copy`](Self::end_copy).
    pub fn start_replication(&mut self, slot: &str, start: Lsn, opts: &PgOutputOptions) -> Result<(), Error> {
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
        let sql = format!("START_REPLICATION SLOT {} LOGICAL {} {}", quote_ident(slot), start, opts.to_sql_options());
        let deadline = timeout.map(|t| Instant::now() + t);
        let timed_out = |e: Error| match (e, timeout) {
            (Error::Timeout(_), Some(t)) => {
                Error::Timeout(format!("no answer to START_REPLICATION within {} ms", t.as_millis()))
            }
            (e, _) => e,
        };
        self.command(|c| {
            frontend::query(&sql, &mut c.wbuf).map_err(|e| proto_err(format!("invalid query: {e}")))?;
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
                        return Err(
                            err.unwrap_or_else(|| proto_err("START_REPLICATION completed without starting a stream"))
                        );
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
            State::Broken(why) => return Err(proto_err(format!("connection is no longer usable: {why}"))),
            _ => return Err(proto_err("recv_frame: no replication stream is active")),
        }
        match self.poll_msg() {
            Ok(None) => Ok(None),
            Ok(Some(msg)) => self.stream_message(msg).map(Some),
            Err(e) => {
                if !matches!(self.state, State::Broken(_)) {
                    self.state = State::Broken(e.to_string());
                }
                Err(e)
            }
        }
    }

    /// One message received in CopyBoth: a frame, or the end of the stream.
    fn stream_message(&mut self, msg: Msg) -> Result<ReplicationFrame, Error> {
        match msg {
            Msg::CopyData(data) => {
                parse_frame(data).map_err(|e| proto_err(format!("invalid replication message: {e}")))
            }
            Msg::Proto(Message::CopyDone) => {
                self.state = State::CopyBothServerDone;
                Err(Error::Closed)
            }
            Msg::Error(e) => {
                self.state = State::AwaitReady;
                Err(Error::Server(e))
            }
            Msg::Proto(Message::CommandComplete(_)) => {
                // A walsender that finished streaming at shutdown sends CommandComplete and
                // exits without waiting for our CopyDone.
                self.state = State::Broken("the server ended the replication stream".into());
                Err(Error::Closed)
            }
            other => {
                let e = self.unexpected(&other, "in the replication stream");
                self.state = State::Broken(e.to_string());
                Err(e)
            }
        }
    }

    /// Sends a standby status update (positions are "last byte + 1" of what was written,
    /// flushed and applied). Waits (through the waiter) only if the socket buffer is full.
    pub fn send_status(&mut self, write: Lsn, flush: Lsn, apply: Lsn, reply_requested: bool) -> Result<(), Error> {
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
            State::Busy | State::QuerySent => {
                return Err(proto_err("connection is no longer usable: a previous command did not complete"))
            }
            State::Broken(why) => return Err(proto_err(format!("connection is no longer usable: {why}"))),
        }
        // A receive low-water mark raised for the stream (`set_receive_low_water`) would hold the
        // few bytes of the replies below back from a waiter for good: the rest of the session
        // wakes at the first byte again.
        if let Err(e) = self.io.set_recv_low_water(1) {
            let e = super::error::io_ctx("could not reset the receive low-water mark", e);
            self.state = State::Broken(e.to_string());
            return Err(e);
        }
        let was = std::mem::replace(&mut self.state, State::Busy);
        let r = self.finish_copy(was != State::AwaitReady);
        self.break_if_busy(&r);
        r
    }

    /// Sends our CopyDone (unless the server already aborted the stream with an error) and reads
    /// through to ReadyForQuery.
    fn finish_copy(&mut self, send_copy_done: bool) -> Result<(), Error> {
        if send_copy_done {
            frontend::copy_done(&mut self.wbuf);
            self.flush(None)?;
        }
        let mut err: Option<Error> = None;
        loop {
            match self.next_msg(None)? {
                Msg::CopyData(_) | Msg::Proto(Message::CopyDone) | Msg::Proto(Message::CommandComplete(_)) => {}
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
                other => return Err(self.unexpected(&other, "while ending the replication stream")),
            }
        }
    }
}
