//! Provider secrets from one Secrets Manager secret, a JSON object of `NAME: value` strings,
//! fetched once per cold start. Also the one place SDK configs are built.

use super::{SecretSource, SecretsError};
use crate::ports::store::aws::error_chain;
use crate::providers::ProviderSecrets;
use async_trait::async_trait;
use aws_config::environment::region::EnvironmentVariableRegionProvider;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use std::collections::HashMap;
use std::time::Duration;

/// The region used against a local endpoint when none is configured.
pub const LOCAL_REGION: &str = "us-east-1";

/// The moto server's endpoint that `infra/with-moto.sh` (and so the test command) exports as
/// `HOOKLINE_MOTO_ENDPOINT`, for the suites that run the AWS adapters against moto. Without it
/// they fail, loudly, saying how to run them: a missing moto is never a silent skip.
pub fn moto_endpoint() -> String {
    match std::env::var("HOOKLINE_MOTO_ENDPOINT") {
        Ok(endpoint) if !endpoint.trim().is_empty() => endpoint,
        _ => panic!(
            "HOOKLINE_MOTO_ENDPOINT is not set: the tests on moto need a moto server. Run them \
             with infra/test.sh, or with infra/with-moto.sh cargo test ... (it starts moto and \
             exports the endpoint)"
        ),
    }
}

/// The SDK config every function and tool builds its clients from.
///
/// `None`: the AWS defaults (region and credentials from the environment, the Lambda role),
/// with a connect timeout, so a black-holed connection fails in seconds, not minutes.
///
/// `Some(endpoint)`: every client talks to that endpoint (moto on loopback, in tests and
/// local runs). The region falls back to [`LOCAL_REGION`], credentials to static test ones
/// unless `AWS_ACCESS_KEY_ID` or `AWS_PROFILE` is set, and calls fail fast: a 1 s connect
/// timeout, 2 attempts with a 50 ms backoff, 25 s per attempt (above SQS's 20 s long poll).
/// So a store or queue that is down answers `Unavailable` well within a second or two.
pub async fn sdk_config_for(endpoint: Option<&str>) -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    // One HTTP client (and connection pool) for every service client of this config: hyper 1
    // and rustls on ring. The SDK's default would add a second TLS stack (aws-lc) to every
    // binary; the root certificates are the system's, read once per process.
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
    let Some(endpoint) = endpoint else {
        return loader
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .build(),
            )
            .load()
            .await;
    };
    let mut loader = loader
        .endpoint_url(endpoint)
        // The environment's region, else LOCAL_REGION; never IMDS, which a local endpoint has no
        // use for (and which, built standalone, would have no HTTP client of ours).
        .region(
            RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
                .or_else(Region::new(LOCAL_REGION)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(1))
                .operation_attempt_timeout(Duration::from_secs(25))
                .build(),
        )
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(2)
                .with_initial_backoff(Duration::from_millis(50))
                .with_max_backoff(Duration::from_millis(200)),
        );
    let has_credentials = ["AWS_ACCESS_KEY_ID", "AWS_PROFILE"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
    if !has_credentials {
        loader = loader.test_credentials();
    }
    loader.load().await
}

/// The AWS adapter of [`SecretSource`].
#[derive(Debug, Clone)]
pub struct SecretsManagerSource {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
}

impl SecretsManagerSource {
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: impl Into<String>) -> Self {
        Self {
            client,
            secret_id: secret_id.into(),
        }
    }

    /// The secret's `NAME: value` strings, with one `GetSecretValue`. Never logged.
    pub async fn values(&self) -> Result<HashMap<String, String>, SecretsError> {
        let out = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .map_err(|e| {
                SecretsError::Unavailable(format!(
                    "Secrets Manager GetSecretValue {}: {}",
                    self.secret_id,
                    error_chain(&e)
                ))
            })?;
        let malformed = || SecretsError::Malformed(self.secret_id.clone());
        let text = out.secret_string().ok_or_else(malformed)?;
        // Parse into strings only: a number, a nested object or anything else is malformed,
        // and serde's message (which may quote the content) is dropped.
        serde_json::from_str(text).map_err(|_| malformed())
    }
}

#[async_trait]
impl SecretSource for SecretsManagerSource {
    async fn load(&self) -> Result<ProviderSecrets, SecretsError> {
        let values = self.values().await?;
        Ok(ProviderSecrets::from_lookup(|name| {
            values.get(name).cloned()
        }))
    }
}
