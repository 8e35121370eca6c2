//! The one table of connection-string keywords: every keyword libpq accepts, with its
//! environment variable, constant default, whether its value is a secret (masked in logs) and
//! how this client treats it ([`Kind`]). Parsing, the environment fallbacks, the checks of
//! unimplemented features and masking all read this table.

use super::ConnInfoError;

/// How this client treats a keyword.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Read into [`Config`](super::Config) (and validated there) when the configuration is built.
    Used,
    /// Accepted and ignored: harmless tuning this client does not need.
    Ignored,
    /// A feature this client does not implement: refused when it has a non-empty value, from the
    /// string or the environment; the text says why.
    Refused(&'static str),
    /// Refused like [`Kind::Refused`], but only when the string itself sets it (the environment
    /// variable is ignored, as a client without the feature would).
    RefusedInString(&'static str),
    /// One of a fixed set of values: `accepted` ones pass, `refused` ones ask for something not
    /// implemented, anything else is invalid.
    Choice { accepted: &'static [&'static str], refused: &'static [&'static str], why: Refusal },
}

/// The error for a refused value of a [`Kind::Choice`] keyword.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `connection option "k" (value "v") is not supported: why`
    NotSupported(&'static str),
    /// The whole message, as libpq words it.
    Message(&'static str),
}

/// One keyword libpq accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Keyword {
    pub name: &'static str,
    /// Environment variable consulted when the string does not set the keyword.
    pub env: Option<&'static str>,
    pub kind: Kind,
    /// libpq's compiled-in default when it is a constant. The computed defaults (host, user,
    /// dbname, password) are derived when the configuration is built.
    pub default: Option<&'static str>,
    /// A secret: masked wherever a connection string is shown.
    pub secret: bool,
}

const fn kw(name: &'static str, env: Option<&'static str>, kind: Kind) -> Keyword {
    Keyword { name, env, kind, default: None, secret: false }
}

const fn with_default(k: Keyword, default: &'static str) -> Keyword {
    Keyword { default: Some(default), ..k }
}

const fn secret(k: Keyword) -> Keyword {
    Keyword { secret: true, ..k }
}

const NOT_IMPLEMENTED: &str = "not implemented by this client";

/// Every keyword libpq (up to 17, plus 18's protocol-version pair) accepts. Mostly libpq's order;
/// the refused and restricted keywords are checked in table order, so the one reported first
/// when a string has several problems follows this order.
pub(super) const KEYWORDS: &[Keyword] = &[
    kw("service", Some("PGSERVICE"), Kind::Refused("connection service files are not implemented")),
    kw("user", Some("PGUSER"), Kind::Used),
    secret(kw("password", Some("PGPASSWORD"), Kind::Used)),
    kw("passfile", Some("PGPASSFILE"), Kind::Used),
    kw("connect_timeout", Some("PGCONNECT_TIMEOUT"), Kind::Used),
    kw("dbname", Some("PGDATABASE"), Kind::Used),
    kw("host", Some("PGHOST"), Kind::Used),
    kw("hostaddr", Some("PGHOSTADDR"), Kind::Used),
    with_default(kw("port", Some("PGPORT"), Kind::Used), "5432"),
    kw("client_encoding", Some("PGCLIENTENCODING"), Kind::Ignored),
    kw("options", Some("PGOPTIONS"), Kind::Used),
    kw("application_name", Some("PGAPPNAME"), Kind::Used),
    kw("fallback_application_name", None, Kind::Used),
    kw("keepalives", None, Kind::Ignored),
    kw("keepalives_idle", None, Kind::Ignored),
    kw("keepalives_interval", None, Kind::Ignored),
    kw("keepalives_count", None, Kind::Ignored),
    kw("tcp_user_timeout", None, Kind::Ignored),
    with_default(kw("sslmode", Some("PGSSLMODE"), Kind::Used), "prefer"),
    kw("sslcompression", Some("PGSSLCOMPRESSION"), Kind::Ignored),
    kw("sslcert", Some("PGSSLCERT"), Kind::Used),
    kw("sslkey", Some("PGSSLKEY"), Kind::Used),
    kw("sslcertmode", Some("PGSSLCERTMODE"), Kind::Ignored),
    secret(kw("sslpassword", None, Kind::Used)),
    kw("sslrootcert", Some("PGSSLROOTCERT"), Kind::Used),
    kw("sslcrl", Some("PGSSLCRL"), Kind::Used),
    kw("sslcrldir", Some("PGSSLCRLDIR"), Kind::Used),
    with_default(kw("sslsni", Some("PGSSLSNI"), Kind::Used), "1"),
    kw("requirepeer", Some("PGREQUIREPEER"), Kind::RefusedInString(NOT_IMPLEMENTED)),
    kw("require_auth", Some("PGREQUIREAUTH"), Kind::Refused(NOT_IMPLEMENTED)),
    with_default(kw("channel_binding", Some("PGCHANNELBINDING"), Kind::Used), "prefer"),
    with_default(kw("ssl_min_protocol_version", Some("PGSSLMINPROTOCOLVERSION"), Kind::Used), "TLSv1.2"),
    kw("ssl_max_protocol_version", Some("PGSSLMAXPROTOCOLVERSION"), Kind::Used),
    kw("min_protocol_version", Some("PGMINPROTOCOLVERSION"), Kind::Ignored),
    kw("max_protocol_version", Some("PGMAXPROTOCOLVERSION"), Kind::Ignored),
    with_default(
        kw(
            "gssencmode",
            Some("PGGSSENCMODE"),
            Kind::Choice {
                accepted: &["disable", "prefer", "allow"],
                refused: &["require"],
                why: Refusal::Message("gssencmode value \"require\" invalid when GSSAPI support is not compiled in"),
            },
        ),
        "disable",
    ),
    kw("krbsrvname", Some("PGKRBSRVNAME"), Kind::Ignored),
    kw("gsslib", Some("PGGSSLIB"), Kind::Ignored),
    kw("gssdelegation", Some("PGGSSDELEGATION"), Kind::Ignored),
    kw("replication", None, Kind::Ignored),
    with_default(kw("target_session_attrs", Some("PGTARGETSESSIONATTRS"), Kind::Used), "any"),
    with_default(
        kw(
            "load_balance_hosts",
            Some("PGLOADBALANCEHOSTS"),
            Kind::Choice {
                accepted: &["disable"],
                refused: &["random"],
                why: Refusal::NotSupported("only \"disable\" is implemented"),
            },
        ),
        "disable",
    ),
    with_default(
        kw(
            "sslnegotiation",
            Some("PGSSLNEGOTIATION"),
            Kind::Choice {
                accepted: &["postgres"],
                refused: &["direct"],
                why: Refusal::NotSupported("only \"postgres\" is implemented"),
            },
        ),
        "postgres",
    ),
];

/// The table entry of `name`.
pub(super) fn lookup(name: &str) -> Option<&'static Keyword> {
    KEYWORDS.iter().find(|k| k.name == name)
}

/// Whether `name` is a keyword whose value is a secret.
/// Whether `name`, in any letter case, names a secret keyword. Keywords are case-sensitive
/// (`Password=` is an unknown option), but masking errs on the side of masking too much: the
/// error for an unknown option quotes the connection string, which must not show a password
/// because it was spelled in capitals.
pub(super) fn is_secret(name: &str) -> bool {
    lookup(&name.to_ascii_lowercase()).is_some_and(|k| k.secret)
}

/// `connection option "k" (value "v") is not supported: why`
pub(super) fn unsupported(keyword: &str, value: &str, why: &str) -> ConnInfoError {
    ConnInfoError::new(format!("connection option \"{keyword}\" (value \"{value}\") is not supported: {why}"))
}

impl Keyword {
    /// Checks a refused or restricted keyword against its settings: `value` from the string or
    /// the environment, `explicit` from the string only (both non-empty). The keywords of the
    /// other kinds are checked where they are used.
    pub(super) fn check(&self, value: Option<&str>, explicit: Option<&str>) -> Result<(), ConnInfoError> {
        match (self.kind, value, explicit) {
            (Kind::Refused(why), Some(v), _) | (Kind::RefusedInString(why), _, Some(v)) => {
                Err(unsupported(self.name, v, why))
            }
            (Kind::Choice { accepted, refused, why }, Some(v), _) => {
                if accepted.contains(&v) {
                    Ok(())
                } else if refused.contains(&v) {
                    Err(match why {
                        Refusal::NotSupported(why) => unsupported(self.name, v, why),
                        Refusal::Message(m) => ConnInfoError::new(m),
                    })
                } else {
                    Err(ConnInfoError::new(format!("invalid {} value: \"{v}\"", self.name)))
                }
            }
            _ => Ok(()),
        }
    }
}
