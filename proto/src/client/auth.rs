//! Client-side authentication during startup: trust, cleartext password, MD5 and SCRAM-SHA-256
//! (without channel binding), each method in its own small step; every other method the server
//! may ask for is refused with a clear message.

use std::time::Instant;

use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
use postgres_protocol::message::backend::{AuthenticationSaslBody, Message};
use postgres_protocol::message::frontend;

use super::error::proto_err;
use super::tls;
use super::{Client, Error, Msg};
use crate::conninfo::{self, Config};

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
        let mut bound = false;
        let require_binding = cfg.channel_binding == conninfo::ChannelBinding::Require;
        // libpq's words when channel_binding=require meets a method that cannot bind.
        let unbound =
            || Error::Auth("channel binding required but not supported by server's authentication request".into());
        loop {
            match self.next_msg(deadline)? {
                Msg::Proto(Message::AuthenticationOk) => {
                    if scram.is_some() && !scram_done {
                        return Err(Error::Auth(
                            "server accepted the connection before completing SCRAM authentication".into(),
                        ));
                    }
                    if require_binding && !(bound && scram_done) {
                        return Err(Error::Auth(
                            "channel binding required, but server authenticated client without channel binding".into(),
                        ));
                    }
                    return Ok(());
                }
                Msg::Proto(Message::AuthenticationCleartextPassword) => {
                    if require_binding {
                        return Err(unbound());
                    }
                    self.send_password(password(cfg)?.as_bytes(), deadline)?
                }
                Msg::Proto(Message::AuthenticationMd5Password(_)) if require_binding => return Err(unbound()),
                Msg::Proto(Message::AuthenticationMd5Password(body)) => {
                    let hash = md5_hash(cfg.user.as_bytes(), password(cfg)?.as_bytes(), body.salt());
                    self.send_password(hash.as_bytes(), deadline)?
                }
                Msg::Proto(Message::AuthenticationSasl(body)) => {
                    let (s, plus) = self.sasl_start(cfg, &body, deadline)?;
                    scram = Some(s);
                    bound = plus;
                }
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

    /// SASLInitialResponse for SCRAM-SHA-256, bound to the TLS connection (SCRAM-SHA-256-PLUS,
    /// tls-server-end-point) when the connection is encrypted, the server offers it and
    /// `channel_binding` is not `disable` — libpq's choice. Returns the exchange and whether it
    /// is bound.
    fn sasl_start(
        &mut self,
        cfg: &Config,
        body: &AuthenticationSaslBody,
        deadline: Option<Instant>,
    ) -> Result<(ScramSha256, bool), Error> {
        let mut mechs = body.mechanisms();
        let (mut has_scram, mut has_plus) = (false, false);
        let mut offered = Vec::new();
        while let Some(m) = mechs.next().map_err(proto_err)? {
            offered.push(m.to_string());
            has_scram |= m == SCRAM_SHA_256;
            has_plus |= m == SCRAM_SHA_256_PLUS;
        }
        let binding_mode = cfg.channel_binding;
        let server_cert = self.io.server_cert();
        let plus = has_plus && binding_mode != conninfo::ChannelBinding::Disable && server_cert.is_some();
        if binding_mode == conninfo::ChannelBinding::Require && !plus {
            return Err(Error::Auth(
                "channel binding is required, but server did not offer an authentication method that supports channel binding"
                    .into(),
            ));
        }
        if !has_scram && !plus {
            return Err(Error::Auth(format!(
                "none of the server's SASL authentication mechanisms are supported (offered: {})",
                offered.join(", ")
            )));
        }
        let (mechanism, binding) = match (plus, &server_cert) {
            (true, Some(cert)) => {
                let hash = tls::server_end_point_hash(cert)
                    .map_err(|e| Error::Auth(format!("could not compute channel binding data: {e}")))?;
                (SCRAM_SHA_256_PLUS, ChannelBinding::tls_server_end_point(hash))
            }
            // Over TLS the client could bind but the server does not offer it ("y"); without
            // TLS, or when disabled, it cannot ("n").
            _ if server_cert.is_some() && binding_mode != conninfo::ChannelBinding::Disable => {
                (SCRAM_SHA_256, ChannelBinding::unrequested())
            }
            _ => (SCRAM_SHA_256, ChannelBinding::unsupported()),
        };
        let s = ScramSha256::new(password(cfg)?.as_bytes(), binding);
        frontend::sasl_initial_response(mechanism, s.message(), &mut self.wbuf)
            .map_err(|e| Error::Auth(e.to_string()))?;
        self.used_password = true;
        self.flush(deadline)?;
        Ok((s, plus))
    }

    /// SASLResponse to the server's first SCRAM message.
    fn sasl_continue(&mut self, s: &mut ScramSha256, data: &[u8], deadline: Option<Instant>) -> Result<(), Error> {
        s.update(data).map_err(|e| Error::Auth(format!("SCRAM exchange failed: {e}")))?;
        frontend::sasl_response(s.message(), &mut self.wbuf).map_err(|e| Error::Auth(e.to_string()))?;
        self.flush(deadline)
    }
}
