//! `Lsn`: a WAL position (PostgreSQL's `XLogRecPtr` / `pg_lsn`), its `X/Y` text form, parsing,
//! and byte-distance arithmetic. Owns nothing else.

use std::fmt;
use std::ops::{Add, AddAssign};
use std::str::FromStr;

/// A WAL position: a byte offset into the write-ahead log.
///
/// Displayed like PostgreSQL's `pg_lsn`: the high and low 32 bits in uppercase hex, separated by
/// a slash (`16/B374D848`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `InvalidXLogRecPtr` (`0/0`).
    pub const INVALID: Lsn = Lsn(0);

    /// True unless this is [`Lsn::INVALID`].
    pub const fn is_valid(self) -> bool {
        self.0 != 0
    }

    /// The raw 64-bit position.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Byte distance `self - earlier`, or `None` if `earlier` is ahead of `self`.
    pub const fn checked_sub(self, earlier: Lsn) -> Option<u64> {
        self.0.checked_sub(earlier.0)
    }

    /// Byte distance `self - earlier`, or 0 if `earlier` is ahead of `self`.
    pub const fn saturating_sub(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// `self + bytes`, or `None` on overflow.
    pub const fn checked_add(self, bytes: u64) -> Option<Lsn> {
        match self.0.checked_add(bytes) {
            Some(v) => Some(Lsn(v)),
            None => None,
        }
    }
}

/// `lsn + bytes`. Saturates at `u64::MAX` rather than panicking, because the operands often
/// come from the network.
impl Add<u64> for Lsn {
    type Output = Lsn;
    fn add(self, bytes: u64) -> Lsn {
        Lsn(self.0.saturating_add(bytes))
    }
}

impl AddAssign<u64> for Lsn {
    fn add_assign(&mut self, bytes: u64) {
        self.0 = self.0.saturating_add(bytes);
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Lsn {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(l: Lsn) -> u64 {
        l.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Why a string is not an LSN.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {input:?}: {reason}")]
pub struct LsnParseError {
    input: String,
    reason: &'static str,
}

impl LsnParseError {
    fn new(input: &str, reason: &'static str) -> Self {
        // Keep the message bounded: the input may be arbitrary text.
        let input: String = input.chars().take(64).collect();
        LsnParseError { input, reason }
    }

    /// What was wrong with the input.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

/// Maximum hex digits per half, as in PostgreSQL's `pg_lsn_in` (`MAXPG_LSNCOMPONENT`).
const MAX_COMPONENT_DIGITS: usize = 8;

fn parse_half(s: &str, whole: &str, which: &'static str) -> Result<u64, LsnParseError> {
    if s.is_empty() {
        return Err(LsnParseError::new(whole, which));
    }
    if s.len() > MAX_COMPONENT_DIGITS || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(LsnParseError::new(whole, which));
    }
    u64::from_str_radix(s, 16).map_err(|_| LsnParseError::new(whole, which))
}

/// Parses `X/Y` where X and Y are 1–8 hex digits (any case), with nothing else around them —
/// the same rule as PostgreSQL's `pg_lsn` input function.
impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Lsn, LsnParseError> {
        let (hi, lo) = s.split_once('/').ok_or_else(|| LsnParseError::new(s, "expected X/Y (hex/hex)"))?;
        let hi = parse_half(hi, s, "high half must be 1-8 hex digits")?;
        let lo = parse_half(lo, s, "low half must be 1-8 hex digits")?;
        Ok(Lsn((hi << 32) | lo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_postgres() {
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0x1_0000_0000).to_string(), "1/0");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!(Lsn(0xABC).to_string(), "0/ABC");
    }

    #[test]
    fn parse_valid() {
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
        assert_eq!("16/b374d848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn::INVALID);
        assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>().unwrap(), Lsn(u64::MAX));
        assert_eq!("00000001/00000002".parse::<Lsn>().unwrap(), Lsn(0x1_0000_0002));
    }

    #[test]
    fn parse_rejects_garbage() {
        for bad in [
            "",
            "/",
            "16",
            "16/",
            "/B374D848",
            "16/B374D848/1",
            "G/0",
            "0/G",
            " 0/0",
            "0/0 ",
            "+1/0",
            "-1/0",
            "123456789/0",
            "0/123456789",
            "0x1/0",
            "１/0",
        ] {
            let e = bad.parse::<Lsn>().unwrap_err();
            assert!(!e.to_string().is_empty(), "{bad:?}");
            assert!(!e.reason().is_empty());
        }
    }

    #[test]
    fn error_is_std_error_and_bounded() {
        let long = "x".repeat(10_000);
        let e: Box<dyn std::error::Error> = Box::new(long.parse::<Lsn>().unwrap_err());
        assert!(e.to_string().len() < 200);
    }

    #[test]
    fn round_trip() {
        for v in [0u64, 1, 0xFFFF_FFFF, 0x1_0000_0000, 0xDEAD_BEEF_0000_0001, u64::MAX] {
            let l = Lsn(v);
            assert_eq!(l.to_string().parse::<Lsn>().unwrap(), l);
        }
    }

    #[test]
    fn conversions_and_validity() {
        let l: Lsn = 42u64.into();
        assert_eq!(l, Lsn(42));
        let v: u64 = l.into();
        assert_eq!(v, 42);
        assert!(l.is_valid());
        assert!(!Lsn::INVALID.is_valid());
        assert_eq!(Lsn::default(), Lsn::INVALID);
        assert_eq!(l.as_u64(), 42);
    }

    #[test]
    fn arithmetic() {
        let a = Lsn(100);
        let b = Lsn(40);
        assert_eq!(a.checked_sub(b), Some(60));
        assert_eq!(b.checked_sub(a), None);
        assert_eq!(a.saturating_sub(b), 60);
        assert_eq!(b.saturating_sub(a), 0);
        assert_eq!(a + 5, Lsn(105));
        assert_eq!(Lsn(u64::MAX) + 1, Lsn(u64::MAX));
        assert_eq!(Lsn(u64::MAX).checked_add(1), None);
        assert_eq!(Lsn(1).checked_add(1), Some(Lsn(2)));
        let mut c = Lsn(1);
        c += 2;
        assert_eq!(c, Lsn(3));
        assert!(Lsn(0x1_0000_0000) > Lsn(0xFFFF_FFFF));
    }
}
