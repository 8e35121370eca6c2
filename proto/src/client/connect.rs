//! Establishing a [`Client`]: libpq's host list and sslmode fallbacks, opening the socket
//! (Unix, or TCP over every resolved address), SSLRequest and the TLS handshake, the startup
//! message, and reading the startup through to ReadyForQuery. Authentication itself is
//! `auth.rs`.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Instant;

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::error::{io_ctx, proto_err};
use super::io::{tag_name, READ_CHUNK};
use super::transport::{self, Sock, Started, Transport};
use super::{tls, Client, Error, Interest, Msg, State, Wait};
use crate::conninfo::{Config, Host, SslMode, TargetSessionAttrs};

/// How one connection attempt negotiates TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    Plain,
    /// SSLRequest; plaintext if the server says 'N'.
    TlsPreferred,
    /// SSLRequest; fail if the server says 'N'.
    TlsRequired,
}

impl Plan {
    /// The first attempt's plan (Unix sockets never use TLS).
    fn initial(host: &Host, mode: SslMode) -> Plan {
        match (host, mode) {
            (Host::Unix(_), _) => Plan::Plain,
            (_, SslMode::Disable) | (_, SslMode::Allow) => Plan::Plain,
            (_, SslMode::Prefer) => Plan::TlsPreferred,
            _ => Plan::TlsRequired,
        }
    }

    /// libpq's second attempt at the same host after this plan failed with `e`, if any.
    fn fallback(self, mode: SslMode, host: &Host, e: &Error, tls_used: bool) -> Option<Plan> {
        let auth_class = e.sqlstate().is_some_and(|s| s.starts_with("28") && s != "28P01");
        match (mode, self, e) {
            // prefer: TLS failed or the server refused the TLS session → plain.
            (SslMode::Prefer, Plan::TlsPreferred, Error::Tls(_)) => Some(Plan::Plain),
            // A refused login is retried in plaintext only when it really ran over TLS (libpq's
            // rule); otherwise it would just be repeated.
            (SslMode::Prefer, Plan::TlsPreferred, _) if auth_class && tls_used => Some(Plan::Plain),
            // allow: the plaintext attempt was refused → TLS.
            (SslMode::Allow, Plan::Plain, _) if auth_class && matches!(host, Host::Tcp(_)) => Some(Plan::TlsRequired),
            _ => None,
        }
    }
}

/// A failed connection attempt: the error, the waiter handed back for the next attempt, and
/// whether the attempt got as far as a TLS session.
type Failed = (Error, Box<dyn Wait>, bool);

/// `server_version` → `server_version_num`: "15.4 (Debian 15.4-1)" → 150004, "9.6.24" → 90624,
/// "16beta1" → 160000. 0 when unparseable.
pub fn parse_server_version(s: &str) -> u32 {
    let numeric: String = s.trim().chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let mut parts = numeric.split('.').map(|p| p.parse::<u32>().ok());
    let major = match parts.next().flatten() {
        Some(m) => m,
        None => return 0,
    };
    let minor = parts.next().flatten().unwrap_or(0);
    if major >= 10 {
        major.saturating_mul(10000).saturating_add(minor.min(9999))
    } else {
        let patch = parts.next().flatten().unwrap_or(0);
        major * 10000 + minor.min(99) * 100 + patch.min(99)
    }
}

/// `server_version_num` → the version as PostgreSQL writes it: 150004 → "15.4", 90624 → "9.6.24".
pub fn version_string(num: u32) -> String {
    if num >= 100000 {
        format!("{}.{}", num / 10000, num % 10000)
    } else {
        format!("{}.{}.{}", num / 10000, num / 100 % 100, num % 100)
    }
}

impl Client {
    /// Connects and authenticates, trying each host of `cfg` in turn (each on its port) until one
    /// accepts and is of the kind `target_session_attrs` asks for; `prefer-standby` makes a
    /// second pass accepting any server when no host is a standby (libpq 14+). With
    /// `replication` the startup packet carries `replication=database` (a logical walsender that
    /// also accepts SQL). TLS follows `cfg.sslmode` like libpq (Unix sockets never use TLS).
    pub fn connect(cfg: &Config, replication: bool, waiter: Box<dyn Wait>) -> Result<Client, Error> {
        let mut waiter = waiter;
        let mut last: Option<Error> = None;
        let passes = match cfg.target_session_attrs {
            TargetSessionAttrs::PreferStandby => vec![TargetSessionAttrs::PreferStandby, TargetSessionAttrs::Any],
            t => vec![t],
        };
        for want in passes {
            for (i, host) in cfg.hosts.iter().enumerate() {
                let port = cfg.ports.get(i).copied().unwrap_or(cfg.port);
                // libpq: hostaddr, when given, decides where to connect (even if host is a socket
                // directory); the host name is kept for verification and messages.
                let host = match (&cfg.hostaddr, host) {
                    (Some(a), Host::Unix(_)) => Host::Tcp(a.clone()),
                    _ => host.clone(),
                };
                // Each host with its own password-file entry (libpq).
                let own;
                let cfg_host = match cfg.host_passwords.get(i) {
                    Some(pw) if *pw != cfg.password => {
                        own = Config { password: pw.clone(), ..cfg.clone() };
                        &own
                    }
                    _ => cfg,
                };
                let mut client = match Self::connect_host(cfg_host, &host, port, replication, waiter) {
                    Ok(c) => c,
                    Err((e, _, _)) if matches!(e, Error::Interrupted | Error::Config(_)) => return Err(e),
                    Err((e, w, _)) => {
                        waiter = w;
                        last = Some(e);
                        continue;
                    }
                };
                match client.check_target(want) {
                    Ok(None) => return Ok(client),
                    Err(e @ Error::Interrupted) => return Err(e),
                    Ok(Some(why)) => {
                        last = Some(Error::NotTarget(format!("connection to {} failed: {why}", client.peer)))
                    }
                    Err(e) => last = Some(e),
                }
                waiter = client.close_for_next_host();
            }
        }
        Err(last.unwrap_or_else(|| proto_err("no host to connect to")))
    }

    /// One host: the attempt its sslmode calls for, and at most one fallback attempt.
    #[allow(clippy::result_large_err)]
    fn connect_host(
        cfg: &Config,
        host: &Host,
        port: u16,
        replication: bool,
        waiter: Box<dyn Wait>,
    ) -> Result<Client, Failed> {
        let mut plan = Plan::initial(host, cfg.sslmode);
        let mut waiter = waiter;
        let mut retried = false;
        loop {
            let (e, w, tls_used) = match Self::attempt(cfg, host, port, replication, waiter, plan) {
                Ok(c) => return Ok(c),
                Err(failed) => failed,
            };
            if matches!(e, Error::Interrupted | Error::Config(_)) {
                return Err((e, w, tls_used));
            }
            match plan.fallback(cfg.sslmode, host, &e, tls_used) {
                Some(p) if !retried => {
                    retried = true;
                    plan = p;
                    waiter = w;
                }
                _ => return Err((e, w, tls_used)),
            }
        }
    }

    #[allow(clippy::result_large_err)]
    fn attempt(
        cfg: &Config,
        host: &Host,
        port: u16,
        replication: bool,
        mut waiter: Box<dyn Wait>,
        plan: Plan,
    ) -> Result<Client, Failed> {
        let deadline = cfg.connect_timeout.map(|t| Instant::now() + t);
        let (sock, peer) = match open_socket(cfg, host, port, &mut *waiter, deadline) {
            Ok(x) => x,
            Err(e) => return Err((e, waiter, false)),
        };
        let mut client = Client::new(sock, waiter, peer);
        match client.startup(cfg, host, replication, plan, deadline) {
            Ok(()) => {
                client.in_startup = false;
                client.state = State::Idle;
                Ok(client)
            }
            Err(e) => {
                let e = attempt_failed(e, &client.peer);
                let tls = client.io.is_tls();
                Err((e, client.waiter, tls))
            }
        }
    }

    /// A client over a freshly connected socket, before the startup exchange.
    fn new(sock: Sock, waiter: Box<dyn Wait>, peer: String) -> Client {
        Client {
            io: Transport::plain(sock),
            waiter,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(1024),
            want: 0,
            params: HashMap::new(),
            notices: VecDeque::new(),
            server_version_num: 0,
            used_password: false,
            bytes_received: 0,
            backend_pid: 0,
            state: State::Busy,
            in_startup: true,
            peer,
        }
    }

    fn startup(
        &mut self,
        cfg: &Config,
        host: &Host,
        replication: bool,
        plan: Plan,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        if plan != Plan::Plain {
            self.negotiate_tls(cfg, host, plan, deadline)?;
        }
        self.send_startup_message(cfg, replication, deadline)?;
        self.authenticate(cfg, deadline)?;
        self.await_ready(deadline)
    }

    /// SSLRequest, and the TLS handshake if the server agrees.
    fn negotiate_tls(&mut self, cfg: &Config, host: &Host, plan: Plan, deadline: Option<Instant>) -> Result<(), Error> {
        frontend::ssl_request(&mut self.wbuf);
        self.flush(deadline)?;
        let answer = loop {
            match self.io.read_byte_raw()? {
                Some(b) => break b,
                None => self.wait(Interest::Read, deadline)?,
            }
        };
        match answer {
            b'S' => self.start_tls(cfg, host, deadline),
            b'N' if plan == Plan::TlsRequired => {
                Err(Error::Tls("server does not support SSL, but SSL was required".into()))
            }
            b'N' => Ok(()),
            b'E' => Err(Error::Tls("server answered the SSL request with an error".into())),
            other => Err(proto_err(format!("received invalid response to SSL negotiation: {}", tag_name(other)))),
        }
    }

    fn start_tls(&mut self, cfg: &Config, host: &Host, deadline: Option<Instant>) -> Result<(), Error> {
        let rootcert = cfg.sslrootcert.as_deref();
        let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
        let level = tls::verify_level(cfg.sslmode, rootcert, tls::default_root_file(home.as_deref()).is_some());
        let identity = tls::client_identity(
            cfg.sslcert.as_deref(),
            cfg.sslkey.as_deref(),
            cfg.sslpassword.as_deref(),
            home.as_deref(),
        )?;
        let policy = tls::Policy {
            crl: cfg.sslcrl.as_deref(),
            crldir: cfg.sslcrldir.as_deref(),
            min_version: cfg.ssl_min_protocol_version,
            max_version: cfg.ssl_max_protocol_version,
            sni: cfg.sslsni,
            ..tls::Policy::new(cfg.sslmode, rootcert, home)
        };
        let config = tls::client_config(&policy, identity)?;
        let name = match host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(_) => "localhost".to_string(),
        };
        let server_name = tls::server_name(&name, level)?;
        let conn = rustls::ClientConnection::new(config, server_name).map_err(|e| Error::Tls(e.to_string()))?;
        self.io.tls = Some(Box::new(conn));
        while let Some(interest) = self.io.handshake_step()? {
            self.wait(interest, deadline)?;
        }
        Ok(())
    }

    fn send_startup_message(
        &mut self,
        cfg: &Config,
        replication: bool,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        let mut params: Vec<(&str, &str)> =
            vec![("user", cfg.user.as_str()), ("database", cfg.dbname.as_str()), ("client_encoding", "UTF8")];
        if let Some(a) = &cfg.application_name {
            params.push(("application_name", a));
        }
        if let Some(o) = &cfg.options {
            params.push(("options", o));
        }
        if replication {
            params.push(("replication", "database"));
        }
        frontend::startup_message(params.iter().copied(), &mut self.wbuf)
            .map_err(|e| proto_err(format!("invalid startup parameter: {e}")))?;
        self.flush(deadline)
    }

    /// After authentication, until ReadyForQuery: BackendKeyData, ParameterStatus (handled in
    /// try_parse), notices.
    fn await_ready(&mut self, deadline: Option<Instant>) -> Result<(), Error> {
        loop {
            match self.next_msg(deadline)? {
                Msg::Proto(Message::BackendKeyData(b)) => self.backend_pid = b.process_id(),
                Msg::Proto(Message::ReadyForQuery(_)) => break,
                Msg::Error(e) => return Err(Error::Server(e)),
                other => return Err(self.unexpected(&other, "during connection startup")),
            }
        }
        self.server_version_num = self.params.get("server_version").map(|v| parse_server_version(v)).unwrap_or(0);
        Ok(())
    }
}

/// Opens the socket for one host: TCP (resolving the name, or `hostaddr`) or Unix.
fn open_socket(
    cfg: &Config,
    host: &Host,
    port: u16,
    waiter: &mut dyn Wait,
    deadline: Option<Instant>,
) -> Result<(Sock, String), Error> {
    match host {
        Host::Unix(dir) => open_unix(&dir.join(format!(".s.PGSQL.{port}")), waiter, deadline),
        Host::Tcp(name) => open_tcp(cfg, name, port, waiter, deadline),
    }
}

fn open_unix(path: &Path, waiter: &mut dyn Wait, deadline: Option<Instant>) -> Result<(Sock, String), Error> {
    let peer = format!("server on socket \"{}\"", path.display());
    let fail = |e: io::Error| io_ctx(&format!("connection to {peer} failed"), e);
    let sock = match transport::start_unix(path).map_err(fail)? {
        Started::Done(s) => s,
        Started::Pending(s) => {
            waiter.wait(s.as_raw_fd(), Interest::Write, deadline).map_err(|e| with_peer(e, &peer))?;
            transport::finish_connect(&s).map_err(fail)?;
            s
        }
    };
    Ok((transport::unix_sock(sock), peer))
}

/// Tries every address of the host in turn; an interrupt stops at once.
fn open_tcp(
    cfg: &Config,
    name: &str,
    port: u16,
    waiter: &mut dyn Wait,
    deadline: Option<Instant>,
) -> Result<(Sock, String), Error> {
    let mut last: Option<Error> = None;
    for addr in resolve(cfg, name, port)? {
        let peer = if addr.ip().to_string() == *name {
            format!("server at \"{name}\", port {port}")
        } else {
            format!("server at \"{name}\" ({}), port {port}", addr.ip())
        };
        match connect_tcp(&addr, &peer, waiter, deadline) {
            Ok(s) => return Ok((transport::tcp_sock(s), peer)),
            Err(e @ Error::Interrupted) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io_ctx(
            &format!("could not translate host name \"{name}\" to address"),
            io::Error::new(io::ErrorKind::NotFound, "no addresses"),
        )
    }))
}

/// The addresses to try: `hostaddr`, a numeric host, or the host name resolved.
fn resolve(cfg: &Config, name: &str, port: u16) -> Result<Vec<SocketAddr>, Error> {
    if let Some(a) = &cfg.hostaddr {
        let ip: IpAddr = a.parse().map_err(|_| proto_err(format!("could not parse network address \"{a}\"")))?;
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => Ok(vec![SocketAddr::new(ip, port)]),
        // getaddrinfo blocks; there is no non-blocking resolver in std.
        Err(_) => Ok((name, port)
            .to_socket_addrs()
            .map_err(|e| io_ctx(&format!("could not translate host name \"{name}\" to address"), e))?
            .collect()),
    }
}

fn connect_tcp(
    addr: &SocketAddr,
    peer: &str,
    waiter: &mut dyn Wait,
    deadline: Option<Instant>,
) -> Result<socket2::Socket, Error> {
    let fail = |e: io::Error| io_ctx(&format!("connection to {peer} failed"), e);
    match transport::start_tcp(addr).map_err(fail)? {
        Started::Done(s) => Ok(s),
        Started::Pending(s) => {
            waiter.wait(s.as_raw_fd(), Interest::Write, deadline).map_err(|e| with_peer(e, peer))?;
            transport::finish_connect(&s).map_err(fail)?;
            Ok(s)
        }
    }
}

/// A timeout while connecting, naming the server.
fn with_peer(e: Error, peer: &str) -> Error {
    match e {
        Error::Timeout(m) => Error::Timeout(format!("connection to {peer} failed: {m}")),
        other => other,
    }
}

/// A failure of the startup exchange, naming the server when the error itself does not.
fn attempt_failed(e: Error, peer: &str) -> Error {
    match e {
        Error::Timeout(m) => Error::Timeout(format!("connection to {peer} failed: {m}")),
        Error::Io(io) => Error::Io(io::Error::new(io.kind(), format!("connection to {peer} failed: {io}"))),
        Error::Tls(m) => Error::Tls(format!("connection to {peer} failed: {m}")),
        other => other,
    }
}
