//! libpq's `target_session_attrs` (14+): after a host accepted the connection, whether its
//! session is of the kind asked for — read-write / read-only from the `default_transaction_read_only`
//! and `in_hot_standby` parameters the server reports (14+; `SHOW transaction_read_only` before),
//! primary / standby from `in_hot_standby` (`SELECT pg_is_in_recovery()` before 14). The host
//! loop itself (and prefer-standby's second pass) is `connect.rs`.

use super::{Client, Error};
use crate::conninfo::TargetSessionAttrs;

impl Client {
    /// Ok(None) when this session is acceptable for `want`, else Some(libpq's reason).
    pub(super) fn check_target(&mut self, want: TargetSessionAttrs) -> Result<Option<&'static str>, Error> {
        use TargetSessionAttrs::*;
        Ok(match want {
            Any => None,
            ReadWrite | ReadOnly => {
                let read_only = self.is_read_only()?;
                match (want, read_only) {
                    (ReadWrite, true) => Some("session is read-only"),
                    (ReadOnly, false) => Some("session is not read-only"),
                    _ => None,
                }
            }
            Primary | Standby | PreferStandby => {
                let standby = self.in_hot_standby()?;
                match (want, standby) {
                    (Primary, true) => Some("server is in hot standby mode"),
                    (Standby | PreferStandby, false) => Some("server is not in hot standby mode"),
                    _ => None,
                }
            }
        })
    }

    /// A reported boolean parameter (`on`/`off`), None when the server does not report it.
    fn reported(&self, name: &str) -> Option<bool> {
        self.parameter(name).map(|v| v == "on")
    }

    /// libpq's read-only server: `default_transaction_read_only` or `in_hot_standby` on.
    fn is_read_only(&mut self) -> Result<bool, Error> {
        match (self.reported("default_transaction_read_only"), self.reported("in_hot_standby")) {
            (Some(d), Some(h)) => Ok(d || h),
            _ => self.one_bool("SHOW transaction_read_only"),
        }
    }

    fn in_hot_standby(&mut self) -> Result<bool, Error> {
        match self.reported("in_hot_standby") {
            Some(h) => Ok(h),
            None => self.one_bool("SELECT pg_catalog.pg_is_in_recovery()"),
        }
    }

    /// The first column of the only row of `sql`, read as a boolean (`on`/`t` true).
    fn one_bool(&mut self, sql: &str) -> Result<bool, Error> {
        let rows = self.simple_query(sql)?;
        let v = rows.first().and_then(|r| r.values.first().cloned().flatten());
        match v.as_deref() {
            Some("on" | "t") => Ok(true),
            Some("off" | "f") => Ok(false),
            other => Err(super::error::proto_err(format!("unexpected answer to \"{sql}\": {other:?}"))),
        }
    }
}
