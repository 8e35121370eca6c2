//! Talking to the publisher from inside PostgreSQL: opens pgsub-proto connections whose every
//! wait goes through `WaitLatchOrSocket`, and turns protocol errors into ereports.
//!
//! In a backend (the SQL functions) a wait wakes for query cancel and backend termination through
//! CHECK_FOR_INTERRUPTS; in a background worker it returns `Interrupted` once SIGTERM arrived, and
//! reloads the configuration on SIGHUP. Postmaster death ends the process in both.
use crate::process::{reload_config_if_requested, shutdown_requested};
use crate::report;
use pgrx::prelude::*;
use pgsub_proto::client::{Client, Error, Interest, ServerError, Wait};
use pgsub_proto::conninfo;
use std::os::fd::RawFd;
use std::time::Instant;

/// Where the connection is used from, which decides how interrupts are honoured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    Backend,
    Worker,
}

/// A latch-aware [`Wait`] for pgsub-proto.
pub struct LatchWait {
    pub ctx: Context,
}

thread_local! {
    /// What a wait on the publisher's socket is shown as (`pg_stat_activity`) while
    /// [`waiting_as`] runs; a query otherwise.
    static WAITING_AS: std::cell::Cell<Option<crate::process::Wait>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with the publisher's waits shown as `what` (native's connect and table copy waits);
/// the previous one is restored however `f` ends.
pub fn waiting_as<T>(what: crate::process::Wait, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<crate::process::Wait>);
    impl Drop for Restore {
        fn drop(&mut self) {
            WAITING_AS.set(self.0);
        }
    }
    let _restore = Restore(WAITING_AS.replace(Some(what)));
    f()
}

impl Wait for LatchWait {
    fn wait(&mut self, fd: RawFd, interest: Interest, deadline: Option<Instant>) -> Result<(), Error> {
        loop {
            if self.ctx == Context::Worker {
                if shutdown_requested() {
                    return Err(Error::Interrupted);
                }
                reload_config_if_requested();
            }
            let timeout_ms: i64 = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(Error::Timeout("timeout expired".into()));
                    }
                    // Wake at least once a second to look at the shutdown flag again.
                    (d - now).as_millis().min(1000) as i64
                }
                None => 1000,
            };
            let sock_ev = match interest {
                Interest::Read => pg_sys::WL_SOCKET_READABLE,
                Interest::Write => pg_sys::WL_SOCKET_WRITEABLE,
            };
            // SAFETY: MyLatch is valid in every backend; fd is the connection's open socket.
            let rc = unsafe {
                let rc = pg_sys::WaitLatchOrSocket(
                    pg_sys::MyLatch,
                    (pg_sys::WL_LATCH_SET | sock_ev | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                    fd,
                    timeout_ms as std::ffi::c_long,
                    WAITING_AS.get().unwrap_or(crate::process::Wait::PublisherReceive).info(),
                );
                if rc & pg_sys::WL_LATCH_SET as i32 != 0 {
                    pg_sys::ResetLatch(pg_sys::MyLatch);
                }
                rc
            };
            if self.ctx == Context::Backend {
                pg_sys::check_for_interrupts!();
            } else {
                crate::process::absorb_signals();
            }
            if rc & sock_ev as i32 != 0 {
                return Ok(());
            }
        }
    }
}

/// Opens a connection (replication=database when `replication`) to the publisher.
/// `application_name` (what the publisher's pg_stat_replication shows) applies unless the
/// connection string sets one. The publisher's output settings are pinned
/// (`Config::pin_output_settings`): values arrive in text exactly, whatever its database sets.
/// With `require_password` (a subscription owned by a non-superuser, as PostgreSQL 16's
/// `password_required`), a connection the server let in without asking for a password — trust,
/// peer, certificate — is refused: otherwise such an owner could act on the publisher with the
/// subscriber server's own identity.
pub fn connect(
    conninfo_str: &str,
    replication: bool,
    ctx: Context,
    application_name: Option<&str>,
    require_password: bool,
) -> Result<Client, Error> {
    let mut cfg = conninfo::parse(conninfo_str).map_err(Error::Config)?;
    cfg.pin_output_settings();
    if cfg.application_name.is_none() {
        cfg.application_name = application_name.map(str::to_string);
    }
    if ctx == Context::Worker && cfg.connect_timeout.is_none() {
        // A publisher that accepts the connection and then says nothing must not hold the
        // worker forever: bound the start-up by the receiver timeout.
        let t = crate::gucs::ms(&crate::gucs::RECEIVER_TIMEOUT_MS);
        if !t.is_zero() {
            cfg.connect_timeout = Some(t);
        }
    }
    let client = waiting_as(crate::process::Wait::PublisherConnect, || {
        Client::connect(&cfg, replication, Box::new(LatchWait { ctx }))
    })?;
    check_password_used(client, require_password)
}

/// Like [`connect`] from a backend, every wait of the connection (start-up and commands) bounded
/// by `timeout` in all: for clean-up that must not hang, such as dropping a slot while the
/// transaction that created it aborts.
pub fn connect_bounded(
    conninfo_str: &str,
    replication: bool,
    require_password: bool,
    timeout: std::time::Duration,
) -> Result<Client, Error> {
    connect_bounded_as(Context::Backend, "pgsub", conninfo_str, replication, require_password, timeout)
}

/// [`connect_bounded`] from `ctx`, named `application_name` unless the connection string names it.
fn connect_bounded_as(
    ctx: Context,
    application_name: &str,
    conninfo_str: &str,
    replication: bool,
    require_password: bool,
    timeout: std::time::Duration,
) -> Result<Client, Error> {
    let mut cfg = conninfo::parse(conninfo_str).map_err(Error::Config)?;
    cfg.pin_output_settings();
    if cfg.application_name.is_none() {
        cfg.application_name = Some(application_name.into());
    }
    cfg.connect_timeout = Some(cfg.connect_timeout.map_or(timeout, |t| t.min(timeout)));
    let waiter = BoundedWait { inner: LatchWait { ctx }, until: Instant::now() + timeout };
    let client =
        waiting_as(crate::process::Wait::PublisherConnect, || Client::connect(&cfg, replication, Box::new(waiter)))?;
    check_password_used(client, require_password)
}

/// From an apply worker: the publisher's current WAL position (its replay position when it is a
/// standby), over an ordinary connection opened and closed here, every wait bounded by `timeout`
/// in all (`worker/walend.rs`).
pub fn current_wal_end(
    conninfo_str: &str,
    require_password: bool,
    timeout: std::time::Duration,
) -> Result<pgsub_proto::Lsn, Error> {
    let mut client =
        connect_bounded_as(Context::Worker, "pgsub lag probe", conninfo_str, false, require_password, timeout)?;
    let rows = client.simple_query(
        "SELECT CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() \
         ELSE pg_catalog.pg_current_wal_lsn() END",
    );
    client.close();
    let text = rows?.first().and_then(|r| r.values.first().cloned().flatten());
    text.as_deref()
        .and_then(|t| t.parse::<pgsub_proto::Lsn>().ok())
        .ok_or_else(|| Error::Protocol(format!("unexpected answer for the WAL position: {text:?}")))
}

/// A [`LatchWait`] with a deadline over the whole exchange.
pub struct BoundedWait {
    pub inner: LatchWait,
    pub until: Instant,
}

impl Wait for BoundedWait {
    fn wait(&mut self, fd: RawFd, interest: Interest, deadline: Option<Instant>) -> Result<(), Error> {
        let d = deadline.map_or(self.until, |d| d.min(self.until));
        self.inner.wait(fd, interest, Some(d))
    }
}

/// The `password_required` rule (see [`connect`]) on an established connection.
fn check_password_used(client: Client, require_password: bool) -> Result<Client, Error> {
    if require_password && !client.used_password() {
        client.close();
        // Reported like a server error so that it carries its SQLSTATE, detail and hint.
        return Err(Error::Server(ServerError {
            severity: "ERROR".into(),
            code: "2F003".into(),
            message: "password is required".into(),
            detail: Some("A subscription owned by a non-superuser cannot connect if the publisher does not request a password.".into()),
            hint: Some("Make the publisher's pg_hba.conf ask this user for a password (scram-sha-256 or md5), or have a superuser own the subscription.".into()),
        }));
    }
    Ok(client)
}

/// Refuses a connection string without a password of its own when the subscription's owner is not
/// a superuser (the password may not come from the server's environment or password file).
pub fn require_password_in(conninfo_str: &str, require_password: bool) {
    if require_password && !matches!(conninfo::has_explicit_password(conninfo_str), Ok(true)) {
        report::error(
            PgSqlErrorCode::ERRCODE_S_R_E_PROHIBITED_SQL_STATEMENT_ATTEMPTED,
            "password is required",
            Some("Subscriptions owned by non-superusers must give a password in the connection string.".into()),
            Some("Add password=… to the connection string (the publisher must ask for it), or have a superuser create the subscription."),
        );
    }
}

/// SQLSTATE of a protocol error: the server's own code, or a connection-class code.
pub fn sqlstate(err: &Error) -> PgSqlErrorCode {
    if let Some(code) = err.sqlstate() {
        if let Some(c) = code_from_str(code) {
            return c;
        }
    }
    match err {
        Error::Config(_) => PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
        Error::Interrupted => PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN,
        Error::Protocol(_) => PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
        Error::Auth(_) => PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
        _ => PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
    }
}

fn code_from_str(code: &str) -> Option<PgSqlErrorCode> {
    let b = code.as_bytes();
    if b.len() != 5 {
        return None;
    }
    // MAKE_SQLSTATE: each character's 6 low bits of (c - '0'), packed little-end first.
    let mut v: i32 = 0;
    for (i, c) in b.iter().enumerate() {
        v |= (((*c as i32) - ('0' as i32)) & 0x3F) << (6 * i);
    }
    Some(PgSqlErrorCode::from(v))
}

/// Raises an ERROR for a failed publisher operation: `what` says what we were doing; the server's
/// SQLSTATE, detail and hint are kept.
pub fn raise(err: &Error, what: &str, hint: Option<&str>) -> ! {
    let (msg, detail, server_hint) = describe(err);
    let hint = hint.map(str::to_string).or(server_hint);
    report::error(sqlstate(err), format!("{what}: {msg}"), detail, hint.as_deref())
}

/// Message, detail and hint of a protocol error (passwords never appear in them).
pub fn describe(err: &Error) -> (String, Option<String>, Option<String>) {
    match err {
        Error::Server(e) => (e.message.clone(), e.detail.clone(), e.hint.clone()),
        Error::Config(e) => (format!("invalid connection string: {e}"), None, None),
        other => (other.to_string(), None, None),
    }
}
