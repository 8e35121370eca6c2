//! The decoded pgoutput message types: one struct per message kind, [`LogicalMessage`] over all
//! of them, and the small value types they share (tuples, columns, replica identity). Owns no
//! decoding logic (that is `decode.rs`).

use bytes::Bytes;

use super::*;
use crate::lsn::Lsn;

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
    pub(super) fn allowed_in_stream(&self) -> bool {
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
