//! The URI form (`postgresql://user:pw@host:port,host2/db?keyword=value&...`): a scanner that
//! splits the string into its parts with their byte spans — once, for parsing and for masking
//! alike — percent-decoding, and the parser that turns the parts into settings (libpq's
//! `conninfo_uri_parse_options`).

use std::ops::Range;

use super::{keywords, store, ConnInfoError, Raw};

/// The parts of a connection URI, as byte spans into it.
#[derive(Default)]
pub(super) struct Uri {
    /// Length of the `postgresql://` / `postgres://` prefix.
    pub prefix: usize,
    /// `user` of `user[:password]@` (libpq: the first '@' before any '/').
    pub user: Option<Range<usize>>,
    pub password: Option<Range<usize>>,
    /// Every host (IPv6 addresses without their brackets) with its port, if one was given.
    pub hosts: Vec<(Range<usize>, Option<Range<usize>>)>,
    /// A malformed host list (IPv6 brackets); scanning went on at the next '?'.
    pub host_error: Option<ConnInfoError>,
    pub dbname: Option<Range<usize>>,
    /// Position of the '?' that starts the query.
    pub query: Option<usize>,
    /// The query's `&`-separated pairs.
    pub params: Vec<Param>,
}

/// One `key=value` pair of the query.
pub(super) struct Param {
    pub pair: Range<usize>,
    /// Up to the first '=' (the whole pair when there is none).
    pub key: Range<usize>,
    /// After the first '='.
    pub value: Option<Range<usize>>,
}

/// Length of the URI prefix, 0 when `s` is not a URI.
pub(super) fn prefix_len(s: &str) -> usize {
    ["postgresql://", "postgres://"].iter().find(|p| s.starts_with(*p)).map_or(0, |p| p.len())
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// libpq's `conninfo_uri_decode`.
pub(super) fn decode(s: &str) -> Result<String, ConnInfoError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let hi = b.get(i + 1).copied().and_then(hex_val);
        let lo = b.get(i + 2).copied().and_then(hex_val);
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err(ConnInfoError::new(format!("invalid percent-encoded token: \"{s}\"")));
        };
        let c = (hi << 4) | lo;
        if c == 0 {
            return Err(ConnInfoError::new(format!("forbidden value %00 in percent-encoded value: \"{s}\"")));
        }
        out.push(c);
        i += 3;
    }
    String::from_utf8(out).map_err(|_| ConnInfoError::new(format!("percent-encoded value is not valid UTF-8: \"{s}\"")))
}

/// Splits a URI (one with a [`prefix_len`]) into its parts. Never fails: a malformed host list
/// is recorded in [`Uri::host_error`] and the scan resumes at the query.
pub(super) fn scan(s: &str) -> Uri {
    let b = s.as_bytes();
    let mut uri = Uri { prefix: prefix_len(s), ..Uri::default() };
    let mut p = scan_userinfo(s, &mut uri);
    match scan_hosts(s, p, &mut uri.hosts) {
        Ok(end) => p = end,
        Err(e) => {
            uri.host_error = Some(e);
            p = s[p..].find('?').map_or(s.len(), |q| p + q);
        }
    }
    if b.get(p) == Some(&b'/') {
        let d0 = p + 1;
        p = s[d0..].find('?').map_or(s.len(), |q| d0 + q);
        uri.dbname = Some(d0..p);
    }
    if b.get(p) == Some(&b'?') {
        uri.query = Some(p);
        uri.params = scan_params(s, p + 1);
    }
    uri
}

/// `user[:password]@` — an '@' before the first '/'. Returns where the host list starts.
fn scan_userinfo(s: &str, uri: &mut Uri) -> usize {
    let start = uri.prefix;
    let Some(at) = s[start..].find(['@', '/']).map(|i| start + i).filter(|&i| s.as_bytes()[i] == b'@') else {
        return start;
    };
    match s[start..at].find(':') {
        Some(c) => {
            uri.user = Some(start..start + c);
            uri.password = Some(start + c + 1..at);
        }
        None => uri.user = Some(start..at),
    }
    at + 1
}

/// `host[:port][,host[:port]...]` from `p`; returns the position after it ('/', '?' or the end).
fn scan_hosts(
    s: &str,
    mut p: usize,
    hosts: &mut Vec<(Range<usize>, Option<Range<usize>>)>,
) -> Result<usize, ConnInfoError> {
    let b = s.as_bytes();
    let upto =
        |from: usize, stops: &[u8]| b[from..].iter().position(|c| stops.contains(c)).map_or(b.len(), |i| from + i);
    loop {
        let host = if b.get(p) == Some(&b'[') {
            let h = ipv6_host(s, p)?;
            p = h.end + 1;
            h
        } else {
            let h0 = p;
            p = upto(p, b":/?,");
            h0..p
        };
        let mut port = None;
        if b.get(p) == Some(&b':') {
            let p0 = p + 1;
            p = upto(p0, b"/?,");
            port = Some(p0..p);
        }
        hosts.push((host, port));
        if b.get(p) != Some(&b',') {
            return Ok(p);
        }
        p += 1;
    }
}

/// The address inside `[...]` at `open`, checked to be followed by a delimiter.
fn ipv6_host(s: &str, open: usize) -> Result<Range<usize>, ConnInfoError> {
    let h0 = open + 1;
    let Some(close) = s[h0..].find(']').map(|i| h0 + i) else {
        return Err(ConnInfoError::new(format!(
            "end of string reached when looking for matching \"]\" in IPv6 host address in URI: \"{s}\""
        )));
    };
    if close == h0 {
        return Err(ConnInfoError::new(format!("IPv6 host address may not be empty in URI: \"{s}\"")));
    }
    let after = close + 1;
    if after < s.len() && !matches!(s.as_bytes()[after], b':' | b'/' | b'?' | b',') {
        let c = s[after..].chars().next().unwrap_or('?');
        return Err(ConnInfoError::new(format!(
            "unexpected character \"{c}\" at position {} in URI (expected \":\" or \"/\"): \"{s}\"",
            after + 1
        )));
    }
    Ok(h0..close)
}

/// The `&`-separated pairs of the query starting at `start` (none when it is empty).
fn scan_params(s: &str, start: usize) -> Vec<Param> {
    if start >= s.len() {
        return Vec::new();
    }
    let mut params = Vec::new();
    let mut p0 = start;
    for pair in s[start..].split('&') {
        let pair_span = p0..p0 + pair.len();
        let (key, value) = match pair.find('=') {
            Some(e) => (p0..p0 + e, Some(p0 + e + 1..pair_span.end)),
            None => (pair_span.clone(), None),
        };
        params.push(Param { pair: pair_span, key, value });
        p0 += pair.len() + 1;
    }
    params
}

/// Parses a connection URI into its settings, in order.
pub(super) fn parse(s: &str) -> Result<Raw, ConnInfoError> {
    let uri = scan(s);
    let mut raw = Raw::new();
    let part = |r: &Option<Range<usize>>| r.clone().map(|r| &s[r]).filter(|v| !v.is_empty());
    if let Some(user) = part(&uri.user) {
        store(&mut raw, "user", decode(user)?)?;
    }
    if let Some(password) = part(&uri.password) {
        store(&mut raw, "password", decode(password)?)?;
    }
    if let Some(e) = uri.host_error {
        return Err(e);
    }
    store_hosts(s, &uri.hosts, &mut raw)?;
    if let Some(dbname) = part(&uri.dbname) {
        store(&mut raw, "dbname", decode(dbname)?)?;
    }
    for param in &uri.params {
        store_param(s, param, &mut raw)?;
    }
    Ok(raw)
}

/// The host list as `host` and, when any port was given, the port list as `port` (both
/// comma-separated, decoded as a whole, as libpq does).
fn store_hosts(s: &str, hosts: &[(Range<usize>, Option<Range<usize>>)], raw: &mut Raw) -> Result<(), ConnInfoError> {
    let hoststr = hosts.iter().map(|(h, _)| &s[h.clone()]).collect::<Vec<_>>().join(",");
    if !hoststr.is_empty() {
        store(raw, "host", decode(&hoststr)?)?;
    }
    let any_port = hosts.iter().any(|(_, p)| p.is_some());
    let portstr = hosts.iter().map(|(_, p)| p.clone().map_or("", |p| &s[p])).collect::<Vec<_>>().join(",");
    if any_port && !portstr.is_empty() {
        store(raw, "port", decode(&portstr)?)?;
    }
    Ok(())
}

/// One query parameter: `ssl=true` means `sslmode=require`; unknown keywords are refused.
fn store_param(s: &str, param: &Param, raw: &mut Raw) -> Result<(), ConnInfoError> {
    let pair = &s[param.pair.clone()];
    let Some(value) = param.value.clone().map(|v| &s[v]) else {
        return Err(ConnInfoError::new(format!(
            "missing key/value separator \"=\" in URI query parameter: \"{pair}\""
        )));
    };
    let key = &s[param.key.clone()];
    if value.contains('=') {
        return Err(ConnInfoError::new(format!("extra key/value separator \"=\" in URI query parameter: \"{key}\"")));
    }
    let (key, value) = (decode(key)?, decode(value)?);
    let (key, value) =
        if key == "ssl" && value == "true" { ("sslmode".to_string(), "require".to_string()) } else { (key, value) };
    let k = if key == "requiressl" { "sslmode" } else { key.as_str() };
    if keywords::lookup(k).is_none() {
        return Err(ConnInfoError::new(format!("invalid URI query parameter: \"{key}\"")));
    }
    store(raw, &key, value)
}
