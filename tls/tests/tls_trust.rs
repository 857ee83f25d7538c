//! The agent's trust in its hub over real loopback TLS connections, and the
//! CA's files on disk.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use herd_tls::{
    CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority, Fingerprint, HubTrust, Identity, TlsError,
    client_config, server_config, server_name,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const WAIT: Duration = Duration::from_secs(10);

/// Serves one TLS connection with `identity` (echoing one byte) and dials
/// it as `dial` trusting `trust`; the client's handshake result.
async fn connect(identity: Identity, trust: &HubTrust, dial: &str) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = TlsAcceptor::from(server_config(identity).unwrap());
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        if let Ok(mut stream) = acceptor.accept(socket).await {
            let mut byte = [0u8; 1];
            if stream.read_exact(&mut byte).await.is_ok() {
                let _ = stream.write_all(&byte).await;
                let _ = stream.flush().await;
            }
        }
    });
    let connector = TlsConnector::from(client_config(trust).map_err(|e| e.to_string())?);
    let socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = server_name(&format!("{dial}:{port}")).unwrap();
    let result = tokio::time::timeout(WAIT, async {
        let mut stream = connector
            .connect(name, socket)
            .await
            .map_err(|error| error.to_string())?;
        stream.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(&byte, b"x");
        Ok(())
    })
    .await
    .expect("the handshake ends in time");
    tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    result
}

fn ca(dir: &Path) -> CertificateAuthority {
    CertificateAuthority::load_or_create(dir).unwrap().0
}

fn names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into()]
}

#[tokio::test]
async fn a_pinned_fingerprint_trusts_that_ca_and_no_other() {
    let (dir, other_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ca, other) = (ca(dir.path()), ca(other_dir.path()));
    let pinned = HubTrust::Fingerprint(ca.fingerprint());

    connect(ca.issue_server(&names()).unwrap(), &pinned, "127.0.0.1")
        .await
        .expect("the pinned CA's server is trusted");
    connect(ca.issue_server(&names()).unwrap(), &pinned, "localhost")
        .await
        .expect("by DNS name too");

    let refused = connect(other.issue_server(&names()).unwrap(), &pinned, "127.0.0.1")
        .await
        .expect_err("another CA's server is refused");
    assert!(
        refused.contains("not the pinned one")
            && refused.contains(&ca.fingerprint().to_string())
            && refused.contains(&other.fingerprint().to_string()),
        "the refusal names both CAs: {refused}"
    );
}

#[tokio::test]
async fn the_certificate_must_be_for_the_name_dialled() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path());
    let only_localhost = ca.issue_server(&["localhost".to_owned()]).unwrap();
    let refused = connect(
        only_localhost,
        &HubTrust::Fingerprint(ca.fingerprint()),
        "127.0.0.1",
    )
    .await
    .expect_err("a certificate without the dialled address is refused");
    assert!(refused.contains("not valid for name"), "{refused}");
}

#[tokio::test]
async fn a_ca_file_is_trusted_like_a_pinned_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path());
    let trust = HubTrust::CaFile(dir.path().join(CA_CERT_FILE));
    connect(ca.issue_server(&names()).unwrap(), &trust, "127.0.0.1")
        .await
        .expect("trusted through the file");

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let error = client_config(&HubTrust::CaFile(empty)).unwrap_err();
    assert!(
        matches!(error, TlsError::BadFile { .. }) && error.to_string().contains("empty.pem"),
        "{error}"
    );
}

#[tokio::test]
async fn an_operators_server_certificate_files_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path());
    let issued = ca.issue_server(&names()).unwrap();
    let pem = |der: &[u8], label: &str| {
        use std::fmt::Write as _;
        let body = base64_lines(der);
        let mut out = String::new();
        writeln!(out, "-----BEGIN {label}-----\n{body}-----END {label}-----").unwrap();
        out
    };
    let chain: String = issued
        .chain
        .iter()
        .map(|certificate| pem(certificate, "CERTIFICATE"))
        .collect();
    let key = pem(issued.key.secret_der(), "PRIVATE KEY");
    let (chain_path, key_path) = (dir.path().join("hub.pem"), dir.path().join("hub.key"));
    std::fs::write(&chain_path, chain).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let loaded = Identity::from_pem_files(&chain_path, &key_path).unwrap();
    assert_eq!(loaded.chain, issued.chain);
    connect(
        loaded,
        &HubTrust::Fingerprint(ca.fingerprint()),
        "127.0.0.1",
    )
    .await
    .expect("the operator's files work");
}

/// Standard base64 in 64-character lines, as PEM wants it.
fn base64_lines(bytes: &[u8]) -> String {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    text.as_bytes()
        .chunks(64)
        .map(|line| format!("{}\n", std::str::from_utf8(line).unwrap()))
        .collect()
}

#[test]
fn the_ca_is_created_private_once_and_found_again() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("tls");
    let (ca, created) = CertificateAuthority::load_or_create(&dir).unwrap();
    assert!(created);
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
    let (again, created) = CertificateAuthority::load_or_create(&dir).unwrap();
    assert!(!created);
    assert_eq!(again.fingerprint(), ca.fingerprint());
    let operator =
        CertificateAuthority::from_pem_files(&dir.join(CA_CERT_FILE), &dir.join(CA_KEY_FILE))
            .unwrap();
    assert_eq!(operator.fingerprint(), ca.fingerprint());

    // A certificate without its key cannot sign: a clear error, no new CA.
    std::fs::remove_file(dir.join(CA_KEY_FILE)).unwrap();
    let error = CertificateAuthority::load_or_create(&dir).unwrap_err();
    assert!(matches!(error, TlsError::IncompleteCa { .. }), "{error}");
    assert!(error.to_string().contains(CA_KEY_FILE), "{error}");

    // A key without a certificate is a creation cut short: created anew.
    std::fs::remove_file(dir.join(CA_CERT_FILE)).unwrap();
    std::fs::write(dir.join(CA_KEY_FILE), "stale").unwrap();
    let (fresh, created) = CertificateAuthority::load_or_create(&dir).unwrap();
    assert!(created);
    assert_ne!(fresh.fingerprint(), ca.fingerprint());
    assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
}

#[test]
fn the_fingerprint_matches_openssls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path());
    let output = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(dir.path().join(CA_CERT_FILE))
        .output()
        .expect("openssl runs");
    let printed = String::from_utf8(output.stdout).unwrap();
    let parsed: Fingerprint = printed.parse().unwrap();
    assert_eq!(parsed, ca.fingerprint());
    assert_eq!(
        Fingerprint::of_pem_file(&dir.path().join(CA_CERT_FILE)).unwrap(),
        ca.fingerprint()
    );
    assert_eq!(
        printed.trim().split_once('=').unwrap().1,
        ca.fingerprint().to_string()
    );
}

#[test]
fn bad_names_and_fingerprints_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let error = ca(dir.path())
        .issue_server(&["ok.example".into(), "not a name".into()])
        .unwrap_err();
    assert!(error.to_string().contains("\"not a name\""), "{error}");
    let error = "12:34".parse::<Fingerprint>().unwrap_err();
    assert!(error.to_string().contains("64 hex digits"), "{error}");
    let error = "zz".repeat(32).parse::<Fingerprint>().unwrap_err();
    assert!(error.to_string().contains("not hex"), "{error}");
}
