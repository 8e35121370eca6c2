//! The byte pipe under the walsender client: non-blocking TCP / Unix-socket connect, and a
//! [`Transport`] that moves bytes without ever blocking — plain, or through a manually driven
//! `rustls::ClientConnection`. Every call here returns "would block" as `Ok(0)`/`false`; the
//! caller (client.rs) decides whether to wait, and waits through its `Wait` implementation.
//! Owns no protocol knowledge beyond the TLS records.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use bytes::BytesMut;

use super::Error;

/// A connected, non-blocking stream socket.
pub(crate) enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Sock {
    pub(crate) fn fd(&self) -> RawFd {
        match self {
            Sock::Tcp(s) => s.as_raw_fd(),
            Sock::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(buf),
            Sock::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(buf),
            Sock::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Non-blocking connect

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

fn new_socket(domain: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned immediately.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(last_err());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Outcome of starting a non-blocking connect.
pub(crate) enum Started {
    Done(OwnedFd),
    /// In progress: wait until writable, then call [`finish_connect`].
    Pending(OwnedFd),
}

fn start_connect(
    fd: OwnedFd,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> io::Result<Started> {
    loop {
        // SAFETY: addr/len describe a valid sockaddr owned by the caller for this call.
        let rc = unsafe { libc::connect(fd.as_raw_fd(), addr, len) };
        if rc == 0 {
            return Ok(Started::Done(fd));
        }
        let e = last_err();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EINPROGRESS) | Some(libc::EAGAIN) => return Ok(Started::Pending(fd)),
            _ => return Err(e),
        }
    }
}

/// After the socket became writable: the connect's result (SO_ERROR).
pub(crate) fn finish_connect(fd: &OwnedFd) -> io::Result<()> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a c_int of the advertised size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if rc < 0 {
        return Err(last_err());
    }
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    Ok(())
}

pub(crate) fn start_tcp(addr: &SocketAddr) -> io::Result<Started> {
    match addr {
        SocketAddr::V4(a) => {
            let fd = new_socket(libc::AF_INET)?;
            // SAFETY: all-zero is a valid sockaddr_in.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = a.port().to_be();
            sa.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            start_connect(
                fd,
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            let fd = new_socket(libc::AF_INET6)?;
            // SAFETY: all-zero is a valid sockaddr_in6.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = a.port().to_be();
            sa.sin6_flowinfo = a.flowinfo();
            sa.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sa.sin6_scope_id = a.scope_id();
            start_connect(
                fd,
                &sa as *const libc::sockaddr_in6 as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

pub(crate) fn start_unix(path: &Path) -> io::Result<Started> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= sa.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "Unix-domain socket path \"{}\" is too long (maximum {} bytes)",
                path.display(),
                sa.sun_path.len() - 1
            ),
        ));
    }
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in sa.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    let fd = new_socket(libc::AF_UNIX)?;
    start_connect(
        fd,
        &sa as *const libc::sockaddr_un as *const libc::sockaddr,
        len as libc::socklen_t,
    )
}

fn set_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int, val: libc::c_int) {
    // SAFETY: setsockopt with a c_int value; failure is harmless (best effort tuning).
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &val as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Wraps a connected TCP socket: TCP_NODELAY and SO_KEEPALIVE on, as libpq does.
pub(crate) fn tcp_sock(fd: OwnedFd) -> Sock {
    set_int_opt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
    set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    Sock::Tcp(TcpStream::from(fd))
}

pub(crate) fn unix_sock(fd: OwnedFd) -> Sock {
    Sock::Unix(UnixStream::from(fd))
}

// ---------------------------------------------------------------------------------------------
// Transport

/// Plain or TLS byte stream over a non-blocking socket.
pub(crate) struct Transport {
    pub(crate) sock: Sock,
    pub(crate) tls: Option<Box<rustls::ClientConnection>>,
    /// The peer closed its side (EOF seen on the socket).
    eof: bool,
}

fn io_err(context: &str, e: io::Error) -> Error {
    Error::Io(io::Error::new(e.kind(), format!("{context}: {e}")))
}

fn tls_fatal(tls: &mut rustls::ClientConnection, sock: &mut Sock, e: rustls::Error) -> Error {
    // Try to get the alert out; ignore failures (we are erroring anyway).
    let _ = tls.write_tls(sock);
    Error::Tls(describe_tls_error(&e))
}

/// A readable message for a TLS failure (rustls' own text names internal enum variants).
fn describe_tls_error(e: &rustls::Error) -> String {
    use rustls::{CertificateError, Error as E};
    match e {
        E::InvalidCertificate(c) => {
            let why = match c {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    "the server certificate is not signed by a trusted root certificate (check sslrootcert)".to_string()
                }
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    "the server certificate does not match the host name (sslmode=verify-full)".to_string()
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "the server certificate has expired".to_string()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "the server certificate is not valid yet".to_string()
                }
                CertificateError::Revoked => "the server certificate has been revoked".to_string(),
                other => {
                    let text = format!("{other:?}");
                    if text.contains("CaUsedAsEndEntity") {
                        "the server certificate is a CA certificate that is not in sslrootcert, so it cannot be verified".to_string()
                    } else {
                        format!("the server certificate could not be verified ({text})")
                    }
                }
            };
            format!("certificate verify failed: {why}")
        }
        other => other.to_string(),
    }
}

/// Appends up to `max` bytes produced by `f` to `buf`.
fn read_into(
    buf: &mut BytesMut,
    max: usize,
    f: impl FnOnce(&mut [u8]) -> io::Result<usize>,
) -> io::Result<usize> {
    let start = buf.len();
    buf.resize(start + max, 0);
    let r = f(&mut buf[start..]);
    let n = *r.as_ref().unwrap_or(&0);
    buf.truncate(start + n.min(max));
    r
}

impl Transport {
    pub(crate) fn plain(sock: Sock) -> Self {
        Transport {
            sock,
            tls: None,
            eof: false,
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.sock.fd()
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Reads one byte straight from the socket (the SSLRequest answer; nothing beyond it may be
    /// consumed). `Ok(None)` = would block.
    pub(crate) fn read_byte_raw(&mut self) -> Result<Option<u8>, Error> {
        let mut b = [0u8; 1];
        loop {
            match self.sock.read(&mut b) {
                Ok(0) => return Err(Error::Closed),
                Ok(_) => return Ok(Some(b[0])),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(io_err("could not receive data from server", e)),
            }
        }
    }

    /// Appends whatever plaintext is available (at most `max` bytes) to `buf` without blocking.
    /// `Ok(0)` means nothing is available right now (neither in rustls nor in the socket).
    /// End of stream → `Err(Error::Closed)`, but only once every buffered byte was delivered.
    pub(crate) fn read_some(&mut self, buf: &mut BytesMut, max: usize) -> Result<usize, Error> {
        let max = max.max(1);
        let Transport { sock, tls, eof } = self;
        match tls {
            None => loop {
                if *eof {
                    return Err(Error::Closed);
                }
                match read_into(buf, max, |b| sock.read(b)) {
                    Ok(0) => {
                        *eof = true;
                        return Err(Error::Closed);
                    }
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                    Err(e) => return Err(io_err("could not receive data from server", e)),
                }
            },
            Some(conn) => loop {
                // 1. Plaintext rustls already decrypted.
                match read_into(buf, max, |b| conn.reader().read(b)) {
                    Ok(0) => return Err(Error::Closed), // close_notify received
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return Err(Error::Closed)
                    }
                    Err(e) => return Err(io_err("could not receive data from server", e)),
                }
                if *eof {
                    // Nothing buffered and the socket is at EOF without close_notify.
                    return Err(Error::Closed);
                }
                // 2. More TLS records from the socket.
                match conn.read_tls(sock) {
                    Ok(0) => *eof = true,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                    Err(e) => return Err(io_err("could not receive data from server", e)),
                }
                if let Err(e) = conn.process_new_packets() {
                    return Err(tls_fatal(conn, sock, e));
                }
                // Anything rustls must answer (alerts, key updates): send what the socket takes.
                while conn.wants_write() {
                    match conn.write_tls(sock) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break, // would block or broken: the write path will see it
                    }
                }
            },
        }
    }

    /// Writes as much of `data` as possible without blocking; returns how many bytes of `data`
    /// were taken (0 = would block). With TLS, also pushes encrypted records to the socket.
    pub(crate) fn write_some(&mut self, data: &[u8]) -> Result<usize, Error> {
        let Transport { sock, tls, .. } = self;
        match tls {
            None => loop {
                match sock.write(data) {
                    Ok(0) if !data.is_empty() => {
                        return Err(io_err(
                            "could not send data to server",
                            io::Error::new(io::ErrorKind::WriteZero, "wrote zero bytes"),
                        ))
                    }
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                    Err(e) => return Err(io_err("could not send data to server", e)),
                }
            },
            Some(conn) => {
                let taken = if data.is_empty() {
                    0
                } else {
                    conn.writer()
                        .write(data)
                        .map_err(|e| io_err("could not send data to server", e))?
                };
                Self::push_tls(conn, sock)?;
                Ok(taken)
            }
        }
    }

    fn push_tls(conn: &mut rustls::ClientConnection, sock: &mut Sock) -> Result<bool, Error> {
        while conn.wants_write() {
            match conn.write_tls(sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(io_err("could not send data to server", e)),
            }
        }
        Ok(true)
    }

    /// Encrypted bytes queued in rustls that the socket has not taken yet.
    pub(crate) fn has_pending_output(&self) -> bool {
        self.tls.as_ref().is_some_and(|c| c.wants_write())
    }

    /// Pushes queued TLS records without blocking; true when nothing is left.
    pub(crate) fn flush_pending(&mut self) -> Result<bool, Error> {
        let Transport { sock, tls, .. } = self;
        match tls {
            None => Ok(true),
            Some(conn) => Self::push_tls(conn, sock),
        }
    }

    /// Best effort: queue a TLS close_notify and try once to send it.
    pub(crate) fn close_notify(&mut self) {
        let Transport { sock, tls, .. } = self;
        if let Some(conn) = tls {
            conn.send_close_notify();
            let _ = Self::push_tls(conn, sock);
        }
    }

    // -- TLS handshake steps (driven by the client so that it can wait with its deadline) ----

    /// One non-blocking step of the TLS handshake. Returns what to wait for, or `None` when
    /// the handshake is complete and every handshake byte has been sent.
    pub(crate) fn handshake_step(&mut self) -> Result<Option<super::Interest>, Error> {
        let Transport { sock, tls, eof } = self;
        let conn = match tls {
            Some(c) => c,
            None => return Ok(None),
        };
        loop {
            if conn.wants_write() {
                match conn.write_tls(sock) {
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(Some(super::Interest::Write))
                    }
                    Err(e) => return Err(io_err("could not send data to server", e)),
                }
            }
            if !conn.is_handshaking() {
                return Ok(None);
            }
            match conn.read_tls(sock) {
                Ok(0) => {
                    *eof = true;
                    return Err(Error::Tls(
                        "server closed the connection during the TLS handshake".into(),
                    ));
                }
                Ok(_) => {
                    if let Err(e) = conn.process_new_packets() {
                        return Err(tls_fatal(conn, sock, e));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Some(super::Interest::Read))
                }
                Err(e) => return Err(io_err("could not receive data from server", e)),
            }
        }
    }
}
