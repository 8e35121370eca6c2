//! [`DecodeError`]: why a pgoutput message could not be decoded, and how that reads in a log
//! (the message kind, the field and its byte offset). Owns the display helpers for tags and
//! bytes.

use std::fmt;

use super::{tag_name, MAX_PROTO_VERSION, MIN_PROTO_VERSION};

/// Why a pgoutput message could not be decoded. `offset` is a byte offset into the message
/// (the tag is at offset 0); `field` names what was being read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Zero-length message.
    #[error("empty pgoutput message")]
    Empty,
    /// The decoder was asked for a protocol version outside 1..=4.
    #[error(
        "unsupported pgoutput protocol version {version} (supported: {}..={})",
        MIN_PROTO_VERSION,
        MAX_PROTO_VERSION
    )]
    UnsupportedVersion { version: u32 },
    /// Unknown message tag.
    #[error("unknown pgoutput message type {}", ByteDisplay(*.tag))]
    UnknownTag { tag: u8 },
    /// The message does not exist in the negotiated protocol version.
    #[error(
        "pgoutput message {} requires protocol version {since}, but version {version} was negotiated",
        TagDisplay(*.tag)
    )]
    NotInVersion { tag: u8, version: u32, since: u32 },
    /// The message ended before `field` (which needs `needed` bytes; `available` remained).
    #[error(
        "truncated {} message at offset {offset}: {field} needs {needed} bytes, {available} left",
        TagDisplay(*.tag)
    )]
    Truncated { tag: u8, offset: usize, field: &'static str, needed: usize, available: usize },
    /// A string field has no terminating NUL before the end of the message.
    #[error("{} message: {field} at offset {offset} is not NUL-terminated", TagDisplay(*.tag))]
    UnterminatedString { tag: u8, offset: usize, field: &'static str },
    /// A string field is not valid UTF-8.
    #[error("{} message: {field} at offset {offset} is not valid UTF-8", TagDisplay(*.tag))]
    InvalidUtf8 { tag: u8, offset: usize, field: &'static str },
    /// A length or count field is negative.
    #[error("{} message: {field} at offset {offset} is negative ({value})", TagDisplay(*.tag))]
    NegativeLength { tag: u8, offset: usize, field: &'static str, value: i32 },
    /// A tuple column kind other than 'n', 'u', 't', 'b'.
    #[error(
        "{} message: unrecognized column kind {} at offset {offset} (expected 'n', 'u', 't' or 'b')",
        TagDisplay(*.tag),
        ByteDisplay(*.kind)
    )]
    BadTupleKind { tag: u8, offset: usize, kind: u8 },
    /// A tuple marker other than the ones allowed here ('N', 'K', 'O').
    #[error("{} message: expected {expected} at offset {offset}, got {}", TagDisplay(*.tag), ByteDisplay(*.got))]
    BadTupleMarker { tag: u8, offset: usize, expected: &'static str, got: u8 },
    /// A replica identity other than 'd', 'n', 'f', 'i'.
    #[error(
        "{} message: unrecognized replica identity {} at offset {offset} (expected 'd', 'n', 'f' or 'i')",
        TagDisplay(*.tag),
        ByteDisplay(*.got)
    )]
    BadReplicaIdentity { tag: u8, offset: usize, got: u8 },
    /// Bytes left over after the last field.
    #[error("{} message has {extra} unexpected trailing bytes at offset {offset}", TagDisplay(*.tag))]
    TrailingBytes { tag: u8, offset: usize, extra: usize },
    /// Stream Start while a streamed block is already open.
    #[error("STREAM START for xid {xid} inside an already open streamed block")]
    NestedStreamStart { xid: u32 },
    /// Stream Stop without a Stream Start.
    #[error("STREAM STOP outside a streamed block")]
    StreamStopOutsideStream,
    /// A message PostgreSQL never sends between Stream Start and Stream Stop.
    #[error("{} message inside a streamed block (between STREAM START and STREAM STOP)", TagDisplay(*.tag))]
    UnexpectedInStream { tag: u8 },
}

/// A message tag as `INSERT ('I')`, or the byte when the tag is unknown.
struct TagDisplay(u8);

impl fmt::Display for TagDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0;
        match tag_name(t) {
            Some(name) => write!(f, "{name} ('{}')", t as char),
            None => ByteDisplay(t).fmt(f),
        }
    }
}

/// A byte as `'x' (0x78)` when printable, else `0x07`.
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
