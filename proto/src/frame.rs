//! CopyData payloads of a replication stream, sans-IO: parsing the walsender's XLogData ('w')
//! and primary keepalive ('k') messages, encoding the standby status update ('r'), and
//! conversions between PostgreSQL timestamps (µs since 2000-01-01 UTC) and `SystemTime`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

use crate::lsn::Lsn;

/// Seconds from the Unix epoch (1970-01-01) to the PostgreSQL epoch (2000-01-01), both UTC.
pub const PG_EPOCH_OFFSET_SECS: i64 = 946_684_800;

/// Tag of an XLogData message (walsender → client).
pub const TAG_XLOG_DATA: u8 = b'w';
/// Tag of a primary keepalive message (walsender → client).
pub const TAG_KEEPALIVE: u8 = b'k';
/// Tag of a standby status update (client → walsender).
pub const TAG_STANDBY_STATUS: u8 = b'r';

/// Header bytes of XLogData before the payload: tag, start, end, send time.
pub const XLOG_DATA_HEADER_LEN: usize = 1 + 8 + 8 + 8;
/// Exact length of a keepalive: tag, end, send time, reply-requested flag.
pub const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;
/// Exact length of a standby status update.
pub const STANDBY_STATUS_LEN: usize = 1 + 8 + 8 + 8 + 8 + 1;

/// One CopyData payload received during START_REPLICATION.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationFrame {
    /// WAL data: for logical replication, one output-plugin message in `data`.
    XLogData {
        /// WAL position where `data` starts.
        wal_start: Lsn,
        /// Current end of WAL on the server.
        wal_end: Lsn,
        /// Server clock at transmission, µs since 2000-01-01 UTC.
        send_time: i64,
        /// The payload (a slice of the received buffer, not a copy).
        data: Bytes,
    },
    /// Primary keepalive.
    Keepalive {
        /// Current end of WAL on the server.
        wal_end: Lsn,
        /// Server clock at transmission, µs since 2000-01-01 UTC.
        send_time: i64,
        /// The server asks for a standby status update as soon as possible, or it may time the
        /// connection out.
        reply_requested: bool,
    },
}

/// Why a CopyData payload is not a valid replication frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Zero-length CopyData.
    #[error("empty CopyData message in replication stream")]
    Empty,
    /// First byte is neither 'w' nor 'k'.
    #[error("unexpected replication message type {} (expected 'w' XLogData or 'k' keepalive)", tag_display(*.0))]
    UnknownTag(u8),
    /// The message is shorter than its fixed layout.
    #[error("truncated replication message {}: need at least {needed} bytes, got {got}", tag_display(*.tag))]
    Truncated { tag: u8, needed: usize, got: usize },
    /// A fixed-length message (keepalive) has extra bytes after its last field.
    #[error("replication message {} has {got} bytes, expected exactly {expected}", tag_display(*.tag))]
    TrailingBytes { tag: u8, expected: usize, got: usize },
}

fn tag_display(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}' (0x{:02x})", tag as char, tag)
    } else {
        format!("0x{tag:02x}")
    }
}

fn be_u64(buf: &[u8], at: usize) -> Option<u64> {
    let end = at.checked_add(8)?;
    let s = buf.get(at..end)?;
    let arr: [u8; 8] = s.try_into().ok()?;
    Some(u64::from_be_bytes(arr))
}

/// Parses one CopyData payload of a replication stream.
///
/// XLogData's payload is returned as a slice of `buf` (no copy).
pub fn parse_frame(buf: Bytes) -> Result<ReplicationFrame, FrameError> {
    let tag = *buf.first().ok_or(FrameError::Empty)?;
    let truncated = |needed: usize| FrameError::Truncated { tag, needed, got: buf.len() };
    match tag {
        TAG_XLOG_DATA => {
            if buf.len() < XLOG_DATA_HEADER_LEN {
                return Err(truncated(XLOG_DATA_HEADER_LEN));
            }
            let wal_start = be_u64(&buf, 1).ok_or_else(|| truncated(XLOG_DATA_HEADER_LEN))?;
            let wal_end = be_u64(&buf, 9).ok_or_else(|| truncated(XLOG_DATA_HEADER_LEN))?;
            let send_time = be_u64(&buf, 17).ok_or_else(|| truncated(XLOG_DATA_HEADER_LEN))?;
            let data = buf.slice(XLOG_DATA_HEADER_LEN..);
            Ok(ReplicationFrame::XLogData {
                wal_start: Lsn(wal_start),
                wal_end: Lsn(wal_end),
                send_time: send_time as i64,
                data,
            })
        }
        TAG_KEEPALIVE => {
            if buf.len() < KEEPALIVE_LEN {
                return Err(truncated(KEEPALIVE_LEN));
            }
            if buf.len() > KEEPALIVE_LEN {
                return Err(FrameError::TrailingBytes { tag, expected: KEEPALIVE_LEN, got: buf.len() });
            }
            let wal_end = be_u64(&buf, 1).ok_or_else(|| truncated(KEEPALIVE_LEN))?;
            let send_time = be_u64(&buf, 9).ok_or_else(|| truncated(KEEPALIVE_LEN))?;
            let reply = *buf.get(17).ok_or_else(|| truncated(KEEPALIVE_LEN))?;
            Ok(ReplicationFrame::Keepalive {
                wal_end: Lsn(wal_end),
                send_time: send_time as i64,
                // The walreceiver treats any non-zero byte as "reply now".
                reply_requested: reply != 0,
            })
        }
        other => Err(FrameError::UnknownTag(other)),
    }
}

/// Encodes a standby status update ('r'), the CopyData payload a client sends to report
/// progress. Per the protocol the positions are "last byte + 1" of what was written, flushed and
/// applied; `client_time` is µs since 2000-01-01 UTC; `reply_requested` asks the server to
/// answer with a keepalive immediately.
pub fn encode_standby_status(write: Lsn, flush: Lsn, apply: Lsn, client_time: i64, reply_requested: bool) -> Bytes {
    let mut b = BytesMut::with_capacity(STANDBY_STATUS_LEN);
    b.put_u8(TAG_STANDBY_STATUS);
    b.put_u64(write.0);
    b.put_u64(flush.0);
    b.put_u64(apply.0);
    b.put_i64(client_time);
    b.put_u8(u8::from(reply_requested));
    b.freeze()
}

/// The current time as a PostgreSQL timestamp (µs since 2000-01-01 UTC).
pub fn now_pg_micros() -> i64 {
    system_time_to_pg_micros(SystemTime::now())
}

fn pg_epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(PG_EPOCH_OFFSET_SECS as u64)
}

/// Converts a PostgreSQL timestamp (µs since 2000-01-01 UTC, may be negative) to `SystemTime`.
/// Values the platform cannot represent are clamped to the PostgreSQL epoch itself.
pub fn pg_micros_to_system_time(micros: i64) -> SystemTime {
    let epoch = pg_epoch();
    let delta = Duration::from_micros(micros.unsigned_abs());
    let t = if micros >= 0 { epoch.checked_add(delta) } else { epoch.checked_sub(delta) };
    t.unwrap_or(epoch)
}

/// Converts a `SystemTime` to a PostgreSQL timestamp (µs since 2000-01-01 UTC), saturating at
/// the `i64` range. Sub-microsecond precision is truncated toward the PostgreSQL epoch.
pub fn system_time_to_pg_micros(t: SystemTime) -> i64 {
    let epoch = pg_epoch();
    match t.duration_since(epoch) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(e) => {
            let before = e.duration().as_micros();
            i64::try_from(before).map(|v| -v).unwrap_or(i64::MIN)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xlog_fixture() -> Vec<u8> {
        let mut v = vec![b'w'];
        v.extend_from_slice(&0x0000_0001_0000_0010u64.to_be_bytes());
        v.extend_from_slice(&0x0000_0001_0000_0020u64.to_be_bytes());
        v.extend_from_slice(&(-5i64).to_be_bytes());
        v.extend_from_slice(b"BODY");
        v
    }

    fn keepalive_fixture(reply: u8) -> Vec<u8> {
        let mut v = vec![b'k'];
        v.extend_from_slice(&0xAABB_CCDD_0011_2233u64.to_be_bytes());
        v.extend_from_slice(&123_456_789i64.to_be_bytes());
        v.push(reply);
        v
    }

    #[test]
    fn parse_xlog_data() {
        let buf = Bytes::from(xlog_fixture());
        let f = parse_frame(buf.clone()).unwrap();
        match f {
            ReplicationFrame::XLogData { wal_start, wal_end, send_time, data } => {
                assert_eq!(wal_start, Lsn(0x1_0000_0010));
                assert_eq!(wal_end, Lsn(0x1_0000_0020));
                assert_eq!(send_time, -5);
                assert_eq!(&data[..], b"BODY");
                // zero-copy: the payload points into the original buffer
                assert_eq!(data.as_ptr(), buf[25..].as_ptr());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn parse_xlog_data_empty_payload() {
        let mut v = xlog_fixture();
        v.truncate(XLOG_DATA_HEADER_LEN);
        match parse_frame(Bytes::from(v)).unwrap() {
            ReplicationFrame::XLogData { data, .. } => assert!(data.is_empty()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn parse_keepalive() {
        for (byte, want) in [(0u8, false), (1, true), (7, true)] {
            let f = parse_frame(Bytes::from(keepalive_fixture(byte))).unwrap();
            assert_eq!(
                f,
                ReplicationFrame::Keepalive {
                    wal_end: Lsn(0xAABB_CCDD_0011_2233),
                    send_time: 123_456_789,
                    reply_requested: want,
                }
            );
        }
    }

    #[test]
    fn truncations_are_errors() {
        let x = xlog_fixture();
        for n in 0..XLOG_DATA_HEADER_LEN {
            let e = parse_frame(Bytes::copy_from_slice(&x[..n])).unwrap_err();
            if n == 0 {
                assert_eq!(e, FrameError::Empty);
            } else {
                assert_eq!(e, FrameError::Truncated { tag: b'w', needed: XLOG_DATA_HEADER_LEN, got: n });
            }
        }
        let k = keepalive_fixture(1);
        for n in 1..KEEPALIVE_LEN {
            let e = parse_frame(Bytes::copy_from_slice(&k[..n])).unwrap_err();
            assert!(matches!(e, FrameError::Truncated { tag: b'k', .. }), "{e}");
        }
    }

    #[test]
    fn keepalive_trailing_bytes() {
        let mut k = keepalive_fixture(0);
        k.push(0);
        let e = parse_frame(Bytes::from(k)).unwrap_err();
        assert_eq!(e, FrameError::TrailingBytes { tag: b'k', expected: 18, got: 19 });
        assert!(e.to_string().contains("'k'"));
    }

    #[test]
    fn unknown_tags() {
        for t in [b'r', b'p', b's', 0u8, 0xff, b'W'] {
            let e = parse_frame(Bytes::from(vec![t, 0, 0, 0])).unwrap_err();
            assert_eq!(e, FrameError::UnknownTag(t));
            let _: &dyn std::error::Error = &e;
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn standby_status_byte_exact() {
        let b = encode_standby_status(
            Lsn(0x0102_0304_0506_0708),
            Lsn(0x1112_1314_1516_1718),
            Lsn(0x2122_2324_2526_2728),
            -2,
            true,
        );
        let want: Vec<u8> = [
            &[b'r'][..],
            &[1, 2, 3, 4, 5, 6, 7, 8],
            &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18],
            &[0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe],
            &[1],
        ]
        .concat();
        assert_eq!(b.len(), 34);
        assert_eq!(&b[..], &want[..]);
        let b = encode_standby_status(Lsn(0), Lsn(0), Lsn(0), 0, false);
        let mut zeros = [0u8; STANDBY_STATUS_LEN];
        zeros[0] = b'r';
        assert_eq!(&b[..], &zeros[..]);
    }

    #[test]
    fn time_conversions() {
        assert_eq!(system_time_to_pg_micros(pg_epoch()), 0);
        assert_eq!(system_time_to_pg_micros(UNIX_EPOCH), -PG_EPOCH_OFFSET_SECS * 1_000_000);
        assert_eq!(pg_micros_to_system_time(0), UNIX_EPOCH + Duration::from_secs(946_684_800));
        // 2000-01-01 00:00:01.5 UTC
        assert_eq!(pg_micros_to_system_time(1_500_000), UNIX_EPOCH + Duration::from_micros(946_684_801_500_000));
        for v in [0i64, 1, -1, 1_700_000_000_000_000, -946_684_800_000_000, 12345] {
            assert_eq!(system_time_to_pg_micros(pg_micros_to_system_time(v)), v);
        }
        // sub-microsecond truncation
        let t = pg_epoch() + Duration::from_nanos(1_999);
        assert_eq!(system_time_to_pg_micros(t), 1);
        // extremes don't panic
        let _ = pg_micros_to_system_time(i64::MAX);
        let _ = pg_micros_to_system_time(i64::MIN);
        let now = now_pg_micros();
        // after 2020-01-01 in PG micros
        assert!(now > 631_152_000_000_000);
    }
}
