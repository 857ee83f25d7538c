//! The hub's certificate authority and the server certificates it issues.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::{Fingerprint, TlsError, write_file_atomically};

/// The CA certificate's file name in the directory the hub keeps it in.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file name (mode 0600) next to it.
pub const CA_KEY_FILE: &str = "ca.key";

/// How long a CA the hub creates is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a server certificate is valid; the hub issues a fresh one at
/// every start.
const SERVER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Backdating of `not_before`, for peers whose clocks run a little behind.
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// A certificate authority: its certificate and the key that signs with it.
pub struct CertificateAuthority {
    certificate: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// A certificate chain and its private key, for one side of a connection.
#[derive(Debug)]
pub struct Identity {
    /// The end-entity certificate first, then the CA that issued it (so a
    /// peer that pins the CA's fingerprint finds it in the chain).
    pub chain: Vec<CertificateDer<'static>>,
    /// The end-entity certificate's key.
    pub key: PrivateKeyDer<'static>,
}

impl CertificateAuthority {
    /// The CA kept in `dir` ([`CA_CERT_FILE`] and [`CA_KEY_FILE`]), created
    /// there (the directory 0700, the key 0600) when `dir` has none; `true`
    /// when it was created now.
    pub fn load_or_create(dir: &Path) -> Result<(Self, bool), TlsError> {
        let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                warn_if_readable_by_others(&key_path);
                Ok((Self::from_pem_files(&cert_path, &key_path)?, false))
            }
            (true, false) => Err(TlsError::IncompleteCa {
                dir: dir.to_owned(),
                reason: format!("{CA_CERT_FILE} is there but {CA_KEY_FILE} is not"),
            }),
            // A key without a certificate is what a crash between the two
            // writes leaves: nothing was ever issued with it.
            (false, _) => Ok((Self::create(dir)?, true)),
        }
    }

    /// An operator's CA from a PEM certificate and a PEM PKCS#8 key
    /// (`BEGIN PRIVATE KEY`; `openssl pkcs8 -topk8 -nocrypt` converts others).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_pem = read(cert, "CA certificate")?;
        let key_pem = read(key, "CA key")?;
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|error| TlsError::BadFile {
            what: "CA key",
            path: key.to_owned(),
            reason: format!("{error} (a PKCS#8 PEM key is needed)"),
        })?;
        let certificate = first_certificate(&cert_pem, cert, "CA certificate")?;
        let issuer = Issuer::from_ca_cert_der(&certificate, key_pair).map_err(|error| {
            TlsError::BadFile {
                what: "CA certificate",
                path: cert.to_owned(),
                reason: error.to_string(),
            }
        })?;
        Ok(Self {
            certificate,
            issuer,
        })
    }

    fn create(dir: &Path) -> Result<Self, TlsError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("creating the CA directory", dir))?;
        let key_pair = KeyPair::generate().map_err(issue("the CA key"))?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "herd hub CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_VALIDITY);
        let certificate = params
            .self_signed(&key_pair)
            .map_err(issue("the CA certificate"))?;
        // The key first: the certificate's presence is what marks the CA complete.
        write_new(&dir.join(CA_KEY_FILE), &key_pair.serialize_pem(), 0o600)?;
        write_new(&dir.join(CA_CERT_FILE), &certificate.pem(), 0o644)?;
        Ok(Self {
            certificate: certificate.der().clone(),
            issuer: Issuer::new(params, key_pair),
        })
    }

    /// The fingerprint agents pin to trust this CA.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.certificate)
    }

    /// The CA's certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// A fresh key and a server certificate for `names` (DNS names or IP
    /// addresses), valid for a year, chained to this CA.
    pub fn issue_server(&self, names: &[String]) -> Result<Identity, TlsError> {
        if names.is_empty() {
            return Err(TlsError::Name {
                name: String::new(),
                reason: "a server certificate needs at least one name".to_owned(),
            });
        }
        // What an agent can dial: rcgen alone would take any IA5 string.
        if let Some((name, error)) = names.iter().find_map(|name| {
            rustls::pki_types::ServerName::try_from(name.as_str())
                .err()
                .map(|error| (name, error))
        }) {
            return Err(TlsError::Name {
                name: name.clone(),
                reason: error.to_string(),
            });
        }
        let mut params =
            CertificateParams::new(names.to_vec()).map_err(|error| TlsError::Name {
                name: names.join(", "),
                reason: error.to_string(),
            })?;
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, SERVER_VALIDITY);
        let key_pair = KeyPair::generate().map_err(issue("the server key"))?;
        let certificate = params
            .signed_by(&key_pair, &self.issuer)
            .map_err(issue("the server certificate"))?;
        Ok(Identity {
            chain: vec![certificate.der().clone(), self.certificate.clone()],
            key: PrivatePkcs8KeyDer::from(key_pair.serialize_der()).into(),
        })
    }
}

impl Identity {
    /// An operator's server certificate chain (PEM, end entity first) and
    /// key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub fn from_pem_files(chain: &Path, key: &Path) -> Result<Self, TlsError> {
        let bad = |what: &'static str, path: &Path, reason: String| TlsError::BadFile {
            what,
            path: path.to_owned(),
            reason,
        };
        let chain_pem = read(chain, "server certificate")?;
        let certificates =
            certificates(&chain_pem).map_err(|reason| bad("server certificate", chain, reason))?;
        if certificates.is_empty() {
            return Err(bad(
                "server certificate",
                chain,
                "no CERTIFICATE in it".into(),
            ));
        }
        let key_pem = read(key, "server key")?;
        let private_key = {
            use rustls::pki_types::pem::PemObject as _;
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|error| bad("server key", key, error.to_string()))?
        };
        Ok(Self {
            chain: certificates,
            key: private_key,
        })
    }
}

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + valid_for;
}

fn read(path: &Path, what: &'static str) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(io(what, path))
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TlsError {
    let path = path.to_owned();
    move |source| TlsError::Io { what, path, source }
}

pub(crate) fn issue(what: &'static str) -> impl FnOnce(rcgen::Error) -> TlsError {
    move |source| TlsError::Issue { what, source }
}

/// Every `CERTIFICATE` block of a PEM text, in order.
fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| error.to_string())
}

fn first_certificate(
    pem: &str,
    path: &Path,
    what: &'static str,
) -> Result<CertificateDer<'static>, TlsError> {
    let bad = |reason: String| TlsError::BadFile {
        what,
        path: path.to_owned(),
        reason,
    };
    certificates(pem)
        .map_err(bad)?
        .into_iter()
        .next()
        .ok_or_else(|| bad("no CERTIFICATE in it".to_owned()))
}

/// Writes a file that must not exist yet (or is a leftover of a crashed
/// creation) with `mode`, through a temporary file renamed into place.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    write_file_atomically(path, contents.as_bytes(), mode).map_err(io("writing", path))
}

fn warn_if_readable_by_others(key: &Path) {
    if let Ok(metadata) = fs::metadata(key)
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            key = %key.display(),
            mode = format!("{:o}", metadata.permissions().mode() & 0o777),
            "the CA key is readable by other users; chmod 600 it"
        );
    }
}
