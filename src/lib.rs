//! pgsub — a logical-replication subscriber for PostgreSQL built from background workers.
//!
//! Loaded through `shared_preload_libraries`, `_PG_init` defines the GUCs ([`gucs`]), reserves
//! shared memory for per-subscription state and statistics ([`shmem`]) and registers the static
//! launcher worker ([`launcher`]). The launcher starts one dynamic apply worker ([`worker`]) per
//! enabled subscription found in the catalog ([`catalog`]); users manage subscriptions with the
//! SQL functions of [`api`] and watch them through the views in `sql/`.
use pgrx::prelude::*;

pub mod api;
pub mod catalog;
pub mod gucs;
pub mod launcher;
pub mod process;
pub mod publisher;
pub mod report;
pub mod shmem;
pub mod stats;
pub mod worker;

::pgrx::pg_module_magic!(name, version);

// Catalog tables first; views after every function they call.
extension_sql_file!("../sql/catalog.sql", name = "catalog", bootstrap);
extension_sql_file!("../sql/views.sql", name = "views", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: reading a PostgreSQL global during module load.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    gucs::define();
    if !preloading {
        // Loaded into a backend only (CREATE EXTENSION without preloading): SQL functions work,
        // but there is no launcher; the views say so.
        return;
    }
    shmem::init();
    launcher::register();
}
