//! Unit tests of the pgoutput decoder: a fixture of every message kind in each layout variant
//! (built with a small writer following the documented layouts), truncations, trailing bytes,
//! malformed fields, version gating, the streamed-block state machine and error messages.

use bytes::Bytes;

use super::*;
use crate::lsn::Lsn;

#[path = "../../tests/support/pgoutput_writer.rs"]
mod writer;
use writer::W;

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
    TupleData { columns: vec![TupleValue::Text(b(v))] }
}

struct Fixture {
    name: &'static str,
    version: u32,
    in_stream: bool,
    abort_info: bool,
    bytes: Bytes,
    want: LogicalMessage,
}

fn fx(name: &'static str, version: u32, in_stream: bool, bytes: Bytes, want: LogicalMessage) -> Fixture {
    Fixture { name, version, in_stream, abort_info: false, bytes, want }
}

/// Every message type, in each layout variant (plain, streamed with xid, v4 abort info).
fn fixtures() -> Vec<Fixture> {
    let mut v = vec![
        fx(
            "begin",
            1,
            false,
            W::tag(b'B').u64(0x0000_0001_2345_6789).i64(700_000_000_000_000).u32(742).bytes(),
            LogicalMessage::Begin(Begin { final_lsn: Lsn(0x1_2345_6789), commit_time: 700_000_000_000_000, xid: 742 }),
        ),
        fx(
            "commit",
            1,
            false,
            W::tag(b'C').u8(0).u64(100).u64(200).i64(-1).bytes(),
            LogicalMessage::Commit(Commit { flags: 0, commit_lsn: Lsn(100), end_lsn: Lsn(200), commit_time: -1 }),
        ),
        fx(
            "origin",
            1,
            false,
            W::tag(b'O').u64(0xABCD).s("node_a").bytes(),
            LogicalMessage::Origin(Origin { commit_lsn: Lsn(0xABCD), name: "node_a".into() }),
        ),
        fx(
            "origin in stream (no xid prefix)",
            2,
            true,
            W::tag(b'O').u64(0).s("node_b").bytes(),
            LogicalMessage::Origin(Origin { commit_lsn: Lsn::INVALID, name: "node_b".into() }),
        ),
        fx(
            "stream start",
            2,
            false,
            W::tag(b'S').u32(9000).u8(1).bytes(),
            LogicalMessage::StreamStart(StreamStart { xid: 9000, first_segment: true }),
        ),
        fx(
            "stream start, later segment",
            4,
            false,
            W::tag(b'S').u32(9000).u8(0).bytes(),
            LogicalMessage::StreamStart(StreamStart { xid: 9000, first_segment: false }),
        ),
        fx("stream stop", 2, true, W::tag(b'E').bytes(), LogicalMessage::StreamStop),
        fx(
            "stream commit",
            2,
            false,
            W::tag(b'c').u32(9000).u8(0).u64(300).u64(400).i64(5).bytes(),
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
            LogicalMessage::StreamAbort(StreamAbort { xid: 9000, subxid: 9001, abort_lsn: None, abort_time: None }),
        ),
        fx(
            "stream abort v4 without parallel",
            4,
            false,
            W::tag(b'A').u32(9000).u32(9000).bytes(),
            LogicalMessage::StreamAbort(StreamAbort { xid: 9000, subxid: 9000, abort_lsn: None, abort_time: None }),
        ),
        Fixture {
            abort_info: true,
            ..fx(
                "stream abort v4 parallel",
                4,
                false,
                W::tag(b'A').u32(9000).u32(9002).u64(0x5_0000_0010).i64(777).bytes(),
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
            W::tag(b'b').u64(10).u64(20).i64(30).u32(40).s("gid-1").bytes(),
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
            W::tag(b'P').u8(0).u64(10).u64(20).i64(30).u32(40).s("gid-1").bytes(),
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
            W::tag(b'K').u8(0).u64(11).u64(21).i64(31).u32(41).s("gïd").bytes(),
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
            W::tag(b'r').u8(0).u64(12).u64(22).i64(32).i64(33).u32(42).s("").bytes(),
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
            W::tag(b'p').u8(0).u64(13).u64(23).i64(34).u32(43).s("g").bytes(),
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
                    Column { is_key: true, name: "id".into(), type_oid: 23, type_modifier: -1 },
                    Column { is_key: false, name: "name".into(), type_oid: 1043, type_modifier: 68 },
                    Column { is_key: false, name: "ünïcode".into(), type_oid: 25, type_modifier: -1 },
                ],
            }),
        ));
        v.push(fx(
            "relation (pg_catalog, full, no columns)",
            version,
            in_stream,
            W::tag(b'R').opt_xid(xid).u32(1).s("").s("t").u8(b'f').u16(0).bytes(),
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
            W::tag(b'Y').opt_xid(xid).u32(90001).s("myschema").s("mood").bytes(),
            LogicalMessage::Type(TypeMsg { xid, oid: 90001, namespace: "myschema".into(), name: "mood".into() }),
        ));
        v.push(fx(
            "insert",
            version,
            in_stream,
            tuple4(W::tag(b'I').opt_xid(xid).u32(16384).u8(b'N')).bytes(),
            LogicalMessage::Insert(Insert { xid, rel_oid: 16384, new: tuple4_value() }),
        ));
        v.push(fx(
            "insert, empty tuple",
            version,
            in_stream,
            W::tag(b'I').opt_xid(xid).u32(5).u8(b'N').u16(0).bytes(),
            LogicalMessage::Insert(Insert { xid, rel_oid: 5, new: TupleData::default() }),
        ));
        v.push(fx(
            "update, new only",
            version,
            in_stream,
            tuple1(W::tag(b'U').opt_xid(xid).u32(16384).u8(b'N'), b"x").bytes(),
            LogicalMessage::Update(Update { xid, rel_oid: 16384, old: None, new: tuple1_value(b"x") }),
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
            tuple1(tuple4(W::tag(b'U').opt_xid(xid).u32(7).u8(b'O')).u8(b'N'), b"y").bytes(),
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
            LogicalMessage::Delete(Delete { xid, rel_oid: 16384, old: OldTuple::Key(tuple1_value(b"42")) }),
        ));
        v.push(fx(
            "delete, full",
            version,
            in_stream,
            tuple4(W::tag(b'D').opt_xid(xid).u32(16384).u8(b'O')).bytes(),
            LogicalMessage::Delete(Delete { xid, rel_oid: 16384, old: OldTuple::Full(tuple4_value()) }),
        ));
        for (flags, cascade, restart) in [(0u8, false, false), (1, true, false), (2, false, true), (3, true, true)] {
            v.push(fx(
                "truncate",
                version,
                in_stream,
                W::tag(b'T').opt_xid(xid).i32(2).u8(flags).u32(16384).u32(16390).bytes(),
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
            LogicalMessage::Truncate(Truncate { xid, cascade: false, restart_identity: false, rel_oids: vec![] }),
        ));
        v.push(fx(
            "message, transactional",
            version,
            in_stream,
            W::tag(b'M').opt_xid(xid).u8(1).u64(0x10_0000_0000).s("pgsub").i32(5).raw(b"he\0lo").bytes(),
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
        let got = run(&f, f.bytes.clone()).unwrap_or_else(|e| panic!("{} (v{}): {e}", f.name, f.version));
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
        assert_eq!(e, DecodeError::TrailingBytes { tag: f.bytes[0], offset: f.bytes.len(), extra: 1 }, "{}", f.name);
    }
}

#[test]
fn values_are_zero_copy() {
    let buf = tuple4(W::tag(b'I').u32(1).u8(b'N')).bytes();
    let msg = decode_one(buf.clone(), 1, false).unwrap();
    let LogicalMessage::Insert(ins) = msg else { panic!("not an insert") };
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
        assert_eq!(decode_one(begin.clone(), v, false), Err(DecodeError::UnsupportedVersion { version: v }));
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
        (W::tag(b'p').u8(0).u64(1).u64(1).i64(1).u32(1).s("g").bytes(), 3),
    ];
    for (buf, since) in cases {
        for v in 1..since {
            let e = decode_one(buf.clone(), v, false).unwrap_err();
            assert!(matches!(e, DecodeError::NotInVersion { since: s, .. } if s == since), "{e}");
        }
        assert!(decode_one(buf, since, false).is_ok());
    }
}

#[test]
fn bad_tuple_kind() {
    let buf = W::tag(b'I').u32(1).u8(b'N').u16(2).u8(b'n').u8(b'x').bytes();
    let e = decode_one(buf, 1, false).unwrap_err();
    assert_eq!(e, DecodeError::BadTupleKind { tag: b'I', offset: 9, kind: b'x' });
    assert!(e.to_string().contains("INSERT ('I')"), "{e}");
}

#[test]
fn bad_tuple_markers() {
    // Insert must say 'N'.
    let e = decode_one(tuple1(W::tag(b'I').u32(1).u8(b'K'), b"a").bytes(), 1, false).unwrap_err();
    assert!(matches!(e, DecodeError::BadTupleMarker { got: b'K', offset: 5, .. }), "{e}");
    // Update: unknown first marker.
    let e = decode_one(tuple1(W::tag(b'U').u32(1).u8(b'X'), b"a").bytes(), 1, false).unwrap_err();
    assert!(matches!(e, DecodeError::BadTupleMarker { got: b'X', .. }), "{e}");
    // Update: old tuple followed by something other than 'N'.
    let e =
        decode_one(tuple1(tuple1(W::tag(b'U').u32(1).u8(b'K'), b"a").u8(b'K'), b"b").bytes(), 1, false).unwrap_err();
    assert!(matches!(e, DecodeError::BadTupleMarker { got: b'K', .. }), "{e}");
    // Delete: 'N' is not allowed.
    let e = decode_one(tuple1(W::tag(b'D').u32(1).u8(b'N'), b"a").bytes(), 1, false).unwrap_err();
    assert!(matches!(e, DecodeError::BadTupleMarker { got: b'N', .. }), "{e}");
}

#[test]
fn bad_replica_identity() {
    let buf = W::tag(b'R').u32(1).s("s").s("t").u8(b'x').u16(0).bytes();
    let e = decode_one(buf, 1, false).unwrap_err();
    assert_eq!(e, DecodeError::BadReplicaIdentity { tag: b'R', offset: 9, got: b'x' });
}

#[test]
fn negative_lengths() {
    let e = decode_one(W::tag(b'I').u32(1).u8(b'N').u16(1).u8(b't').i32(-1).bytes(), 1, false).unwrap_err();
    assert!(matches!(e, DecodeError::NegativeLength { value: -1, offset: 9, .. }), "{e}");
    let e = decode_one(W::tag(b'I').u32(1).u8(b'N').u16(1).u8(b'b').i32(i32::MIN).bytes(), 1, false).unwrap_err();
    assert!(matches!(e, DecodeError::NegativeLength { .. }), "{e}");
    let e = decode_one(W::tag(b'T').i32(-5).u8(0).bytes(), 1, false).unwrap_err();
    assert!(matches!(e, DecodeError::NegativeLength { value: -5, offset: 1, .. }), "{e}");
    let e = decode_one(W::tag(b'M').u8(0).u64(1).s("p").i32(-2).bytes(), 1, false).unwrap_err();
    assert!(matches!(e, DecodeError::NegativeLength { value: -2, .. }), "{e}");
}

#[test]
fn huge_counts_do_not_allocate_or_panic() {
    // 65535 columns announced, none present.
    let e = decode_one(W::tag(b'I').u32(1).u8(b'N').u16(u16::MAX).bytes(), 1, false).unwrap_err();
    assert!(matches!(e, DecodeError::Truncated { .. }), "{e}");
    let e = decode_one(W::tag(b'R').u32(1).s("s").s("t").u8(b'd').u16(u16::MAX).bytes(), 1, false).unwrap_err();
    assert!(matches!(e, DecodeError::Truncated { .. }), "{e}");
    let e = decode_one(W::tag(b'T').i32(i32::MAX).u8(0).u32(1).bytes(), 1, false).unwrap_err();
    assert!(matches!(e, DecodeError::Truncated { .. }), "{e}");
    let e = decode_one(W::tag(b'I').u32(1).u8(b'N').u16(1).u8(b't').i32(i32::MAX).raw(b"ab").bytes(), 1, false)
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
    let e = decode_one(W::tag(b'M').u8(0).u64(1).s("p").i32(i32::MAX).bytes(), 1, false).unwrap_err();
    assert!(matches!(e, DecodeError::Truncated { .. }), "{e}");
}

#[test]
fn strings_must_be_terminated_utf8() {
    let e = decode_one(W::tag(b'O').u64(1).raw(b"abc").bytes(), 1, false).unwrap_err();
    assert_eq!(e, DecodeError::UnterminatedString { tag: b'O', offset: 9, field: "origin name" });
    let e = decode_one(W::tag(b'O').u64(1).raw(b"\xff\xfe\0").bytes(), 1, false).unwrap_err();
    assert_eq!(e, DecodeError::InvalidUtf8 { tag: b'O', offset: 9, field: "origin name" });
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
    assert_eq!(d.decode(stop.clone()), Err(DecodeError::StreamStopOutsideStream));
    assert!(!d.in_stream());

    assert_eq!(
        d.decode(start.clone()).unwrap(),
        LogicalMessage::StreamStart(StreamStart { xid: 500, first_segment: true })
    );
    assert!(d.in_stream());
    // Nested start: error, state unchanged.
    assert_eq!(d.decode(start.clone()), Err(DecodeError::NestedStreamStart { xid: 500 }));
    assert!(d.in_stream());
    // Origin right after Stream Start carries no xid.
    let origin = W::tag(b'O').u64(0).s("up").bytes();
    assert!(matches!(d.decode(origin).unwrap(), LogicalMessage::Origin(_)));
    assert_eq!(
        d.decode(ins_streamed).unwrap(),
        LogicalMessage::Insert(Insert { xid: Some(500), rel_oid: 16384, new: tuple1_value(b"v") })
    );
    // Transaction control inside a stream is a protocol violation.
    let begin = W::tag(b'B').u64(1).i64(1).u32(1).bytes();
    assert_eq!(d.decode(begin.clone()), Err(DecodeError::UnexpectedInStream { tag: b'B' }));
    let commit = W::tag(b'c').u32(500).u8(0).u64(1).u64(2).i64(3).bytes();
    assert_eq!(d.decode(commit.clone()), Err(DecodeError::UnexpectedInStream { tag: b'c' }));
    assert!(d.in_stream());

    assert_eq!(d.decode(stop).unwrap(), LogicalMessage::StreamStop);
    assert!(!d.in_stream());
    assert_eq!(
        d.decode(ins_plain).unwrap(),
        LogicalMessage::Insert(Insert { xid: None, rel_oid: 16384, new: tuple1_value(b"v") })
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
        LogicalMessage::StreamAbort(StreamAbort { xid: 1, subxid: 2, abort_lsn: Some(Lsn(3)), abort_time: Some(4) })
    );
    assert!(matches!(d4p.decode(short.clone()), Err(DecodeError::Truncated { offset: 9, .. })));

    let mut d4 = Decoder::new(4);
    assert!(d4.decode(short.clone()).is_ok());
    assert!(matches!(d4.decode(long.clone()), Err(DecodeError::TrailingBytes { offset: 9, extra: 16, .. })));

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
    for ri in [ReplicaIdentity::Default, ReplicaIdentity::Nothing, ReplicaIdentity::Full, ReplicaIdentity::Index] {
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
