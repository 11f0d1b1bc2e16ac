//! Hooks that repair themselves (issue 10), over HTTP against a running local server and a
//! stub that answers as GitHub's and GitLab's REST APIs do and delivers their pings to the
//! server: a hook deleted or deactivated by hand comes back with a fresh secret (the next
//! delivery verifies with it, the old secret no longer does), drift is patched back, what
//! cannot be repaired is marked with what to do, and every ping shows in the status route.

use hookline::auth::Scope;
use hookline::connections::service::health::{Action, HealthReport, HealthSettings};
use hookline::providers::ProviderSecrets;
use hookline_e2e::ApiServer;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const REPO: &str = "acme/hookline-demo";
const GITHUB_TOKEN: &str = "gho_stub_token";

async fn spawn() -> ApiServer {
    let api = ApiServer::spawn(ProviderSecrets::default(), Duration::from_secs(3600)).await;
    // The provider reaches the server the way a tunnel would let it.
    api.stub.deliver_to(&api.server.url());
    api
}

fn token(api: &ApiServer, org: &str) -> String {
    api.token(org, &[Scope::ReposRead, Scope::ReposWrite])
}

async fn connect(api: &ApiServer, token: &str, provider: &str, repo: &str) -> String {
    let (status, body) = api
        .call(
            reqwest::Method::PUT,
            &format!("/api/v1/provider-tokens/{provider}"),
            Some(token),
            Some(json!({"access_token": GITHUB_TOKEN})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, c) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/repositories/connect",
            Some(token),
            Some(json!({"repository_full_name": repo, "provider": provider})),
        )
        .await;
    assert_eq!(status, 201, "{c}");
    assert_eq!(c["webhook_status"], "active", "{c}");
    c["id"].as_str().unwrap().to_string()
}

async fn status(api: &ApiServer, token: &str, id: &str) -> Value {
    let (status, body) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/repositories/connections/{id}/webhook/status"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The status once `done` holds of it (within ten seconds).
async fn status_when(
    api: &ApiServer,
    token: &str,
    id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(api, token, id).await;
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "the status never got there: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn check(api: &ApiServer, repair: bool) -> HealthReport {
    api.hooks
        .check_hooks(repair, &HealthSettings::default())
        .await
        .unwrap()
}

fn hook(api: &ApiServer, repo: &str) -> hookline::hooks::stub::StubHook {
    let hooks = api.stub.hooks(repo);
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    hooks[0].clone()
}

fn secret_of(h: &hookline::hooks::stub::StubHook) -> String {
    h.secret.as_ref().unwrap().expose().to_string()
}

/// POST a real workflow_run payload to the GitHub route, signed with `secret` as GitHub signs.
async fn deliver(api: &ApiServer, secret: &str) -> u16 {
    deliver_from(api, hookline::model::Source::Github, secret).await
}

/// POST a real payload of `source` (GitHub's workflow_run, GitLab's pipeline, both of
/// `acme/hookline-demo`) to its route, signed with `secret` as the provider signs.
async fn deliver_from(api: &ApiServer, source: hookline::model::Source, secret: &str) -> u16 {
    use hookline::model::Source;
    use hookline::providers::simulate::{sign, Simulation};
    let (sample, event) = match source {
        Source::Gitlab => ("gitlab-pipeline.json", None),
        _ => ("github-workflow-run-failure.json", Some("workflow_run")),
    };
    let body = std::fs::read(format!(
        "{}/../events/payloads/{sample}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let url = format!("{}{}", api.server.url(), source.route());
    let signed = sign(&Simulation {
        source,
        secret,
        url: Some(&url),
        body: &body,
        event,
        now: chrono::Utc::now(),
        delivery_id: None,
    })
    .unwrap();
    let mut req = api.http.post(&signed.url).body(signed.body);
    for (k, v) in &signed.headers {
        req = req.header(k, v);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ping_asked_for_after_connecting_arrives_and_shows_in_the_status() {
    let api = spawn().await;
    let t = token(&api, "org-a");
    let github = connect(&api, &t, "github", REPO).await;
    let gitlab = connect(&api, &t, "gitlab", "acme/group/service").await;
    let pings: Vec<String> = api
        .stub
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "POST"
                && (r.path.ends_with("/pings") || r.path.ends_with("/test/push_events"))
        })
        .map(|r| r.path)
        .collect();
    assert_eq!(pings.len(), 2, "one ping per new hook: {pings:?}");
    for id in [&github, &gitlab] {
        let s = status_when(&api, &t, id, |s| s["ping_ok"] == true).await;
        assert!(s["last_ping_at"].is_string(), "{s}");
        assert!(s["ping_requested_at"].is_string(), "{s}");
        assert!(s["silent_since"].is_null() && s["alert"].is_null(), "{s}");
    }
    // After a rotation the ping is signed with the new secret, stored before it was asked for.
    let before = status(&api, &t, &github).await["ping_requested_at"].clone();
    let (code, body) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/repositories/connections/{github}/webhook/rotate"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let s = status_when(&api, &t, &github, |s| {
        s["ping_requested_at"] != before && s["ping_ok"] == true
    })
    .await;
    assert!(s["ping_error"].is_null(), "{s}");
    api.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_that_cannot_arrive_is_not_ok() {
    let api = ApiServer::spawn(ProviderSecrets::default(), Duration::from_secs(3600)).await;
    let t = token(&api, "org-a");
    // No route from the provider to the server: the ping is asked for but never comes.
    let id = connect(&api, &t, "github", REPO).await;
    let s = status(&api, &t, &id).await;
    assert!(s["ping_requested_at"].is_string(), "{s}");
    assert_eq!(s["ping_ok"], Value::Null, "awaited, not yet missing: {s}");
    assert_eq!(s["last_ping_at"], Value::Null, "{s}");
    // A rotation asks for a ping too (the new secret is what it proves).
    api.stub.clear_requests();
    let (status_code, _) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/repositories/connections/{id}/webhook/rotate"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status_code, 200);
    assert!(
        api.stub
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/pings")),
        "a rotation asks for a ping"
    );
    api.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_deleted_by_hand_is_recreated_and_only_the_new_secret_verifies() {
    let api = spawn().await;
    let t = token(&api, "org-a");
    let id = connect(&api, &t, "github", REPO).await;
    let old = hook(&api, REPO);
    let old_secret = secret_of(&old);
    assert_eq!(deliver(&api, &old_secret).await, 202);
    status_when(&api, &t, &id, |s| s["ping_ok"] == true).await;

    assert!(api.stub.remove_hook(old.id), "deleted by hand on GitHub");
    // Without --repair: reported, nothing changed.
    let dry = check(&api, false).await;
    assert_eq!((dry.checked, dry.recreated), (1, 1), "{dry:?}");
    assert!(!dry.findings[0].applied);
    assert!(api.stub.hooks(REPO).is_empty());

    let done = check(&api, true).await;
    assert_eq!(
        (done.checked, done.recreated, done.repairs()),
        (1, 1, 1),
        "{done:?}"
    );
    assert_eq!(done.findings[0].action, Action::Recreated);
    assert!(done.findings[0].applied);
    let new = hook(&api, REPO);
    assert_ne!(new.id, old.id);
    let new_secret = secret_of(&new);
    assert_ne!(new_secret, old_secret, "a fresh secret");
    assert_eq!(
        (new.url.as_str(), new.content_type.as_deref(), new.active),
        (
            "https://hooks.example.com/api/v1/webhooks/github",
            Some("json"),
            true
        )
    );
    assert_eq!(
        deliver(&api, &new_secret).await,
        202,
        "the new secret verifies"
    );
    assert_eq!(
        deliver(&api, &old_secret).await,
        401,
        "the old one no longer does"
    );

    // The new hook's ping arrives; the connection names the new hook.
    let s = status_when(&api, &t, &id, |s| {
        s["ping_ok"] == true && s["webhook_id"] == json!(new.id.to_string())
    })
    .await;
    assert_eq!(s["status"], "active", "{s}");
    assert!(s["last_checked_at"].is_string(), "{s}");
    // Healthy now: a second run repairs nothing.
    let again = check(&api, true).await;
    assert_eq!(
        (again.checked, again.healthy, again.repairs()),
        (1, 1, 0),
        "{again:?}"
    );
    api.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_hook_is_switched_back_on_with_a_fresh_secret_on_github_and_gitlab() {
    let api = spawn().await;
    let t = token(&api, "org-a");
    let github = connect(&api, &t, "github", REPO).await;
    let gitlab = connect(&api, &t, "gitlab", "acme/group/service").await;
    let gh = hook(&api, REPO);
    let gl = hook(&api, "acme/group/service");
    assert!(api.stub.deactivate_hook(gh.id) && api.stub.deactivate_hook(gl.id));

    let done = check(&api, true).await;
    assert_eq!((done.checked, done.reactivated), (2, 2), "{done:?}");
    let (gh2, gl2) = (hook(&api, REPO), hook(&api, "acme/group/service"));
    assert_eq!(
        (gh2.id, gl2.id),
        (gh.id, gl.id),
        "the same hooks, switched back on"
    );
    // GitLab re-enables a disabled hook once it is tested: the ping after the repair did it.
    assert!(gh2.active && gl2.active);
    assert_ne!(secret_of(&gh2), secret_of(&gh));
    assert_ne!(secret_of(&gl2), secret_of(&gl));
    assert_eq!(deliver(&api, &secret_of(&gh2)).await, 202);
    assert_eq!(deliver(&api, &secret_of(&gh)).await, 401);
    for id in [&github, &gitlab] {
        status_when(&api, &t, id, |s| {
            s["ping_ok"] == true && s["status"] == "active"
        })
        .await;
    }
    api.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drifted_url_events_and_content_type_are_patched_back_keeping_the_secret() {
    let api = spawn().await;
    let t = token(&api, "org-a");
    connect(&api, &t, "github", REPO).await;
    connect(&api, &t, "gitlab", "acme/group/service").await;
    let gh = hook(&api, REPO);
    let gl = hook(&api, "acme/group/service");
    api.stub.edit_hook(gh.id, |h| {
        h.url = "https://attacker.example/collect".into();
        h.events = vec!["push".into()];
        h.content_type = Some("form".into());
    });
    api.stub
        .edit_hook(gl.id, |h| h.events = vec!["push_events".into()]);

    let done = check(&api, true).await;
    assert_eq!((done.checked, done.patched), (2, 2), "{done:?}");
    let detail = &done
        .findings
        .iter()
        .find(|f| f.repository_full_name == REPO)
        .unwrap()
        .detail;
    assert!(
        detail.contains("attacker.example") && detail.contains("content type is form"),
        "{detail}"
    );
    let gh2 = hook(&api, REPO);
    assert_eq!(gh2.url, gh.url);
    assert_eq!(gh2.events, gh.events);
    assert_eq!(gh2.content_type.as_deref(), Some("json"));
    assert_eq!(
        secret_of(&gh2),
        secret_of(&gh),
        "drift is patched, not rotated"
    );
    assert_eq!(hook(&api, "acme/group/service").events, gl.events);
    assert_eq!(deliver(&api, &secret_of(&gh)).await, 202);
    api.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_leaves_the_connection_failed_with_what_to_do() {
    let api = spawn().await;
    let t = token(&api, "org-a");
    let id = connect(&api, &t, "github", REPO).await;
    api.stub.revoke_token(GITHUB_TOKEN);

    let dry = check(&api, false).await;
    assert_eq!(dry.failed, 1, "{dry:?}");
    assert_eq!(
        status(&api, &t, &id).await["status"],
        "active",
        "a dry run changes nothing"
    );

    let done = check(&api, true).await;
    assert_eq!((done.checked, done.failed), (1, 1), "{done:?}");
    let s = status(&api, &t, &id).await;
    assert_eq!(s["status"], "failed", "{s}");
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("revoked") && reason.contains("/api/v1/provider-tokens/github"),
        "{reason}"
    );
    assert!(!reason.contains(GITHUB_TOKEN));
    // Failed connections wait for the user: the next run leaves them alone.
    assert_eq!(check(&api, true).await.checked, 0);
    api.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_repository_is_inactive_and_a_vanished_one_failed() {
    let api = spawn().await;
    let t = token(&api, "org-a");
    let archived = connect(&api, &t, "github", "acme/old-service").await;
    let gone = connect(&api, &t, "gitlab", "acme/group/deleted").await;
    api.stub.set_repo_archived("acme/old-service", true);
    api.stub.set_repo_missing("acme/group/deleted", true);

    api.stub.clear_requests();
    let done = check(&api, true).await;
    assert_eq!(
        (done.checked, done.inactive, done.failed),
        (2, 1, 1),
        "{done:?}"
    );
    // Read, never written: there is nothing Hookline can repair there.
    let methods: Vec<String> = api.stub.requests().into_iter().map(|r| r.method).collect();
    assert!(methods.iter().all(|m| m == "GET"), "{methods:?}");
    let s = status(&api, &t, &archived).await;
    assert_eq!(s["status"], "inactive", "{s}");
    assert!(s["reason"].as_str().unwrap().contains("archived"), "{s}");
    let s = status(&api, &t, &gone).await;
    assert_eq!(s["status"], "failed", "{s}");
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("is gone from GitLab"),
        "{s}"
    );
    api.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_server_runs_the_check_on_its_interval() {
    let settings = HealthSettings {
        every: Some(Duration::from_millis(200)),
        ..HealthSettings::default()
    };
    let api = ApiServer::spawn_with(
        ProviderSecrets::default(),
        Duration::from_secs(3600),
        Some(settings),
    )
    .await;
    api.stub.deliver_to(&api.server.url());
    let t = token(&api, "org-a");
    let id = connect(&api, &t, "github", REPO).await;
    let old = hook(&api, REPO);
    assert!(api.stub.remove_hook(old.id));
    // Nobody runs the check here: the server's own schedule puts the hook back.
    let s = status_when(&api, &t, &id, |s| {
        s["webhook_id"] != json!(old.id.to_string()) && s["ping_ok"] == true
    })
    .await;
    assert_eq!(s["status"], "active", "{s}");
    assert_eq!(api.stub.hooks(REPO).len(), 1);
    api.server.shutdown().await;
}

/// The same on GitLab: a project hook deleted by hand comes back with a fresh token (the
/// next pipeline event verifies with it, the old one no longer does) and its test push
/// arrives; then the access token revoked leaves the connection failed, saying what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_gitlab_a_deleted_hook_is_recreated_and_a_revoked_token_fails_the_connection() {
    use hookline::model::Source;
    let api = spawn().await;
    let t = token(&api, "org-a");
    let id = connect(&api, &t, "gitlab", REPO).await;
    let old = hook(&api, REPO);
    let old_secret = secret_of(&old);
    assert_eq!(deliver_from(&api, Source::Gitlab, &old_secret).await, 202);
    status_when(&api, &t, &id, |s| s["ping_ok"] == true).await;

    assert!(api.stub.remove_hook(old.id), "deleted by hand on GitLab");
    let done = check(&api, true).await;
    assert_eq!((done.checked, done.recreated), (1, 1), "{done:?}");
    let new = hook(&api, REPO);
    assert_ne!(new.id, old.id);
    let new_secret = secret_of(&new);
    assert_ne!(new_secret, old_secret, "a fresh token");
    assert_eq!(
        new.url, "https://hooks.example.com/api/v1/webhooks/gitlab",
        "{new:?}"
    );
    assert_eq!(deliver_from(&api, Source::Gitlab, &new_secret).await, 202);
    assert_eq!(deliver_from(&api, Source::Gitlab, &old_secret).await, 401);
    let s = status_when(&api, &t, &id, |s| {
        s["ping_ok"] == true && s["webhook_id"] == json!(new.id.to_string())
    })
    .await;
    assert_eq!(s["status"], "active", "{s}");
    assert!(
        api.stub.requests().iter().any(|r| r.method == "POST"
            && r.path
                .ends_with(&format!("/hooks/{}/test/push_events", new.id))),
        "the new hook was tested"
    );

    api.stub.revoke_token(GITHUB_TOKEN);
    let done = check(&api, true).await;
    assert_eq!((done.checked, done.failed), (1, 1), "{done:?}");
    let s = status(&api, &t, &id).await;
    assert_eq!(s["status"], "failed", "{s}");
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("revoked") && reason.contains("/api/v1/provider-tokens/gitlab"),
        "{reason}"
    );
    assert!(!reason.contains(GITHUB_TOKEN));
    api.server.shutdown().await;
}
