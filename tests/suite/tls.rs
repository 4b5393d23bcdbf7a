//! The partner listener over TLS, with certificates made here (rcgen): identity by client
//! certificate, handshakes refused for want of one or for one from another CA, HTTP/2 answering
//! as HTTP/1.1 does, rapid reset cut off, and a reload swapping the served certificate.

use crate::common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A certificate and its key, PEM, and the certificate's DER.
struct Issued {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

/// A private CA that issues server and client certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> Issued {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn server(&self, name: &str) -> Issued {
        self.issue(name, ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self, name: &str) -> Issued {
        self.issue(name, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

fn hex_fingerprint(der: &[u8]) -> String {
    billgate::tls::fingerprint(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Everything a TLS test runs on: the CAs, the files, the biller and the gateway.
struct Setup {
    ca: Ca,
    bank: Issued,
    dir: TempDir,
    path: std::path::PathBuf,
    gw: TestGateway,
    biller: TestBiller,
}

const TOKEN: &str = "tls-admin-token";

/// A gateway over TLS with `client_auth`: bank-b is identified by its certificate (and has a
/// key too), wallet-a by its key alone.
async fn setup(name: &str, client_auth: &str) -> Setup {
    let ca = Ca::new("billgate test CA");
    let gateway = ca.server("gateway");
    let bank = ca.client("bank-b");
    let dir = TempDir::new(name);
    std::fs::write(dir.join("gw.pem"), &gateway.cert_pem).unwrap();
    std::fs::write(dir.join("gw-key.pem"), &gateway.key_pem).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let biller = TestBiller::roomy().await;
    let q = r#"payment = "1000/s", inquiry_user = "1000/s", inquiry_scheduled = "1000/s""#;
    let partners = partner("wallet-a", "key-a", q, "")
        + &partner(
            "bank-b",
            "key-b",
            q,
            &format!("client_cert_sha256 = [\"{}\"]", hex_fingerprint(&bank.der)),
        );
    let tls = format!(
        "[server.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{ca}\"\nclient_auth = \"{client_auth}\"\n\n[biller]\n",
        cert = dir.join("gw.pem").display(),
        key = dir.join("gw-key.pem").display(),
        ca = dir.join("ca.pem").display(),
    );
    let token = format!(
        "[server]\nadmin_token_file = \"{}\"\n",
        dir.join("token").display()
    );
    let text = config_toml(&biller.url(), "2s", "100000/s", &partners)
        .replacen("[server]\n", &token, 1)
        .replacen("[biller]\n", &tls, 1);
    let path = dir.join("billgate.toml");
    std::fs::write(&path, &text).unwrap();
    let gw = TestGateway::start_from_file(&path).await;
    Setup {
        ca,
        bank,
        dir,
        path,
        gw,
        biller,
    }
}

/// A TLS client trusting `roots`, presenting `identity` if given, offering `alpn`.
fn client_config(
    roots: &[&str],
    identity: Option<&Issued>,
    alpn: &[u8],
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for pem in roots {
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes()) {
            store.add(cert.unwrap()).unwrap();
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store);
    let mut config = match identity {
        Some(issued) => {
            let key: PrivateKeyDer<'static> =
                rustls::pki_types::pem::PemObject::from_pem_slice(issued.key_pem.as_bytes())
                    .unwrap();
            builder
                .with_client_auth_cert(vec![issued.der.clone()], key)
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

async fn tls_connect(
    gw: &TestGateway,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(gw.gateway.addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let server = ServerName::try_from("localhost").unwrap();
    connector.connect(server, tcp).await
}

/// Whether the gateway refuses the handshake. Under TLS 1.3 the server's verdict on the client
/// certificate comes after the client's side of the handshake is done, so a refusal may show
/// only as an alert on the first read.
async fn refused(gw: &TestGateway, config: Arc<rustls::ClientConfig>) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tls_connect(gw, config).await else {
        return true;
    };
    let head = b"GET /v1/bills/1 HTTP/1.1\r\nhost: localhost\r\nx-api-key: key-a\r\n\r\n";
    if stream.write_all(head).await.is_err() {
        return true;
    }
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf));
    matches!(read.await, Ok(Err(_)) | Ok(Ok(0)))
}

/// An answer over one protocol: status, the `RateLimit` field, the problem type if any.
#[derive(Debug, PartialEq)]
struct Seen {
    status: StatusCode,
    ratelimit_policy: Option<String>,
    problem: Option<String>,
    /// Every header but `date` (and the connection's own on HTTP/1.1), sorted; the `r=` of
    /// `RateLimit` left out, as the quota the requests share is spent from one to the next.
    headers: Vec<(String, String)>,
}

fn request(method: Method, path: &str, key: Option<&str>) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method.clone())
        .uri(format!("https://localhost{path}"));
    if let Some(key) = key {
        builder = builder.header("x-api-key", key);
    }
    let body = if method == Method::POST {
        builder = builder.header("content-type", "application/json");
        Bytes::from_static(br#"{"account":"77","amount":"10.00"}"#)
    } else {
        Bytes::new()
    };
    builder.body(Full::new(body)).unwrap()
}

async fn seen(response: http::Response<hyper::body::Incoming>) -> Seen {
    let status = response.status();
    let ratelimit_policy = response
        .headers()
        .get("ratelimit-policy")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(name, _)| !["date", "connection", "keep-alive"].contains(&name.as_str()))
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            let value = match name.as_str() {
                "ratelimit" => value
                    .split(';')
                    .filter(|part| !part.starts_with("r="))
                    .collect::<Vec<_>>()
                    .join(";"),
                _ => value,
            };
            (name.to_string(), value)
        })
        .collect();
    headers.sort();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let problem = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("type")?.as_str().map(str::to_owned));
    Seen {
        status,
        ratelimit_policy,
        problem,
        headers,
    }
}

/// Sends each request on one HTTP/1.1 connection over TLS.
async fn over_h1(stream: TlsStream<TcpStream>, requests: Vec<Request<Full<Bytes>>>) -> Vec<Seen> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut out = Vec::new();
    for mut request in requests {
        request
            .headers_mut()
            .insert("host", http::HeaderValue::from_static("localhost"));
        sender.ready().await.unwrap();
        out.push(seen(sender.send_request(request).await.unwrap()).await);
    }
    out
}

/// Sends each request as a stream of one h2 connection over TLS.
async fn over_h2(stream: TlsStream<TcpStream>, requests: Vec<Request<Full<Bytes>>>) -> Vec<Seen> {
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut out = Vec::new();
    for request in requests {
        out.push(seen(sender.send_request(request).await.unwrap()).await);
    }
    out
}

fn statuses(answers: &[Seen]) -> Vec<u16> {
    answers.iter().map(|a| a.status.as_u16()).collect()
}

fn mix(bank_key: bool) -> Vec<Request<Full<Bytes>>> {
    let key = bank_key.then_some("key-b");
    vec![
        request(Method::GET, "/v1/bills/77", key),
        request(Method::POST, "/v1/payments", key),
        request(Method::GET, "/v1/bills/77", Some("key-a")),
        request(Method::GET, "/nowhere", key),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_identifies_its_partner_and_a_key_must_agree() {
    let s = setup("tls-identity", "optional").await;
    let roots = [s.ca.pem()];
    let roots: Vec<&str> = roots.iter().map(String::as_str).collect();

    let with_cert = client_config(&roots, Some(&s.bank), b"http/1.1");
    let stream = tls_connect(&s.gw, with_cert).await.unwrap();
    let answers = over_h1(stream, mix(false)).await;
    // The certificate alone is bank-b; wallet-a's key beside it disagrees.
    assert_eq!(statuses(&answers), [200, 201, 401, 404], "{answers:#?}");
    assert_eq!(
        answers[2].problem.as_deref(),
        Some("urn:billgate:problem:key_certificate_mismatch")
    );

    // bank-b's key without its certificate is not enough; wallet-a's key alone is.
    let without = client_config(&roots, None, b"http/1.1");
    let stream = tls_connect(&s.gw, without).await.unwrap();
    let answers = over_h1(stream, mix(true)).await;
    assert_eq!(statuses(&answers), [401, 401, 200, 401], "{answers:#?}");
    assert_eq!(
        answers[0].problem.as_deref(),
        Some("urn:billgate:problem:certificate_required")
    );

    let metrics = s.gw.metrics().await;
    let series = |reason: &str| {
        sample(
            &metrics,
            &format!(
                r#"billgate_rejections_total{{class="none",partner="bank-b",reason="{reason}"}}"#
            ),
        )
    };
    assert_eq!(series("key_certificate_mismatch"), 1.0);
    assert_eq!(series("certificate_required"), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_and_http1_over_tls_answer_alike() {
    let s = setup("tls-h2", "optional").await;
    let roots = [s.ca.pem()];
    let roots: Vec<&str> = roots.iter().map(String::as_str).collect();
    for bank_key in [false, true] {
        let h1 = tls_connect(&s.gw, client_config(&roots, Some(&s.bank), b"http/1.1"))
            .await
            .unwrap();
        assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let h2 = tls_connect(&s.gw, client_config(&roots, Some(&s.bank), b"h2"))
            .await
            .unwrap();
        assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let one = over_h1(h1, mix(bank_key)).await;
        let two = over_h2(h2, mix(bank_key)).await;
        assert_eq!(one.len(), 4);
        assert_eq!(one, two, "bank key {bank_key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_auth_refuses_handshakes_without_a_certificate_of_the_ca() {
    let s = setup("tls-required", "required").await;
    let roots = [s.ca.pem()];
    let roots: Vec<&str> = roots.iter().map(String::as_str).collect();

    let without = client_config(&roots, None, b"http/1.1");
    assert!(refused(&s.gw, without).await);
    let stranger = Ca::new("another CA").client("bank-b");
    let foreign = client_config(&roots, Some(&stranger), b"http/1.1");
    assert!(refused(&s.gw, foreign).await);
    // The bank's own certificate is still served.
    let stream = tls_connect(&s.gw, client_config(&roots, Some(&s.bank), b"http/1.1"))
        .await
        .unwrap();
    let answers = over_h1(stream, vec![request(Method::GET, "/v1/bills/1", None)]).await;
    assert_eq!(answers[0].status, StatusCode::OK);

    let metrics = s.gw.metrics().await;
    let failures = |reason: &str| {
        sample(
            &metrics,
            &format!(r#"billgate_tls_handshake_failures_total{{reason="{reason}"}}"#),
        )
    };
    assert_eq!(failures("no_certificate"), 1.0);
    assert_eq!(failures("bad_certificate"), 1.0);
    let expiry = sample(
        &metrics,
        r#"billgate_tls_cert_expiry_seconds{listener="partner"}"#,
    );
    assert!(
        expiry > 86_400.0,
        "rcgen's certificates last years: {expiry}"
    );
}

/// A client opening streams and resetting each at once is sent GOAWAY and cut off; another
/// partner's requests on their own connection pass meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_hammering_resets_is_cut_off_while_others_pass() {
    let s = setup("tls-reset", "optional").await;
    let roots = [s.ca.pem()];
    let roots: Vec<&str> = roots.iter().map(String::as_str).collect();
    let stream = tls_connect(&s.gw, client_config(&roots, None, b"h2"))
        .await
        .unwrap();
    let (mut client, connection) = h2::client::handshake(stream).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut sent = 0;
    let mut cut = false;
    for _ in 0..100_000 {
        let request = Request::get("https://localhost/v1/bills/1")
            .header("x-api-key", "key-a")
            .body(())
            .unwrap();
        let ready = match client.ready().await {
            Ok(ready) => ready,
            Err(_) => {
                cut = true;
                break;
            }
        };
        client = ready;
        match client.send_request(request, true) {
            Ok((_, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(_) => {
                cut = true;
                break;
            }
        }
        if sent % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    assert!(cut, "still open after {sent} reset streams");
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), driver)
        .await
        .expect("the connection ends");
    assert!(
        matches!(ended, Ok(Err(ref e)) if e.is_go_away() || e.is_io())
            || matches!(ended, Ok(Ok(()))),
        "{ended:?}"
    );

    let other = tls_connect(&s.gw, client_config(&roots, Some(&s.bank), b"h2"))
        .await
        .unwrap();
    let answers = over_h2(other, vec![request(Method::GET, "/v1/bills/2", None)]).await;
    assert_eq!(answers[0].status, StatusCode::OK);
}

/// A reload swaps the served certificate for new handshakes while requests keep flowing;
/// every one of them succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_served_certificate_without_a_failed_request() {
    let s = setup("tls-reload", "optional").await;
    let roots = [s.ca.pem()];
    let roots: Vec<&str> = roots.iter().map(String::as_str).collect();
    let config = client_config(&roots, Some(&s.bank), b"http/1.1");
    let served = |stream: &TlsStream<TcpStream>| {
        stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| hex_fingerprint(leaf))
    };
    let first = tls_connect(&s.gw, Arc::clone(&config)).await.unwrap();
    let old = served(&first).unwrap();

    // Load on new and open connections throughout the reload.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..2 {
        let stop = Arc::clone(&stop);
        let config = Arc::clone(&config);
        let addr = s.gw.gateway.addr;
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            for _ in 0..100_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) && ok > 0 {
                    break;
                }
                let tcp = TcpStream::connect(addr).await.unwrap();
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
                let server = ServerName::try_from("localhost").unwrap();
                let Ok(stream) = connector.connect(server, tcp).await else {
                    failed += 1;
                    continue;
                };
                let answers =
                    over_h1(stream, vec![request(Method::GET, "/v1/bills/9", None)]).await;
                if answers[0].status == StatusCode::OK {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
            (ok, failed)
        }));
    }

    let renewed = s.ca.server("gateway, renewed");
    std::fs::write(s.dir.join("gw.pem"), &renewed.cert_pem).unwrap();
    std::fs::write(s.dir.join("gw-key.pem"), &renewed.key_pem).unwrap();
    let reply = send(
        Method::POST,
        &s.gw.admin_url("/admin/reload"),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let next = tls_connect(&s.gw, Arc::clone(&config)).await.unwrap();
    let new = served(&next).unwrap();
    assert_ne!(new, old);
    assert_eq!(new, hex_fingerprint(&renewed.der));

    // The connection opened before the reload goes on with the old certificate.
    let answers = over_h1(first, vec![request(Method::GET, "/v1/bills/3", None)]).await;
    assert_eq!(answers[0].status, StatusCode::OK);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        let (ok, failed) = task.await.unwrap();
        assert!(ok > 0);
        assert_eq!(failed, 0, "{ok} ok");
    }

    // A key that does not go with the certificate is refused, located, and nothing changes.
    std::fs::write(s.dir.join("gw-key.pem"), &s.bank.key_pem).unwrap();
    let reply = send(
        Method::POST,
        &s.gw.admin_url("/admin/reload"),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        "",
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text()
    );
    let detail = reply.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(detail.contains("gw-key.pem"), "{detail}");
    assert!(
        detail.contains("does not go with the certificate"),
        "{detail}"
    );
    assert!(
        detail.contains(&format!("{}:", s.path.display())),
        "{detail}"
    );
    let again = tls_connect(&s.gw, config).await.unwrap();
    assert_eq!(served(&again).unwrap(), new);
}

/// A plain listener serves HTTP/2 to a client that opens with the preface (h2c by prior
/// knowledge), answering as it does over HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_by_prior_knowledge_answers_as_http1_does() {
    let biller = TestBiller::roomy().await;
    let q = r#"payment = "1000/s", inquiry_user = "1000/s", inquiry_scheduled = "1000/s""#;
    let gw = TestGateway::start(load(&config_toml(
        &biller.url(),
        "2s",
        "100000/s",
        &partner("wallet-a", "key-a", q, ""),
    )))
    .await;
    let requests = || {
        vec![
            request(Method::GET, "/v1/bills/77", Some("key-a")),
            request(Method::POST, "/v1/payments", Some("key-a")),
            request(Method::GET, "/v1/bills/77", Some("nobody")),
            request(Method::GET, "/nowhere", Some("key-a")),
        ]
    };
    let tcp = TcpStream::connect(gw.gateway.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut two = Vec::new();
    for request in requests() {
        two.push(seen(sender.send_request(request).await.unwrap()).await);
    }
    let tcp = TcpStream::connect(gw.gateway.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut one = Vec::new();
    for mut request in requests() {
        request
            .headers_mut()
            .insert("host", http::HeaderValue::from_static("localhost"));
        sender.ready().await.unwrap();
        one.push(seen(sender.send_request(request).await.unwrap()).await);
    }
    assert_eq!(statuses(&two), [200, 201, 401, 404]);
    assert_eq!(one, two);
}

/// A partner reconnecting resumes its TLS session (a ticket) instead of a full handshake, and
/// is still identified by the certificate of the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_partner_resumes_its_session_and_keeps_its_identity() {
    let s = setup("tls-resume", "optional").await;
    let roots = [s.ca.pem()];
    let roots: Vec<&str> = roots.iter().map(String::as_str).collect();
    let config = client_config(&roots, Some(&s.bank), b"http/1.1");
    let kinds = {
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let stream = tls_connect(&s.gw, Arc::clone(&config)).await.unwrap();
            kinds.push(stream.get_ref().1.handshake_kind());
            let answers = over_h1(stream, vec![request(Method::POST, "/v1/payments", None)]).await;
            assert_eq!(answers[0].status, StatusCode::CREATED);
        }
        kinds
    };
    assert_eq!(
        kinds,
        [
            Some(rustls::HandshakeKind::Full),
            Some(rustls::HandshakeKind::Resumed)
        ]
    );
}

/// HTTP/2's bounds as a client meets them: the server's SETTINGS allow 100 streams at once,
/// and a header list over 64 KiB is refused without reaching the biller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_and_header_lists_are_bounded() {
    let s = setup("tls-h2-bounds", "optional").await;
    let roots = [s.ca.pem()];
    let roots: Vec<&str> = roots.iter().map(String::as_str).collect();
    let stream = tls_connect(&s.gw, client_config(&roots, Some(&s.bank), b"h2"))
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    // The SETTINGS frame has arrived once a first exchange is done.
    let (answer, _) = client
        .send_request(
            Request::get("https://localhost/v1/bills/1")
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    assert_eq!(answer.await.unwrap().status(), StatusCode::OK);
    assert_eq!(client.current_max_send_streams(), 100);

    // Up to 64 KiB, as on HTTP/1.1.
    let mut client = client.ready().await.unwrap();
    let large = Request::get("https://localhost/v1/bills/3")
        .header("x-pad", "a".repeat(60 * 1024))
        .body(())
        .unwrap();
    let (answer, _) = client.send_request(large, true).unwrap();
    assert_eq!(answer.await.unwrap().status(), StatusCode::OK);

    let before = s.biller.biller.stats().received;
    let mut client = client.ready().await.unwrap();
    let huge = Request::get("https://localhost/v1/bills/2")
        .header("x-pad", "a".repeat(70 * 1024))
        .body(())
        .unwrap();
    let refused = match client.send_request(huge, true) {
        Ok((answer, _)) => match answer.await {
            Ok(response) => response.status() == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Err(_) => true,
        },
        Err(_) => true,
    };
    assert!(refused, "a 70 KiB header list was served");
    assert_eq!(s.biller.biller.stats().received, before);
}

/// A client that connects and never finishes its handshake is closed after the head timeout
/// (10 s), counted as a `timeout` failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_never_finished_is_closed_at_the_timeout() {
    use tokio::io::AsyncReadExt;
    let s = setup("tls-stall", "optional").await;
    let mut tcp = TcpStream::connect(s.gw.gateway.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), tcp.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "still open after 30 s: {read:?}"
    );
    let metrics = s.gw.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"billgate_tls_handshake_failures_total{reason="timeout"}"#
        ),
        1.0
    );
}
