//! Provider secrets from the process environment, falling back to a `.env` file (local runs).
//! The environment wins, so `FOO=x hookline serve` overrides the file.

use super::{SecretSource, SecretsError};
use crate::providers::ProviderSecrets;
use async_trait::async_trait;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Default)]
pub struct EnvSecrets {
    dotenv: Option<PathBuf>,
    /// Values that stand in for the process environment (tests); `None` reads the real one.
    env: Option<HashMap<String, String>>,
}

impl EnvSecrets {
    /// The process environment, then `dotenv` if given and present.
    pub fn new(dotenv: Option<PathBuf>) -> Self {
        Self { dotenv, env: None }
    }

    /// Fixed values instead of the process environment.
    pub fn from_map(env: HashMap<String, String>, dotenv: Option<PathBuf>) -> Self {
        Self {
            dotenv,
            env: Some(env),
        }
    }
}

#[async_trait]
impl SecretSource for EnvSecrets {
    async fn load(&self) -> Result<ProviderSecrets, SecretsError> {
        let mut file = HashMap::new();
        if let Some(path) = self.dotenv.as_ref().filter(|p| p.exists()) {
            let entries = dotenvy::from_path_iter(path)
                .map_err(|e| SecretsError::Unavailable(format!("{}: {e}", path.display())))?;
            for entry in entries {
                let (k, v) =
                    entry.map_err(|_| SecretsError::Malformed(path.display().to_string()))?;
                file.insert(k, v);
            }
        }
        Ok(ProviderSecrets::from_lookup(|name| {
            let from_env = match &self.env {
                Some(map) => map.get(name).cloned(),
                None => std::env::var(name).ok(),
            };
            from_env.or_else(|| file.get(name).cloned())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::secrets::conformance::{every_named_secret_is_loaded, fixture_value, UNSET};

    #[tokio::test]
    async fn env_secrets_pass_the_conformance_suite_from_a_dotenv_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        let mut text = String::new();
        for name in ProviderSecrets::NAMES {
            let value = if name == UNSET {
                String::new()
            } else {
                fixture_value(name)
            };
            text.push_str(&format!("{name}=\"{value}\"\n"));
        }
        std::fs::write(&path, text).unwrap();
        every_named_secret_is_loaded(&EnvSecrets::from_map(HashMap::new(), Some(path))).await;
    }

    #[tokio::test]
    async fn the_environment_overrides_the_dotenv_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(
            &path,
            "GITHUB_WEBHOOK_SECRET=from-file\nJIRA_WEBHOOK_SECRET=jira\n",
        )
        .unwrap();
        let env = HashMap::from([("GITHUB_WEBHOOK_SECRET".to_string(), "from-env".to_string())]);
        let s = EnvSecrets::from_map(env, Some(path)).load().await.unwrap();
        assert_eq!(s.github_webhook_secret.unwrap().expose(), "from-env");
        assert_eq!(s.jira_webhook_secret.unwrap().expose(), "jira");
        assert!(s.stripe_webhook_secret.is_none());
    }
}
