//! Subscription counters across clean restarts, as PostgreSQL keeps its own statistics: the
//! supervisor writes every subscription's counters to `pg_stat/pgsub.stat` in the data directory
//! when it exits cleanly (after the workers it waits for, so their last counts are in), and the
//! next supervisor reads them back into shared memory once, then removes the file. After a crash
//! there is no file (it was removed when read), so the counters start from zero — as native
//! statistics do after crash recovery.
//!
//! The file is text: a header line, then one line per subscription with its id, database, name
//! (hex) and counters, each followed by one line per table with counters (`monitor.rs`):
//! `t`, subscription id, table oid, counters, and by one line with its last error if it has one
//! (`e`, subscription id, the error's time, the message in hex): `last_error` is shown until a
//! later error replaces it, as `error_count` is kept. A line that does not parse is skipped with
//! a WARNING.
use crate::shmem::{self, SubSlot};
use pgrx::prelude::*;
use std::io::Write;

const PATH: &str = "pg_stat/pgsub.stat";
const HEADER: &str = "pgsub-stats 5";
/// The headers of the previous formats, read too: 4 had no `e` lines; 3 also had no
/// `parallel_txns`, the last counter.
const HEADER_4: &str = "pgsub-stats 4";
const HEADER_3: &str = "pgsub-stats 3";
/// Counters per line.
const N: usize = 21;

/// The counters saved, in file order.
fn fields(s: &mut SubSlot) -> [&mut i64; N] {
    let [c0, c1, c2, c3, c4, c5, c6] = &mut s.confl;
    [
        &mut s.txns_applied,
        &mut s.inserts,
        &mut s.updates,
        &mut s.deletes,
        &mut s.truncates,
        &mut s.messages,
        &mut s.conflicts,
        &mut s.txns_skipped,
        &mut s.error_count,
        &mut s.apply_error_count,
        &mut s.sync_error_count,
        &mut s.stats_reset,
        c0,
        c1,
        c2,
        c3,
        c4,
        c5,
        c6,
        &mut s.recv_bytes,
        &mut s.parallel_txns,
    ]
}

fn counters(s: &SubSlot) -> [i64; N] {
    let mut copy = *s;
    fields(&mut copy).map(|f| *f)
}

fn set_counters(s: &mut SubSlot, c: &[i64; N]) {
    for (f, v) in fields(s).into_iter().zip(c) {
        *f = *v;
    }
}

/// Writes every subscription's counters (a clean exit of the supervisor).
pub fn save() {
    let mut text = format!("{HEADER}\n");
    {
        let g = shmem::SHARED.share();
        for s in g.slots.iter().filter(|s| s.subid != 0 && s.dboid != 0) {
            let name = hex(s.name().as_bytes());
            let nums: Vec<String> = counters(s).iter().map(i64::to_string).collect();
            text.push_str(&format!(
                "{} {} {} {}\n",
                s.subid,
                s.dboid,
                if name.is_empty() { "-" } else { &name },
                nums.join(" ")
            ));
            for e in crate::monitor::entries_of(&g, s.subid) {
                text.push_str(&table_line(&e));
            }
            if s.last_error_len > 0 {
                let n = usize::from(s.last_error_len).min(s.last_error.len());
                text.push_str(&format!("e {} {} {}\n", s.subid, s.last_error_at, hex(&s.last_error[..n])));
            }
        }
    }
    let tmp = format!("{PATH}.tmp");
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|_| std::fs::rename(&tmp, PATH));
    if let Err(e) = written {
        warning!("pgsub: could not write subscription statistics to \"{PATH}\": {e}");
    }
}

/// Reads the counters saved at the last clean exit into shared memory (once per server start)
/// for the subscriptions of databases that still exist, then removes the file.
pub fn restore(databases: &[u32]) {
    let loaded = {
        let mut g = shmem::SHARED.exclusive();
        std::mem::replace(&mut g.stats_restored, true)
    };
    if !loaded {
        if let Ok(text) = std::fs::read_to_string(PATH) {
            restore_text(&text, databases);
        }
    }
    // Whatever is there is either read now or stale (written by a supervisor that exited while
    // the server ran on): after a crash it must not come back.
    match std::fs::remove_file(PATH) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warning!("pgsub: could not remove \"{PATH}\": {e}"),
    }
}

fn restore_text(text: &str, databases: &[u32]) {
    let mut lines = text.lines();
    let count = match lines.next() {
        Some(HEADER | HEADER_4) => N,
        Some(HEADER_3) => N - 1,
        _ => {
            warning!("pgsub: \"{PATH}\" is not a pgsub statistics file; subscription counters start from zero");
            return;
        }
    };
    let mut g = shmem::SHARED.exclusive();
    // The subscription whose line was restored last: an `e` line follows its own subscription's.
    let mut restored: Option<i32> = None;
    for line in lines {
        if let Some(rest) = line.strip_prefix("t ") {
            restore_table(&mut g, rest, restored);
            continue;
        }
        if let Some(rest) = line.strip_prefix("e ") {
            restore_error(&mut g, rest, restored);
            continue;
        }
        restored = None;
        let Some((subid, dboid, name, nums)) = parse(line, count) else {
            warning!("pgsub: skipping a damaged line of \"{PATH}\"");
            continue;
        };
        if !databases.contains(&dboid) {
            continue;
        }
        if let Some(s) = g.claim(subid, dboid) {
            s.set_name(&name);
            set_counters(s, &nums);
            restored = Some(subid);
        }
    }
}

/// A subscription's line with `count` counters (the rest stay zero).
fn parse(line: &str, count: usize) -> Option<(i32, u32, String, [i64; N])> {
    let mut parts = line.split(' ');
    let subid = parts.next()?.parse::<i32>().ok().filter(|&id| id > 0)?;
    let dboid = parts.next()?.parse::<u32>().ok().filter(|&o| o > 0)?;
    let hex = parts.next()?;
    let name = if hex == "-" { String::new() } else { String::from_utf8(unhex(hex)?).ok()? };
    let mut nums = [0i64; N];
    for n in nums.iter_mut().take(count) {
        *n = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some((subid, dboid, name, nums))
}

/// A table's line: `t`, subscription, table, then the counters.
fn table_line(e: &crate::monitor::TableEntry) -> String {
    let c = &e.counts;
    let mut nums = vec![e.subid as i64, i64::from(e.relid), c.inserts, c.updates, c.deletes, c.truncates];
    nums.extend(c.conflicts);
    nums.extend([e.rows_copied, e.last_change_at]);
    let nums: Vec<String> = nums.iter().map(i64::to_string).collect();
    format!("t {}\n", nums.join(" "))
}

fn parse_table(rest: &str) -> Option<crate::monitor::TableEntry> {
    use crate::monitor::{TableCounts, TableEntry, N_CONFLICTS};
    let nums: Vec<i64> = rest.split(' ').map(|n| n.parse().ok()).collect::<Option<_>>()?;
    if nums.len() != 8 + N_CONFLICTS {
        return None;
    }
    let subid = i32::try_from(nums[0]).ok().filter(|&id| id > 0)?;
    let relid = u32::try_from(nums[1]).ok().filter(|&o| o > 0)?;
    let mut conflicts = [0i64; N_CONFLICTS];
    conflicts.copy_from_slice(&nums[6..6 + N_CONFLICTS]);
    let counts = TableCounts { inserts: nums[2], updates: nums[3], deletes: nums[4], truncates: nums[5], conflicts };
    Some(TableEntry { subid, relid, counts, rows_copied: nums[6 + N_CONFLICTS], last_change_at: nums[7 + N_CONFLICTS] })
}

/// Puts a table's counters back, if its subscription's line — the one before (`restored`) —
/// was restored (not one of the same id in another database, or one skipped).
fn restore_table(g: &mut shmem::Shared, rest: &str, restored: Option<i32>) {
    let Some(e) = parse_table(rest) else {
        warning!("pgsub: skipping a damaged line of \"{PATH}\"");
        return;
    };
    if restored == Some(e.subid) && g.find(e.subid).is_some() && !crate::monitor::restore_entry(g, &e) {
        warning!("pgsub: all per-table statistics entries are taken; table {} is not restored", e.relid);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

/// Puts a subscription's last error back (not counted again: `error_count` was restored), if
/// its subscription's line — the line before (`restored`) — was restored and no error was
/// recorded since.
fn restore_error(g: &mut shmem::Shared, rest: &str, restored: Option<i32>) {
    let parsed = (|| {
        let mut parts = rest.split(' ');
        let subid = parts.next()?.parse::<i32>().ok().filter(|&id| id > 0)?;
        let at = parts.next()?.parse::<i64>().ok()?;
        let msg = String::from_utf8(unhex(parts.next()?)?).ok()?;
        parts.next().is_none().then_some((subid, at, msg))
    })();
    let Some((subid, at, msg)) = parsed else {
        warning!("pgsub: skipping a damaged line of \"{PATH}\"");
        return;
    };
    if restored != Some(subid) {
        return;
    }
    if let Some(s) = g.find_mut(subid).filter(|s| s.last_error_len == 0) {
        s.restore_error(&msg, at);
    }
}
