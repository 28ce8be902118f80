//! Certificates generated here (rcgen), handshakes over an in-memory pipe.

use super::*;
use rustls::pki_types::ServerName;

/// A fresh self-signed certificate for `localhost`: (certificate PEM, key PEM).
fn self_signed() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    (c.cert.pem(), c.signing_key.serialize_pem())
}

/// A directory of this test's own, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let d = std::env::temp_dir().join(format!("radiovis-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).expect("temp dir");
        Dir(d)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    fn files(&self, cert: &str, key: &str) -> TlsFiles {
        TlsFiles {
            cert: self.write("cert.pem", cert),
            key: self.write("key.pem", key),
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The certificate the server presents in a handshake (the client trusts anything:
/// what is checked is which certificate was presented).
async fn presented(tls: &TlsReloader) -> Vec<u8> {
    #[derive(Debug)]
    struct AnyCert(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let (client, server) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from("localhost").expect("name");
    let (c, s) = tokio::join!(connector.connect(name, client), tls.accept(server));
    s.expect("server handshake");
    let c = c.expect("client handshake");
    c.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("pem")
        .to_vec()
}

#[tokio::test]
async fn a_reload_presents_the_new_certificate_and_a_bad_one_keeps_the_old() {
    let dir = Dir::new();
    let (cert_a, key_a) = self_signed();
    let files = dir.files(&cert_a, &key_a);
    let tls = TlsReloader::new(files, &[]).expect("loads");
    assert_eq!(presented(&tls).await, der(&cert_a));

    let (cert_b, key_b) = self_signed();
    dir.files(&cert_b, &key_b);
    tls.reload().expect("reloads");
    assert_eq!(presented(&tls).await, der(&cert_b));

    // A half-written renewal: new certificate, old key. Refused; B stays in use.
    let (cert_c, _) = self_signed();
    dir.write("cert.pem", &cert_c);
    let e = tls.reload().expect_err("a key of another certificate");
    assert!(matches!(e, TlsError::Rejected { .. }), "{e:?}");
    assert_eq!(presented(&tls).await, der(&cert_b));
    // A file gone: same.
    std::fs::remove_file(dir.0.join("key.pem")).expect("rm");
    assert!(matches!(tls.reload(), Err(TlsError::Read { .. })));
    assert_eq!(presented(&tls).await, der(&cert_b));
}

#[test]
fn bad_files_are_refused_naming_the_file() {
    let dir = Dir::new();
    let (cert, key) = self_signed();
    let (other_cert, _) = self_signed();
    let missing = TlsFiles {
        cert: dir.0.join("nowhere.pem"),
        key: dir.write("key.pem", &key),
    };
    let e = missing.load().expect_err("missing");
    assert!(e.to_string().contains("nowhere.pem"), "{e}");
    assert!(e.to_string().contains("certificate"), "{e}");

    let garbage = dir.files("not a certificate\n", &key);
    let e = garbage.load().expect_err("not pem");
    assert!(
        matches!(
            e,
            TlsError::NotPem {
                kind: "certificate",
                ..
            }
        ),
        "{e:?}"
    );

    // The key file given as certificate and the other way round.
    let swapped = dir.files(&key, &cert);
    assert!(matches!(swapped.load(), Err(TlsError::NotPem { .. })));

    let mismatched = dir.files(&other_cert, &key);
    let e = mismatched.load().expect_err("mismatch");
    assert!(matches!(e, TlsError::Rejected { .. }), "{e:?}");
    assert!(e.to_string().contains("cert.pem"), "{e}");

    assert!(dir.files(&cert, &key).load().is_ok());
}
