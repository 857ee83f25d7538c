//! The admin token: the bearer secret the admin HTTP server asks of every
//! request that changes state.

use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

use crate::HubError;
use crate::config::HubConfig;

/// The file of `state_dir` the hub keeps its admin token in when
/// `admin_token_file` is not set.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Random bytes in a generated token (hex encoded in the file).
const TOKEN_BYTES: usize = 32;

/// The secret a mutating admin request must present.
#[derive(Clone)]
pub(crate) struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// The token of `config`: read from `admin_token_file`, or from
    /// `<state_dir>/admin.token`, which is created on first start. Logs
    /// where it is, never what it is.
    pub(crate) fn load_or_create(config: &HubConfig) -> Result<Self, HubError> {
        match &config.admin_token_file {
            Some(path) => {
                let token = read(path)?;
                tracing::info!(path = %path.display(), "admin token read from admin_token_file");
                Ok(token)
            }
            None => {
                let path = config.state_dir.join(ADMIN_TOKEN_FILE);
                if path.exists() {
                    let token = read(&path)?;
                    tracing::info!(path = %path.display(), "admin token read");
                    return Ok(token);
                }
                let token = create(&path)?;
                tracing::info!(path = %path.display(), "admin token created");
                Ok(token)
            }
        }
    }

    /// Whether `presented` is this token, in time independent of where
    /// they differ.
    pub(crate) fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

fn read(path: &Path) -> Result<AdminToken, HubError> {
    let text = std::fs::read_to_string(path).map_err(|source| HubError::AdminTokenFile {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(HubError::EmptyAdminToken {
            path: path.to_owned(),
        });
    }
    Ok(AdminToken(token.to_owned()))
}

fn create(path: &Path) -> Result<AdminToken, HubError> {
    let write_error = |source| HubError::AdminTokenFile {
        action: "write",
        path: PathBuf::from(path),
        source,
    };
    // The state directory keeps the mode it has (or gets the default one):
    // the file's own 0600 is what guards the token.
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(write_error)?;
    }
    let token: String = rand::random::<[u8; TOKEN_BYTES]>()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    herd_tls::write_file_atomically(path, format!("{token}\n").as_bytes(), 0o600)
        .map_err(write_error)?;
    Ok(AdminToken(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(state_dir: &Path) -> HubConfig {
        HubConfig {
            state_dir: state_dir.to_owned(),
            ..HubConfig::default()
        }
    }

    #[test]
    fn a_generated_token_is_kept_0600_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let state = tempfile::tempdir().unwrap();
        let first = AdminToken::load_or_create(&config(state.path())).unwrap();
        let path = state.path().join(ADMIN_TOKEN_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 2 * TOKEN_BYTES);
        assert!(first.matches(text.trim()));
        let second = AdminToken::load_or_create(&config(state.path())).unwrap();
        assert!(second.matches(text.trim()));
    }

    #[test]
    fn a_configured_file_is_trimmed_and_must_not_be_empty() {
        let state = tempfile::tempdir().unwrap();
        let file = state.path().join("given");
        std::fs::write(&file, "  s3cret \n").unwrap();
        let configured = HubConfig {
            admin_token_file: Some(file.clone()),
            ..config(state.path())
        };
        let token = AdminToken::load_or_create(&configured).unwrap();
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cret "));
        assert!(!token.matches(""));
        assert!(!state.path().join(ADMIN_TOKEN_FILE).exists());

        std::fs::write(&file, "\n").unwrap();
        let error = AdminToken::load_or_create(&configured).unwrap_err();
        assert!(error.to_string().contains(&format!("{file:?}")), "{error}");
        let missing = HubConfig {
            admin_token_file: Some(state.path().join("missing")),
            ..config(state.path())
        };
        let error = AdminToken::load_or_create(&missing).unwrap_err();
        assert!(error.to_string().contains("missing"), "{error}");
    }
}
