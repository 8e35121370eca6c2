//! [`Reader`]: the bounds-checked big-endian cursor the pgoutput decoder reads every field
//! with, including tuples and tuple markers. Every failure is a [`DecodeError`] naming the
//! message, the field and its offset; nothing here allocates from an unchecked length.

use bytes::Bytes;

use super::error::DecodeError;
use super::messages::{TupleData, TupleValue};
use crate::lsn::Lsn;

// Tuple column kinds.
const COL_NULL: u8 = b'n';
const COL_UNCHANGED_TOAST: u8 = b'u';
const COL_TEXT: u8 = b't';
const COL_BINARY: u8 = b'b';

/// Bounds-checked big-endian cursor over one message.
pub(super) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    tag: u8,
}

impl<'a> Reader<'a> {
    /// A cursor over the message `buf` whose tag byte has been checked, positioned after it.
    pub(super) fn new(buf: &'a Bytes, tag: u8) -> Self {
        Reader { buf, pos: 1, tag }
    }

    /// The offset of the next field.
    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    /// The xid a change or metadata message carries inside a streamed block (`present`).
    pub(super) fn stream_xid(&mut self, present: bool) -> Result<Option<u32>, DecodeError> {
        if present {
            Ok(Some(self.u32("streamed transaction xid")?))
        } else {
            Ok(None)
        }
    }

    pub(super) fn remaining(&self) -> usize {
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
        s.try_into().map_err(|_| DecodeError::Truncated { tag: self.tag, offset, field, needed: N, available: s.len() })
    }

    pub(super) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(super) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(super) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(super) fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    pub(super) fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    pub(super) fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array(field)?)))
    }

    /// A signed Int32 length/count that must not be negative.
    pub(super) fn len_i32(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let v = self.i32(field)?;
        usize::try_from(v).map_err(|_| DecodeError::NegativeLength { tag: self.tag, offset, field, value: v })
    }

    /// `n` bytes as a zero-copy slice of the message.
    pub(super) fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        let (start, end) = self.range(n, field)?;
        let b = self.buf.slice(start..end);
        self.pos = end;
        Ok(b)
    }

    /// A NUL-terminated UTF-8 string.
    pub(super) fn cstr(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let offset = self.pos;
        let buf: &'a Bytes = self.buf;
        let rest = buf.get(offset..).unwrap_or(&[]);
        let unterminated = DecodeError::UnterminatedString { tag: self.tag, offset, field };
        let nul = rest.iter().position(|&b| b == 0).ok_or(unterminated.clone())?;
        let raw = rest.get(..nul).ok_or(unterminated)?;
        let s = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8 { tag: self.tag, offset, field })?;
        self.pos = offset + nul + 1;
        Ok(s.to_owned())
    }

    /// A namespace name: the wire's empty string stands for `pg_catalog`.
    pub(super) fn namespace(&mut self) -> Result<String, DecodeError> {
        let s = self.cstr("namespace")?;
        Ok(if s.is_empty() { "pg_catalog".to_owned() } else { s })
    }

    pub(super) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes { tag: self.tag, offset: self.pos, extra }),
        }
    }

    pub(super) fn tuple(&mut self) -> Result<TupleData, DecodeError> {
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
                other => return Err(DecodeError::BadTupleKind { tag: self.tag, offset: kind_offset, kind: other }),
            };
            columns.push(value);
        }
        Ok(TupleData { columns })
    }

    pub(super) fn marker(&mut self, expected: &'static str, ok: &[u8]) -> Result<u8, DecodeError> {
        let offset = self.pos;
        let m = self.u8("tuple marker")?;
        if ok.contains(&m) {
            Ok(m)
        } else {
            Err(DecodeError::BadTupleMarker { tag: self.tag, offset, expected, got: m })
        }
    }
}
