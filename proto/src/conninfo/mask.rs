//! Password masking of connection strings for logs, from the same tokens the parser reads: the
//! values of secret keywords (per the keyword table), and of keywords the table does not know, are
//! replaced by [`MASK`]. Works on strings that do not parse too, erring on the side of masking
//! too much.

use super::kv::{self, Value};
use super::uri::{self, prefix_len};
use super::{keywords, MASK};

/// Renders `conninfo` with every password value replaced by `********`, in both the
/// keyword/value and the URI form. Works on strings that do not parse too: it errs on the side
/// of masking too much (an unterminated quoted password masks the rest of the string).
pub fn mask_password(conninfo: &str) -> String {
    if prefix_len(conninfo) > 0 {
        return mask_uri(conninfo);
    }
    // A URI prefix in capitals is no URI to libpq (it fails as keyword/value), but a password in
    // it is still one: masked as a URI.
    let n = prefix_len(&conninfo.to_ascii_lowercase());
    if n > 0 {
        let masked = mask_uri(&format!("{}{}", conninfo[..n].to_ascii_lowercase(), &conninfo[n..]));
        return format!("{}{}", &conninfo[..n], &masked[n..]);
    }
    mask_keyword_value(conninfo)
}

fn mask_keyword_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut copied = 0; // s[..copied] is already in `out`
    for token in kv::lex(s) {
        let span = match &token.value {
            Value::Given { span, .. } | Value::Unterminated { span } => span,
            Value::Missing => continue,
        };
        // A keyword libpq does not know may be a misspelt password (`pasword=`): masked too.
        let key = &s[token.keyword];
        if keywords::is_secret(key) || keywords::lookup(key).is_none() {
            out.push_str(&s[copied..span.start]);
            out.push_str(MASK);
            copied = span.end;
        }
    }
    out.push_str(&s[copied..]);
    out
}

/// In the authority, everything between the first ':' and the *last* '@' before the query is
/// taken as the password, so that an unencoded '@' or '/' in a password is still masked (libpq
/// would split such a string differently and fail on it). In the query, the value of every
/// secret keyword is masked.
fn mask_uri(s: &str) -> String {
    let uri = uri::scan(s);
    let authority_end = uri.query.unwrap_or(s.len());
    let mut out = String::with_capacity(s.len());
    out.push_str(&s[..uri.prefix]);
    let mut p = uri.prefix;
    if let Some(at) = s[p..authority_end].rfind('@').map(|a| a + p) {
        let userinfo = &s[p..at];
        match userinfo.find(':') {
            Some(c) => {
                out.push_str(&userinfo[..c + 1]);
                out.push_str(MASK);
            }
            None => out.push_str(userinfo),
        }
        out.push('@');
        p = at + 1;
    }
    out.push_str(&s[p..authority_end]);
    if uri.query.is_some() {
        out.push('?');
        let pairs: Vec<String> = uri
            .params
            .iter()
            .map(|param| {
                let key = &s[param.key.clone()];
                let decoded = uri::decode(key).unwrap_or_else(|_| key.to_string());
                if param.value.is_some() && keywords::is_secret(&decoded) {
                    format!("{key}={MASK}")
                } else {
                    s[param.pair.clone()].to_string()
                }
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}
