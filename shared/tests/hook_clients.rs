//! The GitHub and GitLab hook clients and OAuth, against the local stub of both REST APIs.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use hookline::hooks::oauth::{OAuthApp, OAuthError, OAuthState, StateError};
use hookline::hooks::stub::HookApiStub;
use hookline::hooks::{
    Deleted, GitHubHooks, GitLabHooks, HookClient, HookError, HookProvider, HookSpec,
};
use hookline::secret::Secret;
use serde_json::json;

const TOKEN: &str = "gho_test_token_0123456789abcdef";
const SECRET: &str = "5f1d9c0b7e6a4f3c2b1a09876543210fedcba9876543210fedcba9876543210f";
const HOOK_URL: &str = "https://hookline.example.com/api/v1/webhooks/github";
const GL_HOOK_URL: &str = "https://hookline.example.com/api/v1/webhooks/gitlab";

fn token() -> Secret {
    Secret::new(TOKEN)
}

fn spec(url: &str, events: &[&str]) -> HookSpec {
    HookSpec::new(
        url,
        Secret::new(SECRET),
        events.iter().map(|e| e.to_string()).collect(),
    )
}

/// Nothing a user or a log can see holds the token or the secret.
fn assert_no_secrets(err: &HookError) {
    let shown = format!("{err:?} | {err} | {}", err.reason());
    assert!(!shown.contains(TOKEN), "token leaked: {shown}");
    assert!(!shown.contains(SECRET), "secret leaked: {shown}");
}

// ---- create ----

#[tokio::test]
async fn github_create_posts_the_documented_hook_with_the_secret() {
    let stub = HookApiStub::start().await;
    let hook = stub
        .github()
        .create_hook(
            &token(),
            "octocat/hello-world",
            &spec(HOOK_URL, &["workflow_run", "pull_request", "push"]),
        )
        .await
        .unwrap();

    assert!(!hook.adopted);
    assert_eq!(hook.url, HOOK_URL);
    assert_eq!(hook.events, ["workflow_run", "pull_request", "push"]);
    assert!(hook.active);
    assert!(hook.created_at.is_some());

    let stored = stub.hooks("octocat/hello-world");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id.to_string(), hook.id);
    assert_eq!(stored[0].secret.as_ref().unwrap().expose(), SECRET);
    assert_eq!(stored[0].content_type.as_deref(), Some("json"));
    assert_eq!(stored[0].insecure_ssl.as_deref(), Some("0"));

    let post = stub
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .unwrap();
    assert_eq!(post.path, "/repos/octocat/hello-world/hooks");
    assert_eq!(
        post.body,
        json!({
            "name": "web",
            "active": true,
            "events": ["workflow_run", "pull_request", "push"],
            "config": {"url": HOOK_URL, "content_type": "json", "secret": SECRET, "insecure_ssl": "0"},
        })
    );
    assert_eq!(post.token.as_ref().unwrap().expose(), TOKEN);
    assert_eq!(post.header("accept"), Some("application/vnd.github+json"));
    assert_eq!(post.header("x-github-api-version"), Some("2022-11-28"));
    assert_eq!(post.header("user-agent"), Some("hookline"));
}

#[tokio::test]
async fn github_create_without_events_subscribes_to_the_seed_defaults() {
    let stub = HookApiStub::start().await;
    let hook = stub
        .github()
        .create_hook(&token(), "octocat/defaults", &spec(HOOK_URL, &[]))
        .await
        .unwrap();
    assert_eq!(hook.events, ["workflow_run", "pull_request", "push"]);
}

#[tokio::test]
async fn gitlab_create_posts_the_token_and_maps_events_to_flags() {
    let stub = HookApiStub::start().await;
    let hook = stub
        .gitlab()
        .create_hook(
            &token(),
            "group/sub/project",
            &spec(
                GL_HOOK_URL,
                &["workflow_run", "merge_request", "push", "job"],
            ),
        )
        .await
        .unwrap();

    assert!(!hook.adopted);
    assert_eq!(hook.url, GL_HOOK_URL);
    assert_eq!(
        hook.events,
        [
            "push_events",
            "merge_requests_events",
            "pipeline_events",
            "job_events"
        ]
    );

    let stored = stub.hooks("group/sub/project");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].secret.as_ref().unwrap().expose(), SECRET);
    assert_eq!(stored[0].enable_ssl_verification, Some(true));

    let post = stub
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .unwrap();
    // The project path travels as one URL-encoded segment.
    assert_eq!(post.path, "/api/v4/projects/group%2Fsub%2Fproject/hooks");
    assert_eq!(post.body["url"], GL_HOOK_URL);
    assert_eq!(post.body["token"], SECRET);
    assert_eq!(post.body["enable_ssl_verification"], true);
    assert_eq!(post.body["pipeline_events"], true);
    assert_eq!(post.body["merge_requests_events"], true);
    assert_eq!(post.body["push_events"], true);
    assert_eq!(post.body["job_events"], true);
    assert_eq!(post.body["tag_push_events"], false);
    assert_eq!(post.body["issues_events"], false);
    assert_eq!(post.token.as_ref().unwrap().expose(), TOKEN);
}

#[tokio::test]
async fn gitlab_create_without_events_subscribes_to_pipelines_merge_requests_and_pushes() {
    let stub = HookApiStub::start().await;
    let hook = stub
        .gitlab()
        .create_hook(&token(), "group/project", &spec(GL_HOOK_URL, &[]))
        .await
        .unwrap();
    assert_eq!(
        hook.events,
        ["push_events", "merge_requests_events", "pipeline_events"]
    );
}

#[tokio::test]
async fn gitlab_refuses_an_event_it_has_no_flag_for_before_calling() {
    let stub = HookApiStub::start().await;
    let err = stub
        .gitlab()
        .create_hook(&token(), "group/project", &spec(GL_HOOK_URL, &["star"]))
        .await
        .unwrap_err();
    assert!(matches!(err, HookError::UnsupportedEvent { .. }), "{err:?}");
    assert!(err.reason().contains("\"star\""));
    assert!(!err.retryable());
    assert!(stub.requests().is_empty());
}

#[tokio::test]
async fn a_malformed_repository_name_is_refused_before_calling() {
    let stub = HookApiStub::start().await;
    let err = stub
        .github()
        .create_hook(&token(), "not-a-repo", &spec(HOOK_URL, &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_repository");
    assert!(err.reason().contains("owner/repo"));
    assert!(stub.requests().is_empty());
}

// ---- adoption ----

#[tokio::test]
async fn github_adopts_an_existing_hook_with_the_same_url_instead_of_duplicating() {
    let stub = HookApiStub::start().await;
    let old = stub.add_hook(
        HookProvider::GitHub,
        "octocat/adopt",
        HOOK_URL,
        "old-secret",
        &["push"],
    );
    stub.add_hook(
        HookProvider::GitHub,
        "octocat/adopt",
        "https://ci.example.com/hook",
        "other",
        &["push"],
    );

    let hook = stub
        .github()
        .create_hook(
            &token(),
            "octocat/adopt",
            &spec(HOOK_URL, &["workflow_run", "push"]),
        )
        .await
        .unwrap();

    assert!(hook.adopted);
    assert_eq!(hook.id, old.id.to_string());
    assert_eq!(hook.events, ["workflow_run", "push"]);
    let hooks = stub.hooks("octocat/adopt");
    assert_eq!(hooks.len(), 2, "no duplicate");
    let adopted = stub.hook(old.id).unwrap();
    assert_eq!(adopted.secret.unwrap().expose(), SECRET, "secret replaced");
    let methods: Vec<String> = stub.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["GET", "PATCH"]);
}

#[tokio::test]
async fn github_adopts_the_hook_when_create_answers_422_already_exists() {
    let stub = HookApiStub::start().await;
    let old = stub.add_hook(
        HookProvider::GitHub,
        "octocat/race",
        HOOK_URL,
        "old-secret",
        &["push"],
    );
    // The first list does not show it yet (created concurrently), so the create collides.
    stub.fail_next("octocat/race", 200, json!([]));

    let hook = stub
        .github()
        .create_hook(&token(), "octocat/race", &spec(HOOK_URL, &[]))
        .await
        .unwrap();

    assert!(hook.adopted);
    assert_eq!(hook.id, old.id.to_string());
    assert_eq!(stub.hooks("octocat/race").len(), 1);
    assert_eq!(stub.hook(old.id).unwrap().secret.unwrap().expose(), SECRET);
    let methods: Vec<String> = stub.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["GET", "POST", "GET", "PATCH"]);
}

#[tokio::test]
async fn github_finds_the_hook_to_adopt_on_a_later_page() {
    let stub = HookApiStub::start().await;
    stub.set_max_per_page(2);
    for i in 0..4 {
        stub.add_hook(
            HookProvider::GitHub,
            "octocat/many",
            &format!("https://other{i}.example.com/hook"),
            "x",
            &["push"],
        );
    }
    let old = stub.add_hook(
        HookProvider::GitHub,
        "octocat/many",
        HOOK_URL,
        "old",
        &["push"],
    );
    let hook = stub
        .github()
        .create_hook(&token(), "octocat/many", &spec(HOOK_URL, &[]))
        .await
        .unwrap();
    assert!(hook.adopted);
    assert_eq!(hook.id, old.id.to_string());
    assert_eq!(stub.hooks("octocat/many").len(), 5);
}

#[tokio::test]
async fn gitlab_adopts_an_existing_hook_with_the_same_url_with_put() {
    let stub = HookApiStub::start().await;
    let old = stub.add_hook(
        HookProvider::GitLab,
        "group/project",
        GL_HOOK_URL,
        "old-token",
        &["push_events"],
    );
    let hook = stub
        .gitlab()
        .create_hook(
            &token(),
            "group/project",
            &spec(GL_HOOK_URL, &["pipeline", "push"]),
        )
        .await
        .unwrap();
    assert!(hook.adopted);
    assert_eq!(hook.id, old.id.to_string());
    assert_eq!(hook.events, ["push_events", "pipeline_events"]);
    assert_eq!(stub.hooks("group/project").len(), 1);
    assert_eq!(stub.hook(old.id).unwrap().secret.unwrap().expose(), SECRET);
    let methods: Vec<String> = stub.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["GET", "PUT"]);
}

// ---- update, get, delete ----

#[tokio::test]
async fn update_pushes_a_new_secret_and_event_list() {
    let stub = HookApiStub::start().await;
    let gh = stub.github();
    let hook = gh
        .create_hook(&token(), "octocat/rotate", &spec(HOOK_URL, &[]))
        .await
        .unwrap();
    let rotated = HookSpec::new(HOOK_URL, Secret::new("new-secret"), vec!["push".into()]);
    let updated = gh
        .update_hook(&token(), "octocat/rotate", &hook.id, &rotated)
        .await
        .unwrap();
    assert_eq!(updated.events, ["push"]);
    assert!(!updated.adopted);
    let stored = stub.hooks("octocat/rotate").remove(0);
    assert_eq!(stored.secret.unwrap().expose(), "new-secret");

    let read = gh
        .get_hook(&token(), "octocat/rotate", &hook.id)
        .await
        .unwrap();
    assert_eq!(read, updated);
}

#[tokio::test]
async fn github_delete_answers_204_then_already_gone() {
    let stub = HookApiStub::start().await;
    let gh = stub.github();
    let hook = gh
        .create_hook(&token(), "octocat/bye", &spec(HOOK_URL, &[]))
        .await
        .unwrap();
    assert_eq!(
        gh.delete_hook(&token(), "octocat/bye", &hook.id)
            .await
            .unwrap(),
        Deleted::Deleted
    );
    assert!(stub.hooks("octocat/bye").is_empty());
    assert_eq!(
        gh.delete_hook(&token(), "octocat/bye", &hook.id)
            .await
            .unwrap(),
        Deleted::AlreadyGone
    );
    let deletes: Vec<_> = stub
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.path)
        .collect();
    assert_eq!(deletes.len(), 2);
    assert_eq!(deletes[0], format!("/repos/octocat/bye/hooks/{}", hook.id));

    let err = gh
        .get_hook(&token(), "octocat/bye", &hook.id)
        .await
        .unwrap_err();
    assert!(err.is_not_found());
}

#[tokio::test]
async fn gitlab_delete_answers_204_then_already_gone() {
    let stub = HookApiStub::start().await;
    let gl = stub.gitlab();
    let hook = gl
        .create_hook(&token(), "group/bye", &spec(GL_HOOK_URL, &[]))
        .await
        .unwrap();
    // The user removed it by hand in GitLab's settings.
    stub.remove_hook(hook.id.parse().unwrap());
    assert_eq!(
        gl.delete_hook(&token(), "group/bye", &hook.id)
            .await
            .unwrap(),
        Deleted::AlreadyGone
    );
    let hook = gl
        .create_hook(&token(), "group/bye", &spec(GL_HOOK_URL, &[]))
        .await
        .unwrap();
    assert_eq!(
        gl.delete_hook(&token(), "group/bye", &hook.id)
            .await
            .unwrap(),
        Deleted::Deleted
    );
    assert!(stub.hooks("group/bye").is_empty());
}

// ---- failures ----

#[tokio::test]
async fn an_invalid_token_asks_the_user_to_reconnect() {
    let stub = HookApiStub::start().await;
    stub.set_token_valid(false);
    let err = stub
        .github()
        .create_hook(&token(), "octocat/x", &spec(HOOK_URL, &[]))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        HookError::Unauthorized {
            provider: HookProvider::GitHub
        }
    );
    assert!(err.reason().contains("invalid or expired"));
    assert!(err.reason().contains("reconnect your GitHub account"));
    assert!(!err.retryable());
    assert_no_secrets(&err);

    let err = stub
        .gitlab()
        .delete_hook(&token(), "group/x", "1")
        .await
        .unwrap_err();
    assert!(err.reason().contains("reconnect your GitLab account"));
    assert_no_secrets(&err);
}

#[tokio::test]
async fn a_request_without_a_token_gets_requires_authentication() {
    let stub = HookApiStub::start().await;
    let res = reqwest::Client::new()
        .get(format!("{}/repos/octocat/x/hooks", stub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["message"], "Requires authentication");
}

#[tokio::test]
async fn a_github_token_without_admin_repo_hook_quotes_the_scopes() {
    let stub = HookApiStub::start().await;
    stub.set_token_scopes(HookProvider::GitHub, "repo, read:org");
    let err = stub
        .github()
        .create_hook(&token(), "octocat/x", &spec(HOOK_URL, &[]))
        .await
        .unwrap_err();
    match &err {
        HookError::Forbidden {
            granted, required, ..
        } => {
            assert_eq!(granted.as_deref(), Some("repo, read:org"));
            assert_eq!(required.as_deref(), Some("admin:repo_hook"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.code(), "insufficient_permissions");
    let reason = err.reason();
    assert!(
        reason.contains("the GitHub token lacks admin:repo_hook"),
        "{reason}"
    );
    assert!(reason.contains("it has: repo, read:org"), "{reason}");
    assert!(!err.retryable());
    assert_no_secrets(&err);
}

#[tokio::test]
async fn a_403_with_the_right_scope_means_the_account_is_not_a_repository_admin() {
    let stub = HookApiStub::start().await;
    stub.fail_next_with_headers(
        "octocat/x",
        403,
        json!({"message": "Must have admin rights to Repository."}),
        &[
            ("X-OAuth-Scopes", "admin:repo_hook, repo"),
            ("X-Accepted-OAuth-Scopes", "admin:repo_hook"),
        ],
    );
    let err = stub
        .github()
        .get_hook(&token(), "octocat/x", "1")
        .await
        .unwrap_err();
    let reason = err.reason();
    assert!(reason.contains("lacks admin access"), "{reason}");
    assert!(reason.contains("Must have admin rights"), "{reason}");
    assert!(!reason.contains("token lacks"), "{reason}");
}

#[tokio::test]
async fn a_gitlab_token_without_api_scope_says_so() {
    let stub = HookApiStub::start().await;
    stub.set_token_scopes(HookProvider::GitLab, "read_api");
    let err = stub
        .gitlab()
        .create_hook(&token(), "group/project", &spec(GL_HOOK_URL, &[]))
        .await
        .unwrap_err();
    assert!(
        err.reason().contains("the GitLab token lacks api"),
        "{}",
        err.reason()
    );
    assert!(!err.retryable());
    assert_no_secrets(&err);
}

#[tokio::test]
async fn a_missing_repository_or_no_admin_access_is_not_found() {
    let stub = HookApiStub::start().await;
    stub.set_repo_missing("octocat/gone", true);
    let err = stub
        .github()
        .create_hook(&token(), "octocat/gone", &spec(HOOK_URL, &[]))
        .await
        .unwrap_err();
    assert!(err.is_not_found());
    assert_eq!(err.code(), "repository_not_found");
    let reason = err.reason();
    assert!(reason.contains("octocat/gone"), "{reason}");
    assert!(reason.contains("admin access"), "{reason}");
    assert!(!err.retryable());

    stub.set_repo_missing("group/gone", true);
    let err = stub
        .gitlab()
        .create_hook(&token(), "group/gone", &spec(GL_HOOK_URL, &[]))
        .await
        .unwrap_err();
    assert!(err.is_not_found());
    assert!(err.reason().contains("group/gone"));
}

#[tokio::test]
async fn a_validation_failure_quotes_the_provider_but_never_the_secret() {
    let stub = HookApiStub::start().await;
    let err = stub
        .github()
        .create_hook(&token(), "octocat/x", &spec(HOOK_URL, &["bogus"]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, HookError::Validation { status: 422, .. }),
        "{err:?}"
    );
    assert!(err.reason().contains("Validation Failed"));
    assert!(err.reason().contains("bogus is not a valid event name"));
    assert!(!err.retryable());

    // A provider that echoes the request back does not leak it through us.
    stub.fail_next("octocat/echo", 200, json!([]));
    stub.fail_next(
        "octocat/echo",
        422,
        json!({"message": "Validation Failed", "errors": [{"resource": "Hook", "code": "custom",
            "message": format!("secret {SECRET} and token {TOKEN} rejected")}]}),
    );
    let err = stub
        .github()
        .create_hook(&token(), "octocat/echo", &spec(HOOK_URL, &[]))
        .await
        .unwrap_err();
    assert!(err.reason().contains("rejected"), "{}", err.reason());
    assert_no_secrets(&err);

    // GitLab's 400 with a field map.
    stub.fail_next("group/p", 200, json!([]));
    stub.fail_next(
        "group/p",
        400,
        json!({"message": {"url": ["is blocked: Requests to localhost are not allowed"]}}),
    );
    let err = stub
        .gitlab()
        .create_hook(&token(), "group/p", &spec(GL_HOOK_URL, &[]))
        .await
        .unwrap_err();
    assert!(
        err.reason()
            .contains("url is blocked: Requests to localhost"),
        "{}",
        err.reason()
    );
}

#[tokio::test]
async fn a_provider_5xx_is_unavailable_and_retryable() {
    let stub = HookApiStub::start().await;
    stub.fail_next(
        "octocat/x",
        500,
        json!({"message": "Server Error", "secret": SECRET}),
    );
    let err = stub
        .github()
        .create_hook(&token(), "octocat/x", &spec(HOOK_URL, &[]))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        HookError::Unavailable {
            provider: HookProvider::GitHub,
            status: 500
        }
    );
    assert!(err.retryable());
    assert!(err.reason().contains("try again later"));
    assert_no_secrets(&err);

    stub.fail_next("group/p", 502, json!({"message": "502 Bad Gateway"}));
    let err = stub
        .gitlab()
        .delete_hook(&token(), "group/p", "7")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "provider_unavailable");
    assert!(err.retryable());
}

#[tokio::test]
async fn a_rate_limit_is_retryable_after_the_providers_wait() {
    let stub = HookApiStub::start().await;
    stub.fail_next_with_headers(
        "octocat/x",
        403,
        json!({"message": "API rate limit exceeded for user ID 1."}),
        &[("x-ratelimit-remaining", "0"), ("retry-after", "30")],
    );
    let err = stub
        .github()
        .get_hook(&token(), "octocat/x", "1")
        .await
        .unwrap_err();
    assert_eq!(
        err,
        HookError::RateLimited {
            provider: HookProvider::GitHub,
            retry_after_secs: Some(30)
        }
    );
    assert!(err.retryable());
    assert!(err.reason().contains("30 s"));
}

#[tokio::test]
async fn a_provider_slower_than_the_timeout_is_unreachable_and_retryable() {
    let stub = HookApiStub::start().await;
    stub.delay_next("octocat/slow", Duration::from_secs(3));
    let gh = GitHubHooks::new(&stub.url).with_timeout(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let err = gh
        .create_hook(&token(), "octocat/slow", &spec(HOOK_URL, &[]))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(
            err,
            HookError::Unreachable {
                timed_out: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.retryable());
    assert!(err.reason().contains("did not answer in time"));
    assert_no_secrets(&err);

    stub.delay_next("group/slow", Duration::from_secs(3));
    let gl = GitLabHooks::new(&stub.url).with_timeout(Duration::from_millis(200));
    let err = gl
        .delete_hook(&token(), "group/slow", "1")
        .await
        .unwrap_err();
    assert!(err.retryable(), "{err:?}");
}

#[tokio::test]
async fn a_provider_that_refuses_connections_is_unreachable_and_retryable() {
    // Bind then drop: nothing listens on that port any more.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gh = GitHubHooks::new(format!("http://127.0.0.1:{port}"));
    let err = gh
        .create_hook(&token(), "octocat/x", &spec(HOOK_URL, &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            HookError::Unreachable {
                timed_out: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.retryable());
    assert_no_secrets(&err);
}

#[tokio::test]
async fn no_client_spec_or_error_debug_output_holds_the_token_or_secret() {
    let stub = HookApiStub::start().await;
    let s = spec(HOOK_URL, &[]);
    let shown = format!(
        "{s:?} {:?} {:?} {:?}",
        token(),
        stub.github(),
        stub.gitlab()
    );
    assert!(!shown.contains(TOKEN) && !shown.contains(SECRET), "{shown}");

    let mut errors = Vec::new();
    stub.set_token_valid(false);
    errors.push(
        stub.github()
            .create_hook(&token(), "octocat/x", &s)
            .await
            .unwrap_err(),
    );
    stub.set_token_valid(true);
    for status in [401, 403, 404, 422, 500, 503, 429, 418] {
        stub.fail_next(
            "octocat/x",
            status,
            json!({"message": format!("{TOKEN} {SECRET}")}),
        );
        errors.push(
            stub.github()
                .update_hook(&token(), "octocat/x", "1", &s)
                .await
                .unwrap_err(),
        );
        stub.fail_next(
            "group/x",
            status,
            json!({"message": format!("{TOKEN} {SECRET}")}),
        );
        errors.push(
            stub.gitlab()
                .update_hook(&token(), "group/x", "1", &s)
                .await
                .unwrap_err(),
        );
    }
    for err in &errors {
        assert_no_secrets(err);
    }
}

// ---- OAuth ----

fn at(secs: i64) -> chrono::DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).unwrap()
}

#[test]
fn an_oauth_state_verifies_with_its_key_within_ten_minutes() {
    let key = Secret::new("state-key-0123456789abcdef0123456789abcdef");
    let t0 = at(1_700_000_000);
    let value = OAuthState::sign(&key, "usr_1", "org_1", HookProvider::GitHub, t0);
    let state = OAuthState::verify(
        &key,
        &value,
        t0 + chrono::Duration::minutes(9),
        OAuthState::MAX_AGE,
    )
    .unwrap();
    assert_eq!(state.user, "usr_1");
    assert_eq!(state.org, "org_1");
    assert_eq!(state.provider, HookProvider::GitHub);
    assert_eq!(state.issued_at, t0.timestamp());
    // Two states for the same user differ.
    assert_ne!(
        value,
        OAuthState::sign(&key, "usr_1", "org_1", HookProvider::GitHub, t0)
    );
}

#[test]
fn an_oauth_state_is_refused_when_tampered_expired_or_signed_with_another_key() {
    let key = Secret::new("state-key-0123456789abcdef0123456789abcdef");
    let t0 = at(1_700_000_000);
    let value = OAuthState::sign(&key, "usr_1", "org_1", HookProvider::GitLab, t0);
    let verify = |k: &Secret, v: &str, now| OAuthState::verify(k, v, now, OAuthState::MAX_AGE);

    // Expired.
    assert_eq!(
        verify(&key, &value, t0 + chrono::Duration::minutes(11)),
        Err(StateError::Expired)
    );
    // From the future (beyond clock skew).
    assert_eq!(
        verify(&key, &value, t0 - chrono::Duration::minutes(5)),
        Err(StateError::Expired)
    );
    // Another key.
    assert_eq!(
        verify(&Secret::new("another-key"), &value, t0),
        Err(StateError::BadSignature)
    );
    assert_eq!(verify(&Secret::new(""), &value, t0), Err(StateError::NoKey));
    // Another user's payload under this MAC.
    let (_, mac) = value.split_once('.').unwrap();
    let other = OAuthState::sign(&key, "usr_2", "org_1", HookProvider::GitLab, t0);
    let (payload2, _) = other.split_once('.').unwrap();
    assert_eq!(
        verify(&key, &format!("{payload2}.{mac}"), t0),
        Err(StateError::BadSignature)
    );
    // A flipped character in the MAC.
    let mut chars: Vec<char> = value.chars().collect();
    let last = chars.len() - 1;
    chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
    let flipped: String = chars.into_iter().collect();
    assert!(verify(&key, &flipped, t0).is_err());
    // Garbage.
    assert_eq!(verify(&key, "nonsense", t0), Err(StateError::Malformed));
    assert_eq!(verify(&key, "a.b!", t0), Err(StateError::Malformed));
}

#[tokio::test]
async fn a_github_code_is_exchanged_for_a_token_with_its_scopes() {
    let stub = HookApiStub::start().await;
    let issued = stub.grant_code("code-123");
    let oauth = stub.oauth();
    let now = at(1_700_000_000);
    let token = oauth
        .exchange_code(
            HookProvider::GitHub,
            &stub.oauth_app(),
            "code-123",
            "https://hookline.example.com/cb",
            now,
        )
        .await
        .unwrap();
    assert_eq!(token.token.expose(), issued.expose());
    assert_eq!(token.scopes, ["admin:repo_hook", "repo"]);
    assert!(!token.lacks_hook_scope(HookProvider::GitHub));
    assert_eq!(token.expires_at, None);
    assert!(!format!("{token:?}").contains(issued.expose()));

    let req = stub
        .requests()
        .into_iter()
        .find(|r| r.path == "/login/oauth/access_token")
        .unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(req.header("accept"), Some("application/json"));
    assert_eq!(req.body["code"], "code-123");

    // A code works once.
    let err = oauth
        .exchange_code(
            HookProvider::GitHub,
            &stub.oauth_app(),
            "code-123",
            "https://hookline.example.com/cb",
            now,
        )
        .await
        .unwrap_err();
    assert!(matches!(&err, OAuthError::Rejected { error, .. } if error == "bad_verification_code"));
    assert!(err.reason().contains("invalid or expired"));
    assert!(!err.retryable());
}

#[tokio::test]
async fn wrong_oauth_app_credentials_name_the_settings_and_never_the_secret() {
    let stub = HookApiStub::start().await;
    stub.grant_code("code-1");
    let app = OAuthApp::new("hookline-stub-client", Secret::new("wrong-client-secret"));
    for provider in [HookProvider::GitHub, HookProvider::GitLab] {
        let err = stub
            .oauth()
            .exchange_code(provider, &app, "code-1", "https://h/cb", Utc::now())
            .await
            .unwrap_err();
        let shown = format!("{err:?} {err} {}", err.reason());
        assert!(shown.contains("OAUTH_CLIENT_ID"), "{shown}");
        assert!(!shown.contains("wrong-client-secret"), "{shown}");
    }
}

#[tokio::test]
async fn a_gitlab_code_is_exchanged_for_an_expiring_token_that_refreshes() {
    let stub = HookApiStub::start().await;
    let issued = stub.grant_code("gl-code");
    let now = at(1_700_000_000);
    let oauth = stub.oauth();
    let token = oauth
        .exchange_code(
            HookProvider::GitLab,
            &stub.oauth_app(),
            "gl-code",
            "https://h/cb",
            now,
        )
        .await
        .unwrap();
    assert_eq!(token.token.expose(), issued.expose());
    assert_eq!(token.scopes, ["api"]);
    assert_eq!(
        token.expires_at,
        Some(now + chrono::Duration::seconds(7200))
    );
    let req = stub
        .requests()
        .into_iter()
        .find(|r| r.path == "/oauth/token")
        .unwrap();
    assert_eq!(req.body["grant_type"], "authorization_code");

    let refreshed = oauth
        .refresh(
            HookProvider::GitLab,
            &stub.oauth_app(),
            token.refresh_token.as_ref().unwrap(),
            now,
        )
        .await
        .unwrap();
    assert_ne!(refreshed.token.expose(), token.token.expose());

    let err = oauth
        .exchange_code(
            HookProvider::GitLab,
            &stub.oauth_app(),
            "gl-code",
            "https://h/cb",
            now,
        )
        .await
        .unwrap_err();
    assert!(matches!(&err, OAuthError::Rejected { error, .. } if error == "invalid_grant"));
}

#[tokio::test]
async fn the_stub_authorize_endpoint_redirects_back_with_a_code_and_the_state() {
    let stub = HookApiStub::start().await;
    let key = Secret::new("k");
    let now = Utc::now();
    let state = OAuthState::sign(&key, "usr_1", "org_1", HookProvider::GitLab, now);
    let url = stub.oauth().authorize_url(
        HookProvider::GitLab,
        hookline::hooks::stub::STUB_CLIENT_ID,
        "https://hookline.example.com/api/v1/oauth/gitlab/callback",
        &state,
        &[],
    );
    assert!(url.starts_with(&format!("{}/oauth/authorize?", stub.url)));
    let res = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    let location = url::Url::parse(res.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(location.path(), "/api/v1/oauth/gitlab/callback");
    let q: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(q["state"], state);
    OAuthState::verify(&key, &q["state"], now, OAuthState::MAX_AGE).unwrap();
    let token = stub
        .oauth()
        .exchange_code(
            HookProvider::GitLab,
            &stub.oauth_app(),
            &q["code"],
            "https://hookline.example.com/api/v1/oauth/gitlab/callback",
            now,
        )
        .await
        .unwrap();
    // The issued token manages hooks on the stub.
    stub.gitlab()
        .create_hook(&token.token, "group/project", &spec(GL_HOOK_URL, &[]))
        .await
        .unwrap();
}
