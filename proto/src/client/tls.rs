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
//! Revocation lists (`sslcrl`, `sslcrldir`, else `~/.postgresql/root.crl` if it exists) are
//! checked whenever the chain is, as libpq with OpenSSL's CRL_CHECK_ALL: every certificate of
//! the chain below the root must be covered by a current list of its issuer, a revoked one is
//! refused. A named list file or directory that does not exist is ignored (libpq's "we do not
//! require CRL"); one that does not parse is an error. A self-signed server certificate accepted
//! because the root file lists it verbatim is not checked against the lists (OpenSSL would want
//! a list issued by that certificate itself).
//!
//! The TLS versions offered are those of TLSv1.2 and TLSv1.3 (all rustls speaks) within
//! `ssl_min_protocol_version`..`ssl_max_protocol_version`; the host name goes out as SNI unless
//! `sslsni=0` (never an IP address). Client certificates are `keyfile.rs`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

pub(crate) use super::keyfile::{client_identity, Identity};
use super::Error;
use crate::conninfo::{SslMode, TlsVersion};

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

/// Why a PEM file could not be read, without its contents: the parser's own messages quote the
/// offending line or byte, and a connection string may name any file the server can read.
fn pem_reason(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        _ => "not a valid PEM file".to_string(),
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
        let cert = cert.map_err(|e| unreadable(&pem_reason(&e)))?;
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

/// The revocation lists in effect: `sslcrl` and every file of `sslcrldir`, else libpq's default
/// `~/.postgresql/root.crl`; files or directories that do not exist are skipped as libpq skips
/// them.
pub(crate) fn load_crls(
    crl: Option<&Path>,
    crldir: Option<&Path>,
    home: Option<&Path>,
) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
    let mut files: Vec<PathBuf> = Vec::new();
    match (crl, crldir) {
        (None, None) => files.extend(home.map(|h| h.join(".postgresql").join("root.crl"))),
        _ => files.extend(crl.map(Path::to_path_buf)),
    }
    if let Some(dir) = crldir {
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            names.sort();
            files.extend(names.into_iter().filter(|p| p.is_file()));
        }
    }
    let mut crls = Vec::new();
    for path in files.iter().filter(|p| p.is_file()) {
        let bad = |e: &dyn std::fmt::Display| {
            tls_err(format!("could not read certificate revocation list \"{}\": {e}", path.display()))
        };
        let found: Vec<CertificateRevocationListDer<'static>> = CertificateRevocationListDer::pem_file_iter(path)
            .map_err(|e| bad(&pem_reason(&e)))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(&pem_reason(&e)))?;
        // A named file must hold a list; files of the directory that hold none are not lists.
        if found.is_empty() && Some(path.as_path()) == crl {
            return Err(bad(&"no certificate revocation list in the file"));
        }
        for der in &found {
            webpki::OwnedCertRevocationList::from_der(der.as_ref())
                .map_err(|_| bad(&"not a valid certificate revocation list"))?;
        }
        crls.extend(found);
    }
    Ok(crls)
}

/// What one connection's TLS must honour, from the connection string.
#[derive(Clone, Debug)]
pub(crate) struct Policy<'a> {
    pub mode: SslMode,
    pub rootcert: Option<&'a Path>,
    /// The home directory of `~/.postgresql`.
    pub home: Option<PathBuf>,
    pub crl: Option<&'a Path>,
    pub crldir: Option<&'a Path>,
    pub min_version: TlsVersion,
    pub max_version: Option<TlsVersion>,
    pub sni: bool,
}

impl<'a> Policy<'a> {
    /// libpq's defaults for everything but `mode`, `rootcert` and `home`.
    pub(crate) fn new(mode: SslMode, rootcert: Option<&'a Path>, home: Option<PathBuf>) -> Self {
        Policy {
            mode,
            rootcert,
            home,
            crl: None,
            crldir: None,
            min_version: TlsVersion::Tls1_2,
            max_version: None,
            sni: true,
        }
    }
}

/// The rustls protocol versions within `min..=max`.
fn protocol_versions(
    min: TlsVersion,
    max: Option<TlsVersion>,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, Error> {
    let v: Vec<_> = [(TlsVersion::Tls1_2, &rustls::version::TLS12), (TlsVersion::Tls1_3, &rustls::version::TLS13)]
        .into_iter()
        .filter(|(v, _)| *v >= min && max.is_none_or(|m| *v <= m))
        .map(|(_, r)| r)
        .collect();
    if v.is_empty() {
        return Err(tls_err(format!(
            "no TLS version this client speaks (TLSv1.2, TLSv1.3) is within ssl_min_protocol_version={} and ssl_max_protocol_version={}",
            min.as_str(),
            max.map_or("", TlsVersion::as_str)
        )));
    }
    Ok(v)
}

/// Builds the rustls configuration for one connection attempt.
pub(crate) fn client_config(p: &Policy<'_>, identity: Option<Identity>) -> Result<Arc<ClientConfig>, Error> {
    let (mode, rootcert) = (p.mode, p.rootcert);
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
    let level = verify_level(mode, rootcert, default_root_file(p.home.as_deref()).is_some());
    let verifier: Arc<dyn ServerCertVerifier> = match level {
        Verify::None => Arc::new(SignatureOnly { algs }),
        Verify::Chain | Verify::Full => {
            // libpq loads revocation lists only along a root *file* (not the system store).
            let crls = match rootcert {
                Some(r) if r == Path::new("system") => Vec::new(),
                _ => load_crls(p.crl, p.crldir, p.home.as_deref())?,
            };
            let (roots, pinned) = load_roots(rootcert, p.home.clone())?;
            let crls = crls
                .iter()
                .map(|c| webpki::OwnedCertRevocationList::from_der(c.as_ref()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| tls_err("could not read certificate revocation list: not a valid list".to_string()))?;
            Arc::new(ChainVerifier { roots: Arc::new(roots), pinned, algs, check_name: level == Verify::Full, crls })
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&protocol_versions(p.min_version, p.max_version)?)
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
    cfg.enable_sni = p.sni;
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
/// same checks as rustls's `WebPkiServerVerifier`), plus the revocation lists when there are
/// any.
#[derive(Debug)]
struct ChainVerifier {
    roots: Arc<RootCertStore>,
    /// Certificates from the root file, accepted verbatim as end entity (self-signed servers).
    pinned: Vec<CertificateDer<'static>>,
    algs: WebPkiSupportedAlgorithms,
    check_name: bool,
    crls: Vec<webpki::OwnedCertRevocationList>,
}

impl ChainVerifier {
    /// The chain checked against the revocation lists (after it verified without them): every
    /// certificate below the root must be covered by a current list, and none revoked.
    fn check_revocation(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        if self.crls.is_empty() {
            return Ok(());
        }
        let lists: Vec<webpki::CertRevocationList<'_>> =
            self.crls.iter().map(|c| webpki::CertRevocationList::from(c.clone())).collect();
        let refs: Vec<&webpki::CertRevocationList<'_>> = lists.iter().collect();
        let options = webpki::RevocationOptionsBuilder::new(&refs)
            .map_err(|_| rustls::Error::General("no revocation list".into()))?
            .with_depth(webpki::RevocationCheckDepth::Chain)
            .with_status_policy(webpki::UnknownStatusPolicy::Deny)
            .with_expiration_policy(webpki::ExpirationPolicy::Enforce)
            .build();
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        cert.verify_for_usage(
            self.algs.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            Some(options),
            None,
        )
        .map(|_| ())
        .map_err(|e| {
            rustls::Error::InvalidCertificate(match e {
                webpki::Error::CertRevoked => CertificateError::Revoked,
                webpki::Error::UnknownRevocationStatus => CertificateError::UnknownRevocationStatus,
                webpki::Error::CrlExpired { .. } => CertificateError::ExpiredRevocationList,
                other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
            })
        })
    }
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
            self.check_revocation(end_entity, intermediates, now)?;
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
    use rustls::pki_types::PrivateKeyDer;

    fn config(
        mode: SslMode,
        rootcert: Option<&Path>,
        home: Option<PathBuf>,
        identity: Option<Identity>,
    ) -> Result<Arc<ClientConfig>, Error> {
        client_config(&Policy::new(mode, rootcert, home), identity)
    }

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
            let e = config(mode, None, Some(home.clone()), None).unwrap_err().to_string();
            assert!(e.contains("root certificate file") && e.contains("does not exist"), "{e}");
            assert!(e.contains("sslrootcert=system"), "{e}");
        }
        // Without HOME at all, too.
        assert!(config(SslMode::VerifyCa, None, None, None).is_err());
        // require without a root file verifies nothing and needs none.
        config(SslMode::Require, None, Some(home.clone()), None).unwrap();
        let _ = std::fs::remove_dir_all(home);
    }

    #[test]
    fn the_system_store_needs_verify_full() {
        for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::Prefer] {
            let e = config(mode, Some(Path::new("system")), None, None).unwrap_err().to_string();
            assert!(e.contains(&format!("weak sslmode \"{}\"", mode.as_str())) && e.contains("verify-full"), "{e}");
        }
    }

    #[test]
    fn the_default_root_file_is_read_when_present() {
        // A file that is there but holds no certificate: reading it is what fails, so it was read
        // (for require too, which then verifies the chain as libpq does).
        let home = home_with_root("empty", Some("not a certificate\n"));
        for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            let e = config(mode, None, Some(home.clone()), None).unwrap_err().to_string();
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

    /// A connection string may name any file the server can read as a root certificate or a
    /// revocation list: the error says the file is not PEM, never what it holds.
    #[test]
    fn an_unreadable_pem_file_is_not_quoted() {
        let dir = std::env::temp_dir().join(format!("pgsub-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, content) in [
            ("start.pem", "-----BEGIN SECRET line-one-secret\nxx\n"),
            ("b64.pem", "-----BEGIN CERTIFICATE-----\n!secret!\n-----END CERTIFICATE-----\n"),
            ("noend.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n"),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, content).unwrap();
            let e = config(SslMode::VerifyCa, Some(&path), None, None).unwrap_err().to_string();
            assert!(e.contains("not a valid PEM file"), "{name}: {e}");
            assert!(!e.contains("secret") && !e.contains("33") && !e.contains("AAAA"), "{name}: {e}");
            let e = load_crls(Some(&path), None, None).unwrap_err().to_string();
            assert!(e.contains("not a valid PEM file"), "{name} as a CRL: {e}");
            assert!(!e.contains("secret") && !e.contains("AAAA"), "{name} as a CRL: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn config_without_verification_builds() {
        config(SslMode::Require, None, None, None).unwrap();
        let e = config(SslMode::VerifyCa, Some(Path::new("/nonexistent/ca.pem")), None, None).unwrap_err();
        assert!(e.to_string().contains("could not read root certificate file"), "{e}");
    }

    /// A self-signed client certificate and its key (P-256, valid until 2126), for the checks
    /// below; made with `openssl req -x509 -newkey ec -nodes`.
    const CLIENT_CRT: &str = "-----BEGIN CERTIFICATE-----\nMIIBjzCCATWgAwIBAgIUNAHD7Ibf6uh0h+8Xtwn9cbFu+E8wCgYIKoZIzj0EAwIw\nHDEaMBgGA1UEAwwRcGdzdWJfdGVzdF9jbGllbnQwIBcNMjYxMTMwMDU1MTI2WhgP\nMjEyNjExMDYwNTUxMjZaMBwxGjAYBgNVBAMMEXBnc3ViX3Rlc3RfY2xpZW50MFkw\nEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEp+nc66ne3ehvwFq1x4heGbfSw3iWAs8z\nAdKPv6Bj67Cw7mpGbD79uCYsuXn0WwTfB+YyfQMcoX+u8VX3Ll+UkqNTMFEwHQYD\nVR0OBBYEFALYo1UurozTTdok4cO/DyOrYPVjMB8GA1UdIwQYMBaAFALYo1UurozT\nTdok4cO/DyOrYPVjMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIg\nYR9oKRgb936puvQV0gx46MjKXGnMxr4Jpa8H0lGtZLUCIQDJ5mMjeZER5lu7UiKC\nnFYE98U7F/b5ILO0v43gKT9jtg==\n-----END CERTIFICATE-----\n";
    const CLIENT_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgBGtnfKXro2jz3vs/\nDcuMHq6GM2N1U5YlPk4mEl0Nw7OhRANCAASn6dzrqd7d6G/AWrXHiF4Zt9LDeJYC\nzzMB0o+/oGPrsLDuakZsPv24Jiy5efRbBN8H5jJ9Axyhf67xVfcuX5SS\n-----END PRIVATE KEY-----\n";
    /// CLIENT_KEY encrypted with `openssl pkcs8 -topk8 -v2 aes256 -passout 'pass:pgsub test pw'`.
    const CLIENT_KEY_ENCRYPTED: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAjQm2sR1aipwwICCAAw\nDAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEEHgCIUJoG+nGOcsT5tjkh9YEgZDI\nPvbe3CkQhQ6in1zaABQ5bQNT1MrTkjpdwGJTfF22YsdNLHsMqeodBuKTrBU825Ql\n6ylY0e5PyANbKCkR974aLmbhe0fw1RRIW2M+QBKIeW8lRocZFJ34DxgxidOCkswX\nZL7N92ha3YKe3PRLGdIcjl2k3dzeRPDBL/NSlIL3ASzAjUJwr6pIULy/ieXdo6A=\n-----END ENCRYPTED PRIVATE KEY-----\n";
    /// CLIENT_KEY encrypted the traditional way (`openssl ec -aes256`).
    const CLIENT_KEY_TRADITIONAL: &str = "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,993D4554C6C0467D459FA2395B80B768\n\nC1n7uxMp1c9298z8MLvLFJ1YDveVGgj/Q7dFjPn1/7CoOZmvMvV58rJ7+vvz96eI\ndz5aMSIsD2rhu6NdjzjyHfNavHVr6MOmTH8cX8GdC5wnU81CYkEaUAKQWoeskPKD\nixWvtkhwgOMHUm7naUoau0p7IeEqmQkp5pSGWp/8xA8=\n-----END EC PRIVATE KEY-----\n";

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
        assert!(client_identity(None, None, None, Some(&home)).unwrap().is_none());
        assert!(client_identity(Some(&dot.join("absent.crt")), None, None, Some(&home)).unwrap().is_none());
        // The default pair.
        write_mode(&dot.join("postgresql.crt"), CLIENT_CRT, 0o644);
        let e = client_identity(None, None, None, Some(&home)).unwrap_err().to_string();
        assert!(e.contains("certificate present, but not private key file"), "{e}");
        write_mode(&dot.join("postgresql.key"), CLIENT_KEY, 0o600);
        let (certs, _) = client_identity(None, None, None, Some(&home)).unwrap().expect("identity");
        assert_eq!(certs.len(), 1);
        config(SslMode::Require, None, Some(home.clone()), client_identity(None, None, None, Some(&home)).unwrap())
            .unwrap();
        // A key others may read is refused, in libpq's words.
        write_mode(&dot.join("postgresql.key"), CLIENT_KEY, 0o644);
        let e = client_identity(None, None, None, Some(&home)).unwrap_err().to_string();
        assert!(e.contains("has group or world access") && e.contains("0600"), "{e}");
        // Named files win over the defaults; a directory is not a key; garbage is not a key.
        write_mode(&dot.join("mine.key"), CLIENT_KEY, 0o600);
        assert!(client_identity(None, Some(&dot.join("mine.key")), None, Some(&home)).unwrap().is_some());
        let e = client_identity(None, Some(&dot), None, Some(&home)).unwrap_err().to_string();
        assert!(e.contains("is not a regular file"), "{e}");
        write_mode(&dot.join("bad.key"), "not a key\n", 0o600);
        let e = client_identity(None, Some(&dot.join("bad.key")), None, Some(&home)).unwrap_err().to_string();
        assert!(e.contains("could not load private key file"), "{e}");
        // An encrypted key: decrypted with sslpassword into the very key it encrypts.
        write_mode(&dot.join("enc.key"), CLIENT_KEY_ENCRYPTED, 0o600);
        let enc = dot.join("enc.key");
        let plain = PrivateKeyDer::from_pem_slice(CLIENT_KEY.as_bytes()).unwrap();
        let (_, key) = client_identity(None, Some(&enc), Some("pgsub test pw"), Some(&home)).unwrap().unwrap();
        assert_eq!(key.secret_der(), plain.secret_der());
        // Without a password, and with a wrong one: libpq's "could not load private key file".
        for pw in [None, Some(""), Some("wrong")] {
            let e = client_identity(None, Some(&enc), pw, Some(&home)).unwrap_err().to_string();
            assert!(e.contains("could not load private key file") && e.contains("enc.key"), "{e}");
            let why = if pw == Some("wrong") { "bad decrypt" } else { "no sslpassword is given" };
            assert!(e.contains(why), "{pw:?}: {e}");
        }
        // The traditional encryption: refused, saying how to convert.
        write_mode(&dot.join("trad.key"), CLIENT_KEY_TRADITIONAL, 0o600);
        let e = client_identity(None, Some(&dot.join("trad.key")), Some("x"), Some(&home)).unwrap_err().to_string();
        assert!(e.contains("traditional format") && e.contains("openssl pkcs8 -topk8"), "{e}");
        // A plain key ignores sslpassword, as libpq does.
        assert!(client_identity(None, Some(&dot.join("mine.key")), Some("unused"), Some(&home)).unwrap().is_some());
        let _ = std::fs::remove_dir_all(home);
    }

    /// An in-memory handshake of a client built from `p` (connecting to `host`) with a rustls
    /// server limited to `server_versions`: what the server saw as SNI, and the outcome.
    fn handshake(
        p: &Policy<'_>,
        host: &str,
        server_versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (Option<String>, Result<rustls::ProtocolVersion, String>) {
        #[derive(Debug)]
        struct RecordSni(Arc<rustls::sign::CertifiedKey>, std::sync::Mutex<Option<String>>);
        impl rustls::server::ResolvesServerCert for RecordSni {
            fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
                *self.1.lock().unwrap() = hello.server_name().map(str::to_string);
                Some(self.0.clone())
            }
        }
        let provider = provider();
        let cert = CertificateDer::from_pem_slice(CLIENT_CRT.as_bytes()).unwrap();
        let key = provider
            .key_provider
            .load_private_key(rustls::pki_types::PrivateKeyDer::from_pem_slice(CLIENT_KEY.as_bytes()).unwrap())
            .unwrap();
        let record =
            Arc::new(RecordSni(Arc::new(rustls::sign::CertifiedKey::new(vec![cert], key)), Default::default()));
        let server_cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(server_versions)
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(record.clone());
        let level = verify_level(p.mode, p.rootcert, false);
        let mut client =
            rustls::ClientConnection::new(client_config(p, None).unwrap(), server_name(host, level).unwrap()).unwrap();
        let mut server = rustls::ServerConnection::new(Arc::new(server_cfg)).unwrap();
        let mut outcome = Ok(());
        for _ in 0..20 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                server.read_tls(&mut &buf[..]).unwrap();
                if let Err(e) = server.process_new_packets() {
                    outcome = Err(e.to_string());
                }
            }
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                client.read_tls(&mut &buf[..]).unwrap();
                if let Err(e) = client.process_new_packets() {
                    outcome = Err(e.to_string());
                }
            }
            if outcome.is_err() || (!client.is_handshaking() && !server.is_handshaking()) {
                break;
            }
        }
        let sni = record.1.lock().unwrap().clone();
        (sni, outcome.map(|()| client.protocol_version().expect("negotiated")))
    }

    #[test]
    fn sni_is_sent_for_host_names_only_and_not_with_sslsni_0() {
        let both = [&rustls::version::TLS13, &rustls::version::TLS12];
        let p = Policy::new(SslMode::Require, None, None);
        assert_eq!(handshake(&p, "db.example.com", &both).0.as_deref(), Some("db.example.com"));
        assert_eq!(handshake(&p, "127.0.0.1", &both).0, None);
        assert_eq!(handshake(&p, "::1", &both).0, None);
        let off = Policy { sni: false, ..Policy::new(SslMode::Require, None, None) };
        let (sni, ok) = handshake(&off, "db.example.com", &both);
        assert_eq!(sni, None);
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn protocol_version_bounds_are_honoured() {
        use rustls::version::{TLS12, TLS13};
        let with =
            |min, max| Policy { min_version: min, max_version: max, ..Policy::new(SslMode::Require, None, None) };
        let h = "db.example.com";
        // Defaults: TLSv1.3 when the server has it, TLSv1.2 otherwise.
        assert_eq!(
            handshake(&with(TlsVersion::Tls1_2, None), h, &[&TLS13, &TLS12]).1,
            Ok(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(handshake(&with(TlsVersion::Tls1_2, None), h, &[&TLS12]).1, Ok(rustls::ProtocolVersion::TLSv1_2));
        // A maximum of TLSv1.2 against a TLSv1.3-only server, and the reverse: no connection.
        let e = handshake(&with(TlsVersion::Tls1_2, Some(TlsVersion::Tls1_2)), h, &[&TLS13]).1.unwrap_err();
        assert!(e.to_lowercase().contains("protocol") || e.contains("version"), "{e}");
        assert!(handshake(&with(TlsVersion::Tls1_3, None), h, &[&TLS12]).1.is_err());
        // TLSv1 / TLSv1.1 as minimum mean TLSv1.2 here (all rustls speaks).
        assert_eq!(handshake(&with(TlsVersion::Tls1_0, None), h, &[&TLS12]).1, Ok(rustls::ProtocolVersion::TLSv1_2));
        // Bounds excluding both versions: refused before connecting.
        let e = config_err(&with(TlsVersion::Tls1_0, Some(TlsVersion::Tls1_1)));
        assert!(e.contains("TLSv1.2, TLSv1.3"), "{e}");
    }

    fn config_err(p: &Policy<'_>) -> String {
        client_config(p, None).unwrap_err().to_string()
    }

    #[test]
    fn revocation_lists_are_read_as_libpq_finds_them() {
        let home = home_with_root("crl", None);
        let dot = home.join(".postgresql");
        // None anywhere: none.
        assert!(load_crls(None, None, Some(&home)).unwrap().is_empty());
        // Named files and directories that do not exist are skipped, as libpq skips them.
        assert!(load_crls(Some(&dot.join("absent.crl")), Some(&dot.join("absent.d")), Some(&home)).unwrap().is_empty());
        // A named file that holds no list, or a broken one: an error (stricter than libpq).
        std::fs::write(dot.join("bad.crl"), "not a list\n").unwrap();
        let e = load_crls(Some(&dot.join("bad.crl")), None, Some(&home)).unwrap_err().to_string();
        assert!(e.contains("could not read certificate revocation list") && e.contains("bad.crl"), "{e}");
        // The default root.crl is read when nothing is named (and is what fails here).
        std::fs::write(dot.join("root.crl"), "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n").unwrap();
        let e = load_crls(None, None, Some(&home)).unwrap_err().to_string();
        assert!(e.contains("root.crl"), "{e}");
        // ... but not when a file or directory is named.
        assert!(load_crls(None, Some(&dot.join("absent.d")), Some(&home)).unwrap().is_empty());
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
