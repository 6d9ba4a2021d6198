//! TLS to the cluster (`?ca=` / `?tls=true` in the store URL), checked where no CQL node can
//! run: a local TLS server with a certificate of its own CA stands in for a node's TLS port.
//! With that CA the driver completes the handshake and sends its first CQL request frame
//! inside the TLS session; with another CA it refuses the server before sending anything.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslAcceptor, SslMethod};
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509, X509NameBuilder};
use projections::scylla::{ScyllaConfig, migrate};

/// A self-signed certificate for 127.0.0.1 (its own CA) and its key.
fn certificate() -> (X509, PKey<Private>) {
    let key = PKey::from_ec_key(
        openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "msgxc test node").unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    let serial = openssl::bn::BigNum::from_u32(1)
        .unwrap()
        .to_asn1_integer()
        .unwrap();
    b.set_serial_number(&serial).unwrap();
    b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .ip("127.0.0.1")
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    (b.build(), key)
}

/// Accepts one TLS connection and reports the first bytes read inside it (or the error).
fn tls_node(cert: &X509, key: &PKey<Private>) -> (u16, mpsc::Receiver<Result<Vec<u8>, String>>) {
    let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
    acceptor.set_certificate(cert).unwrap();
    acceptor.set_private_key(key).unwrap();
    let acceptor = acceptor.build();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((tcp, _)) = listener.accept() else {
            return;
        };
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
        let report = match acceptor.accept(tcp) {
            Ok(mut tls) => {
                let mut header = [0u8; 9];
                tls.read_exact(&mut header)
                    .map(|()| header.to_vec())
                    .map_err(|e| format!("reading a frame: {e}"))
            }
            Err(e) => Err(format!("handshake: {e}")),
        };
        let _ = tx.send(report);
    });
    (port, rx)
}

fn write_pem(dir: &Path, name: &str, cert: &X509) -> String {
    let path = dir.join(name);
    std::fs::write(&path, cert.to_pem().unwrap()).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn the_driver_speaks_cql_inside_tls_verified_against_the_given_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate();
    let ca = write_pem(dir.path(), "ca.pem", &cert);
    let (port, seen) = tls_node(&cert, &key);
    let config = ScyllaConfig::parse(&format!("scylla://127.0.0.1:{port}/ks?ca={ca}")).unwrap();
    // No CQL server answers, so connecting fails; what matters is what crossed the wire.
    let _ = tokio::time::timeout(Duration::from_secs(20), migrate(&config)).await;
    let header = seen
        .recv_timeout(Duration::from_secs(10))
        .expect("the server saw a connection")
        .expect("a TLS session carrying a frame");
    // A CQL request frame header: version (request direction, v4 or later), flags, stream,
    // opcode OPTIONS (0x05) or STARTUP (0x01).
    assert!(
        (0x04..=0x05).contains(&header[0]),
        "protocol version byte {:#x}",
        header[0]
    );
    assert!(matches!(header[4], 0x01 | 0x05), "opcode {:#x}", header[4]);
}

#[tokio::test]
async fn a_node_signed_by_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate();
    let (other, _) = certificate();
    let wrong_ca = write_pem(dir.path(), "other.pem", &other);
    let (port, seen) = tls_node(&cert, &key);
    let config =
        ScyllaConfig::parse(&format!("scylla://127.0.0.1:{port}/ks?ca={wrong_ca}")).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(20), migrate(&config)).await;
    assert!(matches!(result, Ok(Err(_))), "connecting must fail");
    let report = seen
        .recv_timeout(Duration::from_secs(10))
        .expect("the server saw a connection");
    assert!(
        report.is_err(),
        "no frame may cross an unverified session: {report:?}"
    );
}
