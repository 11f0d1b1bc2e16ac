//! Project webhooks through the GitLab REST API v4 (docs: "Project webhooks API"):
//! `POST/GET /projects/:id/hooks`, `GET/PUT/DELETE /projects/:id/hooks/:hook_id`, where `:id`
//! is the project's numeric id or its URL-encoded path (`group%2Fproject`).

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};

use super::{
    encode_segment, http_client, next_link, provider_message, provider_time, same_origin, same_url,
    scrub, transport_error, Deleted, ErrorAnswer, Hook, HookClient, HookError, HookProvider,
    HookSpec, Repository, DEFAULT_TIMEOUT,
};
use crate::secret::Secret;

const PROVIDER: HookProvider = HookProvider::GitLab;
const MAX_PAGES: usize = 10;

/// GitLab's `*_events` flags this client sets on a hook, in the order hooks report them.
pub const EVENT_FLAGS: &[&str] = &[
    "push_events",
    "tag_push_events",
    "merge_requests_events",
    "pipeline_events",
    "job_events",
    "issues_events",
    "confidential_issues_events",
    "note_events",
    "confidential_note_events",
    "deployment_events",
    "releases_events",
    "wiki_page_events",
];

/// The event names [`event_flag`] understands (Hookline's, GitHub's equivalents, GitLab's own).
pub const SUPPORTED_EVENTS: &[&str] = &[
    "pipeline",
    "workflow_run",
    "merge_request",
    "pull_request",
    "push",
    "job",
    "check_run",
    "tag_push",
    "issues",
    "note",
    "deployment",
    "release",
    "wiki_page",
];

/// The GitLab hook flag for an event name: Hookline's (and GitHub's) names map onto GitLab's
/// (`workflow_run`/`pipeline` → `pipeline_events`, `pull_request`/`merge_request` →
/// `merge_requests_events`, `push` → `push_events`, `job` → `job_events`, `tag_push` →
/// `tag_push_events`, `issues` → `issues_events`); GitLab's own flag names map to themselves.
pub fn event_flag(event: &str) -> Option<&'static str> {
    let e = event.trim().to_ascii_lowercase();
    if let Some(flag) = EVENT_FLAGS.iter().find(|f| **f == e) {
        return Some(flag);
    }
    Some(match e.as_str() {
        "pipeline" | "workflow_run" => "pipeline_events",
        "merge_request" | "merge_requests" | "pull_request" | "merge_request_events" => {
            "merge_requests_events"
        }
        "push" => "push_events",
        "job" | "build" | "check_run" => "job_events",
        "tag_push" | "tag" => "tag_push_events",
        "issues" | "issue" => "issues_events",
        "confidential_issues" => "confidential_issues_events",
        "note" | "comment" => "note_events",
        "confidential_note" => "confidential_note_events",
        "deployment" => "deployment_events",
        "release" | "releases" => "releases_events",
        "wiki_page" => "wiki_page_events",
        _ => return None,
    })
}

/// GitLab's hook API. Cheap to clone; one per process is enough.
#[derive(Debug, Clone)]
pub struct GitLabHooks {
    base_url: String,
    timeout: Duration,
    http: reqwest::Client,
}

impl GitLabHooks {
    pub const DEFAULT_URL: &'static str = "https://gitlab.com";

    /// A client for the GitLab instance at `base_url` (the API is under `/api/v4`).
    pub fn new(base_url: impl Into<String>) -> Self {
        let base_url = base_url.into().trim_end_matches('/').to_string();
        Self {
            base_url,
            timeout: DEFAULT_TIMEOUT,
            http: http_client(DEFAULT_TIMEOUT),
        }
    }

    /// `GITLAB_URL` (self-managed GitLab), default gitlab.com.
    pub fn from_env() -> Self {
        Self::new(crate::config::var("GITLAB_URL").unwrap_or_else(|| Self::DEFAULT_URL.into()))
    }

    /// Each call's time limit (default 10 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self.http = http_client(timeout);
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn api_url(&self) -> String {
        format!("{}/api/v4", self.base_url)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn project_url(&self, project: &str) -> Result<String, HookError> {
        check_project(project)?;
        Ok(format!(
            "{}/projects/{}",
            self.api_url(),
            encode_segment(project)
        ))
    }

    fn hooks_url(&self, project: &str) -> Result<String, HookError> {
        Ok(format!("{}/hooks", self.project_url(project)?))
    }

    fn hook_url(&self, project: &str, hook_id: &str) -> Result<String, HookError> {
        Ok(format!(
            "{}/{}",
            self.hooks_url(project)?,
            encode_segment(hook_id)
        ))
    }

    fn request(&self, method: Method, url: &str, token: &Secret) -> RequestBuilder {
        // Bearer works for OAuth tokens and personal/project access tokens alike.
        self.http
            .request(method, url)
            .bearer_auth(token.expose())
            .header(reqwest::header::ACCEPT, "application/json")
    }

    async fn send(
        &self,
        req: RequestBuilder,
        what: &str,
        secrets: &[&Secret],
    ) -> Result<reqwest::Response, HookError> {
        let res = req
            .send()
            .await
            .map_err(|e| transport_error(PROVIDER, &e))?;
        if res.status().is_success() {
            Ok(res)
        } else {
            Err(map_error(ErrorAnswer::read(res).await, what, secrets))
        }
    }

    async fn read_hook(res: reqwest::Response, adopted: bool) -> Result<Hook, HookError> {
        let status = res.status().as_u16();
        let raw: Value = res.json().await.map_err(|_| unreadable(status))?;
        to_hook(&raw, adopted).ok_or_else(|| unreadable(status))
    }

    /// Every hook on the project (following `Link: rel="next"`, up to 1000 hooks).
    pub async fn list_hooks(&self, token: &Secret, project: &str) -> Result<Vec<Hook>, HookError> {
        let what = format!("project {project}");
        let mut url = format!("{}?per_page=100", self.hooks_url(project)?);
        let mut hooks = Vec::new();
        for _ in 0..MAX_PAGES {
            let res = self
                .send(self.request(Method::GET, &url, token), &what, &[token])
                .await?;
            let next = next_link(res.headers());
            let status = res.status().as_u16();
            let page: Vec<Value> = res.json().await.map_err(|_| unreadable(status))?;
            hooks.extend(page.iter().filter_map(|h| to_hook(h, false)));
            match next {
                Some(n) if same_origin(&self.base_url, &n) => url = n,
                _ => break,
            }
        }
        Ok(hooks)
    }

    /// The request body: the URL, the token GitLab sends back in `X-Gitlab-Token`, TLS
    /// verification on, and every flag this client manages set on or off.
    fn body(spec: &HookSpec) -> Result<Value, HookError> {
        let mut wanted = BTreeSet::new();
        for event in spec.events_for(PROVIDER) {
            let flag = event_flag(&event).ok_or_else(|| HookError::UnsupportedEvent {
                provider: PROVIDER,
                event: event.chars().take(100).collect(),
            })?;
            wanted.insert(flag);
        }
        let mut body = json!({
            "url": spec.url,
            "token": spec.secret.expose(),
            "enable_ssl_verification": true,
        });
        for flag in EVENT_FLAGS {
            body[*flag] = json!(wanted.contains(flag));
        }
        Ok(body)
    }
}

#[async_trait]
impl HookClient for GitLabHooks {
    fn provider(&self) -> HookProvider {
        PROVIDER
    }

    async fn create_hook(
        &self,
        token: &Secret,
        project: &str,
        spec: &HookSpec,
    ) -> Result<Hook, HookError> {
        let body = Self::body(spec)?;
        // GitLab accepts any number of hooks with one URL: adopting relies on listing first.
        let existing = self
            .list_hooks(token, project)
            .await?
            .into_iter()
            .find(|h| same_url(&h.url, &spec.url));
        if let Some(existing) = existing {
            let mut hook = self.update_hook(token, project, &existing.id, spec).await?;
            hook.adopted = true;
            if hook.created_at.is_none() {
                hook.created_at = existing.created_at;
            }
            return Ok(hook);
        }
        let req = self
            .request(Method::POST, &self.hooks_url(project)?, token)
            .json(&body);
        let what = format!("project {project}");
        let res = self.send(req, &what, &[token, &spec.secret]).await?;
        Self::read_hook(res, false).await
    }

    async fn update_hook(
        &self,
        token: &Secret,
        project: &str,
        hook_id: &str,
        spec: &HookSpec,
    ) -> Result<Hook, HookError> {
        let body = Self::body(spec)?;
        let req = self
            .request(Method::PUT, &self.hook_url(project, hook_id)?, token)
            .json(&body);
        let what = format!("hook {hook_id} on project {project}");
        let res = self.send(req, &what, &[token, &spec.secret]).await?;
        Self::read_hook(res, false).await
    }

    async fn delete_hook(
        &self,
        token: &Secret,
        project: &str,
        hook_id: &str,
    ) -> Result<Deleted, HookError> {
        let req = self.request(Method::DELETE, &self.hook_url(project, hook_id)?, token);
        let what = format!("hook {hook_id} on project {project}");
        match self.send(req, &what, &[token]).await {
            Ok(_) => Ok(Deleted::Deleted),
            Err(HookError::NotFound { .. }) => Ok(Deleted::AlreadyGone),
            Err(e) => Err(e),
        }
    }

    async fn get_hook(
        &self,
        token: &Secret,
        project: &str,
        hook_id: &str,
    ) -> Result<Hook, HookError> {
        let req = self.request(Method::GET, &self.hook_url(project, hook_id)?, token);
        let what = format!("hook {hook_id} on project {project}");
        let res = self.send(req, &what, &[token]).await?;
        Self::read_hook(res, false).await
    }

    async fn ping_hook(
        &self,
        token: &Secret,
        project: &str,
        hook_id: &str,
    ) -> Result<(), HookError> {
        // `POST /projects/:id/hooks/:hook_id/test/push_events`: 201, and the test push.
        let url = format!("{}/test/push_events", self.hook_url(project, hook_id)?);
        let what = format!("hook {hook_id} on project {project}");
        self.send(self.request(Method::POST, &url, token), &what, &[token])
            .await
            .map(drop)
    }

    async fn repository(&self, token: &Secret, project: &str) -> Result<Repository, HookError> {
        let req = self.request(Method::GET, &self.project_url(project)?, token);
        let res = self
            .send(req, &format!("project {project}"), &[token])
            .await?;
        let status = res.status().as_u16();
        let raw: Value = res.json().await.map_err(|_| unreadable(status))?;
        // The project's `last_activity_at` counts issues, comments and merge requests too:
        // the last push is its newest `pushed` event.
        let url = format!("{}/events", self.project_url(project)?);
        let req = self
            .request(Method::GET, &url, token)
            .query(&[("action", "pushed"), ("per_page", "1")]);
        let res = self
            .send(req, &format!("push events of project {project}"), &[token])
            .await?;
        let status = res.status().as_u16();
        let pushes: Value = res.json().await.map_err(|_| unreadable(status))?;
        Ok(Repository {
            archived: raw.get("archived").and_then(Value::as_bool) == Some(true),
            last_activity_at: provider_time(pushes.get(0).and_then(|e| e.get("created_at"))),
        })
    }
}

fn unreadable(status: u16) -> HookError {
    HookError::Unexpected {
        provider: PROVIDER,
        status,
        message: "the hook in the answer could not be read".into(),
    }
}

/// A numeric project id, or a `namespace/…/project` path.
fn check_project(project: &str) -> Result<(), HookError> {
    let numeric = !project.is_empty() && project.bytes().all(|b| b.is_ascii_digit());
    let segments: Vec<&str> = project.split('/').collect();
    let path = segments.len() >= 2
        && segments.iter().all(|s| {
            !s.is_empty()
                && *s != "."
                && *s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if numeric || path {
        Ok(())
    } else {
        Err(HookError::BadRepository {
            provider: PROVIDER,
            repo: project.chars().take(200).collect(),
        })
    }
}

/// A hook as GitLab returns it (it never returns the token).
fn to_hook(raw: &Value, adopted: bool) -> Option<Hook> {
    let id = match raw.get("id")? {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => return None,
    };
    let events = EVENT_FLAGS
        .iter()
        .filter(|f| raw.get(**f).and_then(Value::as_bool) == Some(true))
        .map(|f| f.to_string())
        .collect();
    let active = !matches!(
        raw.get("alert_status").and_then(Value::as_str),
        Some("disabled") | Some("temporarily_disabled")
    );
    Some(Hook {
        id,
        url: raw.get("url").and_then(Value::as_str)?.to_string(),
        events,
        active,
        content_type: None,
        adopted,
        created_at: raw
            .get("created_at")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// Map a GitLab error answer (docs: "REST API troubleshooting", status codes).
fn map_error(answer: ErrorAnswer, what: &str, secrets: &[&Secret]) -> HookError {
    let message = scrub(&provider_message(&answer.body, &answer.text), secrets);
    let status = answer.status;
    match StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR) {
        StatusCode::UNAUTHORIZED => HookError::Unauthorized { provider: PROVIDER },
        StatusCode::FORBIDDEN => {
            // An OAuth token without the scope: {"error":"insufficient_scope", "scope":"api"}
            // and the same in WWW-Authenticate.
            let required = answer
                .body
                .get("scope")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| {
                    let h = answer.header("www-authenticate")?;
                    let start = h.find("scope=\"")? + "scope=\"".len();
                    let end = h[start..].find('"')? + start;
                    Some(h[start..end].to_string())
                })
                .map(|s| s.split_whitespace().collect::<Vec<_>>().join(", "));
            HookError::Forbidden {
                provider: PROVIDER,
                granted: None,
                required,
                message,
            }
        }
        _ => answer.common_error(PROVIDER, what, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hookline_event_names_map_onto_gitlab_flags() {
        assert_eq!(event_flag("workflow_run"), Some("pipeline_events"));
        assert_eq!(event_flag("pipeline"), Some("pipeline_events"));
        assert_eq!(event_flag("pull_request"), Some("merge_requests_events"));
        assert_eq!(event_flag("merge_request"), Some("merge_requests_events"));
        assert_eq!(event_flag("push"), Some("push_events"));
        assert_eq!(event_flag("job"), Some("job_events"));
        assert_eq!(event_flag("tag_push"), Some("tag_push_events"));
        assert_eq!(event_flag("issues"), Some("issues_events"));
        assert_eq!(event_flag("pipeline_events"), Some("pipeline_events"));
        assert_eq!(event_flag("star"), None);
    }

    #[test]
    fn a_project_is_a_path_or_an_id() {
        assert!(check_project("group/project").is_ok());
        assert!(check_project("group/sub/project").is_ok());
        assert!(check_project("42").is_ok());
        for bad in ["project", "", "a//b", "a/../b", "a/b?x"] {
            assert!(check_project(bad).is_err(), "{bad}");
        }
    }
}
