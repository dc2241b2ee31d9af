//! The CA's signing rules: what it signs, with which fields, and what it refuses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use fluidity_core::Error;
use fluidity_core::pki::ca::{AllowAll, IpSans, is_task_arn};
use fluidity_core::pki::csr::{self, SigningRequest};
use fluidity_core::pki::{
    CertificateAuthority, CsrPolicy, CsrRefusal, KeyAlgorithm, SigningOptions,
    SigningRequestContext, keys, pem_encode,
};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyUsagePurpose, SanType};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use support::{ARN, ip};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

fn authority() -> CertificateAuthority {
    CertificateAuthority::generate(
        "Test CA",
        Duration::from_secs(3600 * 24 * 365),
        KeyAlgorithm::EcdsaP256,
        SigningOptions::default(),
    )
    .unwrap()
    .0
}

fn csr_with(cn: Option<&str>, sans: Vec<SanType>, usages: Vec<KeyUsagePurpose>) -> String {
    let key = keys::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    if let Some(cn) = cn {
        name.push(DnType::CommonName, cn);
    }
    params.distinguished_name = name;
    params.subject_alt_names = sans;
    params.key_usages = usages;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn refusal(result: fluidity_core::Result<fluidity_core::IssuedCertificate>) -> CsrRefusal {
    match result {
        Err(Error::CsrRefused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn signs_arn_requests_with_the_documented_fields() {
    let ca = authority();
    for algorithm in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048] {
        let key = keys::generate(algorithm).unwrap();
        let ips = [ip("203.0.113.7"), ip("2001:db8::7")];
        let request = csr::build(&key, ARN, &ips).unwrap();
        let now = SystemTime::now();
        let issued = ca.sign(&request, now).unwrap();
        assert_eq!(issued.chain_pem, vec![ca.certificate_pem().to_owned()]);

        let der =
            rustls_pki_types::CertificateDer::from_pem_slice(issued.certificate_pem.as_bytes())
                .unwrap();
        let (_, leaf) = X509Certificate::from_der(&der).unwrap();
        let cn = leaf
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!(cn, ARN, "{algorithm}: CN");
        assert!(
            ARN.len() > 64,
            "the fixture ARN is realistic: longer than X.509's CN bound"
        );
        let (_, ca_cert) = X509Certificate::from_der(ca.certificate_der()).unwrap();
        assert_eq!(leaf.issuer(), ca_cert.subject(), "issuer");
        assert!(
            leaf.verify_signature(Some(ca_cert.public_key())).is_ok(),
            "signed by the CA"
        );

        let mut uris = Vec::new();
        let mut san_ips = Vec::new();
        let mut eku = None;
        let mut key_usage = None;
        let mut basic = None;
        for ext in leaf.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::URI(u) => uris.push(u.to_string()),
                            GeneralName::IPAddress(b) => san_ips.push(match b.len() {
                                4 => IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()),
                                _ => IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()),
                            }),
                            other => panic!("unexpected SAN {other:?}"),
                        }
                    }
                }
                ParsedExtension::ExtendedKeyUsage(e) => {
                    eku = Some((e.server_auth, e.client_auth, e.any))
                }
                ParsedExtension::KeyUsage(k) => {
                    key_usage = Some((k.digital_signature(), k.key_cert_sign(), k.crl_sign()))
                }
                ParsedExtension::BasicConstraints(b) => basic = Some(b.ca),
                _ => {}
            }
        }
        assert_eq!(uris, vec![ARN.to_owned()], "URI SAN carries the ARN");
        assert_eq!(san_ips, ips.to_vec(), "IP SANs copied from the CSR");
        assert_eq!(
            eku,
            Some((true, true, false)),
            "EKU serverAuth + clientAuth"
        );
        assert_eq!(
            key_usage,
            Some((true, false, false)),
            "digitalSignature only"
        );
        assert_eq!(basic, Some(false), "explicitly not a CA");

        let not_before = leaf.validity().not_before.timestamp();
        let not_after = leaf.validity().not_after.timestamp();
        let now_s = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert_eq!(not_after - now_s, 24 * 3600, "24 h validity");
        assert_eq!(now_s - not_before, 300, "5 min backdating");
        assert!(leaf.raw_serial().len() >= 15, "128-bit random serial");
    }
}

#[test]
fn serials_differ() {
    let ca = authority();
    let key = keys::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let request = csr::build(&key, ARN, &[ip("10.0.0.1")]).unwrap();
    let a = ca.sign(&request, SystemTime::now()).unwrap();
    let b = ca.sign(&request, SystemTime::now()).unwrap();
    assert_ne!(a.certificate_pem, b.certificate_pem);
}

#[test]
fn validity_is_configurable() {
    let options = SigningOptions {
        validity: Duration::from_secs(3600),
        ..SigningOptions::default()
    };
    let (ca, _) = CertificateAuthority::generate(
        "CA",
        Duration::from_secs(86400),
        KeyAlgorithm::EcdsaP256,
        options,
    )
    .unwrap();
    let key = keys::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let issued = ca
        .sign(
            &csr::build(&key, ARN, &[ip("10.0.0.1")]).unwrap(),
            SystemTime::now(),
        )
        .unwrap();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(issued.certificate_pem.as_bytes())
        .unwrap();
    let info = fluidity_core::pki::CertificateInfo::parse(&der).unwrap();
    assert_eq!(info.not_after - info.not_before, 3600 + 300);
}

#[test]
fn refuses_a_tampered_signature() {
    let key = keys::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let request = csr::build(&key, ARN, &[ip("10.0.0.1")]).unwrap();
    let mut der = CertificateSigningRequestDer::from_pem_slice(request.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    // Change one byte of the signed content (inside the subject), keeping the structure.
    let position = der.windows(4).position(|w| w == b"arn:").unwrap();
    der[position] = b'A';
    let tampered = pem_encode("CERTIFICATE REQUEST", &der);
    assert_eq!(
        refusal(authority().sign(&tampered, SystemTime::now())),
        CsrRefusal::InvalidSignature
    );
}

#[test]
fn refuses_non_arn_identities_unless_legacy_names_are_enabled() {
    let ca = authority();
    for cn in [
        "example.com",
        "arn:aws:lambda:eu-west-1:123456789012:function:wake",
        "arn:aws:ecs:eu-west-1:12345:task/x",
        "fluidity-server",
    ] {
        let request = csr_with(Some(cn), vec![SanType::IpAddress(ip("10.0.0.1"))], vec![]);
        assert_eq!(
            refusal(ca.sign(&request, SystemTime::now())),
            CsrRefusal::NotATaskArn {
                found: cn.to_owned()
            },
            "{cn}"
        );
    }
    let legacy = CertificateAuthority::generate(
        "CA",
        Duration::from_secs(86400),
        KeyAlgorithm::EcdsaP256,
        SigningOptions {
            allow_legacy_names: true,
            ..SigningOptions::default()
        },
    )
    .unwrap()
    .0;
    let request = csr_with(
        Some("fluidity-client"),
        vec![SanType::IpAddress(ip("10.0.0.1"))],
        vec![],
    );
    legacy.sign(&request, SystemTime::now()).unwrap();
    let request = csr_with(
        Some("example.com"),
        vec![SanType::IpAddress(ip("10.0.0.1"))],
        vec![],
    );
    assert!(matches!(
        refusal(legacy.sign(&request, SystemTime::now())),
        CsrRefusal::NotATaskArn { .. }
    ));
}

#[test]
fn refuses_missing_ip_missing_identity_and_mismatched_identity() {
    let ca = authority();
    let no_ip = csr_with(
        Some(ARN),
        vec![SanType::DnsName("example.com".try_into().unwrap())],
        vec![],
    );
    assert_eq!(
        refusal(ca.sign(&no_ip, SystemTime::now())),
        CsrRefusal::NoIpAddress
    );

    let no_identity = csr_with(None, vec![SanType::IpAddress(ip("10.0.0.1"))], vec![]);
    assert_eq!(
        refusal(ca.sign(&no_identity, SystemTime::now())),
        CsrRefusal::NoIdentity
    );

    let mismatch = csr_with(
        Some(ARN),
        vec![
            SanType::URI(support::OTHER_ARN.try_into().unwrap()),
            SanType::IpAddress(ip("10.0.0.1")),
        ],
        vec![],
    );
    assert!(matches!(
        refusal(ca.sign(&mismatch, SystemTime::now())),
        CsrRefusal::IdentityMismatch { .. }
    ));

    // The ARN may come from the URI SAN alone (a strict client that cannot put it in the CN).
    let uri_only = csr_with(
        None,
        vec![
            SanType::URI(ARN.try_into().unwrap()),
            SanType::IpAddress(ip("10.0.0.1")),
        ],
        vec![],
    );
    ca.sign(&uri_only, SystemTime::now()).unwrap();

    assert!(matches!(
        refusal(ca.sign("not a csr", SystemTime::now())),
        CsrRefusal::Unparseable(_)
    ));
}

#[test]
fn refuses_requests_for_ca_rights() {
    let request = csr_with(
        Some(ARN),
        vec![SanType::IpAddress(ip("10.0.0.1"))],
        vec![KeyUsagePurpose::KeyCertSign],
    );
    assert_eq!(
        refusal(authority().sign(&request, SystemTime::now())),
        CsrRefusal::RequestsCaRights
    );
}

#[test]
fn task_arn_syntax() {
    assert!(is_task_arn(ARN));
    assert!(is_task_arn(
        "arn:aws-cn:ecs:cn-north-1:123456789012:task/c/1"
    ));
    assert!(is_task_arn(
        "arn:aws-us-gov:ecs:us-gov-west-1:123456789012:task/abc"
    ));
    for bad in [
        "arn:aws:ecs:eu-west-1:123456789012:service/c/s",
        "arn:aws:ecs:eu-west-1:12345678901:task/x",
        "arn:aws:ecs::123456789012:task/x",
        "arn:other:ecs:eu-west-1:123456789012:task/x",
        "arn:aws:ecs:eu-west-1:123456789012:task/",
        "arn:aws:ecs:eu-west-1:123456789012:task/a b",
        "",
    ] {
        assert!(!is_task_arn(bad), "{bad}");
    }
}

/// A policy like the CA Lambda's: only this ARN, only the caller's own IP.
struct CallerPolicy {
    running: &'static str,
}

#[async_trait]
impl CsrPolicy for CallerPolicy {
    async fn authorise(
        &self,
        request: &SigningRequest,
        arn: &str,
        context: &SigningRequestContext,
    ) -> Result<IpSans, String> {
        if arn != self.running {
            return Err(format!("{arn} is not a running task of this cluster"));
        }
        match context.source_ip {
            Some(source) if request.ip_addresses == [source] => Ok(IpSans::AsRequested),
            other => Err(format!(
                "IP SANs {:?} are not the caller's {other:?}",
                request.ip_addresses
            )),
        }
    }
}

#[tokio::test]
async fn the_policy_hook_can_refuse() {
    let ca = authority();
    let policy = CallerPolicy { running: ARN };
    let key = keys::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let caller = SigningRequestContext {
        source_ip: Some(ip("198.51.100.4")),
    };

    let good = csr::build(&key, ARN, &[ip("198.51.100.4")]).unwrap();
    ca.sign_with_policy(&good, &policy, &caller, SystemTime::now())
        .await
        .unwrap();
    ca.sign_with_policy(&good, &AllowAll, &caller, SystemTime::now())
        .await
        .unwrap();

    let other_ip = csr::build(&key, ARN, &[ip("198.51.100.5")]).unwrap();
    let refused = refusal(
        ca.sign_with_policy(&other_ip, &policy, &caller, SystemTime::now())
            .await,
    );
    assert!(
        matches!(&refused, CsrRefusal::NotAuthorised(why) if why.contains("198.51.100.5")),
        "{refused}"
    );

    let other_arn = csr::build(&key, support::OTHER_ARN, &[ip("198.51.100.4")]).unwrap();
    let refused = refusal(
        ca.sign_with_policy(&other_arn, &policy, &caller, SystemTime::now())
            .await,
    );
    assert!(
        matches!(&refused, CsrRefusal::NotAuthorised(why) if why.contains("not a running task")),
        "{refused}"
    );

    // The CA's own rules still run first.
    let bad = csr_with(
        Some("example.com"),
        vec![SanType::IpAddress(ip("198.51.100.4"))],
        vec![],
    );
    assert!(matches!(
        refusal(
            ca.sign_with_policy(&bad, &AllowAll, &caller, SystemTime::now())
                .await
        ),
        CsrRefusal::NotATaskArn { .. }
    ));
}

fn openssl(args: &[&str], dir: &std::path::Path) -> String {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (.ci/run installs it)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// CAs made the way operators make them (the Go version's `openssl req -x509 -newkey`) load
/// with PKCS#8, PKCS#1 and SEC1 keys, and CSRs from openssl are signed or refused correctly.
#[test]
fn loads_openssl_cas_in_every_key_encoding_and_signs_openssl_csrs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "pkcs8.key",
            "-out",
            "rsa.crt",
            "-days",
            "2",
            "-subj",
            "/O=Fluidity/CN=Fluidity-CA",
        ],
        path,
    );
    openssl(
        &[
            "rsa",
            "-in",
            "pkcs8.key",
            "-traditional",
            "-out",
            "pkcs1.key",
        ],
        path,
    );
    openssl(
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "sec1.key",
        ],
        path,
    );
    openssl(
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "sec1.key",
            "-out",
            "ec.crt",
            "-days",
            "2",
            "-subj",
            "/CN=EC-CA",
        ],
        path,
    );
    let read = |name: &str| std::fs::read_to_string(path.join(name)).unwrap();
    assert!(read("pkcs8.key").contains("BEGIN PRIVATE KEY"));
    assert!(read("pkcs1.key").contains("BEGIN RSA PRIVATE KEY"));
    assert!(read("sec1.key").contains("BEGIN EC PRIVATE KEY"));

    let short_arn = "arn:aws:ecs:us-east-1:123456789012:task/c/0123456789";
    let subject = format!("/CN={}", short_arn.replace('/', "\\/"));
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "agent.key",
            "-out",
            "agent.csr",
            "-subj",
            &subject,
            "-addext",
            "subjectAltName=IP:192.0.2.10",
        ],
        path,
    );
    openssl(
        &[
            "req",
            "-new",
            "-key",
            "sec1.key",
            "-out",
            "ca-request.csr",
            "-subj",
            &subject,
            "-addext",
            "subjectAltName=IP:192.0.2.10",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ],
        path,
    );

    for (cert, key) in [
        ("rsa.crt", "pkcs8.key"),
        ("rsa.crt", "pkcs1.key"),
        ("ec.crt", "sec1.key"),
    ] {
        let ca = CertificateAuthority::from_pem(&read(cert), &read(key), SigningOptions::default())
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let issued = ca.sign(&read("agent.csr"), SystemTime::now()).unwrap();
        let der =
            rustls_pki_types::CertificateDer::from_pem_slice(issued.certificate_pem.as_bytes())
                .unwrap();
        let info = fluidity_core::pki::CertificateInfo::parse(&der).unwrap();
        assert_eq!(info.arn(), Some(short_arn));
        assert_eq!(info.ip_addresses, vec![ip("192.0.2.10")]);
        // openssl itself accepts the chain.
        std::fs::write(path.join("leaf.pem"), &issued.certificate_pem).unwrap();
        openssl(&["verify", "-CAfile", cert, "leaf.pem"], path);
        assert_eq!(
            refusal(ca.sign(&read("ca-request.csr"), SystemTime::now())),
            CsrRefusal::RequestsCaRights
        );
    }

    // A real (81-character) task ARN does not fit openssl's CommonName: the documented way is
    // an empty subject and the ARN as a URI SAN. The leaf still carries the ARN as CN for Go
    // peers, and openssl reads and verifies it.
    let uri_subject = format!("subjectAltName=URI:{},IP:192.0.2.10", support::ARN);
    openssl(
        &[
            "req",
            "-new",
            "-key",
            "sec1.key",
            "-out",
            "long.csr",
            "-subj",
            "/",
            "-addext",
            &uri_subject,
        ],
        path,
    );
    let ca = CertificateAuthority::from_pem(
        &read("ec.crt"),
        &read("sec1.key"),
        SigningOptions::default(),
    )
    .unwrap();
    let issued = ca.sign(&read("long.csr"), SystemTime::now()).unwrap();
    std::fs::write(path.join("long.pem"), &issued.certificate_pem).unwrap();
    openssl(&["verify", "-CAfile", "ec.crt", "long.pem"], path);
    let subject = openssl(&["x509", "-in", "long.pem", "-noout", "-subject"], path);
    assert!(subject.contains(support::ARN), "{subject}");

    // A key that does not belong to the certificate is caught at load time.
    let err = CertificateAuthority::from_pem(
        &read("rsa.crt"),
        &read("sec1.key"),
        SigningOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
}

#[tokio::test]
async fn the_local_ca_lives_in_a_directory() {
    use fluidity_core::CertIssuer;
    use fluidity_core::pki::local_ca::LocalCa;

    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let created = LocalCa::open_or_create(&ca_dir, SigningOptions::default()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(ca_dir.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("ca.key"), 0o600);
        assert_eq!(
            std::fs::metadata(&ca_dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
    // Reopening finds the same CA, and it signs through the CertIssuer seam.
    let reopened = LocalCa::open_or_create(&ca_dir, SigningOptions::default()).unwrap();
    assert_eq!(created.certificate_pem(), reopened.certificate_pem());
    let key = keys::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let issued = reopened
        .issue(&csr::build(&key, ARN, &[ip("10.0.0.1")]).unwrap())
        .await
        .unwrap();
    assert_eq!(issued.chain_pem, vec![created.certificate_pem().to_owned()]);

    // A lost key is an error naming the file, never a silent new CA.
    std::fs::remove_file(ca_dir.join("ca.key")).unwrap();
    let err = LocalCa::open_or_create(&ca_dir, SigningOptions::default()).unwrap_err();
    assert!(err.to_string().contains("ca.key"), "{err}");
    // A corrupt certificate names the directory.
    std::fs::write(ca_dir.join("ca.key"), "garbage").unwrap();
    let err = LocalCa::open_or_create(&ca_dir, SigningOptions::default()).unwrap_err();
    assert!(err.to_string().contains("CA in"), "{err}");
}

/// Byte range of a CSR's certificationRequestInfo (the signed part) inside its DER.
fn signed_range(der: &[u8]) -> (usize, usize) {
    // Outer SEQUENCE header, then the inner SEQUENCE's header and length.
    let outer_header = if der[1] & 0x80 == 0 {
        2
    } else {
        2 + usize::from(der[1] & 0x7f)
    };
    let start = outer_header;
    let length_byte = der[start + 1];
    let (header, length) = if length_byte & 0x80 == 0 {
        (2, usize::from(length_byte))
    } else {
        let count = usize::from(length_byte & 0x7f);
        let length = der[start + 2..start + 2 + count]
            .iter()
            .fold(0usize, |acc, b| acc << 8 | usize::from(*b));
        (2 + count, length)
    };
    (start, start + header + length)
}

proptest::proptest! {
    /// Arbitrary bytes never panic the CSR and certificate parsers; they are refused.
    #[test]
    fn parsers_refuse_garbage_without_panicking(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
        proptest::prop_assert!(SigningRequest::parse_der(&bytes).is_err());
        proptest::prop_assert!(fluidity_core::pki::CertificateInfo::parse(&bytes).is_err());
        let pem = pem_encode("CERTIFICATE REQUEST", &bytes);
        proptest::prop_assert!(authority().sign(&pem, SystemTime::now()).is_err());
    }

    /// Truncating or flipping a byte of a valid CSR is always caught.
    #[test]
    fn damaged_csrs_are_refused(cut in 1usize..200, flip in 0usize..400) {
        let key = keys::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let request = csr::build(&key, ARN, &[ip("10.0.0.1")]).unwrap();
        let der = CertificateSigningRequestDer::from_pem_slice(request.as_bytes()).unwrap().as_ref().to_vec();
        let truncated = &der[..der.len().saturating_sub(cut)];
        proptest::prop_assert!(SigningRequest::parse_der(truncated).is_err());
        // Flip a bit of the signed part (certificationRequestInfo). The outer signature
        // algorithm identifier is not signed and x509-parser reads it leniently, so a flip
        // there can leave a request that still verifies: harmless, the key still signed the
        // same content, but not what this property is about.
        let (start, end) = signed_range(&der);
        let mut flipped = der.clone();
        let at = start + flip % (end - start);
        flipped[at] ^= 0x01;
        // A flipped bit either breaks the structure or the signature; it never signs.
        proptest::prop_assert!(authority().sign(&pem_encode("CERTIFICATE REQUEST", &flipped), SystemTime::now()).is_err());
    }
}
