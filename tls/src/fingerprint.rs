//! SHA-256 fingerprints of certificates.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::TlsError;

/// The SHA-256 of a certificate's DER encoding.
///
/// Shown as 32 colon-separated upper-case hex bytes, as
/// `openssl x509 -noout -fingerprint -sha256` prints it; parsed from that
/// form (with or without its `sha256 Fingerprint=` prefix), from plain hex,
/// or from `sha256:<hex>`, in either case.
///
/// ```
/// use herd_tls::Fingerprint;
///
/// let fingerprint = Fingerprint::of(b"certificate bytes");
/// let shown = fingerprint.to_string();
/// assert_eq!(shown.len(), 95);
/// assert_eq!(shown.parse::<Fingerprint>().unwrap(), fingerprint);
/// let plain = shown.replace(':', "").to_lowercase();
/// assert_eq!(format!("sha256:{plain}").parse::<Fingerprint>().unwrap(), fingerprint);
/// assert!("AB:CD".parse::<Fingerprint>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// The fingerprint of the first certificate in a PEM file (a hub's
    /// `tls/ca.pem`, say).
    pub fn of_pem_file(path: &std::path::Path) -> Result<Self, TlsError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let bad = |reason: String| TlsError::BadFile {
            what: "certificate",
            path: path.to_owned(),
            reason,
        };
        let first = CertificateDer::pem_file_iter(path)
            .map_err(|error| bad(error.to_string()))?
            .next()
            .ok_or_else(|| bad("no CERTIFICATE in it".to_owned()))?
            .map_err(|error| bad(error.to_string()))?;
        Ok(Self::of(&first))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, byte) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = TlsError;

    fn from_str(given: &str) -> Result<Self, TlsError> {
        let error = |reason| TlsError::Fingerprint {
            given: given.to_owned(),
            reason,
        };
        let trimmed = given.trim();
        let value = match trimmed.split_once('=') {
            Some((_, value)) => value,
            None => trimmed
                .get(..7)
                .filter(|prefix| prefix.eq_ignore_ascii_case("sha256:"))
                .map_or(trimmed, |_| &trimmed[7..]),
        };
        let hex: Vec<u8> = value.bytes().filter(|byte| *byte != b':').collect();
        if hex.len() != 64 {
            return Err(error("expected 32 bytes (64 hex digits)"));
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.chunks(2)) {
            let digits = std::str::from_utf8(pair).map_err(|_| error("not hex"))?;
            *byte = u8::from_str_radix(digits, 16).map_err(|_| error("not hex"))?;
        }
        Ok(Self(bytes))
    }
}
