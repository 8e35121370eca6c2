//! The byte pipe under the walsender client: non-blocking TCP / Unix-socket connect (`socket2`), and a
//! [`Transport`] that moves bytes without ever blocking — plain, or through a manually driven
//! `rustls::ClientConnection`. Every call here returns "would block" as `Ok(0)`/`false`; the
//! caller (`io.rs`, `connect.rs`) decides whether to wait, and waits through its `Wait` implementation.
//! Owns no protocol knowledge beyond the TLS records.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use bytes::BytesMut;
use socket2::{Domain, SockAddr, Socket, Type};

use super::error::io_ctx;
use super::{Error, Interest};

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

    /// SO_RCVLOWAT: on TCP, Linux reports the socket readable, and wakes a waiter, only once
    /// `bytes` are queued (or the peer closed); a non-blocking read still takes whatever has
    /// arrived. A Unix-domain socket ignores it for readiness, so it is left alone there.
    pub(crate) fn set_recv_low_water(&self, bytes: u32) -> io::Result<()> {
        let Sock::Tcp(s) = self else { return Ok(()) };
        let v = libc::c_int::try_from(bytes.max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: setsockopt on a socket this Sock owns, with a c_int value of its size.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
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

/// Outcome of starting a non-blocking connect.
pub(crate) enum Started {
    Done(Socket),
    /// In progress: wait until writable, then call [`finish_connect`].
    Pending(Socket),
}

/// A non-blocking, close-on-exec stream socket of `domain`, connecting to `addr`.
fn start_connect(domain: Domain, addr: &SockAddr) -> io::Result<Started> {
    let sock = Socket::new(domain, Type::STREAM.nonblocking().cloexec(), None)?;
    loop {
        match sock.connect(addr) {
            Ok(()) => return Ok(Started::Done(sock)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINPROGRESS) | Some(libc::EAGAIN)) => {
                return Ok(Started::Pending(sock))
            }
            Err(e) => return Err(e),
        }
    }
}

/// After the socket became writable: the connect's result (SO_ERROR).
pub(crate) fn finish_connect(sock: &Socket) -> io::Result<()> {
    match sock.take_error()? {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

pub(crate) fn start_tcp(addr: &SocketAddr) -> io::Result<Started> {
    start_connect(Domain::for_address(*addr), &SockAddr::from(*addr))
}

pub(crate) fn start_unix(path: &Path) -> io::Result<Started> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // sun_path holds the path and its terminating NUL.
    let sun_path_len = std::mem::size_of::<libc::sockaddr_un>() - std::mem::size_of::<libc::sa_family_t>();
    if bytes.len() >= sun_path_len || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("Unix-domain socket path \"{}\" is too long (maximum {} bytes)", path.display(), sun_path_len - 1),
        ));
    }
    start_connect(Domain::UNIX, &SockAddr::unix(path)?)
}

/// Wraps a connected TCP socket: TCP_NODELAY and SO_KEEPALIVE on, as libpq does (best effort).
pub(crate) fn tcp_sock(sock: Socket) -> Sock {
    let _ = sock.set_tcp_nodelay(true);
    let _ = sock.set_keepalive(true);
    Sock::Tcp(TcpStream::from(sock))
}

pub(crate) fn unix_sock(sock: Socket) -> Sock {
    Sock::Unix(UnixStream::from(sock))
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

/// Below this much free room in the read buffer, `recv_into` makes more.
const RECV_MIN_ROOM: usize = 8 * 1024;

/// Appends what the socket `fd` has (room for `max` bytes is made when little is left) to `buf`, received
/// straight into its spare capacity: the room is not zeroed first, as `Read::read` would need
/// (zeroing 64 kB before every `recv` that brought a few kB was a tenth of the apply worker's
/// CPU under a steady stream).
///
/// Room is made only when less than `RECV_MIN_ROOM` is left: the messages already split off
/// share the buffer (decoded rows keep slices of it), so reserving `max` every time would leave a
/// new 64 kB allocation per `recv`, each held by the few rows it brought until they are applied.
fn recv_into(fd: RawFd, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
    if buf.capacity() - buf.len() < RECV_MIN_ROOM.min(max) {
        buf.reserve(max);
    }
    let spare = buf.spare_capacity_mut();
    // SAFETY: `spare` is valid for writes of `spare.len()` bytes; recv writes at most that many
    // and returns how many it wrote, and exactly those become part of `buf`.
    let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the first `n` bytes of the spare capacity were just written by recv.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Appends up to `max` bytes of the plaintext rustls has decrypted to `buf`, copied from its
/// buffer (no zeroed room first, and room made only as needed, as in `recv_into`).
fn read_plaintext(buf: &mut BytesMut, max: usize, mut reader: impl io::BufRead) -> io::Result<usize> {
    let chunk = reader.fill_buf()?;
    let n = chunk.len().min(max);
    buf.extend_from_slice(&chunk[..n]);
    reader.consume(n);
    Ok(n)
}

impl Transport {
    pub(crate) fn plain(sock: Sock) -> Self {
        Transport { sock, tls: None, eof: false }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.sock.fd()
    }

    pub(crate) fn set_recv_low_water(&self, bytes: u32) -> io::Result<()> {
        self.sock.set_recv_low_water(bytes)
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The server's certificate (DER), once the TLS handshake is done.
    pub(crate) fn server_cert(&self) -> Option<Vec<u8>> {
        self.tls.as_ref()?.peer_certificates()?.first().map(|c| c.as_ref().to_vec())
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
                Err(e) => return Err(io_ctx("could not receive data from server", e)),
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
                match recv_into(sock.fd(), buf, max) {
                    Ok(0) => {
                        *eof = true;
                        return Err(Error::Closed);
                    }
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                    Err(e) => return Err(io_ctx("could not receive data from server", e)),
                }
            },
            Some(conn) => loop {
                // 1. Plaintext rustls already decrypted.
                match read_plaintext(buf, max, conn.reader()) {
                    Ok(0) => return Err(Error::Closed), // close_notify received
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(Error::Closed),
                    Err(e) => return Err(io_ctx("could not receive data from server", e)),
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
                    Err(e) => return Err(io_ctx("could not receive data from server", e)),
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
                        return Err(io_ctx(
                            "could not send data to server",
                            io::Error::new(io::ErrorKind::WriteZero, "wrote zero bytes"),
                        ))
                    }
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                    Err(e) => return Err(io_ctx("could not send data to server", e)),
                }
            },
            Some(conn) => {
                let taken = if data.is_empty() {
                    0
                } else {
                    conn.writer().write(data).map_err(|e| io_ctx("could not send data to server", e))?
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
                Err(e) => return Err(io_ctx("could not send data to server", e)),
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
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(Interest::Write)),
                    Err(e) => return Err(io_ctx("could not send data to server", e)),
                }
            }
            if !conn.is_handshaking() {
                return Ok(None);
            }
            match conn.read_tls(sock) {
                Ok(0) => {
                    *eof = true;
                    return Err(Error::Tls("server closed the connection during the TLS handshake".into()));
                }
                Ok(_) => {
                    if let Err(e) = conn.process_new_packets() {
                        return Err(tls_fatal(conn, sock, e));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(Interest::Read)),
                Err(e) => return Err(io_ctx("could not receive data from server", e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Whether `fd` polls readable within `ms`.
    fn readable(fd: RawFd, ms: i32) -> bool {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd on the stack.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        n == 1 && p.revents & libc::POLLIN != 0
    }

    #[test]
    fn a_raised_low_water_mark_holds_readiness_back_but_not_a_nonblocking_read() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let reader = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        reader.set_nonblocking(true).unwrap();
        let sock = Sock::Tcp(reader);
        let mut t = Transport::plain(sock);

        t.set_recv_low_water(1000).unwrap();
        peer.write_all(&[7u8; 10]).unwrap();
        assert!(!readable(t.fd(), 200), "10 bytes queued must not reach a 1000-byte mark");
        let mut buf = BytesMut::new();
        assert_eq!(t.read_some(&mut buf, 4096).unwrap(), 10, "a non-blocking read takes what arrived");

        peer.write_all(&[7u8; 1500]).unwrap();
        assert!(readable(t.fd(), 2000), "1500 bytes pass the mark");
        let mut got = 0;
        while got < 1500 {
            got += t.read_some(&mut buf, 4096).unwrap();
        }

        t.set_recv_low_water(1).unwrap();
        peer.write_all(&[7u8; 1]).unwrap();
        assert!(readable(t.fd(), 2000), "back at the default, one byte is readable");
    }
}
