//! OAuth for provider access (seed 001): the authorize URL a user is redirected to, the code
//! exchange at the callback, a refresh for GitLab's expiring tokens, and the signed `state`
//! that ties the callback to the user, org and provider that started it.
//!
//! - GitHub: `{GITHUB_OAUTH_URL}/login/oauth/authorize` (scope `admin:repo_hook repo`) and
//!   `POST {GITHUB_OAUTH_URL}/login/oauth/access_token` (`Accept: application/json`).
//! - GitLab: `{GITLAB_URL}/oauth/authorize` (`response_type=code`, scope `api`) and
//!   `POST {GITLAB_URL}/oauth/token` (`grant_type=authorization_code`).

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{http_client, scrub, HookProvider, DEFAULT_TIMEOUT};
use crate::providers::mac::{ct_eq, hmac_sha256};
use crate::secret::Secret;

/// The scopes requested when the caller names none: enough to manage repository hooks.
pub fn default_scopes(provider: HookProvider) -> &'static [&'static str] {
    match provider {
        HookProvider::GitHub => &["admin:repo_hook", "repo"],
        HookProvider::GitLab => &["api"],
    }
}

/// An OAuth application registered with a provider.
#[derive(Debug, Clone)]
pub struct OAuthApp {
    pub client_id: String,
    pub client_secret: Secret,
}

impl OAuthApp {
    pub fn new(client_id: impl Into<String>, client_secret: Secret) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret,
        }
    }

    /// `GITHUB_OAUTH_CLIENT_ID`/`GITHUB_OAUTH_CLIENT_SECRET` or the `GITLAB_…` pair; `None`
    /// unless both are set.
    pub fn from_env(provider: HookProvider) -> Option<Self> {
        let (id, secret) = match provider {
            HookProvider::GitHub => ("GITHUB_OAUTH_CLIENT_ID", "GITHUB_OAUTH_CLIENT_SECRET"),
            HookProvider::GitLab => ("GITLAB_OAUTH_CLIENT_ID", "GITLAB_OAUTH_CLIENT_SECRET"),
        };
        Some(Self::new(
            crate::config::var(id)?,
            Secret::new(crate::config::var(secret)?),
        ))
    }
}

/// An access token from an exchange or a refresh.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: Secret,
    /// The scopes granted (GitHub lists them comma-separated, GitLab space-separated).
    pub scopes: Vec<String>,
    /// GitLab's tokens expire (2 h); GitHub OAuth app tokens do not.
    pub expires_at: Option<DateTime<Utc>>,
    pub refresh_token: Option<Secret>,
}

impl AccessToken {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// Whether the granted scopes are known and do not allow managing hooks (GitHub needs
    /// `admin:repo_hook` or `write:repo_hook`, GitLab `api`).
    pub fn lacks_hook_scope(&self, provider: HookProvider) -> bool {
        if self.scopes.is_empty() {
            return false;
        }
        match provider {
            HookProvider::GitHub => {
                !(self.has_scope("admin:repo_hook") || self.has_scope("write:repo_hook"))
            }
            HookProvider::GitLab => !self.has_scope("api"),
        }
    }

    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// Why an exchange failed. Never holds the code, the client secret or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// The provider refused the grant (`bad_verification_code`, `invalid_grant`,
    /// `incorrect_client_credentials`, `invalid_client`, `redirect_uri_mismatch`, …).
    #[error("{provider} refused the OAuth grant: {error}")]
    Rejected {
        provider: HookProvider,
        error: String,
        description: String,
    },
    #[error("{provider} is unavailable (HTTP {status})")]
    Unavailable { provider: HookProvider, status: u16 },
    #[error("{provider} could not be reached")]
    Unreachable {
        provider: HookProvider,
        timed_out: bool,
    },
    #[error("{provider} answered unexpectedly (HTTP {status}): {message}")]
    Unexpected {
        provider: HookProvider,
        status: u16,
        message: String,
    },
}

impl OAuthError {
    pub fn provider(&self) -> HookProvider {
        match self {
            OAuthError::Rejected { provider, .. }
            | OAuthError::Unavailable { provider, .. }
            | OAuthError::Unreachable { provider, .. }
            | OAuthError::Unexpected { provider, .. } => *provider,
        }
    }

    pub fn retryable(&self) -> bool {
        matches!(
            self,
            OAuthError::Unavailable { .. } | OAuthError::Unreachable { .. }
        )
    }

    /// A sentence saying what went wrong and what to do.
    pub fn reason(&self) -> String {
        let provider = self.provider();
        let name = provider.display_name();
        let env = match provider {
            HookProvider::GitHub => "GITHUB_OAUTH_CLIENT_ID/GITHUB_OAUTH_CLIENT_SECRET",
            HookProvider::GitLab => "GITLAB_OAUTH_CLIENT_ID/GITLAB_OAUTH_CLIENT_SECRET",
        };
        match self {
            OAuthError::Rejected { error, .. } => match error.as_str() {
                "bad_verification_code" | "invalid_grant" => format!(
                    "the {name} authorization code is invalid or expired: connect your {name} \
                     account again"
                ),
                "incorrect_client_credentials" | "invalid_client" | "unauthorized_client" => {
                    format!("{name} refused Hookline's OAuth app credentials: check {env}")
                }
                "redirect_uri_mismatch" => {
                    format!("the redirect URI does not match the {name} OAuth app's callback URL")
                }
                other => format!("{name} refused the OAuth grant ({other})"),
            },
            OAuthError::Unavailable { status, .. } => {
                format!("{name} is unavailable (HTTP {status}): try again later")
            }
            OAuthError::Unreachable { .. } => {
                format!("{name} could not be reached: try again later")
            }
            OAuthError::Unexpected {
                status, message, ..
            } => format!("{name} answered unexpectedly (HTTP {status}): {message}"),
        }
    }
}

/// Where the OAuth endpoints live, and the HTTP client that calls them.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    github_url: String,
    gitlab_url: String,
    http: reqwest::Client,
}

impl OAuthClient {
    pub const DEFAULT_GITHUB_URL: &'static str = "https://github.com";
    pub const DEFAULT_GITLAB_URL: &'static str = "https://gitlab.com";

    pub fn new(github_url: impl Into<String>, gitlab_url: impl Into<String>) -> Self {
        Self {
            github_url: github_url.into().trim_end_matches('/').to_string(),
            gitlab_url: gitlab_url.into().trim_end_matches('/').to_string(),
            http: http_client(DEFAULT_TIMEOUT),
        }
    }

    /// `GITHUB_OAUTH_URL` (default `https://github.com`) and `GITLAB_URL`.
    pub fn from_env() -> Self {
        Self::new(
            crate::config::var("GITHUB_OAUTH_URL")
                .unwrap_or_else(|| Self::DEFAULT_GITHUB_URL.into()),
            crate::config::var("GITLAB_URL").unwrap_or_else(|| Self::DEFAULT_GITLAB_URL.into()),
        )
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.http = http_client(timeout);
        self
    }

    pub fn base_url(&self, provider: HookProvider) -> &str {
        match provider {
            HookProvider::GitHub => &self.github_url,
            HookProvider::GitLab => &self.gitlab_url,
        }
    }

    /// Where to send the user's browser. `scopes` empty: [`default_scopes`].
    pub fn authorize_url(
        &self,
        provider: HookProvider,
        client_id: &str,
        redirect_uri: &str,
        state: &str,
        scopes: &[&str],
    ) -> String {
        let scopes = if scopes.is_empty() {
            default_scopes(provider)
        } else {
            scopes
        };
        let scope = scopes.join(" ");
        let (path, params): (&str, Vec<(&str, &str)>) = match provider {
            HookProvider::GitHub => (
                "/login/oauth/authorize",
                vec![
                    ("client_id", client_id),
                    ("redirect_uri", redirect_uri),
                    ("scope", &scope),
                    ("state", state),
                ],
            ),
            HookProvider::GitLab => (
                "/oauth/authorize",
                vec![
                    ("client_id", client_id),
                    ("redirect_uri", redirect_uri),
                    ("response_type", "code"),
                    ("scope", &scope),
                    ("state", state),
                ],
            ),
        };
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        format!("{}{path}?{query}", self.base_url(provider))
    }

    /// Exchange the callback's `code` for an access token.
    pub async fn exchange_code(
        &self,
        provider: HookProvider,
        app: &OAuthApp,
        code: &str,
        redirect_uri: &str,
        now: DateTime<Utc>,
    ) -> Result<AccessToken, OAuthError> {
        let mut form = vec![
            ("client_id", app.client_id.as_str()),
            ("client_secret", app.client_secret.expose()),
            ("code", code),
            ("redirect_uri", redirect_uri),
        ];
        if provider == HookProvider::GitLab {
            form.push(("grant_type", "authorization_code"));
        }
        let code = Secret::new(code);
        self.token_request(provider, &form, &[&app.client_secret, &code], now)
            .await
    }

    /// Trade a refresh token for a new access token (GitLab's expire after 2 h; GitHub's
    /// expiring user tokens too).
    pub async fn refresh(
        &self,
        provider: HookProvider,
        app: &OAuthApp,
        refresh_token: &Secret,
        now: DateTime<Utc>,
    ) -> Result<AccessToken, OAuthError> {
        let form = vec![
            ("client_id", app.client_id.as_str()),
            ("client_secret", app.client_secret.expose()),
            ("refresh_token", refresh_token.expose()),
            ("grant_type", "refresh_token"),
        ];
        self.token_request(provider, &form, &[&app.client_secret, refresh_token], now)
            .await
    }

    async fn token_request(
        &self,
        provider: HookProvider,
        form: &[(&str, &str)],
        secrets: &[&Secret],
        now: DateTime<Utc>,
    ) -> Result<AccessToken, OAuthError> {
        let path = match provider {
            HookProvider::GitHub => "/login/oauth/access_token",
            HookProvider::GitLab => "/oauth/token",
        };
        let res = self
            .http
            .post(format!("{}{path}", self.base_url(provider)))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            .map_err(|e| OAuthError::Unreachable {
                provider,
                timed_out: e.is_timeout(),
            })?;
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let field = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        // GitHub reports a refused grant as 200 with {"error": …}; GitLab as 400/401.
        if let Some(error) = field("error") {
            return Err(OAuthError::Rejected {
                provider,
                error: scrub(&error, secrets),
                description: scrub(&field("error_description").unwrap_or_default(), secrets),
            });
        }
        if (500..600).contains(&status) {
            return Err(OAuthError::Unavailable { provider, status });
        }
        let unexpected = |message: &str| OAuthError::Unexpected {
            provider,
            status,
            message: message.into(),
        };
        if !(200..300).contains(&status) {
            return Err(unexpected("the token endpoint refused the request"));
        }
        let token = field("access_token")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unexpected("the answer has no access_token"))?;
        let scopes = field("scope")
            .unwrap_or_default()
            .split([',', ' '])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let expires_at = body
            .get("expires_in")
            .and_then(Value::as_i64)
            .filter(|s| *s > 0)
            .map(|s| now + chrono::Duration::seconds(s));
        Ok(AccessToken {
            token: Secret::new(token),
            scopes,
            expires_at,
            refresh_token: field("refresh_token")
                .filter(|t| !t.is_empty())
                .map(Secret::new),
        })
    }
}

/// The `state` parameter of an OAuth round trip: who started it (user, org), for which
/// provider, when, and a nonce, MAC'd with a server key. The callback accepts it only if the
/// MAC matches and it is younger than `max_age` (10 minutes by default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthState {
    #[serde(rename = "u")]
    pub user: String,
    #[serde(rename = "o")]
    pub org: String,
    #[serde(rename = "p")]
    pub provider: HookProvider,
    /// Unix seconds.
    #[serde(rename = "t")]
    pub issued_at: i64,
    /// Random, so two states for the same user differ (and a caller can bind it to a cookie).
    #[serde(rename = "n")]
    pub nonce: String,
}

/// Why a `state` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("the OAuth state is malformed")]
    Malformed,
    #[error("the OAuth state's signature does not match")]
    BadSignature,
    #[error("the OAuth state has expired")]
    Expired,
    #[error("no key to verify the OAuth state with")]
    NoKey,
}

const STATE_DOMAIN: &[u8] = b"hookline.oauth-state.v1.";
const MAX_STATE_LEN: usize = 2048;
/// How far a state's issue time may be ahead of the verifier's clock.
const CLOCK_SKEW_SECS: i64 = 60;

impl OAuthState {
    pub const MAX_AGE: Duration = Duration::from_secs(10 * 60);

    /// `base64url(payload).base64url(HMAC-SHA256(key, domain || base64url(payload)))`.
    pub fn sign(
        key: &Secret,
        user: &str,
        org: &str,
        provider: HookProvider,
        now: DateTime<Utc>,
    ) -> String {
        Self::issue(key, user, org, provider, now).0
    }

    /// [`OAuthState::sign`], also handing back what was signed (its nonce binds the state to
    /// the browser that asked for it).
    pub fn issue(
        key: &Secret,
        user: &str,
        org: &str,
        provider: HookProvider,
        now: DateTime<Utc>,
    ) -> (String, OAuthState) {
        let state = OAuthState {
            user: user.to_string(),
            org: org.to_string(),
            provider,
            issued_at: now.timestamp(),
            nonce: B64.encode(rand::random::<[u8; 16]>()),
        };
        let payload = B64.encode(serde_json::to_vec(&state).expect("a state serialises"));
        let mac = hmac_sha256(key.as_bytes(), &[STATE_DOMAIN, payload.as_bytes()]);
        (format!("{payload}.{}", B64.encode(mac)), state)
    }

    /// Check the MAC (constant time), then the age; return what was signed.
    pub fn verify(
        key: &Secret,
        value: &str,
        now: DateTime<Utc>,
        max_age: Duration,
    ) -> Result<OAuthState, StateError> {
        if key.is_empty() {
            return Err(StateError::NoKey);
        }
        if value.len() > MAX_STATE_LEN {
            return Err(StateError::Malformed);
        }
        let (payload, mac) = value.split_once('.').ok_or(StateError::Malformed)?;
        let mac = B64.decode(mac).map_err(|_| StateError::Malformed)?;
        let expected = hmac_sha256(key.as_bytes(), &[STATE_DOMAIN, payload.as_bytes()]);
        if !ct_eq(&expected, &mac) {
            return Err(StateError::BadSignature);
        }
        let json = B64.decode(payload).map_err(|_| StateError::Malformed)?;
        let state: OAuthState = serde_json::from_slice(&json).map_err(|_| StateError::Malformed)?;
        let age = now.timestamp() - state.issued_at;
        let max_age = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
        if age > max_age || age < -CLOCK_SKEW_SECS {
            return Err(StateError::Expired);
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorize_url_asks_for_hook_scopes() {
        let c = OAuthClient::new("https://github.com", "https://gitlab.example.com/");
        let gh = c.authorize_url(
            HookProvider::GitHub,
            "cid",
            "https://h.example/cb",
            "st",
            &[],
        );
        assert_eq!(
            gh,
            "https://github.com/login/oauth/authorize?client_id=cid&redirect_uri=https%3A%2F%2Fh.example%2Fcb&scope=admin%3Arepo_hook+repo&state=st"
        );
        let gl = c.authorize_url(
            HookProvider::GitLab,
            "cid",
            "https://h.example/cb",
            "st",
            &[],
        );
        assert!(gl.starts_with("https://gitlab.example.com/oauth/authorize?"));
        assert!(gl.contains("response_type=code"));
        assert!(gl.contains("scope=api"));
    }
}
