//! Fuzz target: the replication-frame parser and the pgoutput decoder, for every protocol
//! version, both stream states and both Stream Abort layouts. Nothing may panic.
//!
//! Input layout: byte 0 is a config byte (bits 0-1 = proto_version - 1, bit 2 = in_stream,
//! bit 3 = Stream Abort carries abort_lsn/abort_time); the rest is one message. The rest is
//! also replayed as a sequence of length-prefixed (u8) messages through stateful decoders.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pgsub_proto::frame::{parse_frame, ReplicationFrame};
use pgsub_proto::pgoutput::{decode_one, decode_one_with_abort_info, Decoder};

fuzz_target!(|input: &[u8]| {
    let Some((&config, body)) = input.split_first() else {
        return;
    };
    let version = u32::from(config & 3) + 1;
    let in_stream = config & 4 != 0;
    let abort_info = config & 8 != 0;
    let body = Bytes::copy_from_slice(body);

    // 1. The body as one pgoutput message, with the configured and with every other setting.
    let _ = decode_one_with_abort_info(body.clone(), version, in_stream, abort_info);
    for v in 0..=5u32 {
        for s in [false, true] {
            let _ = decode_one(body.clone(), v, s);
        }
    }

    // 2. The body as a CopyData frame; XLogData payloads go through the decoders.
    let mut decoders: Vec<Decoder> = (1..=4u32)
        .flat_map(|v| [Decoder::new(v), Decoder::new(v).with_stream_abort_lsn(true)])
        .collect();
    match parse_frame(body.clone()) {
        Ok(ReplicationFrame::XLogData { data, .. }) => {
            for d in decoders.iter_mut() {
                if let Err(e) = d.decode(data.clone()) {
                    let _ = e.to_string();
                }
            }
        }
        Ok(ReplicationFrame::Keepalive { .. }) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }

    // 3. The body as a stream of u8-length-prefixed messages fed to stateful decoders, so that
    //    Stream Start/Stop sequences and the streamed-xid layout get exercised.
    let mut d = Decoder::new(version).with_stream_abort_lsn(abort_info);
    let mut pos = 0usize;
    while let Some(&len) = body.get(pos) {
        let start = pos + 1;
        let end = (start + usize::from(len)).min(body.len());
        let msg = body.slice(start.min(end)..end);
        match d.decode(msg.clone()) {
            Ok(m) => {
                let _ = m.kind();
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
        for other in decoders.iter_mut() {
            let _ = other.decode(msg.clone());
        }
        pos = end;
    }
});
