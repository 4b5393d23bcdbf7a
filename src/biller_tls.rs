//! TLS to the biller: the client configuration an `https` `[biller] url` is reached with, built
//! from the system's roots, `ca_file` and the gateway's client certificate. The files are read
//! when the gateway starts and at every reload, before anything is applied: one that cannot be
//! read or parsed, or a key that is not the certificate's, is a configuration error at the key
//! that named it, and a reload with one is refused like any other invalid configuration.

use std::sync::Arc;

use rustls::client::ClientConfig;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsConnector;

use crate::config::{self, Biller, Config, ConfigError, ConfigErrors, FileRef};
use crate::tls::ListenerTls;

/// The most bytes read from one PEM file: a large CA bundle is a few hundred KiB.
const PEM_FILE_CAP: u64 = 16 * 1024 * 1024;

/// How connections to an https biller are made, for one configuration.
pub struct BillerTls {
    pub connector: TlsConnector,
    /// The URL's host: the name the biller's certificate must carry.
    pub server_name: ServerName<'static>,
    /// SHA-256 of the server name and the files' bytes: a pooled connection is reused only
    /// under the same one, so a reload that changes a certificate or the trusted CAs opens new
    /// connections, and one that changes neither keeps them.
    pub id: [u8; 32],
}

/// The TLS of both legs for `config`: the partner listener's ([`crate::tls::load`]) and the
/// biller's ([`load`]), the file problems of either reported together, in file order.
///
/// # Errors
/// Every file problem found on either leg, each at its key.
pub fn load_both(
    config: &Config,
) -> Result<(Option<ListenerTls>, Option<Arc<BillerTls>>), ConfigErrors> {
    match (crate::tls::load(config), load(&config.biller)) {
        (Ok(listener), Ok(biller)) => Ok((listener, biller)),
        (listener, biller) => {
            let mut found: Vec<ConfigError> = [listener.err(), biller.err()]
                .into_iter()
                .flatten()
                .flat_map(|errors| errors.0)
                .collect();
            found.sort_by_key(|e| (e.line, e.column));
            let mut found = found.into_iter();
            // One or both failed, so `found` holds at least one error.
            let first = found.next().unwrap_or_else(|| {
                ConfigError::whole_file("the configuration", "a TLS file could not be used")
            });
            let mut all = ConfigErrors::one(first);
            all.0.extend(found);
            Err(all)
        }
    }
}

/// The TLS setup `biller` asks for: `None` for an http url. Every file problem is reported,
/// each at its key.
///
/// # Errors
/// A file cannot be read (or is not a regular file), holds no PEM certificate or key, holds a
/// certificate that cannot be a trust anchor, or the key is not the client certificate's.
pub fn load(biller: &Biller) -> Result<Option<Arc<BillerTls>>, ConfigErrors> {
    if !biller.url.tls {
        return Ok(None);
    }
    let host = biller.url.server_name();
    // The url's host was checked when the configuration was read; this is a backstop.
    let server_name = ServerName::try_from(host)
        .map(|name| name.to_owned())
        .map_err(|error| {
            let message = format!("[biller] url: \"{host}\" cannot name a TLS server: {error}");
            ConfigErrors::one(ConfigError::whole_file("the configuration", message))
        })?;
    let mut errors = Vec::new();
    let mut id = Sha256::new();
    digest_part(&mut id, host.as_bytes());

    let mut roots = system_roots();
    if let Some(file) = &biller.ca_file {
        match read(file, &mut id).and_then(|bytes| certificates(file, &bytes)) {
            Ok(certs) => {
                for (i, cert) in certs.into_iter().enumerate() {
                    if let Err(error) = roots.add(cert) {
                        let n = i + 1;
                        errors.push(file.error(format!(
                            "certificate {n} cannot be trusted as a CA: {error}"
                        )));
                    }
                }
            }
            Err(error) => errors.push(*error),
        }
    }
    if roots.is_empty() {
        tracing::warn!("no CA certificates to check the biller's certificate against (none on the system, and no [biller] ca_file): every TLS handshake with it will fail");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let identity = match (&biller.client_cert, &biller.client_key) {
        (Some(cert_file), Some(key_file)) => {
            let chain = read(cert_file, &mut id).and_then(|b| certificates(cert_file, &b));
            let key = read(key_file, &mut id).and_then(|b| private_key(key_file, &b));
            match (chain, key) {
                (Ok(chain), Ok(key)) => {
                    // Checked here, not only when the client configuration is built, so that
                    // a mismatch is told beside any other file's problem.
                    let pair = CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider);
                    match pair {
                        Ok(_) => Some((chain, key, cert_file, key_file)),
                        Err(error) => {
                            errors.push(identity_error(cert_file, key_file, &error));
                            None
                        }
                    }
                }
                (chain, key) => {
                    errors.extend(chain.err().map(|e| *e));
                    errors.extend(key.err().map(|e| *e));
                    None
                }
            }
        }
        // The configuration lets through only both or neither.
        _ => None,
    };
    let mut errors = errors.into_iter();
    if let Some(first) = errors.next() {
        let mut all = ConfigErrors::one(first);
        all.0.extend(errors);
        return Err(all);
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| {
            ConfigErrors::one(ConfigError::whole_file(
                "the configuration",
                format!("no TLS versions for the biller: {e}"),
            ))
        })?
        .with_root_certificates(roots);
    let mut client = match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key, cert_file, key_file)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|error| ConfigErrors::one(identity_error(cert_file, key_file, &error)))?,
    };
    // The biller leg is HTTP/1.1 whatever the partners speak.
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(BillerTls {
        connector: TlsConnector::from(Arc::new(client)),
        server_name,
        id: id.finalize().into(),
    })))
}

/// The system's CA certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR` when set). Ones that cannot
/// be read or parsed are warned of and left out: the rest still serve, and `ca_file` may hold
/// what the biller needs.
pub(crate) fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "some of the system's CA certificates could not be loaded");
    }
    let mut roots = RootCertStore::empty();
    let (_added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::debug!(
            ignored,
            "system CA certificates rustls cannot use were left out"
        );
    }
    roots
}

/// A problem with one file, boxed: it is passed along more often than it happens.
type Located = Box<ConfigError>;

/// The bytes of `file`, also fed to `id`.
fn read(file: &FileRef, id: &mut Sha256) -> Result<Vec<u8>, Located> {
    let bytes = config::read_regular_file(&file.path, PEM_FILE_CAP)
        .map_err(|e| Box::new(file.error(format!("cannot read it: {e}"))))?;
    digest_part(id, &bytes);
    Ok(bytes)
}

/// Feeds one length-prefixed part to `id`, so that parts cannot run into each other.
fn digest_part(id: &mut Sha256, part: &[u8]) {
    id.update((part.len() as u64).to_be_bytes());
    id.update(part);
}

/// Every `CERTIFICATE` block of a PEM file: at least one.
fn certificates(file: &FileRef, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Located> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Box::new(file.error(format!("it is not valid PEM: {e}"))))?;
    if certs.is_empty() {
        return Err(Box::new(file.error(
            "no certificate in it: expected PEM, a block beginning -----BEGIN CERTIFICATE-----",
        )));
    }
    Ok(certs)
}

/// The first private key of a PEM file: PKCS#8, RSA (PKCS#1) or SEC1.
fn private_key(file: &FileRef, pem: &[u8]) -> Result<PrivateKeyDer<'static>, Located> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| Box::new(match e {
        rustls_pki_types::pem::Error::NoItemsFound => file.error(
            "no private key in it: expected PEM, a block beginning -----BEGIN PRIVATE KEY----- (or RSA PRIVATE KEY, EC PRIVATE KEY)",
        ),
        other => file.error(format!("it is not valid PEM: {other}")),
    }))
}

/// Why rustls refused a client certificate and key: a key that is not the certificate's is
/// the key's fault; anything else (a key type rustls cannot sign with, a certificate it cannot
/// read) is told at whichever file it concerns.
fn identity_error(cert: &FileRef, key: &FileRef, error: &rustls::Error) -> ConfigError {
    match error {
        rustls::Error::InconsistentKeys(_) => key.error(format!(
            "it is not the private key of the certificate in {} (their public keys differ)",
            cert.path.display()
        )),
        rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_) => cert
            .error(format!(
                "rustls cannot use it as a client certificate: {error}"
            )),
        _ => key.error(format!("rustls cannot use it as a private key: {error}")),
    }
}
