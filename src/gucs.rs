//! pgsub's configuration parameters (GUCs), defined once in `_PG_init`.
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// Databases whose subscriptions pgsub runs, comma-separated; empty = all (postmaster).
pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
/// Maximum number of apply workers pgsub runs at once (postmaster).
pub static MAX_APPLY_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(4);
/// How often the launcher rescans the catalog, in ms.
pub static NAPTIME_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);
/// Delay before restarting a failed worker, in ms (grows with consecutive failures).
pub static RETRY_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(5000);
/// Silence from the publisher after which the connection is considered dead, in ms (0 = never).
pub static RECEIVER_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(60_000);
/// Maximum interval between status updates sent to the publisher, in ms.
pub static STATUS_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
/// Memory for buffering streamed transactions before they spill to files, in kB.
pub static WORK_MEM_KB: GucSetting<i32> = GucSetting::<i32>::new(32 * 1024);
/// Test hook: damage spilled records so that the CRC check can be shown to work.
pub static TEST_CORRUPT_SPILL: GucSetting<bool> = GucSetting::<bool>::new(false);

/// How long `pgsub.conflict_log` keeps a conflict, in seconds (-1 = for ever).
pub static CONFLICT_LOG_RETENTION_S: GucSetting<i32> = GucSetting::<i32>::new(7 * 24 * 3600);

/// Sync workers per subscription at once.
pub static MAX_SYNC_WORKERS_PER_SUBSCRIPTION: GucSetting<i32> = GucSetting::<i32>::new(2);
/// Sync workers at once, server-wide.
pub static MAX_SYNC_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(8);
/// Parallel apply workers per subscription (`streaming => 'parallel'`).
pub static MAX_PARALLEL_APPLY_WORKERS_PER_SUBSCRIPTION: GucSetting<i32> = GucSetting::<i32>::new(2);
/// The `logical_decoding_work_mem` (kB) an apply worker with `streaming => 'parallel'` sets on
/// its walsender connection; -1 leaves the publisher's own setting.
pub static PARALLEL_STREAM_DECODING_WORK_MEM_KB: GucSetting<i32> = GucSetting::<i32>::new(PARALLEL_STREAM_DEFAULT_KB);
const PARALLEL_STREAM_DEFAULT_KB: i32 = 4096;
/// Grouped commits: how long (ms) an apply worker may apply waiting remote transactions in one
/// local transaction before committing it; 0 = one local commit per remote transaction.
pub static GROUP_COMMIT_TIME_MS: GucSetting<i32> = GucSetting::<i32>::new(100);
/// Whether an apply worker flushes its applied commits' WAL itself when its socket is empty,
/// instead of waiting for the WAL writer before it can confirm them (`worker/progress.rs`).
pub static FLUSH_WHEN_IDLE: GucSetting<bool> = GucSetting::<bool>::new(true);
/// While a stream is in full flow, how many bytes (KB) must wait on the replication socket
/// before an apply worker wakes for them; 0 = wake at the first byte (`worker/receive.rs`).
pub static RECEIVE_BATCH_KB: GucSetting<i32> = GucSetting::<i32>::new(32);
/// While changes keep arriving, how often (ms) an apply worker reads the publisher's WAL position
/// over a short ordinary connection, for `lag_bytes`; 0 = never (`worker/walend.rs`).
pub static LAG_PROBE_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
/// Relations whose prepared statements an apply worker keeps; beyond it the least recently
/// used relation's are freed (`worker/relation.rs`).
pub static MAX_CACHED_RELATIONS: GucSetting<i32> = GucSetting::<i32>::new(100);
/// Testing aid: the sync phase in which sync workers wait ('' = none).
pub static SYNC_HOLD_STATE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Defines the parameters. `preloading`: in the postmaster, from shared_preload_libraries; the
/// postmaster-only ones can only be defined then (defining them later is a FATAL error for the
/// session that loads pgsub), and they mean nothing without the supervisor anyway.
pub fn define(preloading: bool) {
    GucRegistry::define_int_guc(
        c"pgsub.max_sync_workers_per_subscription",
        c"Maximum number of table synchronization workers per subscription.",
        c"Tables beyond it wait for their initial copy; they also count against max_worker_processes.",
        &MAX_SYNC_WORKERS_PER_SUBSCRIPTION,
        0,
        1024,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pgsub.max_sync_workers",
        c"Maximum number of pgsub table synchronization workers in all.",
        c"At most 64; each also counts against max_worker_processes.",
        &MAX_SYNC_WORKERS,
        0,
        crate::shmem::MAX_SYNC_SLOTS as i32,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pgsub.max_parallel_apply_workers_per_subscription",
        c"Maximum number of parallel apply workers per subscription.",
        c"With streaming => 'parallel', each applies one large streamed transaction as it arrives; when none is free a transaction is spilled and applied at commit. Each counts against max_worker_processes.",
        &MAX_PARALLEL_APPLY_WORKERS_PER_SUBSCRIPTION,
        0,
        1024,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pgsub.parallel_streaming_decoding_work_mem",
        c"logical_decoding_work_mem asked of the publisher by subscriptions with streaming => 'parallel'.",
        c"The publisher streams a transaction once its decoded changes pass this much memory, so at most this much is left to send and apply when it commits. A publisher set lower keeps its setting; -1 keeps the publisher's own setting (64MB by default) whatever it is. Takes effect when the apply worker next connects.",
        &PARALLEL_STREAM_DECODING_WORK_MEM_KB,
        -1,
        i32::MAX / 1024,
        GucContext::Sighup,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"pgsub.group_commit_time",
        c"How long an apply worker may apply remote transactions that are already waiting in one local transaction.",
        c"Consecutive remote transactions already received share one local commit (committed with the last one's replication origin position) until the socket is empty or this time has passed. 0 commits each remote transaction on its own.",
        &GROUP_COMMIT_TIME_MS,
        0,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"pgsub.flush_when_idle",
        c"Whether an apply worker flushes the WAL of its applied commits when it has nothing else to do.",
        c"With synchronous_commit off, applied commits are confirmed to the publisher once durable. On, the worker flushes them itself as soon as its socket is empty (one WAL flush per idle moment, at most every 10 ms); off, it waits for the WAL writer (up to wal_writer_delay), as PostgreSQL's own subscriber does.",
        &FLUSH_WHEN_IDLE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pgsub.receive_batch",
        c"While changes stream in, how much must wait on the replication socket before an apply worker wakes to read it.",
        c"Only while the last read took at least this much, and at most 1 ms of waiting: the worker then reads and applies in larger pieces and the walsender's sends need not wake it each time. 0 wakes the worker at the first byte. TCP connections only.",
        &RECEIVE_BATCH_KB,
        0,
        1024,
        GucContext::Sighup,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"pgsub.lag_probe_interval",
        c"While changes keep arriving, how often an apply worker reads the publisher's WAL position for lag_bytes.",
        c"A logical walsender reports only how far it has sent: when apply is slower than the publisher, the WAL it has not decoded yet is lag no stream message shows. The worker then connects to the publisher with the subscription's connection string (an ordinary connection, closed at once) and reads pg_current_wal_lsn(). 0 turns it off: lag_bytes then counts from what was received.",
        &LAG_PROBE_INTERVAL_MS,
        0,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pgsub.max_cached_relations",
        c"Relations whose prepared apply statements an apply worker keeps.",
        c"Beyond it the statements of the least recently used relation are freed and prepared again at its next change; its description and column mapping are kept.",
        &MAX_CACHED_RELATIONS,
        1,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pgsub.sync_hold_state",
        c"Testing only: table synchronization workers wait when they reach this state.",
        c"One of copying, copied, catchup, synchronized; empty for none. Never set it in production.",
        &SYNC_HOLD_STATE,
        GucContext::Sighup,
        GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_int_guc(
        c"pgsub.work_mem",
        c"Memory an apply worker uses to buffer streamed transactions before spilling them to files.",
        c"Shared by all in-progress streamed transactions of one subscription.",
        &WORK_MEM_KB,
        64,
        i32::MAX / 1024,
        GucContext::Sighup,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_bool_guc(
        c"pgsub.test_corrupt_spill",
        c"Testing only: damage records written to spill files.",
        c"Shows that spilled data is checksummed; never set it in production.",
        &TEST_CORRUPT_SPILL,
        GucContext::Suset,
        GucFlags::NO_SHOW_ALL,
    );
    if preloading {
        GucRegistry::define_string_guc(
            c"pgsub.database",
            c"Databases whose subscriptions pgsub runs (comma-separated); empty for every database.",
            c"Subscriptions can only be created in these databases; the others get no launcher.",
            &DATABASE,
            GucContext::Postmaster,
            GucFlags::default(),
        );
        GucRegistry::define_int_guc(
            c"pgsub.max_apply_workers",
            c"Maximum number of pgsub apply workers.",
            c"Each enabled subscription needs one; they also count against max_worker_processes.",
            &MAX_APPLY_WORKERS,
            0,
            1024,
            GucContext::Postmaster,
            GucFlags::default(),
        );
    }
    GucRegistry::define_int_guc(
        c"pgsub.naptime",
        c"How often the pgsub launcher rescans the subscription catalog.",
        c"Subscription changes made through pgsub's functions also wake the launcher at once.",
        &NAPTIME_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pgsub.retry_interval",
        c"Time to wait before restarting a failed pgsub apply worker.",
        c"Doubles with each consecutive failure, up to 12 times this value.",
        &RETRY_INTERVAL_MS,
        1,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pgsub.conflict_log_retention",
        c"How long pgsub.conflict_log keeps the record of a conflict.",
        c"Older records are deleted by the database's launcher about once a minute; -1 keeps them for ever.",
        &CONFLICT_LOG_RETENTION_S,
        -1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"pgsub.receiver_timeout",
        c"Terminate a replication connection silent for longer than this.",
        c"A keepalive is requested at half of it. 0 disables the timeout.",
        &RECEIVER_TIMEOUT_MS,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pgsub.status_interval",
        c"Maximum time between status updates sent to the publisher.",
        c"Updates are also sent when the flush position moves and when the publisher asks.",
        &STATUS_INTERVAL_MS,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
}

/// The `pgsub.database` value as written.
pub fn database_setting() -> String {
    DATABASE.get().and_then(|c| c.into_string().ok()).unwrap_or_default()
}

/// The databases `pgsub.database` names (empty = every database).
pub fn databases() -> Vec<String> {
    database_setting().split(',').map(|d| d.trim().to_string()).filter(|d| !d.is_empty()).collect()
}

/// Whether the supervisor serves a database: not a template, and named by `pgsub.database` when
/// that is set.
pub fn database_served(allowed: &[String], name: &str, template: bool) -> bool {
    !template && (allowed.is_empty() || allowed.iter().any(|a| a == name))
}

/// The `pgsub.sync_hold_state` value ('' when unset).
pub fn sync_hold_state() -> String {
    SYNC_HOLD_STATE.get().and_then(|c| c.into_string().ok()).unwrap_or_default()
}

pub fn ms(setting: &GucSetting<i32>) -> std::time::Duration {
    std::time::Duration::from_millis(setting.get().max(0) as u64)
}
