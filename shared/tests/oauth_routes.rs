//! The provider OAuth routes over HTTP on a running local server, against the GitHub/GitLab
//! stub's OAuth endpoints: authorize redirects with a signed state, the callback exchanges the
//! code and stores the token sealed for the user who started it (and the repositories API
//! then creates hooks with it), and every way a callback can be wrong is refused.

use chrono::{Duration as ChronoDuration, Utc};
use hookline::api::oauth::{local_state_key, OAuthSettings};
use hookline::auth::{LocalIssuer, OrgId, Scope, UserId};
use hookline::clock::SystemClock;
use hookline::config::Settings;
use hookline::hooks::oauth::OAuthState;
use hookline::hooks::stub::{HookApiStub, STUB_CLIENT_ID};
use hookline::hooks::HookProvider;
use hookline::ports::sqlite::Durability;
use hookline::providers::ProviderSecrets;
use hookline::runtime::local::{
    embedded_app, with_oauth, with_repositories, RepositoriesConfig, Server, LOCAL_QUEUE,
};
use hookline::secret::Secret;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// The public base URL the server believes it has; callbacks are rewritten onto the real one.
const BASE: &str = "https://hooks.example.com";

struct Env {
    server: Server,
    stub: HookApiStub,
    issuer: LocalIssuer,
    http: reqwest::Client,
    dir: tempfile::TempDir,
    /// The test browser's cookies for the server (name, value), as a browser keeps them.
    cookies: std::sync::Mutex<Vec<(String, String)>>,
}

fn stub_settings(stub: &HookApiStub) -> OAuthSettings {
    OAuthSettings {
        client: stub.oauth(),
        github: Some(stub.oauth_app()),
        gitlab: Some(stub.oauth_app()),
        state_key: None,
        public_base_url: None,
        success_url: None,
        state_max_age: OAuthState::MAX_AGE,
    }
}

async fn spawn() -> Env {
    spawn_with(|s| s).await
}

async fn spawn_with(tweak: impl FnOnce(OAuthSettings) -> OAuthSettings) -> Env {
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
    let settings = tweak(stub_settings(&stub));
    let app = with_repositories(
        app,
        dir.path(),
        BASE,
        RepositoriesConfig {
            github_api_url: stub.url().to_string(),
            gitlab_url: stub.url().to_string(),
            auth: None,
            rotation_overlap: Duration::from_secs(3600),
            oauth: Some(settings.clone()),
        },
        Arc::new(SystemClock),
    )
    .unwrap();
    let app = with_oauth(app, dir.path(), BASE, settings, None, Arc::new(SystemClock)).unwrap();
    let server = Server::start(app, "127.0.0.1:0".parse().unwrap(), 1)
        .await
        .unwrap();
    Env {
        issuer: LocalIssuer::open(dir.path()).unwrap(),
        server,
        stub,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        dir,
        cookies: Default::default(),
    }
}

struct Answer {
    status: u16,
    location: Option<String>,
    set_cookies: Vec<String>,
    body: Value,
    raw: String,
}

impl Env {
    fn token(&self, org: &str, user: &str, scopes: &[Scope]) -> String {
        let scopes: BTreeSet<Scope> = scopes.iter().copied().collect();
        self.issuer.issue(
            &OrgId::from(org),
            &UserId::from(user),
            &scopes,
            Duration::from_secs(600),
        )
    }

    fn writer(&self) -> String {
        self.token("org-a", "user-1", &[Scope::ReposRead, Scope::ReposWrite])
    }

    async fn get(&self, path_or_url: &str, bearer: Option<&str>) -> Answer {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.server.url())
        };
        let ours = url.starts_with(&self.server.url());
        let mut req = self.http.get(url);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let jar = self.cookies.lock().unwrap().clone();
        if ours && !jar.is_empty() {
            let header: Vec<String> = jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header("cookie", header.join("; "));
        }
        let res = answer(req.send().await.unwrap()).await;
        if ours {
            for set in &res.set_cookies {
                let (name, value) = set.split(';').next().unwrap().split_once('=').unwrap();
                self.keep_cookie(name, value);
            }
        }
        res
    }

    fn keep_cookie(&self, name: &str, value: &str) {
        let mut jar = self.cookies.lock().unwrap();
        jar.retain(|(k, _)| k != name);
        jar.push((name.to_owned(), value.to_owned()));
    }

    /// As if the next request came from another browser.
    fn forget_cookies(&self) {
        self.cookies.lock().unwrap().clear();
    }

    /// A state signed here (not through authorize), and the cookie of the browser it was
    /// issued to.
    fn issue_state(&self, provider: HookProvider, issued_at: chrono::DateTime<Utc>) -> String {
        let (value, state) =
            OAuthState::issue(&self.state_key(), "user-1", "org-a", provider, issued_at);
        self.keep_cookie(
            &format!("hookline_oauth_{}", provider.as_str()),
            &state.nonce,
        );
        value
    }

    async fn authorize(&self, provider: &str, bearer: &str) -> Answer {
        self.get(&format!("/api/v1/oauth/{provider}/authorize"), Some(bearer))
            .await
    }

    /// A valid state for org-a/user-1, from the authorize route.
    async fn state(&self, provider: &str) -> String {
        let a = self.authorize(provider, &self.writer()).await;
        assert_eq!(a.status, 302, "{}", a.raw);
        query(a.location.as_deref().unwrap(), "state").unwrap()
    }

    async fn callback(&self, provider: &str, params: &[(&str, &str)]) -> Answer {
        let q = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        self.get(&format!("/api/v1/oauth/{provider}/callback?{q}"), None)
            .await
    }

    fn state_key(&self) -> Secret {
        local_state_key(self.dir.path()).unwrap()
    }
}

async fn answer(res: reqwest::Response) -> Answer {
    let status = res.status().as_u16();
    let location = res
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string());
    let set_cookies = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let raw = res.text().await.unwrap();
    Answer {
        status,
        location,
        set_cookies,
        body: serde_json::from_str(&raw).unwrap_or(Value::Null),
        raw,
    }
}

fn query(url: &str, name: &str) -> Option<String> {
    let parsed = url::Url::parse(url).unwrap();
    parsed
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test]
async fn a_github_round_trip_stores_a_token_the_repositories_api_then_uses() {
    let env = spawn().await;
    let bearer = env.writer();

    // 1. Authorize: a redirect to GitHub's authorize page with a signed state.
    let a = env.authorize("github", &bearer).await;
    assert_eq!(a.status, 302, "{}", a.raw);
    let location = a.location.unwrap();
    assert!(
        location.starts_with(&format!("{}/login/oauth/authorize?", env.stub.url())),
        "{location}"
    );
    assert_eq!(
        query(&location, "client_id").as_deref(),
        Some(STUB_CLIENT_ID)
    );
    assert_eq!(
        query(&location, "redirect_uri").as_deref(),
        Some("https://hooks.example.com/api/v1/oauth/github/callback")
    );
    assert_eq!(
        query(&location, "scope").as_deref(),
        Some("admin:repo_hook repo")
    );
    let state = query(&location, "state").unwrap();
    let signed = OAuthState::verify(&env.state_key(), &state, Utc::now(), OAuthState::MAX_AGE)
        .expect("the state verifies with the data dir's key");
    assert_eq!(
        (signed.org.as_str(), signed.user.as_str(), signed.provider),
        ("org-a", "user-1", HookProvider::GitHub)
    );

    // 2. The user approves at GitHub (the stub approves at once) and is sent back.
    let approved = env.get(&location, None).await;
    assert_eq!(approved.status, 302, "{}", approved.raw);
    let back = approved.location.unwrap();
    assert!(back.starts_with(&format!("{BASE}/api/v1/oauth/github/callback?")));
    let done = env
        .get(&back.replacen(BASE, &env.server.url(), 1), None)
        .await;
    assert_eq!(done.status, 200, "{}", done.raw);
    assert_eq!(done.body["provider"], "github");
    assert_eq!(done.body["connected"], true);
    assert_eq!(done.body["scopes"], json!(["admin:repo_hook", "repo"]));
    assert!(
        !done.raw.contains("stub_oauth_"),
        "the token is never returned"
    );

    // 3. The repositories API creates the hook with that user's OAuth token.
    let res = env
        .http
        .post(format!("{}/api/v1/repositories/connect", env.server.url()))
        .bearer_auth(&bearer)
        .json(&json!({"repository_full_name": "acme/hookline-demo"}))
        .send()
        .await
        .unwrap();
    let connected = answer(res).await;
    assert_eq!(connected.status, 201, "{}", connected.raw);
    assert_eq!(
        connected.body["webhook_status"], "active",
        "{}",
        connected.raw
    );
    let create = env
        .stub
        .requests()
        .into_iter()
        .rfind(|r| r.method == "POST" && r.path.ends_with("/hooks"))
        .expect("a hook was created");
    let used = create.token.expect("with a token");
    assert!(used.expose().starts_with("stub_oauth_"), "the OAuth token");

    // Another user of the same org has no token: connecting fails with a reason.
    let other = env.token("org-a", "user-2", &[Scope::ReposWrite, Scope::ReposRead]);
    let res = env
        .http
        .post(format!("{}/api/v1/repositories/connect", env.server.url()))
        .bearer_auth(&other)
        .json(&json!({"repository_full_name": "acme/other"}))
        .send()
        .await
        .unwrap();
    let theirs = answer(res).await;
    assert_ne!(theirs.body["webhook_status"], "active", "{}", theirs.raw);
}

#[tokio::test]
async fn an_expiring_gitlab_token_is_renewed_before_a_hook_call() {
    let env = spawn().await;
    // GitLab tokens that expire within the renewal margin: every use renews first.
    env.stub.set_gitlab_token_lifetime(60);
    let state = env.state("gitlab").await;
    let first = env.stub.grant_code("code-r");
    let done = env
        .callback("gitlab", &[("code", "code-r"), ("state", &state)])
        .await;
    assert_eq!(done.status, 200, "{}", done.raw);
    // The granted token no longer works at GitLab: only a renewed one can create the hook.
    env.stub.revoke_token(first.expose());
    let connect = |repo: &'static str| {
        let env = &env;
        async move {
            let res = env
                .http
                .post(format!("{}/api/v1/repositories/connect", env.server.url()))
                .bearer_auth(env.writer())
                .json(&json!({"repository_full_name": repo, "provider": "gitlab"}))
                .send()
                .await
                .unwrap();
            answer(res).await
        }
    };
    for repo in ["acme/renewed-once", "acme/renewed-twice"] {
        let connected = connect(repo).await;
        assert_eq!(connected.status, 201, "{}", connected.raw);
        assert_eq!(
            connected.body["webhook_status"], "active",
            "{}",
            connected.raw
        );
    }
    let requests = env.stub.requests();
    let renewals = requests
        .iter()
        .filter(|r| r.path == "/oauth/token" && r.body["grant_type"] == "refresh_token")
        .count();
    assert_eq!(
        renewals, 2,
        "each use renewed, with the refresh token of the one before"
    );
    let used: Vec<String> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/hooks"))
        .map(|r| r.token.clone().expect("a token").expose().to_owned())
        .collect();
    assert_eq!(used.len(), 2);
    assert!(
        used.iter().all(|t| t != first.expose()),
        "never the expired token"
    );

    // A grant GitLab no longer renews: the answer says to connect again, and how.
    env.stub.forget_refresh_tokens();
    let refused = connect("acme/not-renewed").await;
    assert_ne!(refused.body["webhook_status"], "active", "{}", refused.raw);
    assert!(
        refused.raw.contains("/api/v1/oauth/gitlab/authorize"),
        "{}",
        refused.raw
    );
}

#[tokio::test]
async fn a_granted_code_is_stored_for_the_user_in_the_state_never_returned() {
    let env = spawn().await;
    let state = env.state("gitlab").await;
    let token = env.stub.grant_code("code-1");
    let done = env
        .callback("gitlab", &[("code", "code-1"), ("state", &state)])
        .await;
    assert_eq!(done.status, 200, "{}", done.raw);
    assert_eq!(
        done.body,
        json!({
            "provider": "gitlab",
            "connected": true,
            "scopes": ["api"],
            "expires_at": done.body["expires_at"],
        })
    );
    assert!(done.body["expires_at"].is_string(), "GitLab tokens expire");
    assert!(!done.raw.contains(token.expose()));

    // Sealed at rest: the data dir holds no plaintext token.
    for entry in std::fs::read_dir(env.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes
                    .windows(token.expose().len())
                    .any(|w| w == token.expose().as_bytes()),
                "{} holds the plaintext token",
                path.display()
            );
        }
    }

    // A code is good once: the provider refuses it the second time.
    let again = env
        .callback("gitlab", &[("code", "code-1"), ("state", &state)])
        .await;
    assert_eq!(again.status, 400, "{}", again.raw);
    assert_eq!(again.body["error"], "oauth_rejected");
}

#[tokio::test]
async fn authorize_can_answer_json_for_single_page_apps() {
    let env = spawn().await;
    let a = env
        .get(
            "/api/v1/oauth/gitlab/authorize?format=json",
            Some(&env.writer()),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.raw);
    let url = a.body["authorize_url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/oauth/authorize?", env.stub.url())));
    assert_eq!(query(url, "response_type").as_deref(), Some("code"));
    assert_eq!(query(url, "scope").as_deref(), Some("api"));
    assert_eq!(
        query(url, "redirect_uri").as_deref(),
        Some("https://hooks.example.com/api/v1/oauth/gitlab/callback")
    );
    assert_eq!(a.body["expires_in"], 600);
}

#[tokio::test]
async fn authorize_needs_a_bearer_token_with_repos_write() {
    let env = spawn().await;
    let none = env.get("/api/v1/oauth/github/authorize", None).await;
    assert_eq!(none.status, 401, "{}", none.raw);
    let bad = env
        .get("/api/v1/oauth/github/authorize", Some("not-a-jwt"))
        .await;
    assert_eq!(bad.status, 401);
    let reader = env.token("org-a", "user-1", &[Scope::ReposRead]);
    let read_only = env.authorize("github", &reader).await;
    assert_eq!(read_only.status, 403, "{}", read_only.raw);
    assert!(read_only.raw.contains("repos:write"));
    let admin = env.token("org-a", "user-1", &[Scope::Admin]);
    assert_eq!(env.authorize("github", &admin).await.status, 302);
}

#[tokio::test]
async fn unknown_providers_and_routes_are_404_and_other_methods_405() {
    let env = spawn().await;
    let bearer = env.writer();
    for path in [
        "/api/v1/oauth/bitbucket/authorize",
        "/api/v1/oauth/github/elsewhere",
        "/api/v1/oauth/github",
    ] {
        assert_eq!(env.get(path, Some(&bearer)).await.status, 404, "{path}");
    }
    let res = env
        .http
        .post(format!(
            "{}/api/v1/oauth/github/authorize",
            env.server.url()
        ))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 405);
}

#[tokio::test]
async fn an_unconfigured_provider_says_which_variables_to_set() {
    let env = spawn_with(|s| OAuthSettings { github: None, ..s }).await;
    let a = env.authorize("github", &env.writer()).await;
    assert_eq!(a.status, 503, "{}", a.raw);
    assert_eq!(a.body["error"], "oauth_not_configured");
    assert_eq!(
        a.body["missing"],
        json!(["GITHUB_OAUTH_CLIENT_ID", "GITHUB_OAUTH_CLIENT_SECRET"])
    );
    assert!(a.body["message"]
        .as_str()
        .unwrap()
        .contains("GITHUB_OAUTH_CLIENT_ID"));
    // GitLab is configured and still works.
    assert_eq!(env.authorize("gitlab", &env.writer()).await.status, 302);
}

#[tokio::test]
async fn a_tampered_or_foreign_state_is_refused_and_nothing_is_exchanged() {
    let env = spawn().await;
    let state = env.state("github").await;
    env.stub.grant_code("code-t");
    env.stub.clear_requests();

    // One character of the payload changed.
    let mut tampered = state.clone().into_bytes();
    tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    // Signed by someone else's key, for the same user.
    let foreign = OAuthState::sign(
        &Secret::new("another-servers-key-0123456789abcdef"),
        "user-1",
        "org-a",
        HookProvider::GitHub,
        Utc::now(),
    );
    for bad in [tampered.as_str(), foreign.as_str(), "garbage", "a.b"] {
        let res = env
            .callback("github", &[("code", "code-t"), ("state", bad)])
            .await;
        assert_eq!(res.status, 400, "{bad}: {}", res.raw);
        assert_eq!(res.body["error"], "invalid_state", "{bad}");
    }
    let missing = env.callback("github", &[("code", "code-t")]).await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.body["error"], "invalid_state");
    assert!(
        env.stub.requests().is_empty(),
        "no code is exchanged for a bad state"
    );
    // The genuine state still works.
    let ok = env
        .callback("github", &[("code", "code-t"), ("state", &state)])
        .await;
    assert_eq!(ok.status, 200, "{}", ok.raw);
}

#[tokio::test]
async fn a_state_is_accepted_only_from_the_browser_that_asked_for_it() {
    let env = spawn().await;
    // The attacker starts a flow with their own Hookline account...
    let a = env.authorize("github", &env.writer()).await;
    assert_eq!(a.status, 302, "{}", a.raw);
    let cookie = a
        .set_cookies
        .iter()
        .find(|c| c.starts_with("hookline_oauth_github="))
        .expect("authorize binds the state to this browser");
    for attribute in [
        "Path=/api/v1/oauth/github/callback",
        "HttpOnly",
        "SameSite=Lax",
        "Max-Age=600",
        "Secure",
    ] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    let state = query(a.location.as_deref().unwrap(), "state").unwrap();
    // ...and the victim's browser, which never asked, comes back with a granted code.
    env.forget_cookies();
    env.stub.grant_code("code-victim");
    env.stub.clear_requests();
    let res = env
        .callback("github", &[("code", "code-victim"), ("state", &state)])
        .await;
    assert_eq!(res.status, 400, "{}", res.raw);
    assert_eq!(res.body["error"], "invalid_state");
    assert!(res.body["message"]
        .as_str()
        .unwrap()
        .contains("this browser did not start"));
    assert!(env.stub.requests().is_empty(), "no code is exchanged");
    // Another browser's cookie does not fit this state either.
    let _ = env.state("github").await;
    let res = env
        .callback("github", &[("code", "code-victim"), ("state", &state)])
        .await;
    assert_eq!(res.body["error"], "invalid_state", "{}", res.raw);
    // A GitLab flow in the same browser keeps its own cookie beside GitHub's.
    let gitlab = env.state("gitlab").await;
    let github = env.state("github").await;
    env.stub.grant_code("code-own");
    let ok = env
        .callback("github", &[("code", "code-own"), ("state", &github)])
        .await;
    assert_eq!(ok.status, 200, "{}", ok.raw);
    env.stub.grant_code("code-own-2");
    let ok = env
        .callback("gitlab", &[("code", "code-own-2"), ("state", &gitlab)])
        .await;
    assert_eq!(ok.status, 200, "{}", ok.raw);
}

#[tokio::test]
async fn a_state_older_than_ten_minutes_is_expired() {
    let env = spawn().await;
    env.stub.grant_code("code-old");
    let old = env.issue_state(
        HookProvider::GitHub,
        Utc::now() - ChronoDuration::seconds(11 * 60),
    );
    let res = env
        .callback("github", &[("code", "code-old"), ("state", &old)])
        .await;
    assert_eq!(res.status, 400, "{}", res.raw);
    assert_eq!(res.body["error"], "state_expired");
    assert!(res.body["message"].as_str().unwrap().contains("10 minutes"));

    // Nine minutes old is fine.
    let recent = env.issue_state(
        HookProvider::GitHub,
        Utc::now() - ChronoDuration::seconds(9 * 60),
    );
    let ok = env
        .callback("github", &[("code", "code-old"), ("state", &recent)])
        .await;
    assert_eq!(ok.status, 200, "{}", ok.raw);
}

#[tokio::test]
async fn a_state_for_one_provider_is_refused_on_the_other() {
    let env = spawn().await;
    let github_state = env.state("github").await;
    env.stub.grant_code("code-x");
    let res = env
        .callback("gitlab", &[("code", "code-x"), ("state", &github_state)])
        .await;
    assert_eq!(res.status, 400, "{}", res.raw);
    assert_eq!(res.body["error"], "invalid_state");
    assert!(res.body["message"]
        .as_str()
        .unwrap()
        .contains("issued for GitHub"));
}

#[tokio::test]
async fn a_callback_without_a_code_or_after_a_refusal_says_so() {
    let env = spawn().await;
    let state = env.state("github").await;
    let no_code = env.callback("github", &[("state", &state)]).await;
    assert_eq!(no_code.status, 400, "{}", no_code.raw);
    assert_eq!(no_code.body["error"], "invalid_request");
    assert!(no_code.raw.contains("code"));

    let denied = env
        .callback(
            "github",
            &[
                ("error", "access_denied"),
                (
                    "error_description",
                    "The user has denied your application access.",
                ),
                ("state", &state),
            ],
        )
        .await;
    assert_eq!(denied.status, 400);
    assert_eq!(denied.body["error"], "oauth_denied");
    assert!(denied.raw.contains("declined"));

    let unknown_code = env
        .callback("github", &[("code", "never-granted"), ("state", &state)])
        .await;
    assert_eq!(unknown_code.status, 400, "{}", unknown_code.raw);
    assert_eq!(unknown_code.body["error"], "oauth_rejected");
    assert!(unknown_code.raw.contains("invalid or expired"));
}

#[tokio::test]
async fn a_token_without_the_hook_scope_is_refused_and_not_stored() {
    let env = spawn().await;
    env.stub
        .set_token_scopes(HookProvider::GitHub, "repo, read:user");
    let state = env.state("github").await;
    env.stub.grant_code("code-s");
    let res = env
        .callback("github", &[("code", "code-s"), ("state", &state)])
        .await;
    assert_eq!(res.status, 400, "{}", res.raw);
    assert_eq!(res.body["error"], "missing_scope");
    assert_eq!(res.body["missing_scope"], "admin:repo_hook");
    assert!(res.body["message"]
        .as_str()
        .unwrap()
        .contains("admin:repo_hook"));

    // Nothing stored: connecting a repository finds no token for the user.
    let res = env
        .http
        .post(format!("{}/api/v1/repositories/connect", env.server.url()))
        .bearer_auth(env.writer())
        .json(&json!({"repository_full_name": "acme/hookline-demo"}))
        .send()
        .await
        .unwrap();
    let connected = answer(res).await;
    assert_ne!(
        connected.body["webhook_status"], "active",
        "{}",
        connected.raw
    );

    env.stub.set_token_scopes(HookProvider::GitLab, "read_api");
    let state = env.state("gitlab").await;
    env.stub.grant_code("code-g");
    let res = env
        .callback("gitlab", &[("code", "code-g"), ("state", &state)])
        .await;
    assert_eq!(res.status, 400, "{}", res.raw);
    assert_eq!(res.body["missing_scope"], "api");
}

#[tokio::test]
async fn the_callback_redirects_to_the_success_url_when_one_is_set() {
    let env = spawn_with(|s| OAuthSettings {
        success_url: Some("https://app.example.com/settings?tab=integrations".into()),
        ..s
    })
    .await;
    let state = env.state("github").await;
    env.stub.grant_code("code-r");
    let res = env
        .callback("github", &[("code", "code-r"), ("state", &state)])
        .await;
    assert_eq!(res.status, 302, "{}", res.raw);
    assert_eq!(
        res.location.as_deref(),
        Some("https://app.example.com/settings?tab=integrations&provider=github&connected=true")
    );
}

#[tokio::test]
async fn the_local_state_key_persists_in_the_data_dir_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let first = local_state_key(dir.path()).unwrap();
    let again = local_state_key(dir.path()).unwrap();
    assert_eq!(first.expose(), again.expose());
    assert_eq!(first.expose().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("oauth-state.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[tokio::test]
async fn a_missing_or_short_state_key_says_which_variable_to_set() {
    let env = spawn_with(|s| OAuthSettings {
        state_key: Some(Secret::new("too-short")),
        ..s
    })
    .await;
    let a = env.authorize("github", &env.writer()).await;
    assert_eq!(a.status, 503, "{}", a.raw);
    assert_eq!(a.body["missing"], json!(["HOOKLINE_OAUTH_STATE_KEY"]));
    let c = env
        .callback("github", &[("code", "c"), ("state", "x.y")])
        .await;
    assert_eq!(c.status, 503, "{}", c.raw);
}
