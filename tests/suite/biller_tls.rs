//! The biller over TLS: an https `[biller] url`, the stand-in biller serving TLS on a real
//! socket, certificates made for the test by a private CA. Pooled TLS connections are reused,
//! a certificate the gateway cannot verify is a 502 with nothing reaching the biller, a biller
//! asking for a client certificate gets one when configured, and a file that cannot be used is
//! reported at its key.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use billgate::config::ConfigErrors;
use billgate::control::ReloadError;
use billgate::gateway::{self, Gateway};
use billgate_sim::biller::{BillerOptions, StandInBiller};
use common::{config_toml, get, load, partner, pay, with_block, TempDir, TestGateway};
use http::StatusCode;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const KEY: &str = "wallet-tls-key";

/// A CA of the test's own: its certificate (PEM) and what signs with it.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate for `names` (DNS names or IP addresses) and its key, both PEM.
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let params = CertificateParams::new(names).expect("leaf parameters");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// The biller's CA and certificate, and the gateway's client CA and certificate, as files.
struct Pki {
    dir: TempDir,
    /// The CA the biller's certificate is signed by.
    ca: Ca,
    /// The biller's certificate for `localhost` and `127.0.0.1`, and its key (PEM).
    server: (String, String),
    /// The CA the gateway's client certificate is signed by.
    client_ca: Ca,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = TempDir::new(name);
        let ca = Ca::new("billgate test biller CA");
        let server = ca.leaf(&["localhost", "127.0.0.1"]);
        let client_ca = Ca::new("billgate test client CA");
        let (client_cert, client_key) = client_ca.leaf(&["gateway.billgate.test"]);
        let pki = Pki {
            dir,
            ca,
            server,
            client_ca,
        };
        pki.write("ca.pem", &pki.ca.pem);
        pki.write("client.pem", &client_cert);
        pki.write("client-key.pem", &client_key);
        pki
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("PEM file written");
        path
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The stand-in biller's TLS configuration, as `billgate biller --tls-cert --tls-key`
    /// builds it.
    fn plain_server(&self) -> Arc<ServerConfig> {
        let (cert, key) = &self.server;
        billgate_sim::biller::server_config(cert.as_bytes(), key.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A TLS configuration that requires a client certificate signed by the client CA.
    fn client_verifying_server(&self) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        let client_ca =
            CertificateDer::from_pem_slice(self.client_ca.pem.as_bytes()).expect("client CA PEM");
        roots.add(client_ca).expect("client CA trusted");
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .expect("client verifier");
        let (cert, key) = &self.server;
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("server chain PEM");
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("server key PEM");
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// The stand-in biller serving TLS on a loopback port.
struct TlsBiller {
    biller: StandInBiller,
    port: u16,
    stop: Option<oneshot::Sender<()>>,
}

impl TlsBiller {
    async fn start(tls: Arc<ServerConfig>) -> TlsBiller {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind biller");
        let port = listener.local_addr().expect("biller addr").port();
        let biller = StandInBiller::new(
            BillerOptions {
                capacity_per_sec: 100_000.0,
                base_latency: std::time::Duration::from_millis(1),
                ..BillerOptions::default()
            },
            billgate::clock::Clock::real(),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(biller.clone().serve_tls(listener, tls, async move {
            let _ = stopped.await;
        }));
        TlsBiller {
            biller,
            port,
            stop: Some(stop),
        }
    }
}

impl Drop for TlsBiller {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A configuration with one worker (so every request shares one pool) calling the biller at
/// `https://localhost:{port}` with the extra `[biller]` keys in `tls`.
fn config_text(port: u16, tls: &str) -> String {
    let quota = r#"payment = "1000/s", inquiry_user = "1000/s", inquiry_scheduled = "1000/s""#;
    let text = config_toml(
        &format!("https://localhost:{port}"),
        "2s",
        "10000/s",
        &partner("wallet", KEY, quota, ""),
    );
    let text = text.replacen("[server]\n", "[server]\nworkers = 1\n", 1);
    with_block(&text, tls)
}

fn ca_file(pki: &Pki) -> String {
    format!("ca_file = \"{}\"\n", pki.path("ca.pem"))
}

fn client_identity(pki: &Pki) -> String {
    format!(
        "client_cert = \"{}\"\nclient_key = \"{}\"\n",
        pki.path("client.pem"),
        pki.path("client-key.pem")
    )
}

async fn start(port: u16, tls: &str) -> TestGateway {
    TestGateway::start(load(&config_text(port, tls))).await
}

/// The reason of a problem answer.
fn reason(reply: &common::Reply) -> String {
    reply.json()["reason"].as_str().unwrap_or("").to_owned()
}

#[tokio::test]
async fn payments_and_inquiries_reach_an_https_biller_on_one_reused_connection() {
    let pki = Pki::new("biller-tls-reuse");
    let biller = TlsBiller::start(pki.plain_server()).await;
    let gw = start(biller.port, &ca_file(&pki)).await;
    let auth = [("x-api-key", KEY)];

    let paid = pay(&gw.url("/v1/payments"), &auth).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text());
    assert_eq!(paid.json()["amount"], "42.10");
    let bill = get(&gw.url("/v1/bills/100234"), &auth).await;
    assert_eq!(bill.status, StatusCode::OK, "{}", bill.text());
    assert_eq!(bill.json()["account"], "100234");
    for account in ["100235", "100236", "100237"] {
        let reply = get(&gw.url(&format!("/v1/bills/{account}")), &auth).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }

    let stats = biller.biller.stats();
    assert_eq!((stats.payments, stats.inquiries), (1, 4));
    // Five calls, one after another on the one worker: one handshake. (The gateway's
    // reachability probe opens TCP connections of its own and never a handshake, so
    // connections are not counted here.)
    assert_eq!(stats.tls_handshakes, 1);
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn a_certificate_the_gateway_cannot_verify_is_502_and_nothing_reaches_the_biller() {
    let pki = Pki::new("biller-tls-untrusted");
    let biller = TlsBiller::start(pki.plain_server()).await;
    // No ca_file: the private CA is not among the system's roots.
    let gw = start(biller.port, "").await;
    let auth = [("x-api-key", KEY)];

    let paid = pay(&gw.url("/v1/payments"), &auth).await;
    assert_eq!(paid.status, StatusCode::BAD_GATEWAY, "{}", paid.text());
    assert_eq!(reason(&paid), "biller_unreachable");
    let bill = get(&gw.url("/v1/bills/100234"), &auth).await;
    assert_eq!(bill.status, StatusCode::BAD_GATEWAY, "{}", bill.text());
    assert_eq!(reason(&bill), "biller_unreachable");

    let stats = biller.biller.stats();
    assert_eq!((stats.received, stats.tls_handshakes), (0, 0));
    let metrics = gw.metrics().await;
    assert_eq!(
        common::sample(&metrics, "billgate_upstream_errors_total{kind=\"connect\"}"),
        2.0
    );
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn a_biller_asking_for_a_client_certificate_gets_the_configured_one() {
    let pki = Pki::new("biller-tls-client");
    let biller = TlsBiller::start(pki.client_verifying_server()).await;
    let auth = [("x-api-key", KEY)];

    let without = start(biller.port, &ca_file(&pki)).await;
    let refused = get(&without.url("/v1/bills/100234"), &auth).await;
    assert_eq!(
        refused.status,
        StatusCode::BAD_GATEWAY,
        "{}",
        refused.text()
    );
    assert_eq!(reason(&refused), "biller_unreachable");
    assert_eq!(biller.biller.stats().received, 0);
    without.gateway.shutdown().await;

    let with = start(
        biller.port,
        &format!("{}{}", ca_file(&pki), client_identity(&pki)),
    )
    .await;
    let bill = get(&with.url("/v1/bills/100234"), &auth).await;
    assert_eq!(bill.status, StatusCode::OK, "{}", bill.text());
    let paid = pay(&with.url("/v1/payments"), &auth).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text());
    let stats = biller.biller.stats();
    assert_eq!((stats.inquiries, stats.payments), (1, 1));
    assert_eq!(stats.tls_handshakes, 1);
    with.gateway.shutdown().await;
}

/// The located errors `Gateway::start` refused `text` with.
async fn start_errors(text: &str) -> ConfigErrors {
    let started = Gateway::start(load(text), gateway::Options::default()).await;
    match started {
        Ok(_) => panic!("started with {text}"),
        Err(error) => match error.downcast_ref::<ConfigErrors>() {
            Some(errors) => errors.clone(),
            None => panic!("not a configuration error: {error:#}"),
        },
    }
}

/// The line and column of `needle`'s value in `text`, 1-based, as the error reports them.
fn place_of(text: &str, needle: &str) -> (usize, usize) {
    let (n, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.starts_with(needle))
        .unwrap_or_else(|| panic!("{needle} not in the text"));
    let column = line.find('"').map_or(0, |c| c + 1);
    (n + 1, column)
}

#[tokio::test]
async fn a_ca_file_that_is_not_pem_is_reported_at_its_key() {
    let pki = Pki::new("biller-tls-bad-ca");
    let bad = pki.write("not-a-ca.pem", "this is not a certificate\n");
    let text = config_text(9, &format!("ca_file = \"{}\"\n", bad.display()));
    let errors = start_errors(&text).await;
    assert_eq!(errors.errors().len(), 1, "{errors}");
    let error = &errors.errors()[0];
    assert_eq!(error.key_path, "biller.ca_file");
    assert_eq!((error.line, error.column), place_of(&text, "ca_file"));
    assert_eq!(
        error.message,
        format!(
            "{}: no certificate in it: expected PEM, a block beginning -----BEGIN CERTIFICATE-----",
            bad.display()
        )
    );

    // A bad file on the partner listener's side too: both legs' problems are told together,
    // in file order.
    let with_listener = text.replacen(
        "[server]\n",
        &format!(
            "[server]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
            bad.display(),
            bad.display()
        ),
        1,
    );
    let errors = start_errors(&with_listener).await;
    let found: Vec<&str> = errors
        .errors()
        .iter()
        .map(|e| e.key_path.as_str())
        .collect();
    assert_eq!(found, ["server.tls.cert", "biller.ca_file"], "{errors}");

    // A file that is not there and a key that is not the certificate's: both told at once,
    // each at its key.
    let (_, other_key) = pki.client_ca.leaf(&["someone.else"]);
    let other_key = pki.write("other-key.pem", &other_key);
    let missing = pki.dir.join("missing.pem");
    let tls = format!(
        "ca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
        missing.display(),
        pki.path("client.pem"),
        other_key.display()
    );
    let text = config_text(9, &tls);
    let errors = start_errors(&text).await;
    let found: Vec<(&str, (usize, usize))> = errors
        .errors()
        .iter()
        .map(|e| (e.key_path.as_str(), (e.line, e.column)))
        .collect();
    assert_eq!(
        found,
        [
            ("biller.ca_file", place_of(&text, "ca_file")),
            ("biller.client_key", place_of(&text, "client_key")),
        ],
        "{errors}"
    );
    assert!(
        errors.errors()[0].message.starts_with(&format!(
            "{}: cannot read it: No such file or directory",
            missing.display()
        )),
        "{errors}"
    );
    assert_eq!(
        errors.errors()[1].message,
        format!(
            "{}: it is not the private key of the certificate in {} (their public keys differ)",
            other_key.display(),
            pki.path("client.pem")
        )
    );
}

#[tokio::test]
async fn a_reload_naming_a_bad_ca_file_is_refused_and_one_with_other_cas_reconnects() {
    let pki = Pki::new("biller-tls-reload");
    let biller = TlsBiller::start(pki.plain_server()).await;
    let path: PathBuf = pki.dir.join("billgate.toml");
    let good = config_text(biller.port, &ca_file(&pki));
    write_config(&path, &good);
    let gw = TestGateway::start_from_file(&path).await;
    let auth = [("x-api-key", KEY)];
    let bill = get(&gw.url("/v1/bills/100234"), &auth).await;
    assert_eq!(bill.status, StatusCode::OK, "{}", bill.text());

    let bad = pki.write("garbled.pem", "-----BEGIN CERTIFICATE-----\nnot base64!\n");
    let text = config_text(biller.port, &format!("ca_file = \"{}\"\n", bad.display()));
    write_config(&path, &text);
    match gw.gateway.reload(false).await {
        Err(ReloadError::Invalid(errors)) => {
            assert_eq!(errors.errors().len(), 1, "{errors}");
            let error = &errors.errors()[0];
            assert_eq!(error.key_path, "biller.ca_file");
            assert_eq!(error.file, path.display().to_string());
            assert_eq!((error.line, error.column), place_of(&text, "ca_file"));
            let start = format!("{}: it is not valid PEM: ", bad.display());
            assert!(error.message.starts_with(&start), "{}", error.message);
        }
        other => panic!("the reload was not refused: {other:?}"),
    }
    // Still the running configuration, on the same connection.
    let bill = get(&gw.url("/v1/bills/100235"), &auth).await;
    assert_eq!(bill.status, StatusCode::OK, "{}", bill.text());
    assert_eq!(biller.biller.stats().tls_handshakes, 1);

    // The same CA under another name: the TLS setup is unchanged, and so is the connection.
    let copy = pki.write("ca-copy.pem", &pki.ca.pem);
    let text = config_text(biller.port, &format!("ca_file = \"{}\"\n", copy.display()));
    write_config(&path, &text);
    let reloaded = gw.gateway.reload(false).await;
    assert!(reloaded.is_ok(), "{reloaded:?}");
    let bill = get(&gw.url("/v1/bills/100236"), &auth).await;
    assert_eq!(bill.status, StatusCode::OK, "{}", bill.text());
    assert_eq!(biller.biller.stats().tls_handshakes, 1);

    // Another CA trusted besides: new TLS setup, new connection.
    let bundle = pki.write(
        "bundle.pem",
        &format!("{}{}", pki.ca.pem, pki.client_ca.pem),
    );
    let text = config_text(
        biller.port,
        &format!("ca_file = \"{}\"\n", bundle.display()),
    );
    write_config(&path, &text);
    let reloaded = gw.gateway.reload(false).await;
    assert!(reloaded.is_ok(), "{reloaded:?}");
    let bill = get(&gw.url("/v1/bills/100237"), &auth).await;
    assert_eq!(bill.status, StatusCode::OK, "{}", bill.text());
    assert_eq!(biller.biller.stats().tls_handshakes, 2);
    gw.gateway.shutdown().await;
}

fn write_config(path: &Path, text: &str) {
    std::fs::write(path, text).expect("configuration written");
}
