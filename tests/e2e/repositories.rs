//! Repository connections over HTTP against a running local server, with a stub that answers
//! as the GitHub and GitLab REST APIs do: connect creates the hook with a fresh secret,
//! rotate pushes a new one, disconnect deletes it, provider failures leave the connection
//! saved as `failed` with a reason, and no org ever sees another's connections.

use hookline::auth::Scope;
use hookline::providers::ProviderSecrets;
use hookline_e2e::ApiServer;
use serde_json::{json, Value};
use std::time::Duration;

type Api = ApiServer;

async fn spawn() -> Api {
    spawn_with_overlap(Duration::from_secs(3600)).await
}

async fn spawn_with_overlap(rotation_overlap: Duration) -> Api {
    ApiServer::spawn(ProviderSecrets::default(), rotation_overlap).await
}

/// Helpers these tests add to the shared harness.
trait RepositoryCalls {
    async fn register_github_token(&self, token: &str);
    async fn deliver(&self, secret: &str) -> (u16, Value);
    async fn connect_demo(&self, token: &str) -> String;
    fn hook_secret(&self) -> String;
}

impl RepositoryCalls for Api {
    async fn register_github_token(&self, token: &str) {
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                "/api/v1/provider-tokens/github",
                Some(token),
                Some(json!({"access_token": "gho_stub_token"})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            !body.to_string().contains("gho_stub_token"),
            "a provider token is never returned"
        );
    }

    /// POST the payload to the GitHub route as GitHub would, signed with `secret`.
    async fn deliver(&self, secret: &str) -> (u16, Value) {
        use hookline::providers::simulate::{sign, Simulation};
        let body = workflow_run_failure();
        let url = format!("{}/api/v1/webhooks/github", self.server.url());
        let signed = sign(&Simulation {
            source: hookline::model::Source::Github,
            secret,
            url: Some(&url),
            body: &body,
            event: Some("workflow_run"),
            now: chrono::Utc::now(),
            delivery_id: None,
        })
        .unwrap();
        let mut req = self.http.post(&signed.url).body(signed.body);
        for (k, v) in &signed.headers {
            req = req.header(k, v);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn connect_demo(&self, token: &str) -> String {
        self.register_github_token(token).await;
        let (status, c) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/repositories/connect",
                Some(token),
                Some(json!({"repository_full_name": "acme/hookline-demo"})),
            )
            .await;
        assert_eq!(status, 201, "{c}");
        c["id"].as_str().unwrap().to_string()
    }

    fn hook_secret(&self) -> String {
        self.stub.hooks("acme/hookline-demo")[0]
            .secret
            .clone()
            .unwrap()
            .expose()
            .to_string()
    }
}

const ALL: &[Scope] = &[Scope::ReposRead, Scope::ReposWrite];

/// A real GitHub workflow_run payload for `acme/hookline-demo`.
fn workflow_run_failure() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../events/payloads/github-workflow-run-failure.json"
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_for_a_connected_repository_verifies_with_that_repositorys_secret() {
    let api = spawn().await;
    let token = api.token("org-a", ALL);
    api.connect_demo(&token).await;
    let secret = api.hook_secret();
    let (status, body) = api.deliver(&secret).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "queued");
    // No global GITHUB_WEBHOOK_SECRET here, and another secret does not pass.
    let (status, _) = api.deliver("a-guess-at-the-secret").await;
    assert_eq!(status, 401);
    api.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rotation_both_secrets_verify_inside_the_overlap_and_only_the_new_one_after() {
    let api = spawn_with_overlap(Duration::from_secs(2)).await;
    let token = api.token("org-a", ALL);
    let id = api.connect_demo(&token).await;
    let old = api.hook_secret();
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/repositories/connections/{id}/webhook/rotate"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let new = api.hook_secret();
    assert_ne!(old, new);
    assert_eq!(api.deliver(&new).await.0, 202, "the new secret verifies");
    assert_eq!(
        api.deliver(&old).await.0,
        202,
        "the old secret verifies inside the overlap"
    );
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(
        api.deliver(&old).await.0,
        401,
        "the old secret is refused after the overlap"
    );
    assert_eq!(api.deliver(&new).await.0, 202);
    api.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_connection_accepts_deliveries_and_records_them_as_skipped() {
    let api = spawn().await;
    let token = api.token("org-a", ALL);
    let id = api.connect_demo(&token).await;
    let (status, _) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/repositories/connections/{id}"),
            Some(&token),
            Some(json!({"is_enabled": false})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = api.deliver(&api.hook_secret()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "skipped");
    api.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_a_repository_creates_its_hook_with_a_fresh_secret() {
    let api = spawn().await;
    let token = api.token("org-a", ALL);
    api.register_github_token(&token).await;
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/repositories/connect",
            Some(&token),
            Some(json!({"repository_full_name": "octo/hello"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(body["id"].as_str().unwrap().starts_with("rpc_"));
    assert_eq!(body["repository_full_name"], "octo/hello");
    assert_eq!(body["webhook_status"], "active");
    assert_eq!(
        body["webhook_url"],
        "https://hooks.example.com/api/v1/webhooks/github"
    );
    assert_eq!(
        body["webhook_events"],
        json!(["workflow_run", "pull_request", "push"])
    );
    assert!(body["webhook_created_at"].is_string());

    let hooks = api.stub.hooks("octo/hello");
    assert_eq!(hooks.len(), 1);
    assert_eq!(body["webhook_id"], hooks[0].id.to_string());
    let secret = hooks[0]
        .secret
        .clone()
        .expect("the hook was created with a secret");
    assert_eq!(secret.expose().len(), 64);
    assert!(secret.expose().chars().all(|c| c.is_ascii_hexdigit()));

    // The secret is in no response and in no data file (only its ciphertext is stored).
    let id = body["id"].as_str().unwrap().to_string();
    let (_, got) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/repositories/connections/{id}"),
            Some(&token),
            None,
        )
        .await;
    let (_, list) = api
        .call(
            reqwest::Method::GET,
            "/api/v1/repositories/connections",
            Some(&token),
            None,
        )
        .await;
    for text in [body.to_string(), got.to_string(), list.to_string()] {
        assert!(
            !text.contains(secret.expose()),
            "a response holds the webhook secret"
        );
    }
    // The data dir's files and the payload log's segments in it.
    let segments = std::fs::read_dir(api.dir.path().join("payloads")).unwrap();
    for file in std::fs::read_dir(api.dir.path()).unwrap().chain(segments) {
        let path = file.unwrap().path();
        if path.is_dir() {
            continue;
        }
        let bytes = std::fs::read(path).unwrap();
        assert!(
            !bytes.windows(64).any(|w| w == secret.expose().as_bytes()),
            "a data file holds the secret"
        );
        assert!(
            !bytes.windows(14).any(|w| w == b"gho_stub_token"),
            "a data file holds the access token"
        );
    }
    assert_eq!(list["connections"].as_array().unwrap().len(), 1);
    api.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_the_same_repository_twice_answers_409_with_the_existing_id() {
    let api = spawn().await;
    let token = api.token("org-a", ALL);
    api.register_github_token(&token).await;
    let body = json!({"repository_full_name": "octo/twice"});
    let (_, first) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/repositories/connect",
            Some(&token),
            Some(body.clone()),
        )
        .await;
    let (status, second) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/repositories/connect",
            Some(&token),
            Some(body),
        )
        .await;
    assert_eq!(status, 409, "{second}");
    assert_eq!(second["connection_id"], first["id"]);
    assert_eq!(api.stub.hooks("octo/twice").len(), 1, "no second hook");
    api.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_failure_keeps_the_connection_as_failed_with_a_reason_and_retry_fixes_it() {
    let api = spawn().await;
    let token = api.token("org-a", ALL);
    // No access token registered yet: the connection is kept, failed, and says what to do.
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/repositories/connect",
            Some(&token),
            Some(json!({"repository_full_name": "octo/later"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["webhook_status"], "failed");
    assert!(
        body["webhook_status_reason"]
            .as_str()
            .unwrap()
            .contains("provider-tokens"),
        "{body}"
    );
    let id = body["id"].as_str().unwrap().to_string();

    // The provider refuses (403): still kept, with the provider's reason.
    api.register_github_token(&token).await;
    api.stub.fail_next(
        "octo/later",
        403,
        json!({"message": "Must have admin rights to Repository."}),
    );
    let (_, retried) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/repositories/connections/{id}/webhook/retry"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(retried["webhook_status"], "failed", "{retried}");

    let (status, fixed) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/repositories/connections/{id}/webhook/retry"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{fixed}");
    assert_eq!(fixed["webhook_status"], "active");
    let (_, st) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/repositories/connections/{id}/webhook/status"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(st["status"], "active");
    assert_eq!(st["total_deliveries"], 0);
    api.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_pushes_a_new_secret_and_disconnecting_deletes_the_hook() {
    let api = spawn().await;
    let token = api.token("org-a", ALL);
    api.register_github_token(&token).await;
    let (_, c) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/repositories/connect",
            Some(&token),
            Some(json!({"repository_full_name": "octo/rot"})),
        )
        .await;
    let id = c["id"].as_str().unwrap().to_string();
    let before = api.stub.hooks("octo/rot")[0].secret.clone().unwrap();
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/repositories/connections/{id}/webhook/rotate"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let after = api.stub.hooks("octo/rot")[0].secret.clone().unwrap();
    assert_ne!(before, after, "the provider got a new secret");

    let (status, patched) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/repositories/connections/{id}"),
            Some(&token),
            Some(json!({"is_enabled": false, "webhook_events": ["workflow_run"]})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["is_enabled"], false);
    assert_eq!(
        api.stub.hooks("octo/rot")[0].events,
        vec!["workflow_run".to_string()]
    );

    let (status, gone) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/repositories/connections/{id}?delete_webhook=true"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{gone}");
    assert_eq!(gone["success"], true);
    assert_eq!(gone["webhook_deleted"], true);
    assert_eq!(gone["repository_full_name"], "octo/rot");
    assert!(
        api.stub.requests().iter().any(|r| r.method == "DELETE"),
        "a DELETE reached the provider"
    );
    assert!(api.stub.hooks("octo/rot").is_empty());
    let (status, _) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/repositories/connections/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 404);
    api.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_already_gone_still_disconnects() {
    let api = spawn().await;
    let token = api.token("org-a", ALL);
    api.register_github_token(&token).await;
    let (_, c) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/repositories/connect",
            Some(&token),
            Some(json!({"repository_full_name": "octo/gone"})),
        )
        .await;
    let hook_id = api.stub.hooks("octo/gone")[0].id;
    assert!(api.stub.remove_hook(hook_id));
    let (status, gone) = api
        .call(
            reqwest::Method::DELETE,
            &format!(
                "/api/v1/repositories/connections/{}",
                c["id"].as_str().unwrap()
            ),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{gone}");
    assert_eq!(gone["success"], true);
    assert_eq!(gone["webhook_deleted"], false);
    api.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_a_token_the_right_scope_and_the_right_org() {
    let api = spawn().await;
    let owner = api.token("org-a", ALL);
    api.register_github_token(&owner).await;
    let (_, c) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/repositories/connect",
            Some(&owner),
            Some(json!({"repository_full_name": "octo/mine"})),
        )
        .await;
    let id = c["id"].as_str().unwrap().to_string();
    let other_org = api.token("org-b", &[Scope::Admin]);
    let read_only = api.token("org-a", &[Scope::ReposRead]);
    let routes: Vec<(reqwest::Method, String, Option<Value>, bool)> = vec![
        (
            reqwest::Method::GET,
            format!("/api/v1/repositories/connections/{id}"),
            None,
            false,
        ),
        (
            reqwest::Method::PATCH,
            format!("/api/v1/repositories/connections/{id}"),
            Some(json!({"is_enabled": false})),
            true,
        ),
        (
            reqwest::Method::GET,
            format!("/api/v1/repositories/connections/{id}/webhook/status"),
            None,
            false,
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/repositories/connections/{id}/webhook/retry"),
            None,
            true,
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/repositories/connections/{id}/webhook/rotate"),
            None,
            true,
        ),
        (
            reqwest::Method::DELETE,
            format!("/api/v1/repositories/connections/{id}"),
            None,
            true,
        ),
    ];
    for (method, path, body, writes) in &routes {
        let (status, _) = api.call(method.clone(), path, None, body.clone()).await;
        assert_eq!(status, 401, "{method} {path} without a token");
        let (status, _) = api
            .call(method.clone(), path, Some("not-a-jwt"), body.clone())
            .await;
        assert_eq!(status, 401, "{method} {path} with a malformed token");
        let (status, res) = api
            .call(method.clone(), path, Some(&other_org), body.clone())
            .await;
        assert_eq!(
            status, 404,
            "{method} {path} from another org must be 404, got {res}"
        );
        if *writes {
            let (status, _) = api
                .call(method.clone(), path, Some(&read_only), body.clone())
                .await;
            assert_eq!(status, 403, "{method} {path} needs repos:write");
        }
    }
    let (_, list) = api
        .call(
            reqwest::Method::GET,
            "/api/v1/repositories/connections",
            Some(&other_org),
            None,
        )
        .await;
    assert_eq!(list["connections"], json!([]), "another org lists nothing");
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/repositories/connect",
            Some(&read_only),
            Some(json!({"repository_full_name": "octo/x"})),
        )
        .await;
    assert_eq!(status, 403);
    // The owner's connection is untouched by all of the above.
    let (status, mine) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/repositories/connections/{id}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(mine["is_enabled"], true);
    api.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_400_and_nothing_is_saved() {
    let api = spawn().await;
    let token = api.token("org-a", ALL);
    for body in [
        json!({"repository_full_name": "not-a-repo"}),
        json!({"repository_full_name": "octo/x", "unknown": 1}),
        json!({"repository_full_name": "octo/x", "webhook_events": []}),
        json!({}),
    ] {
        let (status, res) = api
            .call(
                reqwest::Method::POST,
                "/api/v1/repositories/connect",
                Some(&token),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 400, "{body} → {res}");
        assert!(res["message"].is_string());
    }
    let (_, list) = api
        .call(
            reqwest::Method::GET,
            "/api/v1/repositories/connections",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(list["connections"], json!([]));
    assert!(
        api.stub.requests().is_empty(),
        "nothing reached the provider"
    );
    api.server.shutdown().await;
}
