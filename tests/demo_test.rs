//! The two-node demo: `scripts/demo` end to end, and the docker compose demo as far as it can be
//! checked without a Docker engine.
//!
//! - `scripts/demo` runs for real (non-interactively, short load, `PGSUB_DEMO_SKIP_BUILD=1` since
//!   the extension is installed already) in a temporary demo directory on free ports; the output
//!   must say that both nodes hold equal data and that the lag view moved, a rerun must replace
//!   the running nodes, and `scripts/demo stop` must leave no process of the demo behind.
//! - compose.yaml is parsed (serde_norway) and checked (services, image, wal_level, healthchecks,
//!   depends_on conditions, private network, every mounted or built file exists).
//! - docker/Dockerfile is parsed into stages, ARGs, the shell commands of its RUNs and its COPYs,
//!   and checked for what they do: cargo-pgrx at Cargo.toml's pgrx version, the package built and
//!   copied whole into the runtime image, shared_preload_libraries set in the sample config.
//! - The compose demo's init scripts (docker/initdb/*.sh → scripts/demo-sql/init-node.sh) and its
//!   load service (scripts/demo-sql/load.sh) run natively against harness clusters, with the
//!   environment values taken from compose.yaml.
//! - hadolint, shellcheck (every shell script of the repository) and docker-compose/docker compose
//!   pass; scripts/setup installs them, and a missing one fails the test.

use pgsub_tests::{
    bindir, connect, ensure_installed, free_port, pid_alive, psql_bin, workspace_root, Cluster, TempDir,
};
use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    workspace_root()
}

/// The harness's full comparison of every replicated table (count and md5, waiting for the
/// subscriber to catch up) between the nodes these connection strings reach.
fn assert_replicated_equal_between(pub_connstr: &str, sub_connstr: &str) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let p = connect(pub_connstr).await.unwrap_or_else(|e| panic!("{e}"));
        let s = connect(sub_connstr).await.unwrap_or_else(|e| panic!("{e}"));
        pgsub_tests::assert_replicated_equal(&p, &s).await;
    });
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

// --- running commands ----------------------------------------------------------------------

struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn all(&self) -> String {
        format!("--- stdout ---\n{}\n--- stderr ---\n{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` without stdin in its own process group; after `timeout` the group is killed (by
/// its id, the child's pid) and the test fails.
fn run_with_timeout(mut cmd: Command, timeout: Duration, what: &str) -> Ran {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            // The poll interval of this wait for the command's exit.
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Ok(None) => {
                let pgid = child.id() as i32;
                // SAFETY: signalling the process group we created for this command.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                let _ = child.wait();
                let (o, e) = (t_out.join().unwrap_or_default(), t_err.join().unwrap_or_default());
                panic!("{what}: timed out after {timeout:?}\n--- stdout ---\n{o}\n--- stderr ---\n{e}");
            }
            Err(e) => panic!("{what}: wait: {e}"),
        }
    };
    Ran { status, stdout: t_out.join().unwrap_or_default(), stderr: t_err.join().unwrap_or_default() }
}

fn find_tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file() && p.metadata().map(|m| m.permissions().mode() & 0o111 != 0).unwrap_or(false))
    })
}

// --- compose.yaml --------------------------------------------------------------------------

fn compose() -> Value {
    serde_norway::from_str(&read("compose.yaml")).expect("compose.yaml is valid YAML")
}

fn service<'a>(c: &'a Value, name: &str) -> &'a Value {
    let s = &c["services"][name];
    assert!(s.is_mapping(), "compose.yaml has no service `{name}`");
    s
}

fn str_list(v: &Value, what: &str) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("{what} is not a list"))
        .iter()
        .map(|x| match x {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => panic!("{what}: unexpected item {other:?}"),
        })
        .collect()
}

/// Compose interpolation as `docker compose` does it with the variable unset: `${NAME:-default}`
/// becomes `default`; a variable without a default is an error here (the demo must run without
/// any environment).
fn interpolate(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after.find('}').unwrap_or_else(|| panic!("unclosed ${{ in {s:?}"));
        let expr = &after[..end];
        let (_, default) =
            expr.split_once(":-").unwrap_or_else(|| panic!("${{{expr}}} in compose.yaml has no default"));
        out.push_str(default);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn env_of(svc: &Value, name: &str) -> Option<String> {
    match &svc["environment"][name] {
        Value::String(s) => Some(interpolate(s)),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => None,
        other => panic!("environment {name}: unexpected {other:?}"),
    }
}

/// (host path relative to the repo, container path) of a service's bind mounts.
fn mounts(svc: &Value, name: &str) -> Vec<(String, String)> {
    str_list(&svc["volumes"], &format!("{name}.volumes"))
        .into_iter()
        .map(|m| {
            let parts: Vec<&str> = m.split(':').collect();
            assert!(parts.len() >= 2, "{name}: volume {m:?} is not host:container[:mode]");
            assert!(parts[0].starts_with("./"), "{name}: volume {m:?} is not a bind mount of a repo path");
            if parts.len() == 3 {
                assert_eq!(parts[2], "ro", "{name}: volume {m:?} should be read-only");
            }
            (parts[0].trim_start_matches("./").to_string(), parts[1].to_string())
        })
        .collect()
}

fn assert_healthcheck(svc: &Value, name: &str) {
    let test = str_list(&svc["healthcheck"]["test"], &format!("{name}.healthcheck.test"));
    assert_eq!(test.first().map(String::as_str), Some("CMD"), "{name}: healthcheck {test:?}");
    assert_eq!(test.get(1).map(String::as_str), Some("pg_isready"), "{name}: healthcheck {test:?}");
    // -h 127.0.0.1: the init phase's temporary server has no TCP listener, so the check only
    // passes once the init scripts have run.
    let h = test.iter().position(|a| a == "-h").unwrap_or_else(|| panic!("{name}: healthcheck without -h"));
    assert_eq!(test.get(h + 1).map(String::as_str), Some("127.0.0.1"), "{name}: healthcheck {test:?}");
    for k in ["interval", "timeout", "retries"] {
        assert!(!svc["healthcheck"][k].is_null(), "{name}: healthcheck has no {k}");
    }
}

fn assert_depends_healthy(svc: &Value, name: &str, on: &[&str]) {
    let deps = svc["depends_on"].as_mapping().unwrap_or_else(|| panic!("{name}: depends_on is not a mapping"));
    let got: BTreeSet<String> = deps.keys().filter_map(|k| k.as_str().map(String::from)).collect();
    let want: BTreeSet<String> = on.iter().map(|s| s.to_string()).collect();
    assert_eq!(got, want, "{name}: depends_on");
    for d in on {
        assert_eq!(
            svc["depends_on"][*d]["condition"].as_str(),
            Some("service_healthy"),
            "{name}: depends_on {d} must wait for service_healthy"
        );
    }
}

/// Every `/demo-sql/<file>` a script refers to must be in scripts/demo-sql (mounted there).
fn assert_demo_sql_refs(text: &str, from: &str) {
    let mut found = 0;
    for (i, _) in text.match_indices("/demo-sql/") {
        let name: String = text[i + "/demo-sql/".len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
            .collect();
        if name.is_empty() {
            continue;
        }
        let p = root().join("scripts/demo-sql").join(&name);
        assert!(p.is_file(), "{from} refers to /demo-sql/{name} but {} does not exist", p.display());
        found += 1;
    }
    assert!(found > 0, "{from} refers to no /demo-sql/ file");
}

#[test]
fn compose_file_services_healthchecks_and_files() {
    let c = compose();
    let services: BTreeSet<String> =
        c["services"].as_mapping().expect("services").keys().filter_map(|k| k.as_str().map(String::from)).collect();
    assert_eq!(services, ["load", "publisher", "subscriber"].iter().map(|s| s.to_string()).collect(), "services");

    // Private network: declared, used by every service, nothing published on the host.
    assert!(c["networks"]["pgsub-demo"].is_mapping(), "network pgsub-demo is not declared");
    for name in &services {
        let svc = service(&c, name);
        let nets = str_list(&svc["networks"], &format!("{name}.networks"));
        assert_eq!(nets, vec!["pgsub-demo".to_string()], "{name}: networks");
        assert!(svc["ports"].is_null(), "{name} publishes ports; the demo network is private");
    }

    // publisher: official image, logical WAL, init script from the shared demo SQL.
    let p = service(&c, "publisher");
    assert_eq!(p["image"].as_str(), Some("postgres:15"));
    let cmd = str_list(&p["command"], "publisher.command");
    assert_eq!(cmd.first().map(String::as_str), Some("postgres"), "publisher.command {cmd:?}");
    assert!(
        cmd.windows(2).any(|w| w[0] == "-c" && w[1] == "wal_level=logical"),
        "publisher.command must set wal_level=logical: {cmd:?}"
    );
    assert!(env_of(p, "POSTGRES_PASSWORD").is_some(), "publisher needs POSTGRES_PASSWORD");
    assert!(env_of(p, "DEMO_REPL_PASSWORD").is_some(), "publisher needs DEMO_REPL_PASSWORD");
    assert_healthcheck(p, "publisher");
    assert!(p["depends_on"].is_null(), "publisher depends on nothing");

    // subscriber: built from docker/Dockerfile with the repo as context.
    let s = service(&c, "subscriber");
    let ctx = s["build"]["context"].as_str().expect("subscriber.build.context");
    let dockerfile = s["build"]["dockerfile"].as_str().expect("subscriber.build.dockerfile");
    let ctx_dir = root().join(ctx);
    assert!(ctx_dir.join("Cargo.toml").is_file(), "build context {ctx} is not the repository root");
    assert!(ctx_dir.join(dockerfile).is_file(), "{dockerfile} missing in context {ctx}");
    let conninfo = env_of(s, "DEMO_PUB_CONNINFO").expect("subscriber needs DEMO_PUB_CONNINFO");
    assert!(!conninfo.contains('\n'), "DEMO_PUB_CONNINFO spans lines: {conninfo:?}");
    for kv in ["host=publisher", "port=5432", "dbname=postgres", "user=demo_repl", "password="] {
        assert!(conninfo.contains(kv), "DEMO_PUB_CONNINFO lacks {kv}: {conninfo}");
    }
    assert_eq!(
        conninfo.split_whitespace().find_map(|kv| kv.strip_prefix("password=")),
        env_of(p, "DEMO_REPL_PASSWORD").as_deref(),
        "the subscriber must log in with the publisher's DEMO_REPL_PASSWORD"
    );
    assert_healthcheck(s, "subscriber");
    assert_depends_healthy(s, "subscriber", &["publisher"]);

    // Both nodes: the shared SQL at /demo-sql and one init script each, all existing files.
    for (name, init) in [("publisher", "docker/initdb/publisher.sh"), ("subscriber", "docker/initdb/subscriber.sh")] {
        let svc = service(&c, name);
        let m = mounts(svc, name);
        for (host, _) in &m {
            assert!(root().join(host).exists(), "{name}: mounted {host} does not exist");
        }
        assert!(
            m.iter().any(|(h, c)| h == "scripts/demo-sql" && c == "/demo-sql"),
            "{name} must mount scripts/demo-sql at /demo-sql: {m:?}"
        );
        let (_, target) =
            m.iter().find(|(h, _)| h == init).unwrap_or_else(|| panic!("{name} does not mount {init}: {m:?}"));
        assert!(
            target.starts_with("/docker-entrypoint-initdb.d/") && target.ends_with(".sh"),
            "{name}: {init} must go to /docker-entrypoint-initdb.d/*.sh, not {target}"
        );
        let mode = fs::metadata(root().join(init)).expect("init script").permissions().mode();
        assert!(mode & 0o111 != 0, "{init} must be executable (else the entrypoint sources it)");
        assert_demo_sql_refs(&read(init), init);
    }

    // load: optional profile, waits for both nodes, runs the shared load script.
    let l = service(&c, "load");
    assert_eq!(str_list(&l["profiles"], "load.profiles"), vec!["load".to_string()]);
    assert_eq!(l["image"].as_str(), Some("postgres:15"));
    assert_depends_healthy(l, "load", &["publisher", "subscriber"]);
    let entry = str_list(&l["entrypoint"], "load.entrypoint").join(" ");
    assert_demo_sql_refs(&entry, "load.entrypoint");
    for (k, host) in [("DEMO_PUB_DSN", "host=publisher"), ("DEMO_SUB_DSN", "host=subscriber")] {
        let dsn = env_of(l, k).unwrap_or_else(|| panic!("load needs {k}"));
        assert!(dsn.contains(host), "{k} = {dsn}");
    }
    let m = mounts(l, "load");
    assert!(m.iter().any(|(h, c)| h == "scripts/demo-sql" && c == "/demo-sql"), "load mounts {m:?}");

    // What the shared scripts need in scripts/demo-sql.
    for f in ["init-node.sh", "load.sh", "load.sql", "publisher.sql", "subscriber.sql", "schema.sql"] {
        assert!(root().join("scripts/demo-sql").join(f).is_file(), "scripts/demo-sql/{f} missing");
    }
}

// --- Dockerfile ----------------------------------------------------------------------------
//
// The Dockerfile is parsed into what it means: global ARGs, stages (`FROM image AS name`) and
// their instructions; each RUN into the shell commands it runs (words after quote removal and
// expansion of the stage's ARG/ENV values, split at `&&`, `||`, `;`, `|`), each COPY into its
// `--from` stage, sources and destination. The test asserts on those, not on the text's layout.

/// One instruction of a stage: the keyword (upper case) and its arguments (continuation lines
/// joined, comment lines dropped).
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

#[derive(Debug)]
struct Stage {
    image: String,
    name: Option<String>,
    instructions: Vec<Instruction>,
}

impl Stage {
    fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.image.clone())
    }

    /// The stage's ARG and ENV values (`NAME=value`; a bare ARG has none), in order.
    fn vars(&self, global: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut vars = BTreeMap::new();
        for i in &self.instructions {
            if i.keyword == "ARG" || i.keyword == "ENV" {
                for w in shell_words(&i.args, &vars) {
                    match w.split_once('=') {
                        Some((k, v)) => vars.insert(k.to_string(), v.to_string()),
                        // ARG NAME without a default takes the global ARG's value.
                        None => global.get(&w).map(|v| vars.insert(w.clone(), v.clone())).unwrap_or_default(),
                    };
                }
            }
        }
        vars
    }

    /// Every shell command of the stage's RUN instructions, each as its words (leading shell
    /// keywords like `then` dropped).
    fn commands(&self, global: &BTreeMap<String, String>) -> Vec<Vec<String>> {
        let vars = self.vars(global);
        self.instructions.iter().filter(|i| i.keyword == "RUN").flat_map(|i| shell_commands(&i.args, &vars)).collect()
    }

    /// The stage's COPY instructions: (`--from` stage, sources, destination).
    fn copies(&self) -> Vec<(Option<String>, Vec<String>, String)> {
        self.instructions
            .iter()
            .filter(|i| i.keyword == "COPY")
            .map(|i| {
                let mut from = None;
                let mut paths = Vec::new();
                for w in shell_words(&i.args, &BTreeMap::new()) {
                    match w.strip_prefix("--from=") {
                        Some(f) => from = Some(f.to_string()),
                        None if w.starts_with("--") => {}
                        None => paths.push(w),
                    }
                }
                let dest = paths.pop().unwrap_or_else(|| panic!("COPY without a destination: {}", i.args));
                (from, paths, dest)
            })
            .collect()
    }
}

#[derive(Debug)]
struct Dockerfile {
    /// ARGs before the first FROM, with their defaults.
    global_args: BTreeMap<String, String>,
    stages: Vec<Stage>,
}

impl Dockerfile {
    fn parse(text: &str) -> Dockerfile {
        let mut instructions = Vec::new();
        let mut cur = String::new();
        for line in text.lines() {
            let t = line.trim();
            // Comment lines (also between continuation lines) and blank lines are not part of
            // an instruction.
            if t.starts_with('#') || t.is_empty() {
                continue;
            }
            match t.strip_suffix('\\') {
                Some(body) => {
                    cur.push_str(body);
                    cur.push(' ');
                }
                None => {
                    cur.push_str(t);
                    let (keyword, args) = cur.trim().split_once(char::is_whitespace).unwrap_or((cur.trim(), ""));
                    instructions
                        .push(Instruction { keyword: keyword.to_ascii_uppercase(), args: args.trim().to_string() });
                    cur.clear();
                }
            }
        }
        let mut global_args = BTreeMap::new();
        let mut stages: Vec<Stage> = Vec::new();
        for i in instructions {
            if i.keyword == "FROM" {
                let words: Vec<String> = shell_words(&i.args, &global_args);
                let image = words.iter().find(|w| !w.starts_with("--")).cloned().expect("FROM without an image");
                let name =
                    words.iter().position(|w| w.eq_ignore_ascii_case("AS")).and_then(|p| words.get(p + 1)).cloned();
                stages.push(Stage { image, name, instructions: Vec::new() });
            } else if let Some(s) = stages.last_mut() {
                s.instructions.push(i);
            } else if i.keyword == "ARG" {
                for w in shell_words(&i.args, &BTreeMap::new()) {
                    let (k, v) = w.split_once('=').unwrap_or_else(|| panic!("global ARG {w} has no default"));
                    global_args.insert(k.to_string(), v.to_string());
                }
            }
        }
        Dockerfile { global_args, stages }
    }

    fn stage(&self, name: &str) -> &Stage {
        self.stages
            .iter()
            .find(|s| s.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("docker/Dockerfile has no stage named {name}"))
    }
}

/// Shell words of `text` (quotes removed; `$NAME`/`${NAME}` of `vars` expanded, other expansions
/// and command substitutions kept as written), with the operators `&&`, `||`, `;`, `;;`, `|`, `&`
/// as words of their own. Enough of the shell for docker/Dockerfile, checked by
/// `dockerfile_parser_understands_the_shell_it_meets`.
fn shell_words(text: &str, vars: &BTreeMap<String, String>) -> Vec<String> {
    let c: Vec<char> = text.chars().collect();
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut i = 0;
    // The end (exclusive) of a `$(...)` starting at `start` (at the `$`), quotes and nesting
    // taken into account.
    fn subst_end(c: &[char], start: usize) -> usize {
        let (mut depth, mut i, mut quote) = (0, start + 1, None::<char>);
        while i < c.len() {
            match (quote, c[i]) {
                (Some(q), ch) if ch == q => quote = None,
                (Some('"'), '\\') => i += 1,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c[i]),
                (None, '\\') => i += 1,
                (None, '(') => depth += 1,
                (None, ')') => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        c.len()
    }
    // A `$` expansion at `i`: appends its value (or its text) to `out`; returns the next index.
    let expand = |i: usize, out: &mut String| -> usize {
        if c.get(i + 1) == Some(&'(') {
            let end = subst_end(&c, i);
            out.extend(&c[i..end]);
            return end;
        }
        let (name, end, raw_end) = if c.get(i + 1) == Some(&'{') {
            let close = (i + 2..c.len()).find(|&j| c[j] == '}').unwrap_or(c.len() - 1);
            (c[i + 2..close].iter().collect::<String>(), close + 1, close + 1)
        } else {
            let end = (i + 1..c.len()).find(|&j| !(c[j].is_ascii_alphanumeric() || c[j] == '_')).unwrap_or(c.len());
            (c[i + 1..end].iter().collect::<String>(), end, end)
        };
        match vars.get(&name) {
            Some(v) => out.push_str(v),
            None => out.extend(&c[i..raw_end]),
        }
        end
    };
    while i < c.len() {
        let ch = c[i];
        match ch {
            _ if ch.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
                i += 1;
            }
            '\'' => {
                let end = (i + 1..c.len()).find(|&j| c[j] == '\'').unwrap_or(c.len());
                cur.extend(&c[i + 1..end]);
                in_word = true;
                i = end + 1;
            }
            '"' => {
                i += 1;
                while i < c.len() && c[i] != '"' {
                    match c[i] {
                        '\\' if i + 1 < c.len() && "$`\"\\\n".contains(c[i + 1]) => {
                            cur.push(c[i + 1]);
                            i += 2;
                        }
                        '$' => i = expand(i, &mut cur),
                        other => {
                            cur.push(other);
                            i += 1;
                        }
                    }
                }
                in_word = true;
                i += 1;
            }
            '\\' => {
                if let Some(&next) = c.get(i + 1) {
                    cur.push(next);
                }
                in_word = true;
                i += 2;
            }
            '$' => {
                i = expand(i, &mut cur);
                in_word = true;
            }
            // `>&2`, `2>&1`: a redirection, not an operator.
            '&' if in_word && (cur.ends_with('>') || cur.ends_with('<')) => {
                cur.push('&');
                i += 1;
            }
            '&' | '|' | ';' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
                let op: String = if c.get(i + 1) == Some(&ch) { [ch, ch].iter().collect() } else { ch.to_string() };
                i += op.len();
                words.push(op);
            }
            other => {
                cur.push(other);
                in_word = true;
                i += 1;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// The simple commands of a shell command line: [`shell_words`] split at the operators, leading
/// keywords (`if`, `then`, `else`, `do`, `!`, …) dropped, empty ones left out.
fn shell_commands(text: &str, vars: &BTreeMap<String, String>) -> Vec<Vec<String>> {
    const KEYWORDS: [&str; 10] = ["if", "then", "else", "elif", "fi", "do", "done", "!", "{", "}"];
    let mut out = Vec::new();
    let mut cmd: Vec<String> = Vec::new();
    for w in shell_words(text, vars) {
        if ["&&", "||", ";", ";;", "|", "&"].contains(&w.as_str()) {
            if !cmd.is_empty() {
                out.push(std::mem::take(&mut cmd));
            }
        } else if !(cmd.is_empty() && KEYWORDS.contains(&w.as_str())) {
            cmd.push(w);
        }
    }
    if !cmd.is_empty() {
        out.push(cmd);
    }
    out
}

/// The commands of `cmds` that start with `prefix`.
fn commands_starting<'a>(cmds: &'a [Vec<String>], prefix: &[&str]) -> Vec<&'a Vec<String>> {
    cmds.iter().filter(|c| c.len() >= prefix.len() && c.iter().zip(prefix).all(|(a, b)| a == b)).collect()
}

/// The value of option `opt` in a command (`--opt value` or `--opt=value`).
fn option_value<'a>(cmd: &'a [String], opt: &str) -> Option<&'a str> {
    cmd.iter().enumerate().find_map(|(i, w)| {
        if w == opt {
            cmd.get(i + 1).map(String::as_str)
        } else {
            w.strip_prefix(opt).and_then(|r| r.strip_prefix('='))
        }
    })
}

/// The packages `apt-get install` commands of `cmds` install (a `=version` suffix removed).
fn apt_installed(cmds: &[Vec<String>]) -> BTreeSet<String> {
    commands_starting(cmds, &["apt-get", "install"])
        .into_iter()
        .flat_map(|c| c[2..].iter().filter(|w| !w.starts_with('-')))
        .map(|w| w.split('=').next().unwrap_or(w).to_string())
        .collect()
}

/// The pgrx version pinned in Cargo.toml (`pgrx = "=X.Y.Z"`).
fn cargo_pgrx_version() -> String {
    let toml = read("Cargo.toml");
    let line = toml.lines().find(|l| l.trim_start().starts_with("pgrx = ")).expect("Cargo.toml has a pgrx dependency");
    let v = line.split('"').nth(1).expect("pgrx = \"...\"");
    v.trim_start_matches('=').to_string()
}

#[test]
fn dockerfile_stages_and_pgrx_version() {
    let df = Dockerfile::parse(&read("docker/Dockerfile"));
    let g = &df.global_args;
    assert!(df.stages.len() >= 2, "docker/Dockerfile must be multi-stage: {:?}", df.stages);
    let build = df.stage("build");
    assert_eq!(build.image, "rust:1-bookworm", "the build stage's image");
    let runtime = df.stages.last().expect("final stage");
    assert_eq!(runtime.image, "postgres:15", "the runtime (final) stage's image");

    // The build stage installs cargo-pgrx at Cargo.toml's pgrx version (and so does scripts/setup)
    // and builds with it.
    let pgrx = cargo_pgrx_version();
    let b = build.commands(g);
    let installs = commands_starting(&b, &["cargo", "install", "cargo-pgrx"]);
    assert_eq!(installs.len(), 1, "one `cargo install cargo-pgrx` in the build stage: {b:?}");
    assert_eq!(option_value(installs[0], "--version"), Some(pgrx.as_str()), "cargo-pgrx version vs Cargo.toml's pgrx");
    assert!(installs[0].iter().any(|w| w == "--locked"), "cargo install cargo-pgrx --locked: {:?}", installs[0]);
    let setup_pgrx = read("scripts/setup").lines().find_map(|l| l.strip_prefix("PGRX_VERSION=").map(str::to_string));
    assert_eq!(setup_pgrx.as_deref(), Some(pgrx.as_str()), "scripts/setup installs another cargo-pgrx");
    let pg_config = "/usr/lib/postgresql/15/bin/pg_config";
    let init = commands_starting(&b, &["cargo", "pgrx", "init"]);
    assert!(
        init.iter().any(|c| option_value(c, "--pg15") == Some(pg_config)),
        "cargo pgrx init --pg15 {pg_config}: {b:?}"
    );
    let package = commands_starting(&b, &["cargo", "pgrx", "package"]);
    assert_eq!(package.len(), 1, "one `cargo pgrx package` in the build stage: {b:?}");
    assert_eq!(option_value(package[0], "--pg-config"), Some(pg_config), "{:?}", package[0]);
    let out_dir = option_value(package[0], "--out-dir").expect("cargo pgrx package --out-dir");
    // PostgreSQL 15 headers (from PGDG, set up by its script), clang/libclang for bindgen.
    let apt = apt_installed(&b);
    for p in ["postgresql-server-dev-15", "libclang-dev", "clang"] {
        assert!(apt.contains(p), "the build stage does not install {p}: {apt:?}");
    }
    assert!(
        b.iter().any(|c| c[0].ends_with("/apt.postgresql.org.sh")),
        "the build stage does not add the PGDG repository (apt.postgresql.org.sh): {b:?}"
    );
    let build_copies = build.copies();
    assert!(
        build_copies.iter().any(|(from, src, dest)| from.is_none() && src == &["."] && dest == "."),
        "the build stage copies the context (COPY . .): {build_copies:?}"
    );

    // The headers must match the runtime's server: a stage of the runtime's image records its
    // PG_VERSION, and the build stage copies that record.
    let recorder = df
        .stages
        .iter()
        .find(|s| s.image == runtime.image && s.name.is_some() && !std::ptr::eq(*s, runtime))
        .expect("a stage of the runtime's image that records its version");
    assert!(
        recorder.commands(g).iter().flatten().any(|w| w.contains("$PG_VERSION")),
        "stage {} does not record $PG_VERSION",
        recorder.label()
    );
    assert!(
        build_copies.iter().any(|(from, _, _)| from.as_deref() == recorder.name.as_deref()),
        "the build stage does not read the runtime's version (COPY --from={})",
        recorder.label()
    );

    // The runtime stage copies exactly the packaged files: one COPY from the build stage, of the
    // package's usr/ tree (everything `cargo pgrx package` put in its --out-dir, and nothing else
    // writes there) onto /usr/.
    let runtime_copies = runtime.copies();
    let from_build: Vec<_> = runtime_copies.iter().filter(|(from, _, _)| from.as_deref() == Some("build")).collect();
    assert_eq!(from_build.len(), 1, "one COPY --from=build in the runtime stage: {runtime_copies:?}");
    let (_, src, dest) = from_build[0];
    let out = out_dir.trim_end_matches('/');
    assert_eq!(src, &[format!("{out}/usr/")], "the runtime copies the package's usr/ tree");
    assert_eq!(dest, "/usr/", "… onto /usr/");
    let writers: Vec<&Vec<String>> = b.iter().filter(|c| c.iter().any(|w| w.starts_with(out))).collect();
    assert!(
        writers.iter().all(|c| c.starts_with(&["cargo".into(), "pgrx".into(), "package".into()]) || c[0] == "test"),
        "only cargo pgrx package writes to {out} (and `test -f` checks it): {writers:?}"
    );
    // What the build checks it packaged is what the runtime checks it has, under /usr.
    let checked = |cmds: &[Vec<String>], prefix: &str| -> BTreeSet<String> {
        commands_starting(cmds, &["test", "-f"])
            .into_iter()
            .filter_map(|c| c.get(2)?.strip_prefix(prefix).map(str::to_string))
            .collect()
    };
    let r = runtime.commands(g);
    let packaged = checked(&b, &format!("{out}/usr/"));
    assert!(packaged.contains("lib/postgresql/15/lib/pgsub.so"), "the build checks pgsub.so: {packaged:?}");
    assert!(
        packaged.contains("share/postgresql/15/extension/pgsub.control"),
        "the build checks pgsub.control: {packaged:?}"
    );
    let present: BTreeSet<String> = checked(&r, "/usr/").into_iter().map(|p| p.replace("$PG_MAJOR", "15")).collect();
    assert_eq!(present, packaged, "the runtime checks the files the build packaged");

    // shared_preload_libraries = 'pgsub' in the sample configuration initdb copies: the runtime's
    // sed expression, applied to PostgreSQL 15's own sample, sets it (and its grep checks it).
    let sample = "/usr/share/postgresql/postgresql.conf.sample";
    let seds: Vec<&Vec<String>> =
        commands_starting(&r, &["sed"]).into_iter().filter(|c| c.last().map(String::as_str) == Some(sample)).collect();
    assert_eq!(seds.len(), 1, "one sed on {sample} in the runtime stage: {r:?}");
    let sed = seds[0];
    assert!(sed.iter().any(|w| w.starts_with('-') && w.contains('i')), "sed edits {sample} in place: {sed:?}");
    let expr = sed[1..sed.len() - 1].iter().find(|w| !w.starts_with('-')).expect("sed expression");
    let local_sample = PathBuf::from(
        Command::new(pgsub_tests::pg_config())
            .arg("--sharedir")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .expect("pg_config --sharedir"),
    )
    .join("postgresql.conf.sample");
    let mut cmd = Command::new("sed");
    cmd.args(["-r", "-e", expr]).arg(&local_sample);
    let edited = run_with_timeout(cmd, Duration::from_secs(30), "sed");
    assert!(edited.status.success(), "{}", edited.all());
    let preload: Vec<&str> =
        edited.stdout.lines().filter(|l| l.trim_start().starts_with("shared_preload_libraries")).collect();
    assert_eq!(preload, vec!["shared_preload_libraries = 'pgsub'"], "the sed expression on {}", local_sample.display());
    assert!(
        commands_starting(&r, &["grep", "-q"])
            .iter()
            .any(|c| c.get(2).is_some_and(|p| p.contains("shared_preload_libraries = 'pgsub'"))
                && c.last().map(String::as_str) == Some(sample)),
        "the runtime stage does not check the preload line: {r:?}"
    );

    // The context: everything the build needs is in it and not ignored; bulky things are out.
    let ignore = read("docker/Dockerfile.dockerignore");
    let ignored: BTreeSet<&str> =
        ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    for needed in ["Cargo.toml", "Cargo.lock", "pgsub.control", "src", "sql", "proto", "tests"] {
        assert!(root().join(needed).exists(), "{needed} missing from the build context");
        assert!(!ignored.contains(needed), "{needed} is excluded by Dockerfile.dockerignore");
    }
    for bulky in [".git", "target", "demo"] {
        assert!(ignored.contains(bulky), "Dockerfile.dockerignore should exclude {bulky}");
    }
}

/// The parser on the constructs docker/Dockerfile uses: continuation lines with a comment in
/// between, quotes, `$(…)` with quotes inside, ARG expansion, `if … fi`.
#[test]
fn dockerfile_parser_understands_the_shell_it_meets() {
    let df = Dockerfile::parse(
        "ARG IMG=postgres:15\n\
         FROM ${IMG} AS first\n\
         ARG V=1.2.3\n\
         # a comment line\n\
         RUN a=\"$(cut -d- -f1 /x | awk -v u=\"$y\" '$3 ~ \"^\" u { print $3 }')\" \\\n\
         # a comment between continuation lines\n\
          && if [ -n \"$a\" ]; then apt-get install -y \"pkg=$a\" other; else echo 'no $V' >&2; fi \\\n\
          && cargo install tool --version \"$V\" --locked\n\
         COPY --from=first /a /b /dest/\n",
    );
    assert_eq!(df.stages.len(), 1);
    let s = &df.stages[0];
    assert_eq!((s.image.as_str(), s.name.as_deref()), ("postgres:15", Some("first")));
    let cmds = s.commands(&df.global_args);
    assert_eq!(apt_installed(&cmds), ["other", "pkg"].iter().map(|s| s.to_string()).collect());
    let tool = commands_starting(&cmds, &["cargo", "install", "tool"]);
    assert_eq!(option_value(tool[0], "--version"), Some("1.2.3"));
    assert!(cmds.iter().any(|c| c == &["echo", "no $V", ">&2"]), "{cmds:?}");
    assert!(cmds[0][0].starts_with("a=$(cut -d- -f1 /x | awk -v u=\"$y\""), "{cmds:?}");
    assert_eq!(
        s.copies(),
        vec![(Some("first".to_string()), vec!["/a".to_string(), "/b".to_string()], "/dest/".to_string())]
    );
}

/// A linter from PATH, or from the project's tool directory that scripts/setup fills
/// (`$PGSUB_TOOLS_DIR`, default `<repo>/target/tools`, where pip puts hadolint).
fn linter(name: &str) -> Option<PathBuf> {
    find_tool(name).or_else(|| {
        let dir = std::env::var_os("PGSUB_TOOLS_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target/tools"));
        let p = dir.join("bin").join(name);
        p.is_file().then_some(p)
    })
}

/// Every shell script of the repository: what shellcheck checks.
const SHELL_SCRIPTS: [&str; 17] = [
    "scripts/demo",
    "scripts/setup",
    "scripts/test",
    "scripts/fuzz",
    "scripts/lib/cluster.sh",
    "scripts/lib/pg_versions.sh",
    "scripts/demo-sql/init-node.sh",
    "scripts/demo-sql/load.sh",
    "docker/initdb/publisher.sh",
    "docker/initdb/subscriber.sh",
    "bench/run",
    "bench/many_small_tables.sh",
    "bench/full_identity.sh",
    "bench/lib/pair.sh",
    "bench/scale.sh",
    "bench/latency",
    "bench/verify",
];

/// Files under `dir` (recursively) that are shell scripts: a `.sh` name or a shell `#!` line.
fn shell_scripts_under(dir: &Path, out: &mut Vec<String>) {
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten() {
        let p = e.path();
        if p.is_dir() {
            if !["work", "results"].contains(&e.file_name().to_str().unwrap_or("")) {
                shell_scripts_under(&p, out);
            }
            continue;
        }
        let head: String =
            fs::read(&p).map(|b| String::from_utf8_lossy(&b[..b.len().min(64)]).into_owned()).unwrap_or_default();
        let first = head.lines().next().unwrap_or("");
        let shebang_sh = first.starts_with("#!") && (first.ends_with("bash") || first.ends_with("/sh"));
        if shebang_sh || p.extension().is_some_and(|x| x == "sh") {
            out.push(p.strip_prefix(root()).expect("under the root").to_string_lossy().into_owned());
        }
    }
}

/// hadolint on docker/Dockerfile, shellcheck (following sourced files) on every shell script and
/// Compose's own check of compose.yaml. scripts/setup installs all three; a missing one fails.
#[test]
fn linters_pass() {
    let mut found = Vec::new();
    for dir in ["scripts", "bench", "docker"] {
        shell_scripts_under(&root().join(dir), &mut found);
    }
    found.sort();
    let mut listed: Vec<String> = SHELL_SCRIPTS.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(found, listed, "shell scripts in the repository vs the ones shellcheck checks here");

    let mut missing = Vec::new();
    let mut check = |tool: &str, args: &[&str]| match linter(tool) {
        Some(path) => {
            let mut cmd = Command::new(path);
            cmd.current_dir(root()).args(args);
            let r = run_with_timeout(cmd, Duration::from_secs(120), tool);
            assert!(r.status.success(), "{tool} {args:?} failed:\n{}", r.all());
            eprintln!("{tool} {}: ok", args.join(" "));
        }
        None => missing.push(tool.to_string()),
    };
    check("hadolint", &["docker/Dockerfile"]);
    let mut shellcheck_args = vec!["-x"];
    shellcheck_args.extend(SHELL_SCRIPTS);
    check("shellcheck", &shellcheck_args);
    // Either Compose: the v2 plugin (docker compose) where the docker CLI has it, else v1
    // (docker-compose, Debian's package, which scripts/setup installs).
    let compose_v2 = linter("docker").is_some_and(|d| {
        Command::new(d)
            .args(["compose", "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if compose_v2 {
        check("docker", &["compose", "-f", "compose.yaml", "--profile", "load", "config", "-q"]);
    } else {
        check("docker-compose", &["-f", "compose.yaml", "--profile", "load", "config", "-q"]);
    }
    assert!(missing.is_empty(), "not installed: {} (scripts/setup installs them)", missing.join(", "));
}

// --- the compose demo's scripts, natively ----------------------------------------------------

fn pg_path() -> String {
    let bin = bindir().expect("pg_config --bindir");
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())
}

/// The compose publisher's and subscriber's init scripts and the load service's script, run
/// against harness clusters with compose.yaml's environment (the service host names replaced by
/// the clusters' loopback addresses).
#[test]
fn compose_init_and_load_scripts_replicate_natively() {
    ensure_installed().expect("pgsub installed");
    let c = compose();
    let (p_svc, s_svc, l_svc) = (service(&c, "publisher"), service(&c, "subscriber"), service(&c, "load"));
    let publisher = Cluster::publisher().expect("publisher");
    let subscriber = Cluster::subscriber().expect("subscriber");
    let local = |v: String| {
        v.replace("host=publisher port=5432", &format!("host=127.0.0.1 port={}", publisher.port()))
            .replace("host=publisher", &format!("host=127.0.0.1 port={}", publisher.port()))
            .replace("host=subscriber", &format!("host=127.0.0.1 port={}", subscriber.port()))
    };
    let sql_dir = root().join("scripts/demo-sql");

    let init = |script: &str, node: &Cluster, svc: &Value, extra: &[(&str, String)]| {
        let mut cmd = Command::new("bash");
        cmd.arg(root().join(script))
            .env("PATH", pg_path())
            .env("DEMO_SQL_DIR", &sql_dir)
            .env("PGHOST", node.dir())
            .env("PGPORT", node.port().to_string())
            .env("POSTGRES_USER", "postgres")
            .env_remove("POSTGRES_DB")
            .env_remove("PGDATABASE");
        if let Some(pw) = env_of(svc, "POSTGRES_PASSWORD") {
            cmd.env("POSTGRES_PASSWORD", pw);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let r = run_with_timeout(cmd, Duration::from_secs(120), script);
        assert!(r.status.success(), "{script} failed:\n{}", r.all());
        r
    };
    let pw = env_of(p_svc, "DEMO_REPL_PASSWORD").expect("DEMO_REPL_PASSWORD");
    init("docker/initdb/publisher.sh", &publisher, p_svc, &[("DEMO_REPL_PASSWORD", pw)]);
    assert_eq!(
        publisher.psql("postgres", "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'demo_pub'").unwrap(),
        "3"
    );
    let conninfo = local(env_of(s_svc, "DEMO_PUB_CONNINFO").expect("DEMO_PUB_CONNINFO"));
    init("docker/initdb/subscriber.sh", &subscriber, s_svc, &[("DEMO_PUB_CONNINFO", conninfo)]);
    assert_eq!(
        subscriber.psql("postgres", "SELECT count(*) FROM pgsub.subscription WHERE subname = 'demo_sub'").unwrap(),
        "1"
    );

    // The load service: its entrypoint, with its environment but a shorter load.
    let entry = str_list(&l_svc["entrypoint"], "load.entrypoint");
    assert_eq!(entry[0], "bash");
    let script = entry[1].replace("/demo-sql/", &format!("{}/", sql_dir.display()));
    let mut cmd = Command::new("bash");
    cmd.arg(&script).env("PATH", pg_path());
    for k in ["DEMO_PUB_DSN", "DEMO_SUB_DSN", "DEMO_LOAD_RATE"] {
        cmd.env(k, local(env_of(l_svc, k).unwrap_or_else(|| panic!("load.{k}"))));
    }
    cmd.env("DEMO_LOAD_SECONDS", "3");
    let r = run_with_timeout(cmd, Duration::from_secs(240), "load.sh");
    assert!(r.status.success(), "load.sh failed:\n{}", r.all());
    assert!(r.stdout.contains("RESULT: data is equal on both nodes (3 tables"), "{}", r.all());
    assert_lag_view_moved(&r.stdout);
    assert_lag_chart(&r.stdout);
    assert_replicated_equal_between(
        &publisher.connstr("postgres", "postgres"),
        &subscriber.connstr("postgres", "postgres"),
    );
}

/// The chart of the run's lag (load.sh, from pgsub.lag_history): after its title, one line per
/// second `HH:MM:SS lag_bytes apply_lag_ms rows/s |bar|bar|`, oldest first, and the rows applied
/// during the load drawn as a bar of '=' at least once.
fn assert_lag_chart(out: &str) {
    let mut lines = out.lines().skip_while(|l| !l.starts_with("== the run's lag (pgsub.lag_history"));
    assert!(lines.next().is_some(), "no lag chart in:\n{out}");
    let samples: Vec<&str> = lines
        .skip(1)
        .take_while(|l| l.len() > 8 && l.as_bytes()[2] == b':' && l.as_bytes()[5] == b':' && l.ends_with('|'))
        .collect();
    assert!(samples.len() >= 3, "a lag chart with one line per second of the run:\n{out}");
    let times: Vec<&str> = samples.iter().map(|l| &l[..8]).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "oldest first: {times:?}");
    assert!(samples.iter().any(|l| l.contains("|=") || l.contains("=|")), "rows/s drawn during the load:\n{out}");
}

/// `lag view moved: txns_applied A -> B ...` with B > A; returns B - A.
fn assert_lag_view_moved(out: &str) -> i64 {
    let line = out
        .lines()
        .find(|l| l.starts_with("lag view moved: txns_applied "))
        .unwrap_or_else(|| panic!("no `lag view moved` line in:\n{out}"));
    let nums: Vec<i64> = line["lag view moved: txns_applied ".len()..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .map(|s| s.parse().unwrap())
        .collect();
    assert!(nums.len() == 2 && nums[1] > nums[0], "txns_applied did not grow: {line}");
    nums[1] - nums[0]
}

// --- scripts/demo --------------------------------------------------------------------------

/// The demo's clusters in a temporary directory; dropping it stops them (`scripts/demo stop`,
/// then SIGKILL by pid to anything of theirs still alive) and removes the directory.
struct Demo {
    dir: TempDir,
    pub_port: u16,
    sub_port: u16,
}

impl Demo {
    fn new() -> Demo {
        let dir = TempDir::new("demo").expect("temp dir");
        let pub_port = free_port().expect("port");
        let mut sub_port = free_port().expect("port");
        while sub_port == pub_port {
            sub_port = free_port().expect("port");
        }
        Demo { dir, pub_port, sub_port }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(root().join("scripts/demo"));
        cmd.args(args)
            .current_dir(root())
            .env("PGSUB_DEMO_DIR", self.dir.path())
            .env("PGSUB_DEMO_PUB_PORT", self.pub_port.to_string())
            .env("PGSUB_DEMO_SUB_PORT", self.sub_port.to_string())
            .env("PGSUB_DEMO_LOAD_SECONDS", "5")
            .env("PGSUB_DEMO_SKIP_BUILD", "1")
            .env("PG_CONFIG", pgsub_tests::pg_config());
        cmd
    }

    fn run(&self, args: &[&str], timeout: Duration) -> Ran {
        run_with_timeout(self.command(args), timeout, &format!("scripts/demo {}", args.join(" ")))
    }

    fn node(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The postmaster pid and port of a running node, from its postmaster.pid.
    fn postmaster(&self, name: &str) -> Option<(i32, u16)> {
        let s = fs::read_to_string(self.node(name).join("data/postmaster.pid")).ok()?;
        let lines: Vec<&str> = s.lines().collect();
        Some((lines.first()?.trim().parse().ok()?, lines.get(3)?.trim().parse().ok()?))
    }

    /// Every live process of this demo: postmasters from postmaster.pid, their children, and
    /// anything whose command line names the demo directory.
    fn processes(&self) -> BTreeSet<i32> {
        let mut set = BTreeSet::new();
        let masters: Vec<i32> = ["publisher", "subscriber"]
            .iter()
            .filter_map(|n| self.postmaster(n).map(|(p, _)| p))
            .filter(|p| pid_alive(*p))
            .collect();
        set.extend(masters.iter().copied());
        let needle = self.dir.path().to_string_lossy().to_string();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok())
                .unwrap_or(0);
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if (masters.contains(&ppid) || cmd.contains(&needle)) && pid_alive(pid) {
                set.insert(pid);
            }
        }
        set
    }

    /// Connection string of a node for the superuser over its Unix socket (the only way it may
    /// log in without a password).
    fn socket_connstr(&self, name: &str, port: u16) -> String {
        format!("host={} port={port} user=postgres dbname=postgres", self.node(name).display())
    }

    /// psql on a node as the superuser over its Unix socket; unaligned tuples-only output.
    fn psql(&self, name: &str, port: u16, sql: &str) -> String {
        let mut cmd = Command::new(psql_bin().expect("psql"));
        cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"]).arg(self.node(name)).args([
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ]);
        let r = run_with_timeout(cmd, Duration::from_secs(60), "psql");
        assert!(r.status.success(), "psql on {name} failed:\n{}", r.all());
        r.stdout.trim().to_string()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let left = self.processes();
        if !left.is_empty() {
            let _ = run_with_timeout(self.command(&["stop"]), Duration::from_secs(120), "scripts/demo stop (cleanup)");
        }
        for pid in self.processes() {
            // SAFETY: a process of this test's demo (postmaster.pid, its child, or running from
            // the demo's temporary directory), by pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn wait_all_gone(pids: &BTreeSet<i32>, timeout: Duration) -> Vec<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<i32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        // The poll interval of this wait.
        std::thread::sleep(Duration::from_millis(100));
    }
}

const DEMO_TIMEOUT: Duration = Duration::from_secs(400);

#[test]
fn demo_runs_reruns_and_stops_cleanly() {
    ensure_installed().expect("pgsub installed");
    let demo = Demo::new();

    // 1. The demo itself, as CI runs it: no TTY, no prompt, short load.
    let r = demo.run(&[], DEMO_TIMEOUT);
    eprintln!("{}", r.all());
    assert!(r.status.success(), "scripts/demo failed:\n{}", r.all());
    let out = &r.stdout;
    assert!(out.contains("RESULT: data is equal on both nodes (3 tables"), "no equal-data result:\n{out}");
    for t in ["shop.accounts", "shop.events", "shop.orders"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(t) && l.trim_end().ends_with("equal"))
            .unwrap_or_else(|| panic!("no equal row for {t}:\n{out}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1], cols[2], "{t}: row counts differ: {line}");
        assert_eq!(cols[3], cols[4], "{t}: checksums differ: {line}");
    }
    let grew = assert_lag_view_moved(out);
    assert_lag_chart(out);
    assert!(grew >= 10, "only {grew} transactions applied during a 5 s load:\n{out}");
    let status_lines = out.lines().filter(|l| l.contains(" streaming ")).count();
    assert!(status_lines >= 3, "expected a pgsub.stat_subscription line per second:\n{out}");
    for hint in ["psql -h", "scripts/demo stop"] {
        assert!(out.contains(hint), "the demo does not print `{hint}`:\n{out}");
    }

    // The nodes run where the test asked, and agree when asked directly.
    let (pub_pid, pub_port) = demo.postmaster("publisher").expect("publisher postmaster.pid");
    let (sub_pid, sub_port) = demo.postmaster("subscriber").expect("subscriber postmaster.pid");
    assert_eq!((pub_port, sub_port), (demo.pub_port, demo.sub_port));
    assert!(pid_alive(pub_pid) && pid_alive(sub_pid));
    assert_replicated_equal_between(
        &demo.socket_connstr("publisher", pub_port),
        &demo.socket_connstr("subscriber", sub_port),
    );
    let applied: i64 = demo
        .psql("subscriber", sub_port, "SELECT txns_applied FROM pgsub.stat_subscription WHERE subname = 'demo_sub'")
        .parse()
        .expect("txns_applied");
    assert!(applied > 0, "txns_applied = {applied}");
    let st = demo.run(&["status"], Duration::from_secs(60));
    assert!(st.status.success() && st.stdout.contains("subscriber: running"), "{}", st.all());

    // 2. Rerunning replaces the running nodes.
    let first = demo.processes();
    assert!(first.len() >= 4, "expected postmasters and their children, got {first:?}");
    let r2 = demo.run(&[], DEMO_TIMEOUT);
    assert!(r2.status.success(), "rerun of scripts/demo failed:\n{}", r2.all());
    assert!(r2.stdout.contains("RESULT: data is equal on both nodes"), "{}", r2.all());
    assert!(r2.stdout.contains("an earlier demo's subscriber is running: stopping it first"), "{}", r2.all());
    let stale = wait_all_gone(&first, Duration::from_secs(10));
    assert!(stale.is_empty(), "processes of the first run survived the rerun: {stale:?}");
    // The rerun's nodes agree too (compared before the stop below, which ends the test).
    assert_replicated_equal_between(
        &demo.socket_connstr("publisher", demo.pub_port),
        &demo.socket_connstr("subscriber", demo.sub_port),
    );

    // 3. stop leaves nothing behind.
    let running = demo.processes();
    assert!(!running.is_empty());
    let stop = demo.run(&["stop"], Duration::from_secs(120));
    assert!(stop.status.success(), "scripts/demo stop failed:\n{}", stop.all());
    let left = wait_all_gone(&running, Duration::from_secs(10));
    assert!(left.is_empty(), "processes left after scripts/demo stop: {left:?}");
    assert!(demo.processes().is_empty(), "demo processes left: {:?}", demo.processes());
    for n in ["publisher", "subscriber"] {
        assert!(!demo.node(n).join("data/postmaster.pid").exists(), "{n}: postmaster.pid still there");
    }
    // Stopping again is harmless.
    let again = demo.run(&["stop"], Duration::from_secs(60));
    assert!(again.status.success() && again.stdout.contains("not running"), "{}", again.all());
}

#[test]
fn demo_refuses_a_port_in_use() {
    let mut demo = Demo::new();
    // The port is held from the moment it is chosen (a port found free and bound later can be
    // taken meanwhile — by another test's client connection, say).
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    demo.pub_port = listener.local_addr().expect("local_addr").port();
    while demo.sub_port == demo.pub_port {
        demo.sub_port = free_port().expect("port");
    }
    let r = demo.run(&[], Duration::from_secs(120));
    drop(listener);
    assert!(!r.status.success(), "scripts/demo ran on a taken port:\n{}", r.all());
    assert!(
        r.stderr.contains(&format!("port {} (PGSUB_DEMO_PUB_PORT) is in use", demo.pub_port)),
        "unclear error:\n{}",
        r.all()
    );
    assert!(demo.processes().is_empty(), "processes started despite the error");
}

/// Without PGSUB_DEMO_SKIP_BUILD the demo builds with `cargo pgrx install`; here `cargo` is a
/// stand-in that fails that command (and passes everything else to the real cargo), so nothing
/// is installed: the demo must stop with a clear message and the end of the build log.
#[test]
fn demo_reports_a_failed_build() {
    let demo = Demo::new();
    let fake = TempDir::new("fake-cargo").expect("temp dir");
    let real = std::env::var_os("CARGO").map(PathBuf::from).or_else(|| find_tool("cargo")).expect("the real cargo");
    let script = fake.path().join("cargo");
    fs::write(
        &script,
        "#!/usr/bin/env bash\n\
         if [ \"${1:-}\" = pgrx ] && [ \"${2:-}\" = install ]; then\n\
           echo '   Compiling pgsub v0.1.0'\n\
           echo 'error: simulated build failure for demo_test' >&2\n\
           exit 101\n\
         fi\n\
         exec \"$REAL_CARGO\" \"$@\"\n",
    )
    .expect("write fake cargo");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut cmd = demo.command(&[]);
    cmd.env_remove("PGSUB_DEMO_SKIP_BUILD")
        .env("PGSUB_DEMO_SKIP_SETUP", "1")
        .env("REAL_CARGO", real)
        .env("PATH", format!("{}:{}", fake.path().display(), std::env::var("PATH").unwrap_or_default()));
    let r = run_with_timeout(cmd, Duration::from_secs(120), "scripts/demo with a failing build");
    assert!(!r.status.success(), "the demo went on after a failed build:\n{}", r.all());
    assert!(
        r.stderr.contains("building/installing pgsub failed (cargo pgrx install exit 101)"),
        "unclear failure:\n{}",
        r.all()
    );
    assert!(r.stderr.contains("simulated build failure for demo_test"), "no build log excerpt:\n{}", r.all());
    assert!(demo.processes().is_empty(), "processes started despite the failed build");
}

/// Paths in this file are relative to the workspace root; make sure it is the one with the demo.
#[test]
fn demo_files_are_where_the_readme_says() {
    for f in ["scripts/demo", "compose.yaml", "docker/Dockerfile"] {
        let p: &Path = &root().join(f);
        assert!(p.is_file(), "{} missing", p.display());
    }
    let mode = fs::metadata(root().join("scripts/demo")).unwrap().permissions().mode();
    assert!(mode & 0o111 != 0, "scripts/demo is not executable");
    let readme = read("README.md");
    assert!(readme.contains("scripts/demo stop"), "README does not document scripts/demo stop");
    assert!(!readme.contains("**does not exist yet**"), "README still says the demo does not exist");
}
