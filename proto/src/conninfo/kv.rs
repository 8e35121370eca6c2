//! The keyword/value form (`host=a port=5 dbname='x y'`): a lenient lexer that cuts the string
//! into `keyword = value` tokens with their byte spans — once, for parsing and for masking alike
//! — and the parser that turns the tokens into settings (libpq's `conninfo_parse`).

use std::ops::Range;

use super::{store, ConnInfoError, Raw};

/// One `keyword = value` of a keyword/value string.
pub(super) struct Token {
    /// Byte span of the keyword.
    pub keyword: Range<usize>,
    pub value: Value,
}

/// What follows a keyword.
pub(super) enum Value {
    /// `= value`: the value's byte span (quotes included) and its text (quotes removed,
    /// backslash escapes resolved).
    Given { span: Range<usize>, text: String },
    /// `= 'value...` without the closing quote: the value runs to the end of the string.
    Unterminated { span: Range<usize> },
    /// No `=` after the keyword.
    Missing,
}

/// C's `isspace` in the "C" locale.
pub(super) fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn skip_space(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_space(b[i]) {
        i += 1;
    }
    i
}

/// Cuts `s` into tokens. Never fails: a keyword without `=` is a [`Value::Missing`] token and
/// scanning goes on with the next word, an unterminated quote ends the string. Blanks around
/// `=` are allowed; a value is unquoted (ends at whitespace) or single-quoted; in both a
/// backslash takes the next character literally. All delimiters are ASCII, so byte positions
/// are always character boundaries.
pub(super) fn lex(s: &str) -> Vec<Token> {
    let b = s.as_bytes();
    let mut tokens = Vec::new();
    let mut i = skip_space(b, 0);
    while i < b.len() {
        let k0 = i;
        while i < b.len() && b[i] != b'=' && !is_space(b[i]) {
            i += 1;
        }
        let keyword = k0..i;
        i = skip_space(b, i);
        if i >= b.len() || b[i] != b'=' {
            tokens.push(Token { keyword, value: Value::Missing });
            continue;
        }
        i = skip_space(b, i + 1);
        let value = if b.get(i) == Some(&b'\'') { quoted(b, i) } else { unquoted(b, i) };
        i = match &value {
            Value::Given { span, .. } | Value::Unterminated { span } => span.end,
            Value::Missing => i,
        };
        tokens.push(Token { keyword, value });
        i = skip_space(b, i);
    }
    tokens
}

/// The text of a value: `bytes` are `s` minus ASCII quotes and backslashes, so still UTF-8.
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A single-quoted value starting at the quote `b[start]`.
fn quoted(b: &[u8], start: usize) -> Value {
    let mut out = Vec::new();
    let mut i = start + 1;
    loop {
        match b.get(i) {
            None => return Value::Unterminated { span: start..b.len() },
            Some(b'\\') => {
                out.extend(b.get(i + 1));
                i += 2;
            }
            Some(b'\'') => return Value::Given { span: start..i + 1, text: text(out) },
            Some(&c) => {
                out.push(c);
                i += 1;
            }
        }
    }
}

/// An unquoted value starting at `b[start]`, up to the next blank.
fn unquoted(b: &[u8], start: usize) -> Value {
    let mut out = Vec::new();
    let mut i = start;
    while let Some(&c) = b.get(i) {
        if is_space(c) {
            break;
        }
        if c == b'\\' {
            out.extend(b.get(i + 1));
            i += 2;
        } else {
            out.push(c);
            i += 1;
        }
    }
    Value::Given { span: start..i.min(b.len()), text: text(out) }
}

/// Parses a keyword/value string into its settings, in order (the last occurrence wins later).
pub(super) fn parse(s: &str) -> Result<Raw, ConnInfoError> {
    let mut raw = Raw::new();
    for token in lex(s) {
        let name = &s[token.keyword];
        match token.value {
            Value::Given { text, .. } => store(&mut raw, name, text)?,
            Value::Missing => {
                return Err(ConnInfoError::new(format!("missing \"=\" after \"{name}\" in connection info string")))
            }
            Value::Unterminated { .. } => {
                return Err(ConnInfoError::new("unterminated quoted string in connection info string"))
            }
        }
    }
    Ok(raw)
}
