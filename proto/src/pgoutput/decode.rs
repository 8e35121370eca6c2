//! Stateless decoding of one pgoutput message: the version and tag checks, the per-message-kind
//! dispatch and one small decode function per message kind, each reading its fields in wire
//! order. The streamed-block state lives in `decoder.rs`.

use bytes::Bytes;

use super::messages::*;
use super::reader::Reader;
use super::*;

// Tuple markers inside Update/Delete/Insert.
const TUPLE_NEW: u8 = b'N';
const TUPLE_KEY: u8 = b'K';
const TUPLE_OLD: u8 = b'O';

const MESSAGE_TRANSACTIONAL: u8 = 1;
const TRUNCATE_CASCADE: u8 = 1;
const TRUNCATE_RESTART_IDENTITY: u8 = 2;
const COLUMN_IS_KEY: u8 = 1;

/// Decodes one pgoutput message (the payload of one XLogData frame).
///
/// `in_stream` says whether the message arrived between Stream Start and Stream Stop; with
/// `proto_version >= 2` the change and metadata messages then carry a leading xid. Stream
/// Abort is decoded without the protocol-4 parallel-streaming fields; use
/// [`decode_one_with_abort_info`] or a [`Decoder`] configured with
/// [`Decoder::with_stream_abort_lsn`](super::Decoder::with_stream_abort_lsn) to expect them.
pub fn decode_one(buf: Bytes, proto_version: u32, in_stream: bool) -> Result<LogicalMessage, DecodeError> {
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
    let tag = check_header(&buf, proto_version)?;
    let mut r = Reader::new(&buf, tag);
    let streamed_xid = in_stream && proto_version >= 2;
    let abort_info = stream_abort_has_lsn && proto_version >= 4;
    let msg = match tag {
        TAG_BEGIN => LogicalMessage::Begin(begin(&mut r)?),
        TAG_COMMIT => LogicalMessage::Commit(commit(&mut r)?),
        TAG_ORIGIN => LogicalMessage::Origin(origin(&mut r)?),
        TAG_RELATION => LogicalMessage::Relation(relation(&mut r, streamed_xid)?),
        TAG_TYPE => LogicalMessage::Type(type_msg(&mut r, streamed_xid)?),
        TAG_INSERT => LogicalMessage::Insert(insert(&mut r, streamed_xid)?),
        TAG_UPDATE => LogicalMessage::Update(update(&mut r, streamed_xid)?),
        TAG_DELETE => LogicalMessage::Delete(delete(&mut r, streamed_xid)?),
        TAG_TRUNCATE => LogicalMessage::Truncate(truncate(&mut r, streamed_xid)?),
        TAG_MESSAGE => LogicalMessage::Message(message(&mut r, streamed_xid)?),
        TAG_STREAM_START => LogicalMessage::StreamStart(stream_start(&mut r)?),
        TAG_STREAM_STOP => LogicalMessage::StreamStop,
        TAG_STREAM_COMMIT => LogicalMessage::StreamCommit(stream_commit(&mut r)?),
        TAG_STREAM_ABORT => LogicalMessage::StreamAbort(stream_abort(&mut r, abort_info)?),
        TAG_BEGIN_PREPARE => LogicalMessage::BeginPrepare(begin_prepare(&mut r)?),
        TAG_PREPARE => LogicalMessage::Prepare(prepare(&mut r)?),
        TAG_STREAM_PREPARE => LogicalMessage::StreamPrepare(prepare(&mut r)?),
        TAG_COMMIT_PREPARED => LogicalMessage::CommitPrepared(commit_prepared(&mut r)?),
        TAG_ROLLBACK_PREPARED => LogicalMessage::RollbackPrepared(rollback_prepared(&mut r)?),
        other => return Err(DecodeError::UnknownTag { tag: other }),
    };
    r.finish()?;
    Ok(msg)
}

/// The message's tag, once the protocol version is supported, the message is not empty, its tag
/// is known and exists in `proto_version`.
fn check_header(buf: &Bytes, proto_version: u32) -> Result<u8, DecodeError> {
    if !(MIN_PROTO_VERSION..=MAX_PROTO_VERSION).contains(&proto_version) {
        return Err(DecodeError::UnsupportedVersion { version: proto_version });
    }
    let tag = *buf.first().ok_or(DecodeError::Empty)?;
    if tag_name(tag).is_none() {
        return Err(DecodeError::UnknownTag { tag });
    }
    let since = since_version(tag);
    if proto_version < since {
        return Err(DecodeError::NotInVersion { tag, version: proto_version, since });
    }
    Ok(tag)
}

/// 'B'
fn begin(r: &mut Reader<'_>) -> Result<Begin, DecodeError> {
    Ok(Begin { final_lsn: r.lsn("final lsn")?, commit_time: r.i64("commit timestamp")?, xid: r.u32("xid")? })
}

/// 'C'
fn commit(r: &mut Reader<'_>) -> Result<Commit, DecodeError> {
    Ok(Commit {
        flags: r.u8("flags")?,
        commit_lsn: r.lsn("commit lsn")?,
        end_lsn: r.lsn("end lsn")?,
        commit_time: r.i64("commit timestamp")?,
    })
}

/// 'O'
fn origin(r: &mut Reader<'_>) -> Result<Origin, DecodeError> {
    Ok(Origin { commit_lsn: r.lsn("origin commit lsn")?, name: r.cstr("origin name")? })
}

/// 'R'
fn relation(r: &mut Reader<'_>, streamed_xid: bool) -> Result<Relation, DecodeError> {
    let xid = r.stream_xid(streamed_xid)?;
    let oid = r.u32("relation oid")?;
    let namespace = r.namespace()?;
    let name = r.cstr("relation name")?;
    let ri_offset = r.pos();
    let ri = r.u8("replica identity")?;
    let replica_identity = ReplicaIdentity::from_byte(ri).ok_or(DecodeError::BadReplicaIdentity {
        tag: TAG_RELATION,
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
    Ok(Relation { xid, oid, namespace, name, replica_identity, columns })
}

/// 'Y'
fn type_msg(r: &mut Reader<'_>, streamed_xid: bool) -> Result<TypeMsg, DecodeError> {
    let xid = r.stream_xid(streamed_xid)?;
    Ok(TypeMsg { xid, oid: r.u32("type oid")?, namespace: r.namespace()?, name: r.cstr("type name")? })
}

/// 'I'
fn insert(r: &mut Reader<'_>, streamed_xid: bool) -> Result<Insert, DecodeError> {
    let xid = r.stream_xid(streamed_xid)?;
    let rel_oid = r.u32("relation oid")?;
    r.marker("'N' (new tuple)", &[TUPLE_NEW])?;
    let new = r.tuple()?;
    Ok(Insert { xid, rel_oid, new })
}

/// 'U'
fn update(r: &mut Reader<'_>, streamed_xid: bool) -> Result<Update, DecodeError> {
    let xid = r.stream_xid(streamed_xid)?;
    let rel_oid = r.u32("relation oid")?;
    let m = r.marker("'K', 'O' (old tuple) or 'N' (new tuple)", &[TUPLE_KEY, TUPLE_OLD, TUPLE_NEW])?;
    let old = match m {
        TUPLE_KEY => Some(OldTuple::Key(r.tuple()?)),
        TUPLE_OLD => Some(OldTuple::Full(r.tuple()?)),
        _ => None,
    };
    if old.is_some() {
        r.marker("'N' (new tuple)", &[TUPLE_NEW])?;
    }
    let new = r.tuple()?;
    Ok(Update { xid, rel_oid, old, new })
}

/// 'D'
fn delete(r: &mut Reader<'_>, streamed_xid: bool) -> Result<Delete, DecodeError> {
    let xid = r.stream_xid(streamed_xid)?;
    let rel_oid = r.u32("relation oid")?;
    let m = r.marker("'K' or 'O' (old tuple)", &[TUPLE_KEY, TUPLE_OLD])?;
    let t = r.tuple()?;
    let old = if m == TUPLE_KEY { OldTuple::Key(t) } else { OldTuple::Full(t) };
    Ok(Delete { xid, rel_oid, old })
}

/// 'T'
fn truncate(r: &mut Reader<'_>, streamed_xid: bool) -> Result<Truncate, DecodeError> {
    let xid = r.stream_xid(streamed_xid)?;
    let n = r.len_i32("relation count")?;
    let flags = r.u8("truncate options")?;
    let mut rel_oids = Vec::with_capacity(n.min(r.remaining() / 4));
    for _ in 0..n {
        rel_oids.push(r.u32("relation oid")?);
    }
    Ok(Truncate {
        xid,
        cascade: flags & TRUNCATE_CASCADE != 0,
        restart_identity: flags & TRUNCATE_RESTART_IDENTITY != 0,
        rel_oids,
    })
}

/// 'M'
fn message(r: &mut Reader<'_>, streamed_xid: bool) -> Result<Message, DecodeError> {
    let xid = r.stream_xid(streamed_xid)?;
    let flags = r.u8("flags")?;
    let lsn = r.lsn("message lsn")?;
    let prefix = r.cstr("prefix")?;
    let len = r.len_i32("content length")?;
    let content = r.bytes(len, "content")?;
    Ok(Message { xid, transactional: flags & MESSAGE_TRANSACTIONAL != 0, lsn, prefix, content })
}

/// 'S'
fn stream_start(r: &mut Reader<'_>) -> Result<StreamStart, DecodeError> {
    // PostgreSQL's reader tests `== 1`.
    Ok(StreamStart { xid: r.u32("xid")?, first_segment: r.u8("first segment")? == 1 })
}

/// 'c'
fn stream_commit(r: &mut Reader<'_>) -> Result<StreamCommit, DecodeError> {
    Ok(StreamCommit {
        xid: r.u32("xid")?,
        flags: r.u8("flags")?,
        commit_lsn: r.lsn("commit lsn")?,
        end_lsn: r.lsn("end lsn")?,
        commit_time: r.i64("commit timestamp")?,
    })
}

/// 'A'; `abort_info`: the protocol-4 parallel-streaming fields follow.
fn stream_abort(r: &mut Reader<'_>, abort_info: bool) -> Result<StreamAbort, DecodeError> {
    let xid = r.u32("xid")?;
    let subxid = r.u32("subtransaction xid")?;
    let (abort_lsn, abort_time) =
        if abort_info { (Some(r.lsn("abort lsn")?), Some(r.i64("abort timestamp")?)) } else { (None, None) };
    Ok(StreamAbort { xid, subxid, abort_lsn, abort_time })
}

/// 'b'
fn begin_prepare(r: &mut Reader<'_>) -> Result<BeginPrepare, DecodeError> {
    Ok(BeginPrepare {
        prepare_lsn: r.lsn("prepare lsn")?,
        end_lsn: r.lsn("end lsn")?,
        prepare_time: r.i64("prepare timestamp")?,
        xid: r.u32("xid")?,
        gid: r.cstr("gid")?,
    })
}

/// 'P' and 'p' (same layout).
fn prepare(r: &mut Reader<'_>) -> Result<Prepare, DecodeError> {
    Ok(Prepare {
        flags: r.u8("flags")?,
        prepare_lsn: r.lsn("prepare lsn")?,
        end_lsn: r.lsn("end lsn")?,
        prepare_time: r.i64("prepare timestamp")?,
        xid: r.u32("xid")?,
        gid: r.cstr("gid")?,
    })
}

/// 'K'
fn commit_prepared(r: &mut Reader<'_>) -> Result<CommitPrepared, DecodeError> {
    Ok(CommitPrepared {
        flags: r.u8("flags")?,
        commit_lsn: r.lsn("commit lsn")?,
        end_lsn: r.lsn("end lsn")?,
        commit_time: r.i64("commit timestamp")?,
        xid: r.u32("xid")?,
        gid: r.cstr("gid")?,
    })
}

/// 'r'
fn rollback_prepared(r: &mut Reader<'_>) -> Result<RollbackPrepared, DecodeError> {
    Ok(RollbackPrepared {
        flags: r.u8("flags")?,
        prepare_end_lsn: r.lsn("prepare end lsn")?,
        rollback_end_lsn: r.lsn("rollback end lsn")?,
        prepare_time: r.i64("prepare timestamp")?,
        rollback_time: r.i64("rollback timestamp")?,
        xid: r.u32("xid")?,
        gid: r.cstr("gid")?,
    })
}
