//! Incidents over HTTP against a running local server with the GitHub/GitLab stub: a connected
//! repository's failed workflow run, delivered as GitHub delivers it, becomes one incident that
//! its org lists and reads, and that no other org sees.

use hookline::auth::Scope;
use hookline::model::Source;
use hookline::providers::simulate::{self, Simulation};
use hookline_e2e::{dev_secrets, payload, ApiServer, WAIT_LIMIT};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

type Api = ApiServer;

async fn spawn() -> Api {
    ApiServer::spawn(dev_secrets(), Duration::from_secs(3600)).await
}

/// Helpers these tests add to the shared harness.
trait IncidentCalls {
    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value);
    async fn connect(&self, token: &str, repo: &str) -> String;
    async fn deliver_signed(&self, body: &[u8], secret: &str) -> u16;
    async fn deliver(&self, body: &[u8], hook_secret: &str);
    async fn wait_for_incidents(&self, token: &str, repo: &str, n: usize) -> Vec<Value>;
}

impl IncidentCalls for Api {
    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    /// Register a GitHub token and connect `repo` for the token's org; the hook's secret.
    async fn connect(&self, token: &str, repo: &str) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                "/api/v1/provider-tokens/github",
                Some(token),
                Some(json!({"access_token": "gho_stub_token"})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/repositories/connect",
                Some(token),
                Some(json!({"repository_full_name": repo})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let hooks = self.stub.hooks(repo);
        assert_eq!(hooks.len(), 1);
        hooks[0]
            .secret
            .clone()
            .expect("the hook has a secret")
            .expose()
            .to_string()
    }

    /// POST `body` to the GitHub route signed with `secret`, as GitHub would; the status.
    async fn deliver_signed(&self, body: &[u8], secret: &str) -> u16 {
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
        req.send().await.unwrap().status().as_u16()
    }

    /// Deliver signed with the hook's own secret: connected repositories verify with it.
    async fn deliver(&self, body: &[u8], hook_secret: &str) {
        let status = self.deliver_signed(body, hook_secret).await;
        assert_eq!(status, 202, "the delivery was not accepted");
    }

    /// Poll the org's open incidents of `repo` until there are `n`, within the wait limit.
    async fn wait_for_incidents(&self, token: &str, repo: &str, n: usize) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let (status, body) = self
                .get(
                    &format!("/api/v1/incidents?repository={repo}&status=open"),
                    Some(token),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            let list = body["incidents"].as_array().unwrap().clone();
            if list.len() >= n {
                return list;
            }
            assert!(
                started.elapsed() < WAIT_LIMIT,
                "waited {WAIT_LIMIT:?} for {n} incident(s), saw {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The failed workflow run of `events/payloads`, for `repo`.
fn failed_run(repo: &str) -> Vec<u8> {
    let mut body: Value =
        serde_json::from_slice(&payload("github-workflow-run-failure.json")).unwrap();
    body["repository"]["full_name"] = json!(repo);
    serde_json::to_vec(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_of_a_connected_repository_is_listed_as_one_incident_of_its_org() {
    let api = spawn().await;
    let token = api.token("org-a", &[Scope::ReposRead, Scope::ReposWrite]);
    let secret = api.connect(&token, "octo/hello").await;

    let body = failed_run("octo/hello");
    api.deliver(&body, &secret).await;
    // The same run delivered again (a redelivery under a new id): still one incident.
    api.deliver(&body, &secret).await;

    let list = api.wait_for_incidents(&token, "octo/hello", 1).await;
    let incident = &list[0];
    let id = incident["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("inc_"), "{incident}");
    assert_eq!(incident["repository_full_name"], "octo/hello");
    assert_eq!(incident["provider"], "github");
    assert_eq!(incident["workflow"], "CI");
    assert_eq!(incident["branch"], "main");
    assert_eq!(incident["sha"], "6dcb09b5b57875f334f61aebed695e2e4193db5e");
    assert_eq!(
        incident["url"],
        "https://github.com/acme/hookline-demo/actions/runs/12987654321"
    );
    assert_eq!(incident["status"], "open");
    assert_eq!(incident["pr_status"], Value::Null);
    assert_eq!(incident["run_id"], "12987654321");
    assert_eq!(incident["run_attempt"], 1);
    assert!(incident["created_at"].is_string());

    // Both deliveries are processed; still one incident, and the connection counted them.
    let started = Instant::now();
    loop {
        let (_, conns) = api
            .get("/api/v1/repositories/connections", Some(&token))
            .await;
        let conn_id = conns["connections"][0]["id"].as_str().unwrap().to_string();
        let (_, status) = api
            .get(
                &format!("/api/v1/repositories/connections/{conn_id}/webhook/status"),
                Some(&token),
            )
            .await;
        if status["total_deliveries"] == 2 {
            assert!(status["last_delivery_at"].is_string(), "{status}");
            break;
        }
        assert!(
            started.elapsed() < WAIT_LIMIT,
            "deliveries not counted: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let list = api.wait_for_incidents(&token, "octo/hello", 1).await;
    assert_eq!(list.len(), 1, "{list:?}");

    // Read by id; the other filters.
    let (status, got) = api
        .get(&format!("/api/v1/incidents/{id}"), Some(&token))
        .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["id"], id.as_str());
    assert_eq!(got["run_id"], "12987654321");
    let (_, resolved) = api
        .get("/api/v1/incidents?status=resolved", Some(&token))
        .await;
    assert_eq!(resolved["incidents"], json!([]));
    let (_, other_repo) = api
        .get("/api/v1/incidents?repository=octo/other", Some(&token))
        .await;
    assert_eq!(other_repo["incidents"], json!([]));
    let (_, all) = api.get("/api/v1/incidents?limit=10", Some(&token)).await;
    assert_eq!(all["incidents"].as_array().unwrap().len(), 1);

    // Another org sees none of it.
    let other = api.token("org-b", &[Scope::ReposRead]);
    let (status, list) = api.get("/api/v1/incidents", Some(&other)).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["incidents"], json!([]));
    let (status, body) = api
        .get(&format!("/api/v1/incidents/{id}"), Some(&other))
        .await;
    assert_eq!(status, 404, "{body}");
    api.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_incidents_routes_need_a_token_with_repos_read() {
    let api = spawn().await;
    for path in [
        "/api/v1/incidents",
        "/api/v1/incidents?repository=octo/hello&status=open",
        "/api/v1/incidents/inc_0000000000000000000000",
    ] {
        let (status, body) = api.get(path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        let (status, body) = api.get(path, Some("not-a-jwt")).await;
        assert_eq!(status, 401, "{path}: {body}");
        let writer = api.token("org-a", &[Scope::ReposWrite]);
        let (status, body) = api.get(path, Some(&writer)).await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    let token = api.token("org-a", &[Scope::ReposRead]);
    let (status, _) = api
        .get("/api/v1/incidents/inc_0000000000000000000000", Some(&token))
        .await;
    assert_eq!(status, 404);
    let (status, _) = api.get("/api/v1/incidents/not-an-id", Some(&token)).await;
    assert_eq!(status, 404);
    for bad in [
        "status=closed",
        "limit=0",
        "limit=abc",
        "repository=noslash",
    ] {
        let (status, body) = api
            .get(&format!("/api/v1/incidents?{bad}"), Some(&token))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/incidents",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 405);
    api.server.shutdown().await;
}
