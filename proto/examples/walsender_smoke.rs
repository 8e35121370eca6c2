//! Throwaway end-to-end smoke test of `pgsub_proto::client` against a live server:
//! connect (replication=database), IDENTIFY_SYSTEM, COPY a table out, create a temporary
//! pgoutput slot, START_REPLICATION and print every frame for a while (answering keepalives),
//! then end the stream and prove the connection is usable again.
//!
//! usage: walsender_smoke '<conninfo>' [seconds=10] [publication=pub] [copy-table=t]

use std::time::{Duration, Instant};

use pgsub_proto::client::{Client, Interest, PgOutputOptions, PollWait, SnapshotAction, Wait};
use pgsub_proto::frame::ReplicationFrame;
use pgsub_proto::{conninfo, Lsn};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let connstr = args.get(1).map(String::as_str).unwrap_or("");
    let secs: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let publication = args.get(3).cloned().unwrap_or_else(|| "pub".into());
    let table = args.get(4).cloned().unwrap_or_else(|| "t".into());

    let cfg = conninfo::parse(connstr)?;
    println!("config: {}", cfg.display_masked());
    let t0 = Instant::now();
    // SMOKE_NOREPL=1: a plain (non-replication) connection that runs one query and exits.
    let norepl = std::env::var_os("SMOKE_NOREPL").is_some();
    let mut c = Client::connect(&cfg, !norepl, Box::new(PollWait))?;
    println!(
        "connected in {:?}: server_version={:?} ({}), tls={}, pid={}",
        t0.elapsed(),
        c.parameter("server_version"),
        c.server_version_num(),
        c.uses_tls(),
        c.backend_pid()
    );
    for n in c.notices() {
        println!("notice: {n}");
    }

    if norepl {
        let rows = c.simple_query("SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")?;
        println!("plain connection: tls={} {:?}", c.uses_tls(), rows[0].values);
        c.close();
        return Ok(());
    }
    let sys = c.identify_system()?;
    println!("IDENTIFY_SYSTEM: {sys:?}");

    let rows = c.simple_query("SELECT current_user, version(); SELECT 1 AS one, NULL AS n")?;
    for r in &rows {
        println!("row: {:?} = {:?}", r.columns, r.values);
    }

    let mut bytes = 0usize;
    let mut chunks = 0usize;
    let n = c.copy_out(&format!("COPY {table} TO STDOUT"), &mut |d: &[u8]| {
        bytes += d.len();
        chunks += 1;
        Ok(())
    })?;
    println!("COPY: {n} rows, {chunks} chunks, {bytes} bytes");

    let slot_name = format!("smoke_{}", std::process::id());
    let slot = c.create_logical_slot(&slot_name, true, SnapshotAction::NoExport, Default::default())?;
    println!("slot: {slot:?}");

    let opts = PgOutputOptions::for_server(c.server_version_num(), vec![publication]);
    println!("options: {}", opts.to_sql_options());
    c.start_replication(&slot_name, slot.consistent_point, &opts)?;
    println!("streaming for {secs}s ...");

    let end = Instant::now() + Duration::from_secs(secs);
    let mut last_lsn = slot.consistent_point;
    let mut frames = 0u64;
    while Instant::now() < end {
        match c.recv_frame()? {
            Some(ReplicationFrame::XLogData { wal_start, wal_end, data, .. }) => {
                frames += 1;
                let tag = data.first().map(|b| *b as char).unwrap_or('?');
                println!("XLogData {wal_start}..{wal_end} msg '{tag}' {} bytes", data.len());
                if wal_start > last_lsn {
                    last_lsn = wal_start;
                }
            }
            Some(ReplicationFrame::Keepalive { wal_end, reply_requested, .. }) => {
                frames += 1;
                println!("Keepalive wal_end={wal_end} reply_requested={reply_requested}");
                if reply_requested {
                    c.send_status(last_lsn, last_lsn, last_lsn, false)?;
                }
            }
            None => {
                let deadline = Some((Instant::now() + Duration::from_secs(1)).min(end));
                match PollWait.wait(c.raw_fd(), Interest::Read, deadline) {
                    Ok(()) | Err(pgsub_proto::client::Error::Timeout(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    c.send_status(last_lsn, last_lsn, last_lsn, false)?;
    c.end_copy()?;
    println!("stream ended after {frames} frames; confirmed up to {last_lsn}");
    let rows = c.simple_query("SELECT 'still usable' AS s")?;
    println!("after stream: {:?}", rows[0].values);
    c.drop_slot(&slot_name, false).ok(); // temporary anyway
    let _ = Lsn(0);
    c.close();
    Ok(())
}
