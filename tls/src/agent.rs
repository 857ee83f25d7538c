//! Agent certificates: the key an agent makes for itself, its request, the
//! certificate the hub's CA issues for it, and what a hub reads back from it.
//!
//! The certificate's subject common name is the agent id: after enrollment
//! the certificate *is* the agent's identity, whatever its `Hello` says.

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::authority::{CLOCK_SKEW, issue};
use crate::{CertificateAuthority, TlsError};

/// What the hub read from an agent's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCertificate {
    /// The agent id it was issued for (its subject common name).
    pub agent_id: String,
    /// When it was issued: revocation of an id covers every certificate
    /// issued up to the revocation, and none issued later.
    pub issued_at: SystemTime,
    /// When it expires.
    pub not_after: SystemTime,
}

impl AgentCertificate {
    /// Reads a DER certificate the hub's CA issued (the caller has verified
    /// its chain; this only reads it).
    pub fn parse(der: &[u8]) -> Result<Self, TlsError> {
        let bad = |reason: String| TlsError::Certificate { reason };
        let (_, certificate) =
            x509_parser::parse_x509_certificate(der).map_err(|error| bad(error.to_string()))?;
        let agent_id = certificate
            .subject()
            .iter_common_name()
            .next()
            .and_then(|name| name.as_str().ok())
            .ok_or_else(|| bad("no common name (agent id) in its subject".to_owned()))?
            .to_owned();
        let time = |at: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH
                + Duration::from_secs(u64::try_from(at.timestamp()).unwrap_or_default())
        };
        let validity = certificate.validity();
        Ok(Self {
            agent_id,
            issued_at: time(validity.not_before) + CLOCK_SKEW,
            not_after: time(validity.not_after),
        })
    }

    /// When an agent asks for a new certificate: two thirds into the
    /// validity, so a hub that is down for a while still leaves it a third
    /// of the time to renew.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use herd_tls::AgentCertificate;
    ///
    /// let issued_at = SystemTime::UNIX_EPOCH + Duration::from_secs(3_000);
    /// let certificate = AgentCertificate {
    ///     agent_id: "web-1".into(),
    ///     issued_at,
    ///     not_after: issued_at + Duration::from_secs(300),
    /// };
    /// assert_eq!(certificate.renew_at(), issued_at + Duration::from_secs(200));
    /// ```
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.issued_at)
            .unwrap_or_default();
        self.issued_at + lifetime * 2 / 3
    }

    /// Whether it has expired at `now`.
    pub fn expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

/// A key an agent made for itself; only its public half and a request
/// signed with it ever leave the host.
pub struct AgentKey {
    key_pair: KeyPair,
}

impl std::fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentKey").finish_non_exhaustive()
    }
}

impl AgentKey {
    /// A fresh ECDSA P-256 key.
    pub fn generate() -> Result<Self, TlsError> {
        Ok(Self {
            key_pair: KeyPair::generate().map_err(issue("the agent key"))?,
        })
    }

    /// The key of the `PRIVATE KEY` (PKCS#8) block in `pem`, which may hold
    /// other blocks too.
    pub fn from_pem(pem: &str) -> Result<Self, TlsError> {
        use rustls::pki_types::pem::PemObject as _;
        let bad = |error: &dyn std::fmt::Display| TlsError::Certificate {
            reason: format!("the agent key: {error}"),
        };
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| bad(&e))?;
        let key_pair = KeyPair::try_from(&der).map_err(|e| bad(&e))?;
        Ok(Self { key_pair })
    }

    /// The key in PKCS#8 PEM form.
    pub fn to_pem(&self) -> String {
        self.key_pair.serialize_pem()
    }

    /// The key in the form `rustls` presents it with.
    pub fn private_key(&self) -> PrivatePkcs8KeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key_pair.serialize_der())
    }

    /// A certificate signing request (DER) for this key. The hub decides the
    /// identity in the certificate; the request only proves the key.
    pub fn request(&self) -> Result<Vec<u8>, TlsError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "herd agent");
        let request = params
            .serialize_request(&self.key_pair)
            .map_err(issue("the certificate request"))?;
        Ok(request.der().to_vec())
    }

    /// Whether `certificate` is for this key (a hub's answer to this key's
    /// request, not to another's).
    pub fn matches(&self, certificate: &[u8]) -> bool {
        use rcgen::PublicKeyData as _;
        x509_parser::parse_x509_certificate(certificate).is_ok_and(|(_, parsed)| {
            parsed.public_key().subject_public_key.data.as_ref() == self.key_pair.der_bytes()
        })
    }
}

/// An enrolled agent's key and certificate, as it keeps them (one PEM file:
/// the certificate, then the key) and presents them to its hub.
#[derive(Debug)]
pub struct EnrolledIdentity {
    key: AgentKey,
    certificate: CertificateDer<'static>,
    parsed: AgentCertificate,
}

impl EnrolledIdentity {
    /// `certificate` (DER) for `key`; refused when it is for another key
    /// or cannot be read.
    pub fn new(key: AgentKey, certificate: Vec<u8>) -> Result<Self, TlsError> {
        if !key.matches(&certificate) {
            return Err(TlsError::Certificate {
                reason: "the certificate is not for this agent's key".to_owned(),
            });
        }
        let parsed = AgentCertificate::parse(&certificate)?;
        Ok(Self {
            key,
            certificate: CertificateDer::from(certificate),
            parsed,
        })
    }

    /// What the certificate says.
    pub fn certificate(&self) -> &AgentCertificate {
        &self.parsed
    }

    /// The PEM text it is kept as.
    pub fn to_pem(&self) -> String {
        use base64::Engine as _;
        let body = base64::engine::general_purpose::STANDARD.encode(&self.certificate);
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem.push_str(&self.key.to_pem());
        pem
    }

    /// Reads the PEM text [`Self::to_pem`] wrote.
    ///
    /// ```
    /// use std::time::Duration;
    /// use herd_tls::{AgentKey, CertificateAuthority, EnrolledIdentity};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let (ca, _) = CertificateAuthority::load_or_create(dir.path()).unwrap();
    /// let key = AgentKey::generate().unwrap();
    /// let certificate = ca
    ///     .issue_agent(&key.request().unwrap(), "web-1", Duration::from_secs(60))
    ///     .unwrap();
    /// let identity = EnrolledIdentity::new(key, certificate.to_vec()).unwrap();
    /// let again = EnrolledIdentity::from_pem(&identity.to_pem()).unwrap();
    /// assert_eq!(again.certificate(), identity.certificate());
    /// assert_eq!(again.certificate().agent_id, "web-1");
    /// // A certificate for another key is refused.
    /// let other = AgentKey::generate().unwrap();
    /// assert!(EnrolledIdentity::new(other, certificate.to_vec()).is_err());
    /// ```
    pub fn from_pem(pem: &str) -> Result<Self, TlsError> {
        use rustls::pki_types::pem::PemObject as _;
        let certificate = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|error| {
            TlsError::Certificate {
                reason: format!("no certificate in it: {error}"),
            }
        })?;
        let key = AgentKey::from_pem(pem)?;
        Self::new(key, certificate.to_vec())
    }

    /// The chain and key, for `rustls`.
    pub fn identity(&self) -> crate::Identity {
        crate::Identity {
            chain: vec![self.certificate.clone()],
            key: self.key.private_key().into(),
        }
    }
}

impl CertificateAuthority {
    /// A client certificate for `agent_id` on the key of `request` (a DER
    /// certificate signing request, whose signature proves the key), valid
    /// for `valid_for`. Whatever subject the request asks for is ignored.
    pub fn issue_agent(
        &self,
        request: &[u8],
        agent_id: &str,
        valid_for: Duration,
    ) -> Result<CertificateDer<'static>, TlsError> {
        let request = CertificateSigningRequestDer::from(request);
        let mut request = CertificateSigningRequestParams::from_der(&request).map_err(|error| {
            TlsError::Certificate {
                reason: format!("the certificate request is not usable: {error}"),
            }
        })?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, agent_id);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        // Random, and positive as RFC 5280 asks.
        let mut serial = rand::random::<[u8; 16]>();
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + valid_for;
        request.params = params;
        let certificate = request
            .signed_by(self.issuer())
            .map_err(issue("the agent certificate"))?;
        Ok(certificate.der().clone())
    }
}
