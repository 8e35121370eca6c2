//! What every pgsub process (launcher, apply worker, SQL functions) asks of its own backend: the
//! clock, the signal flags, and signals to other pgsub processes.
use pgrx::prelude::*;

/// PostgreSQL's current time as TimestampTz (µs since 2000-01-01).
pub fn now() -> i64 {
    // SAFETY: no preconditions.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// SIGTERM arrived (a background worker's signal handler set the flag).
pub fn shutdown_requested() -> bool {
    // SAFETY: reading a sig_atomic_t flag set by our SIGTERM handler.
    unsafe { std::ptr::addr_of!(pg_sys::ShutdownRequestPending).read_volatile() != 0 }
}

/// Rereads the configuration after SIGHUP; true when it did.
pub fn reload_config_if_requested() -> bool {
    // SAFETY: flag set by the SIGHUP handler; ProcessConfigFile is the standard response.
    unsafe {
        if std::ptr::addr_of!(pg_sys::ConfigReloadPending).read_volatile() != 0 {
            std::ptr::addr_of_mut!(pg_sys::ConfigReloadPending).write_volatile(0);
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            return true;
        }
    }
    false
}

/// SIGTERM to a pgsub worker's pid (recorded in shared memory by the worker itself).
pub fn terminate(pid: i32) {
    if pid > 0 {
        // SAFETY: signalling a worker pid recorded in our shared memory.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

/// SIGUSR1 to a pgsub process: procsignal's handler sets its latch.
pub fn wake(pid: i32) {
    if pid > 0 {
        // SAFETY: signalling a pid recorded in our shared memory with SIGUSR1.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
    }
}

/// True while a process with this pid exists (for a backend that holds a subscription while it
/// drops or refreshes it; workers clear their own pid when they exit).
pub fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}
