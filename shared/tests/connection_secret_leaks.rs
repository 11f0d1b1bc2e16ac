//! A connected repository's webhook secret and the user's provider token never reach a log
//! line, an API response or a data file: every log line written while connecting, rotating,
//! verifying deliveries and disconnecting is captured (at TRACE) and searched.

use hookline::auth::{LocalIssuer, OrgId, Scope, UserId};
use hookline::clock::SystemClock;
use hookline::config::Settings;
use hookline::hooks::stub::HookApiStub;
use hookline::model::Source;
use hookline::ports::sqlite::Durability;
use hookline::providers::simulate::{sign, Simulation};
use hookline::providers::ProviderSecrets;
use hookline::runtime::local::{embedded_app, with_repositories, RepositoriesConfig, LOCAL_QUEUE};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PROVIDER_TOKEN: &str = "gho_never_log_this_token";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn api_request(method: &str, path: &str, token: &str, body: &str) -> hookline::http::Request {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(bytes::Bytes::from(body.to_string()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_response_or_data_file_holds_a_connection_secret() {
    let logs = Captured::default();
    let writer = logs.clone();
    // Global: the stub and the clients log from other tasks and threads.
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let stub = HookApiStub::start().await;
    let app = embedded_app(
        dir.path(),
        ProviderSecrets::default(),
        Settings::default(),
        LOCAL_QUEUE,
        Durability::Normal,
        Arc::new(SystemClock),
    )
    .unwrap();
    let config = RepositoriesConfig {
        github_api_url: stub.url().to_string(),
        gitlab_url: stub.url().to_string(),
        auth: None,
        rotation_overlap: Duration::from_secs(3600),
        oauth: None,
    };
    let app = with_repositories(
        app,
        dir.path(),
        "https://hooks.example.com",
        config,
        Arc::new(SystemClock),
    )
    .unwrap();
    let api = app.repositories.clone().unwrap();
    let scopes = [Scope::ReposRead, Scope::ReposWrite].into_iter().collect();
    let token = LocalIssuer::open(dir.path()).unwrap().issue(
        &OrgId::from("org-a"),
        &UserId::from("u"),
        &scopes,
        Duration::from_secs(600),
    );

    let mut responses = Vec::new();
    let mut call = |res: hookline::http::Response| {
        responses.push(String::from_utf8_lossy(res.body()).into_owned())
    };
    call(
        api.handle(api_request(
            "PUT",
            "/api/v1/provider-tokens/github",
            &token,
            &format!(r#"{{"access_token":"{PROVIDER_TOKEN}"}}"#),
        ))
        .await,
    );
    let connected = api
        .handle(api_request(
            "POST",
            "/api/v1/repositories/connect",
            &token,
            r#"{"repository_full_name":"acme/hookline-demo"}"#,
        ))
        .await;
    let id = serde_json::from_slice::<serde_json::Value>(connected.body()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    call(connected);
    let first_secret = stub.hooks("acme/hookline-demo")[0].secret.clone().unwrap();
    call(
        api.handle(api_request(
            "POST",
            &format!("/api/v1/repositories/connections/{id}/webhook/rotate"),
            &token,
            "",
        ))
        .await,
    );
    let second_secret = stub.hooks("acme/hookline-demo")[0].secret.clone().unwrap();

    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../events/payloads/github-workflow-run-failure.json"
    ))
    .unwrap();
    for secret in [second_secret.expose(), first_secret.expose(), "wrong"] {
        let signed = sign(&Simulation {
            source: Source::Github,
            secret,
            url: Some("https://hooks.example.com/api/v1/webhooks/github"),
            body: &body,
            event: Some("workflow_run"),
            now: chrono::Utc::now(),
            delivery_id: None,
        })
        .unwrap();
        let mut req = http::Request::post(Source::Github.route());
        for (k, v) in &signed.headers {
            req = req.header(k, v);
        }
        call(
            app.pipeline
                .handle(
                    Source::Github,
                    req.body(bytes::Bytes::from(signed.body)).unwrap(),
                )
                .await,
        );
    }
    call(
        api.handle(api_request(
            "GET",
            &format!("/api/v1/repositories/connections/{id}"),
            &token,
            "",
        ))
        .await,
    );
    call(
        api.handle(api_request(
            "DELETE",
            &format!("/api/v1/repositories/connections/{id}"),
            &token,
            "",
        ))
        .await,
    );

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("refused a delivery that failed verification"),
        "the refusal was logged"
    );
    for secret in [
        first_secret.expose(),
        second_secret.expose(),
        PROVIDER_TOKEN,
    ] {
        assert!(!logs.contains(secret), "a secret reached the logs");
        for r in &responses {
            assert!(!r.contains(secret), "a secret reached a response: {r}");
        }
        // The data dir's files and the payload log's segments in it.
        let segments = std::fs::read_dir(dir.path().join("payloads")).unwrap();
        for file in std::fs::read_dir(dir.path()).unwrap().chain(segments) {
            let path = file.unwrap().path();
            if path.is_dir() {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a secret is in {}",
                path.display()
            );
        }
    }
}
