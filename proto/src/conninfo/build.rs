//! From parsed settings to a [`Config`]: the settings in effect (the string's own, then the
//! environment, then the keyword table's defaults), the checks of unimplemented features, and
//! one small function per `Config` field with libpq's rules and computed defaults (socket
//! directory, OS user, password file).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::keywords::{self, unsupported, KEYWORDS};
use super::kv::is_space;
use super::pgpass::{os_user_name, password_from_file};
use super::{
    ChannelBinding, Config, ConnInfoError, Host, Raw, SslMode, TargetSessionAttrs, TlsVersion, DEFAULT_PORT,
    DEFAULT_SOCKET_DIR, FALLBACK_SOCKET_DIR,
};

/// The settings in effect.
struct Settings<'e> {
    /// Set by the string (last occurrence wins), empty values included.
    explicit: HashMap<&'static str, String>,
    /// `explicit`, plus environment variables for the keywords the string does not set.
    values: HashMap<&'static str, String>,
    env: &'e dyn Fn(&str) -> Option<String>,
}

impl<'e> Settings<'e> {
    fn new(raw: Raw, env: &'e dyn Fn(&str) -> Option<String>) -> Self {
        let explicit: HashMap<&'static str, String> = raw.into_iter().collect();
        let mut values = explicit.clone();
        for kw in KEYWORDS {
            if values.contains_key(kw.name) {
                continue;
            }
            if let Some(v) = kw.env.and_then(env) {
                values.insert(kw.name, v);
            } else if kw.name == "sslmode" && env("PGREQUIRESSL").is_some_and(|r| r.starts_with('1')) {
                values.insert(kw.name, "require".to_string());
            }
        }
        Settings { explicit, values, env }
    }

    /// The non-empty value of `k`, from the string or the environment.
    fn get(&self, k: &str) -> Option<&str> {
        self.values.get(k).map(|s| s.as_str()).filter(|s| !s.is_empty())
    }

    /// The non-empty value of `k` set by the string itself.
    fn explicit(&self, k: &str) -> Option<&str> {
        self.explicit.get(k).map(|s| s.as_str()).filter(|s| !s.is_empty())
    }

    /// [`get`](Self::get), else the keyword table's default.
    fn get_or_default(&self, k: &str) -> Option<&str> {
        self.get(k).or_else(|| keywords::lookup(k).and_then(|kw| kw.default))
    }
}

/// Builds the configuration from the string's settings, taking the rest from `env`.
pub(super) fn build_config(raw: Raw, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConnInfoError> {
    let s = Settings::new(raw, env);
    for kw in KEYWORDS {
        kw.check(s.get(kw.name), s.explicit(kw.name))?;
    }
    let (sslmode, sslrootcert) = ssl(&s)?;
    let hostaddr = hostaddr(&s)?;
    let hosts = hosts(&s, hostaddr.as_deref())?;
    let ports = ports(&s, hosts.len())?;
    let port = ports[0];
    let (ssl_min_protocol_version, ssl_max_protocol_version) = tls_versions(&s)?;
    let user = match s.get("user") {
        Some(u) => u.to_string(),
        None => os_user_name()
            .ok_or_else(|| ConnInfoError::new("could not look up local user name; set \"user\" or PGUSER"))?,
    };
    let dbname = s.get("dbname").unwrap_or(&user).to_string();
    let connect_timeout = connect_timeout(&s)?;
    let application_name = s.get("application_name").or_else(|| s.get("fallback_application_name")).map(str::to_string);
    let options = s.get("options").map(str::to_string);
    // libpq: the string's password, else each host's own entry of the password file.
    let host_passwords: Vec<Option<String>> = hosts
        .iter()
        .zip(&ports)
        .map(|(h, p)| match s.get("password") {
            Some(pw) => Some(pw.to_string()),
            None => password_from_passfile(&s, h, *p, &dbname, &user),
        })
        .collect();
    let password = host_passwords[0].clone();
    let path = |k: &str| s.get(k).map(PathBuf::from);
    Ok(Config {
        hosts,
        ports,
        hostaddr,
        port,
        dbname,
        user,
        password,
        host_passwords,
        sslmode,
        sslrootcert,
        sslcert: s.get("sslcert").filter(|v| !v.is_empty()).map(PathBuf::from),
        sslkey: s.get("sslkey").filter(|v| !v.is_empty()).map(PathBuf::from),
        sslpassword: s.get("sslpassword").map(str::to_string),
        sslcrl: path("sslcrl"),
        sslcrldir: path("sslcrldir"),
        // libpq looks at the first character only.
        sslsni: s.get_or_default("sslsni").is_some_and(|v| v.starts_with('1')),
        ssl_min_protocol_version,
        ssl_max_protocol_version,
        channel_binding: channel_binding(&s)?,
        target_session_attrs: target_session_attrs(&s)?,
        application_name,
        connect_timeout,
        options,
    })
}

/// `sslmode` and `sslrootcert`; `sslrootcert=system` without an sslmode means verify-full
/// (libpq 16) and refuses weaker modes.
fn ssl(s: &Settings<'_>) -> Result<(SslMode, Option<PathBuf>), ConnInfoError> {
    let sslrootcert = s.get("sslrootcert").map(PathBuf::from);
    let system = sslrootcert.as_deref() == Some(Path::new("system"));
    let sslmode = match s.get("sslmode") {
        None if system => SslMode::VerifyFull,
        _ => {
            let v = s.get_or_default("sslmode").unwrap_or_default();
            SslMode::from_keyword(v).ok_or_else(|| ConnInfoError::new(format!("invalid sslmode value: \"{v}\"")))?
        }
    };
    if system && sslmode != SslMode::VerifyFull {
        return Err(ConnInfoError::new(format!(
            "weak sslmode \"{sslmode}\" may not be used with sslrootcert=system (use \"verify-full\")"
        )));
    }
    Ok((sslmode, sslrootcert))
}

/// `channel_binding`, with libpq's error for another value.
fn channel_binding(s: &Settings<'_>) -> Result<ChannelBinding, ConnInfoError> {
    Ok(match s.get_or_default("channel_binding").unwrap_or("prefer") {
        "disable" => ChannelBinding::Disable,
        "prefer" => ChannelBinding::Prefer,
        "require" => ChannelBinding::Require,
        other => return Err(ConnInfoError::new(format!("invalid channel_binding value: \"{other}\""))),
    })
}

/// libpq's `pqParseIntParam`: an integer with optional surrounding whitespace.
fn parse_int_param(value: &str, keyword: &str) -> Result<i64, ConnInfoError> {
    value.trim_matches(|c: char| c.is_ascii() && is_space(c as u8)).parse::<i32>().map(i64::from).map_err(|_| {
        ConnInfoError::new(format!("invalid integer value \"{value}\" for connection option \"{keyword}\""))
    })
}

/// The port of each of `n` hosts: one port for all, or one per host (empty items are the
/// default), as libpq.
fn ports(s: &Settings<'_>, n: usize) -> Result<Vec<u16>, ConnInfoError> {
    let v = s.get_or_default("port").unwrap_or_default();
    let ports = v
        .split(',')
        .map(|item| if item.is_empty() { Ok(DEFAULT_PORT) } else { parse_port(item) })
        .collect::<Result<Vec<u16>, _>>()?;
    match ports.len() {
        1 => Ok(vec![ports[0]; n]),
        m if m == n => Ok(ports),
        m => Err(ConnInfoError::new(format!("could not match {m} port numbers to {n} hosts"))),
    }
}

/// `ssl_min_protocol_version` (default TLSv1.2) and `ssl_max_protocol_version`, with libpq's
/// checks; a maximum below TLSv1.2 cannot be honoured (rustls speaks TLSv1.2 and TLSv1.3 only).
fn tls_versions(s: &Settings<'_>) -> Result<(TlsVersion, Option<TlsVersion>), ConnInfoError> {
    let version = |k: &str| -> Result<Option<TlsVersion>, ConnInfoError> {
        match s.get_or_default(k) {
            None => Ok(None),
            Some(v) => TlsVersion::from_keyword(v)
                .map(Some)
                .ok_or_else(|| ConnInfoError::new(format!("invalid {k} value: \"{v}\""))),
        }
    };
    let min = version("ssl_min_protocol_version")?.unwrap_or(TlsVersion::Tls1_2);
    let max = version("ssl_max_protocol_version")?;
    if max.is_some_and(|m| m < min) {
        return Err(ConnInfoError::new("invalid SSL protocol version range"));
    }
    if let Some(m) = max.filter(|m| *m < TlsVersion::Tls1_2) {
        return Err(unsupported(
            "ssl_max_protocol_version",
            m.as_str(),
            "this client speaks TLSv1.2 and TLSv1.3 only (TLSv1 and TLSv1.1 are obsolete, RFC 8996)",
        ));
    }
    Ok((min, max))
}

/// `target_session_attrs`, with libpq's error for another value.
fn target_session_attrs(s: &Settings<'_>) -> Result<TargetSessionAttrs, ConnInfoError> {
    let v = s.get_or_default("target_session_attrs").unwrap_or("any");
    TargetSessionAttrs::from_keyword(v)
        .ok_or_else(|| ConnInfoError::new(format!("invalid target_session_attrs value: \"{v}\"")))
}

fn parse_port(value: &str) -> Result<u16, ConnInfoError> {
    let n = parse_int_param(value, "port")?;
    u16::try_from(n)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| ConnInfoError::new(format!("invalid port number: \"{value}\"")))
}

/// At most one numeric `hostaddr`.
fn hostaddr(s: &Settings<'_>) -> Result<Option<String>, ConnInfoError> {
    match s.get("hostaddr") {
        None => Ok(None),
        Some(v) if v.contains(',') => {
            Err(ConnInfoError::new(format!("multiple hostaddr values are not supported: \"{v}\"")))
        }
        Some(v) if v.parse::<std::net::IpAddr>().is_err() => {
            Err(ConnInfoError::new(format!("could not parse network address \"{v}\"")))
        }
        Some(v) => Ok(Some(v.to_string())),
    }
}

fn default_socket_dir() -> PathBuf {
    if Path::new(DEFAULT_SOCKET_DIR).is_dir() {
        PathBuf::from(DEFAULT_SOCKET_DIR)
    } else {
        PathBuf::from(FALLBACK_SOCKET_DIR)
    }
}

/// The hosts to try; an empty item is `hostaddr`, else the default socket directory.
fn hosts(s: &Settings<'_>, hostaddr: Option<&str>) -> Result<Vec<Host>, ConnInfoError> {
    let default = || match hostaddr {
        Some(a) => Host::Tcp(a.to_string()),
        None => Host::Unix(default_socket_dir()),
    };
    let Some(v) = s.get("host") else {
        return Ok(vec![default()]);
    };
    let mut hosts = Vec::new();
    for h in v.split(',') {
        if h.is_empty() {
            hosts.push(default());
        } else if h.starts_with('@') {
            return Err(unsupported("host", h, "abstract Unix sockets are not implemented"));
        } else if h.starts_with('/') {
            // libpq's `is_unixsock_path`: an absolute path is a socket directory.
            hosts.push(Host::Unix(PathBuf::from(h)));
        } else {
            hosts.push(Host::Tcp(h.to_string()));
        }
    }
    if hostaddr.is_some() && hosts.len() > 1 {
        return Err(ConnInfoError::new(format!("could not match {} host names to 1 hostaddr values", hosts.len())));
    }
    Ok(hosts)
}

/// `connect_timeout`: <= 0 means none; libpq enforces a 2 s minimum.
fn connect_timeout(s: &Settings<'_>) -> Result<Option<Duration>, ConnInfoError> {
    let Some(v) = s.get("connect_timeout") else {
        return Ok(None);
    };
    let n = parse_int_param(v, "connect_timeout")?;
    Ok((n > 0).then(|| Duration::from_secs(n.max(2) as u64)))
}

/// The password file's entry for one host: `passfile`, else `~/.pgpass`.
fn password_from_passfile(s: &Settings<'_>, host: &Host, port: u16, dbname: &str, user: &str) -> Option<String> {
    let passfile = s
        .get("passfile")
        .map(PathBuf::from)
        .or_else(|| (s.env)("HOME").filter(|h| !h.is_empty()).map(|h| Path::new(&h).join(".pgpass")))?;
    let pw_host = match host {
        Host::Tcp(h) => h.clone(),
        Host::Unix(d) => {
            let d = d.to_string_lossy().to_string();
            if d == DEFAULT_SOCKET_DIR || d == FALLBACK_SOCKET_DIR {
                "localhost".to_string()
            } else {
                d
            }
        }
    };
    password_from_file(&passfile, &pw_host, &port.to_string(), dbname, user)
}
