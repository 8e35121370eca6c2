//! pgsub-core: what the extension decides, separated from how it talks to PostgreSQL.
//!
//! - [`state`]: the subscription status and the table synchronization state machine;
//! - [`sql`]: the text of the statements the apply worker prepares for each relation;
//! - [`launch`]: the launcher's decision, a pure function from (catalog, worker slots, clock) to
//!   actions;
//! - [`tablesync`]: which tables get a table synchronization worker now;
//! - [`supervise`]: the supervisor's decision, which databases get a launcher now;
//! - [`rates`]: the per-second windows behind the rates, and the lag history ring;
//! - [`units`]: setting values as `SHOW` prints them, read back into numbers.
//!
//! Nothing here calls PostgreSQL, so all of it is unit-tested with plain `cargo test`.
pub mod launch;
pub mod rates;
pub mod sql;
pub mod state;
pub mod supervise;
pub mod tablesync;
pub mod units;
