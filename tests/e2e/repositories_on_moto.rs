//! The repository-connection flow on the AWS adapters, against moto: DynamoDB for deliveries
//! and connections, SQS for the queue, KMS for the per-repository secrets. Connect → the hook
//! is created with a fresh secret → a failed workflow run signed with it is accepted and
//! becomes an incident → rotate → disconnect.

use hookline::auth::{LocalIssuer, OrgId, Scope, UserId};
use hookline::clock::{Clock, ManualClock, SystemClock};
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

/// The local server on DynamoDB, SQS and KMS in moto, hooks on the stub, a token for
/// `org-moto`'s alice.
struct MotoStack {
    server: Server,
    stub: HookApiStub,
    hooks: Arc<hookline::connections::service::Repositories>,
    http: reqwest::Client,
    issuer: LocalIssuer,
    token: String,
}

impl MotoStack {
    async fn start() -> Self {
        Self::start_with(Arc::new(SystemClock), Settings::default()).await
    }

    /// The same stack on `clock` (every part of it: store, connections, worker) and `settings`.
    async fn start_with(clock: Arc<dyn Clock>, settings: Settings) -> Self {
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
            clock.clone(),
            settings,
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
            clock,
        );
        let hooks = app.hooks.clone().unwrap();
        let server = Server::start(app, "127.0.0.1:0".parse().unwrap(), 1)
            .await
            .unwrap();
        let token = Self::token_from(&issuer, "org-moto");
        Self {
            server,
            stub,
            hooks,
            http: reqwest::Client::new(),
            issuer,
            token,
        }
    }

    /// A token of `org`'s alice with the repository scopes.
    fn token_from(issuer: &LocalIssuer, org: &str) -> String {
        let scopes = [Scope::ReposRead, Scope::ReposWrite].into_iter().collect();
        issuer.issue(
            &OrgId::from(org),
            &UserId::from("alice"),
            &scopes,
            Duration::from_secs(600),
        )
    }

    /// Store alice's GitHub token and connect `acme/hookline-demo`: the connection's id.
    async fn connect_demo(&self) -> String {
        let (status, _) = self
            .call(
                reqwest::Method::PUT,
                "/api/v1/provider-tokens/github".into(),
                Some(json!({"access_token": "gho_moto"})),
            )
            .await;
        assert_eq!(status, 200);
        let (status, c) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/repositories/connect".into(),
                Some(json!({"repository_full_name": "acme/hookline-demo"})),
            )
            .await;
        assert_eq!(status, 201, "{c}");
        assert_eq!(c["webhook_status"], "active", "{c}");
        c["id"].as_str().unwrap().to_string()
    }

    /// Call an API route as `org-moto`'s alice: the status and JSON body.
    async fn call(
        &self,
        method: reqwest::Method,
        path: String,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_as(&self.token, method, path, body).await
    }

    /// Call an API route with `token`: the status and JSON body.
    async fn call_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: String,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.server.url()))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        (
            res.status().as_u16(),
            res.json::<Value>().await.unwrap_or(Value::Null),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_repository_on_dynamodb_sqs_and_kms_turns_a_failed_run_into_an_incident() {
    let moto = MotoStack::start().await;
    let (server, stub, http) = (&moto.server, &moto.stub, &moto.http);
    let call = |method, path, body| moto.call(method, path, body);

    let id = moto.connect_demo().await;
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
    moto.server.shutdown().await;
}

/// POST a failed workflow run to the GitHub route, signed with `secret`: the status code.
async fn deliver(moto: &MotoStack, secret: &str) -> u16 {
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../events/payloads/github-workflow-run-failure.json"
    ))
    .unwrap();
    let url = format!("{}{}", moto.server.url(), Source::Github.route());
    let signed = sign(&Simulation {
        source: Source::Github,
        secret,
        url: Some(&url),
        body: &body,
        event: Some("workflow_run"),
        now: chrono::Utc::now(),
        delivery_id: None,
    })
    .unwrap();
    let mut req = moto.http.post(&signed.url).body(signed.body);
    for (k, v) in &signed.headers {
        req = req.header(k, v);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_hook_is_recreated_on_dynamodb_and_kms_and_its_ping_recorded() {
    use hookline::connections::service::health::HealthSettings;
    let moto = MotoStack::start().await;
    moto.stub.deliver_to(&moto.server.url());
    let id = moto.connect_demo().await;
    let status_of = || {
        moto.call(
            reqwest::Method::GET,
            format!("/api/v1/repositories/connections/{id}/webhook/status"),
            None,
        )
    };
    let wait_for_ping = |hook_id: String| async move {
        for _ in 0..100 {
            let (_, st) = status_of().await;
            if st["ping_ok"] == true && st["webhook_id"] == hook_id.as_str() {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the ping never showed: {}", status_of().await.1);
    };
    let old = moto.stub.hooks("acme/hookline-demo")[0].clone();
    let st = wait_for_ping(old.id.to_string()).await;
    assert!(st["last_ping_at"].is_string(), "{st}");

    // Deleted by hand: the check (read from DynamoDB, sealed with KMS) makes it again.
    assert!(moto.stub.remove_hook(old.id));
    let settings = HealthSettings::default();
    let done = moto.hooks.check_hooks(true, &settings).await.unwrap();
    assert_eq!((done.checked, done.recreated), (1, 1), "{done:?}");
    let new = moto.stub.hooks("acme/hookline-demo")[0].clone();
    let (new_secret, old_secret) = (
        new.secret.clone().unwrap().expose().to_string(),
        old.secret.clone().unwrap().expose().to_string(),
    );
    assert_ne!(new_secret, old_secret);
    assert_eq!(deliver(&moto, &new_secret).await, 202);
    assert_eq!(deliver(&moto, &old_secret).await, 401);
    wait_for_ping(new.id.to_string()).await;

    // The token revoked: failed, with what to do, on DynamoDB too.
    moto.stub.revoke_token("gho_moto");
    let done = moto.hooks.check_hooks(true, &settings).await.unwrap();
    assert_eq!(done.failed, 1, "{done:?}");
    let (_, st) = status_of().await;
    assert_eq!(st["status"], "failed", "{st}");
    assert!(st["reason"].as_str().unwrap().contains("revoked"), "{st}");
    moto.server.shutdown().await;
}

/// Poll the delivery's log entry until `done` holds for it; panics with the last answer.
async fn wait_for_entry(moto: &MotoStack, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..150 {
        let (_, d) = moto.call(reqwest::Method::GET, path.into(), None).await;
        if done(&d) {
            return d;
        }
        last = d;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the delivery never got there: {last}");
}

/// The org's delivery log on DynamoDB, as on SQLite: another org sees none of it (its list is
/// empty, even filtered by the connection's id, and the delivery's id answers 404 to read and
/// to replay); concurrent replays each reach the worker through SQS once; and after the payload
/// retention (an injected clock) the record answers with its payload gone and a replay is 410.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_log_on_dynamodb_is_per_org_replays_once_per_call_and_expires() {
    let clock = Arc::new(ManualClock::at(chrono::Utc::now()));
    let settings = Settings {
        payload_retention: Duration::from_secs(3600),
        ..Settings::default()
    };
    let moto = MotoStack::start_with(clock.clone(), settings).await;
    let conn = moto.connect_demo().await;
    let secret = moto.stub.hooks("acme/hookline-demo")[0]
        .secret
        .clone()
        .unwrap();
    assert_eq!(deliver(&moto, secret.expose()).await, 202);

    let (status, log) = moto
        .call(
            reqwest::Method::GET,
            "/api/v1/webhooks/deliveries".into(),
            None,
        )
        .await;
    assert_eq!(status, 200, "{log}");
    assert_eq!(log["deliveries"].as_array().unwrap().len(), 1, "{log}");
    let id = log["deliveries"][0]["id"].as_str().unwrap().to_string();
    let detail = format!("/api/v1/webhooks/deliveries/{id}");
    wait_for_entry(&moto, &detail, |d| d["status"] == "processed").await;

    // Another org: nothing of org-moto's, on every route of the log.
    let other = MotoStack::token_from(&moto.issuer, "org-other");
    let get = reqwest::Method::GET;
    for path in [
        "/api/v1/webhooks/deliveries".to_string(),
        format!("/api/v1/webhooks/deliveries?connection_id={conn}"),
    ] {
        let (status, list) = moto.call_as(&other, get.clone(), path.clone(), None).await;
        assert_eq!(
            (status, &list["deliveries"]),
            (200, &json!([])),
            "{path}: {list}"
        );
    }
    let (status, body) = moto
        .call_as(&other, get.clone(), detail.clone(), None)
        .await;
    assert_eq!(status, 404, "{body}");
    let replay = format!("{detail}/replay");
    let (status, body) = moto
        .call_as(&other, reqwest::Method::POST, replay.clone(), None)
        .await;
    assert_eq!(status, 404, "{body}");
    let (_, d) = moto.call(get.clone(), detail.clone(), None).await;
    assert_eq!(d["attempts"], 1, "another org's replay ran nothing: {d}");

    // Two replays at once: each one accepted runs once (one more attempt each); one that
    // finds the other in flight is 409 and runs nothing.
    let post = || moto.call(reqwest::Method::POST, replay.clone(), None);
    let (a, b) = tokio::join!(post(), post());
    let accepted = [a.0, b.0].iter().filter(|s| **s == 202).count() as u64;
    for (status, body) in [&a, &b] {
        assert!(*status == 202 || *status == 409, "{status} {body}");
    }
    assert!(accepted >= 1, "{a:?} {b:?}");
    let d = wait_for_entry(&moto, &detail, |d| {
        d["attempts"] == 1 + accepted && d["status"] == "processed"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, again) = moto.call(get.clone(), detail.clone(), None).await;
    assert_eq!(
        again["attempts"], d["attempts"],
        "no replay ran twice: {again}"
    );

    // Past the retention: the record stays, its payload and headers are gone, replay is 410.
    clock.advance(chrono::Duration::minutes(59));
    let (_, d) = moto.call(get.clone(), detail.clone(), None).await;
    assert_eq!(
        d["payload_expired"], false,
        "kept until the retention ends: {d}"
    );
    clock.advance(chrono::Duration::minutes(2));
    let (status, d) = moto.call(get.clone(), detail.clone(), None).await;
    assert_eq!(status, 200, "the record outlives its payload: {d}");
    assert_eq!(
        (&d["payload"], &d["headers"]),
        (&Value::Null, &Value::Null),
        "{d}"
    );
    assert_eq!(d["payload_expired"], true, "{d}");
    let (status, body) = moto.call(reqwest::Method::POST, replay, None).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error"], "payload_expired", "{body}");
    moto.server.shutdown().await;
}
