//! Buffer of one streamed (in-progress) remote transaction: its pgoutput messages in memory up to
//! a limit, and beyond it in a spill file of checksummed records.
//!
//! Record format: `len: u32 BE`, `crc32: u32 BE` (crc32fast/IEEE of the payload), `payload`.
//! Reading verifies every record's length and checksum: a mismatch is a
//! [`SpillError::Corrupt`] naming the file and offset, never data. The file always holds the
//! oldest records and memory the newest, so replay reads the file, then memory.
//!
//! Subtransaction aborts: a subtransaction's changes are contiguous from its first change (its
//! parent cannot act while it is open), so aborting it truncates the buffer at that change —
//! in memory, or in the file when the mark was spilled.
use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const HEADER: usize = 8;
/// Size of the in-memory chunks records are packed into.
const CHUNK: usize = 1 << 20;
/// Largest record accepted when reading back (pgoutput messages are bounded by 1 GB).
const MAX_RECORD: u32 = 1 << 30;

/// Why a spill file could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    #[error("could not {op} spill file \"{}\": {err}", path.display())]
    Io { path: PathBuf, op: &'static str, err: io::Error },
    /// A record's checksum or length does not match: the file was damaged.
    #[error("spill file \"{}\" is corrupted at offset {offset}: {detail}", path.display())]
    Corrupt { path: PathBuf, offset: u64, detail: String },
}

/// Where a subtransaction's first change sits.
#[derive(Clone, Copy, Debug)]
struct Mark {
    subxid: u32,
    /// Index of the record among all records of the transaction.
    index: u64,
    /// Byte offset in the file, once the record has been spilled.
    file_offset: Option<u64>,
    /// (chunk, offset) in memory while the record is there.
    mem_pos: (usize, usize),
}

/// The buffered messages of one streamed transaction.
pub struct TxnBuffer {
    xid: u32,
    path: PathBuf,
    file: Option<BufWriter<File>>,
    file_len: u64,
    file_records: u64,
    /// Newest records, length-prefixed (`u32 BE` + payload) in chunks of about [`CHUNK`] bytes:
    /// one allocation per chunk, not per record.
    mem: Vec<Vec<u8>>,
    mem_records: u64,
    mem_bytes: usize,
    marks: Vec<Mark>,
    /// Test hook: flip a payload byte of the next record written to the file (after its CRC).
    corrupt_next: bool,
}

impl TxnBuffer {
    /// A buffer for top-level transaction `xid` whose spill file (created on first spill) is `path`.
    pub fn new(xid: u32, path: PathBuf) -> TxnBuffer {
        TxnBuffer {
            xid,
            path,
            file: None,
            file_len: 0,
            file_records: 0,
            mem: Vec::new(),
            mem_records: 0,
            mem_bytes: 0,
            marks: Vec::new(),
            corrupt_next: false,
        }
    }

    pub fn xid(&self) -> u32 {
        self.xid
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Bytes held in memory (allocated chunk capacity, which is what the process pays for).
    pub fn mem_bytes(&self) -> usize {
        self.mem.iter().map(|c| c.capacity()).sum()
    }
    /// Payload bytes of the records held in memory.
    pub fn payload_bytes(&self) -> usize {
        self.mem_bytes
    }
    /// Bytes written to the spill file.
    pub fn file_bytes(&self) -> u64 {
        self.file_len
    }
    pub fn records(&self) -> u64 {
        self.file_records + self.mem_records
    }

    /// Test hook: the next record spilled gets one payload byte flipped after its checksum.
    pub fn corrupt_next_spilled_record(&mut self) {
        self.corrupt_next = true;
    }

    /// Appends a message of (sub)transaction `xid` (a copy is kept, so the caller's buffer can go).
    pub fn push(&mut self, xid: u32, msg: &[u8]) {
        let need = 4 + msg.len();
        if self.mem.last().is_none_or(|c| c.capacity() - c.len() < need) {
            self.mem.push(Vec::with_capacity(need.max(CHUNK)));
        }
        let chunk = self.mem.len() - 1;
        let Some(c) = self.mem.last_mut() else { return };
        if xid != self.xid && !self.marks.iter().any(|m| m.subxid == xid) {
            let index = self.file_records + self.mem_records;
            self.marks.push(Mark { subxid: xid, index, file_offset: None, mem_pos: (chunk, c.len()) });
        }
        c.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        c.extend_from_slice(msg);
        self.mem_records += 1;
        self.mem_bytes += msg.len();
    }

    /// The in-memory records, oldest first.
    fn mem_records_iter(chunks: &[Vec<u8>]) -> impl Iterator<Item = ((usize, usize), &[u8])> {
        chunks.iter().enumerate().flat_map(|(ci, c)| {
            let mut off = 0usize;
            std::iter::from_fn(move || {
                if off + 4 > c.len() {
                    return None;
                }
                let len = u32::from_be_bytes([c[off], c[off + 1], c[off + 2], c[off + 3]]) as usize;
                let start = off;
                let end = (off + 4 + len).min(c.len());
                off = end;
                Some(((ci, start), &c[start + 4..end]))
            })
        })
    }

    fn io_err(&self, op: &'static str, err: io::Error) -> SpillError {
        SpillError::Io { path: self.path.clone(), op, err }
    }

    /// Moves the in-memory records to the end of the spill file.
    pub fn spill(&mut self) -> Result<(), SpillError> {
        if self.mem.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&self.path)
                .map_err(|e| self.io_err("create", e))?;
            self.file = Some(BufWriter::with_capacity(256 * 1024, f));
        }
        let first_index = self.file_records;
        let mut offset = self.file_len;
        let chunks = std::mem::take(&mut self.mem);
        let mut count = 0u64;
        for (i, (_, rec)) in Self::mem_records_iter(&chunks).enumerate() {
            count += 1;
            let index = first_index + i as u64;
            for m in self.marks.iter_mut().filter(|m| m.index == index) {
                m.file_offset = Some(offset);
            }
            let crc = crc32fast::hash(rec);
            let mut header = [0u8; HEADER];
            header[..4].copy_from_slice(&(rec.len() as u32).to_be_bytes());
            header[4..].copy_from_slice(&crc.to_be_bytes());
            let corrupt = std::mem::take(&mut self.corrupt_next);
            let w = self.file.as_mut().ok_or_else(|| SpillError::Io {
                path: self.path.clone(),
                op: "write",
                err: io::Error::other("not open"),
            })?;
            let r = w.write_all(&header).and_then(|_| {
                if corrupt && !rec.is_empty() {
                    let mut damaged = rec.to_vec();
                    damaged[0] ^= 0xFF;
                    w.write_all(&damaged)
                } else {
                    w.write_all(rec)
                }
            });
            r.map_err(|e| SpillError::Io { path: self.path.clone(), op: "write", err: e })?;
            offset += (HEADER + rec.len()) as u64;
        }
        self.file_records += count;
        self.file_len = offset;
        self.mem_records = 0;
        self.mem_bytes = 0;
        Ok(())
    }

    /// Drops everything subtransaction `subxid` (and the subtransactions after it) added.
    pub fn abort_subxact(&mut self, subxid: u32) -> Result<(), SpillError> {
        let Some(pos) = self.marks.iter().position(|m| m.subxid == subxid) else {
            return Ok(()); // it made no changes
        };
        let mark = self.marks[pos];
        self.marks.truncate(pos);
        if mark.index >= self.file_records {
            let (chunk, off) = mark.mem_pos;
            self.mem.truncate(chunk + 1);
            if let Some(c) = self.mem.get_mut(chunk) {
                c.truncate(off);
            }
            self.mem_records = mark.index - self.file_records;
            self.mem_bytes = Self::mem_records_iter(&self.mem).map(|(_, r)| r.len()).sum();
            return Ok(());
        }
        // The mark is in the file: cut the file there and forget what memory held after it.
        let offset = mark.file_offset.unwrap_or(self.file_len);
        self.mem.clear();
        self.mem_records = 0;
        self.mem_bytes = 0;
        if let Some(w) = self.file.as_mut() {
            w.flush().map_err(|e| SpillError::Io { path: self.path.clone(), op: "flush", err: e })?;
            let f = w.get_mut();
            f.set_len(offset).map_err(|e| SpillError::Io { path: self.path.clone(), op: "truncate", err: e })?;
            f.seek(SeekFrom::Start(offset)).map_err(|e| SpillError::Io {
                path: self.path.clone(),
                op: "seek",
                err: e,
            })?;
        }
        self.file_len = offset;
        self.file_records = mark.index;
        Ok(())
    }

    /// Finishes writing and returns a reader over every record, oldest first.
    pub fn into_reader(mut self) -> Result<TxnReader, SpillError> {
        let file = match self.file.take() {
            Some(w) => {
                let mut f = w.into_inner().map_err(|e| SpillError::Io {
                    path: self.path.clone(),
                    op: "flush",
                    err: e.into_error(),
                })?;
                f.seek(SeekFrom::Start(0)).map_err(|e| self.io_err("seek", e))?;
                Some(BufReader::with_capacity(256 * 1024, f))
            }
            None => None,
        };
        Ok(TxnReader {
            path: std::mem::take(&mut self.path),
            file,
            file_len: self.file_len,
            offset: 0,
            mem: std::mem::take(&mut self.mem),
            mem_chunk: 0,
            mem_off: 0,
            buf: Vec::new(),
        })
    }

    /// Deletes the spill file (if any).
    pub fn discard(mut self) {
        self.file.take();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for TxnBuffer {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Reads a streamed transaction back, verifying every spilled record. Removes the file when
/// dropped.
pub struct TxnReader {
    path: PathBuf,
    file: Option<BufReader<File>>,
    file_len: u64,
    offset: u64,
    mem: Vec<Vec<u8>>,
    mem_chunk: usize,
    mem_off: usize,
    buf: Vec<u8>,
}

impl TxnReader {
    fn corrupt(&self, offset: u64, detail: String) -> SpillError {
        SpillError::Corrupt { path: self.path.clone(), offset, detail }
    }

    fn next_from_file(&mut self) -> Option<Result<Bytes, SpillError>> {
        if self.offset >= self.file_len {
            self.file = None;
            return None;
        }
        let at = self.offset;
        let f = self.file.as_mut()?;
        let mut header = [0u8; HEADER];
        if let Err(e) = f.read_exact(&mut header) {
            return Some(Err(self.corrupt(at, format!("record header unreadable: {e}"))));
        }
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_RECORD || at + HEADER as u64 + len as u64 > self.file_len {
            return Some(Err(self.corrupt(at, format!("record length {len} runs past the end of the file"))));
        }
        self.buf.resize(len as usize, 0);
        let f = self.file.as_mut()?;
        if let Err(e) = f.read_exact(&mut self.buf) {
            return Some(Err(self.corrupt(at, format!("record unreadable: {e}"))));
        }
        let actual = crc32fast::hash(&self.buf);
        if actual != crc {
            return Some(Err(self.corrupt(at, format!("checksum mismatch (stored {crc:08x}, computed {actual:08x})"))));
        }
        self.offset = at + HEADER as u64 + len as u64;
        Some(Ok(Bytes::copy_from_slice(&self.buf)))
    }
}

impl Iterator for TxnReader {
    type Item = Result<Bytes, SpillError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.file.is_some() {
            if let Some(r) = self.next_from_file() {
                if r.is_err() {
                    // Stop after a corrupt record: nothing after it can be trusted.
                    self.file = None;
                    self.file_len = 0;
                    self.mem = Vec::new();
                }
                return Some(r);
            }
        }
        loop {
            let c = self.mem.get(self.mem_chunk)?;
            if self.mem_off + 4 > c.len() {
                // Done with this chunk: free it as we go.
                self.mem[self.mem_chunk] = Vec::new();
                self.mem_chunk += 1;
                self.mem_off = 0;
                continue;
            }
            let o = self.mem_off;
            let len = u32::from_be_bytes([c[o], c[o + 1], c[o + 2], c[o + 3]]) as usize;
            let end = (o + 4 + len).min(c.len());
            self.mem_off = end;
            return Some(Ok(Bytes::copy_from_slice(&c[o + 4..end])));
        }
    }
}

impl Drop for TxnReader {
    fn drop(&mut self) {
        self.file.take();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes spill files left in `dir` whose names start with `prefix` (a previous run's, after a
/// crash). Returns how many were removed.
pub fn remove_leftovers(dir: &Path, prefix: &str) -> usize {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) && std::fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pgsub-spill-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&d);
        d
    }

    fn collect(r: TxnReader) -> Result<Vec<Vec<u8>>, SpillError> {
        r.map(|x| x.map(|b| b.to_vec())).collect()
    }

    #[test]
    fn memory_only_round_trip() {
        let mut b = TxnBuffer::new(7, tmp("mem"));
        b.push(7, b"one");
        b.push(7, b"two");
        assert_eq!(b.payload_bytes(), 6);
        assert!(b.mem_bytes() >= 6 + 8, "memory counts the allocation, headers included");
        let path = b.path().to_path_buf();
        let out = collect(b.into_reader().unwrap()).unwrap();
        assert_eq!(out, vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(!path.exists(), "no file without a spill");
    }

    #[test]
    fn spilled_and_memory_records_come_back_in_order() {
        let path = tmp("order");
        let mut b = TxnBuffer::new(7, path.clone());
        let mut expect = Vec::new();
        for i in 0..1000u32 {
            let rec = format!("record {i} {}", "x".repeat((i % 50) as usize));
            b.push(7, rec.as_bytes());
            expect.push(rec.into_bytes());
            if i % 97 == 0 {
                b.spill().unwrap();
                assert_eq!(b.mem_bytes(), 0);
            }
        }
        assert!(b.file_bytes() > 0);
        let out = collect(b.into_reader().unwrap()).unwrap();
        assert_eq!(out, expect);
        assert!(!path.exists(), "the reader removes the file");
    }

    #[test]
    fn crc_mismatch_is_detected() {
        let path = tmp("crc");
        let mut b = TxnBuffer::new(7, path.clone());
        b.push(7, b"good");
        b.spill().unwrap();
        b.corrupt_next_spilled_record();
        b.push(7, b"damaged");
        b.push(7, b"after");
        b.spill().unwrap();
        b.push(7, b"in memory");
        let mut r = b.into_reader().unwrap();
        assert_eq!(r.next().unwrap().unwrap().as_ref(), b"good");
        let err = r.next().unwrap().unwrap_err();
        assert!(matches!(err, SpillError::Corrupt { offset: 12, .. }), "{err}");
        assert!(err.to_string().contains("checksum mismatch"));
        assert!(r.next().is_none(), "nothing after a corrupt record");
    }

    #[test]
    fn flipped_byte_on_disk_and_truncated_file_are_detected() {
        let path = tmp("disk");
        let mut b = TxnBuffer::new(7, path.clone());
        b.push(7, b"abcdef");
        b.push(7, b"ghijkl");
        b.spill().unwrap();
        // Damage the file behind the buffer's back: flip a payload byte of the second record.
        {
            use std::io::Write as _;
            let w = b.file.as_mut().unwrap();
            w.flush().unwrap();
            let f = w.get_mut();
            f.seek(SeekFrom::Start(8 + 6 + 8 + 2)).unwrap();
            f.write_all(b"Z").unwrap();
            f.seek(SeekFrom::End(0)).unwrap();
        }
        let mut r = b.into_reader().unwrap();
        assert_eq!(r.next().unwrap().unwrap().as_ref(), b"abcdef");
        assert!(matches!(r.next().unwrap(), Err(SpillError::Corrupt { offset: 14, .. })));

        // A record header claiming more bytes than the file has.
        let path = tmp("trunc");
        let mut b = TxnBuffer::new(7, path.clone());
        b.push(7, b"abcdef");
        b.spill().unwrap();
        {
            let w = b.file.as_mut().unwrap();
            w.flush().unwrap();
            let f = w.get_mut();
            f.seek(SeekFrom::Start(0)).unwrap();
            f.write_all(&1000u32.to_be_bytes()).unwrap();
            f.seek(SeekFrom::End(0)).unwrap();
        }
        let mut r = b.into_reader().unwrap();
        let e = r.next().unwrap().unwrap_err();
        assert!(e.to_string().contains("runs past the end"), "{e}");
    }

    #[test]
    fn subtransaction_abort_in_memory_and_in_file() {
        // In memory.
        let mut b = TxnBuffer::new(1, tmp("sub-mem"));
        b.push(1, b"top-a");
        b.push(2, b"sub2-a");
        b.push(2, b"sub2-b");
        b.push(3, b"sub3-a");
        b.abort_subxact(3).unwrap();
        b.push(1, b"top-b");
        b.abort_subxact(9).unwrap(); // made no changes: nothing happens
        let out = collect(b.into_reader().unwrap()).unwrap();
        assert_eq!(out, vec![b"top-a".to_vec(), b"sub2-a".to_vec(), b"sub2-b".to_vec(), b"top-b".to_vec()]);

        // The aborted subtransaction's first change was already spilled.
        let mut b = TxnBuffer::new(1, tmp("sub-file"));
        b.push(1, b"top-a");
        b.push(5, b"sub5-a");
        b.spill().unwrap();
        b.push(5, b"sub5-b");
        b.push(6, b"sub6-nested");
        b.abort_subxact(5).unwrap();
        assert_eq!(b.mem_bytes(), 0);
        b.push(1, b"top-b");
        b.spill().unwrap();
        b.push(1, b"top-c");
        let out = collect(b.into_reader().unwrap()).unwrap();
        assert_eq!(out, vec![b"top-a".to_vec(), b"top-b".to_vec(), b"top-c".to_vec()]);
    }

    #[test]
    fn leftovers_are_removed_and_discard_deletes() {
        let dir = std::env::temp_dir().join(format!("pgsub-spill-dir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pgsql_tmp_pgsub_1_5.spill"), b"x").unwrap();
        std::fs::write(dir.join("other"), b"x").unwrap();
        assert_eq!(remove_leftovers(&dir, "pgsql_tmp_pgsub_1_"), 1);
        assert!(dir.join("other").exists());
        let mut b = TxnBuffer::new(1, dir.join("pgsql_tmp_pgsub_1_9.spill"));
        b.push(1, b"x");
        b.spill().unwrap();
        assert!(dir.join("pgsql_tmp_pgsub_1_9.spill").exists());
        b.discard();
        assert!(!dir.join("pgsql_tmp_pgsub_1_9.spill").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
