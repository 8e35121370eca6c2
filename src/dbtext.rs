//! Text across the boundary between Rust and this database's encoding.
//!
//! Rust strings are UTF-8, and so is everything that arrives from a publisher (pgsub's
//! connections ask for `client_encoding` UTF8). A database in another encoding (LATIN1, WIN1252,
//! EUC_JP, …) holds its text in that encoding: a text value read through SPI as a Rust `String`
//! fails on any non-ASCII character (pgrx refuses it), and a Rust string handed to SPI as a text
//! parameter is taken byte for byte, so `é` would become `Ã©`. [`DbText`] converts both ways,
//! as PostgreSQL converts between a client's encoding and the server's: UTF-8 → the database's
//! encoding on the way in (a character it cannot hold becomes `?`: such text is shown or looked
//! up, never stored as a replicated value, whose conversion is the apply's own and strict), the
//! database's encoding → UTF-8 on the way out. In a UTF8 or SQL_ASCII database it is a plain
//! copy.
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

/// A text value converted between UTF-8 (the `String`) and the database's encoding (its Datum).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbText(pub String);

impl DbText {
    pub fn into_string(self) -> String {
        self.0
    }
}

impl From<String> for DbText {
    fn from(s: String) -> Self {
        DbText(s)
    }
}

/// Whether the database's text needs converting to and from UTF-8: not UTF8, nor SQL_ASCII
/// (which takes and gives bytes as they are), nor a process without a database.
pub fn converts() -> bool {
    // SAFETY: reads the database encoding, set once the process is connected to its database.
    let enc = unsafe { pg_sys::GetDatabaseEncoding() };
    enc != pg_sys::pg_enc::PG_UTF8 as i32 && enc != pg_sys::pg_enc::PG_SQL_ASCII as i32
}

/// `s` in the database's encoding. A character the encoding cannot hold becomes `?`: the text
/// goes where a value read from this database or received from a publisher is shown or looked
/// up (a message in `last_error`, a key of a conflict or a comparison), never where it is stored
/// as data — values are converted by the apply itself, strictly, as natively.
pub fn to_db_bytes(s: &str) -> Vec<u8> {
    if !converts() || s.is_ascii() {
        return s.as_bytes().to_vec();
    }
    convert_strict(s).unwrap_or_else(|| {
        // Character by character, only on this rare path: each one that does not convert is `?`.
        let mut out = Vec::with_capacity(s.len());
        let mut buf = [0u8; 4];
        for ch in s.chars() {
            match ch {
                c if c.is_ascii() => out.push(c as u8),
                c => out.extend(convert_strict(c.encode_utf8(&mut buf)).unwrap_or_else(|| b"?".to_vec())),
            }
        }
        out
    })
}

/// `s` converted from UTF8 to the database's encoding; None when a character does not convert
/// (PostgreSQL's conversion raises an ERROR, caught here: it only allocates in the current
/// memory context, so nothing needs undoing) or `s` holds a NUL.
fn convert_strict(s: &str) -> Option<Vec<u8>> {
    let c = CString::new(s).ok()?;
    let len = s.len() as i32;
    PgTryBuilder::new(move || {
        // SAFETY: a NUL-terminated string of `len` bytes in UTF8; the conversion returns it or a
        // palloc'd NUL-terminated copy in the database's encoding.
        unsafe {
            let out = pg_sys::pg_any_to_server(c.as_ptr(), len, pg_sys::pg_enc::PG_UTF8 as i32);
            Some(CStr::from_ptr(out).to_bytes().to_vec())
        }
    })
    .catch_others(|_| None)
    .execute()
}

/// Bytes in the database's encoding as a UTF-8 string.
pub fn from_db_bytes(bytes: &[u8]) -> String {
    if !converts() || bytes.is_ascii() {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let Ok(c) = CString::new(bytes) else { return String::from_utf8_lossy(bytes).into_owned() };
    // SAFETY: a NUL-terminated string of `bytes.len()` bytes in the database's encoding; the
    // conversion returns it or a palloc'd NUL-terminated copy in UTF8.
    unsafe {
        let out = pg_sys::pg_server_to_any(c.as_ptr(), bytes.len() as i32, pg_sys::pg_enc::PG_UTF8 as i32);
        String::from_utf8_lossy(CStr::from_ptr(out).to_bytes()).into_owned()
    }
}

// Returned from SQL functions as `text` (a view's `last_error`).
pgrx::impl_sql_translatable!(DbText, "text");

impl FromDatum for DbText {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _typoid: pg_sys::Oid) -> Option<Self> {
        if is_null || datum.is_null() {
            return None;
        }
        // SAFETY: a text (or varchar) Datum, detoasted into the current memory context and read
        // before it is freed with it.
        unsafe {
            let varlena = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
            Some(DbText(from_db_bytes(pgrx::varlena::varlena_to_byte_slice(varlena))))
        }
    }
}

impl IntoDatum for DbText {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        to_db_bytes(&self.0).as_slice().into_datum()
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::TEXTOID
    }

    fn is_compatible_with(other: pg_sys::Oid) -> bool {
        other == pg_sys::TEXTOID || other == pg_sys::VARCHAROID
    }
}

// SAFETY: the Datum returned is the one into_datum made, a text value in the current memory
// context, as pgrx returns a String.
unsafe impl pgrx::callconv::BoxRet for DbText {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut pgrx::callconv::FcInfo<'fcx>) -> pgrx::datum::Datum<'fcx> {
        match self.into_datum() {
            // SAFETY: a Datum of the function's return type (text).
            Some(datum) => unsafe { fcinfo.return_raw_datum(datum) },
            None => fcinfo.return_null(),
        }
    }
}
