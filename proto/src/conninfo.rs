//! libpq-compatible connection strings: the keyword/value form (`host=a port=5 dbname='x y'`) and
//! the URI form (`postgresql://user:pw@host:port/db?param=value`), libpq's environment-variable
//! and compiled-in defaults, `~/.pgpass` lookup, and password masking for logs. Owns [`Config`],
//! [`Host`], [`SslMode`], [`ConnInfoError`], [`parse`], [`parse_with_env`] and [`mask_password`];
//! knows nothing about sockets (that is `client`).
//!
//! The parsing rules follow libpq's `conninfo_parse` / `conninfo_uri_parse_options` byte for byte
//! where it matters:
//! * keyword/value: blanks around `=` are allowed; a value is either unquoted (ends at
//!   whitespace) or single-quoted; in both, a backslash takes the next character literally
//!   (`'it\'s'`, `a\ b`); the last occurrence of a keyword wins;
//! * URI: `postgresql://` or `postgres://`, then `[user[:password]@][host][:port][,host[:port]...]`
//!   `[/dbname][?keyword=value&...]`, every part percent-decoded, `[::1]` for IPv6, a host that
//!   decodes to an absolute path is a Unix-socket directory, `ssl=true` means `sslmode=require`;
//! * every keyword libpq knows is accepted; unknown ones are an error (`invalid connection option
//!   "foo"`). Keywords naming features this client does not implement (client certificates, CRLs,
//!   service files, GSSAPI encryption, `target_session_attrs` other than `any`, ...) are rejected
//!   with a message saying so when they ask for something, and ignored when they are harmless
//!   (keepalive tuning, `sslsni`, `client_encoding`, ...).
//!
//! Defaults as libpq: host `PGHOST` else the Unix socket directory `/var/run/postgresql` (Debian's
//! default; `/tmp` when that directory does not exist), port `PGPORT` else 5432, user `PGUSER`
//! else the OS user name, dbname `PGDATABASE` else the user name, password `PGPASSWORD` else the
//! password file (`passfile` / `PGPASSFILE` / `~/.pgpass`), sslmode `PGSSLMODE` else `prefer`
//! (`verify-full` when `sslrootcert=system`), connect_timeout `PGCONNECT_TIMEOUT` (0 or negative
//! = none, 1 means 2 s as in libpq).
//!
//! Limitations (documented, checked): every host of a multi-host string shares one port and at
//! most one `hostaddr` is supported; see [`Config::hosts`].

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Text that replaces a password wherever one is shown.
pub const MASK: &str = "********";

/// Debian's compiled-in socket directory, used when no host is given.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// Upstream's compiled-in socket directory, the fallback when [`DEFAULT_SOCKET_DIR`] is missing.
pub const FALLBACK_SOCKET_DIR: &str = "/tmp";
/// Default server port.
pub const DEFAULT_PORT: u16 = 5432;

/// Where to reach the server.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A host name or numeric IP address, reached over TCP.
    Tcp(String),
    /// A directory containing the server's Unix socket `.s.PGSQL.<port>`.
    Unix(PathBuf),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(h) => f.write_str(h),
            Host::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plaintext first; TLS only if the server rejects the plaintext connection.
    Allow,
    /// TLS if the server supports it, else plaintext (libpq's default).
    #[default]
    Prefer,
    /// TLS, certificate not verified (verified like `verify-ca` when `sslrootcert` is set).
    Require,
    /// TLS, certificate chain verified against the root certificates, host name not checked.
    VerifyCa,
    /// TLS, certificate chain and host name verified.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling (`verify-full`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Parses the libpq spelling.
    pub fn from_keyword(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed connection string with every default filled in.
///
/// `Debug` masks the password; use [`Config::display_masked`] to log it.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Hosts to try in order (libpq's comma-separated `host`). Never empty. All share `port`.
    pub hosts: Vec<Host>,
    /// Numeric address to connect to instead of resolving the (first) host name; the host name
    /// is still used for certificate verification and the password file.
    pub hostaddr: Option<String>,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub password: Option<String>,
    pub sslmode: SslMode,
    /// Root certificates (PEM) for `verify-ca`/`verify-full`; the literal path `system` (or none)
    /// means the operating system's trust store.
    pub sslrootcert: Option<PathBuf>,
    /// `application_name`, else `fallback_application_name`.
    pub application_name: Option<String>,
    /// Per-host connection timeout (covers connect, TLS and authentication); `None` = wait forever.
    pub connect_timeout: Option<Duration>,
    /// Command-line options sent to the server (`-c name=value ...`).
    pub options: Option<String>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("hosts", &self.hosts)
            .field("hostaddr", &self.hostaddr)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| MASK))
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("options", &self.options)
            .finish()
    }
}

impl Config {
    /// The configuration as a keyword/value connection string with the password replaced by
    /// `********` — safe to log.
    pub fn display_masked(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        let hosts = self
            .hosts
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>()
            .join(",");
        parts.push(format!("host={}", quote_value(&hosts)));
        if let Some(a) = &self.hostaddr {
            parts.push(format!("hostaddr={}", quote_value(a)));
        }
        parts.push(format!("port={}", self.port));
        parts.push(format!("dbname={}", quote_value(&self.dbname)));
        parts.push(format!("user={}", quote_value(&self.user)));
        if self.password.is_some() {
            parts.push(format!("password={MASK}"));
        }
        parts.push(format!("sslmode={}", self.sslmode));
        if let Some(r) = &self.sslrootcert {
            parts.push(format!("sslrootcert={}", quote_value(&r.to_string_lossy())));
        }
        if let Some(a) = &self.application_name {
            parts.push(format!("application_name={}", quote_value(a)));
        }
        if let Some(t) = self.connect_timeout {
            parts.push(format!("connect_timeout={}", t.as_secs()));
        }
        if let Some(o) = &self.options {
            parts.push(format!("options={}", quote_value(o)));
        }
        parts.join(" ")
    }
}

/// Quotes a value for a keyword/value connection string when needed (empty, whitespace, quote
/// or backslash), escaping with backslashes as libpq expects.
pub fn quote_value(v: &str) -> String {
    if !v.is_empty() && !v.chars().any(|c| is_space(c) || c == '\'' || c == '\\') {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Why a connection string was rejected. `Display` gives libpq's wording where libpq has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfoError {
    message: String,
}

impl ConnInfoError {
    fn new(message: impl Into<String>) -> Self {
        ConnInfoError {
            message: message.into(),
        }
    }

    /// The message (same as `Display`).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConnInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConnInfoError {}

/// Parses a connection string, taking defaults from the process environment (`PGHOST`, ...).
pub fn parse(s: &str) -> Result<Config, ConnInfoError> {
    let env = |k: &str| -> Option<String> {
        match std::env::var(k) {
            Ok(v) => Some(v),
            Err(_) if k == "HOME" => os_home_dir(),
            Err(_) => None,
        }
    };
    parse_with_env(s, &env)
}

/// Whether the string itself sets a non-empty password — not the environment (`PGPASSWORD`) nor
/// a password file. A subscription owned by a non-superuser must, so that it cannot borrow the
/// server's own credentials (PostgreSQL 16's `password_required`).
pub fn has_explicit_password(s: &str) -> Result<bool, ConnInfoError> {
    let raw = if uri_prefix_len(s) > 0 {
        parse_uri(s)?
    } else {
        parse_keyword_value(s)?
    };
    // Later settings override earlier ones.
    Ok(raw.iter().rev().find(|(k, _)| k == "password").is_some_and(|(_, v)| !v.is_empty()))
}

/// Parses a connection string, taking defaults from `env` instead of the process environment
/// (`env("PGHOST")`, `env("HOME")` for `~/.pgpass`, ...). The OS user name (default user) and the
/// existence of the default socket directory still come from the system.
pub fn parse_with_env(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConnInfoError> {
    let raw = if uri_prefix_len(s) > 0 {
        parse_uri(s)?
    } else {
        parse_keyword_value(s)?
    };
    build_config(raw, env)
}

// ---------------------------------------------------------------------------------------------
// Keywords

/// Every keyword libpq (up to 17, plus 18's protocol-version pair) accepts, with its environment
/// variable.
const KEYWORDS: &[(&str, Option<&str>)] = &[
    ("service", Some("PGSERVICE")),
    ("user", Some("PGUSER")),
    ("password", Some("PGPASSWORD")),
    ("passfile", Some("PGPASSFILE")),
    ("channel_binding", Some("PGCHANNELBINDING")),
    ("connect_timeout", Some("PGCONNECT_TIMEOUT")),
    ("dbname", Some("PGDATABASE")),
    ("host", Some("PGHOST")),
    ("hostaddr", Some("PGHOSTADDR")),
    ("port", Some("PGPORT")),
    ("client_encoding", Some("PGCLIENTENCODING")),
    ("options", Some("PGOPTIONS")),
    ("application_name", Some("PGAPPNAME")),
    ("fallback_application_name", None),
    ("keepalives", None),
    ("keepalives_idle", None),
    ("keepalives_interval", None),
    ("keepalives_count", None),
    ("tcp_user_timeout", None),
    ("sslmode", Some("PGSSLMODE")),
    ("sslnegotiation", Some("PGSSLNEGOTIATION")),
    ("sslcompression", Some("PGSSLCOMPRESSION")),
    ("sslcert", Some("PGSSLCERT")),
    ("sslkey", Some("PGSSLKEY")),
    ("sslcertmode", Some("PGSSLCERTMODE")),
    ("sslpassword", None),
    ("sslrootcert", Some("PGSSLROOTCERT")),
    ("sslcrl", Some("PGSSLCRL")),
    ("sslcrldir", Some("PGSSLCRLDIR")),
    ("sslsni", Some("PGSSLSNI")),
    ("requirepeer", Some("PGREQUIREPEER")),
    ("require_auth", Some("PGREQUIREAUTH")),
    ("ssl_min_protocol_version", Some("PGSSLMINPROTOCOLVERSION")),
    ("ssl_max_protocol_version", Some("PGSSLMAXPROTOCOLVERSION")),
    ("min_protocol_version", Some("PGMINPROTOCOLVERSION")),
    ("max_protocol_version", Some("PGMAXPROTOCOLVERSION")),
    ("gssencmode", Some("PGGSSENCMODE")),
    ("krbsrvname", Some("PGKRBSRVNAME")),
    ("gsslib", Some("PGGSSLIB")),
    ("gssdelegation", Some("PGGSSDELEGATION")),
    ("replication", None),
    ("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
    ("load_balance_hosts", Some("PGLOADBALANCEHOSTS")),
];

fn known_keyword(k: &str) -> bool {
    KEYWORDS.iter().any(|(kw, _)| *kw == k)
}

/// Explicit settings in the order given (later ones override earlier ones).
type Raw = Vec<(String, String)>;

/// libpq's `requiressl` compatibility rewrite, then the keyword check.
fn store(raw: &mut Raw, keyword: &str, value: String) -> Result<(), ConnInfoError> {
    let (keyword, value) = if keyword == "requiressl" {
        let v = if value.starts_with('1') {
            "require"
        } else {
            "prefer"
        };
        ("sslmode", v.to_string())
    } else {
        (keyword, value)
    };
    if !known_keyword(keyword) {
        return Err(ConnInfoError::new(format!(
            "invalid connection option \"{keyword}\""
        )));
    }
    raw.push((keyword.to_string(), value));
    Ok(())
}

/// C's `isspace` in the "C" locale.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

// ---------------------------------------------------------------------------------------------
// keyword/value form

fn parse_keyword_value(s: &str) -> Result<Raw, ConnInfoError> {
    let mut raw = Raw::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if is_space(chars[i]) {
            i += 1;
            continue;
        }
        // keyword: up to '=' or whitespace
        let mut name = String::new();
        while i < chars.len() && chars[i] != '=' && !is_space(chars[i]) {
            name.push(chars[i]);
            i += 1;
        }
        while i < chars.len() && is_space(chars[i]) {
            i += 1;
        }
        if i >= chars.len() || chars[i] != '=' {
            return Err(ConnInfoError::new(format!(
                "missing \"=\" after \"{name}\" in connection info string"
            )));
        }
        i += 1; // '='
        while i < chars.len() && is_space(chars[i]) {
            i += 1;
        }
        let mut value = String::new();
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            loop {
                if i >= chars.len() {
                    return Err(ConnInfoError::new(
                        "unterminated quoted string in connection info string",
                    ));
                }
                match chars[i] {
                    '\\' => {
                        i += 1;
                        if i < chars.len() {
                            value.push(chars[i]);
                            i += 1;
                        }
                    }
                    '\'' => {
                        i += 1;
                        break;
                    }
                    c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < chars.len() {
                let c = chars[i];
                if is_space(c) {
                    i += 1;
                    break;
                }
                if c == '\\' {
                    i += 1;
                    if i < chars.len() {
                        value.push(chars[i]);
                        i += 1;
                    }
                } else {
                    value.push(c);
                    i += 1;
                }
            }
        }
        store(&mut raw, &name, value)?;
    }
    Ok(raw)
}

// ---------------------------------------------------------------------------------------------
// URI form

fn uri_prefix_len(s: &str) -> usize {
    if s.starts_with("postgresql://") {
        "postgresql://".len()
    } else if s.starts_with("postgres://") {
        "postgres://".len()
    } else {
        0
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// libpq's `conninfo_uri_decode`.
fn uri_decode(s: &str) -> Result<String, ConnInfoError> {
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
        match (hi, lo) {
            (Some(hi), Some(lo)) => {
                let c = (hi << 4) | lo;
                if c == 0 {
                    return Err(ConnInfoError::new(format!(
                        "forbidden value %00 in percent-encoded value: \"{s}\""
                    )));
                }
                out.push(c);
                i += 3;
            }
            _ => {
                return Err(ConnInfoError::new(format!(
                    "invalid percent-encoded token: \"{s}\""
                )))
            }
        }
    }
    String::from_utf8(out).map_err(|_| {
        ConnInfoError::new(format!("percent-encoded value is not valid UTF-8: \"{s}\""))
    })
}

fn parse_uri(uri: &str) -> Result<Raw, ConnInfoError> {
    let mut raw = Raw::new();
    let prefix = uri_prefix_len(uri);
    let b = uri.as_bytes();
    let start = prefix;
    let mut p = start;

    // user[:password]@ — an '@' before the first '/'.
    while p < b.len() && b[p] != b'@' && b[p] != b'/' {
        p += 1;
    }
    if p < b.len() && b[p] == b'@' {
        let at = p;
        let userinfo = &uri[start..at];
        let (user, password) = match userinfo.find(':') {
            Some(c) => (&userinfo[..c], Some(&userinfo[c + 1..])),
            None => (userinfo, None),
        };
        if !user.is_empty() {
            store(&mut raw, "user", uri_decode(user)?)?;
        }
        if let Some(pw) = password {
            if !pw.is_empty() {
                store(&mut raw, "password", uri_decode(pw)?)?;
            }
        }
        p = at + 1;
    } else {
        p = start;
    }

    // host[:port][,host[:port]...]
    let mut hosts: Vec<String> = Vec::new();
    let mut ports: Vec<String> = Vec::new();
    let mut any_port = false;
    let mut term: Option<u8>;
    loop {
        let host;
        if p < b.len() && b[p] == b'[' {
            p += 1;
            let h0 = p;
            while p < b.len() && b[p] != b']' {
                p += 1;
            }
            if p >= b.len() {
                return Err(ConnInfoError::new(format!(
                    "end of string reached when looking for matching \"]\" in IPv6 host address in URI: \"{uri}\""
                )));
            }
            if p == h0 {
                return Err(ConnInfoError::new(format!(
                    "IPv6 host address may not be empty in URI: \"{uri}\""
                )));
            }
            host = &uri[h0..p];
            p += 1; // ']'
            if p < b.len() && !matches!(b[p], b':' | b'/' | b'?' | b',') {
                let c = uri[p..].chars().next().unwrap_or('?');
                return Err(ConnInfoError::new(format!(
                    "unexpected character \"{c}\" at position {} in URI (expected \":\" or \"/\"): \"{uri}\"",
                    p + 1
                )));
            }
        } else {
            let h0 = p;
            while p < b.len() && !matches!(b[p], b':' | b'/' | b'?' | b',') {
                p += 1;
            }
            host = &uri[h0..p];
        }
        term = b.get(p).copied();
        hosts.push(host.to_string());
        let mut port = String::new();
        if term == Some(b':') {
            p += 1;
            let p0 = p;
            while p < b.len() && !matches!(b[p], b'/' | b'?' | b',') {
                p += 1;
            }
            port = uri[p0..p].to_string();
            any_port = true;
            term = b.get(p).copied();
        }
        ports.push(port);
        if term != Some(b',') {
            break;
        }
        p += 1;
    }
    let hoststr = hosts.join(",");
    if !hoststr.is_empty() {
        store(&mut raw, "host", uri_decode(&hoststr)?)?;
    }
    let portstr = ports.join(",");
    if any_port && !portstr.is_empty() {
        store(&mut raw, "port", uri_decode(&portstr)?)?;
    }

    // /dbname
    if let Some(t) = term {
        if t != b'?' {
            p += 1; // '/'
            let d0 = p;
            while p < b.len() && b[p] != b'?' {
                p += 1;
            }
            let dbname = &uri[d0..p];
            if !dbname.is_empty() {
                store(&mut raw, "dbname", uri_decode(dbname)?)?;
            }
            term = b.get(p).copied();
        }
    }

    // ?params
    if term.is_some() {
        p += 1;
        parse_uri_params(&uri[p.min(uri.len())..], &mut raw)?;
    }
    Ok(raw)
}

fn parse_uri_params(params: &str, raw: &mut Raw) -> Result<(), ConnInfoError> {
    if params.is_empty() {
        return Ok(());
    }
    for pair in params.split('&') {
        let mut parts = pair.splitn(2, '=');
        let key = parts.next().unwrap_or("");
        let value = match parts.next() {
            Some(v) => v,
            None => {
                return Err(ConnInfoError::new(format!(
                    "missing key/value separator \"=\" in URI query parameter: \"{pair}\""
                )))
            }
        };
        if value.contains('=') {
            return Err(ConnInfoError::new(format!(
                "extra key/value separator \"=\" in URI query parameter: \"{key}\""
            )));
        }
        let key = uri_decode(key)?;
        let value = uri_decode(value)?;
        let (key, value) = if key == "ssl" && value == "true" {
            ("sslmode".to_string(), "require".to_string())
        } else {
            (key, value)
        };
        let k = if key == "requiressl" {
            "sslmode"
        } else {
            key.as_str()
        };
        if !known_keyword(k) {
            return Err(ConnInfoError::new(format!(
                "invalid URI query parameter: \"{key}\""
            )));
        }
        store(raw, &key, value)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Defaults and validation

/// libpq's `pqParseIntParam`: an integer with optional surrounding whitespace.
fn parse_int_param(value: &str, keyword: &str) -> Result<i64, ConnInfoError> {
    value
        .trim_matches(is_space)
        .parse::<i32>()
        .map(i64::from)
        .map_err(|_| {
            ConnInfoError::new(format!(
                "invalid integer value \"{value}\" for connection option \"{keyword}\""
            ))
        })
}

fn parse_port(value: &str) -> Result<u16, ConnInfoError> {
    let n = parse_int_param(value, "port")?;
    if !(1..=65535).contains(&n) {
        return Err(ConnInfoError::new(format!(
            "invalid port number: \"{value}\""
        )));
    }
    Ok(n as u16)
}

fn unsupported(keyword: &str, value: &str, why: &str) -> ConnInfoError {
    ConnInfoError::new(format!(
        "connection option \"{keyword}\" (value \"{value}\") is not supported: {why}"
    ))
}

fn default_socket_dir() -> PathBuf {
    if Path::new(DEFAULT_SOCKET_DIR).is_dir() {
        PathBuf::from(DEFAULT_SOCKET_DIR)
    } else {
        PathBuf::from(FALLBACK_SOCKET_DIR)
    }
}

/// libpq's `is_unixsock_path`: an absolute path (or '@' for Linux abstract sockets).
fn is_unixsock_path(h: &str) -> bool {
    h.starts_with('/') || h.starts_with('@')
}

fn build_config(raw: Raw, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConnInfoError> {
    // Explicit settings (last wins), then environment fallbacks for the rest.
    let mut explicit: HashMap<&str, String> = HashMap::new();
    for (k, v) in &raw {
        let kw = KEYWORDS.iter().find(|(kw, _)| kw == k).map(|(kw, _)| *kw);
        if let Some(kw) = kw {
            explicit.insert(kw, v.clone());
        }
    }
    let mut vals: HashMap<&str, String> = explicit.clone();
    for (kw, var) in KEYWORDS {
        if vals.contains_key(kw) {
            continue;
        }
        if let Some(var) = var {
            if let Some(v) = env(var) {
                vals.insert(kw, v);
                continue;
            }
        }
        if *kw == "sslmode" {
            if let Some(r) = env("PGREQUIRESSL") {
                if r.starts_with('1') {
                    vals.insert(kw, "require".to_string());
                }
            }
        }
    }
    let get = |k: &str| -> Option<&str> { vals.get(k).map(|s| s.as_str()) };
    let nonempty = |k: &str| -> Option<&str> { get(k).filter(|s| !s.is_empty()) };

    // Features we do not implement: refuse when they ask for something.
    if let Some(v) = nonempty("service") {
        return Err(unsupported(
            "service",
            v,
            "connection service files are not implemented",
        ));
    }
    for k in ["sslcert", "sslkey", "sslcrl", "sslcrldir", "requirepeer"] {
        if let Some(v) = explicit.get(k).filter(|v| !v.is_empty()) {
            return Err(unsupported(k, v, "not implemented by this client"));
        }
    }
    if let Some(v) = nonempty("require_auth") {
        return Err(unsupported(
            "require_auth",
            v,
            "not implemented by this client",
        ));
    }
    if let Some(v) = nonempty("channel_binding") {
        match v {
            "disable" | "prefer" => {}
            "require" => {
                return Err(unsupported(
                    "channel_binding",
                    v,
                    "SCRAM channel binding is not implemented",
                ))
            }
            _ => {
                return Err(ConnInfoError::new(format!(
                    "invalid channel_binding value: \"{v}\""
                )))
            }
        }
    }
    if let Some(v) = nonempty("gssencmode") {
        match v {
            "disable" | "prefer" | "allow" => {}
            "require" => {
                return Err(ConnInfoError::new(
                    "gssencmode value \"require\" invalid when GSSAPI support is not compiled in",
                ))
            }
            _ => {
                return Err(ConnInfoError::new(format!(
                    "invalid gssencmode value: \"{v}\""
                )))
            }
        }
    }
    if let Some(v) = nonempty("target_session_attrs") {
        match v {
            "any" => {}
            "read-write" | "read-only" | "primary" | "standby" | "prefer-standby" => {
                return Err(unsupported(
                    "target_session_attrs",
                    v,
                    "only \"any\" is implemented",
                ))
            }
            _ => {
                return Err(ConnInfoError::new(format!(
                    "invalid target_session_attrs value: \"{v}\""
                )))
            }
        }
    }
    if let Some(v) = nonempty("load_balance_hosts") {
        match v {
            "disable" => {}
            "random" => {
                return Err(unsupported(
                    "load_balance_hosts",
                    v,
                    "only \"disable\" is implemented",
                ))
            }
            _ => {
                return Err(ConnInfoError::new(format!(
                    "invalid load_balance_hosts value: \"{v}\""
                )))
            }
        }
    }
    if let Some(v) = nonempty("sslnegotiation") {
        match v {
            "postgres" => {}
            "direct" => {
                return Err(unsupported(
                    "sslnegotiation",
                    v,
                    "only \"postgres\" is implemented",
                ))
            }
            _ => {
                return Err(ConnInfoError::new(format!(
                    "invalid sslnegotiation value: \"{v}\""
                )))
            }
        }
    }

    // sslmode / sslrootcert
    let sslrootcert = nonempty("sslrootcert").map(PathBuf::from);
    let sslmode = match nonempty("sslmode") {
        Some(v) => SslMode::from_keyword(v)
            .ok_or_else(|| ConnInfoError::new(format!("invalid sslmode value: \"{v}\"")))?,
        // libpq 16: sslrootcert=system without an sslmode strengthens the default.
        None if sslrootcert.as_deref() == Some(Path::new("system")) => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if sslrootcert.as_deref() == Some(Path::new("system"))
        && !matches!(sslmode, SslMode::VerifyFull)
    {
        return Err(ConnInfoError::new(format!(
            "weak sslmode \"{sslmode}\" may not be used with sslrootcert=system (use \"verify-full\")"
        )));
    }

    // port
    let port = match nonempty("port") {
        None => DEFAULT_PORT,
        Some(v) => {
            let mut port: Option<u16> = None;
            for item in v.split(',') {
                let p = if item.is_empty() {
                    DEFAULT_PORT
                } else {
                    parse_port(item)?
                };
                match port {
                    None => port = Some(p),
                    Some(q) if q != p => {
                        return Err(ConnInfoError::new(format!(
                            "different port numbers per host are not supported: \"{v}\""
                        )))
                    }
                    Some(_) => {}
                }
            }
            port.unwrap_or(DEFAULT_PORT)
        }
    };

    // hostaddr / hosts
    let hostaddr = match nonempty("hostaddr") {
        None => None,
        Some(v) if v.contains(',') => {
            return Err(ConnInfoError::new(format!(
                "multiple hostaddr values are not supported: \"{v}\""
            )))
        }
        Some(v) => {
            if v.parse::<std::net::IpAddr>().is_err() {
                return Err(ConnInfoError::new(format!(
                    "could not parse network address \"{v}\""
                )));
            }
            Some(v.to_string())
        }
    };
    let mut hosts = Vec::new();
    match nonempty("host") {
        None => match &hostaddr {
            Some(a) => hosts.push(Host::Tcp(a.clone())),
            None => hosts.push(Host::Unix(default_socket_dir())),
        },
        Some(v) => {
            for h in v.split(',') {
                if h.is_empty() {
                    match &hostaddr {
                        Some(a) => hosts.push(Host::Tcp(a.clone())),
                        None => hosts.push(Host::Unix(default_socket_dir())),
                    }
                } else if h.starts_with('@') {
                    return Err(unsupported(
                        "host",
                        h,
                        "abstract Unix sockets are not implemented",
                    ));
                } else if is_unixsock_path(h) {
                    hosts.push(Host::Unix(PathBuf::from(h)));
                } else {
                    hosts.push(Host::Tcp(h.to_string()));
                }
            }
            if hostaddr.is_some() && hosts.len() > 1 {
                return Err(ConnInfoError::new(format!(
                    "could not match {} host names to 1 hostaddr values",
                    hosts.len()
                )));
            }
        }
    }

    // user, dbname
    let user = match nonempty("user") {
        Some(u) => u.to_string(),
        None => os_user_name().ok_or_else(|| {
            ConnInfoError::new("could not look up local user name; set \"user\" or PGUSER")
        })?,
    };
    let dbname = nonempty("dbname").unwrap_or(&user).to_string();

    // connect_timeout: <= 0 means none; libpq enforces a 2 s minimum.
    let connect_timeout = match nonempty("connect_timeout") {
        None => None,
        Some(v) => {
            let n = parse_int_param(v, "connect_timeout")?;
            if n <= 0 {
                None
            } else {
                Some(Duration::from_secs(n.max(2) as u64))
            }
        }
    };

    let application_name = nonempty("application_name")
        .or_else(|| nonempty("fallback_application_name"))
        .map(str::to_string);
    let options = nonempty("options").map(str::to_string);

    // password: explicit / PGPASSWORD, else the password file.
    let mut password = nonempty("password").map(str::to_string);
    if password.is_none() {
        let passfile = nonempty("passfile").map(PathBuf::from).or_else(|| {
            env("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| Path::new(&h).join(".pgpass"))
        });
        if let Some(pf) = passfile {
            let pw_host = match (&hosts[0], &hostaddr) {
                (Host::Tcp(h), _) => h.clone(),
                (Host::Unix(d), _) => {
                    let d = d.to_string_lossy().to_string();
                    if d == DEFAULT_SOCKET_DIR || d == FALLBACK_SOCKET_DIR {
                        "localhost".to_string()
                    } else {
                        d
                    }
                }
            };
            password = password_from_file(&pf, &pw_host, &port.to_string(), &dbname, &user);
        }
    }

    Ok(Config {
        hosts,
        hostaddr,
        port,
        dbname,
        user,
        password,
        sslmode,
        sslrootcert,
        application_name,
        connect_timeout,
        options,
    })
}

// ---------------------------------------------------------------------------------------------
// Password file

/// libpq's `pwdfMatchesString`: returns the rest of the line after a matching field.
fn pgpass_field_matches<'a>(line: &'a str, token: &str) -> Option<&'a str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let lb = line.as_bytes();
    let tb = token.as_bytes();
    let (mut i, mut j) = (0, 0);
    while i < lb.len() {
        let mut escaped = false;
        if lb[i] == b'\\' {
            i += 1;
            escaped = true;
            if i >= lb.len() {
                return None;
            }
        }
        if lb[i] == b':' && j == tb.len() && !escaped {
            return line.get(i + 1..);
        }
        if j == tb.len() || lb[i] != tb[j] {
            return None;
        }
        i += 1;
        j += 1;
    }
    None
}

/// Looks `host:port:dbname:user` up in a password file (libpq's `passwordFromFile`). Ignores
/// files that are missing, not plain files or readable by group/others (libpq warns and ignores).
pub fn password_from_file(
    path: &Path,
    host: &str,
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::metadata(path).ok()?;
    if !md.is_file() || md.permissions().mode() & 0o077 != 0 {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    for line in text.lines() {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let rest = pgpass_field_matches(line, host)
            .and_then(|r| pgpass_field_matches(r, port))
            .and_then(|r| pgpass_field_matches(r, dbname))
            .and_then(|r| pgpass_field_matches(r, user));
        if let Some(rest) = rest {
            let mut pw = String::new();
            let mut chars = rest.chars().peekable();
            while let Some(c) = chars.next() {
                if c == ':' {
                    break;
                }
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        pw.push(n);
                        continue;
                    }
                }
                pw.push(c);
            }
            return Some(pw);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// OS lookups

fn passwd_entry<T>(f: impl FnOnce(&libc::passwd) -> Option<T>) -> Option<T> {
    // SAFETY: getpwuid_r fills `pwd` with pointers into `buf`, which outlives their use in `f`.
    unsafe {
        let uid = libc::geteuid();
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16384];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc != 0 || result.is_null() {
            return None;
        }
        f(&pwd)
    }
}

fn cstr_field(p: *const libc::c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null NUL-terminated string from getpwuid_r.
    let s = unsafe { std::ffi::CStr::from_ptr(p) };
    Some(s.to_string_lossy().into_owned()).filter(|s| !s.is_empty())
}

/// The effective user's login name (libpq's `pg_fe_getauthname`).
pub fn os_user_name() -> Option<String> {
    passwd_entry(|p| cstr_field(p.pw_name))
}

fn os_home_dir() -> Option<String> {
    passwd_entry(|p| cstr_field(p.pw_dir))
}

// ---------------------------------------------------------------------------------------------
// Masking

/// Renders `conninfo` with every password value replaced by `********`, in both the
/// keyword/value and the URI form. Works on strings that do not parse too: it errs on the side
/// of masking too much (an unterminated quoted password masks the rest of the string).
pub fn mask_password(conninfo: &str) -> String {
    if uri_prefix_len(conninfo) > 0 {
        mask_uri(conninfo)
    } else {
        mask_keyword_value(conninfo)
    }
}

fn is_password_keyword(k: &str) -> bool {
    matches!(k, "password" | "sslpassword")
}

fn mask_keyword_value(s: &str) -> String {
    // Byte-oriented scan (all delimiters are ASCII, so slicing at them is UTF-8 safe).
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let space = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let mut copied = 0; // s[..copied] is already in `out`
    while i < b.len() {
        if space(b[i]) {
            i += 1;
            continue;
        }
        let k0 = i;
        while i < b.len() && b[i] != b'=' && !space(b[i]) {
            i += 1;
        }
        let name = &s[k0..i];
        while i < b.len() && space(b[i]) {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            // Malformed: no '='. Move on; what follows is handled as a new keyword.
            continue;
        }
        i += 1;
        while i < b.len() && space(b[i]) {
            i += 1;
        }
        let v0 = i;
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            while i < b.len() {
                match b[i] {
                    b'\\' => i += 2,
                    b'\'' => {
                        i += 1;
                        break;
                    }
                    _ => i += 1,
                }
            }
        } else {
            while i < b.len() && !space(b[i]) {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
        }
        let v1 = i.min(b.len());
        i = v1;
        if is_password_keyword(name) {
            out.push_str(&s[copied..v0]);
            out.push_str(MASK);
            copied = v1;
        }
    }
    out.push_str(&s[copied..]);
    out
}

fn mask_uri(s: &str) -> String {
    let prefix = uri_prefix_len(s);
    let mut out = String::with_capacity(s.len());
    // Authority: up to the first '/' after the last '@' that precedes the query, so that an
    // unencoded '/' or '@' inside the password is still masked.
    let query_start = s[prefix..].find('?').map(|q| q + prefix).unwrap_or(s.len());
    let last_at = s[prefix..query_start].rfind('@').map(|a| a + prefix);
    let mut p = prefix;
    out.push_str(&s[..prefix]);
    if let Some(at) = last_at {
        let userinfo = &s[prefix..at];
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
    // Rest up to the query verbatim.
    let q = s[p..].find('?').map(|q| q + p);
    match q {
        None => {
            out.push_str(&s[p..]);
        }
        Some(q) => {
            out.push_str(&s[p..=q]);
            let params = &s[q + 1..];
            let mut first = true;
            for pair in params.split('&') {
                if !first {
                    out.push('&');
                }
                first = false;
                let (k, has_v) = match pair.find('=') {
                    Some(e) => (&pair[..e], true),
                    None => (pair, false),
                };
                let kd = uri_decode(k).unwrap_or_else(|_| k.to_string());
                if has_v && is_password_keyword(&kd) {
                    out.push_str(k);
                    out.push('=');
                    out.push_str(MASK);
                } else {
                    out.push_str(pair);
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    fn p(s: &str) -> Result<Config, ConnInfoError> {
        parse_with_env(s, &env_of(&[("PGUSER", "alice")]))
    }

    fn err(s: &str) -> String {
        p(s).unwrap_err().to_string()
    }

    #[test]
    fn keyword_value_basic() {
        let c = p("host=db.example.com port=5433 dbname='my db' user=bob password=secret").unwrap();
        assert_eq!(c.hosts, vec![Host::Tcp("db.example.com".into())]);
        assert_eq!(c.port, 5433);
        assert_eq!(c.dbname, "my db");
        assert_eq!(c.user, "bob");
        assert_eq!(c.password.as_deref(), Some("secret"));
        assert_eq!(c.sslmode, SslMode::Prefer);
        assert_eq!(c.connect_timeout, None);
    }

    #[test]
    fn keyword_value_quoting_like_libpq() {
        let c = p(r"password='it\'s a \\ test' application_name=a\ b dbname = x").unwrap();
        assert_eq!(c.password.as_deref(), Some(r"it's a \ test"));
        assert_eq!(c.application_name.as_deref(), Some("a b"));
        assert_eq!(c.dbname, "x");
        // Empty quoted value; surrounding whitespace; tabs and newlines are blanks.
        let c = p("  user=''\tdbname=d\n host = h  ").unwrap();
        // An explicit empty user blocks PGUSER and falls back to the OS user, as in libpq.
        assert_eq!(Some(c.user.clone()), os_user_name());
        assert_eq!(c.dbname, "d");
        assert_eq!(c.hosts, vec![Host::Tcp("h".into())]);
        // Last occurrence wins.
        assert_eq!(p("port=1 port=2").unwrap().port, 2);
        // Doubled quotes are not an escape in libpq: 'a''b' is 'a' followed by junk → a value
        // "a" and then a keyword "'b'" without '='.
        assert!(err("password='a''b'").contains("missing \"=\""));
    }

    #[test]
    fn empty_string_uses_defaults() {
        let c = parse_with_env(
            "",
            &env_of(&[("PGUSER", "u"), ("PGPORT", "6000"), ("PGHOST", "h1,h2")]),
        )
        .unwrap();
        assert_eq!(c.user, "u");
        assert_eq!(c.dbname, "u");
        assert_eq!(c.port, 6000);
        assert_eq!(
            c.hosts,
            vec![Host::Tcp("h1".into()), Host::Tcp("h2".into())]
        );
        let c = parse_with_env("", &env_of(&[("PGUSER", "u")])).unwrap();
        assert_eq!(c.port, 5432);
        match &c.hosts[..] {
            [Host::Unix(d)] => {
                assert!(d == Path::new(DEFAULT_SOCKET_DIR) || d == Path::new(FALLBACK_SOCKET_DIR))
            }
            other => panic!("unexpected hosts {other:?}"),
        }
    }

    #[test]
    fn env_defaults() {
        let env = env_of(&[
            ("PGUSER", "envuser"),
            ("PGDATABASE", "envdb"),
            ("PGPASSWORD", "envpw"),
            ("PGSSLMODE", "require"),
            ("PGCONNECT_TIMEOUT", "7"),
            ("PGAPPNAME", "app"),
            ("PGOPTIONS", "-c work_mem=1MB"),
            ("PGHOSTADDR", "127.0.0.1"),
        ]);
        let c = parse_with_env("", &env).unwrap();
        assert_eq!(c.user, "envuser");
        assert_eq!(c.dbname, "envdb");
        assert_eq!(c.password.as_deref(), Some("envpw"));
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(7)));
        assert_eq!(c.application_name.as_deref(), Some("app"));
        assert_eq!(c.options.as_deref(), Some("-c work_mem=1MB"));
        assert_eq!(c.hostaddr.as_deref(), Some("127.0.0.1"));
        assert_eq!(c.hosts, vec![Host::Tcp("127.0.0.1".into())]);
        // Explicit settings beat the environment.
        let c = parse_with_env("user=x sslmode=disable", &env).unwrap();
        assert_eq!(c.user, "x");
        assert_eq!(c.sslmode, SslMode::Disable);
        // PGREQUIRESSL=1 → require, unless PGSSLMODE is set.
        let c = parse_with_env("", &env_of(&[("PGUSER", "u"), ("PGREQUIRESSL", "1")])).unwrap();
        assert_eq!(c.sslmode, SslMode::Require);
    }

    #[test]
    fn os_user_default() {
        let c = parse_with_env("host=h", &env_of(&[])).unwrap();
        assert_eq!(Some(c.user.clone()), os_user_name());
        assert_eq!(c.dbname, c.user);
    }

    #[test]
    fn connect_timeout_rules() {
        assert_eq!(p("connect_timeout=0").unwrap().connect_timeout, None);
        assert_eq!(p("connect_timeout=-5").unwrap().connect_timeout, None);
        assert_eq!(
            p("connect_timeout=1").unwrap().connect_timeout,
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            p("connect_timeout=' 10 '").unwrap().connect_timeout,
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            err("connect_timeout=abc"),
            "invalid integer value \"abc\" for connection option \"connect_timeout\""
        );
    }

    #[test]
    fn errors_are_libpq_like() {
        assert_eq!(err("foo=bar"), "invalid connection option \"foo\"");
        assert_eq!(
            err("host"),
            "missing \"=\" after \"host\" in connection info string"
        );
        assert_eq!(
            err("password='abc"),
            "unterminated quoted string in connection info string"
        );
        assert_eq!(
            err("port=abc"),
            "invalid integer value \"abc\" for connection option \"port\""
        );
        assert_eq!(err("port=70000"), "invalid port number: \"70000\"");
        assert_eq!(err("port=0"), "invalid port number: \"0\"");
        assert_eq!(err("sslmode=maybe"), "invalid sslmode value: \"maybe\"");
        assert!(err("service=foo").contains("not supported"));
        assert!(err("sslcert=/x.crt").contains("sslcert"));
        assert!(err("channel_binding=require").contains("channel_binding"));
        assert!(err("target_session_attrs=read-write").contains("target_session_attrs"));
        assert!(err("hostaddr=not-an-ip").contains("could not parse network address"));
        assert!(err("host=a,b port=1,2").contains("different port numbers"));
        // Accepted and ignored.
        p("keepalives=1 keepalives_idle=30 sslsni=1 client_encoding=UTF8 replication=database")
            .unwrap();
        // requiressl compatibility.
        assert_eq!(p("requiressl=1").unwrap().sslmode, SslMode::Require);
    }

    #[test]
    fn sslmodes_and_rootcert() {
        for (s, m) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Allow),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let c = p(&format!("sslmode={s}")).unwrap();
            assert_eq!(c.sslmode, m);
            assert_eq!(m.as_str(), s);
        }
        let c = p("sslrootcert=/etc/ca.pem sslmode=verify-ca").unwrap();
        assert_eq!(c.sslrootcert.as_deref(), Some(Path::new("/etc/ca.pem")));
        let c = p("sslrootcert=system").unwrap();
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert!(err("sslrootcert=system sslmode=require").contains("weak sslmode"));
    }

    #[test]
    fn unix_hosts() {
        let c = p("host=/tmp/sock dir port=5").unwrap_err();
        // "dir" is a keyword without '=' → error; quoted form works:
        let _ = c;
        let c = p("host='/tmp/sock dir' port=5").unwrap();
        assert_eq!(c.hosts, vec![Host::Unix(PathBuf::from("/tmp/sock dir"))]);
        let c = p("host=/a,db2").unwrap();
        assert_eq!(
            c.hosts,
            vec![Host::Unix("/a".into()), Host::Tcp("db2".into())]
        );
    }

    #[test]
    fn uri_basic() {
        let c = p("postgresql://bob:s3cret@db.example.com:6543/mydb?sslmode=require&application_name=x%20y")
            .unwrap();
        assert_eq!(c.user, "bob");
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        assert_eq!(c.hosts, vec![Host::Tcp("db.example.com".into())]);
        assert_eq!(c.port, 6543);
        assert_eq!(c.dbname, "mydb");
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.application_name.as_deref(), Some("x y"));

        let c = p("postgres://").unwrap();
        assert_eq!(c.user, "alice");
        assert_eq!(c.port, 5432);
        assert!(matches!(c.hosts[..], [Host::Unix(_)]));

        let c = p("postgres://h/").unwrap();
        assert_eq!(c.dbname, "alice");
        let c = p("postgresql://h?dbname=d&port=7").unwrap();
        assert_eq!(c.dbname, "d");
        assert_eq!(c.port, 7);
        let c = p("postgresql://h?ssl=true").unwrap();
        assert_eq!(c.sslmode, SslMode::Require);
    }

    #[test]
    fn uri_percent_decoding_and_ipv6() {
        let c = p("postgresql://us%40er:p%3Aw%2Fd@[::1]:5433/d%20b").unwrap();
        assert_eq!(c.user, "us@er");
        assert_eq!(c.password.as_deref(), Some("p:w/d"));
        assert_eq!(c.hosts, vec![Host::Tcp("::1".into())]);
        assert_eq!(c.port, 5433);
        assert_eq!(c.dbname, "d b");
        let c = p("postgresql://%2Fvar%2Frun%2Fpostgresql/db").unwrap();
        assert_eq!(c.hosts, vec![Host::Unix("/var/run/postgresql".into())]);
        let c = p("postgresql:///db?host=/tmp").unwrap();
        assert_eq!(c.hosts, vec![Host::Unix("/tmp".into())]);
        assert_eq!(c.dbname, "db");
        let c = p("postgresql://[2001:db8::1],h2/db").unwrap();
        assert_eq!(
            c.hosts,
            vec![Host::Tcp("2001:db8::1".into()), Host::Tcp("h2".into())]
        );
        let c = p("postgresql://user@/db").unwrap();
        assert_eq!(c.user, "user");
        assert_eq!(c.password, None);
    }

    #[test]
    fn uri_errors() {
        assert!(err("postgresql://[::1/db").contains("matching \"]\""));
        assert!(err("postgresql://[]/db").contains("may not be empty"));
        assert!(err("postgresql://[::1]x/db").contains("unexpected character \"x\""));
        assert_eq!(
            err("postgresql://h/db?foo=1"),
            "invalid URI query parameter: \"foo\""
        );
        assert!(err("postgresql://h/db?sslmode").contains("missing key/value separator"));
        assert!(err("postgresql://h/db?a=b=c").contains("extra key/value separator"));
        assert!(err("postgresql://h/d%zz").contains("invalid percent-encoded token"));
        assert!(err("postgresql://h/d%00").contains("forbidden value %00"));
        assert_eq!(
            err("postgresql://h:abc/db"),
            "invalid integer value \"abc\" for connection option \"port\""
        );
        assert_eq!(
            err("postgresql://h/db?sslmode=nope"),
            "invalid sslmode value: \"nope\""
        );
    }

    #[test]
    fn masking_keyword_value() {
        assert_eq!(
            mask_password("host=a password=secret user=b"),
            "host=a password=******** user=b"
        );
        assert_eq!(
            mask_password(r"password = 'it\'s secret'  dbname=x"),
            "password = ********  dbname=x"
        );
        assert_eq!(mask_password("password=a\\ b c=d"), "password=******** c=d");
        // Unterminated quote: everything after is masked.
        assert_eq!(
            mask_password("user=u password='abc def"),
            "user=u password=********"
        );
        // Fails to parse (unknown keyword, missing '=') but still masked.
        assert_eq!(
            mask_password("bogus password=pw junk"),
            "bogus password=******** junk"
        );
        assert_eq!(mask_password("sslpassword=k"), "sslpassword=********");
        assert_eq!(mask_password("host=a"), "host=a");
        assert_eq!(mask_password("password="), "password=********");
        // Non-ASCII survives.
        assert_eq!(
            mask_password("dbname=bäh password=ö"),
            "dbname=bäh password=********"
        );
    }

    #[test]
    fn masking_uri() {
        assert_eq!(
            mask_password("postgresql://bob:secret@host:5432/db"),
            "postgresql://bob:********@host:5432/db"
        );
        assert_eq!(
            mask_password("postgres://bob@host/db?password=x&sslmode=require"),
            "postgres://bob@host/db?password=********&sslmode=require"
        );
        assert_eq!(
            mask_password("postgres://bob:p@ss/w@host/db"),
            "postgres://bob:********@host/db"
        );
        assert_eq!(mask_password("postgres://host/db"), "postgres://host/db");
        assert_eq!(
            mask_password("postgres://h/db?pass%77ord=zz"),
            "postgres://h/db?pass%77ord=********"
        );
    }

    #[test]
    fn display_masked_and_debug() {
        let c = p("host=h password='p w' dbname='a b' application_name=x").unwrap();
        let s = c.display_masked();
        assert!(s.contains("password=********"), "{s}");
        assert!(!s.contains("p w"));
        assert!(s.contains("dbname='a b'"));
        let d = format!("{c:?}");
        assert!(!d.contains("p w"), "{d}");
        // display_masked output parses back (minus the password).
        let back = p(&s).unwrap();
        assert_eq!(back.dbname, "a b");
        assert_eq!(back.hosts, c.hosts);
    }

    #[test]
    fn explicit_password_is_only_the_strings_own() {
        for (s, want) in [
            ("host=h password=x", true),
            ("host=h password='a b'", true),
            ("host=h", false),
            ("host=h password=''", false),
            ("password=x password=''", false),
            ("password='' password=x", true),
            ("host=h passfile=/var/lib/postgresql/.pgpass", false),
            ("postgresql://u:pw@h/db", true),
            ("postgresql://u@h/db?password=pw", true),
            ("postgresql://u@h/db", false),
            ("postgresql://u:@h/db", false),
        ] {
            assert_eq!(has_explicit_password(s).map_err(|e| e.to_string()), Ok(want), "{s}");
        }
        assert!(has_explicit_password("host='unterminated").is_err());
    }

    #[test]
    fn quote_value_roundtrip() {
        for v in ["", "plain", "a b", "it's", r"back\slash", "tab\there"] {
            let s = format!("application_name={}", quote_value(v));
            let c = p(&s).unwrap();
            let expect = if v.is_empty() {
                None
            } else {
                Some(v.to_string())
            };
            assert_eq!(c.application_name, expect, "{s}");
        }
    }

    #[test]
    fn pgpass_lookup() {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pgsub-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pgpass");
        let mut fh = std::fs::File::create(&f).unwrap();
        writeln!(fh, "# comment").unwrap();
        writeln!(fh, "other:5432:*:bob:nope").unwrap();
        writeln!(fh, r"db\:x:*:mydb:bob:pa\:ss\\w").unwrap();
        writeln!(fh, "localhost:5432:*:*:sock").unwrap();
        drop(fh);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let fs = f.to_string_lossy().to_string();
        let env = env_of(&[("PGPASSFILE", fs.as_str()), ("PGUSER", "bob")]);
        let c = parse_with_env("host=db:x port=6000 dbname=mydb", &env).unwrap();
        assert_eq!(c.password.as_deref(), Some(r"pa:ss\w"));
        let c = parse_with_env("host=elsewhere dbname=mydb", &env).unwrap();
        assert_eq!(c.password, None);
        let c = parse_with_env("dbname=x", &env).unwrap(); // default socket dir → localhost
        assert_eq!(c.password.as_deref(), Some("sock"));
        // Explicit password wins.
        let c = parse_with_env("host=db:x dbname=mydb password=given", &env).unwrap();
        assert_eq!(c.password.as_deref(), Some("given"));
        // passfile keyword, HOME fallback.
        let c = parse_with_env(
            &format!("passfile={fs} dbname=x"),
            &env_of(&[("PGUSER", "bob")]),
        )
        .unwrap();
        assert_eq!(c.password.as_deref(), Some("sock"));
        // Insecure permissions → ignored.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = parse_with_env("dbname=x", &env).unwrap();
        assert_eq!(c.password, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
