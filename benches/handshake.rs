//! Mutual-TLS handshakes per second on loopback (ECDSA P-256 vs RSA 2048 keys on both sides,
//! ARN mode with every Fluidity check), and CA signings per second.
//!
//! `cargo bench -p fluidity-benches --bench handshake`

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failure should panic

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fluidity_core::pki::local_ca::LocalCa;
use fluidity_core::pki::server_certs::{ServerCertConfig, ServerCertManager};
use fluidity_core::pki::{
    CertificateAuthority, KeyAlgorithm, SigningOptions, TlsIdentity, csr, keys, root_store,
};
use fluidity_core::tls::{TlsAcceptor, TlsConnector};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ARN: &str =
    "arn:aws:ecs:eu-west-1:123456789012:task/fluidity-cluster/0123456789abcdef0123456789abcdef";
const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn agent_identity(ca: &LocalCa, algorithm: KeyAlgorithm) -> TlsIdentity {
    let key = keys::generate(algorithm).unwrap();
    let request = csr::build(&key, ARN, &[LOOPBACK]).unwrap();
    let issued = ca.authority().sign(&request, SystemTime::now()).unwrap();
    let chain = format!("{}{}", issued.certificate_pem, issued.chain_pem.concat());
    TlsIdentity::from_pem(chain.as_bytes(), key.serialize_pem().as_bytes()).unwrap()
}

/// A server in ARN mode whose lazy certificate is already made; returns its address.
async fn server(ca: Arc<LocalCa>, algorithm: KeyAlgorithm) -> SocketAddr {
    let mut config = ServerCertConfig::new(ARN, LOOPBACK);
    config.key_algorithm = algorithm;
    let manager = Arc::new(ServerCertManager::new(config, ca.clone()).unwrap());
    manager.refresh().await.unwrap();
    let roots = root_store("CA", ca.certificate_pem().as_bytes()).unwrap();
    let acceptor = Arc::new(TlsAcceptor::arn(manager, roots).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut established = acceptor.accept(tcp, peer).await.unwrap();
                // One byte after the server's checks, so the client's iteration includes them.
                established.stream.write_all(b"!").await.unwrap();
                established.stream.flush().await.unwrap();
            });
        }
    });
    address
}

fn handshakes(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ca = Arc::new(LocalCa::in_memory(SigningOptions::default()).unwrap());
    let mut group = c.benchmark_group("mtls_handshake");
    group.throughput(Throughput::Elements(1));
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(8));
    for algorithm in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048] {
        let address = rt.block_on(server(ca.clone(), algorithm));
        let roots = root_store("CA", ca.certificate_pem().as_bytes()).unwrap();
        let connector = TlsConnector::arn(&agent_identity(&ca, algorithm), roots, ARN).unwrap();
        group.bench_function(BenchmarkId::from_parameter(algorithm), |b| {
            b.to_async(&rt).iter(|| async {
                let mut established = connector.connect(address).await.unwrap();
                let mut byte = [0u8; 1];
                established.stream.read_exact(&mut byte).await.unwrap();
            })
        });
    }
    group.finish();
}

fn signing(c: &mut Criterion) {
    let mut group = c.benchmark_group("ca_sign");
    group.throughput(Throughput::Elements(1));
    for algorithm in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048] {
        // CA and requester use the same key type (the Go deployment is RSA throughout).
        let (ca, _) = CertificateAuthority::generate(
            "Bench CA",
            Duration::from_secs(86400 * 365),
            algorithm,
            SigningOptions::default(),
        )
        .unwrap();
        let key = keys::generate(algorithm).unwrap();
        let request = csr::build(&key, ARN, &[LOOPBACK]).unwrap();
        group.bench_function(BenchmarkId::from_parameter(algorithm), |b| {
            b.iter(|| ca.sign(&request, SystemTime::now()).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, handshakes, signing);
criterion_main!(benches);
