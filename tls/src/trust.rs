//! Who trusts whom: the agent's trust in its hub, and the `rustls`
//! configurations of both ends.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::{Fingerprint, Identity, TlsError, provider};

/// What an agent trusts its hub's certificate by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubTrust {
    /// A CA whose certificate has this fingerprint; the hub sends that
    /// certificate in its chain, so the agent needs no file.
    Fingerprint(Fingerprint),
    /// The CA certificate(s) in this PEM file.
    CaFile(PathBuf),
}

/// The hub's side: its certificate chain and key; agents are not asked for
/// certificates.
pub fn server_config(identity: Identity) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with_client_auth(identity, &[])
}

/// The hub's side, asking agents for a certificate issued by one of
/// `client_cas` (none: not asking). An agent without one is still let in:
/// it has not enrolled yet, and the hub decides what it may do.
pub fn server_config_with_client_auth(
    identity: Identity,
    client_cas: &[CertificateDer<'static>],
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = if client_cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for ca in client_cas {
            roots.add(ca.clone())?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|error| rustls::Error::General(error.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    };
    Ok(Arc::new(
        builder.with_single_cert(identity.chain, identity.key)?,
    ))
}

/// The agent's side, trusting what `trust` says, with no certificate of its own.
pub fn client_config(trust: &HubTrust) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_with_identity(trust, None)
}

/// The agent's side, trusting what `trust` says and presenting `identity`
/// (its enrolled certificate) when the hub asks for one.
pub fn client_config_with_identity(
    trust: &HubTrust,
    identity: Option<Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder =
        match trust {
            HubTrust::Fingerprint(fingerprint) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCa {
                    fingerprint: *fingerprint,
                    provider,
                })),
            HubTrust::CaFile(path) => {
                let bad = |reason: String| TlsError::BadFile {
                    what: "hub CA file",
                    path: path.clone(),
                    reason,
                };
                let certificates = {
                    use rustls::pki_types::pem::PemObject as _;
                    CertificateDer::pem_file_iter(path)
                        .map_err(|error| bad(error.to_string()))?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|error| bad(error.to_string()))?
                };
                let mut roots = RootCertStore::empty();
                for certificate in certificates {
                    roots
                        .add(certificate)
                        .map_err(|error| bad(error.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(bad("no CERTIFICATE in it".to_owned()));
                }
                builder.with_root_certificates(roots)
            }
        };
    let config = match identity {
        Some(identity) => builder.with_client_auth_cert(identity.chain, identity.key)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name an agent checks the hub's certificate against: the host part
/// of `addr` (`host:port`, `[v6]:port` or a bare host).
///
/// ```
/// let name = herd_tls::server_name("127.0.0.1:7400").unwrap();
/// assert_eq!(name.to_str(), "127.0.0.1");
/// assert_eq!(herd_tls::server_name("[::1]:7400").unwrap().to_str(), "::1");
/// assert_eq!(herd_tls::server_name("hub.example:7400").unwrap().to_str(), "hub.example");
/// assert!(herd_tls::server_name("bad name:1").is_err());
/// ```
pub fn server_name(addr: &str) -> Result<ServerName<'static>, TlsError> {
    let host = match addr.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(host, _)| host),
        None => match addr.rsplit_once(':') {
            // One colon: host:port; more: a bare IPv6 address.
            Some((host, _)) if !host.contains(':') => host,
            _ => addr,
        },
    };
    ServerName::try_from(host.to_owned()).map_err(|error| TlsError::Name {
        name: host.to_owned(),
        reason: error.to_string(),
    })
}

/// Trusts a hub whose chain holds the CA with the pinned fingerprint, and
/// whose certificate that CA issued for the name the agent dialled.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: Fingerprint,
    provider: Arc<CryptoProvider>,
}

/// The hub presented no certificate with the pinned fingerprint.
#[derive(thiserror::Error)]
#[error("the hub's CA is not the pinned one: expected {expected}, the hub presented {presented}")]
struct NotPinned {
    expected: Fingerprint,
    presented: String,
}

// rustls shows the cause of a refused certificate with `Debug`: make that
// the sentence an operator can act on.
impl std::fmt::Debug for NotPinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|certificate| Fingerprint::of(certificate) == self.fingerprint)
        else {
            let presented = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|certificate| Fingerprint::of(certificate).to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(CertificateError::Other(OtherError(Arc::new(NotPinned {
                expected: self.fingerprint,
                presented,
            })))
            .into());
        };
        // From here on it is ordinary verification with that CA as the root.
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|error| rustls::Error::General(error.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
