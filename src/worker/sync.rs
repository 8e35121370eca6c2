//! The initial data copy of one table, run by its table synchronization worker
//! (`syncworker.rs`) inside the REPEATABLE READ transaction of the replication connection that
//! created the table's sync slot with `SNAPSHOT 'use'`: the rows are exactly those as of the
//! slot's consistent point C. They are read with `COPY … TO STDOUT` and loaded locally with
//! PostgreSQL's COPY FROM machinery (BeginCopyFrom/CopyFrom fed from the received rows, live
//! progress in the table's shared-memory sync slot), and the table moves to FINISHEDCOPY at C
//! with its row count in the same local transaction, whose commit also records C as the sync
//! origin's progress: a crash mid-copy leaves nothing (the table stays DATASYNC and the copy is
//! redone); a committed copy is never repeated.
//!
//! The publication's column lists and row filters (PG15) are honoured: the copy selects exactly
//! the published columns and rows.
//!
//! The copy travels in COPY's binary format when that is sure to mean the same on both sides
//! (the rule is `format.rs`'s, the stream's too); otherwise, and for user-defined types, it is
//! text, as native tablesync's.
use crate::catalog::{self, SubRel, Subscription};
use crate::publisher;
use crate::report;
use crate::shmem;
use pgrx::prelude::*;
use pgsub_proto::client::{quote_ident, quote_literal, Client, CopyOut, Error as ProtoError};
use pgsub_proto::Lsn;

type Code = PgSqlErrorCode;

/// What the publication publishes of one table.
struct Published {
    columns: Vec<String>,
    /// The publisher's type OID of each column (0 when unknown).
    types: Vec<u32>,
    row_filter: Option<String>,
    /// A partitioned table (published through its root): `COPY table TO` refuses it, its rows
    /// are read with `COPY (SELECT …)`, partitions included.
    partitioned: bool,
    /// The publisher's table has a generated column (published by a PostgreSQL 18 publication):
    /// its rows are read with `COPY (SELECT …)` too.
    generated: bool,
}

fn published(client: &mut Client, sub: &Subscription, rel: &SubRel) -> Result<Published, ProtoError> {
    let pubs: Vec<String> = sub.publications.iter().map(|p| quote_literal(p)).collect();
    let v15 = client.server_version_num() >= 150000;
    // Every column (generated ones, 12+, are not published before 18), no filter.
    let all_columns = format!(
        "SELECT pg_catalog.string_agg(a.attname::text, chr(1) ORDER BY a.attnum), NULL \
         FROM pg_catalog.pg_attribute a WHERE a.attrelid = {}::regclass AND a.attnum > 0 \
         AND NOT a.attisdropped{}",
        quote_literal(&format!("{}.{}", quote_ident(&rel.remote_schema), quote_ident(&rel.remote_name))),
        if client.server_version_num() >= 120000 { " AND a.attgenerated = ''" } else { "" }
    );
    let sql = if v15 {
        format!(
            "SELECT pg_catalog.array_to_string(attnames, chr(1)), rowfilter FROM pg_catalog.pg_publication_tables \
             WHERE pubname = ANY(ARRAY[{}]::text[]) AND schemaname = {} AND tablename = {}",
            pubs.join(","),
            quote_literal(&rel.remote_schema),
            quote_literal(&rel.remote_name)
        )
    } else {
        all_columns.clone()
    };
    let mut rows = client.simple_query(&sql)?;
    if rows.is_empty() {
        // No publication of the subscription publishes the table any more (it was dropped from
        // one, or a publication was dropped, after the refresh that added it): as native
        // tablesync, which then finds no column list and no filter, the whole table is copied
        // (a later refresh removes it). Zero columns here copied a row of local defaults for
        // each remote row.
        rows = client.simple_query(&all_columns)?;
    }
    let mut columns: Vec<String> = Vec::new();
    let mut filters: Vec<String> = Vec::new();
    let mut unfiltered = rows.is_empty();
    let mut lists: Vec<String> = Vec::new();
    for r in rows {
        let mut it = r.values.into_iter();
        let cols = it.next().flatten().unwrap_or_default();
        if !lists.contains(&cols) {
            lists.push(cols.clone());
        }
        for c in cols.split('\u{1}').filter(|c| !c.is_empty()) {
            if !columns.iter().any(|x| x == c) {
                columns.push(c.to_string());
            }
        }
        match it.next().flatten() {
            Some(f) => filters.push(format!("({f})")),
            None => unfiltered = true,
        }
    }
    let partitioned = is_partitioned(client, rel)?;
    let (remote_types, any_generated) = remote_types(client, rel)?;
    columns.retain(|c| remote_types.iter().any(|(n, _)| n == c));
    if v15 && lists.len() > 1 {
        // The publications changed under a running subscription (create/alter/refresh refuse it).
        return Err(column_list_clash(rel));
    }
    let types = columns.iter().map(|c| remote_types.iter().find(|(n, _)| n == c).map_or(0, |(_, t)| *t)).collect();
    Ok(Published {
        columns,
        types,
        row_filter: if unfiltered || filters.is_empty() { None } else { Some(filters.join(" OR ")) },
        partitioned,
        // COPY's column list does not take generated columns: read them with a SELECT.
        generated: any_generated,
    })
}

/// The table is partitioned on the publisher (published through its root).
fn is_partitioned(client: &mut Client, rel: &SubRel) -> Result<bool, ProtoError> {
    let kind_sql = format!(
        "SELECT c.relkind FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = {} AND c.relname = {}",
        quote_literal(&rel.remote_schema),
        quote_literal(&rel.remote_name)
    );
    let partitioned = client
        .simple_query(&kind_sql)?
        .into_iter()
        .next()
        .and_then(|r| r.values.into_iter().next().flatten())
        .is_some_and(|k| k == "p");
    Ok(partitioned)
}

/// (name, type OID) of the columns of the publisher's table that it can send, and whether one of
/// them is a generated column.
fn remote_types(client: &mut Client, rel: &SubRel) -> Result<(Vec<(String, u32)>, bool), ProtoError> {
    // Generated columns: publishers before 18 never send them (the subscriber computes its own
    // or leaves its plain column to its default, as natively); from 18 a publication sends them
    // with publish_generated_columns = stored (or by naming them in its column list), and the
    // publication's column list (attnames) says which.
    let server = client.server_version_num();
    let gen_filter = match server {
        v if v >= 180000 => "",
        v if v >= 120000 => " AND a.attgenerated = ''",
        _ => "",
    };
    let gen_col = if server >= 120000 { "a.attgenerated <> ''" } else { "false" };
    let types_sql = format!(
        "SELECT a.attname::text, a.atttypid::int8, {gen_col} FROM pg_catalog.pg_attribute a \
         WHERE a.attrelid = {}::regclass AND a.attnum > 0 AND NOT a.attisdropped{gen_filter}",
        quote_literal(&format!("{}.{}", quote_ident(&rel.remote_schema), quote_ident(&rel.remote_name)))
    );
    let mut generated: Vec<String> = Vec::new();
    let remote_types: Vec<(String, u32)> = client
        .simple_query(&types_sql)?
        .into_iter()
        .filter_map(|r| {
            let mut it = r.values.into_iter();
            let name = it.next().flatten()?;
            let oid = it.next().flatten().and_then(|t| t.parse::<u32>().ok())?;
            if it.next().flatten().as_deref() == Some("t") {
                generated.push(name.clone());
            }
            Some((name, oid))
        })
        .collect();
    let any_generated = !generated.is_empty();
    Ok((remote_types, any_generated))
}

/// The error of one table with different column lists in the subscription's publications.
fn column_list_clash(rel: &SubRel) -> ProtoError {
    ProtoError::Server(pgsub_proto::client::ServerError {
        severity: "ERROR".into(),
        code: "0A000".into(),
        message: format!(
            "cannot use different column lists for table \"{}.{}\" in different publications",
            rel.remote_schema, rel.remote_name
        ),
        detail: None,
        hint: Some("Give the table the same column list (or none) in every publication of the subscription.".into()),
    })
}

/// Copies one table under the snapshot of `client`'s open REPEATABLE READ transaction (the sync
/// slot's, consistent at `at`) in one local transaction that also moves the table to
/// FINISHEDCOPY at `at` and, through the session's replication origin (the sync origin), records
/// `at` as where the catch-up starts. Returns the rows copied and whether binary was used.
pub fn copy_table(client: &mut Client, sub: &Subscription, rel: &SubRel, at: Lsn) -> Result<(u64, bool), ProtoError> {
    let p = published(client, sub, rel)?;
    let (rows, binary) =
        crate::publisher::waiting_as(crate::process::Wait::SyncData, || copy_one(client, sub, rel, &p, at))?;
    log!(
        "pgsub: initial copy of {}.{} for subscription \"{}\" finished: {rows} rows in {} format (consistent at {at})",
        quote_ident(&rel.remote_schema),
        quote_ident(&rel.remote_name),
        sub.name,
        if binary { "binary" } else { "text" }
    );
    Ok((rows, binary))
}

/// Copies one table in one local transaction; returns the number of rows and whether the binary
/// format was used.
fn copy_one(
    client: &mut Client,
    sub: &Subscription,
    rel: &SubRel,
    p: &Published,
    at: Lsn,
) -> Result<(u64, bool), ProtoError> {
    let remote = format!("{}.{}", quote_ident(&rel.remote_schema), quote_ident(&rel.remote_name));
    let shown = super::relation::native_name(&rel.remote_schema, &rel.remote_name);
    let cols: Vec<String> = p.columns.iter().map(|c| quote_ident(c)).collect();
    // A plain table's own rows (COPY leaves out inheritance children, and ONLY does the same for
    // a filtered copy); a partitioned root's rows are those of its partitions.
    let only = if p.partitioned { "" } else { "ONLY " };
    let source = match (&p.row_filter, p.partitioned) {
        (None, false) if !cols.is_empty() && !p.generated => format!("{remote} ({})", cols.join(", ")),
        (None, _) => format!("(SELECT {} FROM {only}{remote})", cols.join(", ")),
        (Some(f), _) => format!("(SELECT {} FROM {only}{remote} WHERE {f})", cols.join(", ")),
    };
    let subid = sub.subid;
    let publisher_version = client.server_version_num();
    let mut result: Result<(u64, bool), ProtoError> = Ok((0, false));
    super::xact(|| {
        let relid = catalog::local_relid(&rel.remote_schema, &rel.remote_name).unwrap_or_else(|| {
            report::error(
                Code::ERRCODE_UNDEFINED_TABLE,
                format!("logical replication target relation {shown} does not exist"),
                None,
                Some("Create the table on the subscriber; the worker retries."),
            )
        });
        if rel.relid != 0 && relid.to_u32() != rel.relid {
            // The table the subscription recorded has another name here now, and another table
            // took this one (swapped, or moved into its place): copying into it would put this
            // table's rows into that one.
            report::error(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "logical replication target relation {shown} is not the subscription's table: the local table of that name is another one (oid {relid}, the subscription's is {})",
                    rel.relid
                ),
                Some("The subscription's table was renamed here, and another table has its name now.".to_string()),
                Some("Rename the tables back, or refresh the subscription (pgsub.refresh_subscription) after the publisher's names match; the worker retries."),
            );
        }
        refuse_non_empty(relid, &remote, sub, &p.columns);
        super::relation::require_columns(relid, &shown, &p.columns);
        let columns: Vec<(String, u32)> = p.columns.iter().cloned().zip(p.types.iter().copied()).collect();
        let binary = super::format::binary_copy_ok(publisher_version, relid, &columns);
        let copy_sql = if binary {
            format!("COPY {source} TO STDOUT WITH (FORMAT binary)")
        } else {
            format!("COPY {source} TO STDOUT")
        };
        let target = (subid, rel.relid);
        // As the table's owner unless run_as_owner (native tablesync switches around its copy).
        let copied = super::owner::as_table_owner(relid, || {
            client.copy_out_reader(&copy_sql).map(|reader| stream_into(reader, relid, p, binary, &remote, target))
        });
        match copied {
            Ok(loaded) => {
                let n = loaded;
                let r = catalog::set_table_copied(subid, &rel.remote_schema, &rel.remote_name, at, n as i64, relid);
                if let Err(e) = r {
                    report::error(Code::ERRCODE_INTERNAL_ERROR, format!("updating pgsub.sub_rel: {e}"), None, None);
                }
                // SAFETY: the session's replication origin (the sync origin) records the copy point
                // in this transaction's commit record: the catch-up starts there, even after a crash.
                unsafe {
                    pg_sys::replorigin_session_origin_lsn = at.0;
                    pg_sys::replorigin_session_origin_timestamp = 0;
                }
                shmem::with_sync_slot(subid, rel.relid, |s| s.rows_copied = n as i64);
                result = Ok((n, binary));
            }
            Err(e) => copy_failed(&e, &remote),
        }
    });
    // SAFETY: the origin position belonged to the copy's commit only.
    unsafe { pg_sys::replorigin_session_origin_lsn = 0 };
    result
}

/// A crash mid-copy leaves nothing (the copy is one transaction), so rows in the local table are
/// the user's. The copy adds to them, as natively, when the table has a unique key (a row that is
/// there already then stops the copy with a unique violation: `catalog::has_unique_key`) or when
/// another subscription replicates into the table too (several publishers consolidated into one
/// table), whose rows they may be; otherwise it is refused, as rows would be doubled silently
/// (README: where pgsub differs). Only the table's own rows count: an inheritance parent's
/// children are tables of their own.
fn refuse_non_empty(relid: pg_sys::Oid, remote: &str, sub: &catalog::Subscription, copied: &[String]) {
    if catalog::replicated_by_another(sub.subid, relid).is_some() || catalog::has_unique_key(relid, Some(copied)) {
        return;
    }
    let sub_name = &sub.name;
    let local_only = if catalog::is_partitioned(relid) { "" } else { "ONLY " };
    // As the table's owner (the copy's role by default): the subscription owner need not be
    // able to read the table, as natively; row-level security hides no row from this look (a
    // table whose policies bind its owner is written, and so looked at, by a subscription owner
    // that bypasses them under `run_as_owner`, and refused otherwise: `owner.rs`).
    let has_rows = super::owner::as_table_owner_for_lookup(relid, || {
        Spi::get_one::<bool>(&format!("SELECT EXISTS (SELECT 1 FROM {local_only}{remote})"))
    })
    .ok()
    .flatten()
    .unwrap_or(false);
    if has_rows {
        report::error(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "table {remote} is not empty; pgsub will not copy into a table that already has rows and no unique key"
            ),
            Some(format!(
                "Subscription \"{sub_name}\" copies the publisher's rows into this table (copy_data => true): without a primary key or a unique index on NOT NULL columns that the copy fills, rows that are there already would be doubled silently."
            )),
            Some("TRUNCATE the local table, or recreate the subscription with copy_data => false."),
        );
    }
}

/// Loads the publisher's COPY output into the local table: each time COPY FROM wants data, the
/// next CopyData message is read (the publisher keeps producing into the socket meanwhile), as
/// native tablesync does. Returns the rows loaded.
fn stream_into(
    mut reader: CopyOut<'_>,
    relid: pg_sys::Oid,
    p: &Published,
    binary: bool,
    remote: &str,
    (subid, sync_relid): (i32, u32),
) -> u64 {
    let mut chunk = bytes::Bytes::new();
    let mut pos = 0usize;
    // Live progress in the table's sync slot, at most every 250 ms: one CopyData per row.
    let (mut rows, mut bytes) = (0i64, 0i64);
    let mut shown_at = std::time::Instant::now();
    super::copyin::copy_from(relid, &p.columns, binary, &mut |out: &mut [u8]| {
        // Wait for data only when nothing is at hand; then fill COPY's buffer with every
        // message already received (one CopyData per row: one call per row would cost
        // COPY FROM its per-call overhead millions of times).
        let mut filled = 0usize;
        while filled < out.len() {
            if pos == chunk.len() {
                let next = if filled == 0 { reader.next_data() } else { reader.next_buffered() };
                match next {
                    Ok(Some(data)) => {
                        rows += 1;
                        bytes += data.len() as i64;
                        // The clock only every 1024 rows: a clock read per row costs the copy.
                        if rows % 1024 == 0 && shown_at.elapsed() >= std::time::Duration::from_millis(250) {
                            shown_at = std::time::Instant::now();
                            crate::process::heartbeat();
                            shmem::with_sync_slot(subid, sync_relid, |s| {
                                s.rows_copied = rows;
                                s.bytes_copied = bytes;
                            });
                        }
                        chunk = data;
                        pos = 0;
                        continue;
                    }
                    Ok(None) => break,
                    Err(e) => copy_failed(&e, remote),
                }
            }
            let n = (chunk.len() - pos).min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&chunk[pos..pos + n]);
            pos += n;
            filled += n;
        }
        if filled == 0 {
            shmem::with_sync_slot(subid, sync_relid, |s| s.bytes_copied = bytes);
        }
        filled
    })
}

/// Raises the error of a failed copy inside its transaction, so that it rolls back.
fn copy_failed(e: &ProtoError, remote: &str) -> ! {
    if matches!(e, ProtoError::Interrupted) {
        report::error(Code::ERRCODE_ADMIN_SHUTDOWN, "initial copy interrupted by shutdown request", None, None);
    }
    let (msg, detail, hint) = publisher::describe(e);
    report::error(publisher::sqlstate(e), format!("initial copy of {remote} failed: {msg}"), detail, hint.as_deref())
}
