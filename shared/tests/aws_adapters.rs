//! The AWS adapters against moto: the store, queue and secrets conformance suites over the
//! real AWS wire protocol, plus failure behaviour (fail fast when the service is down, never
//! echo a secret).
//!
//! Run with `infra/test.sh`, or `infra/with-moto.sh cargo test -p hookline-shared --test
//! aws_adapters`: without `HOOKLINE_MOTO_ENDPOINT` every test fails, it never skips.

use hookline::ports::queue::aws::{create_queue_pair, SqsQueue};
use hookline::ports::queue::conformance::SETTINGS;
use hookline::ports::queue::{Queue, QueueError};
use hookline::ports::secrets::aws::{moto_endpoint, sdk_config_for, SecretsManagerSource};
use hookline::ports::secrets::conformance::{every_named_secret_is_loaded, fixture_value, UNSET};
use hookline::ports::secrets::{SecretSource, SecretsError};
use hookline::ports::store::aws::{create_table, DynamoStore};
use hookline::ports::store::{DeliveryStore, StoreError};
use hookline::providers::ProviderSecrets;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn config() -> aws_config::SdkConfig {
    sdk_config_for(Some(&moto_endpoint())).await
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

async fn fresh_store() -> ((), Arc<dyn DeliveryStore>) {
    let client = aws_sdk_dynamodb::Client::new(&config().await);
    let table = unique("hookline-test");
    create_table(&client, &table)
        .await
        .expect("create the test table in moto");
    ((), Arc::new(DynamoStore::new(client, table)))
}

async fn fresh_queue() -> ((), Arc<dyn Queue>) {
    let client = aws_sdk_sqs::Client::new(&config().await);
    let (url, dlq_url) = create_queue_pair(
        &client,
        &unique("hookline-test"),
        SETTINGS.visibility_timeout,
        SETTINGS.max_receive_count,
    )
    .await
    .expect("create the test queues in moto");
    ((), Arc::new(SqsQueue::new(client, url, dlq_url)))
}

hookline::store_conformance!(fresh_store());
hookline::queue_conformance!(fresh_queue());

/// A secret in moto holding `value`, and a source reading it.
async fn secret_holding(value: &str) -> (String, SecretsManagerSource) {
    let client = aws_sdk_secretsmanager::Client::new(&config().await);
    let id = unique("hookline-test/provider-secrets");
    client
        .create_secret()
        .name(&id)
        .secret_string(value)
        .send()
        .await
        .expect("create the test secret in moto");
    (id.clone(), SecretsManagerSource::new(client, id))
}

#[tokio::test]
async fn secrets_every_named_secret_is_loaded() {
    let fixture: serde_json::Map<String, serde_json::Value> = ProviderSecrets::NAMES
        .iter()
        .map(|&name| {
            let value = if name == UNSET {
                String::new()
            } else {
                fixture_value(name)
            };
            (name.to_owned(), value.into())
        })
        .collect();
    let (_, source) = secret_holding(&serde_json::Value::Object(fixture).to_string()).await;
    every_named_secret_is_loaded(&source).await;
}

#[tokio::test]
async fn secrets_a_malformed_secret_is_refused_without_echoing_it() {
    for content in [
        r#"{"GITHUB_WEBHOOK_SECRET": 12345, "TWILIO_AUTH_TOKEN": "hunter2-leak"}"#,
        r#"{"GITHUB_WEBHOOK_SECRET": {"nested": "hunter2-leak"}}"#,
        r#"["hunter2-leak"]"#,
        "hunter2-leak",
    ] {
        let (id, source) = secret_holding(content).await;
        match source.load().await {
            Err(err @ SecretsError::Malformed(_)) => {
                let shown = format!("{err} {err:?}");
                assert!(shown.contains(&id), "the error names the secret: {shown}");
                assert!(
                    !shown.contains("hunter2"),
                    "the error echoes the secret: {shown}"
                );
                assert!(
                    !shown.contains("12345"),
                    "the error echoes the secret: {shown}"
                );
            }
            other => panic!(
                "expected Malformed for {content:?}, got {:?}",
                other.map(|_| ())
            ),
        }
    }
}

#[tokio::test]
async fn secrets_a_missing_secret_is_unavailable() {
    let client = aws_sdk_secretsmanager::Client::new(&config().await);
    let source = SecretsManagerSource::new(client, unique("hookline-test/absent"));
    assert!(matches!(
        source.load().await,
        Err(SecretsError::Unavailable(_))
    ));
}

/// An endpoint on loopback that refuses connections: a port that was just free.
fn closed_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

const FAIL_FAST: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_store_that_is_down_is_unavailable_at_once() {
    moto_endpoint();
    let config = sdk_config_for(Some(&closed_endpoint())).await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&config), "hookline-down");
    let new = hookline::ports::store::conformance::new_delivery(
        hookline::model::Source::Github,
        "down",
        chrono::Utc::now(),
    );
    let started = Instant::now();
    let err = store.record(&new).await.expect_err("nothing listens there");
    let took = started.elapsed();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(took < FAIL_FAST, "took {took:?}: {err}");
    let started = Instant::now();
    assert!(matches!(
        store.get(&new.key).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(started.elapsed() < FAIL_FAST);
}

#[tokio::test]
async fn a_queue_that_is_down_is_unavailable_at_once() {
    moto_endpoint();
    let endpoint = closed_endpoint();
    let config = sdk_config_for(Some(&endpoint)).await;
    let queue = SqsQueue::new(
        aws_sdk_sqs::Client::new(&config),
        format!("{endpoint}/000000000000/down"),
        format!("{endpoint}/000000000000/down-dlq"),
    );
    let started = Instant::now();
    let err = queue
        .send("hello", Duration::ZERO)
        .await
        .expect_err("nothing listens there");
    let took = started.elapsed();
    assert!(matches!(err, QueueError::Unavailable(_)), "{err:?}");
    assert!(took < FAIL_FAST, "took {took:?}: {err}");
    let started = Instant::now();
    assert!(matches!(
        queue.receive(1, Duration::from_secs(5)).await,
        Err(QueueError::Unavailable(_))
    ));
    assert!(started.elapsed() < FAIL_FAST);
}

#[tokio::test]
async fn a_missing_table_is_unavailable_not_a_panic() {
    let client = aws_sdk_dynamodb::Client::new(&config().await);
    let store = DynamoStore::new(client, unique("hookline-no-such-table"));
    let key = hookline::model::DeliveryKey::new(hookline::model::Source::Stripe, "evt_1");
    assert!(matches!(
        store.get(&key).await,
        Err(StoreError::Unavailable(_))
    ));
}

/// `activities_are_kept_once_per_delivery_newest_first` with one fixed time: every field
/// round-trips (to the millisecond), with and without its optional parts.
#[tokio::test]
async fn activities_round_trip_every_field() {
    use hookline::model::{Activity, Source};
    let (_, store) = fresh_store().await;
    let at = chrono::Utc::now() - chrono::Duration::hours(1);
    let full = Activity {
        source: Source::Gitlab,
        delivery_id: unique("act-full"),
        event_type: "merge_request".into(),
        action: Some("merge".into()),
        repository: Some("group/project".into()),
        actor: Some("alice".into()),
        git_ref: Some("refs/heads/main".into()),
        url: Some("https://gitlab.example/group/project/-/merge_requests/1".into()),
        occurred_at: Some(at - chrono::Duration::milliseconds(1500)),
        received_at: at,
        processed_at: at + chrono::Duration::milliseconds(250),
    };
    let bare = Activity {
        source: Source::Twilio,
        delivery_id: unique("act-bare"),
        event_type: "message".into(),
        action: None,
        repository: None,
        actor: None,
        git_ref: None,
        url: None,
        occurred_at: None,
        received_at: at + chrono::Duration::seconds(1),
        processed_at: at + chrono::Duration::seconds(2),
    };
    store.put_activity(&full).await.unwrap();
    store.put_activity(&bare).await.unwrap();
    let mut again = full.clone();
    again.action = Some("close".into());
    store.put_activity(&again).await.unwrap();
    let millis = |mut a: Activity| {
        let trunc = |t: chrono::DateTime<chrono::Utc>| {
            chrono::DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap()
        };
        a.occurred_at = a.occurred_at.map(trunc);
        a.received_at = trunc(a.received_at);
        a.processed_at = trunc(a.processed_at);
        a
    };
    let listed = store.list_activities(10).await.unwrap();
    assert_eq!(listed, vec![millis(bare), millis(again)]);
    assert_eq!(store.list_activities(1).await.unwrap().len(), 1);
}

/// A payload over DynamoDB's 400 KB item limit is kept as parts, each carrying the TTL
/// attribute (epoch seconds) so DynamoDB deletes all of them when the retention ends.
#[tokio::test]
async fn store_a_large_payload_is_split_into_parts_that_each_carry_the_ttl() {
    use hookline::model::{DeliveryKey, Source, StoredPayload};
    use hookline::ports::store::aws::{PAYLOAD_PART_BYTES, TTL_ATTRIBUTE};
    let client = aws_sdk_dynamodb::Client::new(&config().await);
    let table = unique("hookline-test");
    create_table(&client, &table).await.unwrap();
    let store = DynamoStore::new(client.clone(), &table);
    let key = DeliveryKey::new(Source::Github, &unique("big"));
    let expires_at = chrono::Utc::now() + chrono::Duration::days(7);
    let payload = StoredPayload {
        body: vec![b'x'; 1024 * 1024].into(),
        headers: vec![("content-type".into(), "application/json".into())],
        expires_at,
    };
    store.put_payload(&key, &payload).await.unwrap();
    // A Query answers at most 1 MB a page: read page after page.
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let page = client
            .query()
            .table_name(&table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(
                ":pk",
                aws_sdk_dynamodb::types::AttributeValue::S(format!("PAYLOAD#{key}")),
            )
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap();
        items.extend(page.items.unwrap_or_default());
        start = page.last_evaluated_key.filter(|k| !k.is_empty());
        if start.is_none() {
            break;
        }
    }
    assert_eq!(items.len(), (1024 * 1024usize).div_ceil(PAYLOAD_PART_BYTES));
    for item in &items {
        assert_eq!(
            item.get(TTL_ATTRIBUTE).and_then(|v| v.as_n().ok()),
            Some(&expires_at.timestamp().to_string()),
            "every part has the TTL"
        );
    }
    let ttl = client
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    assert_eq!(
        ttl.time_to_live_description()
            .and_then(|d| d.attribute_name()),
        Some(TTL_ATTRIBUTE)
    );
    let back = store
        .get_payload(&key, chrono::Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert!(back.body == payload.body);
}

/// DynamoDB's TTL deletes a payload's parts one by one, in no set order: once any part is
/// gone (part 0 and its count first included) the payload reads as expired, so a replay is
/// 410 `payload_expired`, never a 503 for a "corrupt" item.
#[tokio::test]
async fn store_a_payload_whose_parts_expire_separately_reads_as_expired() {
    use hookline::clock::ManualClock;
    use hookline::delivery_log::{DeliveryLog, LogError};
    use hookline::model::{Source, StoredPayload};
    use hookline::ports::store::aws::PAYLOAD_PART_BYTES;
    use hookline::ports::store::conformance::new_delivery;
    let client = aws_sdk_dynamodb::Client::new(&config().await);
    let table = unique("hookline-test");
    create_table(&client, &table).await.unwrap();
    let store: Arc<dyn DeliveryStore> = Arc::new(DynamoStore::new(client.clone(), &table));
    let (_, queue) = fresh_queue().await;
    let now = chrono::Utc::now();
    let log = DeliveryLog::new(
        store.clone(),
        queue,
        Arc::new(ManualClock::at(now)),
        &hookline::config::Settings {
            payload_retention: Duration::from_secs(3600),
            ..Default::default()
        },
    );
    for gone in [0usize, 1] {
        let new = new_delivery(Source::Github, &unique(&format!("part-{gone}")), now);
        store.record(&new).await.unwrap();
        let payload = StoredPayload {
            body: vec![b'x'; 3 * PAYLOAD_PART_BYTES].into(),
            headers: vec![("content-type".into(), "application/json".into())],
            expires_at: now + chrono::Duration::hours(1),
        };
        store.put_payload(&new.key, &payload).await.unwrap();
        client
            .delete_item()
            .table_name(&table)
            .key(
                "pk",
                aws_sdk_dynamodb::types::AttributeValue::S(format!("PAYLOAD#{}", new.key)),
            )
            .key(
                "sk",
                aws_sdk_dynamodb::types::AttributeValue::S(format!("PART#{gone:04}")),
            )
            .send()
            .await
            .unwrap();
        let (_, detail) = log
            .detail(None, &new.key)
            .await
            .unwrap_or_else(|e| panic!("part {gone} gone: the detail still answers, got {e}"));
        assert_eq!(detail, None, "part {gone} gone: the payload is expired");
        match log.replay(None, &new.key).await {
            Err(LogError::PayloadExpired { .. }) => {}
            other => panic!("part {gone} gone: a replay is 410 payload_expired, got {other:?}"),
        }
    }
}
