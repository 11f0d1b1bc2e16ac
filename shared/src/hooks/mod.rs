//! Managing the webhooks Hookline needs on the repositories users connect (DESIGN.md §1.2,
//! seeds 001 and 004): a [`HookClient`] per provider creates, adopts, updates, reads and
//! deletes the repository's hook with the user's access token, and maps every provider answer
//! to a [`HookError`] that says what the user can do about it.
//!
//! - [`github::GitHubHooks`]: the GitHub REST API (`GITHUB_API_URL`, default the public API).
//! - [`gitlab::GitLabHooks`]: the GitLab REST API v4 (`GITLAB_URL`, default gitlab.com).
//! - [`oauth`]: the OAuth authorize URL, the code exchange and the signed `state`.
//! - [`stub::HookApiStub`]: a local server answering like both APIs, for tests and walkthroughs.
//!
//! Neither the access token nor the hook secret ever appears in an error, a `Debug` output or
//! a log line: both travel as [`Secret`]s, and any provider text quoted in an error is scrubbed
//! of them first.

pub mod github;
pub mod gitlab;
pub mod oauth;
pub mod stub;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::model::Source;
use crate::secret::Secret;

pub use github::GitHubHooks;
pub use gitlab::GitLabHooks;

/// How long one call to a provider may take, unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `User-Agent` every call sends (GitHub refuses requests without one).
pub const USER_AGENT: &str = "hookline";

/// The two providers whose hooks Hookline manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookProvider {
    GitHub,
    GitLab,
}

impl HookProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            HookProvider::GitHub => "github",
            HookProvider::GitLab => "gitlab",
        }
    }

    /// `github` or `gitlab` (case-insensitive), as in the API's routes.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "github" => Some(HookProvider::GitHub),
            "gitlab" => Some(HookProvider::GitLab),
            _ => None,
        }
    }

    /// The name users read in messages.
    pub fn display_name(self) -> &'static str {
        match self {
            HookProvider::GitHub => "GitHub",
            HookProvider::GitLab => "GitLab",
        }
    }

    /// The events a new hook subscribes to when the user names none (seed 001).
    pub fn default_events(self) -> Vec<String> {
        let names: &[&str] = match self {
            HookProvider::GitHub => &["workflow_run", "pull_request", "push"],
            HookProvider::GitLab => &["pipeline_events", "merge_requests_events", "push_events"],
        };
        names.iter().map(|s| s.to_string()).collect()
    }

    /// The inbound-webhook source this provider's deliveries arrive as.
    pub fn source(self) -> Source {
        match self {
            HookProvider::GitHub => Source::Github,
            HookProvider::GitLab => Source::Gitlab,
        }
    }

    pub fn from_source(source: Source) -> Option<Self> {
        match source {
            Source::Github => Some(HookProvider::GitHub),
            Source::Gitlab => Some(HookProvider::GitLab),
            _ => None,
        }
    }
}

impl fmt::Display for HookProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the hook should look like: where it posts, the secret it signs with (GitHub) or sends
/// as its token (GitLab), and the events it subscribes to (empty: the provider's defaults).
#[derive(Debug, Clone)]
pub struct HookSpec {
    pub url: String,
    pub secret: Secret,
    pub events: Vec<String>,
}

impl HookSpec {
    pub fn new(url: impl Into<String>, secret: Secret, events: Vec<String>) -> Self {
        Self {
            url: url.into(),
            secret,
            events,
        }
    }

    /// The events to send: the spec's, or the provider's defaults when it names none.
    pub fn events_for(&self, provider: HookProvider) -> Vec<String> {
        if self.events.is_empty() {
            provider.default_events()
        } else {
            self.events.clone()
        }
    }
}

/// A hook as the provider reports it. Providers never return the secret, and neither does this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hook {
    /// The provider's hook id (a number, kept as text as the connection stores it).
    pub id: String,
    /// Where the hook posts (GitHub's `config.url`, GitLab's `url`).
    pub url: String,
    /// The events it is subscribed to: GitHub's event names, or GitLab's `*_events` flags that
    /// are on (`pipeline_events`, …).
    pub events: Vec<String>,
    pub active: bool,
    /// GitHub's `config.content_type` (`json` or `form`); GitLab always posts JSON (`None`).
    pub content_type: Option<String>,
    /// True when an existing hook for the same URL was updated instead of creating a second.
    pub adopted: bool,
    /// When the provider created it (RFC 3339), if it says.
    pub created_at: Option<String>,
}

/// A repository (GitHub) or project (GitLab) as the provider reports it: what the hook-health
/// check needs to tell a hook that is silent from a repository that is quiet or read-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Repository {
    /// Archived: read-only, no pushes, and its hooks cannot be changed.
    pub archived: bool,
    /// The last push: GitHub's `pushed_at`; GitLab's newest push event (`GET
    /// /projects/:id/events?action=pushed`; its `last_activity_at` counts issues and comments).
    pub last_activity_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What `delete_hook` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// The provider deleted it (204).
    Deleted,
    /// It was already gone (404): the outcome the caller wanted anyway.
    AlreadyGone,
}

/// Creates, adopts, updates, reads and deletes one repository's hook on one provider. The
/// access token is passed on every call: it belongs to the user who connected the repository.
#[async_trait]
pub trait HookClient: Send + Sync {
    fn provider(&self) -> HookProvider;

    /// Create the hook, or adopt the existing one with the same URL: it is updated with the
    /// spec's secret and events and returned with `adopted: true`.
    async fn create_hook(
        &self,
        token: &Secret,
        repo: &str,
        spec: &HookSpec,
    ) -> Result<Hook, HookError>;

    /// Replace the hook's URL, secret and events (rotation, a new event list).
    async fn update_hook(
        &self,
        token: &Secret,
        repo: &str,
        hook_id: &str,
        spec: &HookSpec,
    ) -> Result<Hook, HookError>;

    /// Delete the hook; one already gone is `Ok(Deleted::AlreadyGone)`.
    async fn delete_hook(
        &self,
        token: &Secret,
        repo: &str,
        hook_id: &str,
    ) -> Result<Deleted, HookError>;

    async fn get_hook(&self, token: &Secret, repo: &str, hook_id: &str) -> Result<Hook, HookError>;

    /// Ask the provider to deliver a test event to the hook now (GitHub's `ping`, GitLab's
    /// test push); it arrives at the hook's URL like any delivery.
    async fn ping_hook(&self, token: &Secret, repo: &str, hook_id: &str) -> Result<(), HookError>;

    /// The repository (GitHub) or project (GitLab) itself.
    async fn repository(&self, token: &Secret, repo: &str) -> Result<Repository, HookError>;
}

/// The client for a provider, configured from the environment (`GITHUB_API_URL`, `GITLAB_URL`).
pub fn client_from_env(provider: HookProvider) -> Box<dyn HookClient> {
    match provider {
        HookProvider::GitHub => Box::new(GitHubHooks::from_env()),
        HookProvider::GitLab => Box::new(GitLabHooks::from_env()),
    }
}

/// Why a provider call failed, in terms the user can act on. Never holds the token or secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// 401: the token is invalid, expired or revoked.
    #[error("{provider} rejected the access token (HTTP 401)")]
    Unauthorized { provider: HookProvider },
    /// 403: the token lacks a scope, or the account lacks the permission.
    #[error("{provider} refused the request (HTTP 403): {message}")]
    Forbidden {
        provider: HookProvider,
        /// Scopes the token has (GitHub's `X-OAuth-Scopes`).
        granted: Option<String>,
        /// Scopes the endpoint accepts (GitHub's `X-Accepted-OAuth-Scopes`, GitLab's `scope`).
        required: Option<String>,
        message: String,
    },
    /// 404: the repository (or hook) does not exist, or the account cannot see or administer it.
    #[error("{provider} answered 404 for {what}")]
    NotFound {
        provider: HookProvider,
        /// `repository owner/repo` or `hook 123 on owner/repo`.
        what: String,
    },
    /// 400/422: the provider refused the hook; its own words.
    #[error("{provider} refused the hook (HTTP {status}): {message}")]
    Validation {
        provider: HookProvider,
        status: u16,
        message: String,
    },
    /// 429, or GitHub's 403 with an exhausted rate limit.
    #[error("{provider} rate-limited the request")]
    RateLimited {
        provider: HookProvider,
        retry_after_secs: Option<u64>,
    },
    /// 5xx.
    #[error("{provider} is unavailable (HTTP {status})")]
    Unavailable { provider: HookProvider, status: u16 },
    /// Timeout, refused connection, TLS or DNS failure.
    #[error("{provider} could not be reached: {detail}")]
    Unreachable {
        provider: HookProvider,
        timed_out: bool,
        detail: String,
    },
    /// Any other answer (a 3xx, a body that is not the documented JSON).
    #[error("{provider} answered unexpectedly (HTTP {status}): {message}")]
    Unexpected {
        provider: HookProvider,
        status: u16,
        message: String,
    },
    /// The repository name is not `owner/repo` (GitHub) or `group/…/project` (GitLab).
    #[error("{repo:?} is not a repository name")]
    BadRepository {
        provider: HookProvider,
        repo: String,
    },
    /// A Hookline event name that GitLab has no hook flag for.
    #[error("{provider} has no webhook event {event:?}")]
    UnsupportedEvent {
        provider: HookProvider,
        event: String,
    },
}

impl HookError {
    pub fn provider(&self) -> HookProvider {
        match self {
            HookError::Unauthorized { provider }
            | HookError::Forbidden { provider, .. }
            | HookError::NotFound { provider, .. }
            | HookError::Validation { provider, .. }
            | HookError::RateLimited { provider, .. }
            | HookError::Unavailable { provider, .. }
            | HookError::Unreachable { provider, .. }
            | HookError::Unexpected { provider, .. }
            | HookError::BadRepository { provider, .. }
            | HookError::UnsupportedEvent { provider, .. } => *provider,
        }
    }

    /// A stable machine-readable code for the connection's `webhook_error` field.
    pub fn code(&self) -> &'static str {
        match self {
            HookError::Unauthorized { .. } => "token_invalid",
            HookError::Forbidden { .. } => "insufficient_permissions",
            HookError::NotFound { .. } => "repository_not_found",
            HookError::Validation { .. } => "validation_failed",
            HookError::RateLimited { .. } => "rate_limited",
            HookError::Unavailable { .. } => "provider_unavailable",
            HookError::Unreachable { .. } => "provider_unreachable",
            HookError::Unexpected { .. } => "provider_error",
            HookError::BadRepository { .. } => "invalid_repository",
            HookError::UnsupportedEvent { .. } => "unsupported_event",
        }
    }

    /// Whether trying again later may succeed without the user doing anything.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            HookError::RateLimited { .. }
                | HookError::Unavailable { .. }
                | HookError::Unreachable { .. }
        )
    }

    /// True for a 404: the repository or hook is gone, or out of the account's reach.
    pub fn is_not_found(&self) -> bool {
        matches!(self, HookError::NotFound { .. })
    }

    /// A 404, or a 410 (GitHub's answer for a repository whose access is blocked).
    pub fn is_gone(&self) -> bool {
        matches!(
            self,
            HookError::NotFound { .. } | HookError::Unexpected { status: 410, .. }
        )
    }

    /// A sentence saying what went wrong and what the user can do about it.
    pub fn reason(&self) -> String {
        let name = self.provider().display_name();
        let needed_scope = match self.provider() {
            HookProvider::GitHub => "admin:repo_hook",
            HookProvider::GitLab => "api",
        };
        match self {
            HookError::Unauthorized { .. } => format!(
                "the {name} access token is invalid or expired: reconnect your {name} account"
            ),
            HookError::Forbidden {
                granted,
                required,
                message,
                ..
            } => {
                let list = |s: &str| -> Vec<String> {
                    s.split([',', ' '])
                        .map(str::trim)
                        .filter(|x| !x.is_empty())
                        .map(str::to_string)
                        .collect()
                };
                let required = required.as_deref().map(list).unwrap_or_default();
                let granted_list = granted.as_deref().map(list);
                // The token has a scope the endpoint accepts: the account, not the token,
                // lacks the permission (not an admin of the repository).
                let scope_ok = !required.is_empty()
                    && granted_list
                        .as_ref()
                        .is_some_and(|g| required.iter().any(|r| g.contains(r)));
                let mut s = if scope_ok {
                    format!(
                        "the connected {name} account lacks admin access to the repository \
                         (webhooks need admin rights)"
                    )
                } else {
                    match required.len() {
                        0 => format!(
                            "the {name} token lacks the permission to manage webhooks \
                             (the {needed_scope} scope and admin access to the repository)"
                        ),
                        1 => format!("the {name} token lacks {}", required[0]),
                        _ => format!("the {name} token lacks one of {}", required.join(", ")),
                    }
                };
                if let Some(granted) = granted_list.filter(|_| !scope_ok) {
                    let granted = if granted.is_empty() {
                        "none".to_string()
                    } else {
                        granted.join(", ")
                    };
                    s.push_str(&format!(" (it has: {granted})"));
                }
                if !message.is_empty() {
                    s.push_str(&format!("; {name} said: {message}"));
                }
                if scope_ok {
                    s.push_str(": ask a repository admin to connect it");
                } else {
                    s.push_str(&format!(
                        ": reconnect your {name} account granting {needed_scope}"
                    ));
                }
                s
            }
            HookError::NotFound { what, .. } => format!(
                "{what} was not found on {name}, or the connected account has no admin access \
                 to it (managing webhooks needs admin access and the {needed_scope} scope)"
            ),
            HookError::Validation { message, .. } => {
                format!("{name} refused the webhook: {message}")
            }
            HookError::RateLimited {
                retry_after_secs, ..
            } => match retry_after_secs {
                Some(s) => format!("{name} rate-limited the request: try again in {s} s"),
                None => format!("{name} rate-limited the request: try again later"),
            },
            HookError::Unavailable { status, .. } => {
                format!("{name} is unavailable (HTTP {status}): try again later")
            }
            HookError::Unreachable {
                timed_out, detail, ..
            } => {
                if *timed_out {
                    format!("{name} did not answer in time: try again later")
                } else {
                    format!("{name} could not be reached ({detail}): try again later")
                }
            }
            HookError::Unexpected {
                status, message, ..
            } => format!("{name} answered unexpectedly (HTTP {status}): {message}"),
            HookError::BadRepository { repo, .. } => match self.provider() {
                HookProvider::GitHub => {
                    format!("{repo:?} is not a GitHub repository name: use owner/repo")
                }
                HookProvider::GitLab => {
                    format!("{repo:?} is not a GitLab project path: use group/project")
                }
            },
            HookError::UnsupportedEvent { event, .. } => format!(
                "{name} has no webhook event {event:?}: use one of {}",
                gitlab::SUPPORTED_EVENTS.join(", ")
            ),
        }
    }
}

// ---- shared plumbing for the two clients ----

/// An HTTP client with the timeout and user agent every provider call uses.
pub(crate) fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("the HTTP client builds (rustls, no custom roots)")
}

/// Percent-encode one path segment (GitLab's `:id` is the URL-encoded `group/project`).
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decode a percent-encoded path segment.
pub(crate) fn decode_segment(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Replace every occurrence of the given secrets in provider-supplied text, and keep it short.
pub(crate) fn scrub(text: &str, secrets: &[&Secret]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if s.expose().len() >= 4 {
            out = out.replace(s.expose(), "***");
        }
    }
    const MAX: usize = 500;
    if out.len() > MAX {
        let mut end = MAX;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}

/// The `rel="next"` URL of a `Link` header, as GitHub and GitLab paginate.
pub(crate) fn next_link(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let link = headers.get(reqwest::header::LINK)?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let mut pieces = part.split(';');
        let target = pieces.next()?.trim();
        let is_next = pieces.any(|p| {
            let p = p.trim();
            p == "rel=\"next\"" || p == "rel=next"
        });
        if is_next {
            Some(
                target
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string(),
            )
        } else {
            None
        }
    })
}

/// Whether `candidate` is on the same scheme, host and port as `base` (a pagination link is
/// followed with the token only if it stays on the provider).
pub(crate) fn same_origin(base: &str, candidate: &str) -> bool {
    match (url::Url::parse(base), url::Url::parse(candidate)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

/// An RFC 3339 time from a provider's JSON, if it is one.
pub(crate) fn provider_time(
    v: Option<&serde_json::Value>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let text = v?.as_str()?;
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Two hook URLs name the same endpoint (a trailing slash aside).
pub(crate) fn same_url(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/')
}

/// Map a transport failure.
pub(crate) fn transport_error(provider: HookProvider, err: &reqwest::Error) -> HookError {
    let timed_out = err.is_timeout();
    let detail = if timed_out {
        "timed out".to_string()
    } else if err.is_connect() {
        "connection failed".to_string()
    } else if err.is_decode() || err.is_body() {
        "the answer could not be read".to_string()
    } else {
        "request failed".to_string()
    };
    HookError::Unreachable {
        provider,
        timed_out,
        detail,
    }
}

/// The parts of an error answer the mapping needs.
pub(crate) struct ErrorAnswer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
    pub text: String,
}

impl ErrorAnswer {
    pub(crate) async fn read(res: reqwest::Response) -> Self {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Self {
            status,
            headers,
            body,
            text,
        }
    }

    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_string())
    }

    pub(crate) fn retry_after(&self) -> Option<u64> {
        self.header("retry-after").and_then(|v| v.parse().ok())
    }

    /// Every status GitHub and GitLab answer alike; each client maps 401 and 403 itself.
    pub(crate) fn common_error(
        &self,
        provider: HookProvider,
        what: &str,
        message: String,
    ) -> HookError {
        use reqwest::StatusCode;
        let status = self.status;
        match StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR) {
            StatusCode::NOT_FOUND => HookError::NotFound {
                provider,
                what: what.to_string(),
            },
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => HookError::Validation {
                provider,
                status,
                message,
            },
            StatusCode::TOO_MANY_REQUESTS => HookError::RateLimited {
                provider,
                retry_after_secs: self.retry_after(),
            },
            s if s.is_server_error() => HookError::Unavailable { provider, status },
            _ => HookError::Unexpected {
                provider,
                status,
                message,
            },
        }
    }
}

/// Render a provider's `message`/`errors`/`error` fields as one line.
pub(crate) fn provider_message(body: &serde_json::Value, fallback: &str) -> String {
    use serde_json::Value;
    fn render(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            Value::Array(items) => items
                .iter()
                .map(render)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("; "),
            Value::Object(map) => {
                // GitHub's errors[]: {resource, code, field?, message?}.
                if let Some(m) = map.get("message").and_then(Value::as_str) {
                    return m.to_string();
                }
                if map.contains_key("code") && map.contains_key("resource") {
                    let field = map.get("field").and_then(Value::as_str).unwrap_or("");
                    let code = map.get("code").and_then(Value::as_str).unwrap_or("");
                    return format!("{field} {code}").trim().to_string();
                }
                // GitLab's {"url": ["is blocked"]}.
                map.iter()
                    .map(|(k, v)| format!("{k} {}", render(v)))
                    .collect::<Vec<_>>()
                    .join("; ")
            }
            other => other.to_string(),
        }
    }
    let mut parts = Vec::new();
    if let Some(m) = body.get("message") {
        let m = render(m);
        if !m.is_empty() {
            parts.push(m);
        }
    }
    if let Some(e) = body.get("errors") {
        let e = render(e);
        if !e.is_empty() {
            parts.push(format!("({e})"));
        }
    }
    if let Some(e) = body.get("error").and_then(serde_json::Value::as_str) {
        parts.push(e.to_string());
    }
    if let Some(d) = body
        .get("error_description")
        .and_then(serde_json::Value::as_str)
    {
        parts.push(d.to_string());
    }
    if parts.is_empty() {
        fallback.trim().to_string()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gitlab_project_path_is_one_encoded_segment() {
        assert_eq!(encode_segment("group/sub/project"), "group%2Fsub%2Fproject");
        assert_eq!(decode_segment("group%2Fsub%2Fproject"), "group/sub/project");
        assert_eq!(decode_segment("100%"), "100%");
    }

    #[test]
    fn provider_text_is_scrubbed_of_secrets() {
        let s = Secret::new("s3cr3t-value");
        assert_eq!(scrub("bad s3cr3t-value here", &[&s]), "bad *** here");
    }

    #[test]
    fn the_next_page_comes_from_the_link_header() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::LINK,
            "<https://api.github.com/x?page=2>; rel=\"next\", <https://api.github.com/x?page=5>; rel=\"last\""
                .parse()
                .unwrap(),
        );
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://api.github.com/x?page=2")
        );
    }
}
