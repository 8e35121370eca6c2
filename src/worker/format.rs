//! Which format replicated values travel in, by one rule for the initial copy (COPY's binary
//! format, `sync.rs`) and for the stream (pgoutput's binary tuples): binary only where it cannot
//! change a value — the publisher has this server's major version (the same send/receive
//! functions), every replicated column has the same built-in type on both sides (an OID below
//! `FirstGenbkiObjectId`, with a binary input function; arrays of built-in types are built-in
//! types), and the local database is UTF8 (binary text arrives in the connection's UTF8). Enums,
//! domains, composites and extension types travel as text, and so do the OID alias types
//! (regclass, regtype, …), whose binary form is the publisher's OID rather than the name, and
//! money, whose binary form is in the smallest unit of each side's `lc_monetary`.
//!
//! The stream follows the subscription's `binary` option when it is set; when it is not (NULL,
//! the default) the apply worker decides here at each start, over the published columns of every
//! table of the subscription, and a sync worker's catch-up over its one table. A refresh or a
//! change of publications restarts the worker, so a table with a user-defined type added later
//! turns the stream to text from then on.
//!
//! The publisher's catalog is read at start, but the stream may carry older definitions (a
//! column added and dropped again while the worker was behind) or newer ones (ALTER TABLE while
//! it runs): in an automatically chosen binary stream each relation is checked again when it is
//! bound (`check_bound`: the RELATION message's column types against the local ones), and an
//! apply error in such a stream makes the next start use text until the failed transaction is
//! applied (`SubSlot::text_until`, set by the worker's error handler) — so a transaction that
//! binary cannot carry is applied in text, never retried in binary forever.
use crate::catalog::{self, SubRel, Subscription};
use crate::report;
use pgrx::prelude::*;
use pgsub_proto::client::{quote_literal, Client, Error as ProtoError};
use pgsub_proto::pgoutput::Relation;
use pgsub_proto::Lsn;
use std::collections::HashMap;

/// Built-in types without a usable binary input (no receive function, or one that refuses):
/// pg_node_tree, pg_ndistinct, pg_dependencies, pg_mcv_list.
const NO_BINARY_INPUT: [u32; 4] = [194, 3361, 3402, 5017];

/// Built-in types whose binary input refuses values their text input takes, so that a binary
/// copy or stream would stop on rows a text one (native's default) carries: int2vector and
/// oidvector (an empty one: "invalid int2vector data") and tsquery (an empty one, what
/// `to_tsquery` makes of stop words only: "malformed tsquery"), and their arrays.
const BINARY_REFUSES: [u32; 6] = [22, 1006, 30, 1013, 3615, 3645];

/// money and its array: the binary form is an integer count of the smallest unit of the
/// sender's `lc_monetary`, read back in the receiver's — where the two differ in decimal places
/// (`en_US`: cents, `ja_JP`: whole yen) `$1,234.56` would arrive as `￥123,456`, silently 100×
/// off, where text (native's default) is refused with an error ("invalid input syntax for type
/// money") until the settings agree.
const LOCALE_SCALED: [u32; 2] = [790, 791];

/// The OID alias types (regclass, regtype, regproc, … and their arrays): their binary form is
/// the object's OID, which names another object or none on the subscriber; as text they travel
/// by name (schema-qualified: publisher sessions run with an empty search_path).
const OID_ALIASES: [u32; 22] = [
    24, 1008, 2202, 2207, 2203, 2208, 2204, 2209, 2205, 2210, 2206, 2211, 3734, 3735, 3769, 3770, 4089, 4090, 4096,
    4097, 4191, 4192,
];

/// Why the stream travels as it does (the worker logs it).
pub(super) struct StreamFormat {
    pub binary: bool,
    pub why: String,
}

/// Whether this database's encoding is UTF8, the encoding values arrive in.
pub(super) fn database_is_utf8() -> bool {
    // SAFETY: reads the database encoding, set for the backend's life.
    (unsafe { pg_sys::GetDatabaseEncoding() }) == pg_sys::pg_enc::PG_UTF8 as i32
}

/// Why values from this publisher may not travel in binary at all (None: they may): another
/// major version, or a local database that is not UTF8.
fn other_server_kind(publisher_version: u32) -> Option<String> {
    let utf8 = database_is_utf8();
    if publisher_version / 10000 != pg_sys::PG_VERSION_NUM / 10000 {
        Some(format!(
            "the publisher is PostgreSQL {}, this server PostgreSQL {}",
            pgsub_proto::client::version_string(publisher_version),
            pgsub_proto::client::version_string(pg_sys::PG_VERSION_NUM)
        ))
    } else if !utf8 {
        Some("this database's encoding is not UTF8".into())
    } else {
        None
    }
}

/// The first of `columns` (name, the publisher's type OID) that may not travel in binary into
/// the local table `relid`, with the reason; None when all may. In a transaction.
fn refused_column(relid: pg_sys::Oid, columns: &[(String, u32)]) -> Option<String> {
    let local = local_types(relid);
    columns.iter().find_map(|(name, remote_type)| {
        let remote_type = *remote_type;
        let why = match local.get(name) {
            None => "has no binary input here (or is missing)".to_string(),
            Some(&t) if t != remote_type => {
                format!("has type {} on the publisher and {} here", remote_type_name(remote_type), type_name(t))
            }
            Some(_) if remote_type == 0 || remote_type >= pg_sys::FirstGenbkiObjectId => {
                format!("has type {}, not a built-in type", remote_type_name(remote_type))
            }
            Some(_) if NO_BINARY_INPUT.contains(&remote_type) => {
                format!("has type {}, without binary input", type_name(remote_type))
            }
            Some(_) if BINARY_REFUSES.contains(&remote_type) => {
                format!(
                    "has type {}, whose binary input refuses values its text input takes (an empty one)",
                    type_name(remote_type)
                )
            }
            Some(_) if LOCALE_SCALED.contains(&remote_type) => {
                format!(
                    "has type {}, whose binary form counts the smallest unit of each side's lc_monetary",
                    type_name(remote_type)
                )
            }
            Some(_) if OID_ALIASES.contains(&remote_type) => {
                format!(
                    "has type {}, an OID alias whose binary form is an OID of the publisher",
                    type_name(remote_type)
                )
            }
            Some(_) => return None,
        };
        Some(format!("column \"{name}\" {why}"))
    })
}

/// A local type's name (its OID when it has none).
fn type_name(oid: u32) -> String {
    Spi::get_one_with_args::<String>("SELECT pg_catalog.format_type($1, NULL)", &[pg_sys::Oid::from(oid).into()])
        .ok()
        .flatten()
        .unwrap_or_else(|| oid.to_string())
}

/// A publisher's type by name when it is built in (the same major version: the same OIDs), else
/// by its OID there.
fn remote_type_name(oid: u32) -> String {
    if oid != 0 && oid < pg_sys::FirstGenbkiObjectId {
        type_name(oid)
    } else {
        format!("of OID {oid} there")
    }
}

/// Type OID of each column of the local table that has a binary input function.
fn local_types(relid: pg_sys::Oid) -> HashMap<String, u32> {
    let r = Spi::connect(|c| {
        let rows = c.select(
            "SELECT a.attname::text, a.atttypid::int8 FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND t.typreceive <> 0",
            None,
            &[relid.into()],
        )?;
        let mut out = HashMap::new();
        for row in rows {
            if let (Some(n), Some(t)) = (row.get::<String>(1)?, row.get::<i64>(2)?) {
                out.insert(n, u32::try_from(t).unwrap_or(0));
            }
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    });
    r.unwrap_or_default()
}

/// In an automatically binary stream, the RELATION message `remote` bound to the local table
/// `relid`: an ERROR when binary cannot carry one of its columns (module comment). In a
/// transaction.
pub(super) fn check_bound(remote: &Relation, relid: pg_sys::Oid) {
    let columns: Vec<(String, u32)> = remote.columns.iter().map(|c| (c.name.clone(), c.type_oid)).collect();
    if let Some(why) = refused_column(relid, &columns) {
        report::error(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("binary transfer cannot carry relation \"{}.{}\": {why}", remote.namespace, remote.name),
            Some("The stream's binary format was chosen automatically when the worker started (binary unset).".into()),
            Some("The worker restarts and applies this transaction in text format."),
        );
    }
}

/// Whether one table's initial copy may use COPY's binary format (the module's rule). In a
/// transaction.
pub(super) fn binary_copy_ok(publisher_version: u32, relid: pg_sys::Oid, columns: &[(String, u32)]) -> bool {
    other_server_kind(publisher_version).is_none() && !columns.is_empty() && refused_column(relid, columns).is_none()
}

/// The stream's format: the `binary` option when set, else text while `start` is not past
/// `text_until` (an automatically binary stream failed at the transaction ending there), else the
/// module's rule over the published columns of `rels` (read from the publisher over `client`, a
/// walsender connection of a publisher of the same major version, hence 15 or later). Outside a
/// transaction.
pub(super) fn stream_format(
    client: &mut Client,
    sub: &Subscription,
    rels: &[SubRel],
    start: Lsn,
    text_until: Lsn,
) -> Result<StreamFormat, ProtoError> {
    if let Some(b) = sub.binary {
        if b && !database_is_utf8() {
            // Binary text values would arrive in the connection's UTF8 and be stored as they
            // are; text values are converted to this database's encoding (`relation.rs`).
            let why = "the subscription's binary option is true, but this database's encoding is not UTF8: text".into();
            return Ok(StreamFormat { binary: false, why });
        }
        if b && client.server_version_num() < 140000 {
            // The option is not sent to a publisher before 14 (create_subscription's NOTICE).
            let why =
                "the subscription's binary option is true, but a publisher before PostgreSQL 14 sends text".into();
            return Ok(StreamFormat { binary: false, why });
        }
        let why = format!("the subscription's binary option is {b}");
        return Ok(StreamFormat { binary: b, why });
    }
    // `<=`: the origin's position is the end of the last applied commit, where the failed
    // transaction's commit record may start (its finish LSN) when it was committed right after
    // that one; once it is applied the origin is past it.
    if start <= text_until && text_until.is_valid() {
        let why = format!(
            "automatic: the transaction ending at {text_until} failed, so it is applied in text in case the binary format was the cause, binary again after it"
        );
        return Ok(StreamFormat { binary: false, why });
    }
    if let Some(why) = other_server_kind(client.server_version_num()) {
        return Ok(StreamFormat { binary: false, why: format!("automatic: {why}") });
    }
    let published = match published_columns(client, sub) {
        Ok(p) => p,
        Err(ProtoError::Interrupted) => return Err(ProtoError::Interrupted),
        // Text always works: a publisher that cannot answer the catalog query (a broken
        // connection fails again at START_REPLICATION and is reported there) gets text.
        Err(e) => {
            return Ok(StreamFormat {
                binary: false,
                why: format!("automatic: the publisher's column types could not be read ({e})"),
            })
        }
    };
    let refused = super::xact(|| {
        rels.iter().find_map(|rel| {
            let key = (rel.remote_schema.clone(), rel.remote_name.clone());
            let columns = published.get(&key)?;
            let Some(relid) = catalog::local_relid(&rel.remote_schema, &rel.remote_name) else {
                return Some(format!("{}.{} does not exist here", rel.remote_schema, rel.remote_name));
            };
            refused_column(relid, columns).map(|c| format!("{}.{}: {c}", rel.remote_schema, rel.remote_name))
        })
    });
    Ok(match refused {
        Some(why) => StreamFormat { binary: false, why: format!("automatic: {why}") },
        None => {
            StreamFormat { binary: true, why: "automatic: same major version and built-in types on both sides".into() }
        }
    })
}

/// (schema, table) → (column, the publisher's type OID) of each published column.
type PublishedColumns = HashMap<(String, String), Vec<(String, u32)>>;

/// Every column the subscription's publications publish, with its type, in one query.
fn published_columns(client: &mut Client, sub: &Subscription) -> Result<PublishedColumns, ProtoError> {
    let pubs: Vec<String> = sub.publications.iter().map(|p| quote_literal(p)).collect();
    // Before 18 generated columns are never published (pg_publication_tables may list them).
    let gen = if client.server_version_num() >= 180000 { "" } else { " AND a.attgenerated = ''" };
    let sql = format!(
        "SELECT DISTINCT t.schemaname::text, t.tablename::text, a.attname::text, a.atttypid::int8 \
         FROM pg_catalog.pg_publication_tables t \
         JOIN pg_catalog.pg_namespace n ON n.nspname = t.schemaname \
         JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         WHERE t.pubname = ANY(ARRAY[{}]::text[]) AND a.attname = ANY(t.attnames){gen}",
        pubs.join(",")
    );
    let mut out = PublishedColumns::new();
    for row in client.simple_query(&sql)? {
        let mut it = row.values.into_iter().map(Option::unwrap_or_default);
        let (schema, table, column, typ) = (
            it.next().unwrap_or_default(),
            it.next().unwrap_or_default(),
            it.next().unwrap_or_default(),
            it.next().unwrap_or_default(),
        );
        out.entry((schema, table)).or_default().push((column, typ.parse().unwrap_or(0)));
    }
    Ok(out)
}
