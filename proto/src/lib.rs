//! pgsub-proto — the publisher side of pgsub's world, in pure Rust (no pgrx, no PostgreSQL needed
//! to test it).
//!
//! * [`lsn`]      — `Lsn`, a WAL position (`X/Y`).
//! * [`conninfo`] — libpq-style connection strings (keyword/value and URI), env fallbacks, masking.
//! * [`frame`]    — CopyBoth payloads of a replication stream: XLogData, keepalive, standby status.
//! * [`pgoutput`] — decoder for every pgoutput message of protocol versions 1–4.
//! * [`spill`]    — memory-then-file buffer of a streamed transaction's messages, CRC-checked.
//! * [`client`]   — a walsender client: connect (TCP/Unix, TLS), authenticate, run replication
//!   commands and plain SQL, COPY TO STDOUT, START_REPLICATION and the CopyBoth stream.
//!
//! Design for latch-aware waiting: the client's socket is always non-blocking. Whenever it must
//! wait for I/O it calls a [`client::Wait`] implementation supplied by the caller with the raw fd,
//! the readiness it needs and a deadline. A standalone program uses [`client::PollWait`] (poll(2));
//! the apply worker supplies a waiter built on `WaitLatchOrSocket`, which returns
//! `Error::Interrupted` on SIGTERM so that every blocking point of the protocol honours it.
//! In the streaming phase `client::Client::recv_frame` never blocks: it returns `Ok(None)` when no
//! whole frame is buffered, and the worker then waits on its latch and the socket itself.
pub mod client;
pub mod conninfo;
pub mod frame;
pub mod lsn;
pub mod pgoutput;
pub mod spill;

pub use lsn::Lsn;
