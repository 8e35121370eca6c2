//! pgsub — a logical-replication subscriber for PostgreSQL built from background workers.
//!
//! Loaded through `shared_preload_libraries`, `_PG_init` defines the GUCs ([`gucs`]), reserves
//! shared memory for per-database and per-subscription state and statistics ([`shmem`]) and
//! registers the static supervisor worker ([`supervisor`]). The supervisor keeps a launcher
//! ([`launcher`]) in every database with enabled subscriptions; each launcher starts one dynamic
//! apply worker ([`worker`]) per enabled subscription found in its database's catalog
//! ([`catalog`]); users manage subscriptions with the SQL functions of [`api`] and watch them
//! through the views in `sql/`.
use pgrx::prelude::*;

pub mod api;
pub mod catalog;
pub mod dbtext;
pub mod dropdb;
pub mod gucs;
pub mod history;
pub mod launcher;
pub mod monitor;
pub mod process;
pub mod publisher;
pub mod report;
pub mod shmem;
pub mod stats;
pub mod statsfile;
pub mod supervisor;
pub mod worker;

::pgrx::pg_module_magic!(name, version);

// Catalog tables first; views after every function they call.
extension_sql_file!("../sql/catalog.sql", name = "catalog", bootstrap);
extension_sql_file!("../sql/views.sql", name = "views", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: reading a PostgreSQL global during module load.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    // pgrx appends a Rust backtrace to the DETAIL of every error that crosses one of its guards
    // when backtraces are on: with RUST_BACKTRACE in the server's environment, users would read
    // them in error messages and in stat_subscription.last_error. RUST_LIB_BACKTRACE=0 turns off
    // only those captures (a panic's own report still follows RUST_BACKTRACE); set while the
    // process is single-threaded (the postmaster, or a backend loading the library).
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    gucs::define(preloading);
    if !preloading {
        // Loaded into a backend only (CREATE EXTENSION without preloading): the extension can
        // be created and read (with a WARNING), subscriptions cannot be created or enabled, and
        // the views say why nothing runs.
        return;
    }
    shmem::init();
    monitor::init();
    dropdb::init();
    supervisor::register();
}
