//! Loading rows into a local table with PostgreSQL's COPY FROM machinery (BeginCopyFrom +
//! CopyFrom over an in-memory buffer): multi-row inserts with triggers, constraints, defaults for
//! columns not given, generated columns and partition routing handled by the server exactly as for
//! `COPY … FROM`. Used by the initial copy (`sync.rs`) and for runs of consecutive remote INSERTs
//! into one table (`apply.rs`).
//!
//! Buffers hold COPY text or binary format. Text from the publisher is UTF-8 (pgsub asks for
//! client_encoding UTF8), so the COPY runs with `encoding 'UTF8'` and the server converts if the
//! database encoding differs.
use pgrx::prelude::*;
use std::cell::Cell;
use std::ffi::CString;

/// What feeds COPY FROM: fills the buffer, returns how many bytes it wrote (0 = end of data).
type Source = dyn FnMut(&mut [u8]) -> usize + 'static;

thread_local! {
    /// The data source of the COPY FROM in progress (COPY's callback cannot take a closure): the
    /// caller's closure, set by `copy_from` for the duration of the COPY only.
    static SOURCE: Cell<Option<*mut Source>> = const { Cell::new(None) };
}

#[pg_guard]
unsafe extern "C-unwind" fn read_source(outbuf: *mut std::ffi::c_void, _minread: i32, maxread: i32) -> i32 {
    let Some(source) = SOURCE.with(|s| s.get()) else { return 0 };
    // SAFETY: COPY gives us a buffer of at least maxread bytes; `source` is alive while
    // `copy_from` runs (it clears the pointer before returning or unwinding).
    unsafe {
        let out = std::slice::from_raw_parts_mut(outbuf as *mut u8, maxread.max(0) as usize);
        (*source)(out) as i32
    }
}

/// Signature, flags and header extension length of the binary COPY format.
pub const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
pub const BINARY_TRAILER: &[u8] = &[0xff, 0xff];

/// Appends one value in COPY text format (escaped; `None` = NULL).
pub fn push_text_value(buf: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => buf.extend_from_slice(b"\\N"),
        Some(bytes) => {
            for &b in bytes {
                match b {
                    b'\\' => buf.extend_from_slice(b"\\\\"),
                    b'\n' => buf.extend_from_slice(b"\\n"),
                    b'\r' => buf.extend_from_slice(b"\\r"),
                    b'\t' => buf.extend_from_slice(b"\\t"),
                    _ => buf.push(b),
                }
            }
        }
    }
}

/// Appends one value in COPY binary format.
pub fn push_binary_value(buf: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(bytes) => {
            buf.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
            buf.extend_from_slice(bytes);
        }
    }
}

/// Runs COPY FROM on `relid` for `columns` over `data` (a whole COPY stream: for binary format
/// with header and trailer). Returns the number of rows loaded.
pub fn copy_into(relid: pg_sys::Oid, columns: &[String], data: Vec<u8>, binary: bool) -> u64 {
    let mut pos = 0usize;
    copy_from(relid, columns, binary, &mut |out: &mut [u8]| {
        let n = (data.len() - pos).min(out.len());
        out[..n].copy_from_slice(&data[pos..pos + n]);
        pos += n;
        n
    })
}

/// Runs COPY FROM on `relid` for `columns`, reading the COPY stream from `source`: called with
/// COPY's buffer, it fills a part of it and returns how much (0 = end of data). It may raise an
/// ERROR, which aborts the COPY. Returns the number of rows loaded.
pub fn copy_from(
    relid: pg_sys::Oid,
    columns: &[String],
    binary: bool,
    source: &mut dyn FnMut(&mut [u8]) -> usize,
) -> u64 {
    check_insert_allowed(relid, columns);
    if columns.is_empty() && !binary {
        return insert_defaults(relid, source);
    }
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            SOURCE.with(|s| s.set(None));
        }
    }
    let source: *mut (dyn FnMut(&mut [u8]) -> usize + '_) = source;
    // SAFETY: only the lifetime is erased; `Clear` removes the pointer when this function
    // returns or unwinds, before `source` can go away.
    let source: *mut (dyn FnMut(&mut [u8]) -> usize + 'static) = unsafe { std::mem::transmute(source) };
    SOURCE.with(|s| s.set(Some(source)));
    let _clear = Clear;
    // SAFETY: COPY FROM into a table opened in the current transaction; the option and column
    // lists are built in the current memory context.
    let rows = unsafe {
        let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as i32);
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        pg_sys::addRangeTableEntryForRelation(
            pstate,
            rel,
            pg_sys::RowExclusiveLock as i32,
            std::ptr::null_mut(),
            false,
            false,
        );
        let mut attlist: *mut pg_sys::List = std::ptr::null_mut();
        for c in columns {
            let cs = CString::new(c.as_str()).unwrap_or_default();
            attlist = pg_sys::lappend(attlist, pg_sys::makeString(pg_sys::pstrdup(cs.as_ptr())).cast());
        }
        let mut options: *mut pg_sys::List = std::ptr::null_mut();
        let opt = |name: &std::ffi::CStr, value: &std::ffi::CStr| {
            pg_sys::makeDefElem(
                pg_sys::pstrdup(name.as_ptr()),
                pg_sys::makeString(pg_sys::pstrdup(value.as_ptr())).cast(),
                -1,
            )
        };
        if binary {
            options = pg_sys::lappend(options, opt(c"format", c"binary").cast());
        } else {
            options = pg_sys::lappend(options, opt(c"encoding", c"UTF8").cast());
        }
        let cstate = pg_sys::BeginCopyFrom(
            pstate,
            rel,
            std::ptr::null_mut(),
            std::ptr::null(),
            false,
            Some(read_source),
            attlist,
            options,
        );
        let n = pg_sys::CopyFrom(cstate);
        pg_sys::EndCopyFrom(cstate);
        pg_sys::free_parsestate(pstate);
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
        n
    };
    rows
}

/// BeginCopyFrom/CopyFrom do not check privileges (`COPY` does that before calling them): the
/// current user needs INSERT on the table or on every loaded column, as for an INSERT. (Its
/// row-level security is checked by `owner::as_table_owner`, which every copy runs inside.)
fn check_insert_allowed(relid: pg_sys::Oid, columns: &[String]) {
    // SAFETY: ACL and catalog lookups inside a transaction; aclcheck_error raises an ERROR.
    unsafe {
        let user = pg_sys::GetUserId();
        let insert = pg_sys::ACL_INSERT as pg_sys::AclMode;
        if pg_sys::pg_class_aclcheck(relid, user, insert) != pg_sys::AclResult::ACLCHECK_OK {
            for c in columns {
                let name = CString::new(c.as_str()).unwrap_or_default();
                let attnum = pg_sys::get_attnum(relid, name.as_ptr());
                if attnum == 0
                    || pg_sys::pg_attribute_aclcheck(relid, attnum, user, insert) != pg_sys::AclResult::ACLCHECK_OK
                {
                    pg_sys::aclcheck_error(
                        pg_sys::AclResult::ACLCHECK_NO_PRIV,
                        pg_sys::ObjectType::OBJECT_TABLE,
                        pg_sys::get_rel_name(relid),
                    );
                }
            }
        }
    }
}

/// Like PostgreSQL's apply worker: a table whose row-level security applies to the current user
/// (the subscription owner) is refused rather than written through the policies, which would
/// reject inserts and silently hide the rows that updates and deletes look for.
pub fn refuse_row_level_security(relid: pg_sys::Oid) {
    // SAFETY: catalog lookups inside a transaction; the returned names are palloc'd C strings
    // (or NULL) read at once.
    let (user, rel, owns) = unsafe {
        if pg_sys::check_enable_rls(relid, pg_sys::InvalidOid, false)
            != pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
        {
            return;
        }
        // Has the owner's privileges, as check_enable_rls counts an owner.
        let owns = super::owner::rel_owner(relid).is_some_and(|o| pg_sys::has_privs_of_role(pg_sys::GetUserId(), o));
        let text = |p: *mut std::ffi::c_char| {
            if p.is_null() {
                String::from("?")
            } else {
                std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        (text(pg_sys::GetUserNameFromId(pg_sys::GetUserId(), true)), text(pg_sys::get_rel_name(relid)), owns)
    };
    // The table's owner itself is bound only by FORCE ROW LEVEL SECURITY: owning it is no way out.
    let hint = if owns {
        "The table forces row-level security on its owner (FORCE ROW LEVEL SECURITY): give that role BYPASSRLS, subscribe as a role with BYPASSRLS and run_as_owner => true, or ALTER TABLE … NO FORCE ROW LEVEL SECURITY; the worker retries."
    } else {
        "Make the subscription owner the table's owner or give it BYPASSRLS, or disable row-level security on the table; the worker retries."
    };
    crate::report::error(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!("user \"{user}\" cannot replicate into relation with row-level security enabled: \"{rel}\""),
        None,
        Some(hint),
    );
}

/// Rows of a table that publishes no columns (`CREATE TABLE t ()`, or a column list the local
/// table lacks entirely): each text line is a row with no values. COPY FROM cannot take them
/// (an empty column list means every local column), so the rows are inserted with the local
/// defaults, as native apply fills columns the publisher does not send.
fn insert_defaults(relid: pg_sys::Oid, source: &mut dyn FnMut(&mut [u8]) -> usize) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut rows = 0i64;
    loop {
        let n = source(&mut buf);
        if n == 0 {
            break;
        }
        rows += buf[..n].iter().filter(|b| **b == b'\n').count() as i64;
    }
    if rows == 0 {
        return 0;
    }
    // SAFETY: syscache lookups of a relation that is open (locked) by the caller's transaction.
    let qualified = unsafe {
        let nsp = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid));
        let rel = pg_sys::get_rel_name(relid);
        std::ffi::CStr::from_ptr(pg_sys::quote_qualified_identifier(nsp, rel)).to_string_lossy().into_owned()
    };
    let sql = format!("INSERT INTO {qualified} SELECT FROM pg_catalog.generate_series(1, $1::int8)");
    if let Err(e) = Spi::run_with_args(&sql, &[rows.into()]) {
        crate::report::error(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("inserting rows without columns: {e}"),
            None,
            None,
        );
    }
    rows as u64
}
