//! The harness's TLS kit (part of the `pgsub-tests` library, re-exported at its root): test
//! certificates made with the `openssl` command line, revocation lists, and publishers that
//! speak TLS. One copy for every test file that needs certificates (`proto_live_test.rs`,
//! `security_test.rs`).
//!
//! Files land in a directory of the test's choosing (usually the cluster's [`Cluster::dir`]) as
//! `<stem>.key` / `<stem>.crt`; when the tests run as root they are handed to the `postgres` OS
//! user, who runs the servers and whose processes (pgsub's workers among them) read them.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{server_built_with, Cluster, ClusterOpts, Result};

/// Runs a command; Err with its stderr when it fails.
fn sh(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().map_err(|e| format!("{what}: cannot run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{what}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

const EC: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/// Hands files to the `postgres` OS user when running as root (no-op otherwise).
pub fn give_to_postgres(files: &[&Path]) -> Result<()> {
    if super::running_as_root() {
        sh(Command::new("chown").arg("postgres:").args(files), "chown")?;
    }
    Ok(())
}

/// An EC (P-256) key and certificate `<stem>.key` / `<stem>.crt` in `dir` for common name `cn`:
/// self-signed with `subjectAltName=DNS:<cn>` (OpenSSL marks it a CA, so it can sign others),
/// or, with `ca`, signed by `<ca>.crt` / `<ca>.key` the way the PostgreSQL docs' recipe does
/// (`openssl x509 -req` without extensions: an X.509 v1 certificate, as client certificates
/// often are). The key has mode 0600; both files go to the `postgres` OS user.
pub fn openssl_cert(dir: &Path, stem: &str, cn: &str, ca: Option<&str>) -> Result<()> {
    let key = dir.join(format!("{stem}.key"));
    let crt = dir.join(format!("{stem}.crt"));
    match ca {
        None => sh(
            Command::new("openssl")
                .args(["req", "-x509", "-days", "2"])
                .args(EC)
                .args(["-subj", &format!("/CN={cn}"), "-addext", &format!("subjectAltName=DNS:{cn}"), "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&crt),
            "openssl req -x509",
        )?,
        Some(ca) => sign(dir, stem, cn, ca, false)?,
    }
    sh(Command::new("chmod").arg("600").arg(&key), "chmod")?;
    give_to_postgres(&[&key, &crt])
}

/// A server certificate `<stem>.key` / `<stem>.crt` signed by `<ca>`, an X.509 v3 certificate
/// carrying `subjectAltName=DNS:<cn>` (what a CA issues to a server; webpki, like OpenSSL's
/// verify-full, checks the name against it).
pub fn openssl_server_cert(dir: &Path, stem: &str, cn: &str, ca: &str) -> Result<()> {
    sign(dir, stem, cn, ca, true)?;
    let key = dir.join(format!("{stem}.key"));
    sh(Command::new("chmod").arg("600").arg(&key), "chmod")?;
    give_to_postgres(&[&key, &dir.join(format!("{stem}.crt"))])
}

/// A key, a request and the certificate `ca` signs for it (v3 with the request's SAN if `v3`).
fn sign(dir: &Path, stem: &str, cn: &str, ca: &str, v3: bool) -> Result<()> {
    let key = dir.join(format!("{stem}.key"));
    let csr = dir.join(format!("{stem}.csr"));
    let mut req = Command::new("openssl");
    req.args(["req", "-new"]).args(EC).args(["-subj", &format!("/CN={cn}")]);
    if v3 {
        req.args(["-addext", &format!("subjectAltName=DNS:{cn}")]);
    }
    sh(req.arg("-keyout").arg(&key).arg("-out").arg(&csr), "openssl req")?;
    let mut x509 = Command::new("openssl");
    x509.args(["x509", "-req", "-days", "2", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(dir.join(format!("{ca}.crt")))
        .arg("-CAkey")
        .arg(dir.join(format!("{ca}.key")))
        .args(["-CAcreateserial", "-out"])
        .arg(dir.join(format!("{stem}.crt")));
    if v3 {
        x509.args(["-copy_extensions", "copy"]);
    }
    sh(&mut x509, "openssl x509 -req")
}

/// A certificate revocation list `<out>` issued by `<ca>` (PEM, valid two days) that revokes
/// the certificates `<stem>.crt` of `revoke` (none: an empty list). Made with `openssl ca` and
/// a throw-away database under `dir/<out>.db`.
pub fn openssl_crl(dir: &Path, ca: &str, revoke: &[&str], out: &str) -> Result<PathBuf> {
    let db = dir.join(format!("{out}.db"));
    std::fs::create_dir_all(&db).map_err(|e| format!("mkdir {}: {e}", db.display()))?;
    let write = |f: &str, text: &str| std::fs::write(db.join(f), text).map_err(|e| format!("write {f}: {e}"));
    write("index.txt", "")?;
    write("crlnumber", "01\n")?;
    write(
        "ca.cnf",
        &format!(
            "[ca]\ndefault_ca = test_ca\n[test_ca]\ndatabase = {}\ncrlnumber = {}\ndefault_md = sha256\n\
             default_crl_days = 2\n",
            db.join("index.txt").display(),
            db.join("crlnumber").display()
        ),
    )?;
    let ca_args = |c: &mut Command| {
        c.arg("-config")
            .arg(db.join("ca.cnf"))
            .arg("-cert")
            .arg(dir.join(format!("{ca}.crt")))
            .arg("-keyfile")
            .arg(dir.join(format!("{ca}.key")));
    };
    for stem in revoke {
        let mut c = Command::new("openssl");
        c.arg("ca");
        ca_args(&mut c);
        sh(c.arg("-revoke").arg(dir.join(format!("{stem}.crt"))), "openssl ca -revoke")?;
    }
    let path = dir.join(out);
    let mut c = Command::new("openssl");
    c.arg("ca");
    ca_args(&mut c);
    sh(c.arg("-gencrl").arg("-out").arg(&path), "openssl ca -gencrl")?;
    give_to_postgres(&[&path])?;
    Ok(path)
}

/// Options of a publisher whose TLS comes from OpenSSL: the server under test when it is built
/// with OpenSSL, else the system's PostgreSQL 15 (the PostgreSQL 18 used here has no OpenSSL).
/// The subscriber's client is pgsub's own (rustls) either way.
pub fn tls_publisher_opts() -> ClusterOpts {
    if server_built_with("--with-openssl") {
        ClusterOpts::publisher()
    } else {
        ClusterOpts::publisher().with_server_bindir(PathBuf::from("/usr/lib/postgresql/15/bin"))
    }
}

impl Cluster {
    /// Turns TLS on with `<dir>/server.crt` and `server.key` (made beforehand, e.g. by
    /// [`openssl_cert`]), client certificates checked against `<dir>/<ca>.crt` when `ca` is
    /// given, plus `extra` configuration lines; restarts the server.
    pub fn enable_tls(&mut self, ca: Option<&str>, extra: &[&str]) -> Result<()> {
        let dir = self.dir().to_path_buf();
        let mut lines = vec![
            "ssl = on".to_string(),
            format!("ssl_cert_file = '{}'", dir.join("server.crt").display()),
            format!("ssl_key_file = '{}'", dir.join("server.key").display()),
        ];
        if let Some(ca) = ca {
            lines.push(format!("ssl_ca_file = '{}'", dir.join(format!("{ca}.crt")).display()));
        }
        lines.extend(extra.iter().map(|l| l.to_string()));
        for l in lines {
            self.add_conf(&l)?;
        }
        self.restart()
    }
}
