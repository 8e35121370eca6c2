//! Decoder for the pgoutput logical-replication protocol, versions 1–4: every message the
//! walsender's `pgoutput` plugin can emit (the payload of one XLogData frame), the small amount
//! of state needed to decode streamed transactions (the extra xid carried inside a
//! Stream Start … Stream Stop block), and the decoded message types.
//!
//! Decoding never panics on malformed input and never allocates from an untrusted length
//! before checking it against the bytes actually present. Column values and logical-message
//! contents are zero-copy slices of the input [`Bytes`].

use std::fmt;

use bytes::Bytes;

use crate::lsn::Lsn;

/// Lowest pgoutput `proto_version` this decoder understands.
pub const MIN_PROTO_VERSION: u32 = 1;
/// Highest pgoutput `proto_version` this decoder understands.
pub const MAX_PROTO_VERSION: u32 = 4;

// Message tags (`LogicalRepMsgType` in PostgreSQL's logicalproto.h).
const TAG_BEGIN: u8 = b'B';
const TAG_COMMIT: u8 = b'C';
const TAG_ORIGIN: u8 = b'O';
const TAG_RELATION: u8 = b'R';
const TAG_TYPE: u8 = b'Y';
const TAG_INSERT: u8 = b'I';
const TAG_UPDATE: u8 = b'U';
const TAG_DELETE: u8 = b'D';
const TAG_TRUNCATE: u8 = b'T';
const TAG_MESSAGE: u8 = b'M';
const TAG_STREAM_START: u8 = b'S';
const TAG_STREAM_STOP: u8 = b'E';
const TAG_STREAM_COMMIT: u8 = b'c';
const TAG_STREAM_ABORT: u8 = b'A';
const TAG_BEGIN_PREPARE: u8 = b'b';
const TAG_PREPARE: u8 = b'P';
const TAG_COMMIT_PREPARED: u8 = b'K';
const TAG_ROLLBACK_PREPARED: u8 = b'r';
const TAG_STREAM_PREPARE: u8 = b'p';

// Tuple column kinds.
const COL_NULL: u8 = b'n';
const COL_UNCHANGED_TOAST: u8 = b'u';
const COL_TEXT: u8 = b't';
const COL_BINARY: u8 = b'b';

// Tuple markers inside Update/Delete/Insert.
const TUPLE_NEW: u8 = b'N';
const TUPLE_KEY: u8 = b'K';
const TUPLE_OLD: u8 = b'O';

const MESSAGE_TRANSACTIONAL: u8 = 1;
const TRUNCATE_CASCADE: u8 = 1;
const TRUNCATE_RESTART_IDENTITY: u8 = 2;
const COLUMN_IS_KEY: u8 = 1;

/// Native-style name of a message tag ("INSERT", "STREAM START", …), or `None` if unknown.
pub fn tag_name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        TAG_BEGIN => "BEGIN",
        TAG_COMMIT => "COMMIT",
        TAG_ORIGIN => "ORIGIN",
        TAG_RELATION => "RELATION",
        TAG_TYPE => "TYPE",
        TAG_INSERT => "INSERT",
        TAG_UPDATE => "UPDATE",
        TAG_DELETE => "DELETE",
        TAG_TRUNCATE => "TRUNCATE",
        TAG_MESSAGE => "MESSAGE",
        TAG_STREAM_START => "STREAM START",
        TAG_STREAM_STOP => "STREAM STOP",
        TAG_STREAM_COMMIT => "STREAM COMMIT",
        TAG_STREAM_ABORT => "STREAM ABORT",
        TAG_BEGIN_PREPARE => "BEGIN PREPARE",
        TAG_PREPARE => "PREPARE",
        TAG_COMMIT_PREPARED => "COMMIT PREPARED",
        TAG_ROLLBACK_PREPARED => "ROLLBACK PREPARED",
        TAG_STREAM_PREPARE => "STREAM PREPARE",
        _ => return None,
    })
}

/// The first protocol version in which a message tag can appear.
fn since_version(tag: u8) -> u32 {
    match tag {
        TAG_STREAM_START | TAG_STREAM_STOP | TAG_STREAM_COMMIT | TAG_STREAM_ABORT => 2,
        TAG_BEGIN_PREPARE
        | TAG_PREPARE
        | TAG_COMMIT_PREPARED
        | TAG_ROLLBACK_PREPARED
        | TAG_STREAM_PREPARE => 3,
        _ => 1,
    }
}

// ---------------------------------------------------------------------------------------------
// Message types
// ---------------------------------------------------------------------------------------------

/// 'B': start of a (non-streamed) transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the commit record (the transaction's final LSN).
    pub final_lsn: Lsn,
    /// Commit timestamp, µs since 2000-01-01 UTC.
    pub commit_time: i64,
    pub xid: u32,
}

/// 'C': end of a (non-streamed) transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Currently always 0.
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End LSN of the transaction (commit record end).
    pub end_lsn: Lsn,
    /// Commit timestamp, µs since 2000-01-01 UTC.
    pub commit_time: i64,
}

/// 'O': the transaction (or the first stream segment) originated on another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Commit LSN on the origin server ([`Lsn::INVALID`] when sent inside a streamed block).
    pub commit_lsn: Lsn,
    pub name: String,
}

/// Replica identity of a relation (`pg_class.relreplident`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// 'd': primary key.
    Default,
    /// 'n': nothing.
    Nothing,
    /// 'f': all columns.
    Full,
    /// 'i': a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// Maps the wire byte ('d', 'n', 'f', 'i').
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }

    /// The wire byte.
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity (all columns under REPLICA IDENTITY FULL).
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    /// `atttypmod` (-1 when none).
    pub type_modifier: i32,
}

/// 'R': relation description, sent before the first change to a relation (and again after its
/// definition changes). Column order matches the tuples of later changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Streamed transaction's xid (only inside a Stream Start … Stream Stop block).
    pub xid: Option<u32>,
    pub oid: u32,
    /// Schema name; the wire's empty string is reported as `pg_catalog`, as PostgreSQL does.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

/// 'Y': a (non-built-in) data type used by a following relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMsg {
    pub xid: Option<u32>,
    pub oid: u32,
    /// Schema name; the wire's empty string is reported as `pg_catalog`, as PostgreSQL does.
    pub namespace: String,
    pub name: String,
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// 'n'
    Null,
    /// 'u': an unchanged TOASTed value whose content is not sent.
    UnchangedToast,
    /// 't': text output of the type (a slice of the received message).
    Text(Bytes),
    /// 'b': binary send output of the type (a slice of the received message).
    Binary(Bytes),
}

impl TupleValue {
    /// The value's bytes for `Text` and `Binary`, `None` otherwise.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            TupleValue::Text(b) | TupleValue::Binary(b) => Some(b),
            TupleValue::Null | TupleValue::UnchangedToast => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, TupleValue::Null)
    }
}

/// A row: one value per column of the relation, in relation order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TupleData {
    pub columns: Vec<TupleValue>,
}

/// The old row of an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// 'K': only the replica-identity columns are meaningful (others are null).
    Key(TupleData),
    /// 'O': the whole old row (REPLICA IDENTITY FULL).
    Full(TupleData),
}

impl OldTuple {
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// 'I'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub xid: Option<u32>,
    pub rel_oid: u32,
    pub new: TupleData,
}

/// 'U'. `old` is present when the replica identity changed ('K') or is FULL ('O').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub xid: Option<u32>,
    pub rel_oid: u32,
    pub old: Option<OldTuple>,
    pub new: TupleData,
}

/// 'D'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub xid: Option<u32>,
    pub rel_oid: u32,
    pub old: OldTuple,
}

/// 'T'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    pub xid: Option<u32>,
    pub cascade: bool,
    pub restart_identity: bool,
    pub rel_oids: Vec<u32>,
}

/// 'M': a logical decoding message (`pg_logical_emit_message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub xid: Option<u32>,
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: String,
    /// A slice of the received message.
    pub content: Bytes,
}

/// 'S'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    pub xid: u32,
    /// First segment streamed for this transaction.
    pub first_segment: bool,
}

/// 'c'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    pub xid: u32,
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: i64,
}

/// 'A'. `subxid == xid` for a top-level abort. `abort_lsn`/`abort_time` are present only with
/// protocol 4 and `streaming = parallel` (see [`Decoder::with_stream_abort_lsn`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAbort {
    pub xid: u32,
    pub subxid: u32,
    pub abort_lsn: Option<Lsn>,
    pub abort_time: Option<i64>,
}

/// 'b'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginPrepare {
    pub prepare_lsn: Lsn,
    pub end_lsn: Lsn,
    pub prepare_time: i64,
    pub xid: u32,
    pub gid: String,
}

/// 'P' (and 'p', Stream Prepare, which has the same layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepare {
    pub flags: u8,
    pub prepare_lsn: Lsn,
    pub end_lsn: Lsn,
    pub prepare_time: i64,
    pub xid: u32,
    pub gid: String,
}

/// 'K'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPrepared {
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: i64,
    pub xid: u32,
    pub gid: String,
}

/// 'r'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPrepared {
    pub flags: u8,
    pub prepare_end_lsn: Lsn,
    pub rollback_end_lsn: Lsn,
    pub prepare_time: i64,
    pub rollback_time: i64,
    pub xid: u32,
    pub gid: String,
}

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeMsg),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(Message),
    StreamStart(StreamStart),
    StreamStop,
    StreamCommit(StreamCommit),
    StreamAbort(StreamAbort),
    BeginPrepare(BeginPrepare),
    Prepare(Prepare),
    CommitPrepared(CommitPrepared),
    RollbackPrepared(RollbackPrepared),
    StreamPrepare(Prepare),
}

impl LogicalMessage {
    /// The wire tag of this message.
    pub fn tag(&self) -> u8 {
        match self {
            LogicalMessage::Begin(_) => TAG_BEGIN,
            LogicalMessage::Commit(_) => TAG_COMMIT,
            LogicalMessage::Origin(_) => TAG_ORIGIN,
            LogicalMessage::Relation(_) => TAG_RELATION,
            LogicalMessage::Type(_) => TAG_TYPE,
            LogicalMessage::Insert(_) => TAG_INSERT,
            LogicalMessage::Update(_) => TAG_UPDATE,
            LogicalMessage::Delete(_) => TAG_DELETE,
            LogicalMessage::Truncate(_) => TAG_TRUNCATE,
            LogicalMessage::Message(_) => TAG_MESSAGE,
            LogicalMessage::StreamStart(_) => TAG_STREAM_START,
            LogicalMessage::StreamStop => TAG_STREAM_STOP,
            LogicalMessage::StreamCommit(_) => TAG_STREAM_COMMIT,
            LogicalMessage::StreamAbort(_) => TAG_STREAM_ABORT,
            LogicalMessage::BeginPrepare(_) => TAG_BEGIN_PREPARE,
            LogicalMessage::Prepare(_) => TAG_PREPARE,
            LogicalMessage::CommitPrepared(_) => TAG_COMMIT_PREPARED,
            LogicalMessage::RollbackPrepared(_) => TAG_ROLLBACK_PREPARED,
            LogicalMessage::StreamPrepare(_) => TAG_STREAM_PREPARE,
        }
    }

    /// Native-style message name, as PostgreSQL's `logicalrep_message_type` spells it
    /// ("BEGIN", "INSERT", "STREAM START", …).
    pub fn kind(&self) -> &'static str {
        tag_name(self.tag()).unwrap_or("???")
    }

    /// True for the messages PostgreSQL may send inside a Stream Start … Stream Stop block.
    fn allowed_in_stream(&self) -> bool {
        matches!(
            self,
            LogicalMessage::Relation(_)
                | LogicalMessage::Type(_)
                | LogicalMessage::Insert(_)
                | LogicalMessage::Update(_)
                | LogicalMessage::Delete(_)
                | LogicalMessage::Truncate(_)
                | LogicalMessage::Message(_)
                | LogicalMessage::Origin(_)
                | LogicalMessage::StreamStop
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a pgoutput message could not be decoded. `offset` is a byte offset into the message
/// (the tag is at offset 0); `field` names what was being read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Zero-length message.
    Empty,
    /// The decoder was asked for a protocol version outside 1..=4.
    UnsupportedVersion { version: u32 },
    /// Unknown message tag.
    UnknownTag { tag: u8 },
    /// The message does not exist in the negotiated protocol version.
    NotInVersion { tag: u8, version: u32, since: u32 },
    /// The message ended before `field` (which needs `needed` bytes; `available` remained).
    Truncated {
        tag: u8,
        offset: usize,
        field: &'static str,
        needed: usize,
        available: usize,
    },
    /// A string field has no terminating NUL before the end of the message.
    UnterminatedString {
        tag: u8,
        offset: usize,
        field: &'static str,
    },
    /// A string field is not valid UTF-8.
    InvalidUtf8 {
        tag: u8,
        offset: usize,
        field: &'static str,
    },
    /// A length or count field is negative.
    NegativeLength {
        tag: u8,
        offset: usize,
        field: &'static str,
        value: i32,
    },
    /// A tuple column kind other than 'n', 'u', 't', 'b'.
    BadTupleKind { tag: u8, offset: usize, kind: u8 },
    /// A tuple marker other than the ones allowed here ('N', 'K', 'O').
    BadTupleMarker {
        tag: u8,
        offset: usize,
        expected: &'static str,
        got: u8,
    },
    /// A replica identity other than 'd', 'n', 'f', 'i'.
    BadReplicaIdentity { tag: u8, offset: usize, got: u8 },
    /// Bytes left over after the last field.
    TrailingBytes {
        tag: u8,
        offset: usize,
        extra: usize,
    },
    /// Stream Start while a streamed block is already open.
    NestedStreamStart { xid: u32 },
    /// Stream Stop without a Stream Start.
    StreamStopOutsideStream,
    /// A message PostgreSQL never sends between Stream Start and Stream Stop.
    UnexpectedInStream { tag: u8 },
}

struct TagDisplay(u8);

impl fmt::Display for TagDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0;
        match tag_name(t) {
            Some(name) => write!(f, "{name} ('{}')", t as char),
            None if t.is_ascii_graphic() => write!(f, "'{}' (0x{t:02x})", t as char),
            None => write!(f, "0x{t:02x}"),
        }
    }
}

struct ByteDisplay(u8);

impl fmt::Display for ByteDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}' (0x{:02x})", self.0 as char, self.0)
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DecodeError::*;
        match self {
            Empty => write!(f, "empty pgoutput message"),
            UnsupportedVersion { version } => write!(
                f,
                "unsupported pgoutput protocol version {version} (supported: \
                 {MIN_PROTO_VERSION}..={MAX_PROTO_VERSION})"
            ),
            UnknownTag { tag } => {
                write!(f, "unknown pgoutput message type {}", ByteDisplay(*tag))
            }
            NotInVersion {
                tag,
                version,
                since,
            } => write!(
                f,
                "pgoutput message {} requires protocol version {since}, but version {version} \
                 was negotiated",
                TagDisplay(*tag)
            ),
            Truncated {
                tag,
                offset,
                field,
                needed,
                available,
            } => write!(
                f,
                "truncated {} message at offset {offset}: {field} needs {needed} bytes, \
                 {available} left",
                TagDisplay(*tag)
            ),
            UnterminatedString { tag, offset, field } => write!(
                f,
                "{} message: {field} at offset {offset} is not NUL-terminated",
                TagDisplay(*tag)
            ),
            InvalidUtf8 { tag, offset, field } => write!(
                f,
                "{} message: {field} at offset {offset} is not valid UTF-8",
                TagDisplay(*tag)
            ),
            NegativeLength {
                tag,
                offset,
                field,
                value,
            } => write!(
                f,
                "{} message: {field} at offset {offset} is negative ({value})",
                TagDisplay(*tag)
            ),
            BadTupleKind { tag, offset, kind } => write!(
                f,
                "{} message: unrecognized column kind {} at offset {offset} (expected 'n', 'u', \
                 't' or 'b')",
                TagDisplay(*tag),
                ByteDisplay(*kind)
            ),
            BadTupleMarker {
                tag,
                offset,
                expected,
                got,
            } => write!(
                f,
                "{} message: expected {expected} at offset {offset}, got {}",
                TagDisplay(*tag),
                ByteDisplay(*got)
            ),
            BadReplicaIdentity { tag, offset, got } => write!(
                f,
                "{} message: unrecognized replica identity {} at offset {offset} (expected 'd', \
                 'n', 'f' or 'i')",
                TagDisplay(*tag),
                ByteDisplay(*got)
            ),
            TrailingBytes { tag, offset, extra } => write!(
                f,
                "{} message has {extra} unexpected trailing bytes at offset {offset}",
                TagDisplay(*tag)
            ),
            NestedStreamStart { xid } => write!(
                f,
                "STREAM START for xid {xid} inside an already open streamed block"
            ),
            StreamStopOutsideStream => write!(f, "STREAM STOP outside a streamed block"),
            UnexpectedInStream { tag } => write!(
                f,
                "{} message inside a streamed block (between STREAM START and STREAM STOP)",
                TagDisplay(*tag)
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

// ---------------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------------

/// Bounds-checked big-endian cursor over one message.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    tag: u8,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn range(&self, n: usize, field: &'static str) -> Result<(usize, usize), DecodeError> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.buf.len() => Ok((self.pos, end)),
            _ => Err(DecodeError::Truncated {
                tag: self.tag,
                offset: self.pos,
                field,
                needed: n,
                available: self.remaining(),
            }),
        }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let (start, end) = self.range(n, field)?;
        let buf: &'a Bytes = self.buf;
        let s = buf.get(start..end).ok_or(DecodeError::Truncated {
            tag: self.tag,
            offset: start,
            field,
            needed: n,
            available: self.remaining(),
        })?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let offset = self.pos;
        let s = self.take(N, field)?;
        s.try_into().map_err(|_| DecodeError::Truncated {
            tag: self.tag,
            offset,
            field,
            needed: N,
            available: s.len(),
        })
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array(field)?)))
    }

    /// A signed Int32 length/count that must not be negative.
    fn len_i32(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let v = self.i32(field)?;
        usize::try_from(v).map_err(|_| DecodeError::NegativeLength {
            tag: self.tag,
            offset,
            field,
            value: v,
        })
    }

    /// `n` bytes as a zero-copy slice of the message.
    fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        let (start, end) = self.range(n, field)?;
        let b = self.buf.slice(start..end);
        self.pos = end;
        Ok(b)
    }

    /// A NUL-terminated UTF-8 string.
    fn cstr(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let offset = self.pos;
        let buf: &'a Bytes = self.buf;
        let rest = buf.get(offset..).unwrap_or(&[]);
        let unterminated = DecodeError::UnterminatedString {
            tag: self.tag,
            offset,
            field,
        };
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(unterminated.clone())?;
        let raw = rest.get(..nul).ok_or(unterminated)?;
        let s = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8 {
            tag: self.tag,
            offset,
            field,
        })?;
        self.pos = offset + nul + 1;
        Ok(s.to_owned())
    }

    /// A namespace name: the wire's empty string stands for `pg_catalog`.
    fn namespace(&mut self) -> Result<String, DecodeError> {
        let s = self.cstr("namespace")?;
        Ok(if s.is_empty() {
            "pg_catalog".to_owned()
        } else {
            s
        })
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes {
                tag: self.tag,
                offset: self.pos,
                extra,
            }),
        }
    }

    fn tuple(&mut self) -> Result<TupleData, DecodeError> {
        let ncols = usize::from(self.u16("column count")?);
        // Every column takes at least one byte: never reserve more than could be present.
        let mut columns = Vec::with_capacity(ncols.min(self.remaining()));
        for _ in 0..ncols {
            let kind_offset = self.pos;
            let kind = self.u8("column kind")?;
            let value = match kind {
                COL_NULL => TupleValue::Null,
                COL_UNCHANGED_TOAST => TupleValue::UnchangedToast,
                COL_TEXT => {
                    let len = self.len_i32("column value length")?;
                    TupleValue::Text(self.bytes(len, "column value")?)
                }
                COL_BINARY => {
                    let len = self.len_i32("column value length")?;
                    TupleValue::Binary(self.bytes(len, "column value")?)
                }
                other => {
                    return Err(DecodeError::BadTupleKind {
                        tag: self.tag,
                        offset: kind_offset,
                        kind: other,
                    })
                }
            };
            columns.push(value);
        }
        Ok(TupleData { columns })
    }

    fn marker(&mut self, expected: &'static str, ok: &[u8]) -> Result<u8, DecodeError> {
        let offset = self.pos;
        let m = self.u8("tuple marker")?;
        if ok.contains(&m) {
            Ok(m)
        } else {
            Err(DecodeError::BadTupleMarker {
                tag: self.tag,
                offset,
                expected,
                got: m,
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Decodes one pgoutput message (the payload of one XLogData frame).
///
/// `in_stream` says whether the message arrived between Stream Start and Stream Stop; with
/// `proto_version >= 2` the change and metadata messages then carry a leading xid. Stream
/// Abort is decoded without the protocol-4 parallel-streaming fields; use
/// [`decode_one_with_abort_info`] or a [`Decoder`] configured with
/// [`Decoder::with_stream_abort_lsn`] to expect them.
pub fn decode_one(
    buf: Bytes,
    proto_version: u32,
    in_stream: bool,
) -> Result<LogicalMessage, DecodeError> {
    decode_one_with_abort_info(buf, proto_version, in_stream, false)
}

/// Like [`decode_one`], and when `stream_abort_has_lsn` is set and `proto_version >= 4`
/// (the subscriber asked for `streaming = parallel`), Stream Abort is expected to carry
/// `abort_lsn` and `abort_time`.
pub fn decode_one_with_abort_info(
    buf: Bytes,
    proto_version: u32,
    in_stream: bool,
    stream_abort_has_lsn: bool,
) -> Result<LogicalMessage, DecodeError> {
    if !(MIN_PROTO_VERSION..=MAX_PROTO_VERSION).contains(&proto_version) {
        return Err(DecodeError::UnsupportedVersion {
            version: proto_version,
        });
    }
    let tag = *buf.first().ok_or(DecodeError::Empty)?;
    if tag_name(tag).is_none() {
        return Err(DecodeError::UnknownTag { tag });
    }
    let since = since_version(tag);
    if proto_version < since {
        return Err(DecodeError::NotInVersion {
            tag,
            version: proto_version,
            since,
        });
    }

    let mut r = Reader {
        buf: &buf,
        pos: 1,
        tag,
    };
    let streamed_xid = in_stream && proto_version >= 2;
    let abort_info = stream_abort_has_lsn && proto_version >= 4;

    let msg = match tag {
        TAG_BEGIN => LogicalMessage::Begin(Begin {
            final_lsn: r.lsn("final lsn")?,
            commit_time: r.i64("commit timestamp")?,
            xid: r.u32("xid")?,
        }),
        TAG_COMMIT => LogicalMessage::Commit(Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit lsn")?,
            end_lsn: r.lsn("end lsn")?,
            commit_time: r.i64("commit timestamp")?,
        }),
        TAG_ORIGIN => LogicalMessage::Origin(Origin {
            commit_lsn: r.lsn("origin commit lsn")?,
            name: r.cstr("origin name")?,
        }),
        TAG_RELATION => {
            let xid = read_stream_xid(&mut r, streamed_xid)?;
            let oid = r.u32("relation oid")?;
            let namespace = r.namespace()?;
            let name = r.cstr("relation name")?;
            let ri_offset = r.pos;
            let ri = r.u8("replica identity")?;
            let replica_identity =
                ReplicaIdentity::from_byte(ri).ok_or(DecodeError::BadReplicaIdentity {
                    tag,
                    offset: ri_offset,
                    got: ri,
                })?;
            let ncols = usize::from(r.u16("column count")?);
            // A column is at least flags + NUL + type oid + typmod = 10 bytes.
            let mut columns = Vec::with_capacity(ncols.min(r.remaining() / 10));
            for _ in 0..ncols {
                let flags = r.u8("column flags")?;
                columns.push(Column {
                    is_key: flags & COLUMN_IS_KEY != 0,
                    name: r.cstr("column name")?,
                    type_oid: r.u32("column type oid")?,
                    type_modifier: r.i32("column type modifier")?,
                });
            }
            LogicalMessage::Relation(Relation {
                xid,
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        TAG_TYPE => {
            let xid = read_stream_xid(&mut r, streamed_xid)?;
            LogicalMessage::Type(TypeMsg {
                xid,
                oid: r.u32("type oid")?,
                namespace: r.namespace()?,
                name: r.cstr("type name")?,
            })
        }
        TAG_INSERT => {
            let xid = read_stream_xid(&mut r, streamed_xid)?;
            let rel_oid = r.u32("relation oid")?;
            r.marker("'N' (new tuple)", &[TUPLE_NEW])?;
            let new = r.tuple()?;
            LogicalMessage::Insert(Insert { xid, rel_oid, new })
        }
        TAG_UPDATE => {
            let xid = read_stream_xid(&mut r, streamed_xid)?;
            let rel_oid = r.u32("relation oid")?;
            let m = r.marker(
                "'K', 'O' (old tuple) or 'N' (new tuple)",
                &[TUPLE_KEY, TUPLE_OLD, TUPLE_NEW],
            )?;
            let old = match m {
                TUPLE_KEY => Some(OldTuple::Key(r.tuple()?)),
                TUPLE_OLD => Some(OldTuple::Full(r.tuple()?)),
                _ => None,
            };
            if old.is_some() {
                r.marker("'N' (new tuple)", &[TUPLE_NEW])?;
            }
            let new = r.tuple()?;
            LogicalMessage::Update(Update {
                xid,
                rel_oid,
                old,
                new,
            })
        }
        TAG_DELETE => {
            let xid = read_stream_xid(&mut r, streamed_xid)?;
            let rel_oid = r.u32("relation oid")?;
            let m = r.marker("'K' or 'O' (old tuple)", &[TUPLE_KEY, TUPLE_OLD])?;
            let t = r.tuple()?;
            let old = if m == TUPLE_KEY {
                OldTuple::Key(t)
            } else {
                OldTuple::Full(t)
            };
            LogicalMessage::Delete(Delete { xid, rel_oid, old })
        }
        TAG_TRUNCATE => {
            let xid = read_stream_xid(&mut r, streamed_xid)?;
            let n = r.len_i32("relation count")?;
            let flags = r.u8("truncate options")?;
            let mut rel_oids = Vec::with_capacity(n.min(r.remaining() / 4));
            for _ in 0..n {
                rel_oids.push(r.u32("relation oid")?);
            }
            LogicalMessage::Truncate(Truncate {
                xid,
                cascade: flags & TRUNCATE_CASCADE != 0,
                restart_identity: flags & TRUNCATE_RESTART_IDENTITY != 0,
                rel_oids,
            })
        }
        TAG_MESSAGE => {
            let xid = read_stream_xid(&mut r, streamed_xid)?;
            let flags = r.u8("flags")?;
            let lsn = r.lsn("message lsn")?;
            let prefix = r.cstr("prefix")?;
            let len = r.len_i32("content length")?;
            let content = r.bytes(len, "content")?;
            LogicalMessage::Message(Message {
                xid,
                transactional: flags & MESSAGE_TRANSACTIONAL != 0,
                lsn,
                prefix,
                content,
            })
        }
        TAG_STREAM_START => LogicalMessage::StreamStart(StreamStart {
            xid: r.u32("xid")?,
            // PostgreSQL's reader tests `== 1`.
            first_segment: r.u8("first segment")? == 1,
        }),
        TAG_STREAM_STOP => LogicalMessage::StreamStop,
        TAG_STREAM_COMMIT => LogicalMessage::StreamCommit(StreamCommit {
            xid: r.u32("xid")?,
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit lsn")?,
            end_lsn: r.lsn("end lsn")?,
            commit_time: r.i64("commit timestamp")?,
        }),
        TAG_STREAM_ABORT => {
            let xid = r.u32("xid")?;
            let subxid = r.u32("subtransaction xid")?;
            let (abort_lsn, abort_time) = if abort_info {
                (Some(r.lsn("abort lsn")?), Some(r.i64("abort timestamp")?))
            } else {
                (None, None)
            };
            LogicalMessage::StreamAbort(StreamAbort {
                xid,
                subxid,
                abort_lsn,
                abort_time,
            })
        }
        TAG_BEGIN_PREPARE => LogicalMessage::BeginPrepare(BeginPrepare {
            prepare_lsn: r.lsn("prepare lsn")?,
            end_lsn: r.lsn("end lsn")?,
            prepare_time: r.i64("prepare timestamp")?,
            xid: r.u32("xid")?,
            gid: r.cstr("gid")?,
        }),
        TAG_PREPARE => LogicalMessage::Prepare(read_prepare(&mut r)?),
        TAG_STREAM_PREPARE => LogicalMessage::StreamPrepare(read_prepare(&mut r)?),
        TAG_COMMIT_PREPARED => LogicalMessage::CommitPrepared(CommitPrepared {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit lsn")?,
            end_lsn: r.lsn("end lsn")?,
            commit_time: r.i64("commit timestamp")?,
            xid: r.u32("xid")?,
            gid: r.cstr("gid")?,
        }),
        TAG_ROLLBACK_PREPARED => LogicalMessage::RollbackPrepared(RollbackPrepared {
            flags: r.u8("flags")?,
            prepare_end_lsn: r.lsn("prepare end lsn")?,
            rollback_end_lsn: r.lsn("rollback end lsn")?,
            prepare_time: r.i64("prepare timestamp")?,
            rollback_time: r.i64("rollback timestamp")?,
            xid: r.u32("xid")?,
            gid: r.cstr("gid")?,
        }),
        other => return Err(DecodeError::UnknownTag { tag: other }),
    };
    r.finish()?;
    Ok(msg)
}

fn read_stream_xid(r: &mut Reader<'_>, present: bool) -> Result<Option<u32>, DecodeError> {
    if present {
        Ok(Some(r.u32("streamed transaction xid")?))
    } else {
        Ok(None)
    }
}

fn read_prepare(r: &mut Reader<'_>) -> Result<Prepare, DecodeError> {
    Ok(Prepare {
        flags: r.u8("flags")?,
        prepare_lsn: r.lsn("prepare lsn")?,
        end_lsn: r.lsn("end lsn")?,
        prepare_time: r.i64("prepare timestamp")?,
        xid: r.u32("xid")?,
        gid: r.cstr("gid")?,
    })
}

/// Stateful pgoutput decoder for one replication connection: it knows the negotiated protocol
/// version, whether Stream Abort carries the parallel-streaming fields, and whether a streamed
/// block (Stream Start … Stream Stop) is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoder {
    proto_version: u32,
    stream_abort_has_lsn: bool,
    in_stream: bool,
}

impl Decoder {
    /// A decoder for the `proto_version` passed to START_REPLICATION. Versions outside 1..=4
    /// make every [`decode`](Self::decode) fail with [`DecodeError::UnsupportedVersion`].
    pub fn new(proto_version: u32) -> Self {
        Decoder {
            proto_version,
            stream_abort_has_lsn: false,
            in_stream: false,
        }
    }

    /// Set when the subscriber asked for `proto_version` 4 with `streaming 'parallel'`: Stream
    /// Abort then carries `abort_lsn` and `abort_time`. Ignored for protocol versions below 4,
    /// where the server never sends them.
    #[must_use]
    pub fn with_stream_abort_lsn(mut self, on: bool) -> Self {
        self.stream_abort_has_lsn = on;
        self
    }

    pub fn proto_version(&self) -> u32 {
        self.proto_version
    }

    pub fn stream_abort_has_lsn(&self) -> bool {
        self.stream_abort_has_lsn
    }

    /// True between a Stream Start and its Stream Stop.
    pub fn in_stream(&self) -> bool {
        self.in_stream
    }

    /// Forgets any open streamed block (e.g. after reconnecting).
    pub fn reset(&mut self) {
        self.in_stream = false;
    }

    /// Decodes one message and updates the streamed-block state. On error the state is
    /// unchanged.
    pub fn decode(&mut self, buf: Bytes) -> Result<LogicalMessage, DecodeError> {
        let msg = decode_one_with_abort_info(
            buf,
            self.proto_version,
            self.in_stream,
            self.stream_abort_has_lsn,
        )?;
        match &msg {
            LogicalMessage::StreamStart(s) => {
                if self.in_stream {
                    return Err(DecodeError::NestedStreamStart { xid: s.xid });
                }
                self.in_stream = true;
            }
            LogicalMessage::StreamStop => {
                if !self.in_stream {
                    return Err(DecodeError::StreamStopOutsideStream);
                }
                self.in_stream = false;
            }
            other => {
                if self.in_stream && !other.allowed_in_stream() {
                    return Err(DecodeError::UnexpectedInStream { tag: other.tag() });
                }
            }
        }
        Ok(msg)
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    /// Test-only message builder following the documented layouts.
    #[derive(Default)]
    struct W(Vec<u8>);

    impl W {
        fn tag(t: u8) -> Self {
            W(vec![t])
        }
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn u16(mut self, v: u16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn s(mut self, v: &str) -> Self {
            self.0.extend_from_slice(v.as_bytes());
            self.0.push(0);
            self
        }
        fn raw(mut self, v: &[u8]) -> Self {
            self.0.extend_from_slice(v);
            self
        }
        fn opt_xid(self, xid: Option<u32>) -> Self {
            match xid {
                Some(x) => self.u32(x),
                None => self,
            }
        }
        fn text(self, v: &[u8]) -> Self {
            self.u8(b't').i32(v.len() as i32).raw(v)
        }
        fn bin(self, v: &[u8]) -> Self {
            self.u8(b'b').i32(v.len() as i32).raw(v)
        }
        fn bytes(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    fn b(v: &[u8]) -> Bytes {
        Bytes::copy_from_slice(v)
    }

    /// A tuple of 4 columns: text "42", null, unchanged toast, binary [0, 1, 2].
    fn tuple4(w: W) -> W {
        w.u16(4).text(b"42").u8(b'n').u8(b'u').bin(&[0, 1, 2])
    }

    fn tuple4_value() -> TupleData {
        TupleData {
            columns: vec![
                TupleValue::Text(b(b"42")),
                TupleValue::Null,
                TupleValue::UnchangedToast,
                TupleValue::Binary(b(&[0, 1, 2])),
            ],
        }
    }

    fn tuple1(w: W, v: &[u8]) -> W {
        w.u16(1).text(v)
    }

    fn tuple1_value(v: &[u8]) -> TupleData {
        TupleData {
            columns: vec![TupleValue::Text(b(v))],
        }
    }

    struct Fixture {
        name: &'static str,
        version: u32,
        in_stream: bool,
        abort_info: bool,
        bytes: Bytes,
        want: LogicalMessage,
    }

    fn fx(
        name: &'static str,
        version: u32,
        in_stream: bool,
        bytes: Bytes,
        want: LogicalMessage,
    ) -> Fixture {
        Fixture {
            name,
            version,
            in_stream,
            abort_info: false,
            bytes,
            want,
        }
    }

    /// Every message type, in each layout variant (plain, streamed with xid, v4 abort info).
    fn fixtures() -> Vec<Fixture> {
        let mut v = vec![
            fx(
                "begin",
                1,
                false,
                W::tag(b'B')
                    .u64(0x0000_0001_2345_6789)
                    .i64(700_000_000_000_000)
                    .u32(742)
                    .bytes(),
                LogicalMessage::Begin(Begin {
                    final_lsn: Lsn(0x1_2345_6789),
                    commit_time: 700_000_000_000_000,
                    xid: 742,
                }),
            ),
            fx(
                "commit",
                1,
                false,
                W::tag(b'C').u8(0).u64(100).u64(200).i64(-1).bytes(),
                LogicalMessage::Commit(Commit {
                    flags: 0,
                    commit_lsn: Lsn(100),
                    end_lsn: Lsn(200),
                    commit_time: -1,
                }),
            ),
            fx(
                "origin",
                1,
                false,
                W::tag(b'O').u64(0xABCD).s("node_a").bytes(),
                LogicalMessage::Origin(Origin {
                    commit_lsn: Lsn(0xABCD),
                    name: "node_a".into(),
                }),
            ),
            fx(
                "origin in stream (no xid prefix)",
                2,
                true,
                W::tag(b'O').u64(0).s("node_b").bytes(),
                LogicalMessage::Origin(Origin {
                    commit_lsn: Lsn::INVALID,
                    name: "node_b".into(),
                }),
            ),
            fx(
                "stream start",
                2,
                false,
                W::tag(b'S').u32(9000).u8(1).bytes(),
                LogicalMessage::StreamStart(StreamStart {
                    xid: 9000,
                    first_segment: true,
                }),
            ),
            fx(
                "stream start, later segment",
                4,
                false,
                W::tag(b'S').u32(9000).u8(0).bytes(),
                LogicalMessage::StreamStart(StreamStart {
                    xid: 9000,
                    first_segment: false,
                }),
            ),
            fx(
                "stream stop",
                2,
                true,
                W::tag(b'E').bytes(),
                LogicalMessage::StreamStop,
            ),
            fx(
                "stream commit",
                2,
                false,
                W::tag(b'c')
                    .u32(9000)
                    .u8(0)
                    .u64(300)
                    .u64(400)
                    .i64(5)
                    .bytes(),
                LogicalMessage::StreamCommit(StreamCommit {
                    xid: 9000,
                    flags: 0,
                    commit_lsn: Lsn(300),
                    end_lsn: Lsn(400),
                    commit_time: 5,
                }),
            ),
            fx(
                "stream abort v2",
                2,
                false,
                W::tag(b'A').u32(9000).u32(9001).bytes(),
                LogicalMessage::StreamAbort(StreamAbort {
                    xid: 9000,
                    subxid: 9001,
                    abort_lsn: None,
                    abort_time: None,
                }),
            ),
            fx(
                "stream abort v4 without parallel",
                4,
                false,
                W::tag(b'A').u32(9000).u32(9000).bytes(),
                LogicalMessage::StreamAbort(StreamAbort {
                    xid: 9000,
                    subxid: 9000,
                    abort_lsn: None,
                    abort_time: None,
                }),
            ),
            Fixture {
                abort_info: true,
                ..fx(
                    "stream abort v4 parallel",
                    4,
                    false,
                    W::tag(b'A')
                        .u32(9000)
                        .u32(9002)
                        .u64(0x5_0000_0010)
                        .i64(777)
                        .bytes(),
                    LogicalMessage::StreamAbort(StreamAbort {
                        xid: 9000,
                        subxid: 9002,
                        abort_lsn: Some(Lsn(0x5_0000_0010)),
                        abort_time: Some(777),
                    }),
                )
            },
            fx(
                "begin prepare",
                3,
                false,
                W::tag(b'b')
                    .u64(10)
                    .u64(20)
                    .i64(30)
                    .u32(40)
                    .s("gid-1")
                    .bytes(),
                LogicalMessage::BeginPrepare(BeginPrepare {
                    prepare_lsn: Lsn(10),
                    end_lsn: Lsn(20),
                    prepare_time: 30,
                    xid: 40,
                    gid: "gid-1".into(),
                }),
            ),
            fx(
                "prepare",
                3,
                false,
                W::tag(b'P')
                    .u8(0)
                    .u64(10)
                    .u64(20)
                    .i64(30)
                    .u32(40)
                    .s("gid-1")
                    .bytes(),
                LogicalMessage::Prepare(Prepare {
                    flags: 0,
                    prepare_lsn: Lsn(10),
                    end_lsn: Lsn(20),
                    prepare_time: 30,
                    xid: 40,
                    gid: "gid-1".into(),
                }),
            ),
            fx(
                "commit prepared",
                3,
                false,
                W::tag(b'K')
                    .u8(0)
                    .u64(11)
                    .u64(21)
                    .i64(31)
                    .u32(41)
                    .s("gïd")
                    .bytes(),
                LogicalMessage::CommitPrepared(CommitPrepared {
                    flags: 0,
                    commit_lsn: Lsn(11),
                    end_lsn: Lsn(21),
                    commit_time: 31,
                    xid: 41,
                    gid: "gïd".into(),
                }),
            ),
            fx(
                "rollback prepared",
                4,
                false,
                W::tag(b'r')
                    .u8(0)
                    .u64(12)
                    .u64(22)
                    .i64(32)
                    .i64(33)
                    .u32(42)
                    .s("")
                    .bytes(),
                LogicalMessage::RollbackPrepared(RollbackPrepared {
                    flags: 0,
                    prepare_end_lsn: Lsn(12),
                    rollback_end_lsn: Lsn(22),
                    prepare_time: 32,
                    rollback_time: 33,
                    xid: 42,
                    gid: String::new(),
                }),
            ),
            fx(
                "stream prepare",
                3,
                false,
                W::tag(b'p')
                    .u8(0)
                    .u64(13)
                    .u64(23)
                    .i64(34)
                    .u32(43)
                    .s("g")
                    .bytes(),
                LogicalMessage::StreamPrepare(Prepare {
                    flags: 0,
                    prepare_lsn: Lsn(13),
                    end_lsn: Lsn(23),
                    prepare_time: 34,
                    xid: 43,
                    gid: "g".into(),
                }),
            ),
        ];

        // Messages that gain a leading xid inside a streamed block (protocol >= 2).
        for (version, xid) in [(1u32, None), (2, Some(9000u32)), (3, None), (4, Some(77))] {
            let in_stream = xid.is_some();
            v.push(fx(
                "relation",
                version,
                in_stream,
                W::tag(b'R')
                    .opt_xid(xid)
                    .u32(16384)
                    .s("public")
                    .s("accounts")
                    .u8(b'd')
                    .u16(3)
                    .u8(1)
                    .s("id")
                    .u32(23)
                    .i32(-1)
                    .u8(0)
                    .s("name")
                    .u32(1043)
                    .i32(68)
                    .u8(0)
                    .s("ünïcode")
                    .u32(25)
                    .i32(-1)
                    .bytes(),
                LogicalMessage::Relation(Relation {
                    xid,
                    oid: 16384,
                    namespace: "public".into(),
                    name: "accounts".into(),
                    replica_identity: ReplicaIdentity::Default,
                    columns: vec![
                        Column {
                            is_key: true,
                            name: "id".into(),
                            type_oid: 23,
                            type_modifier: -1,
                        },
                        Column {
                            is_key: false,
                            name: "name".into(),
                            type_oid: 1043,
                            type_modifier: 68,
                        },
                        Column {
                            is_key: false,
                            name: "ünïcode".into(),
                            type_oid: 25,
                            type_modifier: -1,
                        },
                    ],
                }),
            ));
            v.push(fx(
                "relation (pg_catalog, full, no columns)",
                version,
                in_stream,
                W::tag(b'R')
                    .opt_xid(xid)
                    .u32(1)
                    .s("")
                    .s("t")
                    .u8(b'f')
                    .u16(0)
                    .bytes(),
                LogicalMessage::Relation(Relation {
                    xid,
                    oid: 1,
                    namespace: "pg_catalog".into(),
                    name: "t".into(),
                    replica_identity: ReplicaIdentity::Full,
                    columns: vec![],
                }),
            ));
            v.push(fx(
                "type",
                version,
                in_stream,
                W::tag(b'Y')
                    .opt_xid(xid)
                    .u32(90001)
                    .s("myschema")
                    .s("mood")
                    .bytes(),
                LogicalMessage::Type(TypeMsg {
                    xid,
                    oid: 90001,
                    namespace: "myschema".into(),
                    name: "mood".into(),
                }),
            ));
            v.push(fx(
                "insert",
                version,
                in_stream,
                tuple4(W::tag(b'I').opt_xid(xid).u32(16384).u8(b'N')).bytes(),
                LogicalMessage::Insert(Insert {
                    xid,
                    rel_oid: 16384,
                    new: tuple4_value(),
                }),
            ));
            v.push(fx(
                "insert, empty tuple",
                version,
                in_stream,
                W::tag(b'I').opt_xid(xid).u32(5).u8(b'N').u16(0).bytes(),
                LogicalMessage::Insert(Insert {
                    xid,
                    rel_oid: 5,
                    new: TupleData::default(),
                }),
            ));
            v.push(fx(
                "update, new only",
                version,
                in_stream,
                tuple1(W::tag(b'U').opt_xid(xid).u32(16384).u8(b'N'), b"x").bytes(),
                LogicalMessage::Update(Update {
                    xid,
                    rel_oid: 16384,
                    old: None,
                    new: tuple1_value(b"x"),
                }),
            ));
            v.push(fx(
                "update, old key",
                version,
                in_stream,
                tuple4(tuple1(W::tag(b'U').opt_xid(xid).u32(16384).u8(b'K'), b"").u8(b'N')).bytes(),
                LogicalMessage::Update(Update {
                    xid,
                    rel_oid: 16384,
                    old: Some(OldTuple::Key(tuple1_value(b""))),
                    new: tuple4_value(),
                }),
            ));
            v.push(fx(
                "update, old full",
                version,
                in_stream,
                tuple1(
                    tuple4(W::tag(b'U').opt_xid(xid).u32(7).u8(b'O')).u8(b'N'),
                    b"y",
                )
                .bytes(),
                LogicalMessage::Update(Update {
                    xid,
                    rel_oid: 7,
                    old: Some(OldTuple::Full(tuple4_value())),
                    new: tuple1_value(b"y"),
                }),
            ));
            v.push(fx(
                "delete, key",
                version,
                in_stream,
                tuple1(W::tag(b'D').opt_xid(xid).u32(16384).u8(b'K'), b"42").bytes(),
                LogicalMessage::Delete(Delete {
                    xid,
                    rel_oid: 16384,
                    old: OldTuple::Key(tuple1_value(b"42")),
                }),
            ));
            v.push(fx(
                "delete, full",
                version,
                in_stream,
                tuple4(W::tag(b'D').opt_xid(xid).u32(16384).u8(b'O')).bytes(),
                LogicalMessage::Delete(Delete {
                    xid,
                    rel_oid: 16384,
                    old: OldTuple::Full(tuple4_value()),
                }),
            ));
            for (flags, cascade, restart) in [
                (0u8, false, false),
                (1, true, false),
                (2, false, true),
                (3, true, true),
            ] {
                v.push(fx(
                    "truncate",
                    version,
                    in_stream,
                    W::tag(b'T')
                        .opt_xid(xid)
                        .i32(2)
                        .u8(flags)
                        .u32(16384)
                        .u32(16390)
                        .bytes(),
                    LogicalMessage::Truncate(Truncate {
                        xid,
                        cascade,
                        restart_identity: restart,
                        rel_oids: vec![16384, 16390],
                    }),
                ));
            }
            v.push(fx(
                "truncate, no relations",
                version,
                in_stream,
                W::tag(b'T').opt_xid(xid).i32(0).u8(0).bytes(),
                LogicalMessage::Truncate(Truncate {
                    xid,
                    cascade: false,
                    restart_identity: false,
                    rel_oids: vec![],
                }),
            ));
            v.push(fx(
                "message, transactional",
                version,
                in_stream,
                W::tag(b'M')
                    .opt_xid(xid)
                    .u8(1)
                    .u64(0x10_0000_0000)
                    .s("pgsub")
                    .i32(5)
                    .raw(b"he\0lo")
                    .bytes(),
                LogicalMessage::Message(Message {
                    xid,
                    transactional: true,
                    lsn: Lsn(0x10_0000_0000),
                    prefix: "pgsub".into(),
                    content: b(b"he\0lo"),
                }),
            ));
            v.push(fx(
                "message, non-transactional, empty",
                version,
                in_stream,
                W::tag(b'M').opt_xid(xid).u8(0).u64(1).s("p").i32(0).bytes(),
                LogicalMessage::Message(Message {
                    xid,
                    transactional: false,
                    lsn: Lsn(1),
                    prefix: "p".into(),
                    content: Bytes::new(),
                }),
            ));
        }
        v
    }

    fn run(f: &Fixture, buf: Bytes) -> Result<LogicalMessage, DecodeError> {
        decode_one_with_abort_info(buf, f.version, f.in_stream, f.abort_info)
    }

    #[test]
    fn fixtures_decode_exactly() {
        for f in fixtures() {
            let got = run(&f, f.bytes.clone())
                .unwrap_or_else(|e| panic!("{} (v{}): {e}", f.name, f.version));
            assert_eq!(got, f.want, "{} (v{})", f.name, f.version);
            assert_eq!(got.tag(), f.bytes[0]);
            assert!(!got.kind().is_empty());
        }
    }

    #[test]
    fn fixtures_decode_in_every_later_version() {
        for f in fixtures() {
            for v in f.version..=MAX_PROTO_VERSION {
                // The streamed xid exists from v2; a v1 in-stream fixture has none.
                if f.in_stream && f.version >= 2 && v < 2 {
                    continue;
                }
                let abort_info = f.abort_info && v >= 4;
                let got = decode_one_with_abort_info(f.bytes.clone(), v, f.in_stream, abort_info);
                assert_eq!(got.as_ref(), Ok(&f.want), "{} at v{v}", f.name);
            }
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for f in fixtures() {
            for n in 0..f.bytes.len() {
                let r = run(&f, f.bytes.slice(..n));
                assert!(r.is_err(), "{} truncated to {n} decoded as {r:?}", f.name);
                let e = r.unwrap_err();
                assert!(!e.to_string().is_empty());
                if n == 0 {
                    assert_eq!(e, DecodeError::Empty);
                }
            }
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        for f in fixtures() {
            let mut v = f.bytes.to_vec();
            v.push(0);
            let e = run(&f, Bytes::from(v)).unwrap_err();
            assert_eq!(
                e,
                DecodeError::TrailingBytes {
                    tag: f.bytes[0],
                    offset: f.bytes.len(),
                    extra: 1
                },
                "{}",
                f.name
            );
        }
    }

    #[test]
    fn values_are_zero_copy() {
        let buf = tuple4(W::tag(b'I').u32(1).u8(b'N')).bytes();
        let msg = decode_one(buf.clone(), 1, false).unwrap();
        let LogicalMessage::Insert(ins) = msg else {
            panic!("not an insert")
        };
        let text = ins.new.columns[0].as_bytes().unwrap();
        // "I" oid(4) "N" ncols(2) 't' len(4) -> value at offset 13
        assert_eq!(text.as_ptr(), buf[13..].as_ptr());
        assert_eq!(ins.new.columns[1].as_bytes(), None);
        assert!(ins.new.columns[1].is_null());
        assert_eq!(ins.new.columns[2].as_bytes(), None);
        assert_eq!(&ins.new.columns[3].as_bytes().unwrap()[..], &[0, 1, 2]);
    }

    #[test]
    fn streamed_xid_depends_on_state_and_version() {
        // Same bytes read two ways: outside a stream, 16384 is the relation oid...
        let plain = tuple1(W::tag(b'I').u32(16384).u8(b'N'), b"a").bytes();
        assert!(decode_one(plain.clone(), 2, false).is_ok());
        // ...inside a stream the first Int32 is the xid and the rest no longer parses.
        assert!(decode_one(plain.clone(), 2, true).is_err());
        // Protocol 1 has no streaming: the in_stream flag adds no xid.
        assert!(decode_one(plain, 1, true).is_ok());
    }

    #[test]
    fn unknown_tags() {
        for t in [0u8, b'Z', b'x', b'w', b'k', 0xff, b'a', b'N'] {
            for v in 1..=4 {
                let e = decode_one(b(&[t, 0, 0, 0, 0]), v, false).unwrap_err();
                assert_eq!(e, DecodeError::UnknownTag { tag: t });
                assert!(e.to_string().contains("unknown"));
            }
        }
    }

    #[test]
    fn unsupported_versions() {
        let begin = W::tag(b'B').u64(1).i64(1).u32(1).bytes();
        for v in [0u32, 5, u32::MAX] {
            assert_eq!(
                decode_one(begin.clone(), v, false),
                Err(DecodeError::UnsupportedVersion { version: v })
            );
            assert!(Decoder::new(v).decode(begin.clone()).is_err());
        }
    }

    #[test]
    fn messages_gated_by_version() {
        let cases: [(Bytes, u32); 5] = [
            (W::tag(b'S').u32(1).u8(1).bytes(), 2),
            (W::tag(b'E').bytes(), 2),
            (W::tag(b'A').u32(1).u32(1).bytes(), 2),
            (W::tag(b'b').u64(1).u64(1).i64(1).u32(1).s("g").bytes(), 3),
            (
                W::tag(b'p')
                    .u8(0)
                    .u64(1)
                    .u64(1)
                    .i64(1)
                    .u32(1)
                    .s("g")
                    .bytes(),
                3,
            ),
        ];
        for (buf, since) in cases {
            for v in 1..since {
                let e = decode_one(buf.clone(), v, false).unwrap_err();
                assert!(
                    matches!(e, DecodeError::NotInVersion { since: s, .. } if s == since),
                    "{e}"
                );
            }
            assert!(decode_one(buf, since, false).is_ok());
        }
    }

    #[test]
    fn bad_tuple_kind() {
        let buf = W::tag(b'I')
            .u32(1)
            .u8(b'N')
            .u16(2)
            .u8(b'n')
            .u8(b'x')
            .bytes();
        let e = decode_one(buf, 1, false).unwrap_err();
        assert_eq!(
            e,
            DecodeError::BadTupleKind {
                tag: b'I',
                offset: 9,
                kind: b'x'
            }
        );
        assert!(e.to_string().contains("INSERT ('I')"), "{e}");
    }

    #[test]
    fn bad_tuple_markers() {
        // Insert must say 'N'.
        let e =
            decode_one(tuple1(W::tag(b'I').u32(1).u8(b'K'), b"a").bytes(), 1, false).unwrap_err();
        assert!(
            matches!(
                e,
                DecodeError::BadTupleMarker {
                    got: b'K',
                    offset: 5,
                    ..
                }
            ),
            "{e}"
        );
        // Update: unknown first marker.
        let e =
            decode_one(tuple1(W::tag(b'U').u32(1).u8(b'X'), b"a").bytes(), 1, false).unwrap_err();
        assert!(
            matches!(e, DecodeError::BadTupleMarker { got: b'X', .. }),
            "{e}"
        );
        // Update: old tuple followed by something other than 'N'.
        let e = decode_one(
            tuple1(tuple1(W::tag(b'U').u32(1).u8(b'K'), b"a").u8(b'K'), b"b").bytes(),
            1,
            false,
        )
        .unwrap_err();
        assert!(
            matches!(e, DecodeError::BadTupleMarker { got: b'K', .. }),
            "{e}"
        );
        // Delete: 'N' is not allowed.
        let e =
            decode_one(tuple1(W::tag(b'D').u32(1).u8(b'N'), b"a").bytes(), 1, false).unwrap_err();
        assert!(
            matches!(e, DecodeError::BadTupleMarker { got: b'N', .. }),
            "{e}"
        );
    }

    #[test]
    fn bad_replica_identity() {
        let buf = W::tag(b'R').u32(1).s("s").s("t").u8(b'x').u16(0).bytes();
        let e = decode_one(buf, 1, false).unwrap_err();
        assert_eq!(
            e,
            DecodeError::BadReplicaIdentity {
                tag: b'R',
                offset: 9,
                got: b'x'
            }
        );
    }

    #[test]
    fn negative_lengths() {
        let e = decode_one(
            W::tag(b'I').u32(1).u8(b'N').u16(1).u8(b't').i32(-1).bytes(),
            1,
            false,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                DecodeError::NegativeLength {
                    value: -1,
                    offset: 9,
                    ..
                }
            ),
            "{e}"
        );
        let e = decode_one(
            W::tag(b'I')
                .u32(1)
                .u8(b'N')
                .u16(1)
                .u8(b'b')
                .i32(i32::MIN)
                .bytes(),
            1,
            false,
        )
        .unwrap_err();
        assert!(matches!(e, DecodeError::NegativeLength { .. }), "{e}");
        let e = decode_one(W::tag(b'T').i32(-5).u8(0).bytes(), 1, false).unwrap_err();
        assert!(
            matches!(
                e,
                DecodeError::NegativeLength {
                    value: -5,
                    offset: 1,
                    ..
                }
            ),
            "{e}"
        );
        let e = decode_one(W::tag(b'M').u8(0).u64(1).s("p").i32(-2).bytes(), 1, false).unwrap_err();
        assert!(
            matches!(e, DecodeError::NegativeLength { value: -2, .. }),
            "{e}"
        );
    }

    #[test]
    fn huge_counts_do_not_allocate_or_panic() {
        // 65535 columns announced, none present.
        let e =
            decode_one(W::tag(b'I').u32(1).u8(b'N').u16(u16::MAX).bytes(), 1, false).unwrap_err();
        assert!(matches!(e, DecodeError::Truncated { .. }), "{e}");
        let e = decode_one(
            W::tag(b'R')
                .u32(1)
                .s("s")
                .s("t")
                .u8(b'd')
                .u16(u16::MAX)
                .bytes(),
            1,
            false,
        )
        .unwrap_err();
        assert!(matches!(e, DecodeError::Truncated { .. }), "{e}");
        let e = decode_one(W::tag(b'T').i32(i32::MAX).u8(0).u32(1).bytes(), 1, false).unwrap_err();
        assert!(matches!(e, DecodeError::Truncated { .. }), "{e}");
        let e = decode_one(
            W::tag(b'I')
                .u32(1)
                .u8(b'N')
                .u16(1)
                .u8(b't')
                .i32(i32::MAX)
                .raw(b"ab")
                .bytes(),
            1,
            false,
        )
        .unwrap_err();
        assert_eq!(
            e,
            DecodeError::Truncated {
                tag: b'I',
                offset: 13,
                field: "column value",
                needed: i32::MAX as usize,
                available: 2
            }
        );
        let e = decode_one(
            W::tag(b'M').u8(0).u64(1).s("p").i32(i32::MAX).bytes(),
            1,
            false,
        )
        .unwrap_err();
        assert!(matches!(e, DecodeError::Truncated { .. }), "{e}");
    }

    #[test]
    fn strings_must_be_terminated_utf8() {
        let e = decode_one(W::tag(b'O').u64(1).raw(b"abc").bytes(), 1, false).unwrap_err();
        assert_eq!(
            e,
            DecodeError::UnterminatedString {
                tag: b'O',
                offset: 9,
                field: "origin name"
            }
        );
        let e = decode_one(W::tag(b'O').u64(1).raw(b"\xff\xfe\0").bytes(), 1, false).unwrap_err();
        assert_eq!(
            e,
            DecodeError::InvalidUtf8 {
                tag: b'O',
                offset: 9,
                field: "origin name"
            }
        );
    }

    #[test]
    fn error_messages_name_message_and_offset() {
        let e = decode_one(W::tag(b'B').u64(1).bytes(), 1, false).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("BEGIN ('B')"), "{s}");
        assert!(s.contains("offset 9"), "{s}");
        assert!(s.contains("commit timestamp"), "{s}");
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(e);
        assert!(!boxed.to_string().is_empty());
    }

    #[test]
    fn decoder_tracks_stream_blocks() {
        let mut d = Decoder::new(2);
        assert!(!d.in_stream());
        let start = W::tag(b'S').u32(500).u8(1).bytes();
        let stop = W::tag(b'E').bytes();
        let ins_streamed = tuple1(W::tag(b'I').u32(500).u32(16384).u8(b'N'), b"v").bytes();
        let ins_plain = tuple1(W::tag(b'I').u32(16384).u8(b'N'), b"v").bytes();

        // Stray stop.
        assert_eq!(
            d.decode(stop.clone()),
            Err(DecodeError::StreamStopOutsideStream)
        );
        assert!(!d.in_stream());

        assert_eq!(
            d.decode(start.clone()).unwrap(),
            LogicalMessage::StreamStart(StreamStart {
                xid: 500,
                first_segment: true
            })
        );
        assert!(d.in_stream());
        // Nested start: error, state unchanged.
        assert_eq!(
            d.decode(start.clone()),
            Err(DecodeError::NestedStreamStart { xid: 500 })
        );
        assert!(d.in_stream());
        // Origin right after Stream Start carries no xid.
        let origin = W::tag(b'O').u64(0).s("up").bytes();
        assert!(matches!(
            d.decode(origin).unwrap(),
            LogicalMessage::Origin(_)
        ));
        assert_eq!(
            d.decode(ins_streamed).unwrap(),
            LogicalMessage::Insert(Insert {
                xid: Some(500),
                rel_oid: 16384,
                new: tuple1_value(b"v"),
            })
        );
        // Transaction control inside a stream is a protocol violation.
        let begin = W::tag(b'B').u64(1).i64(1).u32(1).bytes();
        assert_eq!(
            d.decode(begin.clone()),
            Err(DecodeError::UnexpectedInStream { tag: b'B' })
        );
        let commit = W::tag(b'c').u32(500).u8(0).u64(1).u64(2).i64(3).bytes();
        assert_eq!(
            d.decode(commit.clone()),
            Err(DecodeError::UnexpectedInStream { tag: b'c' })
        );
        assert!(d.in_stream());

        assert_eq!(d.decode(stop).unwrap(), LogicalMessage::StreamStop);
        assert!(!d.in_stream());
        assert_eq!(
            d.decode(ins_plain).unwrap(),
            LogicalMessage::Insert(Insert {
                xid: None,
                rel_oid: 16384,
                new: tuple1_value(b"v"),
            })
        );
        assert!(d.decode(begin).is_ok());
        assert!(d.decode(commit).is_ok());

        // A failed decode leaves the state alone.
        assert!(d.decode(b(b"S\0")).is_err());
        assert!(!d.in_stream());
        d.decode(start).unwrap();
        d.reset();
        assert!(!d.in_stream());
    }

    #[test]
    fn decoder_stream_abort_config() {
        let short = W::tag(b'A').u32(1).u32(2).bytes();
        let long = W::tag(b'A').u32(1).u32(2).u64(3).i64(4).bytes();

        let mut d4p = Decoder::new(4).with_stream_abort_lsn(true);
        assert!(d4p.stream_abort_has_lsn());
        assert_eq!(d4p.proto_version(), 4);
        assert_eq!(
            d4p.decode(long.clone()).unwrap(),
            LogicalMessage::StreamAbort(StreamAbort {
                xid: 1,
                subxid: 2,
                abort_lsn: Some(Lsn(3)),
                abort_time: Some(4),
            })
        );
        assert!(matches!(
            d4p.decode(short.clone()),
            Err(DecodeError::Truncated { offset: 9, .. })
        ));

        let mut d4 = Decoder::new(4);
        assert!(d4.decode(short.clone()).is_ok());
        assert!(matches!(
            d4.decode(long.clone()),
            Err(DecodeError::TrailingBytes {
                offset: 9,
                extra: 16,
                ..
            })
        ));

        // The flag has no effect below protocol 4.
        let mut d2 = Decoder::new(2).with_stream_abort_lsn(true);
        assert!(d2.decode(short).is_ok());
        assert!(d2.decode(long).is_err());
    }

    #[test]
    fn kind_names() {
        let names: Vec<&str> = fixtures().iter().map(|f| f.want.kind()).collect();
        for want in [
            "BEGIN",
            "COMMIT",
            "ORIGIN",
            "RELATION",
            "TYPE",
            "INSERT",
            "UPDATE",
            "DELETE",
            "TRUNCATE",
            "MESSAGE",
            "STREAM START",
            "STREAM STOP",
            "STREAM COMMIT",
            "STREAM ABORT",
            "BEGIN PREPARE",
            "PREPARE",
            "COMMIT PREPARED",
            "ROLLBACK PREPARED",
            "STREAM PREPARE",
        ] {
            assert!(names.contains(&want), "no fixture of kind {want}");
        }
    }

    #[test]
    fn replica_identity_bytes() {
        for ri in [
            ReplicaIdentity::Default,
            ReplicaIdentity::Nothing,
            ReplicaIdentity::Full,
            ReplicaIdentity::Index,
        ] {
            assert_eq!(ReplicaIdentity::from_byte(ri.as_byte()), Some(ri));
        }
        assert_eq!(ReplicaIdentity::from_byte(b'x'), None);
    }

    #[test]
    fn old_tuple_accessor() {
        let t = tuple1_value(b"k");
        assert_eq!(OldTuple::Key(t.clone()).tuple(), &t);
        assert_eq!(OldTuple::Full(t.clone()).tuple(), &t);
    }
}
