//! A local stand-in for the GitHub and GitLab REST APIs, for tests and walkthroughs: an axum
//! server on `127.0.0.1:0` with in-memory state that answers the hook and OAuth endpoints the
//! way the providers' docs show (201 with the hook JSON, 204 on delete, 404, GitHub's 422
//! "Hook already exists on this repository", 401/403 with their error bodies).
//!
//! One server plays both providers: GitHub's API at [`HookApiStub::url`] (`/repos/…`,
//! `/login/oauth/…`) and GitLab's at the same base (`/api/v4/projects/…`, `/oauth/…`), so
//! `GITHUB_API_URL`, `GITHUB_OAUTH_URL` and `GITLAB_URL` can all point at it.
//!
//! Unlike the providers, [`HookApiStub::hooks`] returns each hook's secret as the client sent
//! it: tests sign deliveries with it.
//!
//! It also answers the repository (`GET /repos/{owner}/{repo}`, `GET /api/v4/projects/:id`)
//! and ping endpoints (`POST …/hooks/{id}/pings`, `POST …/hooks/:hook_id/test/push_events`),
//! and can be made to do what people do by hand: delete, deactivate or edit a hook, revoke a
//! token, archive a repository. With [`HookApiStub::deliver_to`] a ping is delivered the way
//! the provider would — signed with the hook's secret, to the hook URL's path on that origin
//! (the tunnel a real provider would reach).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::Router;
use chrono::{SecondsFormat, Utc};
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use super::gitlab::EVENT_FLAGS;
use super::oauth::OAuthClient;
use super::{decode_segment, GitHubHooks, GitLabHooks, HookProvider};
use crate::secret::Secret;

/// The OAuth client id the stub's token endpoints accept.
pub const STUB_CLIENT_ID: &str = "hookline-stub-client";
/// The OAuth client secret the stub's token endpoints accept.
pub const STUB_CLIENT_SECRET: &str = "hookline-stub-client-secret";

const GITHUB_DOCS: &str = "https://docs.github.com/rest/repos/webhooks";

/// A hook the stub holds, with the secret (GitHub's `config.secret`, GitLab's `token`).
#[derive(Debug, Clone)]
pub struct StubHook {
    pub provider: HookProvider,
    pub id: u64,
    /// `owner/repo` or the GitLab project path.
    pub repo: String,
    pub url: String,
    pub secret: Option<Secret>,
    /// GitHub's event names, or GitLab's `*_events` flags that are on.
    pub events: Vec<String>,
    pub active: bool,
    /// GitHub's `config.content_type`.
    pub content_type: Option<String>,
    /// GitHub's `config.insecure_ssl`.
    pub insecure_ssl: Option<String>,
    /// GitLab's `enable_ssl_verification`.
    pub enable_ssl_verification: Option<bool>,
    pub created_at: String,
    pub updated_at: String,
}

/// One request the stub received.
#[derive(Debug, Clone)]
pub struct StubRequest {
    pub method: String,
    /// The path as sent (GitLab's project id still encoded).
    pub path: String,
    pub query: Option<String>,
    pub provider: Option<HookProvider>,
    /// The repository or project path the request addressed.
    pub repo: Option<String>,
    /// The JSON body, or a form body as a JSON object; `Null` when empty.
    pub body: Value,
    /// The token sent (`Authorization: Bearer|token …` or `PRIVATE-TOKEN`).
    pub token: Option<Secret>,
    /// Every header but `authorization` and `private-token`, names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl StubRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone)]
struct Failure {
    status: u16,
    body: Value,
    headers: Vec<(String, String)>,
}

/// A repository's (GitHub) or project's (GitLab) state.
#[derive(Debug, Clone, Default)]
struct RepoState {
    archived: bool,
    pushed_at: Option<String>,
    /// Other activity (issues, comments, merge requests): GitLab's `last_activity_at`
    /// counts it, its push events do not.
    active_at: Option<String>,
}

/// GitLab's `GET /projects/:id/events` (newest first; `action=pushed` keeps the pushes,
/// `per_page` is honoured): a push event at the project's last push, and one for its other
/// activity.
fn project_events(call: &Call, state: &RepoState) -> Reply {
    let query: Vec<(String, String)> = call
        .query
        .as_deref()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let only_pushes = param("action").as_deref() == Some("pushed");
    let per_page = param("per_page")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(20);
    let mut events: Vec<(String, Value)> = Vec::new();
    if let Some(at) = &state.pushed_at {
        events.push((
            at.clone(),
            json!({"action_name": "pushed to", "created_at": at, "push_data": {"ref": "main"}}),
        ));
    }
    if let (Some(at), false) = (&state.active_at, only_pushes) {
        events.push((
            at.clone(),
            json!({"action_name": "commented on", "created_at": at}),
        ));
    }
    events.sort_by(|a, b| b.0.cmp(&a.0));
    let page: Vec<Value> = events.into_iter().take(per_page).map(|(_, e)| e).collect();
    Reply::json(200, Value::Array(page))
}

/// A delivery the stub sends once its answer is out (a ping).
struct Outgoing {
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

struct Inner {
    base: String,
    repo_states: HashMap<String, RepoState>,
    deliver_to: Option<String>,
    outgoing: Vec<Outgoing>,
    next_hook_id: u64,
    next_project_id: u64,
    hooks: Vec<StubHook>,
    projects: HashMap<String, u64>,
    missing: HashSet<String>,
    failures: HashMap<String, VecDeque<Failure>>,
    delays: HashMap<String, VecDeque<Duration>>,
    tokens_valid: bool,
    revoked: HashSet<String>,
    github_scopes: String,
    gitlab_scopes: String,
    /// `expires_in` of the GitLab tokens the token endpoint hands out (GitLab: 7200).
    gitlab_token_lifetime: i64,
    max_per_page: usize,
    requests: Vec<StubRequest>,
    codes: HashMap<String, String>,
    refresh_tokens: HashMap<String, String>,
}

type Shared = Arc<Mutex<Inner>>;

/// The running stub. Dropping it stops the server.
pub struct HookApiStub {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub url: String,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for HookApiStub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookApiStub")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Drop for HookApiStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HookApiStub {
    /// Bind `127.0.0.1:0` and serve until dropped.
    pub async fn start() -> HookApiStub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("a bound address");
        let url = format!("http://{addr}");
        let state: Shared = Arc::new(Mutex::new(Inner {
            base: url.clone(),
            repo_states: HashMap::new(),
            deliver_to: None,
            outgoing: Vec::new(),
            next_hook_id: 1_000_001,
            next_project_id: 101,
            hooks: Vec::new(),
            projects: HashMap::new(),
            missing: HashSet::new(),
            failures: HashMap::new(),
            delays: HashMap::new(),
            tokens_valid: true,
            revoked: HashSet::new(),
            github_scopes: "admin:repo_hook, repo".into(),
            gitlab_scopes: "api".into(),
            gitlab_token_lifetime: 7200,
            max_per_page: 100,
            requests: Vec::new(),
            codes: HashMap::new(),
            refresh_tokens: HashMap::new(),
        }));
        let router = Router::new().fallback(handle).with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        HookApiStub { url, state, task }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A GitHub client pointed at the stub.
    pub fn github(&self) -> GitHubHooks {
        GitHubHooks::new(&self.url)
    }

    /// A GitLab client pointed at the stub.
    pub fn gitlab(&self) -> GitLabHooks {
        GitLabHooks::new(&self.url)
    }

    /// An OAuth client whose GitHub and GitLab endpoints are the stub's.
    pub fn oauth(&self) -> OAuthClient {
        OAuthClient::new(&self.url, &self.url)
    }

    /// The OAuth app the stub's token endpoints accept.
    pub fn oauth_app(&self) -> super::oauth::OAuthApp {
        super::oauth::OAuthApp::new(STUB_CLIENT_ID, Secret::new(STUB_CLIENT_SECRET))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.state)
    }

    /// The hooks on a repository (either provider), with the secrets the client sent.
    pub fn hooks(&self, repo: &str) -> Vec<StubHook> {
        self.lock()
            .hooks
            .iter()
            .filter(|h| h.repo == repo)
            .cloned()
            .collect()
    }

    /// One hook by id.
    pub fn hook(&self, id: u64) -> Option<StubHook> {
        self.lock().hooks.iter().find(|h| h.id == id).cloned()
    }

    /// A hook that exists before the client arrives (someone made it by hand, or an earlier
    /// connection left it). `events`: GitHub event names or GitLab flags.
    pub fn add_hook(
        &self,
        provider: HookProvider,
        repo: &str,
        url: &str,
        secret: &str,
        events: &[&str],
    ) -> StubHook {
        let mut s = self.lock();
        if provider == HookProvider::GitLab {
            s.project_id(repo);
        }
        let hook = s.new_hook(provider, repo, url);
        let hook = StubHook {
            secret: Some(Secret::new(secret)),
            events: events.iter().map(|e| e.to_string()).collect(),
            ..hook
        };
        s.hooks.push(hook.clone());
        hook
    }

    /// Delete a hook behind the client's back (a user removed it in the provider's settings).
    pub fn remove_hook(&self, id: u64) -> bool {
        let mut s = self.lock();
        let before = s.hooks.len();
        s.hooks.retain(|h| h.id != id);
        s.hooks.len() != before
    }

    /// Change a hook behind the client's back (a user edited it in the provider's settings:
    /// its URL, events, content type, or `active`).
    pub fn edit_hook(&self, id: u64, edit: impl FnOnce(&mut StubHook)) -> bool {
        let mut s = self.lock();
        match s.hooks.iter_mut().find(|h| h.id == id) {
            Some(h) => {
                edit(h);
                h.updated_at = now();
                true
            }
            None => false,
        }
    }

    /// Deactivate a hook (GitHub's "Active" box unticked; GitLab's hook disabled).
    pub fn deactivate_hook(&self, id: u64) -> bool {
        self.edit_hook(id, |h| h.active = false)
    }

    /// Archive (or unarchive) a repository: it reads as `archived` and its hooks become
    /// read-only (403), as GitHub and GitLab answer.
    pub fn set_repo_archived(&self, repo: &str, archived: bool) {
        self.lock()
            .repo_states
            .entry(repo.to_string())
            .or_default()
            .archived = archived;
    }

    /// Activity on a GitLab project that is not a push (an issue, a comment, a merge
    /// request): it moves `last_activity_at`, and shows in no `action=pushed` event.
    pub fn set_activity_at(&self, repo: &str, at: chrono::DateTime<Utc>) {
        self.lock()
            .repo_states
            .entry(repo.to_string())
            .or_default()
            .active_at = Some(at.to_rfc3339_opts(SecondsFormat::Secs, true));
    }

    /// When the repository was last pushed to (GitHub `pushed_at`; GitLab's latest push
    /// event, and `last_activity_at`).
    pub fn set_pushed_at(&self, repo: &str, at: chrono::DateTime<Utc>) {
        self.lock()
            .repo_states
            .entry(repo.to_string())
            .or_default()
            .pushed_at = Some(at.to_rfc3339_opts(SecondsFormat::Secs, true));
    }

    /// Deliver pings from now on: to the hook URL's path (and query) on `origin`.
    pub fn deliver_to(&self, origin: &str) {
        self.lock().deliver_to = Some(origin.trim_end_matches('/').to_string());
    }

    /// The next request for `repo` answers `status` with `body` (queued: call twice for two).
    pub fn fail_next(&self, repo: &str, status: u16, body: Value) {
        self.fail_next_with_headers(repo, status, body, &[]);
    }

    /// Like [`fail_next`](Self::fail_next), with response headers (`X-OAuth-Scopes`, …).
    pub fn fail_next_with_headers(
        &self,
        repo: &str,
        status: u16,
        body: Value,
        headers: &[(&str, &str)],
    ) {
        self.lock()
            .failures
            .entry(repo.to_string())
            .or_default()
            .push_back(Failure {
                status,
                body,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            });
    }

    /// The next request for `repo` waits `delay` before answering (to test timeouts).
    pub fn delay_next(&self, repo: &str, delay: Duration) {
        self.lock()
            .delays
            .entry(repo.to_string())
            .or_default()
            .push_back(delay);
    }

    /// `false`: every token is refused (401 "Bad credentials" / "401 Unauthorized").
    pub fn set_token_valid(&self, valid: bool) {
        self.lock().tokens_valid = valid;
    }

    /// How long the GitLab tokens handed out from now on last (`expires_in`, seconds).
    pub fn set_gitlab_token_lifetime(&self, secs: i64) {
        self.lock().gitlab_token_lifetime = secs;
    }

    /// Forget every refresh token handed out: refreshing fails as with a revoked grant.
    pub fn forget_refresh_tokens(&self) {
        self.lock().refresh_tokens.clear();
    }

    /// Refuse one token from now on.
    pub fn revoke_token(&self, token: &str) {
        self.lock().revoked.insert(token.to_string());
    }

    /// The scopes every token has. GitHub's hook endpoints need `admin:repo_hook` (or
    /// `write:repo_hook`, `read:repo_hook` to read); GitLab's need `api`.
    pub fn set_token_scopes(&self, provider: HookProvider, scopes: &str) {
        let mut s = self.lock();
        match provider {
            HookProvider::GitHub => s.github_scopes = scopes.to_string(),
            HookProvider::GitLab => s.gitlab_scopes = scopes.to_string(),
        }
    }

    /// Make a repository (or GitLab project) answer 404, or exist again.
    pub fn set_repo_missing(&self, repo: &str, missing: bool) {
        let mut s = self.lock();
        if missing {
            s.missing.insert(repo.to_string());
        } else {
            s.missing.remove(repo);
        }
    }

    /// The GitLab project id of a path (assigned on first sight).
    pub fn project_id(&self, path: &str) -> u64 {
        self.lock().project_id(path)
    }

    /// Cap `per_page` on list endpoints, to exercise pagination with a few hooks.
    pub fn set_max_per_page(&self, n: usize) {
        self.lock().max_per_page = n.max(1);
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<StubRequest> {
        self.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// Make `code` exchangeable (once) at either token endpoint; returns the token it yields.
    pub fn grant_code(&self, code: &str) -> Secret {
        let token = format!("stub_oauth_{}", hex::encode(rand::random::<[u8; 12]>()));
        self.lock().codes.insert(code.to_string(), token.clone());
        Secret::new(token)
    }
}

fn lock(state: &Shared) -> MutexGuard<'_, Inner> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

// ---- the request side ----

#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    GhRepo {
        repo: String,
    },
    GhPings {
        repo: String,
        id: String,
    },
    GlProject {
        project: String,
    },
    GlEvents {
        project: String,
    },
    GlTest {
        project: String,
        id: String,
        trigger: String,
    },
    GhHooks {
        repo: String,
    },
    GhHook {
        repo: String,
        id: String,
    },
    GlHooks {
        project: String,
    },
    GlHook {
        project: String,
        id: String,
    },
    GhToken,
    GlToken,
    GhAuthorize,
    GlAuthorize,
    Unknown,
}

impl Route {
    fn provider(&self) -> Option<HookProvider> {
        match self {
            Route::GhHooks { .. }
            | Route::GhHook { .. }
            | Route::GhRepo { .. }
            | Route::GhPings { .. }
            | Route::GhToken
            | Route::GhAuthorize => Some(HookProvider::GitHub),
            Route::GlHooks { .. }
            | Route::GlHook { .. }
            | Route::GlProject { .. }
            | Route::GlEvents { .. }
            | Route::GlTest { .. }
            | Route::GlToken
            | Route::GlAuthorize => Some(HookProvider::GitLab),
            Route::Unknown => None,
        }
    }
}

struct Call {
    method: http::Method,
    path: String,
    query: Option<String>,
    route: Route,
    headers: HeaderMap,
    body: Value,
}

impl Call {
    fn param(&self, name: &str) -> Option<String> {
        if let Some(v) = self.body.get(name).and_then(Value::as_str) {
            return Some(v.to_string());
        }
        let q = self.query.as_deref()?;
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The token and whether it came in a header this provider reads.
    fn token(&self) -> Option<String> {
        if let Some(auth) = self.header("authorization") {
            let mut parts = auth.splitn(2, ' ');
            let scheme = parts.next().unwrap_or("").to_ascii_lowercase();
            let value = parts.next().unwrap_or("").trim();
            if (scheme == "bearer" || scheme == "token") && !value.is_empty() {
                return Some(value.to_string());
            }
        }
        if self.route.provider() == Some(HookProvider::GitLab) {
            if let Some(t) = self.header("private-token").filter(|t| !t.is_empty()) {
                return Some(t.to_string());
            }
        }
        None
    }
}

fn route(path: &str) -> Route {
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(decode_segment)
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["login", "oauth", "access_token"] => Route::GhToken,
        ["login", "oauth", "authorize"] => Route::GhAuthorize,
        ["oauth", "token"] => Route::GlToken,
        ["oauth", "authorize"] => Route::GlAuthorize,
        ["repos", owner, name] => Route::GhRepo {
            repo: format!("{owner}/{name}"),
        },
        ["repos", owner, name, "hooks", id, "pings"] => Route::GhPings {
            repo: format!("{owner}/{name}"),
            id: id.to_string(),
        },
        ["api", "v4", "projects", project] => Route::GlProject {
            project: project.to_string(),
        },
        ["api", "v4", "projects", project, "events"] => Route::GlEvents {
            project: project.to_string(),
        },
        ["api", "v4", "projects", project, "hooks", id, "test", trigger] => Route::GlTest {
            project: project.to_string(),
            id: id.to_string(),
            trigger: trigger.to_string(),
        },
        ["repos", owner, name, "hooks"] => Route::GhHooks {
            repo: format!("{owner}/{name}"),
        },
        ["repos", owner, name, "hooks", id] => Route::GhHook {
            repo: format!("{owner}/{name}"),
            id: id.to_string(),
        },
        ["api", "v4", "projects", project, "hooks"] => Route::GlHooks {
            project: project.to_string(),
        },
        ["api", "v4", "projects", project, "hooks", id] => Route::GlHook {
            project: project.to_string(),
            id: id.to_string(),
        },
        _ => Route::Unknown,
    }
}

async fn handle(
    State(state): State<Shared>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 1024 * 1024)
        .await
        .unwrap_or_default();
    let is_form = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let body = if bytes.is_empty() {
        Value::Null
    } else if is_form {
        Value::Object(
            url::form_urlencoded::parse(&bytes)
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect(),
        )
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    let mut call = Call {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        route: route(parts.uri.path()),
        headers: parts.headers.clone(),
        body,
    };
    let delay = {
        let mut s = lock(&state);
        // A GitLab numeric project id addresses the project's path.
        let project = match &mut call.route {
            Route::GlHooks { project }
            | Route::GlHook { project, .. }
            | Route::GlProject { project }
            | Route::GlEvents { project }
            | Route::GlTest { project, .. } => Some(project),
            _ => None,
        };
        if let Some(project) = project {
            if project.bytes().all(|b| b.is_ascii_digit()) {
                if let Some(path) = s
                    .projects
                    .iter()
                    .find(|(_, id)| id.to_string() == *project)
                    .map(|(p, _)| p.clone())
                {
                    *project = path;
                }
            }
        }
        s.record(&call);
        repo_of(&call.route).and_then(|r| s.delays.get_mut(&r).and_then(VecDeque::pop_front))
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let (reply, outgoing) = {
        let mut s = lock(&state);
        let reply = s.answer(&call);
        (reply, std::mem::take(&mut s.outgoing))
    };
    // The provider answers first and delivers afterwards, on its own time.
    for o in outgoing {
        tokio::spawn(async move {
            let mut req = reqwest::Client::new().post(&o.url).body(o.body);
            for (k, v) in &o.headers {
                req = req.header(k, v);
            }
            if let Err(e) = req.send().await {
                tracing::debug!(url = %o.url, error = %e, "the stub could not deliver a ping");
            }
        });
    }
    reply.into_response()
}

fn repo_of(route: &Route) -> Option<String> {
    match route {
        Route::GhHooks { repo }
        | Route::GhHook { repo, .. }
        | Route::GhRepo { repo }
        | Route::GhPings { repo, .. } => Some(repo.clone()),
        Route::GlHooks { project }
        | Route::GlHook { project, .. }
        | Route::GlProject { project }
        | Route::GlEvents { project }
        | Route::GlTest { project, .. } => Some(project.clone()),
        _ => None,
    }
}

// ---- the answer side ----

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Option<String>,
    content_type: &'static str,
}

impl Reply {
    fn json(status: u16, body: Value) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Some(body.to_string()),
            content_type: "application/json; charset=utf-8",
        }
    }

    fn empty(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: None,
            content_type: "text/plain",
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    fn into_response(self) -> axum::response::Response {
        let mut b = http::Response::builder()
            .status(StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
        if self.body.is_some() {
            b = b.header(http::header::CONTENT_TYPE, self.content_type);
        }
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        b.body(Body::from(self.body.unwrap_or_default()))
            .unwrap_or_else(|_| http::Response::new(Body::empty()))
    }
}

fn gh_error(status: u16, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"message": message, "documentation_url": GITHUB_DOCS, "status": status.to_string()}),
    )
}

fn gh_not_found() -> Reply {
    gh_error(404, "Not Found")
}

fn gh_validation(message: &str) -> Reply {
    Reply::json(
        422,
        json!({
            "message": "Validation Failed",
            "errors": [{"resource": "Hook", "code": "custom", "message": message}],
            "documentation_url": GITHUB_DOCS,
            "status": "422",
        }),
    )
}

fn gl_message(status: u16, message: &str) -> Reply {
    Reply::json(status, json!({ "message": message }))
}

/// GitHub's webhook event names (a hook's `events`).
const GITHUB_EVENTS: &[&str] = &[
    "*",
    "branch_protection_rule",
    "check_run",
    "check_suite",
    "code_scanning_alert",
    "commit_comment",
    "create",
    "delete",
    "dependabot_alert",
    "deploy_key",
    "deployment",
    "deployment_status",
    "discussion",
    "discussion_comment",
    "fork",
    "gollum",
    "issue_comment",
    "issues",
    "label",
    "member",
    "merge_group",
    "meta",
    "milestone",
    "package",
    "page_build",
    "project",
    "public",
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
    "pull_request_review_thread",
    "push",
    "registry_package",
    "release",
    "repository",
    "repository_dispatch",
    "secret_scanning_alert",
    "security_and_analysis",
    "star",
    "status",
    "watch",
    "workflow_dispatch",
    "workflow_job",
    "workflow_run",
];

impl Inner {
    fn record(&mut self, call: &Call) {
        self.requests.push(StubRequest {
            method: call.method.to_string(),
            path: call.path.clone(),
            query: call.query.clone(),
            provider: call.route.provider(),
            repo: repo_of(&call.route),
            body: call.body.clone(),
            token: call.token().map(Secret::new),
            headers: call
                .headers
                .iter()
                .filter(|(k, _)| *k != "authorization" && *k != "private-token")
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        v.to_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
        });
    }

    fn project_id(&mut self, path: &str) -> u64 {
        if let Some(id) = self.projects.get(path) {
            return *id;
        }
        let id = self.next_project_id;
        self.next_project_id += 1;
        self.projects.insert(path.to_string(), id);
        id
    }

    fn new_hook(&mut self, provider: HookProvider, repo: &str, url: &str) -> StubHook {
        let id = self.next_hook_id;
        self.next_hook_id += 1;
        let t = now();
        StubHook {
            provider,
            id,
            repo: repo.to_string(),
            url: url.to_string(),
            secret: None,
            events: Vec::new(),
            active: true,
            content_type: match provider {
                HookProvider::GitHub => Some("json".into()),
                HookProvider::GitLab => None,
            },
            insecure_ssl: match provider {
                HookProvider::GitHub => Some("0".into()),
                HookProvider::GitLab => None,
            },
            enable_ssl_verification: match provider {
                HookProvider::GitHub => None,
                HookProvider::GitLab => Some(true),
            },
            created_at: t.clone(),
            updated_at: t,
        }
    }

    fn answer(&mut self, call: &Call) -> Reply {
        let provider = call.route.provider();
        let repo = repo_of(&call.route);
        // Programmed failures come first: they stand for whatever the provider decided.
        if let Some(f) = repo
            .as_ref()
            .and_then(|r| self.failures.get_mut(r))
            .and_then(VecDeque::pop_front)
        {
            let mut reply = Reply::json(f.status, f.body);
            reply.headers = f.headers;
            return reply;
        }
        match &call.route {
            Route::GhToken => return self.github_token(call),
            Route::GlToken => return self.gitlab_token(call),
            Route::GhAuthorize | Route::GlAuthorize => return self.authorize(call),
            Route::Unknown => return gh_not_found(),
            _ => {}
        }
        let provider = provider.expect("hook routes have a provider");
        let repo = repo.expect("hook routes have a repository");
        // Authentication.
        let token = call.token();
        let refused = match &token {
            None => true,
            Some(t) => !self.tokens_valid || self.revoked.contains(t),
        };
        if refused {
            return match (provider, token.is_some()) {
                (HookProvider::GitHub, false) => gh_error(401, "Requires authentication"),
                (HookProvider::GitHub, true) => gh_error(401, "Bad credentials"),
                (HookProvider::GitLab, _) => gl_message(401, "401 Unauthorized"),
            };
        }
        // Scopes (reading the repository itself needs none of the hook scopes).
        let reading = call.method == http::Method::GET;
        let repo_read = matches!(
            call.route,
            Route::GhRepo { .. } | Route::GlProject { .. } | Route::GlEvents { .. }
        );
        match provider {
            _ if repo_read => {}
            HookProvider::GitHub => {
                let granted = self.github_scopes.clone();
                let has = |s: &str| granted.split(',').any(|g| g.trim() == s);
                let allowed = has("admin:repo_hook")
                    || has("write:repo_hook")
                    || (reading && has("read:repo_hook"));
                if !allowed {
                    return gh_error(403, "Must have admin rights to Repository.")
                        .header("X-OAuth-Scopes", granted.clone())
                        .header("X-Accepted-OAuth-Scopes", "admin:repo_hook");
                }
            }
            HookProvider::GitLab => {
                if !self.gitlab_scopes.split_whitespace().any(|s| s == "api") {
                    let description =
                        "The request requires higher privileges than provided by the access token.";
                    return Reply::json(
                        403,
                        json!({"error": "insufficient_scope", "error_description": description, "scope": "api"}),
                    )
                    .header(
                        "WWW-Authenticate",
                        format!(
                            "Bearer realm=\"Protected by OAuth 2.0\", error=\"insufficient_scope\", \
                             error_description=\"{description}\", scope=\"api\""
                        ),
                    );
                }
            }
        }
        if self.missing.contains(&repo) {
            return match provider {
                HookProvider::GitHub => gh_not_found(),
                HookProvider::GitLab => gl_message(404, "404 Project Not Found"),
            };
        }
        let state = self.repo_states.get(&repo).cloned().unwrap_or_default();
        if state.archived && !reading && !repo_read {
            return match provider {
                HookProvider::GitHub => gh_error(403, "Repository was archived so is read-only."),
                HookProvider::GitLab => gl_message(403, "403 Forbidden"),
            };
        }
        match &call.route {
            Route::GhRepo { .. } | Route::GlProject { .. } => {
                return self.repository_json(provider, &repo, &state)
            }
            Route::GlEvents { .. } => return project_events(call, &state),
            Route::GhPings { id, .. } | Route::GlTest { id, .. } => {
                return self.ping(call, provider, &repo, id)
            }
            _ => {}
        }
        let reply = match provider {
            HookProvider::GitHub => self.github(call, &repo),
            HookProvider::GitLab => self.gitlab(call, &repo),
        };
        match provider {
            HookProvider::GitHub => reply
                .header("X-OAuth-Scopes", self.github_scopes.clone())
                .header("X-Accepted-OAuth-Scopes", "admin:repo_hook"),
            HookProvider::GitLab => reply,
        }
    }

    /// `GET /repos/{owner}/{repo}` / `GET /projects/:id`: the fields the providers document
    /// that Hookline reads, and a few around them.
    fn repository_json(&mut self, provider: HookProvider, repo: &str, state: &RepoState) -> Reply {
        let name = repo.rsplit('/').next().unwrap_or(repo);
        match provider {
            HookProvider::GitHub => Reply::json(
                200,
                json!({
                    "id": 1_296_269,
                    "name": name,
                    "full_name": repo,
                    "private": true,
                    "archived": state.archived,
                    "disabled": false,
                    "default_branch": "main",
                    "html_url": format!("https://github.com/{repo}"),
                    "pushed_at": state.pushed_at,
                    "permissions": {"admin": true, "push": true, "pull": true},
                }),
            ),
            HookProvider::GitLab => {
                let id = self.project_id(repo);
                Reply::json(
                    200,
                    json!({
                        "id": id,
                        "name": name,
                        "path_with_namespace": repo,
                        "archived": state.archived,
                        "default_branch": "main",
                        "web_url": format!("https://gitlab.com/{repo}"),
                        "last_activity_at": state.pushed_at.clone().max(state.active_at.clone()),
                    }),
                )
            }
        }
    }

    /// GitHub's `POST …/hooks/{id}/pings` (204, then a `ping` event) and GitLab's
    /// `POST …/hooks/:hook_id/test/:trigger` (201; a test re-enables a disabled hook, as
    /// GitLab's docs say). The delivery goes out when [`HookApiStub::deliver_to`] is set.
    fn ping(&mut self, call: &Call, provider: HookProvider, repo: &str, id: &str) -> Reply {
        if call.method != http::Method::POST {
            return match provider {
                HookProvider::GitHub => gh_not_found(),
                HookProvider::GitLab => gl_message(404, "404 Not Found"),
            };
        }
        let Some(i) = self.position(provider, repo, id) else {
            return match provider {
                HookProvider::GitHub => gh_not_found(),
                HookProvider::GitLab => gl_message(404, "404 Not Found"),
            };
        };
        if let Route::GlTest { trigger, .. } = &call.route {
            if !EVENT_FLAGS.contains(&trigger.as_str()) {
                return gl_message(422, "Testing not available for this hook");
            }
            self.hooks[i].active = true;
        }
        let hook = self.hooks[i].clone();
        let secret = hook.secret.as_ref().map(|s| s.expose().to_string());
        if let (Some(origin), Some(secret)) = (self.deliver_to.clone(), secret) {
            // The hook URL's path and query, on the origin a real provider would reach.
            let path = url::Url::parse(&hook.url)
                .map(|u| {
                    let mut p = u.path().to_string();
                    if let Some(q) = u.query() {
                        p = format!("{p}?{q}");
                    }
                    p
                })
                .unwrap_or_default();
            let target = format!("{origin}{path}");
            let (source, event, body) = match provider {
                HookProvider::GitHub => (
                    crate::model::Source::Github,
                    "ping",
                    json!({
                        "zen": "Keep it logically awesome.",
                        "hook_id": hook.id,
                        "hook": self.github_json(&hook),
                        "repository": {"full_name": repo, "name": repo.rsplit('/').next()},
                        "sender": {"login": "octocat"},
                    }),
                ),
                HookProvider::GitLab => {
                    let project_id = self.project_id(repo);
                    (
                        crate::model::Source::Gitlab,
                        "Push Hook",
                        json!({
                            "object_kind": "push",
                            "event_name": "push",
                            "before": "0000000000000000000000000000000000000000",
                            "after": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
                            "ref": "refs/heads/main",
                            "project_id": project_id,
                            "project": {"id": project_id, "path_with_namespace": repo},
                            "commits": [],
                            "total_commits_count": 0,
                        }),
                    )
                }
            };
            let body = body.to_string().into_bytes();
            let signed =
                crate::providers::simulate::sign(&crate::providers::simulate::Simulation {
                    source,
                    secret: &secret,
                    url: Some(&target),
                    body: &body,
                    event: Some(event),
                    now: Utc::now(),
                    delivery_id: None,
                });
            if let Ok(mut signed) = signed {
                if provider == HookProvider::GitHub {
                    signed
                        .headers
                        .push(("X-GitHub-Hook-ID".into(), hook.id.to_string()));
                }
                self.outgoing.push(Outgoing {
                    url: signed.url,
                    headers: signed.headers,
                    body: signed.body,
                });
            }
        }
        match provider {
            HookProvider::GitHub => Reply::empty(204),
            HookProvider::GitLab => gl_message(201, "201 Created"),
        }
    }

    fn position(&self, provider: HookProvider, repo: &str, id: &str) -> Option<usize> {
        self.hooks
            .iter()
            .position(|h| h.provider == provider && h.repo == repo && h.id.to_string() == id)
    }

    fn list(
        &self,
        call: &Call,
        provider: HookProvider,
        repo: &str,
        default_per_page: usize,
    ) -> Reply {
        let all: Vec<&StubHook> = self
            .hooks
            .iter()
            .filter(|h| h.provider == provider && h.repo == repo)
            .collect();
        let per_page = call
            .param("per_page")
            .and_then(|p| p.parse().ok())
            .unwrap_or(default_per_page)
            .clamp(1, self.max_per_page);
        let page: usize = call
            .param("page")
            .and_then(|p| p.parse().ok())
            .unwrap_or(1)
            .max(1);
        let items: Vec<Value> = all
            .iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .map(|h| match provider {
                HookProvider::GitHub => self.github_json(h),
                HookProvider::GitLab => self.gitlab_json(h),
            })
            .collect();
        let mut reply = Reply::json(200, Value::Array(items));
        if page * per_page < all.len() {
            reply = reply.header(
                "Link",
                format!(
                    "<{}{}?per_page={per_page}&page={}>; rel=\"next\"",
                    self.base,
                    call.path,
                    page + 1
                ),
            );
        }
        reply
    }

    // -- GitHub --

    fn github_json(&self, h: &StubHook) -> Value {
        let api = format!("{}/repos/{}/hooks/{}", self.base, h.repo, h.id);
        let mut config = json!({
            "url": h.url,
            "content_type": h.content_type.clone().unwrap_or_else(|| "form".into()),
            "insecure_ssl": h.insecure_ssl.clone().unwrap_or_else(|| "0".into()),
        });
        if h.secret.is_some() {
            config["secret"] = json!("********");
        }
        json!({
            "type": "Repository",
            "id": h.id,
            "name": "web",
            "active": h.active,
            "events": h.events,
            "config": config,
            "updated_at": h.updated_at,
            "created_at": h.created_at,
            "url": api,
            "test_url": format!("{api}/test"),
            "ping_url": format!("{api}/pings"),
            "deliveries_url": format!("{api}/deliveries"),
            "last_response": {"code": null, "status": "unused", "message": null},
        })
    }

    fn github(&mut self, call: &Call, repo: &str) -> Reply {
        const P: HookProvider = HookProvider::GitHub;
        let method = &call.method;
        match &call.route {
            Route::GhHooks { .. } if method == http::Method::GET => self.list(call, P, repo, 30),
            Route::GhHooks { .. } if method == http::Method::POST => {
                let body = &call.body;
                if !body.is_object() {
                    return gh_error(400, "Problems parsing JSON");
                }
                if let Some(name) = body.get("name").and_then(Value::as_str) {
                    if name != "web" {
                        return gh_validation(&format!("Name {name} is not a valid hook name"));
                    }
                }
                let config = body.get("config").cloned().unwrap_or(Value::Null);
                let Some(url) = config.get("url").and_then(Value::as_str) else {
                    return gh_validation("Config must have a url");
                };
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return gh_validation("Config url is not a valid URL");
                }
                let events = match github_events(body.get("events")) {
                    Ok(e) => e.unwrap_or_else(|| vec!["push".into()]),
                    Err(reply) => return reply,
                };
                if self
                    .hooks
                    .iter()
                    .any(|h| h.provider == P && h.repo == repo && h.url == url)
                {
                    return gh_validation("Hook already exists on this repository");
                }
                let mut hook = self.new_hook(P, repo, url);
                apply_github_config(&mut hook, &config);
                hook.events = events;
                hook.active = body.get("active").and_then(Value::as_bool).unwrap_or(true);
                let json = self.github_json(&hook);
                let location = format!("{}/repos/{}/hooks/{}", self.base, repo, hook.id);
                self.hooks.push(hook);
                Reply::json(201, json).header("Location", location)
            }
            Route::GhHook { id, .. } => {
                let Some(i) = self.position(P, repo, id) else {
                    return gh_not_found();
                };
                match *method {
                    http::Method::GET => Reply::json(200, self.github_json(&self.hooks[i])),
                    http::Method::PATCH => {
                        let body = &call.body;
                        if !body.is_object() {
                            return gh_error(400, "Problems parsing JSON");
                        }
                        let mut hook = self.hooks[i].clone();
                        if let Some(config) = body.get("config") {
                            if let Some(url) = config.get("url").and_then(Value::as_str) {
                                if self.hooks.iter().any(|h| {
                                    h.provider == P
                                        && h.repo == repo
                                        && h.url == url
                                        && h.id != hook.id
                                }) {
                                    return gh_validation("Hook already exists on this repository");
                                }
                                hook.url = url.to_string();
                            }
                            apply_github_config(&mut hook, config);
                        }
                        match github_events(body.get("events")) {
                            Ok(Some(e)) => hook.events = e,
                            Ok(None) => {}
                            Err(reply) => return reply,
                        }
                        for (field, add) in [("add_events", true), ("remove_events", false)] {
                            match github_events(body.get(field)) {
                                Ok(Some(list)) => {
                                    for e in list {
                                        if add && !hook.events.contains(&e) {
                                            hook.events.push(e);
                                        } else if !add {
                                            hook.events.retain(|x| *x != e);
                                        }
                                    }
                                }
                                Ok(None) => {}
                                Err(reply) => return reply,
                            }
                        }
                        if let Some(active) = body.get("active").and_then(Value::as_bool) {
                            hook.active = active;
                        }
                        hook.updated_at = now();
                        let json = self.github_json(&hook);
                        self.hooks[i] = hook;
                        Reply::json(200, json)
                    }
                    http::Method::DELETE => {
                        self.hooks.remove(i);
                        Reply::empty(204)
                    }
                    _ => gh_error(404, "Not Found"),
                }
            }
            _ => gh_error(404, "Not Found"),
        }
    }

    // -- GitLab --

    fn gitlab_json(&self, h: &StubHook) -> Value {
        let project_id = self.projects.get(&h.repo).copied().unwrap_or(0);
        let mut v = json!({
            "id": h.id,
            "url": h.url,
            "project_id": project_id,
            "push_events_branch_filter": "",
            "repository_update_events": false,
            "enable_ssl_verification": h.enable_ssl_verification.unwrap_or(true),
            "alert_status": if h.active { "executable" } else { "disabled" },
            "disabled_until": null,
            "url_variables": [],
            "created_at": h.created_at,
            "resource_access_token_events": false,
            "custom_webhook_template": null,
        });
        for flag in EVENT_FLAGS {
            v[*flag] = json!(h.events.iter().any(|e| e == flag));
        }
        v
    }

    fn gitlab(&mut self, call: &Call, project: &str) -> Reply {
        const P: HookProvider = HookProvider::GitLab;
        self.project_id(project);
        let method = &call.method;
        match &call.route {
            Route::GlHooks { .. } if method == http::Method::GET => self.list(call, P, project, 20),
            Route::GlHooks { .. } if method == http::Method::POST => {
                let Some(url) = call.param("url").filter(|u| !u.is_empty()) else {
                    return Reply::json(400, json!({"error": "url is missing"}));
                };
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Reply::json(
                        400,
                        json!({"message": {"url": ["is blocked: Only allowed schemes are http, https"]}}),
                    );
                }
                let mut hook = self.new_hook(P, project, &url);
                // GitLab's defaults: push events on, everything else off.
                hook.events = vec!["push_events".into()];
                apply_gitlab_fields(&mut hook, &call.body);
                let json = self.gitlab_json(&hook);
                self.hooks.push(hook);
                Reply::json(201, json)
            }
            Route::GlHook { id, .. } => {
                let Some(i) = self.position(P, project, id) else {
                    return gl_message(404, "404 Not Found");
                };
                match *method {
                    http::Method::GET => Reply::json(200, self.gitlab_json(&self.hooks[i])),
                    http::Method::PUT => {
                        let mut hook = self.hooks[i].clone();
                        if let Some(url) = call.param("url").filter(|u| !u.is_empty()) {
                            hook.url = url;
                        }
                        apply_gitlab_fields(&mut hook, &call.body);
                        hook.updated_at = now();
                        let json = self.gitlab_json(&hook);
                        self.hooks[i] = hook;
                        Reply::json(200, json)
                    }
                    http::Method::DELETE => {
                        self.hooks.remove(i);
                        Reply::empty(204)
                    }
                    _ => gl_message(404, "404 Not Found"),
                }
            }
            _ => gl_message(404, "404 Not Found"),
        }
    }

    // -- OAuth --

    fn client_ok(&self, call: &Call) -> bool {
        call.param("client_id").as_deref() == Some(STUB_CLIENT_ID)
            && call.param("client_secret").as_deref() == Some(STUB_CLIENT_SECRET)
    }

    fn github_token(&mut self, call: &Call) -> Reply {
        let wants_json = call
            .header("accept")
            .is_some_and(|a| a.contains("application/json"));
        let reply = |v: Value| {
            if wants_json {
                Reply::json(200, v)
            } else {
                // GitHub's default answer is form-encoded.
                let mut ser = url::form_urlencoded::Serializer::new(String::new());
                if let Value::Object(m) = &v {
                    for (k, val) in m {
                        ser.append_pair(k, val.as_str().unwrap_or(&val.to_string()));
                    }
                }
                Reply {
                    status: 200,
                    headers: Vec::new(),
                    body: Some(ser.finish()),
                    content_type: "application/x-www-form-urlencoded; charset=utf-8",
                }
            }
        };
        if !self.client_ok(call) {
            return reply(json!({
                "error": "incorrect_client_credentials",
                "error_description": "The client_id and/or client_secret passed are incorrect.",
                "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#incorrect-client-credentials",
            }));
        }
        let code = call.param("code").unwrap_or_default();
        match self.codes.remove(&code) {
            Some(token) => reply(json!({
                "access_token": token,
                "token_type": "bearer",
                "scope": self.github_scopes.replace(", ", ","),
            })),
            None => reply(json!({
                "error": "bad_verification_code",
                "error_description": "The code passed is incorrect or expired.",
                "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#bad-verification-code",
            })),
        }
    }

    fn gitlab_token(&mut self, call: &Call) -> Reply {
        if !self.client_ok(call) {
            return Reply::json(
                401,
                json!({
                    "error": "invalid_client",
                    "error_description": "Client authentication failed due to unknown client, no client authentication included, or unsupported authentication method.",
                }),
            );
        }
        let invalid_grant = || {
            Reply::json(
                400,
                json!({
                    "error": "invalid_grant",
                    "error_description": "The provided authorization grant is invalid, expired, revoked, does not match the redirection URI used in the authorization request, or was issued to another client.",
                }),
            )
        };
        let granted = match call.param("grant_type").as_deref() {
            Some("authorization_code") => {
                self.codes.remove(&call.param("code").unwrap_or_default())
            }
            Some("refresh_token") => self
                .refresh_tokens
                .remove(&call.param("refresh_token").unwrap_or_default())
                .map(|_| format!("stub_oauth_{}", hex::encode(rand::random::<[u8; 12]>()))),
            _ => {
                return Reply::json(
                    400,
                    json!({"error": "unsupported_grant_type", "error_description": "The authorization grant type is not supported by the authorization server."}),
                )
            }
        };
        let Some(token) = granted else {
            return invalid_grant();
        };
        let refresh = format!("stub_refresh_{}", hex::encode(rand::random::<[u8; 12]>()));
        self.refresh_tokens.insert(refresh.clone(), token.clone());
        Reply::json(
            200,
            json!({
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": self.gitlab_token_lifetime,
                "refresh_token": refresh,
                "scope": self.gitlab_scopes,
                "created_at": Utc::now().timestamp(),
            }),
        )
    }

    /// Approve at once: redirect to `redirect_uri?code=…&state=…` with a fresh code.
    fn authorize(&mut self, call: &Call) -> Reply {
        if call.param("client_id").as_deref() != Some(STUB_CLIENT_ID) {
            return Reply::json(400, json!({"error": "invalid_client"}));
        }
        let Some(redirect) = call.param("redirect_uri") else {
            return Reply::json(400, json!({"error": "invalid_request"}));
        };
        let code = hex::encode(rand::random::<[u8; 10]>());
        let token = format!("stub_oauth_{}", hex::encode(rand::random::<[u8; 12]>()));
        self.codes.insert(code.clone(), token);
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("code", &code);
        if let Some(state) = call.param("state") {
            query.append_pair("state", &state);
        }
        let sep = if redirect.contains('?') { '&' } else { '?' };
        Reply::empty(302).header("Location", format!("{redirect}{sep}{}", query.finish()))
    }
}

fn github_events(v: Option<&Value>) -> Result<Option<Vec<String>>, Reply> {
    let Some(v) = v else { return Ok(None) };
    let Some(list) = v.as_array() else {
        return Err(gh_validation("events is not an array"));
    };
    let mut out = Vec::new();
    for e in list {
        let Some(e) = e.as_str() else {
            return Err(gh_validation("events must be strings"));
        };
        if !GITHUB_EVENTS.contains(&e) {
            return Err(gh_validation(&format!("{e} is not a valid event name")));
        }
        if !out.iter().any(|x| x == e) {
            out.push(e.to_string());
        }
    }
    Ok(Some(out))
}

fn apply_github_config(hook: &mut StubHook, config: &Value) {
    if let Some(ct) = config.get("content_type").and_then(Value::as_str) {
        hook.content_type = Some(ct.to_string());
    }
    if let Some(v) = config.get("insecure_ssl") {
        hook.insecure_ssl = Some(match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
    }
    if let Some(secret) = config.get("secret").and_then(Value::as_str) {
        hook.secret = Some(Secret::new(secret));
    }
}

fn apply_gitlab_fields(hook: &mut StubHook, body: &Value) {
    if let Some(token) = body.get("token").and_then(Value::as_str) {
        hook.secret = Some(Secret::new(token));
    }
    if let Some(v) = body.get("enable_ssl_verification").and_then(Value::as_bool) {
        hook.enable_ssl_verification = Some(v);
    }
    for flag in EVENT_FLAGS {
        if let Some(on) = body.get(*flag).and_then(Value::as_bool) {
            hook.events.retain(|e| e != flag);
            if on {
                hook.events.push(flag.to_string());
            }
        }
    }
    // Keep the flags in GitLab's order.
    hook.events.sort_by_key(|e| {
        EVENT_FLAGS
            .iter()
            .position(|f| f == e)
            .unwrap_or(usize::MAX)
    });
}
