//! Robustness tests for the pgoutput decoder and the replication-frame parser: hundreds of
//! thousands of random and mutated frames (a deterministic xorshift loop) for every protocol
//! version, stream state and Stream Abort layout, plus proptest properties. The only
//! assertion for garbage is "returns, never panics"; valid inputs must round-trip.
//! Also holds an ignored test that (re)writes the cargo-fuzz seed corpus.

use bytes::Bytes;
use pgsub_proto::frame::{encode_standby_status, parse_frame, ReplicationFrame};
use pgsub_proto::pgoutput::{decode_one, decode_one_with_abort_info, Decoder, LogicalMessage, TupleData, TupleValue};
use pgsub_proto::Lsn;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// A tiny message builder (the documented layouts) and a set of valid fixtures.
// ---------------------------------------------------------------------------------------------

#[path = "support/pgoutput_writer.rs"]
mod writer;
use writer::W;

/// (bytes, min version, needs in_stream, needs abort info)
struct Fixture {
    bytes: Vec<u8>,
    version: u32,
    in_stream: bool,
    abort_info: bool,
}

fn fixture(w: W, version: u32, in_stream: bool) -> Fixture {
    Fixture { bytes: w.0, version, in_stream, abort_info: false }
}

fn fixtures() -> Vec<Fixture> {
    let mut v = vec![
        fixture(W::tag(b'B').u64(0x1_0000_0000).u64(7).u32(700), 1, false),
        fixture(W::tag(b'C').u8(0).u64(1).u64(2).u64(3), 1, false),
        fixture(W::tag(b'O').u64(5).s("origin"), 1, false),
        fixture(W::tag(b'S').u32(9).u8(1), 2, false),
        fixture(W::tag(b'E'), 2, true),
        fixture(W::tag(b'c').u32(9).u8(0).u64(1).u64(2).u64(3), 2, false),
        fixture(W::tag(b'A').u32(9).u32(10), 2, false),
        Fixture { abort_info: true, ..fixture(W::tag(b'A').u32(9).u32(10).u64(11).u64(12), 4, false) },
        fixture(W::tag(b'b').u64(1).u64(2).u64(3).u32(4).s("gid"), 3, false),
        fixture(W::tag(b'P').u8(0).u64(1).u64(2).u64(3).u32(4).s("gid"), 3, false),
        fixture(W::tag(b'K').u8(0).u64(1).u64(2).u64(3).u32(4).s("gid"), 3, false),
        fixture(W::tag(b'r').u8(0).u64(1).u64(2).u64(3).u64(4).u32(5).s("gid"), 3, false),
        fixture(W::tag(b'p').u8(0).u64(1).u64(2).u64(3).u32(4).s("gid"), 3, false),
    ];
    for xid in [None, Some(77u32)] {
        let version = if xid.is_some() { 2 } else { 1 };
        let st = xid.is_some();
        v.push(fixture(
            W::tag(b'R')
                .opt_xid(xid)
                .u32(16384)
                .s("public")
                .s("t")
                .u8(b'd')
                .u16(2)
                .u8(1)
                .s("id")
                .u32(23)
                .i32(-1)
                .u8(0)
                .s("v")
                .u32(25)
                .i32(-1),
            version,
            st,
        ));
        v.push(fixture(W::tag(b'Y').opt_xid(xid).u32(1).s("").s("ty"), version, st));
        v.push(fixture(W::tag(b'I').opt_xid(xid).u32(1).u8(b'N').tuple(), version, st));
        v.push(fixture(W::tag(b'U').opt_xid(xid).u32(1).u8(b'N').tuple(), version, st));
        v.push(fixture(W::tag(b'U').opt_xid(xid).u32(1).u8(b'K').tuple().u8(b'N').tuple(), version, st));
        v.push(fixture(W::tag(b'U').opt_xid(xid).u32(1).u8(b'O').tuple().u8(b'N').tuple(), version, st));
        v.push(fixture(W::tag(b'D').opt_xid(xid).u32(1).u8(b'K').tuple(), version, st));
        v.push(fixture(W::tag(b'D').opt_xid(xid).u32(1).u8(b'O').tuple(), version, st));
        v.push(fixture(W::tag(b'T').opt_xid(xid).i32(2).u8(3).u32(1).u32(2), version, st));
        v.push(fixture(W::tag(b'M').opt_xid(xid).u8(1).u64(9).s("pfx").i32(3).raw(b"xyz"), version, st));
    }
    v
}

fn xlog_wrap(payload: &[u8]) -> Vec<u8> {
    let mut v = vec![b'w'];
    v.extend_from_slice(&1u64.to_be_bytes());
    v.extend_from_slice(&2u64.to_be_bytes());
    v.extend_from_slice(&3i64.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

// ---------------------------------------------------------------------------------------------
// Deterministic random loop
// ---------------------------------------------------------------------------------------------

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

const TAGS: &[u8] = b"BCORYIUDTMSEcAbPKrp";
const INTERESTING: &[u8] = &[0, 1, 0x7f, 0x80, 0xff, b'N', b'K', b'O', b'n', b'u', b't', b'b'];

fn mutate(rng: &mut XorShift, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        match rng.below(9) {
            // flip a bit
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            // overwrite a byte with a random or interesting value
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = if rng.below(2) == 0 { rng.byte() } else { INTERESTING[rng.below(INTERESTING.len())] };
            }
            // truncate
            2 => {
                let n = rng.below(v.len() + 1);
                v.truncate(n);
            }
            // extend with random bytes
            3 => {
                for _ in 0..1 + rng.below(8) {
                    v.push(rng.byte());
                }
            }
            // overwrite 2 or 4 bytes with an extreme length/count
            4 if v.len() >= 4 => {
                let i = rng.below(v.len() - 3);
                let vals: [[u8; 4]; 5] =
                    [[0xff; 4], [0x7f, 0xff, 0xff, 0xff], [0x80, 0, 0, 0], [0, 0, 0xff, 0xff], [0, 0, 0, 0]];
                let pick = vals[rng.below(vals.len())];
                let w = if rng.below(2) == 0 { 2 } else { 4 };
                v[i..i + w].copy_from_slice(&pick[..w]);
            }
            // change the tag
            5 if !v.is_empty() => v[0] = TAGS[rng.below(TAGS.len())],
            // delete a byte in the middle
            6 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            // insert a byte in the middle
            7 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.byte());
            }
            // drop or duplicate a NUL (strings)
            _ => {
                if let Some(i) = v.iter().position(|&b| b == 0) {
                    if rng.below(2) == 0 {
                        v[i] = b'x';
                    } else {
                        v.insert(i, 0);
                    }
                }
            }
        }
    }
    v
}

fn random_frame(rng: &mut XorShift) -> Vec<u8> {
    let len = rng.below(48);
    let mut v: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
    if !v.is_empty() && rng.below(4) != 0 {
        v[0] = TAGS[rng.below(TAGS.len())];
    }
    v
}

/// Runs one buffer through every decode path; must never panic.
fn exercise(buf: &[u8], decoders: &mut [Decoder]) -> usize {
    let bytes = Bytes::copy_from_slice(buf);
    let mut ok = 0;
    for version in 1..=4u32 {
        for in_stream in [false, true] {
            for abort_info in [false, true] {
                let r = decode_one_with_abort_info(bytes.clone(), version, in_stream, abort_info);
                if let Ok(m) = r {
                    ok += 1;
                    let _ = m.kind();
                } else if let Err(e) = r {
                    let _ = e.to_string();
                }
            }
        }
    }
    for d in decoders.iter_mut() {
        if let Err(e) = d.decode(bytes.clone()) {
            let _ = e.to_string();
        }
    }
    match parse_frame(bytes.clone()) {
        Ok(ReplicationFrame::XLogData { data, .. }) => {
            for d in decoders.iter_mut() {
                let _ = d.decode(data.clone());
            }
        }
        Ok(ReplicationFrame::Keepalive { .. }) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let wrapped = Bytes::from(xlog_wrap(buf));
    if let Ok(ReplicationFrame::XLogData { data, .. }) = parse_frame(wrapped) {
        assert_eq!(&data[..], buf);
    } else {
        panic!("wrapping a payload in XLogData must parse");
    }
    ok
}

fn all_decoders() -> Vec<Decoder> {
    let mut v = Vec::new();
    for version in 1..=4 {
        v.push(Decoder::new(version));
        v.push(Decoder::new(version).with_stream_abort_lsn(true));
    }
    v
}

#[test]
fn fixtures_are_valid() {
    for f in fixtures() {
        let r = decode_one_with_abort_info(Bytes::from(f.bytes.clone()), f.version, f.in_stream, f.abort_info);
        assert!(r.is_ok(), "fixture {:?}: {r:?}", f.bytes);
    }
}

#[test]
fn mutated_and_random_frames_never_panic() {
    let fx = fixtures();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut decoders = all_decoders();
    let mut ok = 0usize;
    let iterations = 120_000;
    for i in 0..iterations {
        let buf = if i % 5 == 0 {
            random_frame(&mut rng)
        } else {
            let base = &fx[rng.below(fx.len())].bytes;
            mutate(&mut rng, base)
        };
        ok += exercise(&buf, &mut decoders);
        // Occasionally wrap a valid fixture in a frame and push it through too, so the
        // stateful decoders see real Stream Start/Stop sequences.
        if i % 7 == 0 {
            let base = &fx[rng.below(fx.len())].bytes;
            exercise(base, &mut decoders);
        }
    }
    // Sanity: the mutations don't only produce garbage.
    assert!(ok > 1_000, "only {ok} successful decodes");
}

#[test]
fn every_prefix_and_extension_of_fixtures_is_handled() {
    for f in fixtures() {
        for n in 0..f.bytes.len() {
            let r =
                decode_one_with_abort_info(Bytes::copy_from_slice(&f.bytes[..n]), f.version, f.in_stream, f.abort_info);
            assert!(r.is_err(), "prefix {n} of {:?} decoded", f.bytes);
        }
        for extra in 1..4 {
            let mut v = f.bytes.clone();
            v.extend(std::iter::repeat_n(0xAB, extra));
            let r = decode_one_with_abort_info(Bytes::from(v), f.version, f.in_stream, f.abort_info);
            assert!(r.is_err());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// proptest properties
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Val {
    Null,
    Toast,
    Text(Vec<u8>),
    Bin(Vec<u8>),
}

fn val_strategy() -> impl Strategy<Value = Val> {
    prop_oneof![
        Just(Val::Null),
        Just(Val::Toast),
        proptest::collection::vec(any::<u8>(), 0..20).prop_map(Val::Text),
        proptest::collection::vec(any::<u8>(), 0..20).prop_map(Val::Bin),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..64),
        version in 0u32..6,
        in_stream in any::<bool>(),
        abort_info in any::<bool>(),
    ) {
        let b = Bytes::from(data);
        let _ = decode_one_with_abort_info(b.clone(), version, in_stream, abort_info);
        let _ = decode_one(b.clone(), version, in_stream);
        let _ = parse_frame(b.clone());
        let mut d = Decoder::new(version).with_stream_abort_lsn(abort_info);
        let _ = d.decode(b);
    }

    #[test]
    fn insert_round_trips(
        vals in proptest::collection::vec(val_strategy(), 0..12),
        rel in any::<u32>(),
        xid in proptest::option::of(any::<u32>()),
        version in 1u32..=4,
    ) {
        let streamed = xid.is_some() && version >= 2;
        let xid = if streamed { xid } else { None };
        let mut w = W::tag(b'I').opt_xid(xid).u32(rel).u8(b'N').u16(vals.len() as u16);
        let mut want = Vec::new();
        for v in &vals {
            w = match v {
                Val::Null => { want.push(TupleValue::Null); w.u8(b'n') }
                Val::Toast => { want.push(TupleValue::UnchangedToast); w.u8(b'u') }
                Val::Text(t) => {
                    want.push(TupleValue::Text(Bytes::copy_from_slice(t)));
                    w.u8(b't').i32(t.len() as i32).raw(t)
                }
                Val::Bin(t) => {
                    want.push(TupleValue::Binary(Bytes::copy_from_slice(t)));
                    w.u8(b'b').i32(t.len() as i32).raw(t)
                }
            };
        }
        let got = decode_one(Bytes::from(w.0), version, streamed).unwrap();
        match got {
            LogicalMessage::Insert(ins) => {
                prop_assert_eq!(ins.xid, xid);
                prop_assert_eq!(ins.rel_oid, rel);
                prop_assert_eq!(ins.new, TupleData { columns: want });
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    #[test]
    fn lsn_text_round_trips(v in any::<u64>()) {
        let l = Lsn(v);
        prop_assert_eq!(l.to_string().parse::<Lsn>().unwrap(), l);
        prop_assert_eq!(l.to_string().to_lowercase().parse::<Lsn>().unwrap(), l);
    }

    #[test]
    fn standby_status_layout(w in any::<u64>(), f in any::<u64>(), a in any::<u64>(),
                             t in any::<i64>(), r in any::<bool>()) {
        let b = encode_standby_status(Lsn(w), Lsn(f), Lsn(a), t, r);
        prop_assert_eq!(b.len(), 34);
        prop_assert_eq!(b[0], b'r');
        prop_assert_eq!(&b[1..9], &w.to_be_bytes()[..]);
        prop_assert_eq!(&b[9..17], &f.to_be_bytes()[..]);
        prop_assert_eq!(&b[17..25], &a.to_be_bytes()[..]);
        prop_assert_eq!(&b[25..33], &t.to_be_bytes()[..]);
        prop_assert_eq!(b[33], u8::from(r));
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzz seed corpus
// ---------------------------------------------------------------------------------------------

/// Config byte understood by `fuzz/fuzz_targets/pgoutput.rs`: bits 0-1 = version - 1,
/// bit 2 = in_stream, bit 3 = stream abort carries lsn/time.
fn fuzz_config(version: u32, in_stream: bool, abort_info: bool) -> u8 {
    (version.saturating_sub(1) as u8 & 3) | (u8::from(in_stream) << 2) | (u8::from(abort_info) << 3)
}

/// Writes `fuzz/corpus/pgoutput/seed-*` from the fixtures. Run explicitly:
/// `cargo test --test decoder_props -- --ignored write_fuzz_seeds`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/pgoutput");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, f) in fixtures().iter().enumerate() {
        let mut v = vec![fuzz_config(f.version, f.in_stream, f.abort_info)];
        v.extend_from_slice(&f.bytes);
        std::fs::write(dir.join(format!("seed-{i:02}-{}", f.bytes[0] as char)), &v).unwrap();
    }
    // One seed that is a whole XLogData frame, one keepalive.
    let mut v = vec![fuzz_config(2, false, false)];
    v.extend(xlog_wrap(&fixtures()[0].bytes));
    std::fs::write(dir.join("seed-frame-w"), &v).unwrap();
    let mut k = vec![fuzz_config(1, false, false), b'k'];
    k.extend_from_slice(&[0; 16]);
    k.push(1);
    std::fs::write(dir.join("seed-frame-k"), &k).unwrap();
}
