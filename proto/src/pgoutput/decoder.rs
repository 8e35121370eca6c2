//! [`Decoder`]: the per-connection pgoutput decoder. It owns the little state decoding needs
//! beyond one message — the negotiated protocol version, whether Stream Abort carries the
//! parallel-streaming fields, and whether a streamed block is open — and checks the
//! Stream Start … Stream Stop nesting.

use bytes::Bytes;

use super::decode::decode_one_with_abort_info;
use super::{DecodeError, LogicalMessage};

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
        Decoder { proto_version, stream_abort_has_lsn: false, in_stream: false }
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
        let msg = decode_one_with_abort_info(buf, self.proto_version, self.in_stream, self.stream_abort_has_lsn)?;
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
