//! Decoder for the pgoutput logical-replication protocol, versions 1–4: every message the
//! walsender's `pgoutput` plugin can emit (the payload of one XLogData frame), the small amount
//! of state needed to decode streamed transactions (the extra xid carried inside a
//! Stream Start … Stream Stop block), and the decoded message types.
//!
//! Decoding never panics on malformed input and never allocates from an untrusted length
//! before checking it against the bytes actually present. Column values and logical-message
//! contents are zero-copy slices of the input [`Bytes`](bytes::Bytes).
//!
//! This file owns the protocol constants (versions, message tags) and re-exports the parts:
//! the message types (`messages.rs`), the stateless per-message decoding (`decode.rs`) over a
//! bounds-checked cursor (`reader.rs`), the stateful [`Decoder`] (`decoder.rs`) and
//! [`DecodeError`] (`error.rs`).

mod decode;
mod decoder;
mod error;
mod messages;
mod reader;

pub use decode::{decode_one, decode_one_with_abort_info};
pub use decoder::Decoder;
pub use error::DecodeError;
pub use messages::*;

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
        TAG_BEGIN_PREPARE | TAG_PREPARE | TAG_COMMIT_PREPARED | TAG_ROLLBACK_PREPARED | TAG_STREAM_PREPARE => 3,
        _ => 1,
    }
}

#[cfg(test)]
mod tests;
