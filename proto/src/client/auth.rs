//! Client-side authentication during startup: trust, cleartext password, MD5 and SCRAM-SHA-256
//! (without channel binding), each method in its own small step; every other method the server
//! may ask for is refused with a clear message.

use std::time::Instant;

use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{AuthenticationSaslBody, Message};
use postgres_protocol::message::frontend;

use super::error::proto_err;
use super::{Client, Error, Msg};
use crate::conninfo::Config;

/// The password of `cfg`, which the server has just asked for.
fn password(cfg: &Config) -> Result<&str, Error> {
    cfg.password.as_deref().ok_or_else(|| {
        Error::Auth(format!(
            "the server requested password authentication for user \"{}\", but no password was supplied",
            cfg.user
        ))
    })
}

impl Client {
    /// Answers the server's authentication requests until AuthenticationOk.
    pub(super) fn authenticate(&mut self, cfg: &Config, deadline: Option<Instant>) -> Result<(), Error> {
        let mut scram: Option<ScramSha256> = None;
        let mut scram_done = false;
        loop {
            match self.next_msg(deadline)? {
                Msg::Proto(Message::AuthenticationOk) => {
                    if scram.is_some() && !scram_done {
                        return Err(Error::Auth(
                            "server accepted the connection before completing SCRAM authentication".into(),
                        ));
                    }
                    return Ok(());
                }
                Msg::Proto(Message::AuthenticationCleartextPassword) => {
                    self.send_password(password(cfg)?.as_bytes(), deadline)?
                }
                Msg::Proto(Message::AuthenticationMd5Password(body)) => {
                    let hash = md5_hash(cfg.user.as_bytes(), password(cfg)?.as_bytes(), body.salt());
                    self.send_password(hash.as_bytes(), deadline)?
                }
                Msg::Proto(Message::AuthenticationSasl(body)) => scram = Some(self.sasl_start(cfg, &body, deadline)?),
                Msg::Proto(Message::AuthenticationSaslContinue(body)) => {
                    let s = scram.as_mut().ok_or_else(|| proto_err("SASL continuation without SASL start"))?;
                    self.sasl_continue(s, body.data(), deadline)?
                }
                Msg::Proto(Message::AuthenticationSaslFinal(body)) => {
                    let s = scram.as_mut().ok_or_else(|| proto_err("SASL final message without SASL start"))?;
                    s.finish(body.data())
                        .map_err(|e| Error::Auth(format!("SCRAM server signature verification failed: {e}")))?;
                    scram_done = true;
                }
                Msg::Proto(
                    Message::AuthenticationKerberosV5
                    | Message::AuthenticationScmCredential
                    | Message::AuthenticationGss
                    | Message::AuthenticationGssContinue(_)
                    | Message::AuthenticationSspi,
                ) => {
                    return Err(Error::Auth(
                        "the server requested an authentication method this client does not support (GSSAPI/SSPI/Kerberos/SCM)".into(),
                    ))
                }
                Msg::Error(e) => return Err(Error::Server(e)),
                other => return Err(self.unexpected(&other, "during authentication")),
            }
        }
    }

    /// PasswordMessage with a cleartext password or an MD5 hash.
    fn send_password(&mut self, password: &[u8], deadline: Option<Instant>) -> Result<(), Error> {
        frontend::password_message(password, &mut self.wbuf)
            .map_err(|e| Error::Auth(format!("invalid password: {e}")))?;
        self.used_password = true;
        self.flush(deadline)
    }

    /// SASLInitialResponse for SCRAM-SHA-256, if the server offers it.
    fn sasl_start(
        &mut self,
        cfg: &Config,
        body: &AuthenticationSaslBody,
        deadline: Option<Instant>,
    ) -> Result<ScramSha256, Error> {
        let mut mechs = body.mechanisms();
        let mut has_scram = false;
        let mut offered = Vec::new();
        while let Some(m) = mechs.next().map_err(proto_err)? {
            offered.push(m.to_string());
            has_scram |= m == SCRAM_SHA_256;
        }
        if !has_scram {
            return Err(Error::Auth(format!(
                "none of the server's SASL authentication mechanisms are supported (offered: {})",
                offered.join(", ")
            )));
        }
        // Channel binding is not implemented; "n" (client does not support it) is accepted by
        // servers whether or not they offer SCRAM-SHA-256-PLUS.
        let s = ScramSha256::new(password(cfg)?.as_bytes(), ChannelBinding::unsupported());
        frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.wbuf)
            .map_err(|e| Error::Auth(e.to_string()))?;
        self.used_password = true;
        self.flush(deadline)?;
        Ok(s)
    }

    /// SASLResponse to the server's first SCRAM message.
    fn sasl_continue(&mut self, s: &mut ScramSha256, data: &[u8], deadline: Option<Instant>) -> Result<(), Error> {
        s.update(data).map_err(|e| Error::Auth(format!("SCRAM exchange failed: {e}")))?;
        frontend::sasl_response(s.message(), &mut self.wbuf).map_err(|e| Error::Auth(e.to_string()))?;
        self.flush(deadline)
    }
}
