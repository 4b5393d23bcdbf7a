//! TLS on the partner listener: the rustls configuration built from `[server.tls]` (read at
//! start and at every reload, so new handshakes use new files and open connections finish with
//! the old), and the fingerprint a client certificate identifies its partner by.
//!
//! rustls with its ring provider: TLS 1.2 and 1.3 only, ALPN `h2` then `http/1.1`.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

use crate::config::{ClientAuth, Config, ConfigError, ConfigErrors, FileRef, ServerTls};

/// A located configuration error, boxed: it is large, and the path that returns it is cold.
type Failed = Box<ConfigError>;

fn fail(file: &FileRef, message: impl std::fmt::Display) -> Failed {
    Box::new(file.error(message))
}

/// The largest PEM file read (a chain, a key, a CA bundle).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The partner listener's TLS, as built for one configuration.
pub struct ListenerTls {
    pub config: Arc<ServerConfig>,
    /// When the served (leaf) certificate expires, Unix seconds.
    pub not_after: i64,
}

/// The SHA-256 of a certificate's DER bytes: what `client_cert_sha256` lists.
pub fn fingerprint(certificate: &[u8]) -> [u8; 32] {
    Sha256::digest(certificate).into()
}

/// The TLS of `config`'s partner listener, `None` for plain HTTP. A file that cannot be read or
/// parsed, or a key that does not match the certificate, is a located configuration error.
pub fn load(config: &Config) -> Result<Option<ListenerTls>, ConfigErrors> {
    let Some(tls) = &config.server.tls else {
        return Ok(None);
    };
    build(tls)
        .map(Some)
        .map_err(|failed| ConfigErrors::one(*failed))
}

fn build(tls: &ServerTls) -> Result<ListenerTls, Failed> {
    let chain = certificates(&tls.cert)?;
    let not_after = chain
        .first()
        .map(|leaf| expiry(&tls.cert, leaf))
        .transpose()?
        .unwrap_or_default();
    let key = private_key(&tls.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| fail(&tls.cert, format!("no TLS version available: {e}")))?;
    let builder = match (&tls.client_ca, tls.client_auth) {
        (Some(ca), auth) if auth != ClientAuth::Off => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates(ca)? {
                roots
                    .add(certificate)
                    .map_err(|e| fail(ca, format!("not a usable CA certificate: {e}")))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let verifier = match auth {
                ClientAuth::Required => verifier,
                _ => verifier.allow_unauthenticated(),
            };
            let verifier = verifier
                .build()
                .map_err(|e| fail(ca, format!("cannot verify client certificates: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        tls.key
            .error(format!("does not go with the certificate: {e}"))
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Stateless session tickets: a partner reconnecting resumes without a full handshake, and
    // no per-session state is kept. The ticket keys are made afresh with each configuration,
    // so a reload makes the next handshake of each partner a full one.
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| fail(&tls.cert, format!("cannot make session ticket keys: {e}")))?;
    Ok(ListenerTls {
        config: Arc::new(config),
        not_after,
    })
}

fn read(file: &FileRef) -> Result<Vec<u8>, Failed> {
    crate::config::read_regular_file(&file.path, MAX_PEM_BYTES)
        .map_err(|e| fail(file, format!("cannot be read: {e}")))
}

/// Every certificate of a PEM file, in order; at least one.
pub fn certificates(file: &FileRef) -> Result<Vec<CertificateDer<'static>>, Failed> {
    let bytes = read(file)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(file, format!("is not a PEM certificate file: {e}")))?;
    if chain.is_empty() {
        return Err(fail(
            file,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(chain)
}

fn private_key(file: &FileRef) -> Result<PrivateKeyDer<'static>, Failed> {
    let bytes = read(file)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        fail(
            file,
            format!("holds no PEM private key (PKCS#8, RSA or SEC1): {e}"),
        )
    })
}

fn expiry(file: &FileRef, leaf: &CertificateDer<'_>) -> Result<i64, Failed> {
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| fail(file, format!("its first certificate cannot be parsed: {e}")))?;
    Ok(parsed.validity().not_after.timestamp())
}

/// The `billgate_tls_handshake_failures_total` reason of a failed handshake.
pub fn failure_reason(error: &std::io::Error) -> &'static str {
    use rustls::Error as Tls;
    match error.get_ref().and_then(|e| e.downcast_ref::<Tls>()) {
        Some(Tls::NoCertificatesPresented) => "no_certificate",
        Some(Tls::InvalidCertificate(_)) => "bad_certificate",
        Some(Tls::NoApplicationProtocol) => "no_shared_protocol",
        Some(Tls::PeerIncompatible(_)) => "incompatible",
        Some(
            Tls::InvalidMessage(_)
            | Tls::InappropriateMessage { .. }
            | Tls::InappropriateHandshakeMessage { .. },
        ) => "malformed",
        Some(_) => "other",
        None if matches!(
            error.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
        ) =>
        {
            "closed"
        }
        None => "other",
    }
}

/// `billgate hash-cert`: the fingerprint of the first certificate of a PEM file, as hex.
pub fn hash_cert(pem: &[u8]) -> Result<String, String> {
    let first = CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or("no PEM certificate (-----BEGIN CERTIFICATE-----) in the file")?
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    Ok(hex_string(&fingerprint(&first)))
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
