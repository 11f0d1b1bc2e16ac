//! Hookline as a publisher, end to end on the local server: a customer's endpoint subscribed
//! to `repository.*`, `incident.*` and `github.*` receives, re-signed with its own secret, the
//! connection of a repository, a failed workflow run relayed as `github.workflow_run`, the
//! incident it opened, and the incident's resolution by a later green run.

use hookline::auth::Scope;
use hookline::model::Source;
use hookline::providers::simulate::{self, Simulation};
use hookline::runtime::local::{
    embedded_app, with_outbound, with_repositories, OutboundConfig, RepositoriesConfig, Server,
};
use hookline_e2e::outbound::{local_development, short_settings, Receiver};
use hookline_e2e::{dev_secrets, payload};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

struct Stack {
    server: Server,
    stub: hookline::hooks::stub::HookApiStub,
    issuer: hookline::auth::LocalIssuer,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Stack {
    async fn spawn() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let stub = hookline::hooks::stub::HookApiStub::start().await;
        let clock: Arc<dyn hookline::clock::Clock> = Arc::new(hookline::clock::SystemClock);
        let app = embedded_app(
            dir.path(),
            dev_secrets(),
            hookline::config::Settings::default(),
            hookline::runtime::local::LOCAL_QUEUE,
            hookline::ports::sqlite::Durability::Normal,
            clock.clone(),
        )
        .unwrap();
        // Outbound first, so the repositories part publishes through it (as `serve` does).
        let app = with_outbound(
            app,
            dir.path(),
            OutboundConfig {
                settings: short_settings(2, Duration::from_millis(50)),
                policy: local_development(),
                catalog: hookline::outbound::catalog::EventCatalog::default(),
                auth: None,
                jitter: Arc::new(|| 0.0),
                concurrency: 16,
            },
            clock.clone(),
        )
        .unwrap();
        let app = with_repositories(
            app,
            dir.path(),
            "https://hooks.example.com",
            RepositoriesConfig {
                github_api_url: stub.url().to_string(),
                gitlab_url: stub.url().to_string(),
                auth: None,
                rotation_overlap: Duration::from_secs(3600),
                oauth: None,
            },
            clock,
        )
        .unwrap();
        let server = Server::start(app, "127.0.0.1:0".parse().unwrap(), 1)
            .await
            .unwrap();
        let issuer = hookline::auth::LocalIssuer::open(dir.path()).unwrap();
        Self {
            server,
            stub,
            issuer,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    fn token(&self) -> String {
        self.issuer.issue(
            &hookline::auth::OrgId::from("acme"),
            &hookline::auth::UserId::from("alice"),
            &[Scope::Admin].into_iter().collect(),
            Duration::from_secs(600),
        )
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let res = self
            .http
            .request(method, format!("{}{path}", self.server.url()))
            .bearer_auth(self.token())
            .json(&body)
            .send()
            .await
            .unwrap();
        (
            res.status().as_u16(),
            res.json().await.unwrap_or(Value::Null),
        )
    }

    /// Deliver a workflow_run as GitHub does, signed with the hook's secret.
    async fn deliver_run(&self, body: &[u8], secret: &str) {
        let url = format!("{}{}", self.server.url(), Source::Github.route());
        let signed = simulate::sign(&Simulation {
            source: Source::Github,
            secret,
            url: Some(&url),
            body,
            event: Some("workflow_run"),
            now: chrono::Utc::now(),
            delivery_id: None,
        })
        .unwrap();
        let mut req = self.http.post(&signed.url).body(signed.body.clone());
        for (name, value) in &signed.headers {
            req = req.header(name, value);
        }
        assert_eq!(req.send().await.unwrap().status().as_u16(), 202);
    }
}

fn run(repo: &str, conclusion: &str, run_id: u64) -> Vec<u8> {
    let mut body: Value =
        serde_json::from_slice(&payload("github-workflow-run-failure.json")).unwrap();
    body["repository"]["full_name"] = json!(repo);
    body["workflow_run"]["conclusion"] = json!(conclusion);
    body["workflow_run"]["id"] = json!(run_id);
    body["workflow_run"]["run_number"] = json!(run_id);
    body["workflow_run"]["run_attempt"] = json!(1);
    serde_json::to_vec(&body).unwrap()
}

/// The event types the receiver has got, in order, leaving out the test event.
fn types(receiver: &Receiver) -> Vec<String> {
    receiver
        .received()
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_owned())
        .filter(|t| t != "webhook.test")
        .collect()
}

async fn wait_for_type(receiver: &Receiver, wanted: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(r) = receiver
            .received()
            .into_iter()
            .find(|r| r.json()["type"] == wanted)
        {
            return r.json();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {wanted} arrived; got {:?}",
            types(receiver)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_relayed_runs_and_incidents_reach_a_subscribed_endpoint_re_signed() {
    let stack = Stack::spawn().await;
    let receiver = Receiver::answering(200).await;
    let (status, endpoint) = stack
        .call(
            reqwest::Method::POST,
            "/api/v1/endpoints",
            json!({"url": receiver.url, "event_types": ["repository.*", "incident.*", "github.*"]}),
        )
        .await;
    assert_eq!(status, 201, "{endpoint}");
    let secret = endpoint["secret"].as_str().unwrap().to_owned();

    stack
        .call(
            reqwest::Method::PUT,
            "/api/v1/provider-tokens/github",
            json!({"access_token": "gho_stub_token"}),
        )
        .await;
    let (status, connection) = stack
        .call(
            reqwest::Method::POST,
            "/api/v1/repositories/connect",
            json!({"repository_full_name": "acme/api"}),
        )
        .await;
    assert_eq!(status, 201, "{connection}");
    let connected = wait_for_type(&receiver, "repository.connected").await;
    assert_eq!(connected["data"]["repository_full_name"], "acme/api");

    let hook_secret = stack.stub.hooks("acme/api")[0]
        .secret
        .clone()
        .unwrap()
        .expose()
        .to_owned();
    // Pretty-printed, so a body written out again from a document would differ.
    let sent = serde_json::to_vec_pretty(
        &serde_json::from_slice::<Value>(&run("acme/api", "failure", 501)).unwrap(),
    )
    .unwrap();
    stack.deliver_run(&sent, &hook_secret).await;
    let relayed = wait_for_type(&receiver, "github.workflow_run").await;
    assert_eq!(relayed["data"]["repository"]["full_name"], "acme/api");
    // The provider's body is the event's data byte for byte, not a document written again.
    let envelope = receiver
        .received()
        .into_iter()
        .find(|r| r.json()["type"] == "github.workflow_run")
        .unwrap();
    assert!(
        envelope
            .body
            .ends_with(&[b"\"data\":".as_slice(), &sent, b"}"].concat()),
        "the relayed data is not the delivered body as sent"
    );
    let opened = wait_for_type(&receiver, "incident.created").await;
    assert_eq!(opened["data"]["repository_full_name"], "acme/api");

    // A later green run of the same workflow on the same branch resolves it.
    stack
        .deliver_run(&run("acme/api", "success", 502), &hook_secret)
        .await;
    let resolved = wait_for_type(&receiver, "incident.resolved").await;
    assert_eq!(resolved["data"]["id"], opened["data"]["id"]);

    // Every one of them verifies with the endpoint's secret, and each came once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for r in receiver.received() {
        assert!(standardwebhooks::Webhook::new(&secret)
            .unwrap()
            .verify(&r.body, &r.headers)
            .is_ok());
    }
    let got = types(&receiver);
    for t in [
        "repository.connected",
        "incident.created",
        "incident.resolved",
    ] {
        assert_eq!(got.iter().filter(|g| *g == t).count(), 1, "{t}: {got:?}");
    }
    assert_eq!(
        got.iter().filter(|g| *g == "github.workflow_run").count(),
        2,
        "{got:?}"
    );
}
