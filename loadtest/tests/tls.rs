//! `wss://` and `https://` through a TLS-terminating proxy in front of a
//! node: trusted with `--ca-file`, accepted with `--insecure`, refused
//! with neither.

mod common;

use std::sync::Arc;

use common::*;
use navcast_load::summary::Metric;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Terminates TLS on a free port and forwards to `backend`.
async fn tls_proxy(backend: std::net::SocketAddr) -> u16 {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(fixture("localhost.cert.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("localhost.key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_ca_file_insecure_and_untrusted() {
    let node = Node::single(|_| {}).await;
    let port = tls_proxy(node.addr).await;
    let host = format!("wss://localhost:{port}");
    let smoke = profile("smoke.toml");
    let ca = fixture("localhost.cert.pem");
    let base = [
        "run",
        "--host",
        host.as_str(),
        "--profile",
        smoke.as_str(),
        "--time-scale",
        "0.1",
        "--quiet",
        "--server-stats-every",
        "0",
    ];

    let mut args = base.to_vec();
    args.extend(["--ca-file", ca.as_str()]);
    let out = cli(&args).await.unwrap().unwrap();
    assert_passed_but_latency(&out);
    assert_eq!(out.summary.cell(Metric::WsConnect).count, 11);

    let mut args = base.to_vec();
    args.extend(["--insecure", "--users", "2", "--account-prefix", "insecure"]);
    let out = cli(&args).await.unwrap().unwrap();
    assert_passed_but_latency(&out);

    // Untrusted: provisioning itself fails on the certificate.
    let mut args = base.to_vec();
    args.extend(["--users", "2", "--account-prefix", "untrusted"]);
    let err = cli(&args).await.unwrap_err();
    assert!(format!("{err:#}").contains("TLS"), "{err:#}");
}
