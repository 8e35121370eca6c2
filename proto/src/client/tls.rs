//! TLS policy for the walsender client: turns libpq's `sslmode` / `sslrootcert` into a rustls
//! `ClientConfig` (ring provider) and the `ServerName` to verify. Owns the certificate verifiers;
//! knows nothing about sockets (the client drives `rustls::ClientConnection` itself).
//!
//! | sslmode                                   | chain checked            | host name checked |
//! |-------------------------------------------|--------------------------|-------------------|
//! | allow / prefer / require, no root file    | no (signatures are)      | no                |
//! | allow / prefer / require + a root file    | yes (libpq's rule)       | no                |
//! | verify-ca                                 | yes                      | no                |
//! | verify-full                               | yes                      | yes               |
//!
//! "Signatures are" means the handshake signature is still verified against the presented
//! certificate's key, so the peer must own the certificate it shows — that is what libpq's
//! `require` gives. The root file is `sslrootcert`, or when that is not set libpq's default
//! `~/.postgresql/root.crt` of the process's home directory (for pgsub's workers and SQL
//! functions: the PostgreSQL server's OS user) if it exists. As libpq: `verify-ca` and
//! `verify-full` without any root file are refused (never a silent fall back to the operating
//! system's trust store, which would let `verify-ca` accept any publicly issued certificate);
//! `sslrootcert=system` selects that store explicitly and needs `verify-full`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::Error;
use crate::conninfo::SslMode;

/// What the verifier checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verify {
    /// Handshake signatures only.
    None,
    /// Chain to a trusted root, any host name.
    Chain,
    /// Chain and host name.
    Full,
}

/// libpq's default root certificate file, `~/.postgresql/root.crt`, if it exists.
pub(crate) fn default_root_file(home: Option<&Path>) -> Option<PathBuf> {
    home.map(|h| h.join(".postgresql").join("root.crt")).filter(|p| p.is_file())
}

/// What is verified for `mode`, given `sslrootcert` and whether the default root file exists.
pub(crate) fn verify_level(mode: SslMode, rootcert: Option<&Path>, default_root_exists: bool) -> Verify {
    match mode {
        SslMode::VerifyFull => Verify::Full,
        SslMode::VerifyCa => Verify::Chain,
        // libpq: with a root certificate file present (given, or the default one), require (and
        // prefer/allow) verify the chain like verify-ca.
        _ => match rootcert {
            Some(p) if p != Path::new("system") => Verify::Chain,
            Some(_) => Verify::None,
            None if default_root_exists => Verify::Chain,
            None => Verify::None,
        },
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: impl std::fmt::Display) -> Error {
    Error::Tls(what.to_string())
}

/// The trusted roots, plus the certificates of a root *file* kept verbatim: a self-signed
/// server certificate listed there is accepted as the server's certificate even though webpki
/// refuses a CA certificate as end entity (OpenSSL, hence libpq, accepts it; the PostgreSQL
/// docs' "simple self-signed certificate" recipe produces exactly such a certificate).
fn load_roots(
    rootcert: Option<&Path>,
    home: Option<PathBuf>,
) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), Error> {
    match rootcert {
        Some(p) if p == Path::new("system") => Ok((load_system_roots()?, Vec::new())),
        Some(p) => load_root_file(p),
        None => match default_root_file(home.as_deref()) {
            Some(path) => load_root_file(&path),
            // libpq's words.
            None => Err(tls_err(format!(
                "root certificate file \"{}\" does not exist\nEither provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification.",
                home.map(|h| h.join(".postgresql").join("root.crt").display().to_string())
                    .unwrap_or_else(|| "~/.postgresql/root.crt".into())
            ))),
        },
    }
}

/// Every certificate of a PEM file, as trusted roots and as pinned end-entity certificates.
fn load_root_file(path: &Path) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), Error> {
    let unreadable = |e: &dyn std::fmt::Display| {
        tls_err(format!("could not read root certificate file \"{}\": {e}", path.display()))
    };
    let f = std::fs::File::open(path).map_err(|e| unreadable(&e))?;
    let mut roots = RootCertStore::empty();
    let mut pinned = Vec::new();
    for cert in CertificateDer::pem_reader_iter(f) {
        let cert = cert.map_err(|e| unreadable(&e))?;
        roots.add(cert.clone()).map_err(|e| {
            tls_err(format!("invalid certificate in root certificate file \"{}\": {e}", path.display()))
        })?;
        pinned.push(cert);
    }
    if pinned.is_empty() {
        return Err(tls_err(format!("no certificates found in root certificate file \"{}\"", path.display())));
    }
    Ok((roots, pinned))
}

/// The operating system's trust store.
fn load_system_roots() -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    let res = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(res.certs);
    if added == 0 {
        let why = res.errors.first().map(|e| format!(": {e}")).unwrap_or_default();
        return Err(tls_err(format!("could not load the system's trusted root certificates{why}")));
    }
    Ok(roots)
}

/// Builds the rustls configuration for one connection attempt.
pub(crate) fn client_config(
    mode: SslMode,
    rootcert: Option<&Path>,
    home: Option<PathBuf>,
) -> Result<Arc<ClientConfig>, Error> {
    if rootcert == Some(Path::new("system")) && mode != SslMode::VerifyFull {
        // libpq (16+): the system's roots vouch for any host they issued to, so only a
        // host-name check makes them mean anything.
        return Err(tls_err(format!(
            "weak sslmode \"{}\" may not be used with sslrootcert=system (use \"verify-full\")",
            mode.as_str()
        )));
    }
    let provider = provider();
    let algs = provider.signature_verification_algorithms;
    let level = verify_level(mode, rootcert, default_root_file(home.as_deref()).is_some());
    let verifier: Arc<dyn ServerCertVerifier> = match level {
        Verify::None => Arc::new(SignatureOnly { algs }),
        Verify::Chain | Verify::Full => {
            let (roots, pinned) = load_roots(rootcert, home)?;
            Arc::new(ChainVerifier { roots: Arc::new(roots), pinned, algs, check_name: level == Verify::Full })
        }
    };
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // PostgreSQL 17+ checks ALPN when the client offers it; older servers ignore it.
    cfg.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(cfg))
}

/// The name sent as SNI and verified under verify-full. IP literals are checked against the
/// certificate's IP SANs and never sent as SNI (rustls does that for `ServerName::IpAddress`).
pub(crate) fn server_name(host: &str, mode: Verify) -> Result<ServerName<'static>, Error> {
    match ServerName::try_from(host.to_string()) {
        Ok(n) => Ok(n),
        Err(_) if mode != Verify::Full => {
            // Not a valid DNS name (e.g. underscores) and not verified anyway: send no SNI.
            Ok(ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into()))
        }
        Err(e) => Err(tls_err(format!("host name \"{host}\" cannot be verified with sslmode=verify-full: {e}"))),
    }
}

/// libpq's `require`: any certificate, but the handshake must be signed by its key.
#[derive(Debug)]
struct SignatureOnly {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SignatureOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// libpq's `verify-ca` (chain to a trusted root) and `verify-full` (chain and host name; the
/// same checks as rustls's `WebPkiServerVerifier`, without revocation lists, which libpq only
/// checks when `sslcrl` is given — rejected by conninfo).
#[derive(Debug)]
struct ChainVerifier {
    roots: Arc<RootCertStore>,
    /// Certificates from the root file, accepted verbatim as end entity (self-signed servers).
    pinned: Vec<CertificateDer<'static>>,
    algs: WebPkiSupportedAlgorithms,
    check_name: bool,
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        let pinned = self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref());
        if !pinned {
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                &self.roots,
                intermediates,
                now,
                self.algs.all,
            )?;
        }
        if self.check_name {
            rustls::client::verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(verify_level(SslMode::Require, None, false), Verify::None);
        assert_eq!(verify_level(SslMode::Prefer, None, false), Verify::None);
        assert_eq!(verify_level(SslMode::Require, Some(Path::new("/ca.pem")), false), Verify::Chain);
        // libpq: an existing ~/.postgresql/root.crt makes require verify the chain.
        assert_eq!(verify_level(SslMode::Require, None, true), Verify::Chain);
        assert_eq!(verify_level(SslMode::Prefer, None, true), Verify::Chain);
        assert_eq!(verify_level(SslMode::VerifyCa, None, false), Verify::Chain);
        assert_eq!(verify_level(SslMode::VerifyFull, Some(Path::new("system")), false), Verify::Full);
    }

    /// A home directory with (or without) `.postgresql/root.crt` holding `pem`.
    fn home_with_root(tag: &str, pem: Option<&str>) -> PathBuf {
        let home = std::env::temp_dir().join(format!("pgsub-tls-home-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(home.join(".postgresql")).unwrap();
        if let Some(pem) = pem {
            std::fs::write(home.join(".postgresql").join("root.crt"), pem).unwrap();
        }
        home
    }

    #[test]
    fn verification_without_a_root_file_is_refused_as_libpq_refuses_it() {
        let home = home_with_root("none", None);
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let e = client_config(mode, None, Some(home.clone())).unwrap_err().to_string();
            assert!(e.contains("root certificate file") && e.contains("does not exist"), "{e}");
            assert!(e.contains("sslrootcert=system"), "{e}");
        }
        // Without HOME at all, too.
        assert!(client_config(SslMode::VerifyCa, None, None).is_err());
        // require without a root file verifies nothing and needs none.
        client_config(SslMode::Require, None, Some(home.clone())).unwrap();
        let _ = std::fs::remove_dir_all(home);
    }

    #[test]
    fn the_system_store_needs_verify_full() {
        for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::Prefer] {
            let e = client_config(mode, Some(Path::new("system")), None).unwrap_err().to_string();
            assert!(e.contains(&format!("weak sslmode \"{}\"", mode.as_str())) && e.contains("verify-full"), "{e}");
        }
    }

    #[test]
    fn the_default_root_file_is_read_when_present() {
        // A file that is there but holds no certificate: reading it is what fails, so it was read
        // (for require too, which then verifies the chain as libpq does).
        let home = home_with_root("empty", Some("not a certificate\n"));
        for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            let e = client_config(mode, None, Some(home.clone())).unwrap_err().to_string();
            assert!(e.contains("no certificates found in root certificate file") && e.contains(".postgresql"), "{e}");
        }
        let _ = std::fs::remove_dir_all(home);
    }

    #[test]
    fn names() {
        assert!(matches!(server_name("db.example.com", Verify::Full), Ok(ServerName::DnsName(_))));
        assert!(matches!(server_name("127.0.0.1", Verify::Full), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("::1", Verify::Full), Ok(ServerName::IpAddress(_))));
        assert!(server_name("bad name!", Verify::Full).is_err());
        assert!(server_name("bad name!", Verify::Chain).is_ok());
    }

    #[test]
    fn config_without_verification_builds() {
        client_config(SslMode::Require, None, None).unwrap();
        let e = client_config(SslMode::VerifyCa, Some(Path::new("/nonexistent/ca.pem")), None).unwrap_err();
        assert!(e.to_string().contains("could not read root certificate file"), "{e}");
    }
}
