//! What can go wrong setting up TLS.

use std::path::PathBuf;

/// A TLS setup failure, naming the file or value at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read, written or created.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable certificate or key.
    #[error("{what} {}: {reason}", path.display())]
    BadFile {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA's certificate exists but its key does not (or the other way).
    #[error("the CA in {} is incomplete: {reason}", dir.display())]
    IncompleteCa {
        /// The directory holding it.
        dir: PathBuf,
        /// Which file is missing.
        reason: String,
    },
    /// A fingerprint that is not 32 bytes of hex.
    #[error("{given:?} is not a SHA-256 fingerprint: {reason}")]
    Fingerprint {
        /// What was given.
        given: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A name the hub's certificate cannot be issued for.
    #[error("{name:?} is not a DNS name or IP address for a certificate: {reason}")]
    Name {
        /// The name.
        name: String,
        /// Why not.
        reason: String,
    },
    /// Generating or signing a certificate failed.
    #[error("issuing {what}: {source}")]
    Issue {
        /// Which certificate.
        what: &'static str,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// A certificate or request that cannot be read or used.
    #[error("{reason}")]
    Certificate {
        /// What is wrong with it.
        reason: String,
    },
    /// `rustls` refused the certificates or keys.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}
