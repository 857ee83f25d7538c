//! TLS of the link between agents and hubs.
//!
//! - [`CertificateAuthority`]: the hub's CA, created in its state directory
//!   on first start (key file 0600) or given by the operator; it issues the
//!   hub's server certificate.
//! - [`Fingerprint`]: the SHA-256 of a certificate, the way an operator
//!   tells an agent which CA to trust without shipping a file.
//! - [`HubTrust`]: what an agent trusts (a pinned CA fingerprint or a CA
//!   file), turned into a `rustls` client configuration by
//!   [`client_config`]; [`server_config`] builds the hub's side.
//! - [`write_file_atomically`]: how the hub writes the files it keeps
//!   secrets in (this CA's key, and its NATS credentials).
//!
//! Everything uses the `ring` provider explicitly, never a process-wide
//! default, so an embedding program's own TLS setup cannot change it.
//!
//! ```
//! use herd_tls::{CertificateAuthority, HubTrust};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let (ca, created) = CertificateAuthority::load_or_create(dir.path()).unwrap();
//! assert!(created);
//! let identity = ca.issue_server(&["localhost".to_owned()]).unwrap();
//! let _server = herd_tls::server_config(identity).unwrap();
//! let _client = herd_tls::client_config(&HubTrust::Fingerprint(ca.fingerprint())).unwrap();
//! // The second start finds the same CA.
//! let (again, created) = CertificateAuthority::load_or_create(dir.path()).unwrap();
//! assert!(!created);
//! assert_eq!(again.fingerprint(), ca.fingerprint());
//! ```

mod agent;
mod authority;
mod error;
mod files;
mod fingerprint;
mod trust;

pub use agent::{AgentCertificate, AgentKey, EnrolledIdentity};
pub use authority::{CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority, Identity};
pub use error::TlsError;
pub use files::write_file_atomically;
pub use fingerprint::Fingerprint;
pub use trust::{
    HubTrust, client_config, client_config_with_identity, server_config,
    server_config_with_client_auth, server_name,
};

pub use rustls;
pub use tokio_rustls;

/// The crypto provider of every configuration this crate builds.
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
