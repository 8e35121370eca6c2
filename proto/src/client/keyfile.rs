//! The client certificate and its private key, found and checked as libpq does: `sslcert`, else
//! `~/.postgresql/postgresql.crt` (none sent when the file does not exist); its key `sslkey`,
//! else `~/.postgresql/postgresql.key`, which must exist, be a regular file and not be open to
//! others (libpq's permission rule). An encrypted key is decrypted with `sslpassword`: PKCS#8
//! `ENCRYPTED PRIVATE KEY` (what `openssl pkcs8 -topk8 -v2 aes256` and `openssl genpkey -aes256`
//! write: PBES2 with PBKDF2 or scrypt and AES-CBC) through the RustCrypto `pkcs8` crate. The
//! traditional OpenSSL encryption (`Proc-Type: 4,ENCRYPTED` headers, MD5-derived keys) is refused
//! with a message saying how to convert the key. Knows nothing about TLS sessions (`tls.rs`).

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::Error;

fn tls_err(what: impl std::fmt::Display) -> Error {
    Error::Tls(what.to_string())
}

/// A client certificate chain and its private key.
pub(crate) type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The client certificate and key to present, as libpq finds them (None: no certificate file).
pub(crate) fn client_identity(
    sslcert: Option<&Path>,
    sslkey: Option<&Path>,
    sslpassword: Option<&str>,
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
    let key = load_private_key(&key_path, sslpassword)?;
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

const ENCRYPTED_BEGIN: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
const ENCRYPTED_END: &str = "-----END ENCRYPTED PRIVATE KEY-----";

/// The key of a PEM file: plain (PKCS#8, SEC1 or PKCS#1), or PKCS#8 encrypted with `password`.
/// Errors start with libpq's `could not load private key file "…"`.
fn load_private_key(path: &Path, password: Option<&str>) -> Result<PrivateKeyDer<'static>, Error> {
    let fail =
        |why: &dyn std::fmt::Display| tls_err(format!("could not load private key file \"{}\": {why}", path.display()));
    let text = std::fs::read(path).map_err(|e| fail(&e))?;
    let text = String::from_utf8_lossy(&text);
    if let (Some(b), Some(e)) = (text.find(ENCRYPTED_BEGIN), text.find(ENCRYPTED_END)) {
        let block = text.get(b..e + ENCRYPTED_END.len()).ok_or_else(|| fail(&"malformed PEM block"))?;
        return decrypt_pkcs8(block, password).map_err(|why| fail(&why));
    }
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(fail(
            &"the key is encrypted in OpenSSL's traditional format (Proc-Type: 4,ENCRYPTED), which is not supported; \
              convert it to encrypted PKCS#8 with \"openssl pkcs8 -topk8 -v2 aes256 -in OLD -out NEW\"",
        ));
    }
    PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| fail(&e))
}

/// An `ENCRYPTED PRIVATE KEY` PEM block decrypted with `password`, as PKCS#8.
fn decrypt_pkcs8(block: &str, password: Option<&str>) -> Result<PrivateKeyDer<'static>, String> {
    let Some(password) = password.filter(|p| !p.is_empty()) else {
        return Err("the key is encrypted and no sslpassword is given".into());
    };
    let (_, doc) = pkcs8::der::Document::from_pem(block).map_err(|e| format!("malformed encrypted key: {e}"))?;
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(doc.as_bytes())
        .map_err(|e| format!("malformed encrypted key: {e}"))?;
    // A wrong password shows as bad padding, or as a result that is not a key.
    let plain = info.decrypt(password).map_err(|e| match e {
        pkcs8::Error::EncryptedPrivateKey(pkcs8::pkcs5::Error::DecryptFailed) => "bad decrypt".to_string(),
        pkcs8::Error::EncryptedPrivateKey(pkcs8::pkcs5::Error::AlgorithmParametersInvalid { .. })
        | pkcs8::Error::EncryptedPrivateKey(pkcs8::pkcs5::Error::UnsupportedAlgorithm { .. })
        | pkcs8::Error::EncryptedPrivateKey(pkcs8::pkcs5::Error::NoPbes1CryptSupport) => {
            format!(
                "the key's encryption is not supported ({e}); re-encrypt it with \"openssl pkcs8 -topk8 -v2 aes256\""
            )
        }
        other => format!("bad decrypt ({other})"),
    })?;
    pkcs8::PrivateKeyInfo::try_from(plain.as_bytes()).map_err(|_| "bad decrypt".to_string())?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(plain.as_bytes().to_vec())))
}
