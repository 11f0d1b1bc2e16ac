//! Repository webhooks through the GitHub REST API (docs: "Repository webhooks"):
//! `POST/GET /repos/{owner}/{repo}/hooks`, `GET/PATCH/DELETE /repos/{owner}/{repo}/hooks/{id}`.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{
    encode_segment, http_client, next_link, provider_message, provider_time, same_origin, same_url,
    scrub, transport_error, Deleted, ErrorAnswer, Hook, HookClient, HookError, HookProvider,
    HookSpec, Repository, DEFAULT_TIMEOUT,
};
use crate::secret::Secret;

const PROVIDER: HookProvider = HookProvider::GitHub;
/// The REST API version this client speaks (`X-GitHub-Api-Version`).
pub const API_VERSION: &str = "2022-11-28";
/// Pages of hooks read when looking for one to adopt (100 hooks a page).
const MAX_PAGES: usize = 10;

/// GitHub's hook API. Cheap to clone; one per process is enough (it pools connections).
#[derive(Debug, Clone)]
pub struct GitHubHooks {
    api_url: String,
    timeout: Duration,
    http: reqwest::Client,
}

impl GitHubHooks {
    pub const DEFAULT_API_URL: &'static str = "https://api.github.com";

    /// A client for the API at `api_url` (GitHub Enterprise: `https://HOST/api/v3`).
    pub fn new(api_url: impl Into<String>) -> Self {
        let api_url = api_url.into().trim_end_matches('/').to_string();
        Self {
            api_url,
            timeout: DEFAULT_TIMEOUT,
            http: http_client(DEFAULT_TIMEOUT),
        }
    }

    /// `GITHUB_API_URL`, default the public API.
    pub fn from_env() -> Self {
        Self::new(
            crate::config::var("GITHUB_API_URL").unwrap_or_else(|| Self::DEFAULT_API_URL.into()),
        )
    }

    /// Each call's time limit (default 10 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self.http = http_client(timeout);
        self
    }

    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn repo_url(&self, repo: &str) -> Result<String, HookError> {
        let (owner, name) = split_repo(repo)?;
        Ok(format!(
            "{}/repos/{}/{}",
            self.api_url,
            encode_segment(owner),
            encode_segment(name)
        ))
    }

    fn hooks_url(&self, repo: &str) -> Result<String, HookError> {
        Ok(format!("{}/hooks", self.repo_url(repo)?))
    }

    fn hook_url(&self, repo: &str, hook_id: &str) -> Result<String, HookError> {
        Ok(format!(
            "{}/{}",
            self.hooks_url(repo)?,
            encode_segment(hook_id)
        ))
    }

    fn request(&self, method: Method, url: &str, token: &Secret) -> RequestBuilder {
        self.http
            .request(method, url)
            .bearer_auth(token.expose())
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", API_VERSION)
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
        let raw: GhHook = res.json().await.map_err(|_| HookError::Unexpected {
            provider: PROVIDER,
            status,
            message: "the hook in the answer could not be read".into(),
        })?;
        Ok(raw.into_hook(adopted))
    }

    /// Every hook on the repository (following `Link: rel="next"`, up to 1000 hooks).
    pub async fn list_hooks(&self, token: &Secret, repo: &str) -> Result<Vec<Hook>, HookError> {
        let what = format!("repository {repo}");
        let mut url = format!("{}?per_page=100", self.hooks_url(repo)?);
        let mut hooks = Vec::new();
        for _ in 0..MAX_PAGES {
            let res = self
                .send(self.request(Method::GET, &url, token), &what, &[token])
                .await?;
            let next = next_link(res.headers());
            let status = res.status().as_u16();
            let page: Vec<GhHook> = res.json().await.map_err(|_| HookError::Unexpected {
                provider: PROVIDER,
                status,
                message: "the hook list in the answer could not be read".into(),
            })?;
            hooks.extend(page.into_iter().map(|h| h.into_hook(false)));
            match next {
                Some(n) if same_origin(&self.api_url, &n) => url = n,
                _ => break,
            }
        }
        Ok(hooks)
    }

    async fn find_by_url(
        &self,
        token: &Secret,
        repo: &str,
        url: &str,
    ) -> Result<Option<Hook>, HookError> {
        Ok(self
            .list_hooks(token, repo)
            .await?
            .into_iter()
            .find(|h| same_url(&h.url, url)))
    }

    fn body(spec: &HookSpec, with_name: bool) -> serde_json::Value {
        let mut body = json!({
            "active": true,
            "events": spec.events_for(PROVIDER),
            "config": {
                "url": spec.url,
                "content_type": "json",
                "secret": spec.secret.expose(),
                "insecure_ssl": "0",
            },
        });
        if with_name {
            body["name"] = json!("web");
        }
        body
    }

    async fn adopt(
        &self,
        token: &Secret,
        repo: &str,
        existing: Hook,
        spec: &HookSpec,
    ) -> Result<Hook, HookError> {
        let mut hook = self.update_hook(token, repo, &existing.id, spec).await?;
        hook.adopted = true;
        if hook.created_at.is_none() {
            hook.created_at = existing.created_at;
        }
        Ok(hook)
    }
}

#[async_trait]
impl HookClient for GitHubHooks {
    fn provider(&self) -> HookProvider {
        PROVIDER
    }

    async fn create_hook(
        &self,
        token: &Secret,
        repo: &str,
        spec: &HookSpec,
    ) -> Result<Hook, HookError> {
        if let Some(existing) = self.find_by_url(token, repo, &spec.url).await? {
            return self.adopt(token, repo, existing, spec).await;
        }
        let req = self
            .request(Method::POST, &self.hooks_url(repo)?, token)
            .json(&Self::body(spec, true));
        let what = format!("repository {repo}");
        match self.send(req, &what, &[token, &spec.secret]).await {
            Ok(res) => Self::read_hook(res, false).await,
            // Created between our list and our create (or listed beyond the pages we read).
            Err(HookError::Validation { message, .. })
                if message.to_ascii_lowercase().contains("already exists") =>
            {
                match self.find_by_url(token, repo, &spec.url).await? {
                    Some(existing) => self.adopt(token, repo, existing, spec).await,
                    None => Err(HookError::Validation {
                        provider: PROVIDER,
                        status: 422,
                        message,
                    }),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn update_hook(
        &self,
        token: &Secret,
        repo: &str,
        hook_id: &str,
        spec: &HookSpec,
    ) -> Result<Hook, HookError> {
        let req = self
            .request(Method::PATCH, &self.hook_url(repo, hook_id)?, token)
            .json(&Self::body(spec, false));
        let what = format!("hook {hook_id} on repository {repo}");
        let res = self.send(req, &what, &[token, &spec.secret]).await?;
        Self::read_hook(res, false).await
    }

    async fn delete_hook(
        &self,
        token: &Secret,
        repo: &str,
        hook_id: &str,
    ) -> Result<Deleted, HookError> {
        let req = self.request(Method::DELETE, &self.hook_url(repo, hook_id)?, token);
        let what = format!("hook {hook_id} on repository {repo}");
        match self.send(req, &what, &[token]).await {
            Ok(_) => Ok(Deleted::Deleted),
            Err(HookError::NotFound { .. }) => Ok(Deleted::AlreadyGone),
            Err(e) => Err(e),
        }
    }

    async fn get_hook(&self, token: &Secret, repo: &str, hook_id: &str) -> Result<Hook, HookError> {
        let req = self.request(Method::GET, &self.hook_url(repo, hook_id)?, token);
        let what = format!("hook {hook_id} on repository {repo}");
        let res = self.send(req, &what, &[token]).await?;
        Self::read_hook(res, false).await
    }

    async fn ping_hook(&self, token: &Secret, repo: &str, hook_id: &str) -> Result<(), HookError> {
        // `POST /repos/{owner}/{repo}/hooks/{hook_id}/pings`: 204, then the `ping` event.
        let url = format!("{}/pings", self.hook_url(repo, hook_id)?);
        let what = format!("hook {hook_id} on repository {repo}");
        self.send(self.request(Method::POST, &url, token), &what, &[token])
            .await
            .map(drop)
    }

    async fn repository(&self, token: &Secret, repo: &str) -> Result<Repository, HookError> {
        let req = self.request(Method::GET, &self.repo_url(repo)?, token);
        let res = self
            .send(req, &format!("repository {repo}"), &[token])
            .await?;
        let status = res.status().as_u16();
        let raw: serde_json::Value = res.json().await.map_err(|_| HookError::Unexpected {
            provider: PROVIDER,
            status,
            message: "the repository in the answer could not be read".into(),
        })?;
        Ok(Repository {
            archived: raw.get("archived").and_then(serde_json::Value::as_bool) == Some(true),
            last_activity_at: provider_time(raw.get("pushed_at")),
        })
    }
}

/// `owner/repo`, both parts non-empty and free of `/`.
fn split_repo(repo: &str) -> Result<(&str, &str), HookError> {
    let bad = || HookError::BadRepository {
        provider: PROVIDER,
        repo: repo.chars().take(200).collect(),
    };
    let (owner, name) = repo.split_once('/').ok_or_else(bad)?;
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if ok(owner) && ok(name) {
        Ok((owner, name))
    } else {
        Err(bad())
    }
}

/// Map a GitHub error answer (docs: "Troubleshooting the REST API").
fn map_error(answer: ErrorAnswer, what: &str, secrets: &[&Secret]) -> HookError {
    let message = scrub(&provider_message(&answer.body, &answer.text), secrets);
    let status = answer.status;
    match StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR) {
        StatusCode::UNAUTHORIZED => HookError::Unauthorized { provider: PROVIDER },
        StatusCode::FORBIDDEN => {
            let exhausted = answer.header("x-ratelimit-remaining").as_deref() == Some("0");
            if exhausted || message.to_ascii_lowercase().contains("rate limit") {
                HookError::RateLimited {
                    provider: PROVIDER,
                    retry_after_secs: answer.retry_after().or_else(|| {
                        let reset: i64 = answer.header("x-ratelimit-reset")?.parse().ok()?;
                        u64::try_from(reset - chrono::Utc::now().timestamp()).ok()
                    }),
                }
            } else {
                HookError::Forbidden {
                    provider: PROVIDER,
                    granted: answer.header("x-oauth-scopes"),
                    required: answer
                        .header("x-accepted-oauth-scopes")
                        .filter(|s| !s.is_empty()),
                    message,
                }
            }
        }
        _ => answer.common_error(PROVIDER, what, message),
    }
}

/// A hook as GitHub returns it (the secret comes back as `********`, and is ignored).
#[derive(Deserialize)]
struct GhHook {
    id: u64,
    #[serde(default = "yes")]
    active: bool,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    config: GhConfig,
    #[serde(default)]
    created_at: Option<String>,
}

#[derive(Deserialize, Default)]
struct GhConfig {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
}

fn yes() -> bool {
    true
}

impl GhHook {
    fn into_hook(self, adopted: bool) -> Hook {
        Hook {
            id: self.id.to_string(),
            url: self.config.url.unwrap_or_default(),
            events: self.events,
            active: self.active,
            content_type: self.config.content_type,
            adopted,
            created_at: self.created_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_is_owner_slash_name() {
        assert_eq!(
            split_repo("octocat/Hello-World").unwrap(),
            ("octocat", "Hello-World")
        );
        for bad in ["octocat", "a/b/c", "/x", "x/", "a/..", "a/b?c=d"] {
            assert!(split_repo(bad).is_err(), "{bad}");
        }
    }
}
