//! The agent link's TLS: the CA, the hub's certificate, and the acceptor
//! every Connection hands its socket to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use herd_tls::{CertificateAuthority, Fingerprint, Identity};
use tokio_rustls::TlsAcceptor;

use crate::HubError;
use crate::config::{AgentAuth, HubConfig};

/// The directory of `state_dir` the hub keeps its own CA in.
pub const TLS_DIR: &str = "tls";

/// The first byte of every TLS record a client sends first (a handshake).
pub(crate) const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The certificates in use, replaced whole by a reload.
pub(crate) struct TlsMaterial {
    pub(crate) acceptor: TlsAcceptor,
    /// The CA agents trust, by its fingerprint; `None` when an operator's
    /// chain holds no CA.
    pub(crate) ca_fingerprint: Option<Fingerprint>,
    /// The CA that issues agent certificates, when agents are identified by
    /// them (`tls.agent_auth = "certificate"`).
    pub(crate) agent_ca: Option<Arc<CertificateAuthority>>,
}

/// What Connections need to speak TLS: the material in use now. A reload
/// swaps it; a handshake takes what is current when it starts, so sessions
/// that are up keep theirs.
#[derive(Clone)]
pub(crate) struct AgentTls {
    current: Arc<RwLock<Arc<TlsMaterial>>>,
}

impl std::fmt::Debug for AgentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTls")
            .field("ca_fingerprint", &self.now().ca_fingerprint)
            .finish_non_exhaustive()
    }
}

impl AgentTls {
    /// The material in use now.
    pub(crate) fn now(&self) -> Arc<TlsMaterial> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the certificates and keys again (the operator's files, or the
    /// hub's own CA with a freshly issued server certificate) and uses them
    /// for every handshake from now on. On an error nothing changes.
    pub(crate) fn reload(&self, config: &HubConfig) -> Result<(), HubError> {
        let material = Arc::new(material(config)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = material;
        tracing::info!("agent link TLS reloaded");
        Ok(())
    }
}

/// TLS as `config.tls` asks: `None` with `insecure = true` (and a WARN),
/// otherwise the acceptor with the operator's or the hub's own certificates.
pub(crate) fn prepare(config: &HubConfig) -> Result<Option<AgentTls>, HubError> {
    if config.tls.insecure {
        tracing::warn!(
            "agent link is PLAINTEXT (tls.insecure = true): anyone on the network can read \
             the records and speak for any agent"
        );
        return Ok(None);
    }
    if config.agent_auth() == AgentAuth::Certificate {
        tracing::info!(
            "agents are identified by the certificates this hub issues them at enrollment \
             (tokens from `herd-hub token create`)"
        );
    } else {
        tracing::warn!(
            "agents are identified by fleet token and the id they declare \
             (tls.agent_auth = \"token\"): any token holder can speak for any agent"
        );
    }
    Ok(Some(AgentTls {
        current: Arc::new(RwLock::new(Arc::new(material(config)?))),
    }))
}

fn material(config: &HubConfig) -> Result<TlsMaterial, HubError> {
    let tls = &config.tls;
    let certificates = config.agent_auth() == AgentAuth::Certificate;
    let (identity, ca_fingerprint, ca) = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let identity = Identity::from_pem_files(cert, key)?;
            // Past the end entity, the last certificate is the closest to the root.
            let ca_fingerprint = identity
                .chain
                .get(1..)
                .and_then(<[_]>::last)
                .map(|der| Fingerprint::of(der));
            match ca_fingerprint {
                Some(fingerprint) => {
                    tracing::info!(cert = %cert.display(), ca_fingerprint = %fingerprint,
                    "agent link: TLS with the operator's certificate; agents trust it by tls.ca_fingerprint or tls.ca_file")
                }
                None => tracing::info!(cert = %cert.display(),
                    "agent link: TLS with the operator's certificate, no CA in its chain; agents trust it by tls.ca_file"),
            }
            let ca = match (&tls.ca_cert, &tls.ca_key) {
                (Some(ca_cert), Some(ca_key)) => {
                    Some(CertificateAuthority::from_pem_files(ca_cert, ca_key)?)
                }
                _ => None,
            };
            (identity, ca_fingerprint, ca)
        }
        _ => {
            let (ca, ca_file) = authority(config)?;
            let names = if tls.names.is_empty() {
                default_names(config.listen)
            } else {
                tls.names.clone()
            };
            let identity = ca.issue_server(&names)?;
            tracing::info!(
                ca_fingerprint = %ca.fingerprint(),
                ca = %ca_file.display(),
                names = ?names,
                "agent link: TLS; agents trust the hub by this CA fingerprint (tls.ca_fingerprint in herd-agent.toml)"
            );
            (identity, Some(ca.fingerprint()), Some(ca))
        }
    };
    // Validation made sure there is a CA when agents need one.
    let agent_ca = ca.filter(|_| certificates).map(Arc::new);
    let client_cas: Vec<_> = agent_ca.iter().map(|ca| ca.certificate().clone()).collect();
    let acceptor = TlsAcceptor::from(herd_tls::server_config_with_client_auth(
        identity,
        &client_cas,
    )?);
    Ok(TlsMaterial {
        acceptor,
        ca_fingerprint,
        agent_ca,
    })
}

/// The operator's CA, or the hub's own (created on first start), and the
/// file its certificate is in.
fn authority(config: &HubConfig) -> Result<(CertificateAuthority, PathBuf), HubError> {
    let tls = &config.tls;
    if let (Some(cert), Some(key)) = (&tls.ca_cert, &tls.ca_key) {
        return Ok((
            CertificateAuthority::from_pem_files(cert, key)?,
            cert.clone(),
        ));
    }
    let dir = config.state_dir.join(TLS_DIR);
    let (ca, created) = CertificateAuthority::load_or_create(&dir)?;
    if created {
        tracing::info!(dir = %dir.display(), "created the hub's CA (key readable by this user only)");
    }
    Ok((ca, dir.join(herd_tls::CA_CERT_FILE)))
}

/// The names a self-issued certificate covers when none are configured.
fn default_names(listen: SocketAddr) -> Vec<String> {
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(str::to_owned).into();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let hostname = hostname.trim();
    // A host name that is no DNS name (an underscore, say) cannot be dialled by it.
    if !hostname.is_empty()
        && rustls::pki_types::DnsName::try_from(hostname).is_ok()
        && !names.iter().any(|name| name == hostname)
    {
        names.push(hostname.to_owned());
    }
    let ip = listen.ip().to_string();
    if !listen.ip().is_unspecified() && !names.contains(&ip) {
        names.push(ip);
    }
    names
}
