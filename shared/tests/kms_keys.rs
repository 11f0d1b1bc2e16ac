//! The KMS adapter of the keys port against moto: the keys conformance suite over the real
//! KMS wire protocol, each test on its own new KMS key, plus failure behaviour.
//!
//! Run with `infra/with-moto.sh cargo test -p hookline-shared --test kms_keys`: without
//! `HOOKLINE_MOTO_ENDPOINT` every test fails, it never skips.

use hookline::ports::keys::aws::KmsKeys;
use hookline::ports::keys::conformance::connection_context;
use hookline::ports::keys::{KeyError, KeyService};
use hookline::ports::secrets::aws::{moto_endpoint, sdk_config_for};
use hookline::secret::Secret;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn client() -> aws_sdk_kms::Client {
    aws_sdk_kms::Client::new(&sdk_config_for(Some(&moto_endpoint())).await)
}

/// A new symmetric KMS key in moto: its ARN and id.
async fn create_key(client: &aws_sdk_kms::Client) -> (String, String) {
    let out = client
        .create_key()
        .description("hookline test: connection secrets")
        .send()
        .await
        .expect("create a KMS key in moto");
    let meta = out
        .key_metadata
        .expect("CreateKey returns the key metadata");
    (meta.arn.expect("the key's ARN"), meta.key_id)
}

async fn fresh_keys() -> ((), Arc<dyn KeyService>) {
    let client = client().await;
    let (arn, _) = create_key(&client).await;
    ((), Arc::new(KmsKeys::new(client, arn)))
}

hookline::keys_conformance!(fresh_keys());

#[tokio::test]
async fn a_sealed_record_names_the_kms_key_by_its_arn() {
    let client = client().await;
    let (arn, id) = create_key(&client).await;
    let ctx = connection_context("org_1", "rpc_abc");
    // Configured by bare key id, the record still names the ARN KMS answered with.
    let keys = KmsKeys::new(client.clone(), id);
    let sealed = keys.seal(&Secret::new("s3cret"), &ctx).await.unwrap();
    assert_eq!(sealed.key_id, arn);
    assert_eq!(keys.open(&sealed, &ctx).await.unwrap().expose(), "s3cret");
    // And a service configured by ARN opens it too.
    let by_arn = KmsKeys::new(client, arn);
    assert_eq!(by_arn.open(&sealed, &ctx).await.unwrap().expose(), "s3cret");
}

#[tokio::test]
async fn a_key_configured_by_alias_seals_and_opens() {
    let client = client().await;
    let (arn, id) = create_key(&client).await;
    let alias = format!("alias/hookline-test-{}", uuid::Uuid::new_v4());
    client
        .create_alias()
        .alias_name(&alias)
        .target_key_id(id)
        .send()
        .await
        .expect("create an alias in moto");
    let keys = KmsKeys::new(client, alias);
    let ctx = connection_context("org_1", "rpc_abc");
    let sealed = keys.seal(&Secret::new("s3cret"), &ctx).await.unwrap();
    assert_eq!(sealed.key_id, arn);
    assert_eq!(keys.open(&sealed, &ctx).await.unwrap().expose(), "s3cret");
    assert!(matches!(
        keys.open(&sealed, &connection_context("org_1", "rpc_other"))
            .await,
        Err(KeyError::Rejected)
    ));
}

#[tokio::test]
async fn another_keys_record_relabelled_with_our_key_arn_is_refused() {
    let client = client().await;
    let (ours, _) = create_key(&client).await;
    let (theirs, _) = create_key(&client).await;
    let ctx = connection_context("org_1", "rpc_abc");
    let keys = KmsKeys::new(client.clone(), &ours);
    let mut relabelled = KmsKeys::new(client, theirs)
        .seal(&Secret::new("s3cret"), &ctx)
        .await
        .unwrap();
    relabelled.key_id = ours;
    // KMS answers a Decrypt whose KeyId is not the blob's key with IncorrectKeyException
    // (Rejected); moto answers AccessDeniedException, which reads as a permission problem
    // (Unavailable). Either way the secret does not open.
    match keys.open(&relabelled, &ctx).await {
        Err(KeyError::Rejected) => {}
        Err(KeyError::Unavailable(message)) => {
            assert!(message.contains("AccessDeniedException"), "{message}")
        }
        Ok(_) => panic!("another key's record opened"),
    }
}

#[tokio::test]
async fn a_missing_key_is_unavailable_not_rejected() {
    let client = client().await;
    let (arn, _) = create_key(&client).await;
    let missing = arn.replace(
        &arn[arn.len() - 12..],
        "000000000000", // same shape, a key that does not exist
    );
    let keys = KmsKeys::new(client, missing);
    let ctx = connection_context("org_1", "rpc_abc");
    match keys.seal(&Secret::new("s3cret"), &ctx).await {
        Err(err @ KeyError::Unavailable(_)) => {
            let shown = err.to_string();
            assert!(shown.contains("GenerateDataKey"), "{shown}");
            assert!(!shown.contains("s3cret"), "{shown}");
        }
        other => panic!("expected Unavailable, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn an_unreachable_kms_fails_fast_as_unavailable() {
    // Nothing listens on the discard port; moto_endpoint() is still required so that this
    // suite never half-runs without moto.
    let _ = moto_endpoint();
    let config = sdk_config_for(Some("http://127.0.0.1:9")).await;
    let keys = KmsKeys::new(
        aws_sdk_kms::Client::new(&config),
        "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    );
    let ctx = connection_context("org_1", "rpc_abc");
    let started = Instant::now();
    let result = keys.seal(&Secret::new("s3cret"), &ctx).await;
    assert!(
        matches!(result, Err(KeyError::Unavailable(_))),
        "{:?}",
        result.map(|_| ())
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
