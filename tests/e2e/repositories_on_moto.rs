//! The repository-connection flow on the AWS adapters, against moto: DynamoDB for deliveries
//! and connections, SQS for the queue, KMS for the per-repository secrets. Connect → the hook
//! is created with a fresh secret → a failed workflow run signed with it is accepted and
//! becomes an incident → rotate → disconnect.

use hookline::auth::{LocalIssuer, OrgId, Scope, UserId};
use hookline::clock::SystemClock;
use hookline::config::Settings;
use hookline::hooks::stub::HookApiStub;
use hookline::model::Source;
use hookline::ports::connections::aws::DynamoConnectionStore;
use hookline::ports::keys::{aws::KmsKeys, CachedKeys};
use hookline::ports::queue::aws::{create_queue_pair, SqsQueue};
use hookline::ports::secrets::aws::sdk_config_for;
use hookline::ports::store::aws::{create_table, DynamoStore};
use hookline::providers::simulate::{sign, Simulation};
use hookline::providers::ProviderSecrets;
use hookline::runtime::local::{with_repositories_over, RepositoriesConfig, Server};
use hookline::runtime::App;
use hookline_e2e::moto_endpoint;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_repository_on_dynamodb_sqs_and_kms_turns_a_failed_run_into_an_incident() {
    let sdk = sdk_config_for(Some(&moto_endpoint())).await;
    let name = format!("hookline-repos-{}", uuid::Uuid::new_v4().simple());
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    create_table(&dynamo, &name).await.unwrap();
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let (queue_url, dlq_url) = create_queue_pair(&sqs, &name, Duration::from_secs(5), 3)
        .await
        .unwrap();
    let kms = aws_sdk_kms::Client::new(&sdk);
    let key_id = kms
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id;

    let stub = HookApiStub::start().await;
    let issuer = LocalIssuer::ephemeral();
    let app = App::assemble(
        Arc::new(DynamoStore::new(dynamo.clone(), &name)),
        Arc::new(SqsQueue::new(sqs, queue_url, dlq_url)),
        ProviderSecrets::default(),
        Arc::new(SystemClock),
        Settings::default(),
    );
    let app = with_repositories_over(
        app,
        Arc::new(DynamoConnectionStore::new(dynamo, &name)),
        Arc::new(CachedKeys::new(KmsKeys::new(kms, key_id))),
        issuer.authenticator(),
        "https://hooks.example.com",
        RepositoriesConfig {
            github_api_url: stub.url().to_string(),
            gitlab_url: stub.url().to_string(),
            auth: None,
            rotation_overlap: Duration::from_secs(3600),
            oauth: None,
        },
        Arc::new(SystemClock),
    );
    let server = Server::start(app, "127.0.0.1:0".parse().unwrap(), 1)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let scopes = [Scope::ReposRead, Scope::ReposWrite].into_iter().collect();
    let token = issuer.issue(
        &OrgId::from("org-moto"),
        &UserId::from("alice"),
        &scopes,
        Duration::from_secs(600),
    );
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let mut req = http
            .request(method, format!("{}{path}", server.url()))
            .bearer_auth(&token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let res = req.send().await.unwrap();
            (
                res.status().as_u16(),
                res.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };

    let (status, _) = call(
        reqwest::Method::PUT,
        "/api/v1/provider-tokens/github".into(),
        Some(json!({"access_token": "gho_moto"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, c) = call(
        reqwest::Method::POST,
        "/api/v1/repositories/connect".into(),
        Some(json!({"repository_full_name": "acme/hookline-demo"})),
    )
    .await;
    assert_eq!(status, 201, "{c}");
    assert_eq!(c["webhook_status"], "active");
    let id = c["id"].as_str().unwrap().to_string();
    let secret = stub.hooks("acme/hookline-demo")[0].secret.clone().unwrap();

    // GitHub delivers a failed run, signed with the hook's secret.
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../events/payloads/github-workflow-run-failure.json"
    ))
    .unwrap();
    let url = format!("{}{}", server.url(), Source::Github.route());
    let signed = sign(&Simulation {
        source: Source::Github,
        secret: secret.expose(),
        url: Some(&url),
        body: &body,
        event: Some("workflow_run"),
        now: chrono::Utc::now(),
        delivery_id: None,
    })
    .unwrap();
    let mut req = http.post(&signed.url).body(signed.body.clone());
    for (k, v) in &signed.headers {
        req = req.header(k, v);
    }
    assert_eq!(req.send().await.unwrap().status().as_u16(), 202);

    let mut incidents = Value::Null;
    for _ in 0..100 {
        let (_, list) = call(
            reqwest::Method::GET,
            "/api/v1/incidents?repository=acme/hookline-demo&status=open".into(),
            None,
        )
        .await;
        if list["incidents"].as_array().is_some_and(|a| !a.is_empty()) {
            incidents = list;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = incidents["incidents"]
        .as_array()
        .unwrap_or_else(|| panic!("no incident appeared: {incidents}"));
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["repository_full_name"], "acme/hookline-demo");

    let (_, st) = call(
        reqwest::Method::GET,
        format!("/api/v1/repositories/connections/{id}/webhook/status"),
        None,
    )
    .await;
    assert_eq!(st["total_deliveries"], 1, "{st}");

    // The org's delivery log on DynamoDB (gsi2): the delivery, its payload byte for byte (a
    // Query of its parts), and a replay through SQS that the worker runs as attempt 2.
    let (status, log) = call(
        reqwest::Method::GET,
        "/api/v1/webhooks/deliveries".into(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{log}");
    let row = &log["deliveries"][0];
    assert_eq!(row["connection_id"], id.as_str(), "{log}");
    let delivery = row["id"].as_str().unwrap().to_string();
    let (status, d) = call(
        reqwest::Method::GET,
        format!("/api/v1/webhooks/deliveries/{delivery}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{d}");
    assert!(d["payload"].as_str().unwrap().as_bytes() == body.as_slice());
    assert_eq!(d["headers"]["x-hub-signature-256"], "[redacted]");
    let (status, r) = call(
        reqwest::Method::POST,
        format!("/api/v1/webhooks/deliveries/{delivery}/replay"),
        None,
    )
    .await;
    assert_eq!(status, 202, "{r}");
    let mut attempts = Value::Null;
    for _ in 0..100 {
        let (_, d) = call(
            reqwest::Method::GET,
            format!("/api/v1/webhooks/deliveries/{delivery}"),
            None,
        )
        .await;
        attempts = d["attempts"].clone();
        if attempts == 2 && d["status"] == "processed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(attempts, 2, "the replay ran once on SQS");
    let (_, other) = call(
        reqwest::Method::GET,
        "/api/v1/webhooks/deliveries?source=stripe".into(),
        None,
    )
    .await;
    assert_eq!(other["deliveries"], json!([]));

    let (status, _) = call(
        reqwest::Method::POST,
        format!("/api/v1/repositories/connections/{id}/webhook/rotate"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_ne!(
        stub.hooks("acme/hookline-demo")[0].secret.clone().unwrap(),
        secret
    );
    let (status, gone) = call(
        reqwest::Method::DELETE,
        format!("/api/v1/repositories/connections/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{gone}");
    assert_eq!(gone["webhook_deleted"], true);
    server.shutdown().await;
}
