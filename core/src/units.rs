//! Values of PostgreSQL settings as `SHOW` prints them, read back into numbers (the apply worker
//! compares the publisher's `logical_decoding_work_mem` with the amount it would ask for).

/// A memory setting as `SHOW` prints it (`64MB`, `4096kB`, `1GB`, a bare number of kB) in kB;
/// None when it does not read as one.
pub fn memory_kb(shown: &str) -> Option<i64> {
    let s = shown.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let n: i64 = number.parse().ok()?;
    let factor: i64 = match unit.trim() {
        "" | "kB" => 1,
        "MB" => 1024,
        "GB" => 1024 * 1024,
        "TB" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::memory_kb;

    #[test]
    fn memory_settings_as_show_prints_them() {
        assert_eq!(memory_kb("64MB"), Some(65536));
        assert_eq!(memory_kb("4096kB"), Some(4096));
        assert_eq!(memory_kb("65kB"), Some(65));
        assert_eq!(memory_kb("1GB"), Some(1024 * 1024));
        assert_eq!(memory_kb("2TB"), Some(2 * 1024 * 1024 * 1024));
        assert_eq!(memory_kb("128"), Some(128));
        assert_eq!(memory_kb(" 8MB "), Some(8192));
    }

    #[test]
    fn anything_else_is_none() {
        for s in ["", "MB", "-1", "64 MiB", "64mb", "1.5GB", "lots", "99999999999999999999kB"] {
            assert_eq!(memory_kb(s), None, "{s:?}");
        }
        assert_eq!(memory_kb(&format!("{}TB", i64::MAX)), None, "overflow");
    }
}
