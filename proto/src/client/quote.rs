//! Quoting of names and strings for what the client sends: SQL identifiers and literals (through
//! `postgres_protocol::escape`, libpq's `PQescapeIdentifier`/`PQescapeLiteral`), and the string
//! constants of the replication command grammar, which has a syntax of its own.

use postgres_protocol::escape::{escape_identifier, escape_literal};

/// Double-quotes an identifier (always), doubling inner double quotes. Valid in SQL and in
/// replication commands alike (the replication scanner knows the same `"..."` form).
pub fn quote_ident(s: &str) -> String {
    escape_identifier(s)
}

/// A SQL string literal: single-quoted, inner single quotes doubled; a string with backslashes
/// becomes ` E'...'` (with a leading space and the backslashes doubled), which reads the same
/// whatever the server's `standard_conforming_strings`. For SQL only — the replication command
/// grammar has no `E'...'` form (see `repl_literal`).
pub fn quote_literal(s: &str) -> String {
    escape_literal(s)
}

/// A string constant of the replication command grammar (PostgreSQL's `repl_scanner.l`): single
/// quotes with inner single quotes doubled, everything else — backslashes included — taken
/// literally. Used for START_REPLICATION's option values.
pub(crate) fn repl_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
