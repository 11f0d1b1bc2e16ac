//! The AWS adapter of [`KeyService`]: a data key per seal from KMS `GenerateDataKey`
//! (AES_256), unwrapped with `Decrypt`; both under the encryption context and pinned to the
//! configured key.

use super::{data_key_from, seal_with, EncryptionContext, Envelope, KeyError, KeyService, Sealed};
use crate::ports::store::aws::error_chain;
use crate::secret::Secret;
use async_trait::async_trait;
use aws_sdk_kms::operation::decrypt::DecryptError;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, EncryptionAlgorithmSpec};
use std::collections::HashMap;

/// Envelope encryption under one KMS key (its ARN, id or alias; the ARN is best: it lets
/// `open` refuse another key's records without asking KMS).
#[derive(Debug, Clone)]
pub struct KmsKeys {
    client: aws_sdk_kms::Client,
    key_id: String,
}

impl KmsKeys {
    pub fn new(client: aws_sdk_kms::Client, key_id: impl Into<String>) -> Self {
        Self {
            client,
            key_id: key_id.into(),
        }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Whether `sealed_key` (a key ARN from a record) is certainly not the configured key.
    /// An alias can only be resolved by KMS, which then answers `IncorrectKeyException`.
    fn is_another_key(&self, sealed_key: &str) -> bool {
        let configured = self.key_id.as_str();
        if configured.starts_with("alias/") || configured.contains(":alias/") {
            false
        } else if configured.starts_with("arn:") {
            sealed_key != configured
        } else {
            !sealed_key
                .strip_suffix(configured)
                .is_some_and(|prefix| prefix.ends_with(":key/"))
        }
    }
}

fn kms_context(context: &EncryptionContext) -> HashMap<String, String> {
    context
        .as_map()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[async_trait]
impl KeyService for KmsKeys {
    async fn seal(
        &self,
        plaintext: &Secret,
        context: &EncryptionContext,
    ) -> Result<Sealed, KeyError> {
        let mut out = self
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(kms_context(context)))
            .send()
            .await
            .map_err(|e| {
                KeyError::Unavailable(format!(
                    "KMS GenerateDataKey with key {}: {}",
                    self.key_id,
                    error_chain(&e)
                ))
            })?;
        let incomplete = |what: &str| {
            KeyError::Unavailable(format!(
                "KMS GenerateDataKey with key {} answered without {what}",
                self.key_id
            ))
        };
        let data_key = out
            .plaintext
            .take()
            .and_then(|blob| data_key_from(blob.into_inner()))
            .ok_or_else(|| incomplete("a 256-bit plaintext data key"))?;
        let encrypted_data_key = out
            .ciphertext_blob
            .take()
            .ok_or_else(|| incomplete("the encrypted data key"))?;
        let key_arn = out.key_id.take().unwrap_or_else(|| self.key_id.clone());
        seal_with(
            &data_key,
            encrypted_data_key.as_ref(),
            key_arn,
            plaintext,
            context,
        )
    }

    async fn open(&self, sealed: &Sealed, context: &EncryptionContext) -> Result<Secret, KeyError> {
        let envelope = Envelope::decode(sealed)?;
        if self.is_another_key(&sealed.key_id) {
            return Err(KeyError::Rejected);
        }
        let mut out = self
            .client
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(Blob::new(envelope.encrypted_data_key.clone()))
            .encryption_algorithm(EncryptionAlgorithmSpec::SymmetricDefault)
            .set_encryption_context(Some(kms_context(context)))
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(
                    DecryptError::InvalidCiphertextException(_)
                    | DecryptError::IncorrectKeyException(_)
                    | DecryptError::InvalidKeyUsageException(_),
                ) => KeyError::Rejected,
                _ => KeyError::Unavailable(format!(
                    "KMS Decrypt with key {}: {}",
                    self.key_id,
                    error_chain(&e)
                )),
            })?;
        // The record names the key that sealed it; KMS names the key that opened it.
        if out.key_id.as_deref().is_some_and(|id| id != sealed.key_id) {
            return Err(KeyError::Rejected);
        }
        let data_key = out
            .plaintext
            .take()
            .and_then(|blob| data_key_from(blob.into_inner()))
            .ok_or(KeyError::Rejected)?;
        envelope.open_with(&data_key, context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn keys(key_id: &str) -> KmsKeys {
        let config = crate::ports::secrets::aws::sdk_config_for(Some("http://127.0.0.1:9")).await;
        KmsKeys::new(aws_sdk_kms::Client::new(&config), key_id)
    }

    #[tokio::test]
    async fn a_record_of_another_key_is_refused_before_asking_kms() {
        let arn = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let other = "arn:aws:kms:us-east-1:123456789012:key/ffffffff-12ab-34cd-56ef-1234567890ab";
        let by_arn = keys(arn).await;
        let by_id = keys("1234abcd-12ab-34cd-56ef-1234567890ab").await;
        let by_alias = keys("alias/hookline").await;
        for k in [&by_arn, &by_id] {
            assert!(!k.is_another_key(arn));
            assert!(k.is_another_key(other));
            assert!(k.is_another_key("local:0011223344556677"));
            assert!(k.is_another_key(""));
        }
        assert!(
            !by_alias.is_another_key(other),
            "only KMS resolves an alias"
        );
    }
}
