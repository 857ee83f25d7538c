//! The agent's state directory: its id, its spool and the plugins'
//! persistent directories.
//!
//! ```text
//! <state_dir>/agent_id          the id the hub assigned (or the operator chose)
//! <state_dir>/identity.pem      the certificate the hub issued at enrollment and
//!                               the agent's own key (0600)
//! <state_dir>/spool/            the disk spool: segments and the ledger (seqs, acks, drops)
//! <state_dir>/plugins/<name>/   HERD_PLUGIN_STATE_DIR of each plugin
//! ```
//!
//! Files are replaced atomically (written to a temporary file in the same
//! directory, then renamed), so a crash leaves either the old or the new
//! content, never a torn one.

use std::io::Write;
use std::path::{Path, PathBuf};

use herd_tls::EnrolledIdentity;

use crate::error::StateError;

const AGENT_ID_FILE: &str = "agent_id";
const IDENTITY_FILE: &str = "identity.pem";
const SPOOL_DIR: &str = "spool";
const PLUGINS_DIR: &str = "plugins";

/// Handle on the agent's state directory.
#[derive(Debug, Clone)]
pub(crate) struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating it if needed) the state directory at `root`.
    pub(crate) fn open(root: impl Into<PathBuf>) -> Result<Self, StateError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| StateError::Io {
            path: root.clone(),
            source,
        })?;
        Ok(Self { root })
    }

    /// The persisted agent id, if there is one.
    pub(crate) fn load_agent_id(&self) -> Result<Option<String>, StateError> {
        let path = self.root.join(AGENT_ID_FILE);
        let Some(text) = read_optional(&path)? else {
            return Ok(None);
        };
        let id = text.trim();
        if herd_codec::validate_agent_id(id).is_err() {
            return Err(corrupt(path, id, "an agent id ([A-Za-z0-9_-], 1-128)"));
        }
        Ok(Some(id.to_owned()))
    }

    /// Persists the agent id atomically.
    pub(crate) fn store_agent_id(&self, agent_id: &str) -> Result<(), StateError> {
        self.write_atomic(AGENT_ID_FILE, format!("{agent_id}\n").as_bytes())
    }

    /// The enrolled identity, if the agent has one.
    pub(crate) fn load_identity(&self) -> Result<Option<EnrolledIdentity>, StateError> {
        let path = self.root.join(IDENTITY_FILE);
        let Some(text) = read_optional(&path)? else {
            return Ok(None);
        };
        EnrolledIdentity::from_pem(&text)
            .map(Some)
            .map_err(|error| StateError::Identity {
                path,
                reason: error.to_string(),
            })
    }

    /// Moves an unusable identity file aside (`identity.pem.unusable`), so
    /// it is kept for a look but no longer read; returns where it went.
    pub(crate) fn set_identity_aside(&self) -> Option<PathBuf> {
        let aside = self.root.join(format!("{IDENTITY_FILE}.unusable"));
        std::fs::rename(self.root.join(IDENTITY_FILE), &aside)
            .ok()
            .map(|()| aside)
    }

    /// Persists the enrolled identity atomically, readable by this user only
    /// (the temporary file is created 0600 and renamed into place).
    pub(crate) fn store_identity(&self, identity: &EnrolledIdentity) -> Result<(), StateError> {
        self.write_atomic(IDENTITY_FILE, identity.to_pem().as_bytes())
    }

    /// The spool's directory (the spool creates it).
    pub(crate) fn spool_dir(&self) -> PathBuf {
        self.root.join(SPOOL_DIR)
    }

    /// Creates (if needed) and returns the persistent directory of a plugin.
    pub(crate) fn plugin_dir(&self, name: &str) -> Result<PathBuf, StateError> {
        let dir = self.root.join(PLUGINS_DIR).join(name);
        std::fs::create_dir_all(&dir).map_err(|source| StateError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(dir)
    }

    fn write_atomic(&self, name: &str, content: &[u8]) -> Result<(), StateError> {
        let path = self.root.join(name);
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let mut file = tempfile::NamedTempFile::new_in(&self.root).map_err(io)?;
        file.write_all(content).map_err(io)?;
        file.persist(&path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, StateError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn corrupt(path: PathBuf, content: &str, expected: &'static str) -> StateError {
    StateError::Corrupt {
        path,
        content: content.chars().take(64).collect(),
        expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_id_round_trips_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path().join("nested")).unwrap();
        assert_eq!(state.load_agent_id().unwrap(), None);
        state.store_agent_id("agent-1").unwrap();
        state.store_agent_id("agent-2").unwrap();
        let reopened = StateDir::open(dir.path().join("nested")).unwrap();
        assert_eq!(
            reopened.load_agent_id().unwrap().as_deref(),
            Some("agent-2")
        );
    }

    #[test]
    fn a_corrupt_id_file_is_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        std::fs::write(dir.path().join(AGENT_ID_FILE), "bad id").unwrap();
        assert!(matches!(
            state.load_agent_id(),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn the_identity_is_kept_private_and_an_unusable_one_is_set_aside() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert!(state.load_identity().unwrap().is_none());
        let (ca, _) =
            herd_tls::CertificateAuthority::load_or_create(&dir.path().join("ca")).unwrap();
        let key = herd_tls::AgentKey::generate().unwrap();
        let certificate = ca
            .issue_agent(
                &key.request().unwrap(),
                "web-1",
                std::time::Duration::from_secs(60),
            )
            .unwrap();
        let identity = EnrolledIdentity::new(key, certificate.to_vec()).unwrap();
        state.store_identity(&identity).unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = state.load_identity().unwrap().expect("an identity");
        assert_eq!(loaded.certificate(), identity.certificate());

        std::fs::write(&path, "not a certificate").unwrap();
        assert!(matches!(
            state.load_identity(),
            Err(StateError::Identity { .. })
        ));
        let aside = state.set_identity_aside().expect("moved aside");
        assert_eq!(std::fs::read_to_string(aside).unwrap(), "not a certificate");
        assert!(state.load_identity().unwrap().is_none());
    }

    #[test]
    fn plugin_dirs_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let plugin = state.plugin_dir("logtail").unwrap();
        assert!(plugin.is_dir());
        assert!(plugin.ends_with("plugins/logtail"));
    }
}
