//! What the connection string takes from the system: the password file (`~/.pgpass`, libpq's
//! `passwordFromFile`) and the effective user's name and home directory (getpwuid_r).

use std::path::Path;

/// libpq's `pwdfMatchesString`: returns the rest of the line after a matching field.
fn pgpass_field_matches<'a>(line: &'a str, token: &str) -> Option<&'a str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let lb = line.as_bytes();
    let tb = token.as_bytes();
    let (mut i, mut j) = (0, 0);
    while i < lb.len() {
        let mut escaped = false;
        if lb[i] == b'\\' {
            i += 1;
            escaped = true;
            if i >= lb.len() {
                return None;
            }
        }
        if lb[i] == b':' && j == tb.len() && !escaped {
            return line.get(i + 1..);
        }
        if j == tb.len() || lb[i] != tb[j] {
            return None;
        }
        i += 1;
        j += 1;
    }
    None
}

/// Looks `host:port:dbname:user` up in a password file (libpq's `passwordFromFile`). Ignores
/// files that are missing, not plain files or readable by group/others (libpq warns and ignores).
pub fn password_from_file(path: &Path, host: &str, port: &str, dbname: &str, user: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::metadata(path).ok()?;
    if !md.is_file() || md.permissions().mode() & 0o077 != 0 {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    for line in text.lines() {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let rest = pgpass_field_matches(line, host)
            .and_then(|r| pgpass_field_matches(r, port))
            .and_then(|r| pgpass_field_matches(r, dbname))
            .and_then(|r| pgpass_field_matches(r, user));
        if let Some(rest) = rest {
            let mut pw = String::new();
            let mut chars = rest.chars().peekable();
            while let Some(c) = chars.next() {
                if c == ':' {
                    break;
                }
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        pw.push(n);
                        continue;
                    }
                }
                pw.push(c);
            }
            return Some(pw);
        }
    }
    None
}

fn passwd_entry<T>(f: impl FnOnce(&libc::passwd) -> Option<T>) -> Option<T> {
    // SAFETY: getpwuid_r fills `pwd` with pointers into `buf`, which outlives their use in `f`.
    unsafe {
        let uid = libc::geteuid();
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16384];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc != 0 || result.is_null() {
            return None;
        }
        f(&pwd)
    }
}

fn cstr_field(p: *const libc::c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null NUL-terminated string from getpwuid_r.
    let s = unsafe { std::ffi::CStr::from_ptr(p) };
    Some(s.to_string_lossy().into_owned()).filter(|s| !s.is_empty())
}

/// The effective user's login name (libpq's `pg_fe_getauthname`).
pub fn os_user_name() -> Option<String> {
    passwd_entry(|p| cstr_field(p.pw_name))
}

pub(super) fn os_home_dir() -> Option<String> {
    passwd_entry(|p| cstr_field(p.pw_dir))
}
