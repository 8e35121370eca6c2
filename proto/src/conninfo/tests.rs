//! Unit tests of connection-string handling: both forms, libpq's quoting and errors, the
//! environment and compiled-in defaults, masking, the password file.

use super::*;
use std::collections::HashMap;
use std::path::Path;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
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
    let c = parse_with_env("", &env_of(&[("PGUSER", "u"), ("PGPORT", "6000"), ("PGHOST", "h1,h2")])).unwrap();
    assert_eq!(c.user, "u");
    assert_eq!(c.dbname, "u");
    assert_eq!(c.port, 6000);
    assert_eq!(c.hosts, vec![Host::Tcp("h1".into()), Host::Tcp("h2".into())]);
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
    assert_eq!(p("connect_timeout=1").unwrap().connect_timeout, Some(Duration::from_secs(2)));
    assert_eq!(p("connect_timeout=' 10 '").unwrap().connect_timeout, Some(Duration::from_secs(10)));
    assert_eq!(err("connect_timeout=abc"), "invalid integer value \"abc\" for connection option \"connect_timeout\"");
}

#[test]
fn errors_are_libpq_like() {
    assert_eq!(err("foo=bar"), "invalid connection option \"foo\"");
    assert_eq!(err("host"), "missing \"=\" after \"host\" in connection info string");
    assert_eq!(err("password='abc"), "unterminated quoted string in connection info string");
    assert_eq!(err("port=abc"), "invalid integer value \"abc\" for connection option \"port\"");
    assert_eq!(err("port=70000"), "invalid port number: \"70000\"");
    assert_eq!(err("port=0"), "invalid port number: \"0\"");
    assert_eq!(err("sslmode=maybe"), "invalid sslmode value: \"maybe\"");
    assert!(err("service=foo").contains("not supported"));
    assert_eq!(err("ssl_min_protocol_version=TLSv9"), "invalid ssl_min_protocol_version value: \"TLSv9\"");
    assert_eq!(err("ssl_max_protocol_version=x"), "invalid ssl_max_protocol_version value: \"x\"");
    // libpq's range check, the default minimum (TLSv1.2) included.
    assert_eq!(err("ssl_max_protocol_version=TLSv1.1"), "invalid SSL protocol version range");
    assert_eq!(
        err("ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=tlsv1.2"),
        "invalid SSL protocol version range"
    );
    // A range libpq takes but rustls cannot speak.
    let e = err("ssl_min_protocol_version=TLSv1 ssl_max_protocol_version=TLSv1.1");
    assert!(e.contains("ssl_max_protocol_version") && e.contains("TLSv1.2 and TLSv1.3 only"), "{e}");
    assert_eq!(err("channel_binding=maybe"), "invalid channel_binding value: \"maybe\"");
    assert_eq!(p("channel_binding=require").unwrap().channel_binding, super::ChannelBinding::Require);
    assert_eq!(p("").unwrap().channel_binding, super::ChannelBinding::Prefer);
    assert_eq!(err("target_session_attrs=writable"), "invalid target_session_attrs value: \"writable\"");
    assert!(err("hostaddr=not-an-ip").contains("could not parse network address"));
    assert_eq!(err("host=a,b,c port=1,2"), "could not match 2 port numbers to 3 hosts");
    // Accepted and ignored.
    p("keepalives=1 keepalives_idle=30 client_encoding=UTF8 replication=database").unwrap();
    // requiressl compatibility.
    assert_eq!(p("requiressl=1").unwrap().sslmode, SslMode::Require);
}

#[test]
fn tls_settings_and_session_attrs() {
    use super::{TargetSessionAttrs, TlsVersion};
    let c = p("host=a").unwrap();
    assert!(c.sslsni);
    assert_eq!((c.ssl_min_protocol_version, c.ssl_max_protocol_version), (TlsVersion::Tls1_2, None));
    assert_eq!(c.target_session_attrs, TargetSessionAttrs::Any);
    assert_eq!((c.sslcrl.clone(), c.sslcrldir.clone(), c.sslpassword.clone()), (None, None, None));
    let c =
        p("host=a sslsni=0 ssl_min_protocol_version=tlsv1.3 sslcrl=/c.pem sslcrldir=/crls sslpassword='p w'").unwrap();
    assert!(!c.sslsni);
    assert_eq!(c.ssl_min_protocol_version, TlsVersion::Tls1_3);
    assert_eq!(c.sslcrl.as_deref(), Some(std::path::Path::new("/c.pem")));
    assert_eq!(c.sslcrldir.as_deref(), Some(std::path::Path::new("/crls")));
    assert_eq!(c.sslpassword.as_deref(), Some("p w"));
    assert!(!format!("{c:?}").contains("p w") && !c.display_masked().contains("p w"));
    for mode in ["any", "read-write", "read-only", "primary", "standby", "prefer-standby"] {
        let c = p(&format!("target_session_attrs={mode}")).unwrap();
        assert_eq!(c.target_session_attrs.as_str(), mode);
    }
    // One port for all hosts, or one each.
    let c = p("host=a,b,c port=7").unwrap();
    assert_eq!((c.ports.clone(), c.port), (vec![7, 7, 7], 7));
    let c = p("host=a,b port=7,").unwrap();
    assert_eq!(c.ports, vec![7, DEFAULT_PORT]);
    assert!(c.display_masked().contains("port=7,5432"), "{}", c.display_masked());
    let c = p("postgresql://a:1,b:2/db?target_session_attrs=read-write").unwrap();
    assert_eq!(c.ports, vec![1, 2]);
    assert_eq!(c.target_session_attrs, TargetSessionAttrs::ReadWrite);
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
    let c = p("sslcert=/etc/me.crt sslkey='/etc/my key.pem'").unwrap();
    assert_eq!(c.sslcert.as_deref(), Some(Path::new("/etc/me.crt")));
    assert_eq!(c.sslkey.as_deref(), Some(Path::new("/etc/my key.pem")));
    assert!(c.display_masked().contains("sslkey='/etc/my key.pem'"), "{}", c.display_masked());
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
    assert_eq!(c.hosts, vec![Host::Unix("/a".into()), Host::Tcp("db2".into())]);
}

#[test]
fn uri_basic() {
    let c = p("postgresql://bob:s3cret@db.example.com:6543/mydb?sslmode=require&application_name=x%20y").unwrap();
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
    assert_eq!(c.hosts, vec![Host::Tcp("2001:db8::1".into()), Host::Tcp("h2".into())]);
    let c = p("postgresql://user@/db").unwrap();
    assert_eq!(c.user, "user");
    assert_eq!(c.password, None);
}

#[test]
fn uri_errors() {
    assert!(err("postgresql://[::1/db").contains("matching \"]\""));
    assert!(err("postgresql://[]/db").contains("may not be empty"));
    assert!(err("postgresql://[::1]x/db").contains("unexpected character \"x\""));
    assert_eq!(err("postgresql://h/db?foo=1"), "invalid URI query parameter: \"foo\"");
    assert!(err("postgresql://h/db?sslmode").contains("missing key/value separator"));
    assert!(err("postgresql://h/db?a=b=c").contains("extra key/value separator"));
    assert!(err("postgresql://h/d%zz").contains("invalid percent-encoded token"));
    assert!(err("postgresql://h/d%00").contains("forbidden value %00"));
    assert_eq!(err("postgresql://h:abc/db"), "invalid integer value \"abc\" for connection option \"port\"");
    assert_eq!(err("postgresql://h/db?sslmode=nope"), "invalid sslmode value: \"nope\"");
}

#[test]
fn masking_keyword_value() {
    assert_eq!(mask_password("host=a password=secret user=b"), "host=a password=******** user=b");
    assert_eq!(mask_password(r"password = 'it\'s secret'  dbname=x"), "password = ********  dbname=x");
    assert_eq!(mask_password("password=a\\ b c=d"), "password=******** c=********");
    // Unterminated quote: everything after is masked.
    assert_eq!(mask_password("user=u password='abc def"), "user=u password=********");
    // Fails to parse (unknown keyword, missing '=') but still masked.
    assert_eq!(mask_password("bogus password=pw junk"), "bogus password=******** junk");
    // A misspelt keyword may be the password: its value is masked (a known one's is not).
    assert_eq!(mask_password("host=127.0.0.1 pasword=secretpw1"), "host=127.0.0.1 pasword=********");
    // A URI prefix in capitals (no URI to libpq): the password is masked all the same.
    assert_eq!(mask_password("POSTGRESQL://rep:secretpw@h:5432/db"), "POSTGRESQL://rep:********@h:5432/db");
    assert_eq!(mask_password("Postgres://h/db?password=x"), "Postgres://h/db?password=********");
    assert_eq!(mask_password("sslpassword=k"), "sslpassword=********");
    assert_eq!(mask_password("host=a"), "host=a");
    assert_eq!(mask_password("password="), "password=********");
    // An unknown keyword to libpq (keywords are case-sensitive), but still a password to hide.
    assert_eq!(mask_password("host=a Password=pw PASSWORD=x"), "host=a Password=******** PASSWORD=********");
    assert_eq!(mask_password("postgres://h/db?PassWord=zz"), "postgres://h/db?PassWord=********");
    assert!(p("Password=pw").is_err(), "keywords stay case-sensitive");
    // Non-ASCII survives.
    assert_eq!(mask_password("dbname=bäh password=ö"), "dbname=bäh password=********");
}

#[test]
fn masking_uri() {
    assert_eq!(mask_password("postgresql://bob:secret@host:5432/db"), "postgresql://bob:********@host:5432/db");
    assert_eq!(
        mask_password("postgres://bob@host/db?password=x&sslmode=require"),
        "postgres://bob@host/db?password=********&sslmode=require"
    );
    assert_eq!(mask_password("postgres://bob:p@ss/w@host/db"), "postgres://bob:********@host/db");
    assert_eq!(mask_password("postgres://host/db"), "postgres://host/db");
    assert_eq!(mask_password("postgres://h/db?pass%77ord=zz"), "postgres://h/db?pass%77ord=********");
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
        let expect = if v.is_empty() { None } else { Some(v.to_string()) };
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
    // Several hosts: each host and port has its own entry (libpq); an explicit one is for all.
    let c = parse_with_env("host=other,db:x,elsewhere port=5432,6000,5432 dbname=mydb", &env).unwrap();
    assert_eq!(c.host_passwords, vec![Some("nope".to_string()), Some(r"pa:ss\w".to_string()), None]);
    assert_eq!(c.password.as_deref(), Some("nope"));
    assert!(!format!("{c:?}").contains("nope"), "masked in Debug");
    let c = parse_with_env("host=other,db:x port=5432,6000 dbname=mydb password=given", &env).unwrap();
    assert_eq!(c.host_passwords, vec![Some("given".to_string()); 2]);
    // passfile keyword, HOME fallback.
    let c = parse_with_env(&format!("passfile={fs} dbname=x"), &env_of(&[("PGUSER", "bob")])).unwrap();
    assert_eq!(c.password.as_deref(), Some("sock"));
    // Insecure permissions → ignored.
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = parse_with_env("dbname=x", &env).unwrap();
    assert_eq!(c.password, None);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn masking_uri_follows_libpq_split() {
    // libpq reads "pa?ss" as the password (the userinfo ends at the first '@' before any '/'),
    // so it is masked even though it holds a '?'.
    assert_eq!(mask_password("postgres://bob:pa?ss@h/db"), "postgres://bob:********@h/db");
    // "u?password=x" is a user name there, not a query.
    assert_eq!(mask_password("postgres://u?password=x@h/db"), "postgres://u?password=x@h/db");
}

#[test]
fn keyword_table_is_consistent() {
    for (i, k) in keywords::KEYWORDS.iter().enumerate() {
        assert!(keywords::KEYWORDS[..i].iter().all(|o| o.name != k.name), "{} twice", k.name);
    }
    let secrets: Vec<&str> = keywords::KEYWORDS.iter().filter(|k| k.secret).map(|k| k.name).collect();
    assert_eq!(secrets, ["password", "sslpassword"]);
    assert_eq!(keywords::lookup("port").and_then(|k| k.default), Some(DEFAULT_PORT.to_string().as_str()));
    assert_eq!(keywords::lookup("sslmode").and_then(|k| k.default), Some(SslMode::default().as_str()));
}

#[test]
fn output_settings_are_pinned_after_the_users_options() {
    let mut c = p("dbname=x").unwrap();
    c.pin_output_settings();
    assert_eq!(
        c.options.as_deref(),
        Some("-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 -c search_path=")
    );
    // The user's options stay; ours come last, so the server's last-wins rule keeps the pins.
    let mut c = p("options='-c work_mem=1MB -c datestyle=SQL,DMY'").unwrap();
    c.pin_output_settings();
    assert_eq!(
        c.options.as_deref(),
        Some("-c work_mem=1MB -c datestyle=SQL,DMY -c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 -c search_path=")
    );
    let mut c = p("options=' '").unwrap();
    c.pin_output_settings();
    assert_eq!(c.options.as_deref(), Some(Config::OUTPUT_SETTINGS));
}
