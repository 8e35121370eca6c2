//! ereport with SQLSTATE, message, detail and hint — the one way pgsub raises errors and warnings.
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// Raises an ERROR (does not return).
pub fn error(code: PgSqlErrorCode, msg: impl Into<String>, detail: Option<String>, hint: Option<&str>) -> ! {
    build(code, msg, detail, hint).report(PgLogLevel::ERROR);
    unreachable!("ERROR returned")
}

/// Logs at `level` (WARNING, LOG, NOTICE …) and returns.
pub fn log(
    level: PgLogLevel,
    code: PgSqlErrorCode,
    msg: impl Into<String>,
    detail: Option<String>,
    hint: Option<&str>,
) {
    build(code, msg, detail, hint).report(level);
}

fn build(code: PgSqlErrorCode, msg: impl Into<String>, detail: Option<String>, hint: Option<&str>) -> ErrorReport {
    let mut r = ErrorReport::new(code, msg.into(), "pgsub");
    if let Some(d) = detail {
        r = r.set_detail(d);
    }
    if let Some(h) = hint {
        r = r.set_hint(h.to_string());
    }
    r
}
