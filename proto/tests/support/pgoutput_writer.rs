//! The one test-only pgoutput message builder, following the documented message layouts; shared
//! by the decoder's unit tests (`src/pgoutput/tests.rs`) and its robustness tests
//! (`tests/decoder_props.rs`), each of which uses part of it.
#![allow(dead_code)]

use bytes::Bytes;

#[derive(Default, Clone)]
pub struct W(pub Vec<u8>);

impl W {
    pub fn tag(t: u8) -> Self {
        W(vec![t])
    }
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A NUL-terminated string.
    pub fn s(mut self, v: &str) -> Self {
        self.0.extend_from_slice(v.as_bytes());
        self.0.push(0);
        self
    }
    pub fn raw(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    /// The transaction id that streamed changes carry (protocol 2+, inside a stream block).
    pub fn opt_xid(self, xid: Option<u32>) -> Self {
        match xid {
            Some(x) => self.u32(x),
            None => self,
        }
    }
    /// A text column value.
    pub fn text(self, v: &[u8]) -> Self {
        self.u8(b't').i32(v.len() as i32).raw(v)
    }
    /// A binary column value.
    pub fn bin(self, v: &[u8]) -> Self {
        self.u8(b'b').i32(v.len() as i32).raw(v)
    }
    /// A sample tuple of four columns: text, null, unchanged TOAST, binary.
    pub fn tuple(self) -> Self {
        self.u16(4).text(b"abc").u8(b'n').u8(b'u').bin(&[0, 1])
    }
    pub fn bytes(self) -> Bytes {
        Bytes::from(self.0)
    }
}
