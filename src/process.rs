//! What every pgsub process (launcher, apply worker, SQL functions) asks of its own backend: the
//! clock, the signal flags, and signals to other pgsub processes.
use pgrx::prelude::*;

/// PostgreSQL's current time as TimestampTz (µs since 2000-01-01).
pub fn now() -> i64 {
    // SAFETY: no preconditions.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// SIGTERM arrived (the launcher's handler sets ShutdownRequestPending; the workers', PostgreSQL's
/// `die`, sets ProcDiePending), or, in an apply worker, a routine stop was asked for through its
/// shared-memory slot (`ask_to_stop`).
pub fn shutdown_requested() -> bool {
    // SAFETY: reading sig_atomic_t flags set by signal handlers.
    let signalled = unsafe {
        std::ptr::addr_of!(pg_sys::ShutdownRequestPending).read_volatile() != 0
            || std::ptr::addr_of!(pg_sys::ProcDiePending).read_volatile() != 0
    };
    signalled || stop_asked()
}

/// This process's `SubSlot::stop_asked_at` (an apply worker's; null elsewhere).
static STOP_REQUEST: std::sync::atomic::AtomicPtr<i64> = std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// An apply worker watches its slot's stop request from now on (the slot stays its own while
/// it runs: slots live in shared memory for the server's life and are reused only once free).
pub fn watch_stop_request(field: &i64) {
    STOP_REQUEST.store(std::ptr::from_ref(field).cast_mut(), std::sync::atomic::Ordering::Relaxed);
}

/// Puts pgsub's empty `search_path` back if anything changed it for the session (code of a
/// table — a trigger, a default — run where no GUC nest level held it): pgsub's own statements,
/// some run as a superuser, resolve names through it (defence in depth: apply statements run at
/// a nest level of their own, `worker/owner.rs`). A backend running the SQL API keeps its own.
pub fn pin_search_path() {
    pin(c"search_path", c"");
}

/// After a local commit of applied changes: deferred triggers ran in it, outside any nest level,
/// and may have changed settings for the session; the ones pgsub's workers rely on are put back.
pub fn repin_session_settings() {
    pin(c"search_path", c"");
    pin(c"session_replication_role", c"replica");
    pin(c"default_transaction_read_only", c"off");
    pin(c"default_transaction_isolation", c"read committed");
}

/// Sets `name` back to `value` for this worker's session if it differs, with a WARNING.
fn pin(name: &std::ffi::CStr, value: &std::ffi::CStr) {
    // SAFETY: MyBackendType is set for every process.
    if unsafe { pg_sys::MyBackendType } != pg_sys::BackendType::B_BG_WORKER {
        return;
    }
    // SAFETY: reads this backend's GUC value (a string owned by guc.c, copied at once).
    let current = unsafe {
        let p = pg_sys::GetConfigOption(name.as_ptr(), true, false);
        (!p.is_null()).then(|| std::ffi::CStr::from_ptr(p).to_bytes().to_vec())
    };
    let Some(current) = current else { return };
    if current == value.to_bytes() {
        return;
    }
    // SAFETY: a session-level setting, as SET does (a lower source than the SET being undone
    // would be ignored).
    unsafe {
        pg_sys::SetConfigOption(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_SESSION,
        )
    };
    crate::report::log(
        pgrx::PgLogLevel::WARNING,
        pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!(
            "pgsub: {} was changed for this worker's session (to \"{}\"); set back to \"{}\"",
            name.to_string_lossy(),
            String::from_utf8_lossy(&current),
            value.to_string_lossy()
        ),
        Some("Code of a replicated table (a trigger, a default, an index expression) changed a setting for the whole session.".into()),
        None,
    );
}

/// This apply worker was asked to stop by a pgsub function (disable, drop, a changed option, a
/// refresh), not only signalled.
pub fn stop_asked_by_pgsub() -> bool {
    stop_asked()
}

fn stop_asked() -> bool {
    let p = STOP_REQUEST.load(std::sync::atomic::Ordering::Relaxed);
    // SAFETY: a pointer into the shared-memory slot array, which is never unmapped; an aligned
    // 8-byte read, written under the slot lock by another backend (a stale value only delays
    // the stop to the next check).
    !p.is_null() && unsafe { p.read_volatile() } != 0
}

/// Why a pgsub function stops a subscription's worker (`SubSlot::stop_reason`): it does so
/// inside its own transaction, before the change is committed, so the worker cannot read it
/// from the catalog. The worker's LOG line says it, in native's words where native has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StopReason {
    Dropped = 1,
    Disabled = 2,
    Refresh = 3,
    Skip = 4,
    /// Its publications changed (`alter_subscription_publications`).
    Publications = 5,
}

impl StopReason {
    pub fn from_u8(v: u8) -> Option<StopReason> {
        [StopReason::Dropped, StopReason::Disabled, StopReason::Refresh, StopReason::Skip, StopReason::Publications]
            .into_iter()
            .find(|r| *r as u8 == v)
    }

    /// What the worker's LOG line says after "… for subscription "name"".
    pub fn says(self) -> &'static str {
        match self {
            StopReason::Dropped => "will stop because the subscription was removed",
            StopReason::Disabled => "will stop because the subscription was disabled",
            StopReason::Refresh => "will restart because the subscription's tables are being refreshed",
            StopReason::Skip => "will restart because its skip_lsn was changed",
            StopReason::Publications => "will restart because of a parameter change",
        }
    }
}

/// How long a worker asked to stop may take before it gets SIGTERM (a statement waiting for a
/// lock, say, only sees a signal).
pub const STOP_GRACE_US: i64 = 5_000_000;

/// Asks the worker of `slot` to stop cleanly and wakes it; returns its pid. A worker asked more
/// than `STOP_GRACE_US` ago gets SIGTERM too. Call under the slot lock, then `wake` the pid.
pub fn ask_to_stop(slot: &mut crate::shmem::SubSlot) -> i32 {
    if slot.pid <= 0 {
        return 0;
    }
    let t = now();
    if slot.stop_asked_at == 0 {
        slot.stop_asked_at = t;
    } else if t - slot.stop_asked_at > STOP_GRACE_US {
        terminate(slot.pid);
    }
    slot.pid
}

/// A worker's SIGTERM is PostgreSQL's `die`, as native apply and tablesync workers have it: the
/// worker's own loops see it (`shutdown_requested`) and stop cleanly, and a wait inside a
/// statement — for a row lock held by a backend dropping the subscription, say — is interrupted
/// too (FATAL), where a flag alone would leave the worker waiting for the very backend that
/// waits for it to exit.
pub fn terminate_on_sigterm() {
    // The server's own `die` (pg_sys::die is a guarded Rust wrapper, not a signal handler).
    unsafe extern "C-unwind" {
        fn die(postgres_signal_arg: std::ffi::c_int);
    }
    // SAFETY: installing PostgreSQL's own handler for a backend's SIGTERM.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        pg_sys::pqsignal(libc::SIGTERM, Some(die));
        #[cfg(feature = "pg18")]
        pg_sys::pqsignal_be(libc::SIGTERM, Some(die));
    }
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

/// Answers the process signals CHECK_FOR_INTERRUPTS would, other than those that end or cancel:
/// a pending ProcSignalBarrier — DROP DATABASE, DROP TABLESPACE and ALTER DATABASE … SET
/// TABLESPACE wait until every process of the server has absorbed theirs — and a
/// `pg_log_backend_memory_contexts()` request. A pgsub process that only waits on its latch and
/// socket must do it itself after each wake, or those commands wait for it forever and the
/// memory contexts of an idle worker are logged only once a change reaches it (minutes later).
pub fn absorb_signals() {
    heartbeat();
    // SAFETY: reading sig_atomic_t flags set by the procsignal handler; ProcessProcSignalBarrier
    // and ProcessLogMemoryContextInterrupt are what ProcessInterrupts calls for them, and these
    // call sites are between statements.
    unsafe {
        if std::ptr::addr_of!(pg_sys::ProcSignalBarrierPending).read_volatile() != 0 {
            pg_sys::ProcessProcSignalBarrier();
        }
        if std::ptr::addr_of!(pg_sys::LogMemoryContextPending).read_volatile() != 0 {
            pg_sys::ProcessLogMemoryContextInterrupt();
        }
    }
}

/// The shared-memory slot a worker's heartbeat stamps (`heartbeat`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Not a worker with a slot (launcher, supervisor, parallel apply worker, a backend).
    None,
    /// An apply worker: its subscription's `SubSlot`.
    Apply(i32),
    /// A table synchronization worker: its table's `SyncSlot`.
    Sync(i32, u32),
}

thread_local! {
    /// This process's heartbeat slot, and when it was last stamped.
    static BEAT: std::cell::Cell<(Beat, Option<std::time::Instant>)> = const { std::cell::Cell::new((Beat::None, None)) };
}

/// From now on this process's heartbeat stamps `beat`'s slot (stamped at once).
pub fn beat_for(beat: Beat) {
    BEAT.with(|b| b.set((beat, None)));
    heartbeat();
}

/// A sign of life: stamps the process's slot's `alive_at` (at most every 250 ms), so that
/// `pgsub.health` can tell a worker that no longer wakes (stopped, hung, or stuck in one long
/// statement) from an idle one, which wakes at least once a second. Called after each wait
/// (`absorb_signals`) and for each change applied or row copied; never under the shared lock.
pub fn heartbeat() {
    let (beat, at) = BEAT.with(|b| b.get());
    if beat == Beat::None || at.is_some_and(|t| t.elapsed() < std::time::Duration::from_millis(250)) {
        return;
    }
    BEAT.with(|b| b.set((beat, Some(std::time::Instant::now()))));
    let stamp = now();
    let mut g = crate::shmem::SHARED.exclusive();
    match beat {
        Beat::Apply(subid) => {
            if let Some(s) = g.find_mut(subid) {
                s.alive_at = stamp;
            }
        }
        Beat::Sync(subid, relid) => {
            if let Some(s) = g.sync_slot_mut(subid, relid) {
                s.alive_at = stamp;
            }
        }
        Beat::None => {}
    }
}

/// What a pgsub process waits for, shown in `pg_stat_activity` (`wait_event_type`,
/// `wait_event`) as native's logical replication processes show the same wait, so that what a
/// DBA watches for a native subscriber reads the same here. Waits native has no name for (and
/// those PostgreSQL 15 has none for) are `Extension`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// An apply or sync worker's stream waiting for the publisher: `Activity` /
    /// `LogicalApplyMain`.
    ApplyMain,
    /// The launcher (and the supervisor) between passes: `Activity` / `LogicalLauncherMain`.
    LauncherMain,
    /// A sync worker waiting for the apply worker's answer, or the apply worker for a sync
    /// worker's catch-up: `IPC` / `LogicalSyncStateChange`.
    SyncStateChange,
    /// A parallel apply worker waiting for its leader's next change: `Activity` /
    /// `LogicalParallelApplyMain` (16+).
    ParallelApplyMain,
    /// The leader waiting for room in a parallel worker's queue: `IPC` / `LogicalApplySendData`
    /// (16+).
    ApplySendData,
    /// The leader waiting for a parallel worker's transaction to start or end: `IPC` /
    /// `LogicalParallelApplyStateChange` (16+).
    ParallelApplyStateChange,
    /// A query on the publisher: `Client` / `LibPQWalReceiverReceive`.
    PublisherReceive,
    /// Connecting to the publisher: `Client` / `LibPQWalReceiverConnect`.
    PublisherConnect,
    /// A sync worker reading its table's rows from the publisher: `IPC` / `LogicalSyncData`.
    SyncData,
    /// A SQL function waiting for a worker to exit: `IPC` / `BgWorkerShutdown`.
    WorkerShutdown,
    /// Anything else: `Extension` / `Extension`.
    Extension,
}

impl Wait {
    /// PostgreSQL's `wait_event_info` for the wait.
    pub fn info(self) -> u32 {
        use pg_sys::{WaitEventActivity as A, WaitEventClient as C, WaitEventIPC as I};
        #[cfg(feature = "pg15")]
        let (parallel_main, send_data, parallel_state) =
            (pg_sys::PG_WAIT_EXTENSION, pg_sys::PG_WAIT_EXTENSION, pg_sys::PG_WAIT_EXTENSION);
        #[cfg(not(feature = "pg15"))]
        let (parallel_main, send_data, parallel_state) = (
            A::WAIT_EVENT_LOGICAL_PARALLEL_APPLY_MAIN,
            I::WAIT_EVENT_LOGICAL_APPLY_SEND_DATA,
            I::WAIT_EVENT_LOGICAL_PARALLEL_APPLY_STATE_CHANGE,
        );
        match self {
            Wait::ApplyMain => A::WAIT_EVENT_LOGICAL_APPLY_MAIN,
            Wait::LauncherMain => A::WAIT_EVENT_LOGICAL_LAUNCHER_MAIN,
            Wait::SyncStateChange => I::WAIT_EVENT_LOGICAL_SYNC_STATE_CHANGE,
            Wait::ParallelApplyMain => parallel_main,
            Wait::ApplySendData => send_data,
            Wait::ParallelApplyStateChange => parallel_state,
            Wait::PublisherReceive => C::WAIT_EVENT_LIBPQWALRECEIVER_RECEIVE,
            Wait::PublisherConnect => C::WAIT_EVENT_LIBPQWALRECEIVER_CONNECT,
            Wait::SyncData => I::WAIT_EVENT_LOGICAL_SYNC_DATA,
            Wait::WorkerShutdown => I::WAIT_EVENT_BGWORKER_SHUTDOWN,
            Wait::Extension => pg_sys::PG_WAIT_EXTENSION,
        }
    }
}

/// A background worker's nap: waits on its latch for up to `ms` (a signal, a wake from another
/// pgsub process or postmaster death ends it early), shown as waiting for `what`, then answers
/// pending process signals (`absorb_signals`). Backends serving SQL wait with
/// `check_for_interrupts!` instead.
pub fn nap(ms: i64, what: Wait) {
    wait_latch(ms.max(0), what);
    absorb_signals();
}

/// Waits on this process's latch for up to `ms` (or postmaster death), then resets it.
fn wait_latch(ms: i64, what: Wait) {
    // SAFETY: latch wait of a process attached to shared memory.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms as std::ffi::c_long,
            what.info(),
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
}

/// In a backend serving SQL: waits on the latch, `step_ms` at a time and at most `timeout`, while
/// `running()` holds; a cancel or termination request ends it with its ERROR.
pub fn backend_wait_while(timeout: std::time::Duration, step_ms: i64, running: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while running() && std::time::Instant::now() < deadline {
        wait_latch(step_ms.max(1), Wait::WorkerShutdown);
        pg_sys::check_for_interrupts!();
    }
}

/// A wait on the latch and one socket (and postmaster death), kept for a connection's life.
/// `WaitLatchOrSocket` builds and frees such a set at every call (epoll_create, three epoll_ctl,
/// close): under a stream that leaves the socket empty for a moment hundreds of times a second
/// that was a sixth of the apply worker's CPU (bench/NOTES.md, 18).
pub struct SocketWait {
    set: *mut pg_sys::WaitEventSet,
    fd: i32,
}

impl SocketWait {
    pub fn new(fd: i32) -> SocketWait {
        use std::ptr::null_mut as null;
        // SAFETY: a wait event set of this process (allocated in TopMemoryContext, owned by no
        // resource owner: freed by Drop); the latch is the process's own.
        unsafe {
            #[cfg(any(feature = "pg15", feature = "pg16"))]
            let set = pg_sys::CreateWaitEventSet(pg_sys::TopMemoryContext, 3);
            #[cfg(not(any(feature = "pg15", feature = "pg16")))]
            let set = pg_sys::CreateWaitEventSet(null(), 3);
            pg_sys::AddWaitEventToSet(set, pg_sys::WL_LATCH_SET, pg_sys::PGINVALID_SOCKET, pg_sys::MyLatch, null());
            pg_sys::AddWaitEventToSet(set, pg_sys::WL_EXIT_ON_PM_DEATH, pg_sys::PGINVALID_SOCKET, null(), null());
            pg_sys::AddWaitEventToSet(set, pg_sys::WL_SOCKET_READABLE, fd, null(), null());
            SocketWait { set, fd }
        }
    }

    pub fn fd(&self) -> i32 {
        self.fd
    }

    /// Sleeps until the latch is set, the socket is readable or `ms` have passed (postmaster
    /// death ends the process), shown as `LogicalApplyMain` (its one use is the stream's wait);
    /// a set latch is reset.
    pub fn wait(&mut self, ms: i64) {
        // SAFETY: the set built in `new`; one event out.
        unsafe {
            let mut event: pg_sys::WaitEvent = std::mem::zeroed();
            let n = pg_sys::WaitEventSetWait(
                self.set,
                ms.max(0) as std::ffi::c_long,
                &mut event,
                1,
                Wait::ApplyMain.info(),
            );
            if n > 0 && event.events & pg_sys::WL_LATCH_SET != 0 {
                pg_sys::ResetLatch(pg_sys::MyLatch);
            }
        }
    }
}

impl Drop for SocketWait {
    fn drop(&mut self) {
        // SAFETY: the set built in `new`, freed once.
        unsafe { pg_sys::FreeWaitEventSet(self.set) };
    }
}

/// Whether `role` is a superuser or has the privileges of one of the roles named.
pub fn has_privs_of_any(role: pg_sys::Oid, names: &[&std::ffi::CStr]) -> bool {
    // SAFETY: catalog lookups of role memberships inside a transaction.
    unsafe {
        pg_sys::superuser_arg(role)
            || names.iter().any(|n| {
                let r = pg_sys::get_role_oid(n.as_ptr(), true);
                r != pg_sys::InvalidOid && pg_sys::has_privs_of_role(role, r)
            })
    }
}
