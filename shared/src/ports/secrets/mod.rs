//! Provider secrets: from Secrets Manager on AWS (fetched once per cold start), from the
//! environment or a `.env` file locally.

use crate::providers::ProviderSecrets;
use async_trait::async_trait;

pub mod aws;
pub mod conformance;
pub mod env;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secrets unavailable: {0}")]
    Unavailable(String),
    #[error("secret {0} is not a JSON object of NAME: value strings")]
    Malformed(String),
}

#[async_trait]
pub trait SecretSource: Send + Sync + 'static {
    async fn load(&self) -> Result<ProviderSecrets, SecretsError>;
}
