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
//!   "foo"`). Keywords naming features this client does not implement (service files, GSSAPI
//!   encryption, `load_balance_hosts=random`, ...) are rejected with a message saying so when they
//!   ask for something, and ignored when they are harmless (keepalive tuning, `client_encoding`,
//!   ...).
//!
//! Defaults as libpq: host `PGHOST` else the Unix socket directory `/var/run/postgresql` (Debian's
//! default; `/tmp` when that directory does not exist), port `PGPORT` else 5432, user `PGUSER`
//! else the OS user name, dbname `PGDATABASE` else the user name, password `PGPASSWORD` else the
//! password file (`passfile` / `PGPASSFILE` / `~/.pgpass`), sslmode `PGSSLMODE` else `prefer`
//! (`verify-full` when `sslrootcert=system`), connect_timeout `PGCONNECT_TIMEOUT` (0 or negative
//! = none, 1 means 2 s as in libpq).
//!
//! Several hosts (`host=a,b`) take one port each or one for all (`port=5432,5433`), as libpq;
//! limitation (documented, checked): at most one `hostaddr`; see [`Config::hosts`].
//!
//! Layout: this file owns the types and the entry points; `keywords.rs` is the one table of
//! keywords (environment variable, default, secret, how they are treated); `kv.rs` and `uri.rs`
//! scan the two forms into tokens with byte spans and parse them; `build.rs` turns the settings
//! into a [`Config`]; `pgpass.rs` reads the password file and the OS user; `mask.rs` masks
//! passwords using the same tokens.

mod build;
mod keywords;
mod kv;
mod mask;
mod pgpass;
mod uri;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use mask::mask_password;
pub use pgpass::{os_user_name, password_from_file};

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

/// libpq's `channel_binding`: whether SCRAM binds itself to the TLS connection
/// (SCRAM-SHA-256-PLUS with tls-server-end-point).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ChannelBinding {
    /// Never.
    Disable,
    /// When the connection is encrypted and the server offers it.
    #[default]
    Prefer,
    /// Always: authentication without it (no TLS, no SCRAM-SHA-256-PLUS, or another method)
    /// fails.
    Require,
}

impl ChannelBinding {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBinding::Disable => "disable",
            ChannelBinding::Prefer => "prefer",
            ChannelBinding::Require => "require",
        }
    }
}

/// A TLS protocol version as libpq spells it (`ssl_min_protocol_version`,
/// `ssl_max_protocol_version`), in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    Tls1_0,
    Tls1_1,
    Tls1_2,
    Tls1_3,
}

impl TlsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls1_0 => "TLSv1",
            TlsVersion::Tls1_1 => "TLSv1.1",
            TlsVersion::Tls1_2 => "TLSv1.2",
            TlsVersion::Tls1_3 => "TLSv1.3",
        }
    }

    /// libpq's spelling, compared without regard to case as libpq does.
    pub fn from_keyword(s: &str) -> Option<TlsVersion> {
        [TlsVersion::Tls1_0, TlsVersion::Tls1_1, TlsVersion::Tls1_2, TlsVersion::Tls1_3]
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
    }
}

/// libpq's `target_session_attrs` (14+): which server of the host list is acceptable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum TargetSessionAttrs {
    /// The first server that accepts the connection.
    #[default]
    Any,
    /// A server whose sessions accept writes by default (not a standby, not
    /// `default_transaction_read_only`).
    ReadWrite,
    /// The opposite of `ReadWrite`.
    ReadOnly,
    /// A server not in hot standby.
    Primary,
    /// A server in hot standby.
    Standby,
    /// A standby if any host is one, else any server (a second pass over the list).
    PreferStandby,
}

impl TargetSessionAttrs {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }

    pub fn from_keyword(s: &str) -> Option<TargetSessionAttrs> {
        [
            TargetSessionAttrs::Any,
            TargetSessionAttrs::ReadWrite,
            TargetSessionAttrs::ReadOnly,
            TargetSessionAttrs::Primary,
            TargetSessionAttrs::Standby,
            TargetSessionAttrs::PreferStandby,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
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
    /// Hosts to try in order (libpq's comma-separated `host`). Never empty.
    pub hosts: Vec<Host>,
    /// The port of each host (as many as `hosts`): libpq's comma-separated `port`, one for all
    /// hosts or one each.
    pub ports: Vec<u16>,
    /// Numeric address to connect to instead of resolving the (first) host name; the host name
    /// is still used for certificate verification and the password file.
    pub hostaddr: Option<String>,
    /// The first host's port.
    pub port: u16,
    pub dbname: String,
    pub user: String,
    /// The first host's password (see `host_passwords`).
    pub password: Option<String>,
    /// The password for each host (as many as `hosts`): `password` from the string or
    /// `PGPASSWORD`, else that host's entry of the password file, as libpq looks it up per host.
    pub host_passwords: Vec<Option<String>>,
    pub sslmode: SslMode,
    /// Root certificates (PEM) for `verify-ca`/`verify-full`; the literal path `system` (or none)
    /// means the operating system's trust store.
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate (PEM, the chain after it) and its private key, for certificate
    /// authentication; when not set, libpq's `~/.postgresql/postgresql.crt` and `.key` are used
    /// if the certificate file exists.
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    /// The passphrase of an encrypted client key (PKCS#8).
    pub sslpassword: Option<String>,
    /// Certificate revocation lists (PEM): a file, and a directory whose every file is read;
    /// when neither is set, `~/.postgresql/root.crl` if it exists. Checked only when the
    /// certificate chain is (libpq's rule).
    pub sslcrl: Option<PathBuf>,
    pub sslcrldir: Option<PathBuf>,
    /// Send the host name as TLS Server Name Indication (never for IP addresses), libpq's
    /// `sslsni=1`, the default.
    pub sslsni: bool,
    /// TLS versions allowed (libpq's defaults: at least TLSv1.2, no maximum).
    pub ssl_min_protocol_version: TlsVersion,
    pub ssl_max_protocol_version: Option<TlsVersion>,
    pub channel_binding: ChannelBinding,
    /// Which server of the host list is acceptable.
    pub target_session_attrs: TargetSessionAttrs,
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
            .field("host_passwords", &self.host_passwords.iter().map(|p| p.as_ref().map(|_| MASK)).collect::<Vec<_>>())
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("sslcert", &self.sslcert)
            .field("sslkey", &self.sslkey)
            .field("sslpassword", &self.sslpassword.as_ref().map(|_| MASK))
            .field("sslcrl", &self.sslcrl)
            .field("sslcrldir", &self.sslcrldir)
            .field("sslsni", &self.sslsni)
            .field("ssl_min_protocol_version", &self.ssl_min_protocol_version)
            .field("ssl_max_protocol_version", &self.ssl_max_protocol_version)
            .field("target_session_attrs", &self.target_session_attrs)
            .field("ports", &self.ports)
            .field("channel_binding", &self.channel_binding)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("options", &self.options)
            .finish()
    }
}

impl Config {
    /// The settings a logical-replication client pins so that the publisher writes values in a
    /// form the subscriber reads back exactly, whatever the publisher's database or role sets:
    /// ISO dates (a `DateStyle` of `SQL, DMY` would swap day and month and print time zones as
    /// ambiguous abbreviations), `postgres` intervals, and floats with every digit (before 12,
    /// `extra_float_digits` 0 rounds them). PostgreSQL's walreceiver sends the same, as pg_dump
    /// does. And an empty `search_path`, which the walreceiver sets on a logical replication
    /// connection: OID alias values (regclass, regtype, …) print schema-qualified, so that the
    /// subscriber (which applies with an empty search_path too) reads them back as the same
    /// objects, and no user object placed on the path can stand in for a built-in function or
    /// operator in what the publisher runs for the subscriber.
    pub const OUTPUT_SETTINGS: &'static str =
        "-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 -c search_path=";

    /// Adds [`Config::OUTPUT_SETTINGS`] after the user's own `options`: the server applies
    /// command-line options in order, so these win over any of the same name while the user's
    /// other options stay.
    pub fn pin_output_settings(&mut self) {
        self.options = Some(match self.options.take() {
            Some(o) if !o.trim().is_empty() => format!("{o} {}", Self::OUTPUT_SETTINGS),
            _ => Self::OUTPUT_SETTINGS.to_string(),
        });
    }

    /// The configuration as a keyword/value connection string with the password replaced by
    /// `********` — safe to log.
    pub fn display_masked(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        let hosts = self.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(",");
        parts.push(format!("host={}", quote_value(&hosts)));
        if let Some(a) = &self.hostaddr {
            parts.push(format!("hostaddr={}", quote_value(a)));
        }
        parts.push(format!("port={}", self.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")));
        parts.push(format!("dbname={}", quote_value(&self.dbname)));
        parts.push(format!("user={}", quote_value(&self.user)));
        if self.password.is_some() {
            parts.push(format!("password={MASK}"));
        }
        parts.push(format!("sslmode={}", self.sslmode));
        if let Some(r) = &self.sslrootcert {
            parts.push(format!("sslrootcert={}", quote_value(&r.to_string_lossy())));
        }
        if let Some(c) = &self.sslcert {
            parts.push(format!("sslcert={}", quote_value(&c.to_string_lossy())));
        }
        if let Some(k) = &self.sslkey {
            parts.push(format!("sslkey={}", quote_value(&k.to_string_lossy())));
        }
        if self.sslpassword.is_some() {
            parts.push(format!("sslpassword={MASK}"));
        }
        for (k, v) in [("sslcrl", &self.sslcrl), ("sslcrldir", &self.sslcrldir)] {
            if let Some(v) = v {
                parts.push(format!("{k}={}", quote_value(&v.to_string_lossy())));
            }
        }
        if !self.sslsni {
            parts.push("sslsni=0".to_string());
        }
        if self.ssl_min_protocol_version != TlsVersion::Tls1_2 {
            parts.push(format!("ssl_min_protocol_version={}", self.ssl_min_protocol_version.as_str()));
        }
        if let Some(v) = self.ssl_max_protocol_version {
            parts.push(format!("ssl_max_protocol_version={}", v.as_str()));
        }
        if self.target_session_attrs != TargetSessionAttrs::Any {
            parts.push(format!("target_session_attrs={}", self.target_session_attrs.as_str()));
        }
        if self.channel_binding != ChannelBinding::Prefer {
            parts.push(format!("channel_binding={}", self.channel_binding.as_str()));
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
    if !v.is_empty() && !v.bytes().any(|c| kv::is_space(c) || c == b'\'' || c == b'\\') {
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
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConnInfoError {
    message: String,
}

impl ConnInfoError {
    fn new(message: impl Into<String>) -> Self {
        ConnInfoError { message: message.into() }
    }

    /// The message (same as `Display`).
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Parses a connection string, taking defaults from the process environment (`PGHOST`, ...).
pub fn parse(s: &str) -> Result<Config, ConnInfoError> {
    let env = |k: &str| -> Option<String> {
        match std::env::var(k) {
            Ok(v) => Some(v),
            Err(_) if k == "HOME" => pgpass::os_home_dir(),
            Err(_) => None,
        }
    };
    parse_with_env(s, &env)
}

/// Whether the string itself sets a non-empty password — not the environment (`PGPASSWORD`) nor
/// a password file. A subscription owned by a non-superuser must, so that it cannot borrow the
/// server's own credentials (PostgreSQL 16's `password_required`).
pub fn has_explicit_password(s: &str) -> Result<bool, ConnInfoError> {
    let raw = parse_settings(s)?;
    // Later settings override earlier ones.
    Ok(raw.iter().rev().find(|(k, _)| *k == "password").is_some_and(|(_, v)| !v.is_empty()))
}

/// Parses a connection string, taking defaults from `env` instead of the process environment
/// (`env("PGHOST")`, `env("HOME")` for `~/.pgpass`, ...). The OS user name (default user) and the
/// existence of the default socket directory still come from the system.
pub fn parse_with_env(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConnInfoError> {
    build::build_config(parse_settings(s)?, env)
}

/// Explicit settings in the order given (later ones override earlier ones), by keyword.
type Raw = Vec<(&'static str, String)>;

/// The settings a string makes, in either form.
fn parse_settings(s: &str) -> Result<Raw, ConnInfoError> {
    if uri::prefix_len(s) > 0 {
        uri::parse(s)
    } else {
        kv::parse(s)
    }
}

/// Records one setting: libpq's `requiressl` compatibility rewrite, then the keyword check.
fn store(raw: &mut Raw, keyword: &str, value: String) -> Result<(), ConnInfoError> {
    let (keyword, value) = if keyword == "requiressl" {
        ("sslmode", if value.starts_with('1') { "require" } else { "prefer" }.to_string())
    } else {
        (keyword, value)
    };
    let kw = keywords::lookup(keyword)
        .ok_or_else(|| ConnInfoError::new(format!("invalid connection option \"{keyword}\"")))?;
    raw.push((kw.name, value));
    Ok(())
}

#[cfg(test)]
mod tests;
