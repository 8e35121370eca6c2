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
//!
//! Client certificates (certificate authentication), as libpq: `sslcert`, else
//! `~/.postgresql/postgresql.crt`; a certificate file that does not exist means none is sent; with
//! one, its key (`sslkey`, else `~/.postgresql/postgresql.key`) must exist, be a regular file and
//! not be readable by others (libpq's permission rule). Encrypted keys (`sslpassword`) are not
//! supported.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
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

/// A client certificate chain and its private key.
pub(crate) type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The client certificate and key to present, as libpq finds them (None: no certificate file).
pub(crate) fn client_identity(
    sslcert: Option<&Path>,
    sslkey: Option<&Path>,
    home: Option<&Path>,
) -> Result<Option<Identity>, Error> {
    let dot = |f: &str| home.map(|h| h.join(".postgresql").join(f));
    let Some(cert_path) = sslcert.map(Path::to_path_buf).or_else(|| dot("postgresql.crt")) else { return Ok(None) };
    match std::fs::metadata(&cert_path) {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            return Ok(None);
        }
        Err(e) => return Err(tls_err(format!("could not open certificate file \"{}\": {e}", cert_path.display()))),
    }
    let unreadable = |e: &dyn std::fmt::Display| {
        tls_err(format!("could not read certificate file \"{}\": {e}", cert_path.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| unreadable(&e))?
        .collect::<Result<_, _>>()
        .map_err(|e| unreadable(&e))?;
    if certs.is_empty() {
        return Err(unreadable(&"no certificate in the file"));
    }
    let Some(key_path) = sslkey.map(Path::to_path_buf).or_else(|| dot("postgresql.key")) else {
        return Err(tls_err("certificate present, but not private key file"));
    };
    check_key_file(&key_path)?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
        let encrypted = std::fs::read_to_string(&key_path).is_ok_and(|t| t.contains("ENCRYPTED"));
        tls_err(if encrypted {
            format!(
                "could not load private key file \"{}\": the key is encrypted, and encrypted keys (sslpassword) are not supported; decrypt it (openssl pkey -in … -out …)",
                key_path.display()
            )
        } else {
            format!("could not load private key file \"{}\": {e}", key_path.display())
        })
    })?;
    Ok(Some((certs, key)))
}

/// libpq's checks of a private key file: it exists, is a regular file, and is not open to others
/// (u=rw or less; u=rw,g=r or less when owned by root).
fn check_key_file(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .map_err(|_| tls_err(format!("certificate present, but not private key file \"{}\"", path.display())))?;
    if !meta.is_file() {
        return Err(tls_err(format!("private key file \"{}\" is not a regular file", path.display())));
    }
    let mode = meta.mode();
    // libpq's rule looks at the owner only to tell root from anyone else: a file this process
    // can read despite such modes is its own (or root's), and a key of another user that others
    // may read is refused too.
    let open_to_others = if meta.uid() == 0 { mode & 0o037 != 0 } else { mode & 0o077 != 0 };
    if open_to_others {
        return Err(tls_err(format!(
            "private key file \"{}\" has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root",
            path.display()
        )));
    }
    Ok(())
}

/// Builds the rustls configuration for one connection attempt.
pub(crate) fn client_config(
    mode: SslMode,
    rootcert: Option<&Path>,
    home: Option<PathBuf>,
    identity: Option<Identity>,
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
    let key_provider = provider.key_provider;
    let level = verify_level(mode, rootcert, default_root_file(home.as_deref()).is_some());
    let verifier: Arc<dyn ServerCertVerifier> = match level {
        Verify::None => Arc::new(SignatureOnly { algs }),
        Verify::Chain | Verify::Full => {
            let (roots, pinned) = load_roots(rootcert, home)?;
            Arc::new(ChainVerifier { roots: Arc::new(roots), pinned, algs, check_name: level == Verify::Full })
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match identity {
        // Not rustls' with_client_auth_cert: that parses the certificate with webpki, which
        // refuses X.509 v1 certificates — what `openssl x509 -req` (the PostgreSQL docs' recipe)
        // makes without extensions, and what libpq and the server accept. The key is loaded
        // (and its type checked) by the provider; whether the certificate fits it is the
        // server's to say, as with libpq.
        Some((certs, key)) => {
            let signer = key_provider
                .load_private_key(key)
                .map_err(|e| tls_err(format!("the client's private key cannot be used: {e}")))?;
            let certified = Arc::new(rustls::sign::CertifiedKey::new(certs, signer));
            builder.with_client_cert_resolver(Arc::new(ClientCert(certified)))
        }
        None => builder.with_no_client_auth(),
    };
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

/// The `tls-server-end-point` channel binding data of a server certificate (RFC 5929): its hash
/// with the hash function of its signature algorithm, SHA-256 for MD5 and SHA-1 — what the
/// PostgreSQL server computes for SCRAM-SHA-256-PLUS. Err for an algorithm the server cannot
/// bind to either (Ed25519, RSA-PSS) or a certificate that does not parse.
pub(crate) fn server_end_point_hash(cert: &[u8]) -> Result<Vec<u8>, String> {
    use ring::digest;
    let oid = signature_algorithm_oid(cert).ok_or("could not parse the server certificate")?;
    // ecdsa-with-SHA*, sha*WithRSAEncryption, and the MD5/SHA-1 ones that map to SHA-256.
    let alg =
        match oid {
            // 1.2.840.10045.4.3.2 / 1.2.840.113549.1.1.11 / 1.2.840.10045.4.1 / 1.2.840.113549.1.1.5 / .4
            [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]
            | [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b]
            | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01]
            | [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05]
            | [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04] => &digest::SHA256,
            // 1.2.840.10045.4.3.3 / 1.2.840.113549.1.1.12
            [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03]
            | [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c] => &digest::SHA384,
            // 1.2.840.10045.4.3.4 / 1.2.840.113549.1.1.13
            [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04]
            | [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d] => &digest::SHA512,
            _ => return Err("the server certificate's signature algorithm has no channel binding hash".into()),
        };
    Ok(digest::digest(alg, cert).as_ref().to_vec())
}

/// The OID (content bytes) of `Certificate.signatureAlgorithm.algorithm`.
fn signature_algorithm_oid(cert: &[u8]) -> Option<&[u8]> {
    /// One DER element at the start of `b`: (tag, content, rest).
    fn element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&first, b) = b.split_first()?;
        let (len, b) = if first < 0x80 {
            (usize::from(first), b)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || b.len() < n {
                return None;
            }
            (b[..n].iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x)), &b[n..])
        };
        (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
    }
    let (0x30, certificate, _) = element(cert)? else { return None };
    let (0x30, _tbs, rest) = element(certificate)? else { return None };
    let (0x30, algorithm, _) = element(rest)? else { return None };
    let (0x06, oid, _) = element(algorithm)? else { return None };
    Some(oid)
}

/// Always presents the one client certificate there is (the server decides whether it fits).
#[derive(Debug)]
struct ClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
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
            let e = client_config(mode, None, Some(home.clone()), None).unwrap_err().to_string();
            assert!(e.contains("root certificate file") && e.contains("does not exist"), "{e}");
            assert!(e.contains("sslrootcert=system"), "{e}");
        }
        // Without HOME at all, too.
        assert!(client_config(SslMode::VerifyCa, None, None, None).is_err());
        // require without a root file verifies nothing and needs none.
        client_config(SslMode::Require, None, Some(home.clone()), None).unwrap();
        let _ = std::fs::remove_dir_all(home);
    }

    #[test]
    fn the_system_store_needs_verify_full() {
        for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::Prefer] {
            let e = client_config(mode, Some(Path::new("system")), None, None).unwrap_err().to_string();
            assert!(e.contains(&format!("weak sslmode \"{}\"", mode.as_str())) && e.contains("verify-full"), "{e}");
        }
    }

    #[test]
    fn the_default_root_file_is_read_when_present() {
        // A file that is there but holds no certificate: reading it is what fails, so it was read
        // (for require too, which then verifies the chain as libpq does).
        let home = home_with_root("empty", Some("not a certificate\n"));
        for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            let e = client_config(mode, None, Some(home.clone()), None).unwrap_err().to_string();
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
        client_config(SslMode::Require, None, None, None).unwrap();
        let e = client_config(SslMode::VerifyCa, Some(Path::new("/nonexistent/ca.pem")), None, None).unwrap_err();
        assert!(e.to_string().contains("could not read root certificate file"), "{e}");
    }

    /// A self-signed client certificate and its key (P-256, valid until 2126), for the checks
    /// below; made with `openssl req -x509 -newkey ec -nodes`, the key also encrypted with
    /// `openssl pkcs8 -topk8`.
    const CLIENT_CRT: &str = "-----BEGIN CERTIFICATE-----\nMIIBjzCCATWgAwIBAgIUNAHD7Ibf6uh0h+8Xtwn9cbFu+E8wCgYIKoZIzj0EAwIw\nHDEaMBgGA1UEAwwRcGdzdWJfdGVzdF9jbGllbnQwIBcNMjYxMTMwMDU1MTI2WhgP\nMjEyNjExMDYwNTUxMjZaMBwxGjAYBgNVBAMMEXBnc3ViX3Rlc3RfY2xpZW50MFkw\nEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEp+nc66ne3ehvwFq1x4heGbfSw3iWAs8z\nAdKPv6Bj67Cw7mpGbD79uCYsuXn0WwTfB+YyfQMcoX+u8VX3Ll+UkqNTMFEwHQYD\nVR0OBBYEFALYo1UurozTTdok4cO/DyOrYPVjMB8GA1UdIwQYMBaAFALYo1UurozT\nTdok4cO/DyOrYPVjMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIg\nYR9oKRgb936puvQV0gx46MjKXGnMxr4Jpa8H0lGtZLUCIQDJ5mMjeZER5lu7UiKC\nnFYE98U7F/b5ILO0v43gKT9jtg==\n-----END CERTIFICATE-----\n";
    const CLIENT_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgBGtnfKXro2jz3vs/\nDcuMHq6GM2N1U5YlPk4mEl0Nw7OhRANCAASn6dzrqd7d6G/AWrXHiF4Zt9LDeJYC\nzzMB0o+/oGPrsLDuakZsPv24Jiy5efRbBN8H5jJ9Axyhf67xVfcuX5SS\n-----END PRIVATE KEY-----\n";
    const CLIENT_KEY_ENCRYPTED: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAiNPrz/HXVOLgICCAAw\nDAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEEE7uEwtvNbkJqvflFVgN1LUEgZB6\nY7LEWBJJfKa0WudwBfH4JHuaMgx100y+ww1GOE3z+IwLxjmoDC3bOAAqlP1V6dzC\nFZbwH2OznBtEcFkKu+maNe9/EM3pMorD0swS2VW3hrkfgpHFl+1hGlPQPZ8pfR6a\nZo7o18F/p9ZT4TxbvQRA5jGFzLCFT4AyQ6ArbmySWMv6gz6OMkcWAeT1zOhCWCQ=\n-----END ENCRYPTED PRIVATE KEY-----\n";

    fn write_mode(path: &Path, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn client_certificates_are_found_and_checked_as_libpq_does() {
        let home = home_with_root("client", None);
        let dot = home.join(".postgresql");
        // No certificate file: nothing is sent, whether named or the default.
        assert!(client_identity(None, None, Some(&home)).unwrap().is_none());
        assert!(client_identity(Some(&dot.join("absent.crt")), None, Some(&home)).unwrap().is_none());
        // The default pair.
        write_mode(&dot.join("postgresql.crt"), CLIENT_CRT, 0o644);
        let e = client_identity(None, None, Some(&home)).unwrap_err().to_string();
        assert!(e.contains("certificate present, but not private key file"), "{e}");
        write_mode(&dot.join("postgresql.key"), CLIENT_KEY, 0o600);
        let (certs, _) = client_identity(None, None, Some(&home)).unwrap().expect("identity");
        assert_eq!(certs.len(), 1);
        client_config(SslMode::Require, None, Some(home.clone()), client_identity(None, None, Some(&home)).unwrap())
            .unwrap();
        // A key others may read is refused, in libpq's words.
        write_mode(&dot.join("postgresql.key"), CLIENT_KEY, 0o644);
        let e = client_identity(None, None, Some(&home)).unwrap_err().to_string();
        assert!(e.contains("has group or world access") && e.contains("0600"), "{e}");
        // Named files win over the defaults; a directory is not a key; garbage is not a key.
        write_mode(&dot.join("mine.key"), CLIENT_KEY, 0o600);
        assert!(client_identity(None, Some(&dot.join("mine.key")), Some(&home)).unwrap().is_some());
        let e = client_identity(None, Some(&dot), Some(&home)).unwrap_err().to_string();
        assert!(e.contains("is not a regular file"), "{e}");
        write_mode(&dot.join("bad.key"), "not a key\n", 0o600);
        let e = client_identity(None, Some(&dot.join("bad.key")), Some(&home)).unwrap_err().to_string();
        assert!(e.contains("could not load private key file"), "{e}");
        // An encrypted key: said so, not a generic parse error.
        write_mode(&dot.join("enc.key"), CLIENT_KEY_ENCRYPTED, 0o600);
        let e = client_identity(None, Some(&dot.join("enc.key")), Some(&home)).unwrap_err().to_string();
        assert!(e.contains("encrypted") && e.contains("sslpassword"), "{e}");
        let _ = std::fs::remove_dir_all(home);
    }

    #[test]
    fn channel_binding_hashes_the_certificate_with_its_signature_hash() {
        let der = CertificateDer::from_pem_slice(CLIENT_CRT.as_bytes()).unwrap();
        // ecdsa-with-SHA256: SHA-256 of the whole certificate.
        let want = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
        assert_eq!(server_end_point_hash(der.as_ref()).unwrap(), want.as_ref());
        assert!(server_end_point_hash(b"not a certificate").is_err());
        assert!(server_end_point_hash(&der.as_ref()[..20]).is_err());
    }
}
