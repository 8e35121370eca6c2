//! Commands with a result: simple queries ([`Client::simple_query`] and its text rows),
//! the replication commands IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT and DROP_REPLICATION_SLOT,
//! and `COPY ... TO STDOUT` streamed through [`CopyOut`].

use bytes::Bytes;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{DataRowBody, Message, RowDescriptionBody};
use postgres_protocol::message::frontend;

use super::error::proto_err;
use super::{quote_ident, Client, Error, Msg, State};
use crate::lsn::Lsn;

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

/// Properties of a new logical slot beyond its snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotOptions {
    /// Decode prepared transactions at PREPARE (PostgreSQL 15+).
    pub two_phase: bool,
    /// Synchronized to the publisher's physical standbys (`sync_replication_slots`), so that a
    /// promoted standby can go on serving the slot (PostgreSQL 17+).
    pub failover: bool,
}

/// The column names of a RowDescription.
fn column_names(body: &RowDescriptionBody) -> Result<Vec<String>, Error> {
    let mut columns = Vec::new();
    let mut fields = body.fields();
    while let Some(f) = fields.next().map_err(proto_err)? {
        columns.push(f.name().to_string());
    }
    Ok(columns)
}

/// A DataRow as text, checked against the preceding RowDescription.
fn data_row(body: &DataRowBody, columns: &[String]) -> Result<Row, Error> {
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
    Ok(Row { columns: columns.to_vec(), values })
}

/// The text value of column `i` of the first row, `None` when missing or NULL.
fn first_row_col(rows: &[Row], i: usize) -> Option<String> {
    rows.first()?.values.get(i).cloned().flatten()
}

impl Client {
    /// Runs `sql` (one or more statements) with the simple-query protocol and returns the rows
    /// of all statements, in order, as text. An ErrorResponse is returned as [`Error::Server`]
    /// after the server is ready again (the connection stays usable).
    pub fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, Error> {
        self.command(|c| {
            c.send_query(sql)?;
            c.query_result()
        })
    }

    /// Sends `sql` with the simple-query protocol without waiting for its answer, so that the
    /// caller can work meanwhile; [`Client::finish_query`] must come next and returns what
    /// [`Client::simple_query`] would have.
    pub fn start_query(&mut self, sql: &str) -> Result<(), Error> {
        self.command(|c| c.send_query(sql))?;
        self.state = State::QuerySent;
        Ok(())
    }

    /// The answer to the query sent with [`Client::start_query`].
    pub fn finish_query(&mut self) -> Result<Vec<Row>, Error> {
        if self.state != State::QuerySent {
            return Err(proto_err("finish_query() without start_query()"));
        }
        self.state = State::Busy;
        let r = self.query_result();
        self.break_if_busy(&r);
        r
    }

    /// Reads a simple query's answer up to ReadyForQuery.
    fn query_result(&mut self) -> Result<Vec<Row>, Error> {
        {
            let c = self;
            let mut rows = Vec::new();
            let mut columns: Vec<String> = Vec::new();
            let mut err: Option<Error> = None;
            loop {
                match c.next_msg(None)? {
                    Msg::Proto(Message::RowDescription(body)) => columns = column_names(&body)?,
                    Msg::Proto(Message::DataRow(body)) => rows.push(data_row(&body, &columns)?),
                    Msg::Proto(Message::CommandComplete(_)) | Msg::Proto(Message::EmptyQueryResponse) => {}
                    Msg::Proto(Message::CopyInResponse(_)) => c.refuse_copy_in()?,
                    Msg::Proto(Message::CopyOutResponse(_)) => {
                        err.get_or_insert(proto_err(
                            "COPY TO STDOUT in simple_query: use copy_out() (output discarded)",
                        ));
                    }
                    Msg::CopyData(_) | Msg::Proto(Message::CopyDone) => {}
                    Msg::CopyBothResponse => {
                        return Err(proto_err("the command started a replication stream: use start_replication()"))
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
        }
    }

    /// Answers a CopyInResponse with CopyFail: this client never sends COPY data.
    fn refuse_copy_in(&mut self) -> Result<(), Error> {
        frontend::copy_fail("COPY FROM STDIN is not supported by this client", &mut self.wbuf).map_err(proto_err)?;
        self.flush(None)
    }

    /// Runs `sql` and discards any rows.
    pub fn execute(&mut self, sql: &str) -> Result<(), Error> {
        self.simple_query(sql).map(|_| ())
    }

    /// IDENTIFY_SYSTEM (replication connections).
    pub fn identify_system(&mut self) -> Result<SystemInfo, Error> {
        let rows = self.simple_query("IDENTIFY_SYSTEM")?;
        if rows.is_empty() {
            return Err(proto_err("IDENTIFY_SYSTEM returned no row"));
        }
        let col = |i: usize| first_row_col(&rows, i);
        let systemid = col(0).ok_or_else(|| proto_err("IDENTIFY_SYSTEM: systemid missing"))?;
        let timeline =
            col(1).and_then(|t| t.parse::<u32>().ok()).ok_or_else(|| proto_err("IDENTIFY_SYSTEM: invalid timeline"))?;
        let xlogpos =
            col(2).and_then(|x| x.parse::<Lsn>().ok()).ok_or_else(|| proto_err("IDENTIFY_SYSTEM: invalid xlogpos"))?;
        Ok(SystemInfo { systemid, timeline, xlogpos, dbname: col(3) })
    }

    /// CREATE_REPLICATION_SLOT for pgoutput. PostgreSQL 15+ gets the parenthesised syntax
    /// (`(SNAPSHOT 'use', TWO_PHASE, FAILOVER)`), older servers the keyword syntax
    /// (`USE_SNAPSHOT`, ...); `two_phase` needs 15+, `failover` 17+.
    pub fn create_logical_slot(
        &mut self,
        name: &str,
        temporary: bool,
        snapshot: SnapshotAction,
        opts: SlotOptions,
    ) -> Result<SlotInfo, Error> {
        let sql = self.create_slot_command(name, temporary, snapshot, opts)?;
        let rows = self.simple_query(&sql)?;
        if rows.is_empty() {
            return Err(proto_err("CREATE_REPLICATION_SLOT returned no row"));
        }
        let col = |i: usize| first_row_col(&rows, i);
        let slot_name = col(0).ok_or_else(|| proto_err("CREATE_REPLICATION_SLOT: slot_name missing"))?;
        let consistent_point = col(1)
            .and_then(|x| x.parse::<Lsn>().ok())
            .ok_or_else(|| proto_err("CREATE_REPLICATION_SLOT: invalid consistent_point"))?;
        Ok(SlotInfo { slot_name, consistent_point, snapshot_name: col(2) })
    }

    /// The CREATE_REPLICATION_SLOT command in the syntax the server speaks.
    fn create_slot_command(
        &self,
        name: &str,
        temporary: bool,
        snapshot: SnapshotAction,
        opts: SlotOptions,
    ) -> Result<String, Error> {
        if opts.failover && self.server_version_num < 170000 {
            return Err(proto_err(format!(
                "failover replication slots need PostgreSQL 17 or later (server is {})",
                self.server_version_num
            )));
        }
        let two_phase = opts.two_phase;
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
            if opts.failover {
                sql.push_str(", FAILOVER");
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
        Ok(sql)
    }

    /// ALTER_REPLICATION_SLOT … (FAILOVER true|false) (PostgreSQL 17+).
    pub fn alter_slot_failover(&mut self, name: &str, failover: bool) -> Result<(), Error> {
        if self.server_version_num < 170000 {
            return Err(proto_err(format!(
                "failover replication slots need PostgreSQL 17 or later (server is {})",
                self.server_version_num
            )));
        }
        self.execute(&format!("ALTER_REPLICATION_SLOT {} (FAILOVER {failover})", quote_ident(name)))
    }

    /// `ALTER_REPLICATION_SLOT name (TWO_PHASE false|true)`: PostgreSQL 18 lets a slot stop (or
    /// start) decoding prepared transactions as such.
    pub fn alter_slot_two_phase(&mut self, name: &str, two_phase: bool) -> Result<(), Error> {
        if self.server_version_num < 180000 {
            return Err(proto_err(format!(
                "altering two_phase of a replication slot needs PostgreSQL 18 or later (server is {})",
                self.server_version_num
            )));
        }
        self.execute(&format!("ALTER_REPLICATION_SLOT {} (TWO_PHASE {two_phase})", quote_ident(name)))
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
    pub fn copy_out(&mut self, sql: &str, on_data: &mut dyn FnMut(&[u8]) -> Result<(), Error>) -> Result<u64, Error> {
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
}

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
        if r.is_err() {
            self.done = true;
            self.c.break_if_busy(&r);
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

    /// The next message of the COPY, waiting for it when `wait`, else only if already received.
    fn next_msg(&mut self, wait: bool) -> Result<Option<Msg>, Error> {
        let c = &mut *self.c;
        if wait {
            return c.next_msg(None).map(Some);
        }
        match c.try_parse()? {
            Some(m) => c.check_fatal(m).map(Some),
            None => Ok(None),
        }
    }

    fn step(&mut self, wait: bool) -> Result<Option<Bytes>, Error> {
        loop {
            let Some(msg) = self.next_msg(wait)? else {
                return Ok(None);
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
                Msg::Proto(Message::RowDescription(_) | Message::DataRow(_) | Message::EmptyQueryResponse) => {
                    self.err.get_or_insert(proto_err("copy_out: the statement is not COPY ... TO STDOUT"));
                }
                Msg::Proto(Message::CopyInResponse(_)) => self.c.refuse_copy_in()?,
                Msg::Error(e) => {
                    self.err.get_or_insert(Error::Server(e));
                }
                Msg::Proto(Message::ReadyForQuery(_)) => {
                    self.c.state = State::Idle;
                    self.done = true;
                    return match self.err.take() {
                        Some(e) => Err(e),
                        None if !self.started => Err(proto_err("copy_out: no COPY was started")),
                        None => Ok(None),
                    };
                }
                other => return Err(self.c.unexpected(&other, "in a COPY response")),
            }
        }
    }
}
