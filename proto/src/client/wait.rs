//! Waiting for the socket: the [`Wait`] trait every blocking point of the client goes through,
//! the readiness it waits for ([`Interest`]), and [`PollWait`], the poll(2) implementation for
//! tools, examples and tests.

use std::io;
use std::os::fd::RawFd;
use std::time::Instant;

use super::Error;

/// The readiness a blocked operation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interest {
    Read,
    Write,
}

/// Blocks until `fd` is ready for `interest`, the deadline passes ([`Error::Timeout`]) or the
/// waiter decides to give up ([`Error::Interrupted`]). Spurious returns are fine: the client
/// retries the operation and calls again if it still would block.
pub trait Wait {
    fn wait(&mut self, fd: RawFd, interest: Interest, deadline: Option<Instant>) -> Result<(), Error>;
}

/// A [`Wait`] on poll(2). Retries on EINTR, so it is never interrupted.
#[derive(Clone, Copy, Debug, Default)]
pub struct PollWait;

impl Wait for PollWait {
    fn wait(&mut self, fd: RawFd, interest: Interest, deadline: Option<Instant>) -> Result<(), Error> {
        loop {
            let timeout_ms: libc::c_int = match deadline {
                None => -1,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(Error::Timeout("timeout expired".into()));
                    }
                    let left = d - now;
                    // Round up so that we never wake just before the deadline and spin.
                    let ms = left.as_micros().div_ceil(1000);
                    ms.min(i32::MAX as u128) as libc::c_int
                }
            };
            let mut pfd = libc::pollfd {
                fd,
                events: match interest {
                    Interest::Read => libc::POLLIN,
                    Interest::Write => libc::POLLOUT,
                },
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::Io(io::Error::new(e.kind(), format!("poll() failed: {e}"))));
            }
            if rc > 0 {
                // Readable/writable, or POLLERR/POLLHUP: the retried operation will report it.
                return Ok(());
            }
            // rc == 0: timeout; the loop re-checks the deadline.
        }
    }
}
